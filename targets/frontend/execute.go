package frontend

// Execution: delivered tasks start by their task attribute on a bounded
// set of workers per session.

import (
	"github.com/certkit/certkit/iscsi"
)

// dispatchLocked picks the queued tasks that may start now (SAM-5 §8.6):
// HEAD OF QUEUE tasks at once; SIMPLE (and untagged) ones unless an
// ORDERED task runs or waits ahead of them; an ORDERED one when everything
// before it has finished. A task starts only once its data is in. A logout
// waits like an ORDERED task.
func (s *session) dispatchLocked() (start []*task, logout *iscsi.PDU) {
	q := s.queue
	kept := q[:0]
	blocked := false
	for i := 0; i < len(q); i++ {
		it := q[i]
		if blocked {
			kept = append(kept, it)
			continue
		}
		if it.logout != nil {
			if len(kept) == 0 && s.running == 0 {
				logout = it.logout
			} else {
				kept = append(kept, it)
			}
			blocked = true
			continue
		}
		t := it.task
		if t.aborted {
			continue
		}
		switch t.attr {
		case iscsi.AttrOrdered:
			if len(kept) == 0 && s.running == 0 && t.dataIn {
				s.ordered = true
				s.running++
				start = append(start, t)
			} else {
				kept = append(kept, it)
			}
			blocked = true
		case iscsi.AttrHOQ:
			if t.dataIn && s.running < s.workers {
				s.running++
				start = append(start, t)
			} else {
				kept = append(kept, it)
			}
		default:
			if !s.ordered && t.dataIn && s.running < s.workers {
				s.running++
				start = append(start, t)
			} else {
				kept = append(kept, it)
				if s.ordered {
					blocked = true
				}
			}
		}
	}
	clear(q[len(kept):])
	s.queue = kept
	for _, t := range start {
		t.executing = true
	}
	if n := s.running - s.nworkers; n > 0 {
		s.nworkers += n
		for range n {
			s.wg.Add(1)
			go s.worker()
		}
	}
	return start, logout
}

// startWork hands started tasks to the workers and runs a logout whose
// turn came.
func (s *session) startWork(start []*task, logout *iscsi.PDU) {
	for _, t := range start {
		s.work <- t // never blocks: capacity = Concurrency >= running
	}
	if logout != nil {
		s.logout(logout)
	}
}

func (s *session) worker() {
	defer s.wg.Done()
	for {
		select {
		case <-s.done:
			return
		case t := <-s.work:
			s.runTask(t)
		}
	}
}

// runTask executes a task and queues its response, unless the task was
// aborted meanwhile: then nothing is sent for it.
func (s *session) runTask(t *task) {
	pdus := s.execute(t)
	if t.buf != nil {
		putBuf(t.buf) // the SCSI layer is done with the data
		t.buf = nil
	}
	s.mu.Lock()
	t.executing = false
	s.running--
	if t.attr == iscsi.AttrOrdered {
		s.ordered = false
	}
	if t.counted {
		t.counted = false
		s.inflight-- // before the response, so it carries the freed slot
	}
	if t.aborted {
		s.finishLocked(t)
		for _, p := range pdus {
			if p.release != nil {
				putBuf(p.release)
			}
		}
		pdus = nil
	} else {
		t.answering = true
	}
	start, logout := s.dispatchLocked()
	s.mu.Unlock()
	s.startWork(start, logout)
	s.sendFlush(pdus...)
}
