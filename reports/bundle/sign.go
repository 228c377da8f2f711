package bundle

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
)

// A signed bundle holds manifest.sig next to manifest.json (see BUNDLE.md):
//
//	{"algorithm":"ed25519","key_id":"sha256:<hex>","public_key":"<base64>","signature":"<base64>"}
//
// The signature is ed25519 over signedMessage(manifest.json): a fixed
// context line and the SHA-256 of the manifest's bytes. The manifest lists
// the SHA-256 of every other file, so the signature covers the whole bundle.
// public_key is carried so a bundle can be checked for corruption without a
// trusted key; trust comes only from checking it against the reviewer's key
// (`certkit bundle verify --pubkey FILE`).

// SignatureAlgorithm is the only algorithm manifest.sig may name.
const SignatureAlgorithm = "ed25519"

// signatureContext starts the signed message, so a certkit signature cannot
// be mistaken for a signature over anything else.
const signatureContext = "certkit bundle manifest v1\n"

// Signature is the content of manifest.sig.
type Signature struct {
	Algorithm string `json:"algorithm"`
	KeyID     string `json:"key_id"`     // KeyID(public key)
	PublicKey []byte `json:"public_key"` // raw 32-byte ed25519 key, base64 in JSON
	Signature []byte `json:"signature"`  // 64 bytes, base64 in JSON
}

func signedMessage(manifest []byte) []byte {
	sum := sha256.Sum256(manifest)
	return []byte(signatureContext + "sha256:" + hex.EncodeToString(sum[:]) + "\n")
}

// KeyID names a public key: "sha256:" and the hex SHA-256 of its PKIX (DER)
// encoding, the bytes of the PEM file's "PUBLIC KEY" block.
func KeyID(pub ed25519.PublicKey) string {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "sha256:?"
	}
	sum := sha256.Sum256(der)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// signManifest returns manifest.sig for manifest.
func signManifest(key ed25519.PrivateKey, manifest []byte) ([]byte, error) {
	pub, ok := key.Public().(ed25519.PublicKey)
	if !ok || len(key) != ed25519.PrivateKeySize {
		return nil, errors.New("signing key is not an ed25519 private key")
	}
	s := Signature{Algorithm: SignatureAlgorithm, KeyID: KeyID(pub), PublicKey: pub,
		Signature: ed25519.Sign(key, signedMessage(manifest))}
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(data, '\n'), nil
}

// checkSignature checks manifest.sig against the manifest. With trusted set,
// the signature must also be by that key. It returns the signer's key ID.
func checkSignature(sig, manifest []byte, trusted ed25519.PublicKey) (string, error) {
	var s Signature
	dec := json.NewDecoder(bytes.NewReader(sig))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return "", fmt.Errorf("not a certkit signature: %s", jsonProblem(sig, err))
	}
	switch {
	case s.Algorithm != SignatureAlgorithm:
		return "", fmt.Errorf("algorithm %q is not supported (want %q)", shorten(s.Algorithm, 40), SignatureAlgorithm)
	case len(s.PublicKey) != ed25519.PublicKeySize:
		return "", fmt.Errorf("public_key is %d bytes, want %d", len(s.PublicKey), ed25519.PublicKeySize)
	case len(s.Signature) != ed25519.SignatureSize:
		return "", fmt.Errorf("signature is %d bytes, want %d", len(s.Signature), ed25519.SignatureSize)
	}
	pub := ed25519.PublicKey(s.PublicKey)
	id := KeyID(pub)
	if s.KeyID != id {
		return "", fmt.Errorf("key_id %s does not name the public key it carries (%s)", shorten(s.KeyID, 80), id)
	}
	if !ed25519.Verify(pub, signedMessage(manifest), s.Signature) {
		return id, fmt.Errorf("signature by key %s does not match manifest.json: the manifest was changed after signing", id)
	}
	if trusted != nil && !bytes.Equal(trusted, pub) {
		return id, fmt.Errorf("signed by key %s, not by the trusted key %s", id, KeyID(trusted))
	}
	return id, nil
}

// GenerateKey makes a new ed25519 key pair for signing bundles.
func GenerateKey() (ed25519.PublicKey, ed25519.PrivateKey, error) {
	return ed25519.GenerateKey(rand.Reader)
}

