package frontend_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/certkit/certkit/iscsi"
	"github.com/certkit/certkit/iscsi/initiator"
	"github.com/certkit/certkit/targets/frontend"
	"github.com/certkit/certkit/targets/frontend/frontendtest"
)

// tmfReq sends an immediate task management request on a raw connection
// and returns the Task Management Function Response, skipping nothing: the
// response must be the next PDU.
func tmfReq(t *testing.T, c *frontendtest.Conn, fn byte, lun int, ref, refCmdSN uint32) *iscsi.PDU {
	t.Helper()
	p := iscsi.New(iscsi.OpTaskMgmtReq)
	p.SetImmediate(true)
	p.SetFlags(iscsi.FlagFinal | fn)
	p.SetLUN(frontendtest.LUNField(lun))
	p.SetITT(c.NextITT())
	p.SetU32(20, ref)
	p.SetCmdSN(c.CmdSN)
	p.SetU32(32, refCmdSN)
	send(t, c, p)
	r := recv(t, c)
	if r.Opcode() != iscsi.OpTaskMgmtResp || r.ITT() != p.ITT() {
		t.Fatalf("got %s, want the Task Management Response for ITT 0x%x", r, p.ITT())
	}
	return r
}

// waitingWrite starts a WRITE that waits for its Data-Out and returns the
// command and its R2T.
func waitingWrite(t *testing.T, c *frontendtest.Conn, lun int) (cmd, r2t *iscsi.PDU) {
	t.Helper()
	cmd = scsiCmd(c, frontendtest.Write10(0, 1), iscsi.FlagFinal|iscsi.FlagWrite, 512)
	cmd.SetLUN(frontendtest.LUNField(lun))
	send(t, c, cmd)
	r2t = recv(t, c)
	if r2t.Opcode() != iscsi.OpR2T || r2t.ITT() != cmd.ITT() {
		t.Fatalf("got %s, want the R2T of the write", r2t)
	}
	return cmd, r2t
}

// answer sends the Data-Out an R2T asks for and returns the write's status.
func answer(t *testing.T, c *frontendtest.Conn, cmd, r2t *iscsi.PDU) byte {
	t.Helper()
	d := iscsi.New(iscsi.OpDataOut)
	d.SetFlags(iscsi.FlagFinal)
	d.SetLUN(cmd.LUN())
	d.SetITT(cmd.ITT())
	d.SetTTT(r2t.TTT())
	d.Data = make([]byte, r2t.ResidualCount())
	send(t, c, d)
	r := recv(t, c)
	if r.Opcode() != iscsi.OpSCSIResponse || r.ITT() != cmd.ITT() {
		t.Fatalf("got %s, want the write's SCSI Response", r)
	}
	return r.BHS[3]
}

// window returns the free slots an immediate ping's NOP-In advertises.
func window(t *testing.T, c *frontendtest.Conn) uint32 {
	t.Helper()
	p := nopOut(c, true)
	send(t, c, p)
	r := recv(t, c)
	if r.Opcode() != iscsi.OpNOPIn || r.ITT() != p.ITT() {
		t.Fatalf("got %s, want the NOP-In for ITT 0x%x", r, p.ITT())
	}
	return r.MaxCmdSN() - r.ExpCmdSN() + 1
}

