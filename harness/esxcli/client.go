// Package esxcli drives an ESXi host over SSH, the way an administrator
// does: one persistent SSH connection per host, one session per command,
// every command and its output kept as a Result for the evidence. Its
// parsers turn esxcli's text output into typed values; they accept the
// canonical ESXi layout and the indent-stripped one found in published
// captures, and never panic on malformed input.
package esxcli

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"net"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/certkit/certkit/harness/lab"
)

// Result is one finished command, as evidence. Esxcli and Shell return a
// non-nil Result in every case, also when the command failed or never ran.
type Result struct {
	Host     string // the profile's host name
	Command  string // the command line as sent
	Stdout   string
	Stderr   string
	ExitCode int // -1 when the command did not exit (timeout, connection lost)
	// Err is why the command did not run to an exit status (timeout,
	// connection lost); "" when it exited, whatever the code.
	Err        string
	Start, End time.Time
}

// ExitError is a command that exited non-zero.
type ExitError struct{ Result *Result }

func (e *ExitError) Error() string {
	r := e.Result
	msg := firstLine(r.Stderr)
	if msg == "" {
		msg = firstLine(r.Stdout)
	}
	if msg == "" {
		msg = "(no output)"
	}
	return fmt.Sprintf("esxcli: host %s: %q exited %d: %s", r.Host, r.Command, r.ExitCode, msg)
}

func firstLine(s string) string {
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			return l
		}
	}
	return ""
}

// Client runs commands on one host over one SSH connection, opening a new
// session per command. It is safe for concurrent use.
type Client struct {
	host    lab.Host
	timeout time.Duration
	config  *ssh.ClientConfig

	mu     sync.Mutex
	conn   *ssh.Client
	gone   chan struct{} // closed when conn is gone
	closed bool
	hooks  []func(*Result)
}

// Dial connects to h over SSH with password (or keyboard-interactive, as
// ESXi's sshd asks) authentication and checks the host key against
// h.SSH.KnownHosts. commandTimeout bounds each command (0: only ctx does)
// and the connection's handshake.
func Dial(ctx context.Context, h lab.Host, commandTimeout time.Duration) (*Client, error) {
	c := &Client{host: h, timeout: commandTimeout}
	cfg, err := c.clientConfig()
	if err != nil {
		return nil, err
	}
	c.config = cfg
	conn, gone, err := c.dial(ctx)
	if err != nil {
		return nil, c.errorf("%v", err)
	}
	c.conn, c.gone = conn, gone
	return c, nil
}

func (c *Client) errorf(format string, args ...any) error {
	return fmt.Errorf("esxcli: host %s (%s): %s", c.host.Name, c.host.SSH.Address, fmt.Sprintf(format, args...))
}

func (c *Client) clientConfig() (*ssh.ClientConfig, error) {
	s := c.host.SSH
	pw, err := s.ResolvePassword()
	if err != nil {
		return nil, c.errorf("%v", err)
	}
	if s.KnownHosts == "" {
		return nil, c.errorf("no known_hosts file in the lab profile; host keys are always verified: run `%s` and set ssh.known_hosts", keyscan(s.Address, "known_hosts"))
	}
	if _, err := os.Stat(s.KnownHosts); err != nil {
		return nil, c.errorf("known_hosts file: %v; create it with `%s`", err, keyscan(s.Address, s.KnownHosts))
	}
	cb, err := knownhosts.New(s.KnownHosts)
	if err != nil {
		return nil, c.errorf("known_hosts file %s: %v", s.KnownHosts, err)
	}
	answer := func(_, _ string, questions []string, _ []bool) ([]string, error) {
		answers := make([]string, len(questions))
		for i := range answers {
			answers[i] = pw
		}
		return answers, nil
	}
	return &ssh.ClientConfig{
		User:              s.User,
		Auth:              []ssh.AuthMethod{ssh.Password(pw), ssh.KeyboardInteractive(answer)},
		HostKeyCallback:   c.checkHostKey(cb),
		HostKeyAlgorithms: knownAlgorithms(cb, s.Address),
	}, nil
}

func keyscan(address, file string) string {
	host, port, err := net.SplitHostPort(address)
	if err != nil {
		return "ssh-keyscan HOST >> " + file
	}
	return fmt.Sprintf("ssh-keyscan -p %s %s >> %s", port, host, file)
}

