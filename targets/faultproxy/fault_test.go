package faultproxy

import (
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/certkit/certkit/iscsi"
)

func TestFaultValidationNamesTheFieldAndTheFix(t *testing.T) {
	pdl := Sense{Key: 5, ASC: 0x25}
	cases := []struct {
		f    Fault
		want string // "" = valid
	}{
		{Fault{Kind: Blackhole}, ""},
		{Fault{Kind: Blackhole, Direction: In}, ""},
		{Fault{Kind: BlackholeOut, Direction: Out}, ""},
		{Fault{Kind: Reset}, ""},
		{Fault{Kind: Latency, Params: Params{Delay: time.Millisecond}}, ""},
		{Fault{Kind: Latency, Direction: Out, Params: Params{Delay: time.Second}}, ""},
		{Fault{Kind: DropNOPIn}, ""},
		{Fault{Kind: FailOpcode, Params: Params{Opcode: Opcode(0x28), Sense: pdl}}, ""},
		{Fault{Kind: FailOpcode, Params: Params{Opcode: Opcode(0), LUN: LUN(16383), Sense: Sense{2, 4, 3}}}, ""},
		{Fault{Kind: DelayOpcode, Params: Params{Opcode: Opcode(0x2a), Delay: time.Second}}, ""},

		{Fault{Kind: "drop-half"}, `unknown fault kind "drop-half" (want one of [blackhole reset`},
		{Fault{Kind: FailOpcode, Params: Params{Sense: pdl}}, "fail-opcode needs an opcode, e.g. 0x28"},
		{Fault{Kind: FailOpcode, Params: Params{Opcode: Opcode(0x28)}}, "fail-opcode needs sense data with a nonzero sense key, e.g. 05/25/00"},
		{Fault{Kind: FailOpcode, Params: Params{Opcode: Opcode(0x28), Sense: Sense{Key: 0x15}}}, "sense key 0x15 is out of range"},
		{Fault{Kind: FailOpcode, Params: Params{Opcode: Opcode(0x28), Sense: pdl, LUN: LUN(16384)}}, "LUN 16384 is out of range"},
		{Fault{Kind: FailOpcode, Params: Params{Opcode: Opcode(0x28), Sense: pdl, Delay: time.Second}}, "fail-opcode takes no delay"},
		{Fault{Kind: FailOpcode, Direction: Out, Params: Params{Opcode: Opcode(0x28), Sense: pdl}}, "fail-opcode takes no direction"},
		{Fault{Kind: DelayOpcode, Params: Params{Opcode: Opcode(0x28)}}, "delay-opcode needs a delay, e.g. 200ms"},
		{Fault{Kind: DelayOpcode, Params: Params{Delay: time.Second}}, "delay-opcode needs an opcode"},
		{Fault{Kind: DelayOpcode, Params: Params{Opcode: Opcode(0x28), Delay: time.Second, Sense: pdl}}, "delay-opcode takes no sense data"},
		{Fault{Kind: Latency}, "latency needs a delay, e.g. 200ms"},
		{Fault{Kind: Latency, Params: Params{Delay: -time.Second}}, "latency delay -1s is out of range"},
		{Fault{Kind: Latency, Params: Params{Delay: 2 * MaxDelay}}, "latency delay 2h0m0s is out of range"},
		{Fault{Kind: Latency, Direction: "up", Params: Params{Delay: time.Second}}, `latency has an unknown direction "up" (want in, out or both)`},
		{Fault{Kind: Latency, Params: Params{Delay: time.Second, Opcode: Opcode(0x28)}}, "latency takes no opcode"},
		{Fault{Kind: DropNOPIn, Params: Params{LUN: LUN(1)}}, "drop-nopin takes no LUN"},
		{Fault{Kind: DropNOPIn, Direction: Out}, "drop-nopin takes no direction (it acts on NOP-Ins from the array)"},
		{Fault{Kind: Reset, Direction: In}, "reset takes no direction"},
		{Fault{Kind: Blackhole, Params: Params{Delay: time.Second}}, "blackhole takes no delay"},
		{Fault{Kind: BlackholeIn, Direction: Out}, "blackhole-in with direction out contradicts itself; use blackhole with direction out"},
	}
	for _, tc := range cases {
		err := tc.f.Validate()
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%v: %v, want valid", tc.f, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, ErrInvalidFault)):
			t.Errorf("%v: %v, want ErrInvalidFault saying %q", tc.f, err, tc.want)
		}
	}
}