// RFC 7143 §11.5.1 and SAM-5 §7: ABORT TASK SET and CLEAR TASK SET abort
// the tasks of the asking session on the LU only; LUN RESET and TARGET WARM
// RESET abort those of every session (with no response for them), give
// their window slots back, and tell the SCSI layer (frontend.Resetter).
func TestTaskManagementScopes(t *testing.T) {
	const depth = 4
	s := start(t, func(c *frontend.Config) { c.QueueDepth = depth })
	a := login(t, s.addr(), 80)
	b := login(t, s.addr(), 81)

	t.Run("ABORT TASK SET spares other sessions and other LUs", func(t *testing.T) {
		waitingWrite(t, a, 0)
		aw1, aw1r2t := waitingWrite(t, a, 1)
		bw, br2t := waitingWrite(t, b, 0)
		if r := tmfReq(t, a, 2, 0, iscsi.ReservedTag, 0); r.BHS[2] != 0 {
			t.Fatalf("ABORT TASK SET: response %d, want 0 (function complete)", r.BHS[2])
		}
		ping(t, a) // the aborted write was never answered
		if got := answer(t, a, aw1, aw1r2t); got != 0 {
			t.Errorf("write on LUN 1 after ABORT TASK SET of LUN 0: status 0x%02x", got)
		}
		if got := answer(t, b, bw, br2t); got != 0 {
			t.Errorf("the other session's write after ABORT TASK SET: status 0x%02x", got)
		}
		if w := window(t, a); w != depth {
			t.Errorf("after the abort the window has %d free slots, want %d: the aborted task kept its slot", w, depth)
		}
	})

	t.Run("LUN RESET aborts every session's tasks on the LU", func(t *testing.T) {
		waitingWrite(t, a, 0)
		waitingWrite(t, b, 0)
		other, otherR2T := waitingWrite(t, b, 1)
		if r := tmfReq(t, a, 5, 0, iscsi.ReservedTag, 0); r.BHS[2] != 0 {
			t.Fatalf("LUN RESET: response %d, want 0", r.BHS[2])
		}
		ping(t, a)
		ping(t, b) // b's write on LUN 0 is gone without a response
		if got := answer(t, b, other, otherR2T); got != 0 {
			t.Errorf("write on LUN 1 after LUN RESET of LUN 0: status 0x%02x", got)
		}
		for _, c := range []*frontendtest.Conn{a, b} {
			if w := window(t, c); w != depth {
				t.Errorf("after LUN RESET a session's window has %d free slots, want %d", w, depth)
			}
		}
		if log := s.fake.resetLog(); len(log) != 1 || !strings.HasPrefix(log[0], "LU 0 by "+initiatorIQN) {
			t.Errorf("SCSI layer resets %q, want one LU 0 reset by the asking nexus", log)
		}
	})

	t.Run("TARGET WARM RESET aborts everything", func(t *testing.T) {
		waitingWrite(t, a, 0)
		waitingWrite(t, b, 1)
		if r := tmfReq(t, b, 6, 0, iscsi.ReservedTag, 0); r.BHS[2] != 0 {
			t.Fatalf("TARGET WARM RESET: response %d, want 0", r.BHS[2])
		}
		ping(t, a)
		ping(t, b)
		if log := s.fake.resetLog(); len(log) != 2 || !strings.HasPrefix(log[1], "target by ") {
			t.Errorf("SCSI layer resets %q, want a target reset last", log)
		}
		res, err := a.Command(0, tur, 0, nil)
		if err != nil || res.CheckGood() != nil {
			t.Fatalf("command after TARGET WARM RESET: %v %v", err, res)
		}
	})
}

// ABORT TASK of a task that is executing: either the abort takes it (no
// response for the task, "function complete") or the task completes first
// (its response, then "task does not exist") — never a response and
// "function complete" both, which libiscsi's AbortTaskSimpleAsync rejects.
func TestAbortTaskOfAnExecutingTask(t *testing.T) {
	s := start(t, nil)
	gate := make(chan struct{})
	s.fake.gate = gate
	s.fake.started = make(chan uint64, 1)
	c := login(t, s.addr(), 82)
	cmd := scsiCmd(c, tur, iscsi.FlagFinal, 0)
	send(t, c, cmd)
	<-s.fake.started
	p := iscsi.New(iscsi.OpTaskMgmtReq)
	p.SetImmediate(true)
	p.SetFlags(iscsi.FlagFinal | 1)
	p.SetITT(c.NextITT())
	p.SetU32(20, cmd.ITT())
	p.SetCmdSN(c.CmdSN)
	p.SetU32(32, cmd.CmdSN())
	send(t, c, p)
	ping(t, c) // the target has read the abort
	close(gate)
	var got []string
	for {
		r := recv(t, c)
		got = append(got, fmt.Sprintf("%s/%d", r.Opcode(), r.BHS[2]))
		if r.Opcode() == iscsi.OpTaskMgmtResp {
			break
		}
	}
	aborted := []string{"Task Management Response/0"}
	completed := []string{"SCSI Response/0", "Task Management Response/1"}
	if !slices.Equal(got, aborted) && !slices.Equal(got, completed) {
		t.Errorf("got %v, want %v (aborted) or %v (completed first)", got, aborted, completed)
	}
	ping(t, c)
}

// An ABORT TASK naming a command that never arrived but was sent before
// (RefCmdSN below the request's CmdSN) is "function complete", and that
// CmdSN counts as received: later commands are not held up by the gap, and
// the command arriving late is dropped (RFC 7143 §11.5.1).
func TestAbortTaskOfACommandThatNeverArrived(t *testing.T) {
	s := start(t, nil)
	c := login(t, s.addr(), 83)
	lost := scsiCmd(c, tur, iscsi.FlagFinal, 0) // not sent (yet)
	if r := tmfReq(t, c, 1, 0, lost.ITT(), lost.CmdSN()); r.BHS[2] != 0 {
		t.Fatalf("ABORT TASK of a command sent earlier that never arrived: response %d, want 0", r.BHS[2])
	}
	if r := tmfReq(t, c, 1, 0, 0x7777, c.CmdSN+5); r.BHS[2] != 1 {
		t.Errorf("ABORT TASK of an unknown task not sent before: response %d, want 1 (task does not exist)", r.BHS[2])
	}
	res, err := c.Command(0, tur, 0, nil)
	if err != nil || res.CheckGood() != nil {
		t.Fatalf("the command after the gap: %v %v", err, res)
	}
	send(t, c, lost) // arrives late: a duplicate of a CmdSN already taken
	ping(t, c)
}

