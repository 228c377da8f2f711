package faultproxy

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"time"
)

// memPipe returns the two ends of an in-memory, full-duplex stream
// connection, the proxy's and the array's (see Options.Serve). As with
// net.Pipe, a Write returns once the other end has read all of it, so no
// byte is copied twice; unlike net.Pipe, either end can half-close
// (CloseWrite), and the proxy reads the array's writes in place (borrow)
// instead of copying them. arrayLocal and arrayRemote are the addresses the
// array's end reports: where the host connected, and the host.
func memPipe(arrayLocal, arrayRemote net.Addr) (proxyEnd, arrayEnd *memConn) {
	up, down := newMemStream(), newMemStream() // host to array, array to host
	proxyEnd = &memConn{in: down, out: up, local: arrayRemote, remote: memAddr("array in process"), closed: make(chan struct{})}
	arrayEnd = &memConn{in: up, out: down, local: arrayLocal, remote: arrayRemote, closed: make(chan struct{})}
	proxyEnd.rd.init()
	proxyEnd.wd.init()
	arrayEnd.rd.init()
	arrayEnd.wd.init()
	return proxyEnd, arrayEnd
}

// memAddr is the address of the array's side of an in-memory connection.
type memAddr string

func (a memAddr) Network() string { return "faultproxy" }
func (a memAddr) String() string  { return string(a) }

// errWriteAfterCloseWrite is a Write after CloseWrite.
var errWriteAfterCloseWrite = errors.New("faultproxy: write after CloseWrite on an in-memory connection")

// memStream is one direction of a memPipe: the writer offers its slice
// and waits until the reader has taken all of it.
type memStream struct {
	mu   sync.Mutex
	buf  []byte // the unread rest of the Write in progress
	lent bool   // buf is borrowed: the writer waits, whatever its deadline
	eof  bool   // the writing end half-closed or closed: EOF once buf is read
	gone bool   // the reading end closed: writes fail

	readable chan struct{} // cap 1: wakes the reader to look again
	writable chan struct{} // cap 1: wakes the writer to look again
}

func newMemStream() *memStream {
	return &memStream{readable: make(chan struct{}, 1), writable: make(chan struct{}, 1)}
}

// memConn is one end of a memPipe. It is a net.Conn; deadlines behave as
// on a TCP connection, except that a Write whose bytes the proxy is
// forwarding (borrowed) finishes that forwarding before it returns.
type memConn struct {
	in, out       *memStream // what this end reads, what it writes
	local, remote net.Addr
	rd, wd        deadline
	rdMu, wrMu    sync.Mutex // one Read and one Write at a time
	closeOnce     sync.Once
	closed        chan struct{}
}

func (c *memConn) isClosed() bool {
	select {
	case <-c.closed:
		return true
	default:
		return false
	}
}

func (c *memConn) Read(b []byte) (int, error) {
	c.rdMu.Lock()
	defer c.rdMu.Unlock()
	return c.read(b)
}

// borrow returns up to max unread bytes of the other end's Write in
// progress, in place, waiting for one like Read; the writer waits until
// release. Only the proxy borrows, from its own end, and it is that end's
// only reader.
func (c *memConn) borrow(max int) ([]byte, error) {
	s := c.in
	for {
		dl := c.rd.wait()
		s.mu.Lock()
		switch {
		case c.isClosed():
			s.mu.Unlock()
			return nil, net.ErrClosed
		case c.rd.expired():
			s.mu.Unlock()
			return nil, os.ErrDeadlineExceeded
		case len(s.buf) > 0:
			s.lent = true
			b := s.buf[:min(len(s.buf), max)]
			s.mu.Unlock()
			return b, nil
		case s.eof:
			s.mu.Unlock()
			return nil, io.EOF
		}
		s.mu.Unlock()
		select {
		case <-s.readable:
		case <-dl:
		case <-c.closed:
		}
	}
}

// release ends a borrow that took n bytes.
func (c *memConn) release(n int) {
	s := c.in
	s.mu.Lock()
	s.buf = s.buf[n:]
	s.lent = false
	s.mu.Unlock()
	signal(s.writable)
}

func (c *memConn) read(b []byte) (int, error) {
	s := c.in
	for {
		dl := c.rd.wait()
		s.mu.Lock()
		switch {
		case c.isClosed():
			s.mu.Unlock()
			return 0, net.ErrClosed
		case c.rd.expired():
			s.mu.Unlock()
			return 0, os.ErrDeadlineExceeded
		case len(b) == 0:
			s.mu.Unlock()
			return 0, nil
		case len(s.buf) > 0:
			n := copy(b, s.buf)
			s.buf = s.buf[n:]
			empty := len(s.buf) == 0
			s.mu.Unlock()
			if empty {
				signal(s.writable)
			}
			return n, nil
		case s.eof:
			s.mu.Unlock()
			return 0, io.EOF
		}
		s.mu.Unlock()
		select {
		case <-s.readable:
		case <-dl:
		case <-c.closed:
		}
	}
}

func (c *memConn) Write(b []byte) (int, error) {
	c.wrMu.Lock()
	defer c.wrMu.Unlock()
	s := c.out
	s.mu.Lock()
	var err error
	switch {
	case c.isClosed():
		err = net.ErrClosed
	case s.eof:
		err = errWriteAfterCloseWrite
	case s.gone:
		err = io.ErrClosedPipe
	case c.wd.expired():
		err = os.ErrDeadlineExceeded
	}
	if err != nil || len(b) == 0 {
		s.mu.Unlock()
		return 0, err
	}
	s.buf = b
	s.mu.Unlock()
	signal(s.readable)
	for {
		dl := c.wd.wait()
		s.mu.Lock()
		left, lent := len(s.buf), s.lent
		if !lent {
			switch {
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
			// The proxy is forwarding these bytes: they must stay put.
			<-s.writable
			continue
		}
		select {
		case <-s.writable:
		case <-dl:
		case <-c.closed:
		}
	}
}

// CloseWrite ends what this end sends: the other end reads EOF after it.
func (c *memConn) CloseWrite() error {
	c.wrMu.Lock()
	defer c.wrMu.Unlock()
	if c.isClosed() {
		return net.ErrClosed
	}
	s := c.out
	s.mu.Lock()
	s.eof = true
	s.mu.Unlock()
	signal(s.readable)
	return nil
}

// Close ends both directions: the other end reads EOF and its writes fail.
func (c *memConn) Close() error {
	c.closeOnce.Do(func() {
		close(c.closed)
		c.out.mu.Lock()
		c.out.eof = true
		c.out.mu.Unlock()
		signal(c.out.readable)
		c.in.mu.Lock()
		c.in.gone = true
		c.in.mu.Unlock()
		signal(c.in.writable)
	})
	return nil
}

func (c *memConn) LocalAddr() net.Addr  { return c.local }
func (c *memConn) RemoteAddr() net.Addr { return c.remote }

func (c *memConn) SetDeadline(t time.Time) error {
	c.rd.set(t)
	c.wd.set(t)
	return nil
}

func (c *memConn) SetReadDeadline(t time.Time) error  { c.rd.set(t); return nil }
func (c *memConn) SetWriteDeadline(t time.Time) error { c.wd.set(t); return nil }

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
