package frontend

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"

	"github.com/certkit/certkit/iscsi"
	"github.com/gostor/gotgt/pkg/api"
)

// Reject reasons, RFC 7143 §11.17.1.
const (
	rejectDataDigest    = 0x02
	rejectProtocolError = 0x04
	rejectNotSupported  = 0x05
	rejectInvalidField  = 0x09
)

// maxTransfer bounds one command's Expected Data Transfer Length so a
// hostile initiator cannot make the target allocate gigabytes; larger
// commands fail with CHECK CONDITION (ILLEGAL REQUEST).
const maxTransfer = 64 << 20

// stat says what a target PDU does with StatSN.
type stat int

const (
	statNone    stat = iota // field not used (Data-In without status)
	statPeek                // carries the next StatSN without using it (R2T)
	statAdvance             // a status: takes StatSN and advances it
)

type outPDU struct {
	p          *iscsi.PDU
	stat       stat
	closeAfter bool   // drop the connection once written (logout)
	before     func() // runs in the writer just before the PDU is written
}

// session is one iSCSI session and its single connection (MaxConnections=1).
//
// Goroutines: the reader (run) reads PDUs and handles them in arrival order;
// the executor runs SCSI commands one at a time in CmdSN order; the writer
// owns the socket's write side and StatSN. Close of done stops all three.
type session struct {
	srv       *Server
	nc        net.Conn
	tpgt      uint16
	par       params
	initiator string
	alias     string
	isid      [6]byte
	tsih      uint16
	cid       uint16
	discovery bool
	nexus     *api.ITNexus
	depth     uint32

	statSN uint32 // writer-owned once full feature phase starts

	mu       sync.Mutex
	expCmdSN uint32
	inflight uint32 // delivered non-immediate commands not yet answered
	pending  map[uint32]pendingItem
	tasks    map[uint32]*task // by ITT
	nextTTT  uint32
	queue    []queued
	textBuf  []byte

	qsignal   chan struct{}
	out       chan outPDU
	done      chan struct{}
	closeOnce sync.Once
	gone      chan struct{} // closed once torn down and unregistered
	wg        sync.WaitGroup
}

type pendingItem struct {
	counts bool
	run    func()
}

type queued struct {
	task   *task
	logout *iscsi.PDU
}

type r2tState struct {
	off, len uint32
}

type task struct {
	itt       uint32
	lun       uint64 // LUN field as sent
	cmdSN     uint32
	immediate bool
	read      bool
	write     bool
	attr      int
	cdb       []byte
	edtl      uint32
	tooLarge  bool   // edtl > maxTransfer: answered with sense, data discarded
	buf       []byte // Data-Out buffer (edtl bytes) of a write
	got       uint32 // Data-Out bytes received
	unsolEnd  uint32 // end of immediate + unsolicited data
	next      uint32 // next offset to solicit with an R2T
	r2tSN     uint32
	r2ts      map[uint32]*r2tState // outstanding, by TTT
	delivered bool

	ready       chan struct{} // closed when the task may execute
	readyClosed bool
	aborted     bool
	executing   bool
	done        chan struct{} // closed when its response is being written or it is dropped
}

func (t *task) closeReady() {
	if !t.readyClosed {
		t.readyClosed = true
		close(t.ready)
	}
}

func newSession(srv *Server, c net.Conn, p *portal, par params) *session {
	return &session{
		srv:     srv,
		nc:      c,
		tpgt:    p.tpgt,
		par:     par,
		depth:   uint32(srv.cfg.QueueDepth),
		pending: map[uint32]pendingItem{},
		tasks:   map[uint32]*task{},
		qsignal: make(chan struct{}, 1),
		out:     make(chan outPDU, 64),
		done:    make(chan struct{}),
		gone:    make(chan struct{}),
	}
}

func (s *session) logf(format string, args ...any) {
	s.srv.logf("session TSIH %d (%s): "+format, append([]any{s.tsih, s.initiator}, args...)...)
}

func (s *session) close() {
	s.closeOnce.Do(func() {
		close(s.done)
		s.nc.Close()
	})
}

