package bundle

import (
	"archive/tar"
	"bytes"
	"crypto/ed25519"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// fuzzKey signs the signed seed; FuzzVerify checks against it.
var fuzzKey = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, ed25519.SeedSize))

// FuzzVerify feeds arbitrary bytes to Verify, Check, Read and Extract: they
// must never panic, and whatever they accept must be fully readable and
// extractable. Seeds: testdata/fuzz/FuzzVerify (valid, signed and
// finalized bundles, damaged and forged ones; see corpusSeeds) and a
// freshly written bundle.
func FuzzVerify(f *testing.F) {
	dir := f.TempDir()
	seed, err := os.ReadFile(writeSample(f, dir, "seed.tgz", newClock()))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(seed)

	f.Fuzz(func(t *testing.T, data []byte) {
		p := filepath.Join(t.TempDir(), "b.tgz")
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		lim := defaultLimits
		lim.total, lim.entry, lim.file = 1<<20, 1<<20, 1<<20 // keep each run small
		m, err := verify(p, lim)
		if err == nil && m == nil {
			t.Fatal("Verify accepted a bundle without returning its manifest")
		}
		if err != nil && err.Error() == "" {
			t.Fatal("empty error")
		}
		c, cerr := check(p, VerifyOptions{PublicKey: fuzzKey.Public().(ed25519.PublicKey)}, lim)
		var inc *IncompleteError
		var ve *VerifyError
		switch {
		case cerr == nil && (c == nil || c.Manifest == nil || !c.Trusted):
			t.Fatalf("Check accepted without a trusted signature: %+v", c)
		case cerr != nil && !errors.As(cerr, &inc) && !errors.As(cerr, &ve):
			t.Fatalf("Check error %T: %v", cerr, cerr)
		}
		b, err := read(p, lim)
		if err != nil {
			return
		}
		for _, f := range b.Manifest().Files {
			if _, err := b.File(f.Path); err != nil && f.Size <= lim.file {
				t.Fatalf("verified bundle: File(%s): %v", f.Path, err)
			}
		}
		if err := b.Extract(filepath.Join(t.TempDir(), "x")); err != nil {
			t.Fatalf("verified bundle: Extract: %v", err)
		}
		if _, err := ShowJSON(b); err != nil {
			t.Fatal(err)
		}
		if err := ShowText(&bytes.Buffer{}, b); err != nil {
			t.Fatal(err)
		}
	})
}

// FuzzFinalize seals staging directories whose manifest and per-test result
// are arbitrary (a crash can leave anything, and a staging directory may
// be copied from elsewhere): Finalize must not panic, and what it seals
// must verify.
func FuzzFinalize(f *testing.F) {
	f.Add([]byte(`{"schema_version":2,"tool_version":"v1","completeness":"in_progress","created_at":"2026-01-02T15:04:05Z","catalog_version":"c","required":["a","b"]}`),
		[]byte(`{"id":"a","status":"passed"}`))
	f.Add([]byte(`{"schema_version":2,"tool_version":"v1","completeness":"complete","created_at":"2026-01-02T15:04:05Z","files":[{"path":"x","sha256":"00","size":-1}]}`),
		[]byte(`{"id":"a","status":"failed","measurements":{"m":{"value":1e308}}}`))
	f.Add([]byte(`{"schema_version":2,"completeness":"in_progress","required":["../a"]}`), []byte(`{"id":"b"}`))
	f.Fuzz(func(t *testing.T, manifest, result []byte) {
		p := filepath.Join(t.TempDir(), "run.tgz")
		st := p + StagingSuffix
		for name, data := range map[string][]byte{ManifestName: manifest, "tests/a/" + ResultFile: result, "tests/c/" + EvidenceFile: []byte("{}")} {
			if err := os.MkdirAll(filepath.Dir(filepath.Join(st, name)), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(st, name), data, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		m, err := Finalize(p, FinalizeOptions{ToolVersion: "fuzz", Now: func() time.Time { return time.Date(2026, 1, 3, 0, 0, 0, 0, time.UTC) }})
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error")
			}
			return
		}
		if m.Completeness != CompletenessFinalized {
			t.Fatalf("completeness %q", m.Completeness)
		}
		if _, err := Verify(p); err != nil {
			// Only what the staged manifest itself claims may make the sealed bundle fail.
			var ve *VerifyError
			if !errors.As(err, &ve) || slices.ContainsFunc(ve.Problems, func(p Problem) bool { return p.File != ManifestName }) {
				t.Fatalf("Finalize sealed a bundle that does not verify: %v", err)
			}
		}
	})
}

