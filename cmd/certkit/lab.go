package main

import (
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/certkit/certkit/fixtures/labs"
)

func labCmd() *cobra.Command {
	c := &cobra.Command{Use: "lab", Short: "Run lab stand-ins"}
	var dir, defect string
	var hosts int
	up := &cobra.Command{
		Use:   "up",
		Short: "Start the embedded lab and keep it running until interrupted",
		Long: `Start the embedded lab (an emulated ESXi host and a software array on
loopback), write its lab profile to DIR/lab.yaml (it holds the lab's SSH
password and control token: mode 0600), and serve until SIGINT/SIGTERM.
Another shell can then run: certkit run --lab DIR/lab.yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if err := os.MkdirAll(dir, 0o700); err != nil {
				return err
			}
			l, err := labs.StartEmbedded(ctx, labs.Options{Dir: dir, HostDefect: defect, Hosts: hosts})
			if err != nil {
				return err
			}
			defer l.Close()
			b, err := l.Profile.Marshal()
			if err != nil {
				return err
			}
			path := filepath.Join(dir, "lab.yaml")
			if err := os.WriteFile(path, b, 0o600); err != nil {
				return fmt.Errorf("writing lab profile: %w", err)
			}
			for _, h := range l.Profile.Hosts {
				fmt.Fprintf(cmd.OutOrStdout(), "host %s: ssh %s (known_hosts %s), vSphere API %s\n", h.Name, h.SSH.Address, h.SSH.KnownHosts, l.VSphere[h.Name])
			}
			for _, a := range l.Profile.Arrays {
				fmt.Fprintf(cmd.OutOrStdout(), "array %s: control %s\n", a.Name, a.Control.URL)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "lab ready: %s\n", path)
			<-ctx.Done()
			return nil
		},
	}
	up.Flags().StringVar(&dir, "dir", "out/lab", "directory for the lab profile, host keys and known_hosts")
	up.Flags().StringVar(&defect, "host-defect", "", "emulated host defect (negative control); see certkit run --help")
	up.Flags().IntVar(&hosts, "hosts", 1, fmt.Sprintf("number of emulated hosts (1..%d), esx-01, esx-02, ...", labs.MaxHosts))
	c.AddCommand(up)
	return c
}
