package faultproxy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/certkit/certkit/iscsi"
)

// These tests are about an array in memory that reads with no read
// deadline, as a front end in full feature phase does: its Reads then read
// the host's socket themselves (link.readInline) until a fault acts on the
// host-to-array direction, when the pump takes over. (The other tests read
// the array's end with deadlines, so they go through the pump.)

// onlyLink is the proxy's one connection.
func onlyLink(t *testing.T, p *Proxy) *link {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.links) != 1 {
		t.Fatalf("proxy has %d connections, want 1", len(p.links))
	}
	for l := range p.links {
		return l
	}
	return nil
}

// inlineRead waits until the array's Read is in a read of the host's socket.
func inlineRead(t *testing.T, l *link) {
	t.Helper()
	deadline := time.Now().Add(settle)
	for {
		l.inMu.Lock()
		in := l.inReading
		l.inMu.Unlock()
		if in {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the array's Read did not read the host's socket itself within %v", settle)
		}
		runtime.Gosched()
	}
}

// inlineReadsGrow fails unless the array's Reads on l have read the host's
// socket themselves more than before times.
func inlineReadsGrow(t *testing.T, l *link, before int64, when string) {
	t.Helper()
	if n := l.inReads.Load(); n <= before {
		t.Fatalf("%s: the array's Reads did not read the host's socket themselves (%d such reads, as before)", when, n)
	}
}

// resumesInline sends the host's commands one at a time, each once the
// array has read the last, until the array's Reads read the host's socket
// themselves again (right after a fault, the pump may read a chunk or two
// while the outbox empties); had is what r has read so far. It returns
// what it sent.
func resumesInline(t *testing.T, l *link, host net.Conn, r *reader, had int) []byte {
	t.Helper()
	before := l.inReads.Load()
	var sent []byte
	for i := range 10 {
		b := wire(t, iscsi.Digests{}, scsiCmd(uint32(100+i), 0x00, 0)) // TEST UNIT READY
		send(t, host, b)
		sent = append(sent, b...)
		r.waitFor(t, had+len(sent))
		if l.inReads.Load() > before {
			return sent
		}
	}
	t.Fatalf("the array's Reads did not read the host's socket themselves again within 10 commands")
	return nil
}

// inlinePath is a proxy joined in memory to a test portal with one
// connection through it.
func inlinePath(t *testing.T) (p *Proxy, host, array net.Conn, l *link) {
	t.Helper()
	u := startPortal(t)
	p = listenTo(t, viaMemory, u, Options{})
	host, array = connect(t, p, u)
	return p, host, array, onlyLink(t, p)
}

// iscsiPath is inlinePath for an iSCSI stream: the test fails if the
// proxy ever loses track of its PDUs.
func iscsiPath(t *testing.T) (p *Proxy, host, array net.Conn, l *link) {
	t.Helper()
	u := startPortal(t)
	p = listenTo(t, viaMemory, u, Options{Logf: func(format string, args ...any) {
		msg := fmt.Sprintf(format, args...)
		if strings.Contains(msg, "unparsed") {
			t.Errorf("proxy lost track of the iSCSI stream: %s", msg)
		}
	}})
	host, array = connect(t, p, u)
	return p, host, array, onlyLink(t, p)
}

// commands is at least size bytes of the host's PDUs: SCSI Commands with
// and without immediate data of assorted lengths.
func commands(t *testing.T, size int) []byte {
	t.Helper()
	var out []byte
	for i := 0; len(out) < size; i++ {
		p := scsiCmd(uint32(i), 0x2a, 0) // WRITE(10)
		p.Data = random(t, []int{0, 512, 4096, 9003}[i%4])
		out = append(out, wire(t, iscsi.Digests{}, p)...)
	}
	return out
}

// reader reads an array's end with no deadline in a goroutine of its own,
// size bytes at a time, until an error.
type reader struct {
	mu   sync.Mutex
	got  []byte
	err  error
	more chan struct{} // cap 1: got grew or err is set
	done chan struct{}
}

