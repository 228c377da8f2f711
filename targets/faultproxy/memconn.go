package faultproxy

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"time"
)

// An in-memory connection joins a host's TCP connection to an array in the
// proxy's process (Options.Serve). It has two ends, the proxy's and the
// array's, and two directions built for what flows in each:
//
//   - host to array (upStream): while no fault acts on these bytes and the
//     array's end has no read deadline, the array's Read reads the host's
//     socket itself, into its own buffer (link.readInline), once nothing
//     handed over waits. Otherwise the pump reads the host: it hands each
//     buffer it read over whole and goes back to reading; the array's
//     Reads copy out of it, as they would out of a socket. Buffers of up to
//     upStreamMax bytes in all wait, like a socket buffer.
//   - array to host (downStream): while no fault queues anything, the
//     array's Write frames its bytes and writes them to the host's socket
//     itself (link.forward), so an I/O costs no hand-off between
//     goroutines. Otherwise, or while the array has a write deadline set,
//     the Write lends its bytes to the pump (borrow) and returns once the
//     pump has written or queued them. Either way the write to the host's
//     socket honours the array's write deadline and Close, as a blocked
//     Write on TCP does: it ends with os.ErrDeadlineExceeded or
//     net.ErrClosed, and, as the rest of a PDU already framed cannot be
//     taken back, the connection closes (see link.writeOrQueue).
//
// Both ends are net.Conns with TCP's deadline and half-close behaviour.

// upStreamMax bounds the memory of the host's bytes waiting for the array:
// the capacity of the pump buffers that hold them.
const upStreamMax = 8 << 20

// memPipe returns the proxy's and the array's end of a new in-memory
// connection. arrayLocal and arrayRemote are the addresses the array's end
// reports: where the host connected, and the host.
func memPipe(arrayLocal, arrayRemote net.Addr) (proxyEnd, arrayEnd *memConn) {
	up := &upStream{readable: make(chan struct{}, 1), writable: make(chan struct{}, 1)}
	down := &downStream{readable: make(chan struct{}, 1), writable: make(chan struct{}, 1)}
	proxyEnd = &memConn{up: up, down: down, local: arrayRemote, remote: memAddr("array in process"), closed: make(chan struct{})}
	arrayEnd = &memConn{array: true, up: up, down: down, local: arrayLocal, remote: arrayRemote, closed: make(chan struct{})}
	for _, c := range []*memConn{proxyEnd, arrayEnd} {
		c.rd.init()
		c.wd.init()
	}
	return proxyEnd, arrayEnd
}

// memAddr is the address of the array's side of an in-memory connection.
type memAddr string

func (a memAddr) Network() string { return "faultproxy" }
func (a memAddr) String() string  { return string(a) }

// errWriteAfterCloseWrite is a Write after CloseWrite.
var errWriteAfterCloseWrite = errors.New("faultproxy: write after CloseWrite on an in-memory connection")

// memConn is one end of an in-memory connection.
type memConn struct {
	array         bool // the array's end: reads up, writes down
	up            *upStream
	down          *downStream
	local, remote net.Addr
	rd, wd        deadline
	rdMu, wrMu    sync.Mutex // one Read and one Write at a time
	closeOnce     sync.Once
	closed        chan struct{}

	// forward, on the array's end, writes the array's bytes to the host
	// itself when it can (link.forward); ok false means hand them to the
	// pump instead.
	forward func(bufs [][]byte) (n int, ok bool, err error)
	one     [1][]byte // Write's argument to forward, under wrMu
	// inline, on the array's end, reads the host's bytes into b itself
	// when it can (link.readInline); ok false means wait for the pump, ok
	// with n 0 and no error means look again.
	inline func(b []byte) (n int, ok bool, err error)
	// changed, on the array's end, is told that its read deadline was set
	// (kick: to something other than none) or that it closed (kick true).
	changed func(kick bool)
	// changedWrite, on the array's end, is told that its write deadline
	// was set or that it closed, so that a write of its bytes to the
	// host's socket in progress honours it (link.arrayWriteChanged).
	changedWrite func()
}

func (c *memConn) isClosed() bool {
	select {
	case <-c.closed:
		return true
	default:
		return false
	}
}

