package main

// End-to-end tests: the built binary against the embedded lab, as a user
// runs it. Ginkgo allows one suite run per process, so every run is its own
// certkit process.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/certkit/certkit/harness/lab"
	"github.com/certkit/certkit/reports/bundle"
	"github.com/certkit/certkit/targets/control"
)

var certkitBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "certkit-e2e-")
	if err != nil {
		panic(err)
	}
	certkitBin = filepath.Join(dir, "certkit")
	build := exec.Command("go", "build", "-race", "-o", certkitBin, ".")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		os.RemoveAll(dir)
		panic("building certkit: " + err.Error())
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// certkit runs the binary to completion and returns stdout, stderr and the exit code.
func certkit(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(certkitBin, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("certkit %v: %v", args, err)
	}
	return out.String(), errb.String(), code
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

type shown struct {
	Tests []struct {
		ID           string `json:"id"`
		Status       string `json:"status"`
		Measurements map[string]struct {
			Value float64 `json:"value"`
			Unit  string  `json:"unit"`
		} `json:"measurements"`
	} `json:"tests"`
}

func show(t *testing.T, bundlePath string) shown {
	t.Helper()
	out, errOut, code := certkit(t, "bundle", "show", bundlePath, "--json")
	if code != 0 {
		t.Fatalf("bundle show exit %d: %s", code, errOut)
	}
	var s shown
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatalf("bundle show --json printed %q: %v", out, err)
	}
	return s
}

