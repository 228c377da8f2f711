package array_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/certkit/certkit/iscsi/initiator"
	"github.com/certkit/certkit/targets/array"
	"github.com/certkit/certkit/targets/control"
)

// aluaConfig is two controllers, each behind a fault proxy: A active/
// optimized, B standby, explicit ALUA with a short transition.
func aluaConfig(name string) array.Config {
	cfg := config(name)
	cfg.Controllers = []array.Controller{
		{Name: "A", Portals: []array.PortalConfig{{Listen: "127.0.0.1:0", Proxy: "127.0.0.1:0"}}},
		{Name: "B", ALUAState: "standby", Portals: []array.PortalConfig{{Listen: "127.0.0.1:0", Proxy: "127.0.0.1:0"}}},
	}
	cfg.ALUA = &array.ALUA{Explicit: true, TransitionTime: "200ms"}
	return cfg
}

func login(t *testing.T, ctx context.Context, a *array.Array, portal string, isid byte) *initiator.Session {
	t.Helper()
	s, err := initiator.Login(ctx, initiator.Options{InitiatorName: initiatorIQN, TargetName: a.Target(),
		Address: portalAddr(a, portal), ISID: [6]byte{0x80, 0, 0, 0, 3, isid}})
	if err != nil {
		t.Fatalf("login via %s: %v", portal, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func wantSense(t *testing.T, err error, key, asc, ascq byte) {
	t.Helper()
	var se *initiator.SCSIError
	if !errors.As(err, &se) || se.Key != key || se.ASC != asc || se.ASCQ != ascq {
		t.Fatalf("got %v, want sense %x/%02x/%02x", err, key, asc, ascq)
	}
}

// readOnce reads block 0 of LUN 0, taking one pending UNIT ATTENTION first.
func readOnce(ctx context.Context, s *initiator.Session) error {
	_, err := s.Read(ctx, 0, 0, 1, 512)
	var se *initiator.SCSIError
	if errors.As(err, &se) && se.Key == 6 {
		_, err = s.Read(ctx, 0, 0, 1, 512)
	}
	return err
}

func TestALUAStatesReachTheHostsSCSIView(t *testing.T) {
	a := startArray(t, aluaConfig("alua"), array.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	sa, sb := login(t, ctx, a, "A0", 1), login(t, ctx, a, "B0", 2)

	inq, err := sa.Inquiry(ctx, 0, false, 0)
	if err != nil || inq[5]&0x30 != 0x30 {
		t.Fatalf("standard INQUIRY TPGS bits: % x %v, want implicit and explicit", inq[5:6], err)
	}
	if err := readOnce(ctx, sa); err != nil {
		t.Fatalf("read via AO controller A: %v", err)
	}
	_, err = sb.Read(ctx, 0, 0, 1, 512)
	wantSense(t, err, 2, 0x04, 0x0b)

	if _, err := a.SetALUA(2, "AO"); err != nil {
		t.Fatal(err)
	}
	_, err = sb.Read(ctx, 0, 0, 1, 512)
	wantSense(t, err, 6, 0x2a, 0x06) // ASYMMETRIC ACCESS STATE CHANGED, once
	if _, err := sb.Read(ctx, 0, 0, 1, 512); err != nil {
		t.Fatalf("read via B after it became AO: %v", err)
	}
	if _, err := a.SetALUA(3, "AO"); !errors.Is(err, control.ErrNotFound) {
		t.Fatalf("SetALUA on a group that does not exist: %v", err)
	}
}

func TestControllerCrashDropsItsSessionsUntilReverted(t *testing.T) {
	a := startArray(t, aluaConfig("crash"), array.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 4*ioTimeout)
	defer cancel()
	sa := login(t, ctx, a, "A0", 1)
	rec, err := a.InjectFault(control.InjectRequest{Controller: "A", FaultSpec: control.FaultSpec{Kind: array.FaultCrash}})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-sa.Done():
	case <-ctx.Done():
		t.Fatal("a session on the crashed controller survived")
	}
	if _, err := initiator.Login(ctx, initiator.Options{InitiatorName: initiatorIQN, TargetName: a.Target(),
		Address: portalAddr(a, "A0"), ISID: [6]byte{0x80, 0, 0, 0, 3, 9}, LoginTimeout: time.Second}); err == nil {
		t.Fatal("a login to the crashed controller succeeded")
	}
	if g := a.ALUA(); g[0].State != "unavailable" {
		t.Fatalf("ALUA after the crash: %+v, want controller A unavailable", g)
	}
	if _, err := a.InjectFault(control.InjectRequest{Controller: "A", FaultSpec: control.FaultSpec{Kind: array.FaultHang}}); !errors.Is(err, control.ErrConflict) {
		t.Fatalf("a second fault on a crashed controller: %v", err)
	}
	if _, err := a.Revert(rec.ID); err != nil {
		t.Fatal(err)
	}
	if g := a.ALUA(); g[0].State != "AO" || g[1].State != "standby" {
		t.Fatalf("ALUA after the revert: %+v, want the states from before", g)
	}
	s := login(t, ctx, a, "A0", 3)
	if err := readOnce(ctx, s); err != nil {
		t.Fatalf("read after the controller came back: %v", err)
	}
}

func TestControllerRebootRevertsItself(t *testing.T) {
	a := startArray(t, aluaConfig("reboot"), array.Options{})
	if _, err := a.InjectFault(control.InjectRequest{Controller: "B", FaultSpec: control.FaultSpec{Kind: array.FaultReboot}}); !errors.Is(err, control.ErrInvalid) {
		t.Fatalf("reboot without a duration: %v", err)
	}
	if _, err := a.InjectFault(control.InjectRequest{Controller: "B", FaultSpec: control.FaultSpec{Kind: array.FaultReboot, Duration: "100ms"}}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(ioTimeout)
	for len(a.Faults()) > 0 && time.Now().Before(deadline) {
		time.Sleep(pollInterval)
	}
	if f := a.Faults(); len(f) != 0 {
		t.Fatalf("the reboot did not end by itself: %+v", f)
	}
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	login(t, ctx, a, "B0", 4)
}

func TestPlannedFailoverTransitionsThenSwapsStates(t *testing.T) {
	a := startArray(t, aluaConfig("failover"), array.Options{})
	rec, err := a.InjectFault(control.InjectRequest{Controller: "A", FaultSpec: control.FaultSpec{Kind: array.FaultFailover}})
	if err != nil {
		t.Fatal(err)
	}
	if g := a.ALUA(); g[0].State != "transitioning" {
		t.Fatalf("right after the failover: %+v, want A transitioning", g)
	}
	deadline := time.Now().Add(ioTimeout)
	for a.ALUA()[0].State == "transitioning" && time.Now().Before(deadline) {
		time.Sleep(pollInterval)
	}
	if g := a.ALUA(); g[0].State != "standby" || g[1].State != "AO" {
		t.Fatalf("after the transition: %+v, want A standby, B AO", g)
	}
	if _, err := a.Revert(rec.ID); err != nil {
		t.Fatal(err)
	}
	if g := a.ALUA(); g[0].State != "AO" || g[1].State != "standby" {
		t.Fatalf("after failback: %+v, want A AO, B standby", g)
	}
}

func TestPathFaultParametersOverTheControlAPI(t *testing.T) {
	a := startArray(t, aluaConfig("params"), array.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	s := login(t, ctx, a, "A0", 5)
	if err := readOnce(ctx, s); err != nil {
		t.Fatal(err)
	}
	rec, err := a.InjectFault(control.InjectRequest{Portal: "A0",
		FaultSpec: control.FaultSpec{Kind: "fail-opcode", Opcode: "0x28", Sense: "05/25/00"}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.Read(ctx, 0, 0, 1, 512)
	wantSense(t, err, 5, 0x25, 0x00)
	if _, err := a.Revert(rec.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Read(ctx, 0, 0, 1, 512); err != nil {
		t.Fatalf("read after revert: %v", err)
	}
	for _, bad := range []control.FaultSpec{
		{Kind: "fail-opcode", Opcode: "READ"},
		{Kind: "latency", Delay: "soon"},
		{Kind: "blackhole", Duration: "3s"},
	} {
		if _, err := a.InjectFault(control.InjectRequest{Portal: "A0", FaultSpec: bad}); !errors.Is(err, control.ErrInvalid) {
			t.Errorf("%+v: %v, want an invalid-request error", bad, err)
		}
	}
}
