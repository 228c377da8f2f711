package failover

import (
	"fmt"
	"time"

	"github.com/certkit/certkit/harness/observe"
	"github.com/certkit/certkit/harness/workload"
	"github.com/certkit/certkit/reports/bundle"
)

// Limits are the timings a NOP-Out timeout failover is judged against, taken
// from the lab profile when the test ran and recorded with the evidence.
type Limits struct {
	NoopOutInterval time.Duration `json:"noop_out_interval"`
	NoopOutTimeout  time.Duration `json:"noop_out_timeout"`
	RecoveryTimeout time.Duration `json:"recovery_timeout"`
	DetectionSlack  time.Duration `json:"detection_slack"`
	FailbackTimeout time.Duration `json:"failback_timeout"`
	PollInterval    time.Duration `json:"poll_interval"`
}

// MaxDetection is the latest a silent path may turn dead: the NOP-Out that
// finds it silent may be sent up to one interval after the fault, its
// timeout runs, then the session has RecoveryTimeout to come back.
func (l Limits) MaxDetection() time.Duration {
	return l.NoopOutInterval + l.NoopOutTimeout + l.RecoveryTimeout + l.DetectionSlack
}

// Evidence is everything the verdict of failover.path.noop-timeout rests on;
// the test records it in the bundle and Judge derives the verdict from it
// alone, so a reviewer can re-derive it without the lab.
type Evidence struct {
	Limits     Limits    `json:"limits"`
	Host       string    `json:"host"` // host the test ran on, as the lab profile names it
	Device     string    `json:"device"`
	FaultPath  string    `json:"fault_path"`  // runtime name of the path whose portal went silent
	OtherPaths []string  `json:"other_paths"` // the paths that stayed up
	InjectedAt time.Time `json:"injected_at"`
	RevertedAt time.Time `json:"reverted_at"`
	// Samples are the path states polled through the whole test.
	Samples []observe.PathSample `json:"samples"`
	// IO is the read workload run on the device through the whole test.
	IO []workload.Sample `json:"io"`
	// ReadsBefore and ReadsAfter are each path's read operation counters
	// (`esxcli storage core path stats get`) at injection and after the
	// fault path was seen dead and I/O had resumed.
	ReadsBefore map[string]uint64 `json:"reads_before"`
	ReadsAfter  map[string]uint64 `json:"reads_after"`
	// WorkingPathsAfter is what `esxcli storage nmp device list` gave as the
	// device's working paths after the fault path was seen dead.
	WorkingPathsAfter []string `json:"working_paths_after"`
}

// wallClock returns a copy of e whose times carry no monotonic clock
// reading. Times decoded from a bundle have none, and time.Time compares
// and subtracts by the monotonic reading when both sides have one: judging
// live evidence on the wall clock too is what makes a replay give the same
// verdict and measurements, to the nanosecond.
func (e Evidence) wallClock() Evidence {
	e.InjectedAt, e.RevertedAt = e.InjectedAt.Round(0), e.RevertedAt.Round(0)
	samples := make([]observe.PathSample, len(e.Samples))
	for i, s := range e.Samples {
		s.At, s.Sent = s.At.Round(0), s.Sent.Round(0)
		samples[i] = s
	}
	e.Samples = samples
	io := make([]workload.Sample, len(e.IO))
	for i, s := range e.IO {
		s.Start, s.End = s.Start.Round(0), s.End.Round(0)
		io[i] = s
	}
	e.IO = io
	return e
}

// Verdict is the judgement of one run, with its measurements.
type Verdict struct {
	Failures []string
	// DetectionSeconds is from injection to the first sample showing the
	// fault path dead (resolution: one poll interval); 0 if never seen.
	DetectionSeconds float64
	// IOResumeSeconds is from the fault path being seen dead to the end of
	// the first successful I/O after it; -1 if I/O never resumed.
	IOResumeSeconds float64
	// RestoreSeconds is from revert to every path being active again; -1 if
	// that was never seen.
	RestoreSeconds float64
}

// Measurements are the verdict's measurements and the bounds they were
// judged against, as the bundle records them.
func (v Verdict) Measurements(l Limits) (map[string]bundle.Measurement, map[string]bundle.Threshold) {
	lo, hi := l.NoopOutTimeout.Seconds(), l.MaxDetection().Seconds()
	slack, fb, zero := l.DetectionSlack.Seconds(), l.FailbackTimeout.Seconds(), 0.0
	return map[string]bundle.Measurement{
			"detection_seconds":    {Value: v.DetectionSeconds, Unit: "s"},
			"io_resume_seconds":    {Value: v.IOResumeSeconds, Unit: "s"},
			"path_restore_seconds": {Value: v.RestoreSeconds, Unit: "s"},
		}, map[string]bundle.Threshold{
			"detection_seconds": {Min: &lo, Max: &hi, Unit: "s"},
			// -1 (never happened) falls below Min and shows as out of bounds.
			"io_resume_seconds":    {Min: &zero, Max: &slack, Unit: "s"},
			"path_restore_seconds": {Min: &zero, Max: &fb, Unit: "s"},
		}
}

// Passed reports whether nothing failed.
func (v Verdict) Passed() bool { return len(v.Failures) == 0 }

func (v *Verdict) failf(format string, args ...any) {
	v.Failures = append(v.Failures, fmt.Sprintf(format, args...))
}

