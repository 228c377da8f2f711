package frontend

import (
	"bufio"
	"cmp"
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/certkit/certkit/iscsi"
	"github.com/gostor/gotgt/pkg/api"
)

// Login status (class<<8 | detail), RFC 7143 §11.13.5.
const (
	statusSuccess            uint16 = 0x0000
	statusInitiatorError     uint16 = 0x0200
	statusAuthFailure        uint16 = 0x0201
	statusNotFound           uint16 = 0x0203
	statusUnsupportedVersion uint16 = 0x0205
	statusMissingParameter   uint16 = 0x0207
	statusSessionTypeBad     uint16 = 0x0209
	statusSessionMissing     uint16 = 0x020a
	statusInvalidDuringLogin uint16 = 0x020b
	statusTargetError        uint16 = 0x0300
	statusServiceUnavailable uint16 = 0x0301
	statusOutOfResources     uint16 = 0x0302
)

// Login stages (CSG/NSG).
const (
	stageSecurity    = 0
	stageOperational = 1
	stageFullFeature = 3
)

// params are a connection's negotiated operational parameters.
type params struct {
	digests       iscsi.Digests
	immediateData bool
	initialR2T    bool
	firstBurst    uint32
	maxBurst      uint32
	maxOutR2T     uint32
	peerRecv      uint32 // initiator's MaxRecvDataSegmentLength: what we may send
	ourRecv       uint32 // ours, once declared; what we accept
}

func defaultParams() params {
	// RFC 7143 §13 defaults, which hold for keys never negotiated.
	return params{
		immediateData: true,
		initialR2T:    true,
		firstBurst:    65536,
		maxBurst:      262144,
		maxOutR2T:     1,
		peerRecv:      iscsi.DefaultMaxRecvDataSegmentLength,
		ourRecv:       iscsi.DefaultMaxRecvDataSegmentLength,
	}
}

// loginError ends a login with a Login Response carrying status.
type loginError struct {
	status uint16
	msg    string
}

func (e *loginError) Error() string { return fmt.Sprintf("login status 0x%04x: %s", e.status, e.msg) }

func failLogin(status uint16, format string, args ...any) error {
	return &loginError{status, fmt.Sprintf(format, args...)}
}

// login runs the login phase on a new connection and returns the session in
// full feature phase, registered with the server.
func (s *Server) login(c net.Conn, p *portal) (*session, error) {
	c.SetDeadline(time.Now().Add(s.cfg.LoginTimeout))
	lg := &loginConn{srv: s, c: c, p: p, par: defaultParams(), stage: -1}
	sess, err := lg.run()
	if err != nil {
		var le *loginError
		if errors.As(err, &le) && lg.req != nil {
			lg.respondStatus(le.status)
		}
		return nil, err
	}
	c.SetDeadline(time.Time{})
	return sess, nil
}

type loginConn struct {
	srv   *Server
	c     net.Conn
	p     *portal
	par   params
	stage int // current stage; -1 before the first request
	req   *iscsi.PDU

	statSN     uint32
	declared   bool // our MaxRecvDataSegmentLength sent
	pending    []byte
	initiator  string
	alias      string
	discovery  bool
	isid       [6]byte
	tsih       uint16
	cid        uint16
	itt        uint32
	cmdSN      uint32
	tgt        *Target // the target of a normal session, once named
	acct       Auth    // the CHAP account this login answers to (checkAccess)
	authDone   bool
	auth       loginAuth
	identified bool // first request's identity keys checked
	negotiated map[string]bool
}