func TestInjectFaultReportsWhatIsActive(t *testing.T) {
	u := startPortal(t)
	p := listen(t, u.ln.Addr().String())

	_, err := p.Inject(Latency)
	if !errors.Is(err, ErrInvalidFault) || errors.Is(err, ErrUnknownKind) || !strings.Contains(err.Error(), p.Addr()) || !strings.Contains(err.Error(), "latency needs a delay") {
		t.Fatalf("Inject(latency) without a delay: %v; want ErrInvalidFault naming the proxy and the missing delay", err)
	}
	if _, err := p.Inject("drop-half"); !errors.Is(err, ErrUnknownKind) || !errors.Is(err, ErrInvalidFault) {
		t.Fatalf("Inject(drop-half): %v, want ErrUnknownKind and ErrInvalidFault", err)
	}
	if f, ok := p.ActiveFault(); ok {
		t.Fatalf("ActiveFault() = %v after refused injects", f)
	}

	pdl := Fault{Kind: FailOpcode, Params: Params{Opcode: Opcode(0x28), LUN: LUN(3), Sense: Sense{Key: 5, ASC: 0x25}}}
	if _, err := p.InjectFault(pdl); err != nil {
		t.Fatal(err)
	}
	if f, ok := p.ActiveFault(); !ok || f.String() != "fail-opcode opcode=0x28 lun=3 sense=05/25/00" || p.Fault() != FailOpcode {
		t.Fatalf("ActiveFault() = %v %v, Fault() = %q", f, ok, p.Fault())
	}
	_, err = p.InjectFault(Fault{Kind: DropNOPIn})
	if !errors.Is(err, ErrFaultActive) || !strings.Contains(err.Error(), "fault fail-opcode opcode=0x28 lun=3 sense=05/25/00 is already active") {
		t.Fatalf("second inject: %v", err)
	}
	if _, err := p.Revert(); err != nil {
		t.Fatal(err)
	}

	// A one-way blackhole reads the same however it was asked for.
	for _, f := range []Fault{{Kind: Blackhole, Direction: Out}, {Kind: BlackholeOut}} {
		if _, err := p.InjectFault(f); err != nil {
			t.Fatal(err)
		}
		if got, _ := p.ActiveFault(); got.Kind != BlackholeOut || got.Direction != Out || got.String() != "blackhole-out" {
			t.Errorf("InjectFault(%+v): active %+v (%v)", f, got, got)
		}
		if _, err := p.Revert(); err != nil {
			t.Fatal(err)
		}
	}
	if got := Kinds(); len(got) != 8 {
		t.Errorf("Kinds() = %v", got)
	}
}

