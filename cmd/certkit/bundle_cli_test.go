package main

// The reviewer's commands on bundles made here (no lab): exit codes and
// what they print. They run in this process; the e2e tests run the binary.

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/certkit/certkit/reports/bundle"
)

// bundleCLI runs `certkit bundle ARGS` in this process, as main would:
// it returns stdout, the error main would print, and the exit code.
func bundleCLI(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	cmd := bundleCmd()
	cmd.SetArgs(args)
	var out, errb bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errb)
	cmd.SilenceUsage, cmd.SilenceErrors = true, true
	err := cmd.Execute()
	var ee *exitError
	switch {
	case errors.As(err, &ee):
		return out.String(), err.Error(), ee.code
	case err != nil:
		return out.String(), err.Error(), exitSetup
	}
	return out.String(), errb.String(), 0
}

// writeBundle writes a small bundle; required lists the catalog's tests.
func writeBundle(t *testing.T, meta bundle.Meta, results ...bundle.TestResult) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "run.tgz")
	if meta.ToolVersion == "" {
		meta.ToolVersion = "v-test"
	}
	w, err := bundle.Create(p, meta)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range results {
		if err := w.AddResult(r); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return p
}

func passed(id string) bundle.TestResult {
	now := time.Now()
	return bundle.TestResult{ID: id, Status: bundle.StatusPassed, Start: now, End: now.Add(time.Second)}
}

func TestVerifyExitCodes(t *testing.T) {
	intact := writeBundle(t, bundle.Meta{CatalogVersion: "c1", Required: []string{"a"}}, passed("a"))
	incomplete := writeBundle(t, bundle.Meta{CatalogVersion: "c1", Required: []string{"a", "b"}}, passed("a"),
		bundle.TestResult{ID: "b", Status: bundle.StatusSkipped, Reason: "no time"})
	corrupt := filepath.Join(t.TempDir(), "corrupt.tgz")
	data, err := os.ReadFile(intact)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 0xff
	if err := os.WriteFile(corrupt, data, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, path string
		code       int
		out, err   string
	}{
		{"intact", intact, 0, intact + ": intact, complete (", ""},
		{"required test skipped without an allowed reason", incomplete, exitIncomplete, "tests: 1 passed, 0 failed, 1 skipped",
			`incomplete: required test b was skipped for "no time"; a required test may only be skipped with a reason starting "unsupported by lab: "`},
		{"corrupt", corrupt, exitCorrupt, "", "bundle " + corrupt + ": "},
		{"missing", filepath.Join(t.TempDir(), "none.tgz"), exitCorrupt, "", "cannot open"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, code := bundleCLI(t, "verify", tc.path)
			if code != tc.code || !strings.Contains(out, tc.out) || !strings.Contains(errOut, tc.err) {
				t.Errorf("verify: exit %d (want %d)\nstdout: %s\nstderr: %s", code, tc.code, out, errOut)
			}
		})
	}
}

func TestSigningAndVerifyingWithKeyFiles(t *testing.T) {
	dir := t.TempDir()
	out, errOut, code := bundleCLI(t, "keygen", "--out", filepath.Join(dir, "lab"))
	if code != 0 || !strings.Contains(out, "key id sha256:") {
		t.Fatalf("keygen: exit %d\n%s%s", code, out, errOut)
	}
	if _, errOut, code := bundleCLI(t, "keygen", "--out", filepath.Join(dir, "lab")); code == 0 || !strings.Contains(errOut, "already exists") {
		t.Errorf("keygen over existing keys: exit %d: %s", code, errOut)
	}
	key, err := bundle.LoadPrivateKey(filepath.Join(dir, "lab.key"))
	if err != nil {
		t.Fatal(err)
	}
	keyID := strings.TrimSpace(out[strings.Index(out, "key id ")+len("key id "):])
	signed := writeBundle(t, bundle.Meta{SignKey: key}, passed("a"))

	out, errOut, code = bundleCLI(t, "verify", "--pubkey", filepath.Join(dir, "lab.pub"), signed)
	if code != 0 || !strings.Contains(out, "signature: valid, by the trusted key "+keyID) {
		t.Errorf("verify --pubkey: exit %d\n%s%s", code, out, errOut)
	}
	out, _, code = bundleCLI(t, "verify", signed)
	if code != 0 || !strings.Contains(out, "signature: valid, by key "+keyID+" (not checked against a trusted key: pass --pubkey)") {
		t.Errorf("verify without --pubkey: exit %d\n%s", code, out)
	}
	if _, err := bundle.WriteKeyPair(filepath.Join(dir, "other")); err != nil {
		t.Fatal(err)
	}
	_, errOut, code = bundleCLI(t, "verify", "--pubkey", filepath.Join(dir, "other.pub"), signed)
	if code != exitCorrupt || !strings.Contains(errOut, "manifest.sig: signed by key "+keyID+", not by the trusted key") {
		t.Errorf("verify with another key: exit %d: %s", code, errOut)
	}
	unsigned := writeBundle(t, bundle.Meta{}, passed("a"))
	_, errOut, code = bundleCLI(t, "verify", "--pubkey", filepath.Join(dir, "lab.pub"), unsigned)
	if code != exitCorrupt || !strings.Contains(errOut, "manifest.sig: missing") {
		t.Errorf("verify --pubkey of an unsigned bundle: exit %d: %s", code, errOut)
	}
	_, errOut, code = bundleCLI(t, "verify", "--pubkey", filepath.Join(dir, "lab.key"), signed)
	if code != exitSetup || !strings.Contains(errOut, `PEM block is "PRIVATE KEY", want "PUBLIC KEY"`) {
		t.Errorf("verify --pubkey with the private key file: exit %d: %s", code, errOut)
	}

	// finalize --sign-key signs what it seals.
	p := filepath.Join(t.TempDir(), "died.tgz")
	if _, err := bundle.Create(p, bundle.Meta{ToolVersion: "v-test"}); err != nil {
		t.Fatal(err)
	}
	if out, errOut, code := bundleCLI(t, "finalize", "--sign-key", filepath.Join(dir, "lab.key"), p); code != 0 {
		t.Fatalf("finalize --sign-key: exit %d\n%s%s", code, out, errOut)
	}
	out, errOut, code = bundleCLI(t, "verify", "--pubkey", filepath.Join(dir, "lab.pub"), p)
	if code != 0 || !strings.Contains(out, "finalized after the run died") || !strings.Contains(out, "by the trusted key") {
		t.Errorf("verify of a signed finalized bundle: exit %d\n%s%s", code, out, errOut)
	}
}
