package frontend

import (
	"math/bits"
	"sync"
)

// Buffers for command data (Data-Out gathered for a write, Data-In produced
// by a read) come from power-of-two size classes, so a steady stream of
// I/O allocates nothing. A buffer goes back only from the one place that
// knows nobody else holds it: the writer after its last Data-In PDU is on
// the wire, the executor after the SCSI layer consumed a write. Buffers of
// aborted tasks or torn-down sessions are left to the garbage collector.
const (
	minPoolShift = 9  // 512 B
	maxPoolShift = 24 // 16 MiB; larger buffers are allocated and dropped
)

var bufPools [maxPoolShift + 1]sync.Pool

// poolClass is the size class of an n-byte buffer: the smallest power of
// two that holds it, at least 512.
func poolClass(n int) int {
	if n <= 1<<minPoolShift {
		return minPoolShift
	}
	return bits.Len(uint(n - 1))
}

// getBuf returns a buffer of length n whose contents are undefined.
func getBuf(n int) []byte {
	c := poolClass(n)
	if c > maxPoolShift {
		return make([]byte, n)
	}
	if p, ok := bufPools[c].Get().(*[]byte); ok {
		return (*p)[:n]
	}
	return make([]byte, n, 1<<c)
}

// putBuf gives a buffer from getBuf back. Buffers of other capacities
// (not from getBuf) are ignored.
func putBuf(b []byte) {
	c := cap(b)
	if c < 1<<minPoolShift || c > 1<<maxPoolShift || c&(c-1) != 0 {
		return
	}
	b = b[:c]
	bufPools[bits.Len(uint(c))-1].Put(&b)
}
