package conformance

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"time"
)

// Report is one comparison run, as written to report.json and rendered into
// targets/CONFORMANCE.md.
type Report struct {
	Date       time.Time         `json:"date"`
	Versions   map[string]string `json:"versions"` // component → version
	Ours       string            `json:"ours"`     // what certkit's target was
	Ref        string            `json:"ref"`      // what the reference was
	OursRuns   []SuiteRun        `json:"ours_runs"`
	RefRuns    []SuiteRun        `json:"ref_runs"`
	Comparison Comparison        `json:"comparison"`
	Allowances []Allowance       `json:"allowances"`
}

// JSON is the report as indented JSON.
func (r *Report) JSON() ([]byte, error) { return json.MarshalIndent(r, "", "  ") }

// Doc markers: UpdateDoc replaces what is between them.
const (
	DocBegin = "<!-- conformance:generated:begin (go test ./targets/conformance; see Reproduce) -->"
	DocEnd   = "<!-- conformance:generated:end -->"
)

// Markdown renders the generated part of CONFORMANCE.md.
func (r *Report) Markdown() string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	c := &r.Comparison
	w("Run of %s.\n\n", r.Date.UTC().Format("2006-01-02 15:04 MST"))
	for _, k := range []string{"iscsi-test-cu", "tgtd", "gotgt", "go", "kernel"} {
		if v, ok := r.Versions[k]; ok {
			w("- %s: %s\n", k, v)
		}
	}
	w("- certkit: %s\n- reference: %s\n\n", r.Ours, r.Ref)

	ours, ref := c.Totals()
	w("Every cell is passed / failed / skipped / not run. SKIPPED is a test that printed `[SKIPPED]`\n")
	w("(iscsi-test-cu itself counts it as passed). ✗ marks a suite where certkit passes fewer tests than tgtd.\n\n")
	w("| suite | certkit | tgtd | |\n|---|---|---|---|\n")
	for _, row := range c.Rows {
		mark := ""
		switch {
		case row.Ours.Passed < row.Ref.Passed:
			mark = "✗"
			if row.Ours.Passed+row.Excused >= row.Ref.Passed {
				mark = fmt.Sprintf("✗ (%d allowed)", row.Excused)
			}
		case row.Ours.Passed > row.Ref.Passed:
			mark = "+"
		}
		w("| %s | %s | %s | %s |\n", row.Suite, cell(row.Ours), cell(row.Ref), mark)
	}
	w("| **total** | **%s** | **%s** | |\n\n", cell(ours), cell(ref))

	w("### Tests whose outcome differs\n\n")
	if len(c.Diffs) == 0 {
		w("None.\n\n")
	} else {
		w("| test | certkit | tgtd | why (certkit's output, or the allowance) |\n|---|---|---|---|\n")
		for _, d := range c.Diffs {
			why := strings.Join(d.OursDetail, "; ")
			if d.Ours == Passed {
				why = strings.Join(d.RefDetail, "; ")
			}
			if d.Allowed != nil {
				why = "allowed, " + d.Allowed.Owner + ": " + d.Allowed.Reason
			}
			w("| %s | %s | %s | %s |\n", d.Test, d.Ours, d.Ref, mdEscape(why))
		}
		w("\n")
	}
	w("### Tests that fail on both\n\n")
	if len(c.BothFail) == 0 {
		w("None.\n\n")
	} else {
		w("| test | certkit's output | tgtd's output |\n|---|---|---|\n")
		for _, d := range c.BothFail {
			w("| %s | %s | %s |\n", d.Test, mdEscape(strings.Join(d.OursDetail, "; ")), mdEscape(strings.Join(d.RefDetail, "; ")))
		}
		w("\n")
	}
	if len(c.Violations) > 0 {
		w("### Violations\n\n")
		for _, v := range c.Violations {
			w("- %s\n", mdEscape(v))
		}
		w("\n")
	}
	if len(r.OursRuns) > 0 && len(r.RefRuns) > 0 {
		w("### Command lines (first suite; every suite runs the same way with its own -t)\n\n```\n%s\n%s\n```\n",
			strings.Join(r.OursRuns[0].Command, " "), strings.Join(r.RefRuns[0].Command, " "))
	}
	return b.String()
}

func cell(c Counts) string {
	return fmt.Sprintf("%d / %d / %d / %d", c.Passed, c.Failed, c.Skipped, c.NotRun)
}

func mdEscape(s string) string {
	s = strings.ReplaceAll(s, "|", `\|`)
	return strings.ReplaceAll(s, "\n", " ")
}

// UpdateDoc replaces the generated section of the Markdown file at path
// (between DocBegin and DocEnd) with section.
func UpdateDoc(path, section string) error {
	old, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("conformance doc: %w", err)
	}
	i := bytes.Index(old, []byte(DocBegin))
	j := bytes.Index(old, []byte(DocEnd))
	if i < 0 || j < i {
		return fmt.Errorf("conformance doc %s has no generated section: add the lines\n%s\n%s", path, DocBegin, DocEnd)
	}
	var b bytes.Buffer
	b.Write(old[:i+len(DocBegin)])
	b.WriteString("\n")
	b.WriteString(section)
	b.Write(old[j:])
	return os.WriteFile(path, b.Bytes(), 0o644)
}
