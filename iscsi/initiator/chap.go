package initiator

import (
	"crypto/rand"
	"crypto/subtle"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/certkit/certkit/iscsi"
)

// CHAP holds the credentials of CHAP authentication at login (RFC 7143
// §12.1.3 over RFC 1994), with MD5 (CHAP_A=5), the algorithm ESXi,
// open-iscsi and libiscsi use. Its String and GoString never show a secret,
// and no error or log line of this package contains one.
type CHAP struct {
	// Name and Secret answer the target's challenge: one-way CHAP, the
	// target authenticates this initiator.
	Name, Secret string
	// MutualSecret, when set, makes this initiator challenge the target in
	// turn (mutual CHAP): the target must answer with MutualSecret, and as
	// MutualName when that is set, or the login fails with
	// ErrTargetAuthentication. RFC 7143 §9.2.1: it must differ from Secret.
	MutualName, MutualSecret string
	// Level says how much this initiator insists on CHAP. With MutualSecret
	// set, CHAP is always required: a target that does not authenticate
	// cannot be trusted.
	Level CHAPLevel
}

// CHAPLevel is how an initiator offers CHAP, ESXi's CHAP levels (esxcli
// iscsi adapter auth chap set --level; "prohibited" is no CHAP at all).
type CHAPLevel int

const (
	// CHAPPreferred offers AuthMethod=CHAP,None: CHAP unless the target
	// does without authentication.
	CHAPPreferred CHAPLevel = iota
	// CHAPRequired offers only AuthMethod=CHAP; a target that does not
	// authenticate this initiator fails the login.
	CHAPRequired
	// CHAPDiscouraged offers AuthMethod=None,CHAP: CHAP only when the
	// target insists on it.
	CHAPDiscouraged
)

func (l CHAPLevel) String() string {
	switch l {
	case CHAPPreferred:
		return "preferred"
	case CHAPRequired:
		return "required"
	case CHAPDiscouraged:
		return "discouraged"
	}
	return "CHAPLevel(" + strconv.Itoa(int(l)) + ")"
}

// String describes the credentials without their secrets.
func (c CHAP) String() string {
	s := fmt.Sprintf("CHAP %s as %q", c.Level, c.Name)
	if c.MutualSecret != "" {
		s += fmt.Sprintf(", mutual with %q", c.MutualName)
	}
	return s
}

// GoString keeps %#v from printing the secrets.
func (c CHAP) GoString() string { return "initiator.CHAP{" + c.String() + "}" }

// ErrTargetAuthentication is the error (wrapped) of a login whose target
// did not prove it knows the mutual CHAP secret.
var ErrTargetAuthentication = errors.New("target failed mutual CHAP authentication")

// chapMD5 is CHAP_A=5, MD5 (RFC 1994).
const chapMD5 = "5"

// Bounds of CHAP values: a challenge is at most 1024 bytes (RFC 7143
// §12.1.3); ours is 16, the size of an MD5 response.
const (
	maxCHAPChallenge = 1024
	chapChallengeLen = 16
)

// mutual reports whether c asks the target to authenticate itself.
func (c *CHAP) mutual() bool { return c != nil && c.MutualSecret != "" }

// required reports whether a login must authenticate with CHAP.
func (c *CHAP) required() bool { return c != nil && (c.Level == CHAPRequired || c.mutual()) }

// authMethods is the AuthMethod offer of the first Login Request.
func (c *CHAP) authMethods() string {
	switch {
	case c == nil:
		return "None"
	case c.required():
		return "CHAP"
	case c.Level == CHAPDiscouraged:
		return "None,CHAP"
	}
	return "CHAP,None"
}

// check validates the credentials before a login; errors name the field,
// never a secret's value.
func (c *CHAP) check() error {
	if c == nil {
		return nil
	}
	switch {
	case c.Name == "":
		return errors.New("CHAP.Name is empty; set the CHAP name the target expects")
	case c.Secret == "":
		return errors.New("CHAP.Secret is empty; set the CHAP secret the target expects")
	case len(c.Name) > iscsi.MaxValueLength || len(c.MutualName) > iscsi.MaxValueLength:
		return fmt.Errorf("CHAP name longer than %d bytes", iscsi.MaxValueLength)
	case c.MutualName != "" && c.MutualSecret == "":
		return errors.New("CHAP.MutualName is set but CHAP.MutualSecret is empty; set both for mutual CHAP")
	case c.MutualSecret != "" && c.MutualSecret == c.Secret:
		return errors.New("CHAP.MutualSecret equals CHAP.Secret; RFC 7143 §9.2.1 wants a different secret in each direction")
	case c.Level < CHAPPreferred || c.Level > CHAPDiscouraged:
		return fmt.Errorf("CHAP.Level %d is not one of CHAPPreferred, CHAPRequired, CHAPDiscouraged", int(c.Level))
	}
	return nil
}

