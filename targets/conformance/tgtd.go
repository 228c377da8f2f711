package conformance

import (
	"bytes"
	"context"
	"errors"
	"fmt"
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

// Debian's tgtd, the reference target.
const (
	TgtdBin     = "/usr/sbin/tgtd"
	TgtadmBin   = "/usr/sbin/tgtadm"
	TgtdPackage = "tgt"
)

// ErrNoTgtd means tgtd is not installed.
var ErrNoTgtd = errors.New(TgtdBin + " not found: install Debian's iSCSI target with `apt-get install -y " + TgtdPackage + "`")

// TgtdConfig describes a tgtd with one target and one file-backed LUN.
type TgtdConfig struct {
	IQN     string // target name
	Portals int    // loopback portals, all in one portal group; default 1
	Backing string // LUN 1's backing file, created or grown to Size
	Size    int64  // bytes
	// StartTimeout bounds start-up and configuration; default 10 s.
	StartTimeout time.Duration
	// PollInterval paces the readiness probes; default 10 ms.
	PollInterval time.Duration
}

// Tgtd is a running tgtd in the foreground, killed with Close (or with the
// process that started it).
type Tgtd struct {
	IQN     string
	Portals []string // host:port
	ctl     int
	cmd     *exec.Cmd
	exited  chan struct{}
	log     *syncBuffer
	once    sync.Once
}

// URLs are the iscsi:// URLs of LUN 1, one per portal.
func (d *Tgtd) URLs() []string {
	var u []string
	for _, p := range d.Portals {
		u = append(u, fmt.Sprintf("iscsi://%s/%s/1", p, d.IQN))
	}
	return u
}

// Log is what tgtd printed.
func (d *Tgtd) Log() string { return d.log.String() }

// StartTgtd starts tgtd on fresh loopback ports and configures the target
// (LUN 1 on the backing file, open to every initiator).
func StartTgtd(ctx context.Context, c TgtdConfig) (*Tgtd, error) {
	for _, bin := range []string{TgtdBin, TgtadmBin} {
		if _, err := os.Stat(bin); err != nil {
			return nil, ErrNoTgtd
		}
	}
	if c.Portals <= 0 {
		c.Portals = 1
	}
	if c.StartTimeout <= 0 {
		c.StartTimeout = 10 * time.Second
	}
	if c.PollInterval <= 0 {
		c.PollInterval = 10 * time.Millisecond
	}
	if c.IQN == "" || c.Backing == "" || c.Size <= 0 {
		return nil, fmt.Errorf("tgtd: IQN, Backing and Size are required")
	}
	f, err := os.OpenFile(c.Backing, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("tgtd backing file: %w", err)
	}
	err = f.Truncate(c.Size)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("tgtd backing file %s: %w", c.Backing, err)
	}
	var last error
	for range 5 { // a port or control socket taken meanwhile: try others
		d, err := launchTgtd(ctx, c)
		if err != nil {
			last = err
			continue
		}
		steps := [][]string{
			{"--op", "new", "--mode", "target", "--tid", "1", "-T", c.IQN},
			{"--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1", "-b", c.Backing},
			{"--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL"},
		}
		for _, s := range steps {
			if err := d.adm(ctx, s...); err != nil {
				d.Close()
				return nil, fmt.Errorf("configuring tgtd: %v\ntgtd log:\n%s", err, d.Log())
			}
		}
		return d, nil
	}
	return nil, fmt.Errorf("starting tgtd: %w", last)
}

func launchTgtd(ctx context.Context, c TgtdConfig) (*Tgtd, error) {
	d := &Tgtd{IQN: c.IQN, ctl: 10000 + rand.IntN(22000) /* tgtd takes 0..32767 */, log: &syncBuffer{}, exited: make(chan struct{})}
	var opts []string
	for range c.Portals {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		d.Portals = append(d.Portals, ln.Addr().String())
		ln.Close()
		opts = append(opts, "portal="+ln.Addr().String())
	}
	d.cmd = exec.Command(TgtdBin, "-f", "-C", strconv.Itoa(d.ctl), "--iscsi", strings.Join(opts, ","))
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := d.cmd.Start(); err != nil {
		return nil, fmt.Errorf("%s: %w", TgtdBin, err)
	}
	go func() { d.cmd.Wait(); close(d.exited) }()
	deadline := time.Now().Add(c.StartTimeout)
	for {
		select {
		case <-d.exited:
			d.Close()
			return nil, fmt.Errorf("tgtd exited at start-up:\n%s", d.Log())
		default:
		}
		if d.adm(ctx, "--op", "show", "--mode", "sys") == nil && d.listening() {
			return d, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			d.Close()
			return nil, fmt.Errorf("tgtd not ready within %s:\n%s", c.StartTimeout, d.Log())
		}
		time.Sleep(c.PollInterval)
	}
}

func (d *Tgtd) listening() bool {
	for _, p := range d.Portals {
		c, err := net.Dial("tcp", p)
		if err != nil {
			return false
		}
		c.Close()
	}
	return true
}

func (d *Tgtd) adm(ctx context.Context, args ...string) error {
	args = append([]string{"-C", strconv.Itoa(d.ctl), "--lld", "iscsi"}, args...)
	out, err := exec.CommandContext(ctx, TgtadmBin, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("tgtadm %v: %v: %s", args, err, out)
	}
	return nil
}

// Close kills tgtd (it ignores SIGTERM while it has targets) and removes
// its control socket.
func (d *Tgtd) Close() error {
	d.once.Do(func() {
		d.cmd.Process.Kill()
		<-d.exited
		sock := fmt.Sprintf("/var/run/tgtd/socket.%d", d.ctl)
		os.Remove(sock)
		os.Remove(sock + ".lock")
	})
	return nil
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
