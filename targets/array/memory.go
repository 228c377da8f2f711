package array

import (
	"fmt"
	"strings"
	"sync"

	"github.com/gostor/gotgt/pkg/api"
	"github.com/gostor/gotgt/pkg/scsi"
)

// memoryBackend is the gotgt backing-store name of certkit's memory LUNs.
// gotgt creates one store per LU and opens it with the path after
// "certkit-memory:", which names an entry of the memories registry.
const memoryBackend = "certkit-memory"

func init() {
	scsi.RegisterBackingStore(memoryBackend, func() (api.BackingStore, error) { return &memoryStore{}, nil })
}

var memories = struct {
	sync.Mutex
	m map[string]*memory
}{m: map[string]*memory{}}

func addMemory(key string, size int64) error {
	memories.Lock()
	defer memories.Unlock()
	if memories.m[key] != nil {
		return fmt.Errorf("memory backing %s exists: is an array with this name already running in this process?", key)
	}
	memories.m[key] = newMemory(size)
	return nil
}

func dropMemory(key string) {
	memories.Lock()
	defer memories.Unlock()
	delete(memories.m, key)
}

// chunkSize is the allocation unit: a LUN uses memory only where written.
const chunkSize = 64 << 10

// memory is a sparse in-memory disk; unwritten chunks read as zeros.
type memory struct {
	mu     sync.RWMutex
	size   int64
	chunks [][]byte
}

func newMemory(size int64) *memory {
	return &memory{size: size, chunks: make([][]byte, (size+chunkSize-1)/chunkSize)}
}

func (m *memory) check(off, n int64) error {
	if off < 0 || n < 0 || off+n > m.size || off+n < off {
		return fmt.Errorf("memory backing: %d bytes at offset %d are outside the %d-byte LUN", n, off, m.size)
	}
	return nil
}

// each calls fn for every chunk piece of [off, off+n).
func (m *memory) each(off, n int64, fn func(c int, lo, hi int, at int64)) {
	for pos := off; pos < off+n; {
		c := pos / chunkSize
		lo := pos - c*chunkSize
		hi := min(chunkSize, lo+off+n-pos)
		fn(int(c), int(lo), int(hi), pos-off)
		pos += hi - lo
	}
}

func (m *memory) ReadAt(b []byte, off int64) error {
	if err := m.check(off, int64(len(b))); err != nil {
		return err
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	m.each(off, int64(len(b)), func(c, lo, hi int, at int64) {
		dst := b[at : at+int64(hi-lo)]
		if ch := m.chunks[c]; ch != nil {
			copy(dst, ch[lo:hi])
		} else {
			clear(dst)
		}
	})
	return nil
}

func (m *memory) WriteAt(b []byte, off int64) error {
	if err := m.check(off, int64(len(b))); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.each(off, int64(len(b)), func(c, lo, hi int, at int64) {
		if m.chunks[c] == nil {
			m.chunks[c] = make([]byte, chunkSize)
		}
		copy(m.chunks[c][lo:hi], b[at:at+int64(hi-lo)])
	})
	return nil
}

// Discard zeroes a range, freeing whole chunks (UNMAP).
func (m *memory) Discard(off, n int64) error {
	if err := m.check(off, n); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.each(off, n, func(c, lo, hi int, _ int64) {
		if lo == 0 && hi == chunkSize {
			m.chunks[c] = nil
		} else if m.chunks[c] != nil {
			clear(m.chunks[c][lo:hi])
		}
	})
	return nil
}

// memoryStore is the api.BackingStore gotgt drives for one memory LU.
type memoryStore struct{ m *memory }

func (s *memoryStore) Open(_ *api.SCSILu, path string) error {
	memories.Lock()
	defer memories.Unlock()
	s.m = memories.m[strings.TrimPrefix(path, memoryBackend+":")]
	if s.m == nil {
		return fmt.Errorf("memory backing %q is not registered", path)
	}
	return nil
}

func (s *memoryStore) Close(*api.SCSILu) error               { return nil }
func (s *memoryStore) Init(*api.SCSILu, string) error        { return nil }
func (s *memoryStore) Exit(*api.SCSILu) error                { return nil }
func (s *memoryStore) Size(*api.SCSILu) uint64               { return uint64(s.m.size) }
func (s *memoryStore) DataSync(int64, int64) error           { return nil }
func (s *memoryStore) DataAdvise(int64, int64, uint32) error { return nil }

func (s *memoryStore) Read(off, n int64) ([]byte, error) {
	if err := s.m.check(off, n); err != nil {
		return nil, err
	}
	b := make([]byte, n)
	return b, s.m.ReadAt(b, off)
}

func (s *memoryStore) Write(b []byte, off int64) error { return s.m.WriteAt(b, off) }

// ReadAt, WriteAt and Flush make the memory store a blockStore (direct).
func (s *memoryStore) ReadAt(b []byte, off int64) error  { return s.m.ReadAt(b, off) }
func (s *memoryStore) WriteAt(b []byte, off int64) error { return s.m.WriteAt(b, off) }
func (s *memoryStore) Flush() error                      { return nil }

func (s *memoryStore) Unmap(ds []api.UnmapBlockDescriptor) error {
	for _, d := range ds {
		if err := s.m.Discard(int64(d.Offset), int64(d.TL)); err != nil {
			return err
		}
	}
	return nil
}