// authState is what the security stage settled so far.
type authState struct {
	method string // the AuthMethod the target chose; "" until it did
	done   bool   // CHAP exchange completed
}

// authenticate runs the security stage after each of the target's answers
// in it (resp, got): it checks the AuthMethod the target chose and, for
// CHAP, runs the exchange to its end. It returns the last response of the
// exchange and the keys of every response that are not security keys, for
// operational negotiation.
func (l *loginConn) authenticate(resp *iscsi.PDU, got iscsi.Text) (*iscsi.PDU, iscsi.Text, error) {
	c := l.o.CHAP
	rest := make(iscsi.Text, 0, len(got))
	method, chose := "", false
	for _, kv := range got {
		switch {
		case kv.Key == "AuthMethod":
			method, chose = kv.Value, true
		case strings.HasPrefix(kv.Key, "CHAP_"):
			return nil, nil, fmt.Errorf("protocol error: target sent %s outside a CHAP exchange", kv.Key)
		default:
			rest = append(rest, kv)
		}
	}
	if chose {
		if l.auth.method != "" {
			return nil, nil, fmt.Errorf("protocol error: target answered AuthMethod twice (%s, then %s)", l.auth.method, method)
		}
		switch {
		case method == "None" && c.required():
			return nil, nil, fmt.Errorf("target chose AuthMethod=None, but this initiator requires CHAP (level %s%s); configure CHAP on the target", c.Level, mutualNote(c))
		case method == "None":
		case method == "CHAP" && c == nil:
			return nil, nil, errors.New("target requires AuthMethod=CHAP; configure CHAP credentials for this initiator (Options.CHAP)")
		case method == "CHAP":
		case method == "Reject" || method == "NotUnderstood" || method == "Irrelevant":
			return nil, nil, fmt.Errorf("target answered AuthMethod=%s to the offer %s", method, c.authMethods())
		default:
			return nil, nil, fmt.Errorf("target chose AuthMethod=%s, which was not offered (%s)", method, c.authMethods())
		}
		l.auth.method = method
	}
	transit := resp.Flags()&iscsi.FlagTransit != 0
	if l.auth.method == "CHAP" && !l.auth.done {
		if transit {
			return nil, nil, errors.New("protocol error: target chose AuthMethod=CHAP and left the security stage before the CHAP exchange")
		}
		return l.chap(rest)
	}
	if transit && c.required() && !l.auth.done {
		return nil, nil, fmt.Errorf("target left the security stage without authenticating, but this initiator requires CHAP (level %s%s)", c.Level, mutualNote(c))
	}
	return resp, rest, nil
}

func mutualNote(c *CHAP) string {
	if c.mutual() {
		return ", mutual"
	}
	return ""
}

