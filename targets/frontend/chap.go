package frontend

import (
	"crypto/rand"
	"crypto/subtle"
	"fmt"
	"strconv"
	"strings"

	"github.com/certkit/certkit/iscsi"
)

// Auth is a CHAP configuration (RFC 7143 §12.1.3 over RFC 1994, MD5:
// CHAP_A=5) of a target or of discovery sessions (Config.DiscoveryAuth).
// The zero value is no authentication: logins use AuthMethod=None.
//
// With Secret set, every login it governs must authenticate with CHAP as
// Name with Secret; an initiator that offers
// only None, skips the security stage or answers wrongly gets Login status
// 0x0201 (authentication failure). MutualName and MutualSecret are what the
// target answers when the initiator challenges it in turn (mutual CHAP);
// without them such an initiator is refused. Secrets are at least 12 bytes
// (96 bits, RFC 7143 §9.2.1) and differ between the two directions. String
// never shows them, and no error or log line of this package contains one.
type Auth struct {
	Name, Secret             string
	MutualName, MutualSecret string
}

// MinCHAPSecret is the shortest CHAP secret accepted: 96 bits, RFC 7143
// §9.2.1's minimum for CHAP without IPsec.
const MinCHAPSecret = 12

// Enabled reports whether logins must authenticate with CHAP.
func (a Auth) Enabled() bool { return a.Secret != "" }

// String describes the configuration without its secrets.
func (a Auth) String() string {
	if !a.Enabled() {
		return "AuthMethod=None"
	}
	s := fmt.Sprintf("CHAP as %q", a.Name)
	if a.MutualSecret != "" {
		s += fmt.Sprintf(", mutual as %q", a.MutualName)
	}
	return s
}

// GoString keeps %#v from printing the secrets.
func (a Auth) GoString() string { return "frontend.Auth{" + a.String() + "}" }

// Login status details of access control (RFC 7143 §11.13.5).
const statusAuthzFailure uint16 = 0x0202 // initiator not allowed to access the target

// validate checks a CHAP configuration; field names it in errors (Auth,
// Targets[1].Auth, DiscoveryAuth), which never show a secret's value.
func (a Auth) validate(field string) error {
	switch {
	case a.Secret == "" && (a.Name != "" || a.MutualName != "" || a.MutualSecret != ""):
		return fmt.Errorf("%s.Secret is empty while other %s fields are set; set %s.Name and %s.Secret for CHAP, or leave %s empty", field, field, field, field, field)
	case a.Secret == "":
	case a.Name == "":
		return fmt.Errorf("%s.Name is empty; set the CHAP name initiators authenticate as", field)
	case len(a.Secret) < MinCHAPSecret:
		return fmt.Errorf("%s.Secret is %d bytes; CHAP secrets need at least %d (RFC 7143 §9.2.1)", field, len(a.Secret), MinCHAPSecret)
	case a.MutualSecret == "" && a.MutualName != "":
		return fmt.Errorf("%s.MutualName is set but %s.MutualSecret is empty; set both for mutual CHAP", field, field)
	case a.MutualSecret == "":
	case a.MutualName == "":
		return fmt.Errorf("%s.MutualName is empty; set the CHAP name the target answers with in mutual CHAP", field)
	case len(a.MutualSecret) < MinCHAPSecret:
		return fmt.Errorf("%s.MutualSecret is %d bytes; CHAP secrets need at least %d (RFC 7143 §9.2.1)", field, len(a.MutualSecret), MinCHAPSecret)
	case a.MutualSecret == a.Secret:
		return fmt.Errorf("%s.MutualSecret equals %s.Secret; RFC 7143 §9.2.1 wants a different secret in each direction", field, field)
	}
	return nil
}

// discoveryAuth is the CHAP account discovery sessions need (see
// Config.DiscoveryAuth): the configured one, else the one account every
// target shares, else none.
func discoveryAuth(configured Auth, targets []*Target) Auth {
	if configured.Enabled() {
		return configured
	}
	shared := targets[0].Auth
	for _, t := range targets[1:] {
		if t.Auth != shared {
			return Auth{}
		}
	}
	return shared
}

// allowed reports whether the target's ACL lets initiator (an IQN; iSCSI
// names compare case-insensitively) access it.
func (t *Target) allowed(initiator string) bool {
	if len(t.ACL) == 0 {
		return true
	}
	for _, name := range t.ACL {
		if strings.EqualFold(strings.TrimSpace(name), initiator) {
			return true
		}
	}
	return false
}

