package initiator

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/certkit/certkit/iscsi"
)

// Result is the outcome of a SCSI command the target completed.
type Result struct {
	Status byte   // SCSI status, 0 = GOOD
	Sense  []byte // sense data, if the target sent any
	Data   []byte // what the target read back (Data-In), in order
	// Residual is the iSCSI residual count: bytes of the expected transfer
	// that did not move (underflow), negative for an overflow.
	Residual int
}

// SCSI status codes (SAM-5).
const (
	StatusGood                = 0x00
	StatusCheckCondition      = 0x02
	StatusConditionMet        = 0x04
	StatusBusy                = 0x08
	StatusReservationConflict = 0x18
	StatusTaskSetFull         = 0x28
	StatusACAActive           = 0x30
	StatusTaskAborted         = 0x40
)

var statusNames = map[byte]string{
	StatusGood: "GOOD", StatusCheckCondition: "CHECK CONDITION", StatusConditionMet: "CONDITION MET",
	StatusBusy: "BUSY", StatusReservationConflict: "RESERVATION CONFLICT", StatusTaskSetFull: "TASK SET FULL",
	StatusACAActive: "ACA ACTIVE", StatusTaskAborted: "TASK ABORTED",
}

var senseKeyNames = [16]string{
	"NO SENSE", "RECOVERED ERROR", "NOT READY", "MEDIUM ERROR", "HARDWARE ERROR", "ILLEGAL REQUEST",
	"UNIT ATTENTION", "DATA PROTECT", "BLANK CHECK", "VENDOR SPECIFIC", "COPY ABORTED", "ABORTED COMMAND",
	"RESERVED (0xC)", "VOLUME OVERFLOW", "MISCOMPARE", "COMPLETED",
}

// The additional sense codes certification cares about (SPC-4 annex).
var ascNames = map[uint16]string{
	0x0400: "logical unit not ready, cause not reportable",
	0x0402: "logical unit not ready, initializing command required",
	0x040a: "logical unit not accessible, asymmetric access state transition",
	0x040b: "logical unit not accessible, target port in standby state",
	0x040c: "logical unit not accessible, target port in unavailable state",
	0x1d00: "miscompare during verify operation",
	0x2000: "invalid command operation code",
	0x2100: "logical block address out of range",
	0x2400: "invalid field in CDB",
	0x2500: "logical unit not supported",
	0x2600: "invalid field in parameter list",
	0x2700: "write protected",
	0x2800: "not ready to ready change, medium may have changed",
	0x2900: "power on, reset, or bus device reset occurred",
	0x2a01: "mode parameters changed",
	0x2a03: "reservations preempted",
	0x2a06: "asymmetric access state changed",
	0x2a09: "capacity data has changed",
	0x3a00: "medium not present",
	0x3f03: "inquiry data has changed",
	0x3f0e: "reported luns data has changed",
	0x4700: "scsi parity error",
	0x4b00: "data phase error",
}

// SCSIError is a command the target completed with a status other than
// GOOD; for CHECK CONDITION, Key/ASC/ASCQ come from the sense data.
type SCSIError struct {
	Status         byte
	Key, ASC, ASCQ byte
}

func (e *SCSIError) Error() string {
	st := statusNames[e.Status]
	if st == "" {
		st = fmt.Sprintf("status 0x%02x", e.Status)
	}
	if e.Status != StatusCheckCondition {
		return "scsi: " + st
	}
	msg := fmt.Sprintf("scsi: %s, sense key %s (0x%x), ASC/ASCQ 0x%02x/0x%02x", st, senseKeyNames[e.Key&0x0f], e.Key, e.ASC, e.ASCQ)
	if n := ascNames[uint16(e.ASC)<<8|uint16(e.ASCQ)]; n != "" {
		msg += " (" + n + ")"
	}
	return msg
}

// ParseSense extracts key, ASC and ASCQ from fixed (0x70/0x71) or
// descriptor (0x72/0x73) format sense data; what is missing reads as 0.
func ParseSense(sense []byte) (key, asc, ascq byte, ok bool) {
	at := func(i int) byte {
		if i < len(sense) {
			return sense[i]
		}
		return 0
	}
	switch at(0) & 0x7f {
	case 0x70, 0x71:
		return at(2) & 0x0f, at(12), at(13), len(sense) >= 3
	case 0x72, 0x73:
		return at(1) & 0x0f, at(2), at(3), len(sense) >= 2
	}
	return 0, 0, 0, false
}

