package bundle

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
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
	"sync"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/certkit/certkit/reports/junit"
)

// Meta describes the run a bundle records.
type Meta struct {
	ToolVersion string
	Suite       string // JUnit suite name; "certkit" when empty
	// CatalogVersion is the version of the certification catalog run;
	// Required lists the test IDs it requires (the catalog's IDs). Verify
	// reports a bundle without a result for each of them as incomplete.
	// Required needs CatalogVersion.
	CatalogVersion string
	Required       []string
	Lab            map[string]any // free-form lab summary for the manifest; must be JSON-encodable; secret keys are redacted
	Profile        []byte         // the lab profile YAML; stored as lab/profile.yaml and in the manifest with secrets redacted
	// Hosts and Arrays are the identities (versions) of the lab's hosts and
	// arrays, by name, as they reported themselves.
	Hosts  map[string]Component
	Arrays map[string]Component
	// Secrets are the lab's secret values (passwords, CHAP secrets, tokens).
	// They are never stored: every occurrence in anything written to the
	// bundle (raw or JSON/XML/quoted/URL-encoded) becomes "REDACTED". Each
	// must be at least MinSecretBytes long. A secret split across two
	// AppendFile calls is not caught; append whole records.
	Secrets []string
	// SignKey, when set, signs the manifest into manifest.sig at Close.
	SignKey ed25519.PrivateKey
	Now     func() time.Time
}

// Writer builds a bundle. Files are staged in "<path>.partial/" as the run
// goes; Close packs them into path. All methods are safe for concurrent use.
type Writer struct {
	path, staging string
	now           func() time.Time
	scrub         scrubber
	signKey       ed25519.PrivateKey

	mu       sync.Mutex
	closed   bool
	manifest Manifest
	results  []TestResult
	ids      map[string]bool
}

// Create starts a bundle at path. It refuses to overwrite an existing bundle
// or to reuse a staging directory left by an interrupted run.
func Create(path string, m Meta) (*Writer, error) {
	w := &Writer{path: path, staging: path + ".partial", now: m.Now, ids: map[string]bool{}}
	if w.now == nil {
		w.now = time.Now
	}
	if _, err := os.Lstat(path); err == nil {
		return nil, fmt.Errorf("bundle %s: already exists; remove it or write the bundle elsewhere", path)
	}
	if strings.TrimSpace(m.ToolVersion) == "" {
		return nil, fmt.Errorf("bundle %s: Meta.ToolVersion is empty; a bundle names the certkit that wrote it", path)
	}
	var err error
	if w.scrub, err = newScrubber(m.Secrets); err != nil {
		return nil, fmt.Errorf("bundle %s: lab secrets: %w", path, err)
	}
	if m.SignKey != nil {
		if len(m.SignKey) != ed25519.PrivateKeySize {
			return nil, fmt.Errorf("bundle %s: signing key is %d bytes, not an ed25519 private key", path, len(m.SignKey))
		}
		w.signKey = m.SignKey
	}
	required, err := checkRequired(m.CatalogVersion, m.Required)
	if err != nil {
		return nil, fmt.Errorf("bundle %s: %w", path, err)
	}
	lab, err := w.normalize(m.Lab)
	if err != nil {
		return nil, fmt.Errorf("bundle %s: lab summary: %w", path, err)
	}
	var profile []byte
	var labProfile map[string]any
	if m.Profile != nil {
		if profile, err = RedactYAML(m.Profile); err != nil {
			return nil, fmt.Errorf("bundle %s: lab profile: %w", path, err)
		}
		profile = w.scrub.bytes(profile)
		if labProfile, err = w.profileMap(profile); err != nil {
			return nil, fmt.Errorf("bundle %s: lab profile: %w", path, err)
		}
	}
	hosts, err := w.components("host", m.Hosts)
	if err != nil {
		return nil, fmt.Errorf("bundle %s: %w", path, err)
	}
	arrays, err := w.components("array", m.Arrays)
	if err != nil {
		return nil, fmt.Errorf("bundle %s: %w", path, err)
	}
	suite := m.Suite
	if suite == "" {
		suite = "certkit"
	}
	w.manifest = Manifest{
		SchemaVersion:  SchemaVersion,
		ToolVersion:    m.ToolVersion,
		Suite:          suite,
		CatalogVersion: m.CatalogVersion,
		Required:       required,
		Completeness:   CompletenessInProgress,
		CreatedAt:      w.now().UTC(),
		Lab:            lab,
		LabProfile:     labProfile,
		Hosts:          hosts,
		Arrays:         arrays,
	}
	if err := os.Mkdir(w.staging, 0o755); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("bundle %s: staging directory %s/ exists (left by an interrupted run?); seal it with `certkit bundle finalize %s`, or move it away", path, w.staging, w.staging)
		}
		return nil, fmt.Errorf("bundle %s: creating staging directory: %w", path, err)
	}
	// A partial manifest makes the staging directory self-describing if the run dies.
	if err := w.writeJSONLocked(ManifestName, w.manifest); err != nil {
		return nil, w.fail(err)
	}
	if profile != nil {
		if err := w.writeLocked(ProfileName, profile); err != nil {
			return nil, w.fail(err)
		}
	}
	return w, nil
}

