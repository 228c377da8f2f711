package conformance

import (
	"context"
	"time"

	"github.com/certkit/certkit/targets/tgtd"
)

// TgtdPackage is the Debian package of tgtd, the reference target (package
// targets/tgtd runs it).
const TgtdPackage = tgtd.Package

// ErrNoTgtd means tgtd is not installed.
var ErrNoTgtd = tgtd.ErrNotInstalled

// TgtdConfig describes a tgtd with one target and one file-backed LUN.
type TgtdConfig struct {
	IQN     string // target name
	Portals int    // loopback portals, all in one portal group; default 1
	Backing string // LUN 1's backing file, created or grown to Size
	Size    int64  // bytes
	// StartTimeout bounds start-up and configuration; default 10 s.
	StartTimeout time.Duration
	// PollInterval paces the readiness probes; default 10 ms.
	PollInterval time.Duration
}

// Tgtd is a running tgtd, killed with Close (or with the process that
// started it).
type Tgtd struct{ *tgtd.Target }

// URLs are the iscsi:// URLs of LUN 1, one per portal.
func (d *Tgtd) URLs() []string { return d.Target.URLs(1) }

// StartTgtd starts tgtd on fresh loopback ports with LUN 1 on the backing
// file, open to every initiator.
func StartTgtd(ctx context.Context, c TgtdConfig) (*Tgtd, error) {
	d, err := tgtd.Start(ctx, tgtd.Options{
		IQN:          c.IQN,
		Portals:      c.Portals,
		LUNs:         []tgtd.LUN{{ID: 1, Backing: c.Backing, Size: c.Size}},
		StartTimeout: c.StartTimeout,
		PollInterval: c.PollInterval,
	})
	if err != nil {
		return nil, err
	}
	return &Tgtd{d}, nil
}
