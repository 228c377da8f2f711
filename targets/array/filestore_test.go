package array

import (
	"bytes"
	"context"
	"encoding/binary"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/certkit/certkit/iscsi"
	"github.com/certkit/certkit/targets/frontend/frontendtest"
)

const fileTestTimeout = 5 * time.Second // any single exchange

// countingSyncer counts the syncs it passes on to fdatasync.
type countingSyncer struct{ n atomic.Int64 }

func (c *countingSyncer) Sync(f *os.File) error {
	c.n.Add(1)
	return fdatasyncer{}.Sync(f)
}

// fileArray starts an array with one file LUN (LUN 0) and a memory LUN (1),
// and puts a counting syncer under the file LUN.
func fileArray(t *testing.T, name string) (*Array, string, *countingSyncer) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "lun0.img")
	cfg := Config{
		Name:        name,
		Target:      "iqn.2024-01.io.certkit:" + name,
		LUNs:        []LUN{{ID: 0, Size: "2MiB", Backing: BackingFile, Path: path}, {ID: 1, Size: "2MiB"}},
		Controllers: []Controller{{Name: "A", Portals: []PortalConfig{{Listen: "127.0.0.1:0"}}}},
	}
	a, err := StartWith(context.Background(), cfg, Options{Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	fs, ok := a.targets[0].scsi.lu(0).dev.Storage.(*fileStore)
	if !ok {
		t.Fatalf("LUN 0 is on %T, want certkit's file store", a.targets[0].scsi.lu(0).dev.Storage)
	}
	sy := &countingSyncer{}
	gotgtMu.Lock() // every use of the store holds gotgtMu
	fs.syncer = sy
	gotgtMu.Unlock()
	return a, path, sy
}

func fileSession(t *testing.T, a *Array, id byte) *frontendtest.Conn {
	t.Helper()
	c, err := frontendtest.Normal(a.Info().Portals[0].Address, "iqn.2024-01.io.certkit:filestore-test", a.Target(), [6]byte{0x80, 0, 0, 0, 2, id}, fileTestTimeout)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func rw16(op byte, lba uint64, blocks uint32, fua bool) []byte {
	cdb := make([]byte, 16)
	cdb[0] = op
	if fua {
		cdb[1] = 0x08
	}
	binary.BigEndian.PutUint64(cdb[2:], lba)
	binary.BigEndian.PutUint32(cdb[10:], blocks)
	return cdb
}

// FUA on WRITE(10/16) and SYNCHRONIZE CACHE(10/16) reach the image file as
// fdatasync; a plain write (write cache on) and a read do not sync.
func TestFUAAndSynchronizeCacheSyncTheFile(t *testing.T) {
	a, path, sy := fileArray(t, "fsync")
	c := fileSession(t, a, 1)
	c.Command(0, []byte{0, 0, 0, 0, 0, 0}, 0, nil) // the UNIT ATTENTION after login, if any
	block := bytes.Repeat([]byte{0x5a}, 512)
	write10 := func(lba uint32, fua bool) []byte {
		cdb := frontendtest.Write10(lba, 1)
		if fua {
			cdb[1] = 0x08
		}
		return cdb
	}
	for _, tc := range []struct {
		name  string
		cdb   []byte
		read  int
		write []byte
		syncs int64
	}{
		{"WRITE(10)", write10(1, false), 0, block, 0},
		{"WRITE(10) FUA", write10(2, true), 0, block, 1},
		{"WRITE(16)", rw16(0x8a, 3, 1, false), 0, block, 0},
		{"WRITE(16) FUA", rw16(0x8a, 4, 1, true), 0, block, 1},
		{"READ(10)", frontendtest.Read10(2, 1), 512, nil, 0},
		{"READ(16) FUA", rw16(0x88, 2, 1, true), 512, nil, 0},
		{"SYNCHRONIZE CACHE(10)", []byte{0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 0, nil, 1},
		{"SYNCHRONIZE CACHE(16)", []byte{0x91, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 0, nil, 1},
	} {
		before := sy.n.Load()
		res, err := c.Command(0, tc.cdb, tc.read, tc.write)
		if err == nil {
			err = res.CheckGood()
		}
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got := sy.n.Load() - before; got != tc.syncs {
			t.Errorf("%s: %d fdatasync calls, want %d", tc.name, got, tc.syncs)
		}
		if tc.read > 0 && !bytes.Equal(res.Data, block) {
			t.Errorf("%s: read back other data than written", tc.name)
		}
	}
	img, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for lba := 1; lba <= 4; lba++ {
		if !bytes.Equal(img[lba*512:(lba+1)*512], block) {
			t.Errorf("block %d of the image file does not hold what was written", lba)
		}
	}
	if !bytes.Equal(img[:512], make([]byte, 512)) {
		t.Error("block 0 of the image file was written")
	}
}

// Reads and writes bypass gotgt on both of certkit's stores and still say
// what gotgt would: out-of-range transfers are ILLEGAL REQUEST 21/00.
func TestDirectTransfersAndTheirLimits(t *testing.T) {
	a, path, _ := fileArray(t, "direct")
	c := fileSession(t, a, 2)
	c.Command(0, []byte{0, 0, 0, 0, 0, 0}, 0, nil)
	img := make([]byte, 2<<20)
	for i := range img {
		img[i] = byte(i * 7)
	}
	if err := os.WriteFile(path, img, 0o644); err != nil { // same inode: the store sees it
		t.Fatal(err)
	}
	for lun := range 2 {
		data := bytes.Repeat([]byte{byte(0x10 + lun)}, 64<<10)
		res, err := c.Command(lun, frontendtest.Write10(100, 128), 0, data)
		if err == nil {
			err = res.CheckGood()
		}
		if err != nil {
			t.Fatalf("LUN %d: WRITE(10) of 64 KiB: %v", lun, err)
		}
		res, err = c.Command(lun, frontendtest.Read10(100, 128), len(data), nil)
		if err == nil {
			err = res.CheckGood()
		}
		if err != nil || !bytes.Equal(res.Data, data) {
			t.Fatalf("LUN %d: READ(10) of 64 KiB: %v (same data: %v)", lun, err, res != nil && bytes.Equal(res.Data, data))
		}
		last := uint32(2<<20/512 - 1)
		for _, cdb := range [][]byte{frontendtest.Read10(last, 2), rw16(0x88, 1<<40, 1, false), frontendtest.Read10(last+1, 0)} {
			res, err := c.Command(lun, cdb, 1024, nil)
			if err != nil {
				t.Fatal(err)
			}
			if k, asc, _ := res.SenseKey(); res.Status != 0x02 || k != 0x05 || asc != 0x21 {
				t.Errorf("LUN %d: READ past the end (CDB % x): status 0x%02x sense %x/%x, want CHECK CONDITION 05/21", lun, cdb[:3], res.Status, k, asc)
			}
		}
	}
	res, err := c.Command(0, frontendtest.Read10(0, 8), 4096, nil)
	if err != nil || res.CheckGood() != nil || !bytes.Equal(res.Data, img[:4096]) {
		t.Errorf("READ(10) of what the file holds: %v %v", err, res)
	}
}

// The interleaving test of the front end, against gotgt and certkit's
// stores: every command completes with the right data.
func TestMixedIOOnFileAndMemoryLUNs(t *testing.T) {
	a, _, _ := fileArray(t, "mixed")
	var sessions []*frontendtest.Session
	for i := range 2 {
		c := fileSession(t, a, byte(10+i))
		c.Command(0, []byte{0, 0, 0, 0, 0, 0}, 0, nil)
		c.Command(1, []byte{0, 0, 0, 0, 0, 0}, 0, nil)
		s := frontendtest.StartSession(c)
		s.ImmediateData = i == 1
		t.Cleanup(func() { s.Close() })
		sessions = append(sessions, s)
	}
	for lun := range 2 {
		err := frontendtest.MixedIO(sessions, frontendtest.Mixed{
			LUN: lun, BlockSize: 512, RegionBlocks: 256, IOGoroutines: 4, NOPGoroutines: 1,
			Rounds: 25, MaxBlocks: 256, Seed: uint64(lun),
		})
		if err != nil {
			t.Fatalf("LUN %d: %v", lun, err)
		}
	}
}

// A LUN RESET taken by the front end reaches the SCSI layer: every nexus
// (the resetting one too) then gets UNIT ATTENTION 06/29/03 once.
func TestLUNResetReachesTheSCSILayer(t *testing.T) {
	a, _, _ := fileArray(t, "reset")
	var conns []*frontendtest.Conn
	for i := range 2 {
		c := fileSession(t, a, byte(20+i))
		for range 3 { // clear whatever attention a new nexus is owed
			c.Command(0, []byte{0, 0, 0, 0, 0, 0}, 0, nil)
		}
		conns = append(conns, c)
	}
	c := conns[0]
	p := iscsi.New(iscsi.OpTaskMgmtReq)
	p.SetImmediate(true)
	p.SetFlags(iscsi.FlagFinal | 5) // LOGICAL UNIT RESET
	p.SetLUN(frontendtest.LUNField(0))
	p.SetITT(c.NextITT())
	p.SetU32(20, iscsi.ReservedTag)
	p.SetCmdSN(c.CmdSN)
	if err := c.Send(p); err != nil {
		t.Fatal(err)
	}
	if r, err := c.Recv(); err != nil || r.Opcode() != iscsi.OpTaskMgmtResp || r.BHS[2] != 0 {
		t.Fatalf("LUN RESET: %v %v", r, err)
	}
	for i, c := range conns {
		res, err := c.Command(0, []byte{0, 0, 0, 0, 0, 0}, 0, nil)
		if err != nil {
			t.Fatal(err)
		}
		if k, asc, ascq := res.SenseKey(); res.Status != 0x02 || k != 0x06 || asc != 0x29 || ascq != 0x03 {
			t.Errorf("session %d: TEST UNIT READY after LUN RESET: status 0x%02x sense %x/%x/%x, want UNIT ATTENTION 29/03", i, res.Status, k, asc, ascq)
		}
	}
}
