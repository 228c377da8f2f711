package array

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/certkit/certkit/targets/frontend"
	"github.com/gostor/gotgt/pkg/api"
	"github.com/gostor/gotgt/pkg/config"
	"github.com/gostor/gotgt/pkg/scsi"
	_ "github.com/gostor/gotgt/pkg/scsi/backingstore" // "file" and "null" stores; gotgt's LUN 0 stand-in needs "null"
	"github.com/sirupsen/logrus"
)

// Process-wide state gotgt forces on every array in the process:
//
//   - one scsi.SCSITargetService (a sync.Once singleton) holding all targets,
//     found by TID: each target of each array takes a fresh TID from nextTID;
//   - one LU map keyed by device ID and by target name: device IDs are
//     derived from array name (+ target IQN for all but an array's first
//     target) + LUN id (deviceID, lunKey), so two arrays in one process must
//     have different names, and target IQNs must differ too;
//   - the backing-store registry (certkit's memory store registers in init);
//   - logrus's standard logger, which gotgt logs to: set to warn on first
//     Start unless CERTKIT_GOTGT_LOG names another level (e.g. debug);
//   - svc.Resize, which sets the size of every LU of every target: certkit
//     never calls it; a resize (luns.go) changes one LU's store and Size.
//
// LUs are added and removed at run time (luns.go) with gotgt's
// AddBackendStorage / AddLUNMapping / DelLUNMapping / DelBackendStorage:
// those change the LUN map gotgt reads on every command, so they run with
// gotgtMu held exclusively.
//
// gotgt does not lock all of that (AddCommandQueue reads a target's I_T
// nexus map unlocked), so every certkit call into gotgt goes through
// gotgtMu: setup, teardown, nexus changes and commands that change shared
// state hold it exclusively, reads and writes of data share it. Nothing else
// in the process may call gotgt.
//
// What certkit answers itself instead of gotgt v0.2.2, because gotgt gets it
// wrong (each found by libiscsi's iscsi-test-cu; see targets/CONFORMANCE.md):
//
//   - reservations: SCSI-2 RESERVE/RELEASE (gotgt's release is a TODO and
//     its reserve conflicts with the holder), persistent reservations
//     (gotgt's READ KEYS never reads its allocation length and always fails,
//     it checks no command against a reservation, and keeps one process-wide
//     table), the conflicts both impose on every command, and the unit
//     attentions SPC-4 owes after resets and preemptions;
//   - WRITE SAME(10/16), a no-op in gotgt ("TODO"): ESXi zeroes disks with it;
//   - COMPARE AND WRITE, which gotgt does not dispatch (ESXi's ATS locking);
//   - REPORT SUPPORTED OPERATION CODES (gotgt has no one-command format and
//     no timeout descriptors);
//   - INQUIRY VPD pages 0x00, 0xB0, 0xB1, 0xB2 (gotgt reports no length for
//     a VPD page that fits, so a full allocation length of zeros went out);
//   - transfers whose iSCSI Expected Data Transfer Length differs from the
//     CDB's (gotgt answers BUSY, or writes more than the CDB asked for);
//   - UNMAP on a fully provisioned LU: invalid opcode (gotgt said GOOD while
//     VPD 0xB2 said it has no UNMAP).
var (
	gotgtMu  sync.RWMutex
	nextTID  = 1000
	logOnce  sync.Once
	svc      = scsi.NewSCSITargetService()
	inquiryV = "CERTKIT" // INQUIRY vendor identification
)

func quietGotgt() {
	logOnce.Do(func() {
		lvl := logrus.WarnLevel
		if s := os.Getenv("CERTKIT_GOTGT_LOG"); s != "" {
			if l, err := logrus.ParseLevel(s); err == nil {
				lvl = l
			}
		}
		logrus.SetLevel(lvl)
	})
}

// deviceID is the stable gotgt device ID of a LUN: 60 bits of a hash of the
// target's LUN key (lunKey) and LUN id. gotgt reports it in VPD page 0x83
// as a locally assigned NAA (0x3 << 60 | id), the same on every path and
// every restart.
func deviceID(key string, lun int) uint64 {
	sum := sha256.Sum256([]byte(fmt.Sprintf("certkit-array/%s/lun/%d", key, lun)))
	return binary.BigEndian.Uint64(sum[:8]) >> 4
}

// lunKey is what the device IDs (and NAAs) of a target's LUNs derive from:
// the array name for the array's first target, which so keeps the NAAs of
// a one-target array, and array name + IQN for every other target.
func lunKey(arrayName, iqn string, first bool) string {
	if first {
		return arrayName
	}
	return arrayName + "/target/" + iqn
}

// NAA is the device name hosts see for LUN lun of the first (or only)
// target of array arrayName, e.g. "naa.3f1c...".
func NAA(arrayName string, lun int) string {
	return fmt.Sprintf("naa.%016x", uint64(3)<<60|deviceID(arrayName, lun))
}

// TargetNAA is the device name hosts see for LUN lun of target iqn of array
// arrayName when that target is not the array's first (see Config).
func TargetNAA(arrayName, iqn string, lun int) string {
	return fmt.Sprintf("naa.%016x", uint64(3)<<60|deviceID(lunKey(arrayName, iqn, false), lun))
}

var (
	_ frontend.SCSI     = (*scsiTarget)(nil)
	_ frontend.Resetter = (*scsiTarget)(nil)
)

// nexusID is an I_T nexus as the SCSI layer knows it (api.ITNexus.ID).
type nexusID = [16]byte

// scsiTarget is one target of an array inside gotgt; under its ALUA layer
// it is the target's frontend.SCSI in the array's front end.
type scsiTarget struct {
	array string // the array's name, for errors
	key   string // lunKey: device IDs and memory keys derive from it
	iqn   string
	tid   int
	tgt   *api.SCSITarget
	// luns maps LUN numbers to LUs. LUs come and go at run time (luns.go):
	// the map is replaced, never changed in place, so commands read it
	// without a lock.
	luns  atomic.Pointer[map[uint64]*lu]
	exits []func() // the target's own teardown in gotgt

	mu      sync.Mutex
	nexuses map[nexusID]*nexusRef // live I_T nexuses
}

type nexusRef struct {
	n    *api.ITNexus
	refs int // sessions using it: a reinstated session overlaps the old one
}

type lu struct {
	id    uint64
	devID uint64
	spec  lunSpec
	dev   *api.SCSILu
	shift uint     // log2 of the block size
	exits []func() // the LU's teardown in gotgt and its store

	// blocks is the capacity in blocks; a resize (luns.go) changes it with
	// gotgtMu held exclusively.
	blocks atomic.Uint64

	// calm is set while no unit attention is owed and no reservation is
	// held: then no command needs mu (the I/O fast path).
	calm atomic.Bool

	mu  sync.Mutex // guards everything below
	res reservations
	ua  map[nexusID][]senseCode // unit attentions owed, oldest first
}

// settleLocked recomputes calm after a change; l.mu is held.
func (l *lu) settleLocked() {
	l.calm.Store(len(l.ua) == 0 && l.res.scsi2 == nil && l.res.prType == 0)
}

type lunSpec struct {
	id      int
	size    int64
	backing string
	path    string
}

type portGroup struct {
	id    uint16 // ALUA target port group: controller index + 1
	ports []uint16
}

// newSCSITarget registers the target, its LUs and its ports with gotgt;
// key is the target's lunKey.
func newSCSITarget(arrayName, key, iqn string, luns []lunSpec, groups []portGroup) (_ *scsiTarget, err error) {
	quietGotgt()
	gotgtMu.Lock()
	defer gotgtMu.Unlock()
	for _, t := range svc.Targets {
		if t.Name == iqn {
			return nil, fmt.Errorf("target %s is already served by another array in this process; give each array its own target IQN", iqn)
		}
	}
	t := &scsiTarget{array: arrayName, key: key, iqn: iqn, nexuses: map[nexusID]*nexusRef{}}
	m := map[uint64]*lu{}
	t.luns.Store(&m) // not shared before newSCSITarget returns
	defer func() {
		if err != nil {
			t.releaseLocked()
		}
	}()
	for _, spec := range luns {
		l, err := t.newLULocked(spec)
		if err != nil {
			return nil, err
		}
		m[l.id] = l
	}
	nextTID++
	t.tid = nextTID
	tgt, err := svc.NewSCSITarget(t.tid, "certkit", iqn)
	if err != nil {
		return nil, fmt.Errorf("gotgt target %s: %v", iqn, err)
	}
	t.tgt = tgt
	t.exits = append(t.exits, func() {
		kept := svc.Targets[:0]
		for _, x := range svc.Targets {
			if x != tgt {
				kept = append(kept, x)
			}
		}
		svc.Targets = kept
	})
	// One target port per portal group (an iSCSI target port is target name
	// + TPGT), one ALUA port group per controller.
	tgt.TargetPortGroups = nil
	for _, g := range groups {
		pg := &api.TargetPortGroup{GroupID: g.id}
		for _, p := range g.ports {
			pg.TargetPortGroup = append(pg.TargetPortGroup, &api.SCSITargetPort{
				RelativeTargetPortID: p,
				TargetPortName:       fmt.Sprintf("%s,t,0x%04x", iqn, p),
			})
		}
		tgt.TargetPortGroups = append(tgt.TargetPortGroups, pg)
	}
	return t, nil
}

