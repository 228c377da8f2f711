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
	"os"
	"slices"
	"strings"
)

// Problem is one thing wrong with a bundle.
type Problem struct {
	File    string // path inside the bundle; "" when the problem is the archive itself
	Message string
}

func (p Problem) String() string {
	if p.File == "" {
		return p.Message
	}
	return quoteName(p.File) + ": " + p.Message
}

// VerifyError lists everything Verify found wrong with a bundle.
type VerifyError struct {
	Bundle   string
	Problems []Problem
	Omitted  int // problems found beyond MaxProblems, not listed
}

// Error prints one line per problem: "bundle X: tests/a/timeline.json: SHA-256 mismatch (...)".
func (e *VerifyError) Error() string {
	var b strings.Builder
	for i, p := range e.Problems {
		if i > 0 {
			b.WriteByte('\n')
		}
		fmt.Fprintf(&b, "bundle %s: %s", e.Bundle, p)
	}
	if e.Omitted > 0 {
		fmt.Fprintf(&b, "\nbundle %s: %d more problems not listed", e.Bundle, e.Omitted)
	}
	return b.String()
}

// Verify checks that the bundle at path is intact: every file the manifest
// lists is present with its size and SHA-256, and nothing else is there. It
// returns nil error only for an intact bundle; otherwise a *VerifyError that
// lists every problem found. The manifest is returned whenever it could be
// parsed, even when other problems were found.
//
// Beyond checksums, Verify checks what a reviewer relies on: the manifest's
// schema; manifest.sig, when present, against the key it names (use Check
// with a trusted key to know who signed); results/results.json,
// results/junit.xml and every tests/<id>/result.json parse and agree with
// each other and with the manifest's versions; every other JSON and XML
// file is well-formed; every hosts/<host>/ directory is a host of the
// manifest. Verify does not judge completeness: see Check.
func Verify(path string) (*Manifest, error) {
	return verify(path, defaultLimits)
}

func verify(path string, lim limits) (*Manifest, error) {
	vd, err := verifyArchive(path, lim, nil)
	if vd == nil {
		return nil, err
	}
	return vd.manifest, err
}

// entryInfo is what Verify learned about one archive entry.
type entryInfo struct {
	sum   [sha256.Size]byte
	size  int64
	count int
}

type verifier struct {
	path     string
	lim      limits
	problems []Problem
	omitted  int

	// Content kept for the checks after the scan (each bounded by lim).
	sig, resultsJSON, junitXML []byte
	perTest                    map[string][sha256.Size]byte // test id -> digest of its tests/<id>/result.json
	hostDirs                   map[string]string            // hosts/<dir> -> first file seen in it
	// contentProblems are problems with what a file says; they are
	// reported only for files intact against the manifest (a changed file
	// is reported as changed, once).
	contentProblems map[string][]Problem
	intact          map[string]bool // files whose size and SHA-256 match the manifest
}

// verified is what verifyArchive established.
type verified struct {
	manifest *Manifest
	results  []TestResult
	signer   string // key ID of a valid manifest.sig; "" when unsigned
}

func (v *verifier) add(file, format string, args ...any) {
	if len(v.problems) >= v.lim.problems {
		v.omitted++
		return
	}
	v.problems = append(v.problems, Problem{File: file, Message: fmt.Sprintf(format, args...)})
}

func (v *verifier) err() error {
	if len(v.problems) == 0 {
		return nil
	}
	return &VerifyError{Bundle: v.path, Problems: v.problems, Omitted: v.omitted}
}

func verifyArchive(path string, lim limits, trusted ed25519.PublicKey) (*verified, error) {
	v := &verifier{path: path, lim: lim, perTest: map[string][sha256.Size]byte{}, hostDirs: map[string]string{},
		contentProblems: map[string][]Problem{}, intact: map[string]bool{}}
	f, err := os.Open(path)
	if err != nil {
		v.add("", "cannot open: %v", err)
		return nil, v.err()
	}
	defer f.Close()
	fi, err := f.Stat()
	switch {
	case err != nil:
		v.add("", "cannot stat: %v", err)
		return nil, v.err()
	case !fi.Mode().IsRegular():
		v.add("", "not a regular file")
		return nil, v.err()
	case fi.Size() > lim.archive:
		v.add("", "archive is %d bytes, over the %d-byte limit", fi.Size(), lim.archive)
		return nil, v.err()
	}
	entries, rawManifest := v.scan(f)
	m := v.checkManifest(rawManifest, entries)
	if m == nil {
		v.sortProblems()
		return nil, v.err()
	}
	vd := &verified{manifest: m}
	vd.signer = v.checkSignature(rawManifest, trusted)
	vd.results = v.checkResults(m, entries)
	v.checkHosts(m)
	v.sortProblems()
	return vd, v.err()
}

