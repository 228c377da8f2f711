package faultproxy

import (
	"bytes"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// maxQueued bounds the bytes one direction keeps queued for latency or
// held PDUs; beyond it the proxy stops reading that direction, as a slow
// link's TCP window would.
const maxQueued = 64 << 20

// copyBelow: chunks shorter than this are copied when queued, so that
// queued bytes pin at most twice their size in pump buffers.
const copyBelow = bufSize / 2

// outItem is a run of bytes to write at or after due.
type outItem struct {
	bufs     [][]byte
	buf      *[]byte // pump buffer to return once written
	due      time.Time
	boundary bool // ends between two PDUs
	held     bool
	eof      bool // half-close after it
	size     int
}

// outbox writes one direction of a link in stream order. With nothing
// queued and no delay the pump writes itself (the fast path, one write per
// read; see fast); otherwise items wait in order for their due time and the
// link's writer goroutine sends them. Held PDUs (delay-opcode) wait in a
// queue of their own and go out between two PDUs of the main stream.
type outbox struct {
	l   *link
	d   dir
	dst streamConn // set before the pumps start
	mem *memConn   // dst, when it is an array in memory

	// fast is set while nothing is queued, held or being written by the
	// writer goroutine and no delay applies: the pump (or, from an array in
	// memory, the array's Write; see link.forward) may then write to dst
	// itself without taking mu. Only they queue, so fast stays true until
	// they queue or a fault sets a delay; a chunk being written when a delay
	// starts goes out undelayed, as if it had been written just before.
	fast atomic.Bool
	// mid: the bytes written so far end inside a PDU (a held PDU waits).
	mid atomic.Bool

	mu       sync.Mutex
	wake     chan struct{} // cap 1: there is something new for the writer
	space    chan struct{} // cap 1: the queue shrank
	delay    time.Duration // added to every chunk (latency)
	holdFor  time.Duration // how long held PDUs wait (delay-opcode)
	main     []outItem
	held     []outItem
	queued   int
	busy     bool // a write is in progress
	finished bool // the input ended and everything is written
	nheld    atomic.Int32
}

func newOutbox(l *link, d dir) *outbox {
	o := &outbox{l: l, d: d, wake: make(chan struct{}, 1), space: make(chan struct{}, 1)}
	o.fast.Store(true)
	return o
}

// refresh recomputes fast. Callers hold o.mu and call it after changing
// what it depends on.
func (o *outbox) refresh() {
	o.fast.Store(!o.busy && o.delay == 0 && o.holdFor == 0 && len(o.main) == 0 && len(o.held) == 0)
}

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// setDelays sets the latency and the hold delay for what is queued from
// now on. Lowering either releases what waits at once (see expedite).
func (o *outbox) setDelays(delay, holdFor time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	expedite := delay < o.delay || holdFor < o.holdFor
	o.delay, o.holdFor = delay, holdFor
	o.refresh()
	if expedite {
		now := time.Now()
		for i := range o.main {
			if o.main[i].due.After(now) {
				o.main[i].due = now
			}
		}
		for i := range o.held {
			o.held[i].due = time.Time{}
		}
		signal(o.wake)
	}
}

// open reports whether the pump may write itself without a lock: the
// outbox is fast and the direction is not blackholed (then the writer
// goroutine waits for Revert, and the pump goes on reading if it may).
func (o *outbox) open() bool {
	return o.fast.Load() && o.l.p.gates[o.d].Load() == nil
}

// direct reports whether the pump may write ps itself: nothing waits and
// nothing is to wait. Callers hold o.mu.
func (o *outbox) direct(ps []piece) bool {
	if o.busy || o.delay > 0 || len(o.main) > 0 || len(o.held) > 0 || o.l.p.gates[o.d].Load() != nil {
		return false
	}
	if o.holdFor > 0 {
		for _, p := range ps {
			if p.kind == pieceHold {
				return false
			}
		}
	}
	return true
}

// appendBufs appends the bytes of ps (main and zero-delay hold pieces) to bufs.
func appendBufs(bufs [][]byte, ps []piece, chunk []byte) [][]byte {
	for _, p := range ps {
		switch {
		case p.kind == pieceFlushHeld:
		case p.b != nil:
			bufs = append(bufs, p.b)
		default:
			bufs = append(bufs, chunk[p.a:p.z])
		}
	}
	return bufs
}

// submit forwards the framer's output for one chunk read into *bp; it owns
// bp from here. boundary says whether the output ends between two PDUs.
// It fails once the link is gone.
func (o *outbox) submit(bp *[]byte, ps []piece, chunk []byte, boundary bool, scratch *[][]byte) error {
	if o.open() {
		if o.mem != nil && len(ps) == 1 && ps[0].kind == pieceMain && ps[0].b == nil && ps[0].a == 0 && ps[0].z == len(chunk) {
			// The chunk goes on unchanged (host to array it always
			// does): hand the buffer over.
			o.mid.Store(!boundary)
			return o.l.hand(o.mem, o.d, bp, chunk)
		}
		*scratch = appendBufs((*scratch)[:0], ps, chunk)
		var err error
		if o.d == toClient && o.l.arrayEnd != nil {
			// From an array in memory (a copy of its bytes, see
			// submitLent): a blackhole that starts meanwhile queues the
			// rest, as forward's does, so that the array's Writes are
			// still taken (the pump must not wait for Revert in
			// gatedWriter). writeOrQueue tracks mid.
			err = o.l.writeOrQueue(o.d, *scratch, boundary, false)
		} else {
			err = o.l.write(o.dst, o.d, *scratch)
			o.mid.Store(!boundary)
		}
		clear(*scratch)
		bufPool.Put(bp)
		return err
	}
	o.mu.Lock()
	if o.direct(ps) {
		o.busy = true
		o.refresh()
		o.mu.Unlock()
		*scratch = appendBufs((*scratch)[:0], ps, chunk)
		err := o.l.write(o.dst, o.d, *scratch)
		clear(*scratch)
		bufPool.Put(bp)
		o.mu.Lock()
		o.busy = false
		o.mid.Store(!boundary)
		o.refresh()
		o.mu.Unlock()
		return err
	}
	defer o.mu.Unlock()
	o.enqueue(bp, ps, chunk, boundary, false)
	for o.queued > maxQueued {
		o.mu.Unlock()
		select {
		case <-o.space:
		case <-o.l.done:
			o.mu.Lock()
			return net.ErrClosed
		}
		o.mu.Lock()
	}
	return nil
}

// submitLent is submit for a chunk lent by an array in memory (m's; see
// memConn.borrow): the loan is given back once the chunk is written, or
// copied to be queued.
func (o *outbox) submitLent(m *memConn, ps []piece, chunk []byte, boundary bool, scratch *[][]byte) error {
	if o.open() {
		*scratch = appendBufs((*scratch)[:0], ps, chunk)
		err := o.l.writeOrQueue(o.d, *scratch, boundary, true)
		clear(*scratch)
		if err != nil {
			m.releaseFailed(err)
			return err
		}
		m.release(len(chunk))
		return nil
	}
	// Something is queued or the direction is blackholed: queue a copy.
	bp := bufPool.Get().(*[]byte)
	n := copy(*bp, chunk)
	m.release(len(chunk))
	return o.submit(bp, ps, (*bp)[:n], boundary, scratch)
}

// queue queues b, the rest of a write a blackhole stopped, for the writer
// goroutine; boundary says whether b ends between two PDUs.
func (o *outbox) queue(b []byte, boundary bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.enqueue(nil, []piece{{kind: pieceMain, b: b}}, nil, boundary, false)
}

// enqueue queues ps in order. Callers hold o.mu.
func (o *outbox) enqueue(bp *[]byte, ps []piece, chunk []byte, boundary, eof bool) {
	now := time.Now()
	var cur *outItem
	flush := func(boundary bool) {
		if cur != nil {
			cur.boundary = boundary
			o.main = append(o.main, *cur)
			o.queued += cur.size
			cur = nil
		}
	}
	add := func(b []byte) {
		if cur == nil {
			cur = &outItem{due: now.Add(o.delay)}
		}
		cur.bufs = append(cur.bufs, b)
		cur.size += len(b)
	}
	pinned := -1 // index in o.main of the last item that refers to chunk
	small := len(chunk) < copyBelow
	for _, p := range ps {
		switch {
		case p.kind == pieceMain && p.b == nil:
			if small {
				add(bytes.Clone(chunk[p.a:p.z]))
			} else {
				add(chunk[p.a:p.z])
				pinned = len(o.main) // cur will land there
			}
		case p.kind == pieceMain, p.kind == pieceHold && o.holdFor == 0 && len(o.held) == 0:
			add(p.b)
		case p.kind == pieceHold:
			flush(true)
			o.held = append(o.held, outItem{bufs: [][]byte{p.b}, due: now.Add(o.holdFor), boundary: true, held: true, size: len(p.b)})
			o.queued += len(p.b)
		case p.kind == pieceFlushHeld:
			flush(true)
			for _, h := range o.held {
				h.due, h.held = now, false
				o.main = append(o.main, h)
			}
			o.held = o.held[:0]
		}
	}
	if eof {
		add(nil)
		cur.eof = true
	}
	flush(boundary)
	if pinned >= 0 {
		o.main[pinned].buf = bp
	} else if bp != nil {
		bufPool.Put(bp)
	}
	o.nheld.Store(int32(len(o.held)))
	o.refresh()
	signal(o.wake)
}

// finish forwards what the framer had left when the input ended, then
// passes the half-close on, after everything queued.
func (o *outbox) finish(ps []piece, boundary bool, scratch *[][]byte) error {
	o.mu.Lock()
	if o.direct(ps) {
		o.busy = true
		o.refresh()
		o.mu.Unlock()
		*scratch = appendBufs((*scratch)[:0], ps, nil)
		err := o.l.write(o.dst, o.d, *scratch)
		if err == nil {
			err = o.l.closeWrite(o.dst, o.d)
		}
		o.mu.Lock()
		o.busy, o.finished = false, true
		o.refresh()
		signal(o.wake)
		o.mu.Unlock()
		return err
	}
	o.enqueue(nil, ps, nil, boundary, true)
	o.mu.Unlock()
	return nil
}

// next pops the item to write now, if any. A held PDU goes only between
// two PDUs of the main stream, and before main items due no earlier.
// Callers hold o.mu.
func (o *outbox) next(now time.Time) (outItem, bool) {
	if len(o.held) > 0 && !o.mid.Load() && !o.held[0].due.After(now) && (len(o.main) == 0 || !o.held[0].due.After(o.main[0].due)) {
		it := o.held[0]
		o.held = o.held[1:]
		o.nheld.Store(int32(len(o.held)))
		return it, true
	}
	if len(o.main) > 0 && !o.main[0].due.After(now) {
		it := o.main[0]
		o.main[0] = outItem{}
		o.main = o.main[1:]
		if it.eof {
			// Nothing follows: held PDUs go before the half-close.
			var bufs [][]byte
			for _, h := range o.held {
				bufs = append(bufs, h.bufs...)
				it.size += h.size
			}
			it.bufs = append(bufs, it.bufs...)
			o.held = o.held[:0]
			o.nheld.Store(0)
		}
		return it, true
	}
	return outItem{}, false
}

// wait is how long until something may be due; 0 means until woken.
func (o *outbox) wait(now time.Time) time.Duration {
	var at time.Time
	has := len(o.main) > 0
	if has {
		at = o.main[0].due
	}
	if len(o.held) > 0 && !o.mid.Load() && (!has || o.held[0].due.Before(at)) {
		at, has = o.held[0].due, true
	}
	if !has {
		return 0
	}
	return max(at.Sub(now), time.Microsecond)
}

// run is the writer goroutine: it sends queued items when due, until the
// input has ended and everything is written, or the link closes.
func (o *outbox) run() {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	o.mu.Lock()
	for {
		select {
		case <-o.l.done:
			o.release()
			o.mu.Unlock()
			return
		default:
		}
		if o.finished && !o.busy && len(o.main) == 0 {
			o.mu.Unlock()
			return
		}
		if it, ok := o.next(time.Now()); ok {
			o.busy = true
			o.refresh()
			o.mu.Unlock()
			err := o.l.write(o.dst, o.d, it.bufs)
			if err == nil && it.eof {
				err = o.l.closeWrite(o.dst, o.d)
			}
			if it.buf != nil {
				bufPool.Put(it.buf)
			}
			o.mu.Lock()
			o.busy = false
			if !it.held {
				o.mid.Store(!it.boundary)
			}
			o.queued -= it.size
			o.finished = o.finished || it.eof
			o.refresh()
			signal(o.space)
			if err != nil {
				o.release()
				o.mu.Unlock()
				o.l.close(false)
				return
			}
			continue
		}
		d := o.wait(time.Now())
		o.mu.Unlock()
		var tc <-chan time.Time
		if d > 0 {
			timer.Reset(d)
			tc = timer.C
		}
		select {
		case <-o.wake:
		case <-tc:
		case <-o.l.done:
		}
		if d > 0 && !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		o.mu.Lock()
	}
}

// release drops whatever is still queued. Callers hold o.mu.
func (o *outbox) release() {
	for _, it := range o.main {
		if it.buf != nil {
			bufPool.Put(it.buf)
		}
	}
	o.main, o.held, o.queued = nil, nil, 0
	o.nheld.Store(0)
	o.refresh()
}