func (l *loginConn) run() (*session, error) {
	l.negotiated = map[string]bool{}
	for {
		req, err := iscsi.ReadPDU(l.c, iscsi.Framing{MaxDataSegment: iscsi.DefaultMaxRecvDataSegmentLength})
		if err != nil {
			if req != nil && errors.Is(err, iscsi.ErrTooLong) && req.Opcode() == iscsi.OpLoginReq {
				l.req = req
				return nil, failLogin(statusInitiatorError, "login data segment longer than 8192 bytes")
			}
			return nil, err
		}
		if req.Opcode() != iscsi.OpLoginReq {
			// Anything before login completes is a protocol violation;
			// RFC 7143 §6.1: drop the connection.
			return nil, fmt.Errorf("%s before login completed", req.Opcode())
		}
		l.req = req
		if l.stage < 0 {
			if err := l.begin(req); err != nil {
				return nil, err
			}
		}
		if req.BHS[3] > 0 { // Version-min
			return nil, failLogin(statusUnsupportedVersion, "version-min %d, this target speaks 0", req.BHS[3])
		}
		transit := req.Flags()&iscsi.FlagTransit != 0
		cont := req.Flags()&iscsi.FlagContinue != 0
		csg := int(req.Flags()>>2) & 3
		nsg := int(req.Flags()) & 3
		if transit && cont {
			return nil, failLogin(statusInitiatorError, "login request has both T and C set")
		}
		if csg != l.stage || csg == 2 || csg == stageFullFeature {
			return nil, failLogin(statusInvalidDuringLogin, "login request in stage %d, expected %d", csg, l.stage)
		}
		if transit && (nsg <= csg || nsg == 2) {
			return nil, failLogin(statusInitiatorError, "login transit from stage %d to invalid stage %d", csg, nsg)
		}
		l.pending = append(l.pending, req.Data...)
		if len(l.pending) > 64<<10 {
			return nil, failLogin(statusInitiatorError, "login text longer than 64 KiB")
		}
		if cont {
			// RFC 7143 §6.2: answer an empty response until the last part.
			if err := l.respond(false, csg, csg, nil); err != nil {
				return nil, err
			}
			continue
		}
		kv, err := iscsi.ParseText(l.pending)
		l.pending = nil
		if err != nil {
			return nil, failLogin(statusInitiatorError, "%v", err)
		}
		var out iscsi.Text
		if err := l.negotiate(kv, csg, &out); err != nil {
			return nil, err
		}
		if transit, err = l.authGate(csg, transit); err != nil { // no transit before CHAP is done (chap.go)
			return nil, err
		}
		if csg == stageOperational && !l.declared {
			out.Add("MaxRecvDataSegmentLength", strconv.FormatUint(uint64(l.srv.cfg.MaxRecvDataSegmentLength), 10))
			l.declared = true
		}
		if !transit {
			if err := l.respond(false, csg, csg, out); err != nil {
				return nil, err
			}
			continue
		}
		if nsg != stageFullFeature {
			if err := l.respond(true, csg, nsg, out); err != nil {
				return nil, err
			}
			l.stage = nsg
			continue
		}
		return l.finish(out)
	}
}

// begin takes the session identity from the first request.
func (l *loginConn) begin(req *iscsi.PDU) error {
	copy(l.isid[:], req.BHS[8:14])
	l.tsih = uint16(req.BHS[14])<<8 | uint16(req.BHS[15])
	l.cid = uint16(req.BHS[20])<<8 | uint16(req.BHS[21])
	l.itt = req.ITT()
	l.cmdSN = req.CmdSN()
	l.statSN = req.ExpStatSN()
	csg := int(req.Flags()>>2) & 3
	if csg != stageSecurity && csg != stageOperational {
		l.stage = 0
		return failLogin(statusInvalidDuringLogin, "first login request in stage %d", csg)
	}
	l.stage = csg
	if csg == stageOperational {
		l.authDone = true // security stage skipped: AuthMethod None
	}
	return nil
}

