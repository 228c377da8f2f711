package conformance_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/certkit/certkit/iscsi/initiator"
	"github.com/certkit/certkit/targets/array"
)

// What iscsi-test-cu found gotgt's SCSI layer getting wrong, checked with
// certkit's own initiator so it holds where libiscsi is not installed.

const (
	scsiTimeout  = 10 * time.Second      // bounds each test's I/O
	pollInterval = 10 * time.Millisecond // paces polls for a state change
	blockSize    = 512
	lun          = 1
)

// startArray starts a one-LUN, two-controller array and returns the
// address of each controller's portal.
func startArray(t *testing.T, name string) (*array.Array, []string) {
	t.Helper()
	t.Setenv("CERTKIT_GOTGT_LOG", "error")
	a, err := array.Start(context.Background(), array.Config{
		Name:   name,
		Target: "iqn.2024-01.io.certkit:" + name,
		LUNs:   []array.LUN{{ID: lun, Size: "4MiB"}},
		Controllers: []array.Controller{
			{Name: "A", Portals: []array.PortalConfig{{Listen: "127.0.0.1:0"}}},
			{Name: "B", Portals: []array.PortalConfig{{Listen: "127.0.0.1:0"}}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	var addrs []string
	for _, p := range a.Info().Portals {
		addrs = append(addrs, p.Address)
	}
	return a, addrs
}

func login(ctx context.Context, t *testing.T, a *array.Array, addr, initiatorName string) *initiator.Session {
	t.Helper()
	s, err := initiator.Login(ctx, initiator.Options{InitiatorName: initiatorName, TargetName: a.Target(), Address: addr})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// cmd runs a CDB and returns the result and, for anything but GOOD, the
// *initiator.SCSIError.
func cmd(ctx context.Context, t *testing.T, s *initiator.Session, cdb []byte, out []byte, readLen int) (*initiator.Result, *initiator.SCSIError) {
	t.Helper()
	r, err := s.Command(ctx, lun, cdb, out, readLen)
	var se *initiator.SCSIError
	if errors.As(err, &se) {
		return r, se
	}
	if err != nil {
		t.Fatalf("CDB % x: %v", cdb, err)
	}
	return r, nil
}

func cdb16(op byte, lba uint64, blocks uint32) []byte {
	c := make([]byte, 16)
	c[0] = op
	binary.BigEndian.PutUint64(c[2:10], lba)
	binary.BigEndian.PutUint32(c[10:14], blocks)
	return c
}

func read(ctx context.Context, t *testing.T, s *initiator.Session, lba uint64, blocks uint32) []byte {
	t.Helper()
	r, se := cmd(ctx, t, s, cdb16(0x88, lba, blocks), nil, int(blocks)*blockSize)
	if se != nil {
		t.Fatalf("READ(16) of %d blocks at %d: %v", blocks, lba, se)
	}
	return r.Data
}

func write(ctx context.Context, t *testing.T, s *initiator.Session, lba uint64, data []byte) *initiator.SCSIError {
	t.Helper()
	_, se := cmd(ctx, t, s, cdb16(0x8a, lba, uint32(len(data)/blockSize)), data, 0)
	return se
}

func fill(b byte, n int) []byte { return bytes.Repeat([]byte{b}, n) }

// WRITE SAME is how ESXi zeroes a disk; gotgt answered GOOD and wrote
// nothing.
func TestWriteSameWritesEveryBlock(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), scsiTimeout)
	defer cancel()
	a, addrs := startArray(t, "ws")
	s := login(ctx, t, a, addrs[0], initiator1)
	if se := write(ctx, t, s, 100, fill('x', 8*blockSize)); se != nil {
		t.Fatal(se)
	}
	pattern := fill('z', blockSize)
	if _, se := cmd(ctx, t, s, cdb16(0x93, 100, 8), pattern, 0); se != nil {
		t.Fatalf("WRITE SAME(16): %v", se)
	}
	if got := read(ctx, t, s, 100, 9); !bytes.Equal(got[:8*blockSize], fill('z', 8*blockSize)) || got[8*blockSize] != 0 {
		t.Errorf("after WRITE SAME of 8 blocks at 100, blocks 100-108 read %q... (first bytes of each)", firstBytes(got))
	}
}

// COMPARE AND WRITE is ESXi's ATS lock: a test-and-set that must not write
// on a miscompare, and must say where the data differed.
func TestCompareAndWriteIsATestAndSet(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), scsiTimeout)
	defer cancel()
	a, addrs := startArray(t, "caw")
	s := login(ctx, t, a, addrs[0], initiator1)
	if se := write(ctx, t, s, 5, fill('a', blockSize)); se != nil {
		t.Fatal(se)
	}
	caw := func(compare, with []byte) *initiator.SCSIError {
		c := make([]byte, 16)
		c[0] = 0x89
		binary.BigEndian.PutUint64(c[2:10], 5)
		c[13] = 1
		_, se := cmd(ctx, t, s, c, append(slices.Clone(compare), with...), 0)
		return se
	}
	if se := caw(fill('a', blockSize), fill('b', blockSize)); se != nil {
		t.Fatalf("COMPARE AND WRITE of matching data: %v", se)
	}
	if got := read(ctx, t, s, 5, 1); !bytes.Equal(got, fill('b', blockSize)) {
		t.Fatalf("after a matching COMPARE AND WRITE the block reads %q...", got[:8])
	}
	stale := fill('b', blockSize)
	stale[100] = 'a'
	se := caw(stale, fill('c', blockSize))
	if se == nil || se.Key != 0x0e || se.ASC != 0x1d {
		t.Fatalf("COMPARE AND WRITE of differing data: %v, want MISCOMPARE 0E/1D/00", se)
	}
	if got := read(ctx, t, s, 5, 1); !bytes.Equal(got, fill('b', blockSize)) {
		t.Errorf("a miscompared COMPARE AND WRITE wrote: block reads %q...", got[:8])
	}
}

// A read whose iSCSI expected length is shorter than the CDB's moves what
// fits and says how much more the CDB asked for; gotgt answered BUSY.
func TestShortExpectedLengthReadsWhatFits(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), scsiTimeout)
	defer cancel()
	a, addrs := startArray(t, "edtl")
	s := login(ctx, t, a, addrs[0], initiator1)
	if se := write(ctx, t, s, 0, append(fill('1', blockSize), fill('2', blockSize)...)); se != nil {
		t.Fatal(se)
	}
	r, se := cmd(ctx, t, s, cdb16(0x88, 0, 2), nil, blockSize)
	if se != nil {
		t.Fatalf("READ(16) of 2 blocks with EDTL of 1: %v", se)
	}
	if !bytes.Equal(r.Data, fill('1', blockSize)) || r.Residual != -blockSize {
		t.Errorf("READ(16) of 2 blocks with EDTL of 1: %d bytes, residual %d; want the first block and an overflow of %d", len(r.Data), r.Residual, blockSize)
	}
}

