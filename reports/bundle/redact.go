package bundle

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Redacted replaces secret values in everything a bundle stores from the lab
// profile: bundles leave the lab (they go to reviewers), lab passwords must not.
const Redacted = "REDACTED"

// secretKey reports whether a config key names a secret (password, CHAP
// secret, API token, private key...).
func secretKey(k string) bool {
	k = strings.ToLower(k)
	for _, s := range []string{"password", "passwd", "secret", "token", "credential", "private_key", "privatekey", "apikey", "api_key"} {
		if strings.Contains(k, s) {
			return true
		}
	}
	return false
}

// RedactYAML returns data with the value of every key that names a secret
// replaced by "REDACTED", at any depth. Comments and key order are kept.
func RedactYAML(data []byte) ([]byte, error) {
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var out bytes.Buffer
	enc := yaml.NewEncoder(&out)
	enc.SetIndent(2)
	n := 0
	for {
		doc = yaml.Node{}
		if err := dec.Decode(&doc); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return nil, fmt.Errorf("not valid YAML: %w", err)
		}
		redactNode(&doc)
		if err := enc.Encode(&doc); err != nil {
			return nil, fmt.Errorf("re-encoding redacted YAML: %w", err)
		}
		n++
	}
	if n == 0 {
		return []byte{}, nil
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

func redactNode(n *yaml.Node) {
	switch n.Kind {
	case yaml.DocumentNode, yaml.SequenceNode:
		for _, c := range n.Content {
			redactNode(c)
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if k.Kind == yaml.ScalarNode && secretKey(k.Value) {
				// Keep the anchor so aliases elsewhere still resolve (to the redacted value).
				*v = yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: Redacted, Anchor: v.Anchor}
				continue
			}
			redactNode(v)
		}
	}
	// Aliases point at nodes redacted where they are defined.
}

// redactValue returns a deep copy of v (as decoded from JSON: maps, slices,
// scalars) with the values of secret keys replaced.
func redactValue(v any) any {
	switch t := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(t))
		for k, e := range t {
			if secretKey(k) {
				out[k] = Redacted
			} else {
				out[k] = redactValue(e)
			}
		}
		return out
	case []any:
		out := make([]any, len(t))
		for i, e := range t {
			out[i] = redactValue(e)
		}
		return out
	default:
		return v
	}
}

// MinSecretBytes is the shortest secret Meta.Secrets accepts: a shorter one
// would match ordinary words of the evidence everywhere.
const MinSecretBytes = 4

// scrubber replaces known secret values (the lab's passwords, CHAP secrets,
// tokens) wherever they appear: raw, and as JSON, XML, Go-quoted, YAML and
// URL encodings would render them.
type scrubber struct {
	r *strings.Replacer // nil: nothing to scrub
}

func newScrubber(secrets []string) (scrubber, error) {
	var forms []string
	seen := map[string]bool{}
	for i, s := range secrets {
		if s == "" {
			continue
		}
		if len(s) < MinSecretBytes {
			return scrubber{}, fmt.Errorf("secret #%d is %d bytes: too short to keep out of the evidence without shredding it (at least %d bytes); use a longer password or token in the lab", i+1, len(s), MinSecretBytes)
		}
		for _, f := range secretForms(s) {
			if f != "" && !seen[f] {
				seen[f] = true
				forms = append(forms, f)
			}
		}
	}
	if len(forms) == 0 {
		return scrubber{}, nil
	}
	// Longer forms first, so that an encoded form wins over the raw secret inside it.
	slices.SortStableFunc(forms, func(a, b string) int { return len(b) - len(a) })
	args := make([]string, 0, 2*len(forms))
	for _, f := range forms {
		args = append(args, f, Redacted)
	}
	return scrubber{r: strings.NewReplacer(args...)}, nil
}

// secretForms are the ways s can appear in a file the bundle stores.
func secretForms(s string) []string {
	forms := []string{s}
	for _, html := range []bool{true, false} {
		var b bytes.Buffer
		enc := json.NewEncoder(&b)
		enc.SetEscapeHTML(html)
		if enc.Encode(s) == nil {
			forms = append(forms, strings.TrimSuffix(strings.TrimSuffix(strings.TrimPrefix(b.String(), `"`), "\n"), `"`))
		}
	}
	var x bytes.Buffer
	if xml.EscapeText(&x, []byte(s)) == nil {
		forms = append(forms, x.String())
	}
	q := strconv.Quote(s)
	forms = append(forms, q[1:len(q)-1], strings.ReplaceAll(s, "'", "''"),
		url.QueryEscape(s), url.PathEscape(s))
	return forms
}

func (s scrubber) bytes(b []byte) []byte {
	if s.r == nil || len(b) == 0 {
		return b
	}
	return []byte(s.r.Replace(string(b)))
}

func (s scrubber) string(v string) string {
	if s.r == nil {
		return v
	}
	return s.r.Replace(v)
}

// contains reports whether v holds a secret.
func (s scrubber) contains(v string) bool {
	return s.r != nil && s.r.Replace(v) != v
}
