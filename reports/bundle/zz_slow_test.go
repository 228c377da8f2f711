package bundle

import (
	"math/rand"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestZZSlow(t *testing.T) {
	raw, _ := os.ReadFile("testdata/fuzz/FuzzVerify/valid_small_bundle")
	lit := strings.TrimSuffix(strings.TrimPrefix(strings.SplitN(string(raw), "\n", 2)[1], "[]byte("), ")\n")
	s, _ := strconv.Unquote(lit)
	seed := []byte(s)
	rng := rand.New(rand.NewSource(1))
	dir := t.TempDir()
	lim := defaultLimits
	lim.total, lim.entry, lim.file = 1<<20, 1<<20, 1<<20
	for i := 0; i < 3000; i++ {
		d := append([]byte{}, seed...)
		for k := 0; k < 1+rng.Intn(4); k++ {
			d[rng.Intn(len(d))] = byte(rng.Intn(256))
		}
		p := filepath.Join(dir, "b.tgz")
		os.WriteFile(p, d, 0o644)
		st := time.Now()
		verify(p, lim)
		v := time.Since(st)
		st = time.Now()
		read(p, lim)
		if r := time.Since(st); v > 100*time.Millisecond || r > 100*time.Millisecond {
			os.WriteFile("/tmp/slow.tgz", d, 0o644)
			t.Fatalf("iteration %d: verify %v read %v", i, v, r)
		}
	}
}
