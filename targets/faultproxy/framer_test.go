package faultproxy

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand"
	"strings"
	"testing"

	"github.com/certkit/certkit/iscsi"
)

// rig runs the two framers of one connection without sockets, the way the
// pumps do: each direction's bytes in chunks, in protocol order.
type rig struct {
	t        testing.TB
	fault    *Fault
	cs       *connState
	up, down *framer
	logs     []string
	held     [][]byte // PDUs the downstream framer held, in order
	flushes  int
}

func newRig(t testing.TB, f *Fault) *rig {
	r := &rig{t: t, fault: f}
	r.cs = newConnState(func() *Fault { return r.fault })
	logf := func(format string, args ...any) { r.logs = append(r.logs, fmt.Sprintf(format, args...)) }
	r.up = newFramer(toUpstream, r.cs, nil, logf)
	r.down = newFramer(toClient, r.cs, func() bool {
		return r.fault != nil && r.fault.Kind.iscsiAware() || r.cs.nmarks.Load() > 0
	}, logf)
	return r
}

// feed passes b through one direction in chunks of n bytes and returns
// what that direction forwards; held PDUs go out in place (a zero delay).
func (r *rig) feed(f *framer, b []byte, n int) []byte {
	var out []byte
	for len(b) > 0 {
		k := min(n, len(b))
		c := b[:k]
		b = b[k:]
		out = r.collect(out, f.feed(c), c)
	}
	return out
}

// eof ends one direction's input and returns what it still forwards.
func (r *rig) eof(f *framer) []byte { return r.collect(nil, f.eof(), nil) }

func (r *rig) collect(out []byte, ps []piece, c []byte) []byte {
	for _, p := range ps {
		switch {
		case p.kind == pieceFlushHeld:
			r.flushes++
		case p.kind == pieceHold:
			r.held = append(r.held, p.b)
			out = append(out, p.b...)
		case p.b != nil:
			out = append(out, p.b...)
		default:
			out = append(out, c[p.a:p.z]...)
		}
	}
	return out
}

// giveUps are the log lines of framers giving up.
func (r *rig) giveUps() []string {
	var g []string
	for _, l := range r.logs {
		if strings.Contains(l, "unparsed") {
			g = append(g, l)
		}
	}
	return g
}

// noLogs fails if the framers logged anything but logins.
func (r *rig) noLogs() {
	r.t.Helper()
	var other []string
	for _, l := range r.logs {
		if !strings.HasPrefix(l, "login done") {
			other = append(other, l)
		}
	}
	if len(other) > 0 {
		r.t.Fatalf("framer gave up on a valid stream:\n%s", strings.Join(other, "\n"))
	}
}

// PDU builders.

func wire(t testing.TB, d iscsi.Digests, ps ...*iscsi.PDU) []byte {
	t.Helper()
	var out []byte
	for _, p := range ps {
		b, err := p.Marshal(d)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b...)
	}
	return out
}

func text(kv ...string) []byte {
	var t iscsi.Text
	for _, s := range kv {
		k, v, _ := strings.Cut(s, "=")
		t.Add(k, v)
	}
	return t.Encode()
}

// login is a Login Request (op 0x03) or Response (0x23) in the operational
// stage; final moves to full feature phase.
func login(op iscsi.Opcode, final bool, kv ...string) *iscsi.PDU {
	p := iscsi.New(op)
	p.SetImmediate(op == iscsi.OpLoginReq)
	flags := byte(1 << 2) // CSG operational
	if final {
		flags |= iscsi.FlagTransit | 3
	}
	p.SetFlags(flags)
	p.SetITT(0)
	p.Data = text(kv...)
	return p
}

func scsiCmd(itt uint32, cdb0 byte, lun uint64) *iscsi.PDU {
	p := iscsi.New(iscsi.OpSCSICommand)
	p.SetFlags(iscsi.FlagFinal | iscsi.FlagRead | iscsi.AttrSimple)
	p.SetITT(itt)
	p.SetLUN(lun << 48)
	p.CDB()[0] = cdb0
	return p
}

