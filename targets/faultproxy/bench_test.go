package faultproxy

import (
	"bytes"
	"io"
	"net"
	"sync"
	"testing"

	"github.com/certkit/certkit/iscsi"
)

// The benchmarks compare a path straight to an upstream with the same path
// through the proxy, no fault active: what the proxy costs. Run them with
//
//	go test -run '^$' -bench . -benchmem ./targets/faultproxy
//
// MB/s counts payload bytes. The upstream, the client and the proxy all run
// in the benchmark's process, so allocs/op includes the proxy's, and so
// does cpu-ns/op, the process's CPU time (user and system) per operation:
// on a shared, loaded machine wall time swings with the load, CPU time much
// less, and the proxy's CPU per operation is its row's minus direct's.

// readArray is an upstream that speaks just enough iSCSI for the proxy to
// follow it: it answers a login and then every SCSI Command (48 bytes, no
// data) with one Data-In of size bytes carrying the status, as a target
// answers a READ. It listens on TCP, and serve takes connections in memory
// (Options.Serve).
func readArray(b *testing.B, size int) (addr string, serve func(net.Conn) error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	b.Cleanup(func() { ln.Close(); wg.Wait() })
	resp := wire(b, iscsi.Digests{}, login(iscsi.OpLoginResp, true, "HeaderDigest=None", "DataDigest=None"))
	in := wire(b, iscsi.Digests{}, dataIn(1, make([]byte, size), true, 1))
	serve = func(c net.Conn) error {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			if _, err := iscsi.ReadPDU(c, iscsi.Framing{MaxDataSegment: 1 << 16}); err != nil {
				return
			}
			if _, err := c.Write(resp); err != nil {
				return
			}
			cmd := make([]byte, iscsi.BHSLen)
			for {
				if _, err := io.ReadFull(c, cmd); err != nil {
					return
				}
				if _, err := c.Write(in); err != nil {
					return
				}
			}
		}()
		return nil
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			serve(c)
		}
	}()
	return ln.Addr().String(), serve
}

// runReads logs in at addr and issues b.N READs of size bytes, qd at a
// time, each a 48-byte SCSI Command answered by one Data-In.
func runReads(b *testing.B, addr string, size, qd int) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	req := wire(b, iscsi.Digests{}, login(iscsi.OpLoginReq, true, "HeaderDigest=None", "DataDigest=None"))
	if _, err := c.Write(req); err != nil {
		b.Fatal(err)
	}
	if _, err := iscsi.ReadPDU(c, iscsi.Framing{MaxDataSegment: 1 << 16}); err != nil {
		b.Fatal(err)
	}
	cmd := wire(b, iscsi.Digests{}, scsiCmd(1, 0x28, 0))
	cmds := bytes.Repeat(cmd, qd)
	answer := make([]byte, iscsi.BHSLen+size)
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	cpu := processCPU()
	defer func() { b.ReportMetric(float64(processCPU()-cpu)/float64(b.N), "cpu-ns/op") }()
	// Keep qd commands outstanding: qd up front, then one per answer.
	if _, err := c.Write(cmds[:min(qd, b.N)*len(cmd)]); err != nil {
		b.Fatal(err)
	}
	for i := range b.N {
		if _, err := io.ReadFull(c, answer); err != nil {
			b.Fatal(err)
		}
		if i+qd < b.N {
			if _, err := c.Write(cmd); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// relay is the floor any user-space proxy pays: a bare TCP relay to
// upstream, one goroutine per direction copying with io.Copy (which
// splices on Linux), no framing, no faults.
func relay(b *testing.B, upstream string) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	b.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", upstream)
			if err != nil {
				c.Close()
				continue
			}
			wg.Add(2)
			go func() { defer wg.Done(); io.Copy(u, c); u.Close() }()
			go func() { defer wg.Done(); io.Copy(c, u); c.Close() }()
		}
	}()
	return ln.Addr().String()
}

// BenchmarkReads: READs as iscsi-perf issues them (4 KiB at QD1, 128 KiB
// at QD16): direct; through a bare relay, the floor of any proxy that
// dials the array; through the proxy dialling the array (proxy); and
// through the proxy joined to the array in memory (proxy-memory), as in
// `certkit target serve`.
func BenchmarkReads(b *testing.B) {
	for _, w := range []struct {
		name     string
		size, qd int
	}{{"4KiB-QD1", 4 << 10, 1}, {"128KiB-QD16", 128 << 10, 16}} {
		b.Run(w.name, func(b *testing.B) {
			target, serve := readArray(b, w.size)
			b.Run("direct", func(b *testing.B) { runReads(b, target, w.size, w.qd) })
			b.Run("relay", func(b *testing.B) { runReads(b, relay(b, target), w.size, w.qd) })
			b.Run("proxy", func(b *testing.B) {
				p, err := Listen("127.0.0.1:0", target)
				if err != nil {
					b.Fatal(err)
				}
				defer p.Close()
				runReads(b, p.Addr(), w.size, w.qd)
			})
			b.Run("proxy-memory", func(b *testing.B) {
				p, err := ListenWith("127.0.0.1:0", target, Options{Serve: serve})
				if err != nil {
					b.Fatal(err)
				}
				defer p.Close()
				runReads(b, p.Addr(), w.size, w.qd)
			})
		})
	}
}

// echo is an upstream that writes back whatever it reads.
func echo(b *testing.B) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	return ln.Addr().String()
}

// BenchmarkThroughput compares an echo stream direct to the upstream with the
// same stream through the proxy (MB/s counts bytes sent; each also returns).
// The stream is not iSCSI, so the proxy forwards it unparsed.
func BenchmarkThroughput(b *testing.B) {
	const chunk = 128 << 10
	target := echo(b)
	run := func(b *testing.B, addr string) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		msg := make([]byte, chunk)
		b.SetBytes(chunk)
		b.ReportAllocs()
		b.ResetTimer()
		cpu := processCPU()
		defer func() { b.ReportMetric(float64(processCPU()-cpu)/float64(b.N), "cpu-ns/op") }()
		errc := make(chan error, 1)
		go func() {
			var err error
			for i := 0; i < b.N && err == nil; i++ {
				_, err = c.Write(msg)
			}
			errc <- err
		}()
		if _, err := io.CopyN(io.Discard, c, int64(b.N)*chunk); err != nil {
			b.Fatal(err)
		}
		if err := <-errc; err != nil {
			b.Fatal(err)
		}
	}
	b.Run("direct", func(b *testing.B) { run(b, target) })
	b.Run("proxy", func(b *testing.B) {
		p, err := Listen("127.0.0.1:0", target)
		if err != nil {
			b.Fatal(err)
		}
		defer p.Close()
		run(b, p.Addr())
	})
}
