package bundle

import (
	"fmt"
	"path"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Fixed names inside a bundle.
const (
	ManifestName    = "manifest.json"
	SignatureName   = "manifest.sig" // ed25519 signature of the manifest; optional, never listed in it
	ResultsJSONName = "results/results.json"
	JUnitName       = "results/junit.xml"
	ProfileName     = "lab/profile.yaml"

	// Per-test files, under TestDir(id).
	ResultFile   = "result.json"
	TimelineFile = "timeline.json" // fault timeline: [{at, action, array, portal, kind, fault_id, array_at, error}]
	EvidenceFile = "evidence.json" // what the verdict rests on (observer samples, I/O, limits); shape per test family
	SamplesFile  = "samples.json"
)

// SchemaVersion is the manifest schema this package writes and reads.
// Version 2 added completeness, catalog version, required tests, host and
// array versions, the redacted lab profile and manifest.sig.
const SchemaVersion = 2

// Limits that keep Verify and Read bounded on hostile input. A bundle that
// exceeds one is rejected with an error naming the limit.
const (
	MaxArchiveBytes   int64 = 4 << 30  // compressed .tgz size
	MaxTotalBytes     int64 = 16 << 30 // uncompressed tar stream
	MaxEntryBytes     int64 = 2 << 30  // one file
	MaxEntries              = 50_000   // tar entries, directories included
	MaxManifestBytes  int64 = 32 << 20 // manifest.json (parsed in memory)
	MaxFileBytes      int64 = 64 << 20 // (*Bundle).File, results.json, junit.xml and every JSON/XML file Verify parses
	MaxSignatureBytes       = 64 << 10 // manifest.sig
	MaxNameBytes            = 512      // one path
	MaxElemBytes            = 255      // one path element
	MaxProblems             = 1000     // problems collected by Verify before it stops listing
)

// limits is the set Verify uses; tests shrink it to exercise each bound.
type limits struct {
	archive, total, entry, manifest, file int64
	entries, problems                     int
	signature                             int64
}

var defaultLimits = limits{
	archive:   MaxArchiveBytes,
	total:     MaxTotalBytes,
	entry:     MaxEntryBytes,
	entries:   MaxEntries,
	manifest:  MaxManifestBytes,
	file:      MaxFileBytes,
	problems:  MaxProblems,
	signature: MaxSignatureBytes,
}

// checkName reports why name is not acceptable as a file path inside a
// bundle: it must be relative, clean, slash-separated, free of ".." and of
// characters that are unsafe on common filesystems or terminals.
func checkName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("empty path")
	case len(name) > MaxNameBytes:
		return fmt.Errorf("path longer than %d bytes", MaxNameBytes)
	case !utf8.ValidString(name):
		return fmt.Errorf("path is not valid UTF-8")
	case strings.HasPrefix(name, "/"):
		return fmt.Errorf("absolute path; bundle paths are relative")
	case strings.Contains(name, `\`):
		return fmt.Errorf(`backslash in path; use "/"`)
	}
	for _, elem := range strings.Split(name, "/") {
		switch {
		case elem == "..":
			return fmt.Errorf(`path traversal (".." element)`)
		case elem == "." || elem == "":
			return fmt.Errorf("not a clean path (want %s)", quoteName(path.Clean(name)))
		case len(elem) > MaxElemBytes:
			return fmt.Errorf("path element longer than %d bytes", MaxElemBytes)
		}
	}
	for _, r := range name {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) || strings.ContainsRune(`:*?"<>|`, r) {
			return fmt.Errorf("character %q not allowed in bundle paths", r)
		}
	}
	return nil
}

// quoteName renders an untrusted name for an error message: as is when it
// is plain, quoted when it holds anything a terminal could misread, and
// shortened when long.
func quoteName(name string) string {
	const max = 200
	if len(name) > max {
		name = strings.ToValidUTF8(name[:max], "") + "…"
	}
	plain := name != ""
	for _, r := range name {
		if r <= ' ' || r == 0x7f || r == utf8.RuneError || r == '"' || (r >= 0x80 && r < 0xa0) {
			plain = false
			break
		}
	}
	if plain {
		return name
	}
	return strconv.Quote(name)
}

// safeElem maps s (a host name, an address) to one path element: anything
// outside [A-Za-z0-9._-] becomes "_", so "127.0.0.1:2201" -> "127.0.0.1_2201".
func safeElem(s string) (string, error) {
	var b strings.Builder
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '_', r == '-':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	e := b.String()
	if e == "" || strings.Trim(e, ".") == "" || len(e) > MaxElemBytes {
		return "", fmt.Errorf("%s cannot be used as a directory name in a bundle", quoteName(s))
	}
	return e, nil
}

// HostDir is the directory of one host's evidence: "hosts/<host>". Characters
// that are unsafe in paths are replaced with "_".
func HostDir(host string) (string, error) {
	e, err := safeElem(host)
	if err != nil {
		return "", fmt.Errorf("host %s: %w", quoteName(host), err)
	}
	return "hosts/" + e, nil
}

// VMkernelLogPath is where the followed vmkernel.log of host goes.
func VMkernelLogPath(host string) (string, error) {
	d, err := HostDir(host)
	if err != nil {
		return "", err
	}
	return d + "/var/log/vmkernel.log", nil
}

// TestDir is the directory of one test's evidence: "tests/<id>". The id may
// contain "/" (nested directories) but must otherwise be a valid path.
func TestDir(id string) (string, error) {
	if id == "" {
		return "", fmt.Errorf(`test id "": empty id`)
	}
	p := "tests/" + id
	if err := checkName(p); err != nil {
		return "", fmt.Errorf("test id %s: %w", quoteName(id), err)
	}
	return p, nil
}

// TestPath is a file of one test's evidence, e.g. TestPath(id, TimelineFile).
func TestPath(id, file string) (string, error) {
	d, err := TestDir(id)
	if err != nil {
		return "", err
	}
	p := d + "/" + file
	if err := checkName(p); err != nil {
		return "", fmt.Errorf("test %s: file %s: %w", quoteName(id), quoteName(file), err)
	}
	return p, nil
}
