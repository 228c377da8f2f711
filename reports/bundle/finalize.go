package bundle

import (
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// StagingSuffix names the directory a Writer stages a bundle in:
// "<bundle>.partial".
const StagingSuffix = ".partial"

// Staging describes the staging directory of a run that did not finish
// (killed, crashed, lost power, or still running).
type Staging struct {
	Dir      string   // "<bundle>.partial"
	Bundle   string   // the bundle it would seal into
	Manifest Manifest // as written when the run started
	Files    int      // staged files, the manifest included
	// Results are the tests with a recorded result; InProgress the tests
	// with evidence but no result (the run died during them).
	Results    []TestResult
	InProgress []string
	// LastWriteAt is the latest modification time of a staged file.
	LastWriteAt time.Time
}

// stagingFor tells whether p names a run that is still staged: p is a
// staging directory, or p does not exist and p+".partial" does. err is set
// when it is one but cannot be read as one.
func stagingFor(p string) (*Staging, bool, error) {
	dir := ""
	if fi, err := os.Lstat(p); err == nil {
		if !fi.IsDir() {
			return nil, false, nil
		}
		if !strings.HasSuffix(filepath.Clean(p), StagingSuffix) {
			return nil, true, fmt.Errorf("%s is a directory, not a bundle; a staging directory's name ends in %s", p, StagingSuffix)
		}
		dir = filepath.Clean(p)
	} else if fi, err := os.Lstat(p + StagingSuffix); err == nil && fi.IsDir() {
		dir = p + StagingSuffix
	} else {
		return nil, false, nil
	}
	st, err := inspectStaging(dir, defaultLimits)
	return st, true, err
}

// inspectStaging reads what a staging directory holds, without trusting it
// more than an archive: names are checked, only regular files are read,
// and reads are bounded.
func inspectStaging(dir string, lim limits) (*Staging, error) {
	st := &Staging{Dir: dir, Bundle: strings.TrimSuffix(dir, StagingSuffix)}
	fail := func(format string, args ...any) (*Staging, error) {
		return nil, fmt.Errorf("staging directory %s/: "+format, append([]any{dir}, args...)...)
	}
	raw, err := readBounded(filepath.Join(dir, ManifestName), lim.manifest)
	if err != nil {
		return fail("%s: %v; this is not the staging directory of a certkit run", ManifestName, err)
	}
	if err := json.Unmarshal(raw, &st.Manifest); err != nil {
		return fail("%s: %s", ManifestName, jsonProblem(raw, err))
	}
	m := &st.Manifest
	if m.SchemaVersion != SchemaVersion {
		return fail("%s: schema_version %d is not supported (this certkit reads %d); use the certkit version that ran", ManifestName, m.SchemaVersion, SchemaVersion)
	}
	switch m.Completeness {
	case CompletenessInProgress, CompletenessComplete: // complete: the run died while packing
	default:
		return fail("%s: completeness %q; a staging manifest says %q", ManifestName, shorten(m.Completeness, 40), CompletenessInProgress)
	}
	if _, err := checkRequired(m.CatalogVersion, m.Required); err != nil {
		return fail("%s: %v", ManifestName, err)
	}
	type staged struct {
		res   TestResult
		mtime time.Time
	}
	var results []staged
	evidence := map[string]bool{} // test dirs holding evidence
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		name := filepath.ToSlash(rel)
		if d.IsDir() || strings.HasPrefix(d.Name(), stagingTemp) {
			return nil
		}
		if !d.Type().IsRegular() {
			return fmt.Errorf("%s: not a regular file (%s); bundles hold regular files only", quoteName(name), d.Type())
		}
		if err := checkName(name); err != nil {
			return fmt.Errorf("%s: %w", quoteName(name), err)
		}
		st.Files++
		if st.Files > lim.entries {
			return fmt.Errorf("more than %d files", lim.entries)
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if fi.ModTime().After(st.LastWriteAt) {
			st.LastWriteAt = fi.ModTime()
		}
		if !strings.HasPrefix(name, "tests/") {
			return nil
		}
		if !isResultFile(name) {
			evidence[path.Dir(name)] = true
			return nil
		}
		data, err := readBounded(p, lim.file)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		var r TestResult
		if err := json.Unmarshal(data, &r); err != nil {
			return fmt.Errorf("%s: not a test result: %s", name, jsonProblem(data, err))
		}
		if err := r.validate(); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		if want := strings.TrimSuffix(strings.TrimPrefix(name, "tests/"), "/"+ResultFile); r.ID != want {
			return fmt.Errorf("%s: holds the result of test %s, not of %s", name, quoteName(r.ID), quoteName(want))
		}
		results = append(results, staged{r, fi.ModTime()})
		return nil
	})
	if err != nil {
		return fail("%v", err)
	}
	// Run order: results are written as tests end.
	slices.SortStableFunc(results, func(a, b staged) int {
		if c := a.mtime.Compare(b.mtime); c != 0 {
			return c
		}
		return strings.Compare(a.res.ID, b.res.ID)
	})
	judged := map[string]bool{}
	for _, r := range results {
		st.Results = append(st.Results, r.res)
		judged["tests/"+r.res.ID] = true
	}
	for d := range evidence {
		// Evidence in a subdirectory of a judged test belongs to it.
		owned := false
		for p := d; p != "tests" && p != "."; p = path.Dir(p) {
			if judged[p] {
				owned = true
				break
			}
		}
		// Evidence in a subdirectory of another unjudged test's directory is that test's.
		for p := path.Dir(d); !owned && p != "tests" && p != "."; p = path.Dir(p) {
			owned = evidence[p]
		}
		if !owned {
			st.InProgress = append(st.InProgress, strings.TrimPrefix(d, "tests/"))
		}
	}
	slices.Sort(st.InProgress)
	return st, nil
}