// wait blocks until ready is signalled, the deadline whose channel is dl
// changes or passes, or c closes.
func (c *memConn) wait(dl, ready <-chan struct{}) {
	select {
	case <-ready:
	case <-dl:
	case <-c.closed:
	}
}

func (c *memConn) Read(b []byte) (int, error) {
	c.rdMu.Lock()
	defer c.rdMu.Unlock()
	if c.array {
		return c.readUp(b)
	}
	// The proxy's end: a copying borrow.
	if len(b) == 0 {
		return 0, nil
	}
	lent, err := c.borrow(len(b))
	n := copy(b, lent)
	if err == nil {
		c.release(n)
	}
	return n, err
}

func (c *memConn) Write(b []byte) (int, error) {
	c.wrMu.Lock()
	defer c.wrMu.Unlock()
	if !c.array {
		return c.writeUp(b)
	}
	if err := c.writable(); err != nil || len(b) == 0 {
		return 0, err
	}
	if c.forward != nil && c.wd.zero() {
		c.one[0] = b
		n, ok, err := c.forward(c.one[:])
		c.one[0] = nil
		if ok {
			return n, err
		}
	}
	return c.writeDown(b)
}

// WriteBuffers writes the buffers of v in order, consuming v, as
// net.Buffers.WriteTo does on a TCP connection: the array's end forwards a
// whole batch of PDUs in one vectored write to the host. (net.Buffers uses
// an unexported interface, so an array must look for this method itself.)
func (c *memConn) WriteBuffers(v *net.Buffers) (int64, error) {
	c.wrMu.Lock()
	defer c.wrMu.Unlock()
	if c.array && c.forward != nil && len(*v) > 0 && c.wd.zero() {
		if err := c.writable(); err != nil {
			return 0, err
		}
		if n, ok, err := c.forward(*v); ok {
			if err == nil {
				clear(*v)
				*v = (*v)[len(*v):]
			}
			return int64(n), err
		}
	}
	var total int64
	for len(*v) > 0 {
		var n int
		var err error
		if c.array {
			n, err = c.writeDown((*v)[0])
		} else {
			n, err = c.writeUp((*v)[0])
		}
		total += int64(n)
		if (*v)[0] = (*v)[0][n:]; len((*v)[0]) == 0 {
			(*v)[0] = nil
			*v = (*v)[1:]
		}
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

// writable reports why the array's end cannot write now, if it cannot.
func (c *memConn) writable() error {
	s := c.down
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case c.isClosed():
		return net.ErrClosed
	case s.eof:
		return errWriteAfterCloseWrite
	case s.gone:
		return io.ErrClosedPipe
	case c.wd.expired():
		return os.ErrDeadlineExceeded
	}
	return nil
}

// CloseWrite ends what this end sends: the other end reads EOF after it.
func (c *memConn) CloseWrite() error {
	c.wrMu.Lock()
	defer c.wrMu.Unlock()
	if c.isClosed() {
		return net.ErrClosed
	}
	if c.array {
		c.down.end()
	} else {
		c.up.end()
	}
	return nil
}

// Close ends both directions: the other end reads EOF and its writes fail.
func (c *memConn) Close() error {
	c.closeOnce.Do(func() {
		close(c.closed)
		if c.array {
			c.down.end()
			c.up.leave()
		} else {
			c.up.end()
			c.down.leave()
		}
	})
	if c.changed != nil {
		c.changed(true)
	}
	if c.changedWrite != nil {
		c.changedWrite()
	}
	return nil
}

func (c *memConn) LocalAddr() net.Addr  { return c.local }
func (c *memConn) RemoteAddr() net.Addr { return c.remote }

func (c *memConn) SetDeadline(t time.Time) error {
	c.SetWriteDeadline(t)
	return c.SetReadDeadline(t)
}

func (c *memConn) SetReadDeadline(t time.Time) error {
	c.rd.set(t)
	if c.changed != nil {
		c.changed(!t.IsZero())
	}
	return nil
}

func (c *memConn) SetWriteDeadline(t time.Time) error {
	c.wd.set(t)
	if c.changedWrite != nil {
		c.changedWrite()
	}
	return nil
}

// writeUp is the proxy's end's Write: a copy of b is handed over.
func (c *memConn) writeUp(b []byte) (int, error) {
	n := 0
	for n < len(b) {
		bp := bufPool.Get().(*[]byte)
		k := copy(*bp, b[n:])
		if taken, err := c.hand(bp, (*bp)[:k]); !taken {
			bufPool.Put(bp)
			return n, err
		}
		n += k
	}
	return n, nil
}

// upStream carries the host's bytes to the array: whole pump buffers,
// handed over and read out in order.
type upStream struct {
	mu       sync.Mutex
	q        []upChunk // q[head:] wait; the backing array is reused
	head     int
	pinned   int  // capacity of the buffers in q[head:]
	eof      bool // the proxy's end half-closed or closed
	gone     bool // the array's end closed: hands fail
	readable chan struct{}
	writable chan struct{}
}

// upChunk is one buffer handed over: b, within *bp, which goes back to
// bufPool once read.
type upChunk struct {
	b  []byte
	bp *[]byte
}

func (s *upStream) end() {
	s.mu.Lock()
	s.eof = true
	s.mu.Unlock()
	signal(s.readable)
}

func (s *upStream) leave() {
	s.mu.Lock()
	s.gone = true
	for _, ch := range s.q[s.head:] {
		bufPool.Put(ch.bp)
	}
	s.q, s.head, s.pinned = nil, 0, 0
	s.mu.Unlock()
	signal(s.writable)
}

// hand gives b, within the pump buffer *bp, to the array (the proxy's end
// only). taken false: the buffer is still the caller's, and err says why.
// It waits while upStreamMax bytes wait.
func (c *memConn) hand(bp *[]byte, b []byte) (taken bool, err error) {
	s := c.up
	for {
		dl := c.wd.wait()
		s.mu.Lock()
		switch {
		case c.isClosed():
			err = net.ErrClosed
		case s.eof:
			err = errWriteAfterCloseWrite
		case s.gone:
			err = io.ErrClosedPipe
		case c.wd.expired():
			err = os.ErrDeadlineExceeded
		case s.pinned < upStreamMax:
			s.q = append(s.q, upChunk{b, bp})
			s.pinned += cap(*bp)
			s.mu.Unlock()
			signal(s.readable)
			return true, nil
		}
		s.mu.Unlock()
		if err != nil {
			return false, err
		}
		c.wait(dl, s.writable)
	}
}

// readUp is the array's Read.
func (c *memConn) readUp(b []byte) (int, error) {
	s := c.up
	for {
		dl := c.rd.wait()
		s.mu.Lock()
		var err error
		switch {
		case c.isClosed():
			err = net.ErrClosed
		case c.rd.expired():
			err = os.ErrDeadlineExceeded
		case len(b) == 0:
			s.mu.Unlock()
			return 0, nil
		case s.head < len(s.q):
			n := 0
			for n < len(b) && s.head < len(s.q) {
				ch := &s.q[s.head]
				k := copy(b[n:], ch.b)
				n += k
				if ch.b = ch.b[k:]; len(ch.b) == 0 {
					s.pinned -= cap(*ch.bp)
					bufPool.Put(ch.bp)
					*ch = upChunk{}
					if s.head++; s.head == len(s.q) {
						s.q, s.head = s.q[:0], 0
					}
				}
			}
			s.mu.Unlock()
			signal(s.writable)
			return n, nil
		case s.eof:
			err = io.EOF
		}
		s.mu.Unlock()
		if err != nil {
			return 0, err
		}
		if c.inline != nil {
			// Nothing waits: read the host's socket here if the link
			// allows it (it checks the stream again, under its lock).
			if n, ok, err := c.inline(b); ok {
				if n > 0 || err != nil {
					return n, err
				}
				continue
			}
		}
		c.wait(dl, s.readable)
	}
}

// empty reports whether no handed buffer waits.
func (s *upStream) empty() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.head == len(s.q)
}