// chap runs the CHAP exchange (RFC 7143 §12.1.3) after the target chose
// it: CHAP_A, then the target's CHAP_I and CHAP_C, then this side's
// CHAP_N and CHAP_R (with CHAP_I and CHAP_C of its own for mutual CHAP),
// then, for mutual CHAP, the target's CHAP_N and CHAP_R.
func (l *loginConn) chap(rest iscsi.Text) (*iscsi.PDU, iscsi.Text, error) {
	c := l.o.CHAP
	resp, got, err := l.exchangeWith(stageSecurity, stageOperational, false, iscsi.Text{{Key: "CHAP_A", Value: chapMD5}})
	if err != nil {
		return nil, nil, err
	}
	if resp.Flags()&iscsi.FlagTransit != 0 {
		return nil, nil, errors.New("protocol error: target left the security stage before sending its CHAP challenge")
	}
	keys, rest := splitCHAP(got, rest)
	alg, okA := keys.Get("CHAP_A")
	idv, okI := keys.Get("CHAP_I")
	chv, okC := keys.Get("CHAP_C")
	if okA && alg != chapMD5 {
		return nil, nil, fmt.Errorf("target chose CHAP_A=%s; this initiator offers only 5 (MD5)", alg)
	}
	if !okA || !okI || !okC {
		return nil, nil, fmt.Errorf("protocol error: target's CHAP challenge lacks %s", missingKeys(keys, "CHAP_A", "CHAP_I", "CHAP_C"))
	}
	id, err := parseCHAPID(idv)
	if err != nil {
		return nil, nil, err
	}
	challenge, err := decodeCHAPBinary("CHAP_C", chv)
	if err != nil {
		return nil, nil, err
	}
	if len(challenge) > maxCHAPChallenge {
		return nil, nil, fmt.Errorf("protocol error: target's CHAP_C is %d bytes; at most %d are allowed", len(challenge), maxCHAPChallenge)
	}
	out := iscsi.Text{
		{Key: "CHAP_N", Value: c.Name},
		{Key: "CHAP_R", Value: encodeCHAPBinary(chapResponse(id, c.Secret, challenge))},
	}
	var myID byte
	var myChallenge []byte
	if c.mutual() {
		var b [1 + chapChallengeLen]byte
		for {
			if _, err := rand.Read(b[:]); err != nil {
				return nil, nil, fmt.Errorf("mutual CHAP challenge: %w", err)
			}
			// RFC 7143 §12.1.3: never reuse the target's challenge.
			if subtle.ConstantTimeCompare(b[1:], challenge) == 0 {
				break
			}
		}
		myID, myChallenge = b[0], b[1:]
		out.Add("CHAP_I", strconv.Itoa(int(myID)))
		out.Add("CHAP_C", encodeCHAPBinary(myChallenge))
	}
	resp, got, err = l.exchangeWith(stageSecurity, stageOperational, true, out)
	if err != nil {
		return nil, nil, err
	}
	keys, rest = splitCHAP(got, rest)
	if c.mutual() {
		if err := checkTargetResponse(c, keys, myID, myChallenge); err != nil {
			return nil, nil, err
		}
	}
	l.auth.done = true
	return resp, rest, nil
}

// checkTargetResponse verifies the target's answer to this initiator's
// challenge in mutual CHAP.
func checkTargetResponse(c *CHAP, keys iscsi.Text, id byte, challenge []byte) error {
	name, okN := keys.Get("CHAP_N")
	rv, okR := keys.Get("CHAP_R")
	if !okN || !okR {
		return fmt.Errorf("%w: it did not answer the initiator's challenge (no %s)", ErrTargetAuthentication, missingKeys(keys, "CHAP_N", "CHAP_R"))
	}
	if c.MutualName != "" && name != c.MutualName {
		return fmt.Errorf("%w: it answered as CHAP_N=%q, expected %q", ErrTargetAuthentication, name, c.MutualName)
	}
	r, err := decodeCHAPBinary("CHAP_R", rv)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrTargetAuthentication, err)
	}
	// A response computed with this initiator's own secret is a reflection
	// (RFC 7143 §12.1.3), whatever the configured secrets.
	if subtle.ConstantTimeCompare(r, chapResponse(id, c.Secret, challenge)) == 1 {
		return fmt.Errorf("%w: it answered with the initiator's own secret (a reflection)", ErrTargetAuthentication)
	}
	if subtle.ConstantTimeCompare(r, chapResponse(id, c.MutualSecret, challenge)) != 1 {
		return fmt.Errorf("%w: wrong CHAP_R from %q (the target's mutual secret differs from the initiator's)", ErrTargetAuthentication, name)
	}
	return nil
}

// splitCHAP separates CHAP_* keys from the others, which it appends to rest.
func splitCHAP(got, rest iscsi.Text) (chap, others iscsi.Text) {
	for _, kv := range got {
		if strings.HasPrefix(kv.Key, "CHAP_") {
			chap = append(chap, kv)
		} else {
			rest = append(rest, kv)
		}
	}
	return chap, rest
}

func missingKeys(t iscsi.Text, keys ...string) string {
	var m []string
	for _, k := range keys {
		if _, ok := t.Get(k); !ok {
			m = append(m, k)
		}
	}
	return strings.Join(m, ", ")
}

// The CHAP primitives are the iscsi package's; the initiator reports their
// failures as protocol errors of the target.
var (
	chapResponse     = iscsi.CHAPResponse
	encodeCHAPBinary = iscsi.EncodeBinary
)

func parseCHAPID(v string) (byte, error) {
	id, err := iscsi.ParseCHAPID(v)
	if err != nil {
		return 0, fmt.Errorf("protocol error: %w", err)
	}
	return id, nil
}

func decodeCHAPBinary(key, v string) ([]byte, error) {
	b, err := iscsi.DecodeBinary(key, v)
	if err != nil {
		return nil, fmt.Errorf("protocol error: %w", err)
	}
	return b, nil
}
