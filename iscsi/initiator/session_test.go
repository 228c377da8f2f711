package initiator

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/certkit/certkit/iscsi"
)

var testUnitReady = []byte{0x00, 0, 0, 0, 0, 0}

func read10(blocks uint16) []byte { return rwCDB(false, 0, uint32(blocks)) }

func (s *Session) stalledCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stalled
}

func (s *Session) pending() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.tasks)
}

type cmdResult struct {
	res *Result
	err error
}

func goCommand(s *Session, ctx context.Context, cdb, out []byte, readLen int) <-chan cmdResult {
	ch := make(chan cmdResult, 1)
	go func() {
		res, err := s.Command(ctx, 1, cdb, out, readLen)
		ch <- cmdResult{res, err}
	}()
	return ch
}

func wait(t *testing.T, ch <-chan cmdResult) cmdResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(testTimeout):
		t.Fatal("command did not return")
		return cmdResult{}
	}
}

// A target that advertises MaxCmdSN = ExpCmdSN-1 has closed its command
// window: the initiator must not send the command until the window opens,
// and immediate PDUs (pings) still flow meanwhile.
func TestClosedCmdSNWindowStallsCommandsUntilTargetOpensIt(t *testing.T) {
	checkNoSessionGoroutines(t)
	s, c := loginFake(t, nil, -1)
	ctx := testContext(t)
	exp, _ := c.window()

	// ping sends a ping, checks it is immediate with the current CmdSN, and
	// answers it. Queued behind anything sent before it, its arrival also
	// proves nothing else was sent.
	ping := func(wantCmdSN uint32) {
		t.Helper()
		done := make(chan error, 1)
		go func() { done <- s.Ping(ctx) }()
		nop := c.next()
		if nop.Opcode() != iscsi.OpNOPOut || !nop.Immediate() || nop.CmdSN() != wantCmdSN || nop.TTT() != iscsi.ReservedTag || nop.ITT() == iscsi.ReservedTag {
			t.Fatalf("got %v immediate=%v CmdSN=%d TTT=0x%x; want the ping: an immediate NOP-Out with CmdSN %d, TTT 0xffffffff, an ITT",
				nop, nop.Immediate(), nop.CmdSN(), nop.TTT(), wantCmdSN)
		}
		c.reply(nopIn(nop.ITT(), iscsi.ReservedTag), true)
		if err := <-done; err != nil {
			t.Fatalf("ping while the window is closed: %v", err)
		}
	}

	// A command on the closed window is not sent; it gives up when its ctx
	// ends, consuming no CmdSN.
	sctx, cancel := context.WithTimeout(ctx, stallTimeout)
	defer cancel()
	if _, err := s.Command(sctx, 1, testUnitReady, nil, 0); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("command on a closed window: got %v, want context.DeadlineExceeded", err)
	}
	ping(exp)

	// A command waiting for the window goes out, with CmdSN exp, as soon
	// as an unsolicited NOP-In opens the window by one.
	ch := goCommand(s, ctx, testUnitReady, nil, 0)
	eventually(t, "the command to wait for the window", func() bool { return s.stalledCount() == 1 })
	ping(exp)
	c.setWindow(0)
	c.reply(nopIn(iscsi.ReservedTag, iscsi.ReservedTag), false)
	cmd := c.nextOp(iscsi.OpSCSICommand)
	if cmd.CmdSN() != exp || cmd.Immediate() {
		t.Fatalf("command: CmdSN %d immediate=%v; want CmdSN %d, not immediate", cmd.CmdSN(), cmd.Immediate(), exp)
	}
	c.reply(scsiResponse(cmd.ITT(), StatusGood, nil), true)
	if r := wait(t, ch); r.err != nil {
		t.Fatalf("command after the window opened: %v", r.err)
	}

	// The response acknowledged CmdSN exp without advancing MaxCmdSN: the
	// window is closed again.
	sctx, cancel = context.WithTimeout(ctx, stallTimeout)
	defer cancel()
	if _, err := s.Command(sctx, 1, testUnitReady, nil, 0); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("command on the closed window: got %v, want context.DeadlineExceeded", err)
	}
	ping(exp + 1)
	if s.Err() != nil {
		t.Fatalf("session ended: %v", s.Err())
	}
}