// scan reads the whole archive once, hashing every entry while streaming.
func (v *verifier) scan(r io.Reader) (map[string]*entryInfo, []byte) {
	entries := map[string]*entryInfo{}
	zr, err := gzip.NewReader(bufio.NewReader(r))
	if err != nil {
		v.add("", "not a gzip-compressed archive: %v", err)
		return entries, nil
	}
	zr.Multistream(false) // a bundle is one gzip member; anything after it is junk
	lr := &limitReader{r: zr, left: v.lim.total}
	tr := tar.NewReader(lr)
	var manifest []byte
	var last string
	hashLeft := v.lim.total // bounds what is hashed, whatever the tar reader synthesizes
	buf := make([]byte, 32<<10)
	for n := 0; ; n++ {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			v.readError(last, "", err)
			return entries, manifest
		}
		if n >= v.lim.entries {
			v.add("", "more than %d entries; refusing to read further", v.lim.entries)
			return entries, manifest
		}
		name := hdr.Name
		last = name
		switch hdr.Typeflag {
		case tar.TypeReg:
		case tar.TypeDir:
			if err := checkName(strings.TrimSuffix(name, "/")); err != nil {
				v.add(name, "unsafe directory entry: %v", err)
			}
			continue
		case tar.TypeSymlink:
			v.add(name, "symlink entry (-> %s) not allowed; bundles hold regular files only", quoteName(hdr.Linkname))
			continue
		case tar.TypeLink:
			v.add(name, "hard link entry (-> %s) not allowed; bundles hold regular files only", quoteName(hdr.Linkname))
			continue
		case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
			v.add(name, "device or FIFO entry not allowed; bundles hold regular files only")
			continue
		default:
			v.add(name, "entry type %q not allowed; bundles hold regular files only", hdr.Typeflag)
			continue
		}
		if err := checkName(name); err != nil {
			v.add(name, "unsafe path: %v", err)
			continue
		}
		if sparse(hdr) {
			// Holes expand to zeros without consuming input: a tiny archive could make us hash terabytes.
			v.add(name, "sparse file entry not allowed; bundles hold regular files only")
			continue
		}
		if e := entries[name]; e != nil {
			e.count++
			continue
		}
		if hdr.Size > v.lim.entry {
			v.add(name, "entry is %d bytes, over the %d-byte limit", hdr.Size, v.lim.entry)
			entries[name] = &entryInfo{size: -1, count: 1}
			continue
		}
		if hdr.Size > hashLeft {
			v.add(name, "archive holds more than %d bytes of files; refusing to read further", v.lim.total)
			return entries, manifest
		}
		hashLeft -= hdr.Size
		if dir, ok := hostDir(name); ok && v.hostDirs[dir] == "" {
			v.hostDirs[dir] = name
		}
		h := sha256.New()
		var dst io.Writer = h
		var mbuf *bytes.Buffer
		keep := v.keepLimit(name)
		if hdr.Size <= keep {
			mbuf = bytes.NewBuffer(make([]byte, 0, min(hdr.Size, 1<<20))) // grows only as data arrives
			dst = io.MultiWriter(h, mbuf)
		}
		size, err := io.CopyBuffer(dst, io.LimitReader(tr, hdr.Size), buf)
		if err != nil {
			v.readError(name, name, err)
			return entries, manifest
		}
		e := &entryInfo{size: size, count: 1}
		h.Sum(e.sum[:0])
		entries[name] = e
		switch {
		case keep < 0:
		case mbuf == nil && name == ManifestName:
			v.add(name, "manifest is %d bytes, over the %d-byte limit", hdr.Size, v.lim.manifest)
		case mbuf == nil && (name == SignatureName || name == ResultsJSONName || name == JUnitName || isResultFile(name)):
			v.add(name, "%d bytes, over the %d-byte limit for this file", hdr.Size, keep)
		case mbuf == nil: // evidence too big to parse here; its checksum was checked
		case name == ManifestName:
			manifest = mbuf.Bytes()
		default:
			v.content(name, mbuf.Bytes())
		}
	}
	// The tar end marker does not end the gzip stream: read to its end so a
	// truncated or corrupt tail (bad CRC) is caught too.
	if _, err := io.CopyBuffer(io.Discard, lr, buf); err != nil {
		v.readError(last, "", err)
	}
	for name, e := range entries {
		if e.count > 1 {
			v.add(name, "duplicate entry (%d copies in the archive)", e.count)
		}
	}
	return entries, manifest
}

