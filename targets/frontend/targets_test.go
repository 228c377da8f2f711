package frontend_test

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/certkit/certkit/iscsi"
	"github.com/certkit/certkit/iscsi/initiator"
	"github.com/certkit/certkit/targets/frontend"
	"github.com/certkit/certkit/targets/frontend/frontendtest"
)

// Several targets on one server, as an array serves them: every target on
// every portal, each with its own SCSI layer, CHAP account and ACL.

const (
	dbIQN   = "iqn.2024-01.io.certkit:array.db"
	logsIQN = "iqn.2024-01.io.certkit:array.logs"
)

// twoTargets is a server of the targets db and logs (each on its own fake
// disk) on two portals, TPGT 1 and 2.
type twoTargets struct {
	*frontend.Server
	db, logs *fakeSCSI
	log      *logSink
}

func startTwo(t *testing.T, mod func(c *frontend.Config)) *twoTargets {
	t.Helper()
	s := &twoTargets{db: newFake(), logs: newFake(), log: &logSink{}}
	cfg := frontend.Config{
		Targets:      []frontend.Target{{Name: dbIQN, SCSI: s.db}, {Name: logsIQN, SCSI: s.logs}},
		Portals:      []frontend.Portal{{Listen: "127.0.0.1:0", TPGT: 1}, {Listen: "127.0.0.1:0", TPGT: 2}},
		LoginTimeout: loginTimeout,
		Logf:         s.log.logf(t),
	}
	if mod != nil {
		mod(&cfg)
	}
	srv, err := frontend.Listen(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	s.Server = srv
	return s
}

// loginTo logs a raw session in to target at addr.
func loginTo(t *testing.T, addr, target string, id byte) *frontendtest.Conn {
	t.Helper()
	c, err := frontendtest.Normal(addr, initiatorIQN, target, isid(id), ioTimeout)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// sendTargets asks SendTargets=value on a logged-in connection.
func sendTargets(t *testing.T, c *frontendtest.Conn, value string) iscsi.Text {
	t.Helper()
	p := iscsi.New(iscsi.OpTextReq)
	p.SetFlags(iscsi.FlagFinal)
	p.SetITT(c.NextITT())
	p.SetTTT(iscsi.ReservedTag)
	p.SetCmdSN(c.CmdSN)
	c.CmdSN++
	p.Data = iscsi.Text{{Key: "SendTargets", Value: value}}.Encode()
	send(t, c, p)
	r := recv(t, c)
	if r.Opcode() != iscsi.OpTextResp || !r.Final() {
		t.Fatalf("SendTargets=%s: got %s, want a final Text Response", value, r)
	}
	kv, err := iscsi.ParseText(r.Data)
	if err != nil {
		t.Fatal(err)
	}
	return kv
}

// names lists the TargetName values of a SendTargets answer.
func names(kv iscsi.Text) []string {
	var out []string
	for _, p := range kv {
		if p.Key == "TargetName" {
			out = append(out, p.Value)
		}
	}
	return out
}

func discoverNames(t *testing.T, o initiator.Options) ([]string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	targets, err := initiator.DiscoverWith(ctx, o)
	var out []string
	for _, tg := range targets {
		out = append(out, tg.Name)
	}
	return out, err
}

func TestEveryTargetOnEveryPortal(t *testing.T) {
	s := startTwo(t, nil)
	addrs := s.Addrs()
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	targets, err := initiator.Discover(ctx, addrs[0], initiatorIQN)
	if err != nil {
		t.Fatal(err)
	}
	portals := []initiator.Portal{{Address: addrs[0], Tag: 1}, {Address: addrs[1], Tag: 2}}
	want := []initiator.Target{{Name: dbIQN, Portals: portals}, {Name: logsIQN, Portals: portals}}
	if fmt.Sprint(targets) != fmt.Sprint(want) {
		t.Errorf("SendTargets=All lists\n%v\nwant every target with every portal and TPGT\n%v", targets, want)
	}

	// Each target's LUN 0 is its own disk, whichever portal a write came
	// in on and whichever the read does.
	block := func(b byte) []byte { return bytes.Repeat([]byte{b}, 512) }
	for i, tc := range []struct {
		target string
		data   []byte
	}{{dbIQN, block('d')}, {logsIQN, block('l')}} {
		w := loginTo(t, addrs[i], tc.target, byte(10+i))
		if res, err := w.Command(0, frontendtest.Write10(0, 1), 0, tc.data); err != nil || res.CheckGood() != nil {
			t.Fatalf("write to %s via portal %d: %v %v", tc.target, i, err, res)
		}
	}
	for i, tc := range []struct {
		target string
		want   []byte
	}{{dbIQN, block('d')}, {logsIQN, block('l')}} {
		r := loginTo(t, addrs[1-i], tc.target, byte(20+i))
		res, err := r.Command(0, frontendtest.Read10(0, 1), 512, nil)
		if err != nil || res.CheckGood() != nil || !bytes.Equal(res.Data, tc.want) {
			t.Errorf("read of %s LUN 0 via the other portal: %v %v %q, want what was written to it", tc.target, err, res, res.Data[:4])
		}
	}

	// iSCSI names compare case-insensitively; an unknown one is "not found"
	// and the log says which targets are served.
	ping(t, loginTo(t, addrs[0], strings.ToUpper(logsIQN), 30))
	c, err := frontendtest.Dial(addrs[1], ioTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	keys := iscsi.Text{{Key: "InitiatorName", Value: initiatorIQN}, {Key: "TargetName", Value: "iqn.2024-01.io.certkit:array.nope"}}
	if resp, _, err := c.Login(isid(31), 0, 1, keys); err != nil || frontendtest.LoginStatus(resp) != 0x0203 {
		t.Fatalf("login to an unknown target: %v %v, want status 0x0203 (not found)", resp, err)
	}
	if !strings.Contains(s.log.text(), "targets: "+dbIQN+", "+logsIQN) {
		t.Errorf("the log does not name the served targets:\n%s", s.log.text())
	}
}

// RFC 7143 appendix C: All lists every target, a name lists that target,
// and an empty value in a normal session lists the session's own.
func TestSendTargetsListsWhatWasAsked(t *testing.T) {
	s := startTwo(t, nil)
	c := loginTo(t, s.Addrs()[1], logsIQN, 1)
	for _, tc := range []struct {
		value string
		want  []string
	}{
		{"", []string{logsIQN}},
		{"All", []string{dbIQN, logsIQN}},
		{dbIQN, []string{dbIQN}},
		{"iqn.2024-01.io.certkit:array.nope", nil},
	} {
		kv := sendTargets(t, c, tc.value)
		if got := names(kv); !slices.Equal(got, tc.want) {
			t.Errorf("SendTargets=%q in a normal session lists %v, want %v", tc.value, got, tc.want)
		}
		if tc.want != nil && len(kv) != 3*len(tc.want) {
			t.Errorf("SendTargets=%q: %v, want two TargetAddress lines per target", tc.value, kv)
		}
	}
}

// Each target has its own CHAP account and ACL: an initiator allowed on
// one target only sees and logs in to that one, and one target's account
// does not open another.
func TestCHAPAndACLPerTarget(t *testing.T) {
	dbAcct := frontend.Auth{Name: "db-hosts", Secret: "db-secret-123456"}
	logsAcct := frontend.Auth{Name: "logs-hosts", Secret: "logs-secret-1234"}
	s := startTwo(t, func(c *frontend.Config) {
		c.Targets[0].Auth, c.Targets[0].ACL = dbAcct, []string{initiatorIQN}
		c.Targets[1].Auth = logsAcct
	})
	t.Cleanup(func() {
		for _, secret := range []string{dbAcct.Secret, logsAcct.Secret} {
			if strings.Contains(s.log.text(), secret) {
				t.Errorf("the target's log shows a secret:\n%s", s.log.text())
			}
		}
	})
	addr := s.Addrs()[0]
	chap := func(a frontend.Auth) *initiator.CHAP { return &initiator.CHAP{Name: a.Name, Secret: a.Secret} }

	// Different accounts: discovery is open (see Config.DiscoveryAuth),
	// and lists what each initiator's ACLs allow.
	if got, err := discoverNames(t, initiator.Options{InitiatorName: otherIQN, Address: addr}); err != nil || !slices.Equal(got, []string{logsIQN}) {
		t.Errorf("stranger's discovery: %v %v, want only %s (the db target's ACL leaves it out)", got, err, logsIQN)
	}
	if got, err := discoverNames(t, initiator.Options{InitiatorName: initiatorIQN, Address: addr}); err != nil || !slices.Equal(got, []string{dbIQN, logsIQN}) {
		t.Errorf("listed initiator's discovery: %v %v, want both targets", got, err)
	}

	for _, tc := range []struct {
		name, initiator, target string
		creds                   frontend.Auth
		status                  uint16 // 0: logs in
	}{
		{"listed initiator, db account", initiatorIQN, dbIQN, dbAcct, 0},
		{"listed initiator, the logs account at db", initiatorIQN, dbIQN, logsAcct, 0x0201},
		{"stranger at db", otherIQN, dbIQN, dbAcct, 0x0202},
		{"stranger at logs", otherIQN, logsIQN, logsAcct, 0},
		{"the db account at logs", initiatorIQN, logsIQN, dbAcct, 0x0201},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
			defer cancel()
			sess, err := initiator.Login(ctx, initiator.Options{InitiatorName: tc.initiator, TargetName: tc.target, Address: addr, CHAP: chap(tc.creds), LoginTimeout: ioTimeout})
			if err == nil {
				err = sess.TestUnitReady(ctx, 0)
				sess.Close()
			}
			if got := loginStatus(err); tc.status != 0 && got != tc.status || tc.status == 0 && err != nil {
				t.Fatalf("login: %v; want Login status 0x%04x", err, tc.status)
			}
		})
	}
}

// Which CHAP account discovery needs (Config.DiscoveryAuth): the
// configured one; else the one account all targets share; else none.
func TestDiscoveryAuth(t *testing.T) {
	shared := frontend.Auth{Name: "esx-hosts", Secret: "shared-secret-12"}
	other := frontend.Auth{Name: "other-hosts", Secret: "other-secret-123"}
	disc := frontend.Auth{Name: "discovery", Secret: "discovery-secret"}
	for _, tc := range []struct {
		name     string
		db, logs frontend.Auth
		disc     frontend.Auth
		works    []frontend.Auth // accounts discovery accepts; the zero Auth is no CHAP
		fails    []frontend.Auth
	}{
		{"configured", shared, shared, disc, []frontend.Auth{disc}, []frontend.Auth{{}, shared}},
		{"one account for all targets", shared, shared, frontend.Auth{}, []frontend.Auth{shared}, []frontend.Auth{{}, other}},
		{"an account per target", shared, other, frontend.Auth{}, []frontend.Auth{{}}, nil},
		{"one target without CHAP", shared, frontend.Auth{}, frontend.Auth{}, []frontend.Auth{{}}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := startTwo(t, func(c *frontend.Config) {
				c.Targets[0].Auth, c.Targets[1].Auth, c.DiscoveryAuth = tc.db, tc.logs, tc.disc
			})
			o := func(a frontend.Auth) initiator.Options {
				o := initiator.Options{InitiatorName: initiatorIQN, Address: s.Addrs()[1]}
				if a.Enabled() {
					o.CHAP = &initiator.CHAP{Name: a.Name, Secret: a.Secret}
				}
				return o
			}
			for _, a := range tc.works {
				if got, err := discoverNames(t, o(a)); err != nil || len(got) != 2 {
					t.Errorf("discovery with %v: %v %v, want both targets", a, got, err)
				}
			}
			for _, a := range tc.fails {
				if _, err := discoverNames(t, o(a)); loginStatus(err) != 0x0201 {
					t.Errorf("discovery with %v: %v, want Login status 0x0201", a, err)
				}
			}
		})
	}
}

