// Package htmlreport renders a submission bundle as a static HTML report a
// reviewer opens in a browser: the verdict summary; per test, what was
// expected against what was measured, a timeline of path states, faults and
// I/O drawn in inline SVG, the faults and per-path I/O; and links to every
// raw capture, extracted next to the report.
//
// The report is one self-contained index.html (inline CSS, inline SVG, no
// script, no external asset) plus raw/ holding the bundle's files. A
// Content-Security-Policy forbids scripts and remote loads, and every
// bundle-supplied string goes through html/template's escaping: a bundle
// is untrusted input.
package htmlreport

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"math"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/certkit/certkit/reports/bundle"
)

// Status is what verification established, shown at the top of the report.
type Status struct {
	// Incomplete lists why the bundle is not a whole run (bundle.Check's
	// IncompleteError reasons); empty when it is.
	Incomplete []string
	// Signer is the key ID of a valid signature; Trusted says it was
	// checked against the reviewer's key.
	Signer  string
	Trusted bool
	// CatalogKnown says the required list was checked against this
	// certkit's catalog.
	CatalogKnown bool
}

// RawDir is the directory, next to index.html, that holds the bundle's files.
const RawDir = "raw"

// IndexName is the report's page.
const IndexName = "index.html"

// Write renders the report of b into dir, which must not already hold a
// report: it extracts every file of b into dir/raw/ (checked against the
// manifest again) and writes dir/index.html. It returns the index path.
func Write(dir string, b *bundle.Bundle, st Status) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("report: %w", err)
	}
	index := filepath.Join(dir, IndexName)
	for _, p := range []string{index, filepath.Join(dir, RawDir)} {
		if _, err := os.Lstat(p); err == nil {
			return "", fmt.Errorf("report: %s already exists; write the report to a new directory or remove the old report", p)
		}
	}
	if err := b.Extract(filepath.Join(dir, RawDir)); err != nil {
		return "", fmt.Errorf("report: %w", err)
	}
	var page bytes.Buffer
	if err := Render(&page, b, os.DirFS(filepath.Join(dir, RawDir)), st); err != nil {
		return "", err
	}
	tmp := index + ".tmp"
	if err := os.WriteFile(tmp, page.Bytes(), 0o644); err != nil {
		return "", fmt.Errorf("report: %w", err)
	}
	if err := os.Rename(tmp, index); err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("report: %w", err)
	}
	return index, nil
}

// Render writes the report page of b. raw holds the bundle's files by
// their bundle paths (what Write extracts to raw/); links point to raw/.
// Evidence that cannot be read is noted in the page, not fatal.
func Render(w io.Writer, b *bundle.Bundle, raw fs.FS, st Status) error {
	p := buildPage(b, raw, st)
	if err := pageTemplate.Execute(w, p); err != nil {
		return fmt.Errorf("report of %s: %w", b.Path(), err)
	}
	return nil
}

type page struct {
	Title      string
	BundleName string
	Generated  string
	Manifest   bundle.Manifest
	Run        string // "created .. finished (duration)"
	Verdict    string // PASSED / FAILED / NO TESTS
	VerdictCSS string
	Complete   string // how the bundle was sealed, in words
	Status     Status
	Counts     map[string]int
	Total      int
	Hosts      []component
	Arrays     []component
	Lab        []kv
	Tests      []testView
	Files      []fileView
	HostFiles  []fileView
	Profile    string
	ProfileRef fileView
}

type component struct {
	Name, Product, Version, Build, Extra string
}

type kv struct{ Key, Value string }

type fileView struct {
	Path, Href, Size, SHA string
}

type testView struct {
	ID, Anchor, Name, Status, Reason string
	Start, Duration                  string
	Measures                         []measureView
	Plot                             *timelinePlot
	Faults                           []faultView
	PathIO                           []pathIO
	Facts                            []kv
	Limits                           []kv
	Notes                            []string
	Files                            []fileView
	IOSummary                        string
}

type measureView struct {
	Name, Value, Expected, Verdict, VerdictCSS string
}

type faultView struct {
	At, Offset, Action, Target, Kind, ID, ArrayAt, Error string
}

