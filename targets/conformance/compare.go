package conformance

import (
	"fmt"
	"slices"
	"strings"
)

// Allowance excuses one test that passes on the reference target and not on
// certkit's, with the reason and who owns the fix. Every allowance must
// still be needed: one whose test passes on certkit is stale.
type Allowance struct {
	Test   string `json:"test"`   // FAMILY.SUITE.TEST
	Owner  string `json:"owner"`  // where the fix belongs, e.g. "gotgt (pkg/scsi/sbc.go SBCReadWrite)"
	Reason string `json:"reason"` // what the target does wrong and why it is not fixed here
	// Timing: the failure depends on timing, so a pass does not make the
	// allowance stale.
	Timing bool `json:"timing,omitempty"`
}

// Counts are a suite's tests by status.
type Counts struct {
	Passed  int `json:"passed"`
	Failed  int `json:"failed"`
	Skipped int `json:"skipped"`
	NotRun  int `json:"not_run"`
}

func (c *Counts) add(s Status) {
	switch s {
	case Passed:
		c.Passed++
	case Failed:
		c.Failed++
	case Skipped:
		c.Skipped++
	default:
		c.NotRun++
	}
}

// Row compares one suite.
type Row struct {
	Suite   string `json:"suite"`
	Ours    Counts `json:"ours"`
	Ref     Counts `json:"ref"`
	Excused int    `json:"excused"` // allowed tests that pass on the reference only
}

// Diff is a test whose status differs between the targets.
type Diff struct {
	Test       string     `json:"test"`
	Ours       Status     `json:"ours"`
	Ref        Status     `json:"ref"`
	OursDetail []string   `json:"ours_detail,omitempty"`
	RefDetail  []string   `json:"ref_detail,omitempty"`
	Allowed    *Allowance `json:"allowed,omitempty"`
}

// Comparison is certkit's target (ours) against the reference (ref).
type Comparison struct {
	Rows []Row `json:"rows"`
	// Diffs are the tests whose status differs, in suite order.
	Diffs []Diff `json:"diffs"`
	// BothFail are the tests neither target passes, skips excluded.
	BothFail []Diff `json:"both_fail"`
	// Violations break the rule "every test the reference passes, ours
	// passes, unless allowed; no suite where ours passes fewer"; and any
	// run whose outcome cannot be trusted.
	Violations []string `json:"violations"`
	// Stale are allowances whose test now passes on ours: delete them.
	Stale []string `json:"stale"`
}

// Compare compares runs of the same suites on two targets. allow excuses
// tests that pass on ref and not on ours.
func Compare(ours, ref []SuiteRun, allow []Allowance) Comparison {
	var c Comparison
	allowed := map[string]*Allowance{}
	for i := range allow {
		allowed[allow[i].Test] = &allow[i]
	}
	refBySuite := map[string]*SuiteRun{}
	for i := range ref {
		refBySuite[ref[i].Suite] = &ref[i]
	}
	used := map[string]bool{}
	for i := range ours {
		o := &ours[i]
		r := refBySuite[o.Suite]
		if r == nil {
			c.Violations = append(c.Violations, fmt.Sprintf("%s: run on certkit only, no reference run", o.Suite))
			continue
		}
		for _, run := range []*SuiteRun{o, r} {
			if run.Problem != "" {
				who := "certkit"
				if run == r {
					who = "reference"
				}
				c.Violations = append(c.Violations, fmt.Sprintf("%s on %s: %s (command: %s)", o.Suite, who, run.Problem, strings.Join(run.Command, " ")))
			}
		}
		row := Row{Suite: o.Suite}
		refTests := map[string]Test{}
		for _, t := range r.Tests {
			refTests[t.Name] = t
			row.Ref.add(t.Status)
		}
		for _, t := range o.Tests {
			row.Ours.add(t.Status)
			rt, ok := refTests[t.Name]
			if !ok {
				rt = Test{Name: t.Name, Status: NotRun}
			}
			a := allowed[t.Name]
			if a != nil {
				used[t.Name] = true
				if t.Status == Passed && !a.Timing {
					c.Stale = append(c.Stale, fmt.Sprintf("%s passes on certkit now: delete its allowance (%s)", t.Name, a.Owner))
				}
			}
			d := Diff{Test: t.Name, Ours: t.Status, Ref: rt.Status, OursDetail: t.Detail, RefDetail: rt.Detail}
			if t.Status != rt.Status {
				if rt.Status == Passed && a != nil {
					d.Allowed = a
					row.Excused++
				}
				c.Diffs = append(c.Diffs, d)
				if rt.Status == Passed && a == nil {
					c.Violations = append(c.Violations, fmt.Sprintf("%s: %s on certkit, PASSED on the reference%s", t.Name, t.Status, detail(t.Detail)))
				}
			} else if t.Status == Failed || t.Status == NotRun {
				c.BothFail = append(c.BothFail, d)
			}
		}
		if row.Ours.Passed+row.Excused < row.Ref.Passed {
			c.Violations = append(c.Violations, fmt.Sprintf("%s: certkit passes %d tests, the reference %d (%d excused by allowances)", o.Suite, row.Ours.Passed, row.Ref.Passed, row.Excused))
		}
		c.Rows = append(c.Rows, row)
	}
	for _, a := range allow {
		if !used[a.Test] {
			c.Stale = append(c.Stale, fmt.Sprintf("%s was not run: delete its allowance or run its suite", a.Test))
		}
	}
	slices.Sort(c.Stale)
	return c
}

func detail(d []string) string {
	if len(d) == 0 {
		return ""
	}
	return ": " + strings.Join(d, " | ")
}

// Totals sums the rows.
func (c *Comparison) Totals() (ours, ref Counts) {
	for _, r := range c.Rows {
		ours.Passed += r.Ours.Passed
		ours.Failed += r.Ours.Failed
		ours.Skipped += r.Ours.Skipped
		ours.NotRun += r.Ours.NotRun
		ref.Passed += r.Ref.Passed
		ref.Failed += r.Ref.Failed
		ref.Skipped += r.Ref.Skipped
		ref.NotRun += r.Ref.NotRun
	}
	return ours, ref
}
