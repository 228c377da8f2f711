package initiator

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/certkit/certkit/iscsi"
)

// CHAP as the initiator speaks it: the wire sequence against a scripted
// target, every way a target can fail it, and interop with tgtd.

const (
	chapName     = "esx-host-1"
	chapSecret   = "initiator-secret-1"
	mutualName   = "array-a"
	mutualSecret = "target-secret-22"
)

func TestCHAPResponseIsMD5OfIdentifierSecretChallenge(t *testing.T) {
	// Vectors computed independently (Python hashlib) per RFC 1994 §4.1.
	cases := []struct {
		id        byte
		secret    string
		challenge []byte
		want      string
	}{
		{1, "secretsecret", []byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}, "226dc576c33f04ff9c3a200ffe35f442"},
		{0xff, "0123456789abcdef", []byte{0xde, 0xad, 0xbe, 0xef}, "64e7fc588fae54284dbb1d4b0437726a"},
	}
	for _, c := range cases {
		if got := fmt.Sprintf("%x", chapResponse(c.id, c.secret, c.challenge)); got != c.want {
			t.Errorf("chapResponse(%d, %q, %x) = %s, want %s", c.id, c.secret, c.challenge, got, c.want)
		}
	}
}

func TestCHAPBinaryValues(t *testing.T) {
	for _, v := range []string{"0xdeadbeef", "0XDEADBEEF", "0b3q2+7w==", "0xeadbeef"} {
		b, err := decodeCHAPBinary("CHAP_C", v)
		if err != nil {
			t.Errorf("%s: %v", v, err)
			continue
		}
		if v == "0xeadbeef" { // odd digit count: leading zero nibble
			if fmt.Sprintf("%x", b) != "0eadbeef" {
				t.Errorf("%s decoded to %x", v, b)
			}
			continue
		}
		if fmt.Sprintf("%x", b) != "deadbeef" {
			t.Errorf("%s decoded to %x, want deadbeef", v, b)
		}
	}
	for _, v := range []string{"", "0x", "deadbeef", "0xzz", "0b!!", "12"} {
		if _, err := decodeCHAPBinary("CHAP_R", v); err == nil {
			t.Errorf("%q decoded without error", v)
		} else if v != "" && v != "0x" && strings.Contains(err.Error(), v) {
			t.Errorf("error echoes the value %q: %v", v, err)
		}
	}
	for v, want := range map[string]int{"0": 0, "255": 255, "0x1f": 31} {
		if id, err := parseCHAPID(v); err != nil || int(id) != want {
			t.Errorf("CHAP_I=%s: %d %v, want %d", v, id, err, want)
		}
	}
	for _, v := range []string{"256", "-1", "x", ""} {
		if _, err := parseCHAPID(v); err == nil {
			t.Errorf("CHAP_I=%q accepted", v)
		}
	}
}

func TestCHAPOfferFollowsTheLevel(t *testing.T) {
	cases := []struct {
		c    *CHAP
		want string
	}{
		{nil, "None"},
		{&CHAP{Name: "n", Secret: "s"}, "CHAP,None"},
		{&CHAP{Name: "n", Secret: "s", Level: CHAPDiscouraged}, "None,CHAP"},
		{&CHAP{Name: "n", Secret: "s", Level: CHAPRequired}, "CHAP"},
		{&CHAP{Name: "n", Secret: "s", MutualSecret: "m", Level: CHAPDiscouraged}, "CHAP"}, // mutual insists
	}
	for _, c := range cases {
		if got := c.c.authMethods(); got != c.want {
			t.Errorf("%v: AuthMethod=%s, want %s", c.c, got, c.want)
		}
	}
}

