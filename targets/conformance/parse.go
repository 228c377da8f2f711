package conformance

import (
	"bufio"
	"bytes"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// Status is the honest outcome of one iscsi-test-cu test.
type Status string

const (
	// Passed: CUnit reported the test passed and it printed no [SKIPPED].
	Passed Status = "PASSED"
	// Failed: CUnit reported FAILED, or the run died inside the test.
	Failed Status = "FAILED"
	// Skipped: CUnit counted the test as passed, but it printed [SKIPPED]
	// (libiscsi skips with CU_PASS, so CUnit cannot tell the difference):
	// the target did not show the behaviour the test is about.
	Skipped Status = "SKIPPED"
	// NotRun: the test was selected but never started (the process died
	// or timed out earlier, or the suite's set-up failed).
	NotRun Status = "NOT RUN"
)

// Test is one test's outcome.
type Test struct {
	Name   string   `json:"name"` // FAMILY.SUITE.TEST, e.g. SCSI.Read10.Simple
	Status Status   `json:"status"`
	Detail []string `json:"detail,omitempty"` // [SKIPPED]/[FAILED] lines and failed assertions, first few
}

// maxDetail caps the lines kept per test: enough to say why, not a log.
const maxDetail = 6

var (
	testLine    = regexp.MustCompile(`^  Test: (\S+) \.\.\.(.*)$`)
	suiteLine   = regexp.MustCompile(`^Suite: (\S+)\s*$`)
	summaryLine = regexp.MustCompile(`^\s+tests\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s*$`)
	assertLine  = regexp.MustCompile(`^\s+\d+\. \S+:\d+\s+- `)
	initFailed  = regexp.MustCompile(`Suite initialization failed for '([^']*)'`)
)

// Parse reads the output (stdout and stderr in one stream) of one
// `iscsi-test-cu -t SUITE` run in CUnit's verbose mode and returns an outcome
// for every test in want (FAMILY.SUITE.TEST names, in order), plus any test
// the output names that want lacks.
//
// A test is Passed only when CUnit says "passed" and the test printed no
// [SKIPPED] line; a test the output starts but never finishes (crash,
// timeout) is Failed; one it never starts is NotRun. When the output
// carries CUnit's run summary, the parsed counts must agree with it: an
// error means the output was not understood and must not be trusted.
func Parse(suite string, want []string, out []byte) ([]Test, error) {
	family, _, _ := strings.Cut(suite, ".")
	byName := map[string]*Test{}
	var order []string
	add := func(name string) *Test {
		if t := byName[name]; t != nil {
			return t
		}
		t := &Test{Name: name, Status: NotRun}
		byName[name] = t
		order = append(order, name)
		return t
	}
	for _, n := range want {
		add(n)
	}

	var (
		cur        *Test // started, no verdict yet
		curSkipped bool
		inFailList *Test // collecting CUnit's numbered assertion failures
		curSuite   string
		seen       = map[string]bool{}
		summary    []int
		initFail   []string
	)
	note := func(t *Test, line string) {
		line = strings.TrimSpace(line)
		if line != "" && len(t.Detail) < maxDetail && !slices.Contains(t.Detail, line) {
			t.Detail = append(t.Detail, line)
		}
	}
	verdict := func(rest string) bool {
		switch {
		case strings.HasPrefix(rest, "passed"):
			if curSkipped {
				cur.Status = Skipped
			} else {
				cur.Status = Passed
			}
			cur = nil
			return true
		case strings.HasPrefix(rest, "FAILED"):
			cur.Status = Failed
			inFailList, cur = cur, nil
			return true
		}
		return false
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if m := initFailed.FindStringSubmatch(line); m != nil {
			initFail = append(initFail, m[1])
			continue
		}
		if m := suiteLine.FindStringSubmatch(line); m != nil {
			curSuite, inFailList = m[1], nil
			continue
		}
		if m := testLine.FindStringSubmatch(line); m != nil {
			if cur != nil {
				return nil, fmt.Errorf("iscsi-test-cu output: test %s started before %s had a verdict", m[1], cur.Name)
			}
			name := family + "." + curSuite + "." + m[1]
			if curSuite == "" {
				return nil, fmt.Errorf("iscsi-test-cu output: test %s outside any suite", m[1])
			}
			if seen[name] {
				return nil, fmt.Errorf("iscsi-test-cu output: test %s ran twice", name)
			}
			seen[name] = true
			cur, curSkipped, inFailList = add(name), false, nil
			cur.Detail = nil
			rest := strings.TrimLeft(m[2], " ")
			if verdict(rest) {
				continue
			}
			// A message printed on the test line itself.
			if strings.Contains(rest, "[SKIPPED]") {
				curSkipped = true
			}
			note(cur, rest)
			continue
		}
		if m := summaryLine.FindStringSubmatch(line); m != nil {
			summary = nil
			for _, s := range m[1:] {
				n, _ := strconv.Atoi(s)
				summary = append(summary, n)
			}
			inFailList = nil
			continue
		}
		switch {
		case cur != nil:
			if verdict(line) {
				continue
			}
			if strings.Contains(line, "[SKIPPED]") {
				curSkipped = true
			}
			if strings.Contains(line, "[SKIPPED]") || strings.Contains(line, "[FAILED]") || strings.Contains(line, "[FAILURE]") {
				note(cur, line)
			}
		case inFailList != nil && assertLine.MatchString(line):
			// "    1. file.c:72  - CU_ASSERT_EQUAL(...)" possibly followed by
			// a teardown message on the same line: keep the assertion.
			a := strings.TrimSpace(line)
			if i := strings.Index(a, "    "); i > 0 {
				a = a[:i]
			}
			note(inFailList, a)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("iscsi-test-cu output: %w", err)
	}
	if cur != nil {
		// Started, never finished: the process died or was stopped in it.
		cur.Status = Failed
		note(cur, "no verdict: iscsi-test-cu stopped inside this test")
	}
	for _, s := range initFail {
		for _, n := range order {
			if t := byName[n]; t.Status == NotRun && strings.Contains(n, "."+s+".") {
				note(t, "suite set-up failed")
			}
		}
	}

	tests := make([]Test, 0, len(order))
	var ran, passed, failed int
	for _, n := range order {
		t := byName[n]
		tests = append(tests, *t)
		switch t.Status {
		case Passed, Skipped:
			ran++
			passed++
		case Failed:
			ran++
			failed++
		}
	}
	if summary != nil {
		// tests: Total Ran Passed Failed Inactive. A test whose process died
		// has no summary, so a summary means every verdict was printed.
		if summary[1] != ran || summary[2] != passed || summary[3] != failed {
			return tests, fmt.Errorf("iscsi-test-cu output: CUnit summary says %d ran, %d passed, %d failed; parsed %d ran, %d passed or skipped, %d failed",
				summary[1], summary[2], summary[3], ran, passed, failed)
		}
	}
	return tests, nil
}

// ParseList reads `iscsi-test-cu --list` and returns the tests of every
// FAMILY.SUITE, in the tool's order.
func ParseList(out []byte) map[string][]string {
	suites := map[string][]string{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		name := strings.TrimSpace(sc.Text())
		if parts := strings.Split(name, "."); len(parts) == 3 {
			s := parts[0] + "." + parts[1]
			suites[s] = append(suites[s], name)
		}
	}
	return suites
}
