// Package faultproxy is a TCP proxy in front of one iSCSI portal that injects
// path faults the way a broken network, a failed controller port or a sick
// array would:
//
//   - Blackhole: the path goes silent. Every connection stays open, nothing is
//     forwarded in either direction (or only one), new connections are
//     accepted and held. The initiator notices only by NOP-Out timeout.
//     Revert resumes the streams intact and in order.
//   - Reset: every connection is torn down with a TCP RST on the initiator's
//     side, and new connections are reset as soon as they are accepted. The
//     initiator notices at once.
//   - Latency: every chunk is held for a delay, in one direction or both.
//   - iSCSI-aware faults, which follow PDU boundaries: drop-nopin swallows
//     the array's NOP-Ins while SCSI I/O flows; fail-opcode answers the
//     commands with one SCSI opcode with CHECK CONDITION and chosen sense
//     data (05/25/00 makes a LUN look gone for good, PDL); delay-opcode holds
//     the answers to those commands.
//
// Faults follow toxiproxy's shape: a small value (Fault) with a kind, a
// direction and parameters, one active at a time, Inject and Revert each
// reporting the instant the fault took effect so the harness can time what
// the host did.
//
// # Cost
//
// With no fault active the proxy frames every PDU (to be ready for a fault
// at the next boundary) and forwards each chunk as read: one read and one
// write per chunk, no lock, no allocation, pump buffers of bufSize. What
// it costs is then mostly the kernel's: a proxy that dials the array moves
// every byte through a second loopback TCP connection, which on loopback
// costs about as much CPU as the array's own network I/O, so a dialled
// proxy roughly doubles the network CPU per I/O whatever it does in user
// space (BenchmarkReads: "proxy" sits at "relay", a bare io.Copy relay;
// splice(2) between the two sockets measured no cheaper than copying).
// When the array runs in the proxy's process, Options.Serve joins the two
// in memory instead, and the proxy costs little more than the framing
// (BenchmarkReads "proxy-memory"): while no fault acts on a direction,
// its bytes move in the array's own goroutines, with no hand-off to the
// proxy's. The array's Read reads the host's socket into the caller's
// buffer and frames what it got (link.readInline); its Write frames its
// bytes and writes them to the host's socket (link.forward). The
// direction's pump waits meanwhile. It takes over, without losing,
// repeating or reordering a byte, when a fault acts on the direction's
// bytes (blackhole, latency; array to host also delay-opcode) or the
// array sets a deadline on it, and gives the direction back once nothing
// is queued. Either way the array's Writes end, as on TCP, when its end
// closes or its write deadline passes, even if the host does not read.
package faultproxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Kind names a fault.
type Kind string

const (
	// Blackhole stops forwarding both ways (or one way, with a Direction);
	// connections stay open.
	Blackhole Kind = "blackhole"
	// Reset closes every connection with a TCP RST and resets new ones.
	Reset Kind = "reset"

	// BlackholeIn stops only host-to-array traffic: the array stops hearing
	// the host, its replies in flight still arrive.
	BlackholeIn Kind = "blackhole-in"
	// BlackholeOut stops only array-to-host traffic: the host keeps sending
	// and hears nothing back.
	BlackholeOut Kind = "blackhole-out"
)

// Kinds lists every fault a Proxy can inject.
func Kinds() []Kind {
	return []Kind{Blackhole, Reset, BlackholeIn, BlackholeOut, Latency, DropNOPIn, FailOpcode, DelayOpcode}
}

// Errors the Proxy's methods wrap, for callers that map them (the array's
// control API answers 400/409 from them).
var (
	// ErrInvalidFault: a fault the proxy cannot inject as given (unknown
	// kind, missing or extra parameters). Every ErrUnknownKind is one too.
	ErrInvalidFault = errors.New("faultproxy: invalid fault")
	ErrUnknownKind  = errors.New("faultproxy: unknown fault kind")
	ErrFaultActive  = errors.New("faultproxy: a fault is already active")
	ErrNoFault      = errors.New("faultproxy: no fault active")
	ErrClosed       = errors.New("faultproxy: proxy closed")
)

// dir is one direction of a proxied connection.
type dir int

const (
	toUpstream dir = iota // host -> array
	toClient              // array -> host
)

// gate holds a direction closed; open is closed by Revert.
type gate struct{ open chan struct{} }

// aLongTimeAgo as a deadline makes blocked reads and writes return at once.
var aLongTimeAgo = time.Unix(1, 0)

