package array_test

import (
	"bytes"
	"context"
	"fmt"
	"math/rand"
	"sync"
	"testing"

	"github.com/certkit/certkit/iscsi/initiator"
	"github.com/certkit/certkit/targets/array"
)

// certkit's own initiator (what the emulated ESXi host uses) against the
// array: discovery through the proxy, sessions on both controllers, NAA,
// capacity, and concurrent I/O that fills the CmdSN window.
func TestGoInitiator(t *testing.T) {
	cfg := config("goinit")
	a := startArray(t, cfg, array.Options{QueueDepth: 4})
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	info := a.Info()

	targets, err := initiator.Discover(ctx, portalAddr(a, "A0"), initiatorIQN)
	if err != nil {
		t.Fatal(err)
	}
	if len(targets) != 1 || targets[0].Name != cfg.Target || len(targets[0].Portals) != len(info.Portals) {
		t.Fatalf("Discover: %+v", targets)
	}
	for i, p := range targets[0].Portals {
		if p.Address != info.Portals[i].Address || p.Tag != info.Portals[i].TPGT {
			t.Errorf("portal %d: discovered %+v, Info has %+v", i, p, info.Portals[i])
		}
	}
	for i, p := range targets[0].Portals {
		s, err := initiator.Login(ctx, initiator.Options{InitiatorName: initiatorIQN, TargetName: cfg.Target, Address: p.Address, ISID: [6]byte{0x80, 0, 0, 0, 2, byte(i)}})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if got := s.Params().TargetPortalGroupTag; got != p.Tag {
			t.Errorf("session via %s: TPGT %d, want %d", p.Address, got, p.Tag)
		}
		luns, err := s.ReportLUNs(ctx)
		if err != nil || fmt.Sprint(luns) != "[0 7]" {
			t.Errorf("REPORT LUNS: %v %v, want [0 7]", luns, err)
		}
		for _, l := range info.Targets[0].LUNs {
			vpd, err := s.Inquiry(ctx, uint64(l.ID), true, 0x83)
			if err != nil {
				t.Fatal(err)
			}
			if naa, err := initiator.DeviceNAA(vpd); err != nil || naa != l.NAA {
				t.Errorf("LUN %d via %s: NAA %s %v, want %s", l.ID, p.Address, naa, err, l.NAA)
			}
			blocks, bs, err := s.ReadCapacity(ctx, uint64(l.ID))
			if err != nil || int64(blocks)*int64(bs) != l.SizeBytes {
				t.Errorf("LUN %d capacity %d x %d %v, want %d bytes", l.ID, blocks, bs, err, l.SizeBytes)
			}
		}
		if err := s.Ping(ctx); err != nil {
			t.Errorf("Ping via %s: %v", p.Address, err)
		}
		// 16 writers on a window of 4: the initiator must wait for slots
		// the target gives back.
		var wg sync.WaitGroup
		errs := make(chan error, 16)
		for w := 0; w < 16; w++ {
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				data := make([]byte, 8192)
				rand.New(rand.NewSource(int64(w))).Read(data)
				lba := uint64(w * 16)
				if err := s.Write(ctx, 0, lba, data, 512); err != nil {
					errs <- err
					return
				}
				got, err := s.Read(ctx, 0, lba, 16, 512)
				if err != nil || !bytes.Equal(got, data) {
					errs <- fmt.Errorf("writer %d: read back %d bytes, %v", w, len(got), err)
				}
			}(w)
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		if err := s.Logout(ctx); err != nil {
			t.Errorf("Logout: %v", err)
		}
	}
}
