package lab

import (
	"fmt"
	"net"
	"net/url"
	"regexp"
	"strings"
	"time"
)

// Problem is one thing wrong with a profile.
type Problem struct {
	Field string // YAML path, e.g. "hosts[0].ssh.address"
	Msg   string // what is wrong and how to fix it
}

func (p Problem) String() string { return p.Field + ": " + p.Msg }

// ValidationError lists every problem found in a profile, not just the first.
type ValidationError struct {
	Source   string
	Problems []Problem
}

func (e *ValidationError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "lab profile %s: %d problem(s):", e.Source, len(e.Problems))
	for _, p := range e.Problems {
		b.WriteString("\n  - ")
		b.WriteString(p.String())
	}
	return b.String()
}

// Validate checks the profile and returns a *ValidationError listing every
// problem, each naming the field and the fix; nil if there is none.
func (p *Profile) Validate() error { return p.validate(p.Name) }

var (
	adapterName = regexp.MustCompile(`^vmhba[0-9]+$`)
	// Host and array names become directory names in the bundle.
	itemName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)
)

func (p *Profile) validate(source string) error {
	var probs []Problem
	add := func(field, format string, args ...any) {
		probs = append(probs, Problem{Field: field, Msg: fmt.Sprintf(format, args...)})
	}
	if strings.TrimSpace(p.Name) == "" {
		add("name", "empty; name the lab, e.g. name: acme-lab-1")
	}
	if len(p.Hosts) == 0 {
		add("hosts", "no hosts; list at least one ESXi host under hosts:")
	}
	if len(p.Arrays) == 0 {
		add("arrays", "no arrays; list at least one array under arrays:")
	}
	hostNames := map[string]bool{}
	for i, h := range p.Hosts {
		f := fmt.Sprintf("hosts[%d]", i)
		switch {
		case h.Name == "":
			add(f+".name", "empty; name the host, e.g. esx-01")
		case !itemName.MatchString(h.Name):
			add(f+".name", "%q: use letters, digits, '.', '_' and '-' only, e.g. esx-01", h.Name)
		case hostNames[h.Name]:
			add(f+".name", "%q is used by another host; host names must be unique", h.Name)
		}
		hostNames[h.Name] = true
		if _, _, err := net.SplitHostPort(h.SSH.Address); err != nil {
			add(f+".ssh.address", "%q is not host:port; write e.g. 10.0.0.11:22", h.SSH.Address)
		}
		if h.SSH.User == "" {
			add(f+".ssh.user", "empty; set the SSH login, usually root")
		}
		switch {
		case h.SSH.Password == "" && h.SSH.PasswordEnv == "":
			add(f+".ssh.password_env", "no password; set password_env to an environment variable holding the password (or password)")
		case h.SSH.Password != "" && h.SSH.PasswordEnv != "":
			add(f+".ssh.password", "both password and password_env are set; keep one (prefer password_env)")
		}
		if h.SSH.KnownHosts == "" {
			add(f+".ssh.known_hosts", "empty; host keys are always verified: write the host's key with `ssh-keyscan -p PORT HOST > known_hosts` and name that file")
		}
		if h.Adapter != "" && !adapterName.MatchString(h.Adapter) {
			add(f+".adapter", "%q is not an adapter name; use the software iSCSI adapter `esxcli iscsi adapter list` shows, e.g. vmhba64", h.Adapter)
		}
	}
	arrayNames := map[string]bool{}
	for i, a := range p.Arrays {
		f := fmt.Sprintf("arrays[%d]", i)
		switch {
		case a.Name == "":
			add(f+".name", "empty; name the array, e.g. array-1")
		case !itemName.MatchString(a.Name):
			add(f+".name", "%q: use letters, digits, '.', '_' and '-' only, e.g. array-1", a.Name)
		case arrayNames[a.Name]:
			add(f+".name", "%q is used by another array; array names must be unique", a.Name)
		}
		arrayNames[a.Name] = true
		u, err := url.Parse(a.Control.URL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			add(f+".control.url", "%q is not an http(s) URL; write the control API's base URL, e.g. http://10.0.0.50:7070", a.Control.URL)
		}
		switch {
		case a.Control.Token == "" && a.Control.TokenFile == "":
			add(f+".control.token_file", "no token; set token_file to a file holding the array's API token (or token)")
		case a.Control.Token != "" && a.Control.TokenFile != "":
			add(f+".control.token", "both token and token_file are set; keep one (prefer token_file)")
		}
		if t := a.Control.TLS; t != nil {
			if err == nil && u.Scheme != "https" {
				add(f+".control.tls", "set, but control.url %q is not https; use https:// for an array served with TLS, or remove tls", a.Control.URL)
			}
			if (t.Cert == "") != (t.Key == "") {
				add(f+".control.tls", "cert and key go together (the client certificate an array with mutual TLS requires); set both or neither")
			}
		}
	}
	t := p.Timings
	esxiRange := func(name string, d Duration, lo, hi int) {
		field := "timings." + name
		if d.Duration%time.Second != 0 {
			add(field, "%v is not whole seconds; ESXi takes whole seconds from %d to %d (e.g. %ds)", d.Duration, lo, hi, lo)
			return
		}
		if s := int(d.Duration / time.Second); s < lo || s > hi {
			add(field, "%v is outside ESXi's range %ds to %ds; pick a value in it", d.Duration, lo, hi)
		}
	}
	esxiRange("noop_out_interval", t.NoopOutInterval, 1, 60)
	esxiRange("noop_out_timeout", t.NoopOutTimeout, 10, 30)
	esxiRange("recovery_timeout", t.RecoveryTimeout, 1, 120)
	esxiRange("login_timeout", t.LoginTimeout, 1, 60)
	positive := func(name string, d Duration) {
		if d.Duration <= 0 {
			add("timings."+name, "%v must be positive (the default is %v)", d.Duration, defaultOf(name))
		}
	}
	positive("failback_timeout", t.FailbackTimeout)
	positive("poll_interval", t.PollInterval)
	positive("command_timeout", t.CommandTimeout)
	positive("setup_timeout", t.SetupTimeout)
	positive("io_timeout", t.IOTimeout)
	if t.DetectionSlack.Duration < 0 {
		add("timings.detection_slack", "%v is negative; use 0s or more (default %v)", t.DetectionSlack.Duration, DefaultTimings().DetectionSlack.Duration)
	}
	if t.PollInterval.Duration > 0 && t.CommandTimeout.Duration > 0 && t.PollInterval.Duration >= t.CommandTimeout.Duration {
		add("timings.poll_interval", "%v is not shorter than command_timeout %v; poll more often than a command may take", t.PollInterval.Duration, t.CommandTimeout.Duration)
	}
	if len(probs) == 0 {
		return nil
	}
	if source == "" {
		source = "(unnamed)"
	}
	return &ValidationError{Source: source, Problems: probs}
}

func defaultOf(yamlName string) time.Duration {
	d := DefaultTimings()
	switch yamlName {
	case "failback_timeout":
		return d.FailbackTimeout.Duration
	case "poll_interval":
		return d.PollInterval.Duration
	case "command_timeout":
		return d.CommandTimeout.Duration
	case "setup_timeout":
		return d.SetupTimeout.Duration
	case "io_timeout":
		return d.IOTimeout.Duration
	}
	return 0
}
