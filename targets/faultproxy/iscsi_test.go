package faultproxy_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/certkit/certkit/iscsi"
	"github.com/certkit/certkit/iscsi/initiator"
	"github.com/certkit/certkit/targets/array"
	"github.com/certkit/certkit/targets/faultproxy"
	"github.com/certkit/certkit/targets/frontend/frontendtest"
)

// These tests put the proxy in front of a real array (targets/array, memory
// LUNs) and drive it with real initiators: certkit's own (what the emulated
// ESXi host uses) and, for digests, which that one does not negotiate, the
// raw test initiator of the front end.

// Timing parameters of these tests.
const (
	ioTimeout    = 5 * time.Second        // anything that must complete
	delay        = 150 * time.Millisecond // latency and delay-opcode
	holdLong     = time.Second            // delay-opcode where others must overtake
	nopTimeout   = 300 * time.Millisecond // how long a ping may go unanswered
	blockSize    = 512
	initiatorIQN = "iqn.2024-01.io.certkit:faultproxy-test"
)

var arrays atomic.Int32

type path struct {
	a      *array.Array
	proxy  *faultproxy.Proxy
	target string

	mu   sync.Mutex
	logs []string // the proxy's
}

func (p *path) logged(substr string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, l := range p.logs {
		if strings.Contains(l, substr) {
			return true
		}
	}
	return false
}

