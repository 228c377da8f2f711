// Package failover is the path and controller failover family of the
// certification catalog.
package failover

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/certkit/certkit/harness/esxcli"
	"github.com/certkit/certkit/harness/fault"
	"github.com/certkit/certkit/harness/observe"
	"github.com/certkit/certkit/harness/workload"
	"github.com/certkit/certkit/suites"
	"github.com/certkit/certkit/targets/control"
)

// NoopTimeoutID is the stable ID of the silent-path test.
const NoopTimeoutID = "failover.path.noop-timeout"

func init() {
	suites.Register(suites.Spec{
		ID:     NoopTimeoutID,
		Title:  "a silent path is declared dead by NOP-Out timeout and I/O moves to a surviving path",
		Body:   noopTimeout,
		Replay: replayNoopTimeout,
	})
}

// noopTimeout: with the adapter's NOP-Out and recovery timers set from the
// lab profile and two active paths to one LUN, the portal of the path
// carrying I/O goes silent (TCP open, nothing answered). The host must
// declare that path dead within NoopOutInterval + NoopOutTimeout +
// RecoveryTimeout (+ slack) and not before NoopOutTimeout, keep reads going
// on the surviving path without an error reaching the reader, and bring the
// path back when the portal answers again.
func noopTimeout(ctx context.Context, env *suites.Env) {
	Expect(env.Hosts).NotTo(BeEmpty(), "the lab profile names no host")
	Expect(env.Arrays).NotTo(BeEmpty(), "the lab profile names no array")
	host, array := env.Hosts[0], env.Arrays[0]
	t := env.Profile.Timings
	limits := Limits{
		NoopOutInterval: t.NoopOutInterval.Duration, NoopOutTimeout: t.NoopOutTimeout.Duration,
		RecoveryTimeout: t.RecoveryTimeout.Duration, DetectionSlack: t.DetectionSlack.Duration,
		FailbackTimeout: t.FailbackTimeout.Duration, PollInterval: t.PollInterval.Duration,
	}
	Expect(array.Info.Targets).NotTo(BeEmpty(), "array %s exports no target", array.Name)
	Expect(array.Info.Targets[0].LUNs).NotTo(BeEmpty(), "array %s target %s has no LUN", array.Name, array.Info.Targets[0].IQN)
	device := array.Info.Targets[0].LUNs[0].NAA
	adapter := host.Config.Adapter
	esx := host.Esxcli

	By("enabling software iSCSI and setting the adapter's timers from the lab profile")
	run(ctx, esx, "iscsi", "software", "set", "--enabled=true")
	restore := setParams(ctx, esx, adapter, map[string]time.Duration{
		"NoopOutInterval": limits.NoopOutInterval,
		"NoopOutTimeout":  limits.NoopOutTimeout,
		"RecoveryTimeout": limits.RecoveryTimeout,
		"LoginTimeout":    t.LoginTimeout.Duration,
	})
	DeferCleanup(func(cctx SpecContext) { restore(cctx) }, NodeTimeout(t.SetupTimeout.Duration))

	By(fmt.Sprintf("discovering array %s through SendTargets and rescanning %s", array.Name, adapter))
	addSendTarget(ctx, esx, adapter, array.Info.Portals[0].Address)
	run(ctx, esx, "storage", "core", "adapter", "rescan", "--adapter="+adapter)

	By(fmt.Sprintf("expecting two active paths to %s", device))
	var paths []esxcli.Path
	Eventually(ctx, func(g Gomega) {
		paths = devicePaths(ctx, g, esx, device)
		g.Expect(paths).To(HaveLen(2), "paths to %s", device)
		for _, p := range paths {
			g.Expect(p.State).To(Equal("active"), "state of path %s", p.RuntimeName)
		}
	}).WithTimeout(t.SetupTimeout.Duration).WithPolling(t.PollInterval.Duration).Should(Succeed())

	faultPath, other := workingPath(ctx, esx, device, paths)
	portal := portalOf(array.Info, faultPath)
	ev := Evidence{Limits: limits, Host: host.Name, Device: device, FaultPath: faultPath.RuntimeName}
	for _, p := range other {
		ev.OtherPaths = append(ev.OtherPaths, p.RuntimeName)
	}

	watch := observe.WatchPaths(ctx, esx, t.PollInterval.Duration)
	reads := workload.StartReader(ctx, esx, workload.Config{Device: device, BlockSize: 4096, Blocks: 256,
		Interval: t.PollInterval.Duration, Timeout: t.IOTimeout.Duration})
	// Evidence is written however the spec ends, so a failed run explains itself.
	DeferCleanup(func() {
		ev.IO = reads.Stop()
		ev.Samples = watch.Stop()
		env.EvidenceJSON("evidence.json", ev)
	})
	_, err := watch.WaitFor(ctx, func(s observe.PathSample) bool { return s.Err == "" })
	Expect(err).NotTo(HaveOccurred(), "first path-state sample")

	By(fmt.Sprintf("silencing portal %s (TPGT %d) behind working path %s", portal.ID, portal.TPGT, faultPath.RuntimeName))
	ev.ReadsBefore = readOps(ctx, esx, paths)
	injected, err := env.Faults.Inject(ctx, array.Control, array.Name, portal.ID, "blackhole")
	Expect(err).NotTo(HaveOccurred())
	ev.InjectedAt = effective(injected)

	By(fmt.Sprintf("waiting up to %s for %s to turn dead", limits.MaxDetection(), faultPath.RuntimeName))
	wctx, cancel := context.WithTimeout(ctx, limits.MaxDetection())
	dead, werr := watch.WaitFor(wctx, func(s observe.PathSample) bool { return s.States[faultPath.RuntimeName] == "dead" })
	cancel()
	if werr == nil {
		By("expecting reads to resume on a surviving path")
		// Reads resuming later than the slack fail the verdict; waiting longer would only delay it.
		rctx, cancel := context.WithTimeout(ctx, limits.DetectionSlack)
		waitForRead(rctx, reads, dead.At, t.PollInterval.Duration)
		cancel()
		ev.ReadsAfter = readOps(ctx, esx, paths)
		ev.WorkingPathsAfter = workingPaths(ctx, esx, device)
	}

	By(fmt.Sprintf("reverting the fault on portal %s and expecting every path active again", portal.ID))
	reverted, err := env.Faults.Revert(ctx, injected.FaultID)
	Expect(err).NotTo(HaveOccurred())
	ev.RevertedAt = effective(reverted)
	fctx, cancel := context.WithTimeout(ctx, limits.FailbackTimeout)
	_, _ = watch.WaitFor(fctx, func(s observe.PathSample) bool {
		return s.States[faultPath.RuntimeName] == "active" && allActive(s, ev.OtherPaths)
	})
	cancel()
	ev.IO = reads.Stop()
	ev.Samples = watch.Stop()

	v := Judge(ev)
	ms, ths := v.Measurements(limits)
	for name, m := range ms {
		env.Measure(name, m.Value, m.Unit)
		env.Threshold(name, ths[name].Min, ths[name].Max, ths[name].Unit)
	}
	Expect(v.Failures).To(BeEmpty(), "verdict of %s", NoopTimeoutID)
}

