// Package array is certkit's software iSCSI array: one or more targets,
// each with its own LUNs on gotgt's SCSI layer, certkit's own iSCSI front
// end (targets/frontend) serving every target on every controller portal,
// and a fault proxy (targets/faultproxy) in front of each portal that has
// one. ALUA states belong to the controllers and so hold for every target;
// faults act on portals and controllers and so hit every target's sessions
// there. *Array is what the control API (targets/control) serves.
//
// Several arrays may run in one process side by side as long as their names
// and target IQNs differ; see gotgt.go for the process-wide state gotgt
// imposes.
package array

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime/debug"
	"slices"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/certkit/certkit/iscsi"
	"github.com/certkit/certkit/targets/control"
	"github.com/certkit/certkit/targets/faultproxy"
	"github.com/certkit/certkit/targets/frontend"
)

// Options tune an array beyond its Config; the zero value is the default.
type Options struct {
	QueueDepth   int           // CmdSN window per session; default 128
	LoginTimeout time.Duration // default 15s
	Logf         func(format string, args ...any)
	Trace        func(in bool, p *iscsi.PDU) // see frontend.Config.Trace

	// Front-end settings; see frontend.Config for each and its default.
	Concurrency    int           // SCSI tasks of one session executing at once
	NopInInterval  time.Duration // target NOP-In pings; 0 = off
	NopInTimeout   time.Duration // an unanswered ping drops the connection
	MaxConnections int           // per portal
	MaxLogins      int           // per portal, connections still in login
	Defect         frontend.Defect

	// AllowShrink lets ResizeLUN make a LUN smaller (losing the data past
	// its new end); by default LUNs only grow.
	AllowShrink bool

	// ProxyOverTCP makes each fault proxy dial its portal over loopback TCP
	// instead of handing the host's connection to the front end in memory.
	// Faults act the same either way (the host's side is TCP in both); the
	// in-memory join is the default because it costs a fraction of the
	// second TCP hop (targets/BENCH.md). Benchmarks set it to compare.
	ProxyOverTCP bool
}

// Array is a running array.
type Array struct {
	cfg     Config
	targets []*target // in config order
	alua    *aluaGroups
	fe      *frontend.Server
	portals []*portal

	mu     sync.Mutex
	closed bool
	active map[string]*control.FaultRecord // by fault ID
	// controllerFaults holds what each active controller fault changed.
	controllerFaults map[string]*controllerFault
	faultSeq         int
	closeOnce        sync.Once
	closeErr         error
	allowShrink      bool // Options.AllowShrink (luns.go)
}

// target is one target of the array: its SCSI layer in gotgt.
type target struct {
	name string // IQN
	scsi *scsiTarget
}

type portal struct {
	id         string
	controller string
	tpgt       uint16
	listen     string // bound front-end address
	proxy      *faultproxy.Proxy
}

func (p *portal) address() string {
	if p.proxy != nil {
		return p.proxy.Addr()
	}
	return p.listen
}

// Start brings an array up: gotgt target and LUs, the front end on every
// portal, a fault proxy where configured. ctx bounds start-up only; the
// array runs until Close.
func Start(ctx context.Context, cfg Config) (*Array, error) {
	return StartWith(ctx, cfg, Options{})
}

