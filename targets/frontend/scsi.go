package frontend

import (
	"encoding/binary"

	"github.com/certkit/certkit/iscsi"
	"github.com/gostor/gotgt/pkg/api"
)

// noLUN is the LUN number given to gotgt for a LUN field this front end
// cannot decode; no LU has it, so the SCSI layer answers it as absent.
const noLUN = ^uint64(0)

// lunNumber decodes a single-level SAM LUN field (peripheral or flat space
// addressing, as REPORT LUNS hands them out).
func lunNumber(field uint64) uint64 {
	b0, b1 := byte(field>>56), byte(field>>48)
	switch b0 >> 6 {
	case 0: // peripheral device addressing, bus 0
		if b0 == 0 {
			return uint64(b1)
		}
	case 1: // flat space addressing
		return uint64(b0&0x3f)<<8 | uint64(b1)
	}
	return noLUN
}

// GotgtLUN is how gotgt's SCSITargetService reads api.SCSICommand.Lun: the
// LUN number in host byte order (it casts the array to a uint64).
func GotgtLUN(cmd *api.SCSICommand) uint64 { return binary.NativeEndian.Uint64(cmd.Lun[:]) }

// minInBuffer keeps gotgt's emulation from indexing past a short Data-In
// buffer (MODE SENSE writes fixed offsets); only EDTL bytes are ever sent.
const minInBuffer = 512

// isRead reports the READ opcodes: their data comes from the medium, and
// InSDBBuffer.Resid says exactly how much (never "the whole buffer").
func isRead(op byte) bool { return op == 0x08 || op == 0x28 || op == 0xa8 || op == 0x88 }

// command builds the api.SCSICommand for a task the way gotgt's own
// iscsit fills it: ITNexusID of the session, LUN number in host byte order,
// ITT as tag, the relative target port from the portal's TPGT, and non-nil
// data buffers. The Data-In buffer is pooled; it is zeroed unless the
// command is a READ, whose data the SCSI layer supplies in full.
func (s *session) command(t *task) *api.SCSICommand {
	lun := lunNumber(t.lun)
	cmd := &t.cmd
	*cmd = api.SCSICommand{
		OpCode:          t.cdb[0],
		State:           api.SCSICommandQueued,
		SCB:             t.cdb,
		SCBLength:       len(t.cdb),
		Attribute:       t.attr,
		Tag:             uint64(t.itt),
		RelTargetPortID: s.tpgt,
		ITNexusLuInfo:   &t.luInfo,
	}
	t.luInfo = api.ITNexusLuInfo{ID: lun}
	if s.nexus != nil {
		cmd.ITNexusID = s.nexus.ID
		cmd.ITNexus = s.nexus
	}
	binary.NativeEndian.PutUint64(cmd.Lun[:], lun)
	switch {
	case t.read && t.write:
		cmd.Direction = api.SCSIDataBidirection
	case t.read:
		cmd.Direction = api.SCSIDataRead
	case t.write:
		cmd.Direction = api.SCSIDataWrite
	default:
		cmd.Direction = api.SCSIDataNone
	}
	inLen := uint32(0)
	if t.read && !t.tooLarge {
		inLen = t.edtl
	}
	in := getBuf(int(max(inLen, minInBuffer)))
	if !isRead(t.cdb[0]) {
		clear(in)
	}
	t.in = api.SCSIDataBuffer{Buffer: in, Length: inLen}
	t.out = api.SCSIDataBuffer{Buffer: t.buf, Length: uint32(len(t.buf))}
	cmd.InSDBBuffer = &t.in
	cmd.OutSDBBuffer = &t.out
	return cmd
}

// execute runs the task in the SCSI layer and returns its response PDUs.
func (s *session) execute(t *task) []txPDU {
	cmd := s.command(t)
	pooled := t.in.Buffer
	switch {
	case t.tooLarge, t.read && t.write:
		// Bidirectional commands are not supported; oversize transfers are
		// refused: INVALID FIELD IN CDB.
		setSense(cmd, 0x05, 0x24, 0x00)
	default:
		s.callSCSI(cmd)
	}
	return s.responses(t, cmd, pooled)
}

// callSCSI calls the SCSI layer, turning a panic in it (gotgt has paths that
// index short buffers) into CHECK CONDITION, HARDWARE ERROR, INTERNAL
// TARGET FAILURE instead of killing the process.
func (s *session) callSCSI(cmd *api.SCSICommand) {
	defer func() {
		if r := recover(); r != nil {
			s.logf("SCSI layer panicked on opcode 0x%02x: %v", cmd.OpCode, r)
			setSense(cmd, 0x04, 0x44, 0x00)
		}
	}()
	s.tgt.SCSI.Execute(cmd)
}

// setSense makes cmd end with CHECK CONDITION and fixed-format sense.
func setSense(cmd *api.SCSICommand, key, asc, ascq byte) {
	b := make([]byte, 18)
	b[0] = 0x70
	b[2] = key
	b[7] = 10
	b[12], b[13] = asc, ascq
	cmd.Result = api.SAM_STAT_CHECK_CONDITION
	cmd.SenseBuffer = &api.SenseBuffer{Buffer: b, Length: uint32(len(b))}
}