// checkRequired validates the required test IDs and returns a sorted copy.
func checkRequired(catalog string, ids []string) ([]string, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	if catalog == "" {
		return nil, fmt.Errorf("required tests given without the catalog version they come from")
	}
	out := slices.Clone(ids)
	slices.Sort(out)
	for i, id := range out {
		if _, err := TestDir(id); err != nil {
			return nil, fmt.Errorf("required %w", err)
		}
		if i > 0 && out[i-1] == id {
			return nil, fmt.Errorf("required test %s listed twice", quoteName(id))
		}
	}
	return out, nil
}

// fail removes a staging directory that holds nothing but what Create wrote.
func (w *Writer) fail(err error) error {
	os.RemoveAll(w.staging)
	return fmt.Errorf("bundle %s: %w", w.path, err)
}

// normalize round-trips v through JSON, so what is redacted is exactly
// what will be written, and non-encodable values fail now: secret keys
// are redacted, secret values scrubbed.
func (w *Writer) normalize(v map[string]any) (map[string]any, error) {
	if v == nil {
		return nil, nil
	}
	data, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	var out map[string]any
	if err := json.Unmarshal(w.scrub.bytes(data), &out); err != nil {
		return nil, err
	}
	return redactValue(out).(map[string]any), nil
}

// profileMap is the (redacted) profile as a JSON object for the manifest.
func (w *Writer) profileMap(profile []byte) (map[string]any, error) {
	var doc any
	if err := yaml.Unmarshal(profile, &doc); err != nil {
		return nil, fmt.Errorf("not valid YAML: %w", err)
	}
	if doc == nil {
		return nil, nil
	}
	m, ok := jsonable(doc).(map[string]any)
	if !ok {
		return nil, fmt.Errorf("not a YAML mapping (a lab profile is one: name:, hosts:, arrays:)")
	}
	return w.normalize(m)
}

// jsonable converts what YAML decodes (maps with non-string keys) into
// values JSON can encode.
func jsonable(v any) any {
	switch t := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(t))
		for k, e := range t {
			out[k] = jsonable(e)
		}
		return out
	case map[any]any:
		out := make(map[string]any, len(t))
		for k, e := range t {
			out[fmt.Sprint(k)] = jsonable(e)
		}
		return out
	case []any:
		out := make([]any, len(t))
		for i, e := range t {
			out[i] = jsonable(e)
		}
		return out
	case time.Time:
		return t.Format(time.RFC3339Nano)
	default:
		return v
	}
}

// components validates and copies host or array identities.
func (w *Writer) components(kind string, in map[string]Component) (map[string]Component, error) {
	if len(in) == 0 {
		return nil, nil
	}
	out := make(map[string]Component, len(in))
	for name, c := range in {
		if _, err := safeElem(name); err != nil || name != strings.TrimSpace(name) {
			return nil, fmt.Errorf("%s name %s: not usable in a bundle: want letters, digits, '.', '_', '-'", kind, quoteName(name))
		}
		c.Product, c.Version, c.Build = w.scrub.string(c.Product), w.scrub.string(c.Version), w.scrub.string(c.Build)
		if c.Extra != nil {
			extra := make(map[string]string, len(c.Extra))
			for k, v := range c.Extra {
				if secretKey(k) {
					v = Redacted
				}
				extra[w.scrub.string(k)] = w.scrub.string(v)
			}
			c.Extra = extra
		}
		out[name] = c
	}
	return out, nil
}

// Path is the bundle file Close will write.
func (w *Writer) Path() string { return w.path }

// StagingDir is where files are staged until Close.
func (w *Writer) StagingDir() string { return w.staging }

// stagingTemp prefixes temporary files in the staging directory.
const stagingTemp = ".staging-"

// reserved names are written by the Writer itself.
func reserved(name string) bool {
	return name == ManifestName || name == SignatureName || name == ResultsJSONName || name == JUnitName ||
		(strings.HasPrefix(name, "tests/") && path.Base(name) == ResultFile) ||
		strings.HasPrefix(path.Base(name), stagingTemp)
}

