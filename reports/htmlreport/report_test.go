package htmlreport

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"image"
	"image/png"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	xhtml "golang.org/x/net/html"

	"github.com/certkit/certkit/reports/bundle"
)

const (
	faultPath  = "vmhba64:C0:T0:L0"
	otherPath  = "vmhba64:C1:T0:L0"
	failoverID = "failover.path.noop-timeout"
	// hostile is bundle-supplied text a report must show as text, never run.
	hostile = `<script>alert("x")</script><img src=x onerror=alert(1)>`
)

var t0 = time.Date(2026, 11, 23, 16, 33, 32, 0, time.UTC)

func at(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }

// failoverEvidence is evidence.json as the failover family writes it: the
// faulted path silent at +0 s, dead from +12 s, the fault reverted at
// +12.5 s, the path active again from +14 s; reads every 250 ms, one
// stalled through the failover.
func failoverEvidence(failRead bool) map[string]any {
	var samples []map[string]any
	for s := -0.5; s <= 16; s += 0.25 {
		st := "active"
		if s >= 12 && s < 14 {
			st = "dead"
		}
		samples = append(samples, map[string]any{"At": at(s), "Sent": at(s - 0.01), "States": map[string]string{faultPath: st, otherPath: "active"}, "Err": ""})
	}
	samples[5] = map[string]any{"At": at(0.75), "Sent": at(0.74), "States": nil, "Err": "ssh: timeout"}
	var io []map[string]any
	for s := -0.5; s <= 16; s += 0.25 {
		switch {
		case s > 0 && s < 12.1:
			continue
		case s == 0:
			io = append(io, map[string]any{"start": at(0), "end": at(12.1), "ok": true})
		default:
			io = append(io, map[string]any{"start": at(s), "end": at(s + 0.002), "ok": true})
		}
	}
	if failRead {
		io = append(io, map[string]any{"start": at(15), "end": at(15.5), "ok": false, "error": "dd: Input/output error"})
	}
	return map[string]any{
		"limits":      map[string]int64{"noop_out_interval": int64(time.Second), "noop_out_timeout": int64(10 * time.Second)},
		"host":        "esx-01",
		"device":      "naa.36a762ab8d09dc98",
		"fault_path":  faultPath,
		"other_paths": []string{otherPath},
		"injected_at": at(0), "reverted_at": at(12.5),
		"samples": samples, "io": io,
		"reads_before":        map[string]int{faultPath: 10, otherPath: 0},
		"reads_after":         map[string]int{faultPath: 11, otherPath: 40},
		"working_paths_after": []string{otherPath},
	}
}

func timeline() []map[string]any {
	return []map[string]any{
		{"at": at(0.001), "action": "inject", "array": "array-a", "portal": "A0", "kind": "blackhole", "fault_id": "array-a-f1", "array_at": at(0)},
		{"at": at(12.501), "action": "revert", "array": "array-a", "portal": "A0", "kind": "blackhole", "fault_id": "array-a-f1", "array_at": at(12.5)},
	}
}

func ptr(v float64) *float64 { return &v }

