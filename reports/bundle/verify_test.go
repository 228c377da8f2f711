package bundle

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const timeline = "tests/path-failover/blackhole-A0/timeline.json"

// tamper rewrites the sample bundle through edit and returns the new archive bytes.
func tamper(t *testing.T, edit func([]entry) []entry) []byte {
	t.Helper()
	p := writeSample(t, t.TempDir(), "run.tgz", newClock())
	return packEntries(t, edit(readEntries(t, p)))
}

func TestVerifyNamesEveryTamperedFile(t *testing.T) {
	for _, tc := range []struct {
		name string
		data func(t *testing.T) []byte
		file string // Problem.File; "*" for any
		want string // in Problem.Message
	}{
		{"modified byte", func(t *testing.T) []byte {
			return tamper(t, func(es []entry) []entry {
				for i := range es {
					if es[i].hdr.Name == timeline {
						es[i].data[3] ^= 0x20
					}
				}
				return es
			})
		}, timeline, "SHA-256 mismatch (manifest "},
		{"grown file", func(t *testing.T) []byte {
			return tamper(t, func(es []entry) []entry {
				for i := range es {
					if es[i].hdr.Name == timeline {
						es[i].data = append(es[i].data, ' ')
					}
				}
				return es
			})
		}, timeline, "size mismatch (manifest "},
		{"deleted file", func(t *testing.T) []byte {
			return tamper(t, func(es []entry) []entry {
				return slices.DeleteFunc(es, func(e entry) bool { return e.hdr.Name == timeline })
			})
		}, timeline, "file listed in manifest is missing"},
		{"extra file", func(t *testing.T) []byte {
			return tamper(t, func(es []entry) []entry { return append(es, regular("tests/extra.txt", "hi")) })
		}, "tests/extra.txt", "file not listed in manifest (extra)"},
		{"duplicate entry", func(t *testing.T) []byte {
			return tamper(t, func(es []entry) []entry {
				return append(es, regular(timeline, `{"forged":true}`))
			})
		}, timeline, "duplicate entry (2 copies in the archive)"},
		{"path traversal", func(t *testing.T) []byte {
			return tamper(t, func(es []entry) []entry { return append(es, regular("../evil", "x")) })
		}, "../evil", "unsafe path: path traversal"},
		{"absolute path", func(t *testing.T) []byte {
			return tamper(t, func(es []entry) []entry { return append(es, regular("/etc/cron.d/evil", "x")) })
		}, "/etc/cron.d/evil", "unsafe path: absolute path"},
		{"symlink", func(t *testing.T) []byte {
			return tamper(t, func(es []entry) []entry {
				return append(es, entry{tar.Header{Typeflag: tar.TypeSymlink, Name: "hosts/esx-01/link", Linkname: "/etc/passwd"}, nil})
			})
		}, "hosts/esx-01/link", "symlink entry (-> /etc/passwd) not allowed"},
		{"hard link", func(t *testing.T) []byte {
			return tamper(t, func(es []entry) []entry {
				return append(es, entry{tar.Header{Typeflag: tar.TypeLink, Name: "hosts/esx-01/hard", Linkname: timeline}, nil})
			})
		}, "hosts/esx-01/hard", "hard link entry"},
		{"device", func(t *testing.T) []byte {
			return tamper(t, func(es []entry) []entry {
				return append(es, entry{tar.Header{Typeflag: tar.TypeBlock, Name: "dev/sda", Devmajor: 8}, nil})
			})
		}, "dev/sda", "device or FIFO entry not allowed"},
		{"garbage manifest", func(t *testing.T) []byte {
			return tamper(t, func(es []entry) []entry {
				es[0].data = []byte("{not json")
				return es
			})
		}, ManifestName, "malformed JSON"},
		{"manifest entry with traversal", func(t *testing.T) []byte {
			return tamper(t, func(es []entry) []entry {
				es[0].data = bytes.Replace(es[0].data, []byte(`"lab/profile.yaml"`), []byte(`"../profile.yaml"`), 1)
				return es
			})
		}, ManifestName, "(../profile.yaml): path traversal"},
		{"future schema", func(t *testing.T) []byte {
			return tamper(t, func(es []entry) []entry {
				es[0].data = bytes.Replace(es[0].data, []byte(`"schema_version": 2`), []byte(`"schema_version": 3`), 1)
				return es
			})
		}, ManifestName, "schema_version 3 is not supported"},
		{"no manifest", func(t *testing.T) []byte {
			return tamper(t, func(es []entry) []entry { return es[1:] })
		}, ManifestName, "missing; this is not a certkit bundle"},
		{"truncated gzip", func(t *testing.T) []byte {
			data, err := os.ReadFile(writeSample(t, t.TempDir(), "run.tgz", newClock()))
			if err != nil {
				t.Fatal(err)
			}
			return data[:len(data)*2/3]
		}, "*", "archive truncated"}, // names the file being read when the stream broke
		{"truncated gzip trailer", func(t *testing.T) []byte {
			data, err := os.ReadFile(writeSample(t, t.TempDir(), "run.tgz", newClock()))
			if err != nil {
				t.Fatal(err)
			}
			return data[:len(data)-4] // every entry intact, CRC trailer cut
		}, "", "archive truncated after entry tests/path-failover/reset-B0/result.json"},
		{"not gzip", func(t *testing.T) []byte { return []byte("PK\x03\x04 this is a zip") }, "", "not a gzip-compressed archive"},
		{"empty file", func(t *testing.T) []byte { return nil }, "", "not a gzip-compressed archive"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, problems, err := verifyProblems(t, tc.data(t))
			if err == nil {
				t.Fatal("Verify accepted a tampered bundle")
			}
			found := false
			for _, p := range problems {
				if (p.File == tc.file || tc.file == "*") && strings.Contains(p.Message, tc.want) {
					found = true
				}
			}
			if !found {
				t.Errorf("no problem %q on %q in:\n%v", tc.want, tc.file, err)
			}
			if tc.file != "" && tc.file != "*" && !strings.Contains(err.Error(), ": "+tc.file+": ") {
				t.Errorf("error does not name %s:\n%v", tc.file, err)
			}
		})
	}
}

