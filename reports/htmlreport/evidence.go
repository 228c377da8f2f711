package htmlreport

import (
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"slices"
	"time"
)

// The report reads these files of a test (tests/<id>/...), when present.
// Their shapes are the ones the harness writes; every field is optional,
// so a test family that records less still gets a report.
//
// evidence.json (suites/failover.Evidence and families shaped like it):
//
//	{"host", "device", "fault_path", "other_paths": [...],
//	 "injected_at", "reverted_at", "limits": {name: nanoseconds},
//	 "samples": [{"At", "Sent", "States": {path: state}, "Err"}],   (harness/observe.PathSample)
//	 "io": [{"start", "end", "ok", "error"}],                        (harness/workload.Sample)
//	 "reads_before": {path: n}, "reads_after": {path: n}, "working_paths_after": [...]}
//
// timeline.json (harness/fault.Event):
//
//	[{"at", "action", "array", "portal", "kind", "fault_id", "array_at", "error"}]
type evidence struct {
	Host              string                     `json:"host"`
	Device            string                     `json:"device"`
	FaultPath         string                     `json:"fault_path"`
	OtherPaths        []string                   `json:"other_paths"`
	InjectedAt        time.Time                  `json:"injected_at"`
	RevertedAt        time.Time                  `json:"reverted_at"`
	Limits            map[string]json.RawMessage `json:"limits"`
	Samples           []pathSample               `json:"samples"`
	IO                []ioSample                 `json:"io"`
	ReadsBefore       map[string]uint64          `json:"reads_before"`
	ReadsAfter        map[string]uint64          `json:"reads_after"`
	WorkingPathsAfter []string                   `json:"working_paths_after"`
}

// pathSample is one poll of path states (JSON keys as harness/observe
// writes them: "At", "Sent", "States", "Err"; matched case-insensitively).
type pathSample struct {
	At     time.Time         `json:"at"`
	Sent   time.Time         `json:"sent"`
	States map[string]string `json:"states"`
	Err    string            `json:"err"`
}

// ioSample is one I/O of the workload.
type ioSample struct {
	Start time.Time `json:"start"`
	End   time.Time `json:"end"`
	OK    bool      `json:"ok"`
	Error string    `json:"error"`
}

// faultEvent is one line of a fault timeline.
type faultEvent struct {
	At      time.Time `json:"at"`
	Action  string    `json:"action"`
	Array   string    `json:"array"`
	Portal  string    `json:"portal"`
	Kind    string    `json:"kind"`
	FaultID string    `json:"fault_id"`
	ArrayAt time.Time `json:"array_at"`
	Error   string    `json:"error"`
}

// When is when the event took effect: the array's clock when it says so.
func (e faultEvent) When() time.Time {
	if !e.ArrayAt.IsZero() {
		return e.ArrayAt
	}
	return e.At
}

// maxEvidenceBytes bounds what the report parses of one evidence file.
const maxEvidenceBytes = 64 << 20

// readJSON decodes name from raw into v. It reports whether the file
// exists; a file that exists but cannot be decoded is an error.
func readJSON(raw fs.FS, name string, v any) (bool, error) {
	f, err := raw.Open(name)
	if err != nil {
		return false, nil
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return true, err
	}
	if !fi.Mode().IsRegular() {
		return true, fmt.Errorf("%s: not a regular file", name)
	}
	if fi.Size() > maxEvidenceBytes {
		return true, fmt.Errorf("%s: %d bytes, too big to draw (over %d); open the raw file", name, fi.Size(), int64(maxEvidenceBytes))
	}
	data, err := io.ReadAll(io.LimitReader(f, maxEvidenceBytes))
	if err != nil {
		return true, fmt.Errorf("%s: %v", name, err)
	}
	if err := json.Unmarshal(data, v); err != nil {
		return true, fmt.Errorf("%s: cannot be read as evidence: %v", name, err)
	}
	return true, nil
}

// sortedSamples returns the samples in time order (they are recorded so;
// a bundle is not trusted to be).
func sortedSamples(s []pathSample) []pathSample {
	out := slices.Clone(s)
	slices.SortStableFunc(out, func(a, b pathSample) int { return a.At.Compare(b.At) })
	return out
}
