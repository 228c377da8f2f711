package main

import (
	"context"
	"fmt"
	"regexp"
	"strings"

	"github.com/certkit/certkit/harness/esxcli"
	"github.com/certkit/certkit/harness/lab"
	"github.com/certkit/certkit/reports/bundle"
	"github.com/certkit/certkit/suites"
)

// vmwareV matches `vmware -v`: "VMware ESXi 7.0.3 build-21930508".
var vmwareV = regexp.MustCompile(`^(VMware ESXi?)\s+(\S+)\s+build-(\d+)`)

// parseVMwareV reads a host's identity from `vmware -v`.
func parseVMwareV(out string) (bundle.Component, error) {
	line := strings.TrimSpace(out)
	m := vmwareV.FindStringSubmatch(line)
	if m == nil {
		return bundle.Component{}, fmt.Errorf("`vmware -v` printed %q, not \"VMware ESXi <version> build-<n>\"", line)
	}
	return bundle.Component{Product: m[1], Version: m[2], Build: m[3]}, nil
}

// identify asks every host and array of the lab who it is, for the
// bundle's manifest. It is also the run's first contact with the lab, so a
// host or array that cannot be reached stops the run before it starts.
func identify(ctx context.Context, p *lab.Profile) (hosts, arrays map[string]bundle.Component, err error) {
	hosts, arrays = map[string]bundle.Component{}, map[string]bundle.Component{}
	for _, h := range p.Hosts {
		c, err := esxcli.Dial(ctx, h, p.Timings.CommandTimeout.Duration)
		if err != nil {
			return nil, nil, fmt.Errorf("host %s: %w", h.Name, err)
		}
		r, err := c.Shell(ctx, "vmware -v")
		c.Close()
		if err != nil {
			return nil, nil, fmt.Errorf("host %s: %w", h.Name, err)
		}
		comp, err := parseVMwareV(r.Stdout)
		if err != nil {
			return nil, nil, fmt.Errorf("host %s: %w", h.Name, err)
		}
		hosts[h.Name] = comp
	}
	for _, a := range p.Arrays {
		c, err := suites.ArrayClient(a.Control)
		if err != nil {
			return nil, nil, fmt.Errorf("array %s: %w", a.Name, err)
		}
		info, err := c.Info(ctx)
		if err != nil {
			return nil, nil, fmt.Errorf("array %s: %w", a.Name, err)
		}
		comp := bundle.Component{Product: info.Product, Version: info.Version}
		if comp.Version == "" {
			comp.Version = "unknown"
		}
		arrays[a.Name] = comp
	}
	return hosts, arrays, nil
}
