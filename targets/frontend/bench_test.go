package frontend_test

import (
	"sync"
	"sync/atomic"
	"testing"

	"github.com/certkit/certkit/iscsi"
	"github.com/certkit/certkit/targets/frontend"
	"github.com/certkit/certkit/targets/frontend/frontendtest"
	"github.com/gostor/gotgt/pkg/api"
)

// nullSCSI completes every command at once (a READ returns whatever the
// buffer holds): the benchmarks measure the front end, not a store.
type nullSCSI struct{}

func (nullSCSI) AddNexus(*api.ITNexus) error { return nil }
func (nullSCSI) RemoveNexus(*api.ITNexus)    {}
func (nullSCSI) Execute(cmd *api.SCSICommand) {
	if cmd.SCB[0] == 0x28 {
		cmd.InSDBBuffer.Resid = cmd.InSDBBuffer.Length
	}
}

// benchIO runs b.N READ(10)s or WRITE(10)s of size bytes, qd at a time,
// through a session over loopback TCP; allocations count both sides (the
// test initiator allocates each command's buffers).
func benchIO(b *testing.B, size, qd int, write bool) {
	s, err := frontend.Listen(frontend.Config{
		TargetName: targetIQN,
		Portals:    []frontend.Portal{{Listen: "127.0.0.1:0", TPGT: 1}},
		SCSI:       nullSCSI{},
	})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	c, err := frontendtest.Normal(s.Addrs()[0], initiatorIQN, targetIQN, isid(1), ioTimeout,
		iscsi.KV{Key: "MaxRecvDataSegmentLength", Value: "262144"})
	if err != nil {
		b.Fatal(err)
	}
	sess := frontendtest.StartSession(c)
	defer sess.Close()
	sess.ImmediateData = true
	blocks := uint16(size / 512)
	data := make([]byte, size)
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	var n atomic.Int64
	var wg sync.WaitGroup
	for range qd {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n.Add(1) <= int64(b.N) {
				var err error
				if write {
					_, err = sess.Command(0, frontendtest.Write10(0, blocks), 0, data)
				} else {
					_, err = sess.Command(0, frontendtest.Read10(0, blocks), size, nil)
				}
				if err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

func BenchmarkRead4KQD1(b *testing.B)     { benchIO(b, 4<<10, 1, false) }
func BenchmarkRead128KQD16(b *testing.B)  { benchIO(b, 128<<10, 16, false) }
func BenchmarkWrite4KQD1(b *testing.B)    { benchIO(b, 4<<10, 1, true) }
func BenchmarkWrite128KQD16(b *testing.B) { benchIO(b, 128<<10, 16, true) }
