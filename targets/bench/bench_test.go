package bench

import (
	"context"
	crand "crypto/rand"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Benchmark parameters, from the environment so `make bench` can be
// lengthened without editing code.
var (
	// benchSeconds is the length of one measured run (iscsi-perf's -t).
	benchSeconds = envInt("CERTKIT_BENCH_SECONDS", 5)
	// benchRounds is how many times each target × path is measured, the
	// four interleaved in a rotating order; the median is reported.
	benchRounds = envInt("CERTKIT_BENCH_ROUNDS", 3)
	// benchTable, when set, is a file the benchmark writes its markdown
	// table to (machine, date and one row per workload × path × target),
	// for targets/BENCH.md.
	benchTable = os.Getenv("CERTKIT_BENCH_TABLE")
)

const (
	// benchLUNSize is the LUN of both targets, in RAM on both sides.
	benchLUNSize = 128 << 20
	// perfStall and perfGrace bound an iscsi-perf run (see perfOptions).
	perfStall = 15 * time.Second
	perfGrace = 30 * time.Second

	// The goals of issue 7.
	goalCPURatio  = 1.2  // ours' CPU per I/O at most 1.2× tgtd's
	goalProxyCost = 0.10 // the proxy costs under 10 % of direct IOPS
)

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// workload is one row group of the table: reads are iscsi-perf's random
// READ(16)s, writes certkit's initiator's random WRITE(16)s from QD
// goroutines on one session.
type workload struct {
	Name  string
	Write bool
	Size  int // bytes per command
	QD    int
}

var workloads = []workload{
	{"read-4KiB-QD1", false, 4 << 10, 1},
	{"read-128KiB-QD16", false, 128 << 10, 16},
	{"write-4KiB-QD1", true, 4 << 10, 1},
	{"write-128KiB-QD16", true, 128 << 10, 16},
}

// sample is one measured run.
type sample struct {
	IOPS  float64
	MiBps float64
	CPUus float64 // target CPU (target and proxy process) per I/O, µs
}

// BenchmarkTargets measures certkit's array (`certkit target serve`, memory
// LUN) and Debian's tgtd (LUN file in /dev/shm) in one run, interleaved:
// for every workload, benchRounds rounds of the four endpoints (ours and
// tgtd, direct and through a fault proxy) in a rotating order, each for
// benchSeconds. It reports medians per endpoint and medians of the
// per-round ratios ours/tgtd (paired runs, seconds apart, see the same
// machine noise) and of the proxy's cost. The body ignores b.N: one
// invocation is one full measurement.
func BenchmarkTargets(b *testing.B) {
	if raceEnabled {
		b.Skip("benchmarks under -race measure the race detector: run `make bench` (go test -bench without -race)")
	}
	needBinary(b, perfBin, "libiscsi-bin")
	needBinary(b, tgtdBin, "tgt")
	ctx := context.Background()

	ours := startOurs(b, strconv.Itoa(benchLUNSize), 0)
	tgtd := startTgtd(b, benchLUNSize)
	proxy, proxyAddr := startProxyChild(b, tgtd.Addr)
	eps := []endpoint{
		{Target: "ours", Path: "direct", Addr: ours.Direct, IQN: ourIQN, procs: []*proc{ours.proc}},
		{Target: "tgtd", Path: "direct", Addr: tgtd.Addr, IQN: tgtdIQN, procs: []*proc{tgtd.proc}},
		{Target: "ours", Path: "proxy", Addr: ours.Proxied, IQN: ourIQN, procs: []*proc{ours.proc}},
		{Target: "tgtd", Path: "proxy", Addr: proxyAddr, IQN: tgtdIQN, procs: []*proc{tgtd.proc, proxy}},
	}
	table := &benchTableWriter{machine: machine()}
	for _, e := range eps[:2] {
		if err := prefill(ctx, e); err != nil {
			b.Fatal(err)
		}
		s, _, _, err := e.login(ctx, benchInitiator+"-params")
		if err != nil {
			b.Fatal(err)
		}
		p := s.Params()
		table.notes = append(table.notes, fmt.Sprintf("%s, at its defaults, negotiates with certkit's initiator: MaxRecvDataSegmentLength %d, MaxBurstLength %d, FirstBurstLength %d, ImmediateData %v, InitialR2T %v.",
			e.Target, p.TargetMaxRecvDataSegmentLength, p.MaxBurstLength, p.FirstBurstLength, yesNo(p.ImmediateData), yesNo(p.InitialR2T)))
		s.Logout(ctx)
	}

	for _, w := range workloads {
		b.Run(w.Name, func(b *testing.B) {
			b.ReportMetric(0, "ns/op") // one invocation is one measurement, not b.N operations
			got := map[string][]sample{}
			for r := range benchRounds {
				var line []string
				for i := range eps {
					e := eps[(i+r)%len(eps)]
					s, err := measure(ctx, e, w)
					if err != nil {
						b.Fatalf("%s, round %d, %s: %v", w.Name, r+1, e, err)
					}
					line = append(line, fmt.Sprintf("%s %.0f IOPS %.1f µs/IO", e, s.IOPS, s.CPUus))
					got[e.String()] = append(got[e.String()], s)
				}
				// One line per round: the testing package keeps only the
				// first lines of a benchmark's log.
				b.Logf("round %d: %s", r+1, strings.Join(line, " | "))
			}
			res := summarize(got)
			res.report(b)
			table.add(w, res)
		})
	}
	// A benchmark with sub-benchmarks shows its log only with -v: the
	// table goes to stdout, after the result lines.
	fmt.Printf("\n%s\n", table)
	if benchTable != "" {
		if err := os.WriteFile(benchTable, []byte(table.String()), 0o644); err != nil {
			b.Fatalf("writing the table to %s: %v", benchTable, err)
		}
		fmt.Printf("table written to %s\n", benchTable)
	}
}

func yesNo(v bool) string {
	if v {
		return "Yes"
	}
	return "No"
}

// measure runs one workload against one endpoint for benchSeconds.
func measure(ctx context.Context, e endpoint, w workload) (sample, error) {
	if w.Write {
		return measureWrite(ctx, e, w)
	}
	return measureRead(ctx, e, w)
}

// measureRead runs iscsi-perf; its final average times -t is the I/O
// count (its login, READ CAPACITY and logout are charged to the target's
// CPU, a few commands in tens of thousands).
func measureRead(ctx context.Context, e endpoint, w workload) (sample, error) {
	cpu0, err := e.cpuTime()
	if err != nil {
		return sample{}, err
	}
	r, err := runPerf(ctx, perfOptions{
		URL: e.URL(), Initiator: benchInitiator + "-perf",
		Blocks: w.Size / 512, QD: w.QD, Seconds: benchSeconds,
		StallTimeout: perfStall, Grace: perfGrace,
	})
	if err != nil {
		return sample{}, err
	}
	cpu1, err := e.cpuTime()
	if err != nil {
		return sample{}, err
	}
	if r.TransferBytes != w.Size {
		return sample{}, fmt.Errorf("iscsi-perf read %d bytes per command, want %d: the LUN's block size is not 512", r.TransferBytes, w.Size)
	}
	if r.AvgIOPS == 0 {
		return sample{}, fmt.Errorf("iscsi-perf averaged 0 IOPS:\n%s", tail(r.Stdout, 600))
	}
	iops := float64(r.AvgIOPS)
	ios := iops * float64(benchSeconds)
	return sample{IOPS: iops, MiBps: iops * float64(w.Size) / (1 << 20), CPUus: float64((cpu1 - cpu0).Microseconds()) / ios}, nil
}

// measureWrite writes random Size-aligned ranges with certkit's initiator
// from QD goroutines on one session for benchSeconds; commands in flight
// at the end complete and count.
func measureWrite(ctx context.Context, e endpoint, w workload) (sample, error) {
	s, blocks, bs, err := e.login(ctx, benchInitiator+"-writer")
	if err != nil {
		return sample{}, err
	}
	defer s.Logout(ctx)
	per := uint64(w.Size) / uint64(bs)
	if per == 0 || uint64(w.Size)%uint64(bs) != 0 || blocks < per {
		return sample{}, fmt.Errorf("%s: %d-byte writes do not fit %d blocks of %d bytes", e, w.Size, blocks, bs)
	}
	slots := blocks / per
	cpu0, err := e.cpuTime()
	if err != nil {
		return sample{}, err
	}
	var (
		ops      atomic.Int64
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
	)
	start := time.Now()
	end := start.Add(time.Duration(benchSeconds) * time.Second)
	for range w.QD {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, w.Size)
			crand.Read(buf)
			for time.Now().Before(end) {
				cctx, cancel := context.WithTimeout(ctx, ioTimeout)
				err := s.Write(cctx, benchLUN, rand.Uint64N(slots)*per, buf, bs)
				cancel()
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					return
				}
				ops.Add(1)
			}
		}()
	}
	wg.Wait()
	wall := time.Since(start)
	cpu1, err := e.cpuTime()
	if err != nil {
		return sample{}, err
	}
	if firstErr != nil {
		return sample{}, firstErr
	}
	n := float64(ops.Load())
	if n == 0 {
		return sample{}, fmt.Errorf("%s: no write completed in %s", e, wall)
	}
	iops := n / wall.Seconds()
	return sample{IOPS: iops, MiBps: iops * float64(w.Size) / (1 << 20), CPUus: float64((cpu1 - cpu0).Microseconds()) / n}, nil
}