func TestRunAgainstTheEmbeddedLabPassesAndWritesAVerifiableBundle(t *testing.T) {
	out, errOut, code := certkit(t, "run", "--lab", "embedded", "--out", t.TempDir())
	if code != 0 {
		t.Fatalf("certkit run: exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	bundlePath := lastLine(out)
	if !strings.HasSuffix(bundlePath, ".tgz") {
		t.Fatalf("last line %q is not the bundle path", bundlePath)
	}
	if vout, verr, code := certkit(t, "bundle", "verify", bundlePath); code != 0 {
		t.Fatalf("bundle verify: exit %d: %s%s", code, vout, verr)
	}
	if rout, rerr, code := certkit(t, "bundle", "replay", bundlePath); code != 0 {
		t.Fatalf("bundle replay: exit %d: %s%s", code, rout, rerr)
	}
	s := show(t, bundlePath)
	if len(s.Tests) != 1 || s.Tests[0].ID != "failover.path.noop-timeout" || s.Tests[0].Status != "passed" {
		t.Fatalf("bundle results: %+v", s)
	}
	d, ok := s.Tests[0].Measurements["detection_seconds"]
	timings := lab.Embedded().Timings
	lo := timings.NoopOutTimeout.Seconds()
	hi := (timings.NoopOutInterval.Duration + timings.NoopOutTimeout.Duration + timings.RecoveryTimeout.Duration + timings.DetectionSlack.Duration).Seconds()
	if !ok || d.Unit != "s" || d.Value < lo || d.Value > hi {
		t.Fatalf("detection_seconds = %+v, want within [%v, %v] s", d, lo, hi)
	}
}

func TestNoFailoverHostFailsTheSuite(t *testing.T) {
	out, errOut, code := certkit(t, "run", "--lab", "embedded", "--host-defect", "no-failover", "--out", t.TempDir())
	if code != 1 {
		t.Fatalf("certkit run against a no-failover host: exit %d, want 1\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	s := show(t, lastLine(out))
	if len(s.Tests) != 1 || s.Tests[0].Status != "failed" {
		t.Fatalf("bundle results: %+v", s)
	}
	// It must fail for the right reason: I/O did not move, not a setup error.
	for _, want := range []string{"Input/output error", "no surviving path carried reads"} {
		if !strings.Contains(out+errOut, want) {
			t.Errorf("the failure does not say %q:\n%s\n%s", want, out, errOut)
		}
	}

	// The raw evidence supports the recorded failure...
	if rout, rerr, code := certkit(t, "bundle", "replay", lastLine(out)); code != 0 {
		t.Fatalf("replay of the failed run: exit %d\n%s%s", code, rout, rerr)
	}
	// ...and a bundle re-sealed to claim a pass, intact as an archive, is
	// caught by replay: its evidence says otherwise.
	forged := forgePass(t, lastLine(out))
	if vout, verr, code := certkit(t, "bundle", "verify", forged); code != 0 {
		t.Fatalf("the forged bundle should be intact as an archive: exit %d %s%s", code, vout, verr)
	}
	rout, rerr, code := certkit(t, "bundle", "replay", forged)
	if code != 1 || !strings.Contains(rout, "recorded passed, but the evidence says failed") {
		t.Fatalf("replay of a bundle forged to pass: exit %d, want 1 naming the false verdict\n%s%s", code, rout, rerr)
	}
}

// forgePass re-seals a bundle with every result rewritten to passed, the
// way a tamperer with the tool would: the archive verifies, the evidence
// does not agree.
func forgePass(t *testing.T, path string) string {
	t.Helper()
	b, err := bundle.Read(path)
	if err != nil {
		t.Fatal(err)
	}
	forged := filepath.Join(t.TempDir(), "forged.tgz")
	w, err := bundle.Create(forged, bundle.Meta{ToolVersion: b.Manifest().ToolVersion, Lab: b.Manifest().Lab})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range b.Manifest().Files {
		if f.Path == bundle.ManifestName || strings.HasPrefix(f.Path, "results/") || strings.HasSuffix(f.Path, "/"+bundle.ResultFile) {
			continue
		}
		data, err := b.File(f.Path)
		if err != nil {
			t.Fatal(err)
		}
		if err := w.WriteFile(f.Path, data); err != nil {
			t.Fatalf("copying %s: %v", f.Path, err)
		}
	}
	for _, r := range b.Results() {
		r.Status, r.Reason = bundle.StatusPassed, ""
		if err := w.AddResult(r); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return forged
}

// labUp runs `certkit lab up` in its own process, so the lab outlives a
// run that is interrupted, and returns its profile; the lab stops when the
// test ends.
func labUp(t *testing.T) (string, *lab.Profile) {
	t.Helper()
	lines := startCertkit(t, "lab", "up", "--dir", t.TempDir())
	ready := nextLine(t, lines, 60*time.Second, "lab ready: ", "certkit lab up to become ready")
	profilePath := strings.TrimPrefix(ready, "lab ready: ")
	profile, err := lab.Load(profilePath)
	if err != nil {
		t.Fatal(err)
	}
	return profilePath, profile
}

// startCertkit runs certkit with args in its own process and returns the
// lines it prints on stdout; the process gets SIGTERM when the test ends.
func startCertkit(t *testing.T, args ...string) <-chan string {
	t.Helper()
	proc := exec.Command(certkitBin, args...)
	stdout, err := proc.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	proc.Stderr = os.Stderr
	if err := proc.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() {
		close(done)
		_ = proc.Process.Signal(syscall.SIGTERM)
		_ = proc.Wait()
	})
	lines := make(chan string, 16)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			case <-done:
				return
			}
		}
	}()
	return lines
}

// nextLine returns the next line from lines that starts with prefix,
// failing the test if none comes within timeout (what says what it waits
// for) or the process ends first.
func nextLine(t *testing.T, lines <-chan string, timeout time.Duration, prefix, what string) string {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("waiting for %s: the process ended", what)
			}
			if strings.HasPrefix(l, prefix) {
				return l
			}
		case <-deadline:
			t.Fatalf("waiting for %s: nothing within %s", what, timeout)
		}
	}
}

