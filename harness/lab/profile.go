// Package lab is the lab profile: which ESXi hosts and which arrays a
// certification run uses, how to reach them, and the timings every
// expectation is judged with. A partner writes one YAML file per lab
// (example.yaml in this directory is a commented template); the embedded lab
// uses the built-in profile returned by Embedded.
//
// Parsing is strict: an unknown field is an error naming the field, the
// file and the line, so a misspelt timing never silently falls back to a
// default.
package lab

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// DefaultAdapter is the software iSCSI adapter name used when a host does
// not name one (the name ESXi 6.5 and later give the software adapter).
const DefaultAdapter = "vmhba64"

// RedactedValue replaces secrets in Redacted profiles.
const RedactedValue = "[redacted]"

// Profile describes one lab.
type Profile struct {
	// Name identifies the lab in reports and bundles, e.g. "acme-lab-1".
	Name string `yaml:"name"`
	// Hosts are the ESXi hosts under test, reached over SSH.
	Hosts []Host `yaml:"hosts"`
	// Arrays are the storage arrays under test, reached through certkit's
	// control API (certkit target serve runs it next to a software array).
	Arrays []Array `yaml:"arrays"`
	// Timings bound every wait and every expectation. Omitted (or zero)
	// fields take the values of DefaultTimings.
	Timings Timings `yaml:"timings"`
}

// Host is one ESXi host under test.
type Host struct {
	// Name identifies the host in reports and names its directory in the
	// bundle, e.g. "esx-01": letters, digits, '.', '_', '-'. Unique.
	Name string `yaml:"name"`
	// SSH says how to reach the host's SSH service (esxcli runs there).
	SSH SSH `yaml:"ssh"`
	// Adapter is the software iSCSI adapter the tests configure, as
	// `esxcli iscsi adapter list` names it. Default DefaultAdapter (vmhba64).
	Adapter string `yaml:"adapter,omitempty"`
}

// SSH is how the harness logs in to a host. The host key is always checked
// against KnownHosts; there is no option to skip that check.
type SSH struct {
	// Address is host:port of the SSH service, e.g. "10.0.0.11:22".
	Address string `yaml:"address"`
	// User is the login, usually "root".
	User string `yaml:"user"`
	// Password is the login password. Prefer PasswordEnv, which keeps the
	// password out of the file. Exactly one of the two is set.
	Password string `yaml:"password,omitempty"`
	// PasswordEnv names an environment variable holding the password.
	PasswordEnv string `yaml:"password_env,omitempty"`
	// KnownHosts is an OpenSSH known_hosts file holding the host's key
	// (`ssh-keyscan -p PORT HOST > known_hosts`). Load resolves a relative
	// path against the profile's directory.
	KnownHosts string `yaml:"known_hosts"`
}

// Array is one array under test.
type Array struct {
	// Name identifies the array in reports, e.g. "array-1": letters,
	// digits, '.', '_', '-'. Unique.
	Name string `yaml:"name"`
	// Control is how to reach the array's control API.
	Control Control `yaml:"control"`
}

// Control locates an array's control API (HTTP+JSON, bearer token, and
// mutual TLS when the array asks for it).
type Control struct {
	// URL is the API's base URL, e.g. "http://10.0.0.50:7070", or
	// "https://..." for an array served with TLS.
	URL string `yaml:"url"`
	// Token is the bearer token. Prefer TokenFile, which keeps the token
	// out of the file. Exactly one of the two is set.
	Token string `yaml:"token,omitempty"`
	// TokenFile is a file whose content (surrounding space trimmed) is the
	// token. Load resolves a relative path against the profile's directory.
	TokenFile string `yaml:"token_file,omitempty"`
	// TLS holds the files an https control API needs (docs/ARRAY-CONTROL.md).
	TLS *ControlTLS `yaml:"tls,omitempty"`
}

