// Package frontendtest is a minimal raw iSCSI initiator for the target
// tests: it speaks PDUs with the iscsi codec and leaves every protocol
// decision visible to the test (CmdSN, immediate bit, window fields).
package frontendtest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/certkit/certkit/iscsi"
)

// Conn is one raw connection to a target.
type Conn struct {
	C         net.Conn
	Digests   iscsi.Digests
	MaxRecv   uint32 // the MaxRecvDataSegmentLength this side declared
	Timeout   time.Duration
	CmdSN     uint32 // next CmdSN to use
	MaxCmdSN  uint32 // as the login response advertised it
	ExpStatSN uint32
	itt       uint32
}

// Dial connects to addr.
func Dial(addr string, timeout time.Duration) (*Conn, error) {
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return nil, err
	}
	return &Conn{C: c, Timeout: timeout, MaxRecv: iscsi.DefaultMaxRecvDataSegmentLength}, nil
}

// Close drops the connection.
func (c *Conn) Close() error { return c.C.Close() }

// NextITT returns a fresh initiator task tag.
func (c *Conn) NextITT() uint32 { c.itt++; return c.itt }

// Send writes one PDU with the negotiated digests.
func (c *Conn) Send(p *iscsi.PDU) error {
	c.C.SetWriteDeadline(time.Now().Add(c.Timeout))
	return iscsi.WritePDU(c.C, p, c.Digests)
}

// Recv reads one PDU, failing after Timeout.
func (c *Conn) Recv() (*iscsi.PDU, error) {
	c.C.SetReadDeadline(time.Now().Add(c.Timeout))
	p, err := iscsi.ReadPDU(c.C, iscsi.Framing{Digests: c.Digests, MaxDataSegment: c.MaxRecv})
	if err == nil {
		switch p.Opcode() {
		case iscsi.OpSCSIResponse, iscsi.OpNOPIn, iscsi.OpTextResp, iscsi.OpLogoutResp, iscsi.OpTaskMgmtResp, iscsi.OpReject:
			if p.Opcode() != iscsi.OpNOPIn || p.ITT() != iscsi.ReservedTag {
				c.ExpStatSN = p.StatSN() + 1
			}
		case iscsi.OpDataIn:
			if p.Flags()&iscsi.FlagStatus != 0 {
				c.ExpStatSN = p.StatSN() + 1
			}
		}
	}
	return p, err
}

// WaitClosed reports whether the target closes the connection (EOF or
// reset) within Timeout, discarding PDUs it sends meanwhile.
func (c *Conn) WaitClosed() error {
	for {
		_, err := c.Recv()
		if err == nil {
			continue
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return fmt.Errorf("connection still open after %v", c.Timeout)
		}
		return nil
	}
}

// LoginRequest builds a login request: stage csg to nsg with the T bit
// when transit, ISID and TSIH as given.
func LoginRequest(isid [6]byte, tsih uint16, csg, nsg int, transit bool, keys iscsi.Text) *iscsi.PDU {
	p := iscsi.New(iscsi.OpLoginReq)
	p.SetImmediate(true)
	f := byte(csg)<<2 | byte(nsg)
	if transit {
		f |= iscsi.FlagTransit
	}
	p.SetFlags(f)
	copy(p.BHS[8:14], isid[:])
	p.BHS[14], p.BHS[15] = byte(tsih>>8), byte(tsih)
	p.Data = keys.Encode()
	return p
}

