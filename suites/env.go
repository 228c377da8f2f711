package suites

import (
	"encoding/json"
	"fmt"
	"path"
	"sync"
	"time"

	"github.com/certkit/certkit/harness/esxcli"
	"github.com/certkit/certkit/harness/fault"
	"github.com/certkit/certkit/harness/lab"
	"github.com/certkit/certkit/reports/bundle"
	"github.com/certkit/certkit/targets/control"
)

// Host is a host under test, reached over SSH.
type Host struct {
	Name   string
	Config lab.Host
	Esxcli *esxcli.Client
}

// Array is an array in the lab, reached through its control API.
type Array struct {
	Name    string
	Control *control.Client
	Info    control.Info
}

// Env is what a spec gets: the lab, its connections, the fault tracker and
// the evidence recorder of the spec being run.
type Env struct {
	Profile *lab.Profile
	Hosts   []*Host
	Arrays  []*Array
	Faults  *fault.Tracker
	Bundle  *bundle.Writer

	mu      sync.Mutex
	current *specRecord
}

// specRecord collects what a spec measured; the runner turns it into the
// spec's result when the spec ends.
type specRecord struct {
	id           string
	start        time.Time
	measurements map[string]bundle.Measurement
	thresholds   map[string]bundle.Threshold
	evidenceErrs []error
}

// SpecID is the ID of the spec now running.
func (e *Env) SpecID() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.current == nil {
		return ""
	}
	return e.current.id
}

// Measure records a measurement of the running spec (e.g. detection_seconds).
func (e *Env) Measure(name string, value float64, unit string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.current != nil {
		e.current.measurements[name] = bundle.Measurement{Value: value, Unit: unit}
	}
}

// Threshold records the bounds a measurement was judged against; nil means
// unbounded on that side.
func (e *Env) Threshold(name string, min, max *float64, unit string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.current != nil {
		e.current.thresholds[name] = bundle.Threshold{Min: min, Max: max, Unit: unit}
	}
}

// Evidence writes a file under tests/<spec id>/ in the bundle.
func (e *Env) Evidence(name string, data []byte) {
	id := e.SpecID()
	if err := e.Bundle.WriteFile(path.Join("tests", id, name), data); err != nil {
		e.evidenceError(err)
	}
}

// EvidenceJSON writes v as indented JSON under tests/<spec id>/.
func (e *Env) EvidenceJSON(name string, v any) {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		e.evidenceError(fmt.Errorf("evidence %s: %w", name, err))
		return
	}
	e.Evidence(name, append(b, '\n'))
}

func (e *Env) evidenceError(err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.current != nil {
		e.current.evidenceErrs = append(e.current.evidenceErrs, err)
	}
}

func (e *Env) begin(id string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.current = &specRecord{id: id, start: time.Now(),
		measurements: map[string]bundle.Measurement{}, thresholds: map[string]bundle.Threshold{}}
}

func (e *Env) end() *specRecord {
	e.mu.Lock()
	defer e.mu.Unlock()
	r := e.current
	e.current = nil
	return r
}
