package initiator

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"slices"
	"time"

	"github.com/certkit/certkit/iscsi"
)

// Login stages, the CSG/NSG values of RFC 7143 §11.12.1.
const (
	stageSecurity    = 0
	stageOperational = 1
	stageFullFeature = 3
)

// Bounds on a login exchange, so a target cannot keep one going forever.
const (
	maxLoginExchanges = 16
	maxLoginText      = 64 << 10
)

// LoginError is a Login Response whose status class is not success.
type LoginError struct {
	Target  string // empty for a discovery session
	Address string
	Class   byte
	Detail  byte
	// Redirect is the TargetAddress a redirect (class 1) points to.
	Redirect string
}

func (e *LoginError) Error() string {
	desc := loginStatusText(e.Class, e.Detail)
	if e.Redirect != "" {
		desc += " to " + e.Redirect
	}
	return fmt.Sprintf("%s failed: %s (status 0x%02x%02x)", loginWhat(e.Target, e.Address), desc, e.Class, e.Detail)
}

// Status reports the status class and detail as one number, e.g. 0x0203.
func (e *LoginError) Status() uint16 { return uint16(e.Class)<<8 | uint16(e.Detail) }

var loginStatus = map[uint16]string{
	0x0101: "target moved temporarily",
	0x0102: "target moved permanently",
	0x0200: "initiator error",
	0x0201: "authentication failed",
	0x0202: "initiator not authorized to access the target",
	0x0203: "target not found",
	0x0204: "target removed",
	0x0205: "unsupported iSCSI version",
	0x0206: "too many connections",
	0x0207: "missing parameter",
	0x0208: "cannot include the connection in the session",
	0x0209: "session type not supported",
	0x020a: "session does not exist",
	0x020b: "invalid request during login",
	0x0300: "target error",
	0x0301: "service unavailable",
	0x0302: "target out of resources",
}

func loginStatusText(class, detail byte) string {
	if s, ok := loginStatus[uint16(class)<<8|uint16(detail)]; ok {
		return s
	}
	switch class {
	case 1:
		return "redirected"
	case 2:
		return "initiator error"
	case 3:
		return "target error"
	}
	return "unknown status class"
}

func loginWhat(target, addr string) string {
	if target == "" {
		return "discovery login at " + addr
	}
	return "login to " + target + " at " + addr
}

// Login opens a normal session to o.TargetName at o.Address. The whole
// login, TCP connect included, is bounded by o.LoginTimeout and ctx.
func Login(ctx context.Context, o Options) (*Session, error) {
	if o.TargetName == "" {
		return nil, fmt.Errorf("login at %s: Options.TargetName is empty; name the target IQN", o.Address)
	}
	return login(ctx, o, false)
}