// StartWith is Start with Options.
func StartWith(ctx context.Context, cfg Config, opt Options) (res *Array, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("array %s: %w", cfg.Name, err)
	}
	a := &Array{cfg: cfg, active: map[string]*control.FaultRecord{},
		controllerFaults: map[string]*controllerFault{}, allowShrink: opt.AllowShrink}
	defer func() {
		if err != nil {
			a.Close()
			res, err = nil, fmt.Errorf("array %s: %w", cfg.Name, err)
		}
	}()
	var groups []portGroup
	var fps []frontend.Portal
	for i, ctl := range cfg.Controllers {
		groups = append(groups, portGroup{id: TPGT(i), ports: []uint16{TPGT(i)}})
		for j, p := range ctl.Portals {
			fps = append(fps, frontend.Portal{Listen: p.Listen, TPGT: TPGT(i)})
			a.portals = append(a.portals, &portal{id: PortalID(ctl.Name, j), controller: ctl.Name, tpgt: TPGT(i)})
		}
	}
	a.alua = newALUAGroups(cfg.aluaConfig(), groups, cfg.initialALUA())
	var fts []frontend.Target
	for i, tc := range cfg.AllTargets() {
		var specs []lunSpec
		for _, l := range tc.LUNs {
			size, _ := ParseSize(l.Size) // validated
			specs = append(specs, lunSpec{id: l.ID, size: size, backing: l.Backing, path: l.Path})
		}
		st, err := newSCSITarget(cfg.Name, lunKey(cfg.Name, tc.Name, i == 0), tc.Name, specs, groups)
		if err != nil {
			if len(cfg.Targets) > 0 {
				err = fmt.Errorf("targets[%d] (%s): %w", i, tc.Name, err)
			}
			return nil, err
		}
		a.targets = append(a.targets, &target{name: tc.Name, scsi: st})
		auth, err := tc.Auth.resolve(cfg.targetField(i) + "auth") // validated; resolves secret_env (auth.go)
		if err != nil {
			return nil, err
		}
		fts = append(fts, frontend.Target{Name: tc.Name, SCSI: a.alua.target(st), Auth: auth, ACL: tc.ACL})
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	logf := opt.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	discovery, err := cfg.DiscoveryAuth.resolve("discovery_auth")
	if err != nil {
		return nil, err
	}
	a.fe, err = frontend.Listen(frontend.Config{
		Targets:       fts,
		DiscoveryAuth: discovery,
		Portals:       fps,
		QueueDepth:    opt.QueueDepth,
		LoginTimeout:  opt.LoginTimeout,
		Logf:          logf,
		Trace:         opt.Trace,

		Concurrency:    opt.Concurrency,
		NopInInterval:  opt.NopInInterval,
		NopInTimeout:   opt.NopInTimeout,
		MaxConnections: opt.MaxConnections,
		MaxLogins:      opt.MaxLogins,
		Defect:         opt.Defect,
	})
	if err != nil {
		return nil, err
	}
	addrs := a.fe.Addrs()
	k := 0
	for i, ctl := range cfg.Controllers {
		for j, pc := range ctl.Portals {
			p := a.portals[k]
			p.listen = addrs[k]
			if pc.Proxy != "" {
				popt := faultproxy.Options{Logf: logf}
				if !opt.ProxyOverTCP {
					fe, k := a.fe, k
					popt.Serve = func(c net.Conn) error { return fe.ServeConn(k, c) }
				}
				if p.proxy, err = faultproxy.ListenWith(pc.Proxy, p.listen, popt); err != nil {
					return nil, fmt.Errorf("controllers[%d].portals[%d].proxy %s: %w", i, j, pc.Proxy, err)
				}
				if err := a.fe.Advertise(k, p.proxy.Addr()); err != nil {
					return nil, err
				}
			}
			k++
		}
	}
	return a, ctx.Err()
}

// Close stops proxies, the front end and the gotgt targets, releasing every
// listener, session, goroutine and memory LU.
func (a *Array) Close() error {
	a.closeOnce.Do(func() {
		a.mu.Lock()
		a.closed = true
		for _, cf := range a.controllerFaults {
			if cf.timer != nil {
				cf.timer.Stop() // a reboot's revert or a failover's transition
			}
		}
		a.mu.Unlock()
		var errs []error
		for _, p := range a.portals {
			if p.proxy != nil {
				errs = append(errs, p.proxy.Close())
			}
		}
		if a.fe != nil {
			errs = append(errs, a.fe.Close())
		}
		for _, t := range a.targets {
			t.scsi.close()
		}
		a.closeErr = errors.Join(errs...)
	})
	return a.closeErr
}

// Name is the array's name.
func (a *Array) Name() string { return a.cfg.Name }

// Target is the IQN of the array's first (or only) target; Targets lists
// them all.
func (a *Array) Target() string { return a.targets[0].name }

// Targets are the IQNs of the array's targets, in config order.
func (a *Array) Targets() []string {
	names := make([]string, len(a.targets))
	for i, t := range a.targets {
		names[i] = t.name
	}
	return names
}

