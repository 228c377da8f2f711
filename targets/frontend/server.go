// Package frontend is certkit's iSCSI target session layer (RFC 7143): it
// listens on a set of portals and serves one or more targets on every one
// of them, as an array does; it runs login (AuthMethod None or CHAP) and
// operational negotiation, discovery (SendTargets) and full-feature
// sessions, and hands every SCSI command, fully built as a gotgt
// api.SCSICommand, to the SCSI layer of the session's target (see SCSI;
// targets/array wires gotgt's in).
//
// Commands are delivered in CmdSN order and executed by their task
// attribute: SIMPLE ones side by side on a few workers per session, ORDERED
// ones alone, HEAD OF QUEUE ones first. Data moves without copies in user
// space: Data-Out is read straight into the command's pooled buffer, Data-In
// goes out with its header in one writev. Task management (ABORT TASK, ABORT
// TASK SET, CLEAR TASK SET, LUN RESET, TARGET WARM RESET), target NOP-In
// pings, caps on connections and logins per portal, and a negative-control
// Defect are configured in Config.
//
// Scope: ErrorRecoveryLevel 0, one connection per session; CHAP (one-way,
// mutual) and an initiator ACL per target (Target.Auth, Target.ACL), and
// CHAP for discovery sessions (Config.DiscoveryAuth).
// gotgt's own session layer (pkg/port/iscsit) is not used: it loses the
// command after a non-immediate NOP-Out (see ../shared/notes/gotgt.md).
package frontend

import (
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/certkit/certkit/iscsi"
	"github.com/gostor/gotgt/pkg/api"
)

// SCSI is the SCSI layer behind one target of a Server; it sees only the
// sessions and commands of its target. Execute runs one command
// synchronously; on return cmd.Result, cmd.SenseBuffer, cmd.InSDBBuffer
// (data and gotgt's Resid) and cmd.TL describe the outcome, as gotgt's
// SCSITargetService.AddCommandQueue leaves them; for a READ, InSDBBuffer.Resid
// is exactly the bytes produced (0 is none). Execute is called concurrently,
// for the SIMPLE tasks of one session as for different sessions, and must
// not keep the command's buffers after it returns (they are pooled).
// AddNexus registers the I_T nexus of a session before its first command;
// RemoveNexus forgets it.
type SCSI interface {
	AddNexus(n *api.ITNexus) error
	RemoveNexus(n *api.ITNexus)
	Execute(cmd *api.SCSICommand)
}

// Resetter is implemented by a SCSI layer that keeps state a reset must
// clear (reservations, unit attentions owed). For a LOGICAL UNIT RESET or
// TARGET WARM RESET the front end first aborts the affected tasks of every
// session of the target, then calls ResetLU (lun is the LUN number) or
// ResetTarget with the nexus of the session that asked.
type Resetter interface {
	ResetLU(n *api.ITNexus, lun uint64)
	ResetTarget(n *api.ITNexus)
}

// LUNLister is a SCSI target that can say whether a LUN (number) exists.
// With it, a task management function naming a LUN that does not exist
// (ABORT TASK SET, CLEAR TASK SET, LUN RESET) is answered "LUN does not
// exist" (RFC 7143 §11.6.1) rather than "function complete" for a reset of
// nothing, which would tell a host's error handling a lie.
type LUNLister interface {
	HasLUN(lun uint64) bool
}

// Portal is one listening address and its portal group. Every target of
// the server is reachable through every portal.
type Portal struct {
	Listen string // host:port to bind exactly; port 0 picks one
	TPGT   uint16 // target portal group tag; also the SCSI relative target port ID
}

// Target is one iSCSI target of a Server: its name, the SCSI layer its
// sessions' commands go to, and who may log in to it. Auth, when its
// Secret is set, requires CHAP at every login to the target; ACL lists the
// initiator IQNs allowed to log in (and to see the target in SendTargets);
// empty allows every initiator. chap.go has both.
type Target struct {
	Name string // IQN; unique (case-insensitively) among the server's targets
	SCSI SCSI
	Auth Auth
	ACL  []string
}

