package observe

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/certkit/certkit/harness/esxcli"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// at is t0 plus n seconds.
func at(n float64) time.Time { return t0.Add(time.Duration(n * float64(time.Second))) }

// pathList renders `esxcli storage core path list` for runtime=state pairs,
// in ESXi's layout.
func pathList(pairs ...string) string {
	var b strings.Builder
	for i := 0; i+1 < len(pairs); i += 2 {
		rt, state := pairs[i], pairs[i+1]
		var c, tgt int
		fmt.Sscanf(rt, "vmhba64:C%d:T%d:L0", &c, &tgt)
		fmt.Fprintf(&b, "iqn.1998-01.com.vmware:esx-01-00023d00000%d,iqn.2024-01.io.certkit:array-1,t,%d-naa.6001405a\n", c+1, c+1)
		fmt.Fprintf(&b, "   UID: iqn.1998-01.com.vmware:esx-01-00023d00000%d,iqn.2024-01.io.certkit:array-1,t,%d-naa.6001405a\n", c+1, c+1)
		fmt.Fprintf(&b, "   Runtime Name: %s\n   Device: naa.6001405a\n   Adapter: vmhba64\n", rt)
		fmt.Fprintf(&b, "   Channel: %d\n   Target: %d\n   LUN: 0\n   Plugin: NMP\n   State: %s\n   Transport: iscsi\n\n", c, tgt, state)
	}
	return b.String()
}

// step is one scripted answer of the fake host.
type step struct {
	stdout string
	code   int
	err    string // transport error (timeout, connection lost)
}

// fakeHost answers path list polls from a script, stamping poll n with
// times n s .. n+0.5 s after t0; when the script is used up it blocks until
// the poll's ctx ends, so the samples are exactly the script.
type fakeHost struct {
	script []step

	// hold[n], when set, holds poll n's answer until closed.
	hold map[int]chan struct{}

	mu      sync.Mutex
	n       int
	results []*esxcli.Result
	usedUp  chan struct{}
}

func newFakeHost(script ...step) *fakeHost {
	return &fakeHost{script: script, usedUp: make(chan struct{})}
}

func (f *fakeHost) Esxcli(ctx context.Context, args ...string) (*esxcli.Result, error) {
	f.mu.Lock()
	n := f.n
	f.n++
	if n == len(f.script) {
		close(f.usedUp)
	}
	f.mu.Unlock()
	if n >= len(f.script) {
		<-ctx.Done()
		return &esxcli.Result{Command: "esxcli " + strings.Join(args, " "), ExitCode: -1, Err: ctx.Err().Error()}, ctx.Err()
	}
	if h := f.hold[n]; h != nil {
		<-h
	}
	s := f.script[n]
	r := &esxcli.Result{Host: "esx-01", Command: "esxcli " + strings.Join(args, " "), Stdout: s.stdout,
		ExitCode: s.code, Err: s.err, Start: at(float64(n)), End: at(float64(n) + 0.5)}
	f.mu.Lock()
	f.results = append(f.results, r)
	f.mu.Unlock()
	switch {
	case s.err != "":
		r.ExitCode = -1
		return r, errors.New(s.err)
	case s.code != 0:
		return r, &esxcli.ExitError{Result: r}
	}
	return r, nil
}

const (
	pA = "vmhba64:C0:T0:L0"
	pB = "vmhba64:C1:T1:L0"
)

// failover is a path dying and coming back, with one failed poll.
func failover() []step {
	return []step{
		{stdout: pathList(pA, "active", pB, "active")},
		{stdout: pathList(pA, "active", pB, "active")},
		{stdout: pathList(pA, "dead", pB, "active")},
		{err: `esxcli: host esx-01: "esxcli storage core path list" did not finish within the command timeout 20s`},
		{stdout: pathList(pA, "dead", pB, "active")},
		{stdout: "", code: 1},
		{stdout: pathList(pA, "active", pB, "active")},
	}
}

func TestWatcherKeepsEverySampleInOrder(t *testing.T) {
	host := newFakeHost(failover()...)
	w := WatchPaths(context.Background(), host, time.Millisecond)
	<-host.usedUp
	samples := w.Stop()
	if len(samples) != 7 {
		t.Fatalf("%d samples, want 7:\n%v", len(samples), samples)
	}
	for i, s := range samples {
		if s.Sent != at(float64(i)) || s.At != at(float64(i)+0.5) {
			t.Errorf("sample %d stamped %v .. %v", i, s.Sent, s.At)
		}
	}
	if want := map[string]string{pA: "dead", pB: "active"}; !reflect.DeepEqual(samples[2].States, want) {
		t.Errorf("sample 2 states %v", samples[2].States)
	}
	if !strings.Contains(samples[3].Err, "did not finish") || samples[3].States != nil {
		t.Errorf("sample 3 (timed out) %+v", samples[3])
	}
	if !strings.Contains(samples[5].Err, "exited 1") {
		t.Errorf("sample 5 (exit 1) %+v", samples[5])
	}
	if got := w.Latest(); !reflect.DeepEqual(got, samples[6]) {
		t.Errorf("Latest = %v", got)
	}
	// A recorded bundle holds the results: replay derives the same samples.
	if replay := SamplesFromResults(host.results); !reflect.DeepEqual(replay, samples) {
		t.Errorf("replayed samples differ:\n%v\n%v", replay, samples)
	}
}

func TestWatcherKeepsUnparsableOutputAsFailedSample(t *testing.T) {
	host := newFakeHost(step{stdout: "vmhba64:C0:T0:L0\n   State: active\n"})
	w := WatchPaths(context.Background(), host, time.Millisecond)
	s, err := w.WaitFor(context.Background(), func(PathSample) bool { return true })
	w.Stop()
	if err != nil || !strings.Contains(s.Err, `no "Runtime Name" field`) {
		t.Errorf("sample %+v, %v", s, err)
	}
}

