package bundle

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// runWith writes a bundle requiring req (catalog "2026.1") with the given results.
func runWith(t *testing.T, req []string, results ...TestResult) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "run.tgz")
	w, err := Create(p, Meta{ToolVersion: "v1", CatalogVersion: "2026.1", Required: req, Now: newClock().Now})
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

func TestCompletenessAgainstTheRequiredTests(t *testing.T) {
	pass := func(id string) TestResult { return TestResult{ID: id, Status: StatusPassed} }
	skip := func(id, why string) TestResult { return TestResult{ID: id, Status: StatusSkipped, Reason: why} }
	for _, tc := range []struct {
		name    string
		results []TestResult
		want    []string // incomplete reasons; none: complete
	}{
		{"all present", []TestResult{pass("a"), {ID: "b", Status: StatusFailed}, pass("extra")}, nil},
		{"allowed skip", []TestResult{pass("a"), skip("b", "unsupported by lab: array has no ALUA")}, nil},
		{"missing", []TestResult{pass("a")}, []string{"required test b has no result (not run?)"}},
		{"skipped for no allowed reason", []TestResult{pass("a"), skip("b", "flaky today")},
			[]string{`required test b was skipped for "flaky today"; a required test may only be skipped with a reason starting "unsupported by lab: "`}},
		{"allowed prefix with nothing after it", []TestResult{pass("a"), skip("b", "unsupported by lab: ")}, []string{"required test b was skipped"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := runWith(t, []string{"b", "a"}, tc.results...)
			c, err := Check(p, VerifyOptions{})
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("Check = %v", err)
				}
				return
			}
			var inc *IncompleteError
			if !errors.As(err, &inc) || len(inc.Reasons) != len(tc.want) {
				t.Fatalf("Check = %v, want incomplete: %q", err, tc.want)
			}
			for i, w := range tc.want {
				if !strings.Contains(inc.Reasons[i], w) {
					t.Errorf("reason %q, want %q", inc.Reasons[i], w)
				}
			}
			if !strings.HasPrefix(err.Error(), "bundle "+p+": incomplete: ") || c == nil || c.Manifest == nil {
				t.Errorf("error %q / checked %+v", err, c)
			}
			b, err := Read(p) // an incomplete bundle is still readable, for show and report
			if err != nil || len(b.Incomplete()) != len(tc.want) {
				t.Errorf("Read: %v, Incomplete %q", err, b.Incomplete())
			}
		})
	}
}

func TestCompletenessAgainstTheReviewersCatalog(t *testing.T) {
	p := runWith(t, []string{"a"}, TestResult{ID: "a", Status: StatusPassed})
	catalog := func(v string) ([]string, bool) {
		if v == "2026.1" {
			return []string{"a", "dropped"}, true
		}
		return nil, false
	}
	c, err := Check(p, VerifyOptions{Catalog: catalog})
	if err == nil || !strings.Contains(err.Error(), "incomplete: catalog 2026.1 requires test dropped, which the manifest's required list omits") || !c.CatalogKnown {
		t.Errorf("Check = %v (%+v)", err, c)
	}
	c, err = Check(p, VerifyOptions{Catalog: func(string) ([]string, bool) { return nil, false }})
	if err != nil || c.CatalogKnown {
		t.Errorf("Check with an unknown catalog version = %v (%+v)", err, c)
	}
}

func TestCreateChecksRequiredTests(t *testing.T) {
	dir := t.TempDir()
	for i, tc := range []struct {
		m    Meta
		want string
	}{
		{Meta{Required: []string{"a"}}, "required tests given without the catalog version"},
		{Meta{CatalogVersion: "1", Required: []string{"a", "a"}}, "required test a listed twice"},
		{Meta{CatalogVersion: "1", Required: []string{"../x"}}, "required test id ../x: path traversal"},
		{Meta{}, "Meta.ToolVersion is empty"},
	} {
		if tc.m.ToolVersion == "" && tc.want != "Meta.ToolVersion is empty" {
			tc.m.ToolVersion = "v1"
		}
		p := filepath.Join(dir, string(rune('a'+i))+".tgz")
		if _, err := Create(p, tc.m); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Create(%+v) = %v, want %q", tc.m, err, tc.want)
		}
		if _, err := os.Stat(p + ".partial"); !os.IsNotExist(err) {
			t.Errorf("failed Create left %s.partial", p)
		}
	}
}

