package bundle

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestRoundTripWriteVerifyReadShow(t *testing.T) {
	p := writeSample(t, t.TempDir(), "run.tgz", newClock())

	if _, err := os.Stat(p + ".partial"); !os.IsNotExist(err) {
		t.Errorf("staging directory still there after Close: %v", err)
	}
	m, err := Verify(p)
	if err != nil {
		t.Fatalf("Verify of an intact bundle: %v", err)
	}
	if m.SchemaVersion != SchemaVersion || m.ToolVersion != "v0.1.0-test" || m.Suite != "certkit" || m.Completeness != CompletenessComplete || m.Finalization != nil {
		t.Errorf("manifest header = %+v", m)
	}
	if !m.FinishedAt.After(m.CreatedAt) {
		t.Errorf("finished_at %v not after created_at %v", m.FinishedAt, m.CreatedAt)
	}

	var paths []string
	for _, f := range m.Files {
		paths = append(paths, f.Path)
	}
	want := []string{
		"hosts/esx-01/commands/esxcli_iscsi_adapter.txt",
		"hosts/esx-01/commands/esxcli_storage_core.txt",
		"hosts/esx-01/var/log/vmkernel.log",
		"lab/profile.yaml",
		"results/junit.xml",
		"results/results.json",
		"tests/alua/transition/result.json",
		"tests/path-failover/blackhole-A0/result.json",
		"tests/path-failover/blackhole-A0/samples.json",
		"tests/path-failover/blackhole-A0/timeline.json",
		"tests/path-failover/reset-B0/result.json",
	}
	if !slices.Equal(paths, want) {
		t.Errorf("manifest files:\n got %q\nwant %q", paths, want)
	}

	b, err := Read(p)
	if err != nil {
		t.Fatal(err)
	}
	rs := b.Results()
	if len(rs) != 3 || rs[0].ID != "path-failover/blackhole-A0" || rs[1].Status != StatusFailed || rs[2].Status != StatusSkipped {
		t.Fatalf("results not in run order: %+v", rs)
	}
	if got := rs[0].Measurements["path_dead_after"]; got != (Measurement{12.4, "s"}) {
		t.Errorf("measurement = %+v", got)
	}
	if got := rs[0].Thresholds["path_dead_after"]; got.Max == nil || *got.Max != 26 || got.Min != nil {
		t.Errorf("threshold = %+v", got)
	}
	if rs[0].Duration() != 14500*time.Millisecond {
		t.Errorf("duration = %v", rs[0].Duration())
	}

	one, err := b.File("tests/path-failover/reset-B0/result.json")
	if err != nil {
		t.Fatal(err)
	}
	var r TestResult
	if err := json.Unmarshal(one, &r); err != nil || r.Reason != "path vmhba64:C0:T1:L0 still active 30s after reset" {
		t.Errorf("per-test result.json = %s (%v)", one, err)
	}
	if _, err := b.File("nope.txt"); err == nil || !strings.Contains(err.Error(), "nope.txt: no such file") {
		t.Errorf("File(missing) error = %v", err)
	}

	js, err := ShowJSON(b)
	if err != nil {
		t.Fatal(err)
	}
	var s Summary
	if err := json.Unmarshal(js, &s); err != nil || len(s.Tests) != 3 {
		t.Fatalf("ShowJSON = %s (%v)", js, err)
	}
	var text bytes.Buffer
	if err := ShowText(&text, b); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"certkit v0.1.0-test", "3 (1 passed, 1 failed, 1 skipped, 0 error)", "PASSED", "path_dead_after", "12.4 s", "want <= 26 s", "still active 30s after reset"} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("ShowText lacks %q:\n%s", want, text.String())
		}
	}
}

func TestCommandLogsAreAppendOnlyAndParseBack(t *testing.T) {
	b, err := Read(writeSample(t, t.TempDir(), "run.tgz", newClock()))
	if err != nil {
		t.Fatal(err)
	}
	data, err := b.File("hosts/esx-01/commands/esxcli_iscsi_adapter.txt")
	if err != nil {
		t.Fatal(err)
	}
	cmds, err := ParseCommandLog(data)
	if err != nil {
		t.Fatal(err)
	}
	if len(cmds) != 1 || cmds[0].ExitCode != 1 || string(cmds[0].Output) != "error" {
		t.Fatalf("commands = %+v", cmds)
	}
	if strings.Contains(string(data), "topsecret") || !strings.Contains(cmds[0].Command, "--secret=REDACTED") {
		t.Errorf("CHAP secret not redacted in command log:\n%s", data)
	}
}