// bufSize is the pump buffer. Reads return what the socket holds, up to
// this; on a busy stream (128 KiB reads at QD16) a larger buffer moves
// several PDUs per read and write, which costs less CPU per byte than
// 128 KiB buffers did, and less than splice(2) between the sockets (see
// BenchmarkReads and BenchmarkThroughput). An idle connection holds none.
const bufSize = 1 << 20

var bufPool = sync.Pool{New: func() any { b := make([]byte, bufSize); return &b }}

// Options tune a Proxy; the zero value is the default.
type Options struct {
	// Logf receives notable events, such as a connection whose iSCSI stream
	// the proxy could not follow; nil discards them.
	Logf func(format string, args ...any)

	// Serve, when set, joins every host connection to an array in this
	// process in memory instead of dialling upstream: it receives the
	// array's end of an in-memory connection and must serve it as if it had
	// been accepted on the upstream portal (the end's RemoteAddr is the
	// host's, its LocalAddr the proxy's). It should return promptly; an
	// error, such as the portal being down, resets the host's connection as
	// a refused dial would. upstream then only names the portal.
	//
	// The host's side stays TCP and every fault acts as it does on a dialled
	// connection; the array's end behaves like a TCP connection (deadlines,
	// half-close, writes taken while the path is blackholed, up to a
	// bound). What changes is the cost (see the package comment): while no
	// fault acts on the direction, the array's writes go to the host's
	// socket from the array's goroutine, in one vectored write per batch if
	// the array calls the end's WriteBuffers(*net.Buffers)
	// (net.Buffers.WriteTo cannot find it), and, while the end has no read
	// deadline, the array's Reads read the host's socket themselves, into
	// the caller's buffer. Otherwise the proxy's goroutines carry the bytes
	// (the host's with one copy), as during login, when an array usually
	// sets deadlines.
	Serve func(net.Conn) error
}

// Proxy forwards TCP connections from its listen address to one upstream
// portal and injects faults on them.
type Proxy struct {
	ln       *net.TCPListener
	upstream string
	name     string // "listen -> upstream", for errors
	ctx      context.Context
	cancel   context.CancelFunc
	dialer   net.Dialer
	serve    func(net.Conn) error
	logf     func(format string, args ...any)

	// gates[d] is non-nil while direction d is blackholed. Pumps load it
	// before every read and write, so the hot path costs one atomic load.
	gates [2]atomic.Pointer[gate]
	// active is the active fault, nil when none; framers read it per PDU.
	active atomic.Pointer[Fault]

	mu     sync.Mutex
	fault  Kind
	links  map[*link]struct{}
	closed bool
	wg     sync.WaitGroup
}

// Listen binds exactly listenAddr and forwards each accepted connection to
// upstream (host:port), dialled per connection.
func Listen(listenAddr, upstream string) (*Proxy, error) {
	return ListenWith(listenAddr, upstream, Options{})
}

