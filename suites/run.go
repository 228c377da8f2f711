package suites

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/onsi/ginkgo/v2"
	"github.com/onsi/ginkgo/v2/types"
	"github.com/onsi/gomega"

	"github.com/certkit/certkit/harness/esxcli"
	"github.com/certkit/certkit/harness/fault"
	"github.com/certkit/certkit/harness/lab"
	"github.com/certkit/certkit/reports/bundle"
	"github.com/certkit/certkit/targets/control"
)

// RunConfig says what to run against which lab.
type RunConfig struct {
	Profile *lab.Profile
	Bundle  *bundle.Writer
	// Focus lists spec IDs to run; empty runs the whole catalog.
	Focus []string
	// Log receives progress lines (fault reverts on interrupt); nil = stderr.
	Log io.Writer
	// Verbose makes Ginkgo print every spec's steps.
	Verbose bool
}

// Outcome summarises a run.
type Outcome struct {
	Passed      bool
	Interrupted bool
	Results     []bundle.TestResult
}

// failRecorder is the GinkgoTestingT of a run outside `go test`.
type failRecorder struct{ failed bool }

func (f *failRecorder) Fail() { f.failed = true }

// Run runs the catalog once. Ginkgo allows one run per process, so callers
// (the CLI) run it once and exit. Every fault a spec injects is reverted when
// the spec ends, and at once on SIGINT/SIGTERM.
func Run(ctx context.Context, cfg RunConfig) (Outcome, error) {
	logw := cfg.Log
	if logw == nil {
		logw = os.Stderr
	}
	if err := cfg.Profile.Validate(); err != nil {
		return Outcome{}, err
	}
	specs, err := selectSpecs(cfg.Focus)
	if err != nil {
		return Outcome{}, err
	}
	t := cfg.Profile.Timings
	env := &Env{Profile: cfg.Profile, Bundle: cfg.Bundle}
	env.Faults = fault.NewTracker(func(fault.Event) { env.writeTimeline() })

	setupCtx, cancel := context.WithTimeout(ctx, t.SetupTimeout.Duration)
	defer cancel()
	if err := env.connect(setupCtx); err != nil {
		env.close()
		return Outcome{}, err
	}
	defer env.close()

	stopSignals := env.Faults.RevertOnSignal(t.CommandTimeout.Duration, func(s os.Signal, err error) {
		if err != nil {
			fmt.Fprintf(logw, "certkit: %v: could not revert every fault: %v\n", s, err)
			return
		}
		fmt.Fprintf(logw, "certkit: %v: every injected fault reverted\n", s)
	})
	defer stopSignals()

	var outcome Outcome
	gomega.RegisterFailHandler(ginkgo.Fail)
	ginkgo.Describe("certkit certification catalog", func() {
		for _, s := range specs {
			s := s
			ginkgo.It(s.ID+": "+s.Title, ginkgo.Label(s.ID), func(sctx ginkgo.SpecContext) {
				env.begin(s.ID)
				ginkgo.DeferCleanup(func(cctx ginkgo.SpecContext) {
					if err := env.Faults.RevertAll(cctx); err != nil {
						ginkgo.Fail(fmt.Sprintf("reverting the faults of %s: %v", s.ID, err))
					}
				}, ginkgo.NodeTimeout(t.CommandTimeout.Duration))
				s.Body(sctx, env)
			})
		}
	})
	ginkgo.ReportAfterEach(func(r types.SpecReport) {
		res := env.result(r)
		outcome.Results = append(outcome.Results, res)
		if err := cfg.Bundle.AddResult(res); err != nil {
			fmt.Fprintf(logw, "certkit: recording the result of %s: %v\n", res.ID, err)
		}
		if r.State.Is(types.SpecStateInterrupted) {
			outcome.Interrupted = true
		}
	})

	runStart := time.Now()
	defer env.collectHostLogs(runStart, logw)

	suiteCfg, repCfg := ginkgo.GinkgoConfiguration()
	suiteCfg.Timeout = 24 * time.Hour // specs bound themselves with profile timings
	suiteCfg.GracePeriod = t.CommandTimeout.Duration
	repCfg.NoColor = true
	repCfg.Verbose = cfg.Verbose
	ft := &failRecorder{}
	passed := ginkgo.RunSpecs(ft, "certkit", suiteCfg, repCfg)

	// The spec cleanups reverted their faults; this is the backstop for a
	// run that ended some other way.
	rctx, rcancel := context.WithTimeout(context.Background(), t.CommandTimeout.Duration)
	defer rcancel()
	if err := env.Faults.RevertAll(rctx); err != nil {
		return outcome, fmt.Errorf("faults left in the lab: %w", err)
	}
	outcome.Passed = passed && !ft.failed && len(outcome.Results) == len(specs)
	return outcome, nil
}

func selectSpecs(focus []string) ([]Spec, error) {
	all := Catalog()
	if len(focus) == 0 {
		return all, nil
	}
	byID := map[string]Spec{}
	for _, s := range all {
		byID[s.ID] = s
	}
	var out []Spec
	for _, id := range focus {
		s, ok := byID[id]
		if !ok {
			ids := make([]string, len(all))
			for i, s := range all {
				ids[i] = s.ID
			}
			return nil, fmt.Errorf("no test %q in the catalog; known: %s", id, strings.Join(ids, ", "))
		}
		out = append(out, s)
	}
	return out, nil
}

