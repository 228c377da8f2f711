package array

import (
	"fmt"
	"os"

	"github.com/certkit/certkit/targets/frontend"
)

// AuthConfig is how hosts authenticate to the array's target. With chap
// set, every login (discovery included) must use CHAP; acl (Config.ACL)
// limits which initiators may log in at all.
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

// CHAPConfig is the target's CHAP account (see AuthConfig).
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

// frontendAuth resolves the CHAP account into the front end's Auth;
// errors name the field.
func (c *Config) frontendAuth() (frontend.Auth, error) {
	if c.Auth == nil {
		return frontend.Auth{}, nil
	}
	ch := c.Auth.CHAP
	if ch == nil {
		return frontend.Auth{}, fmt.Errorf("auth: no chap; give auth: {chap: {name: ..., secret_env: ...}} or drop auth")
	}
	if ch.Name == "" {
		return frontend.Auth{}, fmt.Errorf("auth.chap.name: empty; set the CHAP name hosts log in as")
	}
	secret, err := resolveSecret("auth.chap.secret", ch.Secret, ch.SecretEnv)
	if err != nil {
		return frontend.Auth{}, err
	}
	if secret == "" {
		return frontend.Auth{}, fmt.Errorf("auth.chap.secret_env: not set; name an environment variable holding the CHAP secret (or give auth.chap.secret)")
	}
	mutual, err := resolveSecret("auth.chap.mutual_secret", ch.MutualSecret, ch.MutualSecretEnv)
	if err != nil {
		return frontend.Auth{}, err
	}
	switch {
	case mutual != "" && ch.MutualName == "":
		return frontend.Auth{}, fmt.Errorf("auth.chap.mutual_name: empty while a mutual secret is set; set the name the array answers with")
	case mutual == "" && ch.MutualName != "":
		return frontend.Auth{}, fmt.Errorf("auth.chap.mutual_secret_env: not set while mutual_name is; name an environment variable holding the mutual secret, or drop mutual_name")
	case mutual != "" && mutual == secret:
		return frontend.Auth{}, fmt.Errorf("auth.chap.mutual_secret: equals auth.chap.secret; RFC 7143 §9.2.1 wants a different secret in each direction")
	}
	return frontend.Auth{Name: ch.Name, Secret: secret, MutualName: ch.MutualName, MutualSecret: mutual}, nil
}

// validateAccess checks auth and acl for Validate.
func (c *Config) validateAccess() []error {
	var errs []error
	if _, err := c.frontendAuth(); err != nil {
		errs = append(errs, err)
	}
	seen := map[string]bool{}
	for i, iqn := range c.ACL {
		switch {
		case !iqnRE.MatchString(iqn):
			errs = append(errs, fmt.Errorf("acl[%d] %q: want a lowercase initiator name like iqn.1998-01.com.vmware:esx-01-1a2b3c4d", i, iqn))
		case seen[iqn]:
			errs = append(errs, fmt.Errorf("acl[%d] %q: listed twice", i, iqn))
		}
		seen[iqn] = true
	}
	return errs
}