// Login sends one request from stage csg straight to full feature phase
// and returns the response and its keys. On success it adopts the window,
// StatSN and digests the target answered.
func (c *Conn) Login(isid [6]byte, tsih uint16, csg int, keys iscsi.Text) (*iscsi.PDU, iscsi.Text, error) {
	req := LoginRequest(isid, tsih, csg, 3, true, keys)
	req.SetITT(c.NextITT())
	req.SetCmdSN(c.CmdSN)
	req.SetExpStatSN(c.ExpStatSN)
	if err := c.Send(req); err != nil {
		return nil, nil, err
	}
	resp, err := c.Recv()
	if err != nil {
		return nil, nil, err
	}
	kv, err := iscsi.ParseText(resp.Data)
	if err != nil {
		return resp, nil, err
	}
	if LoginStatus(resp) == 0 {
		c.CmdSN = resp.ExpCmdSN()
		c.MaxCmdSN = resp.MaxCmdSN()
		c.ExpStatSN = resp.StatSN() + 1
		if v, _ := kv.Get("HeaderDigest"); v == "CRC32C" {
			c.Digests.Header = true
		}
		if v, _ := kv.Get("DataDigest"); v == "CRC32C" {
			c.Digests.Data = true
		}
		if v, ok := keys.Get("MaxRecvDataSegmentLength"); ok {
			n, _ := strconv.Atoi(v)
			c.MaxRecv = uint32(n)
		}
	}
	return resp, kv, nil
}

// LoginStatus is a Login Response's status class and detail.
func LoginStatus(p *iscsi.PDU) uint16 { return uint16(p.BHS[36])<<8 | uint16(p.BHS[37]) }

// Normal dials addr and logs in to target as initiator with default
// parameters (plus extra keys).
func Normal(addr, initiator, target string, isid [6]byte, timeout time.Duration, extra ...iscsi.KV) (*Conn, error) {
	c, err := Dial(addr, timeout)
	if err != nil {
		return nil, err
	}
	keys := iscsi.Text{{Key: "InitiatorName", Value: initiator}, {Key: "TargetName", Value: target}, {Key: "SessionType", Value: "Normal"}}
	keys = append(keys, extra...)
	resp, _, err := c.Login(isid, 0, 1, keys)
	if err != nil {
		c.Close()
		return nil, err
	}
	if st := LoginStatus(resp); st != 0 {
		c.Close()
		return nil, fmt.Errorf("login to %s at %s: status 0x%04x", target, addr, st)
	}
	return c, nil
}

// LUNField encodes LUN n as the 8-byte SAM LUN field (peripheral addressing
// below 256, flat space above).
func LUNField(n int) uint64 {
	if n < 256 {
		return uint64(n) << 48
	}
	return (0x40|uint64(n>>8)&0x3f)<<56 | uint64(n&0xff)<<48
}

// Result is the outcome of Command.
type Result struct {
	Status   byte
	Sense    []byte
	Data     []byte
	Flags    byte // of the PDU that carried status
	Residual uint32
	DataIns  int
}

// SenseKey returns the sense key, ASC and ASCQ of fixed-format sense.
func (r *Result) SenseKey() (key, asc, ascq byte) {
	if len(r.Sense) < 14 {
		return 0, 0, 0
	}
	return r.Sense[2] & 0x0f, r.Sense[12], r.Sense[13]
}

