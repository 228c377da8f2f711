package array

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Config is one array: its targets, each with its own LUNs, served by
// controllers whose portals each may sit behind a fault proxy. Every target
// is reachable through every portal of every controller, as on a real
// array, and SendTargets lists each target the host may see with all its
// portals.
//
//	name: array-a
//	targets:
//	  - name: iqn.2024-01.io.certkit:array-a.db
//	    luns:
//	      - {id: 0, size: 64MiB}                            # backing: memory
//	      - {id: 1, size: 1GiB, backing: file, path: /var/tmp/a-db1.img}
//	    auth: {chap: {name: esx-hosts, secret_env: ARRAY_A_CHAP}}  # optional, see AuthConfig
//	    acl: [iqn.1998-01.com.vmware:esx-01-1a2b3c4d]           # optional; empty: every initiator
//	  - name: iqn.2024-01.io.certkit:array-a.logs
//	    luns: [{id: 0, size: 64MiB}]                        # its own LUN 0
//	controllers:
//	  - name: A                                             # TPGT 1
//	    portals: [{listen: "127.0.0.1:0", proxy: "127.0.0.1:0"}]
//	  - name: B                                             # TPGT 2
//	    portals: [{listen: "127.0.0.1:0", proxy: "127.0.0.1:0"}]
//	discovery_auth: {chap: {name: esx-disc, secret_env: ARRAY_A_DISC}}  # optional, see AuthConfig
//
// An array of one target may use the shorthand instead of targets: the
// top-level target, luns, auth and acl are that target's name, luns, auth
// and acl.
//
//	name: array-a
//	target: iqn.2024-01.io.certkit:array-a
//	luns: [{id: 0, size: 64MiB}]
//	controllers: [{name: A, portals: [{listen: "127.0.0.1:0"}]}]
//
// LUN ids are per target: each target has its own LUN 0. Every LUN has an
// NAA of its own, the same on every path and every restart: the first
// target's LUNs derive it from the array name and LUN id (as a one-target
// array always has: rewriting the shorthand as targets, or adding targets
// after the first, keeps every NAA), every other target's from the array
// name, its IQN and the LUN id (see NAA, TargetNAA). Moving another target
// to the front changes NAAs.
type Config struct {
	Name    string   `yaml:"name"`
	Targets []Target `yaml:"targets,omitempty"`

	// The one-target shorthand (see above); not with Targets.
	Target string      `yaml:"target,omitempty"`
	LUNs   []LUN       `yaml:"luns,omitempty"`
	Auth   *AuthConfig `yaml:"auth,omitempty"` // CHAP (auth.go)
	ACL    []string    `yaml:"acl,omitempty"`  // initiator IQNs allowed; empty: all

	Controllers []Controller `yaml:"controllers"`
	ALUA        *ALUA        `yaml:"alua,omitempty"`

	// DiscoveryAuth is the CHAP account of discovery sessions; see
	// AuthConfig for what applies without it.
	DiscoveryAuth *AuthConfig `yaml:"discovery_auth,omitempty"`
}

// Target is one iSCSI target of the array: its IQN, its LUNs, and who may
// log in to it (CHAP account and initiator ACL; see AuthConfig).
type Target struct {
	Name string      `yaml:"name"`
	LUNs []LUN       `yaml:"luns"`
	Auth *AuthConfig `yaml:"auth,omitempty"`
	ACL  []string    `yaml:"acl,omitempty"` // initiator IQNs allowed; empty: all
}

// AllTargets returns the array's targets in config order: Targets, or the
// one target the shorthand fields describe.
func (c *Config) AllTargets() []Target {
	if len(c.Targets) > 0 {
		return c.Targets
	}
	return []Target{{Name: c.Target, LUNs: c.LUNs, Auth: c.Auth, ACL: c.ACL}}
}

// targetField is the YAML path of target i's fields: "targets[1]." or,
// for the shorthand, "" (its fields are top-level).
func (c *Config) targetField(i int) string {
	if len(c.Targets) == 0 {
		return ""
	}
	return fmt.Sprintf("targets[%d].", i)
}

// ALUA says how the array presents asymmetric access. Without it every
// controller is active/optimized and only implicit ALUA is reported.
//
//	alua: {explicit: true, transition_time: 2s}
type ALUA struct {
	// Explicit lets hosts change states with SET TARGET PORT GROUPS.
	Explicit bool `yaml:"explicit"`
	// TransitionTime is how long a planned failover stays transitioning
	// (default 2s); reported to hosts in REPORT TARGET PORT GROUPS.
	TransitionTime string `yaml:"transition_time"`
}