// teardown ends the session: closes the connection, waits for its
// goroutines, forgets the I_T nexus and unregisters it.
func (s *session) teardown() {
	s.close()
	s.wg.Wait()
	if s.nexus != nil {
		s.srv.cfg.SCSI.RemoveNexus(s.nexus)
	}
	s.srv.unregister(s)
	close(s.gone)
}

func (s *session) run() {
	s.wg.Add(2)
	go s.writer()
	go s.executor()
	err := s.reader()
	select {
	case <-s.done:
	default:
		if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
			s.logf("closing: %v", err)
		}
	}
	s.teardown()
}

func (s *session) reader() error {
	fr := iscsi.Framing{Digests: s.par.digests, MaxDataSegment: s.par.ourRecv}
	for {
		p, err := iscsi.ReadPDU(s.nc, fr)
		if err != nil {
			if errors.Is(err, iscsi.ErrDataDigest) && p != nil {
				// ERL 0: reject, then recover by dropping the connection.
				s.sendReject(p, rejectDataDigest, true)
				<-s.done
			}
			return err
		}
		if s.srv.cfg.Trace != nil {
			s.srv.cfg.Trace(true, p)
		}
		if err := s.handle(p); err != nil {
			return err
		}
	}
}

func (s *session) handle(p *iscsi.PDU) error {
	op := p.Opcode()
	if s.discovery {
		switch op {
		case iscsi.OpNOPOut, iscsi.OpTextReq, iscsi.OpLogoutReq:
		default:
			s.rejectRequest(p, rejectProtocolError)
			return nil
		}
	}
	switch op {
	case iscsi.OpNOPOut:
		s.nopOut(p)
	case iscsi.OpSCSICommand:
		return s.scsiCommand(p)
	case iscsi.OpDataOut:
		s.dataOut(p)
	case iscsi.OpTextReq:
		s.textReq(p)
	case iscsi.OpLogoutReq:
		s.logoutReq(p)
	case iscsi.OpTaskMgmtReq:
		s.taskMgmtReq(p)
	case iscsi.OpLoginReq:
		s.sendReject(p, rejectProtocolError, false)
	default:
		s.sendReject(p, rejectNotSupported, false)
	}
	return nil
}

// rejectRequest rejects a request and, when it is a non-immediate command
// request, still consumes its CmdSN: the initiator counted it, and a gap
// would strand every later command (the failure gotgt has for NOP-Outs).
func (s *session) rejectRequest(p *iscsi.PDU, reason byte) {
	s.sendReject(p, reason, false)
	switch p.Opcode() {
	case iscsi.OpSCSICommand, iscsi.OpTaskMgmtReq, iscsi.OpTextReq, iscsi.OpNOPOut, iscsi.OpLogoutReq:
		s.deliver(p.CmdSN(), p.Immediate(), false, func() {})
	}
}

// deliver runs fn in CmdSN order (RFC 7143 §4.2.2.1). Immediate requests
// run at once; others wait for their turn inside the window, and anything
// outside the window is dropped silently, as the RFC requires. counts marks
// a request that holds a queue slot until answered (SCSI commands).
//
// It reports false when the request was dropped.
func (s *session) deliver(cmdSN uint32, immediate, counts bool, fn func()) bool {
	if immediate {
		fn()
		return true
	}
	s.mu.Lock()
	if !s.inWindowLocked(cmdSN) {
		exp, max := s.windowLocked()
		s.mu.Unlock()
		s.logf("dropping request with CmdSN %d outside window %d..%d", cmdSN, exp, max)
		return false
	}
	if cmdSN != s.expCmdSN {
		if _, dup := s.pending[cmdSN]; dup {
			s.mu.Unlock()
			s.logf("dropping duplicate CmdSN %d", cmdSN)
			return false
		}
		s.pending[cmdSN] = pendingItem{counts, fn}
		s.mu.Unlock()
		return true
	}
	ready := []func(){fn}
	s.expCmdSN++
	if counts {
		s.inflight++
	}
	for {
		it, ok := s.pending[s.expCmdSN]
		if !ok {
			break
		}
		delete(s.pending, s.expCmdSN)
		ready = append(ready, it.run)
		s.expCmdSN++
		if it.counts {
			s.inflight++
		}
	}
	s.mu.Unlock()
	for _, f := range ready {
		f()
	}
	return true
}

