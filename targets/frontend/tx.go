package frontend

// The write side of a session: PDUs queued in order, written in batches by
// one goroutine at a time, StatSN and the CmdSN window stamped as they go.

import (
	"github.com/certkit/certkit/iscsi"
)

// maxTxQueue bounds the PDUs waiting for the writer: past it, whoever
// queues more (the reader answering NOP-Outs of an initiator that does not
// read, say) waits, as TCP would make it.
const maxTxQueue = 4096

// stat says what a target PDU does with StatSN.
type stat int

const (
	statNone    stat = iota // field not used (Data-In without status)
	statPeek                // carries the next StatSN without using it (R2T, NOP-In ping)
	statAdvance             // a status: takes StatSN and advances it
)

// send queues PDUs for the writer, in order and together. It reports false
// when the session is gone. The reader uses it: it never writes to the
// socket itself, so an initiator that does not read cannot stop the target
// from reading.
func (s *session) send(pdus ...txPDU) bool { return s.enqueue(pdus, false) }

// sendFlush is send for the other goroutines: when nobody is writing, the
// caller writes the queue out itself, saving the hand-over to the writer.
func (s *session) sendFlush(pdus ...txPDU) bool { return s.enqueue(pdus, true) }

func (s *session) enqueue(pdus []txPDU, flush bool) bool {
	if len(pdus) == 0 {
		return true
	}
	s.txMu.Lock()
	for len(s.txq) >= maxTxQueue {
		space := s.txSpace
		s.txWait++
		s.txMu.Unlock()
		select {
		case <-space:
		case <-s.done:
			return false
		}
		s.txMu.Lock()
		s.txWait--
	}
	s.txq = append(s.txq, pdus...)
	if s.writing {
		s.txMu.Unlock()
		return true
	}
	if flush {
		s.writing = true
		s.txMu.Unlock()
		return s.drain()
	}
	s.txMu.Unlock()
	select {
	case s.txSignal <- struct{}{}:
	default:
	}
	return true
}

// writer writes what the reader queued when no other goroutine is writing.
func (s *session) writer() {
	defer s.wg.Done()
	for {
		select {
		case <-s.done:
			return
		case <-s.txSignal:
		}
		s.txMu.Lock()
		if s.writing || len(s.txq) == 0 {
			s.txMu.Unlock()
			continue
		}
		s.writing = true
		s.txMu.Unlock()
		if !s.drain() {
			return
		}
	}
}

// drain writes the queue out until it is empty. Only the goroutine that
// set s.writing calls it, so PDUs go out in queue order and StatSN is
// assigned in that order. It reports false when the connection ended.
func (s *session) drain() bool {
	for {
		s.txMu.Lock()
		batch := s.txq
		if len(batch) == 0 {
			s.writing = false
			s.txMu.Unlock()
			return true
		}
		s.txq, s.txSpare = s.txSpare[:0], nil
		if s.txWait > 0 {
			close(s.txSpace)
			s.txSpace = make(chan struct{})
		}
		s.txMu.Unlock()
		for q := batch; len(q) > 0; {
			n := min(len(q), maxBatch)
			if !s.writeBatch(s.txb, q[:n]) {
				s.close() // s.writing stays set: nobody writes any more
				return false
			}
			q = q[n:]
		}
		clear(batch) // drop the references to data buffers
		s.txMu.Lock()
		s.txSpare = batch[:0]
		s.txMu.Unlock()
	}
}

// writeBatch finishes the tasks the PDUs answer, stamps StatSN and the
// window, and writes the PDUs in one writev. It reports false when the
// connection must end.
func (s *session) writeBatch(b *txBatch, q []txPDU) bool {
	s.mu.Lock()
	for i := range q {
		if t := q[i].finish; t != nil {
			s.finishLocked(t)
		}
	}
	exp, max := s.windowLocked()
	if int32(max-s.maxSent) > 0 {
		s.maxSent = max
	}
	s.mu.Unlock()
	b.reset()
	closeAfter := false
	for i := range q {
		o := &q[i]
		switch o.stat {
		case statPeek:
			o.setU32(24, s.statSN)
		case statAdvance:
			o.setU32(24, s.statSN)
			s.statSN++
		}
		o.setU32(28, exp)
		o.setU32(32, max)
		if s.srv.cfg.Trace != nil {
			s.srv.cfg.Trace(false, o.pdu())
		}
		b.add(o, s.par.digests)
		closeAfter = closeAfter || o.closeAfter
	}
	if err := b.writeTo(s.nc); err != nil {
		return false
	}
	for i := range q {
		if r := q[i].release; r != nil {
			putBuf(r)
		}
	}
	return !closeAfter
}

// finishLocked takes an answered task out of the table: after its status
// is written the initiator may reuse the ITT, and a task management
// request that no longer finds it is answered after this response.
func (s *session) finishLocked(t *task) {
	if s.tasks[t.itt] == t {
		delete(s.tasks, t.itt)
	}
	t.finished = true
	for _, w := range t.waiters {
		close(w)
	}
	t.waiters = nil
}

func (s *session) sendReject(p *iscsi.PDU, reason byte, closeAfter bool) {
	r := newTx(iscsi.OpReject)
	r.bhs[1] = iscsi.FlagFinal
	r.bhs[2] = reason
	r.data = append([]byte(nil), p.BHS[:]...)
	r.stat = statAdvance
	r.closeAfter = closeAfter
	s.logf("rejecting %s (reason 0x%02x)", p, reason)
	s.send(r)
}
