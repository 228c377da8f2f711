package bundle

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"path"
	"slices"
	"strings"
	"time"
)

// SkipReasonUnsupported starts the only reason a required test may be
// skipped for: the lab lacks what the test needs, e.g.
// "unsupported by lab: array has no ALUA". Any other skip of a required
// test makes the bundle incomplete.
const SkipReasonUnsupported = "unsupported by lab: "

// AllowedSkip reports whether reason lets a required test be skipped.
func AllowedSkip(reason string) bool {
	rest, ok := strings.CutPrefix(reason, SkipReasonUnsupported)
	return ok && strings.TrimSpace(rest) != ""
}

// NoVerdictReason starts the reason of the error results Finalize records
// for tests the run never judged.
const NoVerdictReason = "no verdict: "

// VerifyOptions are the reviewer's side of Check.
type VerifyOptions struct {
	// PublicKey, when set, requires manifest.sig to be a valid signature
	// by this key.
	PublicKey ed25519.PublicKey
	// Catalog, when set, returns the test IDs the given catalog version
	// requires, or known=false for a version this certkit does not know.
	// A known version's IDs must all be in the manifest's required list.
	Catalog func(version string) (ids []string, known bool)
}

// Checked is what Check established about a bundle.
type Checked struct {
	Path     string
	Manifest *Manifest // nil when the manifest could not be read
	// Signer is the key ID of a valid manifest.sig ("" when unsigned);
	// Trusted says it was checked against VerifyOptions.PublicKey.
	Signer  string
	Trusted bool
	// Counts of results by status.
	Passed, Failed, Skipped, Errors int
	// Staging is set when what was checked is the staging directory of a
	// run that did not finish.
	Staging *Staging
	// CatalogKnown says the manifest's required list was checked against
	// VerifyOptions.Catalog.
	CatalogKnown bool
}

// IncompleteError says a bundle is intact as far as it goes but does not
// record a whole run: the run did not finish (only a staging directory
// exists), or required tests have no result or were skipped without an
// allowed reason. `certkit bundle verify` exits 3 on it.
type IncompleteError struct {
	Bundle  string
	Reasons []string
}

func (e *IncompleteError) Error() string {
	var b strings.Builder
	for i, r := range e.Reasons {
		if i > 0 {
			b.WriteByte('\n')
		}
		fmt.Fprintf(&b, "bundle %s: incomplete: %s", e.Bundle, r)
	}
	return b.String()
}

// Check is what `certkit bundle verify` runs. It returns:
//   - nil error: the bundle is intact (Verify), signed by opts.PublicKey if
//     one is given, and complete: every required test has a result and none
//     was skipped without an allowed reason (see SkipReasonUnsupported). A
//     bundle sealed by Finalize after its run died is complete in that sense
//     (its unjudged tests are recorded as errors) and says so in
//     Manifest.Completeness.
//   - *VerifyError: corrupt or tampered (checksums, schema, signature,
//     malformed or inconsistent results).
//   - *IncompleteError: intact but not a whole run. This is also what a
//     path whose run is still staged gives: path "X.tgz" when only
//     "X.tgz.partial/" exists, or the staging directory itself.
//
// Checked is non-nil whenever anything could be read.
func Check(p string, opts VerifyOptions) (*Checked, error) {
	return check(p, opts, defaultLimits)
}