var cdbNames = map[byte]string{
	0x00: "TEST UNIT READY", 0x03: "REQUEST SENSE", 0x12: "INQUIRY", 0x1a: "MODE SENSE(6)",
	0x25: "READ CAPACITY(10)", 0x28: "READ(10)", 0x2a: "WRITE(10)", 0x35: "SYNCHRONIZE CACHE(10)",
	0x5a: "MODE SENSE(10)", 0x88: "READ(16)", 0x8a: "WRITE(16)", 0x9e: "SERVICE ACTION IN(16)",
	0xa0: "REPORT LUNS", 0xa3: "MAINTENANCE IN",
}

func cdbName(op byte) string {
	if n, ok := cdbNames[op]; ok {
		return n
	}
	return fmt.Sprintf("SCSI opcode 0x%02x", op)
}

// EncodeLUN turns a LUN number into the 8-byte SAM LUN field: peripheral
// addressing below 256, flat addressing below 16384.
func EncodeLUN(lun uint64) (uint64, error) {
	switch {
	case lun < 256:
		return lun << 48, nil
	case lun < 1<<14:
		return (0x4000 | lun) << 48, nil
	}
	return 0, fmt.Errorf("LUN %d is beyond flat addressing (max 16383)", lun)
}

// DecodeLUN is the inverse of EncodeLUN for a REPORT LUNS entry.
func DecodeLUN(field uint64) (uint64, error) {
	hi := field >> 48
	if field&0xffff_ffff_ffff != 0 {
		return 0, fmt.Errorf("LUN %016x has more than one level", field)
	}
	switch hi >> 14 {
	case 0: // peripheral device addressing
		if hi>>8 != 0 {
			return 0, fmt.Errorf("LUN %016x addresses bus %d; only bus 0 is supported", field, hi>>8)
		}
		return hi & 0xff, nil
	case 1: // flat space addressing
		return hi & 0x3fff, nil
	}
	return 0, fmt.Errorf("LUN %016x uses an addressing method other than peripheral or flat", field)
}

