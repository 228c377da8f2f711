// Package iscsi is the iSCSI wire format (RFC 7143) shared by certkit's
// target front end (targets/) and the emulated host's software initiator:
// PDU framing with optional CRC32C digests, the Basic Header Segment fields,
// and login/text key=value data.
//
// A PDU keeps its 48-byte Basic Header Segment as raw bytes and exposes the
// fields by accessor. The meaning of bytes 20..47 depends on the opcode
// (RFC 7143 §11); the named accessors below cover the fields certkit uses,
// and U32/SetU32 reach any other.
package iscsi

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// Opcode is the 6-bit iSCSI opcode (RFC 7143 §11.2.1.2).
type Opcode uint8

// Initiator opcodes.
const (
	OpNOPOut      Opcode = 0x00
	OpSCSICommand Opcode = 0x01
	OpTaskMgmtReq Opcode = 0x02
	OpLoginReq    Opcode = 0x03
	OpTextReq     Opcode = 0x04
	OpDataOut     Opcode = 0x05
	OpLogoutReq   Opcode = 0x06
	OpSNACKReq    Opcode = 0x10
)

// Target opcodes.
const (
	OpNOPIn        Opcode = 0x20
	OpSCSIResponse Opcode = 0x21
	OpTaskMgmtResp Opcode = 0x22
	OpLoginResp    Opcode = 0x23
	OpTextResp     Opcode = 0x24
	OpDataIn       Opcode = 0x25
	OpLogoutResp   Opcode = 0x26
	OpR2T          Opcode = 0x31
	OpAsyncMsg     Opcode = 0x32
	OpReject       Opcode = 0x3f
)

var opcodeNames = map[Opcode]string{
	OpNOPOut: "NOP-Out", OpSCSICommand: "SCSI Command", OpTaskMgmtReq: "Task Management Request",
	OpLoginReq: "Login Request", OpTextReq: "Text Request", OpDataOut: "SCSI Data-Out",
	OpLogoutReq: "Logout Request", OpSNACKReq: "SNACK Request",
	OpNOPIn: "NOP-In", OpSCSIResponse: "SCSI Response", OpTaskMgmtResp: "Task Management Response",
	OpLoginResp: "Login Response", OpTextResp: "Text Response", OpDataIn: "SCSI Data-In",
	OpLogoutResp: "Logout Response", OpR2T: "R2T", OpAsyncMsg: "Asynchronous Message", OpReject: "Reject",
}

func (o Opcode) String() string {
	if n, ok := opcodeNames[o]; ok {
		return n
	}
	return fmt.Sprintf("opcode 0x%02x", uint8(o))
}

// BHSLen is the length of the Basic Header Segment.
const BHSLen = 48

// ReservedTag is the all-ones value RFC 7143 uses for "no task tag" (ITT/TTT).
const ReservedTag uint32 = 0xffffffff

// Flag bits in byte 1.
const (
	FlagFinal    = 0x80 // F: final PDU of a sequence
	FlagContinue = 0x40 // C: text/login continues (same bit as R in SCSI Command)
	FlagRead     = 0x40 // R: SCSI Command reads
	FlagWrite    = 0x20 // W: SCSI Command writes
	FlagTransit  = 0x80 // T: login stage transition (same bit as F)
	FlagAck      = 0x40 // A: Data-In acknowledge requested
	FlagOverflow = 0x04 // O: residual overflow (SCSI Response, Data-In)
	FlagUnder    = 0x02 // U: residual underflow
	FlagStatus   = 0x01 // S: Data-In carries status
)

// Task attributes (SCSI Command byte 1, low 3 bits).
const (
	AttrUntagged = 0
	AttrSimple   = 1
	AttrOrdered  = 2
	AttrHOQ      = 3
	AttrACA      = 4
)

// PDU is one iSCSI PDU.
type PDU struct {
	BHS  [BHSLen]byte
	AHS  []byte // additional header segments, a multiple of 4 bytes
	Data []byte // data segment, unpadded
}

// New returns a PDU with the opcode set and every tag reserved.
func New(op Opcode) *PDU {
	p := &PDU{}
	p.BHS[0] = byte(op) & 0x3f
	p.SetITT(ReservedTag)
	return p
}

// Opcode returns the PDU's opcode.
func (p *PDU) Opcode() Opcode { return Opcode(p.BHS[0] & 0x3f) }

// Immediate reports the I bit (request delivered for immediate execution).
func (p *PDU) Immediate() bool { return p.BHS[0]&0x40 != 0 }

// SetImmediate sets or clears the I bit.
func (p *PDU) SetImmediate(v bool) { setBit(&p.BHS[0], 0x40, v) }

// Flags returns byte 1.
func (p *PDU) Flags() byte { return p.BHS[1] }

// SetFlags sets byte 1.
func (p *PDU) SetFlags(f byte) { p.BHS[1] = f }

