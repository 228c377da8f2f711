package bundle

import (
	"fmt"
	"math"
	"time"
)

// Test statuses.
const (
	StatusPassed  = "passed"
	StatusFailed  = "failed"
	StatusSkipped = "skipped"
	StatusError   = "error" // the test could not judge (lab broke, harness error)
)

// TestResult is the verdict of one test with the measurements it was judged on.
type TestResult struct {
	ID           string                 `json:"id"`
	Name         string                 `json:"name,omitempty"`
	Status       string                 `json:"status"`
	Reason       string                 `json:"reason,omitempty"` // why it failed, errored or was skipped
	Start        time.Time              `json:"start"`
	End          time.Time              `json:"end"`
	Measurements map[string]Measurement `json:"measurements,omitempty"`
	Thresholds   map[string]Threshold   `json:"thresholds,omitempty"`
}

// Measurement is one observed value, e.g. {12.4, "s"} for time to path dead.
type Measurement struct {
	Value float64 `json:"value"`
	Unit  string  `json:"unit"`
}

// Threshold bounds the measurement of the same name; nil means unbounded.
type Threshold struct {
	Min  *float64 `json:"min,omitempty"`
	Max  *float64 `json:"max,omitempty"`
	Unit string   `json:"unit,omitempty"`
}

// Duration is End-Start, or 0 when either is unset or End precedes Start.
func (r TestResult) Duration() time.Duration {
	if r.Start.IsZero() || r.End.IsZero() || r.End.Before(r.Start) {
		return 0
	}
	return r.End.Sub(r.Start)
}

// Results is the content of results/results.json.
type Results struct {
	Tests []TestResult `json:"tests"`
}

// validate checks what JSON cannot carry (NaN, Inf) and what a reader needs.
func (r TestResult) validate() error {
	if _, err := TestDir(r.ID); err != nil {
		return err
	}
	switch r.Status {
	case StatusPassed, StatusFailed, StatusSkipped, StatusError:
	default:
		return fmt.Errorf("test %s: status %q: want passed, failed, skipped or error", r.ID, r.Status)
	}
	for name, m := range r.Measurements {
		if math.IsNaN(m.Value) || math.IsInf(m.Value, 0) {
			return fmt.Errorf("test %s: measurement %q: value %v cannot be recorded; record a finite number", r.ID, name, m.Value)
		}
	}
	for name, t := range r.Thresholds {
		for _, v := range []*float64{t.Min, t.Max} {
			if v != nil && (math.IsNaN(*v) || math.IsInf(*v, 0)) {
				return fmt.Errorf("test %s: threshold %q: bound %v is not finite; use nil for unbounded", r.ID, name, *v)
			}
		}
		if t.Min != nil && t.Max != nil && *t.Min > *t.Max {
			return fmt.Errorf("test %s: threshold %q: min %v > max %v", r.ID, name, *t.Min, *t.Max)
		}
	}
	return nil
}
