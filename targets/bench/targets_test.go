package bench

import (
	"bufio"
	"bytes"
	"context"
	crand "crypto/rand"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/certkit/certkit/iscsi/initiator"
	"github.com/certkit/certkit/targets/tgtd"
)

// Timings and sizes of the processes under test; parameters, not sleeps.
const (
	// startTimeout bounds a child's start-up: a race-enabled certkit on a
	// busy shared machine is slow to come up.
	startTimeout = 60 * time.Second
	// stopTimeout is how long a child may take to exit on SIGTERM before it
	// is killed.
	stopTimeout = 10 * time.Second
	// pollInterval paces start-up readiness probes.
	pollInterval = 20 * time.Millisecond
	// ioTimeout bounds one command of the prefill and the write workloads.
	ioTimeout = 30 * time.Second

	ourIQN         = "iqn.2026-01.io.certkit:bench-array"
	tgtdIQN        = "iqn.2026-01.io.certkit:bench-tgtd"
	benchInitiator = "iqn.2026-01.io.certkit:bench-initiator"
	// benchLUN is the data LUN on both targets (tgtd's LUN 0 is its
	// controller LUN).
	benchLUN = 1

	tgtdBin = tgtd.Bin
	perfBin = "/usr/bin/iscsi-perf"
	niceBin = "/usr/bin/nice"
	// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat
	// (100 on every Linux architecture Go supports).
	clockTicks = 100
)

// needBinary skips the test when a Debian tool is missing, naming the
// package to install.
func needBinary(tb testing.TB, bin, pkg string) {
	tb.Helper()
	if _, err := os.Stat(bin); err != nil {
		tb.Skipf("%s not found: install it with `apt-get install -y %s` (make deps does, as root)", bin, pkg)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// proc is a child process whose CPU time the benchmark reads.
type proc struct {
	name   string
	pid    int
	cmd    *exec.Cmd
	out    *syncBuffer // stdout and stderr, for error messages
	lines  chan string // stdout lines, as long as someone reads them
	stdin  *os.File    // held open: the proxy child exits when it closes
	exited chan struct{}
}

// startProc starts bin under niceness (0: as is), killed with the test
// binary even when that is killed. Its stdout lines arrive on p.lines
// (dropped when nobody reads them).
func startProc(tb testing.TB, name string, niceness int, env []string, bin string, args ...string) *proc {
	tb.Helper()
	if niceness > 0 {
		if _, err := os.Stat(niceBin); err == nil {
			args = append([]string{"-n", strconv.Itoa(niceness), bin}, args...)
			bin = niceBin
		}
	}
	p := &proc{name: name, out: &syncBuffer{}, lines: make(chan string, 256), exited: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stderr = p.out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		tb.Fatal(err)
	}
	p.cmd.Stdin, p.stdin = r, w
	if err := p.cmd.Start(); err != nil {
		tb.Fatalf("starting %s (%s): %v", name, bin, err)
	}
	p.pid = p.cmd.Process.Pid
	r.Close()
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			p.out.Write(append(sc.Bytes(), '\n'))
			select {
			case p.lines <- sc.Text():
			default:
			}
		}
		close(p.lines)
		p.cmd.Wait()
		close(p.exited)
	}()
	tb.Cleanup(p.stop)
	return p
}

// stop ends the process: SIGTERM, then SIGKILL after stopTimeout.
func (p *proc) stop() {
	select {
	case <-p.exited:
		return
	default:
	}
	p.stdin.Close()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(stopTimeout):
		p.cmd.Process.Kill()
		<-p.exited
	}
}

// waitLine returns the first stdout line for which want returns true.
func (p *proc) waitLine(tb testing.TB, what string, want func(string) bool) string {
	tb.Helper()
	deadline := time.After(startTimeout)
	for {
		select {
		case l, ok := <-p.lines:
			if !ok {
				tb.Fatalf("%s exited before printing %s:\n%s", p.name, what, p.out)
			}
			if want(l) {
				return l
			}
		case <-deadline:
			tb.Fatalf("%s printed no %s within %s:\n%s", p.name, what, startTimeout, p.out)
		}
	}
}

