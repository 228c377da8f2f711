package tgtd

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// testTimeout bounds each test's tgtd work.
const testTimeout = 30 * time.Second

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// start starts tgtd for the test, skipping it when tgtd is not installed.
func start(t *testing.T, o Options) *Target {
	t.Helper()
	d, err := Start(testContext(t), o)
	if errors.Is(err, ErrNotInstalled) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func TestStartConfiguresTheTarget(t *testing.T) {
	dir := t.TempDir()
	d := start(t, Options{
		IQN:     "iqn.2024-01.dev.certkit:tgtd-options",
		Portals: 2,
		LUNs: []LUN{
			{ID: 1, Backing: filepath.Join(dir, "lun1.img"), Size: 1 << 20},
			{ID: 2, Backing: filepath.Join(dir, "lun2.img"), Size: 2 << 20},
		},
		Params:   []Param{{"InitialR2T", "No"}},
		Accounts: []Account{{User: "alice", Password: "alice-secret-1"}, {User: "tgtd-self", Password: "tgtd-secret-12", Outgoing: true}},
	})
	if len(d.Portals) != 2 || d.Portals[0] == d.Portals[1] {
		t.Fatalf("portals %v, want two different ones", d.Portals)
	}
	for _, p := range d.Portals {
		c, err := net.Dial("tcp", p)
		if err != nil {
			t.Fatalf("portal %s: %v", p, err)
		}
		c.Close()
	}
	if got, want := d.URLs(2), "iscsi://"+d.Portals[1]+"/iqn.2024-01.dev.certkit:tgtd-options/2"; len(got) != 2 || got[1] != want {
		t.Errorf("URLs(2) = %v, want two ending with %s", got, want)
	}
	for i, size := range []int64{1 << 20, 2 << 20} {
		st, err := os.Stat(filepath.Join(dir, []string{"lun1.img", "lun2.img"}[i]))
		if err != nil || st.Size() != size {
			t.Errorf("LUN %d backing file: %v, size %v, want %d bytes", i+1, err, st, size)
		}
	}

	show, err := d.Admin(testContext(t), "--op", "show", "--mode", "target")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"Target 1: iqn.2024-01.dev.certkit:tgtd-options",
		"Backing store path: " + filepath.Join(dir, "lun1.img"),
		"Backing store path: " + filepath.Join(dir, "lun2.img"),
		"alice\n", "tgtd-self (outgoing)",
		"ACL information:\n        ALL",
	} {
		if !strings.Contains(show, want) {
			t.Errorf("tgtadm show lacks %q:\n%s", want, show)
		}
	}
	params, err := d.Admin(testContext(t), "--op", "show", "--mode", "target", "--tid", "1")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(params, "\nInitialR2T=No\n") {
		t.Errorf("target parameters lack InitialR2T=No:\n%s", params)
	}
}

// Close kills only its own tgtd and removes its control socket; another
// instance keeps working.
func TestCloseStopsOnlyItsOwnInstance(t *testing.T) {
	opts := func(name string) Options {
		return Options{IQN: "iqn.2024-01.dev.certkit:" + name, LUNs: []LUN{{ID: 1, Backing: filepath.Join(t.TempDir(), "lun1.img"), Size: 1 << 20}}}
	}
	a := start(t, opts("a"))
	b := start(t, opts("b"))
	if a.PID() == b.PID() || a.ctl == b.ctl {
		t.Fatalf("two instances share PID %d or control port %d", a.PID(), a.ctl)
	}
	if _, err := os.Stat(socket(a.ctl)); err != nil {
		t.Fatalf("running tgtd's control socket: %v", err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := syscall.Kill(a.PID(), 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("tgtd %d after Close: kill -0 says %v, want no such process", a.PID(), err)
	}
	for _, f := range []string{socket(a.ctl), socket(a.ctl) + ".lock"} {
		if _, err := os.Stat(f); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s after Close: %v, want it removed", f, err)
		}
	}
	if _, err := b.Admin(testContext(t), "--op", "show", "--mode", "sys"); err != nil {
		t.Errorf("the other tgtd after Close: %v", err)
	}
}

func TestMissingTgtdIsErrNotInstalled(t *testing.T) {
	saved := binaries
	t.Cleanup(func() { binaries = saved })
	binaries.tgtd = filepath.Join(t.TempDir(), "tgtd")
	_, err := Start(testContext(t), Options{IQN: "iqn.2024-01.dev.certkit:none", LUNs: []LUN{{ID: 1, Backing: filepath.Join(t.TempDir(), "x.img"), Size: 512}}})
	if !errors.Is(err, ErrNotInstalled) || !strings.Contains(err.Error(), binaries.tgtd) || !strings.Contains(err.Error(), "apt-get install -y tgt") {
		t.Fatalf("Start without tgtd: %v; want ErrNotInstalled naming the binary and `apt-get install -y tgt`", err)
	}
}

func TestStartRejectsIncompleteOptions(t *testing.T) {
	lun := LUN{ID: 1, Backing: filepath.Join(t.TempDir(), "x.img"), Size: 512}
	for name, o := range map[string]Options{
		"no IQN":                {LUNs: []LUN{lun}},
		"no LUN":                {IQN: "iqn.x:y"},
		"LUN 0":                 {IQN: "iqn.x:y", LUNs: []LUN{{ID: 0, Backing: lun.Backing, Size: 512}}},
		"no size":               {IQN: "iqn.x:y", LUNs: []LUN{{ID: 1, Backing: lun.Backing}}},
		"account, no password":  {IQN: "iqn.x:y", LUNs: []LUN{lun}, Accounts: []Account{{User: "u"}}},
		"two outgoing accounts": {IQN: "iqn.x:y", LUNs: []LUN{lun}, Accounts: []Account{{"u", "p", true}, {"v", "q", true}}},
	} {
		if _, err := Start(testContext(t), o); err == nil || errors.Is(err, ErrNotInstalled) {
			t.Errorf("%s: Start returned %v, want an error naming the bad option", name, err)
		}
	}
	if _, err := os.Stat(lun.Backing); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("rejected options created the backing file: %v", err)
	}
}
