package initiator

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"

	"github.com/certkit/certkit/iscsi"
)

// Session is a logged-in session over one TCP connection. Its methods are
// safe for concurrent use. One goroutine reads and dispatches the target's
// PDUs by Initiator Task Tag; one writes the PDUs callers queue, in queue
// order, so CmdSN order on the wire is the order CmdSNs were assigned.
type Session struct {
	o      Options
	params Params
	conn   net.Conn
	br     *bufio.Reader
	what   string // names the session in errors

	mu         sync.Mutex
	cmdSN      uint32 // the CmdSN the next non-immediate request takes
	expCmdSN   uint32
	maxCmdSN   uint32
	expStatSN  uint32
	windowOpen chan struct{} // closed and replaced whenever MaxCmdSN advances
	stalled    int           // requests waiting for the CmdSN window
	nextITT    uint32
	tasks      map[uint32]*task
	sendq      [][]byte // marshalled PDUs for the writer
	err        error    // why the session ended; nil while it is up

	lastDropped uint32 // reader only

	sendReady chan struct{} // capacity 1: the queue is not empty
	done      chan struct{}
	wg        sync.WaitGroup
}

// task is one outstanding request, keyed by its Initiator Task Tag.
type task struct {
	itt  uint32
	op   iscsi.Opcode // the request's opcode
	desc string       // e.g. "READ(10) of LUN 1", for errors

	// SCSI read buffer, filled by the reader in order.
	read   []byte
	got    int
	dataSN uint32

	// SCSI write: R2Ts the reader validated, for the command's goroutine.
	writeLen int
	r2tSN    uint32 // next expected R2TSN; reader only
	r2tMu    sync.Mutex
	r2ts     []r2t
	r2tReady chan struct{} // capacity 1

	// Outcome, written only by whoever removed the task from the session
	// map, before done is closed.
	resp     *iscsi.PDU
	status   byte
	sense    []byte
	residual int
	err      error
	done     chan struct{}
}

type r2t struct {
	ttt      uint32
	off, len uint32
}

func (t *task) finish(err error) {
	t.err = err
	close(t.done)
}

func (t *task) pushR2T(r r2t) {
	t.r2tMu.Lock()
	t.r2ts = append(t.r2ts, r)
	t.r2tMu.Unlock()
	select {
	case t.r2tReady <- struct{}{}:
	default:
	}
}

func (t *task) takeR2Ts() []r2t {
	t.r2tMu.Lock()
	defer t.r2tMu.Unlock()
	r := t.r2ts
	t.r2ts = nil
	return r
}

func newSession(conn net.Conn, br *bufio.Reader, o Options, p Params, cmdSN, expCmdSN, maxCmdSN, expStatSN uint32) *Session {
	what := "iscsi session to " + o.TargetName + " at " + o.Address
	if o.TargetName == "" {
		what = "iscsi discovery session at " + o.Address
	}
	s := &Session{
		o: o, params: p, conn: conn, br: br, what: what,
		cmdSN: cmdSN, expCmdSN: expCmdSN, maxCmdSN: maxCmdSN, expStatSN: expStatSN,
		windowOpen:  make(chan struct{}),
		lastDropped: iscsi.ReservedTag,
		tasks:       map[uint32]*task{},
		sendReady:   make(chan struct{}, 1),
		done:        make(chan struct{}),
	}
	s.wg.Add(2)
	go s.readLoop()
	go s.writeLoop()
	return s
}

// Params returns what the login negotiated.
func (s *Session) Params() Params { return s.params }

// LocalAddr is the initiator's end of the connection (what ESXi shows as a
// connection's local address).
func (s *Session) LocalAddr() net.Addr { return s.conn.LocalAddr() }

// RemoteAddr is the portal end of the connection.
func (s *Session) RemoteAddr() net.Addr { return s.conn.RemoteAddr() }

// Done is closed when the connection is gone.
func (s *Session) Done() <-chan struct{} { return s.done }

