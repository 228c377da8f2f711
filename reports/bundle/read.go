package bundle

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"slices"
)

// Bundle is a verified bundle opened for reading. It is immutable and safe
// for concurrent use; file contents are read from the archive on demand.
type Bundle struct {
	path     string
	manifest Manifest
	results  []TestResult
	signer   string
	lim      limits
}

// Read verifies the bundle at path (see Verify) and loads its results. A
// bundle that does not verify is not read: its results cannot be trusted.
func Read(path string) (*Bundle, error) {
	return read(path, defaultLimits)
}

func read(path string, lim limits) (*Bundle, error) {
	vd, err := verifyArchive(path, lim, nil)
	if err != nil {
		return nil, err
	}
	return &Bundle{path: path, manifest: *vd.manifest, results: vd.results, signer: vd.signer, lim: lim}, nil
}

// Path is the bundle file.
func (b *Bundle) Path() string { return b.path }

// Manifest returns a copy of the bundle's manifest.
func (b *Bundle) Manifest() Manifest {
	m := b.manifest
	m.Files = slices.Clone(m.Files)
	return m
}

// Signer is the key ID of the bundle's valid manifest.sig, "" when it is
// unsigned. Read checks the signature against the key it carries; only
// Check with VerifyOptions.PublicKey says whether that key is trusted.
func (b *Bundle) Signer() string { return b.signer }

// Results returns the test results in run order.
func (b *Bundle) Results() []TestResult {
	out := make([]TestResult, len(b.results))
	for i, r := range b.results {
		r.Measurements = cloneMap(r.Measurements)
		r.Thresholds = cloneMap(r.Thresholds)
		out[i] = r
	}
	return out
}

// File returns the content of one file listed in the manifest, checked
// against its SHA-256 again. Files over MaxFileBytes are refused (extract
// the bundle with tar to read them).
func (b *Bundle) File(name string) ([]byte, error) {
	fe, ok := b.manifest.File(name)
	if !ok {
		return nil, fmt.Errorf("bundle %s: %s: no such file in the bundle", b.path, quoteName(name))
	}
	if fe.Size > b.lim.file {
		return nil, fmt.Errorf("bundle %s: %s: %d bytes, over the %d-byte limit for in-memory reads; extract the bundle with tar to read it", b.path, name, fe.Size, b.lim.file)
	}
	fail := func(format string, args ...any) error {
		return fmt.Errorf("bundle %s: %s: "+format, append([]any{b.path, name}, args...)...)
	}
	f, err := os.Open(b.path)
	if err != nil {
		return nil, fail("%v", err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(bufio.NewReader(f))
	if err != nil {
		return nil, fail("archive changed since it was verified: %v", err)
	}
	tr := tar.NewReader(&limitReader{r: zr, left: b.lim.total})
	for n := 0; n <= b.lim.entries; n++ {
		hdr, err := tr.Next()
		if err != nil {
			return nil, fail("not found in archive (changed since it was verified?): %v", err)
		}
		if hdr.Name != name || hdr.Typeflag != tar.TypeReg {
			continue
		}
		if hdr.Size != fe.Size {
			return nil, fail("size changed since the bundle was verified")
		}
		var buf bytes.Buffer
		buf.Grow(int(fe.Size))
		if _, err := io.Copy(&buf, io.LimitReader(tr, fe.Size)); err != nil {
			return nil, fail("%v", err)
		}
		sum := sha256.Sum256(buf.Bytes())
		if hex.EncodeToString(sum[:]) != fe.SHA256 {
			return nil, fail("SHA-256 mismatch; the bundle changed since it was verified")
		}
		return buf.Bytes(), nil
	}
	return nil, fail("too many entries before it; archive changed since it was verified")
}
