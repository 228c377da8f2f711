package initiator

import (
	"bufio"
	"bytes"
	"net"
	"testing"

	"github.com/certkit/certkit/iscsi"
)

// FuzzTargetPDU feeds arbitrary PDUs to the session's dispatcher with a
// read, a write and a ping outstanding: whatever a target sends, the
// initiator must not panic (a protocol error is the most it may say).
func FuzzTargetPDU(f *testing.F) {
	seed := func(p *iscsi.PDU) {
		b, _ := p.Marshal(iscsi.Digests{})
		f.Add(b)
	}
	seed(dataIn(1, 0, 0, make([]byte, 512), true))
	seed(dataIn(1, 0, 256, make([]byte, 512), false))
	seed(r2tPDU(2, 7, 0, 0, 4096))
	seed(scsiResponse(1, StatusCheckCondition, []byte{0x70, 0, 5}))
	seed(nopIn(3, iscsi.ReservedTag))
	seed(nopIn(iscsi.ReservedTag, 9))
	rej := iscsi.New(iscsi.OpReject)
	rej.Data = make([]byte, 48)
	seed(rej)
	async := iscsi.New(iscsi.OpAsyncMsg)
	async.BHS[36] = 4
	seed(async)

	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := iscsi.ReadPDU(bytes.NewReader(b), iscsi.Framing{MaxDataSegment: 1 << 16})
		if err != nil {
			return
		}
		c1, c2 := net.Pipe()
		defer c2.Close()
		params := Params{MaxRecvDataSegmentLength: 1 << 16, TargetMaxRecvDataSegmentLength: 8192, MaxBurstLength: 262144, FirstBurstLength: 65536}
		s := newSession(c1, bufio.NewReader(c1), Options{TargetName: "iqn.fuzz", Address: "pipe"}.withDefaults(), params, 1, 1, 8, 1)
		defer s.Close()
		s.mu.Lock()
		for itt, tk := range map[uint32]*task{
			1: {op: iscsi.OpSCSICommand, read: make([]byte, 512)},
			2: {op: iscsi.OpSCSICommand, writeLen: 8192},
			3: {op: iscsi.OpNOPOut},
		} {
			tk.itt, tk.desc, tk.done, tk.r2tReady = itt, "fuzz task", make(chan struct{}), make(chan struct{}, 1)
			s.tasks[itt] = tk
		}
		s.mu.Unlock()
		s.handle(p)
	})
}
