package frontend

// NOP-Out and NOP-In, both ways (RFC 7143 §11.18, §11.19).

import (
	"time"

	"github.com/certkit/certkit/iscsi"
)

// nopOut answers a ping. A non-immediate NOP-Out takes a CmdSN like any
// command (RFC 7143 §11.18), so it goes through deliver: skipping that is
// the gotgt bug that strands the next command.
func (s *session) nopOut(p *iscsi.PDU) {
	if p.ITT() == iscsi.ReservedTag {
		// An answer to a target NOP-In, or a ping that wants no answer;
		// the RFC requires the I bit, so it never takes a CmdSN.
		s.pingAnswered(p.TTT())
		return
	}
	data := p.Data
	if uint32(len(data)) > s.par.peerRecv {
		data = data[:s.par.peerRecv]
	}
	r := newTx(iscsi.OpNOPIn)
	r.bhs[1] = iscsi.FlagFinal
	r.setLUN(p.LUN())
	r.setITT(p.ITT())
	r.setTTT(iscsi.ReservedTag)
	r.data = data
	r.stat = statAdvance
	s.deliver(p.CmdSN(), p.Immediate(), pendingItem{run: func() { s.send(r) }})
}

// pinger sends a NOP-In ping (TTT not 0xffffffff, RFC 7143 §11.19) every
// NopInInterval and drops the connection when the initiator does not echo
// it within NopInTimeout.
func (s *session) pinger() {
	defer s.wg.Done()
	interval, timeout := s.srv.cfg.NopInInterval, s.srv.cfg.NopInTimeout
	t := time.NewTimer(interval)
	defer t.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
		}
		s.mu.Lock()
		s.nextTTT++
		if s.nextTTT == iscsi.ReservedTag || s.nextTTT == 0 {
			s.nextTTT = 1
		}
		ttt := s.nextTTT
		s.pingTTT = ttt
		s.mu.Unlock()
		select {
		case <-s.pingAck: // a late answer to an earlier ping
		default:
		}
		p := newTx(iscsi.OpNOPIn)
		p.bhs[1] = iscsi.FlagFinal
		p.setTTT(ttt)
		p.stat = statPeek
		s.sendFlush(p)
		t.Reset(timeout)
		select {
		case <-s.done:
			return
		case <-s.pingAck:
		case <-t.C:
			s.logf("no answer to NOP-In ping (TTT 0x%x) within %v: dropping the connection", ttt, timeout)
			s.close()
			return
		}
		t.Reset(interval)
	}
}

// pingAnswered notes a NOP-Out that echoes a NOP-In ping's TTT.
func (s *session) pingAnswered(ttt uint32) {
	s.mu.Lock()
	ok := ttt != iscsi.ReservedTag && ttt == s.pingTTT
	if ok {
		s.pingTTT = 0
	}
	s.mu.Unlock()
	if ok {
		select {
		case s.pingAck <- struct{}{}:
		default:
		}
	}
}