// A session is named by initiator, ISID, target and TPGT (RFC 7143 §4.4.3):
// the same initiator and ISID at two targets are two sessions, and a
// login that reinstates one leaves the other alone.
func TestReinstatementStaysWithItsTarget(t *testing.T) {
	s := startTwo(t, nil)
	addr := s.Addrs()[0]
	db := loginTo(t, addr, dbIQN, 40)
	logs := loginTo(t, addr, logsIQN, 40)
	ping(t, db)
	ping(t, logs)

	again := loginTo(t, addr, dbIQN, 40)
	if err := db.WaitClosed(); err != nil {
		t.Errorf("the db session with the same ISID after a new login to db: %v", err)
	}
	ping(t, again)
	ping(t, logs)

	// Each target's SCSI layer saw its own nexus, named after it.
	s.db.mu.Lock()
	dbEvents := slices.Clone(s.db.events)
	s.db.mu.Unlock()
	s.logs.mu.Lock()
	logsEvents := slices.Clone(s.logs.events)
	s.logs.mu.Unlock()
	if len(dbEvents) != 3 || len(logsEvents) != 1 || strings.TrimPrefix(dbEvents[0], "add ") == strings.TrimPrefix(logsEvents[0], "add ") {
		t.Errorf("nexus events: db %v, logs %v; want add X, remove X, add X at db and add Y (Y != X) at logs", dbEvents, logsEvents)
	}
}

