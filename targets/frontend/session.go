package frontend

import (
	"bufio"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"time"

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

// session is one iSCSI session and its single connection (MaxConnections=1).
//
// Goroutines: the reader (run) reads PDUs and handles them in arrival
// order, delivering commands in CmdSN order (RFC 7143 §4.2.2.1); workers
// execute delivered SCSI tasks, SIMPLE ones concurrently (up to
// Config.Concurrency), ORDERED ones alone, HEAD OF QUEUE ones first (SAM-5
// §8.6); PDUs to send are queued in order and written, StatSN stamped, by
// one goroutine at a time in batches of one writev each (a worker answering
// its task writes itself; what the reader queues the writer goroutine
// writes); the pinger (when NopInInterval is set) sends NOP-In pings.
// Closing done stops them all.
type session struct {
	srv       *Server
	nc        net.Conn
	br        *bufio.Reader
	tpgt      uint16
	par       params
	initiator string
	alias     string
	isid      [6]byte
	tsih      uint16
	cid       uint16
	discovery bool
	tgt       *Target // the session's target; nil in a discovery session
	nexus     *api.ITNexus
	depth     uint32
	workers   int

	rx iscsi.PDU // the reader's header buffer

	// Write side (tx.go).
	txMu     sync.Mutex
	txq      []txPDU
	txSpare  []txPDU
	txSignal chan struct{} // capacity 1: the queue is not empty
	txSpace  chan struct{} // closed and replaced when the writer drains the queue while someone waits
	txWait   int           // senders waiting for txSpace
	writing  bool          // a goroutine is writing the queue out (drain)
	txb      *txBatch      // the writing goroutine's
	statSN   uint32        // the writing goroutine's once full feature phase starts

	mu        sync.Mutex
	expCmdSN  uint32
	maxSent   uint32 // highest MaxCmdSN advertised
	inflight  uint32 // delivered non-immediate commands not yet answered
	commands  uint64 // SCSI commands delivered (Config.Defect)
	pending   map[uint32]pendingItem
	tasks     map[uint32]*task // by ITT
	nextTTT   uint32
	textBuf   []byte  // request text still arriving (C bit); the reader's
	textOut   []byte  // response text not sent yet; the reader's
	textTTT   uint32  // the TTT that asks for textOut
	queue     []qitem // delivered, not started, in CmdSN order (HEAD OF QUEUE first)
	running   int     // tasks handed to workers and not finished
	ordered   bool    // an ORDERED task is running
	nworkers  int
	pingTTT   uint32 // TTT of the outstanding NOP-In ping, 0 if none
	work      chan *task
	pingAck   chan struct{}
	closeOnce sync.Once
	done      chan struct{}
	gone      chan struct{} // closed once torn down and unregistered
	wg        sync.WaitGroup
}

// pendingItem is a request that arrived ahead of its CmdSN turn.
type pendingItem struct {
	task *task  // a SCSI command
	run  func() // anything else
}

// qitem is a delivered item waiting to start: a task, or a logout that
// waits for every earlier task.
type qitem struct {
	task   *task
	logout *iscsi.PDU
}

type task struct {
	itt       uint32
	lun       uint64 // LUN field as sent
	cmdSN     uint32
	immediate bool
	read      bool
	write     bool
	attr      int
	cdbBuf    [16]byte
	cdb       []byte
	edtl      uint32
	tooLarge  bool   // edtl > maxTransfer: answered with sense, data discarded
	buf       []byte // Data-Out buffer (edtl bytes) of a write, pooled
	got       uint32 // Data-Out bytes received
	unsolNext uint32 // next offset of immediate/unsolicited data
	unsolSN   uint32 // next DataSN of unsolicited Data-Out
	unsolEnd  uint32 // end of immediate + unsolicited data
	next      uint32 // next offset to solicit with an R2T
	r2tSN     uint32
	r2ts      []r2tState // outstanding

	delivered bool
	counted   bool // holds a slot of the CmdSN window
	dataIn    bool // all Data-Out received: may execute
	aborted   bool
	executing bool
	answering bool // executed, response queued, not yet written
	finished  bool
	waiters   []chan struct{} // closed when finished (task management waits)

	cmd     api.SCSICommand
	in, out api.SCSIDataBuffer
	luInfo  api.ITNexusLuInfo
}

func newSession(srv *Server, c net.Conn, br *bufio.Reader, p *portal, par params) *session {
	workers := srv.cfg.Concurrency
	return &session{
		srv:      srv,
		nc:       c,
		br:       br,
		tpgt:     p.tpgt,
		par:      par,
		depth:    uint32(srv.cfg.QueueDepth),
		workers:  workers,
		pending:  map[uint32]pendingItem{},
		tasks:    map[uint32]*task{},
		txSignal: make(chan struct{}, 1),
		txb:      newTxBatch(),
		txSpace:  make(chan struct{}),
		work:     make(chan *task, workers),
		pingAck:  make(chan struct{}, 1),
		done:     make(chan struct{}),
		gone:     make(chan struct{}),
	}
}

func (s *session) logf(format string, args ...any) {
	s.srv.logf("session TSIH %d (%s at %s): "+format, append([]any{s.tsih, s.initiator, s.targetName()}, args...)...)
}

// targetName names the session's target, or "discovery".
func (s *session) targetName() string {
	if s.tgt == nil {
		return "discovery"
	}
	return s.tgt.Name
}

// key is the session's identity (sessionKey).
func (s *session) key() sessionKey {
	return sessionKey{initiator: s.initiator, isid: s.isid, target: strings.ToLower(s.targetName()), tpgt: s.tpgt}
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
	s.mu.Lock()
	for _, t := range s.tasks {
		s.finishLocked(t) // release task management waiting on them
	}
	s.mu.Unlock()
	if s.nexus != nil {
		s.tgt.SCSI.RemoveNexus(s.nexus)
	}
	s.srv.unregister(s)
	close(s.gone)
}

func (s *session) run() {
	s.wg.Add(1)
	go s.writer()
	if s.srv.cfg.NopInInterval > 0 {
		s.wg.Add(1)
		go s.pinger()
	}
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
	p := &s.rx
	for {
		if err := s.readHeader(p); err != nil {
			return err
		}
		var err error
		switch op := p.Opcode(); {
		case op == iscsi.OpSCSICommand && !s.discovery:
			err = s.scsiCommand(p)
		case op == iscsi.OpDataOut && !s.discovery:
			err = s.dataOut(p)
		default:
			if err = s.readSegment(p); err == nil {
				s.trace(p)
				s.handle(p)
			}
		}
		switch {
		case errors.Is(err, iscsi.ErrDataDigest):
			// ERL 0: reject, then recover by dropping the connection.
			s.rejectAndClose(p, rejectDataDigest)
		case errors.Is(err, errDataSN):
			s.rejectAndClose(p, rejectProtocolError)
		}
		if err != nil {
			return err
		}
	}
}

// rejectAndClose sends a Reject and drops the connection once it is written,
// or after LoginTimeout if the initiator does not read it.
func (s *session) rejectAndClose(p *iscsi.PDU, reason byte) {
	s.sendReject(p, reason, true)
	t := time.NewTimer(s.srv.cfg.LoginTimeout)
	defer t.Stop()
	select {
	case <-s.done:
	case <-t.C:
		s.close()
	}
}

func (s *session) trace(p *iscsi.PDU) {
	if s.srv.cfg.Trace != nil {
		s.srv.cfg.Trace(true, p)
	}
}

func (s *session) handle(p *iscsi.PDU) {
	op := p.Opcode()
	if s.discovery {
		switch op {
		case iscsi.OpNOPOut, iscsi.OpTextReq, iscsi.OpLogoutReq:
		default:
			s.rejectRequest(p, rejectProtocolError)
			return
		}
	}
	switch op {
	case iscsi.OpNOPOut:
		s.nopOut(p)
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
}

// rejectRequest rejects a request and, when it is a non-immediate command
// request, still consumes its CmdSN: the initiator counted it, and a gap
// would strand every later command (the failure gotgt has for NOP-Outs).
func (s *session) rejectRequest(p *iscsi.PDU, reason byte) {
	s.sendReject(p, reason, false)
	switch p.Opcode() {
	case iscsi.OpSCSICommand, iscsi.OpTaskMgmtReq, iscsi.OpTextReq, iscsi.OpNOPOut, iscsi.OpLogoutReq:
		s.deliver(p.CmdSN(), p.Immediate(), pendingItem{run: func() {}})
	}
}

// deliver hands a request over in CmdSN order (RFC 7143 §4.2.2.1).
// Immediate requests go at once; others wait for their turn inside the
// window, and anything outside the window is dropped silently, as the RFC
// requires. A SCSI task is queued for execution; any other request's run
// is called once its turn came.
//
// It reports false when the request was dropped.
func (s *session) deliver(cmdSN uint32, immediate bool, it pendingItem) bool {
	var d delivery
	s.mu.Lock()
	if immediate {
		d.add(s, it)
	} else {
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
			s.pending[cmdSN] = it
			s.mu.Unlock()
			return true
		}
		s.expCmdSN++
		d.add(s, it)
		d.drain(s)
	}
	d.reader = true
	d.finish(s)
	return true
}

// skipCmdSN counts CmdSN sn as received without a request, as task
// management does for an aborted command that never arrived (RFC 7143
// §11.5.1): a late arrival with that CmdSN is then dropped as a duplicate.
// It reports false when sn is not a CmdSN still to come inside the window
// (already received, or outside it), and then changes nothing.
func (s *session) skipCmdSN(sn uint32) bool {
	var d delivery
	s.mu.Lock()
	switch {
	case int32(sn-s.expCmdSN) < 0 || !s.inWindowLocked(sn):
		s.mu.Unlock()
		return false
	case sn == s.expCmdSN:
		s.expCmdSN++
		d.drain(s)
	default:
		if _, queued := s.pending[sn]; queued {
			s.mu.Unlock()
			return false
		}
		s.pending[sn] = pendingItem{run: func() {}}
	}
	d.finish(s)
	return true
}

// delivery collects what delivering requests produced under s.mu, for
// finish to act on once the lock is released.
type delivery struct {
	tx     []txPDU
	runs   []func()
	reader bool // finish runs on the reader goroutine
}

func (d *delivery) add(s *session, it pendingItem) {
	if it.task != nil {
		d.tx = s.startLocked(it.task, d.tx)
	} else if it.run != nil {
		d.runs = append(d.runs, it.run)
	}
}

// drain delivers the requests that were waiting for the CmdSNs now due.
func (d *delivery) drain(s *session) {
	for {
		it, ok := s.pending[s.expCmdSN]
		if !ok {
			return
		}
		delete(s.pending, s.expCmdSN)
		s.expCmdSN++
		d.add(s, it)
	}
}

// finish releases s.mu, then sends, starts and runs what was delivered.
//
// A lone quick task delivered on the reader while the initiator has
// nothing more in flight runs right there, response written and all: at
// queue depth 1 that saves two goroutine hand-overs per command.
func (d *delivery) finish(s *session) {
	start, logout := s.dispatchLocked()
	inline := d.reader && len(start) == 1 && logout == nil && len(d.tx) == 0 &&
		s.running == 1 && len(s.queue) == 0 && quick(start[0]) && s.br.Buffered() == 0
	s.mu.Unlock()
	if inline {
		s.runTask(start[0])
	} else {
		s.send(d.tx...)
		s.startWork(start, logout)
	}
	for _, f := range d.runs {
		f()
	}
}

// quick reports the tasks the reader may run itself: READ and WRITE of at
// most quickTransfer bytes without FUA, which a store answers from memory
// or page cache. Anything that may block longer (a sync, a reservation
// wait in the SCSI layer) goes to a worker, so the reader keeps reading.
func quick(t *task) bool {
	switch t.cdb[0] {
	case 0x28, 0x88, 0xa8, 0x2a, 0x8a, 0xaa:
		return t.cdb[1]&0x08 == 0 && t.edtl <= quickTransfer && !t.tooLarge
	}
	return false
}

// quickTransfer bounds the transfers the reader runs itself.
const quickTransfer = 256 << 10

// windowLocked returns ExpCmdSN and MaxCmdSN. MaxCmdSN only grows: a
// delivered command moves ExpCmdSN up and takes a slot, an answered one
// gives its slot back.
func (s *session) windowLocked() (exp, max uint32) {
	if d := s.srv.cfg.Defect.CloseWindowAfter; d > 0 && s.commands >= uint64(d) {
		return s.expCmdSN, s.expCmdSN - 1 // negative control: the window stays shut
	}
	free := uint32(0)
	if s.inflight < s.depth {
		free = s.depth - s.inflight
	}
	return s.expCmdSN, s.expCmdSN + free - 1
}

func (s *session) inWindowLocked(sn uint32) bool {
	exp, max := s.windowLocked()
	if int32(s.maxSent-max) > 0 {
		max = s.maxSent // what was once allowed stays allowed
	}
	if int32(max-exp) < 0 || sn-exp > max-exp {
		return false
	}
	return sn == exp || len(s.pending) < int(s.depth)
}

func (s *session) logout(p *iscsi.PDU) {
	reason := p.Flags() & 0x7f
	cid := uint16(p.BHS[20])<<8 | uint16(p.BHS[21])
	r := newTx(iscsi.OpLogoutResp)
	r.bhs[1] = iscsi.FlagFinal
	r.setITT(p.ITT())
	r.stat = statAdvance
	closeAfter := false
	switch reason {
	case 0: // close the session
		closeAfter = true
	case 1: // close the connection
		if cid != s.cid {
			r.bhs[2] = 1 // CID not found
		} else {
			closeAfter = true
		}
	case 2:
		r.bhs[2] = 2 // connection recovery is not supported (ERL 0)
	default:
		s.sendReject(p, rejectInvalidField, false)
		return
	}
	if closeAfter {
		s.logf("logout (reason %d)", reason)
	}
	r.closeAfter = closeAfter
	s.send(r)
}

func (s *session) logoutReq(p *iscsi.PDU) {
	q := *p // the reader reuses p
	s.deliver(p.CmdSN(), p.Immediate(), pendingItem{run: func() {
		s.mu.Lock()
		s.queue = append(s.queue, qitem{logout: &q})
		start, logout := s.dispatchLocked()
		s.mu.Unlock()
		s.startWork(start, logout)
	}})
}

func (s *session) textReq(p *iscsi.PDU) {
	r := newTx(iscsi.OpTextResp)
	r.setITT(p.ITT())
	r.setTTT(iscsi.ReservedTag)
	r.stat = statAdvance
	if ttt := p.TTT(); ttt != iscsi.ReservedTag {
		// The initiator asks for the next part of a long response (RFC
		// 7143 §11.10.4): its request carries our TTT and no text.
		if s.textOut == nil || ttt != s.textTTT || len(p.Data) != 0 {
			s.textOut = nil
			s.rejectRequest(p, rejectInvalidField)
			return
		}
		s.textPart(&r)
		s.deliver(p.CmdSN(), p.Immediate(), pendingItem{run: func() { s.send(r) }})
		return
	}
	s.textOut = nil // a new request drops what was left of the last answer
	s.textBuf = append(s.textBuf, p.Data...)
	if len(s.textBuf) > 64<<10 {
		s.textBuf = nil
		s.rejectRequest(p, rejectProtocolError)
		return
	}
	if p.Flags()&iscsi.FlagContinue != 0 {
		// More request text follows: answer empty (RFC 7143 §11.11).
		s.deliver(p.CmdSN(), p.Immediate(), pendingItem{run: func() { s.send(r) }})
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
			s.srv.sendTargets(kv.Value, s.initiator, s.tgt, &out)
		default:
			out.Add(kv.Key, "NotUnderstood")
		}
	}
	s.textOut = out.Encode()
	s.textPart(&r)
	s.deliver(p.CmdSN(), p.Immediate(), pendingItem{run: func() { s.send(r) }})
}

// textPart fills r with the next part of textOut that fits the initiator's
// MaxRecvDataSegmentLength. When more is left, r has the C bit and a TTT
// (not 0xffffffff) the initiator answers with an empty Text Request to get
// the rest (RFC 7143 §11.11.2): SendTargets of many targets and portals
// outgrows one PDU.
func (s *session) textPart(r *txPDU) {
	data := s.textOut
	if uint32(len(data)) <= s.par.peerRecv {
		s.textOut = nil
		r.bhs[1] = iscsi.FlagFinal
		r.data = data
		return
	}
	r.data, s.textOut = data[:s.par.peerRecv], data[s.par.peerRecv:]
	r.bhs[1] = iscsi.FlagContinue
	s.mu.Lock()
	s.nextTTT++
	if s.nextTTT == iscsi.ReservedTag || s.nextTTT == 0 {
		s.nextTTT = 1
	}
	s.textTTT = s.nextTTT
	s.mu.Unlock()
	r.setTTT(s.textTTT)
}
