package frontend_test

import (
	"net"
	"strings"
	"testing"

	"github.com/certkit/certkit/iscsi"
	"github.com/certkit/certkit/targets/frontend/frontendtest"
)

// A fault proxy in the array's process hands connections over in memory:
// such a connection logs in and carries commands like an accepted one.
func TestServeConnServesAHandedOverConnection(t *testing.T) {
	s := start(t, nil)
	host, array := net.Pipe()
	t.Cleanup(func() { host.Close() })
	if err := s.ServeConn(0, array); err != nil {
		t.Fatal(err)
	}
	c := &frontendtest.Conn{C: host, Timeout: ioTimeout, MaxRecv: iscsi.DefaultMaxRecvDataSegmentLength}
	resp, _, err := c.Login(isid(1), 0, 1, normalKeys())
	if err != nil {
		t.Fatal(err)
	}
	if st := frontendtest.LoginStatus(resp); st != 0 {
		t.Fatalf("login status 0x%04x", st)
	}
	ping(t, c)
	r, err := c.Command(0, frontendtest.Read10(0, 1), 512, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.CheckGood(); err != nil {
		t.Fatal(err)
	}
}

func TestServeConnRefusesWhatItCannotServe(t *testing.T) {
	s := start(t, nil)
	for _, tc := range []struct {
		name   string
		portal int
		close  bool
		want   string
	}{
		{"no such portal", 1, false, "no portal 1 (have 1)"},
		{"server closed", 0, true, "server closed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.close {
				s.Close()
			}
			host, array := net.Pipe()
			defer host.Close()
			err := s.ServeConn(tc.portal, array)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("ServeConn = %v, want an error saying %q", err, tc.want)
			}
			// The handed-over end was closed: the host sees EOF at once.
			if _, err := host.Read(make([]byte, 1)); err == nil {
				t.Fatal("the refused connection is still open")
			}
		})
	}
}
