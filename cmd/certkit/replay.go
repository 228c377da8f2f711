package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/certkit/certkit/reports/bundle"
	"github.com/certkit/certkit/suites"
)

func replayCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "replay FILE",
		Short: "Re-derive every verdict from a bundle's raw evidence and compare it with the recorded one",
		Long: `Re-derive every verdict from a bundle's raw evidence (esxcli outputs,
dd reads, fault timeline) with the same judging code a run uses, without a
lab, and report every test whose recorded result the evidence does not
support.

Exit status: 0 every recorded verdict stands, 1 a verdict differs or the
bundle does not verify.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			b, err := bundle.Read(args[0])
			if err != nil {
				return &exitError{1, err}
			}
			out := cmd.OutOrStdout()
			differ := 0
			for _, r := range suites.Replay(b) {
				switch {
				case len(r.Differences) > 0:
					differ++
					fmt.Fprintf(out, "DIFFERS  %s\n", r.ID)
					for _, d := range r.Differences {
						fmt.Fprintf(out, "         - %s\n", d)
					}
				case r.Replayed == "":
					fmt.Fprintf(out, "NOT REPLAYED  %s (%s): %s\n", r.ID, r.Recorded, r.Note)
					continue
				default:
					fmt.Fprintf(out, "STANDS   %s: recorded %s, evidence says %s\n", r.ID, r.Recorded, r.Replayed)
				}
				if len(r.Failures) > 0 {
					fmt.Fprintf(out, "         evidence: %s\n", strings.Join(r.Failures, "; "))
				}
			}
			if differ > 0 {
				return &exitError{1, fmt.Errorf("%s: %d recorded verdict(s) not supported by the evidence", args[0], differ)}
			}
			return nil
		},
	}
}
