package bundle

import (
	"strings"
	"testing"
	"time"
)

func TestCommandLogPath(t *testing.T) {
	for _, tc := range []struct{ host, cmd, want string }{
		{"esx-01", "esxcli storage core path list", "hosts/esx-01/commands/esxcli_storage_core.txt"},
		{"esx-01", "esxcli storage nmp device list -d naa.600", "hosts/esx-01/commands/esxcli_storage_nmp.txt"},
		{"esx-01", "esxcli --formatter=xml iscsi session list", "hosts/esx-01/commands/esxcli_iscsi_session.txt"},
		{"esx-01", "esxcli --formatter csv iscsi adapter param get -A vmhba64", "hosts/esx-01/commands/esxcli_iscsi_adapter.txt"},
		{"esx-01", "/bin/localcli system version get", "hosts/esx-01/commands/localcli_system_version.txt"},
		{"esx-01", "esxcli", "hosts/esx-01/commands/esxcli.txt"},
		{"127.0.0.1:2201", "vmkfstools -P /vmfs/volumes/ds1", "hosts/127.0.0.1_2201/commands/vmkfstools.txt"},
	} {
		got, err := CommandLogPath(tc.host, tc.cmd)
		if err != nil || got != tc.want {
			t.Errorf("CommandLogPath(%q, %q) = %q, %v; want %q", tc.host, tc.cmd, got, err, tc.want)
		}
	}
	for _, tc := range []struct{ host, cmd, want string }{
		{"esx-01", "  ", "host esx-01: empty command"},
		{"..", "esxcli", "host ..: .. cannot be used as a directory name"},
		{"", "esxcli", `host "": "" cannot be used`},
	} {
		if _, err := CommandLogPath(tc.host, tc.cmd); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("CommandLogPath(%q, %q) error = %v, want %q", tc.host, tc.cmd, err, tc.want)
		}
	}
}

func TestCommandLogRoundTrip(t *testing.T) {
	start := time.Date(2026, 1, 2, 15, 4, 5, 123456789, time.UTC)
	in := []Command{
		{Start: start, Duration: 12 * time.Millisecond, Command: "esxcli storage core path list", Output: []byte("a\nb\n")},
		// Output that looks like a header, has no final newline, or is empty must not confuse the parser.
		{Start: start.Add(time.Second), Command: `echo "### x"`, ExitCode: 255, Output: []byte("### 2026 exit=0 duration=0s bytes=0 cmd=\"fake\"\nno newline")},
		{Start: start.Add(2 * time.Second), Command: "true", Output: nil},
	}
	var log []byte
	for _, c := range in {
		log = append(log, FormatCommand(c)...)
	}
	if first := strings.SplitN(string(log), "\n", 2)[0]; first != `### 2026-01-02T15:04:05.123456789Z exit=0 duration=12ms bytes=4 cmd="esxcli storage core path list"` {
		t.Errorf("header line = %s", first)
	}
	out, err := ParseCommandLog(log)
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != len(in) {
		t.Fatalf("parsed %d commands, want %d", len(out), len(in))
	}
	for i := range in {
		if !out[i].Start.Equal(in[i].Start) || out[i].Duration != in[i].Duration || out[i].Command != in[i].Command ||
			out[i].ExitCode != in[i].ExitCode || string(out[i].Output) != string(in[i].Output) {
			t.Errorf("command %d: got %+v, want %+v", i, out[i], in[i])
		}
	}
	for _, bad := range []string{
		string(log[:len(log)-3]),
		"garbage\n",
		"### 2026-01-02T15:04:05Z exit=0 duration=1s bytes=-1 cmd=\"x\"\n",
		"### 2026-01-02T15:04:05Z exit=0 duration=1s bytes=99 cmd=\"x\"\nshort\n",
		"### not-a-time exit=0 duration=1s bytes=0 cmd=\"x\"\n\n",
	} {
		if _, err := ParseCommandLog([]byte(bad)); err == nil || !strings.HasPrefix(err.Error(), "command log: offset ") {
			t.Errorf("ParseCommandLog(%q) error = %v", bad, err)
		}
	}
}

func TestRedactCommand(t *testing.T) {
	for in, want := range map[string]string{
		"esxcli iscsi adapter auth chap set -A vmhba64 --secret=abc --level=required":  "esxcli iscsi adapter auth chap set -A vmhba64 --secret=REDACTED --level=required",
		"esxcli iscsi adapter auth chap set -A vmhba64 -N user -S abc":                 "esxcli iscsi adapter auth chap set -A vmhba64 -N user -S REDACTED",
		"esxcli iscsi adapter target portal auth chap set --mutual-secret xyz -A v":    "esxcli iscsi adapter target portal auth chap set --mutual-secret REDACTED -A v",
		"esxcli --server h --password pw storage core device list":                     "esxcli --server h --password REDACTED storage core device list",
		"esxcli storage core path list -p vmhba64:C0:T0:L0":                            "esxcli storage core path list -p vmhba64:C0:T0:L0",
		"esxcli   storage  core   device list":                                         "esxcli   storage  core   device list",
		"esxcli storage nmp psp roundrobin deviceconfig set -S x -d naa.1 --type=iops": "esxcli storage nmp psp roundrobin deviceconfig set -S x -d naa.1 --type=iops",
	} {
		if got := RedactCommand(in); got != want {
			t.Errorf("RedactCommand(%q)\n got %q\nwant %q", in, got, want)
		}
	}
}

func TestRedactYAML(t *testing.T) {
	in := `# lab
hosts:
  - name: esx-01 # first
    password: hunter2
    chap: {name: iqn.x, secret: abc}
token: &tok t0k
copy: *tok
api:
  credentials:
    user: root
    key: x
`
	out, err := RedactYAML([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	s := string(out)
	for _, secret := range []string{"hunter2", "abc", "t0k", "root"} {
		if strings.Contains(s, secret) {
			t.Errorf("%q not redacted:\n%s", secret, s)
		}
	}
	for _, keep := range []string{"# lab", "# first", "name: esx-01", "iqn.x", "copy: *tok"} {
		if !strings.Contains(s, keep) {
			t.Errorf("%q lost:\n%s", keep, s)
		}
	}
	if out, err := RedactYAML(nil); err != nil || len(out) != 0 {
		t.Errorf("RedactYAML(nil) = %q, %v", out, err)
	}
}