func TestCHAPCredentialsAreCheckedBeforeDialling(t *testing.T) {
	cases := []struct {
		c    CHAP
		want string
	}{
		{CHAP{Secret: chapSecret}, "CHAP.Name is empty"},
		{CHAP{Name: chapName}, "CHAP.Secret is empty"},
		{CHAP{Name: chapName, Secret: chapSecret, MutualName: mutualName}, "MutualSecret is empty"},
		{CHAP{Name: chapName, Secret: chapSecret, MutualSecret: chapSecret}, "different secret in each direction"},
		{CHAP{Name: chapName, Secret: chapSecret, Level: 7}, "CHAP.Level 7"},
	}
	for _, c := range cases {
		// Address is a closed port: a dial would fail with another error.
		_, err := Login(testContext(t), Options{InitiatorName: initiatorIQN, TargetName: "iqn.2024-01.dev.certkit:x", Address: "127.0.0.1:1", CHAP: &c.c})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v, want an error with %q", c.c, err, c.want)
		}
		if err != nil && strings.Contains(err.Error(), chapSecret) {
			t.Errorf("error shows the secret: %v", err)
		}
	}
	c := CHAP{Name: chapName, Secret: chapSecret, MutualName: mutualName, MutualSecret: mutualSecret}
	for _, s := range []string{c.String(), fmt.Sprintf("%v %+v %#v", c, c, c), fmt.Sprintf("%v", &c)} {
		if strings.Contains(s, chapSecret) || strings.Contains(s, mutualSecret) {
			t.Errorf("formatting shows a secret: %s", s)
		}
	}
}

// chapTarget is a scripted target's side of a CHAP login.
type chapTarget struct {
	*fakeConn
	t    *testing.T
	last *iscsi.PDU // the latest Login Request
}

// expect reads a security-stage Login Request and checks its T bit.
func (c *chapTarget) expect(transit bool) iscsi.Text {
	c.t.Helper()
	req := c.read()
	if req.Opcode() != iscsi.OpLoginReq || (req.Flags()>>2)&3 != stageSecurity {
		c.t.Fatalf("want a security-stage Login Request, got %v", req)
	}
	if got := req.Flags()&iscsi.FlagTransit != 0; got != transit {
		c.t.Fatalf("Login Request T bit %v, want %v (flags 0x%02x)", got, transit, req.Flags())
	}
	if transit && req.Flags()&3 != stageOperational {
		c.t.Fatalf("Login Request NSG %d, want %d", req.Flags()&3, stageOperational)
	}
	kv, err := iscsi.ParseText(req.Data)
	if err != nil {
		c.t.Fatal(err)
	}
	c.expCmdSN = req.CmdSN()
	c.maxCmdSN = c.expCmdSN + 8
	c.last = req
	return kv
}

// answer sends a security-stage Login Response, staying (T=0) or moving on.
func (c *chapTarget) answer(transit bool, keys iscsi.Text) {
	resp := loginResponse(c.last, stageSecurity, stageOperational)
	if !transit {
		resp.SetFlags(stageSecurity<<2 | stageSecurity)
	}
	resp.Data = keys.Encode()
	c.reply(resp, true)
}

// operational answers the operational stage by echoing every offer and
// enters full feature phase.
func (c *chapTarget) operational() {
	c.t.Helper()
	req := c.read()
	if (req.Flags()>>2)&3 != stageOperational {
		c.t.Fatalf("want an operational-stage Login Request, got %v", req)
	}
	offered, _ := iscsi.ParseText(req.Data)
	var keys iscsi.Text
	for _, kv := range offered {
		if kv.Key != "MaxRecvDataSegmentLength" {
			keys = append(keys, kv)
		}
	}
	keys.Add("MaxRecvDataSegmentLength", "8192")
	resp := loginResponse(req, stageOperational, stageFullFeature)
	resp.Data = keys.Encode()
	c.reply(resp, true)
	c.serve()
}

// loginCHAP logs in to a scripted target with CHAP credentials c and
// returns the login's outcome once script has run.
func loginCHAP(t *testing.T, c *CHAP, script func(ct *chapTarget)) (*Session, error) {
	t.Helper()
	f := newFakeTarget(t)
	type result struct {
		s   *Session
		err error
	}
	ch := make(chan result, 1)
	go func() {
		s, err := Login(testContext(t), Options{InitiatorName: initiatorIQN, TargetName: "iqn.2024-01.dev.certkit:fake", Address: f.Addr, CHAP: c, Logf: t.Logf})
		ch <- result{s, err}
	}()
	fc := f.accept()
	script(&chapTarget{fakeConn: fc, t: t})
	r := <-ch
	if r.s != nil {
		t.Cleanup(func() { r.s.Close() })
	}
	if r.err != nil && c != nil {
		for _, s := range []string{c.Secret, c.MutualSecret} {
			if s != "" && strings.Contains(r.err.Error(), s) {
				t.Errorf("login error shows a secret: %v", r.err)
			}
		}
	}
	return r.s, r.err
}