// ListenWith is Listen with Options.
func ListenWith(listenAddr, upstream string, opt Options) (*Proxy, error) {
	if _, _, err := net.SplitHostPort(upstream); err != nil {
		return nil, fmt.Errorf("faultproxy: upstream %q for %s is not host:port: %w", upstream, listenAddr, err)
	}
	ln, err := net.Listen("tcp", listenAddr)
	if err != nil {
		return nil, fmt.Errorf("faultproxy: listen on %s (proxy to %s): %w", listenAddr, upstream, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Proxy{
		ln:       ln.(*net.TCPListener),
		upstream: upstream,
		name:     ln.Addr().String() + " -> " + upstream,
		ctx:      ctx,
		cancel:   cancel,
		serve:    opt.Serve,
		logf:     opt.Logf,
		links:    make(map[*link]struct{}),
	}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr is the address the proxy listens on (the one to advertise).
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Upstream is the portal address the proxy forwards to.
func (p *Proxy) Upstream() string { return p.upstream }

// Fault is the kind of the active fault, "" when none.
func (p *Proxy) Fault() Kind {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.fault
}

// ActiveFault is the active fault as injected (in canonical form: a
// one-way blackhole reads as blackhole-in/-out, an empty direction as
// both); false when none is active.
func (p *Proxy) ActiveFault() (Fault, bool) {
	if f := p.active.Load(); f != nil {
		return *f, true
	}
	return Fault{}, false
}

func (p *Proxy) errorf(sentinels []error, format string, args ...any) error {
	return &proxyError{msg: "faultproxy " + p.name + ": " + fmt.Sprintf(format, args...), sentinels: sentinels}
}

// proxyError reads as a sentence naming the proxy and still matches its
// sentinels with errors.Is.
type proxyError struct {
	msg       string
	sentinels []error
}

func (e *proxyError) Error() string        { return e.msg }
func (e *proxyError) Is(target error) bool { return slices.Contains(e.sentinels, target) }

// Inject is InjectFault(Fault{Kind: k}): fault k without parameters (a
// blackhole in both directions unless k is blackhole-in/-out).
func (p *Proxy) Inject(k Kind) (time.Time, error) { return p.InjectFault(Fault{Kind: k}) }

// InjectFault starts f on every open and every new connection and returns
// the instant it took effect. Only one fault is active at a time. Faults
// that read the iSCSI stream act from the next PDU boundary of each
// connection on; fail-opcode and delay-opcode act on the commands the host
// sends from then on.
func (p *Proxy) InjectFault(f Fault) (time.Time, error) {
	nf, err := f.normalize()
	if err != nil {
		classes := []error{ErrInvalidFault}
		if errors.Is(err, ErrUnknownKind) {
			classes = append(classes, ErrUnknownKind)
		}
		return time.Time{}, p.errorf(classes, "inject: %v", err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return time.Time{}, p.errorf([]error{ErrClosed}, "inject %s: proxy is closed", nf)
	}
	if cur := p.active.Load(); cur != nil {
		return time.Time{}, p.errorf([]error{ErrFaultActive}, "inject %s: fault %s is already active; revert it first", nf, cur)
	}
	p.fault = nf.Kind
	p.active.Store(&nf)
	switch nf.Kind {
	case Reset:
		for l := range p.links {
			l.close(true)
		}
	case Blackhole, BlackholeIn, BlackholeOut:
		// Close the gates before setting deadlines: a pump whose blocked
		// call is cut short by the deadline must find its gate closed,
		// never spin.
		dirs := nf.Direction.dirs()
		for _, d := range dirs {
			p.gates[d].Store(&gate{open: make(chan struct{})})
		}
		for l := range p.links {
			l.setDeadlines(dirs, aLongTimeAgo)
		}
	case Latency, DelayOpcode:
		for l := range p.links {
			l.setDelays(&nf)
		}
	}
	// Host to an array in memory: the pump reads again if the array's
	// Reads no longer may.
	for l := range p.links {
		l.wakePump()
	}
	return time.Now(), nil
}

// Revert ends the active fault and returns the instant forwarding resumed.
// What latency or delay-opcode held goes out at once, in order; commands
// fail-opcode matched are still failed when their answers come.
func (p *Proxy) Revert() (time.Time, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return time.Time{}, p.errorf([]error{ErrClosed}, "revert: proxy is closed")
	}
	f := p.active.Load()
	if f == nil {
		return time.Time{}, p.errorf([]error{ErrNoFault}, "revert: no fault is active")
	}
	p.fault = ""
	p.active.Store(nil)
	switch f.Kind {
	case Blackhole, BlackholeIn, BlackholeOut:
		// Clear deadlines before opening the gates (the mirror of Inject).
		dirs := f.Direction.dirs()
		for l := range p.links {
			l.setDeadlines(dirs, time.Time{})
		}
		for _, d := range dirs {
			if g := p.gates[d].Swap(nil); g != nil {
				close(g.open)
			}
		}
	case Latency, DelayOpcode:
		for l := range p.links {
			l.setDelays(nil)
		}
	}
	return time.Now(), nil
}

// Close stops the listener and every connection and waits for all of the
// proxy's goroutines to end.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	links := make([]*link, 0, len(p.links))
	for l := range p.links {
		links = append(links, l)
	}
	p.mu.Unlock()

	err := p.ln.Close()
	p.cancel()
	for _, l := range links {
		l.close(false)
	}
	p.wg.Wait()
	if err != nil {
		return fmt.Errorf("faultproxy %s: close: %w", p.name, err)
	}
	return nil
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	var backoff time.Duration
	for {
		c, err := p.ln.AcceptTCP()
		if err != nil {
			if p.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: back off, as net/http does.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			select {
			case <-time.After(backoff):
				continue
			case <-p.ctx.Done():
				return
			}
		}
		backoff = 0
		_ = c.SetNoDelay(true) // Go's default; iSCSI is request/response
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			c.Close()
			return
		}
		if p.fault == Reset {
			p.mu.Unlock()
			resetConn(c)
			continue
		}
		l := p.newLink(c)
		l.setDelays(p.active.Load())
		p.links[l] = struct{}{}
		p.wg.Add(1)
		p.mu.Unlock()
		go l.run()
	}
}

func (p *Proxy) forget(l *link) {
	p.mu.Lock()
	delete(p.links, l)
	p.mu.Unlock()
}

// resetConn closes c with an RST instead of a FIN.
func resetConn(c *net.TCPConn) {
	_ = c.SetLinger(0)
	_ = c.Close()
}

// link is one proxied connection: the host's side and, once dialled, the
// array's side.
type link struct {
	p      *Proxy
	client *net.TCPConn
	done   chan struct{} // closed by close; wakes pumps waiting on a gate
	cs     *connState
	fr     [2]*framer
	out    [2]*outbox
	// nb[d] and its backing array nbBack[d] are the scratch net.Buffers of
	// direction d's writer, one at a time: the pump or an array's Write
	// (forward, under fwdMu) while the outbox is fast, its writer goroutine
	// otherwise. On the heap already, so a vectored write allocates nothing.
	nb, nbBack [2]net.Buffers

	// fwdMu is held by whoever frames and writes the array's bytes of an
	// array in memory: the pump, or the array's own Write (see forward).
	fwdMu      sync.Mutex
	fwdScratch [][]byte

	// Host to array, to an array in memory (see readInline): arrayEnd is
	// the array's end, and sockMu is held by whoever reads the host's
	// socket, frames what it read and passes it on: the pump, or the
	// array's own Read. inLive says the array's Reads may: the link runs
	// and its host-to-array pump has not ended. inWake (cap 1) tells a
	// pump parked for them to look again.
	arrayEnd *memConn
	sockMu   sync.Mutex
	inLive   atomic.Bool
	inWake   chan struct{}
	inReads  atomic.Int64 // Reads served from the host's socket, for tests

	// inMu guards the read deadline of the host's socket, which is in the
	// past while the direction is blackholed or an inline Read is being
	// woken (kicked), and zero otherwise.
	inMu       sync.Mutex
	inReading  bool // an inline Read is in a read of the host's socket
	kicked     bool
	blackholed bool

	// outMu guards the write deadline of the host's socket, outDeadline:
	// in the past while the array-to-host direction is blackholed
	// (outBlackholed); otherwise, while the bytes of an array's Write in
	// memory are being written to it (outWriting: link.forward, or the
	// pump with the bytes on loan), the array's end's write deadline, or
	// the past once that end has closed; zero otherwise.
	outMu         sync.Mutex
	outWriting    bool
	outBlackholed bool
	outDeadline   time.Time

	mu       sync.Mutex
	upstream streamConn
	closed   bool
}

// streamConn is what a link needs of a connection: the host's, the array's
// dialled one, or the proxy's end of an in-memory one (Options.Serve).
type streamConn interface {
	net.Conn
	CloseWrite() error
}

func (p *Proxy) newLink(c *net.TCPConn) *link {
	l := &link{p: p, client: c, done: make(chan struct{}), inWake: make(chan struct{}, 1)}
	l.cs = newConnState(p.active.Load)
	var logf func(string, ...any)
	if p.logf != nil {
		prefix := "faultproxy " + p.name + ": connection from " + c.RemoteAddr().String() + ": "
		logf = func(format string, args ...any) { p.logf(prefix+format, args...) }
	}
	for _, d := range []dir{toUpstream, toClient} {
		l.out[d] = newOutbox(l, d)
	}
	l.fr[toUpstream] = newFramer(toUpstream, l.cs, nil, logf)
	l.fr[toClient] = newFramer(toClient, l.cs, l.transforming, logf)
	return l
}

// transforming reports whether the next PDU from the array must be read
// whole before it is forwarded: an iSCSI-aware fault is active, or tasks
// it matched or PDUs it holds are still pending.
func (l *link) transforming() bool {
	if f := l.p.active.Load(); f != nil && f.Kind.iscsiAware() {
		return true
	}
	return l.cs.nmarks.Load() > 0 || l.out[toClient].nheld.Load() > 0
}

// setDelays applies the delays of fault f (nil: none) to the link's
// outboxes. Callers hold p.mu.
func (l *link) setDelays(f *Fault) {
	var delay [2]time.Duration
	var hold time.Duration
	switch {
	case f == nil:
	case f.Kind == Latency:
		for _, d := range f.Direction.dirs() {
			delay[d] = f.Params.Delay
		}
	case f.Kind == DelayOpcode:
		hold = f.Params.Delay
	}
	l.out[toUpstream].setDelays(delay[toUpstream], 0)
	l.out[toClient].setDelays(delay[toClient], hold)
}

func (l *link) run() {
	defer l.p.wg.Done()
	defer l.p.forget(l)
	defer l.close(false)

	// A blackholed path would never complete the handshake with the array, so
	// the dial waits until both directions forward again.
	if l.wait(toUpstream) != nil || l.wait(toClient) != nil {
		return
	}
	up, err := l.dial()
	if err != nil {
		// The portal behind us is down: tell the host at once, as the
		// portal itself would by refusing the connection.
		l.close(true)
		return
	}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		up.Close()
		return
	}
	l.upstream = up
	l.mu.Unlock()
	l.out[toUpstream].dst, l.out[toClient].dst = up, l.client
	l.out[toUpstream].mem, _ = up.(*memConn)
	if l.arrayEnd != nil {
		l.inLive.Store(true)
	}

	var wg sync.WaitGroup
	wg.Add(3)
	go func() {
		defer wg.Done()
		l.out[toUpstream].run()
	}()
	go func() {
		defer wg.Done()
		l.out[toClient].run()
	}()
	go func() {
		defer wg.Done()
		l.pump(toUpstream)
	}()
	l.pump(toClient)
	wg.Wait()
}