// ControlTLS are the PEM files the harness uses to reach an array's control
// API over TLS: CA verifies the array's certificate (empty: the system's
// CAs); Cert and Key are the client certificate an array serving mutual TLS
// requires (both or neither). Load resolves relative paths against the
// profile's directory. `certkit target certs` writes all three.
type ControlTLS struct {
	CA   string `yaml:"ca,omitempty"`
	Cert string `yaml:"cert,omitempty"`
	Key  string `yaml:"key,omitempty"`
}

// Timings are the ESXi iSCSI adapter parameters the run sets on every host
// and the harness's own bounds. Every timing a test waits for or judges by
// comes from here; none is a literal in a test.
type Timings struct {
	// NoopOutInterval is the iSCSI adapter's NoopOutInterval: how often a
	// NOP-Out probes an idle connection. ESXi range 1–60 s, whole seconds;
	// ESXi default 15 s.
	NoopOutInterval Duration `yaml:"noop_out_interval"`
	// NoopOutTimeout is the adapter's NoopOutTimeout: how long a NOP-In may
	// take before the connection is dropped. ESXi range 10–30 s, whole
	// seconds; default 10 s.
	NoopOutTimeout Duration `yaml:"noop_out_timeout"`
	// RecoveryTimeout is the adapter's RecoveryTimeout: how long a dropped
	// session may take to come back before its paths turn dead. ESXi range
	// 1–120 s, whole seconds; default 10 s.
	RecoveryTimeout Duration `yaml:"recovery_timeout"`
	// LoginTimeout is the adapter's LoginTimeout: how long one login
	// attempt may take. ESXi range 1–60 s, whole seconds; default 5 s.
	LoginTimeout Duration `yaml:"login_timeout"`
	// DetectionSlack is added to every ESXi-derived detection bound to
	// absorb polling and scheduling delay (default 3 s).
	DetectionSlack Duration `yaml:"detection_slack"`
	// FailbackTimeout bounds how long paths may take to return to active
	// after a fault is reverted (default 60 s).
	FailbackTimeout Duration `yaml:"failback_timeout"`
	// PollInterval is how often observers poll host state, e.g.
	// `esxcli storage core path list` (default 500 ms).
	PollInterval Duration `yaml:"poll_interval"`
	// CommandTimeout bounds one SSH command or one control API call
	// (default 30 s).
	CommandTimeout Duration `yaml:"command_timeout"`
	// SetupTimeout bounds bringing a host to the starting state: adapter
	// parameters, discovery, rescan, every path active (default 60 s).
	SetupTimeout Duration `yaml:"setup_timeout"`
	// IOTimeout bounds one I/O of the workload, including the stall while
	// the host fails over (default 60 s).
	IOTimeout Duration `yaml:"io_timeout"`
}

// DefaultTimings are the timings of a profile that sets none: ESXi's own
// adapter defaults (NoopOutInterval 15 s, NoopOutTimeout 10 s,
// RecoveryTimeout 10 s, LoginTimeout 5 s) and harness bounds
// (DetectionSlack 3 s, FailbackTimeout 60 s, PollInterval 500 ms,
// CommandTimeout 30 s, SetupTimeout 60 s, IOTimeout 60 s).
func DefaultTimings() Timings {
	return Timings{
		NoopOutInterval: Seconds(15),
		NoopOutTimeout:  Seconds(10),
		RecoveryTimeout: Seconds(10),
		LoginTimeout:    Seconds(5),
		DetectionSlack:  Seconds(3),
		FailbackTimeout: Seconds(60),
		PollInterval:    Duration{500 * time.Millisecond},
		CommandTimeout:  Seconds(30),
		SetupTimeout:    Seconds(60),
		IOTimeout:       Seconds(60),
	}
}

// Embedded returns the built-in profile of the embedded lab (name
// "embedded"): timings tuned for a fast demo, no hosts and no arrays. The
// embedded lab fills in Hosts and Arrays when it has started them; the
// profile validates only after that.
func Embedded() *Profile {
	t := DefaultTimings()
	t.NoopOutInterval = Seconds(1)
	t.NoopOutTimeout = Seconds(10) // ESXi's minimum
	t.RecoveryTimeout = Seconds(1)
	t.LoginTimeout = Seconds(1)
	t.DetectionSlack = Seconds(3)
	t.PollInterval = Duration{250 * time.Millisecond}
	t.FailbackTimeout = Seconds(30)
	t.CommandTimeout = Seconds(20)
	return &Profile{Name: "embedded", Timings: t}
}