// cpuTime is the process's user plus system CPU time so far, all threads,
// from /proc/PID/stat (10 ms resolution).
func (p *proc) cpuTime() (time.Duration, error) {
	return cpuTime(p.pid)
}

func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("CPU time of process %d: %w", pid, err)
	}
	return parseStat(b)
}

// parseStat reads utime and stime (fields 14 and 15, man 5 proc) from a
// /proc/PID/stat line; the command name (field 2) may hold spaces and
// parentheses, so fields are counted after its last ')'.
func parseStat(b []byte) (time.Duration, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc stat line %.60q: no command name", b)
	}
	f := strings.Fields(string(b[i+1:])) // f[0] is field 3
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc stat line %.60q: %d fields after the name, want at least 13", b, len(f))
	}
	var ticks int64
	for _, s := range f[11:13] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc stat: utime/stime %q: %w", s, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / clockTicks, nil
}

// ourArray is `certkit target serve` with one memory LUN and one
// controller with two portals: A0 served directly and A1 behind the array's
// own fault proxy (the array process runs both, as in a lab).
type ourArray struct {
	*proc
	Direct, Proxied string
}

func startOurs(tb testing.TB, lunSize string, niceness int) *ourArray {
	tb.Helper()
	bin := certkitBinary(tb)
	dir := tb.TempDir()
	cfg := filepath.Join(dir, "array.yaml")
	yaml := fmt.Sprintf(`name: bench
target: %s
luns:
  - {id: %d, size: %s, backing: memory}
controllers:
  - name: A
    portals:
      - {listen: "127.0.0.1:0"}
      - {listen: "127.0.0.1:0", proxy: "127.0.0.1:0"}
`, ourIQN, benchLUN, lunSize)
	if err := os.WriteFile(cfg, []byte(yaml), 0o600); err != nil {
		tb.Fatal(err)
	}
	p := startProc(tb, "certkit target serve", niceness, nil, bin,
		"target", "serve", "--config", cfg, "--token-file", filepath.Join(dir, "token"))
	a := &ourArray{proc: p}
	for _, addr := range []*string{&a.Direct, &a.Proxied} {
		l := p.waitLine(tb, "its portals", func(l string) bool { return strings.HasPrefix(l, "portal ") })
		i := strings.LastIndex(l, " address ")
		if i < 0 {
			tb.Fatalf("certkit target serve: portal line %q has no address", l)
		}
		*addr = strings.TrimSpace(l[i+len(" address "):])
	}
	return a
}

// tgtdTarget is Debian's tgtd in the foreground with one target whose LUN 1
// is a file in RAM (/dev/shm where there is one).
type tgtdTarget struct {
	*proc // name and PID only: package tgtd runs and stops it
	Addr  string
}

func startTgtd(tb testing.TB, lunSize int64) *tgtdTarget {
	tb.Helper()
	d, err := tgtd.Start(context.Background(), tgtd.Options{
		IQN:          tgtdIQN,
		LUNs:         []tgtd.LUN{{ID: benchLUN, Backing: ramFile(tb), Size: lunSize}},
		StartTimeout: startTimeout,
		PollInterval: pollInterval,
	})
	if errors.Is(err, tgtd.ErrNotInstalled) {
		tb.Skipf("%v (make deps does, as root)", err)
	}
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { d.Close() })
	return &tgtdTarget{proc: &proc{name: "tgtd", pid: d.PID()}, Addr: d.Portals[0]}
}

// ramFile is a new file in /dev/shm (tmpfs), removed at cleanup, for
// tgtd's LUN; without /dev/shm it falls back to the test's temp dir and
// says so.
func ramFile(tb testing.TB) string {
	tb.Helper()
	dir := "/dev/shm"
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		dir = tb.TempDir()
		tb.Logf("no /dev/shm: tgtd's LUN is a file in %s, which may not be RAM-backed", dir)
	}
	f, err := os.CreateTemp(dir, "certkit-bench-*.img")
	if err != nil {
		tb.Fatalf("tgtd's backing file: %v", err)
	}
	tb.Cleanup(func() { os.Remove(f.Name()) })
	f.Close()
	return f.Name()
}

