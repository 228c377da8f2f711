// Scratch end-to-end check of harness/esxcli and harness/observe against the
// embedded lab (deleted after use).
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/certkit/certkit/fixtures/labs"
	"github.com/certkit/certkit/harness/esxcli"
	"github.com/certkit/certkit/harness/observe"
	"github.com/certkit/certkit/targets/control"
)

func must(err error) {
	if err != nil {
		fmt.Println("ERR", err)
		os.Exit(1)
	}
}

func main() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "e2e")
	defer os.RemoveAll(dir)
	l, err := labs.StartEmbedded(ctx, labs.Options{Dir: dir})
	must(err)
	defer l.Close()
	must(l.Profile.Validate())
	h := l.Profile.Hosts[0]
	c, err := esxcli.Dial(ctx, h, 20*time.Second)
	must(err)
	defer c.Close()
	run := func(args ...string) string {
		r, err := c.Esxcli(ctx, args...)
		fmt.Printf("$ %s (exit %d)\n%s", r.Command, r.ExitCode, r.Stdout)
		must(err)
		return r.Stdout
	}
	_, err = c.Esxcli(ctx, "iscsi", "software", "set", "--enabled=true")
	must(err)
	on, err := esxcli.ParseBool(esxcli.CmdISCSISoftwareGet, run("iscsi", "software", "get"))
	must(err)
	fmt.Println("software:", on)
	ads, err := esxcli.ParseAdapterList(run("iscsi", "adapter", "list"))
	must(err)
	fmt.Printf("%+v\n", ads)
	for _, kv := range [][2]string{{"NoopOutInterval", "1"}, {"RecoveryTimeout", "1"}, {"LoginTimeout", "1"}} {
		run("iscsi", "adapter", "param", "set", "-A", h.Adapter, "-k", kv[0], "-v", kv[1])
	}
	ps, err := esxcli.ParseAdapterParams(run("iscsi", "adapter", "param", "get", "-A", h.Adapter))
	must(err)
	fmt.Printf("%d params, first %+v\n", len(ps), ps[0])
	info, err := control.NewClient(l.Profile.Arrays[0].Control.URL, l.Profile.Arrays[0].Control.Token).Info(ctx)
	must(err)
	run("iscsi", "adapter", "discovery", "sendtarget", "add", "-A", h.Adapter, "-a", info.Portals[0].Address)
	sts, err := esxcli.ParseSendTargets(run("iscsi", "adapter", "discovery", "sendtarget", "list"))
	must(err)
	fmt.Printf("%+v\n", sts)
	run("storage", "core", "adapter", "rescan", "-A", h.Adapter)
	paths, err := esxcli.ParseCorePathList(run("storage", "core", "path", "list"))
	must(err)
	fmt.Printf("%+v\n", paths)
	for _, p := range paths {
		tag, ok := p.PortalTag()
		fmt.Println(p.RuntimeName, p.State, p.TargetIQN(), tag, ok)
	}
	devs, err := esxcli.ParseNMPDeviceList(run("storage", "nmp", "device", "list"))
	must(err)
	fmt.Printf("%+v\n", devs)
	np, err := esxcli.ParseNMPPathList(run("storage", "nmp", "path", "list"))
	must(err)
	fmt.Printf("%+v\n", np)
	cd, err := esxcli.ParseCoreDeviceList(run("storage", "core", "device", "list"))
	must(err)
	fmt.Printf("%+v\n", cd)
	st, err := esxcli.ParsePathStats(run("storage", "core", "path", "stats", "get"))
	must(err)
	fmt.Printf("%+v\n", st)

	w := observe.WatchPaths(ctx, c, 250*time.Millisecond)
	_, err = w.WaitFor(ctx, func(s observe.PathSample) bool { return s.Count("active") == len(paths) && len(paths) > 0 })
	must(err)
	cc := control.NewClient(l.Profile.Arrays[0].Control.URL, l.Profile.Arrays[0].Control.Token)
	rec, err := cc.Inject(ctx, info.Portals[0].ID, "reset")
	must(err)
	wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	s, err := w.WaitFor(wctx, func(s observe.PathSample) bool { return s.Count("dead") > 0 })
	cancel()
	fmt.Println("dead sample:", s, err, "after", s.At.Sub(rec.InjectedAt))
	_, err = cc.Revert(ctx, rec.ID)
	must(err)
	wctx, cancel = context.WithTimeout(ctx, 30*time.Second)
	s, err = w.WaitFor(wctx, func(s observe.PathSample) bool { return s.Count("dead") == 0 && len(s.States) > 0 })
	cancel()
	fmt.Println("back:", s, err)
	samples := w.Stop()
	fmt.Println(len(samples), "samples;", observe.Transitions(samples))
}