// SCSI-2 reservations fence every other initiator until the holder
// releases or its session ends (how VMFS locked without ATS).
func TestReserveFencesOtherInitiatorsUntilLogout(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), scsiTimeout)
	defer cancel()
	a, addrs := startArray(t, "res6")
	s1 := login(ctx, t, a, addrs[0], initiator1)
	s2 := login(ctx, t, a, addrs[1], initiator2)
	if _, se := cmd(ctx, t, s1, []byte{0x16, 0, 0, 0, 0, 0}, nil, 0); se != nil {
		t.Fatalf("RESERVE(6): %v", se)
	}
	if se := write(ctx, t, s2, 0, fill('2', blockSize)); se == nil || se.Status != initiator.StatusReservationConflict {
		t.Fatalf("WRITE from another initiator under RESERVE(6): %v, want RESERVATION CONFLICT", se)
	}
	if _, se := cmd(ctx, t, s2, []byte{0x12, 0, 0, 0, 96, 0}, nil, 96); se != nil {
		t.Errorf("INQUIRY from another initiator under RESERVE(6): %v, want GOOD", se)
	}
	if se := write(ctx, t, s1, 0, fill('1', blockSize)); se != nil {
		t.Errorf("WRITE from the holder: %v", se)
	}
	if err := s1.Logout(ctx); err != nil {
		t.Fatal(err)
	}
	// The holder's nexus is gone once its session is: poll, since the
	// target tears the session down after answering the logout.
	deadline := time.Now().Add(scsiTimeout / 2)
	for {
		se := write(ctx, t, s2, 0, fill('2', blockSize))
		if se == nil {
			break
		}
		if se.Status != initiator.StatusReservationConflict || time.Now().After(deadline) {
			t.Fatalf("WRITE after the holder logged out: %v", se)
		}
		time.Sleep(pollInterval)
	}
}