type pathIO struct {
	Path, Before, After, Delta string
	Working, Faulted           bool
	BarW                       float64
}

func buildPage(b *bundle.Bundle, raw fs.FS, st Status) page {
	m := b.Manifest()
	results := b.Results()
	p := page{
		BundleName: filepath.Base(b.Path()),
		Generated:  time.Now().UTC().Format(time.RFC3339),
		Manifest:   m,
		Status:     st,
		Counts:     map[string]int{},
		Total:      len(results),
	}
	p.Title = "certkit report: " + p.BundleName
	p.Run = fmt.Sprintf("%s .. %s (%s)", m.CreatedAt.UTC().Format(time.RFC3339), m.FinishedAt.UTC().Format(time.RFC3339), m.FinishedAt.Sub(m.CreatedAt).Round(time.Second))
	for _, r := range results {
		p.Counts[r.Status]++
	}
	switch {
	case len(results) == 0:
		p.Verdict, p.VerdictCSS = "NO TESTS", "v-none"
	case p.Counts[bundle.StatusFailed]+p.Counts[bundle.StatusError] > 0:
		p.Verdict, p.VerdictCSS = "FAILED", "v-failed"
	case len(st.Incomplete) > 0:
		p.Verdict, p.VerdictCSS = "INCOMPLETE", "v-failed"
	default:
		p.Verdict, p.VerdictCSS = "PASSED", "v-passed"
	}
	switch m.Completeness {
	case bundle.CompletenessComplete:
		p.Complete = "sealed by the run"
	case bundle.CompletenessFinalized:
		p.Complete = "finalized after the run died"
		if f := m.Finalization; f != nil && !f.LastWriteAt.IsZero() {
			p.Complete += " (last evidence " + f.LastWriteAt.UTC().Format(time.RFC3339) + ", finalized by certkit " + f.ToolVersion + ")"
		}
	default:
		p.Complete = m.Completeness
	}
	for _, name := range sortedKeys(m.Hosts) {
		p.Hosts = append(p.Hosts, componentView(name, m.Hosts[name]))
	}
	for _, name := range sortedKeys(m.Arrays) {
		p.Arrays = append(p.Arrays, componentView(name, m.Arrays[name]))
	}
	for _, k := range sortedKeys(m.Lab) {
		p.Lab = append(p.Lab, kv{k, compact(m.Lab[k])})
	}
	for _, f := range m.Files {
		fv := fileRef(f.Path, f.Size, f.SHA256)
		if strings.HasPrefix(f.Path, "hosts/") {
			p.HostFiles = append(p.HostFiles, fv)
		}
		p.Files = append(p.Files, fv)
	}
	p.Files = append([]fileView{fileRef(bundle.ManifestName, -1, "")}, p.Files...)
	if b.Signer() != "" {
		p.Files = slices.Insert(p.Files, 1, fileRef(bundle.SignatureName, -1, ""))
	}
	if f, ok := m.File(bundle.ProfileName); ok && f.Size <= 256<<10 {
		if data, err := fs.ReadFile(raw, bundle.ProfileName); err == nil {
			p.Profile = string(data)
			p.ProfileRef = fileRef(f.Path, f.Size, f.SHA256)
		}
	}
	anchors := map[string]bool{}
	for i, r := range results {
		p.Tests = append(p.Tests, buildTest(r, i, m, raw, anchors))
	}
	return p
}

func componentView(name string, c bundle.Component) component {
	var extra []string
	for _, k := range sortedKeys(c.Extra) {
		extra = append(extra, k+"="+c.Extra[k])
	}
	return component{Name: name, Product: c.Product, Version: c.Version, Build: c.Build, Extra: strings.Join(extra, ", ")}
}