// Config describes the targets a Server serves and its portals. Zero values
// take the defaults named on each field.
type Config struct {
	// Targets are served on every portal; a login picks one by its
	// TargetName key.
	Targets []Target

	// TargetName, SCSI, Auth and ACL are the shorthand for a server of one
	// target: the same as Targets: []Target{{TargetName, SCSI, Auth, ACL}}.
	// Set either them or Targets, not both.
	TargetName string // IQN
	SCSI       SCSI
	Auth       Auth
	ACL        []string

	// DiscoveryAuth, when its Secret is set, requires CHAP at every
	// discovery login. When it is not set, discovery needs CHAP only if
	// every target requires the same CHAP account (always so for one target
	// with Auth set), and then that account: a host that is given the
	// array's one account logs in to discovery and targets alike. Targets
	// with different accounts leave discovery open, as Linux's target does
	// by default (discovery_auth is separate there too); SendTargets lists
	// only the targets whose ACL allows the initiator either way.
	DiscoveryAuth Auth

	Portals []Portal

	QueueDepth   int           // CmdSN window, MaxCmdSN-ExpCmdSN+1 when idle; default 128
	LoginTimeout time.Duration // a connection must finish login within it; default 15s

	// Concurrency bounds the SCSI tasks of one session executing at once
	// (SIMPLE tasks run side by side; ORDERED ones alone); default 16.
	Concurrency int

	// NopInInterval, when not zero, makes the target ping every session
	// with a NOP-In (TTT not 0xffffffff) that often; a ping not echoed
	// within NopInTimeout (default 10s) drops the connection.
	NopInInterval time.Duration
	NopInTimeout  time.Duration

	// MaxConnections caps the connections open on one portal, logged in or
	// not (default 256); MaxLogins caps those of one portal still in login
	// (default 32). A connection past either cap is closed at once, so a
	// flood of connections cannot starve the sessions already running.
	MaxConnections int
	MaxLogins      int

	// Defect makes the target misbehave on purpose, as a negative control
	// for initiator tests. The zero value is a correct target.
	Defect Defect

	// Offers in operational negotiation (the initiator's values are honoured
	// when smaller).
	MaxRecvDataSegmentLength uint32 // what this target accepts; default 262144
	FirstBurstLength         uint32 // default 65536
	MaxBurstLength           uint32 // default 262144
	MaxOutstandingR2T        uint32 // default 8

	// Logf receives one line per notable event (login, reject, close); nil
	// discards.
	Logf func(format string, args ...any)

	// Trace, when set, sees every PDU of full feature phase: received (in)
	// or about to be sent. It runs on the session's goroutines and must
	// not keep or change the PDU.
	Trace func(in bool, p *iscsi.PDU)
}

func (c *Config) setDefaults() {
	if c.QueueDepth <= 0 {
		c.QueueDepth = 128
	}
	if c.LoginTimeout <= 0 {
		c.LoginTimeout = 15 * time.Second
	}
	if c.MaxRecvDataSegmentLength == 0 {
		c.MaxRecvDataSegmentLength = 262144
	}
	if c.FirstBurstLength == 0 {
		c.FirstBurstLength = 65536
	}
	if c.MaxBurstLength == 0 {
		c.MaxBurstLength = 262144
	}
	if c.MaxOutstandingR2T == 0 {
		c.MaxOutstandingR2T = 8
	}
	if c.Concurrency <= 0 {
		c.Concurrency = 16
	}
	if c.NopInTimeout <= 0 {
		c.NopInTimeout = 10 * time.Second
	}
	if c.MaxConnections <= 0 {
		c.MaxConnections = 256
	}
	if c.MaxLogins <= 0 {
		c.MaxLogins = 32
	}
	if c.Logf == nil {
		c.Logf = func(string, ...any) {}
	}
}

// targets returns the served targets: Targets, or the one the shorthand
// fields describe.
func (c *Config) targets() []Target {
	if len(c.Targets) > 0 {
		return c.Targets
	}
	return []Target{{Name: c.TargetName, SCSI: c.SCSI, Auth: c.Auth, ACL: c.ACL}}
}

// label names the server in errors and logs: "target IQN", or "targets
// IQN1, IQN2".
func (c *Config) label() string {
	ts := c.targets()
	if len(ts) == 1 {
		return "target " + ts[0].Name
	}
	names := make([]string, len(ts))
	for i, t := range ts {
		names[i] = t.Name
	}
	return "targets " + strings.Join(names, ", ")
}

