package iscsi

import (
	"crypto/md5"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strconv"
)

// CHAP primitives shared by the initiator and the target (RFC 7143 §12.1.3,
// RFC 1994). Only MD5 (CHAP_A=5) is used: it is what ESXi, open-iscsi,
// libiscsi and tgtd speak.

// CHAPResponse is RFC 1994's MD5(identifier || secret || challenge).
func CHAPResponse(id byte, secret string, challenge []byte) []byte {
	h := md5.New()
	h.Write([]byte{id})
	h.Write([]byte(secret))
	h.Write(challenge)
	return h.Sum(nil)
}

// ParseCHAPID reads CHAP_I: a number 0..255, decimal or 0x hex.
func ParseCHAPID(v string) (byte, error) {
	base, digits := 10, v
	if len(v) > 2 && (v[:2] == "0x" || v[:2] == "0X") {
		base, digits = 16, v[2:]
	}
	n, err := strconv.ParseUint(digits, base, 8)
	if err != nil {
		return 0, fmt.Errorf("CHAP_I=%q is not a number in 0..255", v)
	}
	return byte(n), nil
}

// EncodeBinary renders a binary value as RFC 7143 §6.1 hex ("0x..."), as
// ESXi, open-iscsi, libiscsi and tgtd do.
func EncodeBinary(b []byte) string { return "0x" + hex.EncodeToString(b) }

// DecodeBinary reads an RFC 7143 §6.1 binary value, 0x hex or 0b base64.
// The error names the key but never echoes the value (it may be a CHAP
// response).
func DecodeBinary(key, v string) ([]byte, error) {
	if len(v) > 2 {
		switch v[:2] {
		case "0x", "0X":
			d := v[2:]
			if len(d)%2 == 1 {
				d = "0" + d
			}
			if b, err := hex.DecodeString(d); err == nil && len(b) > 0 {
				return b, nil
			}
		case "0b", "0B":
			if b, err := base64.StdEncoding.DecodeString(v[2:]); err == nil && len(b) > 0 {
				return b, nil
			}
		}
	}
	return nil, fmt.Errorf("%s is not a binary value (0x hex or 0b base64)", key)
}
