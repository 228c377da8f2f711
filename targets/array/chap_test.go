package array_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/certkit/certkit/iscsi/initiator"
	"github.com/certkit/certkit/targets/array"
)

// CHAP and the ACL from the array config to the wire: the YAML, certkit's
// initiator, and libiscsi's tools as an independent initiator.

const (
	chapUser   = "esx-hosts"
	chapSecret = "array-chap-secret-1"
	chapArray  = "array-chap"
	chapMutual = "array-mutual-secret"
	libiscsiIQ = "iqn.2024-01.io.certkit:libiscsi"
)

func chapConfig(name string, mutual bool, acl ...string) array.Config {
	cfg := config(name)
	cfg.Auth = &array.AuthConfig{CHAP: &array.CHAPConfig{Name: chapUser, Secret: chapSecret}}
	if mutual {
		cfg.Auth.CHAP.MutualName, cfg.Auth.CHAP.MutualSecret = chapArray, chapMutual
	}
	cfg.ACL = acl
	return cfg
}

func TestAuthConfigFromYAML(t *testing.T) {
	t.Setenv("CERTKIT_TEST_CHAP", chapSecret)
	t.Setenv("CERTKIT_TEST_MUTUAL", chapMutual)
	t.Setenv("CERTKIT_TEST_SHORT", "short")
	base := `
name: a1
target: iqn.2024-01.io.certkit:a1
luns: [{id: 0, size: 4MiB}]
controllers: [{name: A, portals: [{listen: "127.0.0.1:0"}]}]
`
	good := base + `auth: {chap: {name: esx-hosts, secret_env: CERTKIT_TEST_CHAP, mutual_name: array-a, mutual_secret_env: CERTKIT_TEST_MUTUAL}}
acl: [iqn.1998-01.com.vmware:esx-01-1a2b3c4d]
`
	c, err := array.Parse([]byte(good), "good.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.Auth.CHAP.SecretEnv != "CERTKIT_TEST_CHAP" || len(c.ACL) != 1 {
		t.Errorf("parsed %+v", c)
	}
	cases := []struct{ auth, want string }{
		{`auth: {}`, "auth: no chap"},
		{`auth: {chap: {secret_env: CERTKIT_TEST_CHAP}}`, "auth.chap.name: empty"},
		{`auth: {chap: {name: n}}`, "auth.chap.secret_env: not set"},
		{`auth: {chap: {name: n, secret_env: CERTKIT_TEST_UNSET}}`, "environment variable CERTKIT_TEST_UNSET is not set"},
		{`auth: {chap: {name: n, secret_env: CERTKIT_TEST_SHORT}}`, "auth.chap.secret_env CERTKIT_TEST_SHORT: the secret is 5 bytes; want 12..255"},
		{`auth: {chap: {name: n, secret: ` + chapSecret + `, secret_env: CERTKIT_TEST_CHAP}}`, "auth.chap.secret and auth.chap.secret_env are both set"},
		{`auth: {chap: {name: n, secret: ` + strings.Repeat("x", 256) + `}}`, "auth.chap.secret: the secret is 256 bytes"},
		{`auth: {chap: {name: n, secret_env: CERTKIT_TEST_CHAP, mutual_secret_env: CERTKIT_TEST_MUTUAL}}`, "auth.chap.mutual_name: empty"},
		{`auth: {chap: {name: n, secret_env: CERTKIT_TEST_CHAP, mutual_name: m}}`, "auth.chap.mutual_secret_env: not set"},
		{`auth: {chap: {name: n, secret_env: CERTKIT_TEST_CHAP, mutual_name: m, mutual_secret_env: CERTKIT_TEST_CHAP}}`, "different secret in each direction"},
		{`auth: {chap: {name: n, secret_env: CERTKIT_TEST_CHAP, sekret: x}}`, "field sekret not found"},
		{`acl: [ESX-01]`, `acl[0] "ESX-01": want a lowercase initiator name`},
		{`acl: [iqn.1998-01.com.vmware:esx-01, iqn.1998-01.com.vmware:esx-01]`, "acl[1] \"iqn.1998-01.com.vmware:esx-01\": listed twice"},
	}
	for _, tc := range cases {
		_, err := array.Parse([]byte(base+tc.auth+"\n"), "bad.yaml")
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s:\n%v\nwant an error with %q", tc.auth, err, tc.want)
			continue
		}
		if strings.Contains(err.Error(), chapSecret) || strings.Contains(err.Error(), chapMutual) {
			t.Errorf("error shows a secret: %v", err)
		}
	}
	if s := fmt.Sprintf("%v %+v %#v", *c.Auth.CHAP, *c.Auth.CHAP, *c.Auth.CHAP); strings.Contains(s, "CERTKIT_TEST_CHAP") && strings.Contains(s, chapSecret) {
		t.Errorf("formatting shows a secret: %s", s)
	}
}

