package array

import (
	"bytes"
	"testing"
)

func TestMemoryIsSparseAndBounded(t *testing.T) {
	m := newMemory(4 * chunkSize)
	data := bytes.Repeat([]byte{0xab}, chunkSize+1024)
	off := int64(chunkSize - 512) // straddles chunks 0, 1 and 2
	if err := m.WriteAt(data, off); err != nil {
		t.Fatal(err)
	}
	if m.chunks[3] != nil {
		t.Error("an unwritten chunk holds memory")
	}
	got := make([]byte, len(data)+1024)
	if err := m.ReadAt(got, off-512); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[512:512+len(data)], data) || got[0] != 0 || got[len(got)-1] != 0 {
		t.Error("read back differs from what was written around it")
	}
	// Discard frees whole chunks and zeroes partial ones.
	if err := m.Discard(chunkSize-512, chunkSize+1024); err != nil {
		t.Fatal(err)
	}
	if m.chunks[1] != nil {
		t.Error("a fully discarded chunk is still allocated")
	}
	if err := m.ReadAt(got, off-512); err != nil || !bytes.Equal(got, make([]byte, len(got))) {
		t.Errorf("after discard: %v, data not zero", err)
	}
	for _, bad := range [][2]int64{{4*chunkSize - 10, 20}, {-1, 1}} {
		if err := m.WriteAt(make([]byte, bad[1]), bad[0]); err == nil {
			t.Errorf("write of %d bytes at %d accepted", bad[1], bad[0])
		}
	}
}