// close removes the target, its LUs and its memory from gotgt.
func (t *scsiTarget) close() {
	gotgtMu.Lock()
	defer gotgtMu.Unlock()
	t.releaseLocked()
}

func (t *scsiTarget) releaseLocked() {
	for i := len(t.exits) - 1; i >= 0; i-- {
		t.exits[i]()
	}
	t.exits = nil
	for _, l := range t.lus() {
		l.closeLocked()
	}
	t.luns.Store(&map[uint64]*lu{})
}

// newLULocked creates one LU in gotgt: its store (memory, or the image
// file created or grown to size), gotgt's device and the LUN mapping. It
// does not publish the LU in t.luns. gotgtMu is held; on error nothing is
// left behind.
func (t *scsiTarget) newLULocked(spec lunSpec) (_ *lu, err error) {
	id := deviceID(t.key, spec.id)
	u := &lu{id: uint64(spec.id), devID: id, spec: spec, ua: map[nexusID][]senseCode{}}
	defer func() {
		if err != nil {
			u.closeLocked()
		}
	}()
	var path string
	switch spec.backing {
	case BackingFile:
		if err := prepareFile(spec.path, spec.size); err != nil {
			return nil, fmt.Errorf("LUN %d: %w", spec.id, err)
		}
		path = fileBackend + ":" + spec.path
	default:
		key := fmt.Sprintf("%s/%d", t.key, spec.id)
		if err := addMemory(key, spec.size); err != nil {
			return nil, fmt.Errorf("LUN %d: %w", spec.id, err)
		}
		u.exits = append(u.exits, func() { dropMemory(key) })
		path = memoryBackend + ":" + key
	}
	if err := scsi.AddBackendStorage(config.BackendStorage{DeviceID: id, Path: path, Online: true}); err != nil {
		return nil, fmt.Errorf("target %s LUN %d: gotgt backing store %s: %v (is an array named %q already running in this process?)", t.iqn, spec.id, path, err, t.array)
	}
	u.exits = append(u.exits, func() { scsi.DelBackendStorage(id) })
	m := scsi.LUNMapping{TargetName: t.iqn, LUN: uint64(spec.id), DeviceID: id}
	scsi.AddLUNMapping(m)
	u.exits = append(u.exits, func() { scsi.DelLUNMapping(m) })
	// A target created before its first LUN mapping holds no LUN map yet.
	svc.RereadTargetLUNMap()
	dev := scsi.GetLU(t.iqn, uint64(spec.id))
	if dev == nil {
		return nil, fmt.Errorf("LUN %d: gotgt did not map device %d", spec.id, id)
	}
	u.exits = append(u.exits, func() { dev.Storage.Close(dev) })
	dev.Attrs.VendorID = inquiryV
	dev.Attrs.ProductID = "ARRAY"
	dev.Attrs.Online = true
	// Claim SBC-3 (gotgt claims SBC-2 yet returns SBC-3's block limits
	// page): what certkit's LU implements, and what ESXi expects.
	for i, v := range dev.Attrs.VersionDesction {
		if v == 0x0320 { // SBC-2
			dev.Attrs.VersionDesction[i] = 0x04c0 // SBC-3
		}
	}
	u.dev, u.shift = dev, dev.BlockShift
	u.blocks.Store(dev.Size >> dev.BlockShift)
	u.calm.Store(true)
	return u, nil
}

// closeLocked undoes newLULocked: the store is closed, gotgt forgets the
// device, memory is freed (an image file stays). gotgtMu is held.
func (l *lu) closeLocked() {
	for i := len(l.exits) - 1; i >= 0; i-- {
		l.exits[i]()
	}
	l.exits = nil
}

// lu returns the LU with LUN number id, nil if there is none.
func (t *scsiTarget) lu(id uint64) *lu {
	if m := t.luns.Load(); m != nil {
		return (*m)[id]
	}
	return nil
}

// lus returns the target's LUs by LUN number; callers must not change it.
func (t *scsiTarget) lus() map[uint64]*lu {
	if m := t.luns.Load(); m != nil {
		return *m
	}
	return nil
}

func prepareFile(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("file backing: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("file backing: %w", err)
	}
	switch {
	case st.Size() > size:
		return fmt.Errorf("file backing %s is %d bytes, larger than size %d: raise size or use another path", path, st.Size(), size)
	case st.Size() < size:
		if err := f.Truncate(size); err != nil {
			return fmt.Errorf("file backing %s: grow to %d bytes: %w", path, size, err)
		}
	}
	return nil
}

// AddNexus registers a session's I_T nexus with gotgt.
func (t *scsiTarget) AddNexus(n *api.ITNexus) error {
	t.mu.Lock()
	r := t.nexuses[n.ID]
	if r == nil {
		r = &nexusRef{n: n}
		t.nexuses[n.ID] = r
	}
	r.refs++
	t.mu.Unlock()
	gotgtMu.Lock()
	defer gotgtMu.Unlock()
	scsi.AddITNexus(t.tgt, n)
	return nil
}

// RemoveNexus forgets a session's I_T nexus. Its loss releases the SCSI-2
// reservation it held and the unit attentions it was owed (SPC-2 §7.21.2);
// persistent reservations survive it, as SPC-4 requires.
func (t *scsiTarget) RemoveNexus(n *api.ITNexus) {
	t.mu.Lock()
	last := false
	if r := t.nexuses[n.ID]; r != nil {
		r.refs--
		if r.refs <= 0 {
			delete(t.nexuses, n.ID)
			last = true
		}
	}
	t.mu.Unlock()
	for _, l := range t.lus() {
		l.mu.Lock()
		if l.res.scsi2 != nil && *l.res.scsi2 == n.ID {
			l.res.scsi2 = nil
		}
		if last {
			delete(l.ua, n.ID)
		}
		l.settleLocked()
		l.mu.Unlock()
	}
	if !last {
		return // the reinstated session still uses gotgt's nexus entry
	}
	gotgtMu.Lock()
	defer gotgtMu.Unlock()
	scsi.RemoveITNexus(t.tgt, n)
}

// liveNexuses lists the I_T nexuses with a session.
func (t *scsiTarget) liveNexuses() []nexusID {
	t.mu.Lock()
	defer t.mu.Unlock()
	ids := make([]nexusID, 0, len(t.nexuses))
	for id := range t.nexuses {
		ids = append(ids, id)
	}
	return ids
}

// nexusTag is the tag ("iqn,i,0xISID,target,t,0xTPGT") of a live nexus.
func (t *scsiTarget) nexusTag(id nexusID) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if r := t.nexuses[id]; r != nil {
		return r.n.Tag
	}
	return ""
}

// ResetLU is a LOGICAL UNIT RESET received on nexus n (SAM-5 §7.7): the
// SCSI-2 reservation goes, persistent reservations stay, and every I_T
// nexus (the resetting one too, as tgtd and libiscsi's MultipathIO.Reset
// expect) is owed UNIT ATTENTION 06/29/03 BUS DEVICE RESET FUNCTION
// OCCURRED. The front end calls it after aborting the LU's tasks.
func (t *scsiTarget) ResetLU(n *api.ITNexus, lun uint64) {
	if l := t.lu(lun); l != nil {
		l.reset(t.liveNexuses())
	}
}

// ResetTarget is a TARGET WARM RESET or TARGET COLD RESET received on
// nexus n: every LU is reset as by ResetLU.
func (t *scsiTarget) ResetTarget(n *api.ITNexus) {
	ids := t.liveNexuses()
	for _, l := range t.lus() {
		l.reset(ids)
	}
}

func (l *lu) reset(ids []nexusID) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.res.scsi2 = nil
	for _, id := range ids {
		l.oweLocked(id, senseCode{0x29, 0x03})
	}
	l.settleLocked()
}