// result is one workload's medians.
type result struct {
	med map[string]sample // by endpoint: ours-direct, tgtd-proxy, ...
	// Medians of per-round paired ratios, by path.
	iopsRatio, cpuRatio map[string]float64
	// proxyCost is 1 - proxy IOPS / direct IOPS, per target.
	proxyCost map[string]float64
}

func summarize(got map[string][]sample) result {
	res := result{med: map[string]sample{}, iopsRatio: map[string]float64{}, cpuRatio: map[string]float64{}, proxyCost: map[string]float64{}}
	for ep, ss := range got {
		res.med[ep] = sample{
			IOPS:  median(ss, func(s sample) float64 { return s.IOPS }),
			MiBps: median(ss, func(s sample) float64 { return s.MiBps }),
			CPUus: median(ss, func(s sample) float64 { return s.CPUus }),
		}
	}
	pair := func(a, b string, f func(x, y sample) float64) float64 {
		var rs []float64
		for i := range min(len(got[a]), len(got[b])) {
			rs = append(rs, f(got[a][i], got[b][i]))
		}
		return median(rs, func(v float64) float64 { return v })
	}
	for _, path := range []string{"direct", "proxy"} {
		res.iopsRatio[path] = pair("ours-"+path, "tgtd-"+path, func(x, y sample) float64 { return x.IOPS / y.IOPS })
		res.cpuRatio[path] = pair("ours-"+path, "tgtd-"+path, func(x, y sample) float64 { return x.CPUus / y.CPUus })
	}
	for _, t := range []string{"ours", "tgtd"} {
		res.proxyCost[t] = pair(t+"-proxy", t+"-direct", func(x, y sample) float64 { return 1 - x.IOPS/y.IOPS })
	}
	return res
}