func readAway(t *testing.T, c net.Conn, size int) *reader {
	r := &reader{more: make(chan struct{}, 1), done: make(chan struct{})}
	go func() {
		defer close(r.done)
		buf := make([]byte, size)
		for {
			n, err := c.Read(buf)
			r.mu.Lock()
			r.got = append(r.got, buf[:n]...)
			r.err = err
			r.mu.Unlock()
			signal(r.more)
			if err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() { c.Close(); <-r.done })
	return r
}

func (r *reader) state() (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.got), r.err
}

// waitFor waits until at least n bytes were read.
func (r *reader) waitFor(t *testing.T, n int) {
	t.Helper()
	timeout := time.After(settle)
	for {
		got, err := r.state()
		if got >= n {
			return
		}
		if err != nil {
			t.Fatalf("array read %d of %d bytes, then: %v", got, n, err)
		}
		select {
		case <-r.more:
		case <-timeout:
			t.Fatalf("array read %d of %d bytes within %v", got, n, settle)
		}
	}
}

// still waits until nothing more is read for quiet and returns how much
// was read by then.
func (r *reader) still(t *testing.T) int {
	t.Helper()
	timeout := time.After(settle)
	for {
		select {
		case <-r.more:
		case <-time.After(quiet):
			n, _ := r.state()
			return n
		case <-timeout:
			n, err := r.state()
			t.Fatalf("array still reading after %v: %d bytes, %v", settle, n, err)
		}
	}
}

// end waits for the reads to end and returns everything read and why.
func (r *reader) end(t *testing.T) ([]byte, error) {
	t.Helper()
	select {
	case <-r.done:
	case <-time.After(settle):
		n, _ := r.state()
		t.Fatalf("array still reading after %v (%d bytes read)", settle, n)
	}
	return r.got, r.err
}

// A blackhole that starts while the array reads the host's socket itself
// holds everything the host sends from then on; Revert delivers it, and
// the host's stream reaches the array once, in order, with the array's
// Reads reading the socket themselves again.
func TestInlineReadsKeepTheStreamWholeAcrossABlackhole(t *testing.T) {
	p, host, array, l := iscsiPath(t)
	const readSize = 64 << 10
	r := readAway(t, array, readSize)
	none := iscsi.Digests{}
	req := wire(t, none, login(iscsi.OpLoginReq, true, "HeaderDigest=None", "DataDigest=None"))
	send(t, host, req)
	r.waitFor(t, len(req))
	writeBatch(t, array, wire(t, none, login(iscsi.OpLoginResp, true, "HeaderDigest=None", "DataDigest=None")))
	recvPDU(t, host)

	first := commands(t, 1<<20)
	send(t, host, first)
	r.waitFor(t, len(req)+len(first))
	inlineReadsGrow(t, l, 0, "before the fault")

	// The host streams commands in small writes, cut anywhere, through the
	// fault.
	stream := commands(t, 16<<20)
	written := make(chan error, 1)
	go func() {
		var err error
		for b := stream; len(b) > 0 && err == nil; b = b[min(4096, len(b)):] {
			_, err = host.Write(b[:min(4096, len(b))])
		}
		written <- err
	}()
	had := len(req) + len(first)
	r.waitFor(t, had+1<<20)
	if _, err := p.Inject(Blackhole); err != nil {
		t.Fatal(err)
	}
	atInject, _ := r.state()
	// What a Read already had when the blackhole began may still arrive;
	// then nothing does.
	held := r.still(t)
	if held-atInject > readSize {
		t.Fatalf("array read %d bytes after the blackhole began, more than the one Read in progress could hold (%d)", held-atInject, readSize)
	}
	if n := r.still(t); n != held {
		t.Fatalf("array read %d bytes during the blackhole", n-held)
	}
	if held >= had+len(stream) {
		t.Fatalf("the whole stream arrived before the blackhole; make it longer")
	}
	if _, err := p.Revert(); err != nil {
		t.Fatal(err)
	}
	r.waitFor(t, had+len(stream))
	if err := <-written; err != nil {
		t.Fatalf("host's write across the blackhole: %v", err)
	}
	last := resumesInline(t, l, host, r, had+len(stream))

	host.(*net.TCPConn).CloseWrite()
	got, err := r.end(t)
	if err != io.EOF {
		t.Fatalf("array's read after the host's half-close: %v, want EOF", err)
	}
	sameStream(t, got, bytes.Join([][]byte{req, first, stream, last}, nil))
}