// A window update that violates MaxCmdSN >= ExpCmdSN-1 is ignored, and
// MaxCmdSN never moves backwards (RFC 7143 §4.2.2.1).
func TestWindowUpdatesUseSerialArithmetic(t *testing.T) {
	checkNoSessionGoroutines(t)
	s, c := loginFake(t, nil, 0)
	exp, _ := c.window()
	// Wrap-around: MaxCmdSN = exp+2^31+5 is "less than" exp-1 in serial
	// arithmetic; it must not open the window.
	p := nopIn(iscsi.ReservedTag, iscsi.ReservedTag)
	p.SetExpCmdSN(exp)
	p.SetMaxCmdSN(exp + 1<<31 + 5)
	b, _ := p.Marshal(iscsi.Digests{})
	if err := c.writeRaw(b); err != nil {
		t.Fatal(err)
	}
	// Barrier: the ping's answer comes after the NOP-In above.
	c.setAutoPing()
	ctx := testContext(t)
	if err := s.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	c.nextOp(iscsi.OpNOPOut)

	s.mu.Lock()
	max := s.maxCmdSN
	s.mu.Unlock()
	if max != exp {
		t.Fatalf("MaxCmdSN after a bogus update: %d, want %d", max, exp)
	}
	ch := goCommand(s, ctx, testUnitReady, nil, 0)
	cmd := c.nextOp(iscsi.OpSCSICommand)
	c.setWindow(-1) // closes; must not shrink what the initiator knows
	c.reply(scsiResponse(cmd.ITT(), StatusGood, nil), true)
	if r := wait(t, ch); r.err != nil {
		t.Fatal(r.err)
	}
}

// A command whose context ends returns ctx.Err(); the target's late answer
// for it is dropped and the session carries on.
func TestCancelledCommandReturnsCtxErrAndLateResponseIsDropped(t *testing.T) {
	checkNoSessionGoroutines(t)
	s, c := loginFake(t, nil, 31)
	ctx := testContext(t)
	cctx, cancel := context.WithCancel(ctx)
	ch := goCommand(s, cctx, read10(8), nil, 4096)
	abandoned := c.nextOp(iscsi.OpSCSICommand)
	cancel()
	if r := wait(t, ch); !errors.Is(r.err, context.Canceled) || r.res != nil {
		t.Fatalf("cancelled command: got (%v, %v), want context.Canceled", r.res, r.err)
	}

	ch = goCommand(s, ctx, read10(1), nil, 512)
	cmd := c.nextOp(iscsi.OpSCSICommand)
	if cmd.ITT() == abandoned.ITT() {
		t.Fatal("new command reuses the abandoned ITT")
	}
	// Late answers for the abandoned task, then the real one.
	c.reply(dataIn(abandoned.ITT(), 0, 0, bytes.Repeat([]byte{0xee}, 4096), true), true)
	c.reply(scsiResponse(abandoned.ITT(), StatusGood, nil), true)
	want := bytes.Repeat([]byte{0x5a}, 512)
	c.reply(dataIn(cmd.ITT(), 0, 0, want, true), true)
	r := wait(t, ch)
	if r.err != nil || !bytes.Equal(r.res.Data, want) {
		t.Fatalf("command after a cancelled one: err %v, data ok %v", r.err, r.err == nil && bytes.Equal(r.res.Data, want))
	}
	if s.Err() != nil {
		t.Fatalf("session ended: %v", s.Err())
	}
}

