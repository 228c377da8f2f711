package faultproxy

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Timing parameters of these tests.
const (
	// settle bounds anything that must happen (bytes arriving, a reset being
	// seen); a passing test never waits for it.
	settle = 5 * time.Second
	// quiet is how long "nothing arrives" must hold to count as silence.
	quiet = 150 * time.Millisecond
)

// portal is a test upstream that hands every connection it gets to the
// test: accepted on its TCP listener, or served in memory (Options.Serve).
type portal struct {
	ln    net.Listener
	conns chan net.Conn

	mu  sync.Mutex
	got []net.Conn
}

func startPortal(t *testing.T) *portal {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &portal{ln: ln, conns: make(chan net.Conn, 16)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u.serve(c)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		u.mu.Lock()
		defer u.mu.Unlock()
		for _, c := range u.got {
			c.Close()
		}
	})
	return u
}

// serve hands c to the test; it is the portal's Options.Serve.
func (u *portal) serve(c net.Conn) error {
	u.mu.Lock()
	u.got = append(u.got, c)
	u.mu.Unlock()
	u.conns <- c
	return nil
}

// The two ways the proxy reaches the array: dialling its portal over TCP,
// and in memory when the array is in the proxy's process (Options.Serve).
// The tests of forwarding and of path faults run in both.
const (
	viaTCP    = "tcp"
	viaMemory = "memory"
)

func eachMode(t *testing.T, test func(t *testing.T, mode string)) {
	for _, mode := range []string{viaTCP, viaMemory} {
		t.Run(mode, func(t *testing.T) { test(t, mode) })
	}
}

// listenTo starts a proxy in front of u that reaches it the mode's way.
func listenTo(t *testing.T, mode string, u *portal, opt Options) *Proxy {
	t.Helper()
	if mode == viaMemory {
		opt.Serve = u.serve
	}
	p, err := ListenWith("127.0.0.1:0", u.ln.Addr().String(), opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// next is the next connection the portal accepted.
func (u *portal) next(t *testing.T) net.Conn {
	t.Helper()
	select {
	case c := <-u.conns:
		return c
	case <-time.After(settle):
		t.Fatalf("portal %s: no connection arrived within %v", u.ln.Addr(), settle)
		return nil
	}
}

// noneWithin fails if the portal accepts a connection within d.
func (u *portal) noneWithin(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case c := <-u.conns:
		t.Fatalf("portal %s: connection from %s reached the array during the fault", u.ln.Addr(), c.RemoteAddr())
	case <-time.After(d):
	}
}

func listen(t *testing.T, upstream string) *Proxy {
	t.Helper()
	p, err := Listen("127.0.0.1:0", upstream)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func dial(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// connect dials through the proxy and returns both ends of the path.
func connect(t *testing.T, p *Proxy, u *portal) (host, array net.Conn) {
	t.Helper()
	host = dial(t, p.Addr())
	return host, u.next(t)
}

func send(t *testing.T, c net.Conn, b []byte) {
	t.Helper()
	if _, err := c.Write(b); err != nil {
		t.Fatalf("write to %s: %v", c.RemoteAddr(), err)
	}
}

// expect reads exactly want from c within settle.
func expect(t *testing.T, c net.Conn, want []byte) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(settle))
	defer c.SetReadDeadline(time.Time{})
	got := make([]byte, len(want))
	if n, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("read %d bytes from %s: got %d: %v", len(want), c.RemoteAddr(), n, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("read from %s: stream changed in transit (%d bytes, first difference at %d)", c.RemoteAddr(), len(want), firstDiff(got, want))
	}
}

func firstDiff(a, b []byte) int {
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}

// silent asserts that nothing arrives on c for quiet and that the connection
// is still open: the read times out, it does not see EOF or a reset.
func silent(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(quiet))
	defer c.SetReadDeadline(time.Time{})
	n, err := c.Read(make([]byte, 1))
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read from %s during blackhole: got %d bytes, err %v; want a timeout on an open connection", c.RemoteAddr(), n, err)
	}
}

// expectReset asserts that reading c fails with ECONNRESET within settle.
func expectReset(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(settle))
	_, err := c.Read(make([]byte, 1))
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read from %s: got %v, want ECONNRESET", c.RemoteAddr(), err)
	}
}

