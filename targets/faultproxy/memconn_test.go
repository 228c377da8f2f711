package faultproxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

func pipeForTest(t *testing.T) (proxyEnd, arrayEnd *memConn) {
	t.Helper()
	a, b := memPipe(memAddr("proxy"), memAddr("host"))
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// result is what a Read or Write that ran in a goroutine returned.
type result struct {
	n   int
	err error
}

func async(f func() (int, error)) <-chan result {
	c := make(chan result, 1)
	go func() { n, err := f(); c <- result{n, err} }()
	return c
}

func await(t *testing.T, c <-chan result, what string) result {
	t.Helper()
	select {
	case r := <-c:
		return r
	case <-time.After(settle):
		t.Fatalf("%s still blocked after %v", what, settle)
		return result{}
	}
}

func blocked(t *testing.T, c <-chan result, what string) {
	t.Helper()
	select {
	case r := <-c:
		t.Fatalf("%s returned %d, %v; want it blocked", what, r.n, r.err)
	case <-time.After(quiet):
	}
}

func TestMemConnCarriesBothWaysAndAWriteReturnsOnceRead(t *testing.T) {
	p, a := pipeForTest(t)
	msg := random(t, 100<<10)
	w := async(func() (int, error) { return a.Write(msg) })
	blocked(t, w, "array's write with nobody reading")
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(p, got[:1000]); err != nil {
		t.Fatal(err)
	}
	blocked(t, w, "array's write read in part")
	if _, err := io.ReadFull(p, got[1000:]); err != nil {
		t.Fatal(err)
	}
	if r := await(t, w, "array's write"); r.n != len(msg) || r.err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("write returned %d, %v; data intact %v", r.n, r.err, bytes.Equal(got, msg))
	}
	w = async(func() (int, error) { return p.Write([]byte("command")) })
	got = make([]byte, 7)
	if _, err := io.ReadFull(a, got); err != nil || string(got) != "command" {
		t.Fatalf("array read %q, %v", got, err)
	}
	await(t, w, "proxy's write")
}

func TestMemConnBorrowLendsInPlaceUntilRelease(t *testing.T) {
	p, a := pipeForTest(t)
	msg := []byte("data-in")
	w := async(func() (int, error) { return a.Write(msg) })
	b, err := p.borrow(4)
	if err != nil || string(b) != "data" || &b[0] != &msg[0] {
		t.Fatalf("borrow: %q, %v; want the first 4 bytes of the writer's own slice", b, err)
	}
	// The writer waits for the loan, whatever its deadline (which, once
	// the loan ends, applies again: clear it first).
	a.SetWriteDeadline(aLongTimeAgo)
	blocked(t, w, "write while lent")
	a.SetWriteDeadline(time.Time{})
	p.release(4)
	b, err = p.borrow(100)
	if err != nil || string(b) != "-in" {
		t.Fatalf("second borrow: %q, %v", b, err)
	}
	p.release(len(b))
	if r := await(t, w, "write"); r.n != len(msg) || r.err != nil {
		t.Fatalf("write returned %d, %v", r.n, r.err)
	}
}

func TestMemConnDeadlinesActLikeTCPs(t *testing.T) {
	p, a := pipeForTest(t)
	r := async(func() (int, error) { return a.Read(make([]byte, 10)) })
	blocked(t, r, "read with no deadline")
	a.SetReadDeadline(aLongTimeAgo) // what Inject does: a blocked read returns at once
	if res := await(t, r, "read past its deadline"); !errors.Is(res.err, os.ErrDeadlineExceeded) {
		t.Fatalf("read: %v, want os.ErrDeadlineExceeded", res.err)
	}
	// Data waiting does not beat an expired deadline, and is not lost.
	w := async(func() (int, error) { return p.Write([]byte("x")) })
	if _, err := a.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read with data waiting and an expired deadline: %v", err)
	}
	a.SetReadDeadline(time.Time{})
	if n, err := a.Read(make([]byte, 1)); n != 1 || err != nil {
		t.Fatalf("read after clearing the deadline: %d, %v", n, err)
	}
	await(t, w, "write")

	a.SetReadDeadline(time.Now().Add(quiet / 2))
	start := time.Now()
	if _, err := a.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) || time.Since(start) < quiet/2 {
		t.Fatalf("read with a deadline %v ahead: %v after %v", quiet/2, err, time.Since(start))
	}

	// An array's write read in part times out with what was read counted.
	a.SetDeadline(time.Time{})
	w = async(func() (int, error) { return a.Write([]byte("12345")) })
	if _, err := io.ReadFull(p, make([]byte, 2)); err != nil {
		t.Fatal(err)
	}
	a.SetWriteDeadline(aLongTimeAgo)
	if res := await(t, w, "write past its deadline"); res.n != 2 || !errors.Is(res.err, os.ErrDeadlineExceeded) {
		t.Fatalf("write: %d, %v; want 2 bytes and os.ErrDeadlineExceeded", res.n, res.err)
	}
}