// downStream carries the array's bytes to the host when the array does not
// forward them itself: its Write lends them to the pump and waits.
type downStream struct {
	mu       sync.Mutex
	buf      []byte // the unread rest of the Write in progress
	lent     bool   // buf is borrowed: the writer waits, whatever its deadline
	failed   error  // why the pump could not write the last loan (releaseFailed)
	eof      bool   // the array's end half-closed or closed
	gone     bool   // the proxy's end closed: writes fail
	readable chan struct{}
	writable chan struct{}
}

func (s *downStream) end() {
	s.mu.Lock()
	s.eof = true
	s.mu.Unlock()
	signal(s.readable)
}

func (s *downStream) leave() {
	s.mu.Lock()
	s.gone = true
	s.mu.Unlock()
	signal(s.writable)
}

// writeDown is the array's Write that hands b to the pump: it returns
// once the pump has taken all of b. Callers hold wrMu.
func (c *memConn) writeDown(b []byte) (int, error) {
	if err := c.writable(); err != nil || len(b) == 0 {
		return 0, err
	}
	s := c.down
	var err error
	s.mu.Lock()
	s.buf = b
	s.mu.Unlock()
	signal(s.readable)
	for {
		dl := c.wd.wait()
		s.mu.Lock()
		left, lent := len(s.buf), s.lent
		if !lent {
			switch {
			case s.failed != nil:
				err, s.failed = s.failed, nil
			case left == 0:
			case s.gone:
				err = io.ErrClosedPipe
			case c.isClosed():
				err = net.ErrClosed
			case c.wd.expired():
				err = os.ErrDeadlineExceeded
			}
			if left == 0 || err != nil {
				s.buf = nil
				s.mu.Unlock()
				return len(b) - left, err
			}
		}
		s.mu.Unlock()
		if lent {
			// The pump is forwarding these bytes: they must stay put. Its
			// write to the host honours this end's deadline and Close
			// (link.writeOrQueue), so the loan ends in time.
			<-s.writable
			continue
		}
		c.wait(dl, s.writable)
	}
}

