package initiator

import (
	"bufio"
	"context"
	"encoding/binary"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/certkit/certkit/iscsi"
)

// Timings of the tests, named so that none hides in a literal sleep.
const (
	// testTimeout bounds any one test's exchanges; nothing should come near it.
	testTimeout = 20 * time.Second
	// stallTimeout is how long a command blocked on a closed CmdSN window
	// waits before its context ends.
	stallTimeout = 100 * time.Millisecond
	// shortLoginTimeout is the LoginTimeout against a target that never answers.
	shortLoginTimeout = 200 * time.Millisecond
	// pollInterval paces polling for a state the test waits for.
	pollInterval = 2 * time.Millisecond
)

const initiatorIQN = "iqn.1998-01.com.vmware:esx-test-1a2b3c4d"

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// eventually polls cond until it holds or testTimeout passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(pollInterval)
	}
}

// checkNoSessionGoroutines fails the test if any goroutine is still inside
// a Session method once the test ends: readers, writers and callers must
// all be gone after Close or Logout.
func checkNoSessionGoroutines(t *testing.T) {
	t.Cleanup(func() {
		var stacks string
		count := func() int {
			buf := make([]byte, 1<<20)
			stacks = string(buf[:runtime.Stack(buf, true)])
			n := 0
			for _, g := range strings.Split(stacks, "\n\n") {
				if strings.Contains(g, "initiator.(*Session)") {
					n++
				}
			}
			return n
		}
		deadline := time.Now().Add(testTimeout)
		for count() > 0 {
			if time.Now().After(deadline) {
				t.Fatalf("session goroutines still running after the test:\n%s", stacks)
			}
			time.Sleep(pollInterval)
		}
	})
}

// fakeTarget is a scripted target for what tgtd cannot be made to do on
// demand: close the CmdSN window, answer late, send malformed PDUs.
type fakeTarget struct {
	t     *testing.T
	Addr  string
	conns chan net.Conn
}

func newFakeTarget(t *testing.T) *fakeTarget {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeTarget{t: t, Addr: ln.Addr().String(), conns: make(chan net.Conn, 8)}
	done := make(chan struct{})
	t.Cleanup(func() { close(done); ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			select {
			case f.conns <- c:
			case <-done:
				c.Close()
				return
			}
		}
	}()
	return f
}

// accept returns the next connection from the initiator.
func (f *fakeTarget) accept() *fakeConn {
	f.t.Helper()
	select {
	case c := <-f.conns:
		f.t.Cleanup(func() { c.Close() })
		return &fakeConn{t: f.t, c: c, br: bufio.NewReader(c), statSN: 1000}
	case <-time.After(testTimeout):
		f.t.Fatal("fake target: no connection from the initiator")
		return nil
	}
}

type fakeConn struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
	in chan *iscsi.PDU // what the initiator sent after login

	wmu                        sync.Mutex
	mu                         sync.Mutex
	statSN, expCmdSN, maxCmdSN uint32
	autoPing                   bool // answer NOP-Out pings by itself
}

func (c *fakeConn) read() *iscsi.PDU {
	c.t.Helper()
	c.c.SetReadDeadline(time.Now().Add(testTimeout))
	p, err := iscsi.ReadPDU(c.br, iscsi.Framing{MaxDataSegment: 1 << 24})
	if err != nil {
		c.t.Fatalf("fake target: reading: %v", err)
	}
	return p
}

func (c *fakeConn) writeRaw(b []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_, err := c.c.Write(b)
	return err
}

// reply stamps StatSN, ExpCmdSN and MaxCmdSN on a response and sends it.
func (c *fakeConn) reply(p *iscsi.PDU, advanceStatSN bool) {
	c.mu.Lock()
	p.SetStatSN(c.statSN)
	if advanceStatSN {
		c.statSN++
	}
	p.SetExpCmdSN(c.expCmdSN)
	p.SetMaxCmdSN(c.maxCmdSN)
	c.mu.Unlock()
	b, err := p.Marshal(iscsi.Digests{})
	if err == nil {
		err = c.writeRaw(b)
	}
	if err != nil {
		c.t.Errorf("fake target: sending %s: %v", p.Opcode(), err)
	}
}

// setWindow sets MaxCmdSN to ExpCmdSN+delta; -1 closes the window.
func (c *fakeConn) setWindow(delta int32) {
	c.mu.Lock()
	c.maxCmdSN = c.expCmdSN + uint32(delta)
	c.mu.Unlock()
}

func (c *fakeConn) setAutoPing() {
	c.mu.Lock()
	c.autoPing = true
	c.mu.Unlock()
}

func (c *fakeConn) window() (exp, max uint32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.expCmdSN, c.maxCmdSN
}

