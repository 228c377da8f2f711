// Package initiator is an iSCSI software initiator (RFC 7143): SendTargets
// discovery, login (AuthMethod None or CHAP, one-way or mutual) and
// operational negotiation, and a full-feature-phase session that carries
// SCSI commands from many goroutines over one connection. The emulated ESXi
// host builds every path on it.
//
// It is deliberately strict where a certification harness needs it to be:
// the CmdSN window is honoured exactly (a target that closes the window
// stalls new commands), negotiation answers outside what RFC 7143 §13
// allows fail the login, and any malformed PDU from the target ends the
// session with an error that names what was wrong. It never panics on what
// a target sends.
//
// Supported: one connection per session, ErrorRecoveryLevel=0, no digests,
// CHAP with MD5 (see CHAP). Commands are not aborted when their context
// ends: the initiator forgets the task and drops whatever the target still
// sends for it.
package initiator

import (
	"errors"
	"time"
)

// Portal is one address a target can be reached at, as SendTargets reports it.
type Portal struct {
	Address string // host:port, IPv6 hosts in brackets
	Tag     int    // target portal group tag (TPGT)
}

// Target is one target from SendTargets discovery.
type Target struct {
	Name    string
	Portals []Portal
}

// Options configure a normal session.
type Options struct {
	InitiatorName string
	TargetName    string
	Address       string // portal host:port
	// ISID is the initiator part of the session ID; zero means
	// 00023d000001, the ISID ESXi gives its first session.
	ISID [6]byte
	// LoginTimeout bounds the whole login, TCP connect included; zero means
	// 5 s, ESXi's default.
	LoginTimeout time.Duration
	// MaxRecvDataSegmentLength is the largest data segment this side
	// accepts; zero means 131072, ESXi's default.
	MaxRecvDataSegmentLength uint32
	// CHAP, when set, authenticates the login with CHAP (see CHAP); nil
	// offers only AuthMethod=None.
	CHAP *CHAP
	// Logf receives notable session events; nil discards them.
	Logf func(format string, args ...any)
}

// Defaults applied to zero Options fields.
const (
	DefaultLoginTimeout             = 5 * time.Second
	DefaultMaxRecvDataSegmentLength = 131072
	// DefaultPort is the iSCSI well-known port, used when an address has none.
	DefaultPort = "3260"
)

// DefaultISID is the ISID ESXi gives its first session (OUI format, VMware's OUI).
var DefaultISID = [6]byte{0x00, 0x02, 0x3d, 0x00, 0x00, 0x01}

// Params are the operational parameters a login settled on (RFC 7143 §13),
// what `esxcli iscsi session list` shows.
type Params struct {
	ISID                 [6]byte
	TSIH                 uint16
	TargetPortalGroupTag int
	TargetAlias          string

	HeaderDigest, DataDigest bool // always false: only None is offered
	MaxConnections           int
	InitialR2T               bool
	ImmediateData            bool
	// MaxRecvDataSegmentLength is what this side declared: the largest data
	// segment the target may send.
	MaxRecvDataSegmentLength uint32
	// TargetMaxRecvDataSegmentLength is what the target declared: the
	// largest data segment this side sends.
	TargetMaxRecvDataSegmentLength uint32
	MaxBurstLength                 uint32
	FirstBurstLength               uint32
	DefaultTime2Wait               int
	DefaultTime2Retain             int
	MaxOutstandingR2T              int
	DataPDUInOrder                 bool
	DataSequenceInOrder            bool
	ErrorRecoveryLevel             int
}

// Reasons a session ended, wrapped in Session.Err and in the errors of the
// commands it had pending.
var (
	ErrClosed    = errors.New("closed by the initiator")
	ErrLoggedOut = errors.New("logged out")
)

func (o Options) withDefaults() Options {
	if o.ISID == ([6]byte{}) {
		o.ISID = DefaultISID
	}
	if o.LoginTimeout <= 0 {
		o.LoginTimeout = DefaultLoginTimeout
	}
	if o.MaxRecvDataSegmentLength == 0 {
		o.MaxRecvDataSegmentLength = DefaultMaxRecvDataSegmentLength
	}
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	return o
}
