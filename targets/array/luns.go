package array

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/certkit/certkit/targets/control"
	"github.com/gostor/gotgt/pkg/api"
)

// LUNs at run time (control.LUNManager): the harness adds, removes and
// resizes LUNs while hosts are logged in, and hashes a LUN's backing store
// to prove that every write the array acknowledged is in it. Each target
// has its own LUNs (Array.LUNsOf); a change to one target's LUNs concerns
// only that target's nexuses.
//
// What hosts see is what a real array shows them:
//   - add: REPORT LUNS lists the new LUN at once, and every other LU owes
//     each I_T nexus UNIT ATTENTION 06/3F/0E REPORTED LUNS DATA HAS CHANGED
//     (SPC-4, REPORT LUNS; as in Linux's target, the new LU owes nothing);
//   - remove: commands to the LUN end with 05/25/00 LOGICAL UNIT NOT
//     SUPPORTED on every path, commands in flight on it included; the
//     remaining LUs owe 06/3F/0E; a file-backed LUN's image stays on disk;
//   - resize: the LU owes each nexus 06/2A/09 CAPACITY DATA HAS CHANGED and
//     READ CAPACITY (and the MODE SENSE block descriptor) report the new
//     size. Growing is always allowed; shrinking only with
//     Options.AllowShrink, and the data past the new end is lost.
//
// Unit attentions go through scsiTarget.owe (gotgt.go), the bookkeeping
// ALUA uses too. Changes hold gotgtMu exclusively, so no command is inside
// gotgt or a store meanwhile; a.mu orders changes among themselves.

// Additional sense codes of the unit attentions raised here.
var (
	uaReportedLUNsChanged = senseCode{0x3f, 0x0e} // REPORTED LUNS DATA HAS CHANGED
	uaCapacityChanged     = senseCode{0x2a, 0x09} // CAPACITY DATA HAS CHANGED
)

// maxLUN is the highest LUN number an array serves (as in Config).
const maxLUN = 16383

// targetLUNs manages the LUNs of one target of an array
// (control.LUNManager); Array.LUNsOf hands it out. LUN ids are the
// target's own: each target has its own LUN 0.
type targetLUNs struct {
	a *Array
	t *target
}

// LUNsOf returns the LUN management of one of the array's targets, named
// by IQN (case-insensitively): add, remove, resize and checksum as the
// Array's own methods do for an array of one target.
func (a *Array) LUNsOf(iqn string) (control.LUNManager, error) {
	for _, t := range a.targets {
		if strings.EqualFold(t.name, iqn) {
			return &targetLUNs{a: a, t: t}, nil
		}
	}
	return nil, control.NotFoundf("array %s: no target %q (targets: %s)", a.cfg.Name, iqn, strings.Join(a.Targets(), ", "))
}

// onlyTarget is the LUN management of the array's one target; with
// several targets the caller must name one (LUNsOf).
func (a *Array) onlyTarget(what string) (*targetLUNs, error) {
	if len(a.targets) == 1 {
		return &targetLUNs{a: a, t: a.targets[0]}, nil
	}
	return nil, control.Invalidf("array %s serves %d targets (%s): say which target's LUN to %s (LUN ids are per target)",
		a.cfg.Name, len(a.targets), strings.Join(a.Targets(), ", "), what)
}

// AddLUN adds a LUN to the array's one target (control.LUNManager); an
// array of several targets refuses it: use LUNsOf.
func (a *Array) AddLUN(req control.AddLUNRequest) (control.LUN, error) {
	m, err := a.onlyTarget("add")
	if err != nil {
		return control.LUN{}, err
	}
	return m.AddLUN(req)
}

// RemoveLUN removes a LUN of the array's one target (control.LUNManager);
// an array of several targets refuses it: use LUNsOf.
func (a *Array) RemoveLUN(id int) error {
	m, err := a.onlyTarget("remove")
	if err != nil {
		return err
	}
	return m.RemoveLUN(id)
}

// ResizeLUN changes the size of a LUN of the array's one target
// (control.LUNManager); an array of several targets refuses it: use LUNsOf.
func (a *Array) ResizeLUN(id int, size string) (control.LUN, error) {
	m, err := a.onlyTarget("resize")
	if err != nil {
		return control.LUN{}, err
	}
	return m.ResizeLUN(id, size)
}

