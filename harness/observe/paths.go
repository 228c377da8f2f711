// Package observe watches host state over time and judges it. A watcher
// polls a host (`esxcli storage core path list`) and keeps every sample
// with its timestamp; the judging helpers are pure functions of samples, so
// a verdict can be re-derived from the recorded command output alone
// (SamplesFromResults) when a bundle is replayed without the lab.
package observe

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/certkit/certkit/harness/esxcli"
)

// Esxcli is what a watcher needs from a host driver; *esxcli.Client has it.
type Esxcli interface {
	Esxcli(ctx context.Context, args ...string) (*esxcli.Result, error)
}

var _ Esxcli = (*esxcli.Client)(nil)

// PathListArgs is the command a path watcher polls.
var PathListArgs = []string{"storage", "core", "path", "list"}

// pathListCommand is PathListArgs as the client's Result names it.
const pathListCommand = "esxcli storage core path list"

// PathSample is the state of every path at one moment.
type PathSample struct {
	// At is when the answer was complete (the command's end): the states
	// held at some instant before At, so "dead by At" is never early.
	At time.Time
	// Sent is when the poll was sent: the states held at some instant after.
	Sent time.Time
	// States maps runtime name (vmhba64:C0:T0:L0) to state (active, dead, ...).
	// Nil when the poll failed.
	States map[string]string
	// Err says why the poll failed; "" when it succeeded.
	Err string
}

// String renders a sample compactly for failure messages.
func (s PathSample) String() string {
	if s.Err != "" {
		return fmt.Sprintf("%s: poll failed: %s", s.At.Format("15:04:05.000"), s.Err)
	}
	names := make([]string, 0, len(s.States))
	for n := range s.States {
		names = append(names, n)
	}
	sort.Strings(names)
	parts := make([]string, len(names))
	for i, n := range names {
		parts[i] = n + "=" + s.States[n]
	}
	return fmt.Sprintf("%s: %s", s.At.Format("15:04:05.000"), strings.Join(parts, " "))
}

// Count returns how many paths are in state.
func (s PathSample) Count(state string) int {
	n := 0
	for _, st := range s.States {
		if st == state {
			n++
		}
	}
	return n
}

// SampleFromResult turns one `esxcli storage core path list` result (and
// the error the client returned with it) into a sample. The watcher uses
// it, and so does a replay of recorded results.
func SampleFromResult(r *esxcli.Result, err error) PathSample {
	var s PathSample
	if r != nil {
		s.Sent, s.At = r.Start, r.End
	}
	switch {
	case err != nil:
		s.Err = err.Error()
		return s
	case r == nil:
		s.Err = "no result"
		return s
	case r.Err != "":
		s.Err = r.Err
		return s
	case r.ExitCode != 0:
		s.Err = fmt.Sprintf("exit %d", r.ExitCode)
		return s
	}
	paths, perr := esxcli.ParseCorePathList(r.Stdout)
	if perr != nil {
		s.Err = perr.Error()
		return s
	}
	s.States = make(map[string]string, len(paths))
	for _, p := range paths {
		s.States[p.RuntimeName] = p.State
	}
	return s
}

// SamplesFromResults rebuilds the path samples from recorded command
// results: those of `esxcli storage core path list`, in order.
func SamplesFromResults(results []*esxcli.Result) []PathSample {
	var out []PathSample
	for _, r := range results {
		if r == nil || r.Command != pathListCommand {
			continue
		}
		var err error
		if r.ExitCode != 0 && r.Err == "" {
			err = &esxcli.ExitError{Result: r}
		}
		out = append(out, SampleFromResult(r, err))
	}
	return out
}

// PathWatcher polls a host's path states until stopped.
type PathWatcher struct {
	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex
	samples []PathSample
	changed chan struct{} // closed and replaced on every new sample
}

// WatchPaths starts polling `esxcli storage core path list` through c, at
// once and then every interval, until ctx ends or Stop is called. A failed
// poll is kept as a sample with Err set; polling goes on.
func WatchPaths(ctx context.Context, c Esxcli, interval time.Duration) *PathWatcher {
	ctx, cancel := context.WithCancel(ctx)
	w := &PathWatcher{cancel: cancel, done: make(chan struct{}), changed: make(chan struct{})}
	go w.run(ctx, c, interval)
	return w
}

