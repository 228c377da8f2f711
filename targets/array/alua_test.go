package array

import (
	"encoding/binary"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/gostor/gotgt/pkg/api"
	uuid "github.com/satori/go.uuid"
)

// innerSCSI is the SCSI layer behind the ALUA layer: a real scsiTarget
// (gotgt, one 1 MiB memory LU 0), which keeps the unit attentions, with a
// record of the opcodes that reached it.
type innerSCSI struct {
	*scsiTarget
	executed []byte
}

func (f *innerSCSI) Execute(cmd *api.SCSICommand) {
	f.executed = append(f.executed, cmd.SCB[0])
	f.scsiTarget.Execute(cmd)
}

var unitArrays atomic.Int64 // names the scsiTargets of these tests apart

// twoControllers: group 1 = port 1 (controller A), group 2 = port 2 (B).
func twoControllers(t *testing.T, explicit bool) (*alua, *innerSCSI, *api.ITNexus) {
	t.Helper()
	name := fmt.Sprintf("alua-unit-%d", unitArrays.Add(1))
	groups := []portGroup{{id: 1, ports: []uint16{1}}, {id: 2, ports: []uint16{2}}}
	st, err := newSCSITarget(name, name, "iqn.2024-01.io.certkit:"+name, []lunSpec{{id: 0, size: 1 << 20, backing: BackingMemory}}, groups)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.close)
	in := &innerSCSI{scsiTarget: st}
	a := newALUA(in, ALUAConfig{Explicit: explicit, TransitionSeconds: 10}, groups,
		map[uint16]AccessState{1: ActiveOptimized, 2: Standby})
	n := &api.ITNexus{ID: uuid.NewV4()}
	_ = a.AddNexus(n)
	return a, in, n
}

func cmdOn(n *api.ITNexus, port uint16, cdb ...byte) *api.SCSICommand {
	scb := make([]byte, 16)
	copy(scb, cdb)
	return &api.SCSICommand{SCB: scb, RelTargetPortID: port, ITNexusID: n.ID,
		InSDBBuffer: &api.SCSIDataBuffer{Buffer: make([]byte, 512)}, OutSDBBuffer: &api.SCSIDataBuffer{}}
}

func senseOf(t *testing.T, cmd *api.SCSICommand) (key, asc, ascq byte) {
	t.Helper()
	if cmd.Result != api.SAM_STAT_CHECK_CONDITION || cmd.SenseBuffer == nil {
		t.Fatalf("opcode 0x%02x: status 0x%02x, want CHECK CONDITION", cmd.SCB[0], cmd.Result)
	}
	b := cmd.SenseBuffer.Buffer
	return b[2] & 0x0f, b[12], b[13]
}

func rtpg(n *api.ITNexus, port uint16, extended bool) *api.SCSICommand {
	c := cmdOn(n, port, opMaintIn, saTPG, 0, 0, 0, 0, 0, 0, 2, 0)
	if extended {
		c.SCB[1] |= 1 << 5
	}
	return c
}

func TestReportTargetPortGroupsDescribesEachController(t *testing.T) {
	a, in, n := twoControllers(t, false)
	c := rtpg(n, 2, false)
	a.Execute(c)
	if c.Result != api.SAM_STAT_GOOD || len(in.executed) != 0 {
		t.Fatalf("RTPG: status %d, reached gotgt %v", c.Result, in.executed)
	}
	d := c.InSDBBuffer.Buffer[:c.InSDBBuffer.Resid]
	if got := binary.BigEndian.Uint32(d); got != uint32(len(d)-4) || len(d) != 4+2*12 {
		t.Fatalf("return data length %d for %d bytes", got, len(d))
	}
	for i, want := range []struct {
		state AccessState
		id    uint16
		port  uint16
	}{{ActiveOptimized, 1, 1}, {Standby, 2, 2}} {
		desc := d[4+12*i:]
		if AccessState(desc[0]&0x0f) != want.state || binary.BigEndian.Uint16(desc[2:4]) != want.id ||
			desc[7] != 1 || binary.BigEndian.Uint16(desc[10:12]) != want.port {
			t.Errorf("descriptor %d = % x, want group %d in %s with port %d", i, desc[:12], want.id, want.state, want.port)
		}
	}
	ext := rtpg(n, 1, true)
	a.Execute(ext)
	if e := ext.InSDBBuffer.Buffer; e[4] != 0x10 || e[5] != 10 {
		t.Fatalf("extended header % x, want format 0x10 and transition time 10", e[:8])
	}
}

func TestStandbyPortServesOnlyWhatSPCAllows(t *testing.T) {
	a, in, n := twoControllers(t, false)
	read := cmdOn(n, 2, 0x28)
	a.Execute(read)
	if k, asc, ascq := senseOf(t, read); k != 2 || asc != 0x04 || ascq != 0x0b {
		t.Fatalf("READ on standby: sense %x/%02x/%02x, want 2/04/0B", k, asc, ascq)
	}
	inq := cmdOn(n, 2, opInquiry, 0, 0, 0, 36)
	a.Execute(inq)
	if inq.Result != api.SAM_STAT_GOOD || inq.InSDBBuffer.Buffer[5]&0x30 != 0x10 {
		t.Fatalf("INQUIRY on standby: status %d TPGS byte 0x%02x, want GOOD with implicit TPGS", inq.Result, inq.InSDBBuffer.Buffer[5])
	}
	ao := cmdOn(n, 1, 0x28)
	a.Execute(ao)
	if ao.Result != api.SAM_STAT_GOOD || len(in.executed) != 2 {
		t.Fatalf("READ on AO: status %d, gotgt saw %v", ao.Result, in.executed)
	}
	for st, ascq := range map[AccessState]byte{Unavailable: 0x0c, Transitioning: 0x0a} {
		if err := a.SetState(2, st); err != nil {
			t.Fatal(err)
		}
		a.Execute(cmdOn(n, 2, 0x00)) // takes the UNIT ATTENTION the change owes
		c := cmdOn(n, 2, 0x2a)
		a.Execute(c)
		if k, asc, q := senseOf(t, c); k != 2 || asc != 0x04 || q != ascq {
			t.Errorf("WRITE on %s: sense %x/%02x/%02x, want 2/04/%02X", st, k, asc, q, ascq)
		}
	}
}