func window(p *iscsi.PDU, statSN uint32) *iscsi.PDU {
	p.SetStatSN(statSN)
	p.SetExpCmdSN(statSN + 1)
	p.SetMaxCmdSN(statSN + 64)
	return p
}

func dataIn(itt uint32, data []byte, status bool, statSN uint32) *iscsi.PDU {
	p := iscsi.New(iscsi.OpDataIn)
	p.SetITT(itt)
	p.Data = data
	if status {
		p.SetFlags(iscsi.FlagFinal | iscsi.FlagStatus)
		window(p, statSN)
	}
	return p
}

func scsiResp(itt, statSN uint32) *iscsi.PDU {
	p := iscsi.New(iscsi.OpSCSIResponse)
	p.SetFlags(iscsi.FlagFinal)
	p.SetITT(itt)
	return window(p, statSN)
}

func nopIn(itt, ttt uint32, data []byte) *iscsi.PDU {
	p := iscsi.New(iscsi.OpNOPIn)
	p.SetFlags(iscsi.FlagFinal)
	p.SetITT(itt)
	p.SetTTT(ttt)
	p.Data = data
	return window(p, 1)
}

func r2t(itt uint32) *iscsi.PDU {
	p := iscsi.New(iscsi.OpR2T)
	p.SetFlags(iscsi.FlagFinal)
	p.SetITT(itt)
	p.SetTTT(0x1000 + itt)
	p.SetResidualCount(4096)
	return p
}

func withAHS(p *iscsi.PDU, words int) *iscsi.PDU {
	p.AHS = bytes.Repeat([]byte{0xa5}, 4*words)
	return p
}

var chunkSizes = []int{1, 3, 47, 48, 49, 53, 100, 1 << 20}

// loginWith runs a login in which the initiator offers both digests as
// "CRC32C,None" and the target answers with the given values.
func (r *rig) loginWith(hd, dd string, n int) {
	r.t.Helper()
	req := wire(r.t, iscsi.Digests{}, login(iscsi.OpLoginReq, true, "HeaderDigest=CRC32C,None", "DataDigest=CRC32C,None", "MaxRecvDataSegmentLength=262144"))
	resp := wire(r.t, iscsi.Digests{}, login(iscsi.OpLoginResp, true, "HeaderDigest="+hd, "DataDigest="+dd, "MaxRecvDataSegmentLength=262144"))
	if got := r.feed(r.up, req, n); !bytes.Equal(got, req) {
		r.t.Fatal("login request changed in transit")
	}
	if got := r.feed(r.down, resp, n); !bytes.Equal(got, resp) {
		r.t.Fatal("login response changed in transit")
	}
}

// readAll parses a PDU stream with digests d, failing on anything left over.
func readAll(t testing.TB, b []byte, d iscsi.Digests) []*iscsi.PDU {
	t.Helper()
	var ps []*iscsi.PDU
	rd := bytes.NewReader(b)
	for {
		p, err := iscsi.ReadPDU(rd, iscsi.Framing{Digests: d, MaxDataSegment: 1 << 24})
		if err == io.EOF {
			return ps
		}
		if err != nil {
			t.Fatalf("output PDU %d: %v", len(ps)+1, err)
		}
		ps = append(ps, p)
	}
}

func TestFramerObservesWithoutChangingAByte(t *testing.T) {
	for _, dg := range []iscsi.Digests{{}, {Header: true}, {Data: true}, {Header: true, Data: true}} {
		for _, n := range chunkSizes {
			r := newRig(t, nil)
			r.loginWith(map[bool]string{true: "CRC32C", false: "None"}[dg.Header], map[bool]string{true: "CRC32C", false: "None"}[dg.Data], n)
			up := wire(t, dg, scsiCmd(1, 0x28, 0), withAHS(scsiCmd(2, 0x2a, 0), 3), iscsi.New(iscsi.OpNOPOut))
			down := wire(t, dg, dataIn(1, make([]byte, 1001), false, 0), dataIn(1, []byte{1, 2, 3}, true, 5),
				r2t(2), scsiResp(2, 6), nopIn(iscsi.ReservedTag, 7, []byte("ping")))
			if got := r.feed(r.up, up, n); !bytes.Equal(got, up) {
				t.Fatalf("digests %+v, chunks of %d: host-to-array stream changed", dg, n)
			}
			if got := append(r.feed(r.down, down, n), r.eof(r.down)...); !bytes.Equal(got, down) {
				t.Fatalf("digests %+v, chunks of %d: array-to-host stream changed", dg, n)
			}
			r.noLogs()
			if _, got, _ := r.cs.phase(); got != dg {
				t.Fatalf("learnt digests %+v, negotiated %+v", got, dg)
			}
		}
	}
}

