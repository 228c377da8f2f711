package bundle

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// keyPair writes a key pair with WriteKeyPair and loads it back.
func keyPair(t *testing.T) (ed25519.PublicKey, ed25519.PrivateKey) {
	t.Helper()
	prefix := filepath.Join(t.TempDir(), "signer")
	id, err := WriteKeyPair(prefix)
	if err != nil {
		t.Fatal(err)
	}
	key, err := LoadPrivateKey(prefix + ".key")
	if err != nil {
		t.Fatal(err)
	}
	pub, err := LoadPublicKey(prefix + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	if KeyID(pub) != id || !pub.Equal(key.Public()) {
		t.Fatalf("key pair does not match: id %s, pub %x", id, pub)
	}
	return pub, key
}

func writeSigned(t *testing.T, key ed25519.PrivateKey) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "signed.tgz")
	w, err := Create(p, Meta{ToolVersion: "v1", SignKey: key, Now: newClock().Now})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.AddResult(TestResult{ID: "t", Status: StatusPassed}); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestSignedBundleVerifiesAgainstItsKeyOnly(t *testing.T) {
	pub, key := keyPair(t)
	p := writeSigned(t, key)
	es := readEntries(t, p)
	if es[1].hdr.Name != SignatureName {
		t.Fatalf("second entry %s, want %s", es[1].hdr.Name, SignatureName)
	}

	c, err := Check(p, VerifyOptions{PublicKey: pub})
	if err != nil || c.Signer != KeyID(pub) || !c.Trusted {
		t.Fatalf("Check with the signer's key = %+v, %v", c, err)
	}
	// Without a trusted key the signature is still checked against the key it names.
	c, err = Check(p, VerifyOptions{})
	if err != nil || c.Signer != KeyID(pub) || c.Trusted {
		t.Fatalf("Check without a key = %+v, %v", c, err)
	}
	b, err := Read(p)
	if err != nil || b.Signer() != KeyID(pub) {
		t.Fatalf("Read: signer %q, %v", b.Signer(), err)
	}

	other, _ := keyPair(t)
	_, err = Check(p, VerifyOptions{PublicKey: other})
	var ve *VerifyError
	if !errors.As(err, &ve) || !strings.Contains(err.Error(), "manifest.sig: signed by key "+KeyID(pub)+", not by the trusted key "+KeyID(other)) {
		t.Errorf("Check with another key = %v", err)
	}

	unsigned := writeSample(t, t.TempDir(), "unsigned.tgz", newClock())
	if _, err := Check(unsigned, VerifyOptions{PublicKey: pub}); err == nil || !strings.Contains(err.Error(), "manifest.sig: missing: the bundle is not signed, and a signature by key "+KeyID(pub)+" is required") {
		t.Errorf("Check of an unsigned bundle with a key = %v", err)
	}
	if c, err := Check(unsigned, VerifyOptions{}); err != nil || c.Signer != "" {
		t.Errorf("Check of an unsigned bundle = %+v, %v", c, err)
	}
}

