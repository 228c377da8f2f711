package array_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/certkit/certkit/iscsi/initiator"
	"github.com/certkit/certkit/targets/array"
	"github.com/certkit/certkit/targets/control"
)

// Sense data of LUN changes as hosts see them.
const (
	ua                = 0x06 // UNIT ATTENTION
	illegal           = 0x05 // ILLEGAL REQUEST
	ascLUNsChanged    = 0x3f // with ASCQ 0x0e: REPORTED LUNS DATA HAS CHANGED
	ascqLUNsChanged   = 0x0e
	ascCapacity       = 0x2a // with ASCQ 0x09: CAPACITY DATA HAS CHANGED
	ascqCapacity      = 0x09
	ascNotSupported   = 0x25 // LOGICAL UNIT NOT SUPPORTED
	ascLBAOutOfRange  = 0x21
	blockSize         = 512
	initialLUNs       = "[0 7]" // config()'s LUNs
	initialLUN7Blocks = 2 << 20 / blockSize
)

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// bothControllers logs in once through each controller: two I_T nexuses.
func bothControllers(t *testing.T, ctx context.Context, a *array.Array) []*initiator.Session {
	return []*initiator.Session{login(t, ctx, a, "A0", 1), login(t, ctx, a, "B0", 2)}
}

func reportLUNs(t *testing.T, ctx context.Context, s *initiator.Session) string {
	t.Helper()
	luns, err := s.ReportLUNs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprint(luns)
}

func TestAddedLUNIsReportedAfterAUnitAttentionOnEveryNexus(t *testing.T) {
	a := startArray(t, config("lun-add"), array.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	sessions := bothControllers(t, ctx, a)

	l, err := a.AddLUN(control.AddLUNRequest{ID: 3, Size: "1MiB"})
	if err != nil {
		t.Fatal(err)
	}
	if want := (control.LUN{ID: 3, NAA: array.NAA("lun-add", 3), SizeBytes: 1 << 20}); l != want {
		t.Fatalf("AddLUN = %+v, want %+v", l, want)
	}
	for i, s := range sessions {
		// Every LU that was there owes each nexus the UA, once.
		for _, lun := range []uint64{0, 7} {
			wantSense(t, s.TestUnitReady(ctx, lun), ua, ascLUNsChanged, ascqLUNsChanged)
			if err := s.TestUnitReady(ctx, lun); err != nil {
				t.Fatalf("session %d: LUN %d: second TEST UNIT READY: %v (the UA is reported once)", i, lun, err)
			}
		}
		if got := reportLUNs(t, ctx, s); got != "[0 3 7]" {
			t.Fatalf("session %d: REPORT LUNS after the UA = %s, want [0 3 7]", i, got)
		}
		// The new LU owes nothing and works.
		if err := s.TestUnitReady(ctx, 3); err != nil {
			t.Fatalf("session %d: new LUN 3: %v", i, err)
		}
		blocks, bs, err := s.ReadCapacity(ctx, 3)
		if err != nil || blocks*uint64(bs) != 1<<20 {
			t.Fatalf("session %d: READ CAPACITY of LUN 3 = %d x %d, %v; want 1 MiB", i, blocks, bs, err)
		}
		vpd, err := s.Inquiry(ctx, 3, true, 0x83)
		if err != nil {
			t.Fatal(err)
		}
		if naa, err := initiator.DeviceNAA(vpd); err != nil || naa != l.NAA {
			t.Errorf("session %d: LUN 3 NAA %s %v, want %s", i, naa, err, l.NAA)
		}
	}
	data := bytes.Repeat([]byte("certkit!"), 512)
	if err := sessions[0].Write(ctx, 3, 10, data, blockSize); err != nil {
		t.Fatal(err)
	}
	if got, err := sessions[1].Read(ctx, 3, 10, uint32(len(data)/blockSize), blockSize); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back through the other controller: %d bytes, %v", len(got), err)
	}
	if luns := a.Info().Targets[0].LUNs; len(luns) != 3 || luns[1] != l {
		t.Fatalf("Info LUNs = %+v, want LUN 3 between 0 and 7", luns)
	}
}