// Persistent reservations: registrants and their keys, a WRITE EXCLUSIVE
// reservation that still lets others read, and CLEAR owing the others a
// UNIT ATTENTION (how clustered VMs share an RDM).
func TestPersistentReservationWriteExclusive(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), scsiTimeout)
	defer cancel()
	a, addrs := startArray(t, "pr")
	s1 := login(ctx, t, a, addrs[0], initiator1)
	s2 := login(ctx, t, a, addrs[1], initiator2)
	prOut := func(s *initiator.Session, sa, typ byte, key, saKey uint64) *initiator.SCSIError {
		p := make([]byte, 24)
		binary.BigEndian.PutUint64(p[0:8], key)
		binary.BigEndian.PutUint64(p[8:16], saKey)
		_, se := cmd(ctx, t, s, []byte{0x5f, sa, typ, 0, 0, 0, 0, 0, 24, 0}, p, 0)
		return se
	}
	for i, s := range []*initiator.Session{s1, s2} {
		if se := prOut(s, 0x00, 0, 0, uint64(0xa1+i)); se != nil {
			t.Fatalf("REGISTER key %x: %v", 0xa1+i, se)
		}
	}
	r, se := cmd(ctx, t, s2, []byte{0x5e, 0x00, 0, 0, 0, 0, 0, 1, 0, 0}, nil, 256)
	if se != nil {
		t.Fatalf("READ KEYS: %v", se)
	}
	if got := fmt.Sprintf("% x", r.Data[8:]); got != "00 00 00 00 00 00 00 a1 00 00 00 00 00 00 00 a2" {
		t.Errorf("READ KEYS lists % x, want keys a1 and a2", r.Data[8:])
	}
	if se := prOut(s1, 0x01, 0x01, 0xa1, 0); se != nil { // RESERVE, WRITE EXCLUSIVE
		t.Fatalf("RESERVE WRITE EXCLUSIVE: %v", se)
	}
	read(ctx, t, s2, 0, 1) // reads are allowed
	if se := write(ctx, t, s2, 0, fill('2', blockSize)); se == nil || se.Status != initiator.StatusReservationConflict {
		t.Fatalf("WRITE from a non-holder under WRITE EXCLUSIVE: %v, want RESERVATION CONFLICT", se)
	}
	if se := prOut(s1, 0x03, 0, 0xa1, 0); se != nil { // CLEAR
		t.Fatalf("CLEAR: %v", se)
	}
	se = write(ctx, t, s2, 0, fill('2', blockSize))
	if se == nil || se.Key != 0x06 || se.ASC != 0x2a || se.ASCQ != 0x03 {
		t.Fatalf("first command of the other registrant after CLEAR: %v, want UNIT ATTENTION 06/2A/03 RESERVATIONS PREEMPTED", se)
	}
	if se := write(ctx, t, s2, 0, fill('2', blockSize)); se != nil {
		t.Errorf("WRITE after CLEAR: %v", se)
	}
}

// firstBytes is the first byte of every block.
func firstBytes(b []byte) []byte {
	var f []byte
	for i := 0; i < len(b); i += blockSize {
		f = append(f, b[i])
	}
	return f
}
