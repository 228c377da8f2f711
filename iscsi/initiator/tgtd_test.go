package initiator

import (
	"context"
	"errors"
	"path/filepath"
	"testing"

	reftgt "github.com/certkit/certkit/targets/tgtd"
)

// tgtd is a Debian tgtd instance on a loopback port: an iSCSI target this
// initiator did not grow up with, so the tests check interoperability
// rather than agreement with ourselves.
type tgtd struct {
	*reftgt.Target
	Addr string // its portal, 127.0.0.1:port
}

const (
	tgtdIQN = "iqn.2024-01.dev.certkit:tgtd"
	// tgtdLUNSize is LUN 1's size: big enough for the largest test transfer
	// at a few offsets.
	tgtdLUNSize = 16 << 20
)

// startTgtd runs tgtd with one target (tgtdIQN) whose LUN 1 is a file in
// t.TempDir(), applying target-level parameters (tgtadm --op update)
// before binding it to every initiator. It skips the test when tgtd is not
// installed.
func startTgtd(t *testing.T, params ...[2]string) *tgtd {
	t.Helper()
	o := reftgt.Options{
		IQN:  tgtdIQN,
		LUNs: []reftgt.LUN{{ID: 1, Backing: filepath.Join(t.TempDir(), "lun1.img"), Size: tgtdLUNSize}},
	}
	for _, p := range params {
		o.Params = append(o.Params, reftgt.Param{Name: p[0], Value: p[1]})
	}
	d, err := reftgt.Start(context.Background(), o)
	if errors.Is(err, reftgt.ErrNotInstalled) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return &tgtd{Target: d, Addr: d.Portals[0]}
}

// adm runs tgtadm against d.
func (d *tgtd) adm(args ...string) error {
	_, err := d.Admin(context.Background(), args...)
	return err
}
