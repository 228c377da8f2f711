package frontend

import (
	"encoding/binary"
	"io"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/certkit/certkit/iscsi"
	"github.com/gostor/gotgt/pkg/api"
)

// fuzzSCSI answers every command GOOD, a READ with zeros.
type fuzzSCSI struct{}

func (fuzzSCSI) AddNexus(*api.ITNexus) error { return nil }
func (fuzzSCSI) RemoveNexus(*api.ITNexus)    {}
func (fuzzSCSI) Execute(cmd *api.SCSICommand) {
	if isRead(cmd.SCB[0]) {
		cmd.InSDBBuffer.Resid = cmd.InSDBBuffer.Length
	}
}

var (
	fuzzOnce   sync.Once
	fuzzServer *Server
	fuzzErr    error
)

// fuzzTarget is one server for the whole fuzzing process; each input gets
// its own connection (a pipe) to it.
func fuzzTarget() (*Server, error) {
	fuzzOnce.Do(func() {
		fuzzServer, fuzzErr = Listen(Config{
			TargetName:   "iqn.2024-01.io.certkit:fuzz",
			Portals:      []Portal{{Listen: "127.0.0.1:0", TPGT: 1}},
			SCSI:         fuzzSCSI{},
			QueueDepth:   8,
			LoginTimeout: fuzzLoginTimeout,
		})
	})
	return fuzzServer, fuzzErr
}

// fuzzDeadline bounds how long the target may take to let go of a
// connection whose initiator has hung up; fuzzLoginTimeout keeps inputs
// that stop mid-login quick (the fuzzer reruns interesting ones many times).
const (
	fuzzDeadline     = 5 * time.Second
	fuzzLoginTimeout = 100 * time.Millisecond
)

// seedStream is a well-formed session: login, then PDUs of each kind.
func seedStream(discovery bool, then ...*iscsi.PDU) []byte {
	keys := iscsi.Text{{Key: "InitiatorName", Value: "iqn.2024-01.io.certkit:fuzzer"}}
	if discovery {
		keys.Add("SessionType", "Discovery")
	} else {
		keys.Add("TargetName", "iqn.2024-01.io.certkit:fuzz")
		keys.Add("ImmediateData", "Yes")
		keys.Add("InitialR2T", "No")
		keys.Add("MaxRecvDataSegmentLength", "4096")
	}
	login := iscsi.New(iscsi.OpLoginReq)
	login.SetImmediate(true)
	login.SetFlags(iscsi.FlagTransit | 1<<2 | 3)
	copy(login.BHS[8:14], []byte{0x80, 0, 0, 0, 0, 1})
	login.SetITT(1)
	login.Data = keys.Encode()
	b, _ := login.Marshal(iscsi.Digests{})
	var sn uint32
	for _, p := range then {
		if p.Opcode() != iscsi.OpDataOut {
			p.SetCmdSN(sn)
			if !p.Immediate() {
				sn++
			}
		}
		q, _ := p.Marshal(iscsi.Digests{})
		b = append(b, q...)
	}
	return b
}

func fuzzCmd(itt uint32, flags byte, edtl uint32, cdb ...byte) *iscsi.PDU {
	p := iscsi.New(iscsi.OpSCSICommand)
	p.SetFlags(flags | iscsi.AttrSimple)
	p.SetITT(itt)
	p.SetExpectedDataLength(edtl)
	copy(p.CDB(), cdb)
	return p
}

