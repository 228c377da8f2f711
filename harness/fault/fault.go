// Package fault orchestrates the faults a test injects into a lab and
// guarantees they are reverted: when the test ends, when it fails, and when
// the run is interrupted (SIGINT/SIGTERM). Every inject and revert is a
// timestamped Event, so the fault timeline is evidence a reviewer can replay.
package fault

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/certkit/certkit/targets/control"
)

// Array is the part of an array's control API the tracker needs;
// *control.Client implements it.
type Array interface {
	Inject(ctx context.Context, portal, kind string) (control.FaultRecord, error)
	Revert(ctx context.Context, id string) (control.FaultRecord, error)
}

// Event is one line of the fault timeline.
type Event struct {
	At      time.Time `json:"at"`     // harness clock when the call returned
	Action  string    `json:"action"` // "inject" or "revert"
	Array   string    `json:"array"`
	Portal  string    `json:"portal"`
	Kind    string    `json:"kind"`
	FaultID string    `json:"fault_id"`
	// ArrayAt is when the array says the fault took or lost effect.
	ArrayAt time.Time `json:"array_at"`
	Error   string    `json:"error,omitempty"`
}

type active struct {
	array  Array
	name   string
	record control.FaultRecord
}

// Tracker injects faults and remembers each until it is reverted.
type Tracker struct {
	mu       sync.Mutex
	active   map[string]active // by fault ID
	timeline []Event
	onEvent  func(Event)
}

// NewTracker returns a tracker; onEvent (may be nil) sees each event as it
// happens, so evidence is written while the run goes on.
func NewTracker(onEvent func(Event)) *Tracker {
	return &Tracker{active: map[string]active{}, onEvent: onEvent}
}

// Inject asks the array to inject kind on portal and tracks the fault.
func (t *Tracker) Inject(ctx context.Context, a Array, arrayName, portal, kind string) (Event, error) {
	rec, err := a.Inject(ctx, portal, kind)
	ev := Event{At: time.Now(), Action: "inject", Array: arrayName, Portal: portal, Kind: kind,
		FaultID: rec.ID, ArrayAt: rec.InjectedAt}
	if err != nil {
		ev.Error = err.Error()
		t.record(ev)
		return ev, fmt.Errorf("inject %s on array %s portal %s: %w", kind, arrayName, portal, err)
	}
	t.mu.Lock()
	t.active[rec.ID] = active{array: a, name: arrayName, record: rec}
	t.mu.Unlock()
	t.record(ev)
	return ev, nil
}

// Revert reverts one tracked fault.
func (t *Tracker) Revert(ctx context.Context, id string) (Event, error) {
	t.mu.Lock()
	f, ok := t.active[id]
	t.mu.Unlock()
	if !ok {
		return Event{}, fmt.Errorf("revert fault %s: not injected by this run or already reverted", id)
	}
	rec, err := f.array.Revert(ctx, id)
	ev := Event{At: time.Now(), Action: "revert", Array: f.name, Portal: f.record.Portal,
		Kind: f.record.Kind, FaultID: id}
	if rec.RevertedAt != nil {
		ev.ArrayAt = *rec.RevertedAt
	}
	if err != nil {
		ev.Error = err.Error()
		t.record(ev)
		return ev, fmt.Errorf("revert %s on array %s portal %s: %w", f.record.Kind, f.name, f.record.Portal, err)
	}
	t.mu.Lock()
	delete(t.active, id)
	t.mu.Unlock()
	t.record(ev)
	return ev, nil
}

// RevertAll reverts every fault still active, oldest first, and returns the
// errors of those it could not revert (they stay tracked).
func (t *Tracker) RevertAll(ctx context.Context) error {
	t.mu.Lock()
	ids := make([]string, 0, len(t.active))
	for id := range t.active {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool {
		return t.active[ids[i]].record.InjectedAt.Before(t.active[ids[j]].record.InjectedAt)
	})
	t.mu.Unlock()
	var errs []error
	for _, id := range ids {
		if _, err := t.Revert(ctx, id); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Active returns the number of faults not yet reverted.
func (t *Tracker) Active() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.active)
}

// Timeline returns the events so far, in order.
func (t *Tracker) Timeline() []Event {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]Event(nil), t.timeline...)
}

func (t *Tracker) record(ev Event) {
	t.mu.Lock()
	t.timeline = append(t.timeline, ev)
	t.mu.Unlock()
	if t.onEvent != nil {
		t.onEvent(ev)
	}
}

// RevertOnSignal reverts every active fault as soon as the process gets
// SIGINT or SIGTERM, before anything else unwinds, bounded by timeout. The
// returned function stops watching. onDone (may be nil) sees the result.
func (t *Tracker) RevertOnSignal(timeout time.Duration, onDone func(os.Signal, error)) (stop func()) {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	quit := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		select {
		case s := <-sigs:
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			err := t.RevertAll(ctx)
			cancel()
			if onDone != nil {
				onDone(s, err)
			}
		case <-quit:
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			signal.Stop(sigs)
			close(quit)
			<-done
		})
	}
}