// LUN is one logical unit of a target.
type LUN struct {
	ID      int    `yaml:"id"`
	Size    string `yaml:"size"`    // "64MiB", "1GiB", or bytes; a multiple of 512
	Backing string `yaml:"backing"` // memory (default) or file
	Path    string `yaml:"path"`    // file backing only; created or grown to Size
}

// Controller is a target portal group; its TPGT is its index + 1.
type Controller struct {
	Name    string         `yaml:"name"`
	Portals []PortalConfig `yaml:"portals"`
	// ALUAState is the port group's state at start: AO (default), ANO,
	// standby or unavailable.
	ALUAState string `yaml:"alua_state,omitempty"`
}

// PortalConfig is one iSCSI portal of a controller.
type PortalConfig struct {
	Listen string `yaml:"listen"` // the front end binds exactly this
	Proxy  string `yaml:"proxy"`  // optional fault proxy address, advertised instead
}

// Backing kinds.
const (
	BackingMemory = "memory"
	BackingFile   = "file"
)

// Load reads and validates a YAML array config.
func Load(path string) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("array config: %w", err)
	}
	return Parse(data, path)
}

// Parse decodes and validates YAML; source names the input in errors.
// Unknown fields are errors, so a typo does not silently drop a setting.
func Parse(data []byte, source string) (Config, error) {
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		return Config{}, fmt.Errorf("array config %s: %w", source, err)
	}
	if err := c.Validate(); err != nil {
		return Config{}, fmt.Errorf("array config %s: %w", source, err)
	}
	return c, nil
}

var (
	nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)
	iqnRE  = regexp.MustCompile(`^(iqn\.[0-9]{4}-[0-9]{2}\.[a-z0-9.-]+(:[a-z0-9.:_-]+)?|eui\.[0-9a-f]{16}|naa\.[0-9a-f]{16}([0-9a-f]{16})?)$`)
)

// Validate checks a config; errors name the field (with its path, e.g.
// targets[1].luns[0].size) and how to fix it.
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if !nameRE.MatchString(c.Name) {
		bad("name %q: want 1-63 letters, digits, '.', '_' or '-' (e.g. array-a)", c.Name)
	}
	var short []string // shorthand fields set
	for _, f := range []struct {
		name string
		set  bool
	}{{"target", c.Target != ""}, {"luns", len(c.LUNs) > 0}, {"auth", c.Auth != nil}, {"acl", len(c.ACL) > 0}} {
		if f.set {
			short = append(short, f.name)
		}
	}
	if len(c.Targets) > 0 && len(short) > 0 {
		bad("targets and the one-target shorthand (%s) are both set: move %s into an entry of targets, "+
			"e.g. targets: [{name: IQN, luns: [...], auth: ..., acl: [...]}], or drop targets", strings.Join(short, ", "), strings.Join(short, ", "))
	} else {
		errs = append(errs, c.validateTargets()...)
	}
	if len(c.Controllers) == 0 {
		bad("controllers: none given; add e.g. {name: A, portals: [{listen: \"127.0.0.1:0\"}]}")
	}
	for i, ctl := range c.Controllers {
		if ctl.ALUAState == "" {
			continue
		}
		if s, err := ParseAccessState(ctl.ALUAState); err != nil || s == Transitioning {
			bad("controllers[%d].alua_state %q: want AO, ANO, standby or unavailable", i, ctl.ALUAState)
		}
	}
	if c.ALUA != nil && c.ALUA.TransitionTime != "" {
		if d, err := time.ParseDuration(c.ALUA.TransitionTime); err != nil || d < 0 || d > 255*time.Second {
			bad("alua.transition_time %q: want a duration up to 255s, e.g. 2s", c.ALUA.TransitionTime)
		}
	}
	if len(c.Controllers) > 65535 {
		bad("controllers: %d is more than 65535 portal groups", len(c.Controllers))
	}
	names := map[string]bool{}
	for i, ctl := range c.Controllers {
		f := fmt.Sprintf("controllers[%d]", i)
		if !nameRE.MatchString(ctl.Name) {
			bad("%s.name %q: want a short name like A or B", f, ctl.Name)
		} else if names[ctl.Name] {
			bad("%s.name %q: used twice; give each controller its own name", f, ctl.Name)
		}
		names[ctl.Name] = true
		if len(ctl.Portals) == 0 {
			bad("%s.portals: none given; add e.g. {listen: \"127.0.0.1:0\"}", f)
		}
		for j, p := range ctl.Portals {
			pf := fmt.Sprintf("%s.portals[%d]", f, j)
			if _, _, err := net.SplitHostPort(p.Listen); err != nil || p.Listen == "" {
				bad("%s.listen %q: want host:port, e.g. 127.0.0.1:3260 or 127.0.0.1:0 for any port", pf, p.Listen)
			}
			if p.Proxy != "" {
				if _, _, err := net.SplitHostPort(p.Proxy); err != nil {
					bad("%s.proxy %q: want host:port, e.g. 127.0.0.1:0, or leave it out", pf, p.Proxy)
				}
			}
		}
	}
	if _, err := c.DiscoveryAuth.resolve("discovery_auth"); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// validateTargets checks each target's name, LUNs, auth and acl.
