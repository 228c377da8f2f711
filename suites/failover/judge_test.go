package failover

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/certkit/certkit/harness/observe"
	"github.com/certkit/certkit/harness/workload"
)

// A scripted run of the silent-path test, second by second from t0 (the
// injection); each case bends one part of it and names what must fail.
var t0 = time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)

func at(sec float64) time.Time { return t0.Add(time.Duration(sec * float64(time.Second))) }

func healthy() Evidence {
	e := Evidence{
		Limits: Limits{NoopOutInterval: time.Second, NoopOutTimeout: 10 * time.Second, RecoveryTimeout: time.Second,
			DetectionSlack: 3 * time.Second, FailbackTimeout: 30 * time.Second, PollInterval: 250 * time.Millisecond},
		Device: "naa.6001405000000000000000000000000a", FaultPath: "vmhba64:C0:T0:L0", OtherPaths: []string{"vmhba64:C1:T0:L0"},
		InjectedAt: t0, RevertedAt: at(14),
		ReadsBefore:       map[string]uint64{"vmhba64:C0:T0:L0": 40, "vmhba64:C1:T0:L0": 0},
		ReadsAfter:        map[string]uint64{"vmhba64:C0:T0:L0": 40, "vmhba64:C1:T0:L0": 3},
		WorkingPathsAfter: []string{"vmhba64:C1:T0:L0"},
	}
	for s := -2.0; s <= 20; s += 0.25 {
		st := "active"
		if s >= 11.5 && s < 15 {
			st = "dead"
		}
		e.Samples = append(e.Samples, observe.PathSample{At: at(s),
			States: map[string]string{"vmhba64:C0:T0:L0": st, "vmhba64:C1:T0:L0": "active"}})
	}
	// Reads: quick before the fault, one stalled through the silence, then quick on the surviving path.
	e.IO = []workload.Sample{
		{Start: at(-1), End: at(-0.99), OK: true},
		{Start: at(0.2), End: at(11.6), OK: true},
		{Start: at(11.9), End: at(11.91), OK: true},
	}
	return e
}

func TestJudgePassesAHealthyFailover(t *testing.T) {
	v := Judge(healthy())
	if !v.Passed() {
		t.Fatalf("healthy run failed: %v", v.Failures)
	}
	if v.DetectionSeconds != 11.5 {
		t.Errorf("detection = %v s, want 11.5", v.DetectionSeconds)
	}
	if v.RestoreSeconds != 1 {
		t.Errorf("restore = %v s, want 1 (first all-active sample at +15 s, revert at +14 s)", v.RestoreSeconds)
	}
}

func TestJudgeFailsEachBrokenBehaviour(t *testing.T) {
	cases := []struct {
		name  string
		bend  func(*Evidence)
		wants string
	}{
		{"path never declared dead", func(e *Evidence) { setFaultState(e, 0, 100, "active") }, "never seen dead"},
		{"dead too late", func(e *Evidence) {
			setFaultState(e, 0, 15.5, "active")
			setFaultState(e, 15.5, 17, "dead")
			e.RevertedAt = at(16.5)
		}, "limit 15.00s"},
		{"dead before NoopOutTimeout", func(e *Evidence) { setFaultState(e, 5, 15, "dead") }, "before NoopOutTimeout"},
		{"a read failed", func(e *Evidence) {
			e.IO[2] = workload.Sample{Start: at(11.9), End: at(11.91), Error: "dd: /vmfs/devices/disks/naa: Input/output error"}
		}, "failed"},
		{"reads never resumed", func(e *Evidence) { e.IO = e.IO[:1] }, "no read of"},
		{"surviving path carried nothing", func(e *Evidence) { e.ReadsAfter["vmhba64:C1:T0:L0"] = 0 }, "no surviving path carried reads"},
		{"NMP kept the dead path", func(e *Evidence) { e.WorkingPathsAfter = []string{"vmhba64:C0:T0:L0"} }, "still lists the dead path"},
		{"surviving path flapped", func(e *Evidence) { e.Samples[20].States["vmhba64:C1:T0:L0"] = "dead" }, "surviving path"},
		{"never came back", func(e *Evidence) { setFaultState(e, 11.5, 100, "dead") }, "not all active again"},
		{"not reverted", func(e *Evidence) { e.RevertedAt = time.Time{} }, "not reverted"},
		{"not active before the fault", func(e *Evidence) { setFaultState(e, -5, 0.1, "standby") }, "before the fault"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := healthy()
			c.bend(&e)
			v := Judge(e)
			if v.Passed() {
				t.Fatalf("%s: judged passed", c.name)
			}
			if !strings.Contains(strings.Join(v.Failures, "\n"), c.wants) {
				t.Fatalf("%s: failures %q do not mention %q", c.name, v.Failures, c.wants)
			}
		})
	}
}

// setFaultState sets the fault path's state in samples within [from, to) s.
func setFaultState(e *Evidence, from, to float64, state string) {
	for _, s := range e.Samples {
		if !s.At.Before(at(from)) && s.At.Before(at(to)) {
			s.States[e.FaultPath] = state
		}
	}
}

// A replay judges evidence decoded from the bundle; the live run must judge
// the same instants the same way, or the replay reports a verdict it did not
// reach: the run's clock readings must not change the outcome.
func TestJudgeGivesTheSameVerdictLiveAndFromTheBundle(t *testing.T) {
	live := healthy()
	now := time.Now() // carries a monotonic reading, as live evidence does
	shift := func(tm time.Time) time.Time { return now.Add(tm.Sub(t0)) }
	live.InjectedAt, live.RevertedAt = shift(live.InjectedAt), shift(live.RevertedAt)
	for i := range live.Samples {
		live.Samples[i].At = shift(live.Samples[i].At)
	}
	for i := range live.IO {
		live.IO[i].Start, live.IO[i].End = shift(live.IO[i].Start), shift(live.IO[i].End)
	}
	data, err := json.Marshal(live)
	if err != nil {
		t.Fatal(err)
	}
	var decoded Evidence
	if err := json.Unmarshal(data, &decoded); err != nil {
		t.Fatal(err)
	}
	a, b := Judge(live), Judge(decoded)
	if !reflect.DeepEqual(a, b) {
		t.Fatalf("live verdict %+v, from the bundle %+v", a, b)
	}
}