// LUN RESET and TARGET WARM RESET act within their target: other targets'
// tasks run on (their LUN 0 is another LU) and their SCSI layer is not
// reset.
func TestResetsStayWithTheirTarget(t *testing.T) {
	s := startTwo(t, nil)
	addr := s.Addrs()[0]
	db := loginTo(t, addr, dbIQN, 50)
	logs := loginTo(t, addr, logsIQN, 50)
	for _, fn := range []byte{5, 6} { // LUN RESET, TARGET WARM RESET
		w, r2t := waitingWrite(t, logs, 0)
		if r := tmfReq(t, db, fn, 0, iscsi.ReservedTag, 0); r.BHS[2] != 0 {
			t.Fatalf("function %d at db: response %d, want 0", fn, r.BHS[2])
		}
		if got := answer(t, logs, w, r2t); got != 0 {
			t.Errorf("the logs target's write after function %d at db: status 0x%02x, want GOOD", fn, got)
		}
	}
	dbResets, logsResets := s.db.resetLog(), s.logs.resetLog()
	if len(dbResets) != 2 || !strings.Contains(dbResets[0], ","+dbIQN+",t,0x0001") || len(logsResets) != 0 {
		t.Errorf("resets: db %q, logs %q; want the LU and the target reset at db, by a nexus naming it, and none at logs", dbResets, logsResets)
	}
}

