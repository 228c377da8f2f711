package bundle

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// writerProcess is the env var that turns the test binary into a bundle
// writer that writes until it is killed (see TestHelperWriterUntilKilled).
const writerProcess = "CERTKIT_BUNDLE_TEST_WRITER"

// TestHelperWriterUntilKilled is not a test: run by TestKilledWriter as a
// child process, it writes a bundle the way a run does, forever.
func TestHelperWriterUntilKilled(t *testing.T) {
	p := os.Getenv(writerProcess)
	if p == "" {
		t.Skip("helper process for TestKilledWriterLeavesAnIncompleteBundleThatFinalizeSeals")
	}
	w, err := Create(p, Meta{ToolVersion: "v-killed", CatalogVersion: "c1",
		Required: []string{"t/000", "t/001", "never-reached"}, Profile: []byte(testProfile)})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	for i := 0; ; i++ {
		id := fmt.Sprintf("t/%03d", i)
		start := time.Now()
		steps := []error{
			w.LogCommand("esx-01", Command{Start: start, Command: "esxcli storage core path list", Output: []byte(strings.Repeat("State: active\n", 50))}),
			w.AppendFile("hosts/esx-01/var/log/vmkernel.log", []byte(start.UTC().Format(time.RFC3339Nano)+" cpu0:1)NMP: path state\n")),
			w.WriteJSON("tests/"+id+"/"+TimelineFile, []map[string]any{{"at": start, "action": "inject"}}),
			w.WriteJSON("tests/"+id+"/"+EvidenceFile, map[string]any{"samples": []any{}, "i": i}),
			w.AddResult(TestResult{ID: id, Status: StatusPassed, Start: start, End: time.Now()}),
		}
		if err := errors.Join(steps...); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
	}
}

// A run killed with SIGKILL leaves its staging directory: Check calls it
// incomplete (not corrupt), Finalize seals it, and the sealed bundle is
// intact, says it was finalized, and records an error for every test the
// run did not judge.
func TestKilledWriterLeavesAnIncompleteBundleThatFinalizeSeals(t *testing.T) {
	p := filepath.Join(t.TempDir(), "killed.tgz")
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperWriterUntilKilled$")
	cmd.Env = append(os.Environ(), writerProcess+"="+p)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	defer func() {
		if !killed {
			cmd.Process.Kill()
			cmd.Wait()
		}
	}()
	// Kill it once it has judged a few tests, in the middle of whatever it is writing.
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(p+".partial", "tests/t/003", ResultFile)); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the writer did not record 4 results within 30 s")
		}
		time.Sleep(time.Millisecond)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	killed = true

	for _, arg := range []string{p, p + ".partial"} {
		c, err := Check(arg, VerifyOptions{})
		var inc *IncompleteError
		if !errors.As(err, &inc) {
			t.Fatalf("Check(%s) of a killed run = %v, want *IncompleteError", arg, err)
		}
		for _, want := range []string{"incomplete: the run did not finish: its evidence is staged in " + p + ".partial/", "seal it with: certkit bundle finalize " + p + ".partial"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("Check(%s) = %v, want %q", arg, err, want)
			}
		}
		if c == nil || c.Staging == nil || len(c.Staging.Results) < 4 || c.Manifest.Completeness != CompletenessInProgress {
			t.Fatalf("Check(%s) = %+v", arg, c)
		}
	}

	m, err := Finalize(p+".partial", FinalizeOptions{ToolVersion: "v-finalizer"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p + ".partial"); !os.IsNotExist(err) {
		t.Errorf("staging directory left after Finalize: %v", err)
	}
	if m.Completeness != CompletenessFinalized || m.Finalization == nil || m.Finalization.ToolVersion != "v-finalizer" || m.ToolVersion != "v-killed" {
		t.Fatalf("finalized manifest = %+v", m)
	}
	c, err := Check(p, VerifyOptions{})
	if err != nil {
		t.Fatalf("Check of the finalized bundle: %v", err)
	}
	if c.Manifest.Completeness != CompletenessFinalized || c.Passed < 4 {
		t.Errorf("checked = %+v", c)
	}
	b, err := Read(p)
	if err != nil {
		t.Fatal(err)
	}
	byID := map[string]TestResult{}
	for _, r := range b.Results() {
		byID[r.ID] = r
	}
	if r := byID["never-reached"]; r.Status != StatusError || !strings.HasPrefix(r.Reason, NoVerdictReason+"the run ended before this test ran") {
		t.Errorf("required test never reached: %+v", r)
	}
	if !slices.Contains(m.Finalization.NoVerdict, "never-reached") {
		t.Errorf("finalization.no_verdict = %v", m.Finalization.NoVerdict)
	}
	// The test the writer was in when killed (evidence, no result) is an error too, unless it died between tests.
	for _, id := range m.Finalization.NoVerdict {
		if r := byID[id]; r.Status != StatusError || !strings.HasPrefix(r.Reason, NoVerdictReason) {
			t.Errorf("no-verdict test %s: %+v", id, r)
		}
	}
	for i, r := range b.Results()[:4] {
		if want := fmt.Sprintf("t/%03d", i); r.ID != want || r.Status != StatusPassed {
			t.Errorf("results[%d] = %s %s, want %s passed (run order kept)", i, r.ID, r.Status, want)
		}
	}
	if _, err := Finalize(p, FinalizeOptions{ToolVersion: "v1"}); err == nil || !strings.Contains(err.Error(), "already sealed") {
		t.Errorf("second Finalize: %v", err)
	}
}