func TestFramerLearnsDigestsFromWhoeverAnswers(t *testing.T) {
	up := func(final bool, kv ...string) *iscsi.PDU { return login(iscsi.OpLoginReq, final, kv...) }
	down := func(final bool, kv ...string) *iscsi.PDU { return login(iscsi.OpLoginResp, final, kv...) }
	cases := []struct {
		name  string
		steps []*iscsi.PDU // alternating request, response
		want  iscsi.Digests
	}{
		{"initiator offers, target picks CRC32C",
			[]*iscsi.PDU{up(true, "HeaderDigest=CRC32C,None", "DataDigest=CRC32C,None"), down(true, "HeaderDigest=CRC32C", "DataDigest=CRC32C")},
			iscsi.Digests{Header: true, Data: true}},
		{"initiator offers, target picks None",
			[]*iscsi.PDU{up(true, "HeaderDigest=CRC32C,None", "DataDigest=CRC32C"), down(true, "HeaderDigest=None", "DataDigest=Reject")},
			iscsi.Digests{}},
		{"target offers in an earlier response, initiator answers",
			[]*iscsi.PDU{up(false), down(false, "HeaderDigest=CRC32C,None"), up(true, "HeaderDigest=CRC32C"), down(true)},
			iscsi.Digests{Header: true}},
		{"both offer: the answer to the first offer counts",
			[]*iscsi.PDU{up(false, "DataDigest=None,CRC32C"), down(false, "DataDigest=CRC32C"), up(true), down(true)},
			iscsi.Digests{Data: true}},
		{"nobody mentions digests", []*iscsi.PDU{up(true, "MaxBurstLength=262144"), down(true, "MaxBurstLength=262144")}, iscsi.Digests{}},
	}
	for _, tc := range cases {
		r := newRig(t, nil)
		for i, p := range tc.steps {
			f := r.up
			if i%2 == 1 {
				f = r.down
			}
			r.feed(f, wire(t, iscsi.Digests{}, p), 7)
		}
		r.noLogs()
		ffp, got, _ := r.cs.phase()
		if !ffp || got != tc.want {
			t.Errorf("%s: full feature phase %v, digests %+v; want %+v", tc.name, ffp, got, tc.want)
		}
	}
}

func TestFramerLoginTextAcrossContinuedPDUs(t *testing.T) {
	r := newRig(t, nil)
	r.feed(r.up, wire(t, iscsi.Digests{}, login(iscsi.OpLoginReq, true, "HeaderDigest=CRC32C")), 1000)
	// "HeaderDigest=CRC32C" split over two PDUs with the C bit on the first.
	kv := text("X-a=1", "HeaderDigest=CRC32C")
	first := login(iscsi.OpLoginResp, false)
	first.SetFlags(first.Flags() | iscsi.FlagContinue)
	first.Data = kv[:10]
	second := login(iscsi.OpLoginResp, true)
	second.Data = kv[10:]
	r.feed(r.down, wire(t, iscsi.Digests{}, first, second), 5)
	r.noLogs()
	if _, got, _ := r.cs.phase(); !got.Header {
		t.Fatalf("digests %+v: HeaderDigest split over continued PDUs was missed", got)
	}
}

// ffpRig is a rig past a login that settled on dg.
func ffpRig(t *testing.T, f *Fault, dg iscsi.Digests, n int) *rig {
	r := newRig(t, f)
	r.loginWith(map[bool]string{true: "CRC32C", false: "None"}[dg.Header], map[bool]string{true: "CRC32C", false: "None"}[dg.Data], n)
	return r
}