// expectDialReset asserts that a new connection to addr is reset: on loopback
// the RST can beat connect's return, so either step may report it.
func expectDialReset(t *testing.T, addr string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("dial %s: %v, want ECONNRESET", addr, err)
		}
		return
	}
	defer c.Close()
	expectReset(t, c)
}

func random(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func TestForwardsBothWaysIntact(t *testing.T) {
	eachMode(t, func(t *testing.T, mode string) {
		u := startPortal(t)
		p := listenTo(t, mode, u, Options{})
		host, array := connect(t, p, u)

		send(t, host, []byte("login"))
		expect(t, array, []byte("login"))
		send(t, array, []byte("login ok"))
		expect(t, host, []byte("login ok"))

		// Large streams both ways at once, more than any socket buffer holds.
		up, down := random(t, 4<<20), random(t, 4<<20)
		errc := make(chan error, 2)
		go func() { _, err := host.Write(up); errc <- err }()
		go func() { _, err := array.Write(down); errc <- err }()
		expect(t, array, up)
		expect(t, host, down)
		for range 2 {
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
		}
		if p.Fault() != "" {
			t.Fatalf("Fault() = %q with no fault injected", p.Fault())
		}
	})
}

func TestHalfCloseIsPassedOn(t *testing.T) {
	eachMode(t, func(t *testing.T, mode string) {
		u := startPortal(t)
		p := listenTo(t, mode, u, Options{})
		host, array := connect(t, p, u)

		send(t, host, []byte("bye"))
		host.(*net.TCPConn).CloseWrite()
		expect(t, array, []byte("bye"))
		array.SetReadDeadline(time.Now().Add(settle))
		if n, err := array.Read(make([]byte, 1)); err != io.EOF {
			t.Fatalf("array side after host's half-close: %d bytes, %v; want EOF", n, err)
		}
		send(t, array, []byte("last words"))
		expect(t, host, []byte("last words"))
	})
}

func TestBlackholeHoldsEveryConnectionAndRevertDeliversStreamsInOrder(t *testing.T) {
	eachMode(t, func(t *testing.T, mode string) {
		u := startPortal(t)
		p := listenTo(t, mode, u, Options{})
		host, array := connect(t, p, u)
		send(t, host, []byte("before;"))
		expect(t, array, []byte("before;"))

		injected, err := p.Inject(Blackhole)
		if err != nil {
			t.Fatal(err)
		}
		if p.Fault() != Blackhole {
			t.Fatalf("Fault() = %q after Inject(Blackhole)", p.Fault())
		}

		// Both directions go silent; the connection stays open.
		send(t, host, []byte("during;"))
		send(t, array, []byte("reply;"))
		silent(t, array)
		silent(t, host)

		// A new connection is accepted but never reaches the array.
		late := dial(t, p.Addr())
		send(t, late, []byte("new session"))
		u.noneWithin(t, quiet)
		silent(t, late)

		// More than the kernel buffers hold: the host's writer blocks, as it
		// would on a real dead path.
		bulk := random(t, 8<<20)
		written := make(chan error, 1)
		go func() { _, err := host.Write(bulk); written <- err }()

		reverted, err := p.Revert()
		if err != nil {
			t.Fatal(err)
		}
		if !reverted.After(injected) {
			t.Fatalf("Revert took effect at %v, not after Inject at %v", reverted, injected)
		}
		if p.Fault() != "" {
			t.Fatalf("Fault() = %q after Revert", p.Fault())
		}

		expect(t, array, append([]byte("during;"), bulk...))
		expect(t, host, []byte("reply;"))
		if err := <-written; err != nil {
			t.Fatalf("host write across the blackhole: %v", err)
		}
		lateArray := u.next(t)
		expect(t, lateArray, []byte("new session"))
		send(t, lateArray, []byte("welcome"))
		expect(t, late, []byte("welcome"))
	})
}

func TestBlackholeCanBeInjectedAgainAfterRevert(t *testing.T) {
	eachMode(t, func(t *testing.T, mode string) {
		u := startPortal(t)
		p := listenTo(t, mode, u, Options{})
		host, array := connect(t, p, u)
		for i := range 3 {
			if _, err := p.Inject(Blackhole); err != nil {
				t.Fatalf("round %d: %v", i, err)
			}
			msg := []byte(strings.Repeat("x", i+1))
			send(t, host, msg)
			silent(t, array)
			if _, err := p.Revert(); err != nil {
				t.Fatalf("round %d: %v", i, err)
			}
			expect(t, array, msg)
		}
	})
}

func TestOneWayBlackholeStopsOnlyItsDirection(t *testing.T) {
	eachMode(t, func(t *testing.T, mode string) {
		u := startPortal(t)
		p := listenTo(t, mode, u, Options{})
		host, array := connect(t, p, u)

		if _, err := p.Inject(BlackholeIn); err != nil {
			t.Fatal(err)
		}
		send(t, host, []byte("command"))
		send(t, array, []byte("data-in"))
		expect(t, host, []byte("data-in"))
		silent(t, array)
		if _, err := p.Revert(); err != nil {
			t.Fatal(err)
		}
		expect(t, array, []byte("command"))

		if _, err := p.Inject(BlackholeOut); err != nil {
			t.Fatal(err)
		}
		send(t, host, []byte("nop-out"))
		send(t, array, []byte("nop-in"))
		expect(t, array, []byte("nop-out"))
		silent(t, host)
		if _, err := p.Revert(); err != nil {
			t.Fatal(err)
		}
		expect(t, host, []byte("nop-in"))
	})
}

func TestResetSendsRSTToOpenAndNewConnections(t *testing.T) {
	eachMode(t, func(t *testing.T, mode string) {
		u := startPortal(t)
		p := listenTo(t, mode, u, Options{})
		host, array := connect(t, p, u)
		send(t, host, []byte("io"))
		expect(t, array, []byte("io"))

		before := time.Now()
		at, err := p.Inject(Reset)
		if err != nil {
			t.Fatal(err)
		}
		if at.Before(before) || at.After(time.Now()) {
			t.Fatalf("Inject(Reset) reports %v, outside the call", at)
		}
		expectReset(t, host)

		// The array's side is closed too.
		array.SetReadDeadline(time.Now().Add(settle))
		if _, err := io.ReadAll(array); err != nil && !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("array side after reset: %v; want the connection closed", err)
		}

		// While the fault is active every new connection is reset at once.
		for range 2 {
			expectDialReset(t, p.Addr())
		}
		u.noneWithin(t, quiet)

		if _, err := p.Revert(); err != nil {
			t.Fatal(err)
		}
		host, array = connect(t, p, u)
		send(t, host, []byte("relogin"))
		expect(t, array, []byte("relogin"))
	})
}