func TestSecretsAreRedacted(t *testing.T) {
	p := writeSample(t, t.TempDir(), "run.tgz", newClock())
	b, err := Read(p)
	if err != nil {
		t.Fatal(err)
	}
	prof, err := b.File(ProfileName)
	if err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{"hunter2", "s3cr3t-token"} {
		if strings.Contains(string(prof), secret) {
			t.Errorf("lab/profile.yaml holds %q:\n%s", secret, prof)
		}
	}
	if !strings.Contains(string(prof), "# embedded lab") || !strings.Contains(string(prof), "ssh: 127.0.0.1:2201") {
		t.Errorf("redaction lost non-secret content:\n%s", prof)
	}
	if got := b.Manifest().Lab["ssh_password"]; got != Redacted {
		t.Errorf("manifest lab ssh_password = %v, want %s", got, Redacted)
	}
	if got := b.Manifest().Lab["hosts"]; got != float64(1) {
		t.Errorf("manifest lab hosts = %v", got)
	}
}

func TestArchiveIsDeterministic(t *testing.T) {
	dir := t.TempDir()
	a, err := os.ReadFile(writeSample(t, dir, "a.tgz", newClock()))
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(writeSample(t, dir, "b.tgz", newClock()))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Fatal("same content and clock produced different archives")
	}
	entries := readEntries(t, filepath.Join(dir, "a.tgz"))
	if entries[0].hdr.Name != ManifestName {
		t.Errorf("first entry %q, want manifest.json", entries[0].hdr.Name)
	}
	var m Manifest
	if err := json.Unmarshal(entries[0].data, &m); err != nil {
		t.Fatal(err)
	}
	for i, e := range entries {
		if i > 1 && e.hdr.Name < entries[i-1].hdr.Name {
			t.Errorf("entries not sorted: %q after %q", e.hdr.Name, entries[i-1].hdr.Name)
		}
		if e.hdr.Mode != 0o644 || e.hdr.Uid != 0 || e.hdr.Uname != "" || !e.hdr.ModTime.Equal(m.FinishedAt.Truncate(time.Second)) {
			t.Errorf("%s: mode %o uid %d uname %q mtime %v; want 0644, 0, \"\", finished_at", e.hdr.Name, e.hdr.Mode, e.hdr.Uid, e.hdr.Uname, e.hdr.ModTime)
		}
	}
}

