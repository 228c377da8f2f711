package lab

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

const minimal = `
name: lab-1
hosts:
  - name: esx-01
    ssh: {address: "127.0.0.1:2201", user: root, password: secret, known_hosts: kh}
arrays:
  - name: array-1
    control: {url: "http://127.0.0.1:7070", token: tok}
`

func TestExampleProfileLoads(t *testing.T) {
	p, err := Load("example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if p.Name != "acme-lab-1" || len(p.Hosts) != 2 || len(p.Arrays) != 1 {
		t.Fatalf("got %+v", p)
	}
	h := p.Hosts[1]
	if h.Adapter != DefaultAdapter {
		t.Errorf("omitted adapter = %q, want %q", h.Adapter, DefaultAdapter)
	}
	if h.SSH.KnownHosts != filepath.Join(".", "known_hosts") || p.Arrays[0].Control.TokenFile != "array-1.token" {
		t.Errorf("relative paths resolved to %q, %q", h.SSH.KnownHosts, p.Arrays[0].Control.TokenFile)
	}
	if !reflect.DeepEqual(p.Timings, DefaultTimings()) {
		t.Errorf("example timings %+v, want the defaults %+v", p.Timings, DefaultTimings())
	}
}

func TestLoadResolvesPathsAgainstProfileDir(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "lab.yaml")
	data := strings.Replace(minimal, "token: tok", "token_file: tok.txt", 1)
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "tok.txt"), []byte("  s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := p.Hosts[0].SSH.KnownHosts; got != filepath.Join(dir, "kh") {
		t.Errorf("known_hosts = %q", got)
	}
	tok, err := p.Arrays[0].Control.ResolveToken()
	if err != nil || tok != "s3cret" {
		t.Errorf("ResolveToken = %q, %v; want the trimmed file content", tok, err)
	}
}

func TestParseDurationsAndDefaults(t *testing.T) {
	p, err := Parse([]byte(minimal+"timings:\n  noop_out_interval: 1s\n  poll_interval: 250ms\n  detection_slack: 1.5s\n"), "t.yaml")
	if err != nil {
		t.Fatal(err)
	}
	want := DefaultTimings()
	want.NoopOutInterval = Seconds(1)
	want.PollInterval = Duration{250 * time.Millisecond}
	want.DetectionSlack = Duration{1500 * time.Millisecond}
	if p.Timings != want {
		t.Errorf("timings %+v, want %+v", p.Timings, want)
	}
}

func TestUnknownFieldNamesFieldFileAndLine(t *testing.T) {
	_, err := Parse([]byte(minimal+"timings:\n  noop_interval: 5s\n"), "lab.yaml")
	if err == nil {
		t.Fatal("unknown field accepted")
	}
	for _, want := range []string{"lab.yaml", `"noop_interval"`, "line 10", "noop_out_interval"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
	_, err = Parse([]byte(strings.Replace(minimal, "user: root", "user: root, port: 22", 1)), "lab.yaml")
	if err == nil || !strings.Contains(err.Error(), `unknown field "port"`) || !strings.Contains(err.Error(), "known_hosts") {
		t.Errorf("unknown ssh field: %v", err)
	}
}

func TestBadDurations(t *testing.T) {
	for _, v := range []string{"10", "ten seconds", "[1s]"} {
		_, err := Parse([]byte(minimal+"timings:\n  io_timeout: "+v+"\n"), "lab.yaml")
		if err == nil || !strings.Contains(err.Error(), "line 10") || !strings.Contains(err.Error(), "250ms") {
			t.Errorf("io_timeout: %s: got %v, want an error with the line and an example", v, err)
		}
	}
}

func TestParseRejectsEmptyAndMultiDocument(t *testing.T) {
	if _, err := Parse([]byte("  \n"), "e.yaml"); err == nil || !strings.Contains(err.Error(), "e.yaml: empty") {
		t.Errorf("empty: %v", err)
	}
	if _, err := Parse([]byte(minimal+"---\nname: x\n"), "m.yaml"); err == nil || !strings.Contains(err.Error(), "more than one") {
		t.Errorf("two documents: %v", err)
	}
}

func TestValidateListsEveryProblem(t *testing.T) {
	p := &Profile{
		Name: "bad",
		Hosts: []Host{
			{Name: "esx", SSH: SSH{Address: "10.0.0.1", Password: "a", PasswordEnv: "B"}, Adapter: "hba0"},
			{Name: "esx", SSH: SSH{Address: "10.0.0.2:22", User: "root", PasswordEnv: "P", KnownHosts: "kh"}},
		},
		Arrays:  []Array{{Name: "../a", Control: Control{URL: "10.0.0.5:7070"}}},
		Timings: DefaultTimings(),
	}
	p.Timings.NoopOutInterval = Duration{1500 * time.Millisecond}
	p.Timings.NoopOutTimeout = Seconds(5)
	p.Timings.RecoveryTimeout = Seconds(121)
	p.Timings.LoginTimeout = Seconds(0)
	p.Timings.PollInterval = Seconds(40)
	p.Timings.IOTimeout = Duration{-time.Second}

	err := p.Validate()
	var ve *ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("Validate = %v, want *ValidationError", err)
	}
	want := []string{
		"hosts[0].ssh.address", "hosts[0].ssh.user", "hosts[0].ssh.password", "hosts[0].ssh.known_hosts",
		"hosts[0].adapter", "hosts[1].name", "arrays[0].name", "arrays[0].control.url", "arrays[0].control.token_file",
		"timings.noop_out_interval", "timings.noop_out_timeout", "timings.recovery_timeout",
		"timings.login_timeout", "timings.io_timeout", "timings.poll_interval",
	}
	var got []string
	for _, pr := range ve.Problems {
		got = append(got, pr.Field)
		if pr.Msg == "" {
			t.Errorf("%s: no message", pr.Field)
		}
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("problems for fields\n %v\nwant\n %v\n%v", got, want, err)
	}
	for _, frag := range []string{"whole seconds", "10s to 30s", "1s to 120s", "ssh-keyscan", "e.g. 10.0.0.11:22"} {
		if !strings.Contains(err.Error(), frag) {
			t.Errorf("error lacks %q:\n%v", frag, err)
		}
	}
}