func buildTest(r bundle.TestResult, i int, m bundle.Manifest, raw fs.FS, anchors map[string]bool) testView {
	t := testView{ID: r.ID, Name: r.Name, Status: r.Status, Reason: r.Reason, Anchor: anchor(r.ID, i, anchors)}
	if !r.Start.IsZero() {
		t.Start = r.Start.UTC().Format(time.RFC3339)
	}
	t.Duration = seconds(r.Duration())
	for _, name := range sortedKeys(r.Measurements) {
		v := r.Measurements[name]
		mv := measureView{Name: name, Value: formatValue(v.Value, v.Unit), Expected: "(not bounded)"}
		if th, ok := r.Thresholds[name]; ok {
			mv.Expected = formatThreshold(th)
			if within(v.Value, th) {
				mv.Verdict, mv.VerdictCSS = "within", "ok"
			} else {
				mv.Verdict, mv.VerdictCSS = "outside", "bad"
			}
		}
		t.Measures = append(t.Measures, mv)
	}
	for _, name := range sortedKeys(r.Thresholds) {
		if _, measured := r.Measurements[name]; !measured {
			t.Measures = append(t.Measures, measureView{Name: name, Value: "(not measured)", Expected: formatThreshold(r.Thresholds[name]), Verdict: "missing", VerdictCSS: "bad"})
		}
	}
	dir, err := bundle.TestDir(r.ID)
	if err != nil {
		return t
	}
	for _, f := range m.Files {
		if strings.HasPrefix(f.Path, dir+"/") {
			t.Files = append(t.Files, fileRef(f.Path, f.Size, f.SHA256))
		}
	}

	var faults []faultEvent
	if ok, err := readJSON(raw, dir+"/"+bundle.TimelineFile, &faults); err != nil {
		t.Notes = append(t.Notes, err.Error())
		faults = nil
	} else if !ok {
		faults = nil
	}
	var ev evidence
	hasEv, err := readJSON(raw, dir+"/"+bundle.EvidenceFile, &ev)
	if err != nil {
		t.Notes = append(t.Notes, err.Error())
		hasEv = false
	}
	slices.SortStableFunc(faults, func(a, b faultEvent) int { return a.When().Compare(b.When()) })
	origin := ev.InjectedAt
	if origin.IsZero() && len(faults) > 0 {
		origin = faults[0].When()
	}
	for _, f := range faults {
		fv := faultView{At: f.At.UTC().Format("15:04:05.000"), Action: f.Action, Target: strings.Trim(f.Array+" / "+f.Portal, " /"),
			Kind: f.Kind, ID: f.FaultID, Error: f.Error}
		if !f.ArrayAt.IsZero() {
			fv.ArrayAt = f.ArrayAt.UTC().Format("15:04:05.000")
		}
		if !origin.IsZero() {
			fv.Offset = secondsLabel(f.When().Sub(origin).Seconds())
		}
		t.Faults = append(t.Faults, fv)
	}
	if !hasEv {
		if len(t.Files) > 1 && len(t.Notes) == 0 {
			t.Notes = append(t.Notes, "no "+bundle.EvidenceFile+" for this test: no timeline to draw; see its raw files")
		}
		return t
	}
	for _, f := range []kv{{"host", ev.Host}, {"device", ev.Device}, {"faulted path", ev.FaultPath},
		{"surviving paths", strings.Join(ev.OtherPaths, ", ")}, {"working paths after the failover", strings.Join(ev.WorkingPathsAfter, ", ")}} {
		if f.Value != "" {
			t.Facts = append(t.Facts, f)
		}
	}
	for _, k := range sortedKeys(ev.Limits) {
		t.Limits = append(t.Limits, kv{k, limitValue(ev.Limits[k])})
	}
	t.Plot = buildTimeline(&ev, faults, detectionWindow(r))
	t.PathIO = pathReads(&ev)
	if n := len(ev.IO); n > 0 {
		failed := 0
		var worst time.Duration
		for _, io := range ev.IO {
			if !io.OK {
				failed++
			}
			if io.End.After(io.Start) {
				worst = max(worst, io.End.Sub(io.Start))
			}
		}
		t.IOSummary = fmt.Sprintf("%d reads, %d failed, longest %s", n, failed, seconds(worst))
	}
	return t
}