// A target-initiated NOP-In (TTT set) is answered with an immediate NOP-Out
// echoing TTT, LUN and data, ITT reserved, CmdSN current and not consumed.
func TestTargetNOPInIsAnsweredWithNOPOutEchoingTTT(t *testing.T) {
	checkNoSessionGoroutines(t)
	_, c := loginFake(t, nil, 31)
	exp, _ := c.window()
	p := nopIn(iscsi.ReservedTag, 0x1234)
	p.SetLUN(1 << 48)
	p.Data = []byte("are you there")
	c.reply(p, false)
	out := c.nextOp(iscsi.OpNOPOut)
	switch {
	case out.TTT() != 0x1234, out.ITT() != iscsi.ReservedTag, !out.Immediate(), !out.Final(),
		out.LUN() != 1<<48, string(out.Data) != "are you there", out.CmdSN() != exp:
		t.Fatalf("NOP-Out answer: TTT 0x%x ITT 0x%x immediate %v F %v LUN %x data %q CmdSN %d; want TTT 0x1234, ITT 0xffffffff, immediate, F, LUN 1, data echoed, CmdSN %d",
			out.TTT(), out.ITT(), out.Immediate(), out.Final(), out.LUN(), out.Data, out.CmdSN(), exp)
	}
}

func TestRejectFailsTheReferencedCommandOnly(t *testing.T) {
	checkNoSessionGoroutines(t)
	s, c := loginFake(t, nil, 31)
	c.setAutoPing()
	ctx := testContext(t)
	ch := goCommand(s, ctx, testUnitReady, nil, 0)
	cmd := c.nextOp(iscsi.OpSCSICommand)
	rej := iscsi.New(iscsi.OpReject)
	rej.SetFlags(iscsi.FlagFinal)
	rej.BHS[2] = 0x09
	rej.Data = cmd.BHS[:]
	c.reply(rej, true)
	r := wait(t, ch)
	if r.err == nil || !strings.Contains(r.err.Error(), "target rejected the SCSI Command: invalid PDU field (reason 0x09)") {
		t.Fatalf("rejected command: got %v", r.err)
	}
	if err := s.Ping(ctx); err != nil {
		t.Fatalf("session after a Reject: %v", err)
	}
}

func TestCheckConditionReturnsSCSIErrorWithSense(t *testing.T) {
	checkNoSessionGoroutines(t)
	s, c := loginFake(t, nil, 31)
	ctx := testContext(t)
	for _, tc := range []struct {
		name  string
		sense []byte
	}{
		{"fixed format", []byte{0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x25, 0x00, 0, 0, 0, 0}},
		{"descriptor format", []byte{0x72, 0x05, 0x25, 0x00, 0, 0, 0, 0}},
	} {
		ch := goCommand(s, ctx, testUnitReady, nil, 0)
		cmd := c.nextOp(iscsi.OpSCSICommand)
		c.reply(scsiResponse(cmd.ITT(), StatusCheckCondition, tc.sense), true)
		r := wait(t, ch)
		var se *SCSIError
		if !errors.As(r.err, &se) || *se != (SCSIError{Status: StatusCheckCondition, Key: 5, ASC: 0x25}) {
			t.Fatalf("%s: got %v, want CHECK CONDITION 05/25/00", tc.name, r.err)
		}
		if r.res == nil || !bytes.Equal(r.res.Sense, tc.sense) {
			t.Fatalf("%s: result does not carry the sense data", tc.name)
		}
		const want = "scsi: CHECK CONDITION, sense key ILLEGAL REQUEST (0x5), ASC/ASCQ 0x25/0x00 (logical unit not supported)"
		if r.err.Error() != want {
			t.Fatalf("%s: error %q, want %q", tc.name, r.err, want)
		}
	}
}

