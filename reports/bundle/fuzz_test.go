package bundle

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// FuzzVerify feeds arbitrary bytes to Verify and Read: they must never panic,
// and whatever they accept must be fully readable.
// Seeds: testdata/fuzz/FuzzVerify (a valid small bundle and damaged ones) and
// a freshly written bundle.
func FuzzVerify(f *testing.F) {
	dir := f.TempDir()
	w, err := Create(filepath.Join(dir, "seed.tgz"), Meta{ToolVersion: "fuzz", Now: newClock().Now})
	if err != nil {
		f.Fatal(err)
	}
	w.WriteFile("hosts/h/var/log/vmkernel.log", []byte("x\n"))
	w.AddResult(TestResult{ID: "t", Status: StatusPassed, Measurements: map[string]Measurement{"m": {1, "s"}}})
	if err := w.Close(); err != nil {
		f.Fatal(err)
	}
	seed, err := os.ReadFile(filepath.Join(dir, "seed.tgz"))
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
		b, err := read(p, lim)
		if err != nil {
			return
		}
		for _, f := range b.Manifest().Files {
			if _, err := b.File(f.Path); err != nil && f.Size <= lim.file {
				t.Fatalf("verified bundle: File(%s): %v", f.Path, err)
			}
		}
		if _, err := ShowJSON(b); err != nil {
			t.Fatal(err)
		}
		if err := ShowText(&bytes.Buffer{}, b); err != nil {
			t.Fatal(err)
		}
	})
}