// dial connects the link to the array: over TCP, or in memory through
// Options.Serve.
func (l *link) dial() (streamConn, error) {
	if l.p.serve == nil {
		c, err := l.p.dialer.DialContext(l.p.ctx, "tcp", l.p.upstream)
		if err != nil {
			return nil, err
		}
		tc := c.(*net.TCPConn)
		_ = tc.SetNoDelay(true)
		return tc, nil
	}
	mine, theirs := memPipe(l.p.ln.Addr(), l.client.RemoteAddr())
	theirs.forward, theirs.inline, theirs.changed = l.forward, l.readInline, l.arrayChanged
	theirs.changedWrite = l.arrayWriteChanged
	l.arrayEnd = theirs
	if err := l.p.serve(theirs); err != nil {
		if l.p.logf != nil {
			l.p.logf("faultproxy %s: connection from %s: the array refused it: %v", l.p.name, l.client.RemoteAddr(), err)
		}
		theirs.Close()
		return nil, err
	}
	return mine, nil
}

// pump reads one direction, frames it and hands it to the direction's
// outbox. A clean EOF is passed on as a half-close once everything before
// it is written; any error ends the whole link.
//
// With no fault queueing anything (the outbox is fast), this is one read
// and one write per chunk, no lock taken and nothing allocated. To an
// array in memory, the pump reads the host only while the array's Reads
// cannot do it themselves (see readInline), and then hands each buffer
// over whole (memConn.hand). From one, the pump only forwards what the
// array's Writes did not forward themselves (see forward): it borrows
// those bytes in place (memConn.borrow), and takes them even while the
// direction is blackholed, to be queued as a socket buffer would take
// them (up to maxQueued).
func (l *link) pump(d dir) {
	var src net.Conn = l.client
	if d == toClient {
		src = l.upstream
	}
	mem, _ := src.(*memConn)
	r := gatedReader{l, src, d}
	var scratch [][]byte
	if d == toClient || l.arrayEnd == nil {
		for l.step(d, mem, r, &scratch) {
		}
		return
	}
	// Host to an array in memory: take turns with its inline Reads. Once
	// the pump ends, they end too (inLive is cleared before sockMu is
	// released, so none starts after the EOF the pump passed on).
	defer l.inLive.Store(false)
	for l.takeSocket() {
		more := l.step(d, nil, r, &scratch)
		if !more {
			l.inLive.Store(false)
		}
		l.sockMu.Unlock()
		if !more {
			return
		}
	}
}