// Writes follow what the target negotiated: no immediate data when
// ImmediateData=No, nothing unsolicited when InitialR2T=Yes, Data-Out PDUs
// within the target's MaxRecvDataSegmentLength, each R2T's sequence exactly
// its Desired Data Transfer Length.
func TestWriteHonoursNegotiatedR2TAndSegmentLimits(t *testing.T) {
	checkNoSessionGoroutines(t)
	s, c := loginFake(t, iscsi.Text{
		{Key: "InitialR2T", Value: "Yes"}, {Key: "ImmediateData", Value: "No"},
		{Key: "MaxBurstLength", Value: "16384"}, {Key: "FirstBurstLength", Value: "8192"},
		{Key: "MaxRecvDataSegmentLength", Value: "4096"},
	}, 31)
	p := s.Params()
	if !p.InitialR2T || p.ImmediateData || p.MaxBurstLength != 16384 || p.FirstBurstLength != 8192 || p.TargetMaxRecvDataSegmentLength != 4096 {
		t.Fatalf("negotiated %+v", p)
	}
	data := pattern(40960, 7)
	ch := goCommand(s, testContext(t), rwCDB(true, 0, 80), data, 0)
	cmd := c.nextOp(iscsi.OpSCSICommand)
	if len(cmd.Data) != 0 || !cmd.Final() || cmd.ExpectedDataLength() != 40960 {
		t.Fatalf("command PDU: %d bytes immediate, F=%v, EDTL %d; want none, F, 40960", len(cmd.Data), cmd.Final(), cmd.ExpectedDataLength())
	}
	got := make([]byte, len(data))
	for i, burst := range [][2]uint32{{0, 16384}, {16384, 16384}, {32768, 8192}} {
		ttt := uint32(0x100 + i)
		c.reply(r2tPDU(cmd.ITT(), ttt, uint32(i), burst[0], burst[1]), false)
		off := burst[0]
		for sn := uint32(0); off < burst[0]+burst[1]; sn++ {
			d := c.nextOp(iscsi.OpDataOut)
			last := off+uint32(len(d.Data)) == burst[0]+burst[1]
			if d.TTT() != ttt || d.DataSN() != sn || d.BufferOffset() != off || len(d.Data) > 4096 || d.Final() != last {
				t.Fatalf("R2T %d: Data-Out TTT 0x%x DataSN %d offset %d len %d F %v; want TTT 0x%x DataSN %d offset %d len <= 4096 F %v",
					i, d.TTT(), d.DataSN(), d.BufferOffset(), len(d.Data), d.Final(), ttt, sn, off, last)
			}
			copy(got[off:], d.Data)
			off += uint32(len(d.Data))
		}
	}
	c.reply(scsiResponse(cmd.ITT(), StatusGood, nil), true)
	if r := wait(t, ch); r.err != nil {
		t.Fatal(r.err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("target received different data")
	}
}

// With InitialR2T=No the initiator sends FirstBurstLength unsolicited:
// immediate data up to the target's segment limit, then Data-Out with the
// reserved TTT; the rest waits for R2T.
func TestWriteSendsUnsolicitedDataUpToFirstBurst(t *testing.T) {
	checkNoSessionGoroutines(t)
	s, c := loginFake(t, iscsi.Text{
		{Key: "FirstBurstLength", Value: "12288"}, {Key: "MaxRecvDataSegmentLength", Value: "4096"},
	}, 31)
	data := pattern(20480, 3)
	ch := goCommand(s, testContext(t), rwCDB(true, 0, 40), data, 0)
	cmd := c.nextOp(iscsi.OpSCSICommand)
	if !bytes.Equal(cmd.Data, data[:4096]) || cmd.Final() {
		t.Fatalf("command PDU: %d bytes immediate, F=%v; want 4096 and F clear (unsolicited Data-Out follows)", len(cmd.Data), cmd.Final())
	}
	for i, off := range []uint32{4096, 8192} {
		d := c.nextOp(iscsi.OpDataOut)
		if d.TTT() != iscsi.ReservedTag || d.DataSN() != uint32(i) || d.BufferOffset() != off || !bytes.Equal(d.Data, data[off:off+4096]) || d.Final() != (i == 1) {
			t.Fatalf("unsolicited Data-Out %d: TTT 0x%x DataSN %d offset %d F %v", i, d.TTT(), d.DataSN(), d.BufferOffset(), d.Final())
		}
	}
	c.reply(r2tPDU(cmd.ITT(), 9, 0, 12288, 8192), false)
	for _, off := range []uint32{12288, 16384} {
		d := c.nextOp(iscsi.OpDataOut)
		if d.TTT() != 9 || d.BufferOffset() != off || !bytes.Equal(d.Data, data[off:off+4096]) {
			t.Fatalf("solicited Data-Out: TTT %d offset %d", d.TTT(), d.BufferOffset())
		}
	}
	c.reply(scsiResponse(cmd.ITT(), StatusGood, nil), true)
	if r := wait(t, ch); r.err != nil {
		t.Fatal(r.err)
	}
}

// Close drops the connection at once: pending commands (sent, or waiting
// for the window) fail with an error wrapping ErrClosed, Done closes, and
// no session goroutine survives.
func TestCloseFailsPendingCommandsAndLeavesNoGoroutines(t *testing.T) {
	checkNoSessionGoroutines(t)
	s, c := loginFake(t, nil, 2) // room for 3 commands; the 4th stalls
	ctx := testContext(t)
	var chans []<-chan cmdResult
	for range 4 {
		chans = append(chans, goCommand(s, ctx, testUnitReady, nil, 0))
	}
	for range 3 {
		c.nextOp(iscsi.OpSCSICommand)
	}
	eventually(t, "the fourth command to wait for the window", func() bool { return s.stalledCount() == 1 })
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.Done():
	default:
		t.Fatal("Done not closed after Close")
	}
	if !errors.Is(s.Err(), ErrClosed) {
		t.Fatalf("Err after Close: %v", s.Err())
	}
	for i, ch := range chans {
		r := wait(t, ch)
		if !errors.Is(r.err, ErrClosed) {
			t.Fatalf("pending command %d: got %v, want an error wrapping ErrClosed", i, r.err)
		}
	}
	if _, err := s.Command(ctx, 1, testUnitReady, nil, 0); !errors.Is(err, ErrClosed) {
		t.Fatalf("command after Close: %v", err)
	}
	if err := s.Ping(ctx); !errors.Is(err, ErrClosed) {
		t.Fatalf("ping after Close: %v", err)
	}
	// The target sees the connection go.
	for range c.in {
	}
}

