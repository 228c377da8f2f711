// Package tgtd runs Debian's tgtd, the reference target certkit's tests
// compare against.
//
// Start launches tgtd in the foreground on fresh loopback portals with a
// control port of its own, configures one target through tgtadm (LUNs on
// backing files, target parameters, CHAP accounts, open to every
// initiator) and returns once tgtd answers on its control socket and on
// every portal. Close kills it and removes its control socket. Several
// instances run side by side, and next to a system tgtd (control port 0).
package tgtd

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Where Debian installs tgt.
const (
	Bin     = "/usr/sbin/tgtd"   // the daemon
	AdmBin  = "/usr/sbin/tgtadm" // its configuration tool
	Package = "tgt"              // the Debian package holding both
)

// ErrNotInstalled means tgtd or tgtadm is missing; tests skip on it.
var ErrNotInstalled = errors.New("Debian's iSCSI target is not installed: install it with `apt-get install -y " + Package + "`")

// Defaults of Options.
const (
	DefaultStartTimeout = 10 * time.Second
	DefaultPollInterval = 10 * time.Millisecond
)

// tgtd's control ports (-C) are 0..32767; 0 is the system tgtd's. Start
// picks from the upper part, clear of hand-started instances.
const (
	minControlPort = 10000
	maxControlPort = 32767
	// launchAttempts is how many fresh ports Start tries when a portal or a
	// control socket is taken between choosing it and tgtd binding it.
	launchAttempts = 5
)

// binaries are the executables Start needs; a variable so the package's
// tests can name a missing one.
var binaries = struct{ tgtd, tgtadm string }{Bin, AdmBin}

// Options describe one tgtd with one target (tid 1).
type Options struct {
	IQN string // the target's name; required
	// Portals is how many loopback portals tgtd listens on, all in portal
	// group 1; 0 means 1.
	Portals int
	// LUNs are the target's disks; at least one. LUN 0 is tgtd's
	// controller LUN, so IDs start at 1.
	LUNs []LUN
	// Params are target parameters (tgtadm --op update --name N --value
	// V), applied before the target is opened to initiators.
	Params []Param
	// Accounts are CHAP accounts bound to the target: with one, tgtd
	// requires initiators to authenticate.
	Accounts []Account
	// StartTimeout bounds start-up and configuration; 0 means
	// DefaultStartTimeout.
	StartTimeout time.Duration
	// PollInterval paces the readiness probes; 0 means DefaultPollInterval.
	PollInterval time.Duration
}

// LUN is a disk backed by a file.
type LUN struct {
	ID      int    // 1 or more
	Backing string // the file, created if missing and truncated to Size
	Size    int64  // bytes
}

// Param is a target parameter such as InitialR2T=No.
type Param struct{ Name, Value string }

// Account is a CHAP account. An incoming account is the name and secret
// an initiator logs in with; an outgoing one (at most one per target) is
// what tgtd answers a mutual challenge with.
type Account struct {
	User, Password string
	Outgoing       bool
}

// Target is a running tgtd, killed with Close, or with the process that
// started it.
type Target struct {
	IQN     string
	Portals []string // host:port, in the order tgtd was given them

	ctl    int // control port
	cmd    *exec.Cmd
	exited chan struct{}
	once   sync.Once

	mu  sync.Mutex
	log strings.Builder // what tgtd printed
}

// Start launches tgtd and configures its target; see the package comment.
// The error wraps ErrNotInstalled when tgtd is missing.
func Start(ctx context.Context, o Options) (*Target, error) {
	if err := o.check(); err != nil {
		return nil, err
	}
	for _, bin := range []string{binaries.tgtd, binaries.tgtadm} {
		if _, err := os.Stat(bin); err != nil {
			return nil, fmt.Errorf("%s not found: %w", bin, ErrNotInstalled)
		}
	}
	if o.Portals <= 0 {
		o.Portals = 1
	}
	if o.StartTimeout <= 0 {
		o.StartTimeout = DefaultStartTimeout
	}
	if o.PollInterval <= 0 {
		o.PollInterval = DefaultPollInterval
	}
	for _, l := range o.LUNs {
		if err := sizeFile(l.Backing, l.Size); err != nil {
			return nil, err
		}
	}
	var last error
	for range launchAttempts {
		d, err := launch(ctx, o)
		if err != nil {
			last = err
			if ctx.Err() != nil {
				break
			}
			continue
		}
		if err := d.configure(ctx, o); err != nil {
			d.Close()
			return nil, fmt.Errorf("configuring tgtd %s: %w\ntgtd log:\n%s", o.IQN, err, d.Log())
		}
		return d, nil
	}
	return nil, fmt.Errorf("starting tgtd %s: %w", o.IQN, last)
}

func (o Options) check() error {
	if o.IQN == "" {
		return errors.New("tgtd: Options.IQN is required: name the target")
	}
	if len(o.LUNs) == 0 {
		return fmt.Errorf("tgtd %s: Options.LUNs is empty: give the target at least one LUN", o.IQN)
	}
	for _, l := range o.LUNs {
		if l.ID < 1 || l.Backing == "" || l.Size <= 0 {
			return fmt.Errorf("tgtd %s: LUN %d (backing %q, %d bytes): want an ID of 1 or more (0 is tgtd's controller), a backing file and a size", o.IQN, l.ID, l.Backing, l.Size)
		}
	}
	outgoing := 0
	for _, a := range o.Accounts {
		if a.User == "" || a.Password == "" {
			return fmt.Errorf("tgtd %s: account %q: want a user and a password", o.IQN, a.User)
		}
		if a.Outgoing {
			outgoing++
		}
	}
	if outgoing > 1 {
		return fmt.Errorf("tgtd %s: %d outgoing accounts: tgtd binds at most one to a target", o.IQN, outgoing)
	}
	return nil
}