// step reads, frames and forwards one chunk of direction d (from mem, the
// array's end, when it is one; else from r). false: the direction ended.
func (l *link) step(d dir, mem *memConn, r gatedReader, scratch *[][]byte) bool {
	f, o := l.fr[d], l.out[d]
	var err error
	if mem != nil {
		var chunk []byte
		if chunk, err = mem.borrow(bufSize); len(chunk) > 0 {
			l.fwdMu.Lock()
			werr := o.submitLent(mem, f.feed(chunk), chunk, f.atBoundary(), scratch)
			l.fwdMu.Unlock()
			if werr != nil {
				l.close(false)
				return false
			}
		}
	} else {
		bp := bufPool.Get().(*[]byte)
		var n int
		if n, err = r.Read(*bp); n > 0 {
			chunk := (*bp)[:n]
			if werr := o.submit(bp, f.feed(chunk), chunk, f.atBoundary(), scratch); werr != nil {
				l.close(false)
				return false
			}
		} else {
			bufPool.Put(bp)
		}
	}
	switch {
	case err == io.EOF:
		l.fwdMu.Lock()
		ferr := o.finish(f.eof(), f.atBoundary(), scratch)
		l.fwdMu.Unlock()
		if ferr != nil {
			l.close(false)
		}
		return false
	case err != nil:
		l.close(false)
		return false
	}
	return true
}

