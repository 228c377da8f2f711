package control

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// testCA is a CA made in the test; nothing is checked in.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
	pem  []byte
}

var serial atomic.Int64

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(serial.Add(1)),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// leaf is an issued certificate with its PEM files' contents.
type leaf struct {
	tls             tls.Certificate
	certPEM, keyPEM []byte
}

// issue makes a certificate for usage, valid from notBefore to notAfter
// (now ± an hour when zero), naming hosts.
func (ca *testCA) issue(t *testing.T, cn string, usage x509.ExtKeyUsage, notBefore, notAfter time.Time, hosts ...string) leaf {
	t.Helper()
	if notBefore.IsZero() {
		notBefore, notAfter = time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial.Add(1)),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	l := leaf{
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		keyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
	}
	if l.tls, err = tls.X509KeyPair(l.certPEM, l.keyPEM); err != nil {
		t.Fatal(err)
	}
	return l
}

func (ca *testCA) server(t *testing.T, hosts ...string) leaf {
	return ca.issue(t, "array control", x509.ExtKeyUsageServerAuth, time.Time{}, time.Time{}, hosts...)
}

func (ca *testCA) client(t *testing.T) leaf {
	return ca.issue(t, "harness", x509.ExtKeyUsageClientAuth, time.Time{}, time.Time{})
}

// mtlsLab is an array served with mutual TLS and the CA that signed both
// sides' certificates.
type mtlsLab struct {
	ca    *testCA
	array *fakeArray
	srv   *Server
}

func serveMutualTLS(t *testing.T, token string) *mtlsLab {
	t.Helper()
	ca := newTestCA(t, "lab CA")
	a := newFakeArray()
	cfg := &tls.Config{Certificates: []tls.Certificate{ca.server(t, "127.0.0.1", "localhost").tls}, ClientCAs: ca.pool}
	srv, err := Serve("127.0.0.1:0", a, token, ServeTLS(cfg))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return &mtlsLab{ca: ca, array: a, srv: srv}
}

// clientTLS is what a harness holding cert and trusting roots dials with.
func clientTLS(roots *x509.CertPool, cert *leaf) *tls.Config {
	cfg := &tls.Config{RootCAs: roots}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{cert.tls}
	}
	return cfg
}

func TestMutualTLSServesAClientWithTheRightCertificateAndToken(t *testing.T) {
	lab := serveMutualTLS(t, token)
	if !strings.HasPrefix(lab.srv.URL(), "https://127.0.0.1:") || !lab.srv.MutualTLS() {
		t.Fatalf("URL() = %s, MutualTLS() = %v; want https on loopback with mutual TLS", lab.srv.URL(), lab.srv.MutualTLS())
	}
	cert := lab.ca.client(t)
	c := NewClient(lab.srv.URL(), token, ClientTLS(clientTLS(lab.ca.pool, &cert)))
	info, err := c.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if info.Name != "array-1" {
		t.Fatalf("info = %+v", info)
	}
	if _, err := c.Inject(context.Background(), "A0", "blackhole"); err != nil {
		t.Fatal(err)
	}
	// A certificate is not enough when a token is configured: both count.
	for _, tok := range []string{"", "wrong"} {
		_, err := NewClient(lab.srv.URL(), tok, ClientTLS(clientTLS(lab.ca.pool, &cert))).Info(context.Background())
		if !errors.Is(err, ErrUnauthorized) {
			t.Errorf("right certificate, token %q: %v, want ErrUnauthorized", tok, err)
		}
	}
}

func TestMutualTLSRefusesClientsWithoutTheRightCertificate(t *testing.T) {
	lab := serveMutualTLS(t, token)
	other := newTestCA(t, "another lab's CA")
	otherCert := other.client(t)
	serverCert := lab.ca.server(t, "127.0.0.1") // right CA, but not for clients
	cases := []struct {
		name   string
		client *Client
		want   string
	}{
		{"no certificate", NewClient(lab.srv.URL(), token, ClientTLS(clientTLS(lab.ca.pool, nil))),
			"the array requires mutual TLS: give the client its certificate and key"},
		{"certificate from another CA", NewClient(lab.srv.URL(), token, ClientTLS(clientTLS(lab.ca.pool, &otherCert))),
			"the array requires a client certificate signed by a CA it trusts, and this client's is not"},
		{"server certificate as client certificate", NewClient(lab.srv.URL(), token, ClientTLS(clientTLS(lab.ca.pool, &serverCert))),
			"the array refused this client's certificate"},
		{"plain http", NewClient(strings.Replace(lab.srv.URL(), "https://", "http://", 1), token),
			"the array serves HTTPS at this address: use its https:// control URL"},
	}
	for _, tc := range cases {
		_, err := tc.client.Inject(context.Background(), "A0", "blackhole")
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "array control at ") {
			t.Errorf("%s: %v\nwant an error with %q", tc.name, err, tc.want)
		}
	}
	if lab.array.injects != 0 {
		t.Fatalf("%d injects reached the array from clients without the right certificate", lab.array.injects)
	}
}