func (l *loginConn) negotiate(kv iscsi.Text, csg int, out *iscsi.Text) error {
	if !l.identified {
		l.identified = true
		name, ok := kv.Get("InitiatorName")
		if !ok || name == "" {
			return failLogin(statusMissingParameter, "first login request lacks InitiatorName")
		}
		l.initiator = name
		st, _ := kv.Get("SessionType")
		switch st {
		case "", "Normal":
		case "Discovery":
			l.discovery = true
		default:
			return failLogin(statusSessionTypeBad, "SessionType %q", st)
		}
		if !l.discovery {
			tn, ok := kv.Get("TargetName")
			if !ok || tn == "" {
				return failLogin(statusMissingParameter, "normal session login lacks TargetName")
			}
			if l.tgt = l.srv.target(tn); l.tgt == nil {
				return failLogin(statusNotFound, "target %q is not served here (targets: %s)", tn, strings.Join(l.srv.Targets(), ", "))
			}
		}
		if l.tsih != 0 && l.discovery {
			return failLogin(statusSessionMissing, "discovery login names TSIH %d", l.tsih)
		}
		if err := l.checkAccess(csg); err != nil { // ACL, CHAP (chap.go)
			return err
		}
		out.Add("TargetPortalGroupTag", strconv.Itoa(int(l.p.tpgt)))
	}
	kv, err := l.authenticate(kv, csg, out) // AuthMethod and CHAP_* when CHAP is required (chap.go)
	if err != nil {
		return err
	}
	// MaxBurstLength first: FirstBurstLength may not exceed it.
	kv = slices.Clone(kv)
	slices.SortStableFunc(kv, func(a, b iscsi.KV) int {
		return cmp.Compare(boolInt(b.Key == "MaxBurstLength"), boolInt(a.Key == "MaxBurstLength"))
	})
	for _, p := range kv {
		if l.negotiated[p.Key] {
			continue // a key negotiates once; repeats are ignored
		}
		switch p.Key {
		case "InitiatorName", "SessionType", "TargetName":
			continue // declarative, checked above
		case "InitiatorAlias":
			l.alias = p.Value
			continue
		case "AuthMethod":
			if csg != stageSecurity {
				out.Add(p.Key, "Irrelevant")
				break
			}
			if !hasValue(p.Value, "None") {
				return failLogin(statusAuthFailure, "AuthMethod %q: this target offers only None", p.Value)
			}
			out.Add(p.Key, "None")
			l.authDone = true
		case "HeaderDigest", "DataDigest":
			v, ok := pickDigest(p.Value)
			if !ok {
				out.Add(p.Key, "Reject")
				break
			}
			out.Add(p.Key, v)
			if p.Key == "HeaderDigest" {
				l.par.digests.Header = v == "CRC32C"
			} else {
				l.par.digests.Data = v == "CRC32C"
			}
		case "MaxRecvDataSegmentLength":
			n, ok := parseNum(p.Value, 512, 1<<24-1)
			if !ok {
				return failLogin(statusInitiatorError, "MaxRecvDataSegmentLength %q is outside 512..16777215", p.Value)
			}
			l.par.peerRecv = n // declarative: no answer
			l.negotiated[p.Key] = true
			continue
		case "ImmediateData", "InitialR2T", "DataPDUInOrder", "DataSequenceInOrder",
			"FirstBurstLength", "MaxBurstLength", "MaxOutstandingR2T", "MaxConnections":
			if l.discovery {
				out.Add(p.Key, "Irrelevant")
				break
			}
			l.sessionKey(p, out)
		case "ErrorRecoveryLevel":
			if _, ok := parseNum(p.Value, 0, 2); !ok {
				out.Add(p.Key, "Reject")
				break
			}
			out.Add(p.Key, "0") // Min(initiator, 0)
		case "DefaultTime2Wait":
			n, ok := parseNum(p.Value, 0, 3600)
			if !ok {
				out.Add(p.Key, "Reject")
				break
			}
			out.Add(p.Key, strconv.FormatUint(uint64(n), 10)) // Max(initiator, 0)
		case "DefaultTime2Retain":
			if _, ok := parseNum(p.Value, 0, 3600); !ok {
				out.Add(p.Key, "Reject")
				break
			}
			out.Add(p.Key, "0") // Min(initiator, 0): no task reassignment at ERL 0
		case "IFMarker", "OFMarker":
			out.Add(p.Key, "No") // RFC 3720 keys; older initiators still send them
		case "OFMarkInt", "IFMarkInt":
			out.Add(p.Key, "Irrelevant")
		default:
			out.Add(p.Key, "NotUnderstood")
		}
		l.negotiated[p.Key] = true
	}
	return nil
}

// sessionKey answers the keys of a normal session's operational stage.
func (l *loginConn) sessionKey(p iscsi.KV, out *iscsi.Text) {
	cfg := &l.srv.cfg
	boolean := func(and, ours bool, set *bool) {
		v, ok := parseBool(p.Value)
		if !ok {
			out.Add(p.Key, "Reject")
			return
		}
		if and {
			v = v && ours
		} else {
			v = v || ours
		}
		*set = v
		out.Add(p.Key, yesNo(v))
	}
	minimum := func(lo, hi, ours uint32, set *uint32) {
		v, ok := parseNum(p.Value, lo, hi)
		if !ok {
			out.Add(p.Key, "Reject")
			return
		}
		v = min(v, ours)
		*set = v
		out.Add(p.Key, strconv.FormatUint(uint64(v), 10))
	}
	var ignored bool
	switch p.Key {
	case "ImmediateData":
		boolean(true, true, &l.par.immediateData)
	case "InitialR2T":
		boolean(false, false, &l.par.initialR2T)
	case "DataPDUInOrder", "DataSequenceInOrder":
		boolean(false, true, &ignored) // Or(initiator, Yes) = Yes
	case "FirstBurstLength":
		minimum(512, 1<<24-1, min(cfg.FirstBurstLength, l.par.maxBurst), &l.par.firstBurst)
	case "MaxBurstLength":
		minimum(512, 1<<24-1, cfg.MaxBurstLength, &l.par.maxBurst)
	case "MaxOutstandingR2T":
		minimum(1, 65535, cfg.MaxOutstandingR2T, &l.par.maxOutR2T)
	case "MaxConnections":
		var n uint32
		minimum(1, 65535, 1, &n)
	}
}