// sizeFile creates the backing file if missing and truncates it to size.
func sizeFile(name string, size int64) error {
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("tgtd backing file: %w", err)
	}
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("tgtd backing file %s: %w", name, err)
	}
	return nil
}

// launch starts tgtd on fresh ports and waits until it is ready.
func launch(ctx context.Context, o Options) (*Target, error) {
	d := &Target{IQN: o.IQN, ctl: controlPort(), exited: make(chan struct{})}
	var portals []string
	for range o.Portals {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("a loopback port for tgtd: %w", err)
		}
		d.Portals = append(d.Portals, ln.Addr().String())
		ln.Close()
		portals = append(portals, "portal="+ln.Addr().String())
	}
	d.cmd = exec.Command(binaries.tgtd, "-f", "-C", strconv.Itoa(d.ctl), "--iscsi", strings.Join(portals, ","))
	d.cmd.Stdout = logWriter{d}
	d.cmd.Stderr = d.cmd.Stdout
	// Die with the process that started it, even when that is killed.
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := d.cmd.Start(); err != nil {
		return nil, fmt.Errorf("%s: %w", binaries.tgtd, err)
	}
	go func() { d.cmd.Wait(); close(d.exited) }()
	deadline := time.NewTimer(o.StartTimeout)
	defer deadline.Stop()
	poll := time.NewTicker(o.PollInterval)
	defer poll.Stop()
	for {
		if _, err := d.Admin(ctx, "--op", "show", "--mode", "sys"); err == nil && d.listening() {
			return d, nil
		}
		select {
		case <-d.exited:
			d.Close()
			return nil, fmt.Errorf("tgtd exited at start-up (%v):\n%s", d.cmd.ProcessState, d.Log())
		case <-deadline.C:
			d.Close()
			return nil, fmt.Errorf("tgtd not ready within %s:\n%s", o.StartTimeout, d.Log())
		case <-ctx.Done():
			d.Close()
			return nil, fmt.Errorf("tgtd not ready: %w:\n%s", ctx.Err(), d.Log())
		case <-poll.C:
		}
	}
}

// controlPort picks a control port whose socket no other tgtd has left.
func controlPort() int {
	n := 0
	for range 100 {
		n = minControlPort + rand.IntN(maxControlPort+1-minControlPort)
		if _, err := os.Stat(socket(n)); errors.Is(err, fs.ErrNotExist) {
			break
		}
	}
	return n
}

// socket is the control socket of port n; tgtd also locks socket.N.lock.
func socket(n int) string { return fmt.Sprintf("/var/run/tgtd/socket.%d", n) }

func (d *Target) listening() bool {
	for _, p := range d.Portals {
		c, err := net.Dial("tcp", p)
		if err != nil {
			return false
		}
		c.Close()
	}
	return true
}

// configure creates target 1 with its LUNs, parameters and accounts and
// opens it to every initiator.
func (d *Target) configure(ctx context.Context, o Options) error {
	steps := [][]string{{"--op", "new", "--mode", "target", "--tid", "1", "-T", o.IQN}}
	for _, l := range o.LUNs {
		steps = append(steps, []string{"--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", strconv.Itoa(l.ID), "-b", l.Backing})
	}
	for _, p := range o.Params {
		steps = append(steps, []string{"--op", "update", "--mode", "target", "--tid", "1", "--name", p.Name, "--value", p.Value})
	}
	steps = append(steps, []string{"--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL"})
	for _, a := range o.Accounts {
		bind := []string{"--op", "bind", "--mode", "account", "--tid", "1", "--user", a.User}
		if a.Outgoing {
			bind = append(bind, "--outgoing")
		}
		steps = append(steps, []string{"--op", "new", "--mode", "account", "--user", a.User, "--password", a.Password}, bind)
	}
	for _, s := range steps {
		if _, err := d.Admin(ctx, s...); err != nil {
			return err
		}
	}
	return nil
}

// Admin runs tgtadm against this tgtd (--lld iscsi), for what Options do
// not cover, and returns what it printed.
func (d *Target) Admin(ctx context.Context, args ...string) (string, error) {
	args = append([]string{"-C", strconv.Itoa(d.ctl), "--lld", "iscsi"}, args...)
	out, err := exec.CommandContext(ctx, binaries.tgtadm, args...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("tgtadm %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// URLs are the iscsi:// URLs of the LUN, one per portal.
func (d *Target) URLs(lun int) []string {
	var u []string
	for _, p := range d.Portals {
		u = append(u, fmt.Sprintf("iscsi://%s/%s/%d", p, d.IQN, lun))
	}
	return u
}

// PID is tgtd's process ID (its CPU time is in /proc/PID/stat).
func (d *Target) PID() int { return d.cmd.Process.Pid }

// Log is what tgtd printed so far.
func (d *Target) Log() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.log.String()
}

// logWriter appends tgtd's output to its Target's log.
type logWriter struct{ d *Target }

func (w logWriter) Write(p []byte) (int, error) {
	w.d.mu.Lock()
	defer w.d.mu.Unlock()
	return w.d.log.Write(p)
}

// Close kills tgtd with SIGKILL (it ignores SIGTERM while it has targets),
// waits for it to exit and removes its control socket. It may be called
// more than once.
func (d *Target) Close() error {
	d.once.Do(func() {
		d.cmd.Process.Kill()
		<-d.exited
		os.Remove(socket(d.ctl))
		os.Remove(socket(d.ctl) + ".lock")
	})
	return nil
}
