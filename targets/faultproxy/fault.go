package faultproxy

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Kinds that take parameters or read the iSCSI stream (see Fault).
const (
	// Latency holds every chunk forwarded in the fault's direction for
	// Params.Delay. Order and content are kept; throughput is not capped.
	Latency Kind = "latency"
	// DropNOPIn swallows every NOP-In from the array (answers to the host's
	// NOP-Outs, target pings, window updates) while SCSI traffic flows: the
	// host can find the path dead only by NOP-Out timeout.
	DropNOPIn Kind = "drop-nopin"
	// FailOpcode lets SCSI Commands with Params.Opcode (and Params.LUN, when
	// set) reach the array, drops the array's Data-In for them and answers
	// in place of its final status with CHECK CONDITION and Params.Sense.
	// A command counts as sent under the fault when the proxy reads it from
	// the host, which for an array joined in memory is when the array reads
	// it: a command still in the host's socket buffer at the instant of
	// injection (microseconds behind a busy array) is failed too.
	FailOpcode Kind = "fail-opcode"
	// DelayOpcode holds the array's answers to SCSI Commands with
	// Params.Opcode (and Params.LUN) for Params.Delay; other traffic passes
	// them, so the host sees StatSN out of order.
	DelayOpcode Kind = "delay-opcode"
)

// MaxDelay bounds Params.Delay.
const MaxDelay = time.Hour

// Direction is the way traffic flows through the proxy.
type Direction string

// Directions. The zero value means both for kinds that have a direction.
const (
	Both Direction = "both"
	In   Direction = "in"  // host to array
	Out  Direction = "out" // array to host
)

func (d Direction) dirs() []dir {
	switch d {
	case In:
		return []dir{toUpstream}
	case Out:
		return []dir{toClient}
	}
	return []dir{toUpstream, toClient}
}

// Sense is the sense key and additional sense code of a CHECK CONDITION.
type Sense struct {
	Key, ASC, ASCQ byte
}

// String renders the sense as ESXi logs it: "05/25/00".
func (s Sense) String() string { return fmt.Sprintf("%02x/%02x/%02x", s.Key, s.ASC, s.ASCQ) }

// ParseSense reads "KEY/ASC/ASCQ" in hex, e.g. "05/25/00" or "0x2/0x04/0x03".
func ParseSense(s string) (Sense, error) {
	parts := strings.Split(s, "/")
	if len(parts) != 3 {
		return Sense{}, fmt.Errorf("faultproxy: sense %q: want KEY/ASC/ASCQ in hex, e.g. 05/25/00", s)
	}
	var b [3]byte
	for i, p := range parts {
		v, err := strconv.ParseUint(strings.TrimPrefix(strings.ToLower(strings.TrimSpace(p)), "0x"), 16, 8)
		if err != nil {
			return Sense{}, fmt.Errorf("faultproxy: sense %q: %q is not a hex byte; want KEY/ASC/ASCQ, e.g. 05/25/00", s, p)
		}
		b[i] = byte(v)
	}
	return Sense{Key: b[0], ASC: b[1], ASCQ: b[2]}, nil
}

// fixed is the 18-byte fixed-format sense data (SPC-4 §4.5.3).
func (s Sense) fixed() []byte {
	b := make([]byte, 18)
	b[0] = 0x70 // current error, fixed format
	b[2] = s.Key & 0x0f
	b[7] = 10 // additional sense length
	b[12], b[13] = s.ASC, s.ASCQ
	return b
}

// Params are a fault's parameters; which ones a kind takes is in Fault.
type Params struct {
	Delay  time.Duration
	Opcode *byte   // SCSI CDB opcode, e.g. 0x28 for READ(10)
	LUN    *uint64 // LUN number; nil matches every LUN
	Sense  Sense
}

// Fault is one path fault, toxiproxy-style: a kind, the direction it acts
// in and its parameters.
//
//	kind           direction      params
//	blackhole      both/in/out    -
//	blackhole-in   in             -
//	blackhole-out  out            -
//	reset          -              -
//	latency        both/in/out    Delay
//	drop-nopin     -              -
//	fail-opcode    -              Opcode, Sense; LUN optional
//	delay-opcode   -              Opcode, Delay; LUN optional
//
// "-" means the field must be left empty. An empty direction means both.
type Fault struct {
	Kind      Kind
	Direction Direction
	Params    Params
}

// Opcode and LUN return pointers for Params literals:
// Params{Opcode: faultproxy.Opcode(0x28), LUN: faultproxy.LUN(7)}.
func Opcode(op byte) *byte { return &op }
func LUN(n uint64) *uint64 { return &n }

func (f Fault) String() string {
	var b strings.Builder
	b.WriteString(string(f.Kind))
	if f.Direction != "" && f.Direction != Both && f.Kind != BlackholeIn && f.Kind != BlackholeOut {
		b.WriteString(" direction=" + string(f.Direction))
	}
	p := f.Params
	if p.Opcode != nil {
		fmt.Fprintf(&b, " opcode=0x%02x", *p.Opcode)
	}
	if p.LUN != nil {
		fmt.Fprintf(&b, " lun=%d", *p.LUN)
	}
	if p.Delay != 0 {
		b.WriteString(" delay=" + p.Delay.String())
	}
	if p.Sense != (Sense{}) {
		b.WriteString(" sense=" + p.Sense.String())
	}
	return b.String()
}

// iscsiAware reports whether the kind reads the PDU stream.
func (k Kind) iscsiAware() bool { return k == DropNOPIn || k == FailOpcode || k == DelayOpcode }

