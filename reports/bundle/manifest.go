package bundle

import (
	"encoding/hex"
	"fmt"
	"time"
)

// Manifest is manifest.json: what the bundle is and the checksum of every
// other file in it.
type Manifest struct {
	SchemaVersion int            `json:"schema_version"`
	ToolVersion   string         `json:"tool_version"`
	Suite         string         `json:"suite,omitempty"`
	CreatedAt     time.Time      `json:"created_at"`
	FinishedAt    time.Time      `json:"finished_at,omitzero"` // zero while the run is in progress
	Lab           map[string]any `json:"lab,omitempty"`        // free-form lab summary, secrets redacted
	Files         []FileEntry    `json:"files"`                // sorted by path; manifest.json itself is not listed
}

// FileEntry is one file listed in the manifest.
type FileEntry struct {
	Path   string `json:"path"`
	SHA256 string `json:"sha256"` // lowercase hex
	Size   int64  `json:"size"`
}

// File returns the entry for name.
func (m *Manifest) File(name string) (FileEntry, bool) {
	for _, f := range m.Files {
		if f.Path == name {
			return f, true
		}
	}
	return FileEntry{}, false
}

// checkEntry validates one manifest entry; it does not look at the archive.
func (f FileEntry) check() error {
	if err := checkName(f.Path); err != nil {
		return err
	}
	if f.Path == ManifestName {
		return fmt.Errorf("manifest lists itself")
	}
	if b, err := hex.DecodeString(f.SHA256); err != nil || len(b) != 32 || hex.EncodeToString(b) != f.SHA256 {
		return fmt.Errorf("sha256 %q is not 64 lowercase hex digits", shorten(f.SHA256, 80))
	}
	if f.Size < 0 {
		return fmt.Errorf("negative size %d", f.Size)
	}
	return nil
}

func shorten(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