// detectionWindow turns a detection_seconds threshold into the window the
// faulted path is expected to turn dead in.
func detectionWindow(r bundle.TestResult) *window {
	th, ok := r.Thresholds["detection_seconds"]
	if !ok || (th.Min == nil && th.Max == nil) {
		return nil
	}
	w := &window{label: formatThreshold(th)}
	if th.Min != nil {
		w.lo = time.Duration(*th.Min * float64(time.Second))
	}
	if th.Max != nil {
		w.hi = time.Duration(*th.Max * float64(time.Second))
	}
	if th.Min != nil && th.Max != nil {
		w.label = "between " + formatValue(*th.Min, th.Unit) + " and " + formatValue(*th.Max, th.Unit)
	}
	return w
}

// pathReads lists each path's read counter before and after the failover.
func pathReads(ev *evidence) []pathIO {
	names := map[string]bool{}
	for k := range ev.ReadsBefore {
		names[k] = true
	}
	for k := range ev.ReadsAfter {
		names[k] = true
	}
	var maxDelta uint64
	var out []pathIO
	for _, name := range sortedKeys(names) {
		b, a := ev.ReadsBefore[name], ev.ReadsAfter[name]
		var d uint64
		if a > b {
			d = a - b
		}
		maxDelta = max(maxDelta, d)
		out = append(out, pathIO{Path: name, Before: strconv.FormatUint(b, 10), After: strconv.FormatUint(a, 10),
			Delta: "+" + strconv.FormatUint(d, 10), Working: slices.Contains(ev.WorkingPathsAfter, name), Faulted: name == ev.FaultPath,
			BarW: float64(d)})
	}
	for i := range out {
		if maxDelta > 0 {
			out[i].BarW = math.Max(out[i].BarW/float64(maxDelta)*160, 0)
		}
	}
	return out
}

func limitValue(raw json.RawMessage) string {
	var n int64
	if json.Unmarshal(raw, &n) == nil {
		return time.Duration(n).String() // the harness records limits as durations (nanoseconds)
	}
	var v any
	if json.Unmarshal(raw, &v) == nil {
		return compact(v)
	}
	return string(raw)
}

// anchor makes a unique, safe fragment id for a test.
func anchor(id string, i int, used map[string]bool) string {
	var b strings.Builder
	b.WriteString("t-")
	for _, r := range id {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.' || r == '_' {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	a := b.String()
	if used[a] {
		a += "-" + strconv.Itoa(i)
	}
	used[a] = true
	return a
}

// fileRef links a bundle file under raw/, each path element escaped.
func fileRef(name string, size int64, sum string) fileView {
	parts := strings.Split(name, "/")
	for i, p := range parts {
		parts[i] = url.PathEscape(p)
	}
	fv := fileView{Path: name, Href: RawDir + "/" + strings.Join(parts, "/")}
	if size >= 0 {
		fv.Size = byteSize(size)
	}
	if len(sum) >= 12 {
		fv.SHA = sum[:12]
	}
	return fv
}

func byteSize(n int64) string {
	switch {
	case n < 1<<10:
		return strconv.FormatInt(n, 10) + " B"
	case n < 1<<20:
		return strconv.FormatFloat(float64(n)/(1<<10), 'f', 1, 64) + " KiB"
	default:
		return strconv.FormatFloat(float64(n)/(1<<20), 'f', 1, 64) + " MiB"
	}
}

func within(v float64, t bundle.Threshold) bool {
	return (t.Min == nil || v >= *t.Min) && (t.Max == nil || v <= *t.Max)
}

func formatValue(v float64, unit string) string {
	return strings.TrimSpace(strconv.FormatFloat(v, 'g', 4, 64) + " " + unit)
}

func formatThreshold(t bundle.Threshold) string {
	f := func(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }
	var s string
	switch {
	case t.Min != nil && t.Max != nil:
		s = f(*t.Min) + " .. " + f(*t.Max)
	case t.Min != nil:
		s = "≥ " + f(*t.Min)
	case t.Max != nil:
		s = "≤ " + f(*t.Max)
	default:
		return "any"
	}
	return strings.TrimSpace(s + " " + t.Unit)
}

func compact(v any) string {
	if s, ok := v.(string); ok {
		return s
	}
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(data)
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