func TestEvidenceIsStagedAsTheRunGoes(t *testing.T) {
	p := filepath.Join(t.TempDir(), "run.tgz")
	w, err := Create(p, Meta{ToolVersion: "v1", Now: newClock().Now})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.AppendFile("hosts/esx-01/var/log/vmkernel.log", []byte("line 1\n")); err != nil {
		t.Fatal(err)
	}
	if err := w.AddResult(TestResult{ID: "t1", Status: StatusPassed}); err != nil {
		t.Fatal(err)
	}
	// Without Close (a crashed run) the evidence is on disk, with a partial manifest.
	for _, name := range []string{"hosts/esx-01/var/log/vmkernel.log", "tests/t1/result.json", "manifest.json"} {
		if _, err := os.Stat(filepath.Join(w.StagingDir(), name)); err != nil {
			t.Errorf("staged %s: %v", name, err)
		}
	}
	if _, err := os.Stat(p); !os.IsNotExist(err) {
		t.Errorf("bundle exists before Close: %v", err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err == nil {
		t.Error("second Close succeeded")
	}
	if err := w.WriteFile("late.txt", nil); err == nil || !strings.Contains(err.Error(), "late.txt: writer already closed") {
		t.Errorf("write after Close: %v", err)
	}
}

func TestCreateRefusesToClobber(t *testing.T) {
	dir := t.TempDir()
	p := writeSample(t, dir, "run.tgz", newClock())
	if _, err := Create(p, Meta{}); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("Create over an existing bundle: %v", err)
	}
	q := filepath.Join(dir, "crashed.tgz")
	if err := os.Mkdir(q+".partial", 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := Create(q, Meta{ToolVersion: "v1"}); err == nil || !strings.Contains(err.Error(), "crashed.tgz.partial/ exists") {
		t.Errorf("Create over a leftover staging dir: %v", err)
	}
	if _, err := Create(filepath.Join(dir, "bad.tgz"), Meta{ToolVersion: "v1", Profile: []byte("a: [unclosed")}); err == nil || !strings.Contains(err.Error(), "lab profile: not valid YAML") {
		t.Errorf("Create with a broken profile: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "bad.tgz.partial")); !os.IsNotExist(err) {
		t.Errorf("failed Create left a staging directory: %v", err)
	}
	if _, err := Create(filepath.Join(dir, "bad2.tgz"), Meta{ToolVersion: "v1", Lab: map[string]any{"ch": make(chan int)}}); err == nil || !strings.Contains(err.Error(), "lab summary") {
		t.Errorf("Create with an unencodable lab summary: %v", err)
	}
}

func TestWriterRejectsBadNamesNamingThem(t *testing.T) {
	w, err := Create(filepath.Join(t.TempDir(), "run.tgz"), Meta{ToolVersion: "v1", Now: newClock().Now})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	for name, want := range map[string]string{
		"../evil":              `../evil: path traversal`,
		"tests/../../evil":     `tests/../../evil: path traversal`,
		"/etc/passwd":          `/etc/passwd: absolute path`,
		"a//b":                 `a//b: not a clean path (want a/b)`,
		"a/./b":                `a/./b: not a clean path`,
		"dir/":                 `dir/: not a clean path`,
		"":                     `"": empty path`,
		`a\b`:                  `backslash`,
		"c:/x":                 `character ':'`,
		"esc\x1b[31m":          `"esc\x1b[31m": character '\x1b'`,
		ManifestName:           "manifest.json is written by the bundle writer",
		JUnitName:              "results/junit.xml is written by the bundle writer",
		"tests/t1/result.json": "use AddResult",
		"logs/.staging-1":      "written by the bundle writer",
	} {
		for _, op := range []func(string, []byte) error{w.WriteFile, w.AppendFile} {
			err := op(name, []byte("x"))
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("write %q: error %v, want it to contain %q", name, err, want)
			}
		}
	}
	if err := w.WriteJSON("x.json", math.NaN()); err == nil || !strings.Contains(err.Error(), "x.json") {
		t.Errorf("WriteJSON(NaN) = %v", err)
	}
}

func TestAddResultValidates(t *testing.T) {
	w, err := Create(filepath.Join(t.TempDir(), "run.tgz"), Meta{ToolVersion: "v1", Now: newClock().Now})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if err := w.AddResult(TestResult{ID: "a", Status: StatusPassed}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		r    TestResult
		want string
	}{
		{TestResult{ID: "a", Status: StatusPassed}, "test a: result already added"},
		{TestResult{ID: "b", Status: "ok"}, `status "ok": want passed, failed, skipped or error`},
		{TestResult{ID: "", Status: StatusPassed}, "test id \"\": empty id"},
		{TestResult{ID: "../x", Status: StatusPassed}, "test id ../x"},
		{TestResult{ID: "c", Status: StatusPassed, Measurements: map[string]Measurement{"lat": {Value: math.Inf(1)}}}, `measurement "lat": value +Inf`},
		{TestResult{ID: "d", Status: StatusPassed, Thresholds: map[string]Threshold{"lat": {Min: ptr(2), Max: ptr(1)}}}, `threshold "lat": min 2 > max 1`},
	} {
		if err := w.AddResult(tc.r); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("AddResult(%+v) = %v, want %q", tc.r, err, tc.want)
		}
	}
}

func TestFailedCloseKeepsEvidence(t *testing.T) {
	p := filepath.Join(t.TempDir(), "run.tgz")
	w, err := Create(p, Meta{ToolVersion: "v1", Now: newClock().Now})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.WriteFile("hosts/h/var/log/vmkernel.log", []byte("evidence")); err != nil {
		t.Fatal(err)
	}
	// Something other than the writer put a symlink into the staging dir.
	if err := os.Symlink("/etc/passwd", filepath.Join(w.StagingDir(), "link")); err != nil {
		t.Fatal(err)
	}
	err = w.Close()
	if err == nil || !strings.Contains(err.Error(), "link: not a regular file") || !strings.Contains(err.Error(), "evidence is kept in "+p+".partial/") {
		t.Fatalf("Close = %v", err)
	}
	if _, err := os.Stat(filepath.Join(p+".partial", "hosts/h/var/log/vmkernel.log")); err != nil {
		t.Errorf("evidence gone after a failed Close: %v", err)
	}
	if _, err := os.Stat(p); !os.IsNotExist(err) {
		t.Errorf("a failed Close left a bundle: %v", err)
	}
	left, _ := filepath.Glob(filepath.Join(filepath.Dir(p), ".run.tgz.tmp-*"))
	if len(left) > 0 {
		t.Errorf("temporary archive left behind: %v", left)
	}
}

func TestConcurrentWriters(t *testing.T) {
	p := filepath.Join(t.TempDir(), "run.tgz")
	w, err := Create(p, Meta{ToolVersion: "v1", Now: newClock().Now})
	if err != nil {
		t.Fatal(err)
	}
	const workers, each = 8, 25
	var wg sync.WaitGroup
	errs := make(chan error, workers*each*4)
	for g := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Sprintf("t%d", g)
			for i := range each {
				errs <- w.LogCommand("esx-01", Command{Command: "esxcli storage core path list", Output: []byte(fmt.Sprintf("worker %d call %d\n", g, i))})
				errs <- w.AppendFile("hosts/esx-01/var/log/vmkernel.log", []byte(fmt.Sprintf("%d-%d\n", g, i)))
				tl, _ := TestPath(id, TimelineFile)
				errs <- w.WriteJSON(tl, map[string]int{"events": i})
			}
			errs <- w.AddResult(TestResult{ID: id, Status: StatusPassed})
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := Read(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(b.Results()) != workers {
		t.Errorf("%d results, want %d", len(b.Results()), workers)
	}
	data, err := b.File("hosts/esx-01/commands/esxcli_storage_core.txt")
	if err != nil {
		t.Fatal(err)
	}
	cmds, err := ParseCommandLog(data)
	if err != nil || len(cmds) != workers*each {
		t.Fatalf("%d commands parsed (%v), want %d", len(cmds), err, workers*each)
	}
	vmk, _ := b.File("hosts/esx-01/var/log/vmkernel.log")
	if n := strings.Count(string(vmk), "\n"); n != workers*each {
		t.Errorf("vmkernel.log has %d lines, want %d (interleaved writes?)", n, workers*each)
	}
	tl, _ := b.File("tests/t3/timeline.json")
	if !strings.Contains(string(tl), fmt.Sprintf(`"events": %d`, each-1)) {
		t.Errorf("timeline.json = %s, want the last version", tl)
	}
}

func TestJUnitInBundle(t *testing.T) {
	b, err := Read(writeSample(t, t.TempDir(), "run.tgz", newClock()))
	if err != nil {
		t.Fatal(err)
	}
	data, err := b.File(JUnitName)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Suites []struct {
			Tests    int `xml:"tests,attr"`
			Failures int `xml:"failures,attr"`
			Skipped  int `xml:"skipped,attr"`
			Cases    []struct {
				Name  string `xml:"name,attr"`
				Time  string `xml:"time,attr"`
				Props []struct {
					Name  string `xml:"name,attr"`
					Value string `xml:"value,attr"`
				} `xml:"properties>property"`
			} `xml:"testcase"`
		} `xml:"testsuite"`
	}
	if err := xml.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	s := doc.Suites[0]
	if s.Tests != 3 || s.Failures != 1 || s.Skipped != 1 {
		t.Errorf("suite counts = %+v", s)
	}
	c := s.Cases[0]
	if c.Name != "path failover: blackhole portal A0" || c.Time != "14.500" {
		t.Errorf("case = %+v", c)
	}
	props := map[string]string{}
	for _, p := range c.Props {
		props[p.Name] = p.Value
	}
	if props["id"] != "path-failover/blackhole-A0" || props["measurement.path_dead_after"] != "12.4 s" || props["threshold.path_dead_after"] != "<= 26 s" {
		t.Errorf("properties = %v", props)
	}
}

func TestPackRefusesWhatVerifyWouldReject(t *testing.T) {
	files := []FileEntry{{Path: "a", Size: 10}, {Path: "big", Size: 101}}
	lim := limits{entries: 10, entry: 100, total: 1000}
	if err := checkLimits(files, lim); err == nil || !strings.Contains(err.Error(), "big: 101 bytes, over the 100-byte per-file limit") {
		t.Errorf("per-file: %v", err)
	}
	lim = limits{entries: 2, entry: 1000, total: 10000}
	if err := checkLimits(files, lim); err == nil || !strings.Contains(err.Error(), "3 files, over the 2-entry limit") {
		t.Errorf("entries: %v", err)
	}
	lim = limits{entries: 10, entry: 1000, total: 100}
	if err := checkLimits(files, lim); err == nil || !strings.Contains(err.Error(), "111 bytes of files") {
		t.Errorf("total: %v", err)
	}
}
