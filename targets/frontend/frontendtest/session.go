package frontendtest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/certkit/certkit/iscsi"
)

// Session runs requests from many goroutines over one logged-in Conn, the
// way a real initiator does: a reader goroutine dispatches the target's
// PDUs by ITT; every request takes its CmdSN and goes on the wire under one
// lock, so CmdSN order on the wire is assignment order; a non-immediate
// request waits while its CmdSN is beyond the MaxCmdSN the target last
// advertised. The reader checks what every initiator relies on: StatSN
// advances by one with each status, Data-In arrives in order, and answers
// target NOP-In pings.
//
// Its methods are safe for concurrent use.
type Session struct {
	c *Conn
	// ImmediateData, when set before the first write, sends the first
	// MaxRecvOut bytes of a write in the command PDU (the target offers
	// ImmediateData=Yes by default); the rest goes in answer to R2Ts.
	ImmediateData bool

	mu         sync.Mutex
	cmdSN      uint32
	maxCmdSN   uint32
	expStatSN  uint32
	windowOpen chan struct{} // closed and replaced whenever MaxCmdSN grows
	itt        uint32
	calls      map[uint32]*call
	err        error
	done       chan struct{}
	wg         sync.WaitGroup
}

type call struct {
	itt    uint32
	lun    uint64
	read   []byte // Data-In lands here
	got    int
	dataSN uint32
	write  []byte

	mu     sync.Mutex
	r2ts   []*iscsi.PDU
	final  *iscsi.PDU // status (SCSI Response, status Data-In) or answer
	err    error
	signal chan struct{} // capacity 1
}

func (cl *call) post(f func()) {
	cl.mu.Lock()
	f()
	cl.mu.Unlock()
	select {
	case cl.signal <- struct{}{}:
	default:
	}
}

// StartSession takes over c, which has just logged in (Conn.Login set its
// CmdSN, MaxCmdSN and ExpStatSN); c must not be used directly any more.
func StartSession(c *Conn) *Session {
	s := &Session{
		c:          c,
		cmdSN:      c.CmdSN,
		maxCmdSN:   c.MaxCmdSN,
		expStatSN:  c.ExpStatSN,
		windowOpen: make(chan struct{}),
		itt:        c.itt,
		calls:      map[uint32]*call{},
		done:       make(chan struct{}),
	}
	c.C.SetReadDeadline(time.Time{})
	s.wg.Add(1)
	go s.reader()
	return s
}

// Close drops the connection and waits for the reader.
func (s *Session) Close() error {
	s.fail(errors.New("session closed"))
	s.wg.Wait()
	return nil
}

// Err says why the session ended; nil while it is up.
func (s *Session) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

func (s *Session) fail(err error) {
	s.mu.Lock()
	if s.err == nil {
		s.err = err
		close(s.done)
		s.c.C.Close()
		for _, cl := range s.calls {
			cl.post(func() { cl.err = err })
		}
		s.calls = map[uint32]*call{}
	}
	s.mu.Unlock()
}

func serialLT(a, b uint32) bool { return a != b && b-a < 1<<31 }

func (s *Session) reader() {
	defer s.wg.Done()
	for {
		p, err := iscsi.ReadPDU(s.c.C, iscsi.Framing{Digests: s.c.Digests, MaxDataSegment: s.c.MaxRecv})
		if err != nil {
			s.fail(fmt.Errorf("reading from the target: %w", err))
			return
		}
		if err := s.handle(p); err != nil {
			s.fail(err)
			return
		}
	}
}

