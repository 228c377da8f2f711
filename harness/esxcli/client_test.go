package esxcli

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/certkit/certkit/harness/lab"
)

// reply is what the test server answers to one exec request.
type reply struct {
	stdout, stderr string
	code           int
	hang           bool // never answer (until the client closes the session)
}

// sshServer is a tiny SSH server answering exec requests with canned output.
type sshServer struct {
	t        *testing.T
	ln       net.Listener
	signer   ssh.Signer
	password string
	kbdOnly  bool // offer keyboard-interactive only, as ESXi's sshd does
	stall    bool // never answer a session request (a wedged host)
	answer   func(cmd string) reply

	mu    sync.Mutex
	conns []net.Conn
	dials int
	execs []string
}

func newSSHServer(t *testing.T, answer func(cmd string) reply, opts ...func(*sshServer)) *sshServer {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &sshServer{t: t, ln: ln, signer: signer, password: "vmware", answer: answer}
	for _, o := range opts {
		o(s)
	}
	go s.serve()
	t.Cleanup(func() {
		ln.Close()
		s.dropAll()
	})
	return s
}

func (s *sshServer) addr() string { return s.ln.Addr().String() }

func (s *sshServer) config() *ssh.ServerConfig {
	cfg := &ssh.ServerConfig{}
	check := func(user, pw string) (*ssh.Permissions, error) {
		if user == "root" && pw == s.password {
			return nil, nil
		}
		return nil, errors.New("wrong password")
	}
	if !s.kbdOnly {
		cfg.PasswordCallback = func(c ssh.ConnMetadata, pw []byte) (*ssh.Permissions, error) { return check(c.User(), string(pw)) }
	}
	cfg.KeyboardInteractiveCallback = func(c ssh.ConnMetadata, ask ssh.KeyboardInteractiveChallenge) (*ssh.Permissions, error) {
		ans, err := ask(c.User(), "", []string{"Password: "}, []bool{false})
		if err != nil || len(ans) != 1 {
			return nil, errors.New("no answer")
		}
		return check(c.User(), ans[0])
	}
	cfg.AddHostKey(s.signer)
	return cfg
}

func (s *sshServer) serve() {
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		s.conns = append(s.conns, c)
		s.dials++
		s.mu.Unlock()
		go s.handle(c)
	}
}

func (s *sshServer) handle(c net.Conn) {
	_, chans, reqs, err := ssh.NewServerConn(c, s.config())
	if err != nil {
		c.Close()
		return
	}
	go ssh.DiscardRequests(reqs)
	if s.stall {
		for range chans { // read, never answer
		}
		return
	}
	for nc := range chans {
		if nc.ChannelType() != "session" {
			_ = nc.Reject(ssh.UnknownChannelType, "only sessions")
			continue
		}
		ch, chReqs, err := nc.Accept()
		if err != nil {
			continue
		}
		go s.session(ch, chReqs)
	}
}

func (s *sshServer) session(ch ssh.Channel, reqs <-chan *ssh.Request) {
	defer ch.Close()
	for req := range reqs {
		if req.Type != "exec" {
			_ = req.Reply(false, nil)
			continue
		}
		var p struct{ Cmd string }
		if err := ssh.Unmarshal(req.Payload, &p); err != nil {
			_ = req.Reply(false, nil)
			return
		}
		_ = req.Reply(true, nil)
		s.mu.Lock()
		s.execs = append(s.execs, p.Cmd)
		s.mu.Unlock()
		r := s.answer(p.Cmd)
		if r.hang {
			for range reqs { // until the client closes the channel
			}
			return
		}
		_, _ = ch.Write([]byte(r.stdout))
		_, _ = ch.Stderr().Write([]byte(r.stderr))
		_, _ = ch.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{uint32(r.code)}))
		return
	}
}

// dropAll closes every connection, as a host reboot or a network blip does.
func (s *sshServer) dropAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.conns {
		c.Close()
	}
	s.conns = nil
}

func (s *sshServer) stats() (dials int, execs []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dials, append([]string(nil), s.execs...)
}