// Info describes the array (control.Array): every target with its LUNs as
// they are now, and every portal (each reaches every target).
func (a *Array) Info() control.Info {
	info := control.Info{Name: a.cfg.Name, Product: Product, Version: Version()}
	for _, t := range a.targets {
		info.Targets = append(info.Targets, control.Target{IQN: t.name, LUNs: a.luns(t)}) // luns.go
	}
	for _, p := range a.portals {
		cp := control.Portal{ID: p.id, Controller: p.controller, TPGT: int(p.tpgt), Address: p.address()}
		if p.proxy != nil {
			cp.Fault = string(p.proxy.Fault())
		}
		info.Portals = append(info.Portals, cp)
	}
	return info
}

// Inject starts a fault on a portal's proxy (control.Array).
func (a *Array) Inject(portalID, kind string) (control.FaultRecord, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return control.FaultRecord{}, fmt.Errorf("array %s is closed", a.cfg.Name)
	}
	i := slices.IndexFunc(a.portals, func(p *portal) bool { return p.id == portalID })
	if i < 0 {
		ids := make([]string, len(a.portals))
		for j, p := range a.portals {
			ids[j] = p.id
		}
		return control.FaultRecord{}, control.NotFoundf("array %s: no portal %q (portals: %v)", a.cfg.Name, portalID, ids)
	}
	p := a.portals[i]
	if p.proxy == nil {
		return control.FaultRecord{}, control.Invalidf("array %s: portal %s has no fault proxy; set its proxy address in the array config", a.cfg.Name, p.id)
	}
	at, err := p.proxy.Inject(faultproxy.Kind(kind))
	switch {
	case errors.Is(err, faultproxy.ErrUnknownKind):
		return control.FaultRecord{}, control.Invalidf("array %s: portal %s: %v", a.cfg.Name, p.id, err)
	case errors.Is(err, faultproxy.ErrFaultActive):
		return control.FaultRecord{}, control.Conflictf("array %s: portal %s: %v", a.cfg.Name, p.id, err)
	case err != nil:
		return control.FaultRecord{}, fmt.Errorf("array %s: portal %s: %w", a.cfg.Name, p.id, err)
	}
	a.faultSeq++
	rec := &control.FaultRecord{ID: a.cfg.Name + "-f" + strconv.Itoa(a.faultSeq), Portal: p.id, Kind: kind, InjectedAt: at}
	a.active[rec.ID] = rec
	return *rec, nil
}

// Revert ends an active fault (control.Array).
func (a *Array) Revert(id string) (control.FaultRecord, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	rec := a.active[id]
	if rec == nil {
		return control.FaultRecord{}, control.NotFoundf("array %s: no active fault %q; list them with GET /v1/faults", a.cfg.Name, id)
	}
	if cf := a.controllerFaults[id]; cf != nil {
		at, err := a.revertControllerLocked(rec, cf)
		if err != nil {
			return control.FaultRecord{}, fmt.Errorf("array %s: revert %s of controller %s: %w", a.cfg.Name, rec.Kind, rec.Controller, err)
		}
		rec.RevertedAt = &at
		delete(a.active, id)
		delete(a.controllerFaults, id)
		return *rec, nil
	}
	i := slices.IndexFunc(a.portals, func(p *portal) bool { return p.id == rec.Portal })
	at, err := a.portals[i].proxy.Revert()
	if err != nil {
		return control.FaultRecord{}, fmt.Errorf("array %s: revert fault %s on portal %s: %w", a.cfg.Name, id, rec.Portal, err)
	}
	rec.RevertedAt = &at
	delete(a.active, id)
	return *rec, nil
}

// Faults lists the active faults in injection order (control.Array).
func (a *Array) Faults() []control.FaultRecord {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]control.FaultRecord, 0, len(a.active))
	for _, r := range a.active {
		out = append(out, *r)
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].InjectedAt.Equal(out[j].InjectedAt) {
			return out[i].InjectedAt.Before(out[j].InjectedAt)
		}
		return len(out[i].ID) < len(out[j].ID) || len(out[i].ID) == len(out[j].ID) && out[i].ID < out[j].ID
	})
	return out
}

var _ control.Array = (*Array)(nil)

// Product names the array software in the control API's Info.
const Product = "certkit software array (gotgt SCSI layer)"

// Version is the certkit module version the array was built from.
func Version() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		return bi.Main.Version
	}
	return "unknown"
}