// checkHostKey wraps the known_hosts check with errors that say what to do.
func (c *Client) checkHostKey(cb ssh.HostKeyCallback) ssh.HostKeyCallback {
	return func(hostname string, remote net.Addr, key ssh.PublicKey) error {
		err := cb(hostname, remote, key)
		var ke *knownhosts.KeyError
		switch {
		case err == nil:
			return nil
		case errors.As(err, &ke) && len(ke.Want) > 0:
			return fmt.Errorf("host key MISMATCH: the host offers %s %s, but %s holds another key for it (line %d); if the host was reinstalled, replace that line with `%s`; otherwise someone may be intercepting the connection",
				key.Type(), ssh.FingerprintSHA256(key), ke.Want[0].Filename, ke.Want[0].Line, keyscan(c.host.SSH.Address, ke.Want[0].Filename))
		case errors.As(err, &ke):
			return fmt.Errorf("host key %s %s is not in %s; add it with `%s` after checking the fingerprint on the host's console",
				key.Type(), ssh.FingerprintSHA256(key), c.host.SSH.KnownHosts, keyscan(c.host.SSH.Address, c.host.SSH.KnownHosts))
		default:
			return err
		}
	}
}

// knownAlgorithms lists the key types known_hosts holds for address, so the
// server is asked for a key that can be checked (otherwise it may offer a
// type the file lacks and the check fails though the host is known).
func knownAlgorithms(cb ssh.HostKeyCallback, address string) []string {
	probe, err := ssh.NewPublicKey(ed25519.PublicKey(make([]byte, ed25519.PublicKeySize)))
	if err != nil {
		return nil
	}
	var ke *knownhosts.KeyError
	if err := cb(address, &net.TCPAddr{}, probe); !errors.As(err, &ke) || len(ke.Want) == 0 {
		return nil
	}
	var algs []string
	seen := map[string]bool{}
	for _, k := range ke.Want {
		types := []string{k.Key.Type()}
		if k.Key.Type() == ssh.KeyAlgoRSA {
			types = []string{ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA}
		}
		for _, t := range types {
			if !seen[t] {
				seen[t] = true
				algs = append(algs, t)
			}
		}
	}
	return algs
}

func (c *Client) dial(ctx context.Context) (*ssh.Client, chan struct{}, error) {
	if c.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	var d net.Dialer
	tcp, err := d.DialContext(ctx, "tcp", c.host.SSH.Address)
	if err != nil {
		return nil, nil, fmt.Errorf("connect: %v; check ssh.address and that SSH is enabled on the host", err)
	}
	// The handshake has no context: bound it by ctx's deadline, and cut it
	// short if ctx ends first.
	if dl, ok := ctx.Deadline(); ok {
		_ = tcp.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = tcp.SetDeadline(time.Unix(1, 0)) })
	sc, chans, reqs, err := ssh.NewClientConn(tcp, c.host.SSH.Address, c.config)
	stop()
	if err != nil {
		tcp.Close()
		if ctx.Err() != nil {
			return nil, nil, fmt.Errorf("ssh handshake: %v (%v)", ctx.Err(), err)
		}
		return nil, nil, fmt.Errorf("ssh handshake: %v", err)
	}
	_ = tcp.SetDeadline(time.Time{})
	conn := ssh.NewClient(sc, chans, reqs)
	gone := make(chan struct{})
	go func() {
		_ = conn.Wait()
		close(gone)
	}()
	return conn, gone, nil
}

// OnResult adds a hook called with every finished command, in the
// goroutine that ran it, before Esxcli or Shell returns.
func (c *Client) OnResult(f func(*Result)) {
	c.mu.Lock()
	c.hooks = append(c.hooks, f)
	c.mu.Unlock()
}

// Host returns the host this client drives.
func (c *Client) Host() lab.Host { return c.host }

// Close closes the connection; later commands fail.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	if c.conn != nil {
		return c.conn.Close()
	}
	return nil
}

// Esxcli runs `esxcli` with args, each shell-quoted. A non-zero exit is an
// *ExitError.
func (c *Client) Esxcli(ctx context.Context, args ...string) (*Result, error) {
	q := make([]string, 0, len(args)+1)
	q = append(q, "esxcli")
	for _, a := range args {
		q = append(q, Quote(a))
	}
	return c.Shell(ctx, strings.Join(q, " "))
}