// FuzzParseCommandLog: a command log from a bundle parses or fails with an
// error; what parses formats back to the same bytes.
func FuzzParseCommandLog(f *testing.F) {
	start := time.Date(2026, 1, 2, 15, 4, 5, 123456789, time.UTC)
	f.Add(FormatCommand(Command{Start: start, Duration: time.Millisecond, Command: "esxcli storage core path list", Output: []byte("a\nb\n")}))
	f.Add([]byte("### 2026-01-02T15:04:05Z exit=0 duration=1s bytes=99 cmd=\"x\"\nshort\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cmds, err := ParseCommandLog(data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "command log: offset ") {
				t.Fatalf("error %q does not say where", err)
			}
			return
		}
		var again []byte
		for _, c := range cmds {
			again = append(again, FormatCommand(c)...)
		}
		back, err := ParseCommandLog(again)
		if err != nil || len(back) != len(cmds) {
			t.Fatalf("formatted log does not parse back: %v", err)
		}
		for i := range cmds {
			if !back[i].Start.Equal(cmds[i].Start) || back[i].Command != cmds[i].Command || !bytes.Equal(back[i].Output, cmds[i].Output) ||
				back[i].ExitCode != cmds[i].ExitCode || back[i].Duration != cmds[i].Duration {
				t.Fatalf("command %d changed through format and parse: %+v != %+v", i, back[i], cmds[i])
			}
		}
	})
}