func TestChecksumProvesAcknowledgedWritesAreInTheStore(t *testing.T) {
	dir := t.TempDir()
	a := startArray(t, config("lun-sum"), array.Options{})
	img := filepath.Join(dir, "lun5.img")
	if _, err := a.AddLUN(control.AddLUNRequest{ID: 5, Size: "1MiB", Backing: array.BackingFile, Path: img}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	s := login(t, ctx, a, "B0", 1)
	for _, lun := range []uint64{0, 5} {
		_ = s.TestUnitReady(ctx, lun) // take LUN 0's REPORTED LUNS DATA HAS CHANGED
	}
	for _, lun := range []int{0, 5} { // memory, file
		// Concurrent writers; ranges cross the memory store's 64 KiB chunks.
		type written struct {
			off  int64
			data []byte
		}
		var (
			wg  sync.WaitGroup
			mu  sync.Mutex
			all []written
		)
		for w := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				data := make([]byte, (w+1)*8*blockSize)
				rand.New(rand.NewSource(int64(lun*100 + w))).Read(data)
				lba := uint64(w*256 + 120)
				if err := s.Write(ctx, uint64(lun), lba, data, blockSize); err != nil {
					t.Errorf("LUN %d writer %d: %v", lun, w, err)
					return
				}
				mu.Lock()
				all = append(all, written{int64(lba) * blockSize, data})
				mu.Unlock()
			}()
		}
		wg.Wait()
		for _, w := range all {
			got, err := a.Checksum(lun, w.off, int64(len(w.data)))
			if err != nil {
				t.Fatal(err)
			}
			if got != sha(w.data) {
				t.Errorf("LUN %d: %d bytes at %d: store has sha256 %s, the write was %s", lun, len(w.data), w.off, got, sha(w.data))
			}
		}
		// Negative control: a range nobody wrote is zeros, not the data.
		if got, err := a.Checksum(lun, 0, 4096); err != nil || got != sha(make([]byte, 4096)) {
			t.Errorf("LUN %d: unwritten range: %s %v, want the sha256 of zeros", lun, got, err)
		}
	}
	// The whole file LUN, length 0 meaning to the end, is the image on disk.
	whole, err := a.Checksum(5, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.ReadFile(img)
	if err != nil || whole != sha(f) || len(f) != 1<<20 {
		t.Fatalf("Checksum of all of LUN 5 = %s; the image file (%d bytes, %v) hashes to %s", whole, len(f), err, sha(f))
	}
}

