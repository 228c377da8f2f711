package faultproxy

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/certkit/certkit/iscsi"
)

// The proxy follows PDU boundaries in both directions of every connection
// (RFC 7143 §11: 48-byte BHS, TotalAHSLength, DataSegmentLength, padding,
// and the digests the login settled on). Without an iSCSI-aware fault it
// only observes: every chunk is forwarded as read. Host to array it never
// changes a byte; it notes the SCSI Commands an opcode fault matches. Array
// to host, while such a fault (or a task it matched) is live, it withholds
// each header until it is complete and then forwards, drops, replaces or
// holds the whole PDU. If the stream stops making sense (an opcode that
// does not exist in that direction, a header digest that does not match,
// login text that does not parse), that direction falls back to plain
// forwarding for the rest of the connection: a fault that cannot be applied
// is logged, a stream is never corrupted.

// maxHeader is the longest header: BHS, 255 words of AHS, header digest.
const maxHeader = iscsi.BHSLen + 255*4 + 4

// maxLoginText bounds the login text collected to learn the digests.
const maxLoginText = 64 << 10

// action is what happens to one PDU from the array.
type action uint8

const (
	actPass    action = iota
	actLogin          // pass, and read its text keys
	actDrop           // swallow it
	actReplace        // swallow it and send CHECK CONDITION in its place
	actHold           // send it later (delay-opcode)
)

// pieceKind says how the outbox treats a piece of a framer's output.
type pieceKind uint8

const (
	pieceMain      pieceKind = iota // forward in stream order
	pieceHold                       // one whole PDU to hold for the outbox's hold delay
	pieceFlushHeld                  // release every held PDU here (the framer gave up)
)

// piece is one piece of a framer's output: own bytes b, or chunk[a:z].
type piece struct {
	kind pieceKind
	b    []byte
	a, z int
}

// mark is what an opcode fault decided for one task (by ITT) when its SCSI
// Command passed.
type mark struct {
	fail  bool // fail-opcode; else delay-opcode
	sense Sense
	r2ts  uint32 // R2Ts passed to the host, for ExpDataSN
}

// keyNeg follows the negotiation of one digest key during login.
type keyNeg struct {
	pending bool
	by      dir  // who proposed it
	on      bool // settled on CRC32C
}

// connState is what both directions of one connection share: the login's
// outcome and the tasks an opcode fault matched. The framers read the
// login's outcome once per PDU, so it is one atomic word; the rest is
// written only during login or while an opcode fault acts.
type connState struct {
	fault func() *Fault // the proxy's active fault, nil when none

	// st holds the st* bits; written under mu, read without it.
	st atomic.Uint32

	mu     sync.Mutex
	neg    [2]keyNeg // HeaderDigest, DataDigest
	marks  map[uint32]*mark
	nmarks atomic.Int32
}

// Bits of connState.st.
const (
	stFFP          = 1 << iota // full feature phase reached
	stBroken                   // a direction gave up during login: the other follows
	stHeaderDigest             // the login settled on HeaderDigest=CRC32C
	stDataDigest               // ... and DataDigest=CRC32C
)

func newConnState(fault func() *Fault) *connState {
	return &connState{fault: fault, marks: map[uint32]*mark{}}
}

var digestKeys = [2]string{"HeaderDigest", "DataDigest"}

// keys takes the text keys of one login PDU sent in direction d: a key seen
// from one side is a proposal, from the other side the answer.
func (cs *connState) keys(d dir, kv iscsi.Text) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	for i, name := range digestKeys {
		v, ok := kv.Get(name)
		if !ok {
			continue
		}
		n := &cs.neg[i]
		if n.pending && n.by != d {
			n.on, n.pending = v == "CRC32C", false
		} else {
			n.pending, n.by = true, d
		}
	}
}

func (cs *connState) enterFFP() iscsi.Digests {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	st := cs.st.Load() | stFFP
	if cs.neg[0].on {
		st |= stHeaderDigest
	}
	if cs.neg[1].on {
		st |= stDataDigest
	}
	cs.st.Store(st)
	return iscsi.Digests{Header: cs.neg[0].on, Data: cs.neg[1].on}
}

func digestName(on bool) string {
	if on {
		return "CRC32C"
	}
	return "None"
}

func (cs *connState) phase() (ffp bool, d iscsi.Digests, broken bool) {
	st := cs.st.Load()
	return st&stFFP != 0, iscsi.Digests{Header: st&stHeaderDigest != 0, Data: st&stDataDigest != 0}, st&stBroken != 0
}

func (cs *connState) breakLogin() {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if st := cs.st.Load(); st&stFFP == 0 {
		cs.st.Store(st | stBroken)
	}
}