func median[T any](xs []T, f func(T) float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	v := make([]float64, len(xs))
	for i, x := range xs {
		v[i] = f(x)
	}
	slices.Sort(v)
	if n := len(v); n%2 == 0 {
		return (v[n/2-1] + v[n/2]) / 2
	}
	return v[len(v)/2]
}

func (res result) report(b *testing.B) {
	for _, ep := range []string{"ours-direct", "tgtd-direct", "ours-proxy", "tgtd-proxy"} {
		s := res.med[ep]
		b.ReportMetric(s.IOPS, ep+"-IOPS")
		b.ReportMetric(s.MiBps, ep+"-MiB/s")
		b.ReportMetric(s.CPUus, ep+"-cpu-us/IO")
	}
	for _, path := range []string{"direct", "proxy"} {
		b.ReportMetric(res.iopsRatio[path], path+"-ours/tgtd-IOPS")
		b.ReportMetric(res.cpuRatio[path], path+"-ours/tgtd-cpu")
	}
	b.ReportMetric(100*res.proxyCost["ours"], "ours-proxy-cost-%")
	b.ReportMetric(100*res.proxyCost["tgtd"], "tgtd-proxy-cost-%")
}

// benchTableWriter renders the markdown table of targets/BENCH.md.
type benchTableWriter struct {
	machine string
	notes   []string
	rows    []string
}