// inlineable reports whether the array's Reads may read the host's socket
// themselves (readInline): the link runs, its host-to-array outbox is fast
// and not blackholed, and the array's end has no read deadline (which a
// read of the host's socket could not honour) and is open.
func (l *link) inlineable() bool {
	m := l.arrayEnd
	return l.inLive.Load() && l.out[toUpstream].open() && m.rd.zero() && !m.isClosed()
}

// takeSocket is the host-to-array pump's turn to read the host's socket:
// it waits while the array's Reads may read it themselves, then takes
// sockMu. false: the link closed.
func (l *link) takeSocket() bool {
	for l.inlineable() {
		// A Read waiting for the pump reads the socket itself from now on.
		signal(l.arrayEnd.up.readable)
		select {
		case <-l.inWake:
		case <-l.done:
			return false
		}
	}
	l.sockMu.Lock()
	return true
}

// wakePump tells a host-to-array pump parked in takeSocket to look again
// whether it must read: whatever could make inlineable false calls it.
func (l *link) wakePump() { signal(l.inWake) }

// readInline is the Read of an array in memory done in the array's own
// goroutine (memConn.inline): while inlineable and nothing waits in the
// in-memory stream, it reads the host's socket into b, frames what it got
// (so PDU tracking stays exact) and returns it, with no hand-off to the
// pump. ok false: wait for the pump instead.
//
// Bytes it reads once a fault acts on this direction (the outbox is no
// longer fast or the direction is blackholed) are queued as the pump
// would have queued them (n 0, ok true: wait for them), and the pump
// takes over the socket. A read blocked when a blackhole starts is cut
// short by the blackhole's read deadline; one blocked when the array sets
// a read deadline or closes its end is cut short by a kick (arrayChanged).
// Either way it has consumed nothing, and the Read looks again. EOF from
// the host is left to the pump, which reads it again and passes the
// half-close on as it always does.
func (l *link) readInline(b []byte) (n int, ok bool, err error) {
	const d = toUpstream
	if !l.inlineable() || !l.sockMu.TryLock() {
		return 0, false, nil
	}
	defer l.sockMu.Unlock()
	m, o, f := l.arrayEnd, l.out[d], l.fr[d]
	l.inMu.Lock()
	l.inReading = true
	l.inMu.Unlock()
	// Checked after inReading is set: arrayChanged sees it or its change
	// is seen here. The outbox before the stream: once fast, only holders
	// of sockMu could fill the stream.
	if !l.inlineable() || !m.up.empty() {
		l.leaveSocket()
		return 0, false, nil
	}
	n, err = l.client.Read(b)
	l.leaveSocket()
	if n > 0 {
		l.inReads.Add(1)
		ps := f.feed(b[:n])
		boundary := f.atBoundary()
		if o.open() && len(ps) == 1 && ps[0].kind == pieceMain && ps[0].b == nil && ps[0].a == 0 && ps[0].z == n {
			o.mid.Store(!boundary)
			return n, true, nil
		}
		// A fault acts on this direction now: queue the bytes as the
		// pump would have, for the outbox's writer, and let the pump read.
		var bp *[]byte
		var chunk []byte
		if n <= bufSize {
			bp = bufPool.Get().(*[]byte)
			chunk = (*bp)[:copy(*bp, b[:n])]
		} else {
			chunk = bytes.Clone(b[:n])
		}
		o.mu.Lock()
		o.enqueue(bp, ps, chunk, boundary, false)
		o.mu.Unlock()
		l.wakePump()
		return 0, true, nil
	}
	switch {
	case err == nil, errors.Is(err, os.ErrDeadlineExceeded):
	case err == io.EOF:
		// The pump reads the EOF again and passes it on.
		l.inLive.Store(false)
		l.wakePump()
	default:
		// As the pump does: the array then reads EOF.
		l.close(false)
	}
	return 0, true, nil
}

// leaveSocket ends an inline Read's turn in the host's socket, restoring
// its read deadline if it was kicked.
func (l *link) leaveSocket() {
	l.inMu.Lock()
	defer l.inMu.Unlock()
	l.inReading = false
	if l.kicked {
		l.kicked = false
		l.applyReadDeadline()
	}
}

// arrayChanged is called when the array's end sets a read deadline (kick:
// a deadline other than none) or closes (kick true): an inline Read blocked
// in the host's socket is cut short, and the pump looks again whether it
// must read.
func (l *link) arrayChanged(kick bool) {
	if kick {
		l.inMu.Lock()
		if l.inReading && !l.kicked {
			l.kicked = true
			l.applyReadDeadline()
		}
		l.inMu.Unlock()
	}
	l.wakePump()
}