// Shell runs cmdline as the host's shell reads it (cat, dd, tail, ...).
// A non-zero exit is an *ExitError.
func (c *Client) Shell(ctx context.Context, cmdline string) (*Result, error) {
	r := &Result{Host: c.host.Name, Command: cmdline, ExitCode: -1, Start: time.Now()}
	err := c.run(ctx, r)
	r.End = time.Now()
	if err != nil && r.Err == "" && !isExit(err) {
		r.Err = err.Error()
	}
	c.mu.Lock()
	hooks := slices.Clone(c.hooks)
	c.mu.Unlock()
	for _, h := range hooks {
		h(r)
	}
	return r, err
}

func isExit(err error) bool {
	var ee *ExitError
	return errors.As(err, &ee)
}

func (c *Client) run(ctx context.Context, r *Result) error {
	deadlineByUs := false
	if c.timeout > 0 {
		if dl, ok := ctx.Deadline(); !ok || time.Until(dl) > c.timeout {
			deadlineByUs = true
		}
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	// Opening a session and starting the command wait on the host too, so
	// they run with the command and are abandoned with it.
	var stdout, stderr lockedBuffer
	type outcome struct {
		err error
		ran bool // err is the command's own (from Wait)
	}
	done := make(chan outcome, 1)
	var (
		mu        sync.Mutex
		sess      *ssh.Session
		abandoned bool
	)
	go func() {
		s, err := c.session(ctx)
		if err != nil {
			done <- outcome{err: err}
			return
		}
		defer s.Close()
		mu.Lock()
		if abandoned {
			mu.Unlock()
			return
		}
		sess = s
		mu.Unlock()
		s.Stdout, s.Stderr = &stdout, &stderr
		if err := s.Start(r.Command); err != nil {
			done <- outcome{err: c.errorf("start %q: %v", r.Command, err)}
			return
		}
		done <- outcome{err: s.Wait(), ran: true}
	}()
	var err error
	select {
	case o := <-done:
		if !o.ran {
			return o.err
		}
		err = o.err
	case <-ctx.Done():
		// Close the session but do not wait for it: a silent host never
		// confirms the close.
		mu.Lock()
		abandoned = true
		if sess != nil {
			sess.Close()
		}
		mu.Unlock()
		r.Stdout, r.Stderr = stdout.String(), stderr.String()
		if deadlineByUs && errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return c.errorf("%q did not finish within the command timeout %v (timings.command_timeout); session closed", r.Command, c.timeout)
		}
		return c.errorf("%q abandoned: %v; session closed", r.Command, ctx.Err())
	}
	r.Stdout, r.Stderr = stdout.String(), stderr.String()
	var ee *ssh.ExitError
	switch {
	case err == nil:
		r.ExitCode = 0
		return nil
	case errors.As(err, &ee) && ee.Signal() != "":
		return c.errorf("%q killed by signal %s", r.Command, ee.Signal())
	case errors.As(err, &ee):
		r.ExitCode = ee.ExitStatus()
		return &ExitError{Result: r}
	default:
		return c.errorf("%q: %v", r.Command, err)
	}
}

// session opens a session, reconnecting once if the connection is gone.
func (c *Client) session(ctx context.Context) (*ssh.Session, error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, c.errorf("client closed")
	}
	conn, gone := c.conn, c.gone
	c.mu.Unlock()
	select {
	case <-gone:
	default:
		s, err := conn.NewSession()
		var refused *ssh.OpenChannelError
		switch {
		case err == nil:
			return s, nil
		case errors.As(err, &refused):
			// The connection is fine; the host refused a session (too many?).
			return nil, c.errorf("open session: %v", err)
		}
	}
	conn, err := c.reconnect(ctx, conn)
	if err != nil {
		return nil, err
	}
	s, err := conn.NewSession()
	if err != nil {
		return nil, c.errorf("open session: %v", err)
	}
	return s, nil
}

// reconnect replaces a dead connection once; concurrent callers share it.
func (c *Client) reconnect(ctx context.Context, dead *ssh.Client) (*ssh.Client, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, c.errorf("client closed")
	}
	if c.conn != dead {
		return c.conn, nil // someone else reconnected
	}
	dead.Close()
	conn, gone, err := c.dial(ctx)
	if err != nil {
		return nil, c.errorf("connection lost; reconnecting failed: %v", err)
	}
	c.conn, c.gone = conn, gone
	return conn, nil
}

// lockedBuffer is a bytes.Buffer safe to read while the session writes.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

var shellSafe = regexp.MustCompile(`^[A-Za-z0-9_@%+=:,./-]+$`)

// Quote quotes s for a POSIX shell (ESXi's busybox ash): as is when it
// holds only safe characters, otherwise in single quotes.
func Quote(s string) string {
	if shellSafe.MatchString(s) {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