// SilentPathDeadWithin is how long after a path goes silent (blackhole)
// ESXi may take to mark it dead: a NOP-Out is due within NoopOutInterval,
// its answer is given up after NoopOutTimeout, the session has
// RecoveryTimeout to come back; plus DetectionSlack.
func (t Timings) SilentPathDeadWithin() time.Duration {
	return t.NoopOutInterval.Duration + t.NoopOutTimeout.Duration +
		t.RecoveryTimeout.Duration + t.DetectionSlack.Duration
}

// ResetPathDeadWithin is how long after a connection reset ESXi may take
// to mark the path dead: the reset is noticed at once, then the session
// has RecoveryTimeout to come back; plus DetectionSlack.
func (t Timings) ResetPathDeadWithin() time.Duration {
	return t.RecoveryTimeout.Duration + t.DetectionSlack.Duration
}

// Load reads, parses and validates the profile at path, and resolves the
// relative KnownHosts and TokenFile paths in it against path's directory.
func Load(path string) (*Profile, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("lab profile: %w", err)
	}
	p, err := parse(data, path)
	if err != nil {
		return nil, err
	}
	dir := filepath.Dir(path)
	for i := range p.Hosts {
		p.Hosts[i].SSH.KnownHosts = resolve(dir, p.Hosts[i].SSH.KnownHosts)
	}
	for i := range p.Arrays {
		c := &p.Arrays[i].Control
		c.TokenFile = resolve(dir, c.TokenFile)
		if c.TLS != nil {
			c.TLS.CA, c.TLS.Cert, c.TLS.Key = resolve(dir, c.TLS.CA), resolve(dir, c.TLS.Cert), resolve(dir, c.TLS.Key)
		}
	}
	if err := p.validate(path); err != nil {
		return nil, err
	}
	return p, nil
}

func resolve(dir, p string) string {
	if p == "" || filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(dir, p)
}

// Parse parses and validates a profile; source names it in errors (a file
// name, or e.g. "bundle lab.yaml"). Relative paths stay as written.
func Parse(data []byte, source string) (*Profile, error) {
	p, err := parse(data, source)
	if err != nil {
		return nil, err
	}
	if err := p.validate(source); err != nil {
		return nil, err
	}
	return p, nil
}

func parse(data []byte, source string) (*Profile, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, fmt.Errorf("lab profile %s: empty; write at least a name, hosts and arrays (see harness/lab/example.yaml)", source)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var p Profile
	if err := dec.Decode(&p); err != nil {
		return nil, fmt.Errorf("lab profile %s: %s", source, yamlMessage(err))
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("lab profile %s: more than one YAML document; keep one profile per file", source)
	}
	p.applyDefaults()
	return &p, nil
}

// applyDefaults fills omitted adapters and timings.
func (p *Profile) applyDefaults() {
	for i := range p.Hosts {
		if p.Hosts[i].Adapter == "" {
			p.Hosts[i].Adapter = DefaultAdapter
		}
	}
	def := reflect.ValueOf(DefaultTimings())
	cur := reflect.ValueOf(&p.Timings).Elem()
	for i := 0; i < cur.NumField(); i++ {
		if cur.Field(i).Interface().(Duration).Duration == 0 {
			cur.Field(i).Set(def.Field(i))
		}
	}
}

var unknownField = regexp.MustCompile(`^line (\d+): field (\S+) not found in type (\S+)$`)

