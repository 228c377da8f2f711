package bundle

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// clock is a deterministic Meta.Now: each call advances one second.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock {
	return &clock{t: time.Date(2026, 1, 2, 15, 4, 5, 0, time.UTC)}
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(time.Second)
	return c.t
}

func ptr(v float64) *float64 { return &v }

const testProfile = `# embedded lab
name: embedded
hosts:
  - name: esx-01
    ssh: 127.0.0.1:2201
    password: hunter2
arrays:
  - name: array-a
    control:
      url: http://127.0.0.1:9000
      token: s3cr3t-token
`

// writeSample writes a small but complete bundle at dir/name and returns its path.
func writeSample(t testing.TB, dir, name string, c *clock) string {
	t.Helper()
	p := filepath.Join(dir, name)
	w, err := Create(p, Meta{
		ToolVersion: "v0.1.0-test",
		Lab:         map[string]any{"name": "embedded", "hosts": 1, "ssh_password": "hunter2"},
		Profile:     []byte(testProfile),
		Now:         c.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	start := time.Date(2026, 1, 2, 15, 5, 0, 0, time.UTC)
	must(w.LogCommand("esx-01", Command{Start: start, Duration: 12 * time.Millisecond, Command: "esxcli storage core path list", Output: []byte("vmhba64:C0:T0:L0\n   State: active\n")}))
	must(w.LogCommand("esx-01", Command{Start: start.Add(time.Second), Command: "esxcli iscsi adapter auth chap set -A vmhba64 --secret=topsecret", ExitCode: 1, Output: []byte("error")}))
	vmk, err := VMkernelLogPath("esx-01")
	must(err)
	must(w.AppendFile(vmk, []byte("2026-01-02T15:05:01.000Z cpu1:1)iscsi_vmk: iscsivmk_ConnNetRegister: socket 0x1 network resource pool netsched.pools.persist.iscsi associated\n")))
	tl, err := TestPath("path-failover/blackhole-A0", TimelineFile)
	must(err)
	must(w.WriteJSON(tl, []map[string]any{{"at": "2026-01-02T15:05:00Z", "event": "inject", "portal": "A0"}}))
	sm, err := TestPath("path-failover/blackhole-A0", SamplesFile)
	must(err)
	must(w.WriteJSON(sm, []map[string]any{{"at": "2026-01-02T15:05:02Z", "path": "vmhba64:C0:T0:L0", "state": "dead"}}))
	must(w.AddResult(TestResult{
		ID: "path-failover/blackhole-A0", Name: "path failover: blackhole portal A0", Status: StatusPassed,
		Start: start, End: start.Add(14500 * time.Millisecond),
		Measurements: map[string]Measurement{"path_dead_after": {Value: 12.4, Unit: "s"}, "io_resumed_after": {Value: 13, Unit: "s"}},
		Thresholds:   map[string]Threshold{"path_dead_after": {Max: ptr(26), Unit: "s"}},
	}))
	must(w.AddResult(TestResult{ID: "path-failover/reset-B0", Status: StatusFailed, Reason: "path vmhba64:C0:T1:L0 still active 30s after reset", Start: start, End: start.Add(30 * time.Second)}))
	must(w.AddResult(TestResult{ID: "alua/transition", Status: StatusSkipped, Reason: "lab profile: array has no ALUA"}))
	must(w.Close())
	return p
}

// entry is one raw tar entry, for building tampered archives.
type entry struct {
	hdr  tar.Header
	data []byte
}

func readEntries(t *testing.T, p string) []entry {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	var out []entry
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, entry{*hdr, data})
	}
}

func packEntries(t *testing.T, entries []entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for _, e := range entries {
		h := e.hdr
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.data))
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(e.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func regular(name string, data string) entry {
	return entry{tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644}, []byte(data)}
}

// verifyProblems runs Verify on data and returns its problems.
func verifyProblems(t *testing.T, data []byte) (*Manifest, []Problem, error) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "tampered.tgz")
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	m, err := Verify(p)
	if err == nil {
		return m, nil, nil
	}
	var ve *VerifyError
	if !errors.As(err, &ve) {
		t.Fatalf("Verify error is %T, want *VerifyError: %v", err, err)
	}
	if !strings.HasPrefix(err.Error(), "bundle "+p+": ") {
		t.Errorf("error %q does not start with the bundle path", err)
	}
	return m, ve.Problems, err
}

// rawHeader builds a ustar header by hand, for entries archive/tar refuses to write.
func rawHeader(name string, typ byte, size int) []byte {
	b := make([]byte, 512)
	copy(b[0:], name)
	copy(b[100:], "0000644\x00")
	copy(b[108:], "0000000\x00")
	copy(b[116:], "0000000\x00")
	copy(b[124:], fmt.Sprintf("%011o\x00", size))
	copy(b[136:], "00000000000\x00")
	b[156] = typ
	copy(b[257:], "ustar\x0000")
	copy(b[148:], "        ")
	sum := 0
	for _, c := range b {
		sum += int(c)
	}
	copy(b[148:], fmt.Sprintf("%06o\x00 ", sum))
	return b
}

func pad(b []byte) []byte {
	for len(b)%512 != 0 {
		b = append(b, 0)
	}
	return b
}

func paxRec(k, v string) string {
	r := " " + k + "=" + v + "\n"
	n := len(r) + 1
	for len(fmt.Sprint(n))+len(r) != n {
		n++
	}
	return fmt.Sprint(n) + r
}