// Command sends one SCSI command to lun (a LUN number, as ReportLUNs
// returns) and waits for its status. dataOut is written with immediate
// data, unsolicited Data-Out up to FirstBurstLength and R2T-driven Data-Out
// as negotiated; readLen bytes are read back. Bidirectional commands are
// not supported. A status other than GOOD returns the Result together with
// a *SCSIError. When ctx ends first, Command returns ctx.Err() and the
// session forgets the command.
func (s *Session) Command(ctx context.Context, lun uint64, cdb []byte, dataOut []byte, readLen int) (*Result, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if len(cdb) == 0 || len(cdb) > 16 {
		return nil, fmt.Errorf("%s: CDB of %d bytes; 1..16 are supported", s.what, len(cdb))
	}
	desc := fmt.Sprintf("%s of LUN %d", cdbName(cdb[0]), lun)
	if readLen < 0 || readLen > 1<<30 || len(dataOut) > 1<<30 {
		return nil, fmt.Errorf("%s: %s: transfer of %d/%d bytes is out of range", s.what, desc, len(dataOut), readLen)
	}
	if readLen > 0 && len(dataOut) > 0 {
		return nil, fmt.Errorf("%s: %s: bidirectional commands are not supported", s.what, desc)
	}
	lunField, err := EncodeLUN(lun)
	if err != nil {
		return nil, fmt.Errorf("%s: %s: %w", s.what, desc, err)
	}
	t, err := s.newTask(iscsi.OpSCSICommand, desc)
	if err != nil {
		return nil, err
	}
	t.read = make([]byte, readLen)
	t.writeLen = len(dataOut)

	p := iscsi.New(iscsi.OpSCSICommand)
	flags := byte(iscsi.AttrSimple)
	if readLen > 0 {
		flags |= iscsi.FlagRead
	}
	p.SetLUN(lunField)
	p.SetITT(t.itt)
	p.SetExpectedDataLength(uint32(readLen))
	copy(p.CDB(), cdb)
	var follow [][]byte
	if len(dataOut) > 0 {
		flags |= iscsi.FlagWrite
		p.SetExpectedDataLength(uint32(len(dataOut)))
		// Unsolicited data (RFC 7143 §4.2.5.1): immediate data in the
		// command PDU, then Data-Out without R2T, FirstBurstLength in all.
		first := min(len(dataOut), int(s.params.FirstBurstLength))
		sent := 0
		if s.params.ImmediateData {
			sent = min(first, int(s.params.TargetMaxRecvDataSegmentLength))
			p.Data = dataOut[:sent]
		}
		if !s.params.InitialR2T && sent < first {
			if follow, err = s.dataOut(t.itt, lunField, iscsi.ReservedTag, dataOut, uint32(sent), uint32(first-sent)); err != nil {
				s.forget(t)
				return nil, err
			}
		}
	}
	if len(follow) == 0 {
		flags |= iscsi.FlagFinal
	}
	p.SetFlags(flags)
	b, err := marshal(p)
	if err == nil {
		err = s.send(ctx, false, b, follow...)
	}
	if err != nil {
		s.forget(t)
		return nil, err
	}
	for {
		select {
		case <-t.done:
			if t.err != nil {
				return nil, t.err
			}
			res := &Result{Status: t.status, Sense: t.sense, Data: t.read[:t.got], Residual: t.residual}
			if t.status != StatusGood {
				e := &SCSIError{Status: t.status}
				if t.status == StatusCheckCondition {
					e.Key, e.ASC, e.ASCQ, _ = ParseSense(t.sense)
				}
				return res, e
			}
			return res, nil
		case <-t.r2tReady:
			for _, r := range t.takeR2Ts() {
				bufs, err := s.dataOut(t.itt, lunField, r.ttt, dataOut, r.off, r.len)
				if err == nil {
					err = s.sendData(bufs)
				}
				if err != nil {
					s.forget(t)
					return nil, err
				}
			}
		case <-ctx.Done():
			s.forget(t)
			return nil, ctx.Err()
		}
	}
}

// dataOut marshals one Data-Out sequence for data[off:off+n], each PDU at
// most the target's MaxRecvDataSegmentLength.
func (s *Session) dataOut(itt uint32, lun uint64, ttt uint32, data []byte, off, n uint32) ([][]byte, error) {
	seg := s.params.TargetMaxRecvDataSegmentLength
	var bufs [][]byte
	for sn, end := uint32(0), off+n; off < end; sn++ {
		l := min(seg, end-off)
		p := iscsi.New(iscsi.OpDataOut)
		if off+l == end {
			p.SetFlags(iscsi.FlagFinal)
		}
		p.SetLUN(lun)
		p.SetITT(itt)
		p.SetTTT(ttt)
		p.SetDataSN(sn)
		p.SetBufferOffset(off)
		p.Data = data[off : off+l]
		b, err := marshal(p)
		if err != nil {
			return nil, err
		}
		bufs = append(bufs, b)
		off += l
	}
	return bufs, nil
}

// TestUnitReady sends TEST UNIT READY. A pending UNIT ATTENTION comes back
// as *SCSIError, like any other condition: the helpers of this package
// never retry, so the caller sees every condition the target reports.
func (s *Session) TestUnitReady(ctx context.Context, lun uint64) error {
	if _, err := s.Command(ctx, lun, make([]byte, 6), nil, 0); err != nil {
		return fmt.Errorf("%s: TEST UNIT READY of LUN %d: %w", s.what, lun, err)
	}
	return nil
}

// ReportLUNs returns the LUN numbers the target reports (REPORT LUNS, select report 0).
func (s *Session) ReportLUNs(ctx context.Context) ([]uint64, error) {
	alloc := uint32(4096)
	for range 2 {
		cdb := make([]byte, 12)
		cdb[0] = 0xa0
		binary.BigEndian.PutUint32(cdb[6:10], alloc)
		res, err := s.Command(ctx, 0, cdb, nil, int(alloc))
		if err != nil {
			return nil, fmt.Errorf("%s: REPORT LUNS: %w", s.what, err)
		}
		d := res.Data
		if len(d) < 8 {
			return nil, fmt.Errorf("%s: REPORT LUNS returned %d bytes, less than its 8-byte header", s.what, len(d))
		}
		n := binary.BigEndian.Uint32(d)
		if 8+uint64(n) > uint64(len(d)) && len(d) == int(alloc) && alloc < 1<<20 {
			alloc = 8 + n
			continue
		}
		var luns []uint64
		for i := 8; i+8 <= len(d) && i < 8+int(n); i += 8 {
			lun, err := DecodeLUN(binary.BigEndian.Uint64(d[i:]))
			if err != nil {
				return nil, fmt.Errorf("%s: REPORT LUNS: %w", s.what, err)
			}
			luns = append(luns, lun)
		}
		return luns, nil
	}
	return nil, fmt.Errorf("%s: REPORT LUNS: list keeps growing", s.what)
}

