package array_test

import (
	"testing"

	"github.com/certkit/certkit/iscsi"
	"github.com/certkit/certkit/targets/array"
	"github.com/certkit/certkit/targets/frontend/frontendtest"
)

// Task management naming a LUN the target does not have is answered "LUN
// does not exist" (RFC 7143 §11.6.1, response 2), not "function complete":
// a host escalating error recovery must not be told it reset something.
func TestTaskManagementOfAMissingLUN(t *testing.T) {
	a := startArray(t, config("tmf-nolun"), array.Options{})
	c, err := frontendtest.Normal(portalAddr(a, "A0"), initiatorIQN, a.Target(), [6]byte{0x80, 0, 0, 0, 9, 1}, ioTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, tc := range []struct {
		name string
		fn   byte
		lun  int
		want byte
	}{
		{"LUN RESET of LUN 0", 5, 0, 0},
		{"LUN RESET of LUN 9", 5, 9, 2},
		{"ABORT TASK SET of LUN 9", 2, 9, 2},
		{"CLEAR TASK SET of LUN 9", 4, 9, 2},
		{"TARGET WARM RESET", 6, 9, 0}, // names no LUN
	} {
		p := iscsi.New(iscsi.OpTaskMgmtReq)
		p.SetImmediate(true)
		p.SetFlags(iscsi.FlagFinal | tc.fn)
		p.SetLUN(frontendtest.LUNField(tc.lun))
		p.SetITT(c.NextITT())
		p.SetU32(20, iscsi.ReservedTag)
		p.SetCmdSN(c.CmdSN)
		if err := c.Send(p); err != nil {
			t.Fatal(err)
		}
		r, err := c.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if r.Opcode() != iscsi.OpTaskMgmtResp || r.BHS[2] != tc.want {
			t.Errorf("%s: %s response %d, want %d", tc.name, r, r.BHS[2], tc.want)
		}
	}
}