// startPath starts an array with a 4 MiB LUN 0 and a 2 MiB LUN 7 on one
// portal and the proxy in front of it. The test fails if the proxy ever
// has to give up following the iSCSI stream.
func startPath(t *testing.T) *path {
	t.Helper()
	name := fmt.Sprintf("fp%d", arrays.Add(1))
	cfg := array.Config{
		Name:        name,
		Target:      "iqn.2024-01.io.certkit:" + name,
		LUNs:        []array.LUN{{ID: 0, Size: "4MiB"}, {ID: 7, Size: "2MiB"}},
		Controllers: []array.Controller{{Name: "A", Portals: []array.PortalConfig{{Listen: "127.0.0.1:0"}}}},
	}
	a, err := array.StartWith(context.Background(), cfg, array.Options{QueueDepth: 4, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	pa := &path{a: a, target: cfg.Target}
	pa.proxy, err = faultproxy.ListenWith("127.0.0.1:0", a.Info().Portals[0].Address, faultproxy.Options{Logf: func(format string, args ...any) {
		msg := fmt.Sprintf(format, args...)
		if strings.Contains(msg, "unparsed") {
			t.Errorf("proxy could not follow a real iSCSI stream: %s", msg)
		}
		pa.mu.Lock()
		pa.logs = append(pa.logs, msg)
		pa.mu.Unlock()
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pa.proxy.Close() })
	return pa
}

func (p *path) login(t *testing.T, ctx context.Context) *initiator.Session {
	t.Helper()
	s, err := initiator.Login(ctx, initiator.Options{InitiatorName: initiatorIQN, TargetName: p.target, Address: p.proxy.Addr(), Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func (p *path) inject(t *testing.T, f faultproxy.Fault) {
	t.Helper()
	if _, err := p.proxy.InjectFault(f); err != nil {
		t.Fatal(err)
	}
}

func (p *path) revert(t *testing.T) {
	t.Helper()
	if _, err := p.proxy.Revert(); err != nil {
		t.Fatal(err)
	}
}

func randomBlocks(n int) []byte {
	b := make([]byte, n*blockSize)
	rand.Read(b)
	return b
}

func readBack(t *testing.T, ctx context.Context, s *initiator.Session, lun, lba uint64, want []byte) {
	t.Helper()
	got, err := s.Read(ctx, lun, lba, uint32(len(want)/blockSize), blockSize)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("read of LUN %d at LBA %d returned other data than was written", lun, lba)
	}
}

func write(t *testing.T, ctx context.Context, s *initiator.Session, lun, lba uint64, data []byte) {
	t.Helper()
	if err := s.Write(ctx, lun, lba, data, blockSize); err != nil {
		t.Fatal(err)
	}
}

func timed(f func() error) (time.Duration, error) {
	start := time.Now()
	err := f()
	return time.Since(start), err
}

func TestLatencyDelaysEachWayAndKeepsTheData(t *testing.T) {
	p := startPath(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*ioTimeout)
	defer cancel()
	s := p.login(t, ctx)
	data := randomBlocks(512) // 256 KiB: several Data-In PDUs each way

	for _, tc := range []struct {
		dir  faultproxy.Direction
		ways int
	}{{"", 2}, {faultproxy.Out, 1}, {faultproxy.In, 1}} {
		p.inject(t, faultproxy.Fault{Kind: faultproxy.Latency, Direction: tc.dir, Params: faultproxy.Params{Delay: delay}})
		rtt, err := timed(func() error { return s.Ping(ctx) })
		if err != nil {
			t.Fatal(err)
		}
		if min := time.Duration(tc.ways) * delay; rtt < min {
			t.Errorf("latency %v direction %q: ping took %v, want at least %v", delay, tc.dir, rtt, min)
		}
		rand.Read(data)
		write(t, ctx, s, 0, 64, data)
		readBack(t, ctx, s, 0, 64, data)
		p.revert(t)
	}
	readBack(t, ctx, s, 0, 64, data)
	// After revert nothing waits any more.
	if rtt, err := timed(func() error { return s.Ping(ctx) }); err != nil || rtt >= 2*delay {
		t.Errorf("ping after revert: %v, %v; want well under the %v of the fault", rtt, err, 2*delay)
	}
}

// Revert releases what latency holds at once, in order.
func TestRevertReleasesDelayedBytesAtOnce(t *testing.T) {
	p := startPath(t)
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	s := p.login(t, ctx)
	p.inject(t, faultproxy.Fault{Kind: faultproxy.Latency, Params: faultproxy.Params{Delay: time.Hour}})
	pinged := make(chan error, 1)
	go func() { pinged <- s.Ping(ctx) }()
	reverted, err := p.proxy.Revert()
	if err != nil {
		t.Fatal(err)
	}
	if err := <-pinged; err != nil {
		t.Fatalf("ping held by an hour of latency, reverted at once: %v", err)
	}
	if waited := time.Since(reverted); waited > ioTimeout {
		t.Fatalf("ping answered %v after revert", waited)
	}
}

func TestDropNOPInHidesPingsWhileIOFlows(t *testing.T) {
	p := startPath(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*ioTimeout)
	defer cancel()
	s := p.login(t, ctx)
	data := randomBlocks(256)
	write(t, ctx, s, 0, 0, data)

	p.inject(t, faultproxy.Fault{Kind: faultproxy.DropNOPIn})
	for range 2 {
		pctx, pcancel := context.WithTimeout(ctx, nopTimeout)
		err := s.Ping(pctx)
		pcancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("ping through drop-nopin: %v, want no answer within %v", err, nopTimeout)
		}
		readBack(t, ctx, s, 0, 0, data)
		rand.Read(data[:blockSize])
		write(t, ctx, s, 0, 0, data)
		if err := s.TestUnitReady(ctx, 0); err != nil {
			t.Fatal(err)
		}
	}
	p.revert(t)
	if err := s.Ping(ctx); err != nil {
		t.Fatalf("ping after revert: %v", err)
	}
	readBack(t, ctx, s, 0, 0, data)
}

func wantSense(t *testing.T, err error, key, asc, ascq byte) {
	t.Helper()
	var se *initiator.SCSIError
	if !errors.As(err, &se) || se.Status != initiator.StatusCheckCondition || se.Key != key || se.ASC != asc || se.ASCQ != ascq {
		t.Fatalf("got %v; want CHECK CONDITION %02x/%02x/%02x", err, key, asc, ascq)
	}
}

func TestFailOpcodeFailsOnlyThatOpcodeAndKeepsTheSessionWhole(t *testing.T) {
	p := startPath(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*ioTimeout)
	defer cancel()
	s := p.login(t, ctx)
	old, fresh := randomBlocks(64), randomBlocks(64)
	write(t, ctx, s, 0, 0, old)

	p.inject(t, faultproxy.Fault{Kind: faultproxy.FailOpcode, Params: faultproxy.Params{
		Opcode: faultproxy.Opcode(0x28), Sense: faultproxy.Sense{Key: 0x05, ASC: 0x25, ASCQ: 0x00}}})
	for range 6 { // more than the CmdSN window of 4: failed READs still consume CmdSNs
		_, err := s.Read(ctx, 0, 0, 64, blockSize)
		wantSense(t, err, 0x05, 0x25, 0x00)
	}
	write(t, ctx, s, 0, 0, fresh) // WRITE(10) reaches the array and succeeds
	if err := s.TestUnitReady(ctx, 0); err != nil {
		t.Fatalf("TEST UNIT READY during fail-opcode READ(10): %v", err)
	}
	if err := s.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	p.revert(t)

	// The window is intact: a burst of reads, four times the queue depth.
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, err := s.Read(ctx, 0, uint64(i%4*16), 16, blockSize)
			if err == nil && !bytes.Equal(got, fresh[i%4*16*blockSize:][:16*blockSize]) {
				err = fmt.Errorf("read %d after revert: other data than the WRITE made during the fault", i)
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
}

func TestFailOpcodeOnOneLUN(t *testing.T) {
	p := startPath(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*ioTimeout)
	defer cancel()
	s := p.login(t, ctx)
	data := randomBlocks(8)
	write(t, ctx, s, 0, 0, data)
	write(t, ctx, s, 7, 0, data)

	p.inject(t, faultproxy.Fault{Kind: faultproxy.FailOpcode, Params: faultproxy.Params{
		Opcode: faultproxy.Opcode(0x00), LUN: faultproxy.LUN(7), Sense: faultproxy.Sense{Key: 0x02, ASC: 0x04, ASCQ: 0x03}}})
	wantSense(t, s.TestUnitReady(ctx, 7), 0x02, 0x04, 0x03)
	if err := s.TestUnitReady(ctx, 0); err != nil {
		t.Fatalf("TEST UNIT READY of LUN 0 while LUN 7's fail: %v", err)
	}
	readBack(t, ctx, s, 7, 0, data)
	p.revert(t)
	if err := s.TestUnitReady(ctx, 7); err != nil {
		t.Fatal(err)
	}
}

func TestDelayOpcodeHoldsOnlyMatchingAnswers(t *testing.T) {
	p := startPath(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*ioTimeout)
	defer cancel()
	s := p.login(t, ctx)
	data := randomBlocks(64)
	write(t, ctx, s, 0, 0, data)

	p.inject(t, faultproxy.Fault{Kind: faultproxy.DelayOpcode, Params: faultproxy.Params{Opcode: faultproxy.Opcode(0x28), Delay: holdLong}})
	type result struct {
		took time.Duration
		got  []byte
		err  error
	}
	done := make(chan result, 1)
	go func() {
		var r result
		r.took, r.err = timed(func() (err error) { r.got, err = s.Read(ctx, 0, 0, 64, blockSize); return err })
		done <- r
	}()
	// Others overtake the held READ: a ping, a TEST UNIT READY, a WRITE.
	if err := s.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.TestUnitReady(ctx, 0); err != nil {
		t.Fatal(err)
	}
	write(t, ctx, s, 0, 1000, randomBlocks(8))
	select {
	case r := <-done:
		t.Fatalf("READ answered in %v, before the ping, TUR and WRITE sent after it; want it held %v", r.took, holdLong)
	default:
	}
	r := <-done
	if r.err != nil || !bytes.Equal(r.got, data) {
		t.Fatalf("held READ: %v (data intact: %v)", r.err, bytes.Equal(r.got, data))
	}
	if r.took < holdLong {
		t.Errorf("held READ took %v, want at least %v", r.took, holdLong)
	}
	p.revert(t)
	if took, err := timed(func() error { _, err := s.Read(ctx, 0, 0, 1, blockSize); return err }); err != nil || took >= holdLong {
		t.Errorf("READ after revert: %v in %v", err, took)
	}
}

// rawSession logs in through the proxy with both digests, which certkit's
// initiator does not offer, so the proxy must frame CRC32C both ways.
func rawSession(t *testing.T, p *path) *frontendtest.Conn {
	t.Helper()
	c, err := frontendtest.Normal(p.proxy.Addr(), initiatorIQN, p.target, [6]byte{0x80, 0, 0, 0, 9, 1}, ioTimeout,
		iscsi.KV{Key: "HeaderDigest", Value: "CRC32C,None"}, iscsi.KV{Key: "DataDigest", Value: "CRC32C,None"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if !c.Digests.Header || !c.Digests.Data {
		t.Fatalf("array settled on digests %+v, want both CRC32C", c.Digests)
	}
	if !p.logged("HeaderDigest=CRC32C, DataDigest=CRC32C") {
		t.Fatalf("proxy logs %q: want the session followed with both digests", p.logs)
	}
	return c
}

func TestFaultsWithCRC32CDigests(t *testing.T) {
	p := startPath(t)
	c := rawSession(t, p)
	data := randomBlocks(64)
	if r, err := c.Command(0, frontendtest.Write10(0, 64), 0, data); err != nil || r.CheckGood() != nil {
		t.Fatalf("WRITE(10): %v %v", r, err)
	}

	p.inject(t, faultproxy.Fault{Kind: faultproxy.FailOpcode, Params: faultproxy.Params{Opcode: faultproxy.Opcode(0x28), Sense: faultproxy.Sense{Key: 5, ASC: 0x25}}})
	r, err := c.Command(0, frontendtest.Read10(0, 64), len(data), nil)
	if err != nil {
		t.Fatalf("READ(10) under fail-opcode: %v (a digest the proxy got wrong reads as a digest mismatch)", err)
	}
	if k, asc, ascq := r.SenseKey(); r.Status != 0x02 || k != 5 || asc != 0x25 || ascq != 0 || r.DataIns != 0 {
		t.Fatalf("READ(10) under fail-opcode: status 0x%02x sense %02x/%02x/%02x after %d Data-In; want CHECK CONDITION 05/25/00 and no data", r.Status, k, asc, ascq, r.DataIns)
	}
	// A WRITE whose R2T and Data-Out cross the proxy with digests.
	if r, err := c.Command(0, frontendtest.Write10(64, 16), 0, randomBlocks(16)); err != nil || r.CheckGood() != nil {
		t.Fatalf("WRITE(10) under fail-opcode READ(10): %v %v", r, err)
	}
	p.revert(t)

	p.inject(t, faultproxy.Fault{Kind: faultproxy.DropNOPIn})
	ping := iscsi.New(iscsi.OpNOPOut)
	ping.SetImmediate(true)
	ping.SetFlags(iscsi.FlagFinal)
	ping.SetITT(c.NextITT())
	ping.SetTTT(iscsi.ReservedTag)
	ping.SetCmdSN(c.CmdSN)
	ping.SetExpStatSN(c.ExpStatSN)
	ping.Data = []byte("are you there")
	if err := c.Send(ping); err != nil {
		t.Fatal(err)
	}
	// The NOP-In is swallowed: the next PDU is the READ's.
	r, err = c.Command(0, frontendtest.Read10(0, 64), len(data), nil)
	if err != nil || r.CheckGood() != nil || !bytes.Equal(r.Data, data) {
		t.Fatalf("READ(10) after a swallowed NOP-In: %v %v (data intact: %v)", r, err, r != nil && bytes.Equal(r.Data, data))
	}
	p.revert(t)
	if err := c.Send(ping); err != nil {
		t.Fatal(err)
	}
	if in, err := c.Recv(); err != nil || in.Opcode() != iscsi.OpNOPIn || !bytes.Equal(in.Data, ping.Data) {
		t.Fatalf("ping after revert: %v %v", in, err)
	}
}

// Revert releases answers delay-opcode holds at once.
func TestRevertReleasesHeldAnswersAtOnce(t *testing.T) {
	p := startPath(t)
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	s := p.login(t, ctx)
	data := randomBlocks(256)
	write(t, ctx, s, 0, 0, data)
	p.inject(t, faultproxy.Fault{Kind: faultproxy.DelayOpcode, Params: faultproxy.Params{Opcode: faultproxy.Opcode(0x28), Delay: time.Hour}})
	done := make(chan error, 1)
	go func() {
		got, err := s.Read(ctx, 0, 0, 256, blockSize)
		if err == nil && !bytes.Equal(got, data) {
			err = errors.New("read other data than was written")
		}
		done <- err
	}()
	for range 3 { // traffic that overtakes the held READ meanwhile
		if err := s.TestUnitReady(ctx, 0); err != nil {
			t.Fatal(err)
		}
	}
	p.revert(t)
	if err := <-done; err != nil {
		t.Fatalf("READ held by an hour of delay-opcode, reverted: %v", err)
	}
}

// libiscsi, an independent initiator, reads the proxy's CHECK CONDITION as
// the array's own. (Its tools offer "HeaderDigest=None,CRC32C" whatever the
// URL asks, and the array takes the first; TestFaultsWithCRC32CDigests
// covers digests.)
func TestLibiscsiSeesFailOpcodeSense(t *testing.T) {
	if _, err := exec.LookPath("iscsi-inq"); err != nil {
		t.Skip("iscsi-inq not installed: apt-get install -y libiscsi-bin")
	}
	p := startPath(t)
	url := "iscsi://" + p.proxy.Addr() + "/" + p.target + "/0"
	run := func() (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
		defer cancel()
		out, err := exec.CommandContext(ctx, "iscsi-inq", url).CombinedOutput()
		return string(out), err
	}
	if out, err := run(); err != nil || !strings.Contains(out, "Vendor:CERTKIT") {
		t.Fatalf("iscsi-readcapacity16 through the proxy: %v\n%s", err, out)
	}
	p.inject(t, faultproxy.Fault{Kind: faultproxy.FailOpcode, Params: faultproxy.Params{Opcode: faultproxy.Opcode(0x12), Sense: faultproxy.Sense{Key: 5, ASC: 0x25}}})
	out, err := run()
	if err == nil || !strings.Contains(out, "SENSE KEY:ILLEGAL_REQUEST(5) ASCQ:LOGICAL_UNIT_NOT_SUPPORTED(0x2500)") {
		t.Fatalf("iscsi-inq under fail-opcode 0x12 (INQUIRY): %v\n%s", err, out)
	}
}