// windowLocked returns ExpCmdSN and MaxCmdSN. MaxCmdSN only grows: a
// delivered command moves ExpCmdSN up and takes a slot, an answered one
// gives its slot back.
func (s *session) windowLocked() (exp, max uint32) {
	free := uint32(0)
	if s.inflight < s.depth {
		free = s.depth - s.inflight
	}
	return s.expCmdSN, s.expCmdSN + free - 1
}

func (s *session) inWindowLocked(sn uint32) bool {
	exp, max := s.windowLocked()
	if int32(max-exp) < 0 || sn-exp > max-exp {
		return false
	}
	return sn == exp || len(s.pending) < int(s.depth)
}

func (s *session) send(o outPDU) bool {
	select {
	case s.out <- o:
		return true
	case <-s.done:
		return false
	}
}

func (s *session) writer() {
	defer s.wg.Done()
	for {
		select {
		case <-s.done:
			return
		case o := <-s.out:
			if o.before != nil {
				o.before()
			}
			s.mu.Lock()
			exp, max := s.windowLocked()
			s.mu.Unlock()
			switch o.stat {
			case statPeek:
				o.p.SetStatSN(s.statSN)
			case statAdvance:
				o.p.SetStatSN(s.statSN)
				s.statSN++
			}
			o.p.SetExpCmdSN(exp)
			o.p.SetMaxCmdSN(max)
			if s.srv.cfg.Trace != nil {
				s.srv.cfg.Trace(false, o.p)
			}
			if err := iscsi.WritePDU(s.nc, o.p, s.par.digests); err != nil {
				s.close()
				return
			}
			if o.closeAfter {
				s.close()
				return
			}
		}
	}
}

func (s *session) sendReject(p *iscsi.PDU, reason byte, closeAfter bool) {
	r := iscsi.New(iscsi.OpReject)
	r.SetFlags(iscsi.FlagFinal)
	r.BHS[2] = reason
	r.Data = append([]byte(nil), p.BHS[:]...)
	s.logf("rejecting %s (reason 0x%02x)", p, reason)
	s.send(outPDU{p: r, stat: statAdvance, closeAfter: closeAfter})
}

// nopOut answers a ping. A non-immediate NOP-Out takes a CmdSN like any
// command (RFC 7143 §11.18), so it goes through deliver: skipping that is
// the gotgt bug that strands the next command.
func (s *session) nopOut(p *iscsi.PDU) {
	if p.ITT() == iscsi.ReservedTag {
		// An answer to a target NOP-In, or a ping that wants no answer;
		// the RFC requires the I bit, so it never takes a CmdSN.
		return
	}
	data := p.Data
	if uint32(len(data)) > s.par.peerRecv {
		data = data[:s.par.peerRecv]
	}
	r := iscsi.New(iscsi.OpNOPIn)
	r.SetFlags(iscsi.FlagFinal)
	r.SetLUN(p.LUN())
	r.SetITT(p.ITT())
	r.SetTTT(iscsi.ReservedTag)
	r.Data = data
	s.deliver(p.CmdSN(), p.Immediate(), false, func() {
		s.send(outPDU{p: r, stat: statAdvance})
	})
}

