package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// perfOptions is one iscsi-perf run: random READ(16)s of Blocks blocks, QD
// in flight, for Seconds (its -t), on one session with its keepalives (a
// NOP-Out every 5 s) on, as it always has them.
type perfOptions struct {
	URL       string
	Initiator string // -i; distinct per concurrent run (libiscsi seeds its ISID from the clock)
	Blocks    int    // -b
	QD        int    // -m
	Seconds   int    // -t
	Niceness  int    // run under nice(1); 0: as is
	// StallTimeout: a run that prints nothing for this long has stalled
	// (it prints progress every second while commands complete); it is
	// interrupted and reported.
	StallTimeout time.Duration
	// Grace is how long past Seconds a run may take before it is
	// interrupted (log-in, drain, log-out; a loaded machine).
	Grace time.Duration
}

// perfNOPInterval is iscsi-perf's keepalive period (NOP_INTERVAL in
// libiscsi's utils/iscsi-perf.c).
const perfNOPInterval = 5 * time.Second

// perfProgress is one of iscsi-perf's once-a-second progress lines:
//
//	00:00:05 - lba 148014, iops current 10647 (41 MB/s), iops average 10647 (41 MB/s), in_flight 1, busy 0
//
// The clock is the time remaining of -t; MB/s are MiB/s (bytes >> 20).
type perfProgress struct {
	At       time.Time // when the line arrived
	Elapsed  uint64    // seconds since the first command, iscsi-perf's own clock
	CurIOPS  uint64
	AvgIOPS  uint64
	AvgMiBps uint64
	InFlight int
	Busy     int // commands the target answered BUSY, retried
}

// perfResult is what one iscsi-perf run printed and how it ended.
type perfResult struct {
	Progress      []perfProgress
	TransferBytes int    // bytes per READ, "FIXED transfer size of N blocks (B byte)"
	Final         bool   // printed "iops average N (M MB/s)": reached -t
	AvgIOPS       uint64 // from the final line
	AvgMiBps      uint64
	Finished      bool   // printed "finished." and logged out
	Aborted       bool   // printed "ABORTED!"
	Interrupted   string // why the harness sent SIGINT; empty when it did not
	ExitCode      int
	Stdout        string
	Stderr        string
	Unknown       []string // stdout lines this parser does not know
}

var (
	perfProgressRE = regexp.MustCompile(`^(\d+):(\d+):(\d+) - lba \d+, iops current (\d+) \(\d+ MB/s\), iops average (\d+) \((\d+) MB/s\), in_flight (-?\d+), busy (\d+)$`)
	perfFinalRE    = regexp.MustCompile(`^iops average (\d+) \((\d+) MB/s\)$`)
	perfTransferRE = regexp.MustCompile(`^FIXED transfer size of \d+ blocks \((\d+) byte\)$`)
	perfKnownRE    = regexp.MustCompile(`^(iscsi-perf version .*|connected to .*|capacity is .*|performing (RANDOM|SEQUENTIAL) READ with \d+ parallel requests|will run for \d+ seconds\.|infinite runtime - press CTRL-C to abort\.|)$`)
)

// line takes one stdout line (without its '\r' and trailing blanks) of a
// run of seconds.
func (r *perfResult) line(l string, at time.Time, seconds int) {
	l = strings.TrimRight(strings.TrimLeft(l, "\r"), " \r")
	u := func(s string) uint64 { n, _ := strconv.ParseUint(s, 10, 64); return n }
	switch m := perfProgressRE.FindStringSubmatch(l); {
	case m != nil:
		// iscsi-perf prints the remaining time as h/3600, h%3600/60, h%60
		// of an unsigned count; wrapping arithmetic recovers the elapsed
		// time even when it overshot -t (remaining "underflows").
		remaining := u(m[1])*3600 + u(m[2])*60 + u(m[3])
		inFlight, _ := strconv.Atoi(m[7])
		busy, _ := strconv.Atoi(m[8])
		r.Progress = append(r.Progress, perfProgress{
			At: at, Elapsed: uint64(seconds) - remaining,
			CurIOPS: u(m[4]), AvgIOPS: u(m[5]), AvgMiBps: u(m[6]), InFlight: inFlight, Busy: busy,
		})
		return
	}
	if m := perfFinalRE.FindStringSubmatch(l); m != nil {
		r.Final, r.AvgIOPS, r.AvgMiBps = true, u(m[1]), u(m[2])
		return
	}
	if m := perfTransferRE.FindStringSubmatch(l); m != nil {
		r.TransferBytes = int(u(m[1]))
		return
	}
	switch l {
	case "finished.":
		r.Finished = true
	case "ABORTED!":
		r.Aborted = true
	default:
		if !perfKnownRE.MatchString(l) {
			r.Unknown = append(r.Unknown, l)
		}
	}
}