// Host to array, the proxy's writes are buffered like a socket's, up to
// upStreamMax of pump buffers; past it they wait, and time out.
func TestMemConnBuffersTheHostsBytesUpToABound(t *testing.T) {
	p, a := pipeForTest(t)
	bulk := random(t, upStreamMax)
	// Small writes count whole pump buffers: memory, not bytes, is bounded.
	for range upStreamMax / bufSize {
		if n, err := p.Write([]byte("cmd")); n != 3 || err != nil {
			t.Fatalf("small write: %d, %v", n, err)
		}
	}
	p.SetWriteDeadline(time.Now().Add(quiet))
	if _, err := p.Write([]byte("cmd")); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("small write past the bound: %v; want a timeout", err)
	}
	p.SetWriteDeadline(time.Time{})
	if _, err := io.ReadFull(a, make([]byte, 3*upStreamMax/bufSize)); err != nil {
		t.Fatal(err)
	}
	if n, err := p.Write(bulk); n != len(bulk) || err != nil {
		t.Fatalf("write of %d bytes nobody reads yet: %d, %v", len(bulk), n, err)
	}
	p.SetWriteDeadline(time.Now().Add(quiet))
	if n, err := p.Write([]byte("x")); n != 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("write past the bound: %d, %v; want a timeout", n, err)
	}
	p.SetWriteDeadline(time.Time{})
	w := async(func() (int, error) { return p.Write([]byte("tail")) })
	blocked(t, w, "write past the bound")
	got := make([]byte, len(bulk)+4)
	if _, err := io.ReadFull(a, got); err != nil || !bytes.Equal(got[:len(bulk)], bulk) || string(got[len(bulk):]) != "tail" {
		t.Fatalf("read %v: stream changed", err)
	}
	await(t, w, "write once the array reads")
}

func TestMemConnHalfCloseAndClose(t *testing.T) {
	p, a := pipeForTest(t)
	w := async(func() (int, error) { return p.Write([]byte("bye")) })
	if b, err := io.ReadAll(io.LimitReader(a, 3)); err != nil || string(b) != "bye" {
		t.Fatalf("read %q, %v", b, err)
	}
	await(t, w, "write")
	if err := p.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if n, err := a.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("read after the other end's CloseWrite: %d, %v; want EOF", n, err)
	}
	if _, err := p.Write([]byte("more")); err == nil {
		t.Fatal("write after CloseWrite succeeded")
	}
	// The other direction still flows.
	w = async(func() (int, error) { return a.Write([]byte("last words")) })
	if b, err := io.ReadAll(io.LimitReader(p, 10)); err != nil || string(b) != "last words" {
		t.Fatalf("read %q, %v", b, err)
	}
	await(t, w, "write")

	// Close wakes its end's blocked read and write; the other end reads
	// EOF and cannot write.
	p, a = pipeForTest(t)
	w = async(func() (int, error) { return a.Write([]byte("never read")) })
	r := async(func() (int, error) { return a.Read(make([]byte, 1)) })
	blocked(t, w, "write nobody reads")
	a.Close()
	if res := await(t, w, "write when its end closes"); !errors.Is(res.err, net.ErrClosed) {
		t.Fatalf("write: %v, want net.ErrClosed", res.err)
	}
	if res := await(t, r, "read when its end closes"); !errors.Is(res.err, net.ErrClosed) {
		t.Fatalf("read: %v, want net.ErrClosed", res.err)
	}
	if n, err := p.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("read from the other end of a closed connection: %d, %v; want EOF", n, err)
	}
	if _, err := p.Write([]byte("x")); !errors.Is(err, io.ErrClosedPipe) {
		t.Fatalf("write to a closed connection: %v, want io.ErrClosedPipe", err)
	}
}

// writeUntilError writes 1 MiB at a time to c, in a goroutine, until a
// Write fails, and reports that Write's error.
func writeUntilError(c net.Conn) <-chan error {
	done := make(chan error, 1)
	go func() {
		b := make([]byte, 1<<20)
		for {
			if _, err := c.Write(b); err != nil {
				done <- err
				return
			}
		}
	}()
	return done
}

// An array's Write blocked because the host does not read returns once the
// array closes its end (net.ErrClosed) or its write deadline passes
// (os.ErrDeadlineExceeded), as on a TCP connection, so that the array can
// tear its session down: whether or not the array had set a (distant)
// write deadline before it wrote.
func TestAnArraysWriteTheHostDoesNotReadEndsOnCloseOrDeadline(t *testing.T) {
	for _, tc := range []struct {
		name   string
		before bool // a distant write deadline is set before the Writes
		close  bool // Close; else set a write deadline quiet ahead
	}{
		{"close", false, true},
		{"deadline", false, false},
		{"close with a deadline set", true, true},
		{"deadline brought forward", true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			eachMode(t, func(t *testing.T, mode string) {
				u := startPortal(t)
				p := listenTo(t, mode, u, Options{})
				_, array := connect(t, p, u) // the host never reads
				if tc.before {
					array.SetWriteDeadline(time.Now().Add(time.Hour))
				}
				done := writeUntilError(array)
				select { // the Writes fill the host's socket and block
				case err := <-done:
					t.Fatalf("a Write the host does not read failed early: %v", err)
				case <-time.After(quiet):
				}
				want := net.ErrClosed
				if tc.close {
					array.Close()
				} else {
					want = os.ErrDeadlineExceeded
					array.SetWriteDeadline(time.Now().Add(quiet))
				}
				select {
				case err := <-done:
					if !errors.Is(err, want) {
						t.Fatalf("the blocked Write returned %v; want %v", err, want)
					}
				case <-time.After(settle):
					t.Fatalf("the array's Write is still blocked %v after %s", settle, tc.name)
				}
			})
		})
	}
}

// A write deadline the array sets before it writes (as during login) ends
// a Write the host does not read, with os.ErrDeadlineExceeded.
func TestAnArraysWriteDeadlineSetBeforeTheWriteIsHonoured(t *testing.T) {
	eachMode(t, func(t *testing.T, mode string) {
		u := startPortal(t)
		p := listenTo(t, mode, u, Options{})
		_, array := connect(t, p, u) // the host never reads
		array.SetWriteDeadline(time.Now().Add(2 * quiet))
		select {
		case err := <-writeUntilError(array):
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("the Write past its deadline returned %v; want %v", err, os.ErrDeadlineExceeded)
			}
		case <-time.After(settle):
			t.Fatalf("the array's Write is still blocked %v after its deadline", settle)
		}
	})
}
