package frontend

import (
	"bytes"
	"strings"
	"testing"

	"github.com/certkit/certkit/iscsi"
)

// FuzzCHAPKeys feeds arbitrary security-stage texts (requests separated by
// '|') to a target that requires mutual CHAP: it must never panic, never
// authenticate an initiator that did not answer its challenge, and never
// put a secret in an error.
func FuzzCHAPKeys(f *testing.F) {
	f.Add([]byte("AuthMethod=CHAP,None|CHAP_A=5|CHAP_N=esx\x00CHAP_R=0x00"))
	f.Add([]byte("AuthMethod=CHAP\x00CHAP_A=5,7|CHAP_N=esx\x00CHAP_R=0b3q2+7w==\x00CHAP_I=300\x00CHAP_C=0x"))
	f.Add([]byte("CHAP_N=esx|AuthMethod=None"))
	f.Add([]byte("AuthMethod=CHAP|CHAP_A=5|CHAP_N=esx\x00CHAP_R=0xzz\x00CHAP_I=0x1\x00CHAP_C=0xabc"))
	const secret, mutual = "fuzz-secret-0001", "fuzz-mutual-0002"
	srv := &Server{cfg: Config{TargetName: "iqn.2024-01.io.certkit:fuzz", Auth: Auth{Name: "esx", Secret: secret, MutualName: "arr", MutualSecret: mutual}}}
	f.Fuzz(func(t *testing.T, in []byte) {
		l := &loginConn{srv: srv, initiator: "iqn.2024-01.io.certkit:fuzzer"}
		for _, part := range bytes.Split(in, []byte("|")) {
			kv, err := iscsi.ParseText(part)
			if err != nil {
				return
			}
			var out iscsi.Text
			if _, err := l.authenticate(kv, stageSecurity, &out); err != nil {
				if strings.Contains(err.Error(), secret) || strings.Contains(err.Error(), mutual) {
					t.Fatalf("error shows a secret: %v", err)
				}
				return
			}
			if l.auth.step == chapDone {
				// Only MD5(id || secret || challenge) gets here: a fuzzer
				// cannot guess the response to a random challenge.
				t.Fatalf("authenticated without the secret: %q", in)
			}
		}
	})
}
