package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	xhtml "golang.org/x/net/html"

	"github.com/certkit/certkit/harness/fault"
	"github.com/certkit/certkit/harness/observe"
	"github.com/certkit/certkit/harness/workload"
	"github.com/certkit/certkit/reports/bundle"
	"github.com/certkit/certkit/suites/failover"
)

// runReport runs `certkit report ARGS` in this process and returns its
// output and exit code.
func runReport(t *testing.T, args ...string) (string, int, error) {
	t.Helper()
	cmd := reportCmd()
	cmd.SetArgs(args)
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SilenceUsage = true
	err := cmd.Execute()
	var ee *exitError
	switch {
	case errors.As(err, &ee):
		return out.String(), ee.code, err
	case err != nil:
		return out.String(), exitSetup, err
	}
	return out.String(), 0, nil
}

// The report draws the evidence exactly as the failover family records it:
// this pins the JSON shape of failover.Evidence, observe.PathSample,
// workload.Sample and fault.Event to what the report reads.
func TestReportDrawsFailoverEvidence(t *testing.T) {
	t0 := time.Date(2026, 11, 23, 16, 0, 0, 0, time.UTC)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	const faulted, survivor = "vmhba64:C0:T0:L0", "vmhba64:C1:T0:L0"
	ev := failover.Evidence{Host: "esx-01", Device: "naa.1", FaultPath: faulted, OtherPaths: []string{survivor},
		InjectedAt: at(0), RevertedAt: at(13), ReadsBefore: map[string]uint64{faulted: 3}, ReadsAfter: map[string]uint64{faulted: 3, survivor: 9},
		WorkingPathsAfter: []string{survivor}}
	for s := 0.0; s < 15; s += 0.5 {
		st := "active"
		if s >= 12 && s < 14 {
			st = "dead"
		}
		ev.Samples = append(ev.Samples, observe.PathSample{At: at(s), Sent: at(s - 0.01), States: map[string]string{faulted: st, survivor: "active"}})
		ev.IO = append(ev.IO, workload.Sample{Start: at(s), End: at(s + 0.01), OK: s != 7})
	}
	p := filepath.Join(t.TempDir(), "run.tgz")
	w, err := bundle.Create(p, bundle.Meta{ToolVersion: version})
	if err != nil {
		t.Fatal(err)
	}
	id := failover.NoopTimeoutID
	w.WriteJSON("tests/"+id+"/"+bundle.EvidenceFile, ev)
	w.WriteJSON("tests/"+id+"/"+bundle.TimelineFile, []fault.Event{
		{At: at(0), Action: "inject", Array: "array-a", Portal: "A0", Kind: "blackhole", FaultID: "f1"},
		{At: at(13), Action: "revert", Array: "array-a", Portal: "A0", Kind: "blackhole", FaultID: "f1"}})
	v := failover.Judge(ev)
	ms, ths := v.Measurements(failover.Limits{NoopOutTimeout: 10 * time.Second, RecoveryTimeout: time.Second, NoopOutInterval: time.Second})
	if err := w.AddResult(bundle.TestResult{ID: id, Status: bundle.StatusFailed, Reason: strings.Join(v.Failures, "; "),
		Start: at(-1), End: at(15), Measurements: ms, Thresholds: ths}); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}

	dir := filepath.Join(t.TempDir(), "report")
	out, code, err := runReport(t, p, "-o", dir)
	if code != 0 || strings.TrimSpace(out) != filepath.Join(dir, "index.html") {
		t.Fatalf("report: exit %d %v\n%s", code, err, out)
	}
	page, err := os.ReadFile(filepath.Join(dir, "index.html"))
	if err != nil {
		t.Fatal(err)
	}
	doc, err := xhtml.Parse(bytes.NewReader(page))
	if err != nil {
		t.Fatal(err)
	}
	var classes []string
	var lanes []string
	var walk func(*xhtml.Node)
	walk = func(n *xhtml.Node) {
		for _, a := range n.Attr {
			if a.Key == "class" {
				classes = append(classes, a.Val)
				if a.Val == "rowlabel" && n.FirstChild != nil {
					lanes = append(lanes, n.FirstChild.Data)
				}
			}
		}
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			walk(c)
		}
	}
	walk(doc)
	if got := strings.Join(lanes, "|"); got != faulted+" (faulted)|"+survivor+"|I/O (reads)|read latency" {
		t.Errorf("timeline lanes = %q", got)
	}
	for _, want := range []string{"st-dead", "st-active", "io-ok", "io-fail", "mk mk-inject", "mk mk-revert", "band"} {
		found := false
		for _, c := range classes {
			found = found || c == want
		}
		if !found {
			t.Errorf("nothing of class %q in the report: the evidence's JSON shape and the report disagree", want)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "raw", "tests", id, bundle.EvidenceFile)); err != nil {
		t.Errorf("raw evidence not extracted: %v", err)
	}
}

func TestReportRefusesWhatItCannotVouchFor(t *testing.T) {
	good := writeBundle(t, bundle.Meta{}, passed("a"))
	corrupt := filepath.Join(t.TempDir(), "corrupt.tgz")
	data, _ := os.ReadFile(good)
	data[len(data)/2] ^= 0xff
	os.WriteFile(corrupt, data, 0o644)
	staged := filepath.Join(t.TempDir(), "staged.tgz")
	if _, err := bundle.Create(staged, bundle.Meta{ToolVersion: "v"}); err != nil {
		t.Fatal(err)
	}
	used := t.TempDir()
	if _, code, err := runReport(t, good, "-o", used); code != 0 {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"corrupt", []string{corrupt, "-o", t.TempDir()}, exitCorrupt, "no report of a bundle that does not verify"},
		{"unsealed", []string{staged, "-o", t.TempDir()}, exitIncomplete, "no report of an unsealed run: finalize it first"},
		{"no -o", []string{good}, exitSetup, "-o DIR is required"},
		{"over an old report", []string{good, "-o", used}, exitSetup, "index.html already exists"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, code, err := runReport(t, tc.args...)
			if code != tc.code || err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("report: exit %d (want %d): %v, want %q", code, tc.code, err, tc.want)
			}
		})
	}
}
