package array

import (
	"encoding/binary"
	"fmt"
	"sort"
	"strings"
	"sync"

	"github.com/certkit/certkit/targets/frontend"
	"github.com/gostor/gotgt/pkg/api"
)

// ALUA (SPC-4 §5.15): gotgt has none, so the array puts this layer between
// its iSCSI front end and gotgt. It sees each command's relative target port
// (the portal's TPGT), and so the target port group it came in on, and:
//   - answers REPORT TARGET PORT GROUPS and (when explicit ALUA is enabled)
//     SET TARGET PORT GROUPS itself;
//   - sets the TPGS bits of the standard INQUIRY data gotgt returns;
//   - rejects commands a group's state does not allow with the SPC sense
//     codes (NOT READY 04/0B standby, 04/0C unavailable, 04/0A transitioning);
//   - after every state change owes each I_T nexus a UNIT ATTENTION
//     06/2A/06 (ASYMMETRIC ACCESS STATE CHANGED) on each LU, reported once.
//
// Unit attentions are kept by the SCSI layer below, per LU and I_T nexus
// (unitAttentions); ALUA raises its own there and reports any pending one
// before it looks at the port's state, as Linux's target does.
//
// The port groups' states are the array's (aluaGroups): a controller is in
// one state whichever target a host reaches through it. Each target has
// its own layer (alua) over its own SCSI layer, sharing those states, and a
// state change owes the UNIT ATTENTION on every LU of every target.

// AccessState is an asymmetric access state (SPC-4 Table 171).
type AccessState byte

// Asymmetric access states.
const (
	ActiveOptimized    AccessState = 0x0
	ActiveNonOptimized AccessState = 0x1
	Standby            AccessState = 0x2
	Unavailable        AccessState = 0x3
	Transitioning      AccessState = 0xf
)

var stateNames = map[AccessState]string{
	ActiveOptimized: "AO", ActiveNonOptimized: "ANO", Standby: "standby",
	Unavailable: "unavailable", Transitioning: "transitioning",
}

func (s AccessState) String() string {
	if n, ok := stateNames[s]; ok {
		return n
	}
	return fmt.Sprintf("state 0x%x", byte(s))
}

// ParseAccessState reads the names ESXi prints (AO, ANO, standby,
// unavailable, transitioning), case-insensitively.
func ParseAccessState(s string) (AccessState, error) {
	for st, n := range stateNames {
		if strings.EqualFold(n, s) {
			return st, nil
		}
	}
	return 0, fmt.Errorf("unknown ALUA state %q: use AO, ANO, standby, unavailable or transitioning", s)
}

// SCSI opcodes and service actions the ALUA layer handles itself.
const (
	opInquiry      = 0x12
	opReportLUNs   = 0xa0
	opRequestSense = 0x03
	opMaintIn      = 0xa3
	opMaintOut     = 0xa4
	opModeSense6   = 0x1a
	opModeSense10  = 0x5a
	opLogSense     = 0x4d
	opPRIn         = 0x5e
	opPROut        = 0x5f
	opRecvDiag     = 0x1c
	saTPG          = 0x0a // REPORT / SET TARGET PORT GROUPS
)

// allowedIn lists, per state that restricts access, the commands still
// served (SPC-4 §5.15.2.4.4-6); everything else gets the state's sense.
var allowedIn = map[AccessState]map[byte]bool{
	Standby: {opInquiry: true, opReportLUNs: true, opRequestSense: true, opMaintIn: true, opMaintOut: true,
		opModeSense6: true, opModeSense10: true, opLogSense: true, opPRIn: true, opPROut: true, opRecvDiag: true},
	Unavailable:   {opInquiry: true, opReportLUNs: true, opRequestSense: true, opMaintIn: true, opMaintOut: true},
	Transitioning: {opInquiry: true, opReportLUNs: true, opRequestSense: true, opMaintIn: true},
}

// notReadyASCQ is the ASCQ of NOT READY / LOGICAL UNIT NOT ACCESSIBLE per state.
var notReadyASCQ = map[AccessState]byte{Transitioning: 0x0a, Standby: 0x0b, Unavailable: 0x0c}

// ALUAConfig is how an array presents asymmetric access.
type ALUAConfig struct {
	// Explicit enables SET TARGET PORT GROUPS (TPGS = 11b); otherwise only
	// implicit ALUA is reported (TPGS = 01b).
	Explicit bool
	// TransitionSeconds is reported as the implicit transition time.
	TransitionSeconds byte
}

type group struct {
	id     uint16
	ports  []uint16 // relative target port IDs
	state  AccessState
	status byte // 0 none, 1 altered by SET TPG, 2 altered by implicit transition
}

// unitAttentions is the unit attention bookkeeping of the SCSI layer under
// ALUA (scsiTarget, gotgt.go): one queue per LU and I_T nexus.
type unitAttentions interface {
	// oweAll owes UNIT ATTENTION c to every live I_T nexus on every LU.
	oweAll(c senseCode)
	// attention ends cmd with the oldest unit attention owed to its nexus
	// on its LU, if there is one (SPC-4 §5.14), and reports whether it did.
	attention(cmd *api.SCSICommand) bool
	// present reports whether a LUN number has an LU.
	present(lun uint64) bool
}