// command notes a SCSI Command on its way to the array: marked when the
// active opcode fault matches it, unmarked otherwise (ITTs are reused).
func (cs *connState) command(itt uint32, opcode byte, lun uint64) {
	f := cs.fault()
	match := f != nil && (f.Kind == FailOpcode || f.Kind == DelayOpcode) && f.Params.matches(opcode, lun)
	if !match && cs.nmarks.Load() == 0 {
		return
	}
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if match {
		cs.marks[itt] = &mark{fail: f.Kind == FailOpcode, sense: f.Params.Sense}
	} else {
		delete(cs.marks, itt)
	}
	cs.nmarks.Store(int32(len(cs.marks)))
}

// taskManagement forgets the marks of tasks the host aborts (function 1,
// ABORT TASK, names one; the task set, LUN and target resets end them all):
// their answers may never come.
func (cs *connState) taskManagement(function byte, referenced uint32) {
	if cs.nmarks.Load() == 0 {
		return
	}
	cs.mu.Lock()
	defer cs.mu.Unlock()
	switch function {
	case 1:
		delete(cs.marks, referenced)
	case 2, 3, 5, 6, 7:
		clear(cs.marks)
	}
	cs.nmarks.Store(int32(len(cs.marks)))
}

// answer decides what happens to a PDU from the array (its BHS).
func (cs *connState) answer(bhs []byte) (action, *mark) {
	op := iscsi.Opcode(bhs[0] & 0x3f)
	switch op {
	case iscsi.OpNOPIn:
		if f := cs.fault(); f != nil && f.Kind == DropNOPIn {
			return actDrop, nil
		}
		return actPass, nil
	case iscsi.OpDataIn, iscsi.OpSCSIResponse, iscsi.OpR2T:
	default:
		return actPass, nil
	}
	if cs.nmarks.Load() == 0 {
		return actPass, nil
	}
	itt := binary.BigEndian.Uint32(bhs[16:20])
	cs.mu.Lock()
	defer cs.mu.Unlock()
	m := cs.marks[itt]
	if m == nil {
		return actPass, nil
	}
	final := op == iscsi.OpSCSIResponse || op == iscsi.OpDataIn && bhs[1]&iscsi.FlagStatus != 0
	if final {
		delete(cs.marks, itt)
		cs.nmarks.Store(int32(len(cs.marks)))
	}
	switch {
	case !m.fail:
		return actHold, m
	case op == iscsi.OpR2T:
		m.r2ts++ // the write's data still moves, so the array completes it
		return actPass, m
	case final:
		return actReplace, m
	}
	return actDrop, m
}

// framer follows the PDUs of one direction of a connection.
type framer struct {
	d         dir
	cs        *connState
	transform func() bool // withhold headers and apply faults to the next PDU; nil: never
	logf      func(format string, args ...any)

	plain bool  // gave up: forward the rest as is
	off   int64 // stream offset of the current chunk

	// The current PDU.
	hdr      [maxHeader]byte
	have     int  // header bytes collected
	need     int  // header bytes expected: the BHS, then the whole header
	started  bool // its first byte was seen
	withhold bool // transform: nothing of it is forwarded before its header is complete
	hdrAt    int  // chunk offset its header began at, -1 for an earlier chunk
	inData   bool
	left     int // bytes left of its data part (data, padding, digest)
	dataLen  int // its DataSegmentLength
	seen     int // data part bytes seen
	act      action
	m        *mark
	digests  iscsi.Digests // digests framing it
	pdus     int64         // PDUs completed

	text     []byte // login text, across PDUs with the C bit
	overflow bool   // login text longer than maxLoginText
	held     []byte // the whole PDU being held

	chunk []byte
	out   []piece
}

func newFramer(d dir, cs *connState, transform func() bool, logf func(string, ...any)) *framer {
	return &framer{d: d, cs: cs, transform: transform, logf: logf, need: iscsi.BHSLen}
}

func (f *framer) direction() string {
	if f.d == toUpstream {
		return "host-to-array"
	}
	return "array-to-host"
}

// feed frames one chunk of the stream and returns what to forward, in
// order; chunk pieces refer to c. The result is valid until the next feed.
func (f *framer) feed(c []byte) []piece {
	f.chunk, f.out = c, f.out[:0]
	if f.started {
		f.hdrAt = -1
	}
	i := 0
	for i < len(c) && !f.plain {
		if f.inData {
			i = f.data(i)
			continue
		}
		if !f.started {
			if !f.begin(i) {
				break
			}
		}
		k := min(f.need-f.have, len(c)-i)
		if f.have == 0 && !validOpcode(f.d, c[i]) {
			f.fail(fmt.Errorf("byte 0x%02x does not start a PDU this side sends", c[i]))
			break
		}
		copy(f.hdr[f.have:], c[i:i+k])
		if !f.withhold {
			f.emitRange(i, i+k)
		}
		f.have += k
		i += k
		if f.have < f.need {
			continue
		}
		if f.need == iscsi.BHSLen {
			if err := f.bhs(); err != nil {
				f.fail(err)
				break
			}
			if f.have < f.need {
				continue
			}
		}
		if err := f.header(i); err != nil {
			f.fail(err)
			break
		}
	}
	if f.plain {
		f.emitRange(i, len(c))
	}
	f.off += int64(len(c))
	return f.out
}