func TestMutualTLSRefusesTLS12(t *testing.T) {
	lab := serveMutualTLS(t, token)
	cert := lab.ca.client(t)
	cfg := clientTLS(lab.ca.pool, &cert)
	cfg.MaxVersion = tls.VersionTLS12
	conn, err := tls.Dial("tcp", strings.TrimPrefix(lab.srv.URL(), "https://"), cfg)
	if err == nil {
		conn.Close()
		t.Fatal("a TLS 1.2 handshake succeeded; the control API takes TLS 1.3 only")
	}
	if !strings.Contains(err.Error(), "protocol version") {
		t.Fatalf("TLS 1.2 handshake: %v, want a protocol version alert", err)
	}
}

func TestClientRefusesAnArrayItCannotVerify(t *testing.T) {
	lab := serveMutualTLS(t, token)
	cert := lab.ca.client(t)
	other := newTestCA(t, "another lab's CA")
	for name, roots := range map[string]*x509.CertPool{"another CA": other.pool, "the system's CAs": nil} {
		_, err := NewClient(lab.srv.URL(), token, ClientTLS(clientTLS(roots, &cert))).Info(context.Background())
		if err == nil || !strings.Contains(err.Error(), "the array's certificate is not signed by a CA this client trusts") {
			t.Errorf("client trusting %s: %v", name, err)
		}
	}

	// A certificate that names another host than the URL's.
	a := newFakeArray()
	srv, err := Serve("127.0.0.1:0", a, token, ServeTLS(&tls.Config{Certificates: []tls.Certificate{lab.ca.server(t, "array-1.lab.example").tls}, ClientCAs: lab.ca.pool}))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	_, err = NewClient(srv.URL(), token, ClientTLS(clientTLS(lab.ca.pool, &cert))).Info(context.Background())
	if err == nil || !strings.Contains(err.Error(), "the array's certificate does not name the host of the control URL") {
		t.Fatalf("server certificate for another host: %v", err)
	}
}

func TestHTTPSClientAgainstAPlainHTTPArray(t *testing.T) {
	s := serve(t, newFakeArray())
	ca := newTestCA(t, "lab CA")
	cert := ca.client(t)
	url := strings.Replace(s.URL(), "http://", "https://", 1)
	_, err := NewClient(url, token, ClientTLS(clientTLS(ca.pool, &cert))).Info(context.Background())
	if err == nil || !strings.Contains(err.Error(), "the array answers plain HTTP at this address, not TLS: use an http:// control URL") {
		t.Fatalf("https client against a plain HTTP array: %v", err)
	}
}

func TestClientWithTLSNeverSendsItsTokenOverHTTP(t *testing.T) {
	var requests atomic.Int32
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { requests.Add(1) }))
	defer plain.Close()
	ca := newTestCA(t, "lab CA")
	_, err := NewClient(plain.URL, token, ClientTLS(clientTLS(ca.pool, nil))).Info(context.Background())
	if err == nil || !strings.Contains(err.Error(), "the client has TLS settings but the URL is not https://") {
		t.Fatalf("TLS client with an http:// URL: %v", err)
	}
	if n := requests.Load(); n != 0 {
		t.Fatalf("%d requests reached the plain HTTP server", n)
	}
}

