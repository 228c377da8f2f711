package bundle

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"encoding/xml"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Canary secrets, each with characters that JSON, XML, YAML, Go quoting or
// URLs would encode differently, so a leak in any encoding is caught.
var canaries = map[string]string{
	"ssh password": `Canary-pw"<&>'\1`,
	"CHAP secret":  "canary-chap-secret-7f3a",
	"token":        "canary+token/with spaces?=",
}

// encodings are the forms a scan looks for besides the raw secret.
func encodings(s string) []string {
	var j bytes.Buffer
	json.NewEncoder(&j).Encode(s)
	js, _ := json.Marshal(s)
	var x bytes.Buffer
	xml.EscapeText(&x, []byte(s))
	q := strconv.Quote(s)
	return []string{s, strings.Trim(strings.TrimSpace(j.String()), `"`), strings.Trim(string(js), `"`), x.String(),
		q[1 : len(q)-1], url.QueryEscape(s), url.PathEscape(s)}
}

// scanForCanaries fails the test for every canary, in any encoding, in data.
func scanForCanaries(t *testing.T, where string, data []byte) {
	t.Helper()
	for what, s := range canaries {
		for _, form := range encodings(s) {
			if i := bytes.Index(data, []byte(form)); i >= 0 {
				t.Errorf("%s holds the %s (as %q) at byte %d: …%q…", where, what, form, i, data[max(0, i-40):min(len(data), i+len(form)+40)])
			}
		}
	}
}

// No secret reaches a bundle: canaries are planted in the lab profile
// (under secret keys and elsewhere), in command lines and their output, in
// logs, evidence and results; every byte of the decompressed archive, and
// of the staging directory while the run goes, is scanned for them.
func TestNoSecretReachesTheBundle(t *testing.T) {
	pw, chap, token := canaries["ssh password"], canaries["CHAP secret"], canaries["token"]
	profile := "name: canary-lab\n" +
		"hosts:\n  - name: esx-01\n    ssh:\n      address: 127.0.0.1:22\n      user: root\n      password: " + strconv.Quote(pw) + "\n" +
		"    chap:\n      name: iqn.1998-01.com.vmware:esx-01\n      secret: " + chap + "\n" +
		"    notes: 'the old password was " + strings.ReplaceAll(pw, "'", "''") + "'\n" +
		"arrays:\n  - name: array-a\n    control:\n      url: http://admin:" + url.QueryEscape(token) + "@127.0.0.1:9000\n      token: " + strconv.Quote(token) + "\n"
	p := filepath.Join(t.TempDir(), "canary.tgz")
	w, err := Create(p, Meta{
		ToolVersion: "v1", CatalogVersion: "c", Required: []string{"chap/login"},
		Profile: []byte(profile),
		Lab:     map[string]any{"name": "canary-lab", "login": "root/" + pw, "chap_secret": chap},
		Hosts:   map[string]Component{"esx-01": {Version: "8.0.3", Extra: map[string]string{"motd": "token=" + token}}},
		Secrets: []string{pw, chap, token},
		Now:     newClock().Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Date(2026, 1, 2, 15, 5, 0, 0, time.UTC)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []Command{
		{Command: "esxcli iscsi adapter auth chap set -A vmhba64 --direction=uni --level=required --authname=iqn.x --secret=" + chap},
		{Command: "esxcli iscsi adapter auth chap set -A vmhba64 -N iqn.x -S " + chap},
		{Command: "esxcli iscsi adapter target portal auth chap set --mutual-secret " + chap + " -A vmhba64"},
		{Command: "esxcli --server 10.0.0.1 --username root --password " + strconv.Quote(pw) + " storage core path list"},
		{Command: "curl -H 'Authorization: Bearer " + token + "' http://127.0.0.1:9000/v1/info", Output: []byte(`{"token":"` + token + `"}`)},
		{Command: "esxcli iscsi adapter auth chap get -A vmhba64", Output: []byte("   Name: iqn.x\n   Secret: " + chap + "\n")},
	} {
		c.Start = start
		must(w.LogCommand("esx-01", c))
	}
	must(w.AppendFile("hosts/esx-01/var/log/vmkernel.log", []byte("2026-01-02T15:05:01Z cpu0:1)iscsi: login with secret "+chap+" failed\n")))
	must(w.WriteJSON("tests/chap/login/"+EvidenceFile, map[string]any{"chap": map[string]string{"name": "iqn.x", "secret": chap}, "password": pw}))
	must(w.AddResult(TestResult{ID: "chap/login", Name: "CHAP login as root:" + pw, Status: StatusFailed,
		Reason: "login with secret " + chap + " rejected; token " + token, Start: start, End: start.Add(time.Second),
		Measurements: map[string]Measurement{"login_seconds": {Value: 1, Unit: "s"}}}))
	if err := w.WriteFile("tests/"+chap+"/x.txt", nil); err == nil || strings.Contains(err.Error(), chap) {
		t.Errorf("a file named after a secret: %v", err)
	}

	// While the run goes, the staging directory holds no secret either.
	err = filepath.WalkDir(w.StagingDir(), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		scanForCanaries(t, "staged "+p, append([]byte(p+"\n"), data...))
		return nil
	})
	must(err)
	must(w.Close())

	raw, err := os.ReadFile(p)
	must(err)
	zr, err := gzip.NewReader(bytes.NewReader(raw))
	must(err)
	tarBytes, err := io.ReadAll(zr)
	must(err)
	scanForCanaries(t, "the decompressed archive", tarBytes)
	scanForCanaries(t, "the compressed archive", raw)

	// Redaction kept the evidence readable: the command logs still parse
	// and say what was run.
	b, err := Read(p)
	must(err)
	n := 0
	tr := tar.NewReader(bytes.NewReader(tarBytes))
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		must(err)
		if strings.Contains(hdr.Name, "/commands/") {
			data, _ := io.ReadAll(tr)
			cmds, err := ParseCommandLog(data)
			must(err)
			n += len(cmds)
		}
	}
	if n != 6 {
		t.Errorf("%d commands in the logs, want 6", n)
	}
	if r := b.Results()[0]; r.Reason != "login with secret REDACTED rejected; token REDACTED" {
		t.Errorf("reason = %q", r.Reason)
	}
}

func TestSecretsMustBeLongEnoughToScrub(t *testing.T) {
	_, err := Create(filepath.Join(t.TempDir(), "x.tgz"), Meta{ToolVersion: "v1", Secrets: []string{"", "abc"}})
	if err == nil || !strings.Contains(err.Error(), "secret #2 is 3 bytes: too short") {
		t.Errorf("Create with a 3-byte secret: %v", err)
	}
}