// setBlackholed sets the host's socket's read deadline for a blackhole of
// the host-to-array direction (on) or its Revert.
func (l *link) setBlackholed(on bool) {
	l.inMu.Lock()
	defer l.inMu.Unlock()
	l.blackholed = on
	l.applyReadDeadline()
}

// applyReadDeadline sets the host's socket's read deadline from the state
// under inMu. Callers hold inMu.
func (l *link) applyReadDeadline() {
	var t time.Time
	if l.blackholed || l.kicked {
		t = aLongTimeAgo
	}
	_ = l.client.SetReadDeadline(t)
}

// setBlackholedOut sets the host's socket's write deadline for a blackhole
// of the array-to-host direction (on) or its Revert.
func (l *link) setBlackholedOut(on bool) {
	l.outMu.Lock()
	defer l.outMu.Unlock()
	l.outBlackholed = on
	l.applyWriteDeadline()
}

// arrayWriteChanged is called when the array's end (in memory) sets its
// write deadline or closes: a write of its bytes to the host's socket in
// progress honours the change.
func (l *link) arrayWriteChanged() {
	l.outMu.Lock()
	defer l.outMu.Unlock()
	if l.outWriting {
		l.applyWriteDeadline()
	}
}

// writingArrays marks the start (on) or end of a write of the array's
// bytes to the host's socket, which honours the array's end's write
// deadline and Close meanwhile.
func (l *link) writingArrays(on bool) {
	l.outMu.Lock()
	defer l.outMu.Unlock()
	l.outWriting = on
	l.applyWriteDeadline()
}

// applyWriteDeadline sets the host's socket's write deadline from the
// state under outMu, if it changed. Callers hold outMu.
func (l *link) applyWriteDeadline() {
	var t time.Time
	switch {
	case l.outBlackholed:
		t = aLongTimeAgo
	case !l.outWriting:
	case l.arrayEnd.isClosed():
		t = aLongTimeAgo
	default:
		t = l.arrayEnd.wd.get()
	}
	if !t.Equal(l.outDeadline) {
		l.outDeadline = t
		_ = l.client.SetWriteDeadline(t)
	}
}

// forward is the Write of an array in memory done in the array's own
// goroutine: while nothing is queued or held and the host's side is not
// blackholed, the array's bytes (bufs, in order) are framed and written
// to the host here in one vectored write, with no hand-off to the pump.
// ok false: hand them to the pump instead. A blackhole that starts during
// the write queues the rest for after Revert, and the array's Write
// returns as it would into a socket buffer. One blocked because the host
// does not read ends when the array's end closes or sets a write deadline
// that passes (see writeOrQueue).
func (l *link) forward(bufs [][]byte) (n int, ok bool, err error) {
	const d = toClient
	o, f := l.out[d], l.fr[d]
	if !o.open() || !l.fwdMu.TryLock() {
		return 0, false, nil
	}
	defer l.fwdMu.Unlock()
	if !o.open() {
		return 0, false, nil
	}
	l.fwdScratch = l.fwdScratch[:0]
	for _, b := range bufs {
		l.fwdScratch = appendBufs(l.fwdScratch, f.feed(b), b)
		n += len(b)
	}
	err = l.writeOrQueue(d, l.fwdScratch, f.atBoundary(), true)
	clear(l.fwdScratch)
	if err != nil {
		l.close(false)
		return 0, true, err
	}
	return n, true, nil
}

// writeOrQueue writes bufs to the host (direction d is toClient) while
// the direction is open; if a blackhole closes it first, it queues a copy
// of the rest for the outbox's writer, which waits for Revert. boundary
// says whether bufs end between two PDUs.
//
// arrays says that bufs are the bytes of a Write of the array in memory in
// progress (forward, or the pump's loan): the write then honours the
// array's end's write deadline and Close, as a write to a TCP socket does,
// and fails with os.ErrDeadlineExceeded or net.ErrClosed (unless a
// blackhole takes the rest first). The framer has seen all of bufs, so
// the rest cannot wait for another Write: callers close the link on error.
func (l *link) writeOrQueue(d dir, bufs [][]byte, boundary, arrays bool) error {
	if arrays {
		l.writingArrays(true)
		defer l.writingArrays(false)
	}
	nb := l.buffers(d, bufs)
	for len(*nb) > 0 && l.p.gates[d].Load() == nil {
		_, err := nb.WriteTo(l.client)
		if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
			// A blackhole's deadline (the loop looks at the gate again),
			// or the array's (Inject sets the gate before the deadline).
			switch {
			case !arrays || l.p.gates[d].Load() != nil:
				err = nil
			case l.arrayEnd.isClosed():
				err = net.ErrClosed
			case l.arrayEnd.wd.expired():
			default:
				err = nil // the array's deadline moved on: write again
			}
		}
		if err != nil {
			clear(l.nbBack[d][:len(bufs)])
			return err
		}
	}
	if len(*nb) == 0 {
		clear(l.nbBack[d][:len(bufs)])
		l.out[d].mid.Store(!boundary)
		return nil
	}
	var rest []byte
	for _, b := range *nb {
		rest = append(rest, b...)
	}
	clear(l.nbBack[d][:len(bufs)])
	l.out[d].queue(rest, boundary)
	return nil
}

