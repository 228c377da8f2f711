package frontend_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math/rand"
	"net"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/certkit/certkit/iscsi"
	"github.com/certkit/certkit/iscsi/initiator"
	"github.com/certkit/certkit/targets/frontend"
	"github.com/certkit/certkit/targets/frontend/frontendtest"
	"github.com/gostor/gotgt/pkg/api"
)

// Timings of these tests, named so none hides in the code.
const (
	ioTimeout    = 5 * time.Second        // any single PDU exchange
	loginTimeout = 2 * time.Second        // the server's LoginTimeout
	pollInterval = 5 * time.Millisecond   // polling for goroutines to end
	quietPeriod  = 100 * time.Millisecond // "nothing arrives" checks
	stallPeriod  = time.Second            // a command not sent by then is stalled
)

const (
	targetIQN    = "iqn.2024-01.io.certkit:frontend-test"
	initiatorIQN = "iqn.2024-01.io.certkit:initiator"
)

// fakeSCSI stands in for gotgt: a 1 MiB disk with 512-byte blocks that
// answers TEST UNIT READY, INQUIRY, READ(10) and WRITE(10) the way gotgt
// reports results (InSDBBuffer.Resid = bytes produced, TL = bytes asked).
type fakeSCSI struct {
	mu       sync.Mutex
	disk     []byte
	executed []api.SCSICommand // as each command arrived
	events   []string
	resets   []string
	gate     chan struct{} // when set, Execute waits for it to close
	started  chan uint64   // when set, receives each command's tag on entry
}

func newFake() *fakeSCSI { return &fakeSCSI{disk: make([]byte, 1<<20)} }

func (f *fakeSCSI) AddNexus(n *api.ITNexus) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.events = append(f.events, "add "+n.ID.String())
	return nil
}

func (f *fakeSCSI) RemoveNexus(n *api.ITNexus) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.events = append(f.events, "remove "+n.ID.String())
}

func (f *fakeSCSI) Execute(cmd *api.SCSICommand) {
	f.mu.Lock()
	f.executed = append(f.executed, *cmd)
	gate, started := f.gate, f.started
	f.mu.Unlock()
	if started != nil {
		started <- cmd.Tag
	}
	if gate != nil {
		<-gate
	}
	cdb := cmd.SCB
	switch cdb[0] {
	case 0x00:
	case 0x12:
		d := make([]byte, 36)
		d[4] = 31
		copy(d[8:], "CERTKIT FAKE")
		cmd.InSDBBuffer.Resid = uint32(copy(cmd.InSDBBuffer.Buffer, d))
	case 0x28, 0x2a:
		lba := int(binary.BigEndian.Uint32(cdb[2:]))
		n := int(binary.BigEndian.Uint16(cdb[7:])) * 512
		f.mu.Lock()
		if cdb[0] == 0x28 {
			cmd.InSDBBuffer.Resid = uint32(copy(cmd.InSDBBuffer.Buffer, f.disk[lba*512:lba*512+n]))
		} else {
			copy(f.disk[lba*512:lba*512+n], cmd.OutSDBBuffer.Buffer)
		}
		f.mu.Unlock()
		cmd.TL = uint32(n)
	default:
		sense := make([]byte, 18)
		sense[0], sense[2], sense[7], sense[12] = 0x70, 0x05, 10, 0x20 // INVALID COMMAND OPERATION CODE
		cmd.Result = api.SAM_STAT_CHECK_CONDITION
		cmd.SenseBuffer = &api.SenseBuffer{Buffer: sense, Length: 18}
	}
}

// ResetLU and ResetTarget record resets (frontend.Resetter).
func (f *fakeSCSI) ResetLU(n *api.ITNexus, lun uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.resets = append(f.resets, fmt.Sprintf("LU %d by %s", lun, n.Tag))
}

func (f *fakeSCSI) ResetTarget(n *api.ITNexus) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.resets = append(f.resets, "target by "+n.Tag)
}

func (f *fakeSCSI) resetLog() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.resets)
}

func (f *fakeSCSI) tags() []uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []uint64
	for _, c := range f.executed {
		out = append(out, c.Tag)
	}
	return out
}

type testServer struct {
	*frontend.Server
	fake *fakeSCSI
}