// FuzzSession feeds arbitrary bytes to the target as one initiator's side
// of a TCP connection, from the first login byte on. Whatever arrives, the
// target must not panic and must let go of the connection once the
// initiator hangs up. Seeds are well-formed sessions; the kept corpus is in
// testdata/fuzz/FuzzSession.
func FuzzSession(f *testing.F) {
	nop := iscsi.New(iscsi.OpNOPOut)
	nop.SetFlags(iscsi.FlagFinal)
	nop.SetITT(10)
	nop.SetTTT(iscsi.ReservedTag)
	nop.Data = []byte("ping")
	write := fuzzCmd(11, iscsi.FlagWrite, 2048, 0x2a, 0, 0, 0, 0, 8, 0, 0, 4, 0)
	write.Data = make([]byte, 1024)
	dout := iscsi.New(iscsi.OpDataOut)
	dout.SetFlags(iscsi.FlagFinal)
	dout.SetITT(11)
	dout.SetTTT(iscsi.ReservedTag)
	dout.SetBufferOffset(1024)
	dout.Data = make([]byte, 1024)
	read := fuzzCmd(12, iscsi.FlagFinal|iscsi.FlagRead, 8192, 0x28, 0, 0, 0, 0, 0, 0, 0, 16, 0)
	tmf := iscsi.New(iscsi.OpTaskMgmtReq)
	tmf.SetImmediate(true)
	tmf.SetFlags(iscsi.FlagFinal | 5)
	tmf.SetITT(13)
	logout := iscsi.New(iscsi.OpLogoutReq)
	logout.SetFlags(iscsi.FlagFinal)
	logout.SetITT(14)
	f.Add(seedStream(false, nop, write, dout, read, tmf, logout))
	text := iscsi.New(iscsi.OpTextReq)
	text.SetFlags(iscsi.FlagFinal)
	text.SetITT(20)
	text.SetTTT(iscsi.ReservedTag)
	text.Data = iscsi.Text{{Key: "SendTargets", Value: "All"}}.Encode()
	f.Add(seedStream(true, text))
	f.Add(seedStream(false, fuzzCmd(30, iscsi.FlagFinal|iscsi.FlagWrite, 4096, 0x2a, 0, 0, 0, 0, 0, 0, 0, 8, 0)))

	f.Fuzz(func(t *testing.T, in []byte) {
		srv, err := fuzzTarget()
		if err != nil {
			t.Fatal(err)
		}
		p := srv.portals[0]
		if !p.admit(1<<30, 1<<30) {
			t.Fatal("portal refused the connection")
		}
		c1, c2 := net.Pipe()
		srv.mu.Lock()
		srv.conns[c1] = struct{}{}
		srv.wg.Add(1)
		srv.mu.Unlock()
		served := make(chan struct{})
		go func() {
			srv.serve(c1, p)
			close(served)
		}()
		go io.Copy(io.Discard, c2) // the target's answers
		wrote := make(chan struct{})
		go func() {
			c2.Write(in)
			close(wrote)
		}()
		select {
		case <-wrote:
		case <-served:
		case <-time.After(fuzzDeadline):
		}
		c2.Close() // the initiator hangs up
		select {
		case <-served:
		case <-time.After(fuzzDeadline):
			buf := make([]byte, 1<<20)
			t.Fatalf("the target still serves the connection %v after the initiator hung up:\n%s", fuzzDeadline, buf[:runtime.Stack(buf, true)])
		}
		<-wrote
	})
}

// TestSeedStreamsAreSessions keeps the fuzz seeds honest: the first seed
// is a session the target actually runs (its commands answered).
func TestSeedStreamsAreSessions(t *testing.T) {
	srv, err := fuzzTarget()
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", srv.Addrs()[0])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	read := fuzzCmd(12, iscsi.FlagFinal|iscsi.FlagRead, 8192, 0x28, 0, 0, 0, 0, 0, 0, 0, 16, 0)
	if _, err := c.Write(seedStream(false, read)); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(fuzzDeadline))
	var got []iscsi.Opcode
	var data int
	for {
		p, err := iscsi.ReadPDU(c, iscsi.Framing{MaxDataSegment: 1 << 16})
		if err != nil {
			t.Fatalf("after %v: %v", got, err)
		}
		got = append(got, p.Opcode())
		if p.Opcode() == iscsi.OpLoginResp && binary.BigEndian.Uint16(p.BHS[36:]) != 0 {
			t.Fatalf("seed login failed: status 0x%04x", binary.BigEndian.Uint16(p.BHS[36:]))
		}
		if p.Opcode() == iscsi.OpDataIn {
			data += len(p.Data)
			if p.Flags()&iscsi.FlagStatus != 0 {
				break
			}
		}
	}
	if data != 8192 {
		t.Errorf("seed READ got %d bytes over %v, want 8192", data, got)
	}
}