// startProxyChild runs a fault proxy to upstream in a child process (this
// test binary; see proxyChildEnv) and returns it and its address.
func startProxyChild(tb testing.TB, upstream string) (*proc, string) {
	tb.Helper()
	exe, err := os.Executable()
	if err != nil {
		tb.Fatal(err)
	}
	p := startProc(tb, "fault proxy child", 0, []string{proxyChildEnv + "=" + upstream}, exe)
	l := p.waitLine(tb, "its address", func(l string) bool { return strings.HasPrefix(l, "proxy ") })
	return p, strings.TrimPrefix(l, "proxy ")
}

// endpoint is one way to reach one target's data LUN.
type endpoint struct {
	Target string // ours or tgtd
	Path   string // direct or proxy
	Addr   string // the portal the initiator connects to
	IQN    string
	procs  []*proc // whose CPU is charged to the target: target and proxy
}

func (e endpoint) String() string { return e.Target + "-" + e.Path }

func (e endpoint) URL() string { return fmt.Sprintf("iscsi://%s/%s/%d", e.Addr, e.IQN, benchLUN) }

func (e endpoint) cpuTime() (time.Duration, error) {
	var sum time.Duration
	for _, p := range e.procs {
		d, err := p.cpuTime()
		if err != nil {
			return 0, fmt.Errorf("%s: %s: %w", e, p.name, err)
		}
		sum += d
	}
	return sum, nil
}

// unitAttentions is how many UNIT ATTENTIONs a new session may be told
// before its first command succeeds.
const unitAttentions = 3

// senseUnitAttention is the UNIT ATTENTION sense key (SPC-4).
const senseUnitAttention = 0x6

// login opens a session with certkit's initiator and reads the LUN's
// geometry.
func (e endpoint) login(ctx context.Context, name string) (*initiator.Session, uint64, uint32, error) {
	s, err := initiator.Login(ctx, initiator.Options{InitiatorName: name, TargetName: e.IQN, Address: e.Addr})
	if err != nil {
		return nil, 0, 0, fmt.Errorf("%s: %w", e, err)
	}
	// A new I_T nexus may first be told of a power-on reset (tgtd does):
	// a UNIT ATTENTION reported once, as a host sees it after a login.
	for range unitAttentions + 1 {
		var blocks uint64
		var bs uint32
		blocks, bs, err = s.ReadCapacity(ctx, benchLUN)
		var se *initiator.SCSIError
		if errors.As(err, &se) && se.Key&0x0f == senseUnitAttention {
			continue
		}
		if err != nil {
			break
		}
		return s, blocks, bs, nil
	}
	s.Close()
	return nil, 0, 0, fmt.Errorf("%s: %w", e, err)
}

// prefill writes the whole LUN with random data, so that neither target
// serves reads from holes (our memory store and a sparse tmpfs file both
// read unwritten ranges as zeros without touching memory).
func prefill(ctx context.Context, e endpoint) error {
	s, blocks, bs, err := e.login(ctx, benchInitiator+"-prefill")
	if err != nil {
		return err
	}
	defer s.Logout(ctx)
	const chunk = 128 << 10
	buf := make([]byte, chunk)
	crand.Read(buf)
	per := uint64(chunk / bs)
	for lba := uint64(0); lba < blocks; lba += per {
		n := min(per, blocks-lba)
		cctx, cancel := context.WithTimeout(ctx, ioTimeout)
		err := s.Write(cctx, benchLUN, lba, buf[:n*uint64(bs)], bs)
		cancel()
		if err != nil {
			return fmt.Errorf("prefilling %s: %w", e, err)
		}
	}
	return nil
}