// pdus reads an array's end PDU by PDU with no deadline, in a goroutine of
// its own, until an error.
func pdus(t *testing.T, c net.Conn) <-chan *iscsi.PDU {
	ch := make(chan *iscsi.PDU, 16)
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		defer close(ch)
		for {
			p, err := iscsi.ReadPDU(c, iscsi.Framing{MaxDataSegment: 1 << 20})
			if err != nil {
				return
			}
			select {
			case ch <- p:
			case <-stop:
				return
			}
		}
	}()
	t.Cleanup(func() { close(stop); c.Close(); <-done })
	return ch
}

func recvFrom(t *testing.T, ch <-chan *iscsi.PDU) *iscsi.PDU {
	t.Helper()
	select {
	case p, ok := <-ch:
		if !ok {
			t.Fatal("array's end closed")
		}
		return p
	case <-time.After(settle):
		t.Fatalf("no PDU reached the array within %v", settle)
		return nil
	}
}

// fail-opcode needs to see the host's commands, which it does from the
// Read of the array's own goroutine as well as from the pump: injected
// while that Read waits on the host's socket, it fails the next matching
// command.
func TestFailOpcodeInjectedDuringAnInlineReadFailsTheNextCommand(t *testing.T) {
	p, host, array, l := iscsiPath(t)
	cmds := pdus(t, array)
	none := iscsi.Digests{}
	send(t, host, wire(t, none, login(iscsi.OpLoginReq, true, "HeaderDigest=None", "DataDigest=None")))
	recvFrom(t, cmds)
	writeBatch(t, array, wire(t, none, login(iscsi.OpLoginResp, true, "HeaderDigest=None", "DataDigest=None")))
	recvPDU(t, host)
	data := random(t, 4096)
	send(t, host, wire(t, none, scsiCmd(6, 0x28, 0)))
	recvFrom(t, cmds)
	writeBatch(t, array, wire(t, none, dataIn(6, data, true, 2)))
	if got := recvPDU(t, host); !bytes.Equal(got.Data, data) {
		t.Fatal("READ before the fault: data changed")
	}

	inlineRead(t, l)
	before := l.inReads.Load()
	if _, err := p.InjectFault(Fault{Kind: FailOpcode, Params: Params{Opcode: Opcode(0x28), Sense: Sense{Key: 5, ASC: 0x25}}}); err != nil {
		t.Fatal(err)
	}
	send(t, host, wire(t, none, scsiCmd(7, 0x28, 0)))
	if cmd := recvFrom(t, cmds); cmd.ITT() != 7 {
		t.Fatalf("array got ITT 0x%x, want 7", cmd.ITT())
	}
	inlineReadsGrow(t, l, before, "with fail-opcode active")
	writeBatch(t, array, wire(t, none, dataIn(7, data, true, 3)))
	checkCondition(t, recvPDU(t, host), 7, 3, 0, Sense{Key: 5, ASC: 0x25})
}