func (t *benchTableWriter) add(w workload, res result) {
	verdict := func(ok bool, format string, v float64) string {
		if ok {
			return "met (" + fmt.Sprintf(format, v) + ")"
		}
		return "**not met** (" + fmt.Sprintf(format, v) + ")"
	}
	for _, path := range []string{"direct", "proxy"} {
		for _, tgt := range []string{"ours", "tgtd"} {
			s := res.med[tgt+"-"+path]
			iopsR, cpuR, cost, goals := "", "", "", ""
			if path == "proxy" {
				cost = fmt.Sprintf("%.1f %%", 100*res.proxyCost[tgt])
			}
			if tgt == "ours" {
				iopsR = fmt.Sprintf("%.2f", res.iopsRatio[path])
				cpuR = fmt.Sprintf("%.2f", res.cpuRatio[path])
				g := []string{
					"≥ tgtd " + verdict(res.iopsRatio[path] >= 1, "%.2f×", res.iopsRatio[path]),
					"CPU ≤ 1.2× " + verdict(res.cpuRatio[path] <= goalCPURatio, "%.2f×", res.cpuRatio[path]),
				}
				if path == "proxy" {
					g = append(g, "proxy < 10 % "+verdict(res.proxyCost["ours"] < goalProxyCost, "%.1f %%", 100*res.proxyCost["ours"]))
				}
				goals = strings.Join(g, "; ")
			}
			t.rows = append(t.rows, fmt.Sprintf("| %s | %s | %s | %.0f | %.1f | %.1f | %s | %s | %s | %s |",
				w.Name, path, tgt, s.IOPS, s.MiBps, s.CPUus, iopsR, cpuR, cost, goals))
		}
	}
}

func (t *benchTableWriter) String() string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "%s; load average at end %s.\n\n", t.machine, loadAverage())
	for _, n := range t.notes {
		fmt.Fprintf(&sb, "%s\n", n)
	}
	if len(t.notes) > 0 {
		sb.WriteString("\n")
	}
	sb.WriteString("| workload | path | target | IOPS | MiB/s | target CPU µs/IO | IOPS ours/tgtd | CPU/IO ours/tgtd | proxy cost | goals |\n")
	sb.WriteString("|---|---|---|---:|---:|---:|---:|---:|---:|---|\n")
	for _, r := range t.rows {
		sb.WriteString(r + "\n")
	}
	return sb.String()
}

// machine describes where and when the numbers were taken.
func machine() string {
	first := func(path, prefix string) string {
		b, _ := os.ReadFile(path)
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, prefix) {
				_, v, _ := strings.Cut(l, ":")
				return strings.TrimSpace(v)
			}
		}
		return "?"
	}
	readTrim := func(path string) string {
		b, err := os.ReadFile(path)
		if err != nil {
			return "?"
		}
		return strings.TrimSpace(string(b))
	}
	pkg := func(name string) string {
		out, err := exec.Command("dpkg-query", "-W", "-f", "${Version}", name).Output()
		if err != nil {
			return "?"
		}
		return string(out)
	}
	return fmt.Sprintf("Measured %s on %d CPUs (%s), kernel %s, %s, libiscsi-bin %s, tgt %s; %d rounds × %d s per endpoint; load average at start %s",
		time.Now().UTC().Format("2006-01-02 15:04 MST"), runtime.NumCPU(), first("/proc/cpuinfo", "model name"),
		readTrim("/proc/sys/kernel/osrelease"), runtime.Version(), pkg("libiscsi-bin"), pkg("tgt"), benchRounds, benchSeconds, loadAverage())
}

// loadAverage is the 1, 5 and 15 minute load average: how busy the shared
// machine was.
func loadAverage() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	return strings.Join(f[:min(3, len(f))], " ")
}