func TestFramerDropsEveryNOPInAndNothingElse(t *testing.T) {
	dg := iscsi.Digests{Header: true, Data: true}
	for _, n := range chunkSizes {
		r := ffpRig(t, &Fault{Kind: DropNOPIn}, dg, n)
		keep := []*iscsi.PDU{dataIn(1, make([]byte, 5000), false, 0), dataIn(1, make([]byte, 7), true, 3), withAHS(scsiResp(2, 4), 2)}
		in := wire(t, dg,
			nopIn(9, iscsi.ReservedTag, []byte("answer to a ping")), keep[0],
			nopIn(iscsi.ReservedTag, 42, nil), keep[1],
			nopIn(iscsi.ReservedTag, iscsi.ReservedTag, nil), keep[2],
			nopIn(10, iscsi.ReservedTag, make([]byte, 4097)))
		got := append(r.feed(r.down, in, n), r.eof(r.down)...)
		if want := wire(t, dg, keep...); !bytes.Equal(got, want) {
			t.Fatalf("chunks of %d: forwarded %d bytes, want the %d bytes of the three non-NOP-In PDUs", n, len(got), len(want))
		}
		r.noLogs()
	}
}

// checkCondition asserts that p is the SCSI Response fail-opcode sends.
func checkCondition(t *testing.T, p *iscsi.PDU, itt, statSN, expDataSN uint32, s Sense) {
	t.Helper()
	if p.Opcode() != iscsi.OpSCSIResponse || p.ITT() != itt || p.Flags() != iscsi.FlagFinal || p.BHS[2] != 0 || p.BHS[3] != 0x02 {
		t.Fatalf("got %s flags 0x%02x response %d status 0x%02x; want SCSI Response for ITT 0x%x, CHECK CONDITION", p, p.Flags(), p.BHS[2], p.BHS[3], itt)
	}
	if p.StatSN() != statSN || p.ExpCmdSN() != statSN+1 || p.MaxCmdSN() != statSN+64 {
		t.Errorf("StatSN/ExpCmdSN/MaxCmdSN %d/%d/%d, want the final PDU's %d/%d/%d", p.StatSN(), p.ExpCmdSN(), p.MaxCmdSN(), statSN, statSN+1, statSN+64)
	}
	if got := p.U32(36); got != expDataSN {
		t.Errorf("ExpDataSN %d, want %d", got, expDataSN)
	}
	if len(p.Data) != 20 || binary.BigEndian.Uint16(p.Data) != 18 {
		t.Fatalf("data segment % x: want SenseLength 18 and 18 bytes of sense", p.Data)
	}
	sense := p.Data[2:]
	if sense[0] != 0x70 || sense[2] != s.Key || sense[7] != 10 || sense[12] != s.ASC || sense[13] != s.ASCQ {
		t.Errorf("sense % x: want fixed format with %s", sense, s)
	}
}

func TestFramerFailOpcodeReplacesTheFinalStatus(t *testing.T) {
	pdl := Sense{Key: 5, ASC: 0x25}
	for _, dg := range []iscsi.Digests{{}, {Header: true, Data: true}} {
		for _, n := range chunkSizes {
			r := ffpRig(t, &Fault{Kind: FailOpcode, Params: Params{Opcode: Opcode(0x28), Sense: pdl}}, dg, n)
			write := scsiCmd(3, 0x2a, 0)
			r.feed(r.up, wire(t, dg, scsiCmd(1, 0x28, 0), scsiCmd(2, 0x00, 0), write, scsiCmd(4, 0x28, 7)), n)
			r.fault = nil // reverted: what was matched is still failed
			r.feed(r.up, wire(t, dg, scsiCmd(5, 0x28, 0)), n)
			down := wire(t, dg,
				dataIn(1, make([]byte, 3000), false, 0), r2t(3), dataIn(1, make([]byte, 1000), true, 10),
				scsiResp(2, 11), dataIn(4, []byte{1}, true, 12), scsiResp(3, 13), dataIn(5, []byte{9}, true, 14))
			ps := readAll(t, append(r.feed(r.down, down, n), r.eof(r.down)...), dg)
			if len(ps) != 6 {
				t.Fatalf("chunks of %d: %d PDUs forwarded, want 6: %v", n, len(ps), ps)
			}
			checkCondition(t, ps[1], 1, 10, 0, pdl)
			checkCondition(t, ps[3], 4, 12, 0, pdl)
			for i, want := range map[int]iscsi.Opcode{0: iscsi.OpR2T, 2: iscsi.OpSCSIResponse, 4: iscsi.OpSCSIResponse, 5: iscsi.OpDataIn} {
				if ps[i].Opcode() != want || ps[i].BHS[3] != 0 {
					t.Errorf("PDU %d is %s status %d, want %s passed unchanged", i, ps[i], ps[i].BHS[3], want)
				}
			}
			if r.cs.nmarks.Load() != 0 {
				t.Errorf("%d tasks still marked after their final status", r.cs.nmarks.Load())
			}
			r.noLogs()
		}
	}
}