// incomplete is the IncompleteError a staged run gives Check.
func (st *Staging) incomplete() error {
	what := fmt.Sprintf("the run did not finish: its evidence is staged in %s/ (%d files, %d test results", st.Dir, st.Files, len(st.Results))
	if len(st.InProgress) > 0 {
		what += "; in progress: " + strings.Join(st.InProgress, ", ")
	}
	what += ")"
	if !st.LastWriteAt.IsZero() {
		what += ", last written " + st.LastWriteAt.UTC().Format(time.RFC3339)
	}
	reasons := []string{what, fmt.Sprintf("if that run is no longer going, seal it with: certkit bundle finalize %s", st.Dir)}
	return &IncompleteError{Bundle: st.Bundle, Reasons: reasons}
}

// FinalizeOptions shape Finalize.
type FinalizeOptions struct {
	ToolVersion string             // the certkit finalizing; recorded in the manifest
	SignKey     ed25519.PrivateKey // signs the sealed bundle when set
	Now         func() time.Time
}

// Finalize seals the staging directory of a run that died: p is the bundle
// path ("X.tgz") or its staging directory ("X.tgz.partial"). It packs what
// the run staged, exactly as Close would, and records the run as finalized
// (Manifest.Completeness "finalized", Manifest.Finalization): every test
// that has evidence but no result, and every required test without a
// result, gets an error result whose reason starts with NoVerdictReason.
// Finalize must not run while the run is still going: it cannot tell a
// slow run from a dead one; LastWriteAt in the staging says when it last
// wrote.
func Finalize(p string, opts FinalizeOptions) (*Manifest, error) {
	if strings.TrimSpace(opts.ToolVersion) == "" {
		return nil, fmt.Errorf("finalize %s: FinalizeOptions.ToolVersion is empty; the bundle records which certkit sealed it", p)
	}
	st, ok, err := stagingFor(p)
	switch {
	case err != nil:
		return nil, fmt.Errorf("finalize: %w", err)
	case !ok:
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
			return nil, fmt.Errorf("finalize %s: already sealed (no %s%s/ to finalize); check it with certkit bundle verify", p, p, StagingSuffix)
		}
		return nil, fmt.Errorf("finalize %s: no staging directory %s%s/ and no bundle", p, strings.TrimSuffix(p, StagingSuffix), StagingSuffix)
	}
	if _, err := os.Lstat(st.Bundle); err == nil {
		return nil, fmt.Errorf("finalize %s: the bundle %s exists already (the run sealed it, then died before removing its staging); verify the bundle, then remove %s/", st.Dir, st.Bundle, st.Dir)
	}
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	if opts.SignKey != nil && len(opts.SignKey) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("finalize %s: signing key is %d bytes, not an ed25519 private key", st.Dir, len(opts.SignKey))
	}
	w := &Writer{path: st.Bundle, staging: st.Dir, now: now, signKey: opts.SignKey, ids: map[string]bool{},
		manifest: st.Manifest, results: st.Results, closed: true}
	for _, r := range st.Results {
		w.ids[r.ID] = true
	}
	end := st.LastWriteAt.UTC()
	if end.IsZero() || end.Before(w.manifest.CreatedAt) {
		end = w.manifest.CreatedAt
	}
	fin := &Finalization{ToolVersion: opts.ToolVersion, LastWriteAt: end}
	noVerdict := func(id, why string) error {
		r := TestResult{ID: id, Status: StatusError, Reason: NoVerdictReason + why, Start: end, End: end}
		name, err := TestPath(id, ResultFile)
		if err != nil {
			return err
		}
		if err := w.writeJSONLocked(name, r); err != nil {
			return err
		}
		w.ids[id] = true
		w.results = append(w.results, r)
		fin.NoVerdict = append(fin.NoVerdict, id)
		return nil
	}
	for _, id := range st.InProgress {
		if err := noVerdict(id, "the run ended while this test was in progress (bundle finalized by certkit bundle finalize)"); err != nil {
			return nil, fmt.Errorf("finalize %s: %w", st.Dir, err)
		}
	}
	for _, id := range w.manifest.Required {
		if !w.ids[id] {
			if err := noVerdict(id, "the run ended before this test ran (bundle finalized by certkit bundle finalize)"); err != nil {
				return nil, fmt.Errorf("finalize %s: %w", st.Dir, err)
			}
		}
	}
	if err := w.seal(CompletenessFinalized, fin); err != nil {
		return nil, fmt.Errorf("finalize: %w", err)
	}
	m := w.manifest
	return &m, nil
}

// readBounded reads a regular file of at most max bytes.
func readBounded(p string, max int64) ([]byte, error) {
	if fi, err := os.Lstat(p); errors.Is(err, fs.ErrNotExist) {
		return nil, errors.New("missing")
	} else if err != nil {
		return nil, err
	} else if !fi.Mode().IsRegular() {
		return nil, errors.New("not a regular file")
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, errors.New("not a regular file")
	}
	if fi.Size() > max {
		return nil, fmt.Errorf("%d bytes, over the %d-byte limit", fi.Size(), max)
	}
	return io.ReadAll(io.LimitReader(f, max))
}
