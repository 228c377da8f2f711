package bundle

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// resign rewrites the manifest to match the entries, as a forger would.
func resign(t *testing.T, es []entry) []entry {
	t.Helper()
	var m Manifest
	if err := json.Unmarshal(es[0].data, &m); err != nil {
		t.Fatal(err)
	}
	m.Files = nil
	for _, e := range es[1:] {
		sum := sha256.Sum256(e.data)
		m.Files = append(m.Files, FileEntry{Path: e.hdr.Name, SHA256: hex.EncodeToString(sum[:]), Size: int64(len(e.data))})
	}
	data, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	es[0].data = data
	return es
}

// Read checks results.json itself, even in a bundle whose checksums are consistent.
func TestReadValidatesResults(t *testing.T) {
	for results, want := range map[string]string{
		`{"tests":[{"id":"a","status":"great"}]}`:                               `results/results.json: tests[0]: test a: status "great"`,
		`{"tests":[{"id":"a","status":"passed"},{"id":"a","status":"failed"}]}`: "tests[1]: test a appears twice",
		`{"tests":[{"id":"../../x","status":"passed"}]}`:                        "tests[0]: test id ../../x: path traversal",
		`[]`: "results/results.json: malformed JSON",
	} {
		data := tamper(t, func(es []entry) []entry {
			for i := range es {
				if es[i].hdr.Name == ResultsJSONName {
					es[i].data = []byte(results)
				}
			}
			return resign(t, es)
		})
		p := filepath.Join(t.TempDir(), "forged.tgz")
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := Verify(p); err != nil {
			t.Fatalf("re-signed bundle does not verify: %v", err)
		}
		if _, err := Read(p); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Read with results %s: %v, want %q", results, err, want)
		}
	}
}

func TestReadNeedsResults(t *testing.T) {
	data := tamper(t, func(es []entry) []entry {
		var out []entry
		for _, e := range es {
			if e.hdr.Name != ResultsJSONName {
				out = append(out, e)
			}
		}
		return resign(t, out)
	})
	p := filepath.Join(t.TempDir(), "nores.tgz")
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Read(p); err == nil || !strings.Contains(err.Error(), "results/results.json: no such file in the bundle") {
		t.Errorf("Read without results.json: %v", err)
	}
}