// Checksum hashes a LUN of the array's one target as its store holds it
// (control.LUNManager; see targetLUNs.Checksum); an array of several
// targets refuses it: use LUNsOf.
func (a *Array) Checksum(id int, offset, length int64) (string, error) {
	m, err := a.onlyTarget("checksum")
	if err != nil {
		return "", err
	}
	return m.Checksum(id, offset, length)
}

// what names the target in errors: "array NAME, target IQN".
func (m *targetLUNs) what() string { return "array " + m.a.cfg.Name + ", target " + m.t.name }

// AddLUN adds a LUN to the target.
func (m *targetLUNs) AddLUN(req control.AddLUNRequest) (control.LUN, error) {
	a, sc := m.a, m.t.scsi
	spec, err := m.checkAddLUN(req)
	if err != nil {
		return control.LUN{}, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return control.LUN{}, fmt.Errorf("array %s is closed", a.cfg.Name)
	}
	lus := sc.lus()
	if l := lus[uint64(req.ID)]; l != nil {
		return control.LUN{}, control.Conflictf("%s: LUN %d exists (%d bytes, %s); remove it first or choose another id (LUNs in use: %v)",
			m.what(), req.ID, lunInfo(l).SizeBytes, lunInfo(l).NAA, slices.Sorted(maps.Keys(lus)))
	}
	if spec.backing == BackingFile {
		for _, t := range a.targets { // an image file belongs to one LUN of the whole array
			for _, l := range t.scsi.lus() {
				if l.spec.backing == BackingFile && filepath.Clean(l.spec.path) == filepath.Clean(spec.path) {
					owner := fmt.Sprintf("LUN %d", l.id)
					if t != m.t {
						owner = fmt.Sprintf("LUN %d of target %s", l.id, t.name)
					}
					return control.LUN{}, control.Conflictf("%s: %s already keeps its data in %s; give LUN %d its own image file", m.what(), owner, spec.path, req.ID)
				}
			}
		}
	}
	l, err := sc.addLU(spec)
	if err != nil {
		return control.LUN{}, fmt.Errorf("%s: add %w", m.what(), err)
	}
	others := make([]*lu, 0, len(lus))
	for _, o := range lus {
		others = append(others, o)
	}
	sc.owe(uaReportedLUNsChanged, others...)
	return lunInfo(l), nil
}

// checkAddLUN validates an add request; errors are control.Invalidf.
func (m *targetLUNs) checkAddLUN(req control.AddLUNRequest) (lunSpec, error) {
	bad := func(format string, args ...any) (lunSpec, error) {
		return lunSpec{}, control.Invalidf("%s: add LUN %d: "+format, append([]any{m.what(), req.ID}, args...)...)
	}
	if req.ID < 0 || req.ID > maxLUN {
		return bad("id: want 0..%d", maxLUN)
	}
	size, err := ParseSize(req.Size)
	if err != nil {
		return bad("size %v", err)
	}
	spec := lunSpec{id: req.ID, size: size, backing: req.Backing, path: req.Path}
	switch req.Backing {
	case "", BackingMemory:
		spec.backing = BackingMemory
		if req.Path != "" {
			return bad("path %q: only file backing has a path; drop it or set backing to file", req.Path)
		}
	case BackingFile:
		if !filepath.IsAbs(req.Path) {
			return bad("path %q: file backing needs the absolute path of the image file on the array's host", req.Path)
		}
		st, err := os.Stat(req.Path)
		switch {
		case err == nil && !st.Mode().IsRegular():
			return bad("path %s is not a regular file", req.Path)
		case err == nil && st.Size() > size:
			return bad("image %s is %d bytes, larger than size %d: raise size or use another path", req.Path, st.Size(), size)
		case os.IsNotExist(err):
			if d, derr := os.Stat(filepath.Dir(req.Path)); derr != nil || !d.IsDir() {
				return bad("path %s: directory %s does not exist on the array's host", req.Path, filepath.Dir(req.Path))
			}
		case err != nil:
			return bad("path %s: %v", req.Path, err)
		}
	default:
		return bad("backing %q: want memory or file", req.Backing)
	}
	return spec, nil
}

// RemoveLUN removes a LUN of the target.
func (m *targetLUNs) RemoveLUN(id int) error {
	a, sc := m.a, m.t.scsi
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return fmt.Errorf("array %s is closed", a.cfg.Name)
	}
	l, err := m.lun(id)
	if err != nil {
		return err
	}
	sc.removeLU(l)
	sc.owe(uaReportedLUNsChanged, slices.Collect(maps.Values(sc.lus()))...)
	return nil
}