func check(p string, opts VerifyOptions, lim limits) (*Checked, error) {
	if st, ok, err := stagingFor(p); ok {
		if err != nil {
			return &Checked{Path: p}, &VerifyError{Bundle: p, Problems: []Problem{{Message: err.Error()}}}
		}
		return &Checked{Path: p, Manifest: &st.Manifest, Staging: st}, st.incomplete()
	}
	vd, err := verifyArchive(p, lim, opts.PublicKey)
	if vd == nil {
		return nil, err
	}
	c := &Checked{Path: p, Manifest: vd.manifest, Signer: vd.signer, Trusted: opts.PublicKey != nil && vd.signer != ""}
	for _, r := range vd.results {
		switch r.Status {
		case StatusPassed:
			c.Passed++
		case StatusFailed:
			c.Failed++
		case StatusSkipped:
			c.Skipped++
		case StatusError:
			c.Errors++
		}
	}
	if err != nil {
		return c, err
	}
	var reasons []string
	if opts.Catalog != nil && vd.manifest.CatalogVersion != "" {
		if ids, known := opts.Catalog(vd.manifest.CatalogVersion); known {
			c.CatalogKnown = true
			for _, id := range ids {
				if !slices.Contains(vd.manifest.Required, id) {
					reasons = append(reasons, fmt.Sprintf("catalog %s requires test %s, which the manifest's required list omits", vd.manifest.CatalogVersion, id))
				}
			}
		}
	}
	reasons = append(reasons, missingRequired(vd.manifest.Required, vd.results)...)
	if len(reasons) > 0 {
		return c, &IncompleteError{Bundle: p, Reasons: reasons}
	}
	return c, nil
}

// Incomplete lists why b does not record a whole run (see Check); empty
// when it does.
func (b *Bundle) Incomplete() []string {
	return missingRequired(b.manifest.Required, b.results)
}

// missingRequired lists required tests without an acceptable result.
func missingRequired(required []string, results []TestResult) []string {
	byID := make(map[string]TestResult, len(results))
	for _, r := range results {
		byID[r.ID] = r
	}
	var out []string
	for _, id := range required {
		r, ok := byID[id]
		switch {
		case !ok:
			out = append(out, fmt.Sprintf("required test %s has no result (not run?)", quoteName(id)))
		case r.Status == StatusSkipped && !AllowedSkip(r.Reason):
			out = append(out, fmt.Sprintf("required test %s was skipped for %q; a required test may only be skipped with a reason starting %q",
				quoteName(id), shorten(printable(r.Reason), 120), SkipReasonUnsupported))
		}
	}
	return out
}

// isResultFile reports whether name is a tests/<id>/result.json.
func isResultFile(name string) bool {
	return strings.HasPrefix(name, "tests/") && path.Base(name) == ResultFile && path.Dir(name) != "tests"
}

// hostDir returns "hosts/<dir>" for a file under it.
func hostDir(name string) (string, bool) {
	rest, ok := strings.CutPrefix(name, "hosts/")
	if !ok {
		return "", false
	}
	dir, _, ok := strings.Cut(rest, "/")
	return "hosts/" + dir, ok
}

// keepLimit is how much of an entry the scan keeps for content checks:
// -1 for entries it does not check.
func (v *verifier) keepLimit(name string) int64 {
	switch {
	case name == ManifestName:
		return v.lim.manifest
	case name == SignatureName:
		return v.lim.signature
	case name == ResultsJSONName, name == JUnitName, isResultFile(name),
		strings.HasSuffix(name, ".json"), strings.HasSuffix(name, ".xml"):
		return v.lim.file
	}
	return -1
}

// content checks one kept entry as it is read; what later checks need is
// kept in v.
func (v *verifier) content(name string, data []byte) {
	bad := func(format string, args ...any) {
		v.contentProblems[name] = append(v.contentProblems[name], Problem{File: name, Message: fmt.Sprintf(format, args...)})
	}
	switch {
	case name == SignatureName:
		v.sig = data
	case name == ResultsJSONName:
		v.resultsJSON = data
	case name == JUnitName:
		v.junitXML = data
	case isResultFile(name):
		id := strings.TrimSuffix(strings.TrimPrefix(name, "tests/"), "/"+ResultFile)
		var r TestResult
		if err := json.Unmarshal(data, &r); err != nil {
			bad("not a test result: %s", jsonProblem(data, err))
			return
		}
		if err := r.validate(); err != nil {
			bad("%v", err)
			return
		}
		if r.ID != id {
			bad("holds the result of test %s, not of %s", quoteName(r.ID), quoteName(id))
			return
		}
		v.perTest[id] = resultDigest(r)
	case strings.HasSuffix(name, ".json"):
		if !json.Valid(data) {
			var x any
			bad("%s", jsonProblem(data, json.Unmarshal(data, &x)))
		}
	case strings.HasSuffix(name, ".xml"):
		if err := wellFormedXML(data); err != nil {
			bad("%v", err)
		}
	}
}