// challengeInitiator plays the target's part up to the initiator's
// response and returns it, checking the keys on the wire.
func (c *chapTarget) challengeInitiator(id byte, challenge []byte) iscsi.Text {
	c.t.Helper()
	kv := c.expect(true)
	if v, _ := kv.Get("AuthMethod"); !strings.Contains(v, "CHAP") {
		c.t.Fatalf("first request offers AuthMethod=%q, want CHAP among the methods", v)
	}
	c.answer(false, iscsi.Text{{Key: "TargetPortalGroupTag", Value: "1"}, {Key: "AuthMethod", Value: "CHAP"}})
	kv = c.expect(false)
	if v, _ := kv.Get("CHAP_A"); v != "5" {
		c.t.Fatalf("initiator sent CHAP_A=%q, want 5 (MD5)", v)
	}
	c.answer(false, iscsi.Text{{Key: "CHAP_A", Value: "5"}, {Key: "CHAP_I", Value: fmt.Sprint(id)}, {Key: "CHAP_C", Value: encodeCHAPBinary(challenge)}})
	kv = c.expect(true)
	return kv
}

var targetChallenge = []byte("0123456789abcdef")

func TestOneWayCHAPOnTheWire(t *testing.T) {
	c := &CHAP{Name: chapName, Secret: chapSecret}
	s, err := loginCHAP(t, c, func(ct *chapTarget) {
		kv := ct.challengeInitiator(42, targetChallenge)
		if n, _ := kv.Get("CHAP_N"); n != chapName {
			t.Errorf("CHAP_N=%q, want %q", n, chapName)
		}
		want := encodeCHAPBinary(chapResponse(42, chapSecret, targetChallenge))
		if r, _ := kv.Get("CHAP_R"); r != want {
			t.Errorf("CHAP_R=%s, want %s", r, want)
		}
		if _, ok := kv.Get("CHAP_C"); ok {
			t.Errorf("one-way CHAP sent a challenge of its own: %v", kv)
		}
		ct.answer(true, nil)
		ct.operational()
	})
	if err != nil {
		t.Fatal(err)
	}
	if s.Params().TargetPortalGroupTag != 1 {
		t.Errorf("TPGT from the first security answer lost: %+v", s.Params())
	}
}

func TestMutualCHAPChecksTheTarget(t *testing.T) {
	c := &CHAP{Name: chapName, Secret: chapSecret, MutualName: mutualName, MutualSecret: mutualSecret}
	respond := func(name string, secret func(kv iscsi.Text) string) func(ct *chapTarget) {
		return func(ct *chapTarget) {
			kv := ct.challengeInitiator(7, targetChallenge)
			iv, _ := kv.Get("CHAP_I")
			cv, _ := kv.Get("CHAP_C")
			id, err := parseCHAPID(iv)
			if err != nil {
				t.Fatal(err)
			}
			ch, err := decodeCHAPBinary("CHAP_C", cv)
			if err != nil || len(ch) != 16 {
				t.Fatalf("initiator's CHAP_C %q: %v; want 16 bytes", cv, err)
			}
			ct.answer(true, iscsi.Text{{Key: "CHAP_N", Value: name}, {Key: "CHAP_R", Value: encodeCHAPBinary(chapResponse(id, secret(kv), ch))}})
			ct.operational()
		}
	}
	right := func(iscsi.Text) string { return mutualSecret }
	t.Run("right answer", func(t *testing.T) {
		if _, err := loginCHAP(t, c, respond(mutualName, right)); err != nil {
			t.Fatal(err)
		}
	})
	for _, tc := range []struct {
		name, chapN string
		secret      func(iscsi.Text) string
		why         string
	}{
		{"wrong secret", mutualName, func(iscsi.Text) string { return "not-the-secret" }, "wrong CHAP_R"},
		{"wrong name", "array-b", right, `CHAP_N="array-b"`},
		{"reflection", mutualName, func(iscsi.Text) string { return chapSecret }, "reflection"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := loginCHAP(t, c, func(ct *chapTarget) {
				kv := ct.challengeInitiator(7, targetChallenge)
				iv, _ := kv.Get("CHAP_I")
				cv, _ := kv.Get("CHAP_C")
				id, _ := parseCHAPID(iv)
				ch, _ := decodeCHAPBinary("CHAP_C", cv)
				ct.answer(true, iscsi.Text{{Key: "CHAP_N", Value: tc.chapN}, {Key: "CHAP_R", Value: encodeCHAPBinary(chapResponse(id, tc.secret(kv), ch))}})
			})
			if !errors.Is(err, ErrTargetAuthentication) || !strings.Contains(err.Error(), tc.why) {
				t.Fatalf("login: %v; want ErrTargetAuthentication mentioning %q", err, tc.why)
			}
			if !strings.Contains(err.Error(), "target failed mutual CHAP authentication") {
				t.Errorf("error lacks the plain statement: %v", err)
			}
		})
	}
	t.Run("no answer", func(t *testing.T) {
		_, err := loginCHAP(t, c, func(ct *chapTarget) {
			ct.challengeInitiator(7, targetChallenge)
			ct.answer(true, nil)
		})
		if !errors.Is(err, ErrTargetAuthentication) {
			t.Fatalf("target that ignores the initiator's challenge: %v", err)
		}
	})
}

