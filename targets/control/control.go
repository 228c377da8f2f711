// Package control is the HTTP+JSON control API of a certkit array: what the
// harness uses to see an array's targets and portals and to inject and revert
// path faults, whether the array runs in-process, as a child process or on a
// lab machine.
//
// Serve listens on loopback unless told otherwise (AllowRemote), over plain
// HTTP or, with ServeTLS, over TLS 1.3; with client CAs in its TLS config
// every client must present a certificate they signed (mutual TLS), and
// the token is checked too when one is configured. docs/ARRAY-CONTROL.md
// says which mode to use where.
//
// Routes (all need "Authorization: Bearer <token>", unless the array was
// served with mutual TLS and no token):
//
//	GET    /v1/info          Info
//	GET    /v1/faults        active faults, []FaultRecord
//	POST   /v1/faults        {"portal": "A0", "kind": "blackhole"} -> 201 FaultRecord
//	                         {"portal": "A0", "kind": "fail-opcode", "opcode": "0x28", "sense": "05/25/00"}
//	                         {"controller": "A", "kind": "crash"}
//	DELETE /v1/faults/{id}   revert one fault -> FaultRecord
//	DELETE /v1/faults        revert every active fault -> []FaultRecord
//	GET    /v1/alua          []ALUAGroup
//	PUT    /v1/alua/{id}     {"state": "standby"} -> ALUAGroup
//	POST   /v1/luns          {"id": 3, "size": "64MiB"} -> 201 LUN
//	                         {"id": 4, "size": "1GiB", "backing": "file", "path": "/var/tmp/a4.img"}
//	DELETE /v1/luns/{id}     remove a LUN -> 204
//	PATCH  /v1/luns/{id}     {"size": "128MiB"} -> LUN
//	GET    /v1/luns/{id}/sha256?offset=0&length=4096
//	                         {"sha256": "<hex>"} of the LUN's bytes as its
//	                         backing store holds them (length 0 or absent:
//	                         to the end)
//	.../v1/targets/{iqn}/luns...
//	                         the four LUN routes above, on one target of an
//	                         array that serves several (/v1/luns then
//	                         answers 400 naming them)
//
// Fault parameters, controller faults, ALUA and LUN management are served
// when the Array implements FaultInjector, ALUAArray and LUNManager;
// otherwise those requests get 400 (parameters) or 404 (ALUA, LUNs) naming
// what the array lacks.
//
// Errors are {"error": "<what failed and what to do>"} with 400 (bad request,
// fault kind or size), 401 (missing or wrong token), 404 (unknown portal,
// fault, LUN or route), 405, 409 (a fault is already active on the portal,
// a LUN id is taken) or 500.
package control

import (
	"errors"
	"fmt"
	"net/http"
	"time"
)

// LUN is one logical unit of a target.
type LUN struct {
	ID        int    `json:"id"`
	NAA       string `json:"naa"`
	SizeBytes int64  `json:"size_bytes"`
}

// Target is one iSCSI target of the array.
type Target struct {
	IQN  string `json:"iqn"`
	LUNs []LUN  `json:"luns"`
}

// Portal is one network portal: a controller port behind its fault proxy.
type Portal struct {
	ID         string `json:"id"` // controller name + index: "A0", "B0"
	Controller string `json:"controller"`
	TPGT       int    `json:"tpgt"`
	Address    string `json:"address"` // advertised address (the proxy's)
	Fault      string `json:"fault"`   // active fault kind, "" when none
}

// Info describes an array.
type Info struct {
	Name string `json:"name"`
	// Product and Version identify the array's software for the record.
	Product string   `json:"product,omitempty"`
	Version string   `json:"version,omitempty"`
	Targets []Target `json:"targets"`
	Portals []Portal `json:"portals"`
}

// FaultRecord is one injected fault; RevertedAt is nil while it is active.
type FaultRecord struct {
	ID         string     `json:"id"`
	Portal     string     `json:"portal,omitempty"`
	Controller string     `json:"controller,omitempty"`
	Kind       string     `json:"kind"`
	Spec       *FaultSpec `json:"spec,omitempty"` // parameters, when the fault has any
	InjectedAt time.Time  `json:"injected_at"`
	RevertedAt *time.Time `json:"reverted_at,omitempty"`
}

// FaultSpec is a fault and its parameters as they travel on the wire: plain
// strings, so the harness needs no array package to describe a fault.
type FaultSpec struct {
	Kind string `json:"kind"`
	// Direction limits a path fault to "in" (host to array) or "out"
	// (array to host); empty is both.
	Direction string `json:"direction,omitempty"`
	// Delay is a Go duration ("200ms") for latency and delay-opcode.
	Delay string `json:"delay,omitempty"`
	// Opcode selects the SCSI commands of fail-opcode and delay-opcode ("0x28").
	Opcode string `json:"opcode,omitempty"`
	// LUN limits an opcode fault to one LUN.
	LUN *uint64 `json:"lun,omitempty"`
	// Sense is the KEY/ASC/ASCQ a fail-opcode answers with ("05/25/00").
	Sense string `json:"sense,omitempty"`
	// Duration is how long a controller reboot keeps it down ("30s").
	Duration string `json:"duration,omitempty"`
}