func (c *Config) validateTargets() []error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	names := map[string]int{}
	images := map[string]string{} // clean image path -> field of the LUN using it
	for i, t := range c.AllTargets() {
		tf := c.targetField(i)
		switch {
		case tf == "" && t.Name == "":
			bad("target: not set; give the target's IQN, e.g. iqn.2024-01.io.certkit:%s (or list targets under targets)", strings.ToLower(c.Name))
		case tf == "" && !iqnRE.MatchString(t.Name):
			bad("target %q: want a lowercase iSCSI name like iqn.2024-01.io.certkit:%s", t.Name, strings.ToLower(c.Name))
		case !iqnRE.MatchString(t.Name):
			bad("%sname %q: want a lowercase iSCSI name like iqn.2024-01.io.certkit:%s.%d", tf, t.Name, strings.ToLower(c.Name), i)
		default:
			if j, dup := names[t.Name]; dup {
				bad("%sname %q: also the name of targets[%d]; give each target its own IQN", tf, t.Name, j)
			}
			names[t.Name] = i
		}
		if len(t.LUNs) == 0 {
			bad("%sluns: none given; add at least one, e.g. {id: 0, size: 64MiB}", tf)
		}
		ids := map[int]bool{}
		for j, l := range t.LUNs {
			f := fmt.Sprintf("%sluns[%d]", tf, j)
			if l.ID < 0 || l.ID > 16383 {
				bad("%s.id %d: want 0..16383", f, l.ID)
			} else if ids[l.ID] {
				bad("%s.id %d: used twice in this target; give each LUN of a target its own id", f, l.ID)
			}
			ids[l.ID] = true
			if _, err := ParseSize(l.Size); err != nil {
				bad("%s.size: %v", f, err)
			}
			switch l.Backing {
			case "", BackingMemory:
				if l.Path != "" {
					bad("%s.path %q: only file backing has a path; drop it or set backing: file", f, l.Path)
				}
			case BackingFile:
				if l.Path == "" {
					bad("%s.path: file backing needs a path to the image file", f)
				} else if other, dup := images[filepath.Clean(l.Path)]; dup {
					bad("%s.path %q: also the image of %s; give each LUN its own image file", f, l.Path, other)
				} else {
					images[filepath.Clean(l.Path)] = f
				}
			default:
				bad("%s.backing %q: want memory or file", f, l.Backing)
			}
		}
		if _, err := t.Auth.resolve(tf + "auth"); err != nil {
			errs = append(errs, err)
		}
		errs = append(errs, validateACL(tf+"acl", t.ACL)...)
	}
	return errs
}

var sizeRE = regexp.MustCompile(`^([0-9]+)\s*(B|KiB|MiB|GiB|TiB)?$`)

// ParseSize reads "64MiB", "1GiB", "512KiB", "1TiB" or a plain byte count.
// The size must be a positive multiple of 512 (the block size).
func ParseSize(s string) (int64, error) {
	m := sizeRE.FindStringSubmatch(strings.TrimSpace(s))
	if m == nil {
		return 0, fmt.Errorf("%q: want a byte count or a binary size like 64MiB, 1GiB (KiB, MiB, GiB, TiB)", s)
	}
	n, err := strconv.ParseInt(m[1], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%q: %v", s, err)
	}
	shift := map[string]uint{"": 0, "B": 0, "KiB": 10, "MiB": 20, "GiB": 30, "TiB": 40}[m[2]]
	if n > (1<<62)>>shift {
		return 0, fmt.Errorf("%q: too large", s)
	}
	n <<= shift
	if n <= 0 || n%512 != 0 {
		return 0, fmt.Errorf("%q: want a positive multiple of 512 bytes", s)
	}
	return n, nil
}

// TPGT is the target portal group tag of controller index i.
func TPGT(i int) uint16 { return uint16(i + 1) }

// PortalID names portal j of controller ctl: "A0", "B1".
func PortalID(ctl string, j int) string { return ctl + strconv.Itoa(j) }
