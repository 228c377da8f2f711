// Package suites is the certification catalog: every test family registers
// its specs here (the way csi-test's sanity package does), and Run wires the
// registry into one Ginkgo run against a lab, recording evidence into a
// submission bundle as it goes.
//
// Suites reach hosts only over the wire (esxcli over SSH) and arrays only
// through their control API: a spec that passes against the embedded lab
// runs unchanged against real hosts and arrays.
package suites

import (
	"context"
	"fmt"
	"sort"
	"sync"
)

// CatalogVersion names this set of tests and what each requires; a bundle
// records it, and `certkit bundle verify` checks a bundle holds every test
// its catalog version requires. Bump it when a test is added, removed or
// its pass criteria change.
const CatalogVersion = "2026.11-1"

// IDs returns the IDs of every registered spec, sorted.
func IDs() []string {
	specs := Catalog()
	ids := make([]string, len(specs))
	for i, s := range specs {
		ids[i] = s.ID
	}
	return ids
}

// Spec is one certification test.
type Spec struct {
	// ID is the stable identifier reviewers and reports use, e.g.
	// "failover.path.noop-timeout". It never changes once published.
	ID string
	// Title says in one line what the test proves.
	Title string
	// Body runs the test. It fails through Gomega assertions; ctx ends when
	// the spec times out or the run is interrupted.
	Body func(ctx context.Context, env *Env)
	// Replay re-derives the verdict from what the bundle recorded, with the
	// same judging code the run used; nil means the spec cannot be replayed.
	Replay func(rec Recorded) (Verdict, error)
}

var (
	registryMu sync.Mutex
	registry   = map[string]Spec{}
)

// Register adds a spec to the catalog; family packages call it from init.
// A duplicate or malformed ID is a programming error and panics at start-up.
func Register(s Spec) {
	registryMu.Lock()
	defer registryMu.Unlock()
	if s.ID == "" || s.Body == nil {
		panic(fmt.Sprintf("suites: spec %q needs an ID and a Body", s.ID))
	}
	if _, dup := registry[s.ID]; dup {
		panic(fmt.Sprintf("suites: spec %q registered twice", s.ID))
	}
	registry[s.ID] = s
}

// Catalog returns the registered specs sorted by ID.
func Catalog() []Spec {
	registryMu.Lock()
	defer registryMu.Unlock()
	out := make([]Spec, 0, len(registry))
	for _, s := range registry {
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}