// sampleBundle writes a bundle with a passed failover test (full
// evidence), a failed one whose texts are hostile, and a skipped one.
func sampleBundle(t testing.TB, evidence any) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "run.tgz")
	w, err := bundle.Create(p, bundle.Meta{ToolVersion: "0.1.0-test", CatalogVersion: "2026.1",
		Required: []string{failoverID, "alua/transition"},
		Lab:      map[string]any{"name": "embedded", "hosts": 1},
		Profile:  []byte("name: embedded\nhosts:\n  - name: esx-01\n    ssh: {address: 127.0.0.1:22, password: hunter22}\n"),
		Hosts:    map[string]bundle.Component{"esx-01": {Product: "VMware ESXi", Version: "8.0.3", Build: "24022510"}},
		Arrays:   map[string]bundle.Component{"array-a": {Product: "certkit software array", Version: "0.1.0"}},
		Now:      func() time.Time { return t0.Add(-time.Second) },
	})
	if err != nil {
		t.Fatal(err)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(w.WriteJSON("tests/"+failoverID+"/"+bundle.EvidenceFile, evidence))
	must(w.WriteJSON("tests/"+failoverID+"/"+bundle.TimelineFile, timeline()))
	must(w.LogCommand("esx-01", bundle.Command{Start: at(1), Command: "esxcli storage core path list", Output: []byte("vmhba64:C0:T0:L0\n   State: dead\n")}))
	must(w.AppendFile("hosts/esx-01/var/log/vmkernel.log", []byte(at(12).Format(time.RFC3339Nano)+" cpu1:2)NMP: nmp_DeviceUpdatePathStates: path vmhba64:C0:T0:L0 dead\n")))
	must(w.WriteFile("tests/odd/"+"a b#%.txt", []byte("a file whose name needs escaping in a link\n")))
	must(w.AddResult(bundle.TestResult{ID: failoverID, Name: "a silent path is declared dead by NOP-Out timeout", Status: bundle.StatusPassed,
		Start: at(-0.6), End: at(16.2),
		Measurements: map[string]bundle.Measurement{"detection_seconds": {Value: 12, Unit: "s"}, "io_resume_seconds": {Value: 0.1, Unit: "s"}, "path_restore_seconds": {Value: 1.5, Unit: "s"}},
		Thresholds:   map[string]bundle.Threshold{"detection_seconds": {Min: ptr(10), Max: ptr(15), Unit: "s"}, "io_resume_seconds": {Max: ptr(3), Unit: "s"}, "path_restore_seconds": {Max: ptr(1), Unit: "s"}},
	}))
	must(w.AddResult(bundle.TestResult{ID: "odd", Name: hostile, Status: bundle.StatusFailed, Reason: "reads failed: " + hostile, Start: at(17), End: at(18)}))
	must(w.AddResult(bundle.TestResult{ID: "alua/transition", Status: bundle.StatusSkipped, Reason: bundle.SkipReasonUnsupported + "array has no ALUA"}))
	must(w.Close())
	return p
}

// writeReport reads p and writes its report into a new directory.
func writeReport(t *testing.T, p string, st Status) (string, *xhtml.Node) {
	t.Helper()
	b, err := bundle.Read(p)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "report")
	index, err := Write(dir, b, st)
	if err != nil {
		t.Fatal(err)
	}
	if index != filepath.Join(dir, IndexName) {
		t.Errorf("index = %s", index)
	}
	data, err := os.ReadFile(index)
	if err != nil {
		t.Fatal(err)
	}
	doc, err := xhtml.Parse(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("index.html does not parse: %v", err)
	}
	return dir, doc
}

// find returns the elements under n matching pred, in document order.
func find(n *xhtml.Node, pred func(*xhtml.Node) bool) []*xhtml.Node {
	var out []*xhtml.Node
	var walk func(*xhtml.Node)
	walk = func(n *xhtml.Node) {
		if n.Type == xhtml.ElementNode && pred(n) {
			out = append(out, n)
		}
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			walk(c)
		}
	}
	walk(n)
	return out
}

func attr(n *xhtml.Node, key string) string {
	for _, a := range n.Attr {
		if a.Key == key {
			return a.Val
		}
	}
	return ""
}

func tag(name string) func(*xhtml.Node) bool {
	return func(n *xhtml.Node) bool { return n.Data == name }
}

// hasClass matches name elements of class, legend swatches excepted.
func hasClass(name, class string) func(*xhtml.Node) bool {
	return func(n *xhtml.Node) bool {
		c := " " + attr(n, "class") + " "
		return n.Data == name && strings.Contains(c, " "+class+" ") && !strings.Contains(c, " legend ")
	}
}

func byID(doc *xhtml.Node, id string) *xhtml.Node {
	ns := find(doc, func(n *xhtml.Node) bool { return attr(n, "id") == id })
	if len(ns) != 1 {
		return nil
	}
	return ns[0]
}

func text(n *xhtml.Node) string {
	var b strings.Builder
	var walk func(*xhtml.Node)
	walk = func(n *xhtml.Node) {
		if n.Type == xhtml.TextNode {
			b.WriteString(n.Data)
		}
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			walk(c)
		}
	}
	walk(n)
	return b.String()
}

