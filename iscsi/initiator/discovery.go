package initiator

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/certkit/certkit/iscsi"
)

// Discover runs a SendTargets=All discovery session at address (host:port)
// and logs out. The login is bounded by DefaultLoginTimeout and ctx.
func Discover(ctx context.Context, address, initiatorName string) ([]Target, error) {
	return DiscoverWith(ctx, Options{InitiatorName: initiatorName, Address: address})
}

// DiscoverWith is Discover at o.Address with the rest of o (CHAP,
// LoginTimeout, ISID, Logf); o.TargetName is ignored.
func DiscoverWith(ctx context.Context, o Options) ([]Target, error) {
	address := o.Address
	s, err := login(ctx, o, true)
	if err != nil {
		return nil, err
	}
	kv, err := s.text(ctx, iscsi.Text{{Key: "SendTargets", Value: "All"}})
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("discovery at %s: SendTargets: %w", address, err)
	}
	// The answer is what counts; a failed logout only drops the connection.
	_ = s.Logout(ctx)
	targets, err := parseSendTargets(kv, address)
	if err != nil {
		return nil, fmt.Errorf("discovery at %s: %w", address, err)
	}
	return targets, nil
}

// parseSendTargets groups TargetAddress lines under the TargetName before
// them (RFC 7143 appendix C). A target without addresses is reachable at
// the discovery address.
func parseSendTargets(kv iscsi.Text, discoveryAddr string) ([]Target, error) {
	targets := []Target{}
	for _, p := range kv {
		switch p.Key {
		case "TargetName":
			if p.Value == "" {
				return nil, fmt.Errorf("SendTargets answer has an empty TargetName")
			}
			targets = append(targets, Target{Name: p.Value})
		case "TargetAddress":
			if len(targets) == 0 {
				return nil, fmt.Errorf("SendTargets answer has TargetAddress=%s before any TargetName", p.Value)
			}
			portal, err := ParsePortal(p.Value)
			if err != nil {
				return nil, err
			}
			t := &targets[len(targets)-1]
			t.Portals = append(t.Portals, portal)
		case "TargetAlias":
		default:
			return nil, fmt.Errorf("SendTargets answer has unexpected key %s=%s", p.Key, p.Value)
		}
	}
	for i := range targets {
		if len(targets[i].Portals) == 0 {
			targets[i].Portals = []Portal{{Address: discoveryAddr, Tag: 1}}
		}
	}
	return targets, nil
}

// ParsePortal parses a TargetAddress value, "host[:port][,tag]" with IPv6
// hosts in brackets; the port defaults to 3260.
func ParsePortal(v string) (Portal, error) {
	addr, tagStr, hasTag := strings.Cut(v, ",")
	var p Portal
	if hasTag {
		tag, err := strconv.ParseUint(tagStr, 10, 16)
		if err != nil {
			return p, fmt.Errorf("TargetAddress %q: portal group tag %q is not a number in 0..65535", v, tagStr)
		}
		p.Tag = int(tag)
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		// No port: a bare host, or an IPv6 literal in brackets.
		host, port = strings.TrimSuffix(strings.TrimPrefix(addr, "["), "]"), DefaultPort
		if host == "" || strings.ContainsAny(host, "[]") || strings.Contains(host, ":") && !strings.HasPrefix(addr, "[") {
			return p, fmt.Errorf("TargetAddress %q: %q is not host:port", v, addr)
		}
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return p, fmt.Errorf("TargetAddress %q: port %q is not a number in 1..65535", v, port)
	}
	if host == "" {
		return p, fmt.Errorf("TargetAddress %q has no host", v)
	}
	p.Address = net.JoinHostPort(host, port)
	return p, nil
}
