package main

// End-to-end tests of what a run leaves behind: a run killed with SIGKILL,
// and a run against a lab profile with real credentials.

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/certkit/certkit/reports/bundle"
)

// A run killed with SIGKILL leaves its staging directory: verify says
// incomplete (exit 3, not corrupt), finalize seals it, and the sealed
// bundle verifies as intact and finalized.
func TestKilledRunIsIncompleteUntilFinalized(t *testing.T) {
	dir := t.TempDir()
	bundlePath := filepath.Join(dir, "killed.tgz")
	run := exec.Command(certkitBin, "run", "--lab", "embedded", "--bundle", bundlePath)
	run.Env = append(os.Environ(), "TMPDIR="+t.TempDir()) // the embedded lab's files, which SIGKILL leaves behind
	var out bytes.Buffer
	run.Stdout, run.Stderr = &out, &out
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	defer func() {
		if !killed {
			run.Process.Kill()
			run.Wait()
		}
	}()
	// Kill it once a test has written evidence: it is in the middle of the test.
	tests := filepath.Join(bundlePath+bundle.StagingSuffix, "tests")
	deadline := time.Now().Add(60 * time.Second)
	for !hasFile(tests) {
		if time.Now().After(deadline) {
			t.Fatalf("no evidence under %s within 60 s\n%s", tests, out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := run.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	run.Wait()
	killed = true
	if _, err := os.Stat(bundlePath); !os.IsNotExist(err) {
		t.Fatalf("a killed run left a sealed bundle: %v", err)
	}

	for _, arg := range []string{bundlePath, bundlePath + bundle.StagingSuffix} {
		vout, verr, code := certkit(t, "bundle", "verify", arg)
		if code != exitIncomplete || !strings.Contains(verr, "incomplete: the run did not finish") ||
			!strings.Contains(verr, "certkit bundle finalize "+bundlePath+bundle.StagingSuffix) {
			t.Fatalf("verify %s of a killed run: exit %d, want %d saying it is incomplete\n%s%s", arg, code, exitIncomplete, vout, verr)
		}
	}
	if _, verr, code := certkit(t, "bundle", "show", bundlePath); code != exitIncomplete || !strings.Contains(verr, "seal it with certkit bundle finalize") {
		t.Errorf("show of an unsealed run: exit %d: %s", code, verr)
	}

	fout, ferr, code := certkit(t, "bundle", "finalize", bundlePath+bundle.StagingSuffix)
	if code != 0 || lastLine(fout) != bundlePath || !strings.Contains(fout, "recorded as error (no verdict): failover.path.noop-timeout") {
		t.Fatalf("finalize: exit %d\n%s%s", code, fout, ferr)
	}
	vout, verr, code := certkit(t, "bundle", "verify", bundlePath)
	if code != 0 || !strings.Contains(vout, bundlePath+": intact, finalized after the run died") ||
		!strings.Contains(vout, "no verdict (recorded as error by finalize): failover.path.noop-timeout") {
		t.Fatalf("verify of the finalized bundle: exit %d\n%s%s", code, vout, verr)
	}
	s := show(t, bundlePath)
	if len(s.Tests) != 1 || s.Tests[0].Status != bundle.StatusError {
		t.Errorf("finalized results: %+v", s)
	}
	if _, ferr, code := certkit(t, "bundle", "finalize", bundlePath); code == 0 || !strings.Contains(ferr, "already sealed") {
		t.Errorf("second finalize: exit %d: %s", code, ferr)
	}
}

func hasFile(dir string) bool {
	found := false
	filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			found = true
			return fs.SkipAll
		}
		return nil
	})
	return found
}

// A run against a lab profile with real credentials writes none of them:
// every byte of the bundle (decompressed), and of its HTML report, is
// scanned for the lab's SSH password and control token. The run is
// interrupted once it has injected its fault, so every kind of evidence
// (profile, command logs, fault timeline, observer samples, host log,
// results) is in the bundle without waiting for the whole catalog.
func TestBundleHoldsNoLabSecret(t *testing.T) {
	profilePath, profile := labUp(t)
	token, err := profile.Arrays[0].Control.ResolveToken()
	if err != nil {
		t.Fatal(err)
	}
	secrets := map[string]string{"ssh password": profile.Hosts[0].SSH.Password, "control token": token}
	for what, s := range secrets {
		if len(s) < 8 {
			t.Fatalf("the lab's %s %q is too short to scan for", what, s)
		}
	}

	bundlePath := filepath.Join(t.TempDir(), "lab.tgz")
	stdout, stderr, _ := interruptAfterFault(t, profile, "run", "--lab", profilePath, "--bundle", bundlePath)
	out := stdout + stderr
	if _, verr, code := certkit(t, "bundle", "verify", bundlePath); code != 0 {
		t.Fatalf("the interrupted run's bundle does not verify: exit %d: %s\n%s", code, verr, out)
	}

	data := decompressed(t, bundlePath)
	if !bytes.Contains(data, []byte("esxcli")) || !bytes.Contains(data, []byte(bundle.TimelineFile)) {
		t.Fatalf("the bundle lacks command logs or the fault timeline; the scan would prove little")
	}
	scan(t, "the decompressed bundle", data, secrets)

	reportDir := filepath.Join(t.TempDir(), "report")
	cmd := reportCmd()
	cmd.SetArgs([]string{bundlePath, "-o", reportDir})
	cmd.SetOut(io.Discard)
	if err := cmd.Execute(); err != nil {
		t.Fatalf("report: %v", err)
	}
	filepath.WalkDir(reportDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		scan(t, p, b, secrets)
		return nil
	})
}

// decompressed returns the tar stream of a .tgz: every header and file byte.
func decompressed(t *testing.T, p string) []byte {
	t.Helper()
	raw, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	zr, err := gzip.NewReader(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	data, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tar.NewReader(bytes.NewReader(data)).Next(); err != nil {
		t.Fatalf("%s is not a tar.gz: %v", p, err)
	}
	return data
}

func scan(t *testing.T, where string, data []byte, secrets map[string]string) {
	t.Helper()
	for what, s := range secrets {
		if i := bytes.Index(data, []byte(s)); i >= 0 {
			t.Errorf("%s holds the lab's %s at byte %d: …%q…", where, what, i, data[max(0, i-60):min(len(data), i+len(s)+20)])
		}
	}
}