func (c *Config) validate() error {
	if len(c.Targets) > 0 && (c.TargetName != "" || c.SCSI != nil || c.Auth != (Auth{}) || len(c.ACL) > 0) {
		return errors.New("frontend: both Targets and the one-target fields (TargetName, SCSI, Auth, ACL) are set: " +
			"list every target in Targets, or drop Targets and use the one-target fields")
	}
	if err := c.validateTargets(); err != nil {
		return err
	}
	label := c.label()
	if len(c.Portals) == 0 {
		return fmt.Errorf("frontend: %s: no portals: give at least one listen address", label)
	}
	for _, v := range []struct {
		name string
		v    uint32
	}{{"MaxRecvDataSegmentLength", c.MaxRecvDataSegmentLength}, {"FirstBurstLength", c.FirstBurstLength}, {"MaxBurstLength", c.MaxBurstLength}} {
		if v.v < 512 || v.v > 1<<24-1 {
			return fmt.Errorf("frontend: %s: %s %d is outside 512..16777215", label, v.name, v.v)
		}
	}
	if c.QueueDepth > 1<<20 {
		return fmt.Errorf("frontend: %s: QueueDepth %d is too large (at most 1048576)", label, c.QueueDepth)
	}
	if c.Concurrency > 4096 {
		return fmt.Errorf("frontend: %s: Concurrency %d is too large (at most 4096)", label, c.Concurrency)
	}
	if c.NopInInterval < 0 {
		return fmt.Errorf("frontend: %s: NopInInterval %v is negative; use 0 to turn pings off", label, c.NopInInterval)
	}
	if c.Defect.CloseWindowAfter < 0 {
		return fmt.Errorf("frontend: %s: Defect.CloseWindowAfter %d is negative; use 0 for a correct target", label, c.Defect.CloseWindowAfter)
	}
	if err := c.DiscoveryAuth.validate("DiscoveryAuth"); err != nil {
		return fmt.Errorf("frontend: %s: %w", label, err)
	}
	return nil
}

// validateTargets checks each target's name, SCSI layer, Auth and ACL;
// errors name the target's field (Targets[1].Auth.Secret, or Auth.Secret
// for the one-target shorthand).
func (c *Config) validateTargets() error {
	short := len(c.Targets) == 0
	seen := map[string]int{}
	for i, t := range c.targets() {
		field, prefix := fmt.Sprintf("Targets[%d]", i), fmt.Sprintf("Targets[%d].", i)
		if short {
			field, prefix = "TargetName", ""
		}
		if t.Name == "" {
			if short {
				return errors.New("frontend: TargetName is empty: set the target's IQN, or list the targets in Targets")
			}
			return fmt.Errorf("frontend: %s.Name is empty: set the target's IQN", field)
		}
		who := fmt.Sprintf("frontend: target %s", t.Name)
		if !short {
			who = fmt.Sprintf("frontend: %s (%s)", field, t.Name)
		}
		if j, dup := seen[strings.ToLower(t.Name)]; dup {
			return fmt.Errorf("%s: the name is also Targets[%d]'s (iSCSI names compare case-insensitively); give each target its own IQN", who, j)
		}
		seen[strings.ToLower(t.Name)] = i
		if t.SCSI == nil {
			return fmt.Errorf("%s has no SCSI layer: set %sSCSI", who, prefix)
		}
		if err := t.Auth.validate(prefix + "Auth"); err != nil {
			return fmt.Errorf("%s: %w", who, err)
		}
		for j, name := range t.ACL {
			if strings.TrimSpace(name) == "" {
				return fmt.Errorf("%s: %sACL[%d] is empty; list initiator IQNs, or leave ACL empty to allow every initiator", who, prefix, j)
			}
		}
	}
	return nil
}

type portal struct {
	ln        net.Listener
	tpgt      uint16
	mu        sync.Mutex
	advertise string
	conns     int // open connections (Config.MaxConnections)
	logins    int // of those, still in login (Config.MaxLogins)
	refused   int // connections closed at the caps, for the log
}

func (p *portal) advertised() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.advertise
}

// sessionKey names a session (RFC 7143 §4.4.3: initiator name, ISID,
// target name, TPGT): a new login for the same key reinstates (replaces)
// the session. target is the target's name in lower case.
type sessionKey struct {
	initiator string
	isid      [6]byte
	target    string
	tpgt      uint16
}

// Server serves its targets on its portals.
type Server struct {
	cfg       Config
	label     string    // "target IQN" or "targets IQN1, IQN2": errors and logs
	targets   []*Target // every target, in Config order
	byName    map[string]*Target
	discovery Auth // CHAP of discovery sessions (Config.DiscoveryAuth)
	portals   []*portal

	mu       sync.Mutex
	closed   bool
	conns    map[net.Conn]struct{}
	sessions map[sessionKey]*session
	byTSIH   map[uint16]*session
	nextTSIH uint16

	wg sync.WaitGroup
}