// Inquiry returns standard INQUIRY data (evpd false, page 0) or the VPD
// page, trimmed to the length the data declares.
func (s *Session) Inquiry(ctx context.Context, lun uint64, evpd bool, page byte) ([]byte, error) {
	what := fmt.Sprintf("%s: INQUIRY of LUN %d", s.what, lun)
	if evpd {
		what += fmt.Sprintf(" (VPD page 0x%02x)", page)
	} else if page != 0 {
		return nil, fmt.Errorf("%s: page 0x%02x needs evpd", what, page)
	}
	alloc := 1024
	for range 2 {
		cdb := make([]byte, 6)
		cdb[0] = 0x12
		if evpd {
			cdb[1] = 1
		}
		cdb[2] = page
		binary.BigEndian.PutUint16(cdb[3:5], uint16(alloc))
		res, err := s.Command(ctx, lun, cdb, nil, alloc)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		d := res.Data
		if len(d) < 4 || !evpd && len(d) < 5 {
			return nil, fmt.Errorf("%s: only %d bytes came back", what, len(d))
		}
		want := int(d[4]) + 5
		if evpd {
			if d[1] != page {
				return nil, fmt.Errorf("%s: target returned page 0x%02x", what, d[1])
			}
			want = int(binary.BigEndian.Uint16(d[2:4])) + 4
		}
		if want > len(d) && len(d) == alloc && alloc < 0xffff {
			alloc = min(want, 0xffff)
			continue
		}
		return d[:min(want, len(d))], nil
	}
	return nil, fmt.Errorf("%s: data keeps growing", what)
}

// ReadCapacity returns the number of blocks and the block size, with READ
// CAPACITY(16) when the LUN is too large for READ CAPACITY(10).
func (s *Session) ReadCapacity(ctx context.Context, lun uint64) (blocks uint64, blockSize uint32, err error) {
	cdb := make([]byte, 10)
	cdb[0] = 0x25
	res, err := s.Command(ctx, lun, cdb, nil, 8)
	if err != nil {
		return 0, 0, fmt.Errorf("%s: READ CAPACITY(10) of LUN %d: %w", s.what, lun, err)
	}
	if len(res.Data) < 8 {
		return 0, 0, fmt.Errorf("%s: READ CAPACITY(10) of LUN %d returned %d bytes, expected 8", s.what, lun, len(res.Data))
	}
	last, bs := binary.BigEndian.Uint32(res.Data), binary.BigEndian.Uint32(res.Data[4:])
	if last != 0xffffffff {
		return uint64(last) + 1, bs, nil
	}
	cdb = make([]byte, 16)
	cdb[0], cdb[1] = 0x9e, 0x10
	binary.BigEndian.PutUint32(cdb[10:14], 32)
	res, err = s.Command(ctx, lun, cdb, nil, 32)
	if err != nil {
		return 0, 0, fmt.Errorf("%s: READ CAPACITY(16) of LUN %d: %w", s.what, lun, err)
	}
	if len(res.Data) < 12 {
		return 0, 0, fmt.Errorf("%s: READ CAPACITY(16) of LUN %d returned %d bytes, expected 32", s.what, lun, len(res.Data))
	}
	return binary.BigEndian.Uint64(res.Data) + 1, binary.BigEndian.Uint32(res.Data[8:]), nil
}