func (s *session) scsiCommand(p *iscsi.PDU) error {
	flags := p.Flags()
	t := &task{
		itt:       p.ITT(),
		lun:       p.LUN(),
		cmdSN:     p.CmdSN(),
		immediate: p.Immediate(),
		read:      flags&iscsi.FlagRead != 0,
		write:     flags&iscsi.FlagWrite != 0,
		attr:      int(flags & 7),
		edtl:      p.ExpectedDataLength(),
		ready:     make(chan struct{}),
		done:      make(chan struct{}),
		r2ts:      map[uint32]*r2tState{},
	}
	t.cdb = append([]byte(nil), p.CDB()...)
	if ext, ok := extendedCDB(p.AHS); ok {
		t.cdb = append(t.cdb, ext...)
	}
	data := p.Data
	if len(data) > 0 && (!t.write || !s.par.immediateData || uint32(len(data)) > t.edtl || uint32(len(data)) > s.par.firstBurst) {
		s.rejectRequest(p, rejectProtocolError)
		return nil
	}
	if t.edtl > maxTransfer {
		t.tooLarge = true
	}
	if t.write {
		if !t.tooLarge {
			t.buf = make([]byte, t.edtl)
			copy(t.buf, data)
		}
		t.got = uint32(len(data))
		t.unsolEnd = t.got
		if !s.par.initialR2T && flags&iscsi.FlagFinal == 0 {
			t.unsolEnd = min(s.par.firstBurst, t.edtl)
		}
		t.next = t.unsolEnd
		if t.tooLarge {
			t.next = t.edtl // solicit nothing
		}
	}
	s.mu.Lock()
	if _, dup := s.tasks[t.itt]; dup {
		s.mu.Unlock()
		s.rejectRequest(p, rejectProtocolError)
		return nil
	}
	if len(s.tasks) >= 4*int(s.depth)+64 {
		s.mu.Unlock()
		return fmt.Errorf("initiator has %d tasks open, far beyond the CmdSN window of %d", len(s.tasks), s.depth)
	}
	s.tasks[t.itt] = t
	s.checkReadyLocked(t)
	s.mu.Unlock()
	if !s.deliver(t.cmdSN, t.immediate, !t.immediate, func() { s.start(t) }) {
		s.mu.Lock()
		if s.tasks[t.itt] == t {
			delete(s.tasks, t.itt)
		}
		s.mu.Unlock()
	}
	return nil
}

// extendedCDB returns the CDB bytes past 16 from an Extended CDB AHS.
func extendedCDB(ahs []byte) ([]byte, bool) {
	for len(ahs) >= 4 {
		n := int(ahs[0])<<8 | int(ahs[1])
		typ := ahs[2]
		if 3+n > len(ahs) {
			return nil, false
		}
		body := ahs[3 : 3+n]
		if typ == 1 && n > 1 {
			return body[1:], true
		}
		ahs = ahs[(3+n+3)&^3:]
	}
	return nil, false
}

// checkReadyLocked releases a task to the executor once all its data is in.
func (s *session) checkReadyLocked(t *task) {
	if !t.write || t.got >= t.edtl || (t.tooLarge && t.got >= t.unsolEnd) {
		t.closeReady()
	}
}

// start runs when a command's CmdSN turn comes: solicit its data, queue it.
func (s *session) start(t *task) {
	s.mu.Lock()
	t.delivered = true
	var r2ts []*iscsi.PDU
	if !t.aborted {
		r2ts = s.solicitLocked(t)
	}
	s.queue = append(s.queue, queued{task: t})
	s.mu.Unlock()
	s.enqueueSignal()
	for _, r := range r2ts {
		if !s.send(outPDU{p: r, stat: statPeek}) {
			return
		}
	}
}

// solicitLocked issues R2Ts up to MaxOutstandingR2T, each for at most
// MaxBurstLength.
func (s *session) solicitLocked(t *task) []*iscsi.PDU {
	var out []*iscsi.PDU
	for t.write && t.delivered && uint32(len(t.r2ts)) < s.par.maxOutR2T && t.next < t.edtl {
		n := min(s.par.maxBurst, t.edtl-t.next)
		s.nextTTT++
		if s.nextTTT == iscsi.ReservedTag {
			s.nextTTT = 1
		}
		ttt := s.nextTTT
		r := iscsi.New(iscsi.OpR2T)
		r.SetFlags(iscsi.FlagFinal)
		r.SetLUN(t.lun)
		r.SetITT(t.itt)
		r.SetTTT(ttt)
		r.SetDataSN(t.r2tSN) // R2TSN
		r.SetBufferOffset(t.next)
		r.SetResidualCount(n) // Desired Data Transfer Length
		t.r2ts[ttt] = &r2tState{off: t.next, len: n}
		t.r2tSN++
		t.next += n
		out = append(out, r)
	}
	return out
}