// stageRun stages a run that died: a result, evidence of a test in
// progress, and no Close.
func stageRun(t *testing.T, m Meta) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "run.tgz")
	if m.ToolVersion == "" {
		m.ToolVersion = "v1"
	}
	if m.Now == nil {
		m.Now = newClock().Now
	}
	w, err := Create(p, m)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.AddResult(TestResult{ID: "done", Status: StatusPassed}); err != nil {
		t.Fatal(err)
	}
	if err := w.WriteJSON("tests/busy/"+TimelineFile, []string{"inject"}); err != nil {
		t.Fatal(err)
	}
	if err := w.WriteFile("tests/done/sub/extra.txt", []byte("evidence of a judged test")); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestFinalizeRecordsTestsInProgressAsErrors(t *testing.T) {
	p := stageRun(t, Meta{})
	// Evidence in a subdirectory of the test in progress is that test's.
	if err := os.MkdirAll(filepath.Join(p+".partial", "tests/busy/sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(p+".partial", "tests/busy/sub/raw.txt"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	// A crash mid-write leaves a temporary file; it is not evidence.
	if err := os.WriteFile(filepath.Join(p+".partial", "tests/busy", stagingTemp+"123"), []byte("{"), 0o644); err != nil {
		t.Fatal(err)
	}
	m, err := Finalize(p, FinalizeOptions{ToolVersion: "v2", Now: newClock().Now})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(m.Finalization.NoVerdict, []string{"busy"}) {
		t.Errorf("no_verdict = %v, want [busy]", m.Finalization.NoVerdict)
	}
	b, err := Read(p)
	if err != nil {
		t.Fatal(err)
	}
	rs := b.Results()
	if len(rs) != 2 || rs[0].ID != "done" || rs[1].ID != "busy" || rs[1].Status != StatusError ||
		rs[1].Reason != NoVerdictReason+"the run ended while this test was in progress (bundle finalized by certkit bundle finalize)" {
		t.Errorf("results = %+v", rs)
	}
	for _, f := range b.Manifest().Files {
		if strings.Contains(f.Path, stagingTemp) {
			t.Errorf("temporary file %s packed", f.Path)
		}
	}
}

func TestFinalizeRefusesWhatItCannotSeal(t *testing.T) {
	dir := t.TempDir()
	sealed := writeSample(t, dir, "sealed.tgz", newClock())
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T) string
		want  string
	}{
		{"a sealed bundle", func(t *testing.T) string { return sealed }, "already sealed"},
		{"nothing there", func(t *testing.T) string { return filepath.Join(dir, "none.tgz") }, "no staging directory " + filepath.Join(dir, "none.tgz") + ".partial/ and no bundle"},
		{"a directory not named .partial", func(t *testing.T) string { return dir }, "is a directory, not a bundle"},
		{"a bundle sealed before the crash", func(t *testing.T) string {
			p := stageRun(t, Meta{})
			if err := os.WriteFile(p, []byte("sealed"), 0o644); err != nil {
				t.Fatal(err)
			}
			return p + ".partial"
		}, "exists already (the run sealed it, then died before removing its staging)"},
		{"a staging directory without a manifest", func(t *testing.T) string {
			p := stageRun(t, Meta{})
			os.Remove(filepath.Join(p+".partial", ManifestName))
			return p
		}, "manifest.json: missing; this is not the staging directory of a certkit run"},
		{"a broken staging manifest", func(t *testing.T) string {
			p := stageRun(t, Meta{})
			os.WriteFile(filepath.Join(p+".partial", ManifestName), []byte(`{"schema_version": 2,`), 0o644)
			return p
		}, "manifest.json: malformed JSON"},
		{"a symlink in the staging directory", func(t *testing.T) string {
			p := stageRun(t, Meta{})
			os.Symlink("/etc/passwd", filepath.Join(p+".partial", "tests/busy/passwd"))
			return p
		}, "tests/busy/passwd: not a regular file"},
		{"a result filed under another test", func(t *testing.T) string {
			p := stageRun(t, Meta{})
			os.WriteFile(filepath.Join(p+".partial", "tests/busy", ResultFile), []byte(`{"id":"done","status":"passed"}`), 0o644)
			return p
		}, "tests/busy/result.json: holds the result of test done, not of busy"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			arg := tc.setup(t)
			if _, err := Finalize(arg, FinalizeOptions{ToolVersion: "v1"}); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Finalize(%s) = %v, want %q", arg, err, tc.want)
			}
		})
	}
}

// An archive packed by hand from a staging directory is not a sealed bundle.
func TestVerifyRejectsAnArchiveOfAnUnsealedRun(t *testing.T) {
	data := tamper(t, func(es []entry) []entry {
		es[0].data = []byte(strings.Replace(string(es[0].data), `"completeness": "complete"`, `"completeness": "in_progress"`, 1))
		return es
	})
	_, _, err := verifyProblems(t, data)
	if err == nil || !strings.Contains(err.Error(), `manifest.json: completeness is "in_progress": this archive was packed from the staging directory of an unfinished run`) {
		t.Errorf("Verify = %v", err)
	}
}