// Judge derives the verdict from the evidence. It is a pure function.
func Judge(e Evidence) Verdict {
	e = e.wallClock()
	v := Verdict{IOResumeSeconds: -1, RestoreSeconds: -1}
	all := append([]string{e.FaultPath}, e.OtherPaths...)

	before, ok := lastBefore(e.Samples, e.InjectedAt)
	if !ok {
		v.failf("no path-state sample before the fault was injected")
	} else {
		for _, p := range all {
			if s := before.States[p]; s != "active" {
				v.failf("path %s was %q, not active, before the fault", p, orMissing(s))
			}
		}
	}

	deadAt, seen := observe.FirstState(e.Samples, e.FaultPath, "dead", e.InjectedAt)
	max := e.Limits.MaxDetection()
	switch {
	case !seen:
		v.failf("path %s was never seen dead after its portal went silent (limit %s = NoopOutInterval %s + NoopOutTimeout %s + RecoveryTimeout %s + slack %s)",
			e.FaultPath, max, e.Limits.NoopOutInterval, e.Limits.NoopOutTimeout, e.Limits.RecoveryTimeout, e.Limits.DetectionSlack)
	default:
		d := deadAt.Sub(e.InjectedAt)
		v.DetectionSeconds = d.Seconds()
		if d > max {
			v.failf("path %s turned dead %.2fs after its portal went silent; limit %.2fs (NoopOutInterval + NoopOutTimeout + RecoveryTimeout + slack)",
				e.FaultPath, d.Seconds(), max.Seconds())
		}
		if d < e.Limits.NoopOutTimeout {
			v.failf("path %s turned dead %.2fs after its portal went silent, before NoopOutTimeout (%.0fs) could have expired",
				e.FaultPath, d.Seconds(), e.Limits.NoopOutTimeout.Seconds())
		}
	}

	// The surviving paths must stay up: a host that drops healthy paths
	// would pass the failover checks for the wrong reason.
	end := e.RevertedAt
	if end.IsZero() && len(e.Samples) > 0 {
		end = e.Samples[len(e.Samples)-1].At
	}
	for _, s := range e.Samples {
		if s.At.Before(e.InjectedAt) || s.At.After(end) {
			continue
		}
		for _, p := range e.OtherPaths {
			if st := s.States[p]; st != "active" {
				v.failf("surviving path %s was %q at %s, while only %s was faulted",
					p, orMissing(st), s.At.Format(time.RFC3339Nano), e.FaultPath)
				goto survivorsDone
			}
		}
	}
survivorsDone:

	// I/O: nothing may fail (NMP retries hide a path failure from the
	// guest), and it must resume on a surviving path soon after the fault
	// path is declared dead.
	for _, io := range e.IO {
		if !io.OK {
			v.failf("a read of %s failed at %s: %s", e.Device, io.End.Format(time.RFC3339Nano), io.Error)
			break
		}
	}
	if seen {
		for _, io := range e.IO {
			if io.OK && !io.End.Before(deadAt) {
				v.IOResumeSeconds = io.End.Sub(deadAt).Seconds()
				break
			}
		}
		if v.IOResumeSeconds < 0 {
			v.failf("no read of %s succeeded after path %s was seen dead", e.Device, e.FaultPath)
		} else if v.IOResumeSeconds > e.Limits.DetectionSlack.Seconds() {
			v.failf("reads of %s resumed %.2fs after path %s was seen dead; limit %.2fs (slack)",
				e.Device, v.IOResumeSeconds, e.FaultPath, e.Limits.DetectionSlack.Seconds())
		}
	}
	moved := false
	for _, p := range e.OtherPaths {
		if e.ReadsAfter[p] > e.ReadsBefore[p] {
			moved = true
		}
	}
	if !moved {
		v.failf("no surviving path carried reads after the fault (read operations before %v, after %v)",
			e.ReadsBefore, e.ReadsAfter)
	}
	for _, w := range e.WorkingPathsAfter {
		if w == e.FaultPath {
			v.failf("NMP still lists the dead path %s as a working path of %s", w, e.Device)
		}
	}
	if len(e.WorkingPathsAfter) == 0 {
		v.failf("NMP lists no working path for %s after the failover", e.Device)
	}

	// Failback: after the revert every path is active again.
	if e.RevertedAt.IsZero() {
		v.failf("the fault was not reverted")
		return v
	}
	for _, s := range e.Samples {
		if s.At.Before(e.RevertedAt) {
			continue
		}
		up := true
		for _, p := range all {
			if s.States[p] != "active" {
				up = false
			}
		}
		if up {
			v.RestoreSeconds = s.At.Sub(e.RevertedAt).Seconds()
			break
		}
	}
	if v.RestoreSeconds < 0 {
		v.failf("paths %v were not all active again within %s of the revert", all, e.Limits.FailbackTimeout)
	} else if v.RestoreSeconds > e.Limits.FailbackTimeout.Seconds() {
		v.failf("paths came back %.2fs after the revert; limit %s", v.RestoreSeconds, e.Limits.FailbackTimeout)
	}
	return v
}

func lastBefore(samples []observe.PathSample, t time.Time) (observe.PathSample, bool) {
	var out observe.PathSample
	found := false
	for _, s := range samples {
		if s.At.After(t) {
			break
		}
		if s.Err == "" {
			out, found = s, true
		}
	}
	return out, found
}

func orMissing(s string) string {
	if s == "" {
		return "missing"
	}
	return s
}