// effective is when a fault event took effect: the array's clock when it
// reports an earlier instant than the harness saw the call return.
func effective(e fault.Event) time.Time {
	if !e.ArrayAt.IsZero() && e.ArrayAt.Before(e.At) {
		return e.ArrayAt
	}
	return e.At
}

func run(ctx context.Context, esx *esxcli.Client, args ...string) *esxcli.Result {
	GinkgoHelper()
	r, err := esx.Esxcli(ctx, args...)
	Expect(err).NotTo(HaveOccurred())
	return r
}

// setParams sets adapter parameters (whole seconds) and returns a function
// that puts back the values the host had.
func setParams(ctx context.Context, esx *esxcli.Client, adapter string, want map[string]time.Duration) func(context.Context) {
	GinkgoHelper()
	params, err := esxcli.ParseAdapterParams(run(ctx, esx, "iscsi", "adapter", "param", "get", "--adapter="+adapter).Stdout)
	Expect(err).NotTo(HaveOccurred())
	old := map[string]string{}
	for _, p := range params {
		if _, ok := want[p.Name]; ok {
			old[p.Name] = p.Current
		}
	}
	for _, k := range sortedKeys(want) {
		Expect(old).To(HaveKey(k), "adapter %s has no parameter %s", adapter, k)
		run(ctx, esx, "iscsi", "adapter", "param", "set", "--adapter="+adapter, "--key="+k,
			"--value="+strconv.Itoa(int(want[k].Seconds())))
	}
	return func(cctx context.Context) {
		for _, k := range sortedKeys(want) {
			_, _ = esx.Esxcli(cctx, "iscsi", "adapter", "param", "set", "--adapter="+adapter, "--key="+k, "--value="+old[k])
		}
	}
}