// yamlMessage rewrites yaml.v3's errors so an unknown field names itself
// and the fields that are allowed there.
func yamlMessage(err error) string {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return strings.TrimPrefix(err.Error(), "yaml: ")
	}
	lines := make([]string, 0, len(te.Errors))
	for _, e := range te.Errors {
		if m := unknownField.FindStringSubmatch(e); m != nil {
			e = fmt.Sprintf("line %s: unknown field %q; allowed here: %s", m[1], m[2], allowedFields(m[3]))
		}
		lines = append(lines, e)
	}
	return strings.Join(lines, "; ")
}

var profileTypes = map[string]reflect.Type{
	"lab.Profile":    reflect.TypeOf(Profile{}),
	"lab.Host":       reflect.TypeOf(Host{}),
	"lab.SSH":        reflect.TypeOf(SSH{}),
	"lab.Array":      reflect.TypeOf(Array{}),
	"lab.Control":    reflect.TypeOf(Control{}),
	"lab.ControlTLS": reflect.TypeOf(ControlTLS{}),
	"lab.Timings":    reflect.TypeOf(Timings{}),
}

func allowedFields(typeName string) string {
	t, ok := profileTypes[typeName]
	if !ok {
		return "(see harness/lab/example.yaml)"
	}
	names := make([]string, 0, t.NumField())
	for i := 0; i < t.NumField(); i++ {
		tag, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
		names = append(names, tag)
	}
	return strings.Join(names, ", ")
}

// Marshal renders the profile as YAML that Parse reads back.
func (p *Profile) Marshal() ([]byte, error) {
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(p); err != nil {
		return nil, fmt.Errorf("lab profile %s: marshal: %w", p.Name, err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("lab profile %s: marshal: %w", p.Name, err)
	}
	return b.Bytes(), nil
}

// Redacted returns a deep copy with every password and token replaced by
// "[redacted]", for the submission bundle. Environment variable names and
// file paths are kept: they are not secrets and tell a reviewer where the
// secret came from.
func (p *Profile) Redacted() *Profile {
	c := *p
	c.Hosts = append([]Host(nil), p.Hosts...)
	for i := range c.Hosts {
		if c.Hosts[i].SSH.Password != "" {
			c.Hosts[i].SSH.Password = RedactedValue
		}
	}
	c.Arrays = append([]Array(nil), p.Arrays...)
	for i := range c.Arrays {
		if c.Arrays[i].Control.Token != "" {
			c.Arrays[i].Control.Token = RedactedValue
		}
	}
	return &c
}

// Host returns the host called name.
func (p *Profile) Host(name string) (Host, bool) {
	for _, h := range p.Hosts {
		if h.Name == name {
			return h, true
		}
	}
	return Host{}, false
}

// Array returns the array called name.
func (p *Profile) Array(name string) (Array, bool) {
	for _, a := range p.Arrays {
		if a.Name == name {
			return a, true
		}
	}
	return Array{}, false
}

// ResolvePassword returns Password, or the value of the environment
// variable PasswordEnv names.
func (s SSH) ResolvePassword() (string, error) {
	if s.Password != "" {
		return s.Password, nil
	}
	if s.PasswordEnv == "" {
		return "", fmt.Errorf("ssh %s: no password; set ssh.password_env to an environment variable holding it", s.Address)
	}
	v, ok := os.LookupEnv(s.PasswordEnv)
	if !ok || v == "" {
		return "", fmt.Errorf("ssh %s: environment variable %s (ssh.password_env) is not set; export it with the password of %s", s.Address, s.PasswordEnv, s.User)
	}
	return v, nil
}

// ResolveToken returns Token, or the content of TokenFile with surrounding
// white space trimmed.
func (c Control) ResolveToken() (string, error) {
	if c.Token != "" {
		return c.Token, nil
	}
	if c.TokenFile == "" {
		return "", fmt.Errorf("control %s: no token; set control.token_file to a file holding the array's API token", c.URL)
	}
	b, err := os.ReadFile(c.TokenFile)
	if err != nil {
		return "", fmt.Errorf("control %s: token file (control.token_file): %w", c.URL, err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("control %s: token file %s (control.token_file) is empty; write the array's API token into it", c.URL, c.TokenFile)
	}
	return tok, nil
}
