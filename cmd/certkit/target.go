package main

import (
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/certkit/certkit/targets/array"
	"github.com/certkit/certkit/targets/control"
)

func targetCmd() *cobra.Command {
	c := &cobra.Command{Use: "target", Short: "Software iSCSI arrays"}
	var cfgPath, controlAddr, tokenFile string
	serve := &cobra.Command{
		Use:   "serve",
		Short: "Serve a software array and its control API until interrupted",
		Long: `Serve a software array described by an array config (YAML) and its
authenticated control API. Prints the control URL and every portal
(the address SendTargets advertises) and serves until SIGINT/SIGTERM.

The control token is read from --token-file; if the file does not exist a
random token is generated and written there (mode 0600).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if cfgPath == "" {
				return fmt.Errorf("--config is required: the array config (see targets/array for the format)")
			}
			cfg, err := array.Load(cfgPath)
			if err != nil {
				return err
			}
			token, err := loadOrCreateToken(tokenFile)
			if err != nil {
				return err
			}
			arr, err := array.Start(ctx, cfg)
			if err != nil {
				return err
			}
			defer arr.Close()
			srv, err := control.Serve(controlAddr, arr, token)
			if err != nil {
				return err
			}
			defer srv.Close()
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "array %s: control %s (token in %s)\n", cfg.Name, srv.URL(), tokenFile)
			for _, p := range arr.Info().Portals {
				fmt.Fprintf(out, "portal %s: controller %s tpgt %d address %s\n", p.ID, p.Controller, p.TPGT, p.Address)
			}
			<-ctx.Done()
			return nil
		},
	}
	serve.Flags().StringVar(&cfgPath, "config", "", "array config file (YAML)")
	serve.Flags().StringVar(&controlAddr, "control", "127.0.0.1:0", "address of the control API (loopback unless you mean otherwise)")
	serve.Flags().StringVar(&tokenFile, "token-file", "certkit-array.token", "file holding the control API token")
	c.AddCommand(serve)
	return c
}

func loadOrCreateToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		t := strings.TrimSpace(string(b))
		if t == "" {
			return "", fmt.Errorf("token file %s is empty: delete it to have a token generated, or write one in it", path)
		}
		return t, nil
	}
	if !os.IsNotExist(err) {
		return "", fmt.Errorf("reading token file: %w", err)
	}
	t := randomToken()
	if err := os.WriteFile(path, []byte(t+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("writing token file: %w", err)
	}
	return t, nil
}