func TestManifestRecordsTheRun(t *testing.T) {
	p := filepath.Join(t.TempDir(), "run.tgz")
	w, err := Create(p, Meta{ToolVersion: "v1", CatalogVersion: "2026.1", Required: []string{"b", "a"},
		Profile: []byte(testProfile),
		Hosts:   map[string]Component{"esx-01": {Product: "VMware ESXi", Version: "8.0.3", Build: "24022510", Extra: map[string]string{"update": "3", "root_password": "x"}}},
		Arrays:  map[string]Component{"array-a": {Product: "certkit software array", Version: "0.1.0"}},
		Now:     newClock().Now})
	if err != nil {
		t.Fatal(err)
	}
	w.AddResult(TestResult{ID: "a", Status: StatusPassed})
	w.AddResult(TestResult{ID: "b", Status: StatusPassed})
	w.AppendFile("hosts/esx-01/var/log/vmkernel.log", []byte("x\n"))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	c, err := Check(p, VerifyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m := c.Manifest
	if m.CatalogVersion != "2026.1" || !slices.Equal(m.Required, []string{"a", "b"}) || m.Completeness != CompletenessComplete {
		t.Errorf("manifest header: %+v", m)
	}
	if h := m.Hosts["esx-01"]; h.Version != "8.0.3" || h.Build != "24022510" || h.Extra["update"] != "3" || h.Extra["root_password"] != Redacted {
		t.Errorf("hosts = %+v", m.Hosts)
	}
	if m.Arrays["array-a"].Version != "0.1.0" {
		t.Errorf("arrays = %+v", m.Arrays)
	}
	hosts, _ := m.LabProfile["hosts"].([]any)
	if len(hosts) != 1 || hosts[0].(map[string]any)["password"] != Redacted || m.LabProfile["name"] != "embedded" {
		t.Errorf("lab_profile = %v", m.LabProfile)
	}
	if c.Passed != 2 {
		t.Errorf("counts: %+v", c)
	}
}

// Files that agree with the manifest's checksums must also agree with each
// other: a forger who rehashes the manifest is caught by what the files say.
func TestVerifyCatchesInconsistentContent(t *testing.T) {
	for _, tc := range []struct {
		name, file, content, want string
	}{
		{"per-test result edited", "tests/path-failover/reset-B0/result.json", `{"id":"path-failover/reset-B0","status":"passed"}`,
			"results/results.json: tests[1]: test path-failover/reset-B0 differs from tests/path-failover/reset-B0/result.json"},
		{"per-test result of another test", "tests/path-failover/reset-B0/result.json", `{"id":"alua/transition","status":"passed"}`,
			"tests/path-failover/reset-B0/result.json: holds the result of test alua/transition, not of path-failover/reset-B0"},
		{"per-test result added", "tests/new/result.json", `{"id":"new","status":"passed"}`,
			"tests/new/result.json: result of test new is missing from results/results.json"},
		{"junit malformed", JUnitName, "<testsuites><testsuite></testsuites>",
			"results/junit.xml: malformed XML at line 1: element <testsuite> closed by </testsuites>"},
		{"junit not junit", JUnitName, "<html/>", "results/junit.xml: not a JUnit report: expected element type <testsuites> but have <html>"},
		{"junit counts", JUnitName, `<testsuites tests="3" failures="0" errors="0" skipped="1"><testsuite><properties><property name="tool_version" value="v0.1.0-test"/></properties></testsuite></testsuites>`,
			"results/junit.xml: counts (tests 3, failures 0, errors 0, skipped 1) differ from results/results.json (tests 3, failed 1, error 0, skipped 1)"},
		{"junit tool version", JUnitName, `<testsuites tests="0"><testsuite><properties><property name="tool_version" value="v9"/></properties></testsuite></testsuites>`,
			`results/junit.xml: tool_version "v9" differs from the manifest's "v0.1.0-test"`},
		{"evidence JSON malformed", "tests/path-failover/blackhole-A0/timeline.json", "[{\"at\": 1}\n{\"at\": 2}]",
			"tests/path-failover/blackhole-A0/timeline.json: malformed JSON at line 2, column 1: invalid character '{' after array element"},
		{"XML evidence malformed", "hosts/esx-01/commands/paths.xml", "<a><b></a>", "hosts/esx-01/commands/paths.xml: malformed XML at line 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := forge(t, tc.file, tc.content)
			_, err := Verify(p)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Verify = %v\nwant %q", err, tc.want)
			}
		})
	}
}

func TestVerifyChecksHostsAgainstTheManifest(t *testing.T) {
	p := filepath.Join(t.TempDir(), "run.tgz")
	w, err := Create(p, Meta{ToolVersion: "v1", Hosts: map[string]Component{"esx-01": {Version: "8.0.3"}}, Now: newClock().Now})
	if err != nil {
		t.Fatal(err)
	}
	w.AppendFile("hosts/esx-01/var/log/vmkernel.log", []byte("x\n"))
	w.AppendFile("hosts/esx-99/var/log/vmkernel.log", []byte("x\n"))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(p); err == nil || !strings.Contains(err.Error(), "hosts/esx-99/var/log/vmkernel.log: evidence of a host the manifest does not name (its hosts: esx-01)") {
		t.Errorf("Verify = %v", err)
	}
}

// A tampered file is reported once, as changed, not again for what it says.
func TestChangedFilesAreReportedOnce(t *testing.T) {
	data := tamper(t, func(es []entry) []entry {
		for i := range es {
			if es[i].hdr.Name == ResultsJSONName {
				es[i].data = []byte("{garbage")
			}
		}
		return es
	})
	_, problems, err := verifyProblems(t, data)
	if len(problems) != 1 || problems[0].File != ResultsJSONName || !strings.Contains(problems[0].Message, "mismatch") {
		t.Errorf("problems: %v", err)
	}
}
