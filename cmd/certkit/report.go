package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/certkit/certkit/reports/bundle"
	"github.com/certkit/certkit/reports/htmlreport"
)

func reportCmd() *cobra.Command {
	var outDir, pubkeyFile string
	c := &cobra.Command{
		Use:   "report FILE -o DIR",
		Short: "Write a bundle's HTML report for a reviewer's browser",
		Long: `Verify a submission bundle and write its report: DIR/index.html (one
static page: no script, no external asset) and DIR/raw/ (every file of the
bundle, checked again while extracted, linked from the page). The page shows
the verdicts; per test, the expectation against what was measured, a
timeline of path states, faults and I/O, the faults, I/O per path, and links
to the raw captures.

A corrupt or tampered bundle gets no report (exit 1); an incomplete one gets
a report that says so at the top. The last line printed is the page's path.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if outDir == "" {
				return &exitError{exitSetup, errors.New("-o DIR is required: the directory to write the report to")}
			}
			var opts bundle.VerifyOptions
			if pubkeyFile != "" {
				pub, err := bundle.LoadPublicKey(pubkeyFile)
				if err != nil {
					return &exitError{exitSetup, err}
				}
				opts.PublicKey = pub
			}
			opts.Catalog = catalogRequirements
			var st htmlreport.Status
			c, err := bundle.Check(args[0], opts)
			var inc *bundle.IncompleteError
			switch {
			case errors.As(err, &inc) && c != nil && c.Staging != nil:
				return &exitError{exitIncomplete, fmt.Errorf("%w\nno report of an unsealed run: finalize it first", err)}
			case errors.As(err, &inc):
				st.Incomplete = inc.Reasons
			case err != nil:
				return &exitError{exitCorrupt, fmt.Errorf("%w\nno report of a bundle that does not verify", err)}
			}
			st.Signer, st.Trusted, st.CatalogKnown = c.Signer, c.Trusted, c.CatalogKnown
			b, err := bundle.Read(args[0])
			if err != nil {
				return &exitError{exitCorrupt, err}
			}
			index, err := htmlreport.Write(outDir, b, st)
			if err != nil {
				return &exitError{exitSetup, err}
			}
			fmt.Fprintln(cmd.OutOrStdout(), index)
			return nil
		},
	}
	c.Flags().StringVarP(&outDir, "out", "o", "", "directory for index.html and raw/ (must not hold a report already)")
	c.Flags().StringVar(&pubkeyFile, "pubkey", "", "require a signature by this ed25519 public key (PEM)")
	return c
}