// corpusSeeds are the kept seeds of FuzzVerify, by file name, and whether
// each must verify. Regenerate them after a format change with
// CERTKIT_UPDATE_FUZZ_CORPUS=1 go test -run TestFuzzCorpus ./reports/bundle
func corpusSeeds(t *testing.T) map[string]struct {
	data  []byte
	valid bool
} {
	dir := t.TempDir()
	small := func(name string, m Meta) string {
		p := filepath.Join(dir, name)
		m.ToolVersion, m.Now = "fuzz", newClock().Now
		w, err := Create(p, m)
		if err != nil {
			t.Fatal(err)
		}
		w.AppendFile("hosts/esx-01/var/log/vmkernel.log", []byte("2026-01-02T15:05:01Z cpu0:1)NMP: path dead\n"))
		w.LogCommand("esx-01", Command{Start: time.Date(2026, 1, 2, 15, 5, 0, 0, time.UTC), Command: "esxcli storage core path list", Output: []byte("State: dead\n")})
		w.WriteJSON("tests/t/"+TimelineFile, []map[string]string{{"action": "inject"}})
		w.AddResult(TestResult{ID: "t", Status: StatusPassed, Measurements: map[string]Measurement{"m": {1, "s"}}, Thresholds: map[string]Threshold{"m": {Max: ptr(2), Unit: "s"}}})
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		return p
	}
	valid := small("valid.tgz", Meta{CatalogVersion: "c", Required: []string{"t"}, Hosts: map[string]Component{"esx-01": {Version: "8.0.3"}}})
	signed := small("signed.tgz", Meta{SignKey: fuzzKey})
	staged := filepath.Join(dir, "finalized.tgz")
	w, err := Create(staged, Meta{ToolVersion: "fuzz", CatalogVersion: "c", Required: []string{"t", "u"}, Now: newClock().Now})
	if err != nil {
		t.Fatal(err)
	}
	w.AddResult(TestResult{ID: "t", Status: StatusPassed})
	w.WriteJSON("tests/u/"+EvidenceFile, map[string]any{"samples": []any{}})
	if _, err := Finalize(staged, FinalizeOptions{ToolVersion: "fuzz", SignKey: fuzzKey, Now: newClock().Now}); err != nil {
		t.Fatal(err)
	}
	read := func(p string) []byte {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	edit := func(p string, rehashed bool, change func([]entry) []entry) []byte {
		es := change(readEntries(t, p))
		if rehashed {
			es = rehash(t, es)
		}
		return packEntries(t, es)
	}
	set := func(name, content string) func([]entry) []entry {
		return func(es []entry) []entry {
			for i := range es {
				if es[i].hdr.Name == name {
					es[i].data = []byte(content)
				}
			}
			return es
		}
	}
	v := read(valid)
	type seed = struct {
		data  []byte
		valid bool
	}
	return map[string]seed{
		"valid_small_bundle": {v, true},
		"signed_bundle":      {read(signed), true},
		"finalized_bundle":   {read(staged), true},
		"truncated":          {v[:len(v)*2/3], false},
		"garbage_manifest":   {edit(valid, false, set(ManifestName, "{not json")), false},
		"duplicate_manifest": {edit(valid, false, func(es []entry) []entry { return append(es, es[0]) }), false},
		"traversal":          {edit(valid, false, func(es []entry) []entry { return append(es, regular("../../etc/cron.d/x", "x")) }), false},
		"symlink": {edit(valid, false, func(es []entry) []entry {
			return append(es, entry{tar.Header{Typeflag: tar.TypeSymlink, Name: "hosts/esx-01/link", Linkname: "/etc/passwd"}, nil})
		}), false},
		"malformed_results":   {edit(valid, true, set(ResultsJSONName, `{"tests":[{"id":"t",,}]}`)), false},
		"inconsistent_result": {edit(valid, true, set("tests/t/"+ResultFile, `{"id":"t","status":"failed"}`)), false},
		"malformed_junit":     {edit(valid, true, set(JUnitName, "<testsuites><testsuite></testsuites>")), false},
		"forged_signature":    {edit(signed, true, set("tests/t/"+ResultFile, `{"id":"t","status":"passed","reason":"x"}`)), false},
		"in_progress_packed": {edit(valid, false, func(es []entry) []entry {
			es[0].data = bytes.Replace(es[0].data, []byte(`"completeness": "complete"`), []byte(`"completeness": "in_progress"`), 1)
			return es
		}), false},
	}
}

// The kept corpus is current: valid seeds verify (a format change that
// stales them fails here), damaged ones do not.
func TestFuzzCorpus(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzVerify")
	seeds := corpusSeeds(t)
	if os.Getenv("CERTKIT_UPDATE_FUZZ_CORPUS") != "" {
		for name, s := range seeds {
			if err := os.WriteFile(filepath.Join(dir, name), fmt.Appendf(nil, "go test fuzz v1\n[]byte(%q)\n", s.data), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	for name, s := range seeds {
		raw, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Errorf("seed %s: %v (regenerate: CERTKIT_UPDATE_FUZZ_CORPUS=1 go test -run TestFuzzCorpus ./reports/bundle)", name, err)
			continue
		}
		data, err := parseSeed(raw)
		if err != nil {
			t.Fatalf("seed %s: %v", name, err)
		}
		p := filepath.Join(t.TempDir(), name+".tgz")
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		_, err = Check(p, VerifyOptions{})
		if (err == nil) != s.valid {
			t.Errorf("seed %s: Check = %v, want valid=%v (regenerate: CERTKIT_UPDATE_FUZZ_CORPUS=1 go test -run TestFuzzCorpus ./reports/bundle)", name, err, s.valid)
		}
	}
}

// parseSeed reads a corpus file of one []byte value.
func parseSeed(raw []byte) ([]byte, error) {
	s, ok := strings.CutPrefix(string(raw), "go test fuzz v1\n[]byte(")
	if !ok {
		return nil, errors.New("not a go test fuzz v1 file of one []byte")
	}
	s = strings.TrimSuffix(strings.TrimSpace(s), ")")
	v, err := strconv.Unquote(s)
	return []byte(v), err
}
