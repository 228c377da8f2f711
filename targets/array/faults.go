package array

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/certkit/certkit/targets/control"
	"github.com/certkit/certkit/targets/faultproxy"
)

// Controller faults: what happens to a whole controller (target port
// group), played on its portals' fault proxies and on ALUA.
const (
	// Crash: the controller's portals drop every session (TCP reset) and
	// refuse new ones; the surviving controllers report its port group
	// unavailable. Revert brings it back.
	FaultCrash = "crash"
	// Hang: the controller's portals keep TCP open and answer nothing; the
	// array's ALUA view does not change (nobody noticed yet).
	FaultHang = "hang"
	// Reboot: a crash that reverts itself after the fault's duration.
	FaultReboot = "reboot"
	// Failover: a planned ALUA transition away from the controller: its
	// port group is "transitioning" for the array's transition time, then
	// standby, and every other group active/optimized. Revert (failback)
	// restores the states the groups had.
	FaultFailover = "failover"
)

var controllerFaults = []string{FaultCrash, FaultHang, FaultReboot, FaultFailover}

// InjectFault starts a path fault with parameters on a portal, or a
// controller fault (control.FaultInjector).
func (a *Array) InjectFault(req control.InjectRequest) (control.FaultRecord, error) {
	if req.Controller != "" {
		return a.injectController(req)
	}
	f, err := proxyFault(req.FaultSpec)
	if err != nil {
		return control.FaultRecord{}, control.Invalidf("array %s: portal %s: %v", a.cfg.Name, req.Portal, err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	p, err := a.portalLocked(req.Portal)
	if err != nil {
		return control.FaultRecord{}, err
	}
	at, err := p.proxy.InjectFault(f)
	if err != nil {
		return control.FaultRecord{}, a.proxyError(p.id, err)
	}
	rec := a.recordLocked(control.FaultRecord{Portal: p.id, Kind: req.Kind, InjectedAt: at})
	if req.FaultSpec != (control.FaultSpec{Kind: req.Kind}) {
		spec := req.FaultSpec
		rec.Spec = &spec
	}
	return *rec, nil
}

// portalLocked finds a portal that has a fault proxy.
func (a *Array) portalLocked(id string) (*portal, error) {
	if a.closed {
		return nil, fmt.Errorf("array %s is closed", a.cfg.Name)
	}
	i := slices.IndexFunc(a.portals, func(p *portal) bool { return p.id == id })
	if i < 0 {
		ids := make([]string, len(a.portals))
		for j, p := range a.portals {
			ids[j] = p.id
		}
		return nil, control.NotFoundf("array %s: no portal %q (portals: %v)", a.cfg.Name, id, ids)
	}
	p := a.portals[i]
	if p.proxy == nil {
		return nil, control.Invalidf("array %s: portal %s has no fault proxy; set its proxy address in the array config", a.cfg.Name, p.id)
	}
	return p, nil
}

func (a *Array) proxyError(portal string, err error) error {
	switch {
	case errors.Is(err, faultproxy.ErrInvalidFault):
		return control.Invalidf("array %s: portal %s: %v", a.cfg.Name, portal, err)
	case errors.Is(err, faultproxy.ErrFaultActive):
		return control.Conflictf("array %s: portal %s: %v", a.cfg.Name, portal, err)
	}
	return fmt.Errorf("array %s: portal %s: %w", a.cfg.Name, portal, err)
}

func (a *Array) recordLocked(rec control.FaultRecord) *control.FaultRecord {
	a.faultSeq++
	rec.ID = a.cfg.Name + "-f" + strconv.Itoa(a.faultSeq)
	r := &rec
	a.active[rec.ID] = r
	return r
}

// proxyFault turns a wire fault spec into a proxy fault.
func proxyFault(s control.FaultSpec) (faultproxy.Fault, error) {
	f := faultproxy.Fault{Kind: faultproxy.Kind(s.Kind), Direction: faultproxy.Direction(s.Direction)}
	if s.Delay != "" {
		d, err := time.ParseDuration(s.Delay)
		if err != nil {
			return f, fmt.Errorf("delay %q is not a duration such as 200ms", s.Delay)
		}
		f.Params.Delay = d
	}
	if s.Opcode != "" {
		op, err := strconv.ParseUint(s.Opcode, 0, 8)
		if err != nil {
			return f, fmt.Errorf("opcode %q is not a byte such as 0x28", s.Opcode)
		}
		f.Params.Opcode = faultproxy.Opcode(byte(op))
	}
	if s.LUN != nil {
		f.Params.LUN = faultproxy.LUN(*s.LUN)
	}
	if s.Sense != "" {
		sense, err := faultproxy.ParseSense(s.Sense)
		if err != nil {
			return f, err
		}
		f.Params.Sense = sense
	}
	if s.Duration != "" {
		return f, fmt.Errorf("duration is for controller faults (%s); a path fault lasts until reverted", strings.Join(controllerFaults, ", "))
	}
	return f, f.Validate()
}

func (c Config) aluaConfig() ALUAConfig {
	out := ALUAConfig{TransitionSeconds: byte(DefaultTransitionTime / time.Second)}
	if c.ALUA != nil {
		out.Explicit = c.ALUA.Explicit
		if d, err := time.ParseDuration(c.ALUA.TransitionTime); err == nil {
			out.TransitionSeconds = byte(d / time.Second)
		}
	}
	return out
}

func (c Config) initialALUA() map[uint16]AccessState {
	out := map[uint16]AccessState{}
	for i, ctl := range c.Controllers {
		if s, err := ParseAccessState(ctl.ALUAState); err == nil {
			out[TPGT(i)] = s
		}
	}
	return out
}

// controllerFault is what a controller fault changed, to undo it.
type controllerFault struct {
	portals []*portal
	group   uint16
	before  map[uint16]AccessState // ALUA states to restore
	timer   *time.Timer            // reboot's own revert; failover's transition
}

func (a *Array) injectController(req control.InjectRequest) (control.FaultRecord, error) {
	var dur time.Duration
	if req.Duration != "" {
		d, err := time.ParseDuration(req.Duration)
		if err != nil || d <= 0 {
			return control.FaultRecord{}, control.Invalidf("array %s: %s: duration %q is not a positive duration such as 30s", a.cfg.Name, req.Kind, req.Duration)
		}
		dur = d
	}
	if !slices.Contains(controllerFaults, req.Kind) {
		return control.FaultRecord{}, control.Invalidf("array %s: %q is not a controller fault; use one of %s", a.cfg.Name, req.Kind, strings.Join(controllerFaults, ", "))
	}
	if req.Kind == FaultReboot && dur == 0 {
		return control.FaultRecord{}, control.Invalidf("array %s: reboot needs a duration (how long the controller stays down), e.g. \"30s\"", a.cfg.Name)
	}
	if req.Kind != FaultReboot && dur != 0 {
		return control.FaultRecord{}, control.Invalidf("array %s: %s takes no duration; revert it to end it", a.cfg.Name, req.Kind)
	}

	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return control.FaultRecord{}, fmt.Errorf("array %s is closed", a.cfg.Name)
	}
	ci := slices.IndexFunc(a.cfg.Controllers, func(c Controller) bool { return c.Name == req.Controller })
	if ci < 0 {
		names := make([]string, len(a.cfg.Controllers))
		for i, c := range a.cfg.Controllers {
			names[i] = c.Name
		}
		return control.FaultRecord{}, control.NotFoundf("array %s: no controller %q (controllers: %v)", a.cfg.Name, req.Controller, names)
	}
	cf := &controllerFault{group: TPGT(ci), before: a.alua.States()}
	for _, r := range a.active {
		if r.Controller == req.Controller {
			return control.FaultRecord{}, control.Conflictf("array %s: controller %s already has fault %s (%s) active", a.cfg.Name, req.Controller, r.ID, r.Kind)
		}
	}
	for _, p := range a.portals {
		if p.controller != req.Controller {
			continue
		}
		if p.proxy == nil && req.Kind != FaultFailover {
			return control.FaultRecord{}, control.Invalidf("array %s: controller %s: portal %s has no fault proxy; a %s needs one on every portal", a.cfg.Name, req.Controller, p.id, req.Kind)
		}
		cf.portals = append(cf.portals, p)
	}

	var at time.Time
	switch req.Kind {
	case FaultCrash, FaultReboot, FaultHang:
		kind := faultproxy.Reset
		if req.Kind == FaultHang {
			kind = faultproxy.Blackhole
		}
		for i, p := range cf.portals {
			t, err := p.proxy.Inject(kind)
			if err != nil {
				for _, q := range cf.portals[:i] {
					_, _ = q.proxy.Revert()
				}
				return control.FaultRecord{}, a.proxyError(p.id, err)
			}
			if at.IsZero() {
				at = t
			}
		}
		if req.Kind != FaultHang {
			_ = a.alua.SetState(cf.group, Unavailable)
		}
	case FaultFailover:
		at = time.Now()
		_ = a.alua.SetState(cf.group, Transitioning)
		cf.timer = time.AfterFunc(a.transitionTime(), func() { a.completeFailover(cf) })
	}
	spec := req.FaultSpec
	rec := a.recordLocked(control.FaultRecord{Controller: req.Controller, Kind: req.Kind, Spec: &spec, InjectedAt: at})
	a.controllerFaults[rec.ID] = cf
	if req.Kind == FaultReboot {
		id := rec.ID
		cf.timer = time.AfterFunc(dur, func() { _, _ = a.Revert(id) })
	}
	return *rec, nil
}

// completeFailover ends the transitioning window of a planned failover.
func (a *Array) completeFailover(cf *controllerFault) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed || a.alua.States()[cf.group] != Transitioning {
		return // reverted meanwhile
	}
	want := map[uint16]AccessState{}
	for id := range cf.before {
		want[id] = ActiveOptimized
	}
	want[cf.group] = Standby
	_ = a.alua.setStates(want)
}

