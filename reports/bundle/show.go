package bundle

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// Summary is what `certkit bundle show --json` prints:
// {"tests":[{"id":..,"status":..,"measurements":{name:{"value":..,"unit":..}}}]}.
type Summary struct {
	Tests []SummaryTest `json:"tests"`
}

// SummaryTest is one test in a Summary.
type SummaryTest struct {
	ID           string                 `json:"id"`
	Status       string                 `json:"status"`
	Measurements map[string]Measurement `json:"measurements"`
}

// Summarize extracts the Summary of b. Tests keep run order; measurements
// are always present (possibly empty).
func Summarize(b *Bundle) Summary {
	s := Summary{Tests: []SummaryTest{}}
	for _, r := range b.results {
		ms := cloneMap(r.Measurements)
		if ms == nil {
			ms = map[string]Measurement{}
		}
		s.Tests = append(s.Tests, SummaryTest{ID: r.ID, Status: r.Status, Measurements: ms})
	}
	return s
}

// ShowJSON renders Summarize(b) as indented JSON ending in a newline.
func ShowJSON(b *Bundle) ([]byte, error) {
	data, err := json.MarshalIndent(Summarize(b), "", "  ")
	if err != nil {
		return nil, fmt.Errorf("bundle %s: %w", b.path, err)
	}
	return append(data, '\n'), nil
}

// ShowText prints a human summary of b: the run, then one line per test
// with its reason, and its measurements against their thresholds.
func ShowText(w io.Writer, b *Bundle) error {
	m := b.manifest
	counts := map[string]int{}
	for _, r := range b.results {
		counts[r.Status]++
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "bundle:\t%s (verified, %d files)\n", b.path, len(m.Files))
	fmt.Fprintf(tw, "tool:\tcertkit %s\n", printable(orDash(m.ToolVersion)))
	if m.CatalogVersion != "" {
		fmt.Fprintf(tw, "catalog:\t%s (%d required tests)\n", printable(m.CatalogVersion), len(m.Required))
	}
	fmt.Fprintf(tw, "run:\t%s .. %s (%s)\n", m.CreatedAt.Format(time.RFC3339), m.FinishedAt.Format(time.RFC3339), m.FinishedAt.Sub(m.CreatedAt).Round(time.Second))
	switch m.Completeness {
	case CompletenessFinalized:
		fmt.Fprintf(tw, "sealed:\tfinalized after the run died (certkit bundle finalize)\n")
	default:
		fmt.Fprintf(tw, "sealed:\t%s\n", printable(m.Completeness))
	}
	if b.signer != "" {
		fmt.Fprintf(tw, "signed:\tby key %s\n", b.signer)
	}
	for _, kind := range []struct {
		name string
		cs   map[string]Component
	}{{"host", m.Hosts}, {"array", m.Arrays}} {
		for _, name := range sortedKeys(kind.cs) {
			c := kind.cs[name]
			fmt.Fprintf(tw, "%s %s:\t%s\n", kind.name, printable(name), printable(strings.TrimSpace(strings.Join([]string{c.Product, c.Version, c.Build}, " "))))
		}
	}
	if len(m.Lab) > 0 {
		for _, k := range sortedKeys(m.Lab) {
			fmt.Fprintf(tw, "lab %s:\t%s\n", printable(k), printable(compactJSON(m.Lab[k])))
		}
	}
	fmt.Fprintf(tw, "tests:\t%d (%d passed, %d failed, %d skipped, %d error)\n", len(b.results),
		counts[StatusPassed], counts[StatusFailed], counts[StatusSkipped], counts[StatusError])
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(b.results) == 0 {
		return nil
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "STATUS\tTEST\tDURATION\tDETAIL")
	for _, r := range b.results {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", strings.ToUpper(r.Status), printable(r.ID), r.Duration().Round(time.Millisecond), printable(oneLine(r.Reason)))
		for _, k := range sortedKeys(r.Measurements) {
			v := r.Measurements[k]
			detail := ""
			if t, ok := r.Thresholds[k]; ok {
				detail = "want " + formatThreshold(t)
			}
			fmt.Fprintf(tw, "\t  %s\t%s\t%s\n", printable(k), printable(formatValue(v.Value, v.Unit)), printable(detail))
		}
	}
	return tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// oneLine keeps the first line of s.
func oneLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}

// printable makes bundle-supplied text safe for a terminal: a submitted
// bundle must not be able to send escape sequences to the reviewer's.
func printable(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return '?'
		}
		return r
	}, s)
}

func compactJSON(v any) string {
	if s, ok := v.(string); ok {
		return s
	}
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(data)
}

func formatValue(v float64, unit string) string {
	return strings.TrimSpace(strconv.FormatFloat(v, 'g', -1, 64) + " " + unit)
}

// formatThreshold renders a threshold: "<= 26 s", ">= 1 s", "1 .. 26 s", "any".
func formatThreshold(t Threshold) string {
	f := func(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }
	var s string
	switch {
	case t.Min != nil && t.Max != nil:
		s = f(*t.Min) + " .. " + f(*t.Max)
	case t.Min != nil:
		s = ">= " + f(*t.Min)
	case t.Max != nil:
		s = "<= " + f(*t.Max)
	default:
		return "any"
	}
	return strings.TrimSpace(s + " " + t.Unit)
}
