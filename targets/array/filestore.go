package array

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/certkit/certkit/targets/frontend"
	"github.com/gostor/gotgt/pkg/api"
	"github.com/gostor/gotgt/pkg/scsi"
	"golang.org/x/sys/unix"
)

// fileBackend is the gotgt backing-store name of certkit's file LUNs; the
// path after "certkit-file:" is the image file, already sized (prepareFile).
//
// certkit's stores (this one and the memory store) replace gotgt's own on
// the I/O path: gotgt's file store allocates a fresh buffer for every read
// (twice) and copies it into the command's; here READ and WRITE go straight
// between the front end's pooled buffers and the store (direct), and only
// the other commands (WRITE SAME, COMPARE AND WRITE, VERIFY, ...) reach the
// store through gotgt's api.BackingStore interface.
const fileBackend = "certkit-file"

func init() {
	scsi.RegisterBackingStore(fileBackend, func() (api.BackingStore, error) {
		return &fileStore{syncer: fdatasyncer{}}, nil
	})
}

// blockStore is what direct needs of a LU's store: positional I/O into
// caller-owned buffers, and a way to make written data durable.
type blockStore interface {
	ReadAt(b []byte, off int64) error
	WriteAt(b []byte, off int64) error
	Flush() error
}

// syncer makes a file's written data durable. The file store calls it for
// SYNCHRONIZE CACHE and for writes with FUA (or with the write cache off);
// tests swap it to watch those calls.
type syncer interface {
	Sync(f *os.File) error
}

// fdatasyncer syncs with fdatasync(2): the data and the metadata needed to
// read it back, not timestamps.
type fdatasyncer struct{}

func (fdatasyncer) Sync(f *os.File) error {
	c, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := c.Control(func(fd uintptr) {
		for {
			serr = unix.Fdatasync(int(fd))
			if serr != unix.EINTR {
				return
			}
		}
	}); err != nil {
		return err
	}
	return serr
}

// fileStore is the api.BackingStore gotgt drives for one file LU, and the
// blockStore of direct.
type fileStore struct {
	f      *os.File
	size   int64
	syncer syncer
}

func (s *fileStore) Open(_ *api.SCSILu, path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("file backing: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("file backing: %w", err)
	}
	s.f, s.size = f, st.Size()
	return nil
}

func (s *fileStore) Close(*api.SCSILu) error {
	if s.f == nil {
		return nil
	}
	err := s.f.Close()
	s.f = nil
	return err
}

func (s *fileStore) Init(*api.SCSILu, string) error        { return nil }
func (s *fileStore) Exit(*api.SCSILu) error                { return nil }
func (s *fileStore) Size(*api.SCSILu) uint64               { return uint64(s.size) }
func (s *fileStore) DataAdvise(int64, int64, uint32) error { return nil }

func (s *fileStore) check(off, n int64) error {
	if off < 0 || n < 0 || off+n > s.size || off+n < off {
		return fmt.Errorf("file backing %s: %d bytes at offset %d are outside the %d-byte LUN", s.f.Name(), n, off, s.size)
	}
	return nil
}

// ReadAt fills b from offset off (pread).
func (s *fileStore) ReadAt(b []byte, off int64) error {
	if err := s.check(off, int64(len(b))); err != nil {
		return err
	}
	n, err := s.f.ReadAt(b, off)
	if errors.Is(err, io.EOF) { // the file shrank under us: the rest reads as zeros
		clear(b[n:])
		err = nil
	}
	return err
}

// WriteAt writes b at offset off (pwrite).
func (s *fileStore) WriteAt(b []byte, off int64) error {
	if err := s.check(off, int64(len(b))); err != nil {
		return err
	}
	_, err := s.f.WriteAt(b, off)
	return err
}

// Flush makes everything written so far durable.
func (s *fileStore) Flush() error { return s.syncer.Sync(s.f) }

func (s *fileStore) Read(off, n int64) ([]byte, error) {
	if err := s.check(off, n); err != nil {
		return nil, err
	}
	b := make([]byte, n)
	return b, s.ReadAt(b, off)
}

func (s *fileStore) Write(b []byte, off int64) error { return s.WriteAt(b, off) }

// DataSync is gotgt's SYNCHRONIZE CACHE and FUA: the whole file is synced,
// which covers any range asked for.
func (s *fileStore) DataSync(int64, int64) error { return s.Flush() }