func TestReportShowsTheRunTestByTest(t *testing.T) {
	dir, doc := writeReport(t, sampleBundle(t, failoverEvidence(false)), Status{Signer: "sha256:abc"})

	if title := find(doc, tag("title")); text(title[0]) != "certkit report: run.tgz" {
		t.Errorf("title = %q", text(title[0]))
	}
	if v := find(doc, hasClass("span", "verdict")); len(v) != 1 || text(v[0]) != "FAILED" {
		t.Errorf("verdict = %v", v)
	}
	rows := find(byID(doc, "tests"), tag("tr"))
	if len(rows) != 4 {
		t.Fatalf("summary table has %d rows, want header + 3 tests", len(rows))
	}
	for i, want := range []string{"PASSED " + failoverID, "FAILED odd", "SKIPPED alua/transition"} {
		cells := find(rows[i+1], tag("td"))
		if got := text(cells[0]) + " " + text(cells[1]); got != want {
			t.Errorf("summary row %d = %q, want %q", i+1, got, want)
		}
	}

	sec := byID(doc, "t-"+failoverID)
	if sec == nil {
		t.Fatal("no section for the failover test")
	}
	// Expected vs measured, judged per measurement.
	var measures []string
	for _, tr := range find(find(sec, hasClass("table", "measures"))[0], tag("tr"))[1:] {
		var cells []string
		for _, td := range find(tr, tag("td")) {
			cells = append(cells, text(td))
		}
		measures = append(measures, strings.Join(cells, " | "))
	}
	wantMeasures := []string{"detection_seconds | 12 s | 10 .. 15 s | within", "io_resume_seconds | 0.1 s | ≤ 3 s | within", "path_restore_seconds | 1.5 s | ≤ 1 s | outside"}
	if strings.Join(measures, "\n") != strings.Join(wantMeasures, "\n") {
		t.Errorf("measures:\n%s\nwant:\n%s", strings.Join(measures, "\n"), strings.Join(wantMeasures, "\n"))
	}

	// The timeline: one lane per path and one for I/O; the faulted path is
	// dead after the fault; markers at inject and revert; the expected window.
	svgs := find(sec, hasClass("svg", "timeline"))
	if len(svgs) != 1 {
		t.Fatalf("%d timeline plots", len(svgs))
	}
	svg := svgs[0]
	var labels []string
	for _, n := range find(svg, hasClass("text", "rowlabel")) {
		labels = append(labels, text(n))
	}
	if want := faultPath + " (faulted)|" + otherPath + "|I/O (reads)|read latency"; strings.Join(labels, "|") != want {
		t.Errorf("lanes = %q, want %q", strings.Join(labels, "|"), want)
	}
	dead := find(svg, hasClass("rect", "st-dead"))
	if len(dead) != 1 || !strings.Contains(text(dead[0]), faultPath+": dead") {
		t.Errorf("dead segments: %d", len(dead))
	}
	if n := len(find(svg, hasClass("rect", "st-pollerr"))); n != 2 {
		t.Errorf("%d poll-failure segments, want one per path lane", n)
	}
	if inj, rev := find(svg, hasClass("line", "mk-inject")), find(svg, hasClass("line", "mk-revert")); len(inj) != 1 || len(rev) != 1 {
		t.Errorf("fault markers: %d inject, %d revert", len(inj), len(rev))
	}
	if b := find(svg, hasClass("rect", "band")); len(b) != 1 || !strings.Contains(text(b[0]), "dead between 10 s and 15 s after the fault") {
		t.Errorf("expected-detection band: %v", b)
	}
	stalled := false
	for _, io := range find(svg, hasClass("rect", "io-ok")) {
		stalled = stalled || strings.HasPrefix(text(io), "read ok, 12.10 s at 16:33:32.000")
	}
	if !stalled {
		t.Errorf("I/O lane does not show the read stalled through the failover")
	}
	reads := len(failoverEvidence(false)["io"].([]map[string]any))
	if lat := find(svg, hasClass("path", "lat")); len(lat) != 1 || strings.Count(attr(lat[0], "d"), "M") != reads {
		t.Error("the latency plot does not show one stem per read")
	}
	// Faults and I/O per path.
	faults := find(find(sec, hasClass("table", "faults"))[0], tag("tr"))
	if len(faults) != 3 || !strings.Contains(text(faults[1]), "inject") || !strings.Contains(text(faults[2]), "+12.5s") {
		t.Errorf("fault table rows: %d", len(faults))
	}
	pathio := find(find(sec, hasClass("table", "pathio"))[0], tag("tr"))
	var cells []string
	for _, td := range find(pathio[2], tag("td"))[:4] {
		cells = append(cells, text(td))
	}
	if len(pathio) != 3 || strings.Join(cells, "|") != otherPath+" (working)|0|40|+40" {
		t.Errorf("I/O per path: %q", cells)
	}

	// Every link to a raw capture resolves to the bundle's file.
	m := mustRead(t, sampleManifest(t, dir))
	links := 0
	for _, a := range find(doc, tag("a")) {
		href := attr(a, "href")
		if strings.HasPrefix(href, "#") {
			if byID(doc, href[1:]) == nil {
				t.Errorf("link %s goes nowhere", href)
			}
			continue
		}
		if !strings.HasPrefix(href, RawDir+"/") {
			t.Errorf("link %q leaves the report", href)
			continue
		}
		name, err := url.PathUnescape(strings.TrimPrefix(href, RawDir+"/"))
		if err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(filepath.Join(dir, RawDir, filepath.FromSlash(name)))
		if err != nil {
			t.Errorf("link %s: %v", href, err)
			continue
		}
		if fe, ok := m.File(name); ok {
			sum := sha256.Sum256(data)
			if hex.EncodeToString(sum[:]) != fe.SHA256 {
				t.Errorf("raw/%s differs from the bundle", name)
			}
		}
		links++
	}
	if links < len(m.Files) {
		t.Errorf("%d raw links for %d files", links, len(m.Files))
	}
	if len(find(doc, func(n *xhtml.Node) bool { return n.Data == "a" && strings.Contains(attr(n, "href"), "a%20b%23%25.txt") })) == 0 {
		t.Errorf("the link to %s is not escaped", "tests/odd/a b#%.txt")
	}
}

