//go:build !linux

package faultproxy

import (
	"errors"
	"net"
)

// spliceSupported: without splice(2) every byte crosses user space.
const spliceSupported = false

// splicer is Linux-only; elsewhere newSplicer fails and the pumps copy.
type splicer struct{ size, n int }

func newSplicer(src, dst *net.TCPConn) (*splicer, error) { return nil, errors.ErrUnsupported }

func (s *splicer) close()                     {}
func (s *splicer) fill(b []byte) (int, error) { return 0, errors.ErrUnsupported }
func (s *splicer) drain(max int) (int, error) { return 0, errors.ErrUnsupported }
func (s *splicer) pump() error                { return errors.ErrUnsupported }