// Latency injected while the array's Read waits on the host's socket
// delays what the host sends from then on; after Revert the array's Reads
// read the socket themselves again.
func TestLatencyInjectedDuringAnInlineReadDelaysWhatFollows(t *testing.T) {
	p, host, array, l := inlinePath(t)
	r := readAway(t, array, 4096)
	send(t, host, []byte("warm"))
	r.waitFor(t, 4)

	inlineRead(t, l)
	if _, err := p.InjectFault(Fault{Kind: Latency, Direction: In, Params: Params{Delay: quiet}}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	send(t, host, []byte("slow"))
	r.waitFor(t, 8)
	if took := time.Since(start); took < quiet {
		t.Fatalf("bytes sent during latency %v arrived after %v", quiet, took)
	}
	if _, err := p.Revert(); err != nil {
		t.Fatal(err)
	}
	last := resumesInline(t, l, host, r, 8)
	host.Close()
	got, err := r.end(t)
	if want := "warmslow" + string(last); err != io.EOF || string(got) != want {
		t.Fatalf("array read %q, %v; want %q, then EOF", got, err, want)
	}
}

// An array's end whose Read waits on the host's socket still acts as a TCP
// connection: the host's half-close is its EOF, its own Close or a read
// deadline ends the Read, a reset reads as EOF.
func TestInlineReadActsLikeATCPRead(t *testing.T) {
	t.Run("host's half-close", func(t *testing.T) {
		p, host, array, l := inlinePath(t)
		r := readAway(t, array, 4096)
		send(t, host, []byte("bye"))
		r.waitFor(t, 3)
		inlineRead(t, l)
		host.(*net.TCPConn).CloseWrite()
		if got, err := r.end(t); err != io.EOF || string(got) != "bye" {
			t.Fatalf("array read %q, %v; want bye, then EOF", got, err)
		}
		send(t, array, []byte("last words"))
		expect(t, host, []byte("last words"))
		array.Close()
		host.SetReadDeadline(time.Now().Add(settle))
		if b, err := io.ReadAll(host); err != nil || len(b) > 0 {
			t.Fatalf("host after the array closed: %q, %v; want EOF", b, err)
		}
		waitGone(t, p)
	})

	t.Run("array's close", func(t *testing.T) {
		p, host, array, l := inlinePath(t)
		rd := async(func() (int, error) { return array.Read(make([]byte, 10)) })
		inlineRead(t, l)
		array.Close()
		if res := await(t, rd, "read when its end closes"); !errors.Is(res.err, net.ErrClosed) {
			t.Fatalf("read: %d, %v; want net.ErrClosed", res.n, res.err)
		}
		host.SetReadDeadline(time.Now().Add(settle))
		if b, err := io.ReadAll(host); err != nil || len(b) > 0 {
			t.Fatalf("host after the array closed: %q, %v; want EOF", b, err)
		}
		host.Close()
		waitGone(t, p)
	})

	t.Run("read deadline", func(t *testing.T) {
		p, host, array, l := inlinePath(t)
		buf := make([]byte, 10)
		rd := async(func() (int, error) { return array.Read(buf) })
		inlineRead(t, l)
		start := time.Now()
		array.SetReadDeadline(start.Add(quiet))
		res := await(t, rd, "read past its deadline")
		if !errors.Is(res.err, os.ErrDeadlineExceeded) || time.Since(start) < quiet {
			t.Fatalf("read with a deadline %v ahead: %d, %v after %v", quiet, res.n, res.err, time.Since(start))
		}
		// What the host sent meanwhile is not lost; without a deadline
		// the Reads read the socket themselves again.
		send(t, host, []byte("during"))
		array.SetReadDeadline(time.Now().Add(settle))
		expect(t, array, []byte("during"))
		array.SetReadDeadline(time.Time{})
		r := readAway(t, array, 4096)
		resumesInline(t, l, host, r, 0)
		host.Close()
		if _, err := r.end(t); err != io.EOF {
			t.Fatalf("array after the host closed: %v; want EOF", err)
		}
		array.Close()
		waitGone(t, p)
	})

	t.Run("reset", func(t *testing.T) {
		p, host, array, l := inlinePath(t)
		r := readAway(t, array, 4096)
		inlineRead(t, l)
		if _, err := p.Inject(Reset); err != nil {
			t.Fatal(err)
		}
		expectReset(t, host)
		if _, err := r.end(t); err != io.EOF {
			t.Fatalf("array after a reset: %v; want EOF", err)
		}
		if _, err := p.Revert(); err != nil {
			t.Fatal(err)
		}
		waitGone(t, p)
	})
}

// The proxy's Close ends a Read waiting on the host's socket, and leaves
// no goroutine of the proxy behind, nor one in its code.
func TestProxyCloseEndsAnInlineRead(t *testing.T) {
	p, _, array, l := inlinePath(t)
	r := readAway(t, array, 4096)
	inlineRead(t, l)
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := r.end(t); err != io.EOF {
		t.Fatalf("array after the proxy closed: %v; want EOF", err)
	}
	deadline := time.Now().Add(settle)
	for g := proxyGoroutines(); len(g) > 0; g = proxyGoroutines() {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines in the proxy's code after Close:\n%s", len(g), strings.Join(g, "\n\n"))
		}
		runtime.Gosched()
	}
}