// finish completes the login into full feature phase.
func (l *loginConn) finish(out iscsi.Text) (*session, error) {
	if !l.authDone {
		// Security stage left without AuthMethod: None is the only method
		// here, so that is what was used.
		l.authDone = true
	}
	if l.par.firstBurst > l.par.maxBurst {
		l.par.firstBurst = l.par.maxBurst
	}
	if l.declared {
		l.par.ourRecv = l.srv.cfg.MaxRecvDataSegmentLength
	}
	sess := newSession(l.srv, l.c, bufio.NewReaderSize(l.c, rxBufferSize), l.p, l.par)
	sess.initiator, sess.alias, sess.isid, sess.discovery, sess.tgt = l.initiator, l.alias, l.isid, l.discovery, l.tgt
	sess.cid = l.cid
	sess.expCmdSN = l.cmdSN
	sess.maxSent = l.cmdSN + uint32(l.srv.cfg.QueueDepth) - 1 // what the login response advertises
	if st, err := l.srv.register(sess, l.tsih); err != nil {
		return nil, failLogin(st, "%v", err)
	}
	if !l.discovery {
		sess.nexus = &api.ITNexus{Tag: fmt.Sprintf("%s,i,0x%x,%s,t,0x%04x", sess.initiator, sess.isid, l.tgt.Name, sess.tpgt)}
		// The same I_T nexus (initiator port + target port) keeps its ID
		// across sessions, as SCSI reservations expect.
		sum := sha256.Sum256([]byte(strings.ToLower(sess.nexus.Tag)))
		copy(sess.nexus.ID[:], sum[:16])
		if err := l.tgt.SCSI.AddNexus(sess.nexus); err != nil {
			l.srv.unregister(sess)
			return nil, failLogin(statusTargetError, "register I_T nexus %s: %v", sess.nexus.Tag, err)
		}
	}
	l.tsih = sess.tsih
	if err := l.respond(true, l.stage, stageFullFeature, out); err != nil {
		sess.teardown()
		return nil, err
	}
	sess.statSN = l.statSN
	kind := "normal"
	if l.discovery {
		kind = "discovery"
	}
	l.srv.logf("portal %s: %s session TSIH %d from %s (%s ISID %x) at %s", l.p.ln.Addr(), kind, sess.tsih, l.c.RemoteAddr(), l.initiator, l.isid, sess.targetName())
	return sess, nil
}

// respond sends a successful Login Response.
func (l *loginConn) respond(transit bool, csg, nsg int, data iscsi.Text) error {
	p := l.response(statusSuccess)
	f := byte(csg)<<2 | byte(nsg)
	if transit {
		f |= iscsi.FlagTransit
	} else {
		f = byte(csg)<<2 | byte(csg)
	}
	p.SetFlags(f)
	p.Data = data.Encode()
	l.statSN++
	return iscsi.WritePDU(l.c, p, iscsi.Digests{})
}

func (l *loginConn) respondStatus(status uint16) {
	p := l.response(status)
	iscsi.WritePDU(l.c, p, iscsi.Digests{})
}

func (l *loginConn) response(status uint16) *iscsi.PDU {
	p := iscsi.New(iscsi.OpLoginResp)
	copy(p.BHS[8:14], l.isid[:])
	p.BHS[14], p.BHS[15] = byte(l.tsih>>8), byte(l.tsih)
	p.SetITT(l.req.ITT())
	p.SetStatSN(l.statSN)
	p.SetExpCmdSN(l.cmdSN)
	p.SetMaxCmdSN(l.cmdSN + uint32(l.srv.cfg.QueueDepth) - 1)
	p.BHS[36], p.BHS[37] = byte(status>>8), byte(status)
	return p
}

func hasValue(list, v string) bool {
	for _, x := range strings.Split(list, ",") {
		if x == v {
			return true
		}
	}
	return false
}

// pickDigest chooses the first digest of the initiator's list this target
// supports.
func pickDigest(list string) (string, bool) {
	for _, x := range strings.Split(list, ",") {
		if x == "None" || x == "CRC32C" {
			return x, true
		}
	}
	return "", false
}

func parseNum(v string, lo, hi uint32) (uint32, bool) {
	n, err := strconv.ParseUint(v, 10, 32)
	if err != nil || uint32(n) < lo || uint32(n) > hi {
		return 0, false
	}
	return uint32(n), true
}

func parseBool(v string) (bool, bool) {
	switch v {
	case "Yes":
		return true, true
	case "No":
		return false, true
	}
	return false, false
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

func yesNo(b bool) string {
	if b {
		return "Yes"
	}
	return "No"
}
