package control

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

// ServeTLS serves the control API over TLS 1.3 with cfg, which must hold the
// array's certificate. When cfg.ClientCAs is set the API is mutual TLS:
// every client must present a certificate that chains to one of those CAs
// (tls.RequireAndVerifyClientCert, whatever cfg.ClientAuth says). Without
// ClientCAs only the server is authenticated and the token is required.
// LoadServerTLS builds cfg from PEM files. Serve works on a clone of cfg.
func ServeTLS(cfg *tls.Config) ServeOption {
	return func(c *serveConfig) {
		c.tls = cfg
		c.tlsSet = true
	}
}

// serverTLS checks and completes the TLS config Serve is given.
func serverTLS(cfg *tls.Config, addr string) (*tls.Config, error) {
	if cfg == nil {
		return nil, fmt.Errorf("array control: serve on %s: ServeTLS was given no TLS config; build one with LoadServerTLS", addr)
	}
	cfg = cfg.Clone()
	if len(cfg.Certificates) == 0 && cfg.GetCertificate == nil && cfg.GetConfigForClient == nil {
		return nil, fmt.Errorf("array control: serve on %s: the TLS config has no server certificate; give the array's certificate and key (LoadServerTLS)", addr)
	}
	if cfg.ClientCAs != nil {
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	} else if cfg.ClientAuth >= tls.VerifyClientCertIfGiven {
		// Verifying against no pool would trust every CA of the system.
		return nil, fmt.Errorf("array control: serve on %s: the TLS config verifies client certificates but names no client CA; set ClientCAs to the CA bundle client certificates must chain to", addr)
	}
	if cfg.MinVersion < tls.VersionTLS13 {
		cfg.MinVersion = tls.VersionTLS13
	}
	return cfg, nil
}

// http1Only is what client and server speak: the API is a few small JSON
// calls, and over HTTP/2 a refused handshake surfaces only as "client conn
// could not be established", hiding the TLS alert that says why.
func http1Only() *http.Protocols {
	p := new(http.Protocols)
	p.SetHTTP1(true)
	return p
}

func defaultTransport() *http.Transport {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Protocols = http1Only()
	return tr
}

// ClientOption changes how a Client reaches its array.
type ClientOption func(*Client)

// ClientTLS makes the client speak TLS 1.3 with cfg: cfg.RootCAs verifies
// the array's certificate (nil: the system's CAs) and cfg.Certificates is
// what the client presents to an array that requires mutual TLS.
// LoadClientTLS builds cfg from PEM files. The base URL must be https://.
func ClientTLS(cfg *tls.Config) ClientOption {
	return func(c *Client) {
		if cfg == nil {
			return
		}
		cfg = cfg.Clone()
		if cfg.MinVersion < tls.VersionTLS13 {
			cfg.MinVersion = tls.VersionTLS13
		}
		tr := defaultTransport()
		tr.TLSClientConfig = cfg
		c.http.Transport = tr
		c.tls = true
		c.tlsCfg = cfg
		c.hasCert = len(cfg.Certificates) > 0 || cfg.GetClientCertificate != nil
	}
}