func (s *session) dataOut(p *iscsi.PDU) {
	off, n := p.BufferOffset(), uint32(len(p.Data))
	s.mu.Lock()
	t := s.tasks[p.ITT()]
	if t == nil || t.aborted {
		// Data for a task just aborted or completed: discard quietly.
		s.mu.Unlock()
		return
	}
	bad := !t.write || uint64(off)+uint64(n) > uint64(t.edtl)
	var more []*iscsi.PDU
	if !bad {
		if ttt := p.TTT(); ttt == iscsi.ReservedTag {
			bad = off+n > t.unsolEnd
		} else if r := t.r2ts[ttt]; r == nil || off < r.off || off+n > r.off+r.len {
			bad = true
		} else if p.Final() {
			delete(t.r2ts, ttt) // sequence done: room for the next R2T
		}
	}
	if bad {
		s.mu.Unlock()
		s.sendReject(p, rejectInvalidField, false)
		return
	}
	if t.buf != nil {
		copy(t.buf[off:], p.Data)
	}
	t.got += n
	more = s.solicitLocked(t)
	s.checkReadyLocked(t)
	s.mu.Unlock()
	for _, r := range more {
		if !s.send(outPDU{p: r, stat: statPeek}) {
			return
		}
	}
}

func (s *session) enqueueSignal() {
	select {
	case s.qsignal <- struct{}{}:
	default:
	}
}

func (s *session) dequeue() (queued, bool) {
	for {
		s.mu.Lock()
		if len(s.queue) > 0 {
			q := s.queue[0]
			s.queue[0] = queued{}
			s.queue = s.queue[1:]
			s.mu.Unlock()
			return q, true
		}
		s.mu.Unlock()
		select {
		case <-s.qsignal:
		case <-s.done:
			return queued{}, false
		}
	}
}

func (s *session) executor() {
	defer s.wg.Done()
	for {
		q, ok := s.dequeue()
		if !ok {
			return
		}
		if q.logout != nil {
			s.logout(q.logout)
			continue
		}
		if !s.runTask(q.task) {
			return
		}
	}
}

// runTask waits for the task's data, executes it and queues its response.
func (s *session) runTask(t *task) bool {
	select {
	case <-t.ready:
	case <-s.done:
		return false
	}
	s.mu.Lock()
	if t.aborted {
		if !t.immediate {
			s.inflight--
		}
		close(t.done)
		s.mu.Unlock()
		return true
	}
	t.executing = true
	s.mu.Unlock()

	pdus := s.execute(t)

	s.mu.Lock()
	if !t.immediate {
		s.inflight-- // before the response, so it carries the freed slot
	}
	s.mu.Unlock()
	last := len(pdus) - 1
	// The task leaves the table just before its status is written: after
	// that the initiator may reuse the ITT, and a task management request
	// that no longer finds it is answered after this response.
	pdus[last].before = func() {
		s.mu.Lock()
		delete(s.tasks, t.itt)
		close(t.done)
		s.mu.Unlock()
	}
	for _, o := range pdus {
		if !s.send(o) {
			return false
		}
	}
	return true
}

func (s *session) logout(p *iscsi.PDU) {
	reason := p.Flags() & 0x7f
	cid := uint16(p.BHS[20])<<8 | uint16(p.BHS[21])
	r := iscsi.New(iscsi.OpLogoutResp)
	r.SetFlags(iscsi.FlagFinal)
	r.SetITT(p.ITT())
	closeAfter := false
	switch reason {
	case 0: // close the session
		closeAfter = true
	case 1: // close the connection
		if cid != s.cid {
			r.BHS[2] = 1 // CID not found
		} else {
			closeAfter = true
		}
	case 2:
		r.BHS[2] = 2 // connection recovery is not supported (ERL 0)
	default:
		s.sendReject(p, rejectInvalidField, false)
		return
	}
	if closeAfter {
		s.logf("logout (reason %d)", reason)
	}
	s.send(outPDU{p: r, stat: statAdvance, closeAfter: closeAfter})
}

func (s *session) logoutReq(p *iscsi.PDU) {
	s.deliver(p.CmdSN(), p.Immediate(), false, func() {
		s.mu.Lock()
		s.queue = append(s.queue, queued{logout: p})
		s.mu.Unlock()
		s.enqueueSignal()
	})
}

