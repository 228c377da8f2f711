package bundle

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
)

// Extract writes every file of the bundle, manifest.json and manifest.sig
// included, under dir (created if needed; it must not already hold any of
// them), in one pass over the archive. Each file is checked against the
// manifest again while written; on a mismatch Extract stops with an error
// and the file is removed. Extraction is confined to dir: nothing outside
// it is created or followed, whatever dir holds.
func (b *Bundle) Extract(dir string) error {
	fail := func(format string, args ...any) error {
		return fmt.Errorf("bundle %s: extracting to %s: "+format, append([]any{b.path, dir}, args...)...)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fail("%v", err)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return fail("%v", err)
	}
	defer root.Close()
	f, err := os.Open(b.path)
	if err != nil {
		return fail("%v", err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(bufio.NewReader(f))
	if err != nil {
		return fail("archive changed since it was verified: %v", err)
	}
	tr := tar.NewReader(&limitReader{r: zr, left: b.lim.total})
	want := map[string]FileEntry{}
	for _, fe := range b.manifest.Files {
		want[fe.Path] = fe
	}
	done := map[string]bool{}
	special := 0
	for n := 0; n <= b.lim.entries; n++ {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fail("archive changed since it was verified: %v", err)
		}
		if hdr.Typeflag != tar.TypeReg {
			continue
		}
		name := hdr.Name
		fe, listed := want[name]
		switch {
		case name == ManifestName || name == SignatureName:
			if hdr.Size > b.lim.manifest || special == 2 {
				return fail("%s: archive changed since it was verified", name)
			}
			special++
			fe = FileEntry{Path: name, Size: hdr.Size}
		case !listed || done[name] || hdr.Size != fe.Size:
			return fail("%s: archive changed since it was verified", quoteName(name))
		}
		if err := extractOne(root, name, tr, fe); err != nil {
			return fail("%s: %v", name, err)
		}
		done[name] = true
	}
	for _, fe := range b.manifest.Files {
		if !done[fe.Path] {
			return fail("%s: missing from the archive (changed since it was verified?)", fe.Path)
		}
	}
	return nil
}

// extractOne writes one file under root, checking its SHA-256 unless
// fe has none (the manifest and its signature).
func extractOne(root *os.Root, name string, r io.Reader, fe FileEntry) error {
	if d := path.Dir(name); d != "." {
		if err := root.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	out, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("already exists in the target directory; extract into an empty directory")
		}
		return err
	}
	h := sha256.New()
	_, err = io.CopyN(io.MultiWriter(out, h), r, fe.Size)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err == nil && fe.SHA256 != "" && hex.EncodeToString(h.Sum(nil)) != fe.SHA256 {
		err = errors.New("SHA-256 mismatch; the bundle changed since it was verified")
	}
	if err != nil {
		root.Remove(name)
		return err
	}
	return nil
}