// aluaInner is what the ALUA layer wraps.
type aluaInner interface {
	frontend.SCSI
	unitAttentions
}

// aluaGroups is an array's target port groups and their states, shared by
// the ALUA layers of all its targets.
type aluaGroups struct {
	cfg ALUAConfig

	mu      sync.Mutex
	groups  []*group          // ordered by id
	byPort  map[uint16]*group // relative target port -> group
	targets []unitAttentions  // every target's SCSI layer: a change owes UA on each
}

// alua is the ALUA layer of one target: frontend.SCSI around the target's
// SCSI layer (inner), with the array's port groups.
type alua struct {
	*aluaGroups
	inner aluaInner
}

// newALUAGroups makes an array's port groups in their initial states
// (active/optimized where initial does not say).
func newALUAGroups(cfg ALUAConfig, groups []portGroup, initial map[uint16]AccessState) *aluaGroups {
	a := &aluaGroups{cfg: cfg, byPort: map[uint16]*group{}}
	for _, g := range groups {
		st, ok := initial[g.id]
		if !ok {
			st = ActiveOptimized
		}
		gg := &group{id: g.id, ports: append([]uint16(nil), g.ports...), state: st}
		a.groups = append(a.groups, gg)
		for _, p := range g.ports {
			a.byPort[p] = gg
		}
	}
	sort.Slice(a.groups, func(i, j int) bool { return a.groups[i].id < a.groups[j].id })
	return a
}

// target makes the ALUA layer of one more target, over its SCSI layer.
func (g *aluaGroups) target(inner aluaInner) *alua {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.targets = append(g.targets, inner)
	return &alua{aluaGroups: g, inner: inner}
}

// newALUA is the ALUA layer of an array of one target.
func newALUA(inner aluaInner, cfg ALUAConfig, groups []portGroup, initial map[uint16]AccessState) *alua {
	return newALUAGroups(cfg, groups, initial).target(inner)
}

// AddNexus registers a session's nexus with the SCSI layer.
func (a *alua) AddNexus(n *api.ITNexus) error { return a.inner.AddNexus(n) }

// RemoveNexus forgets a nexus; the SCSI layer drops what it was owed.
func (a *alua) RemoveNexus(n *api.ITNexus) { a.inner.RemoveNexus(n) }

// ResetLU and ResetTarget pass task management resets down to the SCSI
// layer (frontend.Resetter), which drops reservations and raises its own
// UNIT ATTENTIONs.
func (a *alua) ResetLU(n *api.ITNexus, lun uint64) {
	if r, ok := a.inner.(frontend.Resetter); ok {
		r.ResetLU(n, lun)
	}
}

// HasLUN says whether the target has LUN lun (frontend.LUNLister).
func (a *alua) HasLUN(lun uint64) bool {
	l, ok := a.inner.(frontend.LUNLister)
	return !ok || l.HasLUN(lun)
}

// ResetTarget: see ResetLU.
func (a *alua) ResetTarget(n *api.ITNexus) {
	if r, ok := a.inner.(frontend.Resetter); ok {
		r.ResetTarget(n)
	}
}

// States returns each target port group's state by group ID.
func (a *aluaGroups) States() map[uint16]AccessState {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make(map[uint16]AccessState, len(a.groups))
	for _, g := range a.groups {
		out[g.id] = g.state
	}
	return out
}

// SetState changes a group's state as an implicit transition would and
// owes every nexus a UNIT ATTENTION.
func (a *aluaGroups) SetState(id uint16, s AccessState) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.setLocked(map[uint16]AccessState{id: s}, 2)
}

// setStates changes several groups at once (one UNIT ATTENTION for all).
func (a *aluaGroups) setStates(states map[uint16]AccessState) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.setLocked(states, 2)
}

func (a *aluaGroups) setLocked(states map[uint16]AccessState, status byte) error {
	for id := range states {
		if a.groupLocked(id) == nil {
			return fmt.Errorf("no target port group %d; groups are %v", id, a.idsLocked())
		}
	}
	changed := false
	for id, s := range states {
		g := a.groupLocked(id)
		if g.state != s {
			g.state, g.status, changed = s, status, true
		}
	}
	if changed {
		for _, t := range a.targets {
			t.oweAll(senseCode{0x2a, 0x06}) // ASYMMETRIC ACCESS STATE CHANGED
		}
	}
	return nil
}

func (a *aluaGroups) groupLocked(id uint16) *group {
	for _, g := range a.groups {
		if g.id == id {
			return g
		}
	}
	return nil
}

func (a *aluaGroups) idsLocked() []uint16 {
	ids := make([]uint16, len(a.groups))
	for i, g := range a.groups {
		ids[i] = g.id
	}
	return ids
}

