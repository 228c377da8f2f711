// Package conformance runs libiscsi's conformance suite, iscsi-test-cu, against
// iSCSI targets and compares them test by test: certkit's array against
// Debian's tgtd, in the same run, with the same initiator.
//
// iscsi-test-cu counts a test that skips itself as passed (libiscsi skips
// with CUnit's CU_PASS) and exits 1 on any failure, so neither its summary
// nor its exit code says what a target does. This package runs it once per
// suite (always with -t FAMILY.SUITE), reads CUnit's verbose output, and
// gives every test one of PASSED, FAILED, SKIPPED or NOT RUN (see Parse),
// checking its reading against CUnit's own counts.
//
// Vocabulary: iscsi-test-cu names tests FAMILY.SUITE.TEST (SCSI.Read10.Simple);
// a "suite" here is FAMILY.SUITE (SCSI.Read10), what issue 7 calls a family.
package conformance

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// Runner runs iscsi-test-cu.
type Runner struct {
	// Binary is the iscsi-test-cu executable; "" finds it in PATH.
	Binary string
	// Initiator and Initiator2 are the initiator names of the first and
	// second nexus (-i, -I); reservation tests need them to differ.
	Initiator, Initiator2 string
	// Dataloss allows the tests that write (--dataloss). The LUN's data is
	// destroyed.
	Dataloss bool
	// Timeout bounds one suite's run; 0 means 2 minutes. A suite that runs
	// over is stopped: its running test is FAILED, the rest NOT RUN.
	Timeout time.Duration
	// Dir is the working directory of the tool; "" is the caller's.
	Dir string
}

// Binary names the tool and the Debian package that has it.
const (
	ToolName    = "iscsi-test-cu"
	ToolPackage = "libiscsi-bin"
)

// DefaultSuiteTimeout is Runner.Timeout's default.
const DefaultSuiteTimeout = 2 * time.Minute

// ErrNoTool means iscsi-test-cu is not installed.
var ErrNoTool = errors.New(ToolName + " not found: install it with `apt-get install -y " + ToolPackage + "`")

func (r *Runner) binary() (string, error) {
	name := r.Binary
	if name == "" {
		name = ToolName
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("%w (%v)", ErrNoTool, err)
	}
	return p, nil
}

// List returns the tests of every FAMILY.SUITE the installed tool has.
func (r *Runner) List(ctx context.Context) (map[string][]string, error) {
	bin, err := r.binary()
	if err != nil {
		return nil, err
	}
	out, err := exec.CommandContext(ctx, bin, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("%s --list: %w", bin, err)
	}
	l := ParseList(out)
	if len(l) == 0 {
		return nil, fmt.Errorf("%s --list printed no FAMILY.SUITE.TEST names; is it libiscsi's iscsi-test-cu?", bin)
	}
	return l, nil
}

// SuiteRun is one run of one suite against one target.
type SuiteRun struct {
	Suite    string        `json:"suite"`   // FAMILY.SUITE
	Command  []string      `json:"command"` // argv, for reproduction
	Tests    []Test        `json:"tests"`
	Elapsed  time.Duration `json:"elapsed_ns"`
	ExitCode int           `json:"exit_code"` // the tool's; 1 on any failure, not a verdict
	Problem  string        `json:"problem,omitempty"`
	Output   string        `json:"-"` // the tool's output, for logs
}

// Count returns how many tests have status s.
func (r *SuiteRun) Count(s Status) int {
	n := 0
	for _, t := range r.Tests {
		if t.Status == s {
			n++
		}
	}
	return n
}

// Command returns the argv Run uses for suite against urls (the first is
// the device under test, a second one is the multipath URL).
func (r *Runner) Command(suite string, urls []string) []string {
	args := []string{ToolName}
	if r.Initiator != "" {
		args = append(args, "-i", r.Initiator)
	}
	if r.Initiator2 != "" {
		args = append(args, "-I", r.Initiator2)
	}
	if r.Dataloss {
		args = append(args, "--dataloss")
	}
	args = append(args, "-t", suite)
	return append(args, urls...)
}

// Run runs one suite (FAMILY.SUITE, never a pattern) against the target at
// urls and reports every test of want, the suite's tests from List. A
// problem running or reading the tool is in SuiteRun.Problem; the tests
// it concerns are FAILED or NOT RUN, never PASSED.
func (r *Runner) Run(ctx context.Context, suite string, want []string, urls []string) SuiteRun {
	run := SuiteRun{Suite: suite, Command: r.Command(suite, urls), ExitCode: -1}
	for _, n := range want {
		run.Tests = append(run.Tests, Test{Name: n, Status: NotRun})
	}
	if strings.ContainsAny(suite, "*?[,") || strings.Count(suite, ".") != 1 {
		run.Problem = fmt.Sprintf("suite %q is not FAMILY.SUITE", suite)
		return run
	}
	if len(urls) == 0 {
		run.Problem = "no iSCSI URL"
		return run
	}
	bin, err := r.binary()
	if err != nil {
		run.Problem = err.Error()
		return run
	}
	timeout := r.Timeout
	if timeout <= 0 {
		timeout = DefaultSuiteTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	// The tool runs with SIGPIPE ignored, as any initiator worth testing
	// does: a target that drops a connection on a protocol error (the
	// iSCSIdatasn tests provoke exactly that) must show up as a failed
	// write, not as the tool killed mid-suite by its next write to the
	// closed socket.
	cmd := exec.CommandContext(ctx, "/bin/sh", append([]string{"-c", `trap "" PIPE; exec "$0" "$@"`, bin}, run.Command[1:]...)...)
	cmd.Dir = r.Dir
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	// Die with the caller, even when it is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	err = cmd.Run()
	run.Elapsed = time.Since(start)
	run.Output = out.String()
	var problems []string
	var ee *exec.ExitError
	switch {
	case err == nil:
		run.ExitCode = 0
	case errors.As(err, &ee) && ee.Exited():
		run.ExitCode = ee.ExitCode() // 1: some test failed, which Parse sees
		if run.ExitCode != 1 {
			problems = append(problems, fmt.Sprintf("exit status %d", run.ExitCode))
		}
	default:
		problems = append(problems, err.Error())
	}
	if ctx.Err() == context.DeadlineExceeded {
		problems = append(problems, fmt.Sprintf("stopped after %s (Runner.Timeout)", timeout))
	}
	tests, perr := Parse(suite, want, out.Bytes())
	if perr != nil {
		problems = append(problems, perr.Error())
	}
	if tests != nil {
		run.Tests = tests
	}
	if n := run.Count(NotRun); n > 0 && len(problems) == 0 {
		problems = append(problems, fmt.Sprintf("%d tests never started: %s", n, lastLine(run.Output)))
	}
	if perr != nil {
		// Output not understood: trust none of it.
		for i := range run.Tests {
			if run.Tests[i].Status == Passed || run.Tests[i].Status == Skipped {
				run.Tests[i].Status = Failed
				run.Tests[i].Detail = append(run.Tests[i].Detail, "output not understood")
			}
		}
	}
	run.Problem = strings.Join(problems, "; ")
	return run
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	if s == "" {
		return "no output"
	}
	return s
}
