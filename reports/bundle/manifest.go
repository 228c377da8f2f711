package bundle

import (
	"encoding/hex"
	"fmt"
	"time"
)

// Manifest is manifest.json: what the bundle is and the checksum of every
// other file in it.
type Manifest struct {
	SchemaVersion int    `json:"schema_version"`
	ToolVersion   string `json:"tool_version"`
	Suite         string `json:"suite,omitempty"`
	// CatalogVersion is the version of the certification catalog the run
	// used; Required lists the test IDs that catalog version requires.
	CatalogVersion string   `json:"catalog_version,omitempty"`
	Required       []string `json:"required,omitempty"`
	// Completeness says how the bundle was sealed: CompletenessComplete by
	// the run itself, CompletenessFinalized by `certkit bundle finalize`
	// after the run died; CompletenessInProgress only in a staging directory.
	Completeness string    `json:"completeness"`
	CreatedAt    time.Time `json:"created_at"`
	FinishedAt   time.Time `json:"finished_at,omitzero"` // zero while the run is in progress
	// Finalization is set when Completeness is CompletenessFinalized.
	Finalization *Finalization        `json:"finalization,omitempty"`
	Lab          map[string]any       `json:"lab,omitempty"`         // free-form lab summary, secrets redacted
	LabProfile   map[string]any       `json:"lab_profile,omitempty"` // the lab profile (also lab/profile.yaml), secrets redacted
	Hosts        map[string]Component `json:"hosts,omitempty"`       // host name -> what the host reported itself as
	Arrays       map[string]Component `json:"arrays,omitempty"`      // array name -> what the array reported itself as
	Files        []FileEntry          `json:"files"`                 // sorted by path; manifest.json and manifest.sig are not listed
}

// Completeness values of a manifest.
const (
	CompletenessInProgress = "in_progress" // the staging manifest of a run still going (or killed)
	CompletenessComplete   = "complete"    // sealed by the run (Writer.Close)
	CompletenessFinalized  = "finalized"   // sealed by Finalize after the run died
)

// Component identifies a host or an array of the lab, as it reported itself
// (for ESXi: `esxcli system version get`).
type Component struct {
	Product string `json:"product,omitempty"` // e.g. "VMware ESXi"
	Version string `json:"version"`           // e.g. "8.0.3"
	Build   string `json:"build,omitempty"`   // e.g. "24022510"
	// Extra holds further identity: update, patch, model, firmware, SATP/PSP
	// or MEM versions. Values of keys that name secrets are redacted.
	Extra map[string]string `json:"extra,omitempty"`
}

// Finalization records how a bundle was sealed after its run died.
type Finalization struct {
	// ToolVersion is the certkit that finalized it (it may differ from the
	// one that ran).
	ToolVersion string `json:"tool_version"`
	// LastWriteAt is when the run last wrote evidence: about when it died.
	LastWriteAt time.Time `json:"last_write_at,omitzero"`
	// NoVerdict lists the tests recorded as errors by finalize: those in
	// progress when the run died and required tests it never reached.
	NoVerdict []string `json:"no_verdict,omitempty"`
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
	if f.Path == ManifestName || f.Path == SignatureName {
		return fmt.Errorf("manifest lists %s, which it must not (it cannot hold its own checksum)", f.Path)
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
