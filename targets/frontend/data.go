package frontend

// SCSI commands and their data: immediate and unsolicited data, R2Ts,
// Data-Out read straight into the command's buffer.

import (
	"errors"
	"fmt"

	"github.com/certkit/certkit/iscsi"
)

// maxTransfer bounds one command's Expected Data Transfer Length so a
// hostile initiator cannot make the target allocate gigabytes; larger
// commands fail with CHECK CONDITION (ILLEGAL REQUEST).
const maxTransfer = 64 << 20

type r2tState struct {
	ttt      uint32
	off, len uint32
	next     uint32 // next offset expected from the initiator
	dataSN   uint32 // next DataSN expected in the sequence
}

// errDataSN ends a connection whose initiator sent a Data-Out out of
// sequence: at ErrorRecoveryLevel 0 there is no recovery within the
// connection (RFC 7143 §7.1.4.1), so, as Linux's target does, the
// connection goes after a Reject.
var errDataSN = errors.New("Data-Out out of sequence (DataSN)")

// scsiCommand reads a SCSI Command PDU's immediate data (straight into the
// task's buffer) and hands the task over in CmdSN order.
func (s *session) scsiCommand(p *iscsi.PDU) error {
	flags := p.Flags()
	t := &task{
		itt:       p.ITT(),
		lun:       p.LUN(),
		cmdSN:     p.CmdSN(),
		immediate: p.Immediate(),
		read:      flags&iscsi.FlagRead != 0,
		write:     flags&iscsi.FlagWrite != 0,
		attr:      int(flags & 7),
		edtl:      p.ExpectedDataLength(),
	}
	t.cdbBuf = [16]byte(p.CDB())
	t.cdb = t.cdbBuf[:]
	if ext, ok := extendedCDB(p.AHS); ok {
		t.cdb = append(t.cdb[:16:16], ext...)
	}
	n := p.DataSegmentLength()
	bad := n > 0 && (!t.write || !s.par.immediateData || n > t.edtl || n > s.par.firstBurst)
	if t.edtl > maxTransfer {
		t.tooLarge = true
	}
	var dst []byte
	if t.write && !t.tooLarge && !bad {
		t.buf = getBuf(int(t.edtl))
		dst = t.buf[:n]
	}
	if err := s.readData(dst, n); err != nil {
		return err
	}
	if s.srv.cfg.Trace != nil {
		tp := *p
		tp.Data = dst
		s.trace(&tp)
	}
	if bad {
		s.rejectRequest(p, rejectProtocolError)
		return nil
	}
	if t.write {
		t.got = n
		t.unsolNext = n
		t.unsolEnd = n
		if !s.par.initialR2T && flags&iscsi.FlagFinal == 0 {
			t.unsolEnd = min(s.par.firstBurst, t.edtl)
		}
		t.next = t.unsolEnd
		if t.tooLarge {
			t.next = t.edtl // solicit nothing
		}
	}
	s.mu.Lock()
	if _, dup := s.tasks[t.itt]; dup {
		s.mu.Unlock()
		s.rejectRequest(p, rejectProtocolError)
		return nil
	}
	if len(s.tasks) >= 4*int(s.depth)+64 {
		s.mu.Unlock()
		return fmt.Errorf("initiator has %d tasks open, far beyond the CmdSN window of %d", len(s.tasks), s.depth)
	}
	s.tasks[t.itt] = t
	s.checkDataLocked(t)
	s.mu.Unlock()
	if !s.deliver(t.cmdSN, t.immediate, pendingItem{task: t}) {
		s.mu.Lock()
		if s.tasks[t.itt] == t {
			delete(s.tasks, t.itt)
		}
		s.mu.Unlock()
	}
	return nil
}

// extendedCDB returns the CDB bytes past 16 from an Extended CDB AHS.
func extendedCDB(ahs []byte) ([]byte, bool) {
	for len(ahs) >= 4 {
		n := int(ahs[0])<<8 | int(ahs[1])
		typ := ahs[2]
		if 3+n > len(ahs) {
			return nil, false
		}
		body := ahs[3 : 3+n]
		if typ == 1 && n > 1 {
			return body[1:], true
		}
		ahs = ahs[min(len(ahs), (3+n+3)&^3):]
	}
	return nil, false
}

// checkDataLocked marks a task ready to execute once all its data is in.
func (s *session) checkDataLocked(t *task) {
	if !t.write || t.got >= t.edtl || (t.tooLarge && t.got >= t.unsolEnd) {
		t.dataIn = true
	}
}