func TestVerifyErrorFormat(t *testing.T) {
	data := tamper(t, func(es []entry) []entry {
		for i := range es {
			if es[i].hdr.Name == timeline {
				es[i].data[0] ^= 1
			}
		}
		return es
	})
	_, _, err := verifyProblems(t, data)
	want := fmt.Sprintf(": %s: SHA-256 mismatch (manifest ", timeline)
	if err == nil || !strings.Contains(err.Error(), want) || strings.Count(err.Error(), "…") != 2 {
		t.Errorf("error = %v", err)
	}
}

func TestVerifyCollectsAllProblems(t *testing.T) {
	data := tamper(t, func(es []entry) []entry {
		es = slices.DeleteFunc(es, func(e entry) bool { return e.hdr.Name == "lab/profile.yaml" })
		for i := range es {
			if es[i].hdr.Name == timeline {
				es[i].data[0] ^= 1
			}
		}
		return append(es, regular("zz-extra", "x"), regular("../evil", "x"))
	})
	_, problems, err := verifyProblems(t, data)
	if err == nil {
		t.Fatal("tampered bundle verified")
	}
	var files []string
	for _, p := range problems {
		files = append(files, p.File)
	}
	want := []string{"../evil", "lab/profile.yaml", timeline, "zz-extra"}
	if !slices.Equal(files, want) {
		t.Errorf("problems on %q, want %q:\n%v", files, want, err)
	}
}

func TestReadRefusesTamperedBundle(t *testing.T) {
	data := tamper(t, func(es []entry) []entry { return append(es, regular("x", "y")) })
	p := filepath.Join(t.TempDir(), "t.tgz")
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if b, err := Read(p); err == nil || b != nil {
		t.Fatalf("Read of a tampered bundle = %v, %v", b, err)
	}
}

func TestVerifyIgnoresDirectoryEntries(t *testing.T) {
	data := tamper(t, func(es []entry) []entry {
		return append([]entry{{tar.Header{Typeflag: tar.TypeDir, Name: "tests/", Mode: 0o755}, nil}}, es...)
	})
	if _, problems, err := verifyProblems(t, data); err != nil {
		t.Fatalf("directory entry rejected: %v", problems)
	}
	data = tamper(t, func(es []entry) []entry {
		return append(es, entry{tar.Header{Typeflag: tar.TypeDir, Name: "../up/", Mode: 0o755}, nil})
	})
	if _, _, err := verifyProblems(t, data); err == nil || !strings.Contains(err.Error(), "../up/: unsafe directory entry") {
		t.Errorf("traversing directory entry: %v", err)
	}
}