// chapStep is how far a login's CHAP exchange has come.
type chapStep int

const (
	chapNone       chapStep = iota // AuthMethod not agreed yet
	chapChosen                     // AuthMethod=CHAP answered; CHAP_A expected
	chapChallenged                 // CHAP_I and CHAP_C sent; CHAP_N and CHAP_R expected
	chapDone                       // initiator authenticated (and target, if asked)
)

// loginAuth is the CHAP state of one login.
type loginAuth struct {
	step      chapStep
	id        byte
	challenge []byte
}

// checkAccess runs on a login's first request, once the initiator, the
// session type and (for a normal session) the target are known: the
// target's ACL, and CHAP's demand for a security stage. It settles which
// CHAP account the login answers to: the target's, or discovery's.
//
// An initiator not in the ACL gets 0x0202 for a normal session, as LIO
// answers (tgtd answers 0x0203, target not found); its discovery session
// succeeds, but SendTargets lists nothing to it, as both tgtd and LIO
// (demo_mode_discovery=0) do.
func (l *loginConn) checkAccess(csg int) error {
	if l.discovery {
		l.acct = l.srv.discovery
	} else {
		if !l.tgt.allowed(l.initiator) {
			return failLogin(statusAuthzFailure, "initiator %s is not in the ACL of target %s; add it to the target's acl", l.initiator, l.tgt.Name)
		}
		l.acct = l.tgt.Auth
	}
	if l.acct.Enabled() && csg != stageSecurity {
		return failLogin(statusAuthFailure, "initiator %s skipped the security stage; %s requires CHAP", l.initiator, l.what())
	}
	return nil
}

// what names what the login is for in errors: "target IQN" or
// "discovery".
func (l *loginConn) what() string {
	if l.tgt == nil {
		return "discovery"
	}
	return "target " + l.tgt.Name
}

// authenticate takes the security keys (AuthMethod, CHAP_*) out of one
// login request of the security stage when the target requires CHAP,
// adds its answers to out, and returns the other keys.
func (l *loginConn) authenticate(kv iscsi.Text, csg int, out *iscsi.Text) (iscsi.Text, error) {
	if !l.acct.Enabled() || csg != stageSecurity {
		return kv, nil
	}
	var rest, keys iscsi.Text
	method, offered := "", false
	for _, p := range kv {
		switch {
		case p.Key == "AuthMethod":
			method, offered = p.Value, true
		case strings.HasPrefix(p.Key, "CHAP_"):
			keys = append(keys, p)
		default:
			rest = append(rest, p)
		}
	}
	if offered && l.auth.step == chapNone { // a key negotiates once; repeats are ignored
		if !hasValue(method, "CHAP") {
			return nil, failLogin(statusAuthFailure, "initiator %s offered AuthMethod=%s; %s requires CHAP", l.initiator, method, l.what())
		}
		out.Add("AuthMethod", "CHAP")
		l.auth.step = chapChosen
	}
	if len(keys) == 0 {
		return rest, nil
	}
	if l.auth.step == chapNone {
		return nil, failLogin(statusInitiatorError, "initiator %s sent %s before AuthMethod=CHAP was agreed", l.initiator, keys[0].Key)
	}
	if alg, ok := keys.Get("CHAP_A"); ok {
		if l.auth.step != chapChosen || len(keys) != 1 {
			return nil, failLogin(statusInitiatorError, "initiator %s sent CHAP_A out of sequence (%s)", l.initiator, keyNames(keys))
		}
		return rest, l.challenge(alg, out)
	}
	if l.auth.step != chapChallenged {
		return nil, failLogin(statusInitiatorError, "initiator %s sent %s out of sequence; expected CHAP_A first", l.initiator, keyNames(keys))
	}
	return rest, l.verify(keys, out)
}

// challenge answers CHAP_A with the algorithm, an identifier and a random
// 16-byte challenge.
func (l *loginConn) challenge(algs string, out *iscsi.Text) error {
	if !hasValue(algs, "5") {
		return failLogin(statusAuthFailure, "initiator %s offered CHAP_A=%s; this target supports only 5 (MD5)", l.initiator, algs)
	}
	b := make([]byte, 1+16)
	if _, err := rand.Read(b); err != nil {
		return failLogin(statusTargetError, "CHAP challenge: %v", err)
	}
	l.auth.id, l.auth.challenge = b[0], b[1:]
	out.Add("CHAP_A", "5")
	out.Add("CHAP_I", strconv.Itoa(int(l.auth.id)))
	out.Add("CHAP_C", iscsi.EncodeBinary(l.auth.challenge))
	l.auth.step = chapChallenged
	return nil
}

