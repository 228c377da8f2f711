package suites

import (
	"fmt"
	"math"
	"sort"
	"strings"

	"github.com/certkit/certkit/harness/esxcli"
	"github.com/certkit/certkit/reports/bundle"
)

// Recorded is what a bundle holds for one test, as a replay reads it.
type Recorded struct {
	Result bundle.TestResult
	// File returns a file of the bundle by its path in the bundle.
	File func(name string) ([]byte, error)
}

// Commands returns the commands recorded on host whose log file is the one
// of command (e.g. every `esxcli storage core ...` for "esxcli storage core
// path list"), that ran within the test, as the esxcli client returned them.
func (r Recorded) Commands(host, command string) ([]*esxcli.Result, error) {
	name, err := bundle.CommandLogPath(host, command)
	if err != nil {
		return nil, err
	}
	data, err := r.File(name)
	if err != nil {
		return nil, err
	}
	cmds, err := bundle.ParseCommandLog(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	var out []*esxcli.Result
	for _, c := range cmds {
		end := c.Start.Add(c.Duration)
		if c.Start.Before(r.Result.Start) || end.After(r.Result.End) {
			continue
		}
		out = append(out, &esxcli.Result{Host: host, Command: c.Command, Stdout: string(c.Output),
			ExitCode: c.ExitCode, Start: c.Start, End: end})
	}
	return out, nil
}

// Verdict is a judgement re-derived from evidence.
type Verdict struct {
	Failures     []string
	Measurements map[string]bundle.Measurement
}

// Status is the result status the verdict stands for.
func (v Verdict) Status() string {
	if len(v.Failures) == 0 {
		return bundle.StatusPassed
	}
	return bundle.StatusFailed
}

// Replayed compares one recorded result with its replay.
type Replayed struct {
	ID       string
	Recorded string // status the run recorded
	Replayed string // status the evidence gives; "" when not replayable
	// Failures are the replayed verdict's failures.
	Failures []string
	// Differences list where the recording and the evidence disagree;
	// empty when the recorded result stands.
	Differences []string
	// Note explains a test that was not replayed.
	Note string
}

// MeasurementTolerance is how far a re-derived measurement may be from the
// recorded one: timestamps are recorded to the nanosecond, but the run's
// own clock readings and the command log's may differ by microseconds.
const MeasurementTolerance = 0.01

// Replay re-derives the verdict of every recorded test from the bundle's
// evidence and reports where it differs from what was recorded.
func Replay(b *bundle.Bundle) []Replayed {
	byID := map[string]Spec{}
	for _, s := range Catalog() {
		byID[s.ID] = s
	}
	var out []Replayed
	for _, res := range b.Results() {
		r := Replayed{ID: res.ID, Recorded: res.Status}
		spec, known := byID[res.ID]
		switch {
		case !known:
			r.Note = "not in this certkit's catalog"
			r.Differences = append(r.Differences, "test "+res.ID+" is not in the catalog of this certkit; replay it with the certkit version that recorded it")
		case res.Status == bundle.StatusError && strings.HasPrefix(res.Reason, bundle.NoVerdictReason):
			r.Note = res.Reason // the run died before this test ended; finalize recorded it
		case res.Status == bundle.StatusSkipped:
			r.Note = "skipped: " + res.Reason
		case spec.Replay == nil:
			r.Note = "this test has no replay"
		default:
			v, err := spec.Replay(Recorded{Result: res, File: b.File})
			if err != nil {
				r.Differences = append(r.Differences, "evidence cannot be replayed: "+err.Error())
				break
			}
			r.Replayed, r.Failures = v.Status(), v.Failures
			if r.Replayed != res.Status {
				r.Differences = append(r.Differences, fmt.Sprintf("recorded %s, but the evidence says %s", res.Status, r.Replayed))
			}
			r.Differences = append(r.Differences, compareMeasurements(res.Measurements, v.Measurements)...)
		}
		out = append(out, r)
	}
	return out
}

func compareMeasurements(recorded, replayed map[string]bundle.Measurement) []string {
	var diffs []string
	names := make([]string, 0, len(recorded)+len(replayed))
	for n := range recorded {
		names = append(names, n)
	}
	for n := range replayed {
		if _, ok := recorded[n]; !ok {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	for _, n := range names {
		a, okA := recorded[n]
		b, okB := replayed[n]
		switch {
		case !okA:
			diffs = append(diffs, fmt.Sprintf("measurement %s was not recorded (evidence gives %g %s)", n, b.Value, b.Unit))
		case !okB:
			diffs = append(diffs, fmt.Sprintf("measurement %s (recorded %g %s) cannot be derived from the evidence", n, a.Value, a.Unit))
		case a.Unit != b.Unit || math.Abs(a.Value-b.Value) > MeasurementTolerance:
			diffs = append(diffs, fmt.Sprintf("measurement %s: recorded %g %s, evidence gives %g %s", n, a.Value, a.Unit, b.Value, b.Unit))
		}
	}
	return diffs
}