func start(t *testing.T, mod func(*frontend.Config)) *testServer {
	t.Helper()
	fake := newFake()
	cfg := frontend.Config{
		TargetName:   targetIQN,
		Portals:      []frontend.Portal{{Listen: "127.0.0.1:0", TPGT: 1}},
		SCSI:         fake,
		LoginTimeout: loginTimeout,
		Logf:         t.Logf,
	}
	if mod != nil {
		mod(&cfg)
	}
	s, err := frontend.Listen(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return &testServer{s, fake}
}

func (s *testServer) addr() string { return s.Addrs()[0] }

func isid(b byte) [6]byte { return [6]byte{0x80, 0, 0, 0, 0, b} }

func normalKeys(extra ...iscsi.KV) iscsi.Text {
	return append(iscsi.Text{{Key: "InitiatorName", Value: initiatorIQN}, {Key: "TargetName", Value: targetIQN}, {Key: "SessionType", Value: "Normal"}}, extra...)
}

func login(t *testing.T, addr string, id byte, extra ...iscsi.KV) *frontendtest.Conn {
	t.Helper()
	c, err := frontendtest.Normal(addr, initiatorIQN, targetIQN, isid(id), ioTimeout, extra...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func recv(t *testing.T, c *frontendtest.Conn) *iscsi.PDU {
	t.Helper()
	p, err := c.Recv()
	if err != nil {
		t.Fatalf("waiting for a PDU: %v", err)
	}
	return p
}

func send(t *testing.T, c *frontendtest.Conn, p *iscsi.PDU) {
	t.Helper()
	if err := c.Send(p); err != nil {
		t.Fatal(err)
	}
}

func nopOut(c *frontendtest.Conn, immediate bool) *iscsi.PDU {
	p := iscsi.New(iscsi.OpNOPOut)
	p.SetFlags(iscsi.FlagFinal)
	p.SetImmediate(immediate)
	p.SetITT(c.NextITT())
	p.SetTTT(iscsi.ReservedTag)
	p.SetCmdSN(c.CmdSN)
	if !immediate {
		c.CmdSN++
	}
	p.SetExpStatSN(c.ExpStatSN)
	return p
}

func scsiCmd(c *frontendtest.Conn, cdb []byte, flags byte, edtl uint32) *iscsi.PDU {
	p := iscsi.New(iscsi.OpSCSICommand)
	p.SetFlags(flags | iscsi.AttrSimple)
	p.SetITT(c.NextITT())
	p.SetExpectedDataLength(edtl)
	p.SetCmdSN(c.CmdSN)
	c.CmdSN++
	p.SetExpStatSN(c.ExpStatSN)
	copy(p.CDB(), cdb)
	return p
}

var tur = []byte{0, 0, 0, 0, 0, 0}

// ping proves the target has handled everything sent before it: an
// immediate NOP-Out's NOP-In must be the next PDU to arrive.
func ping(t *testing.T, c *frontendtest.Conn) {
	t.Helper()
	p := nopOut(c, true)
	send(t, c, p)
	r := recv(t, c)
	if r.Opcode() != iscsi.OpNOPIn || r.ITT() != p.ITT() {
		t.Fatalf("want the NOP-In for ITT 0x%x, got %s", p.ITT(), r)
	}
}

func TestLoginNegotiatesOperationalKeys(t *testing.T) {
	s := start(t, nil)
	c, err := frontendtest.Dial(s.addr(), ioTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.CmdSN = 0xfffffffe // the window must survive serial-number wrap
	resp, kv, err := c.Login(isid(1), 0, 1, normalKeys(
		iscsi.KV{Key: "HeaderDigest", Value: "CRC32C,None"},
		iscsi.KV{Key: "DataDigest", Value: "CRC32C"},
		iscsi.KV{Key: "ImmediateData", Value: "Yes"},
		iscsi.KV{Key: "InitialR2T", Value: "No"},
		iscsi.KV{Key: "MaxRecvDataSegmentLength", Value: "4096"},
		iscsi.KV{Key: "FirstBurstLength", Value: "1048576"},
		iscsi.KV{Key: "MaxBurstLength", Value: "131072"},
		iscsi.KV{Key: "MaxOutstandingR2T", Value: "4"},
		iscsi.KV{Key: "DefaultTime2Wait", Value: "2"},
		iscsi.KV{Key: "DefaultTime2Retain", Value: "20"},
		iscsi.KV{Key: "ErrorRecoveryLevel", Value: "2"},
		iscsi.KV{Key: "MaxConnections", Value: "4"},
		iscsi.KV{Key: "DataPDUInOrder", Value: "No"},
		iscsi.KV{Key: "DataSequenceInOrder", Value: "Yes"},
		iscsi.KV{Key: "X-com.example.Frob", Value: "1"},
	))
	if err != nil {
		t.Fatal(err)
	}
	if st := frontendtest.LoginStatus(resp); st != 0 {
		t.Fatalf("login status 0x%04x, want success", st)
	}
	if resp.Flags()&iscsi.FlagTransit == 0 || resp.Flags()&3 != 3 {
		t.Errorf("login response flags 0x%02x: want T set and NSG full feature", resp.Flags())
	}
	if tsih := binary.BigEndian.Uint16(resp.BHS[14:]); tsih == 0 {
		t.Error("final login response carries TSIH 0")
	}
	want := map[string]string{
		"TargetPortalGroupTag":     "1",
		"HeaderDigest":             "CRC32C",
		"DataDigest":               "CRC32C",
		"ImmediateData":            "Yes",
		"InitialR2T":               "No",
		"MaxRecvDataSegmentLength": "262144", // the target's own declaration
		"FirstBurstLength":         "65536",
		"MaxBurstLength":           "131072",
		"MaxOutstandingR2T":        "4",
		"DefaultTime2Wait":         "2",
		"DefaultTime2Retain":       "0",
		"ErrorRecoveryLevel":       "0",
		"MaxConnections":           "1",
		"DataPDUInOrder":           "Yes",
		"DataSequenceInOrder":      "Yes",
		"X-com.example.Frob":       "NotUnderstood",
	}
	for k, v := range want {
		if got, ok := kv.Get(k); !ok || got != v {
			t.Errorf("%s = %q (present %v), want %q", k, got, ok, v)
		}
	}
	if got := resp.MaxCmdSN() - resp.ExpCmdSN() + 1; got != 128 {
		t.Errorf("CmdSN window %d, want the default queue depth 128", got)
	}
	if resp.ExpCmdSN() != 0xfffffffe {
		t.Errorf("ExpCmdSN %d, want the login's CmdSN", resp.ExpCmdSN())
	}
	// Both digests are now on: a ping round-trips with them.
	p := nopOut(c, false)
	p.Data = []byte("ping data")
	send(t, c, p)
	r := recv(t, c)
	if r.Opcode() != iscsi.OpNOPIn || !bytes.Equal(r.Data, p.Data) {
		t.Fatalf("want NOP-In echoing the ping data, got %s %q", r, r.Data)
	}
	if r.ExpCmdSN() != 0xffffffff {
		t.Errorf("after a non-immediate NOP-Out with CmdSN 0xfffffffe, ExpCmdSN is %d", r.ExpCmdSN())
	}
}

func TestFirstBurstNeverExceedsMaxBurst(t *testing.T) {
	s := start(t, nil)
	c, err := frontendtest.Dial(s.addr(), ioTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, kv, err := c.Login(isid(1), 0, 1, normalKeys(
		iscsi.KV{Key: "FirstBurstLength", Value: "16384"},
		iscsi.KV{Key: "MaxBurstLength", Value: "4096"},
	))
	if err != nil {
		t.Fatal(err)
	}
	fb, _ := kv.Get("FirstBurstLength")
	mb, _ := kv.Get("MaxBurstLength")
	if fb != "4096" || mb != "4096" {
		t.Errorf("FirstBurstLength=%s MaxBurstLength=%s, want 4096 each", fb, mb)
	}
}

func TestLoginThroughSecurityStage(t *testing.T) {
	s := start(t, nil)
	c, err := frontendtest.Dial(s.addr(), ioTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	req := frontendtest.LoginRequest(isid(2), 0, 0, 1, true, normalKeys(iscsi.KV{Key: "AuthMethod", Value: "CHAP,None"}))
	send(t, c, req)
	r := recv(t, c)
	kv, _ := iscsi.ParseText(r.Data)
	if st := frontendtest.LoginStatus(r); st != 0 {
		t.Fatalf("security stage: status 0x%04x", st)
	}
	if v, _ := kv.Get("AuthMethod"); v != "None" {
		t.Errorf("AuthMethod answered %q, want None", v)
	}
	if v, _ := kv.Get("TargetPortalGroupTag"); v != "1" {
		t.Errorf("first login response lacks TargetPortalGroupTag=1: %v", kv)
	}
	if r.Flags() != iscsi.FlagTransit|0<<2|1 {
		t.Errorf("security stage response flags 0x%02x, want T, CSG 0, NSG 1", r.Flags())
	}
	resp, _, err := c.Login(isid(2), 0, 1, iscsi.Text{{Key: "ImmediateData", Value: "No"}})
	if err != nil || frontendtest.LoginStatus(resp) != 0 {
		t.Fatalf("operational stage: %v %v", err, resp)
	}
	res, err := c.Command(0, tur, 0, nil)
	if err != nil || res.CheckGood() != nil {
		t.Fatalf("TEST UNIT READY after login: %v %v", err, res)
	}
}

func TestLoginFailuresCarryStatus(t *testing.T) {
	s := start(t, nil)
	cases := []struct {
		name   string
		tsih   uint16
		keys   iscsi.Text
		mod    func(*iscsi.PDU)
		status uint16
	}{
		{"unknown target", 0, iscsi.Text{{Key: "InitiatorName", Value: initiatorIQN}, {Key: "TargetName", Value: "iqn.2024-01.io.certkit:nope"}}, nil, 0x0203},
		{"no target name", 0, iscsi.Text{{Key: "InitiatorName", Value: initiatorIQN}}, nil, 0x0207},
		{"no initiator name", 0, iscsi.Text{{Key: "TargetName", Value: targetIQN}}, nil, 0x0207},
		{"CHAP only", 0, normalKeys(iscsi.KV{Key: "AuthMethod", Value: "CHAP"}), func(p *iscsi.PDU) { p.SetFlags(iscsi.FlagTransit | 0<<2 | 1) }, 0x0201},
		{"bad session type", 0, iscsi.Text{{Key: "InitiatorName", Value: initiatorIQN}, {Key: "TargetName", Value: targetIQN}, {Key: "SessionType", Value: "Bogus"}}, nil, 0x0209},
		{"version too new", 0, normalKeys(), func(p *iscsi.PDU) { p.BHS[2], p.BHS[3] = 2, 1 }, 0x0205},
		{"unknown TSIH", 4242, normalKeys(), nil, 0x020a},
		{"T and C together", 0, normalKeys(), func(p *iscsi.PDU) { p.SetFlags(p.Flags() | iscsi.FlagContinue) }, 0x0200},
		{"text not key=value", 0, nil, func(p *iscsi.PDU) { p.Data = []byte("InitiatorName\x00") }, 0x0200},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := frontendtest.Dial(s.addr(), ioTimeout)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			req := frontendtest.LoginRequest(isid(3), tc.tsih, 1, 3, true, tc.keys)
			if tc.mod != nil {
				tc.mod(req)
			}
			send(t, c, req)
			r := recv(t, c)
			if r.Opcode() != iscsi.OpLoginResp {
				t.Fatalf("got %s, want a Login Response", r)
			}
			if st := frontendtest.LoginStatus(r); st != tc.status {
				t.Errorf("status 0x%04x, want 0x%04x", st, tc.status)
			}
			if err := c.WaitClosed(); err != nil {
				t.Errorf("after a failed login: %v", err)
			}
		})
	}
}

func TestDiscoveryListsEveryPortalAsAdvertised(t *testing.T) {
	s := start(t, func(c *frontend.Config) {
		c.Portals = []frontend.Portal{{Listen: "127.0.0.1:0", TPGT: 1}, {Listen: "127.0.0.1:0", TPGT: 1}, {Listen: "127.0.0.1:0", TPGT: 2}}
	})
	if err := s.Advertise(2, "127.0.0.1:3260"); err != nil { // e.g. a fault proxy
		t.Fatal(err)
	}
	c, err := frontendtest.Dial(s.Addrs()[1], ioTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	resp, _, err := c.Login(isid(4), 0, 1, iscsi.Text{{Key: "InitiatorName", Value: initiatorIQN}, {Key: "SessionType", Value: "Discovery"}})
	if err != nil || frontendtest.LoginStatus(resp) != 0 {
		t.Fatalf("discovery login: %v %v", err, resp)
	}
	if binary.BigEndian.Uint16(resp.BHS[14:]) == 0 {
		t.Error("discovery session got TSIH 0")
	}
	p := iscsi.New(iscsi.OpTextReq)
	p.SetFlags(iscsi.FlagFinal)
	p.SetITT(c.NextITT())
	p.SetTTT(iscsi.ReservedTag)
	p.SetCmdSN(c.CmdSN)
	c.CmdSN++
	p.Data = iscsi.Text{{Key: "SendTargets", Value: "All"}}.Encode()
	send(t, c, p)
	r := recv(t, c)
	if r.Opcode() != iscsi.OpTextResp || !r.Final() || r.TTT() != iscsi.ReservedTag {
		t.Fatalf("got %s, want a final Text Response", r)
	}
	kv, _ := iscsi.ParseText(r.Data)
	want := iscsi.Text{
		{Key: "TargetName", Value: targetIQN},
		{Key: "TargetAddress", Value: s.Addrs()[0] + ",1"},
		{Key: "TargetAddress", Value: s.Addrs()[1] + ",1"},
		{Key: "TargetAddress", Value: "127.0.0.1:3260,2"},
	}
	if !slices.Equal(kv, want) {
		t.Errorf("SendTargets=All answered\n%v\nwant\n%v", kv, want)
	}
	// SCSI commands have no place in a discovery session.
	cmd := scsiCmd(c, tur, iscsi.FlagFinal, 0)
	send(t, c, cmd)
	if r := recv(t, c); r.Opcode() != iscsi.OpReject || r.BHS[2] != 0x04 {
		t.Errorf("SCSI command in a discovery session: got %s reason 0x%02x, want Reject (protocol error)", r, r.BHS[2])
	}
}

// The gotgt bug this front end exists to avoid: a non-immediate NOP-Out
// takes a CmdSN, and the command after it must still be executed.
func TestNonImmediateNOPOutThenCommand(t *testing.T) {
	s := start(t, nil)
	c := login(t, s.addr(), 5)
	n := c.CmdSN
	send(t, c, nopOut(c, false)) // CmdSN n
	r := recv(t, c)
	if r.Opcode() != iscsi.OpNOPIn || r.ExpCmdSN() != n+1 {
		t.Fatalf("NOP-In for non-immediate NOP-Out CmdSN %d: %s ExpCmdSN %d, want %d", n, r, r.ExpCmdSN(), n+1)
	}
	if r.TTT() != iscsi.ReservedTag {
		t.Errorf("NOP-In answering a ping has TTT 0x%x, want 0xffffffff", r.TTT())
	}
	res, err := c.Command(0, tur, 0, nil) // CmdSN n+1
	if err != nil || res.CheckGood() != nil {
		t.Fatalf("command after non-immediate NOP-Out: %v %v", err, res)
	}
	// An immediate NOP-Out takes no CmdSN: ExpCmdSN stays.
	send(t, c, nopOut(c, true))
	if r := recv(t, c); r.ExpCmdSN() != n+2 {
		t.Errorf("after an immediate NOP-Out ExpCmdSN is %d, want %d", r.ExpCmdSN(), n+2)
	}
	res, err = c.Command(0, tur, 0, nil)
	if err != nil || res.CheckGood() != nil {
		t.Fatalf("command after immediate NOP-Out: %v %v", err, res)
	}
}

// ORDERED tasks execute one at a time in CmdSN order, whatever order they
// arrive in; a command outside the window is dropped unanswered.
func TestCommandsRunInCmdSNOrderWithinTheWindow(t *testing.T) {
	s := start(t, func(c *frontend.Config) { c.QueueDepth = 4 })
	c := login(t, s.addr(), 6)
	base := c.CmdSN
	mk := func(sn uint32) *iscsi.PDU {
		c.CmdSN = sn
		p := scsiCmd(c, tur, iscsi.FlagFinal, 0)
		p.SetFlags(iscsi.FlagFinal | iscsi.AttrOrdered)
		return p
	}
	a, b, d := mk(base+2), mk(base+1), mk(base)
	outside := mk(base + 4) // MaxCmdSN is base+3
	for _, p := range []*iscsi.PDU{a, b, outside, d} {
		send(t, c, p)
	}
	var got []uint32
	for range 3 {
		r := recv(t, c)
		if r.Opcode() != iscsi.OpSCSIResponse {
			t.Fatalf("got %s", r)
		}
		got = append(got, r.ITT())
		if w := r.MaxCmdSN() - r.ExpCmdSN() + 1; int32(w) < 1 || w > 4 {
			t.Errorf("window %d..%d is not within the queue depth 4", r.ExpCmdSN(), r.MaxCmdSN())
		}
	}
	if want := []uint32{d.ITT(), b.ITT(), a.ITT()}; !slices.Equal(got, want) {
		t.Errorf("responses for ITTs %v, want CmdSN order %v", got, want)
	}
	if want := []uint64{uint64(d.ITT()), uint64(b.ITT()), uint64(a.ITT())}; !slices.Equal(s.fake.tags(), want) {
		t.Errorf("executed %v, want CmdSN order %v", s.fake.tags(), want)
	}
	ping(t, c) // the out-of-window command was dropped, never answered
	c.CmdSN = base + 3
	res, err := c.Command(0, tur, 0, nil)
	if err != nil || res.CheckGood() != nil {
		t.Fatalf("next in-window command: %v %v", err, res)
	}
}

// SIMPLE tasks execute side by side; an ORDERED task waits for every task
// before it and holds back every task after it; a HEAD OF QUEUE task
// starts even then (SAM-5 §8.6).
func TestTaskAttributesGovernConcurrency(t *testing.T) {
	s := start(t, func(c *frontend.Config) { c.Concurrency = 4 })
	gate := make(chan struct{})
	s.fake.gate = gate
	s.fake.started = make(chan uint64, 16)
	c := login(t, s.addr(), 60)
	cmd := func(attr byte) *iscsi.PDU {
		p := scsiCmd(c, tur, iscsi.FlagFinal, 0)
		p.SetFlags(iscsi.FlagFinal | attr)
		return p
	}
	// expectStarted waits for exactly the tasks want to enter the SCSI
	// layer, then checks that no other one follows within quietPeriod.
	expectStarted := func(what string, want ...uint32) {
		t.Helper()
		pending := map[uint64]bool{}
		for _, itt := range want {
			pending[uint64(itt)] = true
		}
		deadline := time.NewTimer(ioTimeout)
		defer deadline.Stop()
		for len(pending) > 0 {
			select {
			case tag := <-s.fake.started:
				if !pending[tag] {
					t.Fatalf("task %d started while %s should be the only ones (%v)", tag, what, want)
				}
				delete(pending, tag)
			case <-deadline.C:
				t.Fatalf("%s %v not started within %v (missing %v)", what, want, ioTimeout, pending)
			}
		}
		quiet := time.NewTimer(quietPeriod)
		defer quiet.Stop()
		select {
		case tag := <-s.fake.started:
			t.Fatalf("task %d started too, after %s %v", tag, what, want)
		case <-quiet.C:
		}
	}
	s1, s2 := cmd(iscsi.AttrSimple), cmd(iscsi.AttrSimple)
	ord := cmd(iscsi.AttrOrdered)
	s3 := cmd(iscsi.AttrSimple)
	for _, p := range []*iscsi.PDU{s1, s2, ord, s3} {
		send(t, c, p)
	}
	expectStarted("the two SIMPLE tasks before the ORDERED one", s1.ITT(), s2.ITT())
	hoq := cmd(iscsi.AttrHOQ)
	send(t, c, hoq)
	expectStarted("the HEAD OF QUEUE task", hoq.ITT())
	close(gate)
	want := []uint32{s1.ITT(), s2.ITT(), ord.ITT(), s3.ITT(), hoq.ITT()}
	var got []uint32
	for range want {
		got = append(got, recv(t, c).ITT())
	}
	pos := func(itt uint32) int { return slices.Index(got, itt) }
	if pos(ord.ITT()) < pos(s1.ITT()) || pos(ord.ITT()) < pos(s2.ITT()) || pos(s3.ITT()) < pos(ord.ITT()) {
		t.Errorf("responses in order %v: the ORDERED task %d must follow %d and %d and precede %d", got, ord.ITT(), s1.ITT(), s2.ITT(), s3.ITT())
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("answered %v, want %v", got, want)
	}
}

func TestWindowClosesWhileCommandsRunAndReopens(t *testing.T) {
	s := start(t, func(c *frontend.Config) { c.QueueDepth = 2 })
	s.fake.gate = make(chan struct{})
	s.fake.started = make(chan uint64, 8)
	c := login(t, s.addr(), 7)
	n := c.CmdSN
	first, second := scsiCmd(c, tur, iscsi.FlagFinal, 0), scsiCmd(c, tur, iscsi.FlagFinal, 0)
	send(t, c, first)
	send(t, c, second)
	<-s.fake.started // first is executing, second queued: the window is full
	p := nopOut(c, true)
	send(t, c, p)
	r := recv(t, c)
	if r.ExpCmdSN() != n+2 || r.MaxCmdSN() != n+1 {
		t.Errorf("with 2 of 2 slots busy: window %d..%d, want ExpCmdSN %d and MaxCmdSN %d (closed)", r.ExpCmdSN(), r.MaxCmdSN(), n+2, n+1)
	}
	close(s.fake.gate)
	for range 2 {
		if r := recv(t, c); r.Opcode() != iscsi.OpSCSIResponse {
			t.Fatalf("got %s", r)
		}
	}
	ping(t, c)
	p = nopOut(c, true)
	send(t, c, p)
	if r := recv(t, c); r.MaxCmdSN()-r.ExpCmdSN()+1 != 2 {
		t.Errorf("idle window %d..%d, want 2 slots", r.ExpCmdSN(), r.MaxCmdSN())
	}
}

func TestWriteWithImmediateUnsolicitedAndSolicitedData(t *testing.T) {
	s := start(t, nil)
	c := login(t, s.addr(), 8,
		iscsi.KV{Key: "ImmediateData", Value: "Yes"},
		iscsi.KV{Key: "InitialR2T", Value: "No"},
		iscsi.KV{Key: "FirstBurstLength", Value: "1024"},
		iscsi.KV{Key: "MaxBurstLength", Value: "2048"},
		iscsi.KV{Key: "MaxOutstandingR2T", Value: "2"},
		iscsi.KV{Key: "MaxRecvDataSegmentLength", Value: "1024"},
	)
	data := make([]byte, 8192)
	rand.New(rand.NewSource(1)).Read(data)
	cmd := scsiCmd(c, frontendtest.Write10(8, 16), iscsi.FlagWrite, 8192) // F clear: unsolicited data follows
	cmd.SetLUN(frontendtest.LUNField(0))
	cmd.Data = data[:512]
	send(t, c, cmd)
	unsol := iscsi.New(iscsi.OpDataOut)
	unsol.SetFlags(iscsi.FlagFinal)
	unsol.SetITT(cmd.ITT())
	unsol.SetTTT(iscsi.ReservedTag)
	unsol.SetBufferOffset(512)
	unsol.Data = data[512:1024]
	send(t, c, unsol)

	covered := 1024
	var r2tSNs []uint32
	nextR2T := func() *iscsi.PDU {
		t.Helper()
		r := recv(t, c)
		if r.Opcode() != iscsi.OpR2T || r.ITT() != cmd.ITT() {
			t.Fatalf("got %s, want an R2T", r)
		}
		r2tSNs = append(r2tSNs, r.DataSN())
		off, n := int(r.BufferOffset()), int(r.ResidualCount())
		if off != covered || n > 2048 || n == 0 {
			t.Fatalf("R2T for %d bytes at %d; want at most MaxBurstLength 2048 at %d", n, off, covered)
		}
		covered += n
		return r
	}
	answer := func(r *iscsi.PDU) { // in two Data-Out PDUs
		off, n := int(r.BufferOffset()), int(r.ResidualCount())
		for i, part := range [][2]int{{off, n / 2}, {off + n/2, n - n/2}} {
			d := iscsi.New(iscsi.OpDataOut)
			d.SetITT(cmd.ITT())
			d.SetTTT(r.TTT())
			d.SetDataSN(uint32(i))
			d.SetBufferOffset(uint32(part[0]))
			d.Data = data[part[0] : part[0]+part[1]]
			if i == 1 {
				d.SetFlags(iscsi.FlagFinal)
			}
			send(t, c, d)
		}
	}
	outstanding := []*iscsi.PDU{nextR2T(), nextR2T()}
	ping(t, c) // MaxOutstandingR2T=2: no third R2T before data flows
	for len(outstanding) > 0 {
		answer(outstanding[0])
		outstanding = outstanding[1:]
		if covered < 8192 {
			outstanding = append(outstanding, nextR2T())
		}
	}
	if r := recv(t, c); r.Opcode() != iscsi.OpSCSIResponse || r.BHS[3] != 0 || r.ITT() != cmd.ITT() {
		t.Fatalf("got %s status 0x%02x, want GOOD SCSI Response for the write", r, r.BHS[3])
	}
	if !slices.Equal(r2tSNs, []uint32{0, 1, 2, 3}) {
		t.Errorf("R2TSNs %v, want 0..3", r2tSNs)
	}

	// Read it back: Data-In in 1024-byte segments (our MaxRecvDataSegmentLength),
	// bursts of 2048 (F bit), status in the last one.
	rd := scsiCmd(c, frontendtest.Read10(8, 16), iscsi.FlagFinal|iscsi.FlagRead, 8192)
	send(t, c, rd)
	got := make([]byte, 0, 8192)
	for sn := uint32(0); ; sn++ {
		r := recv(t, c)
		if r.Opcode() != iscsi.OpDataIn {
			t.Fatalf("got %s, want Data-In", r)
		}
		if r.DataSN() != sn || int(r.BufferOffset()) != len(got) || len(r.Data) > 1024 {
			t.Fatalf("Data-In DataSN %d offset %d len %d; want DataSN %d offset %d len <= 1024", r.DataSN(), r.BufferOffset(), len(r.Data), sn, len(got))
		}
		got = append(got, r.Data...)
		if wantF := len(got)%2048 == 0; (r.Flags()&iscsi.FlagFinal != 0) != wantF {
			t.Errorf("Data-In at %d: F bit %v, want it at each 2048-byte burst end", len(got), !wantF)
		}
		if r.Flags()&iscsi.FlagStatus != 0 {
			if len(got) != 8192 || r.BHS[3] != 0 || r.Flags()&(iscsi.FlagUnder|iscsi.FlagOverflow) != 0 {
				t.Fatalf("status Data-In after %d bytes, status 0x%02x flags 0x%02x", len(got), r.BHS[3], r.Flags())
			}
			break
		}
	}
	if !bytes.Equal(got, data) {
		t.Error("data read back differs from data written")
	}
}

func TestResiduals(t *testing.T) {
	s := start(t, nil)
	c := login(t, s.addr(), 9)
	// One block asked, 1024 bytes expected: underflow by 512.
	res, err := c.Command(0, frontendtest.Read10(0, 1), 1024, nil)
	if err != nil || res.CheckGood() != nil {
		t.Fatal(err, res)
	}
	if res.Flags&iscsi.FlagUnder == 0 || res.Residual != 512 || len(res.Data) != 512 {
		t.Errorf("underflow: flags 0x%02x residual %d data %d, want U, 512, 512 bytes", res.Flags, res.Residual, len(res.Data))
	}
	// One block asked, 256 bytes expected: overflow by 256, 256 bytes sent.
	res, err = c.Command(0, frontendtest.Read10(0, 1), 256, nil)
	if err != nil || res.CheckGood() != nil {
		t.Fatal(err, res)
	}
	if res.Flags&iscsi.FlagOverflow == 0 || res.Residual != 256 || len(res.Data) != 256 {
		t.Errorf("overflow: flags 0x%02x residual %d data %d, want O, 256, 256 bytes", res.Flags, res.Residual, len(res.Data))
	}
	// A write of one block with 1024 bytes expected: underflow by 512.
	res, err = c.Command(0, frontendtest.Write10(0, 1), 0, make([]byte, 1024))
	if err != nil || res.CheckGood() != nil {
		t.Fatal(err, res)
	}
	if res.Flags&iscsi.FlagUnder == 0 || res.Residual != 512 {
		t.Errorf("write underflow: flags 0x%02x residual %d, want U, 512", res.Flags, res.Residual)
	}
}

func TestCheckConditionCarriesSense(t *testing.T) {
	s := start(t, nil)
	c := login(t, s.addr(), 10)
	res, err := c.Command(0, []byte{0xd5, 0, 0, 0, 0, 0}, 64, nil)
	if err != nil {
		t.Fatal(err)
	}
	if k, asc, _ := res.SenseKey(); res.Status != 0x02 || k != 0x05 || asc != 0x20 {
		t.Errorf("status 0x%02x sense %x/%x, want CHECK CONDITION 05/20", res.Status, k, asc)
	}
	if res.DataIns != 0 {
		t.Errorf("%d Data-In PDUs for a failed command", res.DataIns)
	}
	// The SCSI command built for the SCSI layer: LUN number, relative port,
	// I_T nexus, tag.
	res, err = c.Command(3, tur, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.fake.mu.Lock()
	last := s.fake.executed[len(s.fake.executed)-1]
	s.fake.mu.Unlock()
	if frontend.GotgtLUN(&last) != 3 || last.RelTargetPortID != 1 || last.ITNexus == nil || last.ITNexusID != last.ITNexus.ID || last.InSDBBuffer == nil || last.OutSDBBuffer == nil {
		t.Errorf("api.SCSICommand: LUN %d port %d nexus %v buffers %v/%v", frontend.GotgtLUN(&last), last.RelTargetPortID, last.ITNexus, last.InSDBBuffer, last.OutSDBBuffer)
	}
}

func TestTaskManagement(t *testing.T) {
	s := start(t, nil)
	c := login(t, s.addr(), 11)
	tmf := func(fn byte, ref, refCmdSN uint32) byte {
		t.Helper()
		p := iscsi.New(iscsi.OpTaskMgmtReq)
		p.SetImmediate(true)
		p.SetFlags(iscsi.FlagFinal | fn)
		p.SetITT(c.NextITT())
		p.SetU32(20, ref)
		p.SetCmdSN(c.CmdSN)
		p.SetU32(32, refCmdSN)
		send(t, c, p)
		r := recv(t, c)
		if r.Opcode() != iscsi.OpTaskMgmtResp || r.ITT() != p.ITT() {
			t.Fatalf("got %s, want the Task Management Response", r)
		}
		return r.BHS[2]
	}
	// A write waiting for its data is aborted and never answered.
	w := scsiCmd(c, frontendtest.Write10(0, 2), iscsi.FlagFinal|iscsi.FlagWrite, 1024)
	send(t, c, w)
	if r := recv(t, c); r.Opcode() != iscsi.OpR2T {
		t.Fatalf("got %s, want R2T", r)
	}
	if got := tmf(1, w.ITT(), w.CmdSN()); got != 0 {
		t.Errorf("ABORT TASK of a waiting write: response %d, want 0 (function complete)", got)
	}
	ping(t, c)
	if got := tmf(1, 0x7777, c.CmdSN+5); got != 1 {
		t.Errorf("ABORT TASK of an unknown task: response %d, want 1 (task does not exist)", got)
	}
	for _, tc := range []struct {
		name string
		fn   byte
		want byte
	}{{"ABORT TASK SET", 2, 0}, {"CLEAR TASK SET", 4, 0}, {"LUN RESET", 5, 0}, {"CLEAR ACA", 3, 5}, {"TARGET WARM RESET", 6, 0}, {"TARGET COLD RESET", 7, 5}, {"TASK REASSIGN", 8, 4}, {"function 42", 42, 255}} {
		if got := tmf(tc.fn, iscsi.ReservedTag, 0); got != tc.want {
			t.Errorf("%s: response %d, want %d", tc.name, got, tc.want)
		}
	}
	res, err := c.Command(0, tur, 0, nil)
	if err != nil || res.CheckGood() != nil {
		t.Fatalf("command after task management: %v %v", err, res)
	}
}

func TestLogoutClosesTheConnection(t *testing.T) {
	s := start(t, nil)
	c := login(t, s.addr(), 12)
	p := iscsi.New(iscsi.OpLogoutReq)
	p.SetFlags(iscsi.FlagFinal | 0)
	p.SetITT(c.NextITT())
	p.SetCmdSN(c.CmdSN)
	c.CmdSN++
	send(t, c, p)
	r := recv(t, c)
	if r.Opcode() != iscsi.OpLogoutResp || r.BHS[2] != 0 || r.ITT() != p.ITT() {
		t.Fatalf("got %s response %d, want Logout Response 0", r, r.BHS[2])
	}
	if err := c.WaitClosed(); err != nil {
		t.Error(err)
	}
}

func TestUnknownOpcodeIsRejected(t *testing.T) {
	s := start(t, nil)
	c := login(t, s.addr(), 13)
	p := iscsi.New(iscsi.Opcode(0x1c))
	p.SetITT(c.NextITT())
	send(t, c, p)
	r := recv(t, c)
	if r.Opcode() != iscsi.OpReject || r.BHS[2] != 0x05 || !bytes.Equal(r.Data, p.BHS[:]) {
		t.Fatalf("got %s reason 0x%02x, want Reject (command not supported) carrying the header", r, r.BHS[2])
	}
	ping(t, c)
}

func TestSessionReinstatement(t *testing.T) {
	s := start(t, nil)
	old := login(t, s.addr(), 14)
	fresh := login(t, s.addr(), 14)
	if err := old.WaitClosed(); err != nil {
		t.Errorf("old session with the same ISID: %v", err)
	}
	res, err := fresh.Command(0, tur, 0, nil)
	if err != nil || res.CheckGood() != nil {
		t.Fatalf("reinstated session: %v %v", err, res)
	}
	s.fake.mu.Lock()
	ev := slices.Clone(s.fake.events)
	s.fake.mu.Unlock()
	// The I_T nexus keeps its identity: removed by the old session, then
	// added again by the new one.
	if len(ev) != 3 || ev[0] != ev[2] || !strings.HasPrefix(ev[1], "remove") || ev[1][len("remove"):] != ev[0][len("add"):] {
		t.Errorf("nexus events %v, want add X, remove X, add X", ev)
	}
	other := login(t, s.addr(), 15) // another ISID leaves the first alone
	ping(t, other)
	ping(t, fresh)
}

func TestListenFailureNamesTheAddress(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, err = frontend.Listen(frontend.Config{TargetName: targetIQN, SCSI: newFake(), Portals: []frontend.Portal{{Listen: "127.0.0.1:0", TPGT: 1}, {Listen: ln.Addr().String(), TPGT: 2}}})
	if err == nil || !strings.Contains(err.Error(), ln.Addr().String()) {
		t.Fatalf("Listen on a busy address: %v, want an error naming %s", err, ln.Addr())
	}
}

func TestHostileInputClosesTheConnection(t *testing.T) {
	s := start(t, nil)
	header := func(op iscsi.Opcode, dlen int) []byte {
		p := iscsi.New(op)
		p.BHS[5], p.BHS[6], p.BHS[7] = byte(dlen>>16), byte(dlen>>8), byte(dlen)
		return p.BHS[:]
	}
	garbage := make([]byte, 48)
	rand.New(rand.NewSource(7)).Read(garbage)
	garbage[0] = 0x3e // not a login
	cases := []struct {
		name  string
		login bool // log in first
		keys  []iscsi.KV
		raw   []byte // bytes to send
	}{
		{name: "truncated header", raw: header(iscsi.OpLoginReq, 0)[:20]},
		{name: "garbage", raw: garbage},
		{name: "command before login", raw: header(iscsi.OpSCSICommand, 0)},
		{name: "oversize login data", raw: header(iscsi.OpLoginReq, 1<<20)},
		{name: "oversize data segment", login: true, raw: header(iscsi.OpSCSICommand, 1<<24-1)},
		{name: "truncated data segment", login: true, raw: append(header(iscsi.OpNOPOut, 100), 1, 2, 3)},
		{name: "bad header digest", login: true, keys: []iscsi.KV{{Key: "HeaderDigest", Value: "CRC32C"}}, raw: append(header(iscsi.OpNOPOut, 0), 0xde, 0xad, 0xbe, 0xef)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var c *frontendtest.Conn
			if tc.login {
				c = login(t, s.addr(), 16, tc.keys...)
			} else {
				var err error
				if c, err = frontendtest.Dial(s.addr(), ioTimeout); err != nil {
					t.Fatal(err)
				}
				defer c.Close()
			}
			if _, err := c.C.Write(tc.raw); err != nil {
				t.Fatal(err)
			}
			if tc.name == "truncated header" || tc.name == "truncated data segment" {
				c.C.(*net.TCPConn).CloseWrite()
			}
			if err := c.WaitClosed(); err != nil {
				t.Error(err)
			}
		})
	}
	// A data digest error is rejected, then the connection is dropped (ERL 0).
	c := login(t, s.addr(), 17, iscsi.KV{Key: "DataDigest", Value: "CRC32C"})
	b, _ := nopOut(c, true).Marshal(iscsi.Digests{})
	b = append(b[:48], make([]byte, 8)...)
	b[7] = 4 // 4 bytes of data, then a wrong digest
	if _, err := c.C.Write(b); err != nil {
		t.Fatal(err)
	}
	c.Digests.Data = false // the bad digest is ours; read the reply plainly
	if r := recv(t, c); r.Opcode() != iscsi.OpReject || r.BHS[2] != 0x02 {
		t.Errorf("data digest error: got %s reason 0x%02x, want Reject (data digest)", r, r.BHS[2])
	}
	if err := c.WaitClosed(); err != nil {
		t.Error(err)
	}
	// So is one on Data-Out, which the target reads straight into the
	// command's buffer.
	c = login(t, s.addr(), 19, iscsi.KV{Key: "DataDigest", Value: "CRC32C"}, iscsi.KV{Key: "ImmediateData", Value: "No"})
	w := scsiCmd(c, frontendtest.Write10(0, 1), iscsi.FlagFinal|iscsi.FlagWrite, 512)
	send(t, c, w)
	r2t := recv(t, c)
	if r2t.Opcode() != iscsi.OpR2T {
		t.Fatalf("got %s, want R2T", r2t)
	}
	d := iscsi.New(iscsi.OpDataOut)
	d.SetFlags(iscsi.FlagFinal)
	d.SetITT(w.ITT())
	d.SetTTT(r2t.TTT())
	d.Data = make([]byte, 512)
	b, _ = d.Marshal(iscsi.Digests{Data: true})
	b[len(b)-1] ^= 0xff
	if _, err := c.C.Write(b); err != nil {
		t.Fatal(err)
	}
	if r := recv(t, c); r.Opcode() != iscsi.OpReject || r.BHS[2] != 0x02 {
		t.Errorf("Data-Out with a bad data digest: got %s reason 0x%02x, want Reject (data digest)", r, r.BHS[2])
	}
	if err := c.WaitClosed(); err != nil {
		t.Error(err)
	}
	// Through all of it the target kept serving.
	ping(t, login(t, s.addr(), 18))
}

// Random headers after login must never crash the target: every PDU is
// answered, rejected, dropped, or ends the connection.
func TestRandomPDUsDoNotCrash(t *testing.T) {
	s := start(t, nil)
	rng := rand.New(rand.NewSource(42))
	ops := []iscsi.Opcode{iscsi.OpNOPOut, iscsi.OpSCSICommand, iscsi.OpTaskMgmtReq, iscsi.OpLoginReq, iscsi.OpTextReq, iscsi.OpDataOut, iscsi.OpLogoutReq, iscsi.OpSNACKReq, 0x1f, 0x3f}
	for conn := 0; conn < 8; conn++ {
		c := login(t, s.addr(), byte(20+conn))
		for i := 0; i < 50; i++ {
			p := &iscsi.PDU{}
			rng.Read(p.BHS[:])
			p.BHS[0] = byte(ops[rng.Intn(len(ops))]) | p.BHS[0]&0x40
			p.BHS[4] = 0
			p.SetExpectedDataLength(p.ExpectedDataLength() & 0xffff) // bound what a write may allocate
			if rng.Intn(3) == 0 {
				p.SetCmdSN(c.CmdSN)
			}
			if rng.Intn(4) == 0 {
				p.Data = make([]byte, rng.Intn(600))
			}
			if c.Send(p) != nil {
				break
			}
		}
		c.Close()
	}
	ping(t, login(t, s.addr(), 30))
}

func TestCloseReleasesEverything(t *testing.T) {
	base := runtime.NumGoroutine()
	fake := newFake()
	s, err := frontend.Listen(frontend.Config{
		TargetName:   targetIQN,
		Portals:      []frontend.Portal{{Listen: "127.0.0.1:0", TPGT: 1}, {Listen: "127.0.0.1:0", TPGT: 2}},
		SCSI:         fake,
		LoginTimeout: loginTimeout,
		// Pings on, so their goroutines are counted too; rare enough not
		// to interleave with the exchanges below.
		NopInInterval: ioTimeout,
	})
	if err != nil {
		t.Fatal(err)
	}
	addr := s.Addrs()[0]
	idle, err := frontendtest.Dial(addr, ioTimeout) // stuck before login
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	busy, err := frontendtest.Normal(s.Addrs()[1], initiatorIQN, targetIQN, isid(40), ioTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	w := scsiCmd(busy, frontendtest.Write10(0, 1), iscsi.FlagFinal|iscsi.FlagWrite, 512)
	send(t, busy, w) // waits for Data-Out that never comes
	if r := recv(t, busy); r.Opcode() != iscsi.OpR2T {
		t.Fatalf("got %s, want R2T", r)
	}
	plain := login(t, addr, 41)
	ping(t, plain)

	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*frontendtest.Conn{idle, busy, plain} {
		if err := c.WaitClosed(); err != nil {
			t.Error(err)
		}
	}
	for _, a := range s.Addrs() {
		if c, err := net.DialTimeout("tcp", a, ioTimeout); err == nil {
			c.Close()
			t.Errorf("portal %s still accepts connections after Close", a)
		}
	}
	fake.mu.Lock()
	if n := len(fake.events); n != 4 { // two sessions: add, remove each
		t.Errorf("nexus events after Close: %v", fake.events)
	}
	fake.mu.Unlock()
	deadline := time.Now().Add(ioTimeout)
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for runtime.NumGoroutine() > base {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("%d goroutines after Close, %d before:\n%s", runtime.NumGoroutine(), base, buf[:runtime.Stack(buf, true)])
		}
		<-tick.C
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestLoginTimeoutDropsSilentConnections(t *testing.T) {
	s := start(t, func(c *frontend.Config) { c.LoginTimeout = quietPeriod })
	c, err := frontendtest.Dial(s.addr(), ioTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.WaitClosed(); err != nil {
		t.Errorf("a connection that never logs in: %v", err)
	}
}

// A command the target rejects still used up its CmdSN at the initiator;
// the target must count it too or every later command waits forever.
func TestRejectedCommandStillTakesItsCmdSN(t *testing.T) {
	s := start(t, nil)
	c := login(t, s.addr(), 19, iscsi.KV{Key: "ImmediateData", Value: "No"})
	bad := scsiCmd(c, frontendtest.Write10(0, 1), iscsi.FlagFinal|iscsi.FlagWrite, 512)
	bad.Data = make([]byte, 512) // immediate data that was not negotiated
	send(t, c, bad)
	if r := recv(t, c); r.Opcode() != iscsi.OpReject || r.BHS[2] != 0x04 {
		t.Fatalf("got %s reason 0x%02x, want Reject (protocol error)", r, r.BHS[2])
	}
	res, err := c.Command(0, tur, 0, nil)
	if err != nil || res.CheckGood() != nil {
		t.Fatalf("command after a rejected one: %v %v", err, res)
	}
}

// sessionOn logs in and hands the connection to a concurrent session.
func sessionOn(t *testing.T, addr string, id byte, extra ...iscsi.KV) *frontendtest.Session {
	t.Helper()
	c, err := frontendtest.Normal(addr, initiatorIQN, targetIQN, isid(id), ioTimeout, extra...)
	if err != nil {
		t.Fatal(err)
	}
	s := frontendtest.StartSession(c)
	t.Cleanup(func() { s.Close() })
	return s
}

// Immediate and non-immediate NOP-Outs interleaved with reads and writes
// from many goroutines on two sessions: every command completes with the
// data written, every NOP-In echoes its ping, StatSN never skips, and the
// small window keeps closing and reopening on the way.
func TestNOPOutsInterleavedWithIOFromManyGoroutines(t *testing.T) {
	s := start(t, func(c *frontend.Config) { c.QueueDepth = 8; c.Concurrency = 4 })
	a := sessionOn(t, s.addr(), 70)
	b := sessionOn(t, s.addr(), 71)
	b.ImmediateData = true
	err := frontendtest.MixedIO([]*frontendtest.Session{a, b}, frontendtest.Mixed{
		BlockSize:     512,
		RegionBlocks:  128,
		IOGoroutines:  6,
		NOPGoroutines: 2,
		Rounds:        40,
		MaxBlocks:     48, // 24 KiB: Data-In in several PDUs, writes over several R2Ts
		Seed:          7,
	})
	if err != nil {
		t.Fatal(err)
	}
}

// The emulated host's initiator must honour the CmdSN window as strictly
// as ESXi, or it would hide a target that gets the window wrong. Negative
// control: against a target whose window shuts after a few commands the
// initiator stalls (the command is never sent, so it never completes)
// while immediate pings still work; against the correct target the same
// run completes.
func TestStrictInitiatorStallsOnAClosedWindow(t *testing.T) {
	const closeAfter, depth, commands = 3, 4, 12
	for _, tc := range []struct {
		name   string
		defect frontend.Defect
		stalls bool
	}{
		{"correct target", frontend.Defect{}, false},
		{"window closes after 3 commands", frontend.Defect{CloseWindowAfter: closeAfter}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var arrived atomic.Int64 // SCSI commands that reached the target
			s := start(t, func(c *frontend.Config) {
				c.QueueDepth = depth
				c.Defect = tc.defect
				c.Trace = func(in bool, p *iscsi.PDU) {
					if in && p.Opcode() == iscsi.OpSCSICommand {
						arrived.Add(1)
					}
				}
			})
			ctx := context.Background()
			sess, err := initiator.Login(ctx, initiator.Options{InitiatorName: initiatorIQN, TargetName: targetIQN, Address: s.addr(), Logf: t.Logf})
			if err != nil {
				t.Fatal(err)
			}
			defer sess.Close()
			stalledAt := -1
			for i := range commands {
				// A command that has not reached the target after
				// stallPeriod is stalled in the initiator; one that has is
				// only slow.
				cctx, cancel := context.WithCancel(ctx)
				done := make(chan error, 1)
				go func() { done <- sess.TestUnitReady(cctx, 0) }()
				var err error
				select {
				case err = <-done:
				case <-time.After(stallPeriod):
					if arrived.Load() <= int64(i) {
						stalledAt = i
					} else {
						select {
						case err = <-done:
						case <-time.After(ioTimeout):
							err = fmt.Errorf("sent, but not answered within %v", ioTimeout)
						}
					}
				}
				cancel()
				if stalledAt >= 0 {
					<-done
					break
				}
				if err != nil {
					t.Fatalf("command %d: %v", i, err)
				}
			}
			if !tc.stalls {
				if stalledAt >= 0 {
					t.Fatalf("command %d did not complete against a correct target", stalledAt)
				}
				return
			}
			switch {
			case stalledAt < 0:
				t.Fatalf("all %d commands completed: the initiator sent past a window the target had closed", commands)
			case stalledAt < closeAfter:
				t.Fatalf("command %d stalled before the window closed (after %d)", stalledAt, closeAfter)
			}
			t.Logf("window closed after %d commands; command %d stalled in the initiator", closeAfter, stalledAt)
			if got := arrived.Load(); got != int64(stalledAt) {
				t.Errorf("the target received %d SCSI commands, want the %d sent before the stall: the stalled one must not be sent", got, stalledAt)
			}
			pctx, cancel := context.WithTimeout(ctx, ioTimeout)
			defer cancel()
			if err := sess.Ping(pctx); err != nil {
				t.Errorf("immediate ping while the window is closed: %v", err)
			}
		})
	}
}