func TestCHAPTargetMisbehaviourFailsTheLogin(t *testing.T) {
	preferred := &CHAP{Name: chapName, Secret: chapSecret}
	required := &CHAP{Name: chapName, Secret: chapSecret, Level: CHAPRequired}
	cases := []struct {
		name   string
		c      *CHAP
		script func(ct *chapTarget)
		want   string
	}{
		{"None when CHAP is required", required, func(ct *chapTarget) {
			if v, _ := ct.expect(true).Get("AuthMethod"); v != "CHAP" {
				t.Errorf("required CHAP offered AuthMethod=%s, want CHAP", v)
			}
			ct.answer(true, iscsi.Text{{Key: "AuthMethod", Value: "None"}})
		}, "requires CHAP"},
		{"no AuthMethod when CHAP is required", required, func(ct *chapTarget) {
			ct.expect(true)
			ct.answer(true, nil)
		}, "without authenticating"},
		{"CHAP then leaves at once", preferred, func(ct *chapTarget) {
			ct.expect(true)
			ct.answer(true, iscsi.Text{{Key: "AuthMethod", Value: "CHAP"}})
		}, "before the CHAP exchange"},
		{"unoffered method", preferred, func(ct *chapTarget) {
			ct.expect(true)
			ct.answer(false, iscsi.Text{{Key: "AuthMethod", Value: "SRP"}})
		}, "not offered"},
		{"CHAP to an initiator without credentials", nil, func(ct *chapTarget) {
			ct.expect(true)
			ct.answer(false, iscsi.Text{{Key: "AuthMethod", Value: "CHAP"}})
		}, "configure CHAP credentials"},
		{"other algorithm", preferred, func(ct *chapTarget) {
			ct.expect(true)
			ct.answer(false, iscsi.Text{{Key: "AuthMethod", Value: "CHAP"}})
			ct.expect(false)
			ct.answer(false, iscsi.Text{{Key: "CHAP_A", Value: "7"}, {Key: "CHAP_I", Value: "1"}, {Key: "CHAP_C", Value: "0x00"}})
		}, "CHAP_A=7"},
		{"challenge missing", preferred, func(ct *chapTarget) {
			ct.expect(true)
			ct.answer(false, iscsi.Text{{Key: "AuthMethod", Value: "CHAP"}})
			ct.expect(false)
			ct.answer(false, iscsi.Text{{Key: "CHAP_A", Value: "5"}, {Key: "CHAP_I", Value: "1"}})
		}, "lacks CHAP_C"},
		{"oversized challenge", preferred, func(ct *chapTarget) {
			ct.expect(true)
			ct.answer(false, iscsi.Text{{Key: "AuthMethod", Value: "CHAP"}})
			ct.expect(false)
			ct.answer(false, iscsi.Text{{Key: "CHAP_A", Value: "5"}, {Key: "CHAP_I", Value: "1"}, {Key: "CHAP_C", Value: encodeCHAPBinary(make([]byte, 1025))}})
		}, "at most 1024"},
		{"stray CHAP key", preferred, func(ct *chapTarget) {
			ct.expect(true)
			ct.answer(false, iscsi.Text{{Key: "AuthMethod", Value: "None"}, {Key: "CHAP_N", Value: "x"}})
		}, "outside a CHAP exchange"},
		{"authentication failure status", preferred, func(ct *chapTarget) {
			ct.challengeInitiator(1, targetChallenge)
			resp := loginResponse(ct.last, stageSecurity, stageOperational)
			resp.BHS[36], resp.BHS[37] = 2, 1
			ct.reply(resp, false)
		}, "authentication failed (status 0x0201)"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := loginCHAP(t, tc.c, tc.script)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("login: %v; want an error with %q", err, tc.want)
			}
		})
	}
}

