package fault

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/certkit/certkit/targets/control"
)

// fakeArray is a control-API double that keeps active faults in a map.
type fakeArray struct {
	mu         sync.Mutex
	next       int
	active     map[string]control.FaultRecord
	failRevert bool
}

func newFakeArray() *fakeArray { return &fakeArray{active: map[string]control.FaultRecord{}} }

func (a *fakeArray) Inject(_ context.Context, portal, kind string) (control.FaultRecord, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.next++
	r := control.FaultRecord{ID: fmt.Sprintf("f%d", a.next), Portal: portal, Kind: kind, InjectedAt: time.Now()}
	a.active[r.ID] = r
	return r, nil
}

func (a *fakeArray) Revert(_ context.Context, id string) (control.FaultRecord, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.failRevert {
		return control.FaultRecord{}, errors.New("array unreachable")
	}
	r, ok := a.active[id]
	if !ok {
		return control.FaultRecord{}, fmt.Errorf("no fault %s", id)
	}
	now := time.Now()
	r.RevertedAt = &now
	delete(a.active, id)
	return r, nil
}

func (a *fakeArray) count() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.active)
}

func TestTrackerRecordsATimelineAndRevertsEverything(t *testing.T) {
	arr := newFakeArray()
	var seen []Event
	tr := NewTracker(func(e Event) { seen = append(seen, e) })
	ctx := context.Background()
	a, err := tr.Inject(ctx, arr, "array-a", "A0", "blackhole")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tr.Inject(ctx, arr, "array-a", "B0", "reset"); err != nil {
		t.Fatal(err)
	}
	if _, err := tr.Revert(ctx, a.FaultID); err != nil {
		t.Fatal(err)
	}
	if err := tr.RevertAll(ctx); err != nil {
		t.Fatal(err)
	}
	if arr.count() != 0 || tr.Active() != 0 {
		t.Fatalf("faults left: array %d, tracker %d", arr.count(), tr.Active())
	}
	var actions []string
	for _, e := range tr.Timeline() {
		actions = append(actions, e.Action+" "+e.Portal)
	}
	want := []string{"inject A0", "inject B0", "revert A0", "revert B0"}
	if fmt.Sprint(actions) != fmt.Sprint(want) || len(seen) != 4 {
		t.Fatalf("timeline %v (callbacks %d), want %v", actions, len(seen), want)
	}
	if _, err := tr.Revert(ctx, a.FaultID); err == nil {
		t.Fatal("reverting a fault twice must be an error")
	}
}

func TestTrackerKeepsFaultsItCouldNotRevert(t *testing.T) {
	arr := newFakeArray()
	tr := NewTracker(nil)
	if _, err := tr.Inject(context.Background(), arr, "array-a", "A0", "blackhole"); err != nil {
		t.Fatal(err)
	}
	arr.failRevert = true
	if err := tr.RevertAll(context.Background()); err == nil {
		t.Fatal("RevertAll must report a revert that failed")
	}
	if tr.Active() != 1 {
		t.Fatalf("a fault that could not be reverted must stay tracked; active = %d", tr.Active())
	}
}

func TestSIGINTRevertsEveryActiveFault(t *testing.T) {
	arr := newFakeArray()
	tr := NewTracker(nil)
	if _, err := tr.Inject(context.Background(), arr, "array-a", "A0", "blackhole"); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	stop := tr.RevertOnSignal(5*time.Second, func(_ os.Signal, err error) { done <- err })
	defer stop()
	if err := syscall.Kill(os.Getpid(), syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no revert within 10 s of SIGINT")
	}
	if arr.count() != 0 {
		t.Fatalf("%d faults still active on the array after SIGINT", arr.count())
	}
}
