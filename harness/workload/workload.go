// Package workload puts I/O on a host's device the way a lab does without a
// worker VM: `dd` on the raw device node over SSH (busybox dd on ESXi reads
// /vmfs/devices/disks/<device>). Every I/O is a timestamped Sample, so a
// judge can tell when I/O stalled, failed and resumed.
package workload

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/certkit/certkit/harness/esxcli"
)

// Shell runs a command line on a host; *esxcli.Client implements it.
type Shell interface {
	Shell(ctx context.Context, cmdline string) (*esxcli.Result, error)
}

// Sample is one I/O as the host's shell saw it.
type Sample struct {
	Start time.Time `json:"start"`
	End   time.Time `json:"end"`
	OK    bool      `json:"ok"`
	// Error is the failure as the host reported it (dd's message, a timeout).
	Error string `json:"error,omitempty"`
}

// Config shapes the workload.
type Config struct {
	Device    string        // naa.<hex>
	BlockSize int           // bytes per I/O
	Blocks    int           // I/Os cycle over this many blocks from offset 0
	Interval  time.Duration // pause between one I/O's end and the next one's start
	Timeout   time.Duration // an I/O taking longer is recorded as failed
}

// Reader issues sequential-cycling single-block reads, one at a time (QD1).
type Reader struct {
	cancel  context.CancelFunc
	done    chan struct{}
	mu      sync.Mutex
	samples []Sample
}

// StartReader starts reading until Stop.
func StartReader(ctx context.Context, sh Shell, cfg Config) *Reader {
	ctx, cancel := context.WithCancel(ctx)
	r := &Reader{cancel: cancel, done: make(chan struct{})}
	go r.loop(ctx, sh, cfg)
	return r
}

func (r *Reader) loop(ctx context.Context, sh Shell, cfg Config) {
	defer close(r.done)
	blocks := cfg.Blocks
	if blocks <= 0 {
		blocks = 1
	}
	t := time.NewTimer(0)
	defer t.Stop()
	for i := 0; ; i++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		cmd := fmt.Sprintf("dd if=/vmfs/devices/disks/%s of=/dev/null bs=%d count=1 skip=%d",
			cfg.Device, cfg.BlockSize, i%blocks)
		ioctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
		s := Sample{Start: time.Now()}
		res, err := sh.Shell(ioctx, cmd)
		cancel()
		s.End = time.Now()
		if res != nil {
			// The command log records the shell's own times; a sample must
			// carry the same ones, or a judge replaying the log could pick
			// a different read as the first one after an event.
			s.Start, s.End = res.Start, res.End
		}
		if ctx.Err() != nil {
			return // stopped mid-I/O: not a sample of the device's behaviour
		}
		switch {
		case err == nil:
			s.OK = true
		case res != nil && res.ExitCode > 0 && res.Stderr != "":
			s.Error = firstLine(res.Stderr) // what dd said
		default:
			s.Error = err.Error()
		}
		r.mu.Lock()
		r.samples = append(r.samples, s)
		r.mu.Unlock()
		t.Reset(cfg.Interval)
	}
}

// Samples returns the I/Os so far.
func (r *Reader) Samples() []Sample {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Sample(nil), r.samples...)
}

// Stop ends the workload and returns every sample.
func (r *Reader) Stop() []Sample {
	r.cancel()
	<-r.done
	return r.Samples()
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}