// revertController undoes a controller fault; a.mu is held.
func (a *Array) revertControllerLocked(rec *control.FaultRecord, cf *controllerFault) (time.Time, error) {
	if cf.timer != nil {
		cf.timer.Stop()
	}
	var errs []error
	at := time.Now()
	for _, p := range cf.portals {
		if p.proxy == nil || p.proxy.Fault() == "" {
			continue
		}
		t, err := p.proxy.Revert()
		if err != nil {
			errs = append(errs, fmt.Errorf("portal %s: %w", p.id, err))
		} else {
			at = t
		}
	}
	if rec.Kind != FaultHang {
		_ = a.alua.setStates(cf.before)
	}
	return at, errors.Join(errs...)
}

func (a *Array) transitionTime() time.Duration {
	if a.cfg.ALUA != nil && a.cfg.ALUA.TransitionTime != "" {
		if d, err := time.ParseDuration(a.cfg.ALUA.TransitionTime); err == nil {
			return d
		}
	}
	return DefaultTransitionTime
}

// DefaultTransitionTime is how long a planned failover keeps a port group
// transitioning when the config does not say.
const DefaultTransitionTime = 2 * time.Second

// ALUA lists the target port groups and their states (control.ALUAArray).
func (a *Array) ALUA() []control.ALUAGroup {
	states := a.alua.States()
	out := make([]control.ALUAGroup, 0, len(states))
	for i, c := range a.cfg.Controllers {
		out = append(out, control.ALUAGroup{ID: int(TPGT(i)), Controller: c.Name, State: states[TPGT(i)].String()})
	}
	return out
}

// SetALUA sets a target port group's state as an implicit transition does,
// raising UNIT ATTENTION 06/2A/06 on every nexus (control.ALUAArray).
func (a *Array) SetALUA(id int, state string) (control.ALUAGroup, error) {
	s, err := ParseAccessState(state)
	if err != nil {
		return control.ALUAGroup{}, control.Invalidf("array %s: %v", a.cfg.Name, err)
	}
	if id < 1 || id > len(a.cfg.Controllers) {
		return control.ALUAGroup{}, control.NotFoundf("array %s: no target port group %d (groups 1..%d, one per controller)", a.cfg.Name, id, len(a.cfg.Controllers))
	}
	if err := a.alua.SetState(uint16(id), s); err != nil {
		return control.ALUAGroup{}, err
	}
	return control.ALUAGroup{ID: id, Controller: a.cfg.Controllers[id-1].Name, State: s.String()}, nil
}

var (
	_ control.FaultInjector = (*Array)(nil)
	_ control.ALUAArray     = (*Array)(nil)
)