func (w *PathWatcher) run(ctx context.Context, c Esxcli, interval time.Duration) {
	defer close(w.done)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		sent := time.Now()
		r, err := c.Esxcli(ctx, PathListArgs...)
		if ctx.Err() != nil {
			return // a poll cut short by Stop is not an observation
		}
		s := SampleFromResult(r, err)
		if r == nil {
			s.Sent, s.At = sent, time.Now()
		}
		w.add(s)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func (w *PathWatcher) add(s PathSample) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.samples = append(w.samples, s)
	close(w.changed)
	w.changed = make(chan struct{})
}

// Samples returns the samples so far, oldest first.
func (w *PathWatcher) Samples() []PathSample {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]PathSample(nil), w.samples...)
}

// Latest returns the newest sample; the zero sample before the first poll.
func (w *PathWatcher) Latest() PathSample {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.samples) == 0 {
		return PathSample{}
	}
	return w.samples[len(w.samples)-1]
}

// Stop stops polling, waits for the poller to end, and returns every sample.
func (w *PathWatcher) Stop() []PathSample {
	w.cancel()
	<-w.done
	return w.Samples()
}

// WaitFor returns the first sample, from the latest one on, for which pred
// holds. It fails when ctx ends or the watcher stops first, naming the
// latest sample.
func (w *PathWatcher) WaitFor(ctx context.Context, pred func(PathSample) bool) (PathSample, error) {
	w.mu.Lock()
	next := len(w.samples) - 1
	w.mu.Unlock()
	if next < 0 {
		next = 0
	}
	for {
		w.mu.Lock()
		pending := w.samples[next:]
		changed := w.changed
		w.mu.Unlock()
		for _, s := range pending {
			if pred(s) {
				return s, nil
			}
		}
		next += len(pending)
		select {
		case <-changed:
		case <-ctx.Done():
			return PathSample{}, fmt.Errorf("path state not reached (%v); latest sample %s", ctx.Err(), w.latestText())
		case <-w.done:
			// One last look: the poller may have added a sample before ending.
			w.mu.Lock()
			pending = w.samples[next:]
			w.mu.Unlock()
			for _, s := range pending {
				if pred(s) {
					return s, nil
				}
			}
			return PathSample{}, fmt.Errorf("path state not reached: watcher stopped; latest sample %s", w.latestText())
		}
	}
}

func (w *PathWatcher) latestText() string {
	if l := w.Latest(); !l.At.IsZero() {
		return l.String()
	}
	return "(none yet)"
}

// FirstState returns when path was first seen in state at or after the
// moment after (sample At, the conservative end of each poll).
func FirstState(samples []PathSample, path, state string, after time.Time) (time.Time, bool) {
	s, ok := FirstWhere(samples, after, func(s PathSample) bool { return s.States[path] == state })
	return s.At, ok
}

// FirstWhere returns the first sample at or after the moment after for
// which pred holds. Failed polls are skipped.
func FirstWhere(samples []PathSample, after time.Time, pred func(PathSample) bool) (PathSample, bool) {
	for _, s := range samples {
		if s.Err != "" || s.At.Before(after) {
			continue
		}
		if pred(s) {
			return s, true
		}
	}
	return PathSample{}, false
}

// StateAt returns the state path had in the last successful sample taken
// at or before t.
func StateAt(samples []PathSample, path string, t time.Time) (string, bool) {
	var state string
	found := false
	for _, s := range samples {
		if s.At.After(t) {
			break
		}
		if s.Err != "" {
			continue
		}
		state, found = s.States[path]
	}
	return state, found
}

// Transition is a change of one path's state between two samples.
type Transition struct {
	Path     string
	From, To string // "" when the path was absent
	At       time.Time
}

// Transitions lists every state change of every path, in time order;
// failed polls are skipped (they say nothing about the paths).
func Transitions(samples []PathSample) []Transition {
	var out []Transition
	var prev map[string]string
	for _, s := range samples {
		if s.Err != "" {
			continue
		}
		if prev != nil {
			names := pathNames(prev, s.States)
			for _, n := range names {
				if prev[n] != s.States[n] {
					out = append(out, Transition{Path: n, From: prev[n], To: s.States[n], At: s.At})
				}
			}
		}
		prev = s.States
	}
	return out
}

// Paths lists every runtime name seen in samples, sorted.
func Paths(samples []PathSample) []string {
	set := map[string]string{}
	for _, s := range samples {
		for n := range s.States {
			set[n] = ""
		}
	}
	return pathNames(set)
}

func pathNames(ms ...map[string]string) []string {
	seen := map[string]bool{}
	var names []string
	for _, m := range ms {
		for n := range m {
			if !seen[n] {
				seen[n] = true
				names = append(names, n)
			}
		}
	}
	sort.Strings(names)
	return names
}