// check validates a name the caller gives WriteFile or AppendFile.
func (w *Writer) check(name string) error {
	if err := w.checkOpen(name); err != nil {
		return err
	}
	if reserved(name) {
		return fmt.Errorf("bundle %s: %s is written by the bundle writer; use AddResult for results", w.path, name)
	}
	if w.scrub.contains(name) {
		return fmt.Errorf("bundle %s: %s: the file name holds a lab secret; name files after hosts and tests, not credentials", w.path, quoteName(w.scrub.string(name)))
	}
	return nil
}

func (w *Writer) checkOpen(name string) error {
	if w.closed {
		return fmt.Errorf("bundle %s: %s: writer already closed", w.path, quoteName(name))
	}
	if err := checkName(name); err != nil {
		return fmt.Errorf("bundle %s: %s: %w", w.path, quoteName(name), err)
	}
	return nil
}

// WriteFile stores name with data, replacing any earlier content. The
// replacement is atomic, so a crash leaves the old or the new version.
func (w *Writer) WriteFile(name string, data []byte) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.check(name); err != nil {
		return err
	}
	if err := w.writeLocked(name, w.scrub.bytes(data)); err != nil {
		return fmt.Errorf("bundle %s: %w", w.path, err)
	}
	return nil
}

// WriteJSON stores v as indented JSON.
func (w *Writer) WriteJSON(name string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("bundle %s: %s: %w", w.path, quoteName(name), err)
	}
	return w.WriteFile(name, append(data, '\n'))
}

// AppendFile appends data to name, creating it if needed.
func (w *Writer) AppendFile(name string, data []byte) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.check(name); err != nil {
		return err
	}
	p := filepath.Join(w.staging, filepath.FromSlash(name))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return fmt.Errorf("bundle %s: %s: %w", w.path, name, err)
	}
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("bundle %s: %s: %w", w.path, name, err)
	}
	_, err = f.Write(w.scrub.bytes(data))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("bundle %s: %s: %w", w.path, name, err)
	}
	return nil
}

// LogCommand appends c to the host's command log (see CommandLogPath and
// FormatCommand), with secret options redacted from the command line and
// the lab's secrets scrubbed from it and from the output.
func (w *Writer) LogCommand(host string, c Command) error {
	c.Command = RedactCommand(w.scrub.string(c.Command))
	c.Output = w.scrub.bytes(c.Output)
	name, err := CommandLogPath(host, c.Command)
	if err != nil {
		return fmt.Errorf("bundle %s: %w", w.path, err)
	}
	return w.AppendFile(name, FormatCommand(c))
}

// AddResult records the verdict of one test. It is written at once to
// tests/<id>/result.json; results/results.json and results/junit.xml are
// produced from all results at Close, in the order they were added.
func (w *Writer) AddResult(r TestResult) error {
	if err := r.validate(); err != nil {
		return fmt.Errorf("bundle %s: %w", w.path, err)
	}
	r = w.scrubResult(r)
	name, err := TestPath(r.ID, ResultFile)
	if err != nil {
		return fmt.Errorf("bundle %s: %w", w.path, err)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.checkOpen(name); err != nil {
		return err
	}
	if w.ids[r.ID] {
		return fmt.Errorf("bundle %s: test %s: result already added; each test id gets one result", w.path, r.ID)
	}
	if err := w.writeJSONLocked(name, r); err != nil {
		return fmt.Errorf("bundle %s: %w", w.path, err)
	}
	w.ids[r.ID] = true
	w.results = append(w.results, r)
	return nil
}

// scrubResult copies r (so a caller mutating its maps later cannot change
// the record) with the lab's secrets scrubbed from its text.
func (w *Writer) scrubResult(r TestResult) TestResult {
	r.Name, r.Reason = w.scrub.string(r.Name), w.scrub.string(r.Reason)
	if r.Measurements != nil {
		ms := make(map[string]Measurement, len(r.Measurements))
		for k, m := range r.Measurements {
			m.Unit = w.scrub.string(m.Unit)
			ms[w.scrub.string(k)] = m
		}
		r.Measurements = ms
	}
	if r.Thresholds != nil {
		ts := make(map[string]Threshold, len(r.Thresholds))
		for k, t := range r.Thresholds {
			t.Unit = w.scrub.string(t.Unit)
			ts[w.scrub.string(k)] = t
		}
		r.Thresholds = ts
	}
	return r
}

// cloneMap copies m so a caller mutating its map later cannot change the record.
func cloneMap[V any](m map[string]V) map[string]V {
	if m == nil {
		return nil
	}
	out := make(map[string]V, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func (w *Writer) writeJSONLocked(name string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return w.writeLocked(name, append(data, '\n'))
}

// writeLocked writes via a temporary file in the same directory and renames it.
func (w *Writer) writeLocked(name string, data []byte) error {
	p := filepath.Join(w.staging, filepath.FromSlash(name))
	dir := filepath.Dir(p)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	f, err := os.CreateTemp(dir, stagingTemp+"*")
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(0o644)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), p)
	}
	if err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

// Close writes the results and the manifest, packs the archive (see the
// package doc for its deterministic form) to a temporary file next to the
// bundle, renames it into place and removes the staging directory. If
// packing fails the staging directory is kept, and the error says where.
func (w *Writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return fmt.Errorf("bundle %s: already closed", w.path)
	}
	w.closed = true
	return w.seal(CompletenessComplete, nil)
}

