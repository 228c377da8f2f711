package failover

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/certkit/certkit/harness/esxcli"
	"github.com/certkit/certkit/harness/fault"
	"github.com/certkit/certkit/harness/observe"
	"github.com/certkit/certkit/harness/workload"
	"github.com/certkit/certkit/reports/bundle"
	"github.com/certkit/certkit/suites"
)

// replayNoopTimeout re-derives the verdict of failover.path.noop-timeout from
// the raw evidence: path states from the recorded `esxcli storage core path
// list` outputs, reads from the recorded `dd` commands, path counters and
// working paths from their recorded esxcli outputs, and the fault times from
// the fault timeline. Of evidence.json it uses only what the test decided
// before the fault (host, device, paths, limits), never its own digest of
// samples or I/O.
func replayNoopTimeout(rec suites.Recorded) (suites.Verdict, error) {
	ev, err := readJSON[Evidence](rec, "evidence.json")
	if err != nil {
		return suites.Verdict{}, err
	}
	timeline, err := readJSON[[]fault.Event](rec, bundle.TimelineFile)
	if err != nil {
		return suites.Verdict{}, err
	}
	ev.InjectedAt, ev.RevertedAt = time.Time{}, time.Time{}
	for _, e := range timeline {
		switch {
		case e.Action == "inject" && e.Error == "" && ev.InjectedAt.IsZero():
			ev.InjectedAt = effective(e)
		case e.Action == "revert" && e.Error == "" && ev.RevertedAt.IsZero():
			ev.RevertedAt = effective(e)
		}
	}
	if ev.InjectedAt.IsZero() {
		return suites.Verdict{}, fmt.Errorf("%s: no fault was injected", bundle.TimelineFile)
	}

	core, err := rec.Commands(ev.Host, "esxcli storage core path list")
	if err != nil {
		return suites.Verdict{}, err
	}
	ev.Samples = observe.SamplesFromResults(core)
	dds, err := rec.Commands(ev.Host, "dd")
	if err != nil {
		return suites.Verdict{}, err
	}
	ev.IO = reads(dds, ev.Device)
	nmp, err := rec.Commands(ev.Host, "esxcli storage nmp device list")
	if err != nil {
		return suites.Verdict{}, err
	}

	deadAt, seen := observe.FirstState(ev.Samples, ev.FaultPath, "dead", ev.InjectedAt)
	ev.ReadsBefore, ev.ReadsAfter, ev.WorkingPathsAfter = nil, nil, nil
	ev.ReadsBefore = readCounters(core, time.Time{}, ev.InjectedAt)
	if seen {
		until := ev.RevertedAt
		if until.IsZero() {
			until = rec.Result.End
		}
		ev.ReadsAfter = readCounters(core, deadAt, until)
		for _, r := range nmp {
			if r.ExitCode != 0 || r.End.Before(deadAt) || r.Start.After(until) {
				continue
			}
			if devs, err := esxcli.ParseNMPDeviceList(r.Stdout); err == nil && len(devs) == 1 && devs[0].UID == ev.Device {
				ev.WorkingPathsAfter = devs[0].WorkingPaths
			}
		}
	}
	v := Judge(ev)
	ms, _ := v.Measurements(ev.Limits)
	return suites.Verdict{Failures: v.Failures, Measurements: ms}, nil
}

func readJSON[T any](rec suites.Recorded, file string) (T, error) {
	var v T
	name, err := bundle.TestPath(rec.Result.ID, file)
	if err != nil {
		return v, err
	}
	data, err := rec.File(name)
	if err != nil {
		return v, err
	}
	if err := json.Unmarshal(data, &v); err != nil {
		return v, fmt.Errorf("%s: %w", name, err)
	}
	return v, nil
}

// reads turns the recorded dd reads of device into workload samples.
func reads(dds []*esxcli.Result, device string) []workload.Sample {
	prefix := "dd if=/vmfs/devices/disks/" + device + " "
	var out []workload.Sample
	for _, r := range dds {
		if !strings.HasPrefix(r.Command, prefix) {
			continue
		}
		s := workload.Sample{Start: r.Start, End: r.End, OK: r.ExitCode == 0}
		if !s.OK {
			s.Error, _, _ = strings.Cut(strings.TrimSpace(r.Stdout), "\n")
		}
		out = append(out, s)
	}
	return out
}

// readCounters returns each path's read operation counter from the last
// `esxcli storage core path stats get` of that path that ended in (from, to].
func readCounters(core []*esxcli.Result, from, to time.Time) map[string]uint64 {
	out := map[string]uint64{}
	for _, r := range core {
		if r.ExitCode != 0 || !strings.HasPrefix(r.Command, "esxcli storage core path stats get") ||
			!r.End.After(from) || r.End.After(to) {
			continue
		}
		stats, err := esxcli.ParsePathStats(r.Stdout)
		if err != nil {
			continue
		}
		for _, s := range stats {
			out[s.Path] = s.ReadOperations
		}
	}
	return out
}