func TestStateChangeRaisesOneUnitAttentionPerNexus(t *testing.T) {
	a, _, n := twoControllers(t, false)
	other := &api.ITNexus{ID: uuid.NewV4()}
	_ = a.AddNexus(other)
	if err := a.SetState(2, ActiveNonOptimized); err != nil {
		t.Fatal(err)
	}
	for _, nx := range []*api.ITNexus{n, other} {
		inq := cmdOn(nx, 1, opInquiry, 0, 0, 0, 36)
		a.Execute(inq)
		if inq.Result != api.SAM_STAT_GOOD {
			t.Fatal("INQUIRY must not report the UNIT ATTENTION")
		}
		c := cmdOn(nx, 1, 0x28)
		a.Execute(c)
		if k, asc, q := senseOf(t, c); k != 6 || asc != 0x2a || q != 0x06 {
			t.Fatalf("first READ after the change: %x/%02x/%02x, want 6/2A/06", k, asc, q)
		}
		again := cmdOn(nx, 1, 0x28)
		a.Execute(again)
		if again.Result != api.SAM_STAT_GOOD {
			t.Fatal("the UNIT ATTENTION must be reported once")
		}
	}
	if err := a.SetState(9, Standby); err == nil {
		t.Fatal("a group the array does not have must be an error")
	}
}

func TestUnitAttentionComesBeforeThePortsState(t *testing.T) {
	a, in, n := twoControllers(t, false)
	if err := a.SetState(1, ActiveNonOptimized); err != nil {
		t.Fatal(err)
	}
	// On the standby port the pending UNIT ATTENTION is reported first
	// (as Linux's target does), then the state's NOT READY.
	for _, want := range [][3]byte{{6, 0x2a, 0x06}, {2, 0x04, 0x0b}} {
		c := cmdOn(n, 2, 0x28)
		a.Execute(c)
		if k, asc, q := senseOf(t, c); [3]byte{k, asc, q} != want {
			t.Fatalf("READ on standby: %x/%02x/%02x, want %x/%02X/%02X", k, asc, q, want[0], want[1], want[2])
		}
	}
	// A LUN without an LU is not supported, whatever the port's state.
	c := cmdOn(n, 2, 0x28)
	binary.NativeEndian.PutUint64(c.Lun[:], 5)
	a.Execute(c)
	if k, asc, _ := senseOf(t, c); k != 5 || asc != 0x25 {
		t.Fatalf("READ of absent LUN 5 on standby: %x/%02x, want 5/25 (LOGICAL UNIT NOT SUPPORTED)", k, asc)
	}
	if len(in.executed) != 1 {
		t.Fatalf("reached the SCSI layer: % x, want only the absent LUN's READ", in.executed)
	}
}

func TestSetTargetPortGroupsOnlyWhenExplicit(t *testing.T) {
	param := []byte{0, 0, 0, 0, byte(ActiveOptimized), 0, 0, 2, byte(Standby), 0, 0, 1}
	stpg := func(n *api.ITNexus) *api.SCSICommand {
		c := cmdOn(n, 1, opMaintOut, saTPG, 0, 0, 0, 0, 0, 0, 0, byte(len(param)))
		c.OutSDBBuffer = &api.SCSIDataBuffer{Buffer: param, Length: uint32(len(param))}
		return c
	}
	a, _, n := twoControllers(t, false)
	c := stpg(n)
	a.Execute(c)
	if k, asc, _ := senseOf(t, c); k != 5 || asc != 0x20 {
		t.Fatalf("SET TPG with implicit-only ALUA: %x/%02x, want 5/20", k, asc)
	}
	a, _, n = twoControllers(t, true)
	c = stpg(n)
	a.Execute(c)
	if c.Result != api.SAM_STAT_GOOD {
		t.Fatalf("SET TPG: status %d", c.Result)
	}
	if s := a.States(); s[1] != Standby || s[2] != ActiveOptimized {
		t.Fatalf("states after SET TPG: %v", s)
	}
	r := rtpg(n, 1, false)
	a.Execute(r)
	if k, _, _ := senseOf(t, r); k != 6 {
		t.Fatal("the initiator that set the states is owed a UNIT ATTENTION too")
	}
	r = rtpg(n, 1, false)
	a.Execute(r)
	if st := r.InSDBBuffer.Buffer[4+5]; st != 1 {
		t.Fatalf("status code of group 1 = %d, want 1 (altered by SET TARGET PORT GROUPS)", st)
	}
}

func TestParseAccessState(t *testing.T) {
	for in, want := range map[string]AccessState{"AO": ActiveOptimized, "ano": ActiveNonOptimized, "Standby": Standby} {
		if got, err := ParseAccessState(in); err != nil || got != want {
			t.Errorf("ParseAccessState(%q) = %v, %v", in, got, err)
		}
	}
	if _, err := ParseAccessState("offline-ish"); err == nil {
		t.Error("an unknown state name must be an error")
	}
}