// seal packs the staged files with the given completeness and removes the
// staging directory.
func (w *Writer) seal(completeness string, fin *Finalization) error {
	if err := w.pack(completeness, fin); err != nil {
		return fmt.Errorf("bundle %s: %w; the evidence is kept in %s/", w.path, err, w.staging)
	}
	if err := os.RemoveAll(w.staging); err != nil {
		return fmt.Errorf("bundle %s: written, but removing staging directory: %w", w.path, err)
	}
	return nil
}

func (w *Writer) pack(completeness string, fin *Finalization) error {
	results := Results{Tests: w.results}
	if results.Tests == nil {
		results.Tests = []TestResult{}
	}
	if err := w.writeJSONLocked(ResultsJSONName, results); err != nil {
		return err
	}
	var x bytes.Buffer
	if err := junit.Write(&x, junitSuite(w.manifest, w.results)); err != nil {
		return fmt.Errorf("%s: %w", JUnitName, err)
	}
	if err := w.writeLocked(JUnitName, x.Bytes()); err != nil {
		return err
	}

	files, err := w.stagedFiles()
	if err != nil {
		return err
	}
	if err := checkLimits(files, defaultLimits); err != nil {
		return err
	}
	w.manifest.Completeness = completeness
	w.manifest.Finalization = fin
	w.manifest.FinishedAt = w.now().UTC()
	w.manifest.Files = files
	mdata, err := json.MarshalIndent(w.manifest, "", "  ")
	if err != nil {
		return fmt.Errorf("%s: %w", ManifestName, err)
	}
	mdata = append(mdata, '\n')
	if err := w.writeLocked(ManifestName, mdata); err != nil {
		return err
	}
	signed := w.signKey != nil
	if signed {
		sig, err := signManifest(w.signKey, mdata)
		if err != nil {
			return fmt.Errorf("signing the manifest: %w", err)
		}
		if err := w.writeLocked(SignatureName, sig); err != nil {
			return err
		}
	} else if err := os.Remove(filepath.Join(w.staging, SignatureName)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing a stale %s: %w", SignatureName, err)
	}

	dir, base := filepath.Split(w.path)
	if dir == "" {
		dir = "."
	}
	tmp, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return fmt.Errorf("creating temporary archive: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	bw := bufio.NewWriterSize(tmp, 1<<20)
	if err := w.writeArchive(bw, files, signed); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("writing %s: %w", tmp.Name(), err)
	}
	if fi, err := tmp.Stat(); err == nil && fi.Size() > defaultLimits.archive {
		return fmt.Errorf("archive is %d bytes, over the %d-byte limit Verify enforces", fi.Size(), defaultLimits.archive)
	}
	if err := tmp.Chmod(0o644); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("syncing %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("closing %s: %w", tmp.Name(), err)
	}
	// Link, not rename: a bundle that appeared at path meanwhile (a second
	// finalize) is not replaced.
	if err := os.Link(tmp.Name(), w.path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%s appeared while packing; not replaced", w.path)
		}
		if err := os.Rename(tmp.Name(), w.path); err != nil { // filesystems without hard links
			return err
		}
	}
	os.Remove(tmp.Name())
	ok = true
	if d, err := os.Open(dir); err == nil { // make the rename durable; best effort
		d.Sync()
		d.Close()
	}
	return nil
}

