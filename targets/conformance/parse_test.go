package conformance_test

import (
	"os"
	"strings"
	"testing"

	"github.com/certkit/certkit/targets/conformance"
)

func readFixture(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func statuses(tests []conformance.Test) map[string]conformance.Status {
	m := map[string]conformance.Status{}
	for _, t := range tests {
		m[t.Name] = t.Status
	}
	return m
}

func names(suite string, tests ...string) []string {
	var n []string
	for _, t := range tests {
		n = append(n, suite+"."+t)
	}
	return n
}

var writeSame10 = names("SCSI.WriteSame10", "Simple", "BeyondEol", "ZeroBlocks", "WriteProtect", "Unmap",
	"UnmapUnaligned", "UnmapUntilEnd", "UnmapVPD", "Check", "InvalidDataOutSize")

// CUnit counts a test that skipped itself as passed; Parse does not.
func TestParseTellsSkippedFromPassed(t *testing.T) {
	tests, err := conformance.Parse("SCSI.WriteSame10", writeSame10, readFixture(t, "SCSI.WriteSame10.certkit.txt"))
	if err != nil {
		t.Fatal(err)
	}
	got := statuses(tests)
	want := map[string]conformance.Status{
		"Simple": conformance.Passed, "ZeroBlocks": conformance.Passed, "Check": conformance.Passed,
		"Unmap": conformance.Skipped, "UnmapUntilEnd": conformance.Skipped, "InvalidDataOutSize": conformance.Skipped,
		// A [FAILED] line inside a test CUnit passes is an expected
		// failure the test provoked, not a verdict.
		"UnmapVPD": conformance.Passed,
	}
	for n, s := range want {
		if got["SCSI.WriteSame10."+n] != s {
			t.Errorf("%s: %s, want %s", n, got["SCSI.WriteSame10."+n], s)
		}
	}
	if len(tests) != len(writeSame10) {
		t.Errorf("%d tests, want %d", len(tests), len(writeSame10))
	}
}

// A FAILED test keeps its assertion failures (without the teardown output
// that follows on the same line) as the reason.
func TestParseKeepsWhyATestFailed(t *testing.T) {
	want := names("SCSI.Reserve6", "Simple", "2Initiators", "Logout", "ITNexusLoss", "TargetColdReset", "TargetWarmReset", "LUNReset")
	tests, err := conformance.Parse("SCSI.Reserve6", want, readFixture(t, "SCSI.Reserve6.tgtd.txt"))
	if err != nil {
		t.Fatal(err)
	}
	got := statuses(tests)
	if got["SCSI.Reserve6.2Initiators"] != conformance.Failed || got["SCSI.Reserve6.TargetWarmReset"] != conformance.Skipped || got["SCSI.Reserve6.LUNReset"] != conformance.Passed {
		t.Fatalf("statuses %v", got)
	}
	for _, tc := range tests {
		if tc.Name == "SCSI.Reserve6.2Initiators" {
			d := strings.Join(tc.Detail, "\n")
			if !strings.Contains(d, "MODESENSE6 successful but should have failed") || !strings.Contains(d, "test_reserve6_2initiators.c:70") {
				t.Errorf("detail of the failed test:\n%s", d)
			}
		}
	}
}

// A run that dies inside a test: that test FAILED, the ones after it NOT
// RUN, and no CUnit summary to check against.
func TestParseCrashMidSuite(t *testing.T) {
	out := string(readFixture(t, "SCSI.WriteSame10.certkit.txt"))
	cut := strings.Index(out, "  Test: Unmap ...")
	out = out[:cut] + "  Test: Unmap ...    [SKIPPED] something\n"
	tests, err := conformance.Parse("SCSI.WriteSame10", writeSame10, []byte(out))
	if err != nil {
		t.Fatal(err)
	}
	got := statuses(tests)
	if got["SCSI.WriteSame10.WriteProtect"] != conformance.Passed || got["SCSI.WriteSame10.Unmap"] != conformance.Failed || got["SCSI.WriteSame10.Check"] != conformance.NotRun {
		t.Errorf("statuses after a crash: %v", got)
	}
}

// Output that disagrees with CUnit's own counts is not trusted.
func TestParseRejectsSummaryMismatch(t *testing.T) {
	out := strings.Replace(string(readFixture(t, "SCSI.WriteSame10.certkit.txt")),
		"tests     10     10     10      0", "tests     10     10      9      1", 1)
	if _, err := conformance.Parse("SCSI.WriteSame10", writeSame10, []byte(out)); err == nil {
		t.Fatal("Parse accepted output whose CUnit summary disagrees with the verdicts")
	}
}

func TestParseList(t *testing.T) {
	l := conformance.ParseList([]byte("ALL\nALL.Read10\nALL.Read10.Simple\nSCSI\nSCSI.Read10\nSCSI.Read10.Simple\nSCSI.Read10.BeyondEol\n"))
	if got := strings.Join(l["SCSI.Read10"], ","); got != "SCSI.Read10.Simple,SCSI.Read10.BeyondEol" {
		t.Errorf("SCSI.Read10: %s", got)
	}
}

// The runner refuses a pattern: -t always names one FAMILY.SUITE.
func TestRunNeedsOneSuite(t *testing.T) {
	r := conformance.Runner{}
	for _, s := range []string{"SCSI.*", "SCSI", "SCSI.Read10.Simple", "SCSI.Read10,SCSI.Read16"} {
		run := r.Run(t.Context(), s, []string{"x"}, []string{"iscsi://127.0.0.1/iqn.x/1"})
		if run.Problem == "" || run.Tests[0].Status != conformance.NotRun {
			t.Errorf("Run(%q): problem %q, tests %v", s, run.Problem, run.Tests)
		}
	}
}