func TestPreferredCHAPAcceptsATargetWithoutAuthentication(t *testing.T) {
	_, err := loginCHAP(t, &CHAP{Name: chapName, Secret: chapSecret}, func(ct *chapTarget) {
		if v, _ := ct.expect(true).Get("AuthMethod"); v != "CHAP,None" {
			t.Errorf("preferred CHAP offered AuthMethod=%s, want CHAP,None", v)
		}
		ct.answer(true, iscsi.Text{{Key: "AuthMethod", Value: "None"}})
		ct.operational()
	})
	if err != nil {
		t.Fatal(err)
	}
}

// tgtdWithCHAP starts tgtd with target 1 requiring CHAP as chapName, and
// with the outgoing (mutual) account mutualName when mutual.
func tgtdWithCHAP(t *testing.T, mutual bool) *tgtd {
	t.Helper()
	d := startTgtd(t)
	steps := [][]string{
		{"--op", "new", "--mode", "account", "--user", chapName, "--password", chapSecret},
		{"--op", "bind", "--mode", "account", "--tid", "1", "--user", chapName},
	}
	if mutual {
		steps = append(steps,
			[]string{"--op", "new", "--mode", "account", "--user", mutualName, "--password", mutualSecret},
			[]string{"--op", "bind", "--mode", "account", "--tid", "1", "--user", mutualName, "--outgoing"})
	}
	for _, s := range steps {
		if err := d.adm(s...); err != nil {
			t.Fatalf("configuring CHAP on tgtd: %v", err)
		}
	}
	return d
}

func TestCHAPAgainstTgtd(t *testing.T) {
	checkNoSessionGoroutines(t)
	login := func(d *tgtd, c *CHAP) error {
		s, err := Login(testContext(t), Options{InitiatorName: initiatorIQN, TargetName: d.IQN, Address: d.Addr, CHAP: c, Logf: t.Logf})
		if err != nil {
			return err
		}
		defer s.Close()
		// A command proves the session is in full feature phase (the
		// first one meets the power-on UNIT ATTENTION).
		s.TestUnitReady(testContext(t), 1)
		return s.TestUnitReady(testContext(t), 1)
	}
	t.Run("one-way", func(t *testing.T) {
		d := tgtdWithCHAP(t, false)
		if err := login(d, &CHAP{Name: chapName, Secret: chapSecret, Level: CHAPRequired}); err != nil {
			t.Fatal(err)
		}
		err := login(d, &CHAP{Name: chapName, Secret: "wrong-secret-99"})
		var le *LoginError
		if !errors.As(err, &le) || le.Status() != 0x0201 {
			t.Errorf("wrong secret: %v; want Login status 0x0201 (authentication failure)", err)
		}
		if err := login(d, nil); !errors.As(err, &le) || le.Class != 2 {
			t.Errorf("no CHAP against a target requiring it: %v; want a class 2 Login status", err)
		}
	})
	t.Run("mutual", func(t *testing.T) {
		d := tgtdWithCHAP(t, true)
		if err := login(d, &CHAP{Name: chapName, Secret: chapSecret, MutualName: mutualName, MutualSecret: mutualSecret}); err != nil {
			t.Fatal(err)
		}
		err := login(d, &CHAP{Name: chapName, Secret: chapSecret, MutualName: mutualName, MutualSecret: "not-tgtds-secret"})
		if !errors.Is(err, ErrTargetAuthentication) {
			t.Errorf("tgtd with another mutual secret: %v; want ErrTargetAuthentication", err)
		}
	})
}