// Malformed or unexpected PDUs end the session with an error naming what
// was wrong, fail what was pending, and never panic.
func TestMalformedPDUsEndTheSessionWithANamedError(t *testing.T) {
	raw := func(p *iscsi.PDU) []byte {
		b, err := p.Marshal(iscsi.Digests{})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	cases := []struct {
		name string
		send func(itt uint32) []byte
		want string
	}{
		{"login response in full feature phase", func(itt uint32) []byte { return raw(iscsi.New(iscsi.OpLoginResp)) },
			"protocol error: unexpected Login Response in full feature phase"},
		{"unknown opcode", func(itt uint32) []byte { return raw(iscsi.New(0x1e)) },
			"protocol error: unexpected opcode 0x1e in full feature phase"},
		{"Data-In past the read buffer", func(itt uint32) []byte { return raw(dataIn(itt, 0, 0, make([]byte, 1024), true)) },
			"carries bytes up to 1024 of a 512-byte read"},
		{"Data-In out of order", func(itt uint32) []byte { return raw(dataIn(itt, 0, 256, make([]byte, 256), false)) },
			"at offset 256, expected 0"},
		{"Data-In with wrong DataSN", func(itt uint32) []byte { return raw(dataIn(itt, 3, 0, make([]byte, 256), false)) },
			"has DataSN 3, expected 0"},
		{"data segment beyond MaxRecvDataSegmentLength", func(itt uint32) []byte {
			b := raw(dataIn(itt, 0, 0, nil, false))
			b[5], b[6], b[7] = 0x10, 0, 0 // declares 1 MiB
			return b
		}, "data segment longer than negotiated MaxRecvDataSegmentLength"},
		{"sense length beyond the segment", func(itt uint32) []byte {
			p := scsiResponse(itt, StatusCheckCondition, nil)
			p.Data = []byte{0, 64, 0x70, 0, 5, 0}
			return raw(p)
		}, "declares 64 bytes of sense data but carries 4"},
		{"R2T for a read", func(itt uint32) []byte { return raw(r2tPDU(itt, 1, 0, 0, 512)) },
			"which has no data to write"},
		{"short Reject", func(itt uint32) []byte {
			p := iscsi.New(iscsi.OpReject)
			p.Data = make([]byte, 10)
			return raw(p)
		}, "Reject carries 10 bytes"},
		{"NOP-In with ITT and TTT", func(itt uint32) []byte { return raw(nopIn(5, 6)) },
			"NOP-In with both ITT"},
		{"truncated PDU", func(itt uint32) []byte { return raw(scsiResponse(itt, 0, nil))[:20] },
			"target closed the connection in the middle of a PDU"},
		{"async logout request", func(itt uint32) []byte {
			p := iscsi.New(iscsi.OpAsyncMsg)
			p.BHS[36] = 1
			binary.BigEndian.PutUint16(p.BHS[42:44], 5)
			return raw(p)
		}, "target requested logout (asynchronous event 1, within 5 s)"},
		{"async connection drop", func(itt uint32) []byte {
			p := iscsi.New(iscsi.OpAsyncMsg)
			p.BHS[36] = 2
			return raw(p)
		}, "target is dropping the connection"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			checkNoSessionGoroutines(t)
			s, c := loginFake(t, nil, 31, func(o *Options) { o.MaxRecvDataSegmentLength = 8192 })
			ch := goCommand(s, testContext(t), read10(1), nil, 512)
			cmd := c.nextOp(iscsi.OpSCSICommand)
			b := tc.send(cmd.ITT())
			// Stamp a sane window so only the intended defect is present.
			if len(b) >= 36 {
				exp, max := c.window()
				binary.BigEndian.PutUint32(b[28:], exp)
				binary.BigEndian.PutUint32(b[32:], max)
			}
			if err := c.writeRaw(b); err != nil {
				t.Fatal(err)
			}
			if tc.name == "truncated PDU" {
				c.c.Close()
			}
			r := wait(t, ch)
			if r.err == nil {
				t.Fatal("pending command succeeded")
			}
			<-s.Done()
			if err := s.Err(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("session error %q, want it to contain %q", err, tc.want)
			}
			if !strings.Contains(r.err.Error(), tc.want) {
				t.Fatalf("command error %q, want it to contain %q", r.err, tc.want)
			}
		})
	}
}

