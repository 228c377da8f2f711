package iscsi

import (
	"bytes"
	"fmt"
	"strings"
)

// KV is one key=value pair of login or text data (RFC 7143 §6).
type KV struct {
	Key, Value string
}

// Text is an ordered list of key=value pairs; order matters on the wire
// (SendTargets answers TargetName then its TargetAddress lines).
type Text []KV

// Get returns the value of the first pair with the key.
func (t Text) Get(key string) (string, bool) {
	for _, kv := range t {
		if kv.Key == key {
			return kv.Value, true
		}
	}
	return "", false
}

// Add appends a pair.
func (t *Text) Add(key, value string) { *t = append(*t, KV{key, value}) }

// Encode renders the pairs as NUL-terminated key=value strings.
func (t Text) Encode() []byte {
	var b bytes.Buffer
	for _, kv := range t {
		b.WriteString(kv.Key)
		b.WriteByte('=')
		b.WriteString(kv.Value)
		b.WriteByte(0)
	}
	return b.Bytes()
}

// MaxKeyLength and MaxValueLength are RFC 7143 §6.1's limits.
const (
	MaxKeyLength   = 63
	MaxValueLength = 8192
)

// ParseText decodes NUL-separated key=value data. Trailing padding NULs are
// ignored; a pair without '=' or over the RFC's length limits is an error
// naming the pair, which a target answers with a login or text reject.
func ParseText(data []byte) (Text, error) {
	var t Text
	for _, item := range bytes.Split(data, []byte{0}) {
		if len(item) == 0 {
			continue
		}
		s := string(item)
		k, v, ok := strings.Cut(s, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("iscsi: text item %q is not key=value", clip(s))
		}
		if len(k) > MaxKeyLength {
			return nil, fmt.Errorf("iscsi: text key %q is longer than %d bytes", clip(k), MaxKeyLength)
		}
		if len(v) > MaxValueLength {
			return nil, fmt.Errorf("iscsi: value of %s is longer than %d bytes", k, MaxValueLength)
		}
		t = append(t, KV{k, v})
	}
	return t, nil
}

func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
