// Package faultproxy is a TCP proxy in front of one iSCSI portal that injects
// path faults the way a broken network or a failed controller port would:
//
//   - Blackhole: the path goes silent. Every connection stays open, nothing is
//     forwarded in either direction, new connections are accepted and held.
//     The initiator notices only by NOP-Out timeout. Revert resumes the
//     streams intact and in order.
//   - Reset: every connection is torn down with a TCP RST on the initiator's
//     side, and new connections are reset as soon as they are accepted. The
//     initiator notices at once.
//
// Faults follow toxiproxy's shape: a small value with a direction and a
// lifetime, one active at a time, Inject and Revert each reporting the instant
// the fault took effect so the harness can time what the host did.
package faultproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Kind names a fault.
type Kind string

const (
	// Blackhole stops forwarding both ways; connections stay open.
	Blackhole Kind = "blackhole"
	// Reset closes every connection with a TCP RST and resets new ones.
	Reset Kind = "reset"

	// BlackholeIn (extension) stops only host-to-array traffic: the array
	// stops hearing the host, its replies in flight still arrive.
	BlackholeIn Kind = "blackhole-in"
	// BlackholeOut (extension) stops only array-to-host traffic: the host
	// keeps sending and hears nothing back.
	BlackholeOut Kind = "blackhole-out"
)

// Kinds lists every fault a Proxy can inject.
func Kinds() []Kind { return []Kind{Blackhole, Reset, BlackholeIn, BlackholeOut} }

// Errors the Proxy's methods wrap, for callers that map them (the array's
// control API answers 400/409 from them).
var (
	ErrUnknownKind = errors.New("faultproxy: unknown fault kind")
	ErrFaultActive = errors.New("faultproxy: a fault is already active")
	ErrNoFault     = errors.New("faultproxy: no fault active")
	ErrClosed      = errors.New("faultproxy: proxy closed")
)

// dir is one direction of a proxied connection.
type dir int

const (
	toUpstream dir = iota // host -> array
	toClient              // array -> host
)

// blocks reports which directions a blackhole kind stops (nil: not a blackhole).
func (k Kind) blocks() []dir {
	switch k {
	case Blackhole:
		return []dir{toUpstream, toClient}
	case BlackholeIn:
		return []dir{toUpstream}
	case BlackholeOut:
		return []dir{toClient}
	}
	return nil
}

// gate holds a direction closed; open is closed by Revert.
type gate struct{ open chan struct{} }

// aLongTimeAgo as a deadline makes blocked reads and writes return at once.
var aLongTimeAgo = time.Unix(1, 0)

// bufSize is the pump buffer: large enough that a 128 KiB iSCSI Data-In
// crosses in a couple of syscalls.
const bufSize = 128 << 10

var bufPool = sync.Pool{New: func() any { b := make([]byte, bufSize); return &b }}

// Proxy forwards TCP connections from its listen address to one upstream
// portal and injects faults on them.
type Proxy struct {
	ln       *net.TCPListener
	upstream string
	name     string // "listen -> upstream", for errors
	ctx      context.Context
	cancel   context.CancelFunc
	dialer   net.Dialer

	// gates[d] is non-nil while direction d is blackholed. Pumps load it
	// before every read and write, so the hot path costs one atomic load.
	gates [2]atomic.Pointer[gate]

	mu     sync.Mutex
	fault  Kind
	links  map[*link]struct{}
	closed bool
	wg     sync.WaitGroup
}

// Listen binds exactly listenAddr and forwards each accepted connection to
// upstream (host:port), dialled per connection.
func Listen(listenAddr, upstream string) (*Proxy, error) {
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

// Fault is the active fault, "" when none.
func (p *Proxy) Fault() Kind {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.fault
}

func (p *Proxy) errorf(sentinel error, format string, args ...any) error {
	return &proxyError{msg: "faultproxy " + p.name + ": " + fmt.Sprintf(format, args...), sentinel: sentinel}
}

// proxyError reads as a sentence naming the proxy and still matches its
// sentinel with errors.Is.
type proxyError struct {
	msg      string
	sentinel error
}

func (e *proxyError) Error() string        { return e.msg }
func (e *proxyError) Is(target error) bool { return target == e.sentinel }

// Inject starts fault k on every open and every new connection and returns
// the instant it took effect. Only one fault is active at a time.
func (p *Proxy) Inject(k Kind) (time.Time, error) {
	if k != Reset && k.blocks() == nil {
		return time.Time{}, p.errorf(ErrUnknownKind, "unknown fault kind %q (want one of %v)", k, Kinds())
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return time.Time{}, p.errorf(ErrClosed, "inject %s: proxy is closed", k)
	}
	if p.fault != "" {
		return time.Time{}, p.errorf(ErrFaultActive, "inject %s: fault %s is already active; revert it first", k, p.fault)
	}
	p.fault = k
	if k == Reset {
		for l := range p.links {
			l.close(true)
		}
		return time.Now(), nil
	}
	// Close the gates before setting deadlines: a pump whose blocked call is
	// cut short by the deadline must find its gate closed, never spin.
	dirs := k.blocks()
	for _, d := range dirs {
		p.gates[d].Store(&gate{open: make(chan struct{})})
	}
	for l := range p.links {
		l.setDeadlines(dirs, aLongTimeAgo)
	}
	return time.Now(), nil
}

// Revert ends the active fault and returns the instant forwarding resumed.
func (p *Proxy) Revert() (time.Time, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return time.Time{}, p.errorf(ErrClosed, "revert: proxy is closed")
	}
	k := p.fault
	if k == "" {
		return time.Time{}, p.errorf(ErrNoFault, "revert: no fault is active")
	}
	p.fault = ""
	// Clear deadlines before opening the gates (the mirror of Inject).
	dirs := k.blocks()
	for l := range p.links {
		l.setDeadlines(dirs, time.Time{})
	}
	for _, d := range dirs {
		if g := p.gates[d].Swap(nil); g != nil {
			close(g.open)
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
		l := &link{p: p, client: c, done: make(chan struct{})}
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

	mu       sync.Mutex
	upstream *net.TCPConn
	closed   bool
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
	c, err := l.p.dialer.DialContext(l.p.ctx, "tcp", l.p.upstream)
	if err != nil {
		// The portal behind us is down: tell the host at once, as the
		// portal itself would by refusing the connection.
		l.close(true)
		return
	}
	up := c.(*net.TCPConn)
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		up.Close()
		return
	}
	l.upstream = up
	l.mu.Unlock()

	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		l.pump(up, l.client, toUpstream)
	}()
	l.pump(l.client, up, toClient)
	wg.Wait()
}

// pump copies src to dst through the direction's gate. A clean EOF is passed
// on as a half-close; any error ends the whole link.
func (l *link) pump(dst, src *net.TCPConn, d dir) {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	// The wrappers hide ReaderFrom/WriterTo, so io.CopyBuffer uses our buffer
	// and every read and write passes the gate.
	_, err := io.CopyBuffer(gatedWriter{l, dst, d}, gatedReader{l, src, d}, *bp)
	if err == nil && l.wait(d) == nil {
		_ = dst.CloseWrite()
		return
	}
	l.close(false)
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
// bytes in the directions dirs. Callers hold p.mu.
func (l *link) setDeadlines(dirs []dir, t time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return
	}
	for _, d := range dirs {
		src, dst := l.client, l.upstream
		if d == toClient {
			src, dst = l.upstream, l.client
		}
		if src != nil {
			_ = src.SetReadDeadline(t)
		}
		if dst != nil {
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
	c *net.TCPConn
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
	c *net.TCPConn
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
