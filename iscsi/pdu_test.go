package iscsi

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

func TestMarshalReadRoundTripWithDigests(t *testing.T) {
	for _, d := range []Digests{{}, {Header: true}, {Data: true}, {Header: true, Data: true}} {
		p := New(OpSCSICommand)
		p.SetImmediate(true)
		p.SetFlags(FlagFinal | FlagWrite | AttrSimple)
		p.SetLUN(1 << 48)
		p.SetITT(7)
		p.SetCmdSN(42)
		p.SetExpectedDataLength(5)
		p.CDB()[0] = 0x2a
		p.Data = []byte("hello")
		b, err := p.Marshal(d)
		if err != nil {
			t.Fatal(err)
		}
		got, err := ReadPDU(bytes.NewReader(b), Framing{Digests: d})
		if err != nil {
			t.Fatalf("digests %+v: %v", d, err)
		}
		if got.Opcode() != OpSCSICommand || !got.Immediate() || got.ITT() != 7 || got.CmdSN() != 42 ||
			got.LUN() != 1<<48 || got.CDB()[0] != 0x2a || string(got.Data) != "hello" {
			t.Fatalf("digests %+v: round trip changed the PDU: %v", d, got)
		}
	}
}

func TestReadPDURejectsCorruptAndOversizePDUs(t *testing.T) {
	p := New(OpNOPOut)
	p.Data = make([]byte, 16)
	b, _ := p.Marshal(Digests{Header: true, Data: true})

	bad := append([]byte(nil), b...)
	bad[3] ^= 1
	if _, err := ReadPDU(bytes.NewReader(bad), Framing{Digests: Digests{Header: true, Data: true}}); !errors.Is(err, ErrHeaderDigest) {
		t.Errorf("flipped header bit: got %v, want ErrHeaderDigest", err)
	}
	bad = append([]byte(nil), b...)
	bad[BHSLen+4+1] ^= 1
	if _, err := ReadPDU(bytes.NewReader(bad), Framing{Digests: Digests{Header: true, Data: true}}); !errors.Is(err, ErrDataDigest) {
		t.Errorf("flipped data bit: got %v, want ErrDataDigest", err)
	}
	if _, err := ReadPDU(bytes.NewReader(b), Framing{Digests: Digests{Header: true, Data: true}, MaxDataSegment: 8}); !errors.Is(err, ErrTooLong) {
		t.Errorf("16-byte segment with limit 8: got %v, want ErrTooLong", err)
	}
	if _, err := ReadPDU(bytes.NewReader(b[:20]), Framing{}); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("truncated header: got %v, want ErrUnexpectedEOF", err)
	}
	if _, err := ReadPDU(bytes.NewReader(nil), Framing{}); err != io.EOF {
		t.Errorf("empty stream: got %v, want io.EOF", err)
	}
}

func TestParseText(t *testing.T) {
	txt, err := ParseText([]byte("InitiatorName=iqn.1998-01.com.vmware:esx1\x00SessionType=Normal\x00\x00\x00"))
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := txt.Get("SessionType"); v != "Normal" || len(txt) != 2 {
		t.Fatalf("got %v", txt)
	}
	if !bytes.Equal(txt.Encode(), []byte("InitiatorName=iqn.1998-01.com.vmware:esx1\x00SessionType=Normal\x00")) {
		t.Fatalf("encode: %q", txt.Encode())
	}
	if _, err := ParseText([]byte("novalue\x00")); err == nil {
		t.Fatal("want error for an item without '='")
	}
}

func FuzzReadPDU(f *testing.F) {
	p := New(OpLoginReq)
	p.Data = Text{{"InitiatorName", "iqn.x"}}.Encode()
	b, _ := p.Marshal(Digests{})
	f.Add(b, false, false)
	f.Fuzz(func(t *testing.T, in []byte, hd, dd bool) {
		p, err := ReadPDU(bytes.NewReader(in), Framing{Digests: Digests{hd, dd}, MaxDataSegment: 1 << 16})
		if err != nil || p == nil {
			return
		}
		out, err := p.Marshal(Digests{hd, dd})
		if err != nil {
			t.Fatalf("re-marshal of a PDU that parsed: %v", err)
		}
		if _, err := ReadPDU(bytes.NewReader(out), Framing{Digests: Digests{hd, dd}, MaxDataSegment: 1 << 16}); err != nil {
			t.Fatalf("re-read: %v", err)
		}
		_, _ = ParseText(p.Data)
	})
}