func TestUnreachableUpstreamResetsTheHost(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gone := ln.Addr().String()
	ln.Close()
	p := listen(t, gone)
	expectDialReset(t, p.Addr())
}

func TestArrayInMemoryRefusingResetsTheHost(t *testing.T) {
	var logs []string
	var mu sync.Mutex
	p, err := ListenWith("127.0.0.1:0", "127.0.0.1:3260", Options{
		Serve: func(c net.Conn) error { return errors.New("portal A0 is down") },
		Logf: func(format string, args ...any) {
			mu.Lock()
			defer mu.Unlock()
			logs = append(logs, fmt.Sprintf(format, args...))
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	expectDialReset(t, p.Addr())
	mu.Lock()
	defer mu.Unlock()
	if len(logs) != 1 || !strings.Contains(logs[0], "portal A0 is down") {
		t.Fatalf("logs %q: want one line with the array's reason", logs)
	}
}

func TestArrayInMemorySeesTheHostsAddress(t *testing.T) {
	u := startPortal(t)
	p := listenTo(t, viaMemory, u, Options{})
	host, array := connect(t, p, u)
	if array.RemoteAddr().String() != host.LocalAddr().String() || array.LocalAddr().String() != p.Addr() {
		t.Fatalf("array's end: local %v remote %v; want the proxy's %s and the host's %v", array.LocalAddr(), array.RemoteAddr(), p.Addr(), host.LocalAddr())
	}
}

// An array in memory is not held up by a blackhole: its writes are taken
// as a socket buffer would take them, and delivered after Revert.
func TestArrayInMemoryWritesDuringBlackhole(t *testing.T) {
	u := startPortal(t)
	p := listenTo(t, viaMemory, u, Options{})
	host, array := connect(t, p, u)
	if _, err := p.Inject(Blackhole); err != nil {
		t.Fatal(err)
	}
	bulk := random(t, 4<<20)
	array.SetWriteDeadline(time.Now().Add(settle))
	send(t, array, bulk)
	silent(t, host)
	if _, err := p.Revert(); err != nil {
		t.Fatal(err)
	}
	expect(t, host, bulk)
}

func TestOneFaultAtATime(t *testing.T) {
	u := startPortal(t)
	p := listen(t, u.ln.Addr().String())

	if _, err := p.Revert(); !errors.Is(err, ErrNoFault) {
		t.Fatalf("Revert with no fault: %v, want ErrNoFault", err)
	}
	if _, err := p.Inject("drop-half"); !errors.Is(err, ErrUnknownKind) || !strings.Contains(err.Error(), `"drop-half"`) {
		t.Fatalf("Inject(drop-half): %v, want ErrUnknownKind naming the kind", err)
	}
	if _, err := p.Inject(Reset); err != nil {
		t.Fatal(err)
	}
	_, err := p.Inject(Blackhole)
	if !errors.Is(err, ErrFaultActive) {
		t.Fatalf("second Inject: %v, want ErrFaultActive", err)
	}
	for _, want := range []string{p.Addr(), "fault reset is already active"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	if p.Fault() != Reset {
		t.Fatalf("Fault() = %q after refused Inject, want reset", p.Fault())
	}
}

func TestListenBindsExactlyTheGivenAddress(t *testing.T) {
	p := listen(t, "127.0.0.1:3260")
	host, _, _ := net.SplitHostPort(p.Addr())
	if host != "127.0.0.1" {
		t.Fatalf("Addr() = %s, want 127.0.0.1:<port>", p.Addr())
	}
	if p.Upstream() != "127.0.0.1:3260" {
		t.Fatalf("Upstream() = %s", p.Upstream())
	}

	_, err := Listen(p.Addr(), "127.0.0.1:3260")
	if err == nil || !strings.Contains(err.Error(), p.Addr()) {
		t.Fatalf("Listen on a busy address: %v, want an error naming %s", err, p.Addr())
	}
	_, err = Listen("127.0.0.1:0", "portal-without-port")
	if err == nil || !strings.Contains(err.Error(), "portal-without-port") {
		t.Fatalf("Listen with a bad upstream: %v, want an error naming it", err)
	}
}

// proxyGoroutines lists the stacks of goroutines running the proxy's code.
func proxyGoroutines() []string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var found []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "faultproxy.(*") { // methods of Proxy, link, outbox
			found = append(found, g)
		}
	}
	return found
}

func TestCloseEndsConnectionsAndLeaksNothing(t *testing.T) {
	eachMode(t, testCloseEndsConnectionsAndLeaksNothing)
}

func testCloseEndsConnectionsAndLeaksNothing(t *testing.T, mode string) {
	u := startPortal(t)
	opt := Options{}
	if mode == viaMemory {
		opt.Serve = u.serve
	}
	p, err := ListenWith("127.0.0.1:0", u.ln.Addr().String(), opt)
	if err != nil {
		t.Fatal(err)
	}
	// One connection forwarding, one held in a blackhole before its dial.
	host, array := connect(t, p, u)
	send(t, host, []byte("x"))
	expect(t, array, []byte("x"))
	if _, err := p.Inject(Blackhole); err != nil {
		t.Fatal(err)
	}
	held := dial(t, p.Addr())
	send(t, held, []byte("y"))
	go host.Write(bytes.Repeat([]byte("z"), 8<<20)) // blocks until Close ends the connection

	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	for _, c := range []net.Conn{host, held} {
		c.SetReadDeadline(time.Now().Add(settle))
		if _, err := io.ReadAll(c); errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("%s still open after Close", c.LocalAddr())
		}
	}
	if _, err := net.Dial("tcp", p.Addr()); err == nil {
		t.Fatalf("%s still accepts after Close", p.Addr())
	}
	if _, err := p.Inject(Reset); !errors.Is(err, ErrClosed) {
		t.Fatalf("Inject after Close: %v, want ErrClosed", err)
	}

	deadline := time.Now().Add(settle)
	for g := proxyGoroutines(); len(g) > 0; g = proxyGoroutines() {
		if time.Now().After(deadline) {
			t.Fatalf("%d proxy goroutines left after Close:\n%s", len(g), strings.Join(g, "\n\n"))
		}
		runtime.Gosched()
	}
}
