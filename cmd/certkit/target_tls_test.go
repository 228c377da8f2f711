package main

// target serve with mutual TLS, and target certs, as a partner lab runs
// them: the built binary, certificates it wrote, a Go control client.

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/certkit/certkit/targets/control"
)

const tlsTestArray = `
name: lab-array
target: iqn.2026-11.io.certkit:lab-array
luns:
  - id: 0
    size: 16MiB
    backing: memory
controllers:
  - name: A
    portals: [{listen: "127.0.0.1:0"}]
`

// targetServe starts certkit target serve with args and returns the line
// that announces its control API and the lines it prints after that; the
// process is stopped at cleanup.
func targetServe(t *testing.T, args ...string) (string, <-chan string) {
	t.Helper()
	lines := startCertkit(t, append([]string{"target", "serve"}, args...)...)
	return nextLine(t, lines, 30*time.Second, "array lab-array: control ", "target serve to print its control endpoint"), lines
}

func TestTargetCertsAndMutualTLSServeWorkEndToEnd(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "array.yaml")
	if err := os.WriteFile(cfg, []byte(tlsTestArray), 0o600); err != nil {
		t.Fatal(err)
	}
	pki := filepath.Join(dir, "pki")
	out, errOut, code := certkit(t, "target", "certs", "--dir", pki, "--host", "127.0.0.1", "--valid-for", "1h")
	if code != 0 {
		t.Fatalf("target certs: exit %d: %s", code, errOut)
	}
	file := func(name string) string { return filepath.Join(pki, name) }
	if !strings.Contains(out, "--tls-cert "+file("server.crt")+" --tls-key "+file("server.key")+" --tls-client-ca "+file("ca.crt")) {
		t.Fatalf("target certs does not say how to serve with what it wrote:\n%s", out)
	}

	tokenFile := filepath.Join(dir, "token")
	line, _ := targetServe(t, "--config", cfg, "--token-file", tokenFile,
		"--tls-cert", file("server.crt"), "--tls-key", file("server.key"), "--tls-client-ca", file("ca.crt"))
	url := strings.Fields(strings.TrimPrefix(line, "array lab-array: control "))[0]
	if !strings.HasPrefix(url, "https://127.0.0.1:") || !strings.Contains(line, "mutual TLS required") || !strings.Contains(line, file("ca.crt")) {
		t.Fatalf("endpoint line %q: want an https URL and that mutual TLS is required, naming the client CA", line)
	}
	b, err := os.ReadFile(tokenFile)
	if err != nil {
		t.Fatal(err)
	}
	token := strings.TrimSpace(string(b))

	withCert, err := control.LoadClientTLS(file("ca.crt"), file("client.crt"), file("client.key"))
	if err != nil {
		t.Fatal(err)
	}
	info, err := control.NewClient(url, token, control.ClientTLS(withCert)).Info(context.Background())
	if err != nil {
		t.Fatalf("client with the generated certificate: %v", err)
	}
	if info.Name != "lab-array" || len(info.Portals) != 1 {
		t.Fatalf("info = %+v", info)
	}

	noCert, err := control.LoadClientTLS(file("ca.crt"), "", "")
	if err != nil {
		t.Fatal(err)
	}
	refusals := map[string]*control.Client{
		"no client certificate": control.NewClient(url, token, control.ClientTLS(noCert)),
		"plain http":            control.NewClient(strings.Replace(url, "https://", "http://", 1), token),
		"wrong token":           control.NewClient(url, "wrong", control.ClientTLS(withCert)),
	}
	for name, c := range refusals {
		if _, err := c.Info(context.Background()); err == nil {
			t.Errorf("%s: the control API answered", name)
		}
	}
	if _, err := refusals["wrong token"].Info(context.Background()); !errors.Is(err, control.ErrUnauthorized) {
		t.Errorf("right certificate, wrong token: %v, want ErrUnauthorized", err)
	}
}

func TestTargetServeNamesWhatIsWrongWithItsTLSFlags(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "array.yaml")
	if err := os.WriteFile(cfg, []byte(tlsTestArray), 0o600); err != nil {
		t.Fatal(err)
	}
	pki := filepath.Join(dir, "pki")
	if _, errOut, code := certkit(t, "target", "certs", "--dir", pki); code != 0 {
		t.Fatalf("target certs: %s", errOut)
	}
	crt, key, ca := filepath.Join(pki, "server.crt"), filepath.Join(pki, "server.key"), filepath.Join(pki, "ca.crt")
	missing := filepath.Join(dir, "nope.crt")
	cases := []struct {
		name string
		args []string
		want []string
	}{
		{"only the certificate", []string{"--tls-cert", crt}, []string{"--tls-key and --tls-client-ca are missing", "certkit target certs"}},
		{"no client CA", []string{"--tls-cert", crt, "--tls-key", key}, []string{"--tls-client-ca is missing"}},
		{"unreadable certificate", []string{"--tls-cert", missing, "--tls-key", key, "--tls-client-ca", ca}, []string{missing, "give the PEM file of the server's certificate"}},
		{"key given as certificate", []string{"--tls-cert", key, "--tls-key", key, "--tls-client-ca", ca}, []string{key, "holds no PEM certificate"}},
		{"key given as client CA", []string{"--tls-cert", crt, "--tls-key", key, "--tls-client-ca", key}, []string{key, "holds no PEM certificate"}},
		{"every interface without --allow-remote", []string{"--control", "0.0.0.0:0", "--tls-cert", crt, "--tls-key", key, "--tls-client-ca", ca}, []string{"--control 0.0.0.0:0 is not a loopback address: pass --allow-remote"}},
	}
	for _, tc := range cases {
		args := append([]string{"target", "serve", "--config", cfg, "--token-file", filepath.Join(dir, "token")}, tc.args...)
		_, errOut, code := certkit(t, args...)
		if code != 2 {
			t.Errorf("%s: exit %d, want 2; stderr %s", tc.name, code, errOut)
		}
		for _, w := range tc.want {
			if !strings.Contains(errOut, w) {
				t.Errorf("%s: stderr %q does not say %q", tc.name, errOut, w)
			}
		}
	}

	if _, errOut, code := certkit(t, "target", "certs", "--dir", pki); code == 0 || !strings.Contains(errOut, "already exists") {
		t.Errorf("target certs into a used directory: exit %d, %s", code, errOut)
	}
	if _, errOut, code := certkit(t, "target", "certs"); code == 0 || !strings.Contains(errOut, "--dir is required") {
		t.Errorf("target certs without --dir: exit %d, %s", code, errOut)
	}
}