// Ping timings of TestNOPInPings.
const (
	pingInterval = 25 * time.Millisecond
	pingTimeout  = 500 * time.Millisecond // generous: a loaded CI box delays answers
)

// Target-initiated pings (RFC 7143 §11.19): a NOP-In with a TTT every
// NopInInterval; an initiator that echoes them keeps its session, one that
// does not is dropped after NopInTimeout.
func TestNOPInPings(t *testing.T) {
	const interval, timeout = pingInterval, pingTimeout
	var echoes atomic.Int64 // NOP-Outs answering a ping
	s := start(t, func(c *frontend.Config) {
		c.NopInInterval, c.NopInTimeout = interval, timeout
		c.Trace = func(in bool, p *iscsi.PDU) {
			if in && p.Opcode() == iscsi.OpNOPOut && p.ITT() == iscsi.ReservedTag && p.TTT() != iscsi.ReservedTag {
				echoes.Add(1)
			}
		}
	})

	t.Run("a silent initiator is dropped", func(t *testing.T) {
		c := login(t, s.addr(), 84)
		expStat := c.ExpStatSN
		r := recv(t, c)
		if r.Opcode() != iscsi.OpNOPIn || r.TTT() == iscsi.ReservedTag || r.ITT() != iscsi.ReservedTag {
			t.Fatalf("got %s TTT 0x%x, want a NOP-In ping with a target transfer tag and no ITT", r, r.TTT())
		}
		if r.StatSN() != expStat {
			t.Errorf("ping carries StatSN %d, want the next StatSN %d, not advanced", r.StatSN(), expStat)
		}
		started := time.Now()
		c.Timeout = interval + timeout + ioTimeout
		if err := c.WaitClosed(); err != nil {
			t.Fatal(err)
		}
		if d := time.Since(started); d < timeout/2 {
			t.Errorf("dropped after %v, before the ping timeout %v", d, timeout)
		}
	})

	t.Run("an initiator that answers stays", func(t *testing.T) {
		from := echoes.Load()
		sess := sessionOn(t, s.addr(), 85) // answers pings
		outlivePings(t, echoes.Load, from)
		if err := sess.NOP(true, []byte("still here")); err != nil {
			t.Fatalf("session answering pings was dropped: %v", err)
		}
	})

	t.Run("the emulated host's initiator answers them", func(t *testing.T) {
		from := echoes.Load()
		ctx := context.Background()
		sess, err := initiator.Login(ctx, initiator.Options{InitiatorName: initiatorIQN, TargetName: targetIQN, Address: s.addr(), ISID: isid(87)})
		if err != nil {
			t.Fatal(err)
		}
		defer sess.Close()
		outlivePings(t, echoes.Load, from)
		if err := sess.TestUnitReady(ctx, 0); err != nil {
			t.Fatalf("after the pings: %v", err)
		}
	})
}

// outlivePings waits until a session has lived through twice the ping
// timeout with at least minPings pings answered (count() - from).
func outlivePings(t *testing.T, count func() int64, from int64) {
	t.Helper()
	const span, minPings = 2 * pingTimeout, 5
	start := time.Now()
	deadline := start.Add(span + 2*ioTimeout)
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for time.Since(start) < span || count()-from < minPings {
		if time.Now().After(deadline) {
			t.Fatalf("%d pings answered in %v, want at least %d", count()-from, time.Since(start), minPings)
		}
		<-tick.C
	}
}

// A flood of connections that never log in is capped: past MaxLogins they
// are closed at once, the sessions already up are not harmed, and past
// MaxConnections even a well-behaved login is refused until others leave.
func TestConnectionFloodIsCapped(t *testing.T) {
	const maxConns, maxLogins = 6, 3
	s := start(t, func(c *frontend.Config) { c.MaxConnections = maxConns; c.MaxLogins = maxLogins })
	up := login(t, s.addr(), 86)
	ping(t, up) // the target is past up's login
	var flood []*frontendtest.Conn
	for range 10 {
		// Refused ones are closed at once, kept ones only at the login
		// timeout: half of it tells them apart.
		c, err := frontendtest.Dial(s.addr(), loginTimeout/2)
		if err != nil {
			t.Fatal(err)
		}
		flood = append(flood, c)
	}
	var open atomic.Int64
	var wg sync.WaitGroup
	for _, c := range flood {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if c.WaitClosed() != nil {
				open.Add(1)
			}
		}()
	}
	wg.Wait()
	if open.Load() != maxLogins {
		t.Errorf("%d of 10 idle connections kept, want MaxLogins=%d", open.Load(), maxLogins)
	}
	ping(t, up)
	for _, c := range flood {
		c.Close()
	}
	// Logged in sessions count against MaxConnections: 1 + 5 fill it.
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for i := range maxConns - 1 {
		var err error
		deadline := time.Now().Add(ioTimeout)
		for { // the flood's slots are freed as the target notices the closes
			var c *frontendtest.Conn
			if c, err = frontendtest.Normal(s.addr(), initiatorIQN, targetIQN, isid(byte(90+i)), ioTimeout); err == nil {
				t.Cleanup(func() { c.Close() })
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("login %d with %d connections open: %v", i, i+1, err)
			}
			<-tick.C
		}
	}
	c, err := frontendtest.Dial(s.addr(), ioTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.WaitClosed(); err != nil {
		t.Errorf("connection past MaxConnections=%d: %v", maxConns, err)
	}
	ping(t, up)
}