// Execute serves or gates one command by the state of its port's group.
func (a *alua) Execute(cmd *api.SCSICommand) {
	op := cmd.SCB[0]
	if !a.inner.present(frontend.GotgtLUN(cmd)) {
		// No LU: LOGICAL UNIT NOT SUPPORTED on every port, whatever its
		// state (a removed LUN is gone on all paths alike).
		a.inner.Execute(cmd)
		return
	}
	// A pending UNIT ATTENTION comes first, once per nexus and LU.
	if a.inner.attention(cmd) {
		return
	}
	a.mu.Lock()
	g := a.byPort[cmd.RelTargetPortID]
	state := ActiveOptimized
	if g != nil {
		state = g.state
	}
	switch {
	case op == opMaintIn && cmd.SCB[1]&0x1f == saTPG:
		a.reportTPGLocked(cmd)
		a.mu.Unlock()
		return
	case op == opMaintOut && cmd.SCB[1]&0x1f == saTPG:
		a.setTPGLocked(cmd)
		a.mu.Unlock()
		return
	}
	a.mu.Unlock()

	if allowed, restricted := allowedIn[state]; restricted && !allowed[op] {
		checkCondition(cmd, 0x02, 0x04, notReadyASCQ[state])
		return
	}
	a.inner.Execute(cmd)
	if op == opInquiry && cmd.SCB[1]&1 == 0 && cmd.Result == api.SAM_STAT_GOOD && len(cmd.InSDBBuffer.Buffer) > 5 {
		tpgs := byte(0x10) // implicit
		if a.cfg.Explicit {
			tpgs = 0x30
		}
		cmd.InSDBBuffer.Buffer[5] = cmd.InSDBBuffer.Buffer[5]&^0x30 | tpgs
	}
}

// reportTPGLocked answers REPORT TARGET PORT GROUPS (SPC-4 §6.36) in the
// length-only or the extended header format the CDB asks for.
func (a *aluaGroups) reportTPGLocked(cmd *api.SCSICommand) {
	alloc := binary.BigEndian.Uint32(cmd.SCB[6:10])
	extended := cmd.SCB[1]>>5 == 1
	var d []byte
	if extended {
		d = []byte{0, 0, 0, 0, 0x10, a.cfg.TransitionSeconds, 0, 0}
	} else {
		d = []byte{0, 0, 0, 0}
	}
	for _, g := range a.groups {
		// T_SUP O_SUP(0) U_SUP S_SUP AN_SUP AO_SUP: the states this array uses.
		d = append(d, byte(g.state), 0x80|0x08|0x04|0x02|0x01, byte(g.id>>8), byte(g.id), 0, g.status, 0, byte(len(g.ports)))
		for _, p := range g.ports {
			d = append(d, 0, 0, byte(p>>8), byte(p))
		}
	}
	hdr := 4
	if extended {
		hdr = 8
	}
	binary.BigEndian.PutUint32(d, uint32(len(d)-hdr))
	respond(cmd, d, int(alloc))
}

// setTPGLocked applies SET TARGET PORT GROUPS (SPC-4 §6.49) when explicit
// ALUA is enabled. Only AO, ANO, standby and unavailable may be requested.
func (a *aluaGroups) setTPGLocked(cmd *api.SCSICommand) {
	if !a.cfg.Explicit {
		checkCondition(cmd, 0x05, 0x20, 0x00) // INVALID COMMAND OPERATION CODE
		return
	}
	n := int(binary.BigEndian.Uint32(cmd.SCB[6:10]))
	data := cmd.OutSDBBuffer.Buffer
	if n > len(data) || n < 4 || (n-4)%4 != 0 {
		checkCondition(cmd, 0x05, 0x1a, 0x00) // PARAMETER LIST LENGTH ERROR
		return
	}
	want := map[uint16]AccessState{}
	for off := 4; off+4 <= n; off += 4 {
		s := AccessState(data[off] & 0x0f)
		id := binary.BigEndian.Uint16(data[off+2 : off+4])
		if s == Transitioning || stateNames[s] == "" || a.groupLocked(id) == nil {
			checkCondition(cmd, 0x05, 0x26, 0x00) // INVALID FIELD IN PARAMETER LIST
			return
		}
		want[id] = s
	}
	if err := a.setLocked(want, 1); err != nil {
		checkCondition(cmd, 0x05, 0x26, 0x00)
		return
	}
	cmd.Result = api.SAM_STAT_GOOD
}

// respond copies data (cut to the allocation length) into the Data-In buffer.
func respond(cmd *api.SCSICommand, data []byte, alloc int) {
	n := min(len(data), alloc)
	if len(cmd.InSDBBuffer.Buffer) < n {
		cmd.InSDBBuffer.Buffer = make([]byte, n)
	}
	copy(cmd.InSDBBuffer.Buffer, data[:n])
	cmd.InSDBBuffer.Resid = uint32(n)
	cmd.Result = api.SAM_STAT_GOOD
}

var _ frontend.Resetter = (*alua)(nil)