// sharedOps touch only the LU's data and read-only state: they may run
// concurrently in gotgt. Everything else (MODE SELECT, START STOP, ...)
// runs alone.
var sharedOps = func() (m [256]bool) {
	for _, op := range []api.SCSICommandType{
		api.TEST_UNIT_READY, api.REQUEST_SENSE, api.INQUIRY, api.REPORT_LUNS,
		api.READ_6, api.READ_10, api.READ_12, api.READ_16,
		api.WRITE_6, api.WRITE_10, api.WRITE_12, api.WRITE_16,
		api.WRITE_VERIFY, api.WRITE_VERIFY_12, api.WRITE_VERIFY_16,
		api.VERIFY_10, api.VERIFY_12, api.VERIFY_16,
		api.READ_CAPACITY, api.SERVICE_ACTION_IN, api.MODE_SENSE, api.MODE_SENSE_10,
		api.SYNCHRONIZE_CACHE, api.SYNCHRONIZE_CACHE_16, api.PRE_FETCH_10, api.PRE_FETCH_16,
		api.MAINT_PROTOCOL_IN,
	} {
		m[op] = true
	}
	return m
}()

// handler answers a command on an LU instead of gotgt, or wraps gotgt.
type handler func(t *scsiTarget, l *lu, cmd *api.SCSICommand)

var handlers [256]handler

func init() {
	for op, h := range map[api.SCSICommandType]handler{
		api.INQUIRY:                inquiry,
		api.RESERVE:                reserve6,
		api.RESERVE_10:             reserve6,
		api.RELEASE:                release6,
		api.RELEASE_10:             release6,
		api.PERSISTENT_RESERVE_IN:  persistentReserveIn,
		api.PERSISTENT_RESERVE_OUT: persistentReserveOut,
		api.MAINT_PROTOCOL_IN:      maintenanceIn,
		api.SERVICE_ACTION_IN:      serviceActionIn,
		api.WRITE_SAME:             writeSame,
		api.WRITE_SAME_16:          writeSame,
		api.COMPARE_AND_WRITE:      compareAndWrite,
		api.UNMAP:                  unmap,
		api.READ_6:                 transfer,
		api.READ_10:                transfer,
		api.READ_12:                transfer,
		api.READ_16:                transfer,
		api.WRITE_6:                transfer,
		api.WRITE_10:               transfer,
		api.WRITE_12:               transfer,
		api.WRITE_16:               transfer,
		api.WRITE_VERIFY:           transfer,
		api.WRITE_VERIFY_12:        transfer,
		api.WRITE_VERIFY_16:        transfer,
	} {
		handlers[op] = h
	}
}

// Execute runs one command (frontend.SCSI): REPORT LUNS and absent LUNs
// here, then on the LU a pending unit attention, a reservation conflict,
// certkit's own handler, or gotgt.
func (t *scsiTarget) Execute(cmd *api.SCSICommand) {
	if len(cmd.SCB) < 16 {
		// Handlers index up to byte 15 of the CDB: pad a short one.
		cmd.SCB = append(slices.Clip(cmd.SCB), make([]byte, 16-len(cmd.SCB))...)
	}
	lun := frontend.GotgtLUN(cmd)
	op := cmd.SCB[0]
	defer func() {
		if r := recover(); r != nil {
			// gotgt indexes short parameter lists in places; a bad command
			// must not take the process down.
			logrus.Warnf("certkit array %s: SCSI layer panicked on opcode 0x%02x: %v", t.iqn, op, r)
			checkCondition(cmd, 0x04, 0x44, 0x00)
		}
	}()
	if api.SCSICommandType(op) == api.REPORT_LUNS {
		t.reportLUNs(cmd)
		return
	}
	l := t.lu(lun)
	if l == nil {
		switch api.SCSICommandType(op) {
		case api.INQUIRY:
			absentInquiry(cmd)
		default:
			// LOGICAL UNIT NOT SUPPORTED (gotgt would say INVALID FIELD IN
			// CDB; hosts take 05/25/00 as "no such LU").
			checkCondition(cmd, 0x05, 0x25, 0x00)
		}
		return
	}
	if l.attention(cmd) {
		return
	}
	if l.conflicts(cmd) {
		cmd.Result = api.SAM_STAT_RESERVATION_CONFLICT
		return
	}
	if h := handlers[op]; h != nil {
		h(t, l, cmd)
		return
	}
	t.gotgt(cmd)
}

// gotgt hands the command to gotgt's SCSI layer.
func (t *scsiTarget) gotgt(cmd *api.SCSICommand) {
	if sharedOps[cmd.SCB[0]] {
		gotgtMu.RLock()
		defer gotgtMu.RUnlock()
	} else {
		gotgtMu.Lock()
		defer gotgtMu.Unlock()
	}
	if t.lu(frontend.GotgtLUN(cmd)) == nil {
		// Removed (luns.go) since Execute found it.
		checkCondition(cmd, 0x05, 0x25, 0x00)
		return
	}
	if t.direct(cmd) { // READ/WRITE on certkit's own stores (filestore.go)
		return
	}
	if err := svc.AddCommandQueue(t.tid, cmd); err != nil {
		checkCondition(cmd, 0x04, 0x44, 0x00)
	}
}

