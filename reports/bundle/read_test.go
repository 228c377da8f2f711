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

// rehash rewrites the manifest to match the entries, as a forger would.
func rehash(t *testing.T, es []entry) []entry {
	t.Helper()
	var m Manifest
	if err := json.Unmarshal(es[0].data, &m); err != nil {
		t.Fatal(err)
	}
	m.Files = nil
	for _, e := range es[1:] {
		if e.hdr.Name == SignatureName {
			continue
		}
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

// forge replaces one file of the sample bundle and rehashes the manifest.
func forge(t *testing.T, name, content string) string {
	t.Helper()
	data := tamper(t, func(es []entry) []entry {
		found := false
		for i := range es {
			if es[i].hdr.Name == name {
				es[i].data, found = []byte(content), true
			}
		}
		if !found {
			es = append(es, regular(name, content))
		}
		return rehash(t, es)
	})
	p := filepath.Join(t.TempDir(), "forged.tgz")
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// Verify checks what results.json says, even in a bundle whose checksums
// are consistent: a forger who rehashes the manifest is still caught, and
// malformed content gets an error naming the file, the line and the column.
func TestVerifyValidatesResults(t *testing.T) {
	for _, tc := range []struct{ results, want string }{
		{`{"tests":[{"id":"a","status":"great"}]}`, `results/results.json: tests[0]: test a: status "great"`},
		{`{"tests":[{"id":"a","status":"passed"},{"id":"a","status":"failed"}]}`, "tests[1]: test a appears twice"},
		{`{"tests":[{"id":"../../x","status":"passed"}]}`, "tests[0]: test id ../../x: path traversal"},
		{`[]`, "results/results.json: not a results document ({\"tests\":[...]}): the document at line 1, column 2 cannot hold a JSON array"},
		{"{\"tests\":\n  [{\"id\": \"a\",, }]}", "results/results.json: not a results document ({\"tests\":[...]}): malformed JSON at line 2, column 15: invalid character ','"},
		{`{"tests":[{"id":"a","status":"passed","start":"yesterday"}]}`, `results/results.json: not a results document`},
		{`{"tests":[`, "malformed JSON"},
	} {
		p := forge(t, ResultsJSONName, tc.results)
		if _, err := Verify(p); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Verify with results %s: %v, want %q", tc.results, err, tc.want)
		}
		if b, err := Read(p); err == nil || b != nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Read with results %s: %v, want %q", tc.results, err, tc.want)
		}
	}
}

func TestVerifyNeedsResults(t *testing.T) {
	data := tamper(t, func(es []entry) []entry {
		var out []entry
		for _, e := range es {
			if e.hdr.Name != ResultsJSONName {
				out = append(out, e)
			}
		}
		return rehash(t, out)
	})
	p := filepath.Join(t.TempDir(), "nores.tgz")
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Read(p); err == nil || !strings.Contains(err.Error(), "results/results.json: missing; every bundle records its results there") {
		t.Errorf("Read without results.json: %v", err)
	}
}