// resultDigest is a digest of r's canonical JSON, to compare copies of a
// result without keeping them.
func resultDigest(r TestResult) [sha256.Size]byte {
	data, _ := json.Marshal(r) // validated: always encodable
	return sha256.Sum256(data)
}

// checkHeader checks the manifest's own fields (schema version 2).
func (v *verifier) checkHeader(m *Manifest) {
	bad := func(format string, args ...any) { v.add(ManifestName, format, args...) }
	if strings.TrimSpace(m.ToolVersion) == "" {
		bad("tool_version is empty; every bundle names the certkit that wrote it")
	}
	if m.CreatedAt.IsZero() {
		bad("created_at is missing")
	}
	switch m.Completeness {
	case CompletenessComplete, CompletenessFinalized:
	case CompletenessInProgress:
		bad("completeness is %q: this archive was packed from the staging directory of an unfinished run; seal staging directories with `certkit bundle finalize`", m.Completeness)
	default:
		bad("completeness %q: want %q or %q", shorten(m.Completeness, 40), CompletenessComplete, CompletenessFinalized)
	}
	if m.FinishedAt.IsZero() {
		bad("finished_at is missing")
	} else if m.FinishedAt.Before(m.CreatedAt) {
		bad("finished_at %s is before created_at %s", m.FinishedAt.Format(time.RFC3339), m.CreatedAt.Format(time.RFC3339))
	}
	switch {
	case m.Completeness == CompletenessFinalized && m.Finalization == nil:
		bad("completeness is finalized but finalization is missing")
	case m.Completeness != CompletenessFinalized && m.Finalization != nil:
		bad("finalization is set but completeness is %q", shorten(m.Completeness, 40))
	case m.Finalization != nil && strings.TrimSpace(m.Finalization.ToolVersion) == "":
		bad("finalization.tool_version is empty; a finalized bundle names the certkit that sealed it")
	}
	if len(m.Required) > 0 && m.CatalogVersion == "" {
		bad("required tests are listed without a catalog_version")
	}
	seen := map[string]bool{}
	for i, id := range m.Required {
		if _, err := TestDir(id); err != nil {
			bad("required[%d]: %v", i, err)
		} else if seen[id] {
			bad("required test %s listed twice", quoteName(id))
		}
		seen[id] = true
	}
	for kind, cs := range map[string]map[string]Component{"hosts": m.Hosts, "arrays": m.Arrays} {
		for _, name := range sortedKeys(cs) {
			if _, err := safeElem(name); err != nil {
				bad("%s: name %s is not usable", kind, quoteName(name))
			}
		}
	}
}

// checkSignature checks manifest.sig and returns the signer's key ID.
func (v *verifier) checkSignature(rawManifest []byte, trusted ed25519.PublicKey) string {
	if v.sig == nil {
		if trusted != nil {
			v.add(SignatureName, "missing: the bundle is not signed, and a signature by key %s is required", KeyID(trusted))
		}
		return ""
	}
	id, err := checkSignature(v.sig, rawManifest, trusted)
	if err != nil {
		v.add(SignatureName, "%v", err)
		return ""
	}
	return id
}

