// Command certkit is the storage certification harness: it runs the
// certification catalog against a lab, serves software arrays, and verifies
// and shows submission bundles.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

// version is set at build time (-ldflags "-X main.version=...").
var version = "0.1.0-dev"

// exitError carries a process exit code through cobra.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }

func main() {
	root := &cobra.Command{
		Use:           "certkit",
		Short:         "iSCSI storage certification harness for VMware ESXi",
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version,
	}
	root.AddCommand(runCmd(), labCmd(), targetCmd(), bundleCmd(), catalogCmd(), reportCmd())
	if err := root.Execute(); err != nil {
		code := 2
		var ee *exitError
		if errors.As(err, &ee) {
			code = ee.code
		}
		if err.Error() != "" {
			fmt.Fprintln(os.Stderr, "certkit:", err)
		}
		os.Exit(code)
	}
}
