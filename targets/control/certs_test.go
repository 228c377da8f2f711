package control

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestGenerateCertsMakeAWorkingMutualTLSSet(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	files, err := GenerateCerts(dir, []string{"127.0.0.1", "localhost"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}

	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if want := []string{"ca.crt", "client.crt", "client.key", "server.crt", "server.key"}; !slices.Equal(names, want) {
		t.Fatalf("files %v, want %v (and no CA key)", names, want)
	}
	if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o700 {
		t.Errorf("directory mode %v, want 0700", fi.Mode().Perm())
	}
	for _, f := range []string{files.ServerKey, files.ClientKey} {
		if fi, _ := os.Stat(f); fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, want 0600", f, fi.Mode().Perm())
		}
	}

	serverCfg, err := LoadServerTLS(files.ServerCert, files.ServerKey, files.CA)
	if err != nil {
		t.Fatal(err)
	}
	leaf := serverCfg.Certificates[0].Leaf
	if k, ok := leaf.PublicKey.(*ecdsa.PublicKey); !ok || k.Curve != elliptic.P256() {
		t.Errorf("server key %T, want ECDSA P-256", leaf.PublicKey)
	}
	if leaf.NotAfter.After(time.Now().Add(time.Hour)) {
		t.Errorf("server certificate valid until %s, beyond the hour asked for", leaf.NotAfter)
	}
	clientCfg, err := LoadClientTLS(files.CA, files.ClientCert, files.ClientKey)
	if err != nil {
		t.Fatal(err)
	}
	a := newFakeArray()
	srv, err := Serve("127.0.0.1:0", a, token, ServeTLS(serverCfg))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	for _, url := range []string{srv.URL(), strings.Replace(srv.URL(), "127.0.0.1", "localhost", 1)} {
		if _, err := NewClient(url, token, ClientTLS(clientCfg)).Info(context.Background()); err != nil {
			t.Errorf("client with the generated certificate at %s: %v", url, err)
		}
	}
	// The server's certificate does not pass as a client's.
	asClient, err := LoadClientTLS(files.CA, files.ServerCert, files.ServerKey)
	if err == nil {
		_, err = NewClient(srv.URL(), token, ClientTLS(asClient)).Info(context.Background())
	}
	if err == nil {
		t.Fatal("the server certificate was accepted as a client certificate")
	}

	before, _ := os.ReadFile(files.ServerKey)
	if _, err := GenerateCerts(dir, []string{"127.0.0.1"}, time.Hour); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("second set into the same directory: %v", err)
	}
	if after, _ := os.ReadFile(files.ServerKey); string(after) != string(before) {
		t.Fatal("a refused second set overwrote the server key")
	}
}

func TestGenerateCertsRefusesHostsNoClientCanUse(t *testing.T) {
	cases := []struct {
		hosts    []string
		validity time.Duration
		want     string
	}{
		{nil, time.Hour, "no host"},
		{[]string{"0.0.0.0"}, time.Hour, "any-address"},
		{[]string{"::"}, time.Hour, "any-address"},
		{[]string{"10.0.0.50:7070"}, time.Hour, "not an IP address or DNS name"},
		{[]string{"https://array1"}, time.Hour, "not an IP address or DNS name"},
		{[]string{"127.0.0.1"}, 0, "not positive"},
	}
	for _, tc := range cases {
		dir := t.TempDir()
		_, err := GenerateCerts(dir, tc.hosts, tc.validity)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("GenerateCerts(%q, %s): %v, want %q", tc.hosts, tc.validity, err, tc.want)
		}
		if entries, _ := os.ReadDir(dir); len(entries) != 0 {
			t.Errorf("GenerateCerts(%q) left %d files behind", tc.hosts, len(entries))
		}
	}
}
