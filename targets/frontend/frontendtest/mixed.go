package frontendtest

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
)

// Mixed describes a workload for MixedIO.
type Mixed struct {
	LUN           int
	BlockSize     int // bytes per block, e.g. 512
	FirstBlock    int // the workload's region of the LU starts here
	RegionBlocks  int // blocks each I/O goroutine owns, one region after the other
	IOGoroutines  int // per session
	Rounds        int // write-then-read-back rounds per I/O goroutine
	MaxBlocks     int // largest transfer, in blocks
	NOPGoroutines int // per session, each sending Rounds NOP-Outs
	Seed          uint64
}

// MixedIO runs, on every session at once, IOGoroutines goroutines that each
// write random data of random lengths to their own region and read it back,
// interleaved with NOPGoroutines goroutines sending NOP-Outs that alternate
// between immediate and not. It returns the first command that failed,
// came back with the wrong data, or whose NOP-In did not echo its data.
func MixedIO(sessions []*Session, m Mixed) error {
	var wg sync.WaitGroup
	errs := make(chan error, len(sessions)*(m.IOGoroutines+m.NOPGoroutines))
	region := 0
	for si, s := range sessions {
		for g := range m.IOGoroutines {
			first := m.FirstBlock + region*m.RegionBlocks
			region++
			rng := rand.New(rand.NewPCG(m.Seed, uint64(si<<16|g)))
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs <- m.ioLoop(s, first, rng)
			}()
		}
		for g := range m.NOPGoroutines {
			rng := rand.New(rand.NewPCG(m.Seed^0xa5a5, uint64(si<<16|g)))
			wg.Add(1)
			go func() {
				defer wg.Done()
				for r := range m.Rounds {
					data := make([]byte, rng.IntN(64))
					for i := range data {
						data[i] = byte(rng.Uint32())
					}
					if err := s.NOP(r%2 == 0, data); err != nil {
						errs <- fmt.Errorf("NOP-Out (immediate %v) round %d: %w", r%2 == 0, r, err)
						return
					}
				}
				errs <- nil
			}()
		}
	}
	wg.Wait()
	close(errs)
	var all []error
	for err := range errs {
		if err != nil {
			all = append(all, err)
		}
	}
	return errors.Join(all...)
}

func (m Mixed) ioLoop(s *Session, first int, rng *rand.Rand) error {
	for r := range m.Rounds {
		n := 1 + rng.IntN(min(m.MaxBlocks, m.RegionBlocks))
		lba := first + rng.IntN(m.RegionBlocks-n+1)
		data := make([]byte, n*m.BlockSize)
		for i := range data {
			data[i] = byte(rng.Uint32())
		}
		res, err := s.Command(m.LUN, Write10(uint32(lba), uint16(n)), 0, data)
		if err == nil {
			err = res.CheckGood()
		}
		if err != nil {
			return fmt.Errorf("round %d: WRITE(10) of %d blocks at %d: %w", r, n, lba, err)
		}
		res, err = s.Command(m.LUN, Read10(uint32(lba), uint16(n)), len(data), nil)
		if err == nil {
			err = res.CheckGood()
		}
		if err != nil {
			return fmt.Errorf("round %d: READ(10) of %d blocks at %d: %w", r, n, lba, err)
		}
		if !bytes.Equal(res.Data, data) {
			return fmt.Errorf("round %d: READ(10) of %d blocks at %d returned other data than written", r, n, lba)
		}
	}
	return nil
}