func TestMutualTLSWithoutATokenTakesTheCertificateAlone(t *testing.T) {
	lab := serveMutualTLS(t, "")
	cert := lab.ca.client(t)
	if _, err := NewClient(lab.srv.URL(), "", ClientTLS(clientTLS(lab.ca.pool, &cert))).Info(context.Background()); err != nil {
		t.Fatal(err)
	}
	_, err := NewClient(lab.srv.URL(), "", ClientTLS(clientTLS(lab.ca.pool, nil))).Info(context.Background())
	if err == nil || !strings.Contains(err.Error(), "requires mutual TLS") {
		t.Fatalf("no certificate, no token: %v", err)
	}

	// The handler behind a mutual-TLS server fails closed if a request ever
	// reaches it without a verified certificate, token or not.
	for _, tok := range []string{"", token} {
		code, _, body := call(t, newHandler(newFakeArray(), tok, true), "GET", "/v1/info", "Bearer "+tok, "")
		if code != http.StatusUnauthorized || !strings.Contains(errorOf(t, body), "no verified client certificate") {
			t.Fatalf("mutual-TLS handler, token %q, request without TLS: %d %s", tok, code, body)
		}
	}

	// Without client certificates a token stays mandatory.
	ca := newTestCA(t, "lab CA")
	_, err = Serve("127.0.0.1:0", newFakeArray(), "", ServeTLS(&tls.Config{Certificates: []tls.Certificate{ca.server(t, "127.0.0.1").tls}}))
	if err == nil || !strings.Contains(err.Error(), "empty control token") {
		t.Fatalf("server-only TLS without a token: %v", err)
	}
}

func TestServerOnlyTLSNeedsTheToken(t *testing.T) {
	ca := newTestCA(t, "lab CA")
	srv, err := Serve("127.0.0.1:0", newFakeArray(), token, ServeTLS(&tls.Config{Certificates: []tls.Certificate{ca.server(t, "127.0.0.1").tls}}))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if srv.MutualTLS() || !strings.HasPrefix(srv.URL(), "https://") {
		t.Fatalf("URL() = %s, MutualTLS() = %v", srv.URL(), srv.MutualTLS())
	}
	if _, err := NewClient(srv.URL(), token, ClientTLS(clientTLS(ca.pool, nil))).Info(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := NewClient(srv.URL(), "wrong", ClientTLS(clientTLS(ca.pool, nil))).Info(context.Background()); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("wrong token over TLS: %v", err)
	}
}

func TestServeTLSRefusesConfigsThatCannotAuthenticate(t *testing.T) {
	ca := newTestCA(t, "lab CA")
	cert := ca.server(t, "127.0.0.1").tls
	cases := []struct {
		name string
		cfg  *tls.Config
		want string
	}{
		{"nil config", nil, "no TLS config"},
		{"no certificate", &tls.Config{ClientCAs: ca.pool}, "no server certificate"},
		{"client verification without client CAs", &tls.Config{Certificates: []tls.Certificate{cert}, ClientAuth: tls.RequireAndVerifyClientCert},
			"names no client CA"},
	}
	for _, tc := range cases {
		_, err := Serve("127.0.0.1:0", newFakeArray(), token, ServeTLS(tc.cfg))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error with %q", tc.name, err, tc.want)
		}
	}

	// A config asking for less than mutual TLS 1.3 gets it anyway.
	weak := &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: ca.pool, ClientAuth: tls.RequestClientCert, MinVersion: tls.VersionTLS10}
	srv, err := Serve("127.0.0.1:0", newFakeArray(), token, ServeTLS(weak))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if !srv.MutualTLS() {
		t.Fatal("client CAs given, yet MutualTLS() is false")
	}
	_, err = NewClient(srv.URL(), token, ClientTLS(clientTLS(ca.pool, nil))).Info(context.Background())
	if err == nil || !strings.Contains(err.Error(), "requires mutual TLS") {
		t.Fatalf("no client certificate against ClientAuth RequestClientCert + ClientCAs: %v", err)
	}
	if weak.ClientAuth != tls.RequestClientCert || weak.MinVersion != tls.VersionTLS10 {
		t.Fatal("Serve changed the caller's config instead of a clone")
	}
}

func TestServeTLSKeepsTheLoopbackRule(t *testing.T) {
	ca := newTestCA(t, "lab CA")
	cfg := &tls.Config{Certificates: []tls.Certificate{ca.server(t, "127.0.0.1").tls}, ClientCAs: ca.pool}
	for _, addr := range []string{":0", "0.0.0.0:0", "192.0.2.1:0"} {
		_, err := Serve(addr, newFakeArray(), token, ServeTLS(cfg))
		if !errors.Is(err, ErrNotLoopback) || !strings.Contains(err.Error(), "AllowRemote") || strings.Contains(err.Error(), "plain HTTP") {
			t.Errorf("Serve(%q) with mutual TLS: %v, want ErrNotLoopback pointing at AllowRemote", addr, err)
		}
	}
	if _, err := Serve("0.0.0.0:0", newFakeArray(), token); !errors.Is(err, ErrNotLoopback) {
		t.Errorf("plain HTTP on every interface: %v, want ErrNotLoopback", err)
	}
}

