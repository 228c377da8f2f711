//go:build linux

package faultproxy

import (
	"fmt"
	"net"
	"syscall"
)

// spliceSupported: this platform moves bytes socket to socket with splice(2).
const spliceSupported = true

// splice(2) flags (linux/splice.h; the syscall package does not name them).
const (
	spliceMove     = 0x1
	spliceNonblock = 0x2
)

// pipeSize is the capacity asked for the splicer's pipe: a 256 KiB data
// segment fits whole. The kernel may grant less (fs.pipe-max-size,
// per-user pipe limits); any size works, a smaller one costs syscalls.
const pipeSize = 1 << 20

// splicer moves one direction's bytes from socket to socket through a pipe
// of its own with splice(2), so data segments cross the proxy without being
// copied to user space and back. (*net.TCPConn).ReadFrom splices too, but
// it discards its pipe with whatever is in it when a write fails, and a
// blackhole's deadline is such a failure; the splicer keeps those bytes and
// writes them when the direction forwards again. It is used by one pump
// goroutine only.
type splicer struct {
	src, dst syscall.RawConn
	r, w     int // the pipe's ends
	size     int // its capacity
	n        int // bytes in it

	// Arguments and results of the callbacks below, which are made once
	// (method values) so that a splice allocates nothing.
	max           int
	got           int
	serr          error
	drainF, pumpF func(uintptr) bool
}

func newSplicer(src, dst *net.TCPConn) (*splicer, error) {
	s := &splicer{}
	var err error
	if s.src, err = src.SyscallConn(); err != nil {
		return nil, err
	}
	if s.dst, err = dst.SyscallConn(); err != nil {
		return nil, err
	}
	var p [2]int
	if err := syscall.Pipe2(p[:], syscall.O_CLOEXEC|syscall.O_NONBLOCK); err != nil {
		return nil, fmt.Errorf("pipe for splice: %w", err)
	}
	s.r, s.w = p[0], p[1]
	size, err := fcntl(s.w, syscall.F_SETPIPE_SZ, pipeSize)
	if err != nil {
		// Keep the default size (64 KiB on Linux).
		if size, err = fcntl(s.w, syscall.F_GETPIPE_SZ, 0); err != nil {
			s.close()
			return nil, fmt.Errorf("pipe for splice: size: %w", err)
		}
	}
	s.size = size
	s.drainF, s.pumpF = s.drainOnce, s.pumpOnce
	return s, nil
}

func fcntl(fd, cmd, arg int) (int, error) {
	r, _, e := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), uintptr(cmd), uintptr(arg))
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

// close releases the pipe and whatever is still in it.
func (s *splicer) close() {
	if s == nil {
		return
	}
	syscall.Close(s.r)
	syscall.Close(s.w)
}

// fill copies as much of b into the pipe as fits now.
func (s *splicer) fill(b []byte) (int, error) {
	for {
		n, err := syscall.Write(s.w, b)
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
			return 0, nil
		case err != nil:
			return 0, fmt.Errorf("write to splice pipe: %w", err)
		}
		s.n += n
		return n, nil
	}
}

// drain moves up to max bytes (at most the pipe's free space) from the
// source socket into the pipe, waiting until some are there; 0 and no
// error mean the source has ended. It fails with the source's deadline.
func (s *splicer) drain(max int) (int, error) {
	s.max, s.got, s.serr = min(max, s.size-s.n), 0, nil
	if err := s.src.Read(s.drainF); err != nil {
		return 0, err
	}
	s.n += s.got
	return s.got, s.serr
}

func (s *splicer) drainOnce(fd uintptr) bool {
	for {
		n, err := syscall.Splice(int(fd), nil, s.w, nil, s.max, spliceMove|spliceNonblock)
		switch err {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false // wait until the socket is readable
		}
		s.got, s.serr = int(n), err
		return true
	}
}

// pump moves what is in the pipe to the destination socket, waiting for
// room; it returns once the pipe is empty, or with the destination's
// deadline (what it had not moved stays in the pipe).
func (s *splicer) pump() error {
	if s.n == 0 {
		return nil
	}
	s.serr = nil
	if err := s.dst.Write(s.pumpF); err != nil {
		return err
	}
	return s.serr
}

func (s *splicer) pumpOnce(fd uintptr) bool {
	for s.n > 0 {
		n, err := syscall.Splice(s.r, nil, int(fd), nil, s.n, spliceMove|spliceNonblock)
		switch {
		case n > 0:
			s.n -= int(n)
		case err == syscall.EINTR:
		case err == syscall.EAGAIN:
			return false // wait until the socket takes more
		case err != nil:
			s.serr = err
			return true
		default:
			s.serr = fmt.Errorf("splice pipe holds %d bytes but gave none", s.n)
			return true
		}
	}
	return true
}