// FaultInjector is an Array that takes fault parameters and controller
// faults (crash, hang, reboot, failover); Inject(portal, kind) stays the
// plain form.
type FaultInjector interface {
	InjectFault(req InjectRequest) (FaultRecord, error)
}

// ALUAGroup is one target port group: a controller and its access state
// (AO, ANO, standby, unavailable, transitioning).
type ALUAGroup struct {
	ID         int    `json:"id"`
	Controller string `json:"controller"`
	State      string `json:"state"`
}

// ALUAArray is an Array whose controllers present asymmetric access.
type ALUAArray interface {
	ALUA() []ALUAGroup
	SetALUA(id int, state string) (ALUAGroup, error)
}

// AddLUNRequest is the body of POST /v1/luns: a new LUN of the array's
// target.
type AddLUNRequest struct {
	ID      int    `json:"id"`
	Size    string `json:"size"`              // "64MiB", "1GiB" or a byte count
	Backing string `json:"backing,omitempty"` // memory (default) or file
	Path    string `json:"path,omitempty"`    // file backing: the image file
}

// TargetLUNManager is an Array that serves several targets, each with its
// own LUNs: LUNsOf returns one target's (an error made with NotFoundf for
// a target it does not serve). The /v1/targets/{iqn}/luns routes use it;
// /v1/luns is the array's LUNManager, which an array of several targets
// answers with an error naming them.
type TargetLUNManager interface {
	LUNsOf(target string) (LUNManager, error)
}

// LUNManager is an Array whose LUNs can be added, removed and resized while
// hosts are logged in, and whose backing store can be checked: Checksum is
// the SHA-256 (hex) of length bytes at offset as the store holds them (not
// read through iSCSI); length 0 means to the end of the LUN.
type LUNManager interface {
	AddLUN(req AddLUNRequest) (LUN, error)
	RemoveLUN(id int) error
	ResizeLUN(id int, size string) (LUN, error)
	Checksum(id int, offset, length int64) (string, error)
}

// Array is what the control API serves. Implementations report what went
// wrong with errors from NotFoundf, Conflictf and Invalidf (or errors
// wrapping ErrNotFound, ErrConflict, ErrInvalid) so the API answers 404, 409
// and 400; any other error is a 500.
type Array interface {
	Info() Info
	Inject(portal, kind string) (FaultRecord, error)
	Revert(id string) (FaultRecord, error)
	Faults() []FaultRecord // active only
}

// Error classes, shared by server and client: errors.Is(err, ErrNotFound)
// holds for an Array's NotFoundf error and for the Client's error on a 404.
var (
	ErrInvalid      = errors.New("invalid request")          // 400
	ErrUnauthorized = errors.New("missing or invalid token") // 401
	ErrNotFound     = errors.New("not found")                // 404
	ErrConflict     = errors.New("conflict")                 // 409
)

// NotFoundf reports an unknown portal, fault ID or LUN (404).
func NotFoundf(format string, args ...any) error { return classed(ErrNotFound, format, args) }

// Conflictf reports a request that clashes with the array's state, such as
// a second fault on a portal (409).
func Conflictf(format string, args ...any) error { return classed(ErrConflict, format, args) }

// Invalidf reports a request the array cannot accept, such as an unknown
// fault kind (400).
func Invalidf(format string, args ...any) error { return classed(ErrInvalid, format, args) }

func classed(class error, format string, args []any) error {
	return &classedError{msg: fmt.Sprintf(format, args...), class: class}
}

// classedError keeps the caller's message as is (no "not found: " prefix)
// and still matches its class with errors.Is.
type classedError struct {
	msg   string
	class error
}

func (e *classedError) Error() string        { return e.msg }
func (e *classedError) Is(target error) bool { return target == e.class }

// statusOf maps an error to the status the API answers with.
func statusOf(err error) int {
	switch {
	case errors.Is(err, ErrInvalid):
		return http.StatusBadRequest
	case errors.Is(err, ErrUnauthorized):
		return http.StatusUnauthorized
	case errors.Is(err, ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, ErrConflict):
		return http.StatusConflict
	}
	return http.StatusInternalServerError
}

// classOf is the error class of a response status, nil for other statuses.
func classOf(status int) error {
	switch status {
	case http.StatusBadRequest:
		return ErrInvalid
	case http.StatusUnauthorized:
		return ErrUnauthorized
	case http.StatusNotFound:
		return ErrNotFound
	case http.StatusConflict:
		return ErrConflict
	}
	return nil
}
