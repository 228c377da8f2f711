package bundle

import (
	"bytes"
	"errors"
	"fmt"
	"io"
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