// hand gives the pump buffer *bp, holding b, to an array in memory through
// direction d's gate; the buffer is the array's from then on (or back in
// the pool on error).
func (l *link) hand(m *memConn, d dir, bp *[]byte, b []byte) error {
	for {
		if err := l.wait(d); err != nil {
			bufPool.Put(bp)
			return err
		}
		taken, err := m.hand(bp, b)
		if taken {
			return nil
		}
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			bufPool.Put(bp)
			return err
		}
	}
}

// buffers returns direction d's scratch net.Buffers, holding bufs.
func (l *link) buffers(d dir, bufs [][]byte) *net.Buffers {
	b := append(l.nbBack[d][:0], bufs...)
	l.nbBack[d], l.nb[d] = b, b
	return &l.nb[d]
}

// write writes bufs to dst through direction d's gate.
func (l *link) write(dst net.Conn, d dir, bufs [][]byte) error {
	if len(bufs) == 1 {
		_, err := gatedWriter{l, dst, d}.Write(bufs[0])
		return err
	}
	nb := l.buffers(d, bufs)
	defer clear(l.nbBack[d][:len(bufs)])
	for len(*nb) > 0 {
		if err := l.wait(d); err != nil {
			return err
		}
		if _, err := nb.WriteTo(dst); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			return err
		}
	}
	return nil
}

// closeWrite passes a half-close on once direction d forwards.
func (l *link) closeWrite(dst streamConn, d dir) error {
	if err := l.wait(d); err != nil {
		return err
	}
	_ = dst.CloseWrite()
	return nil
}

// wait blocks while direction d is blackholed; it fails once the link closes.
func (l *link) wait(d dir) error {
	for {
		g := l.p.gates[d].Load()
		if g == nil {
			return nil
		}
		select {
		case <-g.open:
		case <-l.done:
			return net.ErrClosed
		}
	}
}

// setDeadlines sets t as the deadline of every read and write that moves
// bytes in the directions dirs, except reads from an array in memory
// (see pump). Callers hold p.mu.
func (l *link) setDeadlines(dirs []dir, t time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return
	}
	for _, d := range dirs {
		var src, dst net.Conn = l.client, nil
		if l.upstream != nil {
			dst = l.upstream
			if d == toClient {
				src, dst = l.upstream, l.client
			}
		} else if d == toClient {
			src, dst = nil, l.client
		}
		if _, mem := src.(*memConn); src == net.Conn(l.client) {
			l.setBlackholed(!t.IsZero())
		} else if src != nil && !mem {
			_ = src.SetReadDeadline(t)
		}
		switch {
		case dst == net.Conn(l.client):
			l.setBlackholedOut(!t.IsZero())
		case dst != nil:
			_ = dst.SetWriteDeadline(t)
		}
	}
}

// close ends the link once; rst resets the host's side instead of closing it.
func (l *link) close(rst bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return
	}
	l.closed = true
	close(l.done)
	if rst {
		resetConn(l.client)
	} else {
		_ = l.client.Close()
	}
	if l.upstream != nil {
		_ = l.upstream.Close()
	}
}

// gatedReader reads only while its direction is open. A read cut short by a
// blackhole's deadline has consumed nothing and is retried after Revert.
type gatedReader struct {
	l *link
	c net.Conn
	d dir
}

func (r gatedReader) Read(b []byte) (int, error) {
	for {
		if err := r.l.wait(r.d); err != nil {
			return 0, err
		}
		n, err := r.c.Read(b)
		if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
			if n > 0 {
				return n, nil
			}
			continue
		}
		return n, err
	}
}

// gatedWriter writes only while its direction is open. Bytes read before a
// blackhole began wait here and are written, in order, after Revert.
type gatedWriter struct {
	l *link
	c net.Conn
	d dir
}

func (w gatedWriter) Write(b []byte) (int, error) {
	done := 0
	for {
		if err := w.l.wait(w.d); err != nil {
			return done, err
		}
		n, err := w.c.Write(b[done:])
		done += n
		if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
			if done == len(b) {
				return done, nil
			}
			continue
		}
		return done, err
	}
}