func sortedKeys(m map[string]time.Duration) []string {
	// NoopOutTimeout before NoopOutInterval is not required by ESXi; a fixed
	// order keeps the command log stable between runs.
	keys := []string{"LoginTimeout", "NoopOutInterval", "NoopOutTimeout", "RecoveryTimeout"}
	out := keys[:0:0]
	for _, k := range keys {
		if _, ok := m[k]; ok {
			out = append(out, k)
		}
	}
	return out
}

func addSendTarget(ctx context.Context, esx *esxcli.Client, adapter, address string) {
	GinkgoHelper()
	list, err := esxcli.ParseSendTargets(run(ctx, esx, "iscsi", "adapter", "discovery", "sendtarget", "list").Stdout)
	Expect(err).NotTo(HaveOccurred())
	for _, st := range list {
		if st.Adapter == adapter && st.Address == address {
			return
		}
	}
	run(ctx, esx, "iscsi", "adapter", "discovery", "sendtarget", "add", "--adapter="+adapter, "--address="+address)
}

func devicePaths(ctx context.Context, g Gomega, esx *esxcli.Client, device string) []esxcli.Path {
	r, err := esx.Esxcli(ctx, "storage", "core", "path", "list", "--device="+device)
	g.Expect(err).NotTo(HaveOccurred())
	paths, err := esxcli.ParseCorePathList(r.Stdout)
	g.Expect(err).NotTo(HaveOccurred())
	return paths
}

func workingPaths(ctx context.Context, esx *esxcli.Client, device string) []string {
	GinkgoHelper()
	devs, err := esxcli.ParseNMPDeviceList(run(ctx, esx, "storage", "nmp", "device", "list", "--device="+device).Stdout)
	Expect(err).NotTo(HaveOccurred())
	Expect(devs).To(HaveLen(1), "nmp device list --device=%s", device)
	return devs[0].WorkingPaths
}

// workingPath splits the paths into the one NMP sends I/O to and the rest.
func workingPath(ctx context.Context, esx *esxcli.Client, device string, paths []esxcli.Path) (esxcli.Path, []esxcli.Path) {
	GinkgoHelper()
	working := workingPaths(ctx, esx, device)
	Expect(working).To(HaveLen(1), "working paths of %s (one expected with a single-path PSP)", device)
	var hit esxcli.Path
	var rest []esxcli.Path
	for _, p := range paths {
		if p.RuntimeName == working[0] {
			hit = p
		} else {
			rest = append(rest, p)
		}
	}
	Expect(hit.RuntimeName).NotTo(BeEmpty(), "working path %s is not among the paths of %s", working[0], device)
	return hit, rest
}

// portalOf finds the array portal a path goes through by its portal group
// tag, which the host reports in the path's target transport details.
func portalOf(info control.Info, p esxcli.Path) control.Portal {
	GinkgoHelper()
	tag := -1
	for _, f := range strings.Fields(p.TargetTransportDetails) {
		if v, ok := strings.CutPrefix(f, "PortalTag="); ok {
			tag, _ = strconv.Atoi(v)
		}
	}
	Expect(tag).To(BeNumerically(">=", 0), "path %s: no PortalTag in %q", p.RuntimeName, p.TargetTransportDetails)
	for _, pt := range info.Portals {
		if pt.TPGT == tag {
			return pt
		}
	}
	Fail(fmt.Sprintf("path %s goes through portal group tag %d, which array %s does not have", p.RuntimeName, tag, info.Name))
	return control.Portal{}
}

func readOps(ctx context.Context, esx *esxcli.Client, paths []esxcli.Path) map[string]uint64 {
	GinkgoHelper()
	out := map[string]uint64{}
	for _, p := range paths {
		stats, err := esxcli.ParsePathStats(run(ctx, esx, "storage", "core", "path", "stats", "get", "--path="+p.RuntimeName).Stdout)
		Expect(err).NotTo(HaveOccurred())
		Expect(stats).To(HaveLen(1), "path stats of %s", p.RuntimeName)
		out[p.RuntimeName] = stats[0].ReadOperations
	}
	return out
}

// waitForRead returns when a read that ended after t succeeded, or ctx ends.
func waitForRead(ctx context.Context, r *workload.Reader, t time.Time, poll time.Duration) {
	tick := time.NewTicker(poll)
	defer tick.Stop()
	for {
		for _, s := range r.Samples() {
			if s.OK && !s.End.Before(t) {
				return
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func allActive(s observe.PathSample, paths []string) bool {
	for _, p := range paths {
		if s.States[p] != "active" {
			return false
		}
	}
	return true
}
