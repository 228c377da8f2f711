package main

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/certkit/certkit/fixtures/esxi/storage"
	"github.com/certkit/certkit/fixtures/labs"
	"github.com/certkit/certkit/harness/lab"
	"github.com/certkit/certkit/reports/bundle"
	"github.com/certkit/certkit/suites"
	_ "github.com/certkit/certkit/suites/failover" // registers the failover family
)

// Exit codes of `certkit run`.
const (
	exitFailed      = 1   // a test failed
	exitSetup       = 2   // the run could not start (config, lab)
	exitInterrupted = 130 // SIGINT/SIGTERM; faults were reverted
)

func runCmd() *cobra.Command {
	var (
		labArg, defect, outDir, bundlePath string
		focus                              []string
		verbose                            bool
		signKey                            string
		hosts                              int
	)
	c := &cobra.Command{
		Use:   "run",
		Short: "Run the certification catalog against a lab and write a submission bundle",
		Long: `Run the certification catalog against a lab and write a submission bundle.

--lab embedded starts the embedded lab (an emulated ESXi host and a software
array on loopback); --lab FILE uses the hosts and arrays of a lab profile.
The last line printed is the path of the bundle.

Exit status: 0 every test passed, 1 a test failed, 2 the run could not
start, 130 interrupted (every injected fault is reverted first).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if defect != "" && labArg != "embedded" {
				return &exitError{exitSetup, errors.New("--host-defect needs --lab embedded: it selects a misbehaving emulated host")}
			}
			var profile *lab.Profile
			if labArg == "embedded" {
				dir, err := os.MkdirTemp("", "certkit-lab-")
				if err != nil {
					return &exitError{exitSetup, err}
				}
				defer os.RemoveAll(dir)
				l, err := labs.StartEmbedded(ctx, labs.Options{Dir: dir, HostDefect: defect, Hosts: hosts})
				if err != nil {
					return &exitError{exitSetup, err}
				}
				defer l.Close()
				profile = l.Profile
			} else {
				p, err := lab.Load(labArg)
				if err != nil {
					return &exitError{exitSetup, err}
				}
				profile = p
			}
			if bundlePath == "" {
				if err := os.MkdirAll(outDir, 0o755); err != nil {
					return &exitError{exitSetup, err}
				}
				bundlePath = filepath.Join(outDir, fmt.Sprintf("certkit-%s-%s.tgz",
					profile.Name, time.Now().UTC().Format("20060102T150405Z")))
			}
			var key ed25519.PrivateKey
			if signKey != "" {
				k, err := bundle.LoadPrivateKey(signKey)
				if err != nil {
					return &exitError{exitSetup, err}
				}
				key = k
			}
			return runCatalog(ctx, cmd, profile, defect, bundlePath, focus, verbose, key)
		},
	}
	c.Flags().StringVar(&labArg, "lab", "embedded", `lab profile file, or "embedded"`)
	c.Flags().StringVar(&defect, "host-defect", "", "emulated host defect (negative control):"+defectHelp())
	c.Flags().StringVar(&outDir, "out", "out", "directory for the bundle")
	c.Flags().IntVar(&hosts, "hosts", 1, fmt.Sprintf("with --lab embedded: number of emulated hosts (1..%d)", labs.MaxHosts))
	c.Flags().StringVar(&bundlePath, "bundle", "", "bundle file to write (default: <out>/certkit-<lab>-<time>.tgz)")
	c.Flags().StringSliceVar(&focus, "test", nil, "run only these test IDs (repeatable)")
	c.Flags().BoolVarP(&verbose, "verbose", "v", false, "print every step of every test")
	c.Flags().StringVar(&signKey, "sign-key", "", "ed25519 private key (PEM, from `certkit bundle keygen`) to sign the bundle with")
	return c
}

// labSecrets are the lab's secret values, which the bundle writer scrubs
// from everything it writes.
func labSecrets(p *lab.Profile) []string {
	var out []string
	for _, h := range p.Hosts {
		if pw, err := h.SSH.ResolvePassword(); err == nil && len(pw) >= 4 {
			out = append(out, pw)
		}
	}
	for _, a := range p.Arrays {
		if t, err := a.Control.ResolveToken(); err == nil && len(t) >= 4 {
			out = append(out, t)
		}
	}
	return out
}

// defectHelp lists the emulated host's defects with what each one breaks.
func defectHelp() string {
	var b strings.Builder
	for _, d := range storage.Defects {
		fmt.Fprintf(&b, "\n  %-14s %s", d, storage.DefectDocs[d])
	}
	return b.String()
}

func runCatalog(ctx context.Context, cmd *cobra.Command, profile *lab.Profile, defect, bundlePath string, focus []string, verbose bool, key ed25519.PrivateKey) error {
	redacted, err := profile.Redacted().Marshal()
	if err != nil {
		return &exitError{exitSetup, err}
	}
	summary := map[string]any{"name": profile.Name, "hosts": len(profile.Hosts), "arrays": len(profile.Arrays)}
	if defect != "" {
		summary["host_defect"] = defect
	}
	ictx, cancel := context.WithTimeout(ctx, profile.Timings.SetupTimeout.Duration)
	hosts, arrays, err := identify(ictx, profile)
	cancel()
	if err != nil {
		return &exitError{exitSetup, err}
	}
	w, err := bundle.Create(bundlePath, bundle.Meta{ToolVersion: version, Lab: summary, Profile: redacted,
		CatalogVersion: suites.CatalogVersion, Required: suites.IDs(), Secrets: labSecrets(profile), SignKey: key,
		Hosts: hosts, Arrays: arrays})
	if err != nil {
		return &exitError{exitSetup, err}
	}
	out, runErr := suites.Run(ctx, suites.RunConfig{Profile: profile, Bundle: w, Focus: focus,
		Log: cmd.ErrOrStderr(), Verbose: verbose})
	if err := w.Close(); err != nil {
		return &exitError{exitSetup, fmt.Errorf("sealing bundle %s: %w", bundlePath, err)}
	}
	for _, r := range out.Results {
		fmt.Fprintf(cmd.OutOrStdout(), "%-8s %s\n", r.Status, r.ID)
	}
	fmt.Fprintln(cmd.OutOrStdout(), bundlePath)
	switch {
	case runErr != nil:
		return &exitError{exitSetup, runErr}
	case out.Interrupted || ctx.Err() != nil:
		return &exitError{exitInterrupted, errors.New("interrupted; every injected fault was reverted")}
	case !out.Passed:
		return &exitError{exitFailed, errors.New("certification failed: see the results above and the bundle")}
	}
	return nil
}