// Command runs one non-immediate SCSI command: readLen bytes expected in,
// or write sent out in answer to R2Ts (no immediate or unsolicited data).
func (c *Conn) Command(lun int, cdb []byte, readLen int, write []byte) (*Result, error) {
	p := iscsi.New(iscsi.OpSCSICommand)
	flags := byte(iscsi.FlagFinal | iscsi.AttrSimple)
	edtl := readLen
	if readLen > 0 {
		flags |= iscsi.FlagRead
	}
	if write != nil {
		flags |= iscsi.FlagWrite
		edtl = len(write)
	}
	p.SetFlags(flags)
	p.SetLUN(LUNField(lun))
	itt := c.NextITT()
	p.SetITT(itt)
	p.SetExpectedDataLength(uint32(edtl))
	p.SetCmdSN(c.CmdSN)
	c.CmdSN++
	p.SetExpStatSN(c.ExpStatSN)
	copy(p.CDB(), cdb)
	if err := c.Send(p); err != nil {
		return nil, err
	}
	res := &Result{}
	for {
		r, err := c.Recv()
		if err != nil {
			return nil, err
		}
		if r.ITT() != itt {
			return nil, fmt.Errorf("got %s for ITT 0x%x while waiting for 0x%x", r, r.ITT(), itt)
		}
		switch r.Opcode() {
		case iscsi.OpDataIn:
			res.DataIns++
			off := int(r.BufferOffset())
			if need := off + len(r.Data); need > len(res.Data) {
				res.Data = append(res.Data, make([]byte, need-len(res.Data))...)
			}
			copy(res.Data[off:], r.Data)
			if r.Flags()&iscsi.FlagStatus != 0 {
				res.Status, res.Flags, res.Residual = r.BHS[3], r.Flags(), r.ResidualCount()
				return res, nil
			}
		case iscsi.OpR2T:
			off, n := r.BufferOffset(), r.ResidualCount()
			var sn uint32
			for done := uint32(0); done < n; sn++ {
				k := min(n-done, c.MaxRecvOut())
				d := iscsi.New(iscsi.OpDataOut)
				d.SetLUN(LUNField(lun))
				d.SetITT(itt)
				d.SetTTT(r.TTT())
				d.SetExpStatSN(c.ExpStatSN)
				d.SetDataSN(sn)
				d.SetBufferOffset(off + done)
				d.Data = write[off+done : off+done+k]
				done += k
				if done == n {
					d.SetFlags(iscsi.FlagFinal)
				}
				if err := c.Send(d); err != nil {
					return nil, err
				}
			}
		case iscsi.OpSCSIResponse:
			res.Status, res.Flags, res.Residual = r.BHS[3], r.Flags(), r.ResidualCount()
			if len(r.Data) >= 2 {
				n := int(binary.BigEndian.Uint16(r.Data))
				res.Sense = r.Data[2:min(len(r.Data), 2+n)]
			}
			return res, nil
		default:
			return nil, fmt.Errorf("unexpected %s", r)
		}
	}
}

// MaxRecvOut is the Data-Out segment size this initiator uses: the
// target's default receive limit, always acceptable.
func (c *Conn) MaxRecvOut() uint32 { return iscsi.DefaultMaxRecvDataSegmentLength }

// CheckGood turns a non-GOOD result into an error.
func (r *Result) CheckGood() error {
	if r.Status != 0 {
		k, asc, ascq := r.SenseKey()
		return fmt.Errorf("status 0x%02x sense %02x/%02x/%02x", r.Status, k, asc, ascq)
	}
	return nil
}

// Read10 and Write10 build READ(10)/WRITE(10) CDBs.
func Read10(lba uint32, blocks uint16) []byte {
	cdb := []byte{0x28, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(cdb[2:], lba)
	binary.BigEndian.PutUint16(cdb[7:], blocks)
	return cdb
}

// Write10 builds a WRITE(10) CDB.
func Write10(lba uint32, blocks uint16) []byte {
	cdb := Read10(lba, blocks)
	cdb[0] = 0x2a
	return cdb
}

// Inquiry builds an INQUIRY CDB.
func Inquiry(evpd bool, page byte, alloc uint16) []byte {
	cdb := []byte{0x12, 0, page, 0, 0, 0}
	if evpd {
		cdb[1] = 1
	}
	binary.BigEndian.PutUint16(cdb[3:], alloc)
	return cdb
}

// NAA returns "naa.<hex>" from the NAA designator of VPD page 0x83.
func NAA(vpd []byte) (string, error) {
	if len(vpd) < 4 || vpd[1] != 0x83 {
		return "", errors.New("not VPD page 0x83")
	}
	end := min(len(vpd), 4+int(binary.BigEndian.Uint16(vpd[2:])))
	for i := 4; i+4 <= end; {
		n := int(vpd[i+3])
		if i+4+n > end {
			break
		}
		if vpd[i+1]&0x0f == 3 && vpd[i+1]&0x30 == 0 { // NAA, associated with the LU
			return fmt.Sprintf("naa.%x", vpd[i+4:i+4+n]), nil
		}
		i += 4 + n
	}
	return "", errors.New("VPD page 0x83 has no logical-unit NAA designator")
}
