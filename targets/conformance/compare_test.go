package conformance_test

import (
	"strings"
	"testing"

	"github.com/certkit/certkit/targets/conformance"
)

func run(suite string, st ...conformance.Status) conformance.SuiteRun {
	r := conformance.SuiteRun{Suite: suite}
	for i, s := range st {
		r.Tests = append(r.Tests, conformance.Test{Name: suite + ".T" + string(rune('0'+i)), Status: s})
	}
	return r
}

const (
	P = conformance.Passed
	F = conformance.Failed
	S = conformance.Skipped
	N = conformance.NotRun
)

// Negative control: a target that fails (or skips) a test the reference
// passes breaks the rule, by test and by suite.
func TestCompareFlagsWhatOursLosesToTheReference(t *testing.T) {
	c := conformance.Compare(
		[]conformance.SuiteRun{run("SCSI.A", P, F), run("SCSI.B", S, P)},
		[]conformance.SuiteRun{run("SCSI.A", P, P), run("SCSI.B", P, P)}, nil)
	v := strings.Join(c.Violations, "\n")
	for _, want := range []string{"SCSI.A.T1: FAILED on certkit, PASSED", "SCSI.A: certkit passes 1 tests, the reference 2", "SCSI.B.T0: SKIPPED on certkit"} {
		if !strings.Contains(v, want) {
			t.Errorf("violations lack %q:\n%s", want, v)
		}
	}
	if len(c.Diffs) != 2 {
		t.Errorf("diffs %+v", c.Diffs)
	}
}

// Ours doing better, or both failing, is no violation; both failing is
// listed as such.
func TestCompareAcceptsEqualOrBetter(t *testing.T) {
	c := conformance.Compare(
		[]conformance.SuiteRun{run("SCSI.A", P, P, F)},
		[]conformance.SuiteRun{run("SCSI.A", F, S, F)}, nil)
	if len(c.Violations) != 0 {
		t.Errorf("violations %v", c.Violations)
	}
	if len(c.BothFail) != 1 || c.BothFail[0].Test != "SCSI.A.T2" {
		t.Errorf("both fail %+v", c.BothFail)
	}
}

// An allowance excuses exactly its test, and goes stale when the test passes.
func TestCompareAllowances(t *testing.T) {
	allow := []conformance.Allowance{{Test: "SCSI.A.T1", Owner: "gotgt", Reason: "r"}, {Test: "SCSI.A.T0", Owner: "gotgt", Reason: "fixed since"}}
	c := conformance.Compare([]conformance.SuiteRun{run("SCSI.A", P, F)}, []conformance.SuiteRun{run("SCSI.A", P, P)}, allow)
	if len(c.Violations) != 0 {
		t.Errorf("violations %v", c.Violations)
	}
	if len(c.Stale) != 1 || !strings.Contains(c.Stale[0], "SCSI.A.T0 passes on certkit now") {
		t.Errorf("stale %v", c.Stale)
	}
}

// A run that could not be read is a violation, whichever side it is on.
func TestCompareReportsProblems(t *testing.T) {
	bad := run("SCSI.A", N)
	bad.Problem = "exit status 255"
	c := conformance.Compare([]conformance.SuiteRun{run("SCSI.A", N)}, []conformance.SuiteRun{bad}, nil)
	if len(c.Violations) != 1 || !strings.Contains(c.Violations[0], "on reference: exit status 255") {
		t.Errorf("violations %v", c.Violations)
	}
}