// arrayOf is a control client of the lab's first array.
func arrayOf(t *testing.T, profile *lab.Profile) *control.Client {
	t.Helper()
	token, err := profile.Arrays[0].Control.ResolveToken()
	if err != nil {
		t.Fatal(err)
	}
	return control.NewClient(profile.Arrays[0].Control.URL, token)
}

// interruptAfterFault runs certkit with args, sends it SIGINT as soon as
// the lab's array reports an injected fault, and returns how it ended.
func interruptAfterFault(t *testing.T, profile *lab.Profile, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	arr := arrayOf(t, profile)
	run := exec.Command(certkitBin, args...)
	var out, errOut bytes.Buffer
	run.Stdout, run.Stderr = &out, &errOut
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for {
		faults, err := arr.Faults(ctx)
		if err != nil {
			_ = run.Process.Kill()
			t.Fatalf("asking the array for its faults: %v", err)
		}
		if len(faults) > 0 {
			break
		}
		select {
		case <-ctx.Done():
			_ = run.Process.Kill()
			t.Fatalf("the run never injected a fault\nstdout:\n%s\nstderr:\n%s", out.String(), errOut.String())
		case <-time.After(profile.Timings.PollInterval.Duration):
		}
	}
	if err := run.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	err = run.Wait()
	return out.String(), errOut.String(), err
}

func TestCtrlCRevertsTheInjectedFault(t *testing.T) {
	profilePath, profile := labUp(t)
	arr := arrayOf(t, profile)
	out, errOut, err := interruptAfterFault(t, profile, "run", "--lab", profilePath, "--out", t.TempDir())
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 130 {
		t.Fatalf("interrupted run: %v, want exit 130\nstdout:\n%s\nstderr:\n%s", err, out, errOut)
	}
	faults, err := arr.Faults(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(faults) != 0 {
		t.Fatalf("faults still active on the array after Ctrl-C: %+v", faults)
	}
	bundlePath := lastLine(out)
	if _, verr, code := certkit(t, "bundle", "verify", bundlePath); code != 0 {
		t.Fatalf("the interrupted run's bundle does not verify: %s", verr)
	}
}

func TestTargetServePrintsItsEndpointsAndAnswersTheControlAPI(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "array.yaml")
	if err := os.WriteFile(cfg, []byte(`
name: lab-array
target: iqn.2026-11.io.certkit:lab-array
luns:
  - id: 0
    size: 16MiB
    backing: memory
controllers:
  - name: A
    portals: [{listen: "127.0.0.1:0", proxy: "127.0.0.1:0"}]
  - name: B
    portals: [{listen: "127.0.0.1:0"}]
`), 0o600); err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(dir, "token")
	control0, lines := targetServe(t, "--config", cfg, "--token-file", tokenFile)
	const what = "target serve to print its portals and LUNs"
	url := strings.Fields(strings.TrimPrefix(control0, "array lab-array: control "))[0]
	for range 2 {
		nextLine(t, lines, 30*time.Second, "portal ", what)
	}
	lun := nextLine(t, lines, 30*time.Second, "target ", what)
	token, err := os.ReadFile(tokenFile)
	if err != nil {
		t.Fatalf("the generated token file: %v", err)
	}
	info, err := control.NewClient(url, strings.TrimSpace(string(token))).Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if info.Name != "lab-array" || len(info.Portals) != 2 || len(info.Targets) != 1 || len(info.Targets[0].LUNs) != 1 {
		t.Fatalf("info = %+v", info)
	}
	if t0, l0 := info.Targets[0], info.Targets[0].LUNs[0]; lun != fmt.Sprintf("target %s: LUN 0 %s %d bytes", t0.IQN, l0.NAA, l0.SizeBytes) {
		t.Errorf("target serve printed %q for the LUN; the API says %+v of %s", lun, l0, t0.IQN)
	}
	if _, err := control.NewClient(url, "wrong").Info(context.Background()); err == nil {
		t.Fatal("the control API answered a wrong token")
	}
}