// Err says why the session ended; nil while it is up.
func (s *Session) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Close drops the connection at once, without logging out (what ESXi does
// when a NOP-Out times out), fails every pending request and waits for the
// session's goroutines to end.
func (s *Session) Close() error {
	s.fail(ErrClosed)
	s.wg.Wait()
	return nil
}

// fail ends the session: the first cause wins.
func (s *Session) fail(cause error) {
	s.mu.Lock()
	if s.err != nil {
		s.mu.Unlock()
		return
	}
	err := fmt.Errorf("%s: %w", s.what, cause)
	s.err = err
	tasks := s.tasks
	s.tasks = nil
	s.sendq = nil
	s.mu.Unlock()
	s.conn.Close()
	close(s.done)
	for _, t := range tasks {
		t.finish(fmt.Errorf("%s not completed: %w", t.desc, err))
	}
	if !errors.Is(cause, ErrClosed) {
		s.o.Logf("iscsi: %v", err)
	}
}

// newTask registers a request under a fresh Initiator Task Tag.
func (s *Session) newTask(op iscsi.Opcode, desc string) (*task, error) {
	t := &task{op: op, desc: desc, done: make(chan struct{}), r2tReady: make(chan struct{}, 1)}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return nil, fmt.Errorf("%s: %w", desc, s.err)
	}
	for {
		s.nextITT++
		if _, busy := s.tasks[s.nextITT]; !busy && s.nextITT != iscsi.ReservedTag {
			break
		}
	}
	t.itt = s.nextITT
	s.tasks[t.itt] = t
	return t, nil
}

// reuse registers a follow-up request under an earlier task's tag (Text
// continuations keep their ITT, RFC 7143 §11.10.4).
func (s *Session) reuse(prev *task) (*task, error) {
	t := &task{itt: prev.itt, op: prev.op, desc: prev.desc, done: make(chan struct{})}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return nil, fmt.Errorf("%s: %w", t.desc, s.err)
	}
	s.tasks[t.itt] = t
	return t, nil
}

// forget drops an abandoned task; whatever the target still sends for it
// is discarded.
func (s *Session) forget(t *task) {
	s.mu.Lock()
	if s.tasks[t.itt] == t {
		delete(s.tasks, t.itt)
	}
	s.mu.Unlock()
}

func (s *Session) lookup(itt uint32) *task {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tasks[itt]
}

// take removes a task; the caller then owns its outcome.
func (s *Session) take(itt uint32) *task {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.tasks[itt]
	if t != nil {
		delete(s.tasks, itt)
	}
	return t
}

// await waits for a request's response, or forgets it when ctx ends.
func (s *Session) await(ctx context.Context, t *task) error {
	select {
	case <-t.done:
		return t.err
	case <-ctx.Done():
		s.forget(t)
		return ctx.Err()
	}
}

// send queues a request and the PDUs that must follow it (unsolicited
// Data-Out). A non-immediate request takes the next CmdSN and waits while
// that CmdSN is beyond MaxCmdSN; an immediate one carries the current
// CmdSN without advancing it (RFC 7143 §4.2.2.1). PDUs are marshalled
// without digests, so the CmdSN and ExpStatSN fields are patched in place.
func (s *Session) send(ctx context.Context, immediate bool, req []byte, follow ...[]byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !immediate && s.err == nil && serialGT(s.cmdSN, s.maxCmdSN) {
		s.stalled++
		first := s.stalled == 1
		for s.err == nil && serialGT(s.cmdSN, s.maxCmdSN) && ctx.Err() == nil {
			open, cmdSN, maxCmdSN := s.windowOpen, s.cmdSN, s.maxCmdSN
			s.mu.Unlock() // Logf runs unlocked: it may call back into the session
			if first {
				s.o.Logf("iscsi: %s: CmdSN window closed (CmdSN %d, MaxCmdSN %d); waiting", s.what, cmdSN, maxCmdSN)
				first = false
			}
			select {
			case <-open:
			case <-s.done:
			case <-ctx.Done():
			}
			s.mu.Lock()
		}
		s.stalled--
		if s.err == nil && ctx.Err() != nil {
			return ctx.Err()
		}
	}
	if s.err != nil {
		return s.err
	}
	binary.BigEndian.PutUint32(req[24:28], s.cmdSN)
	if !immediate {
		s.cmdSN++
	}
	s.queue(req)
	for _, b := range follow {
		s.queue(b)
	}
	return nil
}

// sendData queues Data-Out PDUs.
func (s *Session) sendData(bufs [][]byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return s.err
	}
	for _, b := range bufs {
		s.queue(b)
	}
	return nil
}