func TestFramerFailOpcodeOnAWriteLetsItsR2TsThrough(t *testing.T) {
	r := ffpRig(t, &Fault{Kind: FailOpcode, Params: Params{Opcode: Opcode(0x2a), LUN: LUN(7), Sense: Sense{2, 4, 3}}}, iscsi.Digests{}, 100)
	r.feed(r.up, wire(t, iscsi.Digests{}, scsiCmd(1, 0x2a, 7), scsiCmd(2, 0x2a, 0)), 100)
	ps := readAll(t, r.feed(r.down, wire(t, iscsi.Digests{}, r2t(1), r2t(1), scsiResp(2, 20), scsiResp(1, 21)), 100), iscsi.Digests{})
	if len(ps) != 4 || ps[0].Opcode() != iscsi.OpR2T || ps[1].Opcode() != iscsi.OpR2T || ps[2].BHS[3] != 0 {
		t.Fatalf("forwarded %v: want both R2Ts and LUN 0's WRITE answered GOOD", ps)
	}
	checkCondition(t, ps[3], 1, 21, 2, Sense{2, 4, 3})
}

func TestFramerHoldsTheAnswersOfDelayedCommandsWhole(t *testing.T) {
	dg := iscsi.Digests{Header: true, Data: true}
	for _, n := range chunkSizes {
		r := ffpRig(t, &Fault{Kind: DelayOpcode, Params: Params{Opcode: Opcode(0x28), Delay: 1}}, dg, n)
		r.feed(r.up, wire(t, dg, scsiCmd(1, 0x28, 0), scsiCmd(2, 0x00, 0)), n)
		heldPDUs := []*iscsi.PDU{dataIn(1, make([]byte, 3000), false, 0), dataIn(1, make([]byte, 5), true, 7)}
		in := wire(t, dg, heldPDUs[0], scsiResp(2, 6), heldPDUs[1])
		if got := r.feed(r.down, in, n); !bytes.Equal(got, wire(t, dg, heldPDUs[0], scsiResp(2, 6), heldPDUs[1])) {
			t.Fatalf("chunks of %d: stream changed", n)
		}
		if len(r.held) != 2 || !bytes.Equal(r.held[0], wire(t, dg, heldPDUs[0])) || !bytes.Equal(r.held[1], wire(t, dg, heldPDUs[1])) {
			t.Fatalf("chunks of %d: held %d pieces, want READ's two Data-In PDUs, whole", n, len(r.held))
		}
		r.noLogs()
	}
}

