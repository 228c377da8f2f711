package bundle

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func smallBundle(t *testing.T, results ...TestResult) *Bundle {
	t.Helper()
	p := filepath.Join(t.TempDir(), "small.tgz")
	w, err := Create(p, Meta{ToolVersion: "v1", Now: newClock().Now})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range results {
		if err := w.AddResult(r); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := Read(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// `certkit bundle show --json` prints exactly this shape and nothing else.
func TestShowJSONShape(t *testing.T) {
	b := smallBundle(t,
		TestResult{ID: "a", Status: StatusPassed, Reason: "not shown", Measurements: map[string]Measurement{"lat": {1.5, "s"}, "iops": {1000, ""}},
			Thresholds: map[string]Threshold{"lat": {Max: ptr(2)}}},
		TestResult{ID: "b", Status: StatusSkipped},
	)
	got, err := ShowJSON(b)
	if err != nil {
		t.Fatal(err)
	}
	want := `{
  "tests": [
    {
      "id": "a",
      "status": "passed",
      "measurements": {
        "iops": {
          "value": 1000,
          "unit": ""
        },
        "lat": {
          "value": 1.5,
          "unit": "s"
        }
      }
    },
    {
      "id": "b",
      "status": "skipped",
      "measurements": {}
    }
  ]
}
`
	if string(got) != want {
		t.Errorf("ShowJSON:\n%s\nwant:\n%s", got, want)
	}
	empty, err := ShowJSON(smallBundle(t))
	if err != nil || string(empty) != "{\n  \"tests\": []\n}\n" {
		t.Errorf("ShowJSON of a bundle without tests = %s, %v", empty, err)
	}
}

func TestShowTextIsTerminalSafe(t *testing.T) {
	start := time.Date(2026, 1, 2, 0, 0, 0, 0, time.UTC)
	b := smallBundle(t, TestResult{ID: "evil", Status: StatusFailed, Reason: "boom \x1b]0;pwned\x07 here\nsecond line", Start: start, End: start.Add(1500 * time.Millisecond)})
	var out bytes.Buffer
	if err := ShowText(&out, b); err != nil {
		t.Fatal(err)
	}
	s := out.String()
	if strings.ContainsAny(s, "\x1b\x07") {
		t.Errorf("control characters reached the terminal: %q", s)
	}
	for _, want := range []string{"FAILED", "evil", "1.5s", "boom ?]0;pwned? here", "0 passed, 1 failed"} {
		if !strings.Contains(s, want) {
			t.Errorf("ShowText lacks %q:\n%s", want, s)
		}
	}
	if strings.Contains(s, "second line") {
		t.Errorf("multi-line reason not cut to one line:\n%s", s)
	}
}