func TestResizeRaisesCapacityDataHasChangedAndReadCapacityFollows(t *testing.T) {
	a := startArray(t, config("lun-grow"), array.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	sessions := bothControllers(t, ctx, a)
	data := bytes.Repeat([]byte{0xa5}, blockSize)
	if err := sessions[0].Write(ctx, 7, initialLUN7Blocks-1, data, blockSize); err != nil {
		t.Fatal(err)
	}

	l, err := a.ResizeLUN(7, "3MiB")
	if err != nil {
		t.Fatal(err)
	}
	if l.ID != 7 || l.SizeBytes != 3<<20 || l.NAA != array.NAA("lun-grow", 7) {
		t.Fatalf("ResizeLUN = %+v, want LUN 7 of 3 MiB", l)
	}
	for i, s := range sessions {
		_, err := s.Read(ctx, 7, 0, 1, blockSize)
		wantSense(t, err, ua, ascCapacity, ascqCapacity)
		blocks, bs, err := s.ReadCapacity(ctx, 7)
		if err != nil || blocks*uint64(bs) != 3<<20 {
			t.Fatalf("session %d: READ CAPACITY after the resize: %d x %d, %v; want 3 MiB", i, blocks, bs, err)
		}
		if err := s.TestUnitReady(ctx, 0); err != nil {
			t.Fatalf("session %d: LUN 0 was not resized and owes nothing: %v", i, err)
		}
	}
	// Old data stays, the new blocks are usable and start as zeros.
	if got, err := sessions[1].Read(ctx, 7, initialLUN7Blocks-1, 2, blockSize); err != nil ||
		!bytes.Equal(got[:blockSize], data) || !bytes.Equal(got[blockSize:], make([]byte, blockSize)) {
		t.Fatalf("read across the old end: %v", err)
	}
	last := uint64(3<<20/blockSize - 1)
	if err := sessions[1].Write(ctx, 7, last, data, blockSize); err != nil {
		t.Fatalf("write to the new last block: %v", err)
	}
	if sum, err := a.Checksum(7, int64(last)*blockSize, blockSize); err != nil || sum != sha(data) {
		t.Fatalf("store after writing the new last block: %s %v", sum, err)
	}
	if got := a.Info().Targets[0].LUNs[1]; got != l {
		t.Fatalf("Info has LUN 7 as %+v, want %+v", got, l)
	}

	// The same size changes nothing and owes nothing.
	if _, err := a.ResizeLUN(7, "3MiB"); err != nil {
		t.Fatal(err)
	}
	if _, err := sessions[0].Read(ctx, 7, 0, 1, blockSize); err != nil {
		t.Fatalf("read after a resize to the same size: %v", err)
	}
	// Shrinking is refused unless the array allows it.
	if _, err := a.ResizeLUN(7, "1MiB"); !errors.Is(err, control.ErrInvalid) || !strings.Contains(err.Error(), "AllowShrink") {
		t.Fatalf("shrink without AllowShrink: %v, want an invalid-request error naming AllowShrink", err)
	}
	if blocks, _, err := sessions[0].ReadCapacity(ctx, 7); err != nil || blocks != 3<<20/blockSize {
		t.Fatalf("a refused shrink changed the capacity: %d blocks, %v", blocks, err)
	}
}

func TestShrinkWhenAllowed(t *testing.T) {
	dir := t.TempDir()
	a := startArray(t, config("lun-shrink"), array.Options{AllowShrink: true})
	img := filepath.Join(dir, "lun9.img")
	if _, err := a.AddLUN(control.AddLUNRequest{ID: 9, Size: "2MiB", Backing: array.BackingFile, Path: img}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	s := login(t, ctx, a, "B0", 1)
	data := bytes.Repeat([]byte{0x5a}, 64<<10)
	const secondMiB = 1 << 20 / blockSize // LBA
	for _, lun := range []uint64{7, 9} {  // memory, file
		if err := s.Write(ctx, lun, secondMiB, data, blockSize); err != nil {
			t.Fatal(err)
		}
		if _, err := a.ResizeLUN(int(lun), "1MiB"); err != nil {
			t.Fatal(err)
		}
		_, err := s.Read(ctx, lun, secondMiB, 1, blockSize)
		wantSense(t, err, ua, ascCapacity, ascqCapacity)
		_, err = s.Read(ctx, lun, secondMiB, 1, blockSize)
		wantSense(t, err, illegal, ascLBAOutOfRange, 0)
		if blocks, _, err := s.ReadCapacity(ctx, lun); err != nil || blocks != 2048 {
			t.Fatalf("LUN %d: READ CAPACITY after the shrink: %d blocks, %v", lun, blocks, err)
		}
		// Growing back does not bring the cut data back.
		if _, err := a.ResizeLUN(int(lun), "2MiB"); err != nil {
			t.Fatal(err)
		}
		if sum, err := a.Checksum(int(lun), 1<<20, 1<<20); err != nil || sum != sha(make([]byte, 1<<20)) {
			t.Fatalf("LUN %d: the second MiB after shrink and growth: %s %v, want zeros", lun, sum, err)
		}
	}
	if st, err := os.Stat(img); err != nil || st.Size() != 2<<20 {
		t.Fatalf("image file after the resizes: %v %v, want 2 MiB", st, err)
	}
}

func TestRemovedLUNIsNotSupportedOnEveryPath(t *testing.T) {
	a := startArray(t, aluaConfig("lun-rm"), array.Options{}) // B is standby
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	sessions := bothControllers(t, ctx, a)
	for _, s := range sessions {
		if got := reportLUNs(t, ctx, s); got != initialLUNs {
			t.Fatalf("REPORT LUNS = %s, want %s", got, initialLUNs)
		}
	}

	if err := a.RemoveLUN(7); err != nil {
		t.Fatal(err)
	}
	for i, s := range sessions {
		// LOGICAL UNIT NOT SUPPORTED, on the standby path too.
		_, err := s.Read(ctx, 7, 0, 1, blockSize)
		wantSense(t, err, illegal, ascNotSupported, 0)
		wantSense(t, s.TestUnitReady(ctx, 7), illegal, ascNotSupported, 0)
		if i == 0 {
			wantSense(t, s.TestUnitReady(ctx, 0), ua, ascLUNsChanged, ascqLUNsChanged)
		}
		if got := reportLUNs(t, ctx, s); got != "[0]" {
			t.Fatalf("session %d: REPORT LUNS after the removal = %s, want [0]", i, got)
		}
	}
	if luns := a.Info().Targets[0].LUNs; len(luns) != 1 || luns[0].ID != 0 {
		t.Fatalf("Info LUNs after removal = %+v", luns)
	}
	if err := a.RemoveLUN(7); !errors.Is(err, control.ErrNotFound) {
		t.Fatalf("removing LUN 7 twice: %v, want not found", err)
	}

	// The number can be used again: a fresh, zeroed LU.
	if _, err := a.AddLUN(control.AddLUNRequest{ID: 7, Size: "1MiB"}); err != nil {
		t.Fatal(err)
	}
	s := sessions[0]
	wantSense(t, s.TestUnitReady(ctx, 0), ua, ascLUNsChanged, ascqLUNsChanged)
	if got, err := s.Read(ctx, 7, 0, 8, blockSize); err != nil || !bytes.Equal(got, make([]byte, 8*blockSize)) {
		t.Fatalf("re-added LUN 7: %v", err)
	}
}

func TestRemoveWhileHostsWrite(t *testing.T) {
	a := startArray(t, config("lun-busy"), array.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*ioTimeout)
	defer cancel()
	sessions := bothControllers(t, ctx, a)
	started := make(chan struct{}, 8)
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := sessions[w%2]
			data := bytes.Repeat([]byte{byte(w)}, 16*blockSize)
			for n := 0; ; n++ {
				err := s.Write(ctx, 7, uint64(w*16), data, blockSize)
				if n == 0 {
					started <- struct{}{}
				}
				if err == nil {
					_, err = a.Checksum(7, int64(w*16*blockSize), int64(len(data)))
				}
				var se *initiator.SCSIError
				switch {
				case err == nil:
				case errors.As(err, &se) && se.Key == illegal && se.ASC == ascNotSupported:
					return // the LUN is gone
				case errors.Is(err, control.ErrNotFound) || errors.Is(err, control.ErrConflict):
					// Checksum raced the removal; the next write tells.
				default:
					t.Errorf("writer %d: %v, want success or LOGICAL UNIT NOT SUPPORTED", w, err)
					return
				}
			}
		}()
	}
	for range 8 {
		<-started
	}
	if err := a.RemoveLUN(7); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
}