// Listen binds every portal's address and starts serving. A failed bind
// closes what was bound and returns an error naming the address.
func Listen(cfg Config) (*Server, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	s := &Server{
		cfg:      cfg,
		label:    cfg.label(),
		byName:   map[string]*Target{},
		conns:    map[net.Conn]struct{}{},
		sessions: map[sessionKey]*session{},
		byTSIH:   map[uint16]*session{},
	}
	for _, t := range cfg.targets() {
		t.ACL = slices.Clone(t.ACL)
		s.targets = append(s.targets, &t)
		s.byName[strings.ToLower(t.Name)] = &t
	}
	s.discovery = discoveryAuth(cfg.DiscoveryAuth, s.targets) // chap.go
	for _, p := range cfg.Portals {
		ln, err := net.Listen("tcp", p.Listen)
		if err != nil {
			for _, q := range s.portals {
				q.ln.Close()
			}
			return nil, fmt.Errorf("frontend: %s: listen on portal %s (TPGT %d): %w; use a free local address", s.label, p.Listen, p.TPGT, err)
		}
		s.portals = append(s.portals, &portal{ln: ln, tpgt: p.TPGT, advertise: ln.Addr().String()})
	}
	for _, p := range s.portals {
		s.wg.Add(1)
		go s.accept(p)
	}
	return s, nil
}

// Targets returns the names of the served targets, in Config order.
func (s *Server) Targets() []string {
	names := make([]string, len(s.targets))
	for i, t := range s.targets {
		names[i] = t.Name
	}
	return names
}

// target finds a served target by name (case-insensitively); nil if none.
func (s *Server) target(name string) *Target { return s.byName[strings.ToLower(name)] }

// Addrs returns the bound address of each portal, in Config.Portals order.
func (s *Server) Addrs() []string {
	out := make([]string, len(s.portals))
	for i, p := range s.portals {
		out[i] = p.ln.Addr().String()
	}
	return out
}

// Advertise sets the address SendTargets reports for portal i (in
// Config.Portals order), e.g. a fault proxy in front of it. By default a
// portal advertises its bound address.
func (s *Server) Advertise(i int, addr string) error {
	if i < 0 || i >= len(s.portals) {
		return fmt.Errorf("frontend: %s: no portal %d (have %d)", s.label, i, len(s.portals))
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return fmt.Errorf("frontend: %s: advertised address %q for portal %d: %w", s.label, addr, i, err)
	}
	p := s.portals[i]
	p.mu.Lock()
	p.advertise = addr
	p.mu.Unlock()
	return nil
}

// Close stops the listeners, drops every connection and waits until every
// goroutine of the server has returned.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	for _, p := range s.portals {
		p.ln.Close()
	}
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}

func (s *Server) logf(format string, args ...any) {
	s.cfg.Logf("frontend: "+s.label+": "+format, args...)
}

func (s *Server) accept(p *portal) {
	defer s.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			s.logf("portal %s: accept: %v", p.ln.Addr(), err)
			// Transient (e.g. out of file descriptors): back off briefly.
			t := time.NewTimer(20 * time.Millisecond)
			<-t.C
			continue
		}
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetNoDelay(true)
		}
		if err := s.start(c, p); errors.Is(err, errServerClosed) {
			return
		}
	}
}

var errServerClosed = errors.New("server closed")

// start admits c on portal p (or closes it at the caps) and serves it.
func (s *Server) start(c net.Conn, p *portal) error {
	if !p.admit(s.cfg.MaxConnections, s.cfg.MaxLogins) {
		c.Close()
		p.mu.Lock()
		p.refused++
		n := p.refused
		p.mu.Unlock()
		if n&(n-1) == 0 { // 1, 2, 4, 8, ...: a flood does not flood the log
			s.logf("portal %s: refused %d connection(s) past the caps (%d open, %d in login)", p.ln.Addr(), n, s.cfg.MaxConnections, s.cfg.MaxLogins)
		}
		return fmt.Errorf("frontend: %s: portal %s: at its connection caps (%d open, %d in login)", s.label, p.ln.Addr(), s.cfg.MaxConnections, s.cfg.MaxLogins)
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		c.Close()
		p.leave(true)
		return fmt.Errorf("frontend: %s: %w", s.label, errServerClosed)
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	go s.serve(c, p)
	return nil
}

// ServeConn serves c as a connection accepted on portal i (in Config.Portals
// order): the same caps, login and session as one from the portal's
// listener. A fault proxy in this process uses it to hand over connections
// in memory instead of through the loopback stack. It returns at once; an
// error (no such portal, caps reached, server closed) means c was closed
// unserved.
func (s *Server) ServeConn(i int, c net.Conn) error {
	if i < 0 || i >= len(s.portals) {
		c.Close()
		return fmt.Errorf("frontend: %s: no portal %d (have %d)", s.label, i, len(s.portals))
	}
	return s.start(c, s.portals[i])
}

// admit counts a new connection in, or reports false when the portal is at
// one of its caps.
func (p *portal) admit(maxConns, maxLogins int) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns >= maxConns || p.logins >= maxLogins {
		return false
	}
	p.conns++
	p.logins++
	return true
}

