package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/certkit/certkit/suites"
)

func init() {
	// bundle verify and report check a bundle against the catalog version
	// it names; this certkit knows its own.
	catalogRequirements = func(v string) ([]string, bool) {
		if v != suites.CatalogVersion {
			return nil, false
		}
		return suites.IDs(), true
	}
}

func catalogCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "catalog",
		Short: "List the certification tests by stable ID",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			for _, s := range suites.Catalog() {
				fmt.Fprintf(cmd.OutOrStdout(), "%-32s %s\n", s.ID, s.Title)
			}
		},
	}
}