// waitGone waits until the proxy has no connection left.
func waitGone(t *testing.T, p *Proxy) {
	t.Helper()
	deadline := time.Now().Add(settle)
	for {
		p.mu.Lock()
		n := len(p.links)
		p.mu.Unlock()
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d connections still open after %v", n, settle)
		}
		runtime.Gosched()
	}
}

// The host's reset reaches an array whose Read waits on its socket as EOF.
func TestInlineReadSeesTheHostsReset(t *testing.T) {
	p, host, array, l := inlinePath(t)
	r := readAway(t, array, 4096)
	inlineRead(t, l)
	resetConn(host.(*net.TCPConn))
	if _, err := r.end(t); err != io.EOF {
		t.Fatalf("array after the host's reset: %v; want EOF", err)
	}
	// The array's write then fails: the connection is gone.
	if _, err := array.Write([]byte("x")); err == nil {
		t.Fatal("array's write after the host's reset succeeded")
	}
	waitGone(t, p)
}

// Faults that move the host-to-array direction between the array's Reads
// and the pump, injected and reverted over and over while the host
// streams commands, and read deadlines set and cleared under a waiting
// Read, never lose, repeat or reorder a byte, nor make the proxy lose
// track of the PDUs.
func TestInlineReadsKeepTheStreamWholeAcrossManyFaults(t *testing.T) {
	p, host, array, l := iscsiPath(t)
	r := readAway(t, array, 16<<10)
	none := iscsi.Digests{}
	req := wire(t, none, login(iscsi.OpLoginReq, true, "HeaderDigest=None", "DataDigest=None"))
	send(t, host, req)
	r.waitFor(t, len(req))
	writeBatch(t, array, wire(t, none, login(iscsi.OpLoginResp, true, "HeaderDigest=None", "DataDigest=None")))
	recvPDU(t, host)

	stream := commands(t, 8<<20)
	written := make(chan error, 1)
	go func() {
		var err error
		for b := stream; len(b) > 0 && err == nil; b = b[min(4096, len(b)):] {
			_, err = host.Write(b[:min(4096, len(b))])
		}
		written <- err
	}()
	faults := []Fault{
		{Kind: Blackhole},
		{Kind: BlackholeIn},
		{Kind: Latency, Direction: In, Params: Params{Delay: time.Millisecond}},
		{Kind: FailOpcode, Params: Params{Opcode: Opcode(0x28), Sense: Sense{Key: 5, ASC: 0x25}}},
		{Kind: BlackholeOut},
	}
	total := len(req) + len(stream)
	rounds := 0
	for i := 0; ; i++ {
		n, err := r.state()
		if n >= total || err != nil {
			rounds = i
			break
		}
		switch i % 3 {
		case 0, 1:
			if _, err := p.InjectFault(faults[i%len(faults)]); err != nil {
				t.Fatal(err)
			}
			if _, err := p.Revert(); err != nil {
				t.Fatal(err)
			}
		case 2:
			array.SetReadDeadline(time.Now().Add(settle))
			array.SetReadDeadline(time.Time{})
		}
		r.waitFor(t, min(n+1, total))
	}
	if err := <-written; err != nil {
		t.Fatalf("host's write: %v", err)
	}
	t.Logf("%d rounds of faults and deadlines; %d of the array's Reads read the host's socket themselves", rounds, l.inReads.Load())
	last := resumesInline(t, l, host, r, total)
	host.(*net.TCPConn).CloseWrite()
	got, err := r.end(t)
	if err != io.EOF {
		t.Fatalf("array's read after the host's half-close: %v, want EOF", err)
	}
	sameStream(t, got, bytes.Join([][]byte{req, stream, last}, nil))
}

// sameStream fails unless the array read exactly want.
func sameStream(t *testing.T, got, want []byte) {
	t.Helper()
	if !bytes.Equal(got, want) {
		n := min(len(got), len(want))
		at := firstDiff(got[:n], want[:n])
		if at < 0 {
			at = n
		}
		t.Fatalf("array read %d bytes, want %d; first difference at %d", len(got), len(want), at)
	}
}