// checkResults parses results.json and checks it against the per-test
// results, junit.xml and the manifest.
func (v *verifier) checkResults(m *Manifest, entries map[string]*entryInfo) []TestResult {
	if entries[ResultsJSONName] == nil {
		if _, listed := m.File(ResultsJSONName); !listed {
			v.add(ResultsJSONName, "missing; every bundle records its results there")
		}
		return nil
	}
	if v.resultsJSON == nil || !v.intact[ResultsJSONName] {
		return nil // too big, or changed: reported
	}
	var rs Results
	if err := json.Unmarshal(v.resultsJSON, &rs); err != nil {
		v.add(ResultsJSONName, "not a results document ({\"tests\":[...]}): %s", jsonProblem(v.resultsJSON, err))
		return nil
	}
	ok := true
	seen := map[string]bool{}
	for i, r := range rs.Tests {
		if err := r.validate(); err != nil {
			v.add(ResultsJSONName, "tests[%d]: %v", i, err)
			ok = false
			continue
		}
		if seen[r.ID] {
			v.add(ResultsJSONName, "tests[%d]: test %s appears twice", i, quoteName(r.ID))
			ok = false
			continue
		}
		seen[r.ID] = true
		name := "tests/" + r.ID + "/" + ResultFile
		d, found := v.perTest[r.ID]
		switch {
		case entries[name] != nil && (!found || !v.intact[name]): // broken or changed, reported
		case !found:
			v.add(ResultsJSONName, "tests[%d]: test %s has no tests/%s/%s", i, quoteName(r.ID), r.ID, ResultFile)
		case d != resultDigest(r):
			v.add(ResultsJSONName, "tests[%d]: test %s differs from tests/%s/%s", i, quoteName(r.ID), r.ID, ResultFile)
		}
	}
	for _, id := range sortedKeys(v.perTest) {
		if ok && !seen[id] && v.intact["tests/"+id+"/"+ResultFile] {
			v.add("tests/"+id+"/"+ResultFile, "result of test %s is missing from %s", quoteName(id), ResultsJSONName)
		}
	}
	if ok {
		v.checkJUnit(m, rs.Tests, entries)
	}
	if rs.Tests == nil {
		rs.Tests = []TestResult{}
	}
	return rs.Tests
}

// junitDoc is what checkJUnit reads of junit.xml.
type junitDoc struct {
	XMLName  xml.Name `xml:"testsuites"`
	Tests    int      `xml:"tests,attr"`
	Failures int      `xml:"failures,attr"`
	Errors   int      `xml:"errors,attr"`
	Skipped  int      `xml:"skipped,attr"`
	Suites   []struct {
		Properties []junitProp `xml:"properties>property"`
		Cases      []struct {
			Properties []junitProp `xml:"properties>property"`
			Failure    *struct{}   `xml:"failure"`
			Error      *struct{}   `xml:"error"`
			Skipped    *struct{}   `xml:"skipped"`
		} `xml:"testcase"`
	} `xml:"testsuite"`
}

type junitProp struct {
	Name  string `xml:"name,attr"`
	Value string `xml:"value,attr"`
}

func prop(ps []junitProp, name string) (string, bool) {
	for _, p := range ps {
		if p.Name == name {
			return p.Value, true
		}
	}
	return "", false
}

