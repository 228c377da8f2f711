package frontend

import (
	"github.com/certkit/certkit/iscsi"
)

// Task management functions and responses, RFC 7143 §11.5-11.6.
const (
	tmfAbortTask       = 1
	tmfAbortTaskSet    = 2
	tmfClearACA        = 3
	tmfClearTaskSet    = 4
	tmfLUNReset        = 5
	tmfTargetWarmReset = 6
	tmfTargetColdReset = 7
	tmfTaskReassign    = 8

	tmfComplete         = 0
	tmfNoTask           = 1
	tmfNoLUN            = 2
	tmfNoReassign       = 4
	tmfNotSupported     = 5
	tmfFunctionRejected = 255
)

func (s *session) taskMgmtReq(p *iscsi.PDU) {
	fn := p.Flags() & 0x7f
	lun, ref, refCmdSN, cmdSN := p.LUN(), p.U32(20), p.U32(32), p.CmdSN()
	itt := p.ITT()
	s.deliver(cmdSN, p.Immediate(), pendingItem{run: func() {
		// Waiting for tasks to finish must not hold up the reader: the
		// tasks may be waiting for Data-Out it has to read.
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			resp := s.taskMgmt(fn, lun, ref, refCmdSN, cmdSN)
			r := newTx(iscsi.OpTaskMgmtResp)
			r.bhs[1] = iscsi.FlagFinal
			r.bhs[2] = resp
			r.setITT(itt)
			r.stat = statAdvance
			s.sendFlush(r)
		}()
	}})
}

// taskMgmt performs one function and returns its response code.
func (s *session) taskMgmt(fn byte, lun uint64, ref, refCmdSN, cmdSN uint32) byte {
	switch fn {
	case tmfAbortTaskSet, tmfClearTaskSet, tmfLUNReset:
		if l, ok := s.tgt.SCSI.(LUNLister); ok && !l.HasLUN(lunNumber(lun)) {
			s.logf("task management function %d for LUN %d, which does not exist: LUN does not exist", fn, lunNumber(lun))
			return tmfNoLUN
		}
	}
	switch fn {
	case tmfAbortTask:
		s.mu.Lock()
		t := s.tasks[ref]
		if t == nil {
			s.mu.Unlock()
			// RFC 7143 §11.5.1: a referenced command that never arrived
			// but was sent before this request (RefCmdSN in the window,
			// below CmdSN) counts as received, and aborted. One below the
			// window was received, and has completed.
			if int32(refCmdSN-cmdSN) < 0 && s.skipCmdSN(refCmdSN) {
				return tmfComplete
			}
			return tmfNoTask
		}
		wait, completed := s.abortLocked(t)
		s.mu.Unlock()
		if wait != nil {
			s.await([]chan struct{}{wait})
		}
		if completed {
			// Answered before the abort could take it (RFC 7143 §11.6.1).
			return tmfNoTask
		}
		return tmfComplete
	case tmfAbortTaskSet, tmfClearTaskSet:
		// This session's tasks on the LU (the task set of this I_T nexus;
		// TST=000b, per-nexus task sets).
		s.mu.Lock()
		wait := s.abortLUNLocked(lunNumber(lun))
		s.mu.Unlock()
		s.await(wait)
		return tmfComplete
	case tmfLUNReset:
		n := lunNumber(lun)
		s.await(s.srv.abortAll(s.tgt, func(l uint64) bool { return l == n }))
		if r, ok := s.tgt.SCSI.(Resetter); ok && s.nexus != nil {
			r.ResetLU(s.nexus, n)
		}
		s.logf("LUN RESET of LUN %d: complete", n)
		return tmfComplete
	case tmfTargetWarmReset:
		s.await(s.srv.abortAll(s.tgt, func(uint64) bool { return true }))
		if r, ok := s.tgt.SCSI.(Resetter); ok && s.nexus != nil {
			r.ResetTarget(s.nexus)
		}
		s.logf("TARGET WARM RESET: complete")
		return tmfComplete
	case tmfClearACA, tmfTargetColdReset:
		return tmfNotSupported
	case tmfTaskReassign:
		return tmfNoReassign
	}
	return tmfFunctionRejected
}

// abortLocked aborts a task (SAM-5 §7.2, TAS=0: an aborted task is never
// answered). One still queued is dropped at once and gives its window slot
// back; one executing runs to its end, its response suppressed. It returns
// the channel to wait on before the abort may be answered (nil when there
// is nothing to wait for), and whether the task had already completed: its
// response is on its way, so for ABORT TASK it no longer exists.
func (s *session) abortLocked(t *task) (wait chan struct{}, completed bool) {
	switch {
	case t.finished:
		return nil, true
	case t.answering, t.executing:
		if t.executing {
			t.aborted = true
		}
		ch := make(chan struct{})
		t.waiters = append(t.waiters, ch)
		return ch, t.answering
	}
	t.aborted = true
	if s.tasks[t.itt] == t {
		delete(s.tasks, t.itt)
	}
	if t.counted {
		t.counted = false
		s.inflight--
	}
	return nil, false
}

// abortLUNLocked aborts every task of the session on LU lun.
func (s *session) abortLUNLocked(lun uint64) []chan struct{} {
	var wait []chan struct{}
	for _, t := range s.tasks {
		if lunNumber(t.lun) == lun {
			if ch, _ := s.abortLocked(t); ch != nil {
				wait = append(wait, ch)
			}
		}
	}
	return wait
}

func (s *session) await(chs []chan struct{}) {
	for _, ch := range chs {
		select {
		case <-ch:
		case <-s.done:
			return
		}
	}
}

// abortAll aborts the tasks of every normal session of target tgt on the
// LUs match selects (a LUN RESET or TARGET WARM RESET aborts the tasks of
// every I_T nexus of the target; SAM-5 §7.7, TAS=0: the other initiators
// get no response for them). Other targets' sessions are not touched:
// their LUN numbers name other LUs. It returns what to wait on before
// answering.
func (s *Server) abortAll(tgt *Target, match func(lun uint64) bool) []chan struct{} {
	s.mu.Lock()
	sessions := make([]*session, 0, len(s.sessions))
	for _, o := range s.sessions {
		if o.tgt == tgt {
			sessions = append(sessions, o)
		}
	}
	s.mu.Unlock()
	var wait []chan struct{}
	for _, o := range sessions {
		o.mu.Lock()
		for _, t := range o.tasks {
			if match(lunNumber(t.lun)) {
				if ch, _ := o.abortLocked(t); ch != nil {
					wait = append(wait, ch)
				}
			}
		}
		start, logout := o.dispatchLocked()
		o.mu.Unlock()
		o.startWork(start, logout)
	}
	return wait
}
