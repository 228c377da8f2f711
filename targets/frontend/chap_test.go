package frontend_test

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/certkit/certkit/iscsi"
	"github.com/certkit/certkit/iscsi/initiator"
	"github.com/certkit/certkit/targets/frontend"
	"github.com/certkit/certkit/targets/frontend/frontendtest"
)

// CHAP and the initiator ACL: certkit's initiator against the target for
// what a user sees (logins that work or fail with the right status), raw
// PDUs for what an initiator cannot be made to do (reflect a challenge,
// skip the security stage, send CHAP keys out of order).

const (
	chapUser     = "esx-hosts"
	chapSecret   = "initiator-secret-1"
	chapTarget   = "array-a"
	chapMutual   = "target-secret-22"
	otherIQN     = "iqn.2024-01.io.certkit:stranger"
	wrongSecret1 = "not-the-secret-1"
)

// logSink collects a server's log lines, to check no secret reaches them.
type logSink struct {
	mu    sync.Mutex
	lines []string
}

func (l *logSink) logf(t *testing.T) func(string, ...any) {
	return func(format string, args ...any) {
		s := fmt.Sprintf(format, args...)
		l.mu.Lock()
		l.lines = append(l.lines, s)
		l.mu.Unlock()
		t.Log(s)
	}
}

func (l *logSink) text() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

// startCHAP starts a target requiring CHAP (mutual when the target has a
// mutual secret) and checks, when the test ends, that no secret reached
// its log.
func startCHAP(t *testing.T, auth frontend.Auth, acl ...string) *testServer {
	t.Helper()
	logs := &logSink{}
	s := start(t, func(c *frontend.Config) {
		c.Auth = auth
		c.ACL = acl
		c.Logf = logs.logf(t)
	})
	t.Cleanup(func() {
		for _, secret := range []string{chapSecret, chapMutual, wrongSecret1, auth.Secret, auth.MutualSecret} {
			if secret != "" && strings.Contains(logs.text(), secret) {
				t.Errorf("the target's log shows a secret:\n%s", logs.text())
			}
		}
	})
	return s
}

var (
	oneWay = frontend.Auth{Name: chapUser, Secret: chapSecret}
	mutual = frontend.Auth{Name: chapUser, Secret: chapSecret, MutualName: chapTarget, MutualSecret: chapMutual}
)

// loginWith logs certkit's initiator in and proves the session works.
func loginWith(t *testing.T, addr, iqn string, c *initiator.CHAP) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	s, err := initiator.Login(ctx, initiator.Options{InitiatorName: iqn, TargetName: targetIQN, Address: addr, CHAP: c, LoginTimeout: ioTimeout})
	if err != nil {
		for _, secret := range []string{chapSecret, chapMutual, wrongSecret1} {
			if strings.Contains(err.Error(), secret) {
				t.Errorf("login error shows a secret: %v", err)
			}
		}
		return err
	}
	defer s.Close()
	return s.TestUnitReady(ctx, 0)
}

func loginStatus(err error) uint16 {
	var le *initiator.LoginError
	if errors.As(err, &le) {
		return le.Status()
	}
	return 0
}

func TestCHAPLoginsWithCertkitsInitiator(t *testing.T) {
	one := startCHAP(t, oneWay)
	both := startCHAP(t, mutual)
	creds := func(mod func(*initiator.CHAP)) *initiator.CHAP {
		c := &initiator.CHAP{Name: chapUser, Secret: chapSecret}
		if mod != nil {
			mod(c)
		}
		return c
	}
	withMutual := func(name, secret string) func(*initiator.CHAP) {
		return func(c *initiator.CHAP) { c.MutualName, c.MutualSecret = name, secret }
	}
	cases := []struct {
		name   string
		srv    *testServer
		c      *initiator.CHAP
		status uint16 // Login status expected; 0: success
		target bool   // the initiator refuses the target instead
	}{
		{"one-way", one, creds(nil), 0, false},
		{"one-way, required level", one, creds(func(c *initiator.CHAP) { c.Level = initiator.CHAPRequired }), 0, false},
		{"one-way, discouraged level", one, creds(func(c *initiator.CHAP) { c.Level = initiator.CHAPDiscouraged }), 0, false},
		{"mutual", both, creds(withMutual(chapTarget, chapMutual)), 0, false},
		{"mutual without checking the target's name", both, creds(withMutual("", chapMutual)), 0, false},
		{"one-way initiator at a target with a mutual secret", both, creds(nil), 0, false},
		{"wrong secret", one, creds(func(c *initiator.CHAP) { c.Secret = wrongSecret1 }), 0x0201, false},
		{"wrong name", one, creds(func(c *initiator.CHAP) { c.Name = "someone-else" }), 0x0201, false},
		{"no CHAP at all", one, nil, 0x0201, false},
		{"mutual asked of a one-way target", one, creds(withMutual(chapTarget, chapMutual)), 0x0201, false},
		{"target's mutual secret differs", both, creds(withMutual(chapTarget, wrongSecret1)), 0, true},
		{"target's mutual name differs", both, creds(withMutual("array-b", chapMutual)), 0, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := loginWith(t, tc.srv.addr(), initiatorIQN, tc.c)
			switch {
			case tc.target:
				if !errors.Is(err, initiator.ErrTargetAuthentication) || !strings.Contains(err.Error(), "target failed mutual CHAP authentication") {
					t.Fatalf("login: %v; want the initiator to refuse the target", err)
				}
			case tc.status != 0:
				if got := loginStatus(err); got != tc.status {
					t.Fatalf("login: %v; want Login status 0x%04x", err, tc.status)
				}
			case err != nil:
				t.Fatal(err)
			}
		})
	}
}