// atBoundary reports whether the output so far ends between two PDUs, so
// that a held PDU may go next.
func (f *framer) atBoundary() bool {
	switch {
	case f.plain:
		return false
	case !f.started:
		return true
	case !f.inData:
		return f.withhold
	}
	return f.act == actDrop || f.act == actReplace || f.act == actHold
}

// eof returns what is left to forward when the stream ends: a header
// withheld, or a PDU being held, cut short goes out as it came. A PDU being
// swallowed is lost with the connection.
func (f *framer) eof() []piece {
	f.chunk, f.out = nil, f.out[:0]
	switch {
	case f.plain || !f.started:
	case f.withhold && !f.inData:
		f.emitBytes(bytes.Clone(f.hdr[:f.have]))
	case f.act == actHold:
		f.emitBytes(f.held)
		f.held = nil
	}
	return f.out
}

func (f *framer) emitRange(a, z int) {
	if a == z {
		return
	}
	if n := len(f.out); n > 0 {
		if p := &f.out[n-1]; p.kind == pieceMain && p.b == nil && p.z == a {
			p.z = z
			return
		}
	}
	f.out = append(f.out, piece{kind: pieceMain, a: a, z: z})
}

func (f *framer) emitBytes(b []byte) {
	f.out = append(f.out, piece{kind: pieceMain, b: b})
}

// begin starts a PDU at chunk offset i; false when the framer gave up.
func (f *framer) begin(i int) bool {
	ffp, _, broken := f.cs.phase()
	if broken {
		f.fail(errors.New("the other direction could not be followed during login"))
		return false
	}
	f.started, f.have, f.need, f.hdrAt = true, 0, iscsi.BHSLen, i
	// Nothing is changed during login, so nothing is withheld: a stream
	// that is not iSCSI is never held up waiting for a header.
	f.withhold = f.transform != nil && ffp && f.transform()
	return true
}

// Opcodes each side may send (RFC 7143 §11.2.1.2), vendor-specific included.
func validOpcode(d dir, b0 byte) bool {
	op := b0 & 0x3f
	if d == toUpstream {
		return b0&0x80 == 0 && (op <= 0x06 || op == 0x10 || op >= 0x1c && op <= 0x1e)
	}
	return b0&0xc0 == 0 && (op >= 0x20 && op <= 0x26 || op == 0x31 || op == 0x32 || op >= 0x3c)
}

func loginOpcode(d dir) iscsi.Opcode {
	if d == toUpstream {
		return iscsi.OpLoginReq
	}
	return iscsi.OpLoginResp
}

// bhs checks a complete BHS and sizes the rest of the header.
func (f *framer) bhs() error {
	b0 := f.hdr[0]
	if !validOpcode(f.d, b0) {
		return fmt.Errorf("byte 0x%02x does not start a PDU this side sends", b0)
	}
	ffp, dg, _ := f.cs.phase()
	op := iscsi.Opcode(b0 & 0x3f)
	if !ffp && op != loginOpcode(f.d) {
		return fmt.Errorf("%s during login", op)
	}
	if !ffp {
		dg = iscsi.Digests{}
	}
	f.digests = dg
	f.need = iscsi.BHSLen + int(f.hdr[4])*4
	if dg.Header {
		f.need += 4
	}
	return nil
}

// header acts on a complete header; chunk offset i is just past it.
func (f *framer) header(i int) error {
	h := f.hdr[:f.need]
	if f.digests.Header {
		n := f.need - 4
		if got, want := binary.LittleEndian.Uint32(h[n:]), iscsi.CRC32C(h[:n]); got != want {
			return fmt.Errorf("header digest 0x%08x of a %s, computed 0x%08x", got, iscsi.Opcode(h[0]&0x3f), want)
		}
	}
	f.dataLen = int(h[5])<<16 | int(h[6])<<8 | int(h[7])
	f.seen = 0
	f.left = (f.dataLen + 3) &^ 3
	if f.dataLen > 0 && f.digests.Data {
		f.left += 4
	}
	f.act, f.m = f.decide()
	if f.withhold {
		switch f.act {
		case actPass, actLogin:
			if f.hdrAt >= 0 {
				f.emitRange(f.hdrAt, i)
			} else {
				f.emitBytes(bytes.Clone(h))
			}
		case actHold:
			f.held = append(make([]byte, 0, len(h)+f.left), h...)
		}
	}
	f.inData = true
	if f.left == 0 {
		return f.end()
	}
	return nil
}