func login(ctx context.Context, o Options, discovery bool) (*Session, error) {
	o = o.withDefaults()
	if discovery {
		o.TargetName = ""
	}
	what := loginWhat(o.TargetName, o.Address)
	if o.InitiatorName == "" {
		return nil, fmt.Errorf("%s: Options.InitiatorName is empty; set the initiator IQN", what)
	}
	if o.MaxRecvDataSegmentLength < 512 || o.MaxRecvDataSegmentLength > 1<<24-1 {
		return nil, fmt.Errorf("%s: MaxRecvDataSegmentLength %d is outside 512..16777215", what, o.MaxRecvDataSegmentLength)
	}
	if err := o.CHAP.check(); err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	lctx, cancel := context.WithTimeout(ctx, o.LoginTimeout)
	defer cancel()
	timedOut := func(err error) error {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if lctx.Err() != nil {
			return fmt.Errorf("not finished within LoginTimeout %s: %w", o.LoginTimeout, context.DeadlineExceeded)
		}
		return err
	}
	conn, err := (&net.Dialer{}).DialContext(lctx, "tcp", o.Address)
	if err != nil {
		return nil, fmt.Errorf("%s failed: %w", what, timedOut(err))
	}
	// A deadline in the past unblocks any read or write in progress.
	stop := context.AfterFunc(lctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	l := &loginConn{conn: conn, br: bufio.NewReaderSize(conn, 64<<10), o: o, discovery: discovery, cmdSN: 1}
	params, err := l.run()
	if !stop() && err == nil {
		err = lctx.Err()
	}
	if err != nil {
		conn.Close()
		var le *LoginError
		if errors.As(err, &le) {
			return nil, le
		}
		return nil, fmt.Errorf("%s failed: %w", what, timedOut(err))
	}
	if err := conn.SetDeadline(time.Time{}); err != nil {
		conn.Close()
		return nil, fmt.Errorf("%s failed: %w", what, err)
	}
	o.Logf("iscsi: %s: session up (ISID %x, TSIH %d, TPGT %d)", what, params.ISID, params.TSIH, params.TargetPortalGroupTag)
	return newSession(conn, l.br, o, params, l.cmdSN, l.expCmdSN, l.maxCmdSN, l.expStatSN), nil
}

// loginConn is one connection during the login phase.
type loginConn struct {
	conn      net.Conn
	br        *bufio.Reader
	o         Options
	discovery bool

	auth               authState // chap.go
	tsih               uint16
	cmdSN              uint32
	expStatSN          uint32
	expCmdSN, maxCmdSN uint32
}

func (l *loginConn) run() (Params, error) {
	keys := iscsi.Text{{Key: "InitiatorName", Value: l.o.InitiatorName}}
	if l.discovery {
		keys.Add("SessionType", "Discovery")
	} else {
		keys.Add("SessionType", "Normal")
		keys.Add("TargetName", l.o.TargetName)
	}
	keys.Add("AuthMethod", l.o.CHAP.authMethods())
	offer := offers(l.discovery, l.o.MaxRecvDataSegmentLength)
	neg := newNegotiation(offer)
	stage := byte(stageSecurity)
	for i := 0; ; i++ {
		if i == maxLoginExchanges {
			return Params{}, fmt.Errorf("target did not complete login in %d exchanges", maxLoginExchanges)
		}
		next := byte(stageOperational)
		if stage == stageOperational {
			next = stageFullFeature
		}
		resp, got, err := l.exchange(stage, next, keys)
		if err != nil {
			return Params{}, err
		}
		if stage == stageSecurity {
			if resp, got, err = l.authenticate(resp, got); err != nil {
				return Params{}, err
			}
		}
		answers, err := neg.apply(got)
		if err != nil {
			return Params{}, err
		}
		if resp.Flags()&iscsi.FlagTransit == 0 {
			keys = answers // the target wants another round in this stage
			continue
		}
		if nsg := resp.Flags() & 3; nsg != next {
			return Params{}, fmt.Errorf("target moved to login stage %d; requested %d", nsg, next)
		}
		stage = next
		if stage == stageFullFeature {
			break
		}
		keys = slices.Concat(offer, answers)
	}
	if l.tsih == 0 {
		return Params{}, errors.New("target completed login without assigning a TSIH")
	}
	p, err := neg.params()
	if err != nil {
		return Params{}, err
	}
	p.ISID = l.o.ISID
	p.TSIH = l.tsih
	p.MaxRecvDataSegmentLength = l.o.MaxRecvDataSegmentLength
	return p, nil
}

func (l *loginConn) send(csg, nsg byte, transit bool, data []byte) error {
	p := iscsi.New(iscsi.OpLoginReq)
	p.SetImmediate(true) // RFC 7143 §11.12: the I bit is always 1 in a Login Request
	f := csg << 2
	if transit {
		f |= iscsi.FlagTransit | nsg
	}
	p.SetFlags(f)
	copy(p.BHS[8:14], l.o.ISID[:])
	binary.BigEndian.PutUint16(p.BHS[14:16], l.tsih)
	p.SetITT(0)
	p.SetCmdSN(l.cmdSN)
	p.SetExpStatSN(l.expStatSN)
	p.Data = data
	if err := iscsi.WritePDU(l.conn, p, iscsi.Digests{}); err != nil {
		return fmt.Errorf("sending Login Request: %w", err)
	}
	return nil
}

// exchange sends one Login Request and reads the response, following the
// target's Continue bit until its text is complete.
func (l *loginConn) exchange(csg, nsg byte, keys iscsi.Text) (*iscsi.PDU, iscsi.Text, error) {
	return l.exchangeWith(csg, nsg, true, keys)
}

// exchangeWith is exchange with the T bit as given: clear while a CHAP
// exchange still needs more rounds in the security stage.
func (l *loginConn) exchangeWith(csg, nsg byte, transit bool, keys iscsi.Text) (*iscsi.PDU, iscsi.Text, error) {
	if err := l.send(csg, nsg, transit, keys.Encode()); err != nil {
		return nil, nil, err
	}
	var data []byte
	for {
		p, err := iscsi.ReadPDU(l.br, iscsi.Framing{MaxDataSegment: iscsi.DefaultMaxRecvDataSegmentLength})
		if err != nil {
			return nil, nil, fmt.Errorf("reading Login Response: %w", err)
		}
		if err := l.check(p, csg); err != nil {
			return nil, nil, err
		}
		data = append(data, p.Data...)
		if len(data) > maxLoginText {
			return nil, nil, fmt.Errorf("target sent more than %d bytes of login text", maxLoginText)
		}
		if p.Flags()&iscsi.FlagContinue == 0 {
			got, err := iscsi.ParseText(data)
			if err != nil {
				return nil, nil, fmt.Errorf("Login Response: %w", err)
			}
			return p, got, nil
		}
		if err := l.send(csg, nsg, false, nil); err != nil {
			return nil, nil, err
		}
	}
}

// check validates a Login Response and takes its sequence numbers.
func (l *loginConn) check(p *iscsi.PDU, csg byte) error {
	if p.Opcode() != iscsi.OpLoginResp {
		return fmt.Errorf("protocol error: expected Login Response, got %s", p.Opcode())
	}
	if class, detail := p.BHS[36], p.BHS[37]; class != 0 {
		le := &LoginError{Target: l.o.TargetName, Address: l.o.Address, Class: class, Detail: detail}
		if t, err := iscsi.ParseText(p.Data); err == nil {
			le.Redirect, _ = t.Get("TargetAddress")
		}
		return le
	}
	if v := p.BHS[3]; v != 0 {
		return fmt.Errorf("protocol error: target chose iSCSI version %d; only 0 (RFC 7143) is supported", v)
	}
	if p.ITT() != 0 {
		return fmt.Errorf("protocol error: Login Response for ITT 0x%08x; the Login Request had 0", p.ITT())
	}
	f := p.Flags()
	if got := (f >> 2) & 3; got != csg {
		return fmt.Errorf("protocol error: Login Response for stage %d; the request was in stage %d", got, csg)
	}
	if f&iscsi.FlagTransit != 0 && f&iscsi.FlagContinue != 0 {
		return errors.New("protocol error: Login Response has both Transit and Continue set")
	}
	l.tsih = binary.BigEndian.Uint16(p.BHS[14:16])
	l.expStatSN = p.StatSN() + 1
	l.expCmdSN, l.maxCmdSN = p.ExpCmdSN(), p.MaxCmdSN()
	return nil
}
