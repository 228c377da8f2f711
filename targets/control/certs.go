package control

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// CertFiles are the PEM files of a throwaway mutual-TLS set for a control
// API, as GenerateCerts writes them.
type CertFiles struct {
	// CA is the CA certificate both sides trust: the array's client CA
	// bundle (--tls-client-ca) and what clients verify the array with.
	CA string
	// ServerCert and ServerKey are the array's (--tls-cert, --tls-key).
	ServerCert, ServerKey string
	// ClientCert and ClientKey are the harness's.
	ClientCert, ClientKey string
}

// The file names GenerateCerts writes in its directory.
const (
	CAFileName         = "ca.crt"
	ServerCertFileName = "server.crt"
	ServerKeyFileName  = "server.key"
	ClientCertFileName = "client.crt"
	ClientKeyFileName  = "client.key"
)

// GenerateCerts writes a throwaway mutual-TLS set into dir (created 0700 if
// missing): a CA, a server certificate naming hosts (IP addresses or DNS
// names: the host part of the control URL clients use) and one client
// certificate, all ECDSA P-256, valid for validity from now. Keys are
// written 0600, certificates 0644. The CA's key is never written, so no
// further certificate can be issued from this CA: to replace one, generate
// a new set. Existing files are never overwritten.
func GenerateCerts(dir string, hosts []string, validity time.Duration) (_ CertFiles, err error) {
	files := CertFiles{
		CA:         filepath.Join(dir, CAFileName),
		ServerCert: filepath.Join(dir, ServerCertFileName),
		ServerKey:  filepath.Join(dir, ServerKeyFileName),
		ClientCert: filepath.Join(dir, ClientCertFileName),
		ClientKey:  filepath.Join(dir, ClientKeyFileName),
	}
	if validity <= 0 {
		return files, fmt.Errorf("control certs: validity %s is not positive; give how long the certificates should last, e.g. 8760h", validity)
	}
	if len(hosts) == 0 {
		return files, errors.New("control certs: no host for the server certificate; name the address or DNS name clients use in the control URL")
	}
	var ips []net.IP
	var names []string
	for _, h := range hosts {
		h = strings.TrimSpace(h)
		if ip := net.ParseIP(strings.Trim(h, "[]")); ip != nil {
			if ip.IsUnspecified() {
				return files, fmt.Errorf("control certs: host %s is the any-address, which no client connects to; name the address clients use in the control URL", h)
			}
			ips = append(ips, ip)
			continue
		}
		if h == "" || strings.ContainsAny(h, ":/ ") {
			return files, fmt.Errorf("control certs: host %q is not an IP address or DNS name (no port, no scheme); e.g. 10.0.0.50 or array1.lab.example", h)
		}
		names = append(names, h)
	}
	for _, f := range []string{files.CA, files.ServerCert, files.ServerKey, files.ClientCert, files.ClientKey} {
		if _, err := os.Lstat(f); err == nil {
			return files, fmt.Errorf("control certs: %s already exists; remove the old set or pick another directory (certificates are never overwritten)", f)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return files, fmt.Errorf("control certs: %w", err)
	}

	now := time.Now()
	notBefore, notAfter := now.Add(-time.Hour), now.Add(validity) // an hour of slack for clock skew
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return files, fmt.Errorf("control certs: CA key: %w", err)
	}
	caTmpl := &x509.Certificate{
		Subject:               pkix.Name{Organization: []string{"certkit"}, CommonName: "certkit throwaway control CA " + now.UTC().Format("2006-01-02T15:04:05Z")},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	caDER, caCert, err := sign(caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return files, err
	}
	issue := func(tmpl *x509.Certificate) (der, keyDER []byte, err error) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, nil, fmt.Errorf("control certs: key for %s: %w", tmpl.Subject.CommonName, err)
		}
		tmpl.NotBefore, tmpl.NotAfter = notBefore, notAfter
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
		if der, _, err = sign(tmpl, caCert, &key.PublicKey, caKey); err != nil {
			return nil, nil, err
		}
		if keyDER, err = x509.MarshalPKCS8PrivateKey(key); err != nil {
			return nil, nil, fmt.Errorf("control certs: key for %s: %w", tmpl.Subject.CommonName, err)
		}
		return der, keyDER, nil
	}
	serverDER, serverKey, err := issue(&x509.Certificate{
		Subject:     pkix.Name{Organization: []string{"certkit"}, CommonName: "certkit array control"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: ips,
		DNSNames:    names,
	})
	if err != nil {
		return files, err
	}
	clientDER, clientKey, err := issue(&x509.Certificate{
		Subject:     pkix.Name{Organization: []string{"certkit"}, CommonName: "certkit harness"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return files, err
	}
	written := []string{}
	defer func() {
		if err != nil { // leave no half set behind to block the next try
			for _, f := range written {
				os.Remove(f)
			}
		}
	}()
	for _, w := range []struct {
		path, typ string
		der       []byte
		mode      os.FileMode
	}{
		{files.CA, "CERTIFICATE", caDER, 0o644},
		{files.ServerCert, "CERTIFICATE", serverDER, 0o644},
		{files.ServerKey, "PRIVATE KEY", serverKey, 0o600},
		{files.ClientCert, "CERTIFICATE", clientDER, 0o644},
		{files.ClientKey, "PRIVATE KEY", clientKey, 0o600},
	} {
		if err = writeNew(w.path, pem.EncodeToMemory(&pem.Block{Type: w.typ, Bytes: w.der}), w.mode); err != nil {
			return files, err
		}
		written = append(written, w.path)
	}
	return files, nil
}

func sign(tmpl, parent *x509.Certificate, pub, priv any) ([]byte, *x509.Certificate, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, fmt.Errorf("control certs: serial number: %w", err)
	}
	tmpl.SerialNumber = serial
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, priv)
	if err != nil {
		return nil, nil, fmt.Errorf("control certs: certificate %s: %w", tmpl.Subject.CommonName, err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("control certs: certificate %s: %w", tmpl.Subject.CommonName, err)
	}
	return der, c, nil
}

// writeNew creates path with mode (never following or replacing an
// existing file) and writes b to it.
func writeNew(path string, b []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return fmt.Errorf("control certs: %w", err)
	}
	_, err = f.Write(b)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("control certs: writing %s: %w", path, err)
	}
	return nil
}