func TestDiscoveryNeedsCHAPToo(t *testing.T) {
	s := startCHAP(t, oneWay)
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	if _, err := initiator.Discover(ctx, s.addr(), initiatorIQN); loginStatus(err) != 0x0201 {
		t.Errorf("discovery without CHAP: %v; want Login status 0x0201", err)
	}
	targets, err := initiator.DiscoverWith(ctx, initiator.Options{InitiatorName: initiatorIQN, Address: s.addr(), CHAP: &initiator.CHAP{Name: chapUser, Secret: chapSecret}})
	if err != nil || len(targets) != 1 || targets[0].Name != targetIQN {
		t.Fatalf("discovery with CHAP: %+v %v", targets, err)
	}
}

func TestACLKeepsStrangersOut(t *testing.T) {
	for _, auth := range []frontend.Auth{{}, oneWay} {
		t.Run(auth.String(), func(t *testing.T) {
			// iSCSI names compare case-insensitively.
			s := startCHAP(t, auth, strings.ToUpper(initiatorIQN))
			var c *initiator.CHAP
			if auth.Enabled() {
				c = &initiator.CHAP{Name: chapUser, Secret: chapSecret}
			}
			if err := loginWith(t, s.addr(), initiatorIQN, c); err != nil {
				t.Fatalf("listed initiator: %v", err)
			}
			err := loginWith(t, s.addr(), otherIQN, c)
			if loginStatus(err) != 0x0202 {
				t.Fatalf("stranger: %v; want Login status 0x0202 (not authorized)", err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
			defer cancel()
			// As tgtd and LIO (demo_mode_discovery=0) do: the stranger's
			// discovery session works but shows no target.
			targets, err := initiator.DiscoverWith(ctx, initiator.Options{InitiatorName: otherIQN, Address: s.addr(), CHAP: c})
			if err != nil || len(targets) != 0 {
				t.Errorf("stranger's discovery: %+v %v; want no targets", targets, err)
			}
			targets, err = initiator.DiscoverWith(ctx, initiator.Options{InitiatorName: initiatorIQN, Address: s.addr(), CHAP: c})
			if err != nil || len(targets) != 1 {
				t.Errorf("listed initiator's discovery: %+v %v; want the target", targets, err)
			}
		})
	}
}

// rawCHAP walks a raw connection up to the target's challenge and returns
// the challenge's identifier and bytes.
func rawCHAP(t *testing.T, c *frontendtest.Conn) (byte, []byte) {
	t.Helper()
	send(t, c, frontendtest.LoginRequest(isid(9), 0, 0, 1, true, normalKeys(iscsi.KV{Key: "AuthMethod", Value: "CHAP,None"})))
	r := recv(t, c)
	kv, _ := iscsi.ParseText(r.Data)
	if st := frontendtest.LoginStatus(r); st != 0 {
		t.Fatalf("AuthMethod offer: status 0x%04x", st)
	}
	if v, _ := kv.Get("AuthMethod"); v != "CHAP" {
		t.Fatalf("target chose AuthMethod=%q, want CHAP", v)
	}
	if r.Flags()&iscsi.FlagTransit != 0 {
		t.Fatalf("target left the security stage before CHAP (flags 0x%02x)", r.Flags())
	}
	send(t, c, frontendtest.LoginRequest(isid(9), 0, 0, 0, false, iscsi.Text{{Key: "CHAP_A", Value: "7,5"}}))
	r = recv(t, c)
	kv, _ = iscsi.ParseText(r.Data)
	a, _ := kv.Get("CHAP_A")
	iv, _ := kv.Get("CHAP_I")
	cv, _ := kv.Get("CHAP_C")
	var id byte
	if _, err := fmt.Sscan(iv, &id); err != nil || a != "5" || !strings.HasPrefix(cv, "0x") {
		t.Fatalf("challenge %v: want CHAP_A=5, CHAP_I, CHAP_C=0x...", kv)
	}
	ch, err := hex.DecodeString(cv[2:])
	if err != nil || len(ch) != 16 {
		t.Fatalf("CHAP_C %s: want 16 random bytes", cv)
	}
	return id, ch
}

func md5Response(id byte, secret string, challenge []byte) string {
	h := md5.New()
	h.Write([]byte{id})
	h.Write([]byte(secret))
	h.Write(challenge)
	return "0x" + hex.EncodeToString(h.Sum(nil))
}

func TestRawCHAPExchange(t *testing.T) {
	s := startCHAP(t, mutual)
	dial := func(t *testing.T) *frontendtest.Conn {
		c, err := frontendtest.Dial(s.addr(), ioTimeout)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	refused := func(t *testing.T, c *frontendtest.Conn, status uint16) {
		t.Helper()
		r := recv(t, c)
		if r.Opcode() != iscsi.OpLoginResp || frontendtest.LoginStatus(r) != status {
			t.Fatalf("got %v status 0x%04x, want a Login Response with status 0x%04x", r, frontendtest.LoginStatus(r), status)
		}
		if err := c.WaitClosed(); err != nil {
			t.Errorf("after a refused login: %v", err)
		}
	}

	t.Run("mutual, then full feature phase", func(t *testing.T) {
		c := dial(t)
		id, ch := rawCHAP(t, c)
		mine := []byte("initiator-chal16")
		send(t, c, frontendtest.LoginRequest(isid(9), 0, 0, 1, true, iscsi.Text{
			{Key: "CHAP_N", Value: chapUser}, {Key: "CHAP_R", Value: md5Response(id, chapSecret, ch)},
			{Key: "CHAP_I", Value: "77"}, {Key: "CHAP_C", Value: "0x" + hex.EncodeToString(mine)},
		}))
		r := recv(t, c)
		kv, _ := iscsi.ParseText(r.Data)
		if frontendtest.LoginStatus(r) != 0 || r.Flags() != iscsi.FlagTransit|0<<2|1 {
			t.Fatalf("response to a right answer: status 0x%04x flags 0x%02x", frontendtest.LoginStatus(r), r.Flags())
		}
		if n, _ := kv.Get("CHAP_N"); n != chapTarget {
			t.Errorf("target answered as CHAP_N=%q, want %q", n, chapTarget)
		}
		if rv, _ := kv.Get("CHAP_R"); rv != md5Response(77, chapMutual, mine) {
			t.Errorf("target's CHAP_R %s is not MD5(77 || mutual secret || challenge)", rv)
		}
		if resp, _, err := c.Login(isid(9), 0, 1, nil); err != nil || frontendtest.LoginStatus(resp) != 0 {
			t.Fatalf("operational stage after CHAP: %v %v", err, resp)
		}
		if res, err := c.Command(0, tur, 0, nil); err != nil || res.CheckGood() != nil {
			t.Fatalf("TEST UNIT READY after CHAP: %v %v", err, res)
		}
	})
	t.Run("reflected challenge", func(t *testing.T) {
		c := dial(t)
		id, ch := rawCHAP(t, c)
		// A right answer, but the target's own challenge sent back: the
		// target's answer would be a response an attacker could replay.
		send(t, c, frontendtest.LoginRequest(isid(9), 0, 0, 1, true, iscsi.Text{
			{Key: "CHAP_N", Value: chapUser}, {Key: "CHAP_R", Value: md5Response(id, chapSecret, ch)},
			{Key: "CHAP_I", Value: fmt.Sprint(id)}, {Key: "CHAP_C", Value: "0x" + hex.EncodeToString(ch)},
		}))
		refused(t, c, 0x0201)
	})
	t.Run("wrong response", func(t *testing.T) {
		c := dial(t)
		id, ch := rawCHAP(t, c)
		send(t, c, frontendtest.LoginRequest(isid(9), 0, 0, 1, true, iscsi.Text{{Key: "CHAP_N", Value: chapUser}, {Key: "CHAP_R", Value: md5Response(id+1, chapSecret, ch)}}))
		refused(t, c, 0x0201)
	})
	t.Run("security stage skipped", func(t *testing.T) {
		c := dial(t)
		send(t, c, frontendtest.LoginRequest(isid(9), 0, 1, 3, true, normalKeys()))
		refused(t, c, 0x0201)
	})
	t.Run("leaves the security stage without AuthMethod", func(t *testing.T) {
		c := dial(t)
		send(t, c, frontendtest.LoginRequest(isid(9), 0, 0, 1, true, normalKeys()))
		refused(t, c, 0x0201)
	})
	t.Run("offers only None", func(t *testing.T) {
		c := dial(t)
		send(t, c, frontendtest.LoginRequest(isid(9), 0, 0, 1, true, normalKeys(iscsi.KV{Key: "AuthMethod", Value: "None"})))
		refused(t, c, 0x0201)
	})
	t.Run("response before the challenge", func(t *testing.T) {
		c := dial(t)
		send(t, c, frontendtest.LoginRequest(isid(9), 0, 0, 1, false, normalKeys(iscsi.KV{Key: "AuthMethod", Value: "CHAP"})))
		recv(t, c)
		send(t, c, frontendtest.LoginRequest(isid(9), 0, 0, 1, true, iscsi.Text{{Key: "CHAP_N", Value: chapUser}, {Key: "CHAP_R", Value: "0x00"}}))
		refused(t, c, 0x0200)
	})
	t.Run("no common algorithm", func(t *testing.T) {
		c := dial(t)
		send(t, c, frontendtest.LoginRequest(isid(9), 0, 0, 1, false, normalKeys(iscsi.KV{Key: "AuthMethod", Value: "CHAP"})))
		recv(t, c)
		send(t, c, frontendtest.LoginRequest(isid(9), 0, 0, 1, false, iscsi.Text{{Key: "CHAP_A", Value: "6,7"}}))
		refused(t, c, 0x0201)
	})
	t.Run("transit held until CHAP is done", func(t *testing.T) {
		c := dial(t)
		rawCHAP(t, c) // asks to transit on the first request; the answer must stay (T=0)
		send(t, c, frontendtest.LoginRequest(isid(9), 0, 0, 1, true, nil))
		r := recv(t, c)
		if frontendtest.LoginStatus(r) != 0 || r.Flags()&iscsi.FlagTransit != 0 {
			t.Errorf("empty request while challenged: status 0x%04x flags 0x%02x; want to stay in the security stage", frontendtest.LoginStatus(r), r.Flags())
		}
	})
}

func TestAuthConfigIsValidated(t *testing.T) {
	cases := []struct {
		auth frontend.Auth
		acl  []string
		want string
	}{
		{frontend.Auth{Secret: chapSecret}, nil, "Auth.Name is empty"},
		{frontend.Auth{Name: chapUser}, nil, "Auth.Secret is empty"},
		{frontend.Auth{Name: chapUser, Secret: "short"}, nil, "at least 12"},
		{frontend.Auth{Name: chapUser, Secret: chapSecret, MutualName: chapTarget}, nil, "MutualSecret is empty"},
		{frontend.Auth{Name: chapUser, Secret: chapSecret, MutualSecret: chapMutual}, nil, "Auth.MutualName is empty"},
		{frontend.Auth{Name: chapUser, Secret: chapSecret, MutualName: chapTarget, MutualSecret: chapSecret}, nil, "different secret"},
		{frontend.Auth{}, []string{initiatorIQN, " "}, "ACL[1] is empty"},
	}
	for _, tc := range cases {
		_, err := frontend.Listen(frontend.Config{TargetName: targetIQN, Portals: []frontend.Portal{{Listen: "127.0.0.1:0", TPGT: 1}}, SCSI: newFake(), Auth: tc.auth, ACL: tc.acl})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v; want an error with %q", tc.auth, err, tc.want)
			continue
		}
		if strings.Contains(err.Error(), chapSecret) || strings.Contains(err.Error(), chapMutual) {
			t.Errorf("error shows a secret: %v", err)
		}
	}
	for _, s := range []string{mutual.String(), fmt.Sprintf("%v %+v %#v", mutual, mutual, mutual)} {
		if strings.Contains(s, chapSecret) || strings.Contains(s, chapMutual) {
			t.Errorf("formatting shows a secret: %s", s)
		}
	}
}