// MarshalPrivateKey encodes key as a PEM "PRIVATE KEY" block (PKCS #8).
func MarshalPrivateKey(key ed25519.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// MarshalPublicKey encodes pub as a PEM "PUBLIC KEY" block (PKIX).
func MarshalPublicKey(pub ed25519.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}

// ParsePrivateKey decodes a PEM "PRIVATE KEY" (PKCS #8) ed25519 key.
func ParsePrivateKey(data []byte) (ed25519.PrivateKey, error) {
	block, err := onePEM(data, "PRIVATE KEY")
	if err != nil {
		return nil, err
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("PRIVATE KEY block does not hold a valid PKCS #8 key (%s)", shorten(err.Error(), 80))
	}
	key, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("PRIVATE KEY block holds a %T key; bundles are signed with ed25519 (make one with certkit bundle keygen)", k)
	}
	return key, nil
}

// ParsePublicKey decodes a PEM "PUBLIC KEY" (PKIX) ed25519 key.
func ParsePublicKey(data []byte) (ed25519.PublicKey, error) {
	block, err := onePEM(data, "PUBLIC KEY")
	if err != nil {
		return nil, err
	}
	k, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("PUBLIC KEY block does not hold a valid PKIX key (%s)", shorten(err.Error(), 80))
	}
	pub, ok := k.(ed25519.PublicKey)
	if !ok {
		return nil, fmt.Errorf("PUBLIC KEY block holds a %T key; bundles are signed with ed25519", k)
	}
	return pub, nil
}

func onePEM(data []byte, typ string) (*pem.Block, error) {
	block, rest := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("no PEM block; want a %q PEM block", typ)
	}
	if block.Type != typ {
		return nil, fmt.Errorf("PEM block is %q, want %q", shorten(block.Type, 40), typ)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, fmt.Errorf("data after the %q PEM block", typ)
	}
	return block, nil
}

// maxKeyFileBytes bounds key files: a PEM ed25519 key is ~120 bytes.
const maxKeyFileBytes = 64 << 10

// LoadPrivateKey reads a signing key file written by `certkit bundle
// keygen`. The file must not be readable by group or others.
func LoadPrivateKey(path string) (ed25519.PrivateKey, error) {
	data, err := readKeyFile(path)
	if err != nil {
		return nil, err
	}
	if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("signing key %s: mode %04o lets others read it; run chmod 600 %s", path, fi.Mode().Perm(), path)
	}
	key, err := ParsePrivateKey(data)
	if err != nil {
		return nil, fmt.Errorf("signing key %s: %w", path, err)
	}
	return key, nil
}

// LoadPublicKey reads a public key file written by `certkit bundle keygen`.
func LoadPublicKey(path string) (ed25519.PublicKey, error) {
	data, err := readKeyFile(path)
	if err != nil {
		return nil, err
	}
	pub, err := ParsePublicKey(data)
	if err != nil {
		return nil, fmt.Errorf("public key %s: %w", path, err)
	}
	return pub, nil
}

func readKeyFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("key file: %w", err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil {
		return nil, fmt.Errorf("key file %s: %w", path, err)
	} else if !fi.Mode().IsRegular() || fi.Size() > maxKeyFileBytes {
		return nil, fmt.Errorf("key file %s: not a PEM key file (a regular file under %d bytes)", path, maxKeyFileBytes)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxKeyFileBytes))
	if err != nil {
		return nil, fmt.Errorf("key file %s: %w", path, err)
	}
	return data, nil
}

// WriteKeyPair writes a new key pair to prefix+".key" (mode 0600) and
// prefix+".pub", refusing to replace existing files. It returns the key ID.
func WriteKeyPair(prefix string) (string, error) {
	pub, key, err := GenerateKey()
	if err != nil {
		return "", err
	}
	priv, err := MarshalPrivateKey(key)
	if err != nil {
		return "", err
	}
	pubPEM, err := MarshalPublicKey(pub)
	if err != nil {
		return "", err
	}
	keyPath, pubPath := prefix+".key", prefix+".pub"
	for _, p := range []string{keyPath, pubPath} {
		if _, err := os.Lstat(p); err == nil {
			return "", fmt.Errorf("%s already exists; choose another name or remove it", p)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return "", err
		}
	}
	if err := writeNew(keyPath, priv, 0o600); err != nil {
		return "", err
	}
	if err := writeNew(pubPath, pubPEM, 0o644); err != nil {
		os.Remove(keyPath)
		return "", err
	}
	return KeyID(pub), nil
}

func writeNew(path string, data []byte, mode fs.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
	}
	return err
}