// Unmap deallocates the ranges (punching holes), so they read as zeros.
func (s *fileStore) Unmap(ds []api.UnmapBlockDescriptor) error {
	for _, d := range ds {
		off, n := int64(d.Offset), int64(d.TL)
		if err := s.check(off, n); err != nil {
			return err
		}
		if err := unix.Fallocate(int(s.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n); err != nil {
			// No hole punching here (some file systems): write zeros.
			zero := make([]byte, min(n, 1<<20))
			for done := int64(0); done < n; {
				k := min(int64(len(zero)), n-done)
				if err := s.WriteAt(zero[:k], off+done); err != nil {
					return err
				}
				done += k
			}
		}
	}
	return nil
}

var _ blockStore = (*fileStore)(nil)
var _ blockStore = (*memoryStore)(nil)

// direct serves READ(6/10/12/16) and WRITE(6/10/12/16) of a LU on one of
// certkit's stores without gotgt: the front end's Data-In buffer is filled
// by one pread, its Data-Out buffer written by one pwrite. It reports false
// for anything else, which then goes to gotgt. It answers what gotgt's
// SBCReadWrite would for the same command (protection information refused,
// LBA range checked, FUA and a cleared WCE bit syncing the write), except
// that an I/O error is a MEDIUM ERROR rather than BUSY. The caller holds
// gotgtMu (shared), which keeps MODE SELECT from changing the caching page
// meanwhile.
func (t *scsiTarget) direct(cmd *api.SCSICommand) bool {
	cdb := cmd.SCB
	var write bool
	switch cdb[0] {
	case 0x08, 0x28, 0xa8, 0x88: // READ(6/10/12/16)
	case 0x0a, 0x2a, 0xaa, 0x8a: // WRITE(6/10/12/16)
		write = true
	default:
		return false
	}
	l := t.lu(frontend.GotgtLUN(cmd))
	if l == nil || l.dev == nil {
		return false
	}
	bs, ok := l.dev.Storage.(blockStore)
	if !ok {
		return false
	}
	dev := l.dev
	lba, blocks, ok := rwCDB(cdb)
	if !ok {
		return false
	}
	six := cdb[0] == 0x08 || cdb[0] == 0x0a
	if !six && cdb[1]&0xe0 != 0 { // RDPROTECT/WRPROTECT: no protection information
		checkCondition(cmd, 0x05, 0x24, 0x00)
		return true
	}
	if write && (dev.Attrs.Readonly || dev.Attrs.SWP) {
		checkCondition(cmd, 0x07, 0x27, 0x00) // DATA PROTECT, WRITE PROTECTED
		return true
	}
	shift := dev.BlockShift
	capacity := dev.Size >> shift
	if lba >= capacity || uint64(blocks) > capacity-lba {
		checkCondition(cmd, 0x05, 0x21, 0x00) // LOGICAL BLOCK ADDRESS OUT OF RANGE
		return true
	}
	off := int64(lba << shift)
	n := int64(blocks) << shift
	cmd.Offset = uint64(off)
	cmd.TL = uint32(min(n, 1<<32-1))
	if !write {
		in := cmd.InSDBBuffer
		if int64(in.Length) < n || int64(len(in.Buffer)) < n {
			// gotgt refuses a read into a shorter buffer the same way.
			checkCondition(cmd, 0x05, 0x24, 0x00)
			return true
		}
		if err := bs.ReadAt(in.Buffer[:n], off); err != nil {
			checkCondition(cmd, 0x03, 0x11, 0x00) // MEDIUM ERROR, UNRECOVERED READ ERROR
			return true
		}
		in.Resid = uint32(n)
		cmd.Result = api.SAM_STAT_GOOD
		return true
	}
	data := cmd.OutSDBBuffer.Buffer
	if int64(len(data)) > n {
		data = data[:n]
	}
	if err := bs.WriteAt(data, off); err != nil {
		checkCondition(cmd, 0x03, 0x0c, 0x00) // MEDIUM ERROR, WRITE ERROR
		return true
	}
	if fua := !six && cdb[1]&0x08 != 0; fua || !writeCacheEnabled(dev) {
		if err := bs.Flush(); err != nil {
			checkCondition(cmd, 0x03, 0x0c, 0x00)
			return true
		}
	}
	cmd.Result = api.SAM_STAT_GOOD
	return true
}

// rwCDB decodes the LBA and transfer length (in blocks) of a READ or
// WRITE CDB; a 6-byte CDB's length 0 means 256 blocks.
func rwCDB(cdb []byte) (lba uint64, blocks uint32, ok bool) {
	switch cdb[0] {
	case 0x08, 0x0a:
		if len(cdb) < 6 {
			return 0, 0, false
		}
		lba = uint64(cdb[1]&0x1f)<<16 | uint64(cdb[2])<<8 | uint64(cdb[3])
		if blocks = uint32(cdb[4]); blocks == 0 {
			blocks = 256
		}
	case 0x28, 0x2a:
		if len(cdb) < 10 {
			return 0, 0, false
		}
		lba = uint64(binary.BigEndian.Uint32(cdb[2:6]))
		blocks = uint32(binary.BigEndian.Uint16(cdb[7:9]))
	case 0xa8, 0xaa:
		if len(cdb) < 12 {
			return 0, 0, false
		}
		lba = uint64(binary.BigEndian.Uint32(cdb[2:6]))
		blocks = binary.BigEndian.Uint32(cdb[6:10])
	case 0x88, 0x8a:
		if len(cdb) < 16 {
			return 0, 0, false
		}
		lba = binary.BigEndian.Uint64(cdb[2:10])
		blocks = binary.BigEndian.Uint32(cdb[10:14])
	default:
		return 0, 0, false
	}
	return lba, blocks, true
}

// writeCacheEnabled reads the WCE bit of the LU's caching mode page (0x08),
// which MODE SELECT may clear: then every write is synced, as in gotgt.
func writeCacheEnabled(dev *api.SCSILu) bool {
	for _, p := range dev.ModePages {
		if p.PageCode == 0x08 && p.SubPageCode == 0 && len(p.Data) > 0 {
			return p.Data[0]&0x04 != 0
		}
	}
	return true
}