func TestParseSense(t *testing.T) {
	for in, want := range map[string]Sense{"05/25/00": {5, 0x25, 0}, "0x2/0x04/0x03": {2, 4, 3}, " 6 / 2a / 6 ": {6, 0x2a, 6}} {
		if got, err := ParseSense(in); err != nil || got != want {
			t.Errorf("ParseSense(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "05/25", "05/25/00/00", "05/zz/00", "05/100/00"} {
		if _, err := ParseSense(in); err == nil || !strings.Contains(err.Error(), "05/25/00") {
			t.Errorf("ParseSense(%q): %v, want an error with an example", in, err)
		}
	}
	if s := (Sense{2, 4, 3}).String(); s != "02/04/03" {
		t.Errorf("String() = %q", s)
	}
}

func TestDecodeLUN(t *testing.T) {
	for field, want := range map[uint64]uint64{0: 0, 7 << 48: 7, 255 << 48: 255, (0x40|0x3f)<<56 | 0xff<<48: 16383, 0x4100 << 48: 256, 0x4001 << 48: 1} {
		if got, ok := decodeLUN(field); !ok || got != want {
			t.Errorf("decodeLUN(%016x) = %d %v, want %d", field, got, ok, want)
		}
	}
	for _, field := range []uint64{1 << 56, 0x8000 << 48, 7<<48 | 1} {
		if _, ok := decodeLUN(field); ok {
			t.Errorf("decodeLUN(%016x) accepted a LUN that is none of ours", field)
		}
	}
}

func TestLatencyDelaysBulkStreamsAndKeepsThemIntact(t *testing.T) {
	eachMode(t, func(t *testing.T, mode string) {
		const d = 100 * time.Millisecond
		u := startPortal(t)
		p := listenTo(t, mode, u, Options{})
		host, array := connect(t, p, u)
		if _, err := p.InjectFault(Fault{Kind: Latency, Params: Params{Delay: d}}); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		send(t, host, []byte("hello"))
		expect(t, array, []byte("hello"))
		if took := time.Since(start); took < d {
			t.Fatalf("5 bytes crossed in %v under %v of latency", took, d)
		}

		// Large streams both ways at once cross intact; latency costs about
		// the delay once, not once per chunk.
		up, down := random(t, 4<<20), random(t, 4<<20)
		errc := make(chan error, 2)
		start = time.Now()
		go func() { _, err := host.Write(up); errc <- err }()
		go func() { _, err := array.Write(down); errc <- err }()
		expect(t, array, up)
		expect(t, host, down)
		for range 2 {
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
		}
		took := time.Since(start)
		t.Logf("4 MiB each way under %v of latency: %v", d, took)
		if took < d {
			t.Fatalf("bulk crossed in %v, under the delay", took)
		}

		// A half-close waits behind the bytes before it.
		send(t, host, []byte("bye"))
		host.(*net.TCPConn).CloseWrite()
		expect(t, array, []byte("bye"))
		array.SetReadDeadline(time.Now().Add(settle))
		if n, err := array.Read(make([]byte, 1)); n != 0 || err == nil {
			t.Fatalf("after the host's half-close: %d bytes, %v; want EOF", n, err)
		}
	})
}

func TestISCSIAwareFaultsPassOtherProtocolsIntact(t *testing.T) {
	eachMode(t, testISCSIAwareFaultsPassOtherProtocolsIntact)
}

func testISCSIAwareFaultsPassOtherProtocolsIntact(t *testing.T, mode string) {
	for _, f := range []Fault{{Kind: DropNOPIn}, {Kind: FailOpcode, Params: Params{Opcode: Opcode(0), Sense: Sense{Key: 5}}}} {
		u := startPortal(t)
		var mu sync.Mutex
		var logs []string
		p := listenTo(t, mode, u, Options{Logf: func(format string, args ...any) {
			mu.Lock()
			defer mu.Unlock()
			logs = append(logs, format)
		}})
		if _, err := p.InjectFault(f); err != nil {
			t.Fatal(err)
		}
		host, array := connect(t, p, u)
		send(t, host, []byte("login"))
		expect(t, array, []byte("login"))
		send(t, array, []byte("login ok"))
		expect(t, host, []byte("login ok"))
		bulk := random(t, 1<<20)
		go array.Write(bulk)
		expect(t, host, bulk)
		p.Close()
		mu.Lock()
		n := len(logs)
		mu.Unlock()
		if n != 2 {
			t.Errorf("%v: %d log lines, want one per direction saying it forwards unparsed", f, n)
		}
	}
}

// writeBatch writes PDUs the way certkit's front end does: headers and
// data segments as separate buffers of one net.Buffers, through
// WriteBuffers on an in-memory connection.
func writeBatch(t *testing.T, c net.Conn, pdus ...[]byte) {
	t.Helper()
	var v net.Buffers
	for _, p := range pdus {
		v = append(v, p[:iscsi.BHSLen])
		if len(p) > iscsi.BHSLen {
			v = append(v, p[iscsi.BHSLen:])
		}
	}
	c.SetWriteDeadline(time.Now().Add(settle))
	defer c.SetWriteDeadline(time.Time{})
	var err error
	if bw, ok := c.(interface {
		WriteBuffers(*net.Buffers) (int64, error)
	}); ok {
		_, err = bw.WriteBuffers(&v)
	} else {
		_, err = v.WriteTo(c)
	}
	if err != nil {
		t.Fatalf("array's write: %v", err)
	}
}

// recvPDU reads one PDU (no digests) within settle.
func recvPDU(t *testing.T, c net.Conn) *iscsi.PDU {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(settle))
	defer c.SetReadDeadline(time.Time{})
	p, err := iscsi.ReadPDU(c, iscsi.Framing{MaxDataSegment: 1 << 20})
	if err != nil {
		t.Fatalf("read a PDU from %s: %v", c.RemoteAddr(), err)
	}
	return p
}

// The iSCSI-aware faults and a one-way blackhole act the same on an array
// dialled over TCP and on one in memory, whose batched writes the proxy
// forwards from the array's own goroutine while nothing is queued.
func TestISCSIFaultsActTheSameOnEveryPath(t *testing.T) {
	eachMode(t, func(t *testing.T, mode string) {
		u := startPortal(t)
		p := listenTo(t, mode, u, Options{Logf: t.Logf})
		host, array := connect(t, p, u)
		inject := func(f Fault) {
			t.Helper()
			if _, err := p.InjectFault(f); err != nil {
				t.Fatal(err)
			}
		}
		revert := func() {
			t.Helper()
			if _, err := p.Revert(); err != nil {
				t.Fatal(err)
			}
		}
		none := iscsi.Digests{}
		req := wire(t, none, login(iscsi.OpLoginReq, true, "HeaderDigest=None", "DataDigest=None"))
		send(t, host, req)
		expect(t, array, req)
		writeBatch(t, array, wire(t, none, login(iscsi.OpLoginResp, true, "HeaderDigest=None", "DataDigest=None")))
		recvPDU(t, host)

		data := random(t, 4096)
		read := wire(t, none, dataIn(1, data, true, 2))
		writeBatch(t, array, read)
		expect(t, host, read)

		inject(Fault{Kind: DropNOPIn})
		writeBatch(t, array, wire(t, none, nopIn(5, iscsi.ReservedTag, []byte("pong"))), read, wire(t, none, nopIn(iscsi.ReservedTag, 6, nil)))
		expect(t, host, read)
		revert()
		ping := wire(t, none, nopIn(5, iscsi.ReservedTag, []byte("pong")))
		writeBatch(t, array, ping)
		expect(t, host, ping)

		inject(Fault{Kind: FailOpcode, Params: Params{Opcode: Opcode(0x28), Sense: Sense{Key: 5, ASC: 0x25}}})
		cmd := wire(t, none, scsiCmd(7, 0x28, 0))
		send(t, host, cmd)
		expect(t, array, cmd)
		writeBatch(t, array, wire(t, none, dataIn(7, data, true, 9)))
		checkCondition(t, recvPDU(t, host), 7, 9, 0, Sense{Key: 5, ASC: 0x25})
		revert()

		inject(Fault{Kind: DelayOpcode, Params: Params{Opcode: Opcode(0x28), Delay: quiet}})
		cmds := wire(t, none, scsiCmd(8, 0x28, 0), scsiCmd(9, 0x00, 0))
		send(t, host, cmds)
		expect(t, array, cmds)
		start := time.Now()
		held, tur := wire(t, none, dataIn(8, data, true, 10)), wire(t, none, scsiResp(9, 11))
		writeBatch(t, array, held, tur)
		expect(t, host, tur)
		expect(t, host, held)
		if took := time.Since(start); took < quiet {
			t.Errorf("READ's answer held %v, want at least %v", took, quiet)
		}
		revert()

		inject(Fault{Kind: Blackhole, Direction: Out})
		writeBatch(t, array, read, ping)
		silent(t, host)
		send(t, host, cmd)
		expect(t, array, cmd)
		revert()
		expect(t, host, append(append([]byte(nil), read...), ping...))
	})
}