// sampleManifest reads the manifest extracted next to the report.
func sampleManifest(t *testing.T, dir string) string {
	return filepath.Join(dir, RawDir, bundle.ManifestName)
}

func mustRead(t *testing.T, manifestPath string) bundle.Manifest {
	t.Helper()
	data, err := os.ReadFile(manifestPath)
	if err != nil {
		t.Fatal(err)
	}
	var m bundle.Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// A bundle is untrusted: its texts are shown, never run.
func TestReportKeepsBundleTextInert(t *testing.T) {
	_, doc := writeReport(t, sampleBundle(t, failoverEvidence(true)), Status{})
	if s := find(doc, tag("script")); len(s) != 0 {
		t.Fatalf("%d <script> elements in the report", len(s))
	}
	if imgs := find(doc, tag("img")); len(imgs) != 0 {
		t.Fatalf("%d <img> elements in the report", len(imgs))
	}
	for _, n := range find(doc, func(*xhtml.Node) bool { return true }) {
		for _, a := range n.Attr {
			if strings.HasPrefix(strings.ToLower(a.Key), "on") {
				t.Errorf("<%s %s=%q>", n.Data, a.Key, a.Val)
			}
		}
	}
	sec := byID(doc, "t-odd")
	if sec == nil || !strings.Contains(text(sec), "reads failed: "+hostile) {
		t.Errorf("the hostile reason is not shown as text")
	}
	csp := find(doc, func(n *xhtml.Node) bool {
		return n.Data == "meta" && attr(n, "http-equiv") == "Content-Security-Policy"
	})
	if len(csp) != 1 || !strings.Contains(attr(csp[0], "content"), "default-src 'none'") {
		t.Error("no Content-Security-Policy forbidding scripts")
	}
	// The failed read is drawn, in the I/O lane and the latency plot.
	svg := find(byID(doc, "t-"+failoverID), hasClass("svg", "timeline"))[0]
	if len(find(svg, hasClass("rect", "io-fail"))) != 1 || len(find(svg, hasClass("circle", "latfail"))) != 1 {
		t.Error("the failed read is not drawn")
	}
}

func TestReportSaysWhenTheBundleIsIncompleteOrFinalized(t *testing.T) {
	_, doc := writeReport(t, sampleBundle(t, failoverEvidence(false)), Status{Incomplete: []string{"required test x has no result (not run?)"}})
	if b := byID(doc, "incomplete"); b == nil || !strings.Contains(text(b), "required test x has no result") {
		t.Error("no incomplete banner")
	}
	if v := find(doc, hasClass("span", "verdict")); text(v[0]) != "FAILED" {
		t.Errorf("verdict %q", text(v[0]))
	}

	p := filepath.Join(t.TempDir(), "died.tgz")
	w, err := bundle.Create(p, bundle.Meta{ToolVersion: "v1", CatalogVersion: "c", Required: []string{"later"}})
	if err != nil {
		t.Fatal(err)
	}
	w.WriteJSON("tests/busy/"+bundle.EvidenceFile, failoverEvidence(false))
	if _, err := bundle.Finalize(p, bundle.FinalizeOptions{ToolVersion: "v1"}); err != nil {
		t.Fatal(err)
	}
	_, doc = writeReport(t, p, Status{})
	if b := byID(doc, "finalized"); b == nil || !strings.Contains(text(b), "Tests without a verdict (recorded as errors): busy, later") {
		t.Errorf("finalized banner: %q", text(b))
	}
	if len(find(byID(doc, "t-busy"), hasClass("svg", "timeline"))) != 1 {
		t.Error("the evidence of the test the run died in is not drawn")
	}
}

func TestReportNotesEvidenceItCannotDraw(t *testing.T) {
	_, doc := writeReport(t, sampleBundle(t, map[string]any{"samples": 5}), Status{})
	sec := byID(doc, "t-"+failoverID)
	notes := find(sec, hasClass("p", "note"))
	if len(notes) != 1 || !strings.Contains(text(notes[0]), "tests/"+failoverID+"/evidence.json: cannot be read as evidence: json: cannot unmarshal number") {
		t.Errorf("notes: %v", notes)
	}
	if len(find(sec, hasClass("svg", "timeline"))) != 0 {
		t.Error("a timeline drawn from unreadable evidence")
	}
	if len(find(sec, hasClass("table", "faults"))) != 1 {
		t.Error("the fault timeline is not shown when evidence.json is unreadable")
	}
}

func TestReportRefusesToOverwrite(t *testing.T) {
	b, err := bundle.Read(sampleBundle(t, failoverEvidence(false)))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if _, err := Write(dir, b, Status{}); err != nil {
		t.Fatal(err)
	}
	if _, err := Write(dir, b, Status{}); err == nil || !strings.Contains(err.Error(), "index.html already exists") {
		t.Errorf("second Write = %v", err)
	}
}

// The report as a reviewer sees it: headless Chromium renders it, and the
// screenshot is not blank: it shows the state colours of the timeline.
func TestReportRendersInHeadlessChromium(t *testing.T) {
	chromium := findChromium()
	if chromium == "" {
		t.Skip("chromium not installed: apt-get install -y chromium to render the report in a browser")
	}
	dir, _ := writeReport(t, sampleBundle(t, failoverEvidence(true)), Status{Signer: "sha256:0123", Trusted: true})
	shot := filepath.Join(t.TempDir(), "report.png")
	if err := screenshot(chromium, filepath.Join(dir, IndexName), shot, screenshotHeight(), 60*time.Second); err != nil {
		t.Fatal(err)
	}
	if keep := os.Getenv("CERTKIT_REPORT_SCREENSHOT"); keep != "" {
		data, _ := os.ReadFile(shot)
		os.WriteFile(keep, data, 0o644)
	}
	f, err := os.Open(shot)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("screenshot is not a PNG: %v", err)
	}
	c := countColours(img)
	total := img.Bounds().Dx() * img.Bounds().Dy()
	if c.nonWhite < total/20 || c.green < 200 || c.red < 200 || c.blue < 200 {
		t.Errorf("screenshot looks blank or lacks the timeline: %d of %d pixels non-white, %d green, %d red, %d blue", c.nonWhite, total, c.green, c.red, c.blue)
	}
	t.Logf("screenshot %dx%d: %.0f%% non-white, %d green, %d red, %d blue pixels", img.Bounds().Dx(), img.Bounds().Dy(), 100*float64(c.nonWhite)/float64(total), c.green, c.red, c.blue)
}

type colours struct{ nonWhite, green, red, blue int }

func countColours(img image.Image) colours {
	var c colours
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl, _ := img.At(x, y).RGBA()
			r, g, bl = r>>8, g>>8, bl>>8
			if r < 245 || g < 245 || bl < 245 {
				c.nonWhite++
			}
			switch {
			case g > 130 && r < 110 && bl < 110:
				c.green++
			case r > 200 && g < 90 && bl < 90:
				c.red++
			case bl > 200 && r < 80 && g > 100 && g < 170:
				c.blue++
			}
		}
	}
	return c
}