func (s *Session) handle(p *iscsi.PDU) error {
	op := p.Opcode()
	s.mu.Lock()
	// The window (RFC 7143 §4.2.2.1): a MaxCmdSN below ExpCmdSN-1 is
	// ignored; otherwise only growth counts.
	if exp, max := p.ExpCmdSN(), p.MaxCmdSN(); !serialLT(max, exp-1) && serialLT(s.maxCmdSN, max) {
		s.maxCmdSN = max
		close(s.windowOpen)
		s.windowOpen = make(chan struct{})
	}
	status := false
	switch op {
	case iscsi.OpSCSIResponse, iscsi.OpTextResp, iscsi.OpLogoutResp, iscsi.OpTaskMgmtResp, iscsi.OpReject:
		status = true
	case iscsi.OpNOPIn:
		status = p.ITT() != iscsi.ReservedTag
	case iscsi.OpDataIn:
		status = p.Flags()&iscsi.FlagStatus != 0
	}
	if status {
		if p.StatSN() != s.expStatSN {
			s.mu.Unlock()
			return fmt.Errorf("%s carries StatSN %d, want %d", p, p.StatSN(), s.expStatSN)
		}
		s.expStatSN++
	}
	itt := p.ITT()
	if op == iscsi.OpReject && len(p.Data) >= iscsi.BHSLen {
		itt = binary.BigEndian.Uint32(p.Data[16:20])
	}
	cl := s.calls[itt]
	final := status
	if final && cl != nil {
		delete(s.calls, itt)
	}
	s.mu.Unlock()

	if op == iscsi.OpNOPIn && p.ITT() == iscsi.ReservedTag {
		if p.TTT() == iscsi.ReservedTag {
			return nil // an unsolicited window update
		}
		// A target ping: echo TTT, LUN and data in an immediate NOP-Out.
		r := iscsi.New(iscsi.OpNOPOut)
		r.SetImmediate(true)
		r.SetFlags(iscsi.FlagFinal)
		r.SetLUN(p.LUN())
		r.SetTTT(p.TTT())
		r.Data = p.Data
		return s.sendImmediate(r)
	}
	if op == iscsi.OpAsyncMsg {
		return nil
	}
	if cl == nil {
		return fmt.Errorf("%s for ITT 0x%x, which has no request outstanding", p, itt)
	}
	switch op {
	case iscsi.OpDataIn:
		off := int(p.BufferOffset())
		if p.DataSN() != cl.dataSN || off != cl.got || off+len(p.Data) > len(cl.read) {
			return fmt.Errorf("Data-In for ITT 0x%x: DataSN %d offset %d length %d; want DataSN %d offset %d within %d bytes",
				itt, p.DataSN(), off, len(p.Data), cl.dataSN, cl.got, len(cl.read))
		}
		copy(cl.read[off:], p.Data)
		cl.got += len(p.Data)
		cl.dataSN++
		if final {
			cl.post(func() { cl.final = p })
		}
	case iscsi.OpR2T:
		cl.post(func() { cl.r2ts = append(cl.r2ts, p) })
	default:
		cl.post(func() { cl.final = p })
	}
	return nil
}

// send assigns the request its CmdSN (waiting for the window when it is
// not immediate), registers cl under the request's ITT and writes it.
func (s *Session) send(p *iscsi.PDU, cl *call) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for !p.Immediate() && s.err == nil && serialLT(s.maxCmdSN, s.cmdSN) {
		open := s.windowOpen
		s.mu.Unlock()
		select {
		case <-open:
		case <-s.done:
		}
		s.mu.Lock()
	}
	if s.err != nil {
		return s.err
	}
	s.itt++
	if s.itt == iscsi.ReservedTag {
		s.itt = 1
	}
	p.SetITT(s.itt)
	p.SetCmdSN(s.cmdSN)
	if !p.Immediate() {
		s.cmdSN++
	}
	p.SetExpStatSN(s.expStatSN)
	if cl != nil {
		cl.itt = s.itt
		s.calls[s.itt] = cl
	}
	return s.write(p)
}

// sendImmediate writes an immediate PDU that expects no answer.
func (s *Session) sendImmediate(p *iscsi.PDU) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	p.SetCmdSN(s.cmdSN)
	p.SetExpStatSN(s.expStatSN)
	return s.write(p)
}

// write sends one PDU; s.mu is held, which orders the wire.
func (s *Session) write(p *iscsi.PDU) error {
	s.c.C.SetWriteDeadline(time.Now().Add(s.c.Timeout))
	return iscsi.WritePDU(s.c.C, p, s.c.Digests)
}

// wait waits for the call's final PDU, answering R2Ts meanwhile.
func (s *Session) wait(cl *call) (*iscsi.PDU, error) {
	t := time.NewTimer(s.c.Timeout)
	defer t.Stop()
	for {
		cl.mu.Lock()
		r2ts, final, err := cl.r2ts, cl.final, cl.err
		cl.r2ts = nil
		cl.mu.Unlock()
		for _, r := range r2ts {
			if err := s.answerR2T(cl, r); err != nil {
				return nil, err
			}
		}
		if err != nil {
			return nil, err
		}
		if final != nil {
			return final, nil
		}
		select {
		case <-cl.signal:
		case <-t.C:
			return nil, fmt.Errorf("no answer for ITT 0x%x within %v", cl.itt, s.c.Timeout)
		}
	}
}