// Final reports the F bit.
func (p *PDU) Final() bool { return p.BHS[1]&FlagFinal != 0 }

// DataSegmentLength is the length the header declares for the data segment.
func (p *PDU) DataSegmentLength() uint32 {
	return uint32(p.BHS[5])<<16 | uint32(p.BHS[6])<<8 | uint32(p.BHS[7])
}

// LUN returns bytes 8..15 (LUN field; ISID+TSIH in login PDUs).
func (p *PDU) LUN() uint64 { return binary.BigEndian.Uint64(p.BHS[8:16]) }

// SetLUN sets bytes 8..15.
func (p *PDU) SetLUN(v uint64) { binary.BigEndian.PutUint64(p.BHS[8:16], v) }

// ITT is the Initiator Task Tag (bytes 16..19).
func (p *PDU) ITT() uint32 { return p.U32(16) }

// SetITT sets the Initiator Task Tag.
func (p *PDU) SetITT(v uint32) { p.SetU32(16, v) }

// TTT is the Target Transfer Tag (bytes 20..23) of NOP, Data-Out, R2T, Text.
func (p *PDU) TTT() uint32 { return p.U32(20) }

// SetTTT sets the Target Transfer Tag.
func (p *PDU) SetTTT(v uint32) { p.SetU32(20, v) }

// CmdSN is bytes 24..27 of a request.
func (p *PDU) CmdSN() uint32 { return p.U32(24) }

// SetCmdSN sets bytes 24..27 of a request.
func (p *PDU) SetCmdSN(v uint32) { p.SetU32(24, v) }

// ExpStatSN is bytes 28..31 of a request.
func (p *PDU) ExpStatSN() uint32 { return p.U32(28) }

// SetExpStatSN sets bytes 28..31 of a request.
func (p *PDU) SetExpStatSN(v uint32) { p.SetU32(28, v) }

// StatSN is bytes 24..27 of a response.
func (p *PDU) StatSN() uint32 { return p.U32(24) }

// SetStatSN sets bytes 24..27 of a response.
func (p *PDU) SetStatSN(v uint32) { p.SetU32(24, v) }

// ExpCmdSN is bytes 28..31 of a response.
func (p *PDU) ExpCmdSN() uint32 { return p.U32(28) }

// SetExpCmdSN sets bytes 28..31 of a response.
func (p *PDU) SetExpCmdSN(v uint32) { p.SetU32(28, v) }

// MaxCmdSN is bytes 32..35 of a response.
func (p *PDU) MaxCmdSN() uint32 { return p.U32(32) }

// SetMaxCmdSN sets bytes 32..35 of a response.
func (p *PDU) SetMaxCmdSN(v uint32) { p.SetU32(32, v) }

// ExpectedDataLength is bytes 20..23 of a SCSI Command.
func (p *PDU) ExpectedDataLength() uint32 { return p.U32(20) }

// SetExpectedDataLength sets bytes 20..23 of a SCSI Command.
func (p *PDU) SetExpectedDataLength(v uint32) { p.SetU32(20, v) }

// CDB returns the 16-byte CDB of a SCSI Command (bytes 32..47), aliased.
func (p *PDU) CDB() []byte { return p.BHS[32:48] }

// DataSN is bytes 36..39 of Data-In/Data-Out (R2TSN in an R2T).
func (p *PDU) DataSN() uint32 { return p.U32(36) }

// SetDataSN sets bytes 36..39.
func (p *PDU) SetDataSN(v uint32) { p.SetU32(36, v) }

// BufferOffset is bytes 40..43 of Data-In/Data-Out/R2T.
func (p *PDU) BufferOffset() uint32 { return p.U32(40) }

// SetBufferOffset sets bytes 40..43.
func (p *PDU) SetBufferOffset(v uint32) { p.SetU32(40, v) }

// ResidualCount is bytes 44..47 of Data-In and SCSI Response;
// in an R2T the same bytes are the Desired Data Transfer Length.
func (p *PDU) ResidualCount() uint32 { return p.U32(44) }

// SetResidualCount sets bytes 44..47.
func (p *PDU) SetResidualCount(v uint32) { p.SetU32(44, v) }

// U32 reads the big-endian 32-bit field at byte offset off of the BHS.
func (p *PDU) U32(off int) uint32 { return binary.BigEndian.Uint32(p.BHS[off : off+4]) }

// SetU32 writes the big-endian 32-bit field at byte offset off of the BHS.
func (p *PDU) SetU32(off int, v uint32) { binary.BigEndian.PutUint32(p.BHS[off:off+4], v) }

func (p *PDU) String() string {
	return fmt.Sprintf("%s itt=0x%08x flags=0x%02x dlen=%d", p.Opcode(), p.ITT(), p.Flags(), len(p.Data))
}

func setBit(b *byte, mask byte, v bool) {
	if v {
		*b |= mask
	} else {
		*b &^= mask
	}
}