// ResizeLUN changes the size of a LUN of the target.
func (m *targetLUNs) ResizeLUN(id int, size string) (control.LUN, error) {
	a, sc := m.a, m.t.scsi
	n, err := ParseSize(size)
	if err != nil {
		return control.LUN{}, control.Invalidf("%s: resize LUN %d: size %v", m.what(), id, err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return control.LUN{}, fmt.Errorf("array %s is closed", a.cfg.Name)
	}
	l, err := m.lun(id)
	if err != nil {
		return control.LUN{}, err
	}
	cur := l.size()
	switch {
	case n == cur:
		return lunInfo(l), nil // capacity unchanged: nothing to tell hosts
	case n < cur && !a.allowShrink:
		return control.LUN{}, control.Invalidf("%s: resize LUN %d to %s: that is smaller than its %d bytes, and this array only grows LUNs "+
			"(shrinking loses the data past the new end; start the array with Options.AllowShrink to allow it)", m.what(), id, size, cur)
	}
	if err := sc.resizeLU(l, n); err != nil {
		return control.LUN{}, fmt.Errorf("%s: resize LUN %d to %d bytes: %w", m.what(), id, n, err)
	}
	sc.owe(uaCapacityChanged, l)
	return lunInfo(l), nil
}

// checksumChunk is how much Checksum reads at once, with gotgtMu shared.
const checksumChunk = 1 << 20

// Checksum is the SHA-256 (hex) of length bytes of a LUN of the target from
// offset as its backing store holds them, read from the store and not
// through iSCSI; length 0 means to the end of the LUN. Writes that run
// meanwhile may or may not be included.
func (m *targetLUNs) Checksum(id int, offset, length int64) (string, error) {
	a := m.a
	a.mu.Lock()
	l, err := m.lun(id)
	closed := a.closed
	a.mu.Unlock()
	if closed {
		return "", fmt.Errorf("array %s is closed", a.cfg.Name)
	}
	if err != nil {
		return "", err
	}
	size := l.size()
	if offset < 0 || length < 0 || offset > size {
		return "", control.Invalidf("%s: checksum of LUN %d: offset %d, length %d: want 0 <= offset <= %d (the LUN's size) and length >= 0", m.what(), id, offset, length, size)
	}
	if length == 0 {
		length = size - offset
	}
	if length > size-offset {
		return "", control.Invalidf("%s: checksum of LUN %d: %d bytes at offset %d end past the LUN's %d bytes", m.what(), id, length, offset, size)
	}
	h := sha256.New()
	buf := make([]byte, min(length, checksumChunk))
	for done := int64(0); done < length; {
		n := min(int64(len(buf)), length-done)
		if err := m.t.scsi.readLU(l, buf[:n], offset+done); err != nil {
			return "", fmt.Errorf("%s: checksum of LUN %d: %w", m.what(), id, err)
		}
		h.Write(buf[:n])
		done += n
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// lun finds a LUN of the target by number; a.mu is held.
func (m *targetLUNs) lun(id int) (*lu, error) {
	lus := m.t.scsi.lus()
	if id >= 0 {
		if l := lus[uint64(id)]; l != nil {
			return l, nil
		}
	}
	return nil, control.NotFoundf("%s: no LUN %d (LUNs: %v)", m.what(), id, slices.Sorted(maps.Keys(lus)))
}

// luns describes a target's LUNs in LUN order (Info).
func (a *Array) luns(t *target) []control.LUN {
	lus := t.scsi.lus()
	out := make([]control.LUN, 0, len(lus))
	for _, id := range slices.Sorted(maps.Keys(lus)) {
		out = append(out, lunInfo(lus[id]))
	}
	return out
}

// lunInfo describes an LU; its NAA is the one VPD page 0x83 reports.
func lunInfo(l *lu) control.LUN {
	return control.LUN{ID: int(l.id), NAA: fmt.Sprintf("naa.%016x", uint64(3)<<60|l.devID), SizeBytes: l.size()}
}

// size is the LU's capacity in bytes.
func (l *lu) size() int64 { return int64(l.blocks.Load() << l.shift) }

// addLU creates an LU and publishes it: from here on commands reach it.
func (t *scsiTarget) addLU(spec lunSpec) (*lu, error) {
	gotgtMu.Lock()
	defer gotgtMu.Unlock()
	l, err := t.newLULocked(spec)
	if err != nil {
		return nil, err
	}
	m := maps.Clone(t.lus())
	if m == nil {
		m = map[uint64]*lu{}
	}
	m[l.id] = l
	t.luns.Store(&m)
	return l, nil
}

// removeLU unpublishes an LU and releases it. Commands that found it
// before see it gone once they take gotgtMu (t.gotgt, mapped).
func (t *scsiTarget) removeLU(l *lu) {
	gotgtMu.Lock()
	defer gotgtMu.Unlock()
	m := maps.Clone(t.lus())
	delete(m, l.id)
	t.luns.Store(&m)
	l.closeLocked()
}

// mapped reports whether l is still the LU of its LUN number, ending cmd
// with LOGICAL UNIT NOT SUPPORTED if it was removed since Execute found it.
// gotgtMu is held.
func (t *scsiTarget) mapped(l *lu, cmd *api.SCSICommand) bool {
	if t.lu(l.id) == l {
		return true
	}
	checkCondition(cmd, 0x05, 0x25, 0x00)
	return false
}

// resizable is a store whose size can change (certkit's memory and file
// stores).
type resizable interface {
	resize(size int64) error
}

// resizeLU changes the LU's store and every size gotgt and certkit keep.
func (t *scsiTarget) resizeLU(l *lu, size int64) error {
	gotgtMu.Lock()
	defer gotgtMu.Unlock()
	st, ok := l.dev.Storage.(resizable)
	if !ok {
		return fmt.Errorf("its %T store cannot change size", l.dev.Storage)
	}
	if err := st.resize(size); err != nil {
		return err
	}
	l.dev.Size = uint64(size)
	blocks := uint64(size) >> l.shift
	if mbd := l.dev.ModeBlockDescriptor; len(mbd) >= 4 {
		// MODE SENSE's block descriptor: the number of blocks, all ones
		// when it does not fit (as gotgt fills it in).
		binary.BigEndian.PutUint32(mbd[0:4], uint32(min(blocks, 0xffffffff)))
	}
	l.blocks.Store(blocks)
	return nil
}

// readLU fills b from the LU's store at off, failing if the LU was removed
// or shrunk past the range meanwhile.
func (t *scsiTarget) readLU(l *lu, b []byte, off int64) error {
	gotgtMu.RLock()
	defer gotgtMu.RUnlock()
	if t.lu(l.id) != l {
		return control.Conflictf("LUN %d was removed meanwhile", l.id)
	}
	if end := off + int64(len(b)); end > int64(l.dev.Size) {
		return control.Conflictf("LUN %d shrank to %d bytes meanwhile, before offset %d", l.id, l.dev.Size, end)
	}
	if bs, ok := l.dev.Storage.(blockStore); ok {
		return bs.ReadAt(b, off)
	}
	d, err := l.dev.Storage.Read(off, int64(len(b)))
	if err == nil && len(d) < len(b) {
		err = fmt.Errorf("store returned %d of %d bytes at offset %d", len(d), len(b), off)
	}
	copy(b, d)
	return err
}

// resize grows or shrinks a memory LUN; a shrink frees the chunks past the
// end and zeroes the rest of the last one, so a later growth reads zeros.
func (s *memoryStore) resize(size int64) error {
	m := s.m
	m.mu.Lock()
	defer m.mu.Unlock()
	n := int((size + chunkSize - 1) / chunkSize)
	if n < len(m.chunks) {
		clear(m.chunks[n:])
		m.chunks = slices.Clip(m.chunks[:n])
	} else {
		m.chunks = append(m.chunks, make([][]byte, n-len(m.chunks))...)
	}
	if tail := size % chunkSize; tail != 0 && n > 0 && m.chunks[n-1] != nil && size < m.size {
		clear(m.chunks[n-1][tail:])
	}
	m.size = size
	return nil
}

// resize truncates or extends a file LUN's image (sparse when extended).
func (s *fileStore) resize(size int64) error {
	if err := s.f.Truncate(size); err != nil {
		return fmt.Errorf("file backing %s: resize to %d bytes: %w", s.f.Name(), size, err)
	}
	s.size = size
	return nil
}

var (
	_ control.LUNManager = (*Array)(nil)
	_ control.LUNManager = (*targetLUNs)(nil)
	_ resizable          = (*memoryStore)(nil)
	_ resizable          = (*fileStore)(nil)
)