func (v *verifier) checkJUnit(m *Manifest, results []TestResult, entries map[string]*entryInfo) {
	if entries[JUnitName] == nil {
		if _, listed := m.File(JUnitName); !listed {
			v.add(JUnitName, "missing; every bundle records its results there for CI tools")
		}
		return
	}
	if v.junitXML == nil || !v.intact[JUnitName] {
		return
	}
	if err := wellFormedXML(v.junitXML); err != nil {
		v.add(JUnitName, "%v", err)
		return
	}
	var doc junitDoc
	if err := xml.Unmarshal(v.junitXML, &doc); err != nil {
		v.add(JUnitName, "not a JUnit report: %v", err)
		return
	}
	bad := func(format string, args ...any) { v.add(JUnitName, format, args...) }
	if len(doc.Suites) != 1 {
		bad("%d <testsuite> elements, want 1", len(doc.Suites))
		return
	}
	s := doc.Suites[0]
	if tv, _ := prop(s.Properties, "tool_version"); tv != m.ToolVersion {
		bad("tool_version %q differs from the manifest's %q", shorten(tv, 80), shorten(m.ToolVersion, 80))
	}
	if cv, _ := prop(s.Properties, "catalog_version"); cv != m.CatalogVersion {
		bad("catalog_version %q differs from the manifest's %q", shorten(cv, 80), shorten(m.CatalogVersion, 80))
	}
	count := map[string]int{}
	for _, r := range results {
		count[r.Status]++
	}
	if doc.Tests != len(results) || doc.Failures != count[StatusFailed] || doc.Errors != count[StatusError] || doc.Skipped != count[StatusSkipped] {
		bad("counts (tests %d, failures %d, errors %d, skipped %d) differ from %s (tests %d, failed %d, error %d, skipped %d)",
			doc.Tests, doc.Failures, doc.Errors, doc.Skipped, ResultsJSONName, len(results), count[StatusFailed], count[StatusError], count[StatusSkipped])
		return
	}
	if len(s.Cases) != len(results) {
		bad("%d test cases, %s has %d tests", len(s.Cases), ResultsJSONName, len(results))
		return
	}
	for i, c := range s.Cases {
		r := results[i]
		id, _ := prop(c.Properties, "id")
		status := StatusPassed
		switch {
		case c.Failure != nil:
			status = StatusFailed
		case c.Error != nil:
			status = StatusError
		case c.Skipped != nil:
			status = StatusSkipped
		}
		if id != r.ID || status != r.Status {
			bad("test case %d is %s %s, but %s has %s %s", i+1, quoteName(id), status, ResultsJSONName, quoteName(r.ID), r.Status)
			return
		}
	}
}

// checkHosts checks that every hosts/<dir>/ belongs to a host the manifest
// names (when it names any).
func (v *verifier) checkHosts(m *Manifest) {
	if len(m.Hosts) == 0 {
		return
	}
	known := map[string]bool{}
	for name := range m.Hosts {
		if d, err := HostDir(name); err == nil {
			known[d] = true
		}
	}
	for _, dir := range sortedKeys(v.hostDirs) {
		if !known[dir] {
			v.add(v.hostDirs[dir], "evidence of a host the manifest does not name (its hosts: %s)", strings.Join(sortedKeys(m.Hosts), ", "))
		}
	}
}

// jsonProblem describes a JSON decoding error with its line and column.
func jsonProblem(data []byte, err error) string {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return fmt.Sprintf("malformed JSON at %s: %v", lineCol(data, syn.Offset-1), syn) // Offset is just past the bad byte
	case errors.As(err, &typ):
		field := typ.Field
		if field == "" {
			field = "the document"
		}
		return fmt.Sprintf("%s at %s cannot hold a JSON %s (want %s)", field, lineCol(data, typ.Offset), typ.Value, typ.Type)
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return "malformed JSON: truncated"
	}
	return fmt.Sprintf("malformed JSON: %v", err)
}

func lineCol(data []byte, off int64) string {
	off = min(max(off, 0), int64(len(data)))
	before := data[:off]
	line := bytes.Count(before, []byte("\n")) + 1
	col := off - int64(bytes.LastIndexByte(before, '\n'))
	return fmt.Sprintf("line %d, column %d", line, col)
}

// wellFormedXML reads every token of data.
func wellFormedXML(data []byte) error {
	d := xml.NewDecoder(bytes.NewReader(data))
	d.Strict = true
	root := false
	for {
		tok, err := d.Token()
		if err == io.EOF {
			if !root {
				return errors.New("malformed XML: no root element")
			}
			return nil
		}
		if err != nil {
			var syn *xml.SyntaxError
			if errors.As(err, &syn) {
				return fmt.Errorf("malformed XML at line %d: %s", syn.Line, syn.Msg)
			}
			return fmt.Errorf("malformed XML: %v", err)
		}
		if _, ok := tok.(xml.StartElement); ok {
			root = true
		}
	}
}