// queue appends a marshalled PDU; s.mu is held.
func (s *Session) queue(b []byte) {
	binary.BigEndian.PutUint32(b[28:32], s.expStatSN)
	s.sendq = append(s.sendq, b)
	select {
	case s.sendReady <- struct{}{}:
	default:
	}
}

func marshal(p *iscsi.PDU) ([]byte, error) { return p.Marshal(iscsi.Digests{}) }

func (s *Session) writeLoop() {
	defer s.wg.Done()
	for {
		select {
		case <-s.sendReady:
		case <-s.done:
			return
		}
		s.mu.Lock()
		q := s.sendq
		s.sendq = nil
		s.mu.Unlock()
		if len(q) == 0 {
			continue
		}
		bufs := net.Buffers(q)
		if _, err := bufs.WriteTo(s.conn); err != nil {
			s.fail(fmt.Errorf("connection lost while sending: %w", err))
			return
		}
	}
}

func (s *Session) readLoop() {
	defer s.wg.Done()
	framing := iscsi.Framing{MaxDataSegment: s.params.MaxRecvDataSegmentLength}
	for {
		p, err := iscsi.ReadPDU(s.br, framing)
		if err != nil {
			switch {
			case errors.Is(err, io.EOF):
				err = errors.New("target closed the connection")
			case errors.Is(err, io.ErrUnexpectedEOF):
				err = errors.New("target closed the connection in the middle of a PDU")
			case errors.Is(err, iscsi.ErrTooLong):
				err = fmt.Errorf("protocol error: %w", err)
			default:
				err = fmt.Errorf("connection lost: %w", err)
			}
			s.fail(err)
			return
		}
		if err := s.handle(p); err != nil {
			s.fail(err)
			return
		}
	}
}

func protoErr(format string, args ...any) error {
	return fmt.Errorf("protocol error: "+format, args...)
}

// handle dispatches one PDU from the target. An error ends the session.
func (s *Session) handle(p *iscsi.PDU) error {
	op := p.Opcode()
	switch op {
	case iscsi.OpNOPIn, iscsi.OpSCSIResponse, iscsi.OpDataIn, iscsi.OpR2T, iscsi.OpTextResp,
		iscsi.OpLogoutResp, iscsi.OpTaskMgmtResp, iscsi.OpAsyncMsg, iscsi.OpReject:
	default:
		return protoErr("unexpected %s in full feature phase", op)
	}
	s.track(p)
	switch op {
	case iscsi.OpNOPIn:
		return s.handleNOPIn(p)
	case iscsi.OpSCSIResponse:
		return s.handleSCSIResponse(p)
	case iscsi.OpDataIn:
		return s.handleDataIn(p)
	case iscsi.OpR2T:
		return s.handleR2T(p)
	case iscsi.OpTextResp:
		return s.complete(p, iscsi.OpTextReq)
	case iscsi.OpTaskMgmtResp:
		return s.complete(p, iscsi.OpTaskMgmtReq)
	case iscsi.OpLogoutResp:
		return s.handleLogoutResponse(p)
	case iscsi.OpReject:
		return s.handleReject(p)
	default: // OpAsyncMsg
		return s.handleAsync(p)
	}
}