// readError records a failure of the archive stream, naming the entry being
// read (inEntry) or the last entry read before it broke (after).
func (v *verifier) readError(after, inEntry string, err error) {
	what := "archive truncated or corrupt"
	switch {
	case errors.Is(err, errTooBig):
		what = "archive expands past the limit (decompression bomb?)"
		err = fmt.Errorf("more than %d bytes uncompressed", v.lim.total)
	case errors.Is(err, io.ErrUnexpectedEOF):
		what = "archive truncated"
	}
	switch {
	case inEntry != "":
		v.add(inEntry, "%s while reading this file: %v", what, err)
	case after != "":
		v.add("", "%s after entry %s: %v", what, quoteName(after), err)
	default:
		v.add("", "%s: %v", what, err)
	}
}

// checkManifest parses the manifest and compares it with the archive.
func (v *verifier) checkManifest(raw []byte, entries map[string]*entryInfo) *Manifest {
	if entries[ManifestName] == nil {
		v.add(ManifestName, "missing; this is not a certkit bundle (or it was repacked)")
	}
	var m *Manifest
	if raw != nil {
		m = &Manifest{}
		if err := json.Unmarshal(raw, m); err != nil {
			v.add(ManifestName, "malformed JSON: %v", err)
			m = nil
		} else if m.SchemaVersion != SchemaVersion {
			v.add(ManifestName, "schema_version %d is not supported (this certkit reads %d); use a matching certkit version", m.SchemaVersion, SchemaVersion)
		}
	}
	if m != nil && m.SchemaVersion == SchemaVersion {
		v.checkHeader(m)
	}
	listed := map[string]bool{ManifestName: true, SignatureName: true}
	if m != nil {
		for i, f := range m.Files {
			if err := f.check(); err != nil {
				v.add(ManifestName, "files[%d] (%s): %v", i, quoteName(f.Path), err)
				listed[f.Path] = true
				continue
			}
			if listed[f.Path] {
				v.add(f.Path, "listed more than once in manifest")
				continue
			}
			listed[f.Path] = true
			e := entries[f.Path]
			switch {
			case e == nil:
				v.add(f.Path, "file listed in manifest is missing")
			case e.size < 0: // over the limit, already reported
			case e.size != f.Size:
				v.add(f.Path, "size mismatch (manifest %d bytes, file %d bytes)", f.Size, e.size)
			case hex.EncodeToString(e.sum[:]) != f.SHA256:
				v.add(f.Path, "SHA-256 mismatch (manifest %s…, file %s…)", f.SHA256[:12], hex.EncodeToString(e.sum[:6]))
			case e.count == 1:
				v.intact[f.Path] = true
				for _, p := range v.contentProblems[f.Path] {
					v.add(p.File, "%s", p.Message)
				}
			}
		}
	}
	if m != nil { // without a manifest every file would be "extra"; that says nothing
		var extra []string
		for name := range entries {
			if !listed[name] {
				extra = append(extra, name)
			}
		}
		slices.Sort(extra)
		for _, name := range extra {
			v.add(name, "file not listed in manifest (extra)")
		}
	}
	return m
}

func (v *verifier) sortProblems() {
	slices.SortStableFunc(v.problems, func(a, b Problem) int { return strings.Compare(a.File, b.File) })
}

// sparse reports whether the tar reader would synthesize holes for hdr.
func sparse(hdr *tar.Header) bool {
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return true
		}
	}
	return false
}

var errTooBig = errors.New("uncompressed size limit exceeded")

// limitReader fails with errTooBig once more than left bytes were read.
type limitReader struct {
	r    io.Reader
	left int64
}

func (l *limitReader) Read(p []byte) (int, error) {
	if l.left <= 0 {
		// Probe: a stream that ends exactly at the limit is fine.
		var one [1]byte
		if n, err := l.r.Read(one[:]); n > 0 {
			return 0, errTooBig
		} else {
			return 0, err
		}
	}
	if int64(len(p)) > l.left {
		p = p[:l.left]
	}
	n, err := l.r.Read(p)
	l.left -= int64(n)
	return n, err
}