// verify checks the initiator's CHAP_N and CHAP_R and, when it sent
// CHAP_I and CHAP_C, answers them (mutual CHAP).
func (l *loginConn) verify(keys iscsi.Text, out *iscsi.Text) error {
	a := &l.acct
	target := l.what()
	for _, p := range keys {
		switch p.Key {
		case "CHAP_N", "CHAP_R", "CHAP_I", "CHAP_C":
		default:
			return failLogin(statusInitiatorError, "initiator %s sent %s, not a CHAP response key", l.initiator, p.Key)
		}
	}
	name, okN := keys.Get("CHAP_N")
	rv, okR := keys.Get("CHAP_R")
	iv, okI := keys.Get("CHAP_I")
	cv, okC := keys.Get("CHAP_C")
	if !okN || !okR {
		return failLogin(statusInitiatorError, "initiator %s answered the CHAP challenge without %s", l.initiator, missing(keys, "CHAP_N", "CHAP_R"))
	}
	if okI != okC {
		return failLogin(statusInitiatorError, "initiator %s sent only one of CHAP_I and CHAP_C; mutual CHAP needs both", l.initiator)
	}
	var mid byte
	var mc []byte
	if okI {
		var err error
		if mid, err = iscsi.ParseCHAPID(iv); err != nil {
			return failLogin(statusInitiatorError, "initiator %s: %v", l.initiator, err)
		}
		if mc, err = iscsi.DecodeBinary("CHAP_C", cv); err != nil {
			return failLogin(statusInitiatorError, "initiator %s: %v", l.initiator, err)
		}
		if len(mc) > 1024 {
			return failLogin(statusInitiatorError, "initiator %s sent a CHAP_C of %d bytes; at most 1024 are allowed", l.initiator, len(mc))
		}
		// RFC 7143 §12.1.3: an initiator must not send back the target's own
		// challenge; answering it would hand out a response to replay.
		if subtle.ConstantTimeCompare(mc, l.auth.challenge) == 1 {
			return failLogin(statusAuthFailure, "initiator %s reflected the target's CHAP challenge (a reflection attack); refused", l.initiator)
		}
	}
	r, err := iscsi.DecodeBinary("CHAP_R", rv)
	if err != nil {
		return failLogin(statusInitiatorError, "initiator %s: %v", l.initiator, err)
	}
	want := iscsi.CHAPResponse(l.auth.id, a.Secret, l.auth.challenge)
	if name != a.Name || subtle.ConstantTimeCompare(r, want) != 1 {
		why := "wrong CHAP_R (secret differs)"
		if name != a.Name {
			why = fmt.Sprintf("CHAP_N %q is not the configured name", name)
		}
		return failLogin(statusAuthFailure, "initiator %s failed CHAP authentication to %s: %s", l.initiator, target, why)
	}
	if okI {
		if a.MutualSecret == "" {
			return failLogin(statusAuthFailure, "initiator %s asked %s for mutual CHAP, which is not configured here (set its mutual name and secret)", l.initiator, target)
		}
		out.Add("CHAP_N", a.MutualName)
		out.Add("CHAP_R", iscsi.EncodeBinary(iscsi.CHAPResponse(mid, a.MutualSecret, mc)))
	}
	l.auth.step = chapDone
	return nil
}

// authGate decides whether a security-stage request that asks to transit
// may: not before CHAP has finished, when the target requires it. A request
// that leaves without ever agreeing on CHAP fails the login.
func (l *loginConn) authGate(csg int, transit bool) (bool, error) {
	if !l.acct.Enabled() || csg != stageSecurity || l.auth.step == chapDone {
		return transit, nil
	}
	if transit && l.auth.step == chapNone {
		return false, failLogin(statusAuthFailure, "initiator %s left the security stage without authenticating; %s requires CHAP", l.initiator, l.what())
	}
	return false, nil
}

func keyNames(t iscsi.Text) string {
	names := make([]string, len(t))
	for i, p := range t {
		names[i] = p.Key
	}
	return strings.Join(names, ", ")
}

func missing(t iscsi.Text, keys ...string) string {
	var m []string
	for _, k := range keys {
		if _, ok := t.Get(k); !ok {
			m = append(m, k)
		}
	}
	return strings.Join(m, " and ")
}