// LoadServerTLS reads the PEM files of an array serving its control API
// over TLS: its certificate (chain) and private key, and, for mutual TLS,
// the bundle of CAs that client certificates must chain to. An empty
// clientCAFile serves TLS without client certificates (token only).
func LoadServerTLS(certFile, keyFile, clientCAFile string) (*tls.Config, error) {
	cert, err := loadKeyPair("server", certFile, keyFile, x509.ExtKeyUsageServerAuth)
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13}
	if clientCAFile != "" {
		pool, err := loadCAs("client CA bundle", clientCAFile)
		if err != nil {
			return nil, err
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

// LoadClientTLS reads the PEM files a control client needs: the CA bundle
// that verifies the array's certificate (empty: the system's CAs) and, for
// an array that requires mutual TLS, the client's certificate and key (both
// or neither).
func LoadClientTLS(caFile, certFile, keyFile string) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS13}
	if caFile != "" {
		pool, err := loadCAs("array CA bundle", caFile)
		if err != nil {
			return nil, err
		}
		cfg.RootCAs = pool
	}
	switch {
	case certFile == "" && keyFile == "":
	case certFile == "" || keyFile == "":
		return nil, fmt.Errorf("control TLS: a client certificate needs its key and the key its certificate (got certificate %q, key %q); give both or neither", certFile, keyFile)
	default:
		cert, err := loadKeyPair("client", certFile, keyFile, x509.ExtKeyUsageClientAuth)
		if err != nil {
			return nil, err
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

const certHint = "certkit target certs --dir DIR writes a throwaway set"

// loadKeyPair reads a PEM certificate chain and its key and checks that the
// leaf is valid now and usable for usage.
func loadKeyPair(role, certFile, keyFile string, usage x509.ExtKeyUsage) (tls.Certificate, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("control TLS: %s certificate: %w; give the PEM file of the %s's certificate (%s)", role, err, role, certHint)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("control TLS: %s key: %w; give the PEM file of the %s certificate's private key (%s)", role, err, role, certHint)
	}
	if !hasPEM(certPEM, "CERTIFICATE") {
		return tls.Certificate{}, fmt.Errorf("control TLS: %s certificate %s holds no PEM certificate (-----BEGIN CERTIFICATE-----); give the %s's certificate, not its key or a DER file", role, certFile, role)
	}
	if !hasPEM(keyPEM, "PRIVATE KEY") {
		return tls.Certificate{}, fmt.Errorf("control TLS: %s key %s holds no PEM private key (-----BEGIN ... PRIVATE KEY-----); give the key of %s", role, keyFile, certFile)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("control TLS: %s certificate %s and key %s: %w; give a certificate and the key it was made for", role, certFile, keyFile, err)
	}
	leaf := cert.Leaf
	now := time.Now()
	if now.After(leaf.NotAfter) {
		return tls.Certificate{}, fmt.Errorf("control TLS: %s certificate %s expired on %s; make a new one (%s)", role, certFile, leaf.NotAfter.UTC().Format(time.RFC3339), certHint)
	}
	if now.Before(leaf.NotBefore) {
		return tls.Certificate{}, fmt.Errorf("control TLS: %s certificate %s is not valid before %s; check this machine's clock", role, certFile, leaf.NotBefore.UTC().Format(time.RFC3339))
	}
	if !allowsUsage(leaf, usage) {
		return tls.Certificate{}, fmt.Errorf("control TLS: %s certificate %s is not for TLS %s authentication (its extended key usage); give a %s certificate", role, certFile, role, role)
	}
	return cert, nil
}

// loadCAs reads a bundle of PEM CA certificates.
func loadCAs(role, file string) (*x509.CertPool, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("control TLS: %s: %w; give the PEM file of the CA certificate(s) (%s)", role, err, certHint)
	}
	pool := x509.NewCertPool()
	n := 0
	for rest := b; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("control TLS: %s %s: certificate %d: %w; give PEM CA certificates", role, file, n+1, err)
		}
		pool.AddCert(c)
		n++
	}
	if n == 0 {
		return nil, fmt.Errorf("control TLS: %s %s holds no PEM certificate (-----BEGIN CERTIFICATE-----); give the CA certificate(s), e.g. ca.crt of %s", role, file, certHint)
	}
	return pool, nil
}

func hasPEM(b []byte, suffix string) bool {
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			return false
		}
		if strings.HasSuffix(block.Type, suffix) {
			return true
		}
	}
}

func allowsUsage(c *x509.Certificate, usage x509.ExtKeyUsage) bool {
	if len(c.ExtKeyUsage) == 0 && len(c.UnknownExtKeyUsage) == 0 {
		return true // no restriction
	}
	for _, u := range c.ExtKeyUsage {
		if u == usage || u == x509.ExtKeyUsageAny {
			return true
		}
	}
	return false
}

// tlsHint says what to do about a TLS failure, "" if err is none. hasCert
// says whether the client has a certificate to present.
func tlsHint(err error, hasCert bool) string {
	var rec tls.RecordHeaderError
	var unknownCA x509.UnknownAuthorityError
	var host x509.HostnameError
	var invalid x509.CertificateInvalidError
	var op *net.OpError
	switch {
	case errors.As(err, &rec), strings.Contains(err.Error(), "server gave HTTP response to HTTPS client"):
		return " (the array answers plain HTTP at this address, not TLS: use an http:// control URL, or start the array with TLS)"
	case errors.As(err, &unknownCA):
		return " (the array's certificate is not signed by a CA this client trusts: give the client the array's CA certificate)"
	case errors.As(err, &host):
		return " (the array's certificate does not name the host of the control URL: use a name or address the certificate holds, or make the array a certificate that names this one)"
	case errors.As(err, &invalid):
		return " (the array's certificate is not valid now or not for a server: make the array a new certificate)"
	case errors.As(err, &op) && op.Op == "remote error":
		switch msg := op.Err.Error(); {
		case strings.Contains(msg, "certificate required") && hasCert:
			// A TLS client sends only a certificate from a CA the server
			// names; a certificate of another CA is not sent at all.
			return " (the array requires a client certificate signed by a CA it trusts, and this client's is not: use one that CA signed)"
		case strings.Contains(msg, "certificate required"):
			return " (the array requires mutual TLS: give the client its certificate and key)"
		case strings.Contains(msg, "certificate"): // bad, unknown authority, expired, ...
			return " (the array refused this client's certificate: use one signed by the CA the array trusts for clients, valid now)"
		}
	}
	return ""
}