func TestLoginFailures(t *testing.T) {
	checkNoSessionGoroutines(t)
	const target = "iqn.2024-01.dev.certkit:fake"
	opts := func(addr string) Options {
		return Options{InitiatorName: initiatorIQN, TargetName: target, Address: addr, LoginTimeout: shortLoginTimeout}
	}
	// status answers the first Login Request with a status class/detail.
	status := func(class, detail byte, keys iscsi.Text) func(*fakeConn) {
		return func(c *fakeConn) {
			req := c.read()
			p := loginResponse(req, 0, 0)
			p.SetFlags(0)
			p.BHS[36], p.BHS[37] = class, detail
			p.Data = keys.Encode()
			c.reply(p, true)
		}
	}
	cases := []struct {
		name   string
		target func(*fakeConn)
		check  func(t *testing.T, addr string, err error)
	}{
		{"target not found", status(2, 3, nil), func(t *testing.T, addr string, err error) {
			want := "login to " + target + " at " + addr + " failed: target not found (status 0x0203)"
			var le *LoginError
			if err == nil || err.Error() != want || !errors.As(err, &le) || le.Status() != 0x0203 {
				t.Fatalf("got %v, want %q as *LoginError", err, want)
			}
		}},
		{"redirect", status(1, 1, iscsi.Text{{Key: "TargetAddress", Value: "127.0.0.1:3261,2"}}), func(t *testing.T, addr string, err error) {
			var le *LoginError
			if !errors.As(err, &le) || le.Redirect != "127.0.0.1:3261,2" ||
				err.Error() != "login to "+target+" at "+addr+" failed: target moved temporarily to 127.0.0.1:3261,2 (status 0x0101)" {
				t.Fatalf("got %v", err)
			}
		}},
		{"out of resources", status(3, 2, nil), func(t *testing.T, addr string, err error) {
			if err == nil || !strings.HasSuffix(err.Error(), "failed: target out of resources (status 0x0302)") {
				t.Fatalf("got %v", err)
			}
		}},
		{"CHAP required", func(c *fakeConn) {
			req := c.read()
			p := loginResponse(req, 0, 0)
			p.SetFlags(0)
			p.Data = iscsi.Text{{Key: "AuthMethod", Value: "CHAP"}}.Encode()
			c.reply(p, true)
		}, func(t *testing.T, addr string, err error) {
			if err == nil || !strings.Contains(err.Error(), "target requires AuthMethod=CHAP") {
				t.Fatalf("got %v", err)
			}
		}},
		{"answer outside the negotiation rules", func(c *fakeConn) {
			c.login(iscsi.Text{{Key: "FirstBurstLength", Value: "131072"}}, 0)
		}, func(t *testing.T, addr string, err error) {
			if err == nil || !strings.Contains(err.Error(), "target answered FirstBurstLength=131072 to the offer FirstBurstLength=65536") {
				t.Fatalf("got %v", err)
			}
		}},
		{"digest forced", func(c *fakeConn) {
			c.login(iscsi.Text{{Key: "HeaderDigest", Value: "CRC32C"}}, 0)
		}, func(t *testing.T, addr string, err error) {
			if err == nil || !strings.Contains(err.Error(), "HeaderDigest=CRC32C") {
				t.Fatalf("got %v", err)
			}
		}},
		{"no answer within LoginTimeout", func(c *fakeConn) { c.read() }, func(t *testing.T, addr string, err error) {
			if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "not finished within LoginTimeout 200ms") {
				t.Fatalf("got %v", err)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeTarget(t)
			errc := make(chan error, 1)
			go func() {
				s, err := Login(testContext(t), opts(f.Addr))
				if s != nil {
					s.Close()
				}
				errc <- err
			}()
			c := f.accept()
			tc.target(c)
			tc.check(t, f.Addr, <-errc)
		})
	}

	t.Run("connection refused", func(t *testing.T) {
		// A port nobody listens on: take one and let it go.
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		_, err = Login(testContext(t), opts(addr))
		if err == nil || !strings.HasPrefix(err.Error(), "login to "+target+" at "+addr+" failed: dial tcp") {
			t.Fatalf("got %v", err)
		}
	})
}

