package array_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/certkit/certkit/iscsi/initiator"
	"github.com/certkit/certkit/targets/array"
	"github.com/certkit/certkit/targets/control"
)

// An array of several targets, as real arrays serve them: every target
// through every portal of every controller, each with its own LUNs (and
// its own LUN 0), CHAP account and ACL; ALUA states and faults belong to
// the controllers and so reach every target.

// twoTargets is aluaConfig's two controllers (A AO, B standby, both behind
// fault proxies) serving the targets db (LUNs 0 and 1) and logs (LUN 0).
func twoTargets(name string) array.Config {
	cfg := aluaConfig(name)
	cfg.Target, cfg.LUNs = "", nil
	cfg.Targets = []array.Target{
		{Name: "iqn.2024-01.io.certkit:" + name + ".db", LUNs: []array.LUN{{ID: 0, Size: "4MiB"}, {ID: 1, Size: "1MiB"}}},
		{Name: "iqn.2024-01.io.certkit:" + name + ".logs", LUNs: []array.LUN{{ID: 0, Size: "2MiB"}}},
	}
	return cfg
}

func loginTarget(t *testing.T, ctx context.Context, a *array.Array, portal, iqn string, isid byte) *initiator.Session {
	t.Helper()
	s, err := initiator.Login(ctx, initiator.Options{InitiatorName: initiatorIQN, TargetName: iqn,
		Address: portalAddr(a, portal), ISID: [6]byte{0x80, 0, 0, 0, 4, isid}})
	if err != nil {
		t.Fatalf("login to %s via %s: %v", iqn, portal, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestEachTargetHasItsOwnLUNsOnEveryPortal(t *testing.T) {
	cfg := twoTargets("two")
	db, logs := cfg.Targets[0].Name, cfg.Targets[1].Name
	a := startArray(t, cfg, array.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*ioTimeout)
	defer cancel()
	info := a.Info()
	if fmt.Sprint(a.Targets()) != fmt.Sprint([]string{db, logs}) || len(info.Targets) != 2 || len(info.Targets[0].LUNs) != 2 || len(info.Targets[1].LUNs) != 1 {
		t.Fatalf("Targets() %v, Info targets %+v; want db with LUNs 0 and 1, logs with LUN 0", a.Targets(), info.Targets)
	}
	// NAAs: the first target's as a one-target array has them, the
	// others' from their IQN; all distinct.
	naas := map[string]string{
		db + "/0":   array.NAA(cfg.Name, 0),
		db + "/1":   array.NAA(cfg.Name, 1),
		logs + "/0": array.TargetNAA(cfg.Name, logs, 0),
	}
	for _, tg := range info.Targets {
		for _, l := range tg.LUNs {
			if want := naas[fmt.Sprintf("%s/%d", tg.IQN, l.ID)]; l.NAA != want {
				t.Errorf("Info: %s LUN %d has NAA %s, want %s", tg.IQN, l.ID, l.NAA, want)
			}
		}
	}
	if len(slices.Compact(slices.Sorted(func(yield func(string) bool) {
		for _, v := range naas {
			yield(v)
		}
	}))) != 3 {
		t.Errorf("NAAs are not distinct: %v", naas)
	}

	// Discovery lists both targets with every portal and its TPGT.
	found, err := initiator.Discover(ctx, portalAddr(a, "B0"), initiatorIQN)
	if err != nil {
		t.Fatal(err)
	}
	var portals []initiator.Portal
	for _, p := range info.Portals {
		portals = append(portals, initiator.Portal{Address: p.Address, Tag: p.TPGT})
	}
	if want := []initiator.Target{{Name: db, Portals: portals}, {Name: logs, Portals: portals}}; fmt.Sprint(found) != fmt.Sprint(want) {
		t.Errorf("SendTargets=All:\n%v\nwant\n%v", found, want)
	}

	// Each target's LUN 0 holds its own data, and shows the same NAA on
	// every path. (B is standby: it answers INQUIRY, not READ.)
	dbData, logsData := bytes.Repeat([]byte("db-lun-0"), 512), bytes.Repeat([]byte("logs-0!!"), 512)
	if err := loginTarget(t, ctx, a, "A0", db, 1).Write(ctx, 0, 0, dbData, blockSize); err != nil {
		t.Fatal(err)
	}
	if err := loginTarget(t, ctx, a, "A0", logs, 1).Write(ctx, 0, 0, logsData, blockSize); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		iqn  string
		data []byte
	}{{db, dbData}, {logs, logsData}} {
		m, err := a.LUNsOf(tc.iqn)
		if err != nil {
			t.Fatal(err)
		}
		if sum, err := m.Checksum(0, 0, int64(len(tc.data))); err != nil || sum != sha(tc.data) {
			t.Errorf("%s LUN 0 checksum %s %v, want the data written to that target", tc.iqn, sum, err)
		}
		for i, p := range info.Portals {
			s := loginTarget(t, ctx, a, p.ID, tc.iqn, byte(10+i))
			vpd, err := s.Inquiry(ctx, 0, true, 0x83)
			if err != nil {
				t.Fatal(err)
			}
			if naa, err := initiator.DeviceNAA(vpd); err != nil || naa != naas[tc.iqn+"/0"] {
				t.Errorf("%s LUN 0 via %s: NAA %s %v, want %s", tc.iqn, p.ID, naa, err, naas[tc.iqn+"/0"])
			}
			if p.ID == "A0" {
				if got, err := s.Read(ctx, 0, 0, uint32(len(tc.data)/blockSize), blockSize); err != nil || !bytes.Equal(got, tc.data) {
					t.Errorf("%s LUN 0 read back: %v, want its own data", tc.iqn, err)
				}
			}
		}
	}
	// REPORT LUNS is per target.
	if got := reportLUNs(t, ctx, loginTarget(t, ctx, a, "A0", logs, 20)); got != "[0]" {
		t.Errorf("REPORT LUNS of logs = %s, want [0]", got)
	}
}

// A controller's ALUA state is the same whichever target a host reaches
// through it, and a change is announced on every target's LUs.
func TestALUAStatesHoldForEveryTarget(t *testing.T) {
	cfg := twoTargets("two-alua")
	a := startArray(t, cfg, array.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	var viaB []*initiator.Session
	for i, tg := range cfg.Targets {
		s := loginTarget(t, ctx, a, "B0", tg.Name, byte(i))
		_, err := s.Read(ctx, 0, 0, 1, blockSize)
		wantSense(t, err, 2, 0x04, 0x0b) // standby
		viaB = append(viaB, s)
	}
	if _, err := a.SetALUA(2, "AO"); err != nil {
		t.Fatal(err)
	}
	for i, s := range viaB {
		_, err := s.Read(ctx, 0, 0, 1, blockSize)
		wantSense(t, err, 6, 0x2a, 0x06)
		if _, err := s.Read(ctx, 0, 0, 1, blockSize); err != nil {
			t.Fatalf("%s via B once it is AO: %v", cfg.Targets[i].Name, err)
		}
	}
}

// A controller crash resets its portals: the sessions of every target on
// them die; those through the other controller live on.
func TestControllerCrashDropsEveryTargetsSessions(t *testing.T) {
	cfg := twoTargets("two-crash")
	a := startArray(t, cfg, array.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 4*ioTimeout)
	defer cancel()
	var onA, onB []*initiator.Session
	for i, tg := range cfg.Targets {
		onA = append(onA, loginTarget(t, ctx, a, "A0", tg.Name, byte(i)))
		onB = append(onB, loginTarget(t, ctx, a, "B0", tg.Name, byte(i)))
	}
	rec, err := a.InjectFault(control.InjectRequest{Controller: "A", FaultSpec: control.FaultSpec{Kind: array.FaultCrash}})
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range onA {
		select {
		case <-s.Done():
		case <-ctx.Done():
			t.Fatalf("the session to %s on crashed controller A survived", cfg.Targets[i].Name)
		}
	}
	for i, s := range onB {
		// B is standby and took A's crash as a state change: the UA, then
		// standby's NOT READY, both from a live session.
		if err := s.TestUnitReady(ctx, 0); err == nil || errors.Is(err, initiator.ErrClosed) {
			t.Fatalf("%s via B after the crash: %v, want a SCSI answer", cfg.Targets[i].Name, err)
		}
		if _, err := s.Inquiry(ctx, 0, false, 0); err != nil {
			t.Fatalf("%s via B after the crash: %v", cfg.Targets[i].Name, err)
		}
	}
	if _, err := a.Revert(rec.ID); err != nil {
		t.Fatal(err)
	}
	for i, tg := range cfg.Targets {
		if err := readOnce(ctx, loginTarget(t, ctx, a, "A0", tg.Name, byte(10+i))); err != nil {
			t.Fatalf("%s via A after the revert: %v", tg.Name, err)
		}
	}
}

// LUN changes name their target; the array-wide methods of a one-target
// array refuse to guess with several.
func TestLUNChangesStayWithTheirTarget(t *testing.T) {
	cfg := twoTargets("two-luns")
	db, logs := cfg.Targets[0].Name, cfg.Targets[1].Name
	a := startArray(t, cfg, array.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	sdb, slogs := loginTarget(t, ctx, a, "A0", db, 1), loginTarget(t, ctx, a, "A0", logs, 1)

	mdb, err := a.LUNsOf(strings.ToUpper(db)) // iSCSI names compare case-insensitively
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mdb.AddLUN(control.AddLUNRequest{ID: 3, Size: "1MiB"}); err != nil {
		t.Fatal(err)
	}
	wantSense(t, sdb.TestUnitReady(ctx, 0), ua, ascLUNsChanged, ascqLUNsChanged)
	if got := reportLUNs(t, ctx, sdb); got != "[0 1 3]" {
		t.Errorf("REPORT LUNS of db after the add = %s, want [0 1 3]", got)
	}
	if err := slogs.TestUnitReady(ctx, 0); err != nil {
		t.Errorf("logs LUN 0 after a LUN was added to db: %v, want no unit attention", err)
	}
	if got := reportLUNs(t, ctx, slogs); got != "[0]" {
		t.Errorf("REPORT LUNS of logs after db's add = %s, want [0]", got)
	}

	mlogs, err := a.LUNsOf(logs)
	if err != nil {
		t.Fatal(err)
	}
	if l, err := mlogs.ResizeLUN(0, "4MiB"); err != nil || l.SizeBytes != 4<<20 || l.NAA != array.TargetNAA(cfg.Name, logs, 0) {
		t.Fatalf("resize of logs LUN 0: %+v %v", l, err)
	}
	wantSense(t, slogs.TestUnitReady(ctx, 0), ua, ascCapacity, ascqCapacity)
	if blocks, _, err := sdb.ReadCapacity(ctx, 0); err != nil || blocks != 4<<20/blockSize {
		t.Errorf("db LUN 0 after logs LUN 0 grew: %d blocks %v, want its own 4 MiB", blocks, err)
	}

	image := filepath.Join(t.TempDir(), "shared.img")
	if _, err := mdb.AddLUN(control.AddLUNRequest{ID: 4, Size: "1MiB", Backing: "file", Path: image}); err != nil {
		t.Fatal(err)
	}
	if _, err := mlogs.AddLUN(control.AddLUNRequest{ID: 4, Size: "1MiB", Backing: "file", Path: image}); !errors.Is(err, control.ErrConflict) || !strings.Contains(err.Error(), "LUN 4 of target "+db) {
		t.Errorf("logs LUN on db's image file: %v, want a conflict naming db's LUN 4", err)
	}

	for name, call := range map[string]func() error{
		"AddLUN":    func() error { _, err := a.AddLUN(control.AddLUNRequest{ID: 5, Size: "1MiB"}); return err },
		"RemoveLUN": func() error { return a.RemoveLUN(0) },
		"ResizeLUN": func() error { _, err := a.ResizeLUN(0, "8MiB"); return err },
		"Checksum":  func() error { _, err := a.Checksum(0, 0, 0); return err },
	} {
		if err := call(); !errors.Is(err, control.ErrInvalid) || !strings.Contains(err.Error(), db+", "+logs) {
			t.Errorf("Array.%s with two targets: %v, want an invalid-request error naming both targets", name, err)
		}
	}
	if _, err := a.LUNsOf("iqn.2024-01.io.certkit:nope"); !errors.Is(err, control.ErrNotFound) || !strings.Contains(err.Error(), db+", "+logs) {
		t.Errorf("LUNsOf an unknown target: %v, want not found naming the targets", err)
	}
}

// CHAP and ACL per target and CHAP for discovery, from the YAML to the
// wire.
func TestTargetsAuthFromYAML(t *testing.T) {
	t.Setenv("CERTKIT_TEST_DB", "db-chap-secret-1")
	t.Setenv("CERTKIT_TEST_LOGS", "logs-chap-secret")
	t.Setenv("CERTKIT_TEST_DISC", "discovery-secret")
	cfg, err := array.Parse([]byte(`
name: two-auth
targets:
  - name: iqn.2024-01.io.certkit:two-auth.db
    luns: [{id: 0, size: 1MiB}]
    auth: {chap: {name: db-hosts, secret_env: CERTKIT_TEST_DB}}
    acl: [`+initiatorIQN+`]
  - name: iqn.2024-01.io.certkit:two-auth.logs
    luns: [{id: 0, size: 1MiB}]
    auth: {chap: {name: logs-hosts, secret_env: CERTKIT_TEST_LOGS}}
controllers: [{name: A, portals: [{listen: "127.0.0.1:0"}]}]
discovery_auth: {chap: {name: discovery, secret_env: CERTKIT_TEST_DISC}}
`), "two-auth.yaml")
	if err != nil {
		t.Fatal(err)
	}
	a := startArray(t, cfg, array.Options{})
	db, logs := cfg.Targets[0].Name, cfg.Targets[1].Name
	addr := portalAddr(a, "A0")
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	disc := &initiator.CHAP{Name: "discovery", Secret: "discovery-secret"}
	for _, tc := range []struct {
		who  string
		chap *initiator.CHAP
		want []string
	}{
		{initiatorIQN, disc, []string{db, logs}},
		{libiscsiIQ, disc, []string{logs}}, // not in db's acl
	} {
		found, err := initiator.DiscoverWith(ctx, initiator.Options{InitiatorName: tc.who, Address: addr, CHAP: tc.chap})
		var got []string
		for _, f := range found {
			got = append(got, f.Name)
		}
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("discovery by %s: %v %v, want %v", tc.who, got, err, tc.want)
		}
	}
	if _, err := initiator.DiscoverWith(ctx, initiator.Options{InitiatorName: initiatorIQN, Address: addr,
		CHAP: &initiator.CHAP{Name: "db-hosts", Secret: "db-chap-secret-1"}}); err == nil {
		t.Error("discovery with a target's account instead of discovery_auth succeeded")
	}
	for _, tc := range []struct {
		target, name, secret string
		ok                   bool
	}{
		{db, "db-hosts", "db-chap-secret-1", true},
		{db, "logs-hosts", "logs-chap-secret", false},
		{logs, "logs-hosts", "logs-chap-secret", true},
	} {
		s, err := initiator.Login(ctx, initiator.Options{InitiatorName: initiatorIQN, TargetName: tc.target, Address: addr,
			CHAP: &initiator.CHAP{Name: tc.name, Secret: tc.secret}})
		if err == nil {
			s.Close()
		}
		if (err == nil) != tc.ok {
			t.Errorf("login to %s as %s: %v, want success %v", tc.target, tc.name, err, tc.ok)
		}
	}
}

func TestTargetsConfigNamesTheFieldPath(t *testing.T) {
	const head = `
name: t2
targets:
  - name: iqn.2024-01.io.certkit:t2.db
    luns: [{id: 0, size: 64MiB}, {id: 1, size: 1GiB, backing: file, path: /tmp/t2-db1.img}]
  - name: iqn.2024-01.io.certkit:t2.logs
    luns: [{id: 0, size: 64MiB}]
`
	const tail = `controllers: [{name: A, portals: [{listen: "127.0.0.1:0"}]}]
`
	good := head + tail
	c, err := array.Parse([]byte(good), "good.yaml")
	if err != nil {
		t.Fatalf("valid config: %v", err)
	}
	if ts := c.AllTargets(); len(ts) != 2 || ts[1].LUNs[0].ID != 0 || ts[1].Name != "iqn.2024-01.io.certkit:t2.logs" {
		t.Errorf("AllTargets() = %+v", ts)
	}
	short, err := array.Parse([]byte("name: s\ntarget: iqn.2024-01.io.certkit:s\nluns: [{id: 0, size: 1MiB}]\nacl: ["+initiatorIQN+"]\n"+tail), "short.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if ts := short.AllTargets(); len(ts) != 1 || ts[0].Name != "iqn.2024-01.io.certkit:s" || len(ts[0].LUNs) != 1 || len(ts[0].ACL) != 1 {
		t.Errorf("the shorthand's AllTargets() = %+v", ts)
	}
	lastTarget := func(field string) string { return head + "    " + field + "\n" + tail }
	cases := []struct{ yaml, want string }{
		{strings.Replace(good, "name: t2\n", "name: t2\ntarget: iqn.2024-01.io.certkit:t2\nacl: ["+initiatorIQN+"]\n", 1),
			"targets and the one-target shorthand (target, acl) are both set: move target, acl into an entry of targets"},
		{strings.Replace(good, "luns: [{id: 0, size: 64MiB}]", "luns: [{id: 0, size: 64MB}]", 1), "targets[1].luns[0].size: \"64MB\""},
		{strings.Replace(good, "t2.logs", "t2.db", 1), "targets[1].name \"iqn.2024-01.io.certkit:t2.db\": also the name of targets[0]"},
		{strings.Replace(good, "t2.logs", "T2.logs", 1), "targets[1].name \"iqn.2024-01.io.certkit:T2.logs\": want a lowercase iSCSI name"},
		{strings.Replace(good, "    luns: [{id: 0, size: 64MiB}]\n", "", 1), "targets[1].luns: none given"},
		{strings.Replace(good, "{id: 1, size: 1GiB", "{id: 0, size: 1GiB", 1), "targets[0].luns[1].id 0: used twice"},
		{strings.Replace(good, "luns: [{id: 0, size: 64MiB}]", "luns: [{id: 0, size: 64MiB, backing: file, path: /tmp/t2-db1.img}]", 1),
			"targets[1].luns[0].path \"/tmp/t2-db1.img\": also the image of targets[0].luns[1]"},
		{lastTarget("auth: {chap: {secret: logs-chap-secret}}"), "targets[1].auth.chap.name: empty"},
		{lastTarget("acl: [esx-01]"), "targets[1].acl[0] \"esx-01\": want a lowercase initiator name"},
		{good + "discovery_auth: {}\n", "discovery_auth: no chap"},
		{strings.Replace(good, "targets:", "tragets:", 1), "field tragets not found"},
	}
	for _, tc := range cases {
		_, err := array.Parse([]byte(tc.yaml), "bad.yaml")
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "bad.yaml") {
			t.Errorf("error %v\nwant it to name bad.yaml and contain %q", err, tc.want)
		}
	}
}

// libiscsi's iscsi-ls, an independent initiator, discovers both targets on
// every portal and logs in to each to list its own LUNs.
func TestLibiscsiSeesEveryTarget(t *testing.T) {
	if _, err := exec.LookPath("iscsi-ls"); err != nil {
		t.Skip("iscsi-ls not installed: apt-get install -y libiscsi-bin")
	}
	cfg := twoTargets("two-libiscsi")
	cfg.Controllers[1].ALUAState = "" // iscsi-ls reads capacities: every port active
	a := startArray(t, cfg, array.Options{})
	out := runTool(t, "iscsi-ls", "-s", "iscsi://"+portalAddr(a, "B0"))
	for _, tg := range cfg.Targets {
		for _, p := range a.Info().Portals {
			if !strings.Contains(out, fmt.Sprintf("Target:%s Portal:%s,%d", tg.Name, p.Address, p.TPGT)) {
				t.Errorf("iscsi-ls does not list %s at portal %s,%d:\n%s", tg.Name, p.Address, p.TPGT, out)
			}
		}
	}
	// Under each target and portal, the LUNs of that target: db has LUNs 0
	// and 1, logs only its own LUN 0.
	luns := map[string][]string{} // target -> LUN lines, one listing per portal
	var cur string
	for _, line := range strings.Split(out, "\n") {
		if m := regexp.MustCompile(`^Target:(\S+) `).FindStringSubmatch(line); m != nil {
			cur = m[1]
		} else if m := regexp.MustCompile(`^Lun:(\d+)`).FindStringSubmatch(line); m != nil {
			luns[cur] = append(luns[cur], m[1])
		}
	}
	if got := fmt.Sprint(luns[cfg.Targets[0].Name]); got != "[0 1 0 1]" {
		t.Errorf("iscsi-ls -s: %s LUNs %s, want [0 1] at each of the 2 portals:\n%s", cfg.Targets[0].Name, got, out)
	}
	if got := fmt.Sprint(luns[cfg.Targets[1].Name]); got != "[0 0]" {
		t.Errorf("iscsi-ls -s: %s LUNs %s, want [0] at each of the 2 portals:\n%s", cfg.Targets[1].Name, got, out)
	}
}

// The control API reaches each target's LUNs under /v1/targets/{iqn}/luns;
// /v1/luns, meant for an array's only target, names the targets instead of
// guessing.
func TestEachTargetsLUNsOverTheControlAPI(t *testing.T) {
	cfg := twoTargets("two-api")
	db, logs := cfg.Targets[0].Name, cfg.Targets[1].Name
	a := startArray(t, cfg, array.Options{})
	srv, err := control.Serve("127.0.0.1:0", a, "tok")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	c := control.NewClient(srv.URL(), "tok")
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()

	if _, err := c.Target(logs).AddLUN(ctx, control.AddLUNRequest{ID: 2, Size: "1MiB"}); err != nil {
		t.Fatal(err)
	}
	s := loginTarget(t, ctx, a, "A0", logs, 1)
	_ = s.TestUnitReady(ctx, 0) // consume the unit attention the add raised
	data := make([]byte, 8*blockSize)
	rand.New(rand.NewSource(7)).Read(data)
	if err := s.Write(ctx, 2, 0, data, blockSize); err != nil {
		t.Fatal(err)
	}
	if sum, err := c.Target(logs).Checksum(ctx, 2, 0, int64(len(data))); err != nil || sum != sha(data) {
		t.Fatalf("checksum of logs LUN 2 = %s, %v; want %s", sum, err, sha(data))
	}
	if _, err := c.Target(db).Checksum(ctx, 2, 0, 0); !errors.Is(err, control.ErrNotFound) {
		t.Errorf("checksum of db LUN 2 (only logs has one): %v, want not found", err)
	}
	if _, err := c.AddLUN(ctx, control.AddLUNRequest{ID: 5, Size: "1MiB"}); !errors.Is(err, control.ErrInvalid) || !strings.Contains(err.Error(), db+", "+logs) {
		t.Errorf("/v1/luns on an array of two targets: %v, want 400 naming both", err)
	}
	if err := c.Target("iqn.2024-01.io.certkit:nope").RemoveLUN(ctx, 0); !errors.Is(err, control.ErrNotFound) || !strings.Contains(err.Error(), "nope") {
		t.Errorf("an unknown target: %v, want not found", err)
	}
	if err := c.Target(logs).RemoveLUN(ctx, 2); err != nil {
		t.Fatal(err)
	}
	info, err := c.Info(ctx)
	if err != nil || len(info.Targets) != 2 || len(info.Targets[1].LUNs) != 1 {
		t.Fatalf("info after the remove: %+v %v", info, err)
	}
}