func TestFramerFallsBackToPlainForwarding(t *testing.T) {
	dg := iscsi.Digests{Header: true, Data: true}
	badDigest := wire(t, dg, nopIn(1, iscsi.ReservedTag, nil))
	badDigest[iscsi.BHSLen] ^= 0xff
	cases := []struct {
		name string
		// prefix is forwarded as framed (NOP-Ins dropped), then tail as is.
		prefix, tail []*iscsi.PDU
		garbage      []byte
		log          string
	}{
		{name: "not iSCSI at all", garbage: []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n" + strings.Repeat("z", 100)), log: "does not start a PDU"},
		{name: "a host opcode from the array", prefix: []*iscsi.PDU{scsiResp(1, 1), nopIn(2, iscsi.ReservedTag, nil)},
			garbage: wire(t, dg, iscsi.New(iscsi.OpSCSICommand)), tail: []*iscsi.PDU{nopIn(3, iscsi.ReservedTag, nil)}, log: "does not start a PDU"},
		{name: "a header digest that does not match", prefix: []*iscsi.PDU{nopIn(2, iscsi.ReservedTag, []byte("x")), dataIn(4, []byte{1}, true, 1)},
			garbage: badDigest, tail: []*iscsi.PDU{nopIn(3, iscsi.ReservedTag, nil)}, log: "header digest"},
	}
	for _, tc := range cases {
		for _, n := range chunkSizes {
			r := newRig(t, &Fault{Kind: DropNOPIn})
			var want, in []byte
			if tc.prefix != nil || tc.tail != nil {
				r.loginWith("CRC32C", "CRC32C", n)
				for _, p := range tc.prefix {
					b := wire(t, dg, p)
					in = append(in, b...)
					if p.Opcode() != iscsi.OpNOPIn {
						want = append(want, b...)
					}
				}
			}
			in = append(in, tc.garbage...)
			want = append(want, tc.garbage...)
			tail := wire(t, dg, tc.tail...)
			in, want = append(in, tail...), append(want, tail...)
			got := append(r.feed(r.down, in, n), r.eof(r.down)...)
			if !bytes.Equal(got, want) {
				t.Fatalf("%s, chunks of %d: forwarded %d bytes, want %d: the framed prefix, then the rest as it came", tc.name, n, len(got), len(want))
			}
			if g := r.giveUps(); len(g) != 1 || !strings.Contains(g[0], tc.log) {
				t.Fatalf("%s: logs %q, want one line saying %q and that the rest goes unparsed", tc.name, r.logs, tc.log)
			}
		}
	}
}

func TestFramerGivesUpOnBothSidesWhenLoginCannotBeFollowed(t *testing.T) {
	r := newRig(t, &Fault{Kind: DropNOPIn})
	req := wire(t, iscsi.Digests{}, login(iscsi.OpLoginReq, true, "HeaderDigest=CRC32C"))
	bad := login(iscsi.OpLoginResp, true)
	bad.Data = []byte("HeaderDigest\x00") // not key=value
	resp := wire(t, iscsi.Digests{}, bad)
	r.feed(r.up, req, 10)
	if got := r.feed(r.down, resp, 10); !bytes.Equal(got, resp) {
		t.Fatal("login response changed in transit")
	}
	// Whatever follows goes as it came, both ways, NOP-Ins included.
	down := wire(t, iscsi.Digests{Header: true}, nopIn(1, iscsi.ReservedTag, nil))
	up := wire(t, iscsi.Digests{Header: true}, iscsi.New(iscsi.OpNOPOut))
	if got := r.feed(r.down, down, 10); !bytes.Equal(got, down) {
		t.Fatal("array-to-host stream changed after the framer gave up")
	}
	if got := r.feed(r.up, up, 10); !bytes.Equal(got, up) {
		t.Fatal("host-to-array stream changed after the other side gave up")
	}
	if len(r.giveUps()) != 2 {
		t.Fatalf("logs %q: want one line per direction saying it gives up", r.logs)
	}
}

func TestFramerForwardsAWithheldHeaderCutShortAtEOF(t *testing.T) {
	r := ffpRig(t, &Fault{Kind: DropNOPIn}, iscsi.Digests{}, 100)
	half := wire(t, iscsi.Digests{}, scsiResp(1, 1))[:30]
	got := append(r.feed(r.down, half, 7), r.eof(r.down)...)
	if !bytes.Equal(got, half) {
		t.Fatalf("forwarded % x, want the 30 bytes that came", got)
	}
}

// genStream builds a random array-to-host stream after a login with digests
// dg: PDUs of every kind the array sends, then optionally garbage and more
// PDUs. It returns the stream and what drop-nopin must make of it.
func genStream(t testing.TB, rnd *rand.Rand, dg iscsi.Digests, garbage bool) (in, want []byte) {
	nPDUs := 1 + rnd.Intn(12)
	cut := -1
	if garbage {
		cut = rnd.Intn(nPDUs + 1)
	}
	for i := 0; i <= nPDUs; i++ {
		if i == cut {
			g := make([]byte, 1+rnd.Intn(80))
			rnd.Read(g)
			g[0] = 0xc0 | g[0] // never a target opcode
			in, want = append(in, g...), append(want, g...)
		}
		if i == nPDUs {
			break
		}
		data := make([]byte, []int{0, 1, 3, 4, 48, 1000, 9000}[rnd.Intn(7)])
		rnd.Read(data)
		itt := uint32(rnd.Intn(4))
		var p *iscsi.PDU
		switch rnd.Intn(6) {
		case 0:
			p = nopIn(itt, iscsi.ReservedTag, data)
		case 1:
			p = dataIn(itt, data, rnd.Intn(2) == 0, uint32(i))
		case 2:
			p = scsiResp(itt, uint32(i))
		case 3:
			p = r2t(itt)
		case 4:
			p = iscsi.New(iscsi.OpAsyncMsg)
			p.Data = data
		default:
			p = nopIn(iscsi.ReservedTag, itt, nil)
		}
		if rnd.Intn(4) == 0 {
			withAHS(p, 1+rnd.Intn(3))
		}
		b := wire(t, dg, p)
		in = append(in, b...)
		if p.Opcode() != iscsi.OpNOPIn || (cut >= 0 && i >= cut) {
			want = append(want, b...)
		}
	}
	return in, want
}

// FuzzFramerStream: random valid streams, cut anywhere, with garbage
// anywhere: drop-nopin drops exactly the NOP-Ins before the garbage and
// forwards the rest byte for byte.
func FuzzFramerStream(f *testing.F) {
	for i := range int64(8) {
		f.Add(i, uint16(1+i*13), i%2 == 0, i%3 == 0, i%4 == 0)
	}
	f.Fuzz(func(t *testing.T, seed int64, chunk uint16, hd, dd, garbage bool) {
		dg := iscsi.Digests{Header: hd, Data: dd}
		n := int(chunk)%4096 + 1
		r := ffpRig(t, &Fault{Kind: DropNOPIn}, dg, n)
		in, want := genStream(t, rand.New(rand.NewSource(seed)), dg, garbage)
		got := append(r.feed(r.down, in, n), r.eof(r.down)...)
		if !bytes.Equal(got, want) {
			t.Fatalf("forwarded %d bytes, want %d (garbage %v, digests %+v, chunks of %d)", len(got), len(want), garbage, dg, n)
		}
		if !garbage {
			r.noLogs()
		}
	})
}

// FuzzFramer feeds arbitrary bytes both ways: the framer never panics,
// never changes a byte host to array, and array to host changes nothing
// without a fault, holds PDUs only whole (in place here) and under
// drop-nopin only ever leaves bytes out.
func FuzzFramer(f *testing.F) {
	dg := iscsi.Digests{Header: true, Data: true}
	loginUp := wire(f, iscsi.Digests{}, login(iscsi.OpLoginReq, true, "HeaderDigest=CRC32C,None", "DataDigest=CRC32C"))
	loginDown := wire(f, iscsi.Digests{}, login(iscsi.OpLoginResp, true, "HeaderDigest=CRC32C", "DataDigest=CRC32C"))
	cat := func(bs ...[]byte) []byte { return bytes.Join(bs, nil) }
	f.Add(loginUp, loginDown, uint8(7), uint8(1))
	f.Add(cat(loginUp, wire(f, dg, scsiCmd(1, 0x28, 0), scsiCmd(2, 0, 0))),
		cat(loginDown, wire(f, dg, nopIn(1, iscsi.ReservedTag, []byte("abc")), dataIn(1, make([]byte, 100), true, 1), scsiResp(2, 2))), uint8(47), uint8(2))
	f.Add(cat(loginUp, wire(f, dg, scsiCmd(1, 0x28, 0))), cat(loginDown, wire(f, dg, dataIn(1, []byte("data"), false, 0), dataIn(1, nil, true, 1))), uint8(48), uint8(3))
	f.Add(wire(f, iscsi.Digests{}, login(iscsi.OpLoginReq, true)), cat(wire(f, iscsi.Digests{}, login(iscsi.OpLoginResp, true)),
		wire(f, iscsi.Digests{}, nopIn(1, iscsi.ReservedTag, []byte("abc")), dataIn(2, []byte("data"), true, 1))), uint8(5), uint8(1))
	f.Add([]byte("random"), []byte{0x23, 0, 0, 0, 0, 0xff, 0xff, 0xff}, uint8(0), uint8(1))
	faults := []*Fault{nil, {Kind: DropNOPIn}, {Kind: FailOpcode, Params: Params{Opcode: Opcode(0x28), Sense: Sense{Key: 5, ASC: 0x25}}},
		{Kind: DelayOpcode, Params: Params{Opcode: Opcode(0x28), Delay: 1}}}
	f.Fuzz(func(t *testing.T, up, down []byte, chunk, kind uint8) {
		fault := faults[int(kind)%len(faults)]
		r := newRig(t, fault)
		n := int(chunk) + 1
		inUp, inDown := up, down
		var gotUp, gotDown []byte
		for len(up) > 0 || len(down) > 0 {
			k := min(n, len(up))
			gotUp = r.collect(gotUp, r.up.feed(up[:k]), up[:k])
			up = up[k:]
			k = min(n, len(down))
			gotDown = r.collect(gotDown, r.down.feed(down[:k]), down[:k])
			down = down[k:]
		}
		gotUp = append(gotUp, r.eof(r.up)...)
		gotDown = append(gotDown, r.eof(r.down)...)
		if !bytes.Equal(gotUp, inUp) {
			t.Fatalf("host-to-array stream changed: %d bytes in, %d out", len(inUp), len(gotUp))
		}
		switch {
		case fault == nil || fault.Kind == DelayOpcode:
			if !bytes.Equal(gotDown, inDown) {
				t.Fatalf("array-to-host stream changed under %v: %d bytes in, %d out", fault, len(inDown), len(gotDown))
			}
		case fault.Kind == DropNOPIn:
			if !subsequence(gotDown, inDown) {
				t.Fatalf("drop-nopin forwarded bytes that did not come from the array")
			}
		}
	})
}

// subsequence reports whether a is b with some bytes left out.
func subsequence(a, b []byte) bool {
	for _, c := range a {
		i := bytes.IndexByte(b, c)
		if i < 0 {
			return false
		}
		b = b[i+1:]
	}
	return true
}

func TestFramerForgetsTasksTheHostAborts(t *testing.T) {
	r := ffpRig(t, &Fault{Kind: FailOpcode, Params: Params{Opcode: Opcode(0x28), Sense: Sense{Key: 5, ASC: 0x25}}}, iscsi.Digests{}, 64)
	tmf := func(function byte, ref uint32) *iscsi.PDU {
		p := iscsi.New(iscsi.OpTaskMgmtReq)
		p.SetImmediate(true)
		p.SetFlags(iscsi.FlagFinal | function)
		p.SetITT(99)
		p.SetU32(20, ref)
		return p
	}
	r.feed(r.up, wire(t, iscsi.Digests{}, scsiCmd(1, 0x28, 0), scsiCmd(2, 0x28, 0), scsiCmd(3, 0x28, 0)), 64)
	r.feed(r.up, wire(t, iscsi.Digests{}, tmf(1, 2)), 64) // ABORT TASK 2
	if n := r.cs.nmarks.Load(); n != 2 {
		t.Fatalf("%d tasks marked after ABORT TASK of one of three", n)
	}
	// The array answers the aborted task after all: it passes.
	if ps := readAll(t, r.feed(r.down, wire(t, iscsi.Digests{}, scsiResp(2, 5)), 64), iscsi.Digests{}); len(ps) != 1 || ps[0].BHS[3] != 0 {
		t.Fatalf("answer to the aborted task: %v", ps)
	}
	r.feed(r.up, wire(t, iscsi.Digests{}, tmf(5, 0)), 64) // LOGICAL UNIT RESET
	if n := r.cs.nmarks.Load(); n != 0 {
		t.Fatalf("%d tasks marked after LOGICAL UNIT RESET", n)
	}
	r.noLogs()
}