func TestLUNRequestErrorsSayWhatToFix(t *testing.T) {
	dir := t.TempDir()
	big := filepath.Join(dir, "big.img")
	if err := os.WriteFile(big, make([]byte, 8192), 0o644); err != nil {
		t.Fatal(err)
	}
	a := startArray(t, config("lun-errs"), array.Options{})
	if _, err := a.AddLUN(control.AddLUNRequest{ID: 2, Size: "1MiB", Backing: "file", Path: filepath.Join(dir, "two.img")}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		call  func() error
		class error
		says  string
	}{
		{"duplicate id", func() error { _, err := a.AddLUN(control.AddLUNRequest{ID: 7, Size: "1MiB"}); return err }, control.ErrConflict, "LUN 7 exists"},
		{"image of another LUN", func() error {
			_, err := a.AddLUN(control.AddLUNRequest{ID: 3, Size: "1MiB", Backing: "file", Path: filepath.Join(dir, "two.img")})
			return err
		}, control.ErrConflict, "LUN 2 already keeps its data"},
		{"size not a multiple of 512", func() error { _, err := a.AddLUN(control.AddLUNRequest{ID: 3, Size: "1000"}); return err }, control.ErrInvalid, "multiple of 512"},
		{"size not a size", func() error { _, err := a.AddLUN(control.AddLUNRequest{ID: 3, Size: "big"}); return err }, control.ErrInvalid, "64MiB"},
		{"id out of range", func() error { _, err := a.AddLUN(control.AddLUNRequest{ID: 16384, Size: "1MiB"}); return err }, control.ErrInvalid, "0..16383"},
		{"unknown backing", func() error {
			_, err := a.AddLUN(control.AddLUNRequest{ID: 3, Size: "1MiB", Backing: "tape"})
			return err
		}, control.ErrInvalid, "memory or file"},
		{"memory with a path", func() error {
			_, err := a.AddLUN(control.AddLUNRequest{ID: 3, Size: "1MiB", Path: "/tmp/x.img"})
			return err
		}, control.ErrInvalid, "only file backing"},
		{"relative image path", func() error {
			_, err := a.AddLUN(control.AddLUNRequest{ID: 3, Size: "1MiB", Backing: "file", Path: "x.img"})
			return err
		}, control.ErrInvalid, "absolute path"},
		{"missing directory", func() error {
			_, err := a.AddLUN(control.AddLUNRequest{ID: 3, Size: "1MiB", Backing: "file", Path: filepath.Join(dir, "no", "x.img")})
			return err
		}, control.ErrInvalid, "does not exist"},
		{"image larger than size", func() error {
			_, err := a.AddLUN(control.AddLUNRequest{ID: 3, Size: "4096", Backing: "file", Path: big})
			return err
		}, control.ErrInvalid, "larger than size"},
		{"remove unknown LUN", func() error { return a.RemoveLUN(4) }, control.ErrNotFound, "no LUN 4 (LUNs: [0 2 7])"},
		{"resize unknown LUN", func() error { _, err := a.ResizeLUN(4, "1MiB"); return err }, control.ErrNotFound, "no LUN 4"},
		{"resize to a bad size", func() error { _, err := a.ResizeLUN(7, "3.5MiB"); return err }, control.ErrInvalid, "size"},
		{"checksum of unknown LUN", func() error { _, err := a.Checksum(4, 0, 0); return err }, control.ErrNotFound, "no LUN 4"},
		{"checksum past the end", func() error { _, err := a.Checksum(7, 1<<20, 2<<20); return err }, control.ErrInvalid, "past the LUN's 2097152 bytes"},
		{"checksum at a negative offset", func() error { _, err := a.Checksum(7, -1, 1); return err }, control.ErrInvalid, "offset"},
	} {
		err := tc.call()
		if !errors.Is(err, tc.class) || !strings.Contains(err.Error(), tc.says) || !strings.Contains(err.Error(), "lun-errs") {
			t.Errorf("%s: %v; want %v naming the array and saying %q", tc.name, err, tc.class, tc.says)
		}
	}
	if got := fmt.Sprint(len(a.Info().Targets[0].LUNs)); got != "3" {
		t.Errorf("failed requests changed the LUNs: %+v", a.Info().Targets[0].LUNs)
	}
}