// err says what went wrong with a run, nil when it ran to -t, printed its
// final average and logged out cleanly.
func (r *perfResult) err() error {
	var errs []error
	if r.Interrupted != "" {
		errs = append(errs, errors.New(r.Interrupted))
	}
	if r.ExitCode != 0 {
		errs = append(errs, fmt.Errorf("exit status %d", r.ExitCode))
	}
	if r.Aborted {
		errs = append(errs, errors.New(`printed "ABORTED!"`))
	}
	if s := strings.TrimSpace(r.Stderr); s != "" {
		// iscsi-perf reports failed commands, a failed service loop or a
		// failed login on stderr, and may still exit 0.
		errs = append(errs, fmt.Errorf("stderr: %s", s))
	}
	if !r.Final {
		errs = append(errs, errors.New(`never printed its final "iops average" line: it did not run to -t`))
	}
	if !r.Finished {
		errs = append(errs, errors.New(`never printed "finished."`))
	}
	if len(r.Unknown) > 0 {
		errs = append(errs, fmt.Errorf("printed lines this harness does not know (a new libiscsi? update perfResult.line): %q", r.Unknown))
	}
	if len(errs) == 0 {
		return nil
	}
	return fmt.Errorf("iscsi-perf: %w\nlast output:\n%s", errors.Join(errs...), tail(r.Stdout, 1200))
}

// tail is the end of s, for error messages.
func tail(s string, n int) string {
	s = strings.ReplaceAll(s, "\r", "")
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// runPerf runs iscsi-perf to completion. It interrupts the run (SIGINT, as
// a user's Ctrl-C; SIGKILL after stopTimeout more) when it prints nothing
// for StallTimeout, when it overruns Seconds+Grace, or when ctx ends; the
// result then says why. The error is r.err().
func runPerf(ctx context.Context, o perfOptions) (*perfResult, error) {
	args := []string{"-l", "-r", "-t", strconv.Itoa(o.Seconds), "-m", strconv.Itoa(o.QD), "-b", strconv.Itoa(o.Blocks), "-i", o.Initiator, o.URL}
	bin := perfBin
	if o.Niceness > 0 {
		if _, err := os.Stat(niceBin); err == nil {
			args = append([]string{"-n", strconv.Itoa(o.Niceness), bin}, args...)
			bin = niceBin
		}
	}
	cmd := exec.Command(bin, args...)
	var stderr syncBuffer
	cmd.Stderr = &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", perfBin, err)
	}
	type line struct {
		s  string
		at time.Time
	}
	lines := make(chan line, 64)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- line{sc.Text(), time.Now()}
		}
		close(lines)
	}()
	r := &perfResult{}
	var out strings.Builder
	stall := time.NewTimer(o.StallTimeout)
	defer stall.Stop()
	overrun := time.NewTimer(time.Duration(o.Seconds)*time.Second + o.Grace)
	defer overrun.Stop()
	var kill <-chan time.Time
	interrupt := func(why string) {
		if r.Interrupted == "" {
			r.Interrupted = why
			cmd.Process.Signal(syscall.SIGINT)
			kill = time.After(stopTimeout)
		}
	}
	ctxDone := ctx.Done()
	for lines != nil {
		select {
		case l, ok := <-lines:
			if !ok {
				lines = nil
				break
			}
			out.WriteString(l.s)
			out.WriteByte('\n')
			r.line(l.s, l.at, o.Seconds)
			stall.Reset(o.StallTimeout)
		case <-stall.C:
			last := "nothing"
			if n := len(r.Progress); n > 0 {
				last = fmt.Sprintf("progress at %d s of %d", r.Progress[n-1].Elapsed, o.Seconds)
			}
			interrupt(fmt.Sprintf("printed nothing for %s (last: %s): stalled, interrupted", o.StallTimeout, last))
		case <-overrun.C:
			interrupt(fmt.Sprintf("still running %s after its %d s: interrupted", o.Grace, o.Seconds))
		case <-ctxDone:
			ctxDone = nil
			interrupt(fmt.Sprintf("interrupted: %v", ctx.Err()))
		case <-kill:
			r.Interrupted += "; killed: SIGINT did not end it"
			cmd.Process.Kill()
			kill = nil
		}
	}
	werr := cmd.Wait()
	var ee *exec.ExitError
	if errors.As(werr, &ee) {
		r.ExitCode = ee.ExitCode()
	} else if werr != nil {
		return nil, fmt.Errorf("%s: %w", perfBin, werr)
	}
	r.Stdout, r.Stderr = out.String(), stderr.String()
	return r, r.err()
}