// Digests says which digests a connection negotiated (HeaderDigest, DataDigest).
type Digests struct {
	Header bool
	Data   bool
}

// Framing bounds what ReadPDU accepts from a peer.
type Framing struct {
	Digests
	// MaxDataSegment is the largest data segment accepted: the
	// MaxRecvDataSegmentLength this side declared (8192 before login ends).
	MaxDataSegment uint32
}

// DefaultMaxRecvDataSegmentLength applies until login negotiates another value.
const DefaultMaxRecvDataSegmentLength = 8192

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// CRC32C is the iSCSI digest function (RFC 7143 §13.1).
func CRC32C(parts ...[]byte) uint32 {
	var c uint32
	for _, b := range parts {
		c = crc32.Update(c, castagnoli, b)
	}
	return c
}

// Errors a peer can provoke; callers answer them with Reject or by closing.
var (
	ErrHeaderDigest = errors.New("iscsi: header digest mismatch")
	ErrDataDigest   = errors.New("iscsi: data digest mismatch")
	ErrTooLong      = errors.New("iscsi: data segment longer than negotiated MaxRecvDataSegmentLength")
)

// ReadPDU reads one PDU. A clean EOF before the first byte returns io.EOF;
// a PDU cut short returns io.ErrUnexpectedEOF. A digest mismatch returns the
// PDU read so far together with ErrHeaderDigest or ErrDataDigest, so a target
// can answer with Reject (RFC 7143 §7.8) naming the header.
func ReadPDU(r io.Reader, f Framing) (*PDU, error) {
	p := &PDU{}
	if _, err := io.ReadFull(r, p.BHS[:]); err != nil {
		return nil, err
	}
	ahsLen := int(p.BHS[4]) * 4
	if ahsLen > 0 {
		p.AHS = make([]byte, ahsLen)
		if err := readFull(r, p.AHS); err != nil {
			return nil, err
		}
	}
	if f.Header {
		var d [4]byte
		if err := readFull(r, d[:]); err != nil {
			return nil, err
		}
		if binary.LittleEndian.Uint32(d[:]) != CRC32C(p.BHS[:], p.AHS) {
			return p, ErrHeaderDigest
		}
	}
	n := p.DataSegmentLength()
	if n == 0 {
		return p, nil
	}
	max := f.MaxDataSegment
	if max == 0 {
		max = DefaultMaxRecvDataSegmentLength
	}
	if n > max {
		return p, fmt.Errorf("%w: %s declares %d bytes, limit %d", ErrTooLong, p.Opcode(), n, max)
	}
	buf := make([]byte, pad4(int(n)))
	if err := readFull(r, buf); err != nil {
		return nil, err
	}
	p.Data = buf[:n]
	if f.Data {
		var d [4]byte
		if err := readFull(r, d[:]); err != nil {
			return nil, err
		}
		if binary.LittleEndian.Uint32(d[:]) != CRC32C(buf) {
			return p, ErrDataDigest
		}
	}
	return p, nil
}

func readFull(r io.Reader, b []byte) error {
	_, err := io.ReadFull(r, b)
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// Marshal encodes the PDU, setting TotalAHSLength and DataSegmentLength from
// AHS and Data and appending padding and the negotiated digests.
func (p *PDU) Marshal(d Digests) ([]byte, error) {
	if len(p.AHS)%4 != 0 || len(p.AHS)/4 > 255 {
		return nil, fmt.Errorf("iscsi: %s: AHS length %d is not a multiple of 4 up to 1020", p.Opcode(), len(p.AHS))
	}
	if len(p.Data) > 1<<24-1 {
		return nil, fmt.Errorf("iscsi: %s: data segment of %d bytes exceeds 24 bits", p.Opcode(), len(p.Data))
	}
	p.BHS[4] = byte(len(p.AHS) / 4)
	n := len(p.Data)
	p.BHS[5], p.BHS[6], p.BHS[7] = byte(n>>16), byte(n>>8), byte(n)
	size := BHSLen + len(p.AHS) + pad4(n)
	if d.Header {
		size += 4
	}
	if d.Data && n > 0 {
		size += 4
	}
	out := make([]byte, 0, size)
	out = append(out, p.BHS[:]...)
	out = append(out, p.AHS...)
	if d.Header {
		out = binary.LittleEndian.AppendUint32(out, CRC32C(out))
	}
	if n > 0 {
		start := len(out)
		out = append(out, p.Data...)
		out = append(out, make([]byte, pad4(n)-n)...)
		if d.Data {
			out = binary.LittleEndian.AppendUint32(out, CRC32C(out[start:]))
		}
	}
	return out, nil
}

// WritePDU marshals p and writes it in one Write call.
func WritePDU(w io.Writer, p *PDU, d Digests) error {
	b, err := p.Marshal(d)
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

func pad4(n int) int { return (n + 3) &^ 3 }
