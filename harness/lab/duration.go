package lab

import (
	"fmt"
	"time"

	"gopkg.in/yaml.v3"
)

// Duration is a time.Duration written in YAML and JSON as Go duration text:
// "10s", "1.5s", "250ms". A bare number is rejected (which unit was meant?).
type Duration struct{ time.Duration }

// Seconds returns a Duration of n whole seconds.
func Seconds(n int) Duration { return Duration{time.Duration(n) * time.Second} }

// UnmarshalYAML reads a duration string; errors carry the line.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: a duration is text like \"10s\" or \"250ms\"", n.Line)}}
	}
	v, err := parseDuration(n.Value)
	if err != nil {
		return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: %v", n.Line, err)}}
	}
	d.Duration = v
	return nil
}

// String writes whole seconds as "60s" (not "1m0s"), otherwise as
// time.Duration does ("250ms", "1.5s").
func (d Duration) String() string {
	if d.Duration != 0 && d.Duration%time.Second == 0 {
		return fmt.Sprintf("%ds", int64(d.Duration/time.Second))
	}
	return d.Duration.String()
}

// MarshalYAML writes the duration as text ("10s").
func (d Duration) MarshalYAML() (any, error) { return d.String(), nil }

// UnmarshalText reads a duration string (JSON and other text encodings).
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := parseDuration(string(b))
	if err != nil {
		return err
	}
	d.Duration = v
	return nil
}

// MarshalText writes the duration as text ("10s").
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

func parseDuration(s string) (time.Duration, error) {
	v, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("invalid duration %q: write a number with a unit, e.g. \"10s\", \"1.5s\" or \"250ms\"", s)
	}
	return v, nil
}
