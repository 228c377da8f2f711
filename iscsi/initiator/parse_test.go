package initiator

import (
	"encoding/hex"
	"fmt"
	"strings"
	"testing"

	"github.com/certkit/certkit/iscsi"
)

func TestParsePortal(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Portal
		err  string
	}{
		{in: "127.0.0.1:3260,1", want: Portal{"127.0.0.1:3260", 1}},
		{in: "10.0.0.5:13260,257", want: Portal{"10.0.0.5:13260", 257}},
		{in: "[fe80::1]:3260,2", want: Portal{"[fe80::1]:3260", 2}},
		{in: "[::1],3", want: Portal{"[::1]:3260", 3}},
		{in: "array.example.com,1", want: Portal{"array.example.com:3260", 1}},
		{in: "127.0.0.1:3260", want: Portal{"127.0.0.1:3260", 0}},
		{in: "127.0.0.1:3260,x", err: `portal group tag "x"`},
		{in: "127.0.0.1:0,1", err: `port "0"`},
		{in: "fe80::1,1", err: "is not host:port"},
		{in: ":3260,1", err: "has no host"},
	} {
		got, err := ParsePortal(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParsePortal(%q): error %v, want one containing %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParsePortal(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
}

func TestParseSendTargetsGroupsAddressesUnderTheirTarget(t *testing.T) {
	kv := iscsi.Text{
		{Key: "TargetName", Value: "iqn.a"},
		{Key: "TargetAddress", Value: "127.0.0.1:3260,1"},
		{Key: "TargetAddress", Value: "[::1]:3261,2"},
		{Key: "TargetName", Value: "iqn.b"},
	}
	got, err := parseSendTargets(kv, "192.0.2.1:3260")
	if err != nil {
		t.Fatal(err)
	}
	want := []Target{
		{Name: "iqn.a", Portals: []Portal{{"127.0.0.1:3260", 1}, {"[::1]:3261", 2}}},
		{Name: "iqn.b", Portals: []Portal{{"192.0.2.1:3260", 1}}}, // no address: the discovery portal
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	if _, err := parseSendTargets(iscsi.Text{{Key: "TargetAddress", Value: "127.0.0.1:3260,1"}}, ""); err == nil {
		t.Error("TargetAddress before any TargetName accepted")
	}
	if got, err := parseSendTargets(nil, ""); err != nil || got == nil || len(got) != 0 {
		t.Errorf("empty answer: %v, %v; want an empty list", got, err)
	}
}

// tgtd's page 0x83 for LUN 1, as it answers it: T10 vendor ID, NAA 3, NAA 6.
const tgtdVPD83 = "00830048020100244945542020202020303030313030303100000000000000000000000000000000000000000103000830000001000000010103001060000000000000000e00000000010001"

func TestDeviceNAA(t *testing.T) {
	page, _ := hex.DecodeString(tgtdVPD83)
	if got, err := DeviceNAA(page); err != nil || got != "naa.60000000000000000e00000000010001" {
		t.Errorf("tgtd page: %q, %v; want the NAA 6 designator", got, err)
	}
	// Only designators of other associations or types: a clear error.
	noNAA := []byte{0, 0x83, 0, 12,
		0x01, 0x13, 0, 8, 0x60, 1, 2, 3, 4, 5, 6, 7} // NAA, but of the target port
	if _, err := DeviceNAA(noNAA); err == nil || !strings.Contains(err.Error(), "no NAA designator for the logical unit") {
		t.Errorf("no LU NAA: %v", err)
	}
	if _, err := DeviceNAA(page[:20]); err == nil || !strings.Contains(err.Error(), "runs past the page") && !strings.Contains(err.Error(), "no NAA") {
		t.Errorf("truncated page: %v", err)
	}
	if _, err := DeviceNAA([]byte{0, 0x80, 0, 0}); err == nil {
		t.Error("page 0x80 accepted")
	}
	bad := []byte{0, 0x83, 0, 8, 0x01, 0x03, 0, 200, 0x60, 0, 0, 0}
	if _, err := DeviceNAA(bad); err == nil || !strings.Contains(err.Error(), "runs past the page") {
		t.Errorf("designator longer than the page: %v", err)
	}
}

func TestParseSense(t *testing.T) {
	for _, tc := range []struct {
		name           string
		sense          []byte
		key, asc, ascq byte
		ok             bool
	}{
		{"fixed", []byte{0x70, 0, 0x06, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x2a, 0x06}, 6, 0x2a, 6, true},
		{"fixed deferred, valid bit", []byte{0xf1, 0, 0x02, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x04, 0x0a}, 2, 4, 0x0a, true},
		{"descriptor", []byte{0x72, 0x05, 0x24, 0x00, 0, 0, 0, 0}, 5, 0x24, 0, true},
		{"short fixed", []byte{0x70, 0, 0x05}, 5, 0, 0, true},
		{"unknown format", []byte{0x12, 1, 2}, 0, 0, 0, false},
		{"empty", nil, 0, 0, 0, false},
	} {
		key, asc, ascq, ok := ParseSense(tc.sense)
		if key != tc.key || asc != tc.asc || ascq != tc.ascq || ok != tc.ok {
			t.Errorf("%s: %x/%x/%x %v; want %x/%x/%x %v", tc.name, key, asc, ascq, ok, tc.key, tc.asc, tc.ascq, tc.ok)
		}
	}
}

func TestSCSIErrorMessages(t *testing.T) {
	for _, tc := range []struct {
		e    SCSIError
		want string
	}{
		{SCSIError{Status: StatusCheckCondition, Key: 6, ASC: 0x2a, ASCQ: 6}, "scsi: CHECK CONDITION, sense key UNIT ATTENTION (0x6), ASC/ASCQ 0x2a/0x06 (asymmetric access state changed)"},
		{SCSIError{Status: StatusCheckCondition, Key: 2, ASC: 0x99, ASCQ: 1}, "scsi: CHECK CONDITION, sense key NOT READY (0x2), ASC/ASCQ 0x99/0x01"},
		{SCSIError{Status: StatusReservationConflict}, "scsi: RESERVATION CONFLICT"},
		{SCSIError{Status: 0x7e}, "scsi: status 0x7e"},
	} {
		if got := tc.e.Error(); got != tc.want {
			t.Errorf("%+v: %q, want %q", tc.e, got, tc.want)
		}
	}
}

func TestLUNEncoding(t *testing.T) {
	for _, lun := range []uint64{0, 1, 255, 256, 16383} {
		f, err := EncodeLUN(lun)
		if err != nil {
			t.Fatal(err)
		}
		if back, err := DecodeLUN(f); err != nil || back != lun {
			t.Errorf("LUN %d -> %016x -> %d, %v", lun, f, back, err)
		}
	}
	if f, _ := EncodeLUN(1); f != 0x0001000000000000 {
		t.Errorf("LUN 1 encodes as %016x, want peripheral 0001000000000000", f)
	}
	if f, _ := EncodeLUN(300); f != 0x412c000000000000 {
		t.Errorf("LUN 300 encodes as %016x, want flat 412c000000000000", f)
	}
	if _, err := EncodeLUN(16384); err == nil {
		t.Error("LUN 16384 encoded")
	}
	for _, f := range []uint64{0x0101000000000000, 0x8001000000000000, 0x0001000100000000} {
		if _, err := DecodeLUN(f); err == nil {
			t.Errorf("LUN field %016x decoded; want an error", f)
		}
	}
}

func TestSerialArithmeticWraps(t *testing.T) {
	for _, tc := range []struct {
		a, b uint32
		lt   bool
	}{
		{1, 2, true}, {2, 1, false}, {5, 5, false},
		{0xffffffff, 0, true}, {0, 0xffffffff, false},
		{0xfffffff0, 0x10, true}, {0x10, 0xfffffff0, false},
		{0, 1<<31 - 1, true}, {0, 1 << 31, false}, // 2^31 apart: undefined, never "less"
	} {
		if got := serialLT(tc.a, tc.b); got != tc.lt {
			t.Errorf("serialLT(%#x, %#x) = %v, want %v", tc.a, tc.b, got, tc.lt)
		}
	}
}

// Keys the target proposes on its own get answers by the same RFC 7143 §13
// result functions; keys nobody knows get NotUnderstood.
func TestNegotiationAnswersTargetProposals(t *testing.T) {
	n := newNegotiation(offers(false, 65536))
	answers, err := n.apply(iscsi.Text{
		{Key: "MaxRecvDataSegmentLength", Value: "0x4000"},
		{Key: "MaxBurstLength", Value: "131072"},
		{Key: "IFMarker", Value: "Yes"},
		{Key: "X-com.example.Foo", Value: "1"},
		{Key: "TargetAlias", Value: "array-a"},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := iscsi.Text{{Key: "IFMarker", Value: "No"}, {Key: "X-com.example.Foo", Value: "NotUnderstood"}}
	if fmt.Sprint(answers) != fmt.Sprint(want) {
		t.Errorf("answers %v, want %v (MaxBurstLength was offered, so its answer is final)", answers, want)
	}
	p, err := n.params()
	if err != nil {
		t.Fatal(err)
	}
	if p.TargetMaxRecvDataSegmentLength != 16384 || p.MaxBurstLength != 131072 || p.TargetAlias != "array-a" || !p.InitialR2T {
		t.Errorf("params %+v: want target MRDSL 16384 (hex accepted), MaxBurstLength 131072, alias, InitialR2T default Yes (not answered)", p)
	}

	// A target proposing a key this side did not offer: min/max/and/or.
	n = newNegotiation(offers(true, 8192))
	answers, err = n.apply(iscsi.Text{
		{Key: "MaxBurstLength", Value: "1048576"},
		{Key: "MaxOutstandingR2T", Value: "4"},
		{Key: "ImmediateData", Value: "Yes"},
		{Key: "InitialR2T", Value: "No"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(answers); got != fmt.Sprint(iscsi.Text{{Key: "MaxBurstLength", Value: "262144"}, {Key: "MaxOutstandingR2T", Value: "1"}, {Key: "ImmediateData", Value: "Yes"}, {Key: "InitialR2T", Value: "No"}}) {
		t.Errorf("discovery answers %s", got)
	}
	for _, bad := range []iscsi.Text{
		{{Key: "MaxRecvDataSegmentLength", Value: "100"}},
		{{Key: "MaxBurstLength", Value: "big"}},
		{{Key: "DefaultTime2Wait", Value: "1"}}, // maximum of 2 and the answer: never 1
		{{Key: "DataPDUInOrder", Value: "No"}},  // OR with Yes: never No
		{{Key: "ImmediateData", Value: "Maybe"}},
	} {
		if _, err := newNegotiation(offers(false, 8192)).apply(bad); err == nil {
			t.Errorf("%v accepted", bad)
		}
	}
}