// writeFile writes b into dir/name and returns the path.
func writeFile(t *testing.T, dir, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadServerTLSNamesTheFileAndTheFix(t *testing.T) {
	dir := t.TempDir()
	ca := newTestCA(t, "lab CA")
	srv := ca.server(t, "127.0.0.1")
	other := ca.server(t, "127.0.0.1")
	expired := ca.issue(t, "old", x509.ExtKeyUsageServerAuth, time.Now().Add(-48*time.Hour), time.Now().Add(-24*time.Hour), "127.0.0.1")
	client := ca.client(t)
	var (
		cert        = writeFile(t, dir, "server.crt", srv.certPEM)
		key         = writeFile(t, dir, "server.key", srv.keyPEM)
		caFile      = writeFile(t, dir, "ca.crt", ca.pem)
		otherKey    = writeFile(t, dir, "other.key", other.keyPEM)
		expiredCert = writeFile(t, dir, "expired.crt", expired.certPEM)
		expiredKey  = writeFile(t, dir, "expired.key", expired.keyPEM)
		clientCert  = writeFile(t, dir, "client.crt", client.certPEM)
		clientKey   = writeFile(t, dir, "client.key", client.keyPEM)
		garbage     = writeFile(t, dir, "garbage.pem", []byte("not a PEM file\n"))
		missing     = filepath.Join(dir, "missing.crt")
	)
	if _, err := LoadServerTLS(cert, key, caFile); err != nil {
		t.Fatalf("a good set: %v", err)
	}
	cases := []struct {
		name              string
		cert, key, ca     string
		wantFile, wantFix string
	}{
		{"missing certificate", missing, key, caFile, missing, "give the PEM file of the server's certificate"},
		{"missing key", cert, missing, caFile, missing, "give the PEM file of the server certificate's private key"},
		{"missing CA", cert, key, missing, missing, "give the PEM file of the CA certificate(s)"},
		{"key given as certificate", key, key, caFile, key, "holds no PEM certificate"},
		{"certificate given as key", cert, cert, caFile, cert, "holds no PEM private key"},
		{"key of another certificate", cert, otherKey, caFile, otherKey, "give a certificate and the key it was made for"},
		{"expired certificate", expiredCert, expiredKey, caFile, expiredCert, "expired on"},
		{"client certificate as server certificate", clientCert, clientKey, caFile, clientCert, "give a server certificate"},
		{"garbage CA bundle", cert, key, garbage, garbage, "holds no PEM certificate"},
		{"key as CA bundle", cert, key, key, key, "holds no PEM certificate"},
	}
	for _, tc := range cases {
		_, err := LoadServerTLS(tc.cert, tc.key, tc.ca)
		if err == nil || !strings.Contains(err.Error(), tc.wantFile) || !strings.Contains(err.Error(), tc.wantFix) {
			t.Errorf("%s: %v\nwant an error naming %s and saying %q", tc.name, err, tc.wantFile, tc.wantFix)
		}
	}
}

func TestLoadClientTLS(t *testing.T) {
	dir := t.TempDir()
	ca := newTestCA(t, "lab CA")
	client := ca.client(t)
	srv := ca.server(t, "127.0.0.1")
	caFile := writeFile(t, dir, "ca.crt", ca.pem)
	cert := writeFile(t, dir, "client.crt", client.certPEM)
	key := writeFile(t, dir, "client.key", client.keyPEM)
	serverCert := writeFile(t, dir, "server.crt", srv.certPEM)
	serverKey := writeFile(t, dir, "server.key", srv.keyPEM)

	cfg, err := LoadClientTLS(caFile, cert, key)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.RootCAs == nil || len(cfg.Certificates) != 1 || cfg.MinVersion != tls.VersionTLS13 {
		t.Fatalf("config = %+v", cfg)
	}
	if _, err := LoadClientTLS(caFile, cert, ""); err == nil || !strings.Contains(err.Error(), "give both or neither") {
		t.Errorf("certificate without key: %v", err)
	}
	if _, err := LoadClientTLS(caFile, serverCert, serverKey); err == nil || !strings.Contains(err.Error(), serverCert) || !strings.Contains(err.Error(), "give a client certificate") {
		t.Errorf("server certificate as client certificate: %v", err)
	}
	if cfg, err := LoadClientTLS(caFile, "", ""); err != nil || len(cfg.Certificates) != 0 {
		t.Errorf("CA only: %v, %+v", err, cfg)
	}
}