// stagedFiles hashes every staged file except the manifest, sorted by path.
func (w *Writer) stagedFiles() ([]FileEntry, error) {
	var files []FileEntry
	err := filepath.WalkDir(w.staging, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(w.staging, p)
		if err != nil {
			return err
		}
		name := filepath.ToSlash(rel)
		switch {
		case d.IsDir():
			return nil
		case !d.Type().IsRegular():
			return fmt.Errorf("%s: not a regular file (%s); bundles hold regular files only", name, d.Type())
		case name == ManifestName || name == SignatureName:
			return nil
		case strings.HasPrefix(d.Name(), stagingTemp):
			return nil // leftover of a failed write
		}
		if err := checkName(name); err != nil {
			return fmt.Errorf("%s: %w", quoteName(name), err)
		}
		sum, size, err := hashFile(p)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		files = append(files, FileEntry{Path: name, SHA256: sum, Size: size})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("staging directory: %w", err)
	}
	slices.SortFunc(files, func(a, b FileEntry) int { return strings.Compare(a.Path, b.Path) })
	return files, nil
}

// checkLimits refuses to pack a bundle that Verify would reject.
func checkLimits(files []FileEntry, lim limits) error {
	if len(files)+1 > lim.entries {
		return fmt.Errorf("%d files, over the %d-entry limit Verify enforces", len(files)+1, lim.entries)
	}
	var total int64
	for _, f := range files {
		if f.Size > lim.entry {
			return fmt.Errorf("%s: %d bytes, over the %d-byte per-file limit Verify enforces", f.Path, f.Size, lim.entry)
		}
		total += f.Size
	}
	if total > lim.total*9/10 { // tar headers and padding take the rest
		return fmt.Errorf("%d bytes of files, near or over the %d-byte limit Verify enforces", total, lim.total)
	}
	return nil
}

func hashFile(p string) (string, int64, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// writeArchive writes manifest.json, manifest.sig when signed, then files
// in order, as a gzip'd tar. Each file is hashed again while copied: a file
// changed behind the writer's back fails the bundle rather than producing
// one that won't verify.
func (w *Writer) writeArchive(out io.Writer, files []FileEntry, signed bool) error {
	zw, err := gzip.NewWriterLevel(out, gzip.DefaultCompression)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(zw)
	mtime := w.manifest.FinishedAt.Truncate(time.Second)
	if mtime.Before(time.Unix(0, 0)) { // a test clock at the zero time; keep plain ustar headers
		mtime = time.Unix(0, 0)
	}
	add := func(name string, size int64, want string) error {
		f, err := os.Open(filepath.Join(w.staging, filepath.FromSlash(name)))
		if err != nil {
			return err
		}
		defer f.Close()
		hdr := &tar.Header{Typeflag: tar.TypeReg, Name: name, Size: size, Mode: 0o644, ModTime: mtime}
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		h := sha256.New()
		if _, err := io.CopyN(io.MultiWriter(tw, h), f, size); err != nil {
			return fmt.Errorf("%s: %w (changed while packing?)", name, err)
		}
		if want != "" && hex.EncodeToString(h.Sum(nil)) != want {
			return fmt.Errorf("%s: changed while packing; bundle not written", name)
		}
		return nil
	}
	mi, err := os.Stat(filepath.Join(w.staging, ManifestName))
	if err != nil {
		return err
	}
	if err := add(ManifestName, mi.Size(), ""); err != nil {
		return err
	}
	if signed {
		si, err := os.Stat(filepath.Join(w.staging, SignatureName))
		if err != nil {
			return err
		}
		if err := add(SignatureName, si.Size(), ""); err != nil {
			return err
		}
	}
	for _, f := range files {
		if err := add(f.Path, f.Size, f.SHA256); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return zw.Close()
}

// junitSuite maps results to the JUnit report.
func junitSuite(m Manifest, results []TestResult) junit.Suite {
	s := junit.Suite{
		Name:       m.Suite,
		Timestamp:  m.CreatedAt,
		Properties: []junit.Property{{Name: "tool_version", Value: m.ToolVersion}},
	}
	if m.CatalogVersion != "" {
		s.Properties = append(s.Properties, junit.Property{Name: "catalog_version", Value: m.CatalogVersion})
	}
	for _, r := range results {
		name := r.Name
		if name == "" {
			name = r.ID
		}
		c := junit.Case{
			Name:       name,
			Classname:  m.Suite,
			Status:     junit.Status(r.Status),
			Message:    r.Reason,
			Time:       r.Duration(),
			Properties: []junit.Property{{Name: "id", Value: r.ID}},
		}
		for _, k := range sortedKeys(r.Measurements) {
			v := r.Measurements[k]
			c.Properties = append(c.Properties, junit.Property{Name: "measurement." + k, Value: formatValue(v.Value, v.Unit)})
		}
		for _, k := range sortedKeys(r.Thresholds) {
			c.Properties = append(c.Properties, junit.Property{Name: "threshold." + k, Value: formatThreshold(r.Thresholds[k])})
		}
		s.Cases = append(s.Cases, c)
	}
	return s
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