// allocationLength is the CDB's allocation length for the data-in commands
// gotgt may answer with more than was asked (its Resid then exceeds EDTL).
func allocationLength(cdb []byte) (uint32, bool) {
	be16 := func(i int) uint32 { return uint32(binary.BigEndian.Uint16(cdb[i:])) }
	be32 := func(i int) uint32 { return binary.BigEndian.Uint32(cdb[i:]) }
	switch cdb[0] {
	case 0x12: // INQUIRY
		return be16(3), true
	case 0x03, 0x1a: // REQUEST SENSE, MODE SENSE(6)
		return uint32(cdb[4]), true
	case 0x5a, 0x5e: // MODE SENSE(10), PERSISTENT RESERVE IN
		return be16(7), true
	case 0xa0, 0xa3: // REPORT LUNS, MAINTENANCE IN
		return be32(6), true
	case 0x9e: // SERVICE ACTION IN(16)
		return be32(10), true
	}
	return 0, false
}

// residual says how the transfer compares with the Expected Data Transfer
// Length: flag is iscsi.FlagOverflow, iscsi.FlagUnder or 0.
func residual(edtl, wanted uint32) (flag byte, count uint32) {
	switch {
	case wanted > edtl:
		return iscsi.FlagOverflow, wanted - edtl
	case wanted < edtl:
		return iscsi.FlagUnder, edtl - wanted
	}
	return 0, 0
}

// responses turns an executed command into Data-In PDUs and status. Good
// status of a read rides in the last Data-In (S bit); anything with sense
// gets its own SCSI Response. Data-In PDUs point into the command's buffer;
// the last PDU gives the pooled buffer back once it is written and takes
// the task out of the table.
func (s *session) responses(t *task, cmd *api.SCSICommand, pooled []byte) []txPDU {
	status := cmd.Result
	var sense []byte
	if status != api.SAM_STAT_GOOD && cmd.SenseBuffer != nil {
		n := min(int(cmd.SenseBuffer.Length), len(cmd.SenseBuffer.Buffer))
		sense = cmd.SenseBuffer.Buffer[:n]
	}
	var data []byte
	var resFlag byte
	var resCount uint32
	switch {
	case t.read && !t.write && status == api.SAM_STAT_GOOD:
		// gotgt's Resid is the number of bytes the command produced, 0
		// meaning "the whole buffer" (except for READs, where it is exact).
		in := cmd.InSDBBuffer
		n, wanted := t.edtl, t.edtl
		if in.Resid < t.edtl && (in.Resid > 0 || isRead(t.cdb[0])) {
			n, wanted = in.Resid, in.Resid
		}
		if in.Resid > t.edtl {
			wanted = in.Resid
			if alloc, ok := allocationLength(t.cdb); ok {
				wanted = max(min(wanted, alloc), t.edtl)
			}
		}
		data = in.Buffer[:min(int(n), len(in.Buffer))]
		resFlag, resCount = residual(t.edtl, wanted)
	case t.write && !t.read && cmd.TL > 0:
		resFlag, resCount = residual(t.edtl, cmd.TL)
	case t.read && !t.write:
		resFlag, resCount = residual(t.edtl, 0)
	}

	collapse := status == api.SAM_STAT_GOOD && len(data) > 0
	seg := s.par.peerRecv
	burst := s.par.maxBurst
	npdu := 0
	if len(data) > 0 {
		npdu = (len(data) + int(min(seg, burst)) - 1) / int(min(seg, burst))
	}
	if !collapse {
		npdu++
	}
	out := make([]txPDU, 0, npdu+1)
	var dataSN, inBurst uint32
	for off := 0; off < len(data); {
		n := min(int(seg), len(data)-off, int(burst-inBurst))
		p := newTx(iscsi.OpDataIn)
		p.setITT(t.itt)
		p.setTTT(iscsi.ReservedTag)
		p.setU32(36, dataSN)
		p.setU32(40, uint32(off))
		p.data = data[off : off+n]
		dataSN++
		inBurst += uint32(n)
		off += n
		var flags byte
		last := off == len(data)
		if last || inBurst == burst {
			flags |= iscsi.FlagFinal
			inBurst = 0
		}
		if last && collapse {
			flags |= iscsi.FlagStatus | resFlag
			p.bhs[3] = status
			p.setU32(44, resCount)
			p.stat = statAdvance
			p.finish = t
			p.release = pooled
		}
		p.bhs[1] = flags
		out = append(out, p)
	}
	if collapse {
		return out
	}
	r := newTx(iscsi.OpSCSIResponse)
	r.bhs[1] = iscsi.FlagFinal | resFlag
	r.bhs[2] = 0 // command completed at target
	r.bhs[3] = status
	r.setITT(t.itt)
	r.setU32(20, 0) // SNACK Tag
	if t.write {
		r.setU32(36, t.r2tSN) // ExpDataSN: R2Ts sent
	} else {
		r.setU32(36, dataSN) // ExpDataSN: Data-In PDUs sent
	}
	r.setU32(44, resCount)
	if len(sense) > 0 {
		r.data = make([]byte, 2+len(sense))
		binary.BigEndian.PutUint16(r.data, uint16(len(sense)))
		copy(r.data[2:], sense)
	}
	r.stat = statAdvance
	r.finish = t
	r.release = pooled
	return append(out, r)
}