// rwCDB builds READ/WRITE(10) when LBA and length fit, else (16).
func rwCDB(write bool, lba uint64, blocks uint32) []byte {
	if lba <= 0xffffffff && blocks <= 0xffff {
		cdb := make([]byte, 10)
		cdb[0] = 0x28
		if write {
			cdb[0] = 0x2a
		}
		binary.BigEndian.PutUint32(cdb[2:6], uint32(lba))
		binary.BigEndian.PutUint16(cdb[7:9], uint16(blocks))
		return cdb
	}
	cdb := make([]byte, 16)
	cdb[0] = 0x88
	if write {
		cdb[0] = 0x8a
	}
	binary.BigEndian.PutUint64(cdb[2:10], lba)
	binary.BigEndian.PutUint32(cdb[10:14], blocks)
	return cdb
}

// Read reads blocks blocks of blockSize bytes from lba.
func (s *Session) Read(ctx context.Context, lun, lba uint64, blocks uint32, blockSize uint32) ([]byte, error) {
	n := uint64(blocks) * uint64(blockSize)
	if blocks == 0 || blockSize == 0 || n > 1<<30 {
		return nil, fmt.Errorf("%s: read of %d blocks of %d bytes: need 1..1 GiB", s.what, blocks, blockSize)
	}
	res, err := s.Command(ctx, lun, rwCDB(false, lba, blocks), nil, int(n))
	if err != nil {
		return nil, fmt.Errorf("%s: read of LUN %d at LBA %d: %w", s.what, lun, lba, err)
	}
	if uint64(len(res.Data)) != n {
		return nil, fmt.Errorf("%s: read of LUN %d at LBA %d: got %d of %d bytes", s.what, lun, lba, len(res.Data), n)
	}
	return res.Data, nil
}

// Write writes data, a whole number of blocks of blockSize bytes, at lba.
func (s *Session) Write(ctx context.Context, lun, lba uint64, data []byte, blockSize uint32) error {
	if blockSize == 0 || len(data) == 0 || len(data)%int(blockSize) != 0 || len(data) > 1<<30 {
		return fmt.Errorf("%s: write of %d bytes: need a whole number of %d-byte blocks, up to 1 GiB", s.what, len(data), blockSize)
	}
	res, err := s.Command(ctx, lun, rwCDB(true, lba, uint32(len(data)/int(blockSize))), data, 0)
	if err != nil {
		return fmt.Errorf("%s: write to LUN %d at LBA %d: %w", s.what, lun, lba, err)
	}
	if res.Residual != 0 {
		return fmt.Errorf("%s: write to LUN %d at LBA %d: target reports a residual of %d bytes", s.what, lun, lba, res.Residual)
	}
	return nil
}

// naaRank orders NAA formats the way ESXi picks a device name when a LUN
// reports several: IEEE Registered Extended (6) first, locally assigned (3)
// last among the known ones.
var naaRank = map[byte]int{6: 4, 5: 3, 2: 2, 3: 1}

// DeviceNAA returns "naa.<lowercase hex>" from the NAA designator with
// logical-unit association in a Device Identification VPD page (0x83), the
// name ESXi gives the device. With several (tgtd reports NAA 3 and NAA 6),
// the highest-ranked NAA format wins, then the first.
func DeviceNAA(vpd83 []byte) (string, error) {
	if len(vpd83) < 4 || vpd83[1] != 0x83 {
		return "", errors.New("device identification: not a VPD page 0x83")
	}
	end := min(len(vpd83), 4+int(binary.BigEndian.Uint16(vpd83[2:4])))
	var best []byte
	var seen []string
	for i := 4; i+4 <= end; {
		assoc, typ, n := (vpd83[i+1]>>4)&3, vpd83[i+1]&0x0f, int(vpd83[i+3])
		if i+4+n > end {
			return "", fmt.Errorf("device identification: designator at byte %d runs past the page", i)
		}
		d := vpd83[i+4 : i+4+n]
		if typ == 3 && assoc == 0 && n > 0 {
			if best == nil || naaRank[d[0]>>4] > naaRank[best[0]>>4] {
				best = d
			}
		} else {
			seen = append(seen, fmt.Sprintf("type %d/association %d", typ, assoc))
		}
		i += 4 + n
	}
	if best == nil {
		return "", fmt.Errorf("device identification: no NAA designator for the logical unit (found %v); configure the LUN with an NAA identifier", seen)
	}
	return "naa." + hex.EncodeToString(best), nil
}
