package main

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/certkit/certkit/reports/bundle"
)

// Exit codes of `certkit bundle verify`.
const (
	exitCorrupt    = 1 // corrupt or tampered: checksums, schema, signature, malformed results
	exitIncomplete = 3 // intact so far, but not a whole run: still staged, or required tests missing
)

func bundleCmd() *cobra.Command {
	c := &cobra.Command{Use: "bundle", Short: "Verify, seal, sign and show submission bundles"}
	var pubkeyFile string
	verify := &cobra.Command{
		Use:   "verify FILE",
		Short: "Check a bundle: integrity, schema, signature, completeness",
		Long: `Check a submission bundle the way a reviewer must before trusting it:
every file present and unmodified and nothing extra; the manifest's schema;
results.json, junit.xml and each test's result.json well-formed and in
agreement; manifest.sig (if any) valid, and with --pubkey made by that key;
every required test of the catalog present, and none skipped except with a
reason starting "` + bundle.SkipReasonUnsupported + `".

FILE may be a run's bundle path whose run did not finish (only FILE.partial/
exists) or that staging directory itself: it is reported as incomplete, and
` + "`certkit bundle finalize FILE`" + ` seals it.

Exit status: 0 intact (complete, or finalized after the run died: the output
says which), 1 corrupt or tampered (or unreadable), 2 the command could not
run (bad flags, unreadable key file), 3 incomplete.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var opts bundle.VerifyOptions
			if pubkeyFile != "" {
				pub, err := bundle.LoadPublicKey(pubkeyFile)
				if err != nil {
					return &exitError{exitSetup, err}
				}
				opts.PublicKey = pub
			}
			opts.Catalog = catalogRequirements
			c, err := bundle.Check(args[0], opts)
			var inc *bundle.IncompleteError
			switch {
			case errors.As(err, &inc):
				if c != nil && c.Staging == nil {
					describe(cmd.OutOrStdout(), args[0], c, "incomplete")
				}
				return &exitError{exitIncomplete, err}
			case err != nil:
				return &exitError{exitCorrupt, err}
			}
			describe(cmd.OutOrStdout(), args[0], c, "intact")
			return nil
		},
	}
	verify.Flags().StringVar(&pubkeyFile, "pubkey", "", "require a signature by this ed25519 public key (PEM, from certkit bundle keygen)")

	var signKeyFile string
	finalize := &cobra.Command{
		Use:   "finalize FILE",
		Short: "Seal the staging directory of a run that died (FILE or FILE.partial)",
		Long: `Seal the evidence a killed or crashed run left in FILE.partial/ into the
bundle FILE. The bundle records that it was finalized (completeness
"finalized"); every test the run did not judge, in progress when it died or
required and never reached, gets an error result whose reason starts with
"` + bundle.NoVerdictReason + `". Do not finalize a run that is still going.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var key ed25519.PrivateKey
			if signKeyFile != "" {
				k, err := bundle.LoadPrivateKey(signKeyFile)
				if err != nil {
					return &exitError{exitSetup, err}
				}
				key = k
			}
			m, err := bundle.Finalize(args[0], bundle.FinalizeOptions{ToolVersion: version, SignKey: key})
			if err != nil {
				return &exitError{exitCorrupt, err}
			}
			p := strings.TrimSuffix(args[0], bundle.StagingSuffix)
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "%s: finalized (%d files; run last wrote at %s)\n", p, len(m.Files), m.Finalization.LastWriteAt.Format(time.RFC3339))
			if len(m.Finalization.NoVerdict) > 0 {
				fmt.Fprintf(out, "recorded as error (no verdict): %s\n", strings.Join(m.Finalization.NoVerdict, ", "))
			}
			fmt.Fprintln(out, p)
			return nil
		},
	}
	finalize.Flags().StringVar(&signKeyFile, "sign-key", "", "sign the sealed bundle with this ed25519 private key (PEM)")

	var keyOut string
	keygen := &cobra.Command{
		Use:   "keygen",
		Short: "Make an ed25519 key pair for signing bundles",
		Long: `Write a new ed25519 key pair: PREFIX.key (PKCS #8 PEM, mode 0600) signs
bundles (certkit run --sign-key, certkit bundle finalize --sign-key);
PREFIX.pub (PKIX PEM) goes to reviewers (certkit bundle verify --pubkey).
Existing files are never replaced.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			id, err := bundle.WriteKeyPair(keyOut)
			if err != nil {
				return &exitError{exitSetup, err}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "private key %s.key\npublic key %s.pub\nkey id %s\n", keyOut, keyOut, id)
			return nil
		},
	}
	keygen.Flags().StringVar(&keyOut, "out", "certkit-signing", "path prefix of the key files")

	var asJSON bool
	show := &cobra.Command{
		Use:   "show FILE",
		Short: "Show the results recorded in a bundle",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			b, err := bundle.Read(args[0])
			if err != nil {
				if _, serr := os.Stat(args[0] + bundle.StagingSuffix); serr == nil {
					return &exitError{exitIncomplete, fmt.Errorf("%s: the run did not finish; its evidence is staged in %s%s/: seal it with certkit bundle finalize %s", args[0], args[0], bundle.StagingSuffix, args[0])}
				}
				return &exitError{exitCorrupt, err}
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
	c.AddCommand(verify, finalize, keygen, show, replayCmd())
	return c
}

// describe prints what verify established, one fact a line.
func describe(w io.Writer, path string, c *bundle.Checked, state string) {
	m := c.Manifest
	switch {
	case m.Completeness == bundle.CompletenessFinalized:
		state += ", finalized after the run died"
		if f := m.Finalization; f != nil && !f.LastWriteAt.IsZero() {
			state += "; last evidence " + f.LastWriteAt.Format(time.RFC3339)
		}
	default:
		state += ", " + m.Completeness
	}
	catalog := m.CatalogVersion
	if catalog == "" {
		catalog = "-"
	}
	fmt.Fprintf(w, "%s: %s (%d files, schema %d, certkit %s, catalog %s)\n", path, state, len(m.Files), m.SchemaVersion, printable(m.ToolVersion), printable(catalog))
	fmt.Fprintf(w, "tests: %d passed, %d failed, %d skipped, %d error", c.Passed, c.Failed, c.Skipped, c.Errors)
	switch {
	case len(m.Required) == 0:
		fmt.Fprint(w, "; no required list: completeness not checked")
	case c.CatalogKnown:
		fmt.Fprintf(w, "; all %d required tests of catalog %s recorded", len(m.Required), printable(m.CatalogVersion))
	default:
		fmt.Fprintf(w, "; all %d tests the manifest requires recorded (catalog %s unknown to this certkit)", len(m.Required), printable(m.CatalogVersion))
	}
	fmt.Fprintln(w)
	if f := m.Finalization; f != nil && len(f.NoVerdict) > 0 {
		fmt.Fprintf(w, "no verdict (recorded as error by finalize): %s\n", printable(strings.Join(f.NoVerdict, ", ")))
	}
	switch {
	case c.Signer == "":
		fmt.Fprintln(w, "signature: none")
	case c.Trusted:
		fmt.Fprintf(w, "signature: valid, by the trusted key %s\n", c.Signer)
	default:
		fmt.Fprintf(w, "signature: valid, by key %s (not checked against a trusted key: pass --pubkey)\n", c.Signer)
	}
}

// catalogRequirements tells Check which tests a catalog version requires.
// This certkit knows only its own catalog version.
var catalogRequirements func(version string) ([]string, bool)

// printable keeps bundle-supplied text from sending escape sequences to the terminal.
func printable(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return '?'
		}
		return r
	}, s)
}

func randomToken() string {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return hex.EncodeToString(b)
}