// answerR2T sends the Data-Out sequence an R2T asks for.
func (s *Session) answerR2T(cl *call, r *iscsi.PDU) error {
	off, n := r.BufferOffset(), r.ResidualCount()
	if uint64(off)+uint64(n) > uint64(len(cl.write)) {
		return fmt.Errorf("R2T for ITT 0x%x asks for %d bytes at %d of a %d-byte write", cl.itt, n, off, len(cl.write))
	}
	seg := s.c.MaxRecvOut()
	var sn uint32
	for done := uint32(0); done < n; sn++ {
		k := min(n-done, seg)
		d := iscsi.New(iscsi.OpDataOut)
		d.SetLUN(cl.lun)
		d.SetITT(cl.itt)
		d.SetTTT(r.TTT())
		d.SetDataSN(sn)
		d.SetBufferOffset(off + done)
		d.Data = cl.write[off+done : off+done+k]
		done += k
		if done == n {
			d.SetFlags(iscsi.FlagFinal)
		}
		s.mu.Lock()
		d.SetExpStatSN(s.expStatSN)
		err := s.write(d)
		s.mu.Unlock()
		if err != nil {
			return err
		}
	}
	return nil
}

// Command runs one SIMPLE SCSI command: readLen bytes expected in, or
// write sent out (immediate data when ImmediateData is set, the rest in
// answer to R2Ts).
func (s *Session) Command(lun int, cdb []byte, readLen int, write []byte) (*Result, error) {
	return s.CommandAttr(lun, cdb, readLen, write, iscsi.AttrSimple, false)
}

// CommandAttr is Command with a task attribute and the immediate bit.
func (s *Session) CommandAttr(lun int, cdb []byte, readLen int, write []byte, attr byte, immediate bool) (*Result, error) {
	p := iscsi.New(iscsi.OpSCSICommand)
	p.SetImmediate(immediate)
	flags := iscsi.FlagFinal | attr
	edtl := readLen
	if readLen > 0 {
		flags |= iscsi.FlagRead
	}
	if write != nil {
		flags |= iscsi.FlagWrite
		edtl = len(write)
		if s.ImmediateData {
			p.Data = write[:min(len(write), int(s.c.MaxRecvOut()))]
		}
	}
	p.SetFlags(flags)
	p.SetLUN(LUNField(lun))
	p.SetExpectedDataLength(uint32(edtl))
	copy(p.CDB(), cdb)
	cl := &call{lun: LUNField(lun), read: make([]byte, readLen), write: write, signal: make(chan struct{}, 1)}
	if err := s.send(p, cl); err != nil {
		return nil, err
	}
	r, err := s.wait(cl)
	if err != nil {
		return nil, err
	}
	res := &Result{Status: r.BHS[3], Flags: r.Flags(), Residual: r.ResidualCount(), DataIns: int(cl.dataSN), Data: cl.read[:cl.got]}
	switch r.Opcode() {
	case iscsi.OpDataIn:
	case iscsi.OpSCSIResponse:
		if len(r.Data) >= 2 {
			n := int(binary.BigEndian.Uint16(r.Data))
			res.Sense = r.Data[2:min(len(r.Data), 2+n)]
		}
	default:
		return nil, fmt.Errorf("got %s for a SCSI command", r)
	}
	return res, nil
}

// NOP sends a NOP-Out with data and waits for the NOP-In echoing it; a
// non-immediate one takes a CmdSN.
func (s *Session) NOP(immediate bool, data []byte) error {
	p := iscsi.New(iscsi.OpNOPOut)
	p.SetImmediate(immediate)
	p.SetFlags(iscsi.FlagFinal)
	p.SetTTT(iscsi.ReservedTag)
	p.Data = data
	cl := &call{signal: make(chan struct{}, 1)}
	if err := s.send(p, cl); err != nil {
		return err
	}
	r, err := s.wait(cl)
	if err != nil {
		return err
	}
	if r.Opcode() != iscsi.OpNOPIn || string(r.Data) != string(data) {
		return fmt.Errorf("got %s with data %q for a NOP-Out with %q", r, r.Data, data)
	}
	return nil
}

// TaskMgmt sends an immediate Task Management Function Request and returns
// the response code.
func (s *Session) TaskMgmt(fn byte, lun int, ref, refCmdSN uint32) (byte, error) {
	p := iscsi.New(iscsi.OpTaskMgmtReq)
	p.SetImmediate(true)
	p.SetFlags(iscsi.FlagFinal | fn)
	p.SetLUN(LUNField(lun))
	p.SetU32(20, ref)
	p.SetU32(32, refCmdSN)
	cl := &call{signal: make(chan struct{}, 1)}
	if err := s.send(p, cl); err != nil {
		return 0, err
	}
	r, err := s.wait(cl)
	if err != nil {
		return 0, err
	}
	if r.Opcode() != iscsi.OpTaskMgmtResp {
		return 0, fmt.Errorf("got %s for a task management request", r)
	}
	return r.BHS[2], nil
}

// Window returns the next CmdSN and the MaxCmdSN last advertised.
func (s *Session) Window() (cmdSN, maxCmdSN uint32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cmdSN, s.maxCmdSN
}