// Validate checks that the kind is known and has exactly the parameters it
// takes; the error names the field and gives an example.
func (f Fault) Validate() error {
	_, err := f.normalize()
	return err
}

// faultParams says what each kind takes.
var faultParams = map[Kind]struct{ dir, delay, opcode, sense bool }{
	Blackhole:    {dir: true},
	BlackholeIn:  {dir: true},
	BlackholeOut: {dir: true},
	Reset:        {},
	Latency:      {dir: true, delay: true},
	DropNOPIn:    {},
	FailOpcode:   {opcode: true, sense: true},
	DelayOpcode:  {opcode: true, delay: true},
}

// normalize validates f and returns it in canonical form: blackhole with a
// single direction becomes blackhole-in/-out, the direction of a
// directional kind is never empty.
func (f Fault) normalize() (Fault, error) {
	bad := func(format string, args ...any) (Fault, error) {
		return Fault{}, &invalidError{string(f.Kind) + " " + fmt.Sprintf(format, args...)}
	}
	t, ok := faultParams[f.Kind]
	if !ok {
		return Fault{}, unknownKindError{f.Kind}
	}
	switch f.Direction {
	case "", Both, In, Out:
	default:
		return bad("has an unknown direction %q (want in, out or both)", f.Direction)
	}
	p := f.Params
	if p.Delay < 0 || p.Delay > MaxDelay {
		return bad("delay %v is out of range; want a positive duration up to %v", p.Delay, MaxDelay)
	}
	switch {
	case !t.dir && f.Direction != "":
		return bad("takes no direction (it acts on %s); leave direction empty", actsOn(f.Kind))
	case !t.delay && p.Delay != 0:
		return bad("takes no delay; for added latency use kind latency")
	case !t.opcode && p.Opcode != nil:
		return bad("takes no opcode; to act on one SCSI opcode use fail-opcode or delay-opcode")
	case !t.opcode && p.LUN != nil:
		return bad("takes no LUN; to act on one LUN use fail-opcode or delay-opcode")
	case !t.sense && p.Sense != (Sense{}):
		return bad("takes no sense data; to fail commands with sense use fail-opcode")
	case t.delay && p.Delay == 0:
		return bad("needs a delay, e.g. 200ms")
	case t.opcode && p.Opcode == nil:
		return bad("needs an opcode, e.g. 0x28 (READ(10))")
	case p.LUN != nil && *p.LUN > 16383:
		return bad("LUN %d is out of range; want 0..16383", *p.LUN)
	case t.sense && p.Sense.Key == 0:
		return bad("needs sense data with a nonzero sense key, e.g. 05/25/00 (LOGICAL UNIT NOT SUPPORTED, PDL) or 02/04/03")
	case t.sense && p.Sense.Key > 0x0f:
		return bad("sense key 0x%02x is out of range; want 0x1..0xf", p.Sense.Key)
	}
	switch f.Kind {
	case BlackholeIn:
		if f.Direction == Out || f.Direction == Both {
			return bad("with direction %s contradicts itself; use blackhole with direction %s", f.Direction, f.Direction)
		}
		f.Direction = In
	case BlackholeOut:
		if f.Direction == In || f.Direction == Both {
			return bad("with direction %s contradicts itself; use blackhole with direction %s", f.Direction, f.Direction)
		}
		f.Direction = Out
	case Blackhole:
		switch f.Direction {
		case In:
			f.Kind = BlackholeIn
		case Out:
			f.Kind = BlackholeOut
		default:
			f.Direction = Both
		}
	case Latency:
		if f.Direction == "" {
			f.Direction = Both
		}
	}
	return f, nil
}

// unknownKindError is an ErrUnknownKind and an ErrInvalidFault.
type unknownKindError struct{ kind Kind }

func (e unknownKindError) Error() string {
	return fmt.Sprintf("unknown fault kind %q (want one of %v)", e.kind, Kinds())
}
func (e unknownKindError) Is(target error) bool {
	return target == ErrUnknownKind || target == ErrInvalidFault
}

// invalidError is an ErrInvalidFault.
type invalidError struct{ msg string }

func (e *invalidError) Error() string        { return e.msg }
func (e *invalidError) Is(target error) bool { return target == ErrInvalidFault }

func actsOn(k Kind) string {
	switch k {
	case Reset:
		return "whole connections"
	case DropNOPIn:
		return "NOP-Ins from the array"
	}
	return "the array's answers to matching commands"
}

// matches reports whether a SCSI Command with this CDB opcode and LUN field
// is one the fault acts on.
func (p *Params) matches(opcode byte, lunField uint64) bool {
	if p.Opcode == nil || *p.Opcode != opcode {
		return false
	}
	if p.LUN == nil {
		return true
	}
	n, ok := decodeLUN(lunField)
	return ok && n == *p.LUN
}

// decodeLUN reads the first level of a SAM LUN field: peripheral device
// addressing (LUN < 256) or flat space addressing (LUN < 16384).
func decodeLUN(field uint64) (uint64, bool) {
	b0, b1 := byte(field>>56), byte(field>>48)
	if field<<16 != 0 {
		return 0, false // a second level: not one of our LUNs
	}
	switch b0 >> 6 {
	case 0:
		if b0 != 0 {
			return 0, false // bus number
		}
		return uint64(b1), true
	case 1:
		return uint64(b0&0x3f)<<8 | uint64(b1), true
	}
	return 0, false
}