// A forger who changes a file and rehashes the manifest cannot re-sign it.
func TestSignatureCatchesARehashedManifest(t *testing.T) {
	pub, key := keyPair(t)
	p := writeSigned(t, key)
	es := readEntries(t, p)
	for i := range es {
		if es[i].hdr.Name == "tests/t/result.json" {
			es[i].data = bytes.Replace(es[i].data, []byte(`"passed"`), []byte(`"failed"`), 1)
		}
	}
	forged := filepath.Join(t.TempDir(), "forged.tgz")
	if err := os.WriteFile(forged, packEntries(t, rehash(t, es)), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, opts := range []VerifyOptions{{}, {PublicKey: pub}} {
		_, err := Check(forged, opts)
		if err == nil || !strings.Contains(err.Error(), "manifest.sig: signature by key "+KeyID(pub)+" does not match manifest.json: the manifest was changed after signing") {
			t.Errorf("Check(%v) of a rehashed bundle = %v", opts.PublicKey != nil, err)
		}
	}
	// Dropping the signature only helps a forger against a reviewer who asks for none.
	es = slices.DeleteFunc(es, func(e entry) bool { return e.hdr.Name == SignatureName })
	if err := os.WriteFile(forged, packEntries(t, es), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Check(forged, VerifyOptions{PublicKey: pub}); err == nil || !strings.Contains(err.Error(), "manifest.sig: missing") {
		t.Errorf("Check of a bundle stripped of its signature = %v", err)
	}
}

func TestMalformedSignatures(t *testing.T) {
	_, key := keyPair(t)
	p := writeSigned(t, key)
	for sig, want := range map[string]string{
		`not json`:            "manifest.sig: not a certkit signature: malformed JSON at line 1, column 2",
		`{"algorithm":"rsa"}`: `algorithm "rsa" is not supported`,
		`{"algorithm":"ed25519","public_key":"AAAA"}`: "public_key is 3 bytes, want 32",
		`{"algorithm":"ed25519","extra":1}`:           `unknown field "extra"`,
	} {
		es := readEntries(t, p)
		for i := range es {
			if es[i].hdr.Name == SignatureName {
				es[i].data = []byte(sig)
			}
		}
		_, _, err := verifyProblems(t, packEntries(t, es))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("signature %s: %v, want %q", sig, err, want)
		}
	}
}

func TestKeyFilesAreCheckedClearly(t *testing.T) {
	dir := t.TempDir()
	prefix := filepath.Join(dir, "k")
	if _, err := WriteKeyPair(prefix); err != nil {
		t.Fatal(err)
	}
	if _, err := WriteKeyPair(prefix); err == nil || !strings.Contains(err.Error(), "k.key already exists") {
		t.Errorf("WriteKeyPair over an existing key: %v", err)
	}
	if fi, err := os.Stat(prefix + ".key"); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("private key mode: %v %v", fi.Mode(), err)
	}
	if err := os.Chmod(prefix+".key", 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadPrivateKey(prefix + ".key"); err == nil || !strings.Contains(err.Error(), "mode 0644 lets others read it; run chmod 600") {
		t.Errorf("world-readable key: %v", err)
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKCS8PrivateKey(rsaKey)
	pubDER, _ := x509.MarshalPKIXPublicKey(&rsaKey.PublicKey)
	for name, tc := range map[string]struct {
		data string
		load func(string) error
		want string
	}{
		"rsa private":       {string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})), loadPriv, "holds a *rsa.PrivateKey key; bundles are signed with ed25519"},
		"rsa public":        {string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})), loadPub, "holds a *rsa.PublicKey key"},
		"public as private": {mustRead(t, prefix+".pub"), loadPriv, `PEM block is "PUBLIC KEY", want "PRIVATE KEY"`},
		"not PEM":           {"hello", loadPub, `no PEM block; want a "PUBLIC KEY" PEM block`},
		"trailing junk":     {mustRead(t, prefix+".pub") + "junk", loadPub, "data after the"},
		"garbage DER":       {string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: []byte{1, 2, 3}})), loadPub, "PUBLIC KEY block does not hold a valid PKIX key (asn1: "},
	} {
		f := filepath.Join(dir, strings.ReplaceAll(name, " ", "_"))
		if err := os.WriteFile(f, []byte(tc.data), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := tc.load(f); err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), f) {
			t.Errorf("%s: %v, want %q naming the file", name, err, tc.want)
		}
	}
	if _, err := LoadPublicKey(filepath.Join(dir, "absent.pub")); err == nil || !strings.Contains(err.Error(), "absent.pub") {
		t.Errorf("missing key file: %v", err)
	}
}

func loadPriv(p string) error { _, err := LoadPrivateKey(p); return err }
func loadPub(p string) error  { _, err := LoadPublicKey(p); return err }

func mustRead(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