func TestValidateNeedsHostsAndArrays(t *testing.T) {
	err := Embedded().Validate()
	if err == nil || !strings.Contains(err.Error(), "hosts: no hosts") || !strings.Contains(err.Error(), "arrays: no arrays") {
		t.Errorf("an embedded profile not yet filled in: %v", err)
	}
}

func TestEmbeddedTimingsAreWithinESXiRanges(t *testing.T) {
	p := Embedded()
	p.Hosts = []Host{{Name: "esx-01", SSH: SSH{Address: "127.0.0.1:2201", User: "root", Password: "x", KnownHosts: "/kh"}, Adapter: DefaultAdapter}}
	p.Arrays = []Array{{Name: "array-1", Control: Control{URL: "http://127.0.0.1:7070", Token: "t"}}}
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	tm := p.Timings
	if p.Name != "embedded" || tm.NoopOutInterval != Seconds(1) || tm.NoopOutTimeout != Seconds(10) ||
		tm.RecoveryTimeout != Seconds(1) || tm.LoginTimeout != Seconds(1) || tm.PollInterval.Duration != 250*time.Millisecond ||
		tm.FailbackTimeout != Seconds(30) || tm.CommandTimeout != Seconds(20) {
		t.Errorf("embedded timings %+v", tm)
	}
	if got := tm.SilentPathDeadWithin(); got != 15*time.Second {
		t.Errorf("SilentPathDeadWithin = %v, want 1+10+1+3 s", got)
	}
	if got := tm.ResetPathDeadWithin(); got != 4*time.Second {
		t.Errorf("ResetPathDeadWithin = %v, want 1+3 s", got)
	}
}

func TestMarshalRoundTripsAndRedacts(t *testing.T) {
	p, err := Parse([]byte(minimal), "t.yaml")
	if err != nil {
		t.Fatal(err)
	}
	r := p.Redacted()
	if r.Hosts[0].SSH.Password != RedactedValue || r.Arrays[0].Control.Token != RedactedValue {
		t.Errorf("Redacted kept secrets: %+v", r)
	}
	if p.Hosts[0].SSH.Password != "secret" || p.Arrays[0].Control.Token != "tok" {
		t.Error("Redacted changed the original")
	}
	b, err := r.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), "secret") || !strings.Contains(string(b), "poll_interval: 500ms") || !strings.Contains(string(b), "io_timeout: 60s") {
		t.Errorf("marshalled:\n%s", b)
	}
	back, err := Parse(b, "marshalled")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, r) {
		t.Errorf("round trip\n%+v\nwant\n%+v", back, r)
	}
}

func TestResolvePassword(t *testing.T) {
	t.Setenv("CERTKIT_TEST_PW", "pw")
	if pw, err := (SSH{PasswordEnv: "CERTKIT_TEST_PW"}).ResolvePassword(); err != nil || pw != "pw" {
		t.Errorf("from env: %q, %v", pw, err)
	}
	_, err := (SSH{Address: "h:22", User: "root", PasswordEnv: "CERTKIT_TEST_UNSET_PW"}).ResolvePassword()
	if err == nil || !strings.Contains(err.Error(), "CERTKIT_TEST_UNSET_PW") {
		t.Errorf("unset env: %v", err)
	}
}

func TestDurationText(t *testing.T) {
	var d Duration
	if err := d.UnmarshalText([]byte("1.5s")); err != nil || d.Duration != 1500*time.Millisecond {
		t.Errorf("1.5s -> %v, %v", d, err)
	}
	if b, _ := d.MarshalText(); string(b) != "1.5s" {
		t.Errorf("MarshalText = %s", b)
	}
	if err := d.UnmarshalText([]byte("15")); err == nil {
		t.Error("a bare number was accepted")
	}
}

// An array served with TLS is reached over https with the CA and, for
// mutual TLS, a client certificate; the files resolve like token_file.
func TestControlTLS(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "lab.yaml")
	data := strings.Replace(minimal, `{url: "http://127.0.0.1:7070", token: tok}`,
		`{url: "https://127.0.0.1:7070", token: tok, tls: {ca: pki/ca.crt, cert: pki/client.crt, key: /abs/client.key}}`, 1)
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	got := *p.Arrays[0].Control.TLS
	want := ControlTLS{CA: filepath.Join(dir, "pki/ca.crt"), Cert: filepath.Join(dir, "pki/client.crt"), Key: "/abs/client.key"}
	if got != want {
		t.Errorf("tls = %+v, want %+v", got, want)
	}

	for _, tc := range []struct{ control, want string }{
		{`{url: "http://127.0.0.1:7070", token: tok, tls: {ca: ca.crt}}`, "is not https"},
		{`{url: "https://127.0.0.1:7070", token: tok, tls: {ca: ca.crt, cert: c.crt}}`, "cert and key go together"},
	} {
		_, err := Parse([]byte(strings.Replace(minimal, `{url: "http://127.0.0.1:7070", token: tok}`, tc.control, 1)), "lab.yaml")
		if err == nil || !strings.Contains(err.Error(), "arrays[0].control.tls") || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one on arrays[0].control.tls saying %q", tc.control, err, tc.want)
		}
	}
}