// loggedIn notes that a connection left login.
func (p *portal) loggedIn() {
	p.mu.Lock()
	p.logins--
	p.mu.Unlock()
}

// leave counts a connection out; inLogin says it never left login.
func (p *portal) leave(inLogin bool) {
	p.mu.Lock()
	p.conns--
	if inLogin {
		p.logins--
	}
	p.mu.Unlock()
}

func (s *Server) serve(c net.Conn, p *portal) {
	defer s.wg.Done()
	inLogin := true
	defer func() {
		c.Close()
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		p.leave(inLogin)
	}()
	sess, err := s.login(c, p)
	inLogin = false
	p.loggedIn()
	if err != nil {
		if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
			s.logf("portal %s: login from %s: %v", p.ln.Addr(), c.RemoteAddr(), err)
		}
		return
	}
	sess.run()
}

// register makes sess the session of its I_T nexus, reinstating (closing
// and awaiting) an older one, and gives it a TSIH. wantTSIH non-zero is a
// login that names an existing session.
func (s *Server) register(sess *session, wantTSIH uint16) (status uint16, err error) {
	key := sess.key()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return statusServiceUnavailable, errors.New("server closing")
	}
	var old *session
	if !sess.discovery {
		old = s.sessions[key]
	}
	if wantTSIH != 0 {
		if old == nil || old.tsih != wantTSIH {
			s.mu.Unlock()
			return statusSessionMissing, fmt.Errorf("no session with TSIH %d for %s ISID %x at %s", wantTSIH, sess.initiator, sess.isid, sess.targetName())
		}
	}
	s.mu.Unlock()
	if old != nil {
		s.logf("reinstating session TSIH %d of %s ISID %x at %s", old.tsih, old.initiator, old.isid, old.targetName())
		old.close()
		t := time.NewTimer(s.cfg.LoginTimeout)
		defer t.Stop()
		select {
		case <-old.gone:
		case <-t.C:
			return statusTargetError, fmt.Errorf("old session TSIH %d did not end within %v", old.tsih, s.cfg.LoginTimeout)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return statusServiceUnavailable, errors.New("server closing")
	}
	if cur := s.sessions[key]; cur != nil && !sess.discovery {
		return statusTargetError, fmt.Errorf("a concurrent login for %s ISID %x at %s won", sess.initiator, sess.isid, sess.targetName())
	}
	tsih := wantTSIH
	if tsih == 0 {
		for i := 0; i < 1<<16; i++ {
			s.nextTSIH++
			if s.nextTSIH == 0 {
				s.nextTSIH = 1
			}
			if s.byTSIH[s.nextTSIH] == nil {
				tsih = s.nextTSIH
				break
			}
		}
		if tsih == 0 {
			return statusOutOfResources, errors.New("no free TSIH")
		}
	}
	sess.tsih = tsih
	if !sess.discovery {
		s.sessions[key] = sess
	}
	s.byTSIH[tsih] = sess
	return 0, nil
}

func (s *Server) unregister(sess *session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	key := sess.key()
	if s.sessions[key] == sess {
		delete(s.sessions, key)
	}
	if s.byTSIH[sess.tsih] == sess {
		delete(s.byTSIH, sess.tsih)
	}
}

// sendTargets answers SendTargets=value (RFC 7143 §12.3, appendix C) for a
// session of initiator: All lists every target the initiator's ACL
// allows; a target name lists that target if allowed; an empty value
// lists the session's own target in a normal session, and is All in a
// discovery session. Each target comes with every portal, as each is
// reachable through all of them.
func (s *Server) sendTargets(value, initiator string, own *Target, out *iscsi.Text) {
	var list []*Target
	switch {
	case value == "" && own != nil:
		list = []*Target{own}
	case value == "All" || value == "":
		list = s.targets
	default:
		if t := s.target(value); t != nil {
			list = []*Target{t}
		}
	}
	var addrs []string
	for _, t := range list {
		if !t.allowed(initiator) { // an initiator outside the ACL learns nothing (chap.go)
			continue
		}
		if addrs == nil {
			addrs = s.targetAddresses()
		}
		out.Add("TargetName", t.Name)
		for _, a := range addrs {
			out.Add("TargetAddress", a)
		}
	}
}

// targetAddresses renders every portal for SendTargets: "host:port,TPGT".
func (s *Server) targetAddresses() []string {
	out := make([]string, 0, len(s.portals))
	for _, p := range s.portals {
		out = append(out, p.advertised()+","+strconv.Itoa(int(p.tpgt)))
	}
	return out
}