// A SendTargets answer longer than the initiator accepts in one PDU goes
// out in parts (C bit, a TTT the initiator echoes for the next part).
func TestLongSendTargetsAnswerComesInParts(t *testing.T) {
	var targets []frontend.Target
	for i := range 12 {
		targets = append(targets, frontend.Target{Name: fmt.Sprintf("iqn.2024-01.io.certkit:a-rather-long-target-name-%02d", i), SCSI: newFake()})
	}
	var parts atomic.Int32
	s := start(t, func(c *frontend.Config) {
		c.TargetName, c.SCSI = "", nil
		c.Targets = targets
		c.Portals = append(c.Portals, frontend.Portal{Listen: "127.0.0.1:0", TPGT: 2}, frontend.Portal{Listen: "127.0.0.1:0", TPGT: 3})
		c.Trace = func(in bool, p *iscsi.PDU) {
			if !in && p.Opcode() == iscsi.OpTextResp && p.Flags()&iscsi.FlagContinue != 0 {
				parts.Add(1)
			}
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	got, err := initiator.DiscoverWith(ctx, initiator.Options{InitiatorName: initiatorIQN, Address: s.addr(), MaxRecvDataSegmentLength: 512})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(targets) || got[11].Name != targets[11].Name || len(got[11].Portals) != 3 {
		t.Errorf("discovery with 512-byte data segments found %+v, want all %d targets with 3 portals each", got, len(targets))
	}
	if parts.Load() < 2 {
		t.Errorf("%d Text Responses with the C bit; the answer should not fit in 512 bytes", parts.Load())
	}

	// A TTT the target did not hand out asks for nothing: Reject.
	c, err := frontendtest.Dial(s.addr(), ioTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	keys := iscsi.Text{{Key: "InitiatorName", Value: initiatorIQN}, {Key: "SessionType", Value: "Discovery"}, {Key: "MaxRecvDataSegmentLength", Value: "512"}}
	if resp, _, err := c.Login(isid(60), 0, 1, keys); err != nil || frontendtest.LoginStatus(resp) != 0 {
		t.Fatalf("discovery login: %v %v", resp, err)
	}
	c.MaxRecv = 512
	p := iscsi.New(iscsi.OpTextReq)
	p.SetFlags(iscsi.FlagFinal)
	p.SetITT(c.NextITT())
	p.SetTTT(iscsi.ReservedTag)
	p.SetCmdSN(c.CmdSN)
	c.CmdSN++
	p.Data = iscsi.Text{{Key: "SendTargets", Value: "All"}}.Encode()
	send(t, c, p)
	first := recv(t, c)
	if first.Opcode() != iscsi.OpTextResp || first.Final() || first.Flags()&iscsi.FlagContinue == 0 || first.TTT() == iscsi.ReservedTag || len(first.Data) != 512 {
		t.Fatalf("first part: %s (%d bytes), want a Text Response with C set, F clear, a TTT and 512 bytes", first, len(first.Data))
	}
	p.SetITT(first.ITT())
	p.SetTTT(first.TTT() + 1)
	p.SetCmdSN(c.CmdSN)
	c.CmdSN++
	p.Data = nil
	send(t, c, p)
	if r := recv(t, c); r.Opcode() != iscsi.OpReject || r.BHS[2] != 0x09 {
		t.Errorf("next part asked with a wrong TTT: got %s reason 0x%02x, want Reject (invalid PDU field)", r, r.BHS[2])
	}
}

func TestTargetsAreValidated(t *testing.T) {
	portals := []frontend.Portal{{Listen: "127.0.0.1:0", TPGT: 1}}
	two := func(mod func(ts []frontend.Target)) []frontend.Target {
		ts := []frontend.Target{{Name: dbIQN, SCSI: newFake()}, {Name: logsIQN, SCSI: newFake()}}
		mod(ts)
		return ts
	}
	for _, tc := range []struct {
		cfg  frontend.Config
		want string
	}{
		{frontend.Config{TargetName: dbIQN, SCSI: newFake(), Targets: two(func([]frontend.Target) {})}, "both Targets and the one-target fields"},
		{frontend.Config{Targets: two(func(ts []frontend.Target) { ts[1].Name = "" })}, "Targets[1].Name is empty"},
		{frontend.Config{Targets: two(func(ts []frontend.Target) { ts[1].Name = strings.ToUpper(dbIQN) })}, "the name is also Targets[0]'s"},
		{frontend.Config{Targets: two(func(ts []frontend.Target) { ts[1].SCSI = nil })}, "set Targets[1].SCSI"},
		{frontend.Config{Targets: two(func(ts []frontend.Target) { ts[1].Auth = frontend.Auth{Name: "x", Secret: "short"} })}, "Targets[1].Auth.Secret is 5 bytes"},
		{frontend.Config{Targets: two(func(ts []frontend.Target) { ts[0].ACL = []string{""} })}, "Targets[0].ACL[0] is empty"},
		{frontend.Config{Targets: two(func([]frontend.Target) {}), DiscoveryAuth: frontend.Auth{Secret: chapSecret}}, "DiscoveryAuth.Name is empty"},
	} {
		tc.cfg.Portals = portals
		s, err := frontend.Listen(tc.cfg)
		if err == nil {
			s.Close()
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Listen: %v; want an error saying %q", err, tc.want)
		}
	}
}