func (s *session) textReq(p *iscsi.PDU) {
	s.textBuf = append(s.textBuf, p.Data...)
	if len(s.textBuf) > 64<<10 {
		s.textBuf = nil
		s.rejectRequest(p, rejectProtocolError)
		return
	}
	r := iscsi.New(iscsi.OpTextResp)
	r.SetITT(p.ITT())
	r.SetTTT(iscsi.ReservedTag)
	if p.Flags()&iscsi.FlagContinue != 0 {
		// More request text follows: answer empty (RFC 7143 §11.11).
		s.deliver(p.CmdSN(), p.Immediate(), false, func() {
			s.send(outPDU{p: r, stat: statAdvance})
		})
		return
	}
	req, err := iscsi.ParseText(s.textBuf)
	s.textBuf = nil
	if err != nil {
		s.rejectRequest(p, rejectProtocolError)
		return
	}
	var out iscsi.Text
	for _, kv := range req {
		switch kv.Key {
		case "SendTargets":
			v := kv.Value
			if v == "All" || v == "" || strings.EqualFold(v, s.srv.cfg.TargetName) {
				out.Add("TargetName", s.srv.cfg.TargetName)
				for _, a := range s.srv.targetAddresses() {
					out.Add("TargetAddress", a)
				}
			}
		default:
			out.Add(kv.Key, "NotUnderstood")
		}
	}
	r.SetFlags(iscsi.FlagFinal)
	r.Data = out.Encode()
	s.deliver(p.CmdSN(), p.Immediate(), false, func() {
		s.send(outPDU{p: r, stat: statAdvance})
	})
}

// Task management functions and responses, RFC 7143 §11.5-11.6.
const (
	tmfAbortTask       = 1
	tmfAbortTaskSet    = 2
	tmfClearACA        = 3
	tmfClearTaskSet    = 4
	tmfLUNReset        = 5
	tmfTargetWarmReset = 6
	tmfTargetColdReset = 7
	tmfTaskReassign    = 8

	tmfComplete         = 0
	tmfNoTask           = 1
	tmfNoReassign       = 4
	tmfNotSupported     = 5
	tmfFunctionRejected = 255
)

func (s *session) taskMgmtReq(p *iscsi.PDU) {
	fn := p.Flags() & 0x7f
	lun, ref, refCmdSN, cmdSN := p.LUN(), p.U32(20), p.U32(32), p.CmdSN()
	itt := p.ITT()
	s.deliver(cmdSN, p.Immediate(), false, func() {
		resp := s.taskMgmt(fn, lun, ref, refCmdSN, cmdSN)
		r := iscsi.New(iscsi.OpTaskMgmtResp)
		r.SetFlags(iscsi.FlagFinal)
		r.BHS[2] = resp
		r.SetITT(itt)
		s.send(outPDU{p: r, stat: statAdvance})
	})
}

func (s *session) taskMgmt(fn byte, lun uint64, ref, refCmdSN, cmdSN uint32) byte {
	switch fn {
	case tmfAbortTask:
		s.mu.Lock()
		t := s.tasks[ref]
		if t == nil {
			s.mu.Unlock()
			if int32(refCmdSN-cmdSN) < 0 {
				return tmfComplete // already answered, or never arrived but sent before
			}
			return tmfNoTask
		}
		wait := s.abortLocked(t)
		s.mu.Unlock()
		s.await(wait)
		return tmfComplete
	case tmfAbortTaskSet, tmfClearTaskSet, tmfLUNReset:
		// This session's tasks on the LU. Other sessions' tasks and their
		// UNIT ATTENTION after a LUN reset are not modelled yet.
		s.mu.Lock()
		var wait []chan struct{}
		for _, t := range s.tasks {
			if lunNumber(t.lun) == lunNumber(lun) {
				wait = append(wait, s.abortLocked(t)...)
			}
		}
		s.mu.Unlock()
		s.await(wait)
		s.logf("task management function %d on LUN %d: complete", fn, lunNumber(lun))
		return tmfComplete
	case tmfClearACA, tmfTargetWarmReset, tmfTargetColdReset:
		return tmfNotSupported
	case tmfTaskReassign:
		return tmfNoReassign
	}
	return tmfFunctionRejected
}

// abortLocked drops a task that has not started executing; for one that
// has, it returns the channel to wait on before the abort may be answered.
func (s *session) abortLocked(t *task) []chan struct{} {
	if t.executing {
		return []chan struct{}{t.done}
	}
	t.aborted = true
	delete(s.tasks, t.itt)
	t.closeReady()
	return nil
}

func (s *session) await(chs []chan struct{}) {
	for _, ch := range chs {
		select {
		case <-ch:
		case <-s.done:
			return
		}
	}
}
