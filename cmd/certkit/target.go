package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/certkit/certkit/targets/array"
	"github.com/certkit/certkit/targets/control"
)

func targetCmd() *cobra.Command {
	c := &cobra.Command{Use: "target", Short: "Software iSCSI arrays"}
	c.AddCommand(targetServeCmd(), targetCertsCmd())
	return c
}

func targetServeCmd() *cobra.Command {
	var cfgPath, controlAddr, tokenFile string
	var tlsCert, tlsKey, tlsClientCA string
	var allowRemote bool
	serve := &cobra.Command{
		Use:   "serve",
		Short: "Serve a software array and its control API until interrupted",
		Long: `Serve a software array described by an array config (YAML) and its
authenticated control API. Prints the control URL and every portal
(the address SendTargets advertises) and serves until SIGINT/SIGTERM.

The control token is read from --token-file; if the file does not exist a
random token is generated and written there (mode 0600).

With --tls-cert, --tls-key and --tls-client-ca (all three) the control API
is served over TLS 1.3 and requires mutual TLS: a client must present a
certificate signed by a CA in --tls-client-ca, and the token too.
'certkit target certs' writes a throwaway set to try it.

The control API listens on loopback only unless --allow-remote is given;
serve other hosts with mutual TLS, or on a lab network you trust.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if cfgPath == "" {
				return fmt.Errorf("--config is required: the array config (see targets/array for the format)")
			}
			tlsCfg, err := serverTLSFlags(tlsCert, tlsKey, tlsClientCA)
			if err != nil {
				return err
			}
			cfg, err := array.Load(cfgPath)
			if err != nil {
				return err
			}
			token, err := loadOrCreateToken(tokenFile)
			if err != nil {
				return err
			}
			var opts []control.ServeOption
			if tlsCfg != nil {
				opts = append(opts, control.ServeTLS(tlsCfg))
				if warn := certNamesHost(tlsCfg, tlsCert, controlAddr); warn != "" {
					fmt.Fprintln(cmd.ErrOrStderr(), "certkit: warning:", warn)
				}
			}
			if allowRemote {
				opts = append(opts, control.AllowRemote())
				if tlsCfg == nil {
					fmt.Fprintf(cmd.ErrOrStderr(), "certkit: warning: control API on %s over plain HTTP: its token crosses the network in the clear; serve it with --tls-cert, --tls-key and --tls-client-ca\n", controlAddr)
				}
			}
			arr, err := array.Start(ctx, cfg)
			if err != nil {
				return err
			}
			defer arr.Close()
			srv, err := control.Serve(controlAddr, arr, token, opts...)
			if errors.Is(err, control.ErrNotLoopback) {
				return fmt.Errorf("--control %s is not a loopback address: pass --allow-remote to serve the control API to other hosts (with --tls-cert, --tls-key and --tls-client-ca for mutual TLS)", controlAddr)
			}
			if err != nil {
				return err
			}
			defer srv.Close()
			out := cmd.OutOrStdout()
			if srv.MutualTLS() {
				fmt.Fprintf(out, "array %s: control %s (mutual TLS required: client certificate signed by a CA in %s; token in %s)\n", cfg.Name, srv.URL(), tlsClientCA, tokenFile)
			} else {
				fmt.Fprintf(out, "array %s: control %s (token in %s)\n", cfg.Name, srv.URL(), tokenFile)
			}
			info := arr.Info()
			for _, p := range info.Portals {
				fmt.Fprintf(out, "portal %s: controller %s tpgt %d address %s\n", p.ID, p.Controller, p.TPGT, p.Address)
			}
			for _, t := range info.Targets {
				for _, l := range t.LUNs {
					fmt.Fprintf(out, "target %s: LUN %d %s %d bytes\n", t.IQN, l.ID, l.NAA, l.SizeBytes)
				}
			}
			<-ctx.Done()
			return nil
		},
	}
	f := serve.Flags()
	f.StringVar(&cfgPath, "config", "", "array config file (YAML)")
	f.StringVar(&controlAddr, "control", "127.0.0.1:0", "address of the control API (loopback unless --allow-remote)")
	f.StringVar(&tokenFile, "token-file", "certkit-array.token", "file holding the control API token")
	f.StringVar(&tlsCert, "tls-cert", "", "PEM certificate of the control API (mutual TLS; with --tls-key and --tls-client-ca)")
	f.StringVar(&tlsKey, "tls-key", "", "PEM private key of --tls-cert")
	f.StringVar(&tlsClientCA, "tls-client-ca", "", "PEM CA bundle that client certificates must be signed by")
	f.BoolVar(&allowRemote, "allow-remote", false, "let the control API listen on a non-loopback address (\"--control :7070\" is every interface)")
	return serve
}

// serverTLSFlags loads the mutual-TLS files of target serve: all three
// flags or none.
func serverTLSFlags(cert, key, clientCA string) (*tls.Config, error) {
	var missing []string
	for _, f := range []struct{ name, val string }{{"--tls-cert", cert}, {"--tls-key", key}, {"--tls-client-ca", clientCA}} {
		if f.val == "" {
			missing = append(missing, f.name)
		}
	}
	switch len(missing) {
	case 3:
		return nil, nil
	case 0:
		return control.LoadServerTLS(cert, key, clientCA)
	}
	verb := "are"
	if len(missing) == 1 {
		verb = "is"
	}
	return nil, fmt.Errorf("mutual TLS needs --tls-cert, --tls-key and --tls-client-ca together; %s %s missing ('certkit target certs --dir DIR' writes a throwaway set)",
		strings.Join(missing, " and "), verb)
}

// certNamesHost says why clients will refuse the server certificate for
// the host of addr, "" if they will not (or the host is every interface).
func certNamesHost(cfg *tls.Config, certFile, addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil || host == "" {
		return ""
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		return ""
	}
	if leaf := cfg.Certificates[0].Leaf; leaf != nil && leaf.VerifyHostname(host) != nil {
		return fmt.Sprintf("the certificate in %s does not name %s (it names %s): clients that connect to %s will refuse it; make one that names it ('certkit target certs --host %s')",
			certFile, host, strings.Join(certHosts(leaf), ", "), host, host)
	}
	return ""
}

func certHosts(c *x509.Certificate) []string {
	hosts := append([]string(nil), c.DNSNames...)
	for _, ip := range c.IPAddresses {
		hosts = append(hosts, ip.String())
	}
	if len(hosts) == 0 {
		hosts = []string{"no host"}
	}
	return hosts
}

func targetCertsCmd() *cobra.Command {
	var dir string
	var hosts []string
	var validFor time.Duration
	certs := &cobra.Command{
		Use:   "certs",
		Short: "Write a throwaway CA, server and client certificate for mutual TLS",
		Long: `Write a throwaway mutual-TLS set for the control API of 'certkit target
serve' into --dir: ca.crt, server.crt and server.key (naming every --host),
client.crt and client.key. ECDSA P-256; keys are mode 0600. The CA's key is
not kept, so no other certificate can be issued from this CA; to replace a
certificate, write a new set. Existing files are never overwritten.

Meant to try mutual TLS in a lab without a PKI; use your own CA for
anything that lasts.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if dir == "" {
				return fmt.Errorf("--dir is required: the directory to write the certificates and keys into")
			}
			files, err := control.GenerateCerts(dir, hosts, validFor)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "wrote %s, %s, %s, %s, %s (server certificate for %s, valid until %s)\n",
				files.CA, files.ServerCert, files.ServerKey, files.ClientCert, files.ClientKey,
				strings.Join(hosts, ", "), time.Now().Add(validFor).UTC().Format(time.DateOnly))
			fmt.Fprintf(out, "serve: certkit target serve --config ARRAY.yaml --tls-cert %s --tls-key %s --tls-client-ca %s\n", files.ServerCert, files.ServerKey, files.CA)
			fmt.Fprintf(out, "client: CA %s, certificate %s, key %s\n", files.CA, files.ClientCert, files.ClientKey)
			return nil
		},
	}
	f := certs.Flags()
	f.StringVar(&dir, "dir", "", "directory to write the files into (created 0700)")
	f.StringSliceVar(&hosts, "host", []string{"127.0.0.1", "::1", "localhost"}, "IP address or DNS name clients use in the control URL (repeat or comma-separate)")
	f.DurationVar(&validFor, "valid-for", 365*24*time.Hour, "how long the certificates are valid")
	return certs
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