// borrow returns up to max unread bytes of the array's Write in progress,
// in place, waiting for one like Read; the writer waits until release
// (the proxy's end only, by its only reader).
func (c *memConn) borrow(max int) ([]byte, error) {
	s := c.down
	for {
		dl := c.rd.wait()
		s.mu.Lock()
		var err error
		switch {
		case c.isClosed():
			err = net.ErrClosed
		case c.rd.expired():
			err = os.ErrDeadlineExceeded
		case len(s.buf) > 0:
			s.lent = true
			b := s.buf[:min(len(s.buf), max)]
			s.mu.Unlock()
			return b, nil
		case s.eof:
			err = io.EOF
		}
		s.mu.Unlock()
		if err != nil {
			return nil, err
		}
		c.wait(dl, s.readable)
	}
}

// release ends a borrow that took n bytes.
func (c *memConn) release(n int) {
	s := c.down
	s.mu.Lock()
	s.buf = s.buf[n:]
	s.lent = false
	s.mu.Unlock()
	signal(s.writable)
}

// releaseFailed ends a borrow whose bytes the pump could not write: the
// writer's Write fails with err.
func (c *memConn) releaseFailed(err error) {
	s := c.down
	s.mu.Lock()
	s.lent = false
	s.failed = err
	s.mu.Unlock()
	signal(s.writable)
}

// deadline is one deadline of a memConn. Waiters take wait's channel
// before checking expired, then wait on it: it is closed when the
// deadline passes and whenever it is set, so that they look again.
type deadline struct {
	mu    sync.Mutex
	t     time.Time
	timer *time.Timer
	ch    chan struct{}
}

func (d *deadline) init() { d.ch = make(chan struct{}) }

func (d *deadline) wait() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.ch
}

// get is the deadline; zero means none.
func (d *deadline) get() time.Time {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.t
}

// zero reports whether no deadline is set.
func (d *deadline) zero() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.t.IsZero()
}

func (d *deadline) expired() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return !d.t.IsZero() && !time.Now().Before(d.t)
}

func (d *deadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.timer != nil {
		d.timer.Stop()
		d.timer = nil
	}
	d.t = t
	close(d.ch)
	d.ch = make(chan struct{})
	if dur := time.Until(t); !t.IsZero() && dur > 0 {
		ch := d.ch
		d.timer = time.AfterFunc(dur, func() {
			d.mu.Lock()
			defer d.mu.Unlock()
			if d.ch == ch {
				close(ch)
				d.ch = make(chan struct{})
			}
		})
	}
}