// reportLUNs answers REPORT LUNS in ascending LUN order (gotgt walks a map,
// so its order changes from call to call). LUN 0 is listed even when not
// configured, as gotgt does: hosts address the target through it.
func (t *scsiTarget) reportLUNs(cmd *api.SCSICommand) {
	alloc := binary.BigEndian.Uint32(cmd.SCB[6:10])
	if alloc < 16 {
		checkCondition(cmd, 0x05, 0x24, 0x00) // INVALID FIELD IN CDB
		return
	}
	ids := []uint64{0}
	for id := range t.lus() {
		if id != 0 {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	d := make([]byte, 8, 8+8*len(ids))
	binary.BigEndian.PutUint32(d, uint32(8*len(ids)))
	for _, id := range ids {
		var f uint64
		if id < 256 {
			f = id << 48 // peripheral device addressing
		} else {
			f = (0x40|id>>8&0x3f)<<56 | (id&0xff)<<48 // flat space addressing
		}
		d = binary.BigEndian.AppendUint64(d, f)
	}
	dataIn(cmd, d, int(alloc))
}

// absentInquiry answers standard INQUIRY for a LUN that is not there:
// peripheral qualifier 011b, device type 1Fh (SPC-4 §6.6.2).
func absentInquiry(cmd *api.SCSICommand) {
	if cmd.SCB[1]&1 != 0 { // EVPD
		checkCondition(cmd, 0x05, 0x25, 0x00)
		return
	}
	d := make([]byte, 36)
	d[0] = 0x7f
	d[2] = 0x05 // SPC-3
	d[3] = 0x12 // HISUP, response data format 2
	d[4] = 31
	copy(d[8:16], fmt.Sprintf("%-8s", inquiryV))
	copy(d[16:32], fmt.Sprintf("%-16s", "ARRAY"))
	copy(d[32:36], "0001")
	dataIn(cmd, d, int(binary.BigEndian.Uint16(cmd.SCB[3:5])))
}

// dataIn ends cmd GOOD with data, cut to the allocation length, as its
// Data-In. Resid tells the front end how much the command produced (the
// front end sends at most the Expected Data Transfer Length of it).
func dataIn(cmd *api.SCSICommand, data []byte, alloc int) {
	n := min(len(data), max(alloc, 0))
	if len(cmd.InSDBBuffer.Buffer) < n {
		cmd.InSDBBuffer.Buffer = make([]byte, n)
	}
	copy(cmd.InSDBBuffer.Buffer, data[:n])
	cmd.InSDBBuffer.Resid = uint32(n)
	cmd.Result = api.SAM_STAT_GOOD
	cmd.SenseBuffer = nil
}

func checkCondition(cmd *api.SCSICommand, key, asc, ascq byte) {
	b := make([]byte, 18)
	b[0], b[2], b[7], b[12], b[13] = 0x70, key, 10, asc, ascq
	cmd.Result = api.SAM_STAT_CHECK_CONDITION
	cmd.SenseBuffer = &api.SenseBuffer{Buffer: b, Length: uint32(len(b))}
}

// checkConditionInfo is checkCondition with the INFORMATION field set.
func checkConditionInfo(cmd *api.SCSICommand, key, asc, ascq byte, info uint32) {
	checkCondition(cmd, key, asc, ascq)
	b := cmd.SenseBuffer.Buffer
	b[0] |= 0x80 // VALID
	binary.BigEndian.PutUint32(b[3:7], info)
}

// Sense codes used below.
var (
	errInvalidOpcode   = senseCode{0x20, 0x00}
	errLBAOutOfRange   = senseCode{0x21, 0x00}
	errInvalidCDB      = senseCode{0x24, 0x00}
	errInvalidParam    = senseCode{0x26, 0x00}
	errParamLength     = senseCode{0x1a, 0x00}
	errInvalidRelease  = senseCode{0x26, 0x04} // INVALID RELEASE OF PERSISTENT RESERVATION
	errInvalidInfoUnit = senseCode{0x0e, 0x03} // INVALID FIELD IN INFORMATION UNIT
)

type senseCode struct{ asc, ascq byte }

// illegal ends cmd with ILLEGAL REQUEST and the sense code.
func illegal(cmd *api.SCSICommand, c senseCode) { checkCondition(cmd, 0x05, c.asc, c.ascq) }

// invalidCDBField ends cmd with ILLEGAL REQUEST, INVALID FIELD IN CDB and
// a field pointer to the offending CDB byte (SPC-4 §4.5.2.4.2), so an
// initiator can tell "this service action is not supported" (byte 1) from
// "this field of a supported one is wrong".
func invalidCDBField(cmd *api.SCSICommand, byteIndex uint16) {
	illegal(cmd, errInvalidCDB)
	b := cmd.SenseBuffer.Buffer
	b[15] = 0xc0 // SKSV, C/D: the field is in the CDB
	binary.BigEndian.PutUint16(b[16:18], byteIndex)
}

// ---- Data transfers --------------------------------------------------------

// cdbTransfer reads a READ/WRITE/VERIFY-family CDB: LBA and transfer length
// in blocks.
func cdbTransfer(cdb []byte) (lba uint64, blocks uint32) {
	switch {
	case cdb[0] < 0x20: // 6-byte
		lba = uint64(cdb[1]&0x1f)<<16 | uint64(binary.BigEndian.Uint16(cdb[2:4]))
		blocks = uint32(cdb[4])
		if blocks == 0 && (cdb[0] == byte(api.READ_6) || cdb[0] == byte(api.WRITE_6)) {
			blocks = 256
		}
	case cdb[0] < 0x80: // 10-byte
		lba = uint64(binary.BigEndian.Uint32(cdb[2:6]))
		blocks = uint32(binary.BigEndian.Uint16(cdb[7:9]))
	case cdb[0] < 0xa0: // 16-byte
		lba = binary.BigEndian.Uint64(cdb[2:10])
		blocks = binary.BigEndian.Uint32(cdb[10:14])
	default: // 12-byte
		lba = uint64(binary.BigEndian.Uint32(cdb[2:6]))
		blocks = binary.BigEndian.Uint32(cdb[6:10])
	}
	return lba, blocks
}

// withBlocks returns a copy of cdb asking for n blocks (1..256 for 6-byte).
func withBlocks(cdb []byte, n uint32) []byte {
	c := slices.Clone(cdb)
	switch {
	case c[0] < 0x20:
		c[4] = byte(n) // 256 is 0
	case c[0] < 0x80:
		binary.BigEndian.PutUint16(c[7:9], uint16(n))
	case c[0] < 0xa0:
		binary.BigEndian.PutUint32(c[10:14], n)
	default:
		binary.BigEndian.PutUint32(c[6:10], n)
	}
	return c
}

// inRange checks [lba, lba+blocks) against the LU, failing cmd with LOGICAL
// BLOCK ADDRESS OUT OF RANGE if it is not inside.
func (l *lu) inRange(cmd *api.SCSICommand, lba uint64, blocks uint64) bool {
	if n := l.blocks.Load(); lba >= n || blocks > n-lba {
		illegal(cmd, errLBAOutOfRange)
		return false
	}
	return true
}

// transfer runs READ and WRITE (and WRITE AND VERIFY) in gotgt so that
// what moves is what the CDB and the iSCSI Expected Data Transfer Length
// (EDTL) agree on (RFC 7143 §11.4.5.2, SAM-5 §5.4.3): never more than the
// CDB's transfer length, never more than EDTL, and the residual reported
// against the CDB's length. gotgt alone answers BUSY to a read whose EDTL is
// short and writes the whole Data-Out buffer when EDTL is long.
func transfer(t *scsiTarget, l *lu, cmd *api.SCSICommand) {
	op := api.SCSICommandType(cmd.SCB[0])
	write := op != api.READ_6 && op != api.READ_10 && op != api.READ_12 && op != api.READ_16
	lba, blocks := cdbTransfer(cmd.SCB)
	bs := uint64(1) << l.shift
	want := uint64(blocks) * bs // bytes the CDB moves
	if write {
		out := cmd.OutSDBBuffer
		have := uint64(len(out.Buffer)) // Data-Out the initiator sent (EDTL)
		switch {
		case have >= want:
			out.Buffer, out.Length = out.Buffer[:want], uint32(want)
			t.gotgt(cmd)
		case have%bs != 0:
			// Part of a block: nothing sensible to write.
			illegal(cmd, errInvalidInfoUnit)
		case have == 0:
			if l.inRange(cmd, lba, uint64(blocks)) {
				cmd.Result = api.SAM_STAT_GOOD
			}
		default:
			// Write what came, no more: the first have/bs blocks.
			if !l.inRange(cmd, lba, uint64(blocks)) {
				break
			}
			full := cmd.SCB
			cmd.SCB = withBlocks(full, uint32(have/bs))
			t.gotgt(cmd)
			cmd.SCB = full
		}
		cmd.TL = uint32(want) // the front end reports the residual against it
		return
	}
	in := cmd.InSDBBuffer
	edtl := uint64(in.Length)
	if edtl >= want {
		t.gotgt(cmd)
		return
	}
	// EDTL covers less than the CDB asks: read only the blocks EDTL reaches
	// and report the whole CDB length as produced; the front end sends EDTL
	// bytes with an overflow residual.
	if !l.inRange(cmd, lba, uint64(blocks)) {
		return
	}
	n := (edtl + bs - 1) / bs
	if n > 0 {
		full := cmd.SCB
		cmd.SCB = withBlocks(full, uint32(n))
		if uint64(len(in.Buffer)) < n*bs {
			in.Buffer = make([]byte, n*bs)
		}
		in.Length = uint32(n * bs)
		t.gotgt(cmd)
		cmd.SCB, in.Length = full, uint32(edtl)
		if cmd.Result != api.SAM_STAT_GOOD {
			return
		}
	} else {
		cmd.Result = api.SAM_STAT_GOOD
	}
	in.Resid = uint32(min(want, 1<<32-1))
}

// writeSameChunk bounds the buffer WRITE SAME writes from at once.
const writeSameChunk = 1 << 20

// writeSame implements WRITE SAME(10/16) (SBC-3 §5.42-43) on a fully
// provisioned LU: the one block of Data-Out written to every block of the
// range; a zero block count means "to the last block" (WSNZ = 0 in VPD
// 0xB0). UNMAP, ANCHOR, PBDATA and LBDATA are not supported.
func writeSame(t *scsiTarget, l *lu, cmd *api.SCSICommand) {
	cdb := cmd.SCB
	if cdb[1]&0xfe != 0 { // WRPROTECT, ANCHOR, UNMAP, PBDATA, LBDATA
		illegal(cmd, errInvalidCDB)
		return
	}
	lba, n := cdbTransfer(cdb)
	blocks := uint64(n)
	if n := l.blocks.Load(); blocks == 0 && lba < n {
		blocks = n - lba
	}
	if !l.inRange(cmd, lba, blocks) {
		return
	}
	bs := 1 << l.shift
	if len(cmd.OutSDBBuffer.Buffer) < bs {
		illegal(cmd, errInvalidInfoUnit)
		return
	}
	pattern := cmd.OutSDBBuffer.Buffer[:bs]
	chunk := bytes.Repeat(pattern, int(max(1, min(blocks, uint64(writeSameChunk/bs)))))
	gotgtMu.RLock()
	defer gotgtMu.RUnlock()
	if !t.mapped(l, cmd) {
		return
	}
	off := int64(lba) << l.shift
	for left := int64(blocks) << l.shift; left > 0; {
		n := min(left, int64(len(chunk)))
		if err := l.dev.Storage.Write(chunk[:n], off); err != nil {
			logrus.Warnf("certkit array: LUN %d WRITE SAME at %d: %v", l.id, off, err)
			checkCondition(cmd, 0x03, 0x0c, 0x00) // MEDIUM ERROR, WRITE ERROR
			return
		}
		off += n
		left -= n
	}
	cmd.Result = api.SAM_STAT_GOOD
}

// maxCompareAndWrite is the most blocks one COMPARE AND WRITE may cover
// (VPD 0xB0); ESXi's ATS uses one.
const maxCompareAndWrite = 1

// compareAndWrite implements COMPARE AND WRITE (SBC-3 §5.2) atomically with
// respect to every other command on the target: the Data-Out is N blocks
// to compare, then N blocks to write; a difference ends the command with
// MISCOMPARE 0E/1D/00 and the offset of the first differing byte.
func compareAndWrite(t *scsiTarget, l *lu, cmd *api.SCSICommand) {
	cdb := cmd.SCB
	if cdb[1]&0xe0 != 0 { // WRPROTECT
		illegal(cmd, errInvalidCDB)
		return
	}
	lba := binary.BigEndian.Uint64(cdb[2:10])
	blocks := uint64(cdb[13])
	if blocks == 0 {
		cmd.Result = api.SAM_STAT_GOOD
		return
	}
	if blocks > maxCompareAndWrite {
		illegal(cmd, errInvalidCDB)
		return
	}
	if !l.inRange(cmd, lba, blocks) {
		return
	}
	n := int(blocks) << l.shift
	data := cmd.OutSDBBuffer.Buffer
	cmd.TL = uint32(2 * n)
	if len(data) != 2*n {
		illegal(cmd, errInvalidInfoUnit)
		return
	}
	gotgtMu.Lock() // nothing else reads or writes meanwhile
	defer gotgtMu.Unlock()
	if !t.mapped(l, cmd) {
		return
	}
	off := int64(lba) << l.shift
	cur, err := l.dev.Storage.Read(off, int64(n))
	if err != nil || len(cur) < n {
		checkCondition(cmd, 0x03, 0x11, 0x00) // MEDIUM ERROR, UNRECOVERED READ ERROR
		return
	}
	for i := range n {
		if cur[i] != data[i] {
			checkConditionInfo(cmd, 0x0e, 0x1d, 0x00, uint32(i))
			return
		}
	}
	if err := l.dev.Storage.Write(data[n:], off); err != nil {
		checkCondition(cmd, 0x03, 0x0c, 0x00)
		return
	}
	if cdb[1]&0x08 != 0 { // FUA
		if err := l.dev.Storage.DataSync(off, int64(n)); err != nil {
			checkCondition(cmd, 0x03, 0x0c, 0x00)
			return
		}
	}
	cmd.Result = api.SAM_STAT_GOOD
}

// serviceActionIn answers GET LBA STATUS and leaves READ CAPACITY(16) to
// gotgt. gotgt's GET LBA STATUS returns no data and checks no LBA (it tests
// VERIFY's BYTCHK bit, pkg/scsi/sbc.go SBCGetLbaStatus).
func serviceActionIn(t *scsiTarget, l *lu, cmd *api.SCSICommand) {
	if api.SCSICommandType(cmd.SCB[1]&0x1f) != api.SAI_GET_LBA_STATUS {
		t.gotgt(cmd)
		return
	}
	getLBAStatus(l, cmd)
}

// getLBAStatus is GET LBA STATUS (SBC-3 §5.16) on a fully provisioned LU:
// one descriptor, everything from the LBA on mapped.
func getLBAStatus(l *lu, cmd *api.SCSICommand) {
	lba := binary.BigEndian.Uint64(cmd.SCB[2:10])
	alloc := int(binary.BigEndian.Uint32(cmd.SCB[10:14]))
	if !l.inRange(cmd, lba, 0) {
		return
	}
	d := make([]byte, 8, 24)
	binary.BigEndian.PutUint32(d[0:4], 20) // parameter data length
	d = binary.BigEndian.AppendUint64(d, lba)
	d = binary.BigEndian.AppendUint32(d, uint32(min(l.blocks.Load()-lba, 1<<32-1)))
	d = append(d, 0x00, 0, 0, 0) // PROVISIONING STATUS 0: mapped
	dataIn(cmd, d, alloc)
}

// unmap: certkit's LUs are fully provisioned (VPD 0xB2 LBPU = 0, READ
// CAPACITY(16) LBPME = 0), so UNMAP is not a command they have.
func unmap(t *scsiTarget, l *lu, cmd *api.SCSICommand) { illegal(cmd, errInvalidOpcode) }

// ---- INQUIRY and REPORT SUPPORTED OPERATION CODES ---------------------------

// inquiry answers the VPD pages certkit owns and leaves the rest to gotgt,
// fixing the length gotgt leaves unset.
func inquiry(t *scsiTarget, l *lu, cmd *api.SCSICommand) {
	cdb := cmd.SCB
	alloc := int(binary.BigEndian.Uint16(cdb[3:5]))
	if cdb[1]&0x01 == 0 { // standard INQUIRY
		t.gotgt(cmd)
		return
	}
	page := cdb[2]
	var body []byte
	switch page {
	case 0x00: // supported VPD pages
		body = []byte{0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2}
	case 0xb0: // block limits (SBC-3 §6.5.3)
		body = make([]byte, 0x3c)
		body[1] = maxCompareAndWrite
		// Transfer lengths, unmap counts, write same length: 0 = no limit
		// reported / no UNMAP.
	case 0xb1: // block device characteristics (SBC-3 §6.5.2)
		body = make([]byte, 0x3c)
		binary.BigEndian.PutUint16(body[0:2], 0x0001) // non-rotating medium
	case 0xb2: // logical block provisioning (SBC-3 §6.5.4): fully provisioned
		body = make([]byte, 4)
	default:
		t.gotgt(cmd)
		if cmd.Result == api.SAM_STAT_GOOD && len(cmd.InSDBBuffer.Buffer) >= 4 {
			// gotgt leaves Resid 0 ("all of EDTL") when the page fits.
			full := 4 + int(binary.BigEndian.Uint16(cmd.InSDBBuffer.Buffer[2:4]))
			cmd.InSDBBuffer.Resid = uint32(min(full, alloc))
		}
		return
	}
	d := append([]byte{0x00 /* connected, direct access */, page, 0, 0}, body...)
	binary.BigEndian.PutUint16(d[2:4], uint16(len(body)))
	dataIn(cmd, d, alloc)
}

// opInfo describes a supported command for REPORT SUPPORTED OPERATION CODES.
type opInfo struct {
	op    byte
	sa    uint16
	hasSA bool   // the opcode has service actions
	usage []byte // CDB usage data: bit set = field used; len = CDB length
}

// supportedOps are the commands certkit's LU executes (itself or in gotgt),
// in opcode order, with the CDB bits each one honours.
var supportedOps = []opInfo{
	{op: 0x00, usage: []byte{0x00, 0, 0, 0, 0, 0}},                                                                     // TEST UNIT READY
	{op: 0x03, usage: []byte{0x03, 0x01, 0, 0, 0xff, 0}},                                                               // REQUEST SENSE
	{op: 0x08, usage: []byte{0x08, 0x1f, 0xff, 0xff, 0xff, 0}},                                                         // READ(6)
	{op: 0x0a, usage: []byte{0x0a, 0x1f, 0xff, 0xff, 0xff, 0}},                                                         // WRITE(6)
	{op: 0x12, usage: []byte{0x12, 0x01, 0xff, 0xff, 0xff, 0}},                                                         // INQUIRY
	{op: 0x15, usage: []byte{0x15, 0x11, 0, 0, 0xff, 0}},                                                               // MODE SELECT(6)
	{op: 0x16, usage: []byte{0x16, 0, 0, 0, 0, 0}},                                                                     // RESERVE(6)
	{op: 0x17, usage: []byte{0x17, 0, 0, 0, 0, 0}},                                                                     // RELEASE(6)
	{op: 0x1a, usage: []byte{0x1a, 0x08, 0xff, 0xff, 0xff, 0}},                                                         // MODE SENSE(6)
	{op: 0x25, usage: []byte{0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0}},                                                         // READ CAPACITY(10)
	{op: 0x28, usage: []byte{0x28, 0x18, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, 0}},                                    // READ(10)
	{op: 0x2a, usage: []byte{0x2a, 0x18, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, 0}},                                    // WRITE(10)
	{op: 0x2e, usage: []byte{0x2e, 0x12, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, 0}},                                    // WRITE AND VERIFY(10)
	{op: 0x2f, usage: []byte{0x2f, 0x16, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, 0}},                                    // VERIFY(10)
	{op: 0x35, usage: []byte{0x35, 0, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, 0}},                                       // SYNCHRONIZE CACHE(10)
	{op: 0x41, usage: []byte{0x41, 0, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, 0}},                                       // WRITE SAME(10)
	{op: 0x55, usage: []byte{0x55, 0x11, 0, 0, 0, 0, 0, 0xff, 0xff, 0}},                                                // MODE SELECT(10)
	{op: 0x56, usage: []byte{0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0}},                                                         // RESERVE(10)
	{op: 0x57, usage: []byte{0x57, 0, 0, 0, 0, 0, 0, 0, 0, 0}},                                                         // RELEASE(10)
	{op: 0x5a, usage: []byte{0x5a, 0x18, 0xff, 0xff, 0, 0, 0, 0xff, 0xff, 0}},                                          // MODE SENSE(10)
	{op: 0x5e, sa: 0x00, hasSA: true, usage: []byte{0x5e, 0x1f, 0, 0, 0, 0, 0, 0xff, 0xff, 0}},                         // PR IN: READ KEYS
	{op: 0x5e, sa: 0x01, hasSA: true, usage: []byte{0x5e, 0x1f, 0, 0, 0, 0, 0, 0xff, 0xff, 0}},                         // PR IN: READ RESERVATION
	{op: 0x5e, sa: 0x02, hasSA: true, usage: []byte{0x5e, 0x1f, 0, 0, 0, 0, 0, 0xff, 0xff, 0}},                         // PR IN: REPORT CAPABILITIES
	{op: 0x5e, sa: 0x03, hasSA: true, usage: []byte{0x5e, 0x1f, 0, 0, 0, 0, 0, 0xff, 0xff, 0}},                         // PR IN: READ FULL STATUS
	{op: 0x5f, sa: 0x00, hasSA: true, usage: []byte{0x5f, 0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0}},                // PR OUT: REGISTER
	{op: 0x5f, sa: 0x01, hasSA: true, usage: []byte{0x5f, 0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0}},                // PR OUT: RESERVE
	{op: 0x5f, sa: 0x02, hasSA: true, usage: []byte{0x5f, 0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0}},                // PR OUT: RELEASE
	{op: 0x5f, sa: 0x03, hasSA: true, usage: []byte{0x5f, 0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0}},                // PR OUT: CLEAR
	{op: 0x5f, sa: 0x04, hasSA: true, usage: []byte{0x5f, 0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0}},                // PR OUT: PREEMPT
	{op: 0x5f, sa: 0x05, hasSA: true, usage: []byte{0x5f, 0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0}},                // PR OUT: PREEMPT AND ABORT
	{op: 0x5f, sa: 0x06, hasSA: true, usage: []byte{0x5f, 0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0}},                // PR OUT: REGISTER AND IGNORE EXISTING KEY
	{op: 0x88, usage: cdb16(0x88, 0x18)},                                                                               // READ(16)
	{op: 0x89, usage: []byte{0x89, 0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0xff, 0, 0}},         // COMPARE AND WRITE
	{op: 0x8a, usage: cdb16(0x8a, 0x18)},                                                                               // WRITE(16)
	{op: 0x8e, usage: cdb16(0x8e, 0x12)},                                                                               // WRITE AND VERIFY(16)
	{op: 0x8f, usage: cdb16(0x8f, 0x16)},                                                                               // VERIFY(16)
	{op: 0x91, usage: cdb16(0x91, 0)},                                                                                  // SYNCHRONIZE CACHE(16)
	{op: 0x93, usage: cdb16(0x93, 0)},                                                                                  // WRITE SAME(16)
	{op: 0x9e, sa: 0x10, hasSA: true, usage: []byte{0x9e, 0x1f, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0}}, // READ CAPACITY(16)
	{op: 0x9e, sa: 0x12, hasSA: true, usage: cdb16(0x9e, 0x1f)},                                                        // GET LBA STATUS
	{op: 0xa0, usage: []byte{0xa0, 0, 0xff, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0}},                                    // REPORT LUNS
	{op: 0xa3, sa: 0x0c, hasSA: true, usage: []byte{0xa3, 0x1f, 0x87, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0}}, // REPORT SUPPORTED OPERATION CODES
	{op: 0xa8, usage: []byte{0xa8, 0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0}},                        // READ(12)
	{op: 0xaa, usage: []byte{0xaa, 0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0}},                        // WRITE(12)
	{op: 0xae, usage: []byte{0xae, 0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0}},                        // WRITE AND VERIFY(12)
	{op: 0xaf, usage: []byte{0xaf, 0x16, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0}},                        // VERIFY(12)
}

// cdb16 is the usage data of a 16-byte LBA command: opcode, the flags of
// byte 1, LBA and transfer length used, group number and control not.
func cdb16(op, flags byte) []byte {
	u := make([]byte, 16)
	u[0], u[1] = op, flags
	for i := 2; i < 14; i++ {
		u[i] = 0xff
	}
	return u
}

// maintenanceIn answers REPORT SUPPORTED OPERATION CODES; other MAINTENANCE
// IN service actions go to gotgt (which has none).
func maintenanceIn(t *scsiTarget, l *lu, cmd *api.SCSICommand) {
	if cmd.SCB[1]&0x1f != 0x0c {
		t.gotgt(cmd)
		return
	}
	reportSupportedOpcodes(cmd, supportedOps)
}

// reportSupportedOpcodes answers REPORT SUPPORTED OPERATION CODES
// (SPC-4 §6.35) from ops: every command (reporting options 000b) or one
// (001b by opcode, 010b by opcode and service action, 011b either), with
// command timeouts descriptors when RCTD is set.
func reportSupportedOpcodes(cmd *api.SCSICommand, ops []opInfo) {
	cdb := cmd.SCB
	rctd := cdb[2]&0x80 != 0
	options := cdb[2] & 0x07
	reqOp, reqSA := cdb[3], binary.BigEndian.Uint16(cdb[4:6])
	alloc := int(binary.BigEndian.Uint32(cdb[6:10]))
	timeouts := func(d []byte) []byte {
		// COMMAND TIMEOUTS DESCRIPTOR: length 0Ah, nominal and recommended
		// timeouts unknown (0).
		return append(d, 0x00, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
	}
	if options == 0 {
		d := make([]byte, 4)
		for _, o := range ops {
			flags := byte(0)
			if rctd {
				flags |= 0x02 // CTDP
			}
			if o.hasSA {
				flags |= 0x01 // SERVACTV
			}
			d = append(d, o.op, 0, byte(o.sa>>8), byte(o.sa), 0, flags, 0, byte(len(o.usage)))
			if rctd {
				d = timeouts(d)
			}
		}
		binary.BigEndian.PutUint32(d, uint32(len(d)-4))
		dataIn(cmd, d, alloc)
		return
	}
	if options > 3 {
		invalidCDBField(cmd, 2) // REPORTING OPTIONS
		return
	}
	hasSA := false
	var found *opInfo
	for i := range ops {
		if ops[i].op != reqOp {
			continue
		}
		hasSA = hasSA || ops[i].hasSA
		if !ops[i].hasSA || ops[i].sa == reqSA {
			found = &ops[i]
		}
	}
	if options == 1 && hasSA || options == 2 && !hasSA && found != nil {
		// The reporting options do not fit the requested opcode.
		invalidCDBField(cmd, 3) // REQUESTED OPERATION CODE
		return
	}
	d := []byte{0, 0x01, 0, 0} // SUPPORT 001b: not supported
	if found != nil {
		d[1] = 0x03 // supported, conforming to a standard
		binary.BigEndian.PutUint16(d[2:4], uint16(len(found.usage)))
		d = append(d, found.usage...)
		if rctd {
			d[1] |= 0x80 // CTDP
			d = timeouts(d)
		}
	}
	dataIn(cmd, d, alloc)
}

// ---- Reservations and unit attentions ---------------------------------------

// Persistent reservation types (SPC-4 Table 186).
const (
	prWriteExclusive       = 0x1
	prExclusiveAccess      = 0x3
	prWriteExclusiveRegs   = 0x5
	prExclusiveAccessRegs  = 0x6
	prWriteExclusiveAllReg = 0x7
	prExclusiveAccessAllRg = 0x8
)

// reservations is an LU's reservation state: the SCSI-2 reservation and the
// persistent reservations, kept per array (gotgt keeps one process-wide
// table that outlives the array).
type reservations struct {
	scsi2      *nexusID     // holder of a RESERVE(6)/(10)
	generation uint32       // PRgeneration
	regs       []registrant // in registration order
	prType     byte         // 0: no persistent reservation
	holder     nexusID      // for types other than all registrants
}

type registrant struct {
	nexus nexusID
	key   uint64
	tag   string // the nexus tag, for READ FULL STATUS
}

func (r *reservations) reg(id nexusID) *registrant {
	for i := range r.regs {
		if r.regs[i].nexus == id {
			return &r.regs[i]
		}
	}
	return nil
}

func allRegistrants(t byte) bool { return t == prWriteExclusiveAllReg || t == prExclusiveAccessAllRg }

// isHolder says whether id holds the persistent reservation.
func (r *reservations) isHolder(id nexusID) bool {
	if r.prType == 0 {
		return false
	}
	if allRegistrants(r.prType) {
		return r.reg(id) != nil
	}
	return r.holder == id
}

// oweLocked queues a unit attention for a nexus; l.mu is held.
func (l *lu) oweLocked(id nexusID, c senseCode) {
	q := l.ua[id]
	if slices.Contains(q, c) {
		return
	}
	if len(q) >= 8 { // SPC-4 allows dropping all but the latest
		q = q[1:]
	}
	l.ua[id] = append(q, c)
	l.calm.Store(false)
}

// owe owes UNIT ATTENTION c to every live I_T nexus on each of lus. It is
// the one facility that raises a unit attention for a whole LU: LUN
// inventory and capacity changes (luns.go) and ALUA state changes
// (alua.go) go through it.
func (t *scsiTarget) owe(c senseCode, lus ...*lu) {
	ids := t.liveNexuses()
	for _, l := range lus {
		l.mu.Lock()
		for _, id := range ids {
			l.oweLocked(id, c)
		}
		l.mu.Unlock()
	}
}

// oweAll owes c to every live nexus on every LU (unitAttentions).
func (t *scsiTarget) oweAll(c senseCode) {
	t.owe(c, slices.Collect(maps.Values(t.lus()))...)
}

// attention reports the oldest unit attention owed to cmd's nexus on its
// LU, as lu.attention does (unitAttentions).
func (t *scsiTarget) attention(cmd *api.SCSICommand) bool {
	l := t.lu(frontend.GotgtLUN(cmd))
	return l != nil && l.attention(cmd)
}

// present reports whether a LUN number has an LU (unitAttentions).
func (t *scsiTarget) present(lun uint64) bool { return t.lu(lun) != nil }

// HasLUN says whether the target has LUN lun (frontend.LUNLister).
func (t *scsiTarget) HasLUN(lun uint64) bool { return t.present(lun) }

// attention reports the oldest unit attention owed to the command's nexus
// (SPC-4 §5.14): CHECK CONDITION for any command but INQUIRY, REPORT LUNS
// and REQUEST SENSE, which returns it as its data.
func (l *lu) attention(cmd *api.SCSICommand) bool {
	op := api.SCSICommandType(cmd.SCB[0])
	if op == api.INQUIRY || op == api.REPORT_LUNS || l.calm.Load() {
		return false
	}
	id := nexusID(cmd.ITNexusID)
	l.mu.Lock()
	q := l.ua[id]
	if len(q) == 0 {
		l.mu.Unlock()
		return false
	}
	c := q[0]
	if len(q) == 1 {
		delete(l.ua, id)
	} else {
		l.ua[id] = q[1:]
	}
	l.settleLocked()
	l.mu.Unlock()
	if op == api.REQUEST_SENSE {
		d := make([]byte, 18)
		d[0], d[2], d[7], d[12], d[13] = 0x70, 0x06, 10, c.asc, c.ascq
		dataIn(cmd, d, int(cmd.SCB[4]))
		return true
	}
	checkCondition(cmd, 0x06, c.asc, c.ascq)
	return true
}

// Command classes for reservation conflicts.
const (
	accessAllowed = iota // never conflicts (identification, reservations, capacity)
	accessRead           // reads the medium or its settings
	accessWrite          // changes the medium or its settings
)

// accessClass is how a command fares under a reservation (SPC-4 Table 64,
// SBC-3 Table 13): INQUIRY, REPORT LUNS, REQUEST SENSE, TEST UNIT READY,
// READ CAPACITY, PERSISTENT RESERVE IN/OUT and the MAINTENANCE IN reports
// are allowed; reads conflict with exclusive-access types; everything else
// is a write.
func accessClass(cdb []byte) int {
	switch api.SCSICommandType(cdb[0]) {
	case api.INQUIRY, api.REPORT_LUNS, api.REQUEST_SENSE, api.TEST_UNIT_READY, api.READ_CAPACITY,
		api.PERSISTENT_RESERVE_IN, api.PERSISTENT_RESERVE_OUT, api.MAINT_PROTOCOL_IN,
		api.RESERVE, api.RESERVE_10, api.RELEASE, api.RELEASE_10:
		return accessAllowed
	case api.SERVICE_ACTION_IN:
		if cdb[1]&0x1f == byte(api.SAI_READ_CAPACITY_16) {
			return accessAllowed
		}
		return accessRead
	case api.READ_6, api.READ_10, api.READ_12, api.READ_16, api.VERIFY_10, api.VERIFY_12, api.VERIFY_16,
		api.PRE_FETCH_10, api.PRE_FETCH_16, api.MODE_SENSE, api.MODE_SENSE_10, api.LOG_SENSE:
		return accessRead
	}
	return accessWrite
}

// scsi2Allowed are the commands another nexus's RESERVE(6)/(10) lets
// through (SPC-2 §5.5.1, as Linux's target does): everything else gets
// RESERVATION CONFLICT, TEST UNIT READY and MODE SENSE included.
var scsi2Allowed = map[api.SCSICommandType]bool{
	api.INQUIRY: true, api.REPORT_LUNS: true, api.REQUEST_SENSE: true,
	api.RELEASE: true, api.RELEASE_10: true, api.PERSISTENT_RESERVE_IN: true, api.MAINT_PROTOCOL_IN: true,
}

// conflicts says whether the command meets RESERVATION CONFLICT.
func (l *lu) conflicts(cmd *api.SCSICommand) bool {
	if l.calm.Load() {
		return false
	}
	id := nexusID(cmd.ITNexusID)
	op := api.SCSICommandType(cmd.SCB[0])
	l.mu.Lock()
	defer l.mu.Unlock()
	r := &l.res
	if r.scsi2 != nil && *r.scsi2 != id && !scsi2Allowed[op] {
		return true
	}
	if r.prType == 0 || r.isHolder(id) {
		return false
	}
	class := accessClass(cmd.SCB)
	registered := r.reg(id) != nil
	switch r.prType {
	case prWriteExclusive:
		return class == accessWrite
	case prExclusiveAccess:
		return class != accessAllowed
	case prWriteExclusiveRegs, prWriteExclusiveAllReg:
		return class == accessWrite && !registered
	case prExclusiveAccessRegs, prExclusiveAccessAllRg:
		return class != accessAllowed && !registered
	}
	return false
}

// reserve6 is RESERVE(6)/(10) (SPC-2 §7.21): the LU for one nexus.
func reserve6(t *scsiTarget, l *lu, cmd *api.SCSICommand) {
	if api.SCSICommandType(cmd.SCB[0]) == api.RESERVE_10 && cmd.SCB[1]&0x03 != 0 { // 3RDPTY, LONGID
		illegal(cmd, errInvalidCDB)
		return
	}
	id := nexusID(cmd.ITNexusID)
	l.mu.Lock()
	defer l.mu.Unlock()
	defer l.settleLocked()
	r := &l.res
	// SPC-3 §5.6.3: with persistent registrations in place, RESERVE and
	// RELEASE conflict.
	if len(r.regs) > 0 || r.scsi2 != nil && *r.scsi2 != id {
		cmd.Result = api.SAM_STAT_RESERVATION_CONFLICT
		return
	}
	r.scsi2 = &id
	cmd.Result = api.SAM_STAT_GOOD
}

// release6 is RELEASE(6)/(10): the holder's reservation goes; anyone else's
// RELEASE is a no-op that succeeds.
func release6(t *scsiTarget, l *lu, cmd *api.SCSICommand) {
	id := nexusID(cmd.ITNexusID)
	l.mu.Lock()
	defer l.mu.Unlock()
	defer l.settleLocked()
	r := &l.res
	if len(r.regs) > 0 {
		cmd.Result = api.SAM_STAT_RESERVATION_CONFLICT
		return
	}
	if r.scsi2 != nil && *r.scsi2 == id {
		r.scsi2 = nil
	}
	cmd.Result = api.SAM_STAT_GOOD
}

// persistentReserveIn is PERSISTENT RESERVE IN (SPC-4 §6.14).
func persistentReserveIn(t *scsiTarget, l *lu, cmd *api.SCSICommand) {
	cdb := cmd.SCB
	alloc := int(binary.BigEndian.Uint16(cdb[7:9]))
	l.mu.Lock()
	defer l.mu.Unlock()
	r := &l.res
	d := binary.BigEndian.AppendUint32(nil, r.generation)
	switch cdb[1] & 0x1f {
	case 0x00: // READ KEYS
		d = binary.BigEndian.AppendUint32(d, uint32(8*len(r.regs)))
		for _, g := range r.regs {
			d = binary.BigEndian.AppendUint64(d, g.key)
		}
	case 0x01: // READ RESERVATION
		if r.prType == 0 {
			d = binary.BigEndian.AppendUint32(d, 0)
			break
		}
		var key uint64 // all registrants: key 0 (SPC-4 §6.14.3)
		if !allRegistrants(r.prType) {
			if h := r.reg(r.holder); h != nil {
				key = h.key
			}
		}
		d = binary.BigEndian.AppendUint32(d, 16)
		d = binary.BigEndian.AppendUint64(d, key)
		d = append(d, 0, 0, 0, 0, 0, r.prType, 0, 0) // scope LU (0)
	case 0x02: // REPORT CAPABILITIES
		d = []byte{0, 8,
			0x00,                                   // CRH, SIP_C, ATP_C, PTPL_C: none
			0x80 | 0x10,                            // TMV; ALLOW COMMANDS 001b
			0x80 | 0x40 | 0x20 | 0x08 | 0x02, 0x01, // WR_EX_AR EX_AC_RO WR_EX_RO EX_AC WR_EX | EX_AC_AR
			0, 0}
	case 0x03: // READ FULL STATUS
		d = binary.BigEndian.AppendUint32(d, 0) // additional length, below
		for _, g := range r.regs {
			tid := transportID(g.tag)
			desc := binary.BigEndian.AppendUint64(nil, g.key)
			desc = append(desc, 0, 0, 0, 0, 0, 0)
			if r.isHolder(g.nexus) {
				desc[12] = 0x01 // R_HOLDER
				desc[13] = r.prType
			}
			desc = append(desc, 0, 0, 0, 0)
			desc = binary.BigEndian.AppendUint16(desc, tagTPGT(g.tag)) // relative target port
			desc = binary.BigEndian.AppendUint32(desc, uint32(len(tid)))
			d = append(append(d, desc...), tid...)
		}
		binary.BigEndian.PutUint32(d[4:8], uint32(len(d)-8))
	default:
		illegal(cmd, errInvalidCDB)
		return
	}
	dataIn(cmd, d, alloc)
}

// transportID is the iSCSI TransportID (SPC-4 §7.6.4.6, format 01b:
// initiator port name with ISID) of a nexus tag "iqn,i,0xISID,...".
func transportID(tag string) []byte {
	parts := strings.SplitN(tag, ",", 4)
	name := tag
	if len(parts) >= 3 {
		name = strings.Join(parts[:3], ",")
	}
	n := len(name) + 1 // NUL-terminated
	n = (n + 3) &^ 3   // padded to a multiple of four
	d := make([]byte, 4+n)
	d[0] = 0x40 | 0x05 // format 01b, protocol iSCSI
	binary.BigEndian.PutUint16(d[2:4], uint16(n))
	copy(d[4:], name)
	return d
}

// tagTPGT is the target portal group tag at the end of a nexus tag.
func tagTPGT(tag string) uint16 {
	i := strings.LastIndex(tag, ",t,0x")
	if i < 0 {
		return 0
	}
	var v uint16
	fmt.Sscanf(tag[i+len(",t,0x"):], "%x", &v)
	return v
}

// persistentReserveOut is PERSISTENT RESERVE OUT (SPC-4 §5.13, §6.15):
// REGISTER, REGISTER AND IGNORE EXISTING KEY, RESERVE, RELEASE, CLEAR,
// PREEMPT and PREEMPT AND ABORT (its abort of the preempted nexuses' tasks
// is not modelled) with LU scope; no SPEC_I_PT, ALL_TG_PT or APTPL.
func persistentReserveOut(t *scsiTarget, l *lu, cmd *api.SCSICommand) {
	cdb := cmd.SCB
	sa := cdb[1] & 0x1f
	scope, typ := cdb[2]>>4, cdb[2]&0x0f
	plen := binary.BigEndian.Uint32(cdb[5:9])
	p := cmd.OutSDBBuffer.Buffer
	if sa > 0x06 {
		illegal(cmd, errInvalidCDB) // REGISTER AND MOVE and beyond
		return
	}
	if plen != 24 || len(p) < 24 {
		illegal(cmd, errParamLength)
		return
	}
	key := binary.BigEndian.Uint64(p[0:8])
	saKey := binary.BigEndian.Uint64(p[8:16])
	if p[20]&0x0d != 0 { // SPEC_I_PT, ALL_TG_PT, APTPL: not supported
		illegal(cmd, errInvalidParam)
		return
	}
	id := nexusID(cmd.ITNexusID)
	tag := t.nexusTag(id)
	l.mu.Lock()
	defer l.mu.Unlock()
	defer l.settleLocked()
	r := &l.res
	conflict := func() { cmd.Result = api.SAM_STAT_RESERVATION_CONFLICT }
	if r.scsi2 != nil && *r.scsi2 != id {
		conflict()
		return
	}
	me := r.reg(id)
	if sa == 0x00 || sa == 0x06 { // REGISTER, REGISTER AND IGNORE EXISTING KEY
		if sa == 0x00 && (me == nil && key != 0 || me != nil && key != me.key) {
			conflict()
			return
		}
		switch {
		case me == nil && saKey == 0:
			// Nothing to register or remove.
		case me == nil:
			r.regs = append(r.regs, registrant{nexus: id, key: saKey, tag: tag})
			r.generation++
		case saKey == 0:
			l.unregisterLocked(id)
			r.generation++
		default:
			me.key = saKey
			r.generation++
		}
		cmd.Result = api.SAM_STAT_GOOD
		return
	}
	// Every other service action needs the issuer registered under key.
	if me == nil || me.key != key {
		conflict()
		return
	}
	validType := func() bool {
		switch typ {
		case prWriteExclusive, prExclusiveAccess, prWriteExclusiveRegs, prExclusiveAccessRegs, prWriteExclusiveAllReg, prExclusiveAccessAllRg:
			return scope == 0
		}
		return false
	}
	switch sa {
	case 0x01: // RESERVE
		if !validType() {
			illegal(cmd, errInvalidCDB)
			return
		}
		switch {
		case r.prType == 0:
			r.prType, r.holder = typ, id
		case !r.isHolder(id) || r.prType != typ:
			conflict()
			return
		}
	case 0x02: // RELEASE
		if r.prType == 0 || !r.isHolder(id) {
			break // nothing of ours to release: GOOD
		}
		if r.prType != typ || scope != 0 {
			illegal(cmd, errInvalidRelease)
			return
		}
		l.releaseLocked(id)
	case 0x03: // CLEAR
		for _, g := range r.regs {
			if g.nexus != id {
				l.oweLocked(g.nexus, senseCode{0x2a, 0x03}) // RESERVATIONS PREEMPTED
			}
		}
		r.regs, r.prType = nil, 0
		r.generation++
	case 0x04, 0x05: // PREEMPT, PREEMPT AND ABORT
		if !l.preemptLocked(cmd, id, saKey, typ, validType) {
			return
		}
		r.generation++
	}
	cmd.Result = api.SAM_STAT_GOOD
}

// unregisterLocked removes id's registration; a holder's reservation (not
// of an all-registrants type with registrants left) goes with it.
func (l *lu) unregisterLocked(id nexusID) {
	r := &l.res
	holder := r.isHolder(id)
	r.regs = slices.DeleteFunc(r.regs, func(g registrant) bool { return g.nexus == id })
	if !holder {
		return
	}
	if allRegistrants(r.prType) {
		if len(r.regs) == 0 {
			r.prType = 0
		}
		return
	}
	l.releaseLocked(id)
}

// releaseLocked ends the persistent reservation released by id; the other
// registrants of a registrants-only or all-registrants reservation are owed
// RESERVATIONS RELEASED (SPC-4 §5.13.11.2).
func (l *lu) releaseLocked(id nexusID) {
	r := &l.res
	typ := r.prType
	r.prType = 0
	if typ == prWriteExclusive || typ == prExclusiveAccess {
		return
	}
	for _, g := range r.regs {
		if g.nexus != id {
			l.oweLocked(g.nexus, senseCode{0x2a, 0x04})
		}
	}
}

// preemptLocked is PREEMPT (SPC-4 §5.13.11.4): remove the registrations
// holding saKey and, when they held the reservation, take it with typ.
func (l *lu) preemptLocked(cmd *api.SCSICommand, id nexusID, saKey uint64, typ byte, validType func() bool) bool {
	r := &l.res
	remove := func(match func(registrant) bool) int {
		n := 0
		r.regs = slices.DeleteFunc(r.regs, func(g registrant) bool {
			if g.nexus != id && match(g) {
				l.oweLocked(g.nexus, senseCode{0x2a, 0x05}) // REGISTRATIONS PREEMPTED
				n++
				return true
			}
			return false
		})
		return n
	}
	switch {
	case r.prType == 0 || (allRegistrants(r.prType) && saKey != 0):
		// No reservation to take: remove the registrations with saKey.
		if saKey == 0 {
			illegal(cmd, errInvalidParam)
			return false
		}
		if remove(func(g registrant) bool { return g.key == saKey }) == 0 {
			cmd.Result = api.SAM_STAT_RESERVATION_CONFLICT
			return false
		}
	case allRegistrants(r.prType): // saKey 0: everyone else out, reservation ours
		if !validType() {
			illegal(cmd, errInvalidCDB)
			return false
		}
		remove(func(registrant) bool { return true })
		r.prType, r.holder = typ, id
	default:
		h := r.reg(r.holder)
		if h != nil && h.key == saKey {
			if !validType() {
				illegal(cmd, errInvalidCDB)
				return false
			}
			remove(func(g registrant) bool { return g.key == saKey })
			r.prType, r.holder = typ, id
			break
		}
		if saKey == 0 {
			illegal(cmd, errInvalidParam)
			return false
		}
		if remove(func(g registrant) bool { return g.key == saKey }) == 0 {
			cmd.Result = api.SAM_STAT_RESERVATION_CONFLICT
			return false
		}
	}
	return true
}
