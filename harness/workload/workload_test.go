package workload

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/certkit/certkit/harness/esxcli"
)

// scriptedShell answers dd like busybox on a host whose device fails the
// reads listed in failAt (by call number).
type scriptedShell struct {
	mu      sync.Mutex
	calls   []string
	results []*esxcli.Result
	failAt  map[int]bool
}

func (s *scriptedShell) Shell(_ context.Context, cmd string) (*esxcli.Result, error) {
	s.mu.Lock()
	n := len(s.calls)
	s.calls = append(s.calls, cmd)
	// Like the real client, the result carries the times the command log
	// will show.
	r := &esxcli.Result{Command: cmd, Start: time.Now()}
	r.End = r.Start.Add(time.Microsecond)
	s.results = append(s.results, r)
	s.mu.Unlock()
	if s.failAt[n] {
		r.ExitCode = 1
		r.Stderr = "dd: /vmfs/devices/disks/naa.1: Input/output error\n"
		return r, &esxcli.ExitError{Result: r}
	}
	r.Stderr = "1+0 records in\n1+0 records out\n"
	return r, nil
}

func (s *scriptedShell) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.calls)
}

func TestReaderCyclesBlocksAndRecordsWhatTheHostSaid(t *testing.T) {
	sh := &scriptedShell{failAt: map[int]bool{2: true}}
	r := StartReader(context.Background(), sh, Config{Device: "naa.1", BlockSize: 4096, Blocks: 3,
		Interval: time.Millisecond, Timeout: time.Second})
	deadline := time.Now().Add(10 * time.Second)
	for len(r.Samples()) < 5 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	samples := r.Stop()
	if len(samples) < 5 {
		t.Fatalf("got %d samples in 10 s", len(samples))
	}
	if samples[2].OK || samples[2].Error != "dd: /vmfs/devices/disks/naa.1: Input/output error" {
		t.Fatalf("third read: %+v, want dd's I/O error", samples[2])
	}
	for i, s := range samples {
		if i != 2 && !s.OK {
			t.Fatalf("read %d failed: %+v", i, s)
		}
		if rec := sh.results[i]; !s.Start.Equal(rec.Start) || !s.End.Equal(rec.End) {
			t.Fatalf("read %d spans %v..%v, but the command log records %v..%v: a replay would judge other times",
				i, s.Start, s.End, rec.Start, rec.End)
		}
	}
	for i, want := range []string{"skip=0", "skip=1", "skip=2", "skip=0"} {
		if !strings.HasSuffix(sh.calls[i], want) || !strings.Contains(sh.calls[i], "if=/vmfs/devices/disks/naa.1 of=/dev/null bs=4096 count=1") {
			t.Fatalf("call %d = %q, want a 4 KiB dd read ending %s", i, sh.calls[i], want)
		}
	}
	if n := sh.count(); n > len(samples)+1 {
		t.Fatalf("%d reads issued after Stop returned (%d samples)", n-len(samples), len(samples))
	}
}

func TestReaderRecordsTransportErrors(t *testing.T) {
	sh := shellFunc(func(ctx context.Context, cmd string) (*esxcli.Result, error) {
		return &esxcli.Result{Command: cmd, ExitCode: -1, Err: "connection lost"}, errors.New("esxcli: host esx-01: connection lost")
	})
	r := StartReader(context.Background(), sh, Config{Device: "naa.1", BlockSize: 512, Interval: time.Millisecond, Timeout: time.Second})
	deadline := time.Now().Add(10 * time.Second)
	for len(r.Samples()) < 1 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	s := r.Stop()
	if len(s) == 0 || s[0].OK || !strings.Contains(s[0].Error, "connection lost") {
		t.Fatalf("samples %+v, want a failed read naming the lost connection", s)
	}
}

type shellFunc func(ctx context.Context, cmd string) (*esxcli.Result, error)

func (f shellFunc) Shell(ctx context.Context, cmd string) (*esxcli.Result, error) { return f(ctx, cmd) }