// Lengths past what was negotiated: a data segment over our
// MaxRecvDataSegmentLength ends the connection; immediate data over
// FirstBurstLength and Data-Out past the Expected Data Transfer Length are
// rejected, and the session goes on.
func TestLengthsPastTheNegotiatedLimits(t *testing.T) {
	s := start(t, func(c *frontend.Config) { c.MaxRecvDataSegmentLength = 4096; c.FirstBurstLength = 1024 })

	t.Run("data segment over MaxRecvDataSegmentLength", func(t *testing.T) {
		c := login(t, s.addr(), 100)
		p := nopOut(c, true)
		p.Data = make([]byte, 4100)
		send(t, c, p)
		if err := c.WaitClosed(); err != nil {
			t.Error(err)
		}
	})

	t.Run("immediate data over FirstBurstLength", func(t *testing.T) {
		c := login(t, s.addr(), 101, iscsi.KV{Key: "FirstBurstLength", Value: "1024"})
		p := scsiCmd(c, frontendtest.Write10(0, 4), iscsi.FlagFinal|iscsi.FlagWrite, 2048)
		p.Data = make([]byte, 2048)
		send(t, c, p)
		if r := recv(t, c); r.Opcode() != iscsi.OpReject || r.BHS[2] != 0x04 {
			t.Fatalf("got %s reason 0x%02x, want Reject (protocol error)", r, r.BHS[2])
		}
		res, err := c.Command(0, tur, 0, nil)
		if err != nil || res.CheckGood() != nil {
			t.Fatalf("command after the rejected one: %v %v", err, res)
		}
	})

	t.Run("Data-Out past the expected length", func(t *testing.T) {
		c := login(t, s.addr(), 102)
		cmd, r2t := waitingWrite(t, c, 0)
		d := iscsi.New(iscsi.OpDataOut)
		d.SetFlags(iscsi.FlagFinal)
		d.SetITT(cmd.ITT())
		d.SetTTT(r2t.TTT())
		d.SetBufferOffset(256)
		d.Data = make([]byte, 512) // 256..768 of a 512-byte write
		send(t, c, d)
		if r := recv(t, c); r.Opcode() != iscsi.OpReject || r.BHS[2] != 0x09 {
			t.Fatalf("got %s reason 0x%02x, want Reject (invalid PDU field)", r, r.BHS[2])
		}
		if got := answer(t, c, cmd, r2t); got != 0 {
			t.Errorf("the write, answered properly after all: status 0x%02x", got)
		}
	})
}

// At ErrorRecoveryLevel 0 a Data-Out out of sequence (a DataSN that is not
// the next of its sequence) cannot be recovered within the connection: the
// target rejects it and drops the connection (libiscsi's
// iSCSIDataSnInvalid expects the write to fail).
func TestDataOutOutOfSequenceEndsTheConnection(t *testing.T) {
	s := start(t, nil)
	for _, sn := range []uint32{1, 27, 0xffffffff} {
		c := login(t, s.addr(), 103, iscsi.KV{Key: "ImmediateData", Value: "No"})
		cmd, r2t := waitingWrite(t, c, 0)
		d := iscsi.New(iscsi.OpDataOut)
		d.SetFlags(iscsi.FlagFinal)
		d.SetITT(cmd.ITT())
		d.SetTTT(r2t.TTT())
		d.SetDataSN(sn) // the first of the sequence must be 0
		d.Data = make([]byte, r2t.ResidualCount())
		send(t, c, d)
		if r := recv(t, c); r.Opcode() != iscsi.OpReject || r.BHS[2] != 0x04 {
			t.Errorf("DataSN %d: got %s reason 0x%02x, want Reject (protocol error)", sn, r, r.BHS[2])
		}
		if err := c.WaitClosed(); err != nil {
			t.Errorf("DataSN %d: %v", sn, err)
		}
	}
	ping(t, login(t, s.addr(), 104))
}
