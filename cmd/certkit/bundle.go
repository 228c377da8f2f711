package main

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/certkit/certkit/reports/bundle"
)

func bundleCmd() *cobra.Command {
	c := &cobra.Command{Use: "bundle", Short: "Verify and show submission bundles"}
	verify := &cobra.Command{
		Use:   "verify FILE",
		Short: "Check a bundle's integrity: every file present, unmodified, and nothing extra",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			m, err := bundle.Verify(args[0])
			if err != nil {
				return &exitError{1, err}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: intact (%d files, schema %d, certkit %s)\n",
				args[0], len(m.Files), m.SchemaVersion, m.ToolVersion)
			return nil
		},
	}
	var asJSON bool
	show := &cobra.Command{
		Use:   "show FILE",
		Short: "Show the results recorded in a bundle",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			b, err := bundle.Read(args[0])
			if err != nil {
				return &exitError{1, err}
			}
			if !asJSON {
				return bundle.ShowText(cmd.OutOrStdout(), b)
			}
			out, err := bundle.ShowJSON(b)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), string(out))
			return err
		},
	}
	show.Flags().BoolVar(&asJSON, "json", false, `print {"tests":[{"id","status","measurements"}]}`)
	c.AddCommand(verify, show, replayCmd())
	return c
}

func randomToken() string {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return hex.EncodeToString(b)
}
