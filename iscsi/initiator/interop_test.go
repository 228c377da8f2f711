package initiator

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"regexp"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"
)

// Interoperability with Debian's tgtd: discovery, login, the SCSI helpers
// and data integrity across FirstBurstLength and MaxBurstLength.

const tgtdBlockSize = 512

// loginTgtd logs in and consumes LUN 1's power-on UNIT ATTENTION (29/00),
// which a new I_T nexus gets with its first command, as any initiator's
// device scan does.
func loginTgtd(t *testing.T, d *tgtd) *Session {
	t.Helper()
	ctx := testContext(t)
	s, err := Login(ctx, Options{InitiatorName: initiatorIQN, TargetName: d.IQN, Address: d.Addr, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	err = s.TestUnitReady(ctx, 1)
	var se *SCSIError
	if !errors.As(err, &se) || se.Key != 6 || se.ASC != 0x29 {
		t.Fatalf("first TEST UNIT READY: %v; want UNIT ATTENTION 06/29/00", err)
	}
	if err := s.TestUnitReady(ctx, 1); err != nil {
		t.Fatal(err)
	}
	return s
}

func TestTgtdDiscoveryLoginAndDeviceIdentity(t *testing.T) {
	checkNoSessionGoroutines(t)
	d := startTgtd(t)
	ctx := testContext(t)

	targets, err := Discover(ctx, d.Addr, initiatorIQN)
	if err != nil {
		t.Fatal(err)
	}
	want := []Target{{Name: tgtdIQN, Portals: []Portal{{Address: d.Addr, Tag: 1}}}}
	if fmt.Sprint(targets) != fmt.Sprint(want) {
		t.Fatalf("Discover: %+v, want %+v", targets, want)
	}

	s := loginTgtd(t, d)
	p := s.Params()
	if p.TSIH == 0 || p.ISID != DefaultISID || p.TargetPortalGroupTag != 1 || !p.ImmediateData || p.MaxBurstLength == 0 ||
		p.FirstBurstLength > p.MaxBurstLength || p.TargetMaxRecvDataSegmentLength < 512 || p.ErrorRecoveryLevel != 0 {
		t.Fatalf("negotiated %+v", p)
	}
	luns, err := s.ReportLUNs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(luns, []uint64{0, 1}) {
		t.Fatalf("REPORT LUNS: %v, want [0 1] (controller LUN 0, disk LUN 1)", luns)
	}
	std, err := s.Inquiry(ctx, 1, false, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(std) < 36 || std[0]&0x1f != 0 || string(bytes.TrimSpace(std[8:16])) != "IET" {
		t.Fatalf("standard INQUIRY: %q; want a direct-access device from vendor IET", std)
	}
	vpd, err := s.Inquiry(ctx, 1, true, 0x83)
	if err != nil {
		t.Fatal(err)
	}
	naa, err := DeviceNAA(vpd)
	if err != nil {
		t.Fatal(err)
	}
	// tgtd reports an NAA 3 and an NAA 6 designator; ESXi names the device
	// after the NAA 6 (IEEE Registered Extended) one.
	if !regexp.MustCompile(`^naa\.6[0-9a-f]{31}$`).MatchString(naa) {
		t.Fatalf("NAA %q is not naa. + a 16-byte NAA 6 designator", naa)
	}
	blocks, bs, err := s.ReadCapacity(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if blocks != tgtdLUNSize/tgtdBlockSize || bs != tgtdBlockSize {
		t.Fatalf("READ CAPACITY: %d blocks of %d, want %d of %d", blocks, bs, tgtdLUNSize/tgtdBlockSize, tgtdBlockSize)
	}
	// A LUN that does not exist: CHECK CONDITION, ILLEGAL REQUEST, 25/00.
	_, err = s.Command(ctx, 7, []byte{0x00, 0, 0, 0, 0, 0}, nil, 0)
	var se *SCSIError
	if !errors.As(err, &se) || se.Key != 5 || se.ASC != 0x25 {
		t.Fatalf("TEST UNIT READY of LUN 7: %v; want CHECK CONDITION 05/25/00", err)
	}
	if err := s.Logout(ctx); err != nil {
		t.Fatal(err)
	}
	if !errors.Is(s.Err(), ErrLoggedOut) {
		t.Fatalf("Err after Logout: %v", s.Err())
	}
}

func TestTgtdLoginToUnknownTargetFails(t *testing.T) {
	checkNoSessionGoroutines(t)
	d := startTgtd(t)
	_, err := Login(testContext(t), Options{InitiatorName: initiatorIQN, TargetName: "iqn.2024-01.dev.certkit:nope", Address: d.Addr})
	want := "login to iqn.2024-01.dev.certkit:nope at " + d.Addr + " failed: target not found (status 0x0203)"
	if err == nil || err.Error() != want {
		t.Fatalf("got %v, want %q", err, want)
	}
}

// Write then read back at sizes below, at and across FirstBurstLength
// (65536) and MaxBurstLength (262144), with tgtd's default InitialR2T=Yes
// and with InitialR2T=No (unsolicited Data-Out) and larger segments.
func TestTgtdWriteReadBackAcrossBurstLimits(t *testing.T) {
	checkNoSessionGoroutines(t)
	sizes := []int{512, 4096, 8192 + 512, 65536, 65536 + 512, 262144, 262144 + 3*512, 1 << 20}
	for _, cfg := range []struct {
		name   string
		params [][2]string
	}{
		{"defaults", nil},
		{"InitialR2T=No", [][2]string{{"InitialR2T", "No"}, {"MaxRecvDataSegmentLength", "32768"}}},
	} {
		t.Run(cfg.name, func(t *testing.T) {
			d := startTgtd(t, cfg.params...)
			s := loginTgtd(t, d)
			if want := cfg.params == nil; s.Params().InitialR2T != want {
				t.Fatalf("InitialR2T negotiated %v, want %v", s.Params().InitialR2T, want)
			}
			ctx := testContext(t)
			lba := uint64(0)
			for i, n := range sizes {
				data := pattern(n, byte(i+1))
				if err := s.Write(ctx, 1, lba, data, tgtdBlockSize); err != nil {
					t.Fatalf("%d bytes: %v", n, err)
				}
				got, err := s.Read(ctx, 1, lba, uint32(n/tgtdBlockSize), tgtdBlockSize)
				if err != nil {
					t.Fatalf("%d bytes: %v", n, err)
				}
				if !bytes.Equal(got, data) {
					t.Fatalf("%d bytes at LBA %d: read back differs", n, lba)
				}
				lba += uint64(n/tgtdBlockSize) + 1
			}
			if err := s.Logout(ctx); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// Many goroutines write and read their own regions at once, pings
// interleaved; every byte comes back where it was written.
func TestTgtdParallelIOWithPings(t *testing.T) {
	checkNoSessionGoroutines(t)
	d := startTgtd(t)
	s := loginTgtd(t, d)
	ctx := testContext(t)
	const workers, rounds = 12, 6
	region := uint64(2048) // blocks per worker: 1 MiB
	var wg sync.WaitGroup
	errs := make(chan error, workers+1)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range rounds {
				n := (1 + (w*rounds+r)%64) * 8 * tgtdBlockSize // 4 KiB .. 256 KiB
				lba := uint64(w)*region + uint64(r*8)
				data := pattern(n, byte(w*rounds+r))
				if err := s.Write(ctx, 1, lba, data, tgtdBlockSize); err != nil {
					errs <- fmt.Errorf("worker %d round %d: %w", w, r, err)
					return
				}
				got, err := s.Read(ctx, 1, lba, uint32(n/tgtdBlockSize), tgtdBlockSize)
				if err != nil {
					errs <- fmt.Errorf("worker %d round %d: %w", w, r, err)
					return
				}
				if !bytes.Equal(got, data) {
					errs <- fmt.Errorf("worker %d round %d: read back differs", w, r)
					return
				}
			}
		}()
	}
	pctx, stopPings := context.WithCancel(ctx)
	pings := 0
	pingDone := make(chan struct{})
	go func() {
		defer close(pingDone)
		for pctx.Err() == nil {
			if err := s.Ping(pctx); err != nil && pctx.Err() == nil {
				errs <- fmt.Errorf("ping %d: %w", pings, err)
				return
			}
			pings++
		}
	}()
	wg.Wait()
	stopPings()
	<-pingDone
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if pings == 0 {
		t.Error("no ping completed during the I/O")
	}
}

// Commands cancelled mid-transfer return ctx.Err(); the data tgtd still
// sends for them is dropped, and the session stays correct.
func TestTgtdCancelledCommandsLeaveSessionUsable(t *testing.T) {
	checkNoSessionGoroutines(t)
	d := startTgtd(t)
	s := loginTgtd(t, d)
	ctx := testContext(t)
	want := pattern(1<<20, 9)
	if err := s.Write(ctx, 1, 0, want, tgtdBlockSize); err != nil {
		t.Fatal(err)
	}
	cancelled := 0
	for range 20 {
		cctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() {
			_, err := s.Read(cctx, 1, 0, uint32(len(want)/tgtdBlockSize), tgtdBlockSize)
			done <- err
		}()
		// Cancel while the read is in flight: once its task exists (unless
		// it is already over).
		deadline := time.Now().Add(testTimeout)
		for s.pending() == 0 && len(done) == 0 && time.Now().Before(deadline) {
			runtime.Gosched()
		}
		cancel()
		switch err := <-done; {
		case errors.Is(err, context.Canceled):
			cancelled++
		case err != nil:
			t.Fatalf("cancelled read: %v", err)
		}
	}
	t.Logf("%d of 20 reads were cancelled before completing", cancelled)
	if err := s.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	got, err := s.Read(ctx, 1, 0, uint32(len(want)/tgtdBlockSize), tgtdBlockSize)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read after cancellations: err %v, data intact %v", err, bytes.Equal(got, want))
	}
	if s.Err() != nil {
		t.Fatal(s.Err())
	}
}

// Close while commands are in flight: each returns (done or failed with
// ErrClosed), nothing hangs, no session goroutine survives.
func TestTgtdCloseWithCommandsInFlight(t *testing.T) {
	checkNoSessionGoroutines(t)
	d := startTgtd(t)
	s := loginTgtd(t, d)
	ctx := testContext(t)
	started := make(chan struct{}, 8)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				_, err := s.Read(ctx, 1, 0, 512, tgtdBlockSize)
				if err != nil {
					errs <- err
					return
				}
				select {
				case started <- struct{}{}:
				default:
				}
			}
		}()
	}
	<-started
	s.Close()
	wg.Wait()
	close(errs)
	for err := range errs {
		if !errors.Is(err, ErrClosed) {
			t.Errorf("in-flight read after Close: %v, want an error wrapping ErrClosed", err)
		}
	}
}