// track takes ExpCmdSN/MaxCmdSN and StatSN from a target PDU
// (RFC 7143 §4.2.2.1, §4.2.2.2), in serial number arithmetic.
func (s *Session) track(p *iscsi.PDU) {
	exp, max := p.ExpCmdSN(), p.MaxCmdSN()
	if serialLT(max, exp-1) {
		s.o.Logf("iscsi: %s: ignored the window of a %s: MaxCmdSN %d < ExpCmdSN-1 (%d)", s.what, p.Opcode(), max, exp-1)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !serialLT(max, exp-1) {
		if serialGT(exp, s.expCmdSN) {
			s.expCmdSN = exp
		}
		if serialGT(max, s.maxCmdSN) {
			s.maxCmdSN = max
			close(s.windowOpen)
			s.windowOpen = make(chan struct{})
		}
	}
	next := p.StatSN()
	switch op := p.Opcode(); {
	case op == iscsi.OpR2T, op == iscsi.OpDataIn && p.Flags()&iscsi.FlagStatus == 0:
		return // StatSN is reserved or not advanced
	case op == iscsi.OpNOPIn && p.ITT() == iscsi.ReservedTag:
		// carries the next StatSN without consuming it
	default:
		next++
	}
	if serialGT(next, s.expStatSN) {
		s.expStatSN = next
	}
}

// mismatch fails a task that got a response of the wrong kind.
func mismatch(t *task, p *iscsi.PDU) error {
	err := protoErr("%s for ITT 0x%08x, which is a %s", p.Opcode(), t.itt, t.op)
	t.finish(err)
	return err
}

// complete finishes a request answered by a single response PDU.
func (s *Session) complete(p *iscsi.PDU, want iscsi.Opcode) error {
	t := s.take(p.ITT())
	if t == nil {
		s.dropped(p)
		return nil
	}
	if t.op != want {
		return mismatch(t, p)
	}
	t.resp = p
	t.finish(nil)
	return nil
}

func (s *Session) handleLogoutResponse(p *iscsi.PDU) error {
	t := s.take(p.ITT())
	if t == nil {
		s.dropped(p)
		return nil
	}
	if t.op != iscsi.OpLogoutReq {
		return mismatch(t, p)
	}
	t.resp = p
	if p.BHS[2] != 0 {
		t.finish(nil)
		return nil
	}
	// The target closes the connection next; end the session before the
	// caller resumes so Err reports the logout, not the closed socket.
	s.fail(ErrLoggedOut)
	t.finish(nil)
	return ErrLoggedOut
}

// dropped notes a PDU for a task the session no longer has, once per task.
func (s *Session) dropped(p *iscsi.PDU) {
	if p.ITT() == s.lastDropped {
		return
	}
	s.lastDropped = p.ITT()
	s.o.Logf("iscsi: %s: dropping %s for ITT 0x%08x: no such task (abandoned?)", s.what, p.Opcode(), p.ITT())
}

func (s *Session) handleNOPIn(p *iscsi.PDU) error {
	if p.TTT() != iscsi.ReservedTag {
		if p.ITT() != iscsi.ReservedTag {
			return protoErr("NOP-In with both ITT 0x%08x and TTT 0x%08x set", p.ITT(), p.TTT())
		}
		// Target ping: answer with an immediate NOP-Out echoing TTT, LUN
		// and ping data (RFC 7143 §11.18, §11.19).
		out := iscsi.New(iscsi.OpNOPOut)
		out.SetImmediate(true)
		out.SetFlags(iscsi.FlagFinal)
		out.SetLUN(p.LUN())
		out.SetTTT(p.TTT())
		out.Data = p.Data
		if max := int(s.params.TargetMaxRecvDataSegmentLength); len(out.Data) > max {
			out.Data = out.Data[:max]
		}
		b, err := marshal(out)
		if err != nil {
			return err
		}
		_ = s.send(context.Background(), true, b) // fails only when the session is gone
		return nil
	}
	if p.ITT() == iscsi.ReservedTag {
		return nil // an unsolicited window update
	}
	return s.complete(p, iscsi.OpNOPOut)
}

func (s *Session) handleSCSIResponse(p *iscsi.PDU) error {
	t := s.take(p.ITT())
	if t == nil {
		s.dropped(p)
		return nil
	}
	if t.op != iscsi.OpSCSICommand {
		return mismatch(t, p)
	}
	if r := p.BHS[2]; r != 0 {
		t.finish(fmt.Errorf("%s: target failed the command (iSCSI response 0x%02x)", t.desc, r))
		return nil
	}
	var sense []byte
	if len(p.Data) > 0 {
		if len(p.Data) < 2 {
			err := protoErr("SCSI Response for %s has a %d-byte data segment, too short for SenseLength", t.desc, len(p.Data))
			t.finish(err)
			return err
		}
		n := int(binary.BigEndian.Uint16(p.Data))
		if 2+n > len(p.Data) {
			err := protoErr("SCSI Response for %s declares %d bytes of sense data but carries %d", t.desc, n, len(p.Data)-2)
			t.finish(err)
			return err
		}
		sense = append([]byte(nil), p.Data[2:2+n]...)
	}
	t.status, t.sense, t.residual = p.BHS[3], sense, residual(p)
	t.finish(nil)
	return nil
}

// residual is the underflow count, negative for an overflow.
func residual(p *iscsi.PDU) int {
	switch f := p.Flags(); {
	case f&iscsi.FlagUnder != 0:
		return int(p.ResidualCount())
	case f&iscsi.FlagOverflow != 0:
		return -int(p.ResidualCount())
	}
	return 0
}

func (s *Session) handleDataIn(p *iscsi.PDU) error {
	t := s.lookup(p.ITT())
	if t == nil {
		s.dropped(p)
		return nil
	}
	if t.op != iscsi.OpSCSICommand {
		return protoErr("Data-In for ITT 0x%08x, which is a %s", t.itt, t.op)
	}
	off, n := uint64(p.BufferOffset()), uint64(len(p.Data))
	switch {
	case p.DataSN() != t.dataSN:
		return protoErr("Data-In for %s has DataSN %d, expected %d", t.desc, p.DataSN(), t.dataSN)
	case off != uint64(t.got):
		return protoErr("Data-In for %s at offset %d, expected %d (DataPDUInOrder=Yes)", t.desc, off, t.got)
	case off+n > uint64(len(t.read)):
		return protoErr("Data-In for %s carries bytes up to %d of a %d-byte read", t.desc, off+n, len(t.read))
	}
	copy(t.read[off:], p.Data)
	t.got += int(n)
	t.dataSN++
	if p.Flags()&iscsi.FlagStatus == 0 {
		return nil
	}
	if !p.Final() {
		return protoErr("Data-In for %s has the S bit without the F bit", t.desc)
	}
	if s.take(t.itt) == nil {
		return nil // abandoned meanwhile
	}
	t.status, t.residual = p.BHS[3], residual(p)
	t.finish(nil)
	return nil
}

func (s *Session) handleR2T(p *iscsi.PDU) error {
	t := s.lookup(p.ITT())
	if t == nil {
		s.dropped(p)
		return nil
	}
	if t.op != iscsi.OpSCSICommand || t.writeLen == 0 {
		return protoErr("R2T for ITT 0x%08x (%s), which has no data to write", t.itt, t.desc)
	}
	off, n := p.BufferOffset(), p.ResidualCount() // ResidualCount is the Desired Data Transfer Length here
	switch {
	case p.DataSN() != t.r2tSN:
		return protoErr("R2T for %s has R2TSN %d, expected %d", t.desc, p.DataSN(), t.r2tSN)
	case p.TTT() == iscsi.ReservedTag:
		return protoErr("R2T for %s has the reserved Target Transfer Tag", t.desc)
	case n == 0:
		return protoErr("R2T for %s asks for 0 bytes", t.desc)
	case n > s.params.MaxBurstLength:
		return protoErr("R2T for %s asks for %d bytes, more than MaxBurstLength %d", t.desc, n, s.params.MaxBurstLength)
	case uint64(off)+uint64(n) > uint64(t.writeLen):
		return protoErr("R2T for %s asks for bytes up to %d of a %d-byte write", t.desc, uint64(off)+uint64(n), t.writeLen)
	}
	t.r2tSN++
	t.pushR2T(r2t{ttt: p.TTT(), off: off, len: n})
	return nil
}

var rejectReasons = map[byte]string{
	0x02: "data digest error",
	0x03: "SNACK reject",
	0x04: "protocol error",
	0x05: "command not supported",
	0x06: "immediate command reject (too many immediate commands)",
	0x07: "task in progress",
	0x08: "invalid data ack",
	0x09: "invalid PDU field",
	0x0a: "long operation reject (out of resources)",
	0x0c: "waiting for logout",
}

func (s *Session) handleReject(p *iscsi.PDU) error {
	if len(p.Data) < iscsi.BHSLen {
		return protoErr("Reject carries %d bytes, not the %d-byte header of the rejected PDU", len(p.Data), iscsi.BHSLen)
	}
	var hdr iscsi.PDU
	copy(hdr.BHS[:], p.Data)
	reason := rejectReasons[p.BHS[2]]
	if reason == "" {
		reason = "unknown reason"
	}
	var t *task
	if itt := hdr.ITT(); itt != iscsi.ReservedTag {
		t = s.take(itt)
	}
	if t == nil {
		s.o.Logf("iscsi: %s: target rejected %s (ITT 0x%08x): %s (reason 0x%02x)", s.what, hdr.Opcode(), hdr.ITT(), reason, p.BHS[2])
		return nil
	}
	t.finish(fmt.Errorf("%s: target rejected the %s: %s (reason 0x%02x)", t.desc, hdr.Opcode(), reason, p.BHS[2]))
	return nil
}

func (s *Session) handleAsync(p *iscsi.PDU) error {
	event := p.BHS[36]
	switch event {
	case 0:
		s.o.Logf("iscsi: %s: SCSI asynchronous event for LUN %016x", s.what, p.LUN())
	case 1:
		return fmt.Errorf("target requested logout (asynchronous event 1, within %d s)", binary.BigEndian.Uint16(p.BHS[42:44]))
	case 2:
		return errors.New("target is dropping the connection (asynchronous event 2)")
	case 3:
		return errors.New("target is dropping all connections of the session (asynchronous event 3)")
	case 4:
		s.o.Logf("iscsi: %s: target asks to renegotiate parameters (asynchronous event 4); ignored", s.what)
	default:
		s.o.Logf("iscsi: %s: asynchronous event %d ignored", s.what, event)
	}
	return nil
}

// Ping sends an immediate NOP-Out and waits for the target's NOP-In.
func (s *Session) Ping(ctx context.Context) error {
	t, err := s.newTask(iscsi.OpNOPOut, "NOP-Out ping")
	if err != nil {
		return err
	}
	p := iscsi.New(iscsi.OpNOPOut)
	p.SetImmediate(true)
	p.SetFlags(iscsi.FlagFinal)
	p.SetITT(t.itt)
	p.SetTTT(iscsi.ReservedTag)
	b, err := marshal(p)
	if err == nil {
		err = s.send(ctx, true, b)
	}
	if err != nil {
		s.forget(t)
		return err
	}
	return s.await(ctx, t)
}

// Logout closes the session with a Logout Request (reason: close the
// session) and drops the connection, whatever the answer.
func (s *Session) Logout(ctx context.Context) error {
	defer s.Close()
	t, err := s.newTask(iscsi.OpLogoutReq, "Logout Request")
	if err != nil {
		return err
	}
	p := iscsi.New(iscsi.OpLogoutReq)
	p.SetImmediate(true)
	p.SetFlags(iscsi.FlagFinal) // reason code 0: close the session
	p.SetITT(t.itt)
	b, err := marshal(p)
	if err == nil {
		err = s.send(ctx, true, b)
	}
	if err == nil {
		err = s.await(ctx, t)
	}
	if err != nil {
		s.forget(t)
		return fmt.Errorf("%s: logout: %w", s.what, err)
	}
	if r := t.resp.BHS[2]; r != 0 {
		return fmt.Errorf("%s: target refused logout (response %d)", s.what, r)
	}
	return nil
}

// text runs one Text Request exchange, following the target's Continue bit.
func (s *Session) text(ctx context.Context, req iscsi.Text) (iscsi.Text, error) {
	t, err := s.newTask(iscsi.OpTextReq, "Text Request")
	if err != nil {
		return nil, err
	}
	data, ttt := req.Encode(), iscsi.ReservedTag
	var all []byte
	for i := 0; ; i++ {
		if i > 0 {
			if t, err = s.reuse(t); err != nil {
				return nil, err
			}
		}
		p := iscsi.New(iscsi.OpTextReq)
		p.SetFlags(iscsi.FlagFinal)
		p.SetITT(t.itt)
		p.SetTTT(ttt)
		p.Data = data
		b, err := marshal(p)
		if err == nil {
			err = s.send(ctx, false, b)
		}
		if err == nil {
			err = s.await(ctx, t)
		}
		if err != nil {
			s.forget(t)
			return nil, err
		}
		all = append(all, t.resp.Data...)
		if len(all) > 1<<20 {
			return nil, fmt.Errorf("%s: target sent more than 1 MiB of text", s.what)
		}
		if t.resp.Flags()&iscsi.FlagContinue == 0 {
			break
		}
		data, ttt = nil, t.resp.TTT()
	}
	kv, err := iscsi.ParseText(all)
	if err != nil {
		return nil, fmt.Errorf("%s: Text Response: %w", s.what, err)
	}
	return kv, nil
}

// serialLT is RFC 1982 "less than" for 32-bit serial numbers.
func serialLT(a, b uint32) bool {
	d := b - a
	return d != 0 && d < 1<<31
}

func serialGT(a, b uint32) bool { return serialLT(b, a) }