// Many goroutines share one session; every response reaches its caller.
func TestConcurrentCommandsAreMatchedByITT(t *testing.T) {
	checkNoSessionGoroutines(t)
	s, c := loginFake(t, nil, 63)
	ctx := testContext(t)
	const n = 32
	// The target answers out of order: collect all, answer in reverse.
	var wg sync.WaitGroup
	errs := make([]error, n)
	datas := make([][]byte, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cdb := read10(1)
			cdb[5] = byte(i) // LBA low byte names the caller
			res, err := s.Command(ctx, 1, cdb, nil, 512)
			errs[i] = err
			if err == nil {
				datas[i] = res.Data
			}
		}()
	}
	var cmds []*iscsi.PDU
	for range n {
		cmds = append(cmds, c.nextOp(iscsi.OpSCSICommand))
	}
	for i := len(cmds) - 1; i >= 0; i-- {
		lba := cmds[i].CDB()[5]
		c.reply(dataIn(cmds[i].ITT(), 0, 0, bytes.Repeat([]byte{lba}, 512), true), true)
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil || !bytes.Equal(datas[i], bytes.Repeat([]byte{byte(i)}, 512)) {
			t.Fatalf("caller %d: err %v, got someone else's data: %v", i, errs[i], errs[i] == nil)
		}
	}
}

func TestLogoutEndsTheSessionCleanly(t *testing.T) {
	checkNoSessionGoroutines(t)
	s, c := loginFake(t, nil, 31)
	errc := make(chan error, 1)
	go func() { errc <- s.Logout(testContext(t)) }()
	req := c.nextOp(iscsi.OpLogoutReq)
	if !req.Immediate() || req.Flags() != iscsi.FlagFinal {
		t.Fatalf("Logout Request: immediate %v flags 0x%02x; want immediate, F with reason 0", req.Immediate(), req.Flags())
	}
	p := iscsi.New(iscsi.OpLogoutResp)
	p.SetFlags(iscsi.FlagFinal)
	p.SetITT(req.ITT())
	c.reply(p, true)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	<-s.Done()
	if !errors.Is(s.Err(), ErrLoggedOut) {
		t.Fatalf("Err after Logout: %v", s.Err())
	}
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7) ^ byte(i>>9) ^ seed
	}
	return b
}
