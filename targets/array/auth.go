package array

import (
	"fmt"
	"os"

	"github.com/certkit/certkit/targets/frontend"
)

// AuthConfig is how hosts authenticate: to a target (a target's auth, or
// the one-target shorthand's top-level auth), or to discovery sessions
// (discovery_auth). With chap set, every login it governs must use CHAP;
// a target's acl limits which initiators may log in to it at all.
//
// Discovery: with discovery_auth set, discovery logins need that account.
// Without it, discovery needs CHAP only when every target has the same
// CHAP account, and then that account (so a one-target array with auth
// asks it of discovery too, and hosts given the array's one account use it
// for both); targets with different accounts leave discovery open, as
// Linux's target does by default. Either way SendTargets lists only the
// targets whose acl allows the host.
//
//	auth:
//	  chap:
//	    name: esx-hosts
//	    secret_env: ARRAY_A_CHAP_SECRET        # or secret: ..., not both
//	    mutual_name: array-a                   # mutual CHAP: the array's name
//	    mutual_secret_env: ARRAY_A_CHAP_MUTUAL # and secret (or mutual_secret)
//	acl: [iqn.1998-01.com.vmware:esx-01-1a2b3c4d]
//
// Secrets are 12..255 bytes (RFC 7143 §9.2.1's 96 bits; ESXi takes at most
// 255) and differ between the directions. Prefer the *_env forms: they keep
// secrets out of the file. No error, log line or Info shows a secret.
type AuthConfig struct {
	CHAP *CHAPConfig `yaml:"chap"`
}

// CHAPConfig is a CHAP account (see AuthConfig).
type CHAPConfig struct {
	Name            string `yaml:"name"`
	Secret          string `yaml:"secret,omitempty"`
	SecretEnv       string `yaml:"secret_env,omitempty"`
	MutualName      string `yaml:"mutual_name,omitempty"`
	MutualSecret    string `yaml:"mutual_secret,omitempty"`
	MutualSecretEnv string `yaml:"mutual_secret_env,omitempty"`
}

// String describes the account without its secrets.
func (c CHAPConfig) String() string {
	s := fmt.Sprintf("CHAP as %q", c.Name)
	if c.MutualName != "" {
		s += fmt.Sprintf(", mutual as %q", c.MutualName)
	}
	return s
}

// GoString keeps %#v from printing the secrets.
func (c CHAPConfig) GoString() string { return "array.CHAPConfig{" + c.String() + "}" }

// Bounds on a CHAP secret.
const (
	MinCHAPSecret = frontend.MinCHAPSecret
	MaxCHAPSecret = 255
)

// resolveSecret returns the secret given inline or through an environment
// variable; field names the YAML key for errors, which never hold the value.
func resolveSecret(field, inline, env string) (string, error) {
	switch {
	case inline != "" && env != "":
		return "", fmt.Errorf("%s and %s_env are both set; keep one (prefer %s_env)", field, field, field)
	case env != "":
		v, ok := os.LookupEnv(env)
		if !ok || v == "" {
			return "", fmt.Errorf("%s_env: environment variable %s is not set; export it with the CHAP secret", field, env)
		}
		inline = v
		field += "_env " + env
	case inline == "":
		return "", nil
	}
	if len(inline) < MinCHAPSecret || len(inline) > MaxCHAPSecret {
		return "", fmt.Errorf("%s: the secret is %d bytes; want %d..%d (RFC 7143 §9.2.1 asks for at least 96 bits)", field, len(inline), MinCHAPSecret, MaxCHAPSecret)
	}
	return inline, nil
}

// resolve turns the CHAP account into the front end's Auth; field is the
// YAML path of the account (auth, targets[1].auth, discovery_auth) for
// errors, which never show a secret. A nil account is no CHAP.
func (a *AuthConfig) resolve(field string) (frontend.Auth, error) {
	if a == nil {
		return frontend.Auth{}, nil
	}
	ch := a.CHAP
	if ch == nil {
		return frontend.Auth{}, fmt.Errorf("%s: no chap; give %s: {chap: {name: ..., secret_env: ...}} or drop %s", field, field, field)
	}
	f := field + ".chap"
	if ch.Name == "" {
		return frontend.Auth{}, fmt.Errorf("%s.name: empty; set the CHAP name hosts log in as", f)
	}
	secret, err := resolveSecret(f+".secret", ch.Secret, ch.SecretEnv)
	if err != nil {
		return frontend.Auth{}, err
	}
	if secret == "" {
		return frontend.Auth{}, fmt.Errorf("%s.secret_env: not set; name an environment variable holding the CHAP secret (or give %s.secret)", f, f)
	}
	mutual, err := resolveSecret(f+".mutual_secret", ch.MutualSecret, ch.MutualSecretEnv)
	if err != nil {
		return frontend.Auth{}, err
	}
	switch {
	case mutual != "" && ch.MutualName == "":
		return frontend.Auth{}, fmt.Errorf("%s.mutual_name: empty while a mutual secret is set; set the name the array answers with", f)
	case mutual == "" && ch.MutualName != "":
		return frontend.Auth{}, fmt.Errorf("%s.mutual_secret_env: not set while mutual_name is; name an environment variable holding the mutual secret, or drop mutual_name", f)
	case mutual != "" && mutual == secret:
		return frontend.Auth{}, fmt.Errorf("%s.mutual_secret: equals %s.secret; RFC 7143 §9.2.1 wants a different secret in each direction", f, f)
	}
	return frontend.Auth{Name: ch.Name, Secret: secret, MutualName: ch.MutualName, MutualSecret: mutual}, nil
}

// validateACL checks one target's acl; field is its YAML path (acl,
// targets[1].acl).
func validateACL(field string, acl []string) []error {
	var errs []error
	seen := map[string]bool{}
	for i, iqn := range acl {
		switch {
		case !iqnRE.MatchString(iqn):
			errs = append(errs, fmt.Errorf("%s[%d] %q: want a lowercase initiator name like iqn.1998-01.com.vmware:esx-01-1a2b3c4d", field, i, iqn))
		case seen[iqn]:
			errs = append(errs, fmt.Errorf("%s[%d] %q: listed twice", field, i, iqn))
		}
		seen[iqn] = true
	}
	return errs
}