func (f *framer) decide() (action, *mark) {
	op := iscsi.Opcode(f.hdr[0] & 0x3f)
	if op == loginOpcode(f.d) {
		return actLogin, nil
	}
	if f.d == toUpstream {
		switch op {
		case iscsi.OpSCSICommand:
			f.cs.command(binary.BigEndian.Uint32(f.hdr[16:20]), f.hdr[32], binary.BigEndian.Uint64(f.hdr[8:16]))
		case iscsi.OpTaskMgmtReq:
			f.cs.taskManagement(f.hdr[1]&0x7f, binary.BigEndian.Uint32(f.hdr[20:24]))
		}
		return actPass, nil
	}
	if !f.withhold {
		return actPass, nil
	}
	return f.cs.answer(f.hdr[:iscsi.BHSLen])
}

// data takes the data part of the current PDU from chunk offset i.
func (f *framer) data(i int) int {
	k := min(f.left, len(f.chunk)-i)
	switch f.act {
	case actPass:
		f.emitRange(i, i+k)
	case actLogin:
		f.emitRange(i, i+k)
		if n := min(k, f.dataLen-f.seen); n > 0 {
			if len(f.text)+n > maxLoginText {
				f.overflow = true
			} else {
				f.text = append(f.text, f.chunk[i:i+n]...)
			}
		}
	case actHold:
		f.held = append(f.held, f.chunk[i:i+k]...)
	}
	f.seen += k
	f.left -= k
	if f.left == 0 {
		if err := f.end(); err != nil {
			f.fail(err)
		}
	}
	return i + k
}

// end completes the current PDU.
func (f *framer) end() error {
	act, m := f.act, f.m
	f.started, f.inData, f.act, f.m = false, false, actPass, nil
	f.pdus++
	switch act {
	case actLogin:
		return f.login()
	case actReplace:
		b, err := f.checkCondition(m)
		if err != nil {
			return err
		}
		f.emitBytes(b)
	case actHold:
		f.out = append(f.out, piece{kind: pieceHold, b: f.held})
		f.held = nil
	}
	return nil
}

// login reads the keys of a login PDU (once its text is complete) and
// notes the end of login.
func (f *framer) login() error {
	flags := f.hdr[1]
	if flags&iscsi.FlagContinue != 0 {
		return nil
	}
	text, overflow := f.text, f.overflow
	f.text, f.overflow = f.text[:0], false
	if overflow {
		return fmt.Errorf("login text longer than %d bytes", maxLoginText)
	}
	kv, err := iscsi.ParseText(text)
	if err != nil {
		return err
	}
	f.cs.keys(f.d, kv)
	if f.d == toClient && flags&iscsi.FlagTransit != 0 && flags&3 == 3 && f.hdr[36] == 0 {
		dg := f.cs.enterFFP()
		if f.logf != nil {
			f.logf("login done; following its PDUs with HeaderDigest=%s, DataDigest=%s", digestName(dg.Header), digestName(dg.Data))
		}
	}
	return nil
}

// checkCondition builds the SCSI Response sent in place of a failed task's
// final status: CHECK CONDITION with fixed-format sense, the original's
// StatSN, ExpCmdSN and MaxCmdSN.
func (f *framer) checkCondition(m *mark) ([]byte, error) {
	orig := f.hdr[:iscsi.BHSLen]
	p := iscsi.New(iscsi.OpSCSIResponse)
	p.SetFlags(iscsi.FlagFinal)
	p.BHS[3] = 0x02 // CHECK CONDITION
	copy(p.BHS[16:20], orig[16:20])
	copy(p.BHS[24:36], orig[24:36]) // StatSN, ExpCmdSN, MaxCmdSN
	p.SetU32(36, m.r2ts)            // ExpDataSN: the R2Ts the host saw, no Data-In
	sense := m.sense.fixed()
	p.Data = binary.BigEndian.AppendUint16(make([]byte, 0, 2+len(sense)), uint16(len(sense)))
	p.Data = append(p.Data, sense...)
	return p.Marshal(f.digests)
}

// fail gives up on the stream: what was withheld goes out as it came, then
// everything else, unparsed.
func (f *framer) fail(err error) {
	if f.plain {
		return
	}
	if f.atBoundary() {
		f.out = append(f.out, piece{kind: pieceFlushHeld})
	}
	if f.started && f.withhold && !f.inData && f.have > 0 {
		f.emitBytes(bytes.Clone(f.hdr[:f.have]))
	}
	f.plain = true
	f.cs.breakLogin()
	if f.logf != nil {
		f.logf("%s stream, PDU %d (in the %d bytes from offset %d): %v; forwarding the rest of it unparsed, without iSCSI-aware faults",
			f.direction(), f.pdus+1, len(f.chunk), f.off, err)
	}
}