func TestLUNManagementOverTheControlAPI(t *testing.T) {
	a := startArray(t, config("lun-api"), array.Options{})
	srv, err := control.Serve("127.0.0.1:0", a, "lun-token")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	c := control.NewClient(srv.URL(), "lun-token")
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	if _, err := c.AddLUN(ctx, control.AddLUNRequest{ID: 4, Size: "256KiB"}); err != nil {
		t.Fatal(err)
	}
	s := login(t, ctx, a, "A0", 1)
	data := make([]byte, 32<<10)
	rand.New(rand.NewSource(4)).Read(data)
	if err := s.Write(ctx, 4, 8, data, blockSize); err != nil {
		t.Fatal(err)
	}
	if sum, err := c.Checksum(ctx, 4, 8*blockSize, int64(len(data))); err != nil || sum != sha(data) {
		t.Fatalf("Checksum over the API = %s, %v; want %s", sum, err, sha(data))
	}
	if l, err := c.ResizeLUN(ctx, 4, "512KiB"); err != nil || l.SizeBytes != 512<<10 {
		t.Fatalf("ResizeLUN = %+v, %v", l, err)
	}
	if _, err := c.ResizeLUN(ctx, 4, "128KiB"); !errors.Is(err, control.ErrInvalid) {
		t.Fatalf("shrink over the API: %v", err)
	}
	if err := c.RemoveLUN(ctx, 4); err != nil {
		t.Fatal(err)
	}
	info, err := c.Info(ctx)
	if err != nil || len(info.Targets[0].LUNs) != 2 {
		t.Fatalf("Info after remove: %+v %v", info, err)
	}
	if _, err := c.Checksum(ctx, 4, 0, 0); !errors.Is(err, control.ErrNotFound) {
		t.Fatalf("Checksum of the removed LUN: %v", err)
	}
}

func TestCloseReleasesAddedLUNs(t *testing.T) {
	cfg := config("lun-close")
	a := startArray(t, cfg, array.Options{})
	if _, err := a.AddLUN(control.AddLUNRequest{ID: 5, Size: "1MiB"}); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := a.AddLUN(control.AddLUNRequest{ID: 6, Size: "1MiB"}); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Fatalf("AddLUN after Close: %v", err)
	}
	// Name, device IDs and memory of LUN 5 are free for a new array.
	b := startArray(t, cfg, array.Options{})
	if _, err := b.AddLUN(control.AddLUNRequest{ID: 5, Size: "1MiB"}); err != nil {
		t.Fatalf("LUN 5 again in a new array of the same name: %v", err)
	}
}