// connect dials every host over SSH and asks every array who it is.
func (e *Env) connect(ctx context.Context) error {
	t := e.Profile.Timings
	var errs []error
	for _, h := range e.Profile.Hosts {
		c, err := esxcli.Dial(ctx, h, t.CommandTimeout.Duration)
		if err != nil {
			errs = append(errs, fmt.Errorf("host %s: %w", h.Name, err))
			continue
		}
		name := h.Name
		c.OnResult(func(r *esxcli.Result) { e.recordCommand(name, r) })
		e.Hosts = append(e.Hosts, &Host{Name: h.Name, Config: h, Esxcli: c})
	}
	for _, a := range e.Profile.Arrays {
		c, err := ArrayClient(a.Control)
		if err != nil {
			errs = append(errs, fmt.Errorf("array %s: %w", a.Name, err))
			continue
		}
		info, err := c.Info(ctx)
		if err != nil {
			errs = append(errs, fmt.Errorf("array %s: %w", a.Name, err))
			continue
		}
		e.Arrays = append(e.Arrays, &Array{Name: a.Name, Control: c, Info: info})
	}
	return errors.Join(errs...)
}

// ArrayClient returns the control API client for an array of the lab
// profile: its token, and its TLS files when the array is served over https.
func ArrayClient(c lab.Control) (*control.Client, error) {
	token, err := c.ResolveToken()
	if err != nil {
		return nil, err
	}
	var opts []control.ClientOption
	if c.TLS != nil {
		cfg, err := control.LoadClientTLS(c.TLS.CA, c.TLS.Cert, c.TLS.Key)
		if err != nil {
			return nil, fmt.Errorf("control %s (control.tls): %w", c.URL, err)
		}
		opts = append(opts, control.ClientTLS(cfg))
	}
	return control.NewClient(c.URL, token, opts...), nil
}

func (e *Env) close() {
	for _, h := range e.Hosts {
		h.Esxcli.Close()
	}
}

// hostLogs are the host logs copied into the bundle, as vm-support lays them out.
var hostLogs = []string{"/var/log/vmkernel.log", "/var/log/vobd.log"}

// collectHostLogs copies the lines of each host log written since the run
// started (with a minute's margin for clock skew) into the bundle.
func (e *Env) collectHostLogs(since time.Time, logw io.Writer) {
	ctx, cancel := context.WithTimeout(context.Background(), e.Profile.Timings.CommandTimeout.Duration)
	defer cancel()
	for _, h := range e.Hosts {
		for _, path := range hostLogs {
			r, err := h.Esxcli.Shell(ctx, "cat "+path)
			if err != nil {
				fmt.Fprintf(logw, "certkit: host %s: copying %s: %v\n", h.Name, path, err)
				continue
			}
			dir, err := bundle.HostDir(h.Name)
			if err == nil {
				err = e.Bundle.WriteFile(dir+path, []byte(logSince(r.Stdout, since.Add(-time.Minute))))
			}
			if err != nil {
				fmt.Fprintf(logw, "certkit: host %s: recording %s: %v\n", h.Name, path, err)
			}
		}
	}
}

// logSince keeps the lines from the first one stamped at or after t (ESXi
// stamps lines "2026-11-23T16:04:10.007Z cpu0:..."); unstamped lines stay
// with the line before them.
func logSince(log string, t time.Time) string {
	lines := strings.SplitAfter(log, "\n")
	for i, l := range lines {
		stamp, _, ok := strings.Cut(l, " ")
		if !ok {
			continue
		}
		stamp = strings.TrimSuffix(stamp, ":") // vobd.log: "2026-11-23T16:04:10.007Z: [...]"
		if at, err := time.Parse(time.RFC3339Nano, stamp); err == nil && !at.Before(t) {
			return strings.Join(lines[i:], "")
		}
	}
	return ""
}

// recordCommand appends one command and what the host returned to the
// host's command log in the bundle.
func (e *Env) recordCommand(host string, r *esxcli.Result) {
	out := r.Stdout + r.Stderr
	if log, ok := strings.CutPrefix(r.Command, "cat /var/log/"); ok {
		// The run's window of the log is stored under var/log; the command
		// log keeps the record that it was read, not a second copy.
		out = fmt.Sprintf("(%d bytes; the run's window is in hosts/%s/var/log/%s)\n", len(r.Stdout), host, log)
	}
	if r.Err != "" {
		out += "certkit: " + r.Err + "\n"
	}
	_ = e.Bundle.LogCommand(host, bundle.Command{Start: r.Start, Duration: r.End.Sub(r.Start),
		Command: r.Command, ExitCode: r.ExitCode, Output: []byte(out)})
}

func (e *Env) writeTimeline() {
	id := e.SpecID()
	if id == "" {
		return
	}
	e.EvidenceJSON("timeline.json", e.Faults.Timeline())
}

// result turns a Ginkgo report and what the spec recorded into a TestResult.
func (e *Env) result(r types.SpecReport) bundle.TestResult {
	rec := e.end()
	id := ""
	if len(r.Labels()) > 0 {
		id = r.Labels()[0]
	}
	res := bundle.TestResult{ID: id, Name: r.LeafNodeText, Start: r.StartTime, End: r.EndTime}
	if rec != nil {
		res.Measurements = rec.measurements
		res.Thresholds = rec.thresholds
	}
	switch {
	case r.State.Is(types.SpecStatePassed):
		res.Status = "passed"
	case r.State.Is(types.SpecStateSkipped | types.SpecStatePending):
		res.Status = "skipped"
		res.Reason = r.Failure.Message
	case r.State.Is(types.SpecStateInterrupted | types.SpecStateAborted):
		res.Status = "error"
		res.Reason = "interrupted: " + r.Failure.Message
	default:
		res.Status = "failed"
		res.Reason = r.Failure.Message
	}
	if rec != nil && len(rec.evidenceErrs) > 0 && res.Status == "passed" {
		res.Status = "error"
		res.Reason = "evidence could not be recorded: " + errors.Join(rec.evidenceErrs...).Error()
	}
	return res
}
