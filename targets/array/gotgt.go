package array

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"os"
	"slices"
	"sync"

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
//     found by TID: each array takes a fresh TID from nextTID;
//   - one LU map keyed by device ID and by target name: device IDs are
//     derived from array name + LUN id (deviceID), so two arrays in one
//     process must have different names, and target IQNs must differ too;
//   - one persistent-reservation table keyed by target name + device ID,
//     with no way to drop entries: a restarted array finds its reservations;
//   - the backing-store registry (certkit's memory store registers in init);
//   - logrus's standard logger, which gotgt logs to: set to warn on first
//     Start unless CERTKIT_GOTGT_LOG names another level (e.g. debug).
//
// gotgt does not lock all of that (AddCommandQueue reads a target's I_T
// nexus map unlocked; the reservation table has no lock at all), so every
// certkit call into gotgt goes through gotgtMu: setup, teardown, nexus
// changes and commands that change shared state hold it exclusively, reads
// and writes of data share it. Nothing else in the process may call gotgt.
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
// array name and LUN id. gotgt reports it in VPD page 0x83 as a locally
// assigned NAA (0x3 << 60 | id), the same on every path and every restart.
func deviceID(arrayName string, lun int) uint64 {
	sum := sha256.Sum256([]byte(fmt.Sprintf("certkit-array/%s/lun/%d", arrayName, lun)))
	return binary.BigEndian.Uint64(sum[:8]) >> 4
}

// NAA is the device name hosts see for a LUN, e.g. "naa.3f1c...".
func NAA(arrayName string, lun int) string {
	return fmt.Sprintf("naa.%016x", uint64(3)<<60|deviceID(arrayName, lun))
}

// scsiTarget is one array's target inside gotgt; it is the frontend.SCSI of
// the array's front end.
type scsiTarget struct {
	iqn   string
	tid   int
	tgt   *api.SCSITarget
	luns  map[uint64]*lu
	mems  []string // memory-store keys to release
	exits []func()
}

type lu struct {
	id    uint64
	devID uint64
	dev   *api.SCSILu
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

// newSCSITarget registers the target, its LUs and its ports with gotgt.
func newSCSITarget(arrayName, iqn string, luns []lunSpec, groups []portGroup) (_ *scsiTarget, err error) {
	quietGotgt()
	gotgtMu.Lock()
	defer gotgtMu.Unlock()
	for _, t := range svc.Targets {
		if t.Name == iqn {
			return nil, fmt.Errorf("target %s is already served by another array in this process; give each array its own target IQN", iqn)
		}
	}
	t := &scsiTarget{iqn: iqn, luns: map[uint64]*lu{}}
	defer func() {
		if err != nil {
			t.releaseLocked()
		}
	}()
	for _, l := range luns {
		id := deviceID(arrayName, l.id)
		var path string
		switch l.backing {
		case BackingFile:
			if err := prepareFile(l.path, l.size); err != nil {
				return nil, fmt.Errorf("LUN %d: %w", l.id, err)
			}
			path = "file:" + l.path
		default:
			key := fmt.Sprintf("%s/%d", arrayName, l.id)
			if err := addMemory(key, l.size); err != nil {
				return nil, fmt.Errorf("LUN %d: %w", l.id, err)
			}
			t.mems = append(t.mems, key)
			path = memoryBackend + ":" + key
		}
		if err := scsi.AddBackendStorage(config.BackendStorage{DeviceID: id, Path: path, Online: true}); err != nil {
			return nil, fmt.Errorf("LUN %d: gotgt backing store %s: %v (is an array named %q already running in this process?)", l.id, path, err, arrayName)
		}
		t.exits = append(t.exits, func() { scsi.DelBackendStorage(id) })
		m := scsi.LUNMapping{TargetName: iqn, LUN: uint64(l.id), DeviceID: id}
		scsi.AddLUNMapping(m)
		t.exits = append(t.exits, func() { scsi.DelLUNMapping(m) })
		dev := scsi.GetLU(iqn, uint64(l.id))
		if dev == nil {
			return nil, fmt.Errorf("LUN %d: gotgt did not map device %d", l.id, id)
		}
		t.exits = append(t.exits, func() { dev.Storage.Close(dev) })
		dev.Attrs.VendorID = inquiryV
		dev.Attrs.ProductID = "ARRAY"
		dev.Attrs.Online = true
		t.luns[uint64(l.id)] = &lu{id: uint64(l.id), devID: id, dev: dev}
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
	for _, k := range t.mems {
		dropMemory(k)
	}
	t.mems = nil
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
	gotgtMu.Lock()
	defer gotgtMu.Unlock()
	scsi.AddITNexus(t.tgt, n)
	return nil
}

// RemoveNexus forgets a session's I_T nexus.
func (t *scsiTarget) RemoveNexus(n *api.ITNexus) {
	gotgtMu.Lock()
	defer gotgtMu.Unlock()
	scsi.RemoveITNexus(t.tgt, n)
}

// sharedOps touch only the LU's data and read-only state: they may run
// concurrently. Everything else (reservations, MODE SELECT, START STOP, ...)
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
		api.UNMAP, api.WRITE_SAME, api.WRITE_SAME_16, api.MAINT_PROTOCOL_IN,
	} {
		m[op] = true
	}
	return m
}()

// Execute runs one command in gotgt (frontend.SCSI).
func (t *scsiTarget) Execute(cmd *api.SCSICommand) {
	lun := frontend.GotgtLUN(cmd)
	op := cmd.SCB[0]
	if api.SCSICommandType(op) == api.REPORT_LUNS {
		t.reportLUNs(cmd)
		return
	}
	if _, ok := t.luns[lun]; !ok {
		switch api.SCSICommandType(op) {
		case api.INQUIRY:
			absentInquiry(cmd)
			return
		default:
			// LOGICAL UNIT NOT SUPPORTED (gotgt would say INVALID FIELD IN
			// CDB; hosts take 05/25/00 as "no such LU").
			checkCondition(cmd, 0x05, 0x25, 0x00)
			return
		}
	}
	if sharedOps[op] {
		gotgtMu.RLock()
		defer gotgtMu.RUnlock()
	} else {
		gotgtMu.Lock()
		defer gotgtMu.Unlock()
	}
	defer func() {
		if r := recover(); r != nil {
			// gotgt indexes short parameter lists in places; a bad command
			// must not take the process down.
			logrus.Warnf("certkit array %s: gotgt panicked on opcode 0x%02x: %v", t.iqn, op, r)
			checkCondition(cmd, 0x04, 0x44, 0x00)
		}
	}()
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
	for id := range t.luns {
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
	copy(cmd.InSDBBuffer.Buffer, d[:min(len(d), int(alloc))])
	cmd.InSDBBuffer.Resid = uint32(min(len(d), int(alloc)))
	cmd.Result = api.SAM_STAT_GOOD
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
	alloc := int(binary.BigEndian.Uint16(cmd.SCB[3:5]))
	n := copy(cmd.InSDBBuffer.Buffer, d[:min(alloc, len(d))])
	cmd.InSDBBuffer.Resid = uint32(n)
	cmd.Result = api.SAM_STAT_GOOD
}

func checkCondition(cmd *api.SCSICommand, key, asc, ascq byte) {
	b := make([]byte, 18)
	b[0], b[2], b[7], b[12], b[13] = 0x70, key, 10, asc, ascq
	cmd.Result = api.SAM_STAT_CHECK_CONDITION
	cmd.SenseBuffer = &api.SenseBuffer{Buffer: b, Length: uint32(len(b))}
}