func TestCHAPArrayWithCertkitsInitiator(t *testing.T) {
	cfg := chapConfig("chapgo", true, initiatorIQN)
	a := startArray(t, cfg, array.Options{})
	info, err := json.Marshal(a.Info())
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(info), chapSecret) || strings.Contains(string(info), chapMutual) {
		t.Errorf("Info shows a secret: %s", info)
	}
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	creds := &initiator.CHAP{Name: chapUser, Secret: chapSecret, MutualName: chapArray, MutualSecret: chapMutual}
	targets, err := initiator.DiscoverWith(ctx, initiator.Options{InitiatorName: initiatorIQN, Address: portalAddr(a, "A0"), CHAP: creds})
	if err != nil || len(targets) != 1 {
		t.Fatalf("discovery: %+v %v", targets, err)
	}
	for i, p := range targets[0].Portals { // through the fault proxy and direct
		s, err := initiator.Login(ctx, initiator.Options{InitiatorName: initiatorIQN, TargetName: cfg.Target, Address: p.Address, ISID: [6]byte{0x80, 0, 0, 0, 3, byte(i)}, CHAP: creds})
		if err != nil {
			t.Fatalf("login via %s: %v", p.Address, err)
		}
		if _, err := s.ReportLUNs(ctx); err != nil {
			t.Errorf("REPORT LUNS via %s: %v", p.Address, err)
		}
		s.Close()
	}
	var le *initiator.LoginError
	_, err = initiator.Login(ctx, initiator.Options{InitiatorName: initiatorIQN, TargetName: cfg.Target, Address: portalAddr(a, "B0"), CHAP: &initiator.CHAP{Name: chapUser, Secret: "wrong-secret-12"}})
	if !errors.As(err, &le) || le.Status() != 0x0201 {
		t.Errorf("wrong secret: %v; want Login status 0x0201", err)
	}
	_, err = initiator.Login(ctx, initiator.Options{InitiatorName: "iqn.2024-01.io.certkit:stranger", TargetName: cfg.Target, Address: portalAddr(a, "B0"), CHAP: creds})
	if !errors.As(err, &le) || le.Status() != 0x0202 {
		t.Errorf("initiator outside the ACL: %v; want Login status 0x0202", err)
	}
}

// libiscsi takes CHAP credentials in the portal URL,
// iscsi://<user>%<password>@<host>:<port>, and the target's (mutual) ones
// from LIBISCSI_CHAP_TARGET_USERNAME and LIBISCSI_CHAP_TARGET_PASSWORD.
func TestCHAPArrayWithLibiscsi(t *testing.T) {
	if _, err := exec.LookPath("iscsi-ls"); err != nil {
		t.Skip("iscsi-ls not installed: apt-get install -y libiscsi-bin")
	}
	ls := func(t *testing.T, url string, env ...string) (string, error) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), toolTimeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, "iscsi-ls", "-i", libiscsiIQ, "-s", url)
		cmd.Env = append(os.Environ(), env...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	luns := regexp.MustCompile(`Lun:0\s+Type:DIRECT_ACCESS[\s\S]*Lun:7\s+Type:DIRECT_ACCESS`)

	t.Run("one-way", func(t *testing.T) {
		a := startArray(t, chapConfig("chaplibiscsi", false, libiscsiIQ), array.Options{})
		addr := portalAddr(a, "A0")
		out, err := ls(t, "iscsi://"+chapUser+"%"+chapSecret+"@"+addr)
		if err != nil || !luns.MatchString(out) {
			t.Fatalf("iscsi-ls with the right secret: %v\n%s", err, out)
		}
		if out, err := ls(t, "iscsi://"+chapUser+"%wrong-secret-12@"+addr); err == nil || luns.MatchString(out) {
			t.Errorf("iscsi-ls with a wrong secret listed the LUNs:\n%s", out)
		}
		if out, err := ls(t, "iscsi://"+addr); err == nil || luns.MatchString(out) {
			t.Errorf("iscsi-ls without CHAP listed the LUNs:\n%s", out)
		}
	})
	t.Run("mutual", func(t *testing.T) {
		a := startArray(t, chapConfig("chaplibiscsim", true), array.Options{})
		url := "iscsi://" + chapUser + "%" + chapSecret + "@" + portalAddr(a, "B0")
		out, err := ls(t, url, "LIBISCSI_CHAP_TARGET_USERNAME="+chapArray, "LIBISCSI_CHAP_TARGET_PASSWORD="+chapMutual)
		if err != nil || !luns.MatchString(out) {
			t.Fatalf("iscsi-ls with mutual CHAP: %v\n%s", err, out)
		}
		out, err = ls(t, url, "LIBISCSI_CHAP_TARGET_USERNAME="+chapArray, "LIBISCSI_CHAP_TARGET_PASSWORD=not-the-arrays-1")
		if err == nil || luns.MatchString(out) {
			t.Errorf("iscsi-ls accepted the array with a wrong mutual secret:\n%s", out)
		}
	})
}