func TestWaitForReturnsFirstMatchingSampleFromLatestOn(t *testing.T) {
	host := newFakeHost(failover()...)
	release := make(chan struct{})
	host.hold = map[int]chan struct{}{3: release}
	w := WatchPaths(context.Background(), host, time.Millisecond)
	defer w.Stop()
	s, err := w.WaitFor(context.Background(), func(s PathSample) bool { return s.States[pA] == "dead" })
	if err != nil || s.At != at(2.5) {
		t.Fatalf("got %v, %v; want the sample at 2.5 s", s, err)
	}
	close(release)
	s, err = w.WaitFor(context.Background(), func(s PathSample) bool { return s.Count("active") == 2 })
	if err != nil {
		t.Fatal(err)
	}
	// The healthy samples before the fault are older than the latest: they
	// do not count.
	if s.At != at(6.5) {
		t.Errorf("matched the sample at %v, want 6.5 s", s.At.Sub(t0))
	}
}

func TestWaitForFailsWhenContextEndsOrWatcherStops(t *testing.T) {
	host := newFakeHost(step{stdout: pathList(pA, "active")})
	w := WatchPaths(context.Background(), host, time.Millisecond)
	<-host.usedUp
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	never := func(s PathSample) bool { return s.States[pA] == "dead" }
	_, err := w.WaitFor(ctx, never)
	if err == nil || !strings.Contains(err.Error(), "context canceled") || !strings.Contains(err.Error(), pA+"=active") {
		t.Errorf("ctx ended: %v", err)
	}
	w.Stop()
	_, err = w.WaitFor(context.Background(), never)
	if err == nil || !strings.Contains(err.Error(), "watcher stopped") {
		t.Errorf("stopped: %v", err)
	}
}

func TestWaitForBeforeFirstSample(t *testing.T) {
	host := newFakeHost(step{stdout: pathList(pA, "active")})
	w := WatchPaths(context.Background(), host, time.Millisecond)
	defer w.Stop()
	s, err := w.WaitFor(context.Background(), func(s PathSample) bool { return s.States[pA] == "active" })
	if err != nil || s.At != at(0.5) {
		t.Errorf("got %v, %v", s, err)
	}
}

func TestStopEndsWithContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	host := newFakeHost(step{stdout: pathList(pA, "active")})
	w := WatchPaths(ctx, host, time.Millisecond)
	<-host.usedUp
	cancel()
	if got := w.Stop(); len(got) != 1 {
		t.Errorf("%d samples", len(got))
	}
}

// The judging helpers are pure: they see only samples.
func judged() []PathSample {
	return []PathSample{
		{At: at(0), States: map[string]string{pA: "active", pB: "active"}},
		{At: at(1), States: map[string]string{pA: "active", pB: "active"}},
		{At: at(2), Err: "timeout"},
		{At: at(3), States: map[string]string{pA: "dead", pB: "active"}},
		{At: at(4), States: map[string]string{pA: "dead", pB: "active"}},
		{At: at(5), States: map[string]string{pA: "active", pB: "active"}},
		{At: at(6), States: map[string]string{pA: "active"}},
	}
}

func TestFirstState(t *testing.T) {
	s := judged()
	if got, ok := FirstState(s, pA, "dead", at(0.5)); !ok || got != at(3) {
		t.Errorf("dead at %v, %v", got, ok)
	}
	if got, ok := FirstState(s, pA, "active", at(3)); !ok || got != at(5) {
		t.Errorf("active again at %v, %v", got, ok)
	}
	if got, ok := FirstState(s, pA, "active", at(1)); !ok || got != at(1) {
		t.Errorf("a sample at the moment itself counts: %v, %v", got, ok)
	}
	if _, ok := FirstState(s, pB, "dead", at(0)); ok {
		t.Error("pB never died")
	}
	if _, ok := FirstState(nil, pA, "dead", at(0)); ok {
		t.Error("no samples, no state")
	}
}

func TestStateAt(t *testing.T) {
	s := judged()
	for _, c := range []struct {
		t     time.Time
		path  string
		state string
		ok    bool
	}{
		{at(-1), pA, "", false},
		{at(0), pA, "active", true},
		{at(2.5), pA, "active", true}, // the failed poll says nothing
		{at(3.9), pA, "dead", true},
		{at(10), pA, "active", true},
		{at(10), pB, "", false}, // gone from the last sample
	} {
		if st, ok := StateAt(s, c.path, c.t); st != c.state || ok != c.ok {
			t.Errorf("StateAt(%s, %v) = %q, %v; want %q, %v", c.path, c.t, st, ok, c.state, c.ok)
		}
	}
}

func TestTransitionsAndPaths(t *testing.T) {
	want := []Transition{
		{Path: pA, From: "active", To: "dead", At: at(3)},
		{Path: pA, From: "dead", To: "active", At: at(5)},
		{Path: pB, From: "active", To: "", At: at(6)},
	}
	if got := Transitions(judged()); !reflect.DeepEqual(got, want) {
		t.Errorf("got  %v\nwant %v", got, want)
	}
	if got := Paths(judged()); !reflect.DeepEqual(got, []string{pA, pB}) {
		t.Errorf("Paths = %v", got)
	}
}

func TestSampleString(t *testing.T) {
	s := PathSample{At: at(0), States: map[string]string{pB: "active", pA: "dead"}}
	if got := s.String(); got != "03:04:05.000: "+pA+"=dead "+pB+"=active" {
		t.Errorf("%q", got)
	}
	if s.Count("dead") != 1 || s.Count("standby") != 0 {
		t.Error("Count")
	}
}