// Limits are exercised with shrunk values; each gives a clear error, none reads past it.
func TestVerifyLimits(t *testing.T) {
	p := writeSample(t, t.TempDir(), "run.tgz", newClock())
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		lim  func(*limits)
		want string
	}{
		{"archive size", func(l *limits) { l.archive = fi.Size() - 1 }, "over the " + fmt.Sprint(fi.Size()-1) + "-byte limit"},
		{"entries", func(l *limits) { l.entries = 5 }, "more than 5 entries; refusing to read further"},
		{"entry size", func(l *limits) { l.entry = 100 }, "over the 100-byte limit"},
		{"manifest size", func(l *limits) { l.manifest = 100 }, "manifest.json: manifest is"},
		{"uncompressed total", func(l *limits) { l.total = 4096 }, "archive expands past the limit"},
		{"problems", func(l *limits) { l.entry, l.problems = 10, 2 }, "more problems not listed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lim := defaultLimits
			tc.lim(&lim)
			_, err := verify(p, lim)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want %q", err, tc.want)
			}
		})
	}
	// File() refuses what it would have to hold in memory beyond the limit.
	lim := defaultLimits
	lim.file = 10
	b, err := read(p, defaultLimits)
	if err != nil {
		t.Fatal(err)
	}
	b.lim = lim
	if _, err := b.File(timeline); err == nil || !strings.Contains(err.Error(), "over the 10-byte limit for in-memory reads") {
		t.Errorf("File over limit: %v", err)
	}
}

// An entry header claiming a huge size is rejected by the real limit without reading it.
func TestVerifyRejectsHugeEntryHeader(t *testing.T) {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "huge.bin", Size: MaxEntryBytes + 1, Mode: 0o644}); err != nil {
		t.Fatal(err)
	}
	tw.Write(make([]byte, 1024)) // then the stream ends: the archive is also truncated
	zw.Close()
	_, problems, err := verifyProblems(t, buf.Bytes())
	if err == nil {
		t.Fatal("accepted")
	}
	if !slices.ContainsFunc(problems, func(p Problem) bool {
		return p.File == "huge.bin" && strings.Contains(p.Message, fmt.Sprintf("over the %d-byte limit", MaxEntryBytes))
	}) {
		t.Errorf("problems: %v", err)
	}
}

func TestVerifyMissingFile(t *testing.T) {
	_, err := Verify(filepath.Join(t.TempDir(), "nope.tgz"))
	var ve *VerifyError
	if !errors.As(err, &ve) || !strings.Contains(err.Error(), "cannot open") {
		t.Errorf("Verify(missing) = %v", err)
	}
}

// A PAX sparse entry would expand to 1 GiB of zeros from a few hundred bytes of input.
func TestVerifyRejectsSparseEntry(t *testing.T) {
	recs := paxRec("GNU.sparse.major", "1") + paxRec("GNU.sparse.minor", "0") + paxRec("GNU.sparse.name", "big") + paxRec("GNU.sparse.realsize", "1073741824")
	var raw []byte
	raw = append(raw, rawHeader("PaxHeaders/big", tar.TypeXHeader, len(recs))...)
	raw = append(raw, pad([]byte(recs))...)
	data := append(pad([]byte("1\n1073741823\n1\n")), pad([]byte("x"))...)
	raw = append(raw, rawHeader("GNUSparseFile.0/big", tar.TypeReg, len(data))...)
	raw = append(raw, data...)
	raw = append(raw, make([]byte, 1024)...)
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(raw)
	zw.Close()
	_, problems, err := verifyProblems(t, buf.Bytes())
	if !slices.ContainsFunc(problems, func(p Problem) bool {
		return p.File == "big" && strings.Contains(p.Message, "sparse file entry not allowed")
	}) {
		t.Errorf("problems: %v", err)
	}
}
