package initiator

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// tgtd is a Debian tgtd instance on a loopback port: an iSCSI target this
// initiator did not grow up with, so the tests check interoperability
// rather than agreement with ourselves.
type tgtd struct {
	Addr    string // portal, 127.0.0.1:port
	IQN     string
	Backing string // LUN 1's backing file
	ctl     int
	log     *syncBuffer
}

const (
	tgtdBin   = "/usr/sbin/tgtd"
	tgtadmBin = "/usr/sbin/tgtadm"
	tgtdIQN   = "iqn.2024-01.dev.certkit:tgtd"
	// tgtdLUNSize is LUN 1's size: big enough for the largest test transfer
	// at a few offsets.
	tgtdLUNSize = 16 << 20
	// tgtdStartTimeout bounds tgtd's start-up and configuration.
	tgtdStartTimeout = 10 * time.Second
	// tgtdPollInterval paces the start-up readiness probes.
	tgtdPollInterval = 10 * time.Millisecond
)

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

// startTgtd runs tgtd in the foreground with one target (tgtdIQN) whose LUN 1
// is a file in t.TempDir(), applying target-level parameters (tgtadm
// --op update) before binding it to every initiator. It skips the test when
// tgtd is not installed.
func startTgtd(t *testing.T, params ...[2]string) *tgtd {
	t.Helper()
	for _, bin := range []string{tgtdBin, tgtadmBin} {
		if _, err := os.Stat(bin); err != nil {
			t.Skipf("%s not found: install Debian's iSCSI target with `apt-get install -y tgt`", bin)
		}
	}
	backing := filepath.Join(t.TempDir(), "lun1.img")
	if err := os.WriteFile(backing, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(backing, tgtdLUNSize); err != nil {
		t.Fatal(err)
	}
	var last error
	for range 5 { // a port or control socket taken meanwhile: try others
		d, err := launchTgtd(t)
		if err != nil {
			last = err
			continue
		}
		d.Backing = backing
		steps := [][]string{
			{"--op", "new", "--mode", "target", "--tid", "1", "-T", tgtdIQN},
			{"--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1", "-b", backing},
		}
		for _, p := range params {
			steps = append(steps, []string{"--op", "update", "--mode", "target", "--tid", "1", "--name", p[0], "--value", p[1]})
		}
		steps = append(steps, []string{"--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL"})
		for _, s := range steps {
			if err := d.adm(s...); err != nil {
				t.Fatalf("configuring tgtd: %v\ntgtd log:\n%s", err, d.log)
			}
		}
		return d
	}
	t.Fatalf("starting tgtd: %v", last)
	return nil
}

func launchTgtd(t *testing.T) (*tgtd, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := ln.Addr().String()
	ln.Close()
	d := &tgtd{Addr: addr, IQN: tgtdIQN, ctl: 10000 + rand.IntN(22000) /* tgtd takes 0..32767 */, log: &syncBuffer{}}
	cmd := exec.Command(tgtdBin, "-f", "-C", strconv.Itoa(d.ctl), "--iscsi", "portal="+addr)
	cmd.Stdout, cmd.Stderr = d.log, d.log
	// Die with the test binary, even when it is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("%s: %w", tgtdBin, err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	stop := func() {
		cmd.Process.Kill() // tgtd ignores SIGTERM while it has targets
		<-exited
		sock := fmt.Sprintf("/var/run/tgtd/socket.%d", d.ctl)
		os.Remove(sock)
		os.Remove(sock + ".lock")
	}
	deadline := time.Now().Add(tgtdStartTimeout)
	for {
		select {
		case <-exited:
			stop()
			return nil, fmt.Errorf("tgtd exited at start-up:\n%s", d.log)
		default:
		}
		if d.adm("--op", "show", "--mode", "sys") == nil {
			if c, err := net.Dial("tcp", addr); err == nil {
				c.Close()
				t.Cleanup(stop)
				return d, nil
			}
		}
		if time.Now().After(deadline) {
			stop()
			return nil, fmt.Errorf("tgtd not ready within %s:\n%s", tgtdStartTimeout, d.log)
		}
		time.Sleep(tgtdPollInterval)
	}
}

func (d *tgtd) adm(args ...string) error {
	args = append([]string{"-C", strconv.Itoa(d.ctl), "--lld", "iscsi"}, args...)
	out, err := exec.Command(tgtadmBin, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("tgtadm %v: %v: %s", args, err, out)
	}
	return nil
}