// knownHosts writes a known_hosts file holding key for the server's address.
func knownHosts(t *testing.T, addr string, key ssh.PublicKey) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "known_hosts")
	line := knownhosts.Line([]string{knownhosts.Normalize(addr)}, key) + "\n"
	if err := os.WriteFile(path, []byte(line), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func (s *sshServer) host(t *testing.T) lab.Host {
	return lab.Host{Name: "esx-01", Adapter: "vmhba64", SSH: lab.SSH{
		Address: s.addr(), User: "root", Password: s.password,
		KnownHosts: knownHosts(t, s.addr(), s.signer.PublicKey()),
	}}
}

func canned(cmd string) reply {
	switch {
	case cmd == "esxcli iscsi software get":
		return reply{stdout: "true\n"}
	case strings.HasPrefix(cmd, "esxcli iscsi adapter param set"):
		return reply{stderr: "Unable to set NoopOutTimeout: value 5 out of range 10..30\n", code: 1}
	case cmd == "esxcli storage nmp device set":
		return reply{stdout: "\nError: Missing required parameter -d|--device\n", code: 1}
	case cmd == "hang":
		return reply{hang: true}
	}
	return reply{stdout: "ran: " + cmd + "\n"}
}

// dial connects to the test server. timeout also bounds the handshake;
// the tests that give a short one test the command timeout, not the
// connection, so a connect or handshake that a loaded machine (the race
// detector, other packages' tests) slows past it is tried again.
func dial(t *testing.T, h lab.Host, timeout time.Duration) *Client {
	t.Helper()
	var c *Client
	var err error
	for try := 0; try < 5; try++ {
		c, err = Dial(context.Background(), h, timeout)
		if err == nil || !strings.Contains(err.Error(), "deadline exceeded") && !strings.Contains(err.Error(), "i/o timeout") {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestEsxcliRunsCommandAndReportsResult(t *testing.T) {
	s := newSSHServer(t, canned)
	c := dial(t, s.host(t), 5*time.Second)
	var seen []*Result
	c.OnResult(func(r *Result) { seen = append(seen, r) })

	before := time.Now()
	r, err := c.Esxcli(context.Background(), "iscsi", "software", "get")
	if err != nil {
		t.Fatal(err)
	}
	if r.Host != "esx-01" || r.Command != "esxcli iscsi software get" || r.Stdout != "true\n" || r.Stderr != "" || r.ExitCode != 0 || r.Err != "" {
		t.Errorf("result %+v", r)
	}
	if r.Start.Before(before) || r.End.Before(r.Start) {
		t.Errorf("times %v .. %v (called at %v)", r.Start, r.End, before)
	}
	if len(seen) != 1 || seen[0] != r {
		t.Errorf("OnResult saw %v", seen)
	}
	on, err := ParseBool(CmdISCSISoftwareGet, r.Stdout)
	if err != nil || !on {
		t.Errorf("ParseBool: %v, %v", on, err)
	}
}

func TestEsxcliQuotesArguments(t *testing.T) {
	s := newSSHServer(t, canned)
	c := dial(t, s.host(t), 5*time.Second)
	r, err := c.Esxcli(context.Background(), "iscsi", "adapter", "discovery", "sendtarget", "add", "-A", "vmhba64", "-a", "127.0.0.1:3260")
	if err != nil {
		t.Fatal(err)
	}
	if r.Command != "esxcli iscsi adapter discovery sendtarget add -A vmhba64 -a 127.0.0.1:3260" {
		t.Errorf("command %q", r.Command)
	}
	r, _ = c.Esxcli(context.Background(), "system", "hostname", "set", "--fqdn", "it's a host; rm -rf /", "")
	if want := `esxcli system hostname set --fqdn 'it'\''s a host; rm -rf /' ''`; r.Command != want {
		t.Errorf("command %q, want %q", r.Command, want)
	}
	if _, execs := s.stats(); execs[len(execs)-1] != r.Command {
		t.Errorf("server ran %q", execs[len(execs)-1])
	}
}

func TestNonZeroExitIsExitErrorNamingHostCommandCodeAndMessage(t *testing.T) {
	s := newSSHServer(t, canned)
	c := dial(t, s.host(t), 5*time.Second)
	var seen int
	c.OnResult(func(*Result) { seen++ })

	r, err := c.Esxcli(context.Background(), "iscsi", "adapter", "param", "set", "-A", "vmhba64", "-k", "NoopOutTimeout", "-v", "5")
	var ee *ExitError
	if !errors.As(err, &ee) || ee.Result != r || r.ExitCode != 1 || r.Err != "" {
		t.Fatalf("err %v, result %+v", err, r)
	}
	for _, want := range []string{"esx-01", `"esxcli iscsi adapter param set -A vmhba64 -k NoopOutTimeout -v 5"`, "exited 1", "Unable to set NoopOutTimeout: value 5 out of range 10..30"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q lacks %q", err, want)
		}
	}
	// esxcli prints its own errors on stdout: then that is the message.
	_, err = c.Esxcli(context.Background(), "storage", "nmp", "device", "set")
	if err == nil || !strings.Contains(err.Error(), "Error: Missing required parameter -d|--device") {
		t.Errorf("stdout message: %v", err)
	}
	if seen != 2 {
		t.Errorf("OnResult called %d times, want 2", seen)
	}
}

func TestShellRunsCommandLineAsIs(t *testing.T) {
	s := newSSHServer(t, canned)
	c := dial(t, s.host(t), 5*time.Second)
	r, err := c.Shell(context.Background(), "dd if=/vmfs/devices/disks/naa.1 bs=512 count=1 | od -x")
	if err != nil || r.Stdout != "ran: dd if=/vmfs/devices/disks/naa.1 bs=512 count=1 | od -x\n" {
		t.Errorf("%+v, %v", r, err)
	}
}

func TestHostKeyIsVerified(t *testing.T) {
	s := newSSHServer(t, canned)
	_, other, _ := ed25519.GenerateKey(rand.Reader)
	otherSigner, _ := ssh.NewSignerFromKey(other)

	t.Run("mismatch", func(t *testing.T) {
		h := s.host(t)
		h.SSH.KnownHosts = knownHosts(t, s.addr(), otherSigner.PublicKey())
		_, err := Dial(context.Background(), h, 5*time.Second)
		if err == nil || !strings.Contains(err.Error(), "MISMATCH") || !strings.Contains(err.Error(), h.SSH.KnownHosts) || !strings.Contains(err.Error(), "esx-01") {
			t.Errorf("got %v", err)
		}
	})
	t.Run("unknown host", func(t *testing.T) {
		h := s.host(t)
		h.SSH.KnownHosts = knownHosts(t, "127.0.0.1:1", s.signer.PublicKey())
		_, err := Dial(context.Background(), h, 5*time.Second)
		if err == nil || !strings.Contains(err.Error(), "is not in") || !strings.Contains(err.Error(), "ssh-keyscan -p") {
			t.Errorf("got %v", err)
		}
	})
	t.Run("missing known_hosts", func(t *testing.T) {
		h := s.host(t)
		h.SSH.KnownHosts = filepath.Join(t.TempDir(), "nope")
		_, err := Dial(context.Background(), h, 5*time.Second)
		if err == nil || !strings.Contains(err.Error(), "known_hosts file") || !strings.Contains(err.Error(), "ssh-keyscan") {
			t.Errorf("got %v", err)
		}
	})
	t.Run("no known_hosts configured", func(t *testing.T) {
		h := s.host(t)
		h.SSH.KnownHosts = ""
		_, err := Dial(context.Background(), h, 5*time.Second)
		if err == nil || !strings.Contains(err.Error(), "always verified") {
			t.Errorf("got %v", err)
		}
	})
	if dials, execs := s.stats(); len(execs) != 0 || dials != 2 {
		t.Errorf("server saw %d connections and ran %q; want only the two rejected handshakes", dials, execs)
	}
}

func TestKeyboardInteractiveAndPasswordFromEnv(t *testing.T) {
	s := newSSHServer(t, canned, func(s *sshServer) { s.kbdOnly = true })
	h := s.host(t)
	h.SSH.Password, h.SSH.PasswordEnv = "", "CERTKIT_TEST_ESX_PASSWORD"
	t.Setenv("CERTKIT_TEST_ESX_PASSWORD", s.password)
	c := dial(t, h, 5*time.Second)
	if _, err := c.Esxcli(context.Background(), "iscsi", "software", "get"); err != nil {
		t.Fatal(err)
	}
	h.SSH.PasswordEnv = "CERTKIT_TEST_ESX_PASSWORD_UNSET"
	if _, err := Dial(context.Background(), h, 5*time.Second); err == nil || !strings.Contains(err.Error(), "CERTKIT_TEST_ESX_PASSWORD_UNSET") {
		t.Errorf("unset password env: %v", err)
	}
	h.SSH.PasswordEnv, h.SSH.Password = "", "wrong"
	if _, err := Dial(context.Background(), h, 5*time.Second); err == nil || !strings.Contains(err.Error(), "esx-01") {
		t.Errorf("wrong password: %v", err)
	}
}

func TestCommandTimeoutClosesSessionAndNamesCommand(t *testing.T) {
	s := newSSHServer(t, canned)
	timeout := 100 * time.Millisecond
	c := dial(t, s.host(t), timeout)
	dialed, _ := s.stats()
	var seen []*Result
	c.OnResult(func(r *Result) { seen = append(seen, r) })

	r, err := c.Shell(context.Background(), "hang")
	if err == nil || !strings.Contains(err.Error(), `"hang"`) || !strings.Contains(err.Error(), "command timeout 100ms") {
		t.Fatalf("got %v", err)
	}
	if r.ExitCode != -1 || r.Err == "" || r.End.Sub(r.Start) < timeout || len(seen) != 1 {
		t.Errorf("result %+v; OnResult saw %d", r, len(seen))
	}
	// The connection survives a timed-out session.
	if _, err := c.Esxcli(context.Background(), "iscsi", "software", "get"); err != nil {
		t.Errorf("after a timeout: %v", err)
	}
	if dials, _ := s.stats(); dials != dialed {
		t.Errorf("%d more connections, want none", dials-dialed)
	}
}

func TestCommandTimeoutCoversOpeningTheSession(t *testing.T) {
	s := newSSHServer(t, canned, func(s *sshServer) { s.stall = true })
	c := dial(t, s.host(t), 100*time.Millisecond)
	r, err := c.Esxcli(context.Background(), "storage", "core", "path", "list")
	if err == nil || !strings.Contains(err.Error(), "command timeout 100ms") || r.Err == "" {
		t.Errorf("got %+v, %v", r, err)
	}
}

func TestContextEndsCommand(t *testing.T) {
	started := make(chan struct{})
	s := newSSHServer(t, func(cmd string) reply {
		if cmd == "hang" {
			close(started)
		}
		return canned(cmd)
	})
	c := dial(t, s.host(t), time.Minute)
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		<-started
		cancel()
	}()
	r, err := c.Shell(ctx, "hang")
	if err == nil || !strings.Contains(err.Error(), `"hang" abandoned: context canceled`) || r.Err == "" {
		t.Errorf("got %v", err)
	}
}

func TestReconnectsOnceWhenConnectionDropped(t *testing.T) {
	s := newSSHServer(t, canned)
	c := dial(t, s.host(t), 5*time.Second)
	s.dropAll()
	if _, err := c.Esxcli(context.Background(), "iscsi", "software", "get"); err != nil {
		t.Fatalf("after a drop: %v", err)
	}
	if dials, _ := s.stats(); dials != 2 {
		t.Errorf("%d connections, want 2", dials)
	}
	// With the host gone for good, the command fails with a clear error.
	s.ln.Close()
	s.dropAll()
	_, err := c.Esxcli(context.Background(), "iscsi", "software", "get")
	if err == nil || !strings.Contains(err.Error(), "reconnecting failed") || !strings.Contains(err.Error(), s.addr()) {
		t.Errorf("host gone: %v", err)
	}
}

func TestConcurrentCommandsShareOneConnection(t *testing.T) {
	s := newSSHServer(t, canned)
	c := dial(t, s.host(t), 5*time.Second)
	var mu sync.Mutex
	results := map[string]bool{}
	c.OnResult(func(r *Result) {
		mu.Lock()
		results[r.Stdout] = true
		mu.Unlock()
	})
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := c.Shell(context.Background(), fmt.Sprintf("echo %d", i)); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if len(results) != 8 {
		t.Errorf("%d distinct results", len(results))
	}
	if dials, _ := s.stats(); dials != 1 {
		t.Errorf("%d connections, want 1", dials)
	}
}

func TestClosedClientFails(t *testing.T) {
	s := newSSHServer(t, canned)
	c := dial(t, s.host(t), 5*time.Second)
	c.Close()
	r, err := c.Esxcli(context.Background(), "iscsi", "software", "get")
	if err == nil || !strings.Contains(err.Error(), "client closed") || r == nil || r.Err == "" {
		t.Errorf("got %+v, %v", r, err)
	}
}

func TestQuote(t *testing.T) {
	for in, want := range map[string]string{
		"vmhba64": "vmhba64", "127.0.0.1:3260": "127.0.0.1:3260", "naa.6001405a": "naa.6001405a",
		"": "''", "a b": "'a b'", "it's": `'it'\''s'`, "$(reboot)": "'$(reboot)'", "--value=x": "--value=x",
	} {
		if got := Quote(in); got != want {
			t.Errorf("Quote(%q) = %s, want %s", in, got, want)
		}
	}
}