// startLocked runs when a command's CmdSN turn comes: it takes a window
// slot, solicits the command's data and queues it for execution. R2Ts to
// send are appended to tx.
func (s *session) startLocked(t *task, tx []txPDU) []txPDU {
	s.commands++
	if t.aborted {
		return tx // dropped by task management before its turn
	}
	t.delivered = true
	if !t.immediate {
		t.counted = true
		s.inflight++
	}
	tx = s.solicitLocked(t, tx)
	it := qitem{task: t}
	if t.attr == iscsi.AttrHOQ {
		s.queue = append(s.queue, qitem{})
		copy(s.queue[1:], s.queue)
		s.queue[0] = it
	} else {
		s.queue = append(s.queue, it)
	}
	return tx
}

// solicitLocked issues R2Ts up to MaxOutstandingR2T, each for at most
// MaxBurstLength.
func (s *session) solicitLocked(t *task, tx []txPDU) []txPDU {
	for t.write && t.delivered && !t.aborted && uint32(len(t.r2ts)) < s.par.maxOutR2T && t.next < t.edtl {
		n := min(s.par.maxBurst, t.edtl-t.next)
		s.nextTTT++
		if s.nextTTT == iscsi.ReservedTag || s.nextTTT == 0 {
			s.nextTTT = 1
		}
		ttt := s.nextTTT
		r := newTx(iscsi.OpR2T)
		r.bhs[1] = iscsi.FlagFinal
		r.setLUN(t.lun)
		r.setITT(t.itt)
		r.setTTT(ttt)
		r.setU32(36, t.r2tSN) // R2TSN
		r.setU32(40, t.next)  // Buffer Offset
		r.setU32(44, n)       // Desired Data Transfer Length
		r.stat = statPeek
		t.r2ts = append(t.r2ts, r2tState{ttt: ttt, off: t.next, len: n, next: t.next})
		t.r2tSN++
		t.next += n
		tx = append(tx, r)
	}
	return tx
}

// dataOut reads one Data-Out PDU straight into its task's buffer. The
// data must arrive in order within its sequence (DataPDUInOrder=Yes,
// DataSequenceInOrder=Yes are all this target negotiates), so every byte
// of a write is received exactly once.
func (s *session) dataOut(p *iscsi.PDU) error {
	off, n := p.BufferOffset(), p.DataSegmentLength()
	ttt := p.TTT()
	s.mu.Lock()
	t := s.tasks[p.ITT()]
	var dst []byte
	known := t != nil && !t.aborted
	bad, badSN := false, false
	ri := -1
	if known {
		switch {
		case !t.write || uint64(off)+uint64(n) > uint64(t.edtl):
			bad = true
		case ttt == iscsi.ReservedTag:
			switch {
			case off != t.unsolNext || off+n > t.unsolEnd:
				bad = true
			case p.DataSN() != t.unsolSN:
				badSN = true
			default:
				t.unsolNext += n
				t.unsolSN++
			}
		default:
			for i := range t.r2ts {
				if t.r2ts[i].ttt == ttt {
					ri = i
				}
			}
			switch {
			case ri < 0 || off != t.r2ts[ri].next || off+n > t.r2ts[ri].off+t.r2ts[ri].len:
				bad = true
			case p.DataSN() != t.r2ts[ri].dataSN:
				badSN = true
			default:
				t.r2ts[ri].next += n
				t.r2ts[ri].dataSN++
			}
		}
		bad = bad || badSN
		if !bad && t.buf != nil {
			dst = t.buf[off : off+n]
		}
	}
	s.mu.Unlock()
	if err := s.readData(dst, n); err != nil {
		return err
	}
	if s.srv.cfg.Trace != nil {
		tp := *p
		tp.Data = dst
		s.trace(&tp)
	}
	if !known {
		return nil // data for a task just aborted or completed: discard quietly
	}
	if badSN {
		return errDataSN
	}
	if bad {
		s.sendReject(p, rejectInvalidField, false)
		return nil
	}
	s.mu.Lock()
	if t.aborted {
		s.mu.Unlock()
		return nil
	}
	t.got += n
	if ri >= 0 {
		for i := range t.r2ts {
			if r := &t.r2ts[i]; r.ttt == ttt && (p.Final() || r.next == r.off+r.len) {
				// Sequence done: room for the next R2T.
				t.r2ts = append(t.r2ts[:i], t.r2ts[i+1:]...)
				break
			}
		}
	}
	more := s.solicitLocked(t, nil)
	s.checkDataLocked(t)
	var start []*task
	var logout *iscsi.PDU
	if t.dataIn && t.delivered {
		start, logout = s.dispatchLocked()
	}
	s.mu.Unlock()
	s.send(more...)
	s.startWork(start, logout)
	return nil
}