// login answers a two-stage login. The operational stage echoes every
// offered key (a valid answer under every RFC 7143 result function) unless
// answers overrides it, and declares MaxRecvDataSegmentLength=8192 unless
// answers does. The window after login is MaxCmdSN = ExpCmdSN+delta.
func (c *fakeConn) login(answers iscsi.Text, delta int32) {
	c.t.Helper()
	req := c.read()
	if req.Opcode() != iscsi.OpLoginReq || (req.Flags()>>2)&3 != stageSecurity {
		c.t.Fatalf("fake target: expected a security-stage Login Request, got %v", req)
	}
	c.expCmdSN = req.CmdSN()
	c.maxCmdSN = c.expCmdSN + uint32(delta)
	resp := loginResponse(req, stageSecurity, stageOperational)
	resp.Data = iscsi.Text{{Key: "TargetPortalGroupTag", Value: "1"}, {Key: "AuthMethod", Value: "None"}}.Encode()
	c.reply(resp, true)

	req = c.read()
	if (req.Flags()>>2)&3 != stageOperational {
		c.t.Fatalf("fake target: expected an operational-stage Login Request, got %v", req)
	}
	offered, err := iscsi.ParseText(req.Data)
	if err != nil {
		c.t.Fatal(err)
	}
	var keys iscsi.Text
	for _, kv := range offered {
		if kv.Key == "MaxRecvDataSegmentLength" {
			continue
		}
		if v, ok := answers.Get(kv.Key); ok {
			kv.Value = v
		}
		keys = append(keys, kv)
	}
	mrdsl, ok := answers.Get("MaxRecvDataSegmentLength")
	if !ok {
		mrdsl = "8192"
	}
	keys.Add("MaxRecvDataSegmentLength", mrdsl)
	resp = loginResponse(req, stageOperational, stageFullFeature)
	resp.Data = keys.Encode()
	c.reply(resp, true)
	c.serve()
}

func loginResponse(req *iscsi.PDU, csg, nsg byte) *iscsi.PDU {
	p := iscsi.New(iscsi.OpLoginResp)
	p.SetFlags(iscsi.FlagTransit | csg<<2 | nsg)
	copy(p.BHS[8:14], req.BHS[8:14])
	binary.BigEndian.PutUint16(p.BHS[14:16], 7) // TSIH
	p.SetITT(req.ITT())
	return p
}

// serve reads the initiator's PDUs into c.in, tracking ExpCmdSN and, with
// autoPing, answering NOP-Out pings.
func (c *fakeConn) serve() {
	c.in = make(chan *iscsi.PDU, 1024)
	c.c.SetReadDeadline(time.Time{})
	go func() {
		defer close(c.in)
		for {
			p, err := iscsi.ReadPDU(c.br, iscsi.Framing{MaxDataSegment: 1 << 24})
			if err != nil {
				return
			}
			op := p.Opcode()
			c.mu.Lock()
			if op != iscsi.OpDataOut && !p.Immediate() {
				c.expCmdSN = p.CmdSN() + 1
			}
			ping := c.autoPing && op == iscsi.OpNOPOut && p.ITT() != iscsi.ReservedTag
			c.mu.Unlock()
			if ping {
				c.reply(nopIn(p.ITT(), iscsi.ReservedTag), true)
			}
			c.in <- p
		}
	}()
}

// next returns the initiator's next PDU.
func (c *fakeConn) next() *iscsi.PDU {
	c.t.Helper()
	select {
	case p, ok := <-c.in:
		if !ok {
			c.t.Fatal("fake target: the initiator closed the connection")
		}
		return p
	case <-time.After(testTimeout):
		c.t.Fatal("fake target: nothing from the initiator")
		return nil
	}
}

// nextOp returns the next PDU and checks its opcode.
func (c *fakeConn) nextOp(op iscsi.Opcode) *iscsi.PDU {
	c.t.Helper()
	p := c.next()
	if p.Opcode() != op {
		c.t.Fatalf("fake target: got %v, want %s", p, op)
	}
	return p
}

func nopIn(itt, ttt uint32) *iscsi.PDU {
	p := iscsi.New(iscsi.OpNOPIn)
	p.SetFlags(iscsi.FlagFinal)
	p.SetITT(itt)
	p.SetTTT(ttt)
	return p
}

func scsiResponse(itt uint32, status byte, sense []byte) *iscsi.PDU {
	p := iscsi.New(iscsi.OpSCSIResponse)
	p.SetFlags(iscsi.FlagFinal)
	p.BHS[3] = status
	p.SetITT(itt)
	if sense != nil {
		p.Data = binary.BigEndian.AppendUint16(nil, uint16(len(sense)))
		p.Data = append(p.Data, sense...)
	}
	return p
}

func dataIn(itt, dataSN, off uint32, data []byte, withStatus bool) *iscsi.PDU {
	p := iscsi.New(iscsi.OpDataIn)
	if withStatus {
		p.SetFlags(iscsi.FlagFinal | iscsi.FlagStatus)
	}
	p.SetITT(itt)
	p.SetTTT(iscsi.ReservedTag)
	p.SetDataSN(dataSN)
	p.SetBufferOffset(off)
	p.Data = data
	return p
}

func r2tPDU(itt, ttt, r2tSN, off, n uint32) *iscsi.PDU {
	p := iscsi.New(iscsi.OpR2T)
	p.SetFlags(iscsi.FlagFinal)
	p.SetITT(itt)
	p.SetTTT(ttt)
	p.SetDataSN(r2tSN)
	p.SetBufferOffset(off)
	p.SetResidualCount(n)
	return p
}

// loginFake logs a session in to a fresh fake target.
func loginFake(t *testing.T, answers iscsi.Text, delta int32, mod ...func(*Options)) (*Session, *fakeConn) {
	t.Helper()
	f := newFakeTarget(t)
	o := Options{InitiatorName: initiatorIQN, TargetName: "iqn.2024-01.dev.certkit:fake", Address: f.Addr, Logf: t.Logf}
	for _, m := range mod {
		m(&o)
	}
	type result struct {
		s   *Session
		err error
	}
	ch := make(chan result, 1)
	go func() {
		s, err := Login(testContext(t), o)
		ch <- result{s, err}
	}()
	c := f.accept()
	c.login(answers, delta)
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Cleanup(func() { r.s.Close() })
	return r.s, c
}
