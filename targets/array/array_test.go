package array_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/certkit/certkit/iscsi"
	"github.com/certkit/certkit/targets/array"
	"github.com/certkit/certkit/targets/control"
	"github.com/certkit/certkit/targets/frontend/frontendtest"
)

// Timings of these tests.
const (
	ioTimeout    = 5 * time.Second
	pollInterval = 5 * time.Millisecond
	toolTimeout  = 20 * time.Second // one libiscsi tool run
	perfSeconds  = 8                // iscsi-perf run: past libiscsi's 5 s NOP-Out
)

const initiatorIQN = "iqn.2024-01.io.certkit:array-test"

// config is a two-controller array: A behind a fault proxy, B plain.
func config(name string) array.Config {
	return array.Config{
		Name:   name,
		Target: "iqn.2024-01.io.certkit:" + name,
		LUNs:   []array.LUN{{ID: 0, Size: "4MiB"}, {ID: 7, Size: "2MiB"}},
		Controllers: []array.Controller{
			{Name: "A", Portals: []array.PortalConfig{{Listen: "127.0.0.1:0", Proxy: "127.0.0.1:0"}}},
			{Name: "B", Portals: []array.PortalConfig{{Listen: "127.0.0.1:0"}}},
		},
	}
}

func startArray(t *testing.T, cfg array.Config, opt array.Options) *array.Array {
	t.Helper()
	if opt.Logf == nil {
		opt.Logf = t.Logf
	}
	a, err := array.StartWith(context.Background(), cfg, opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

func portalAddr(a *array.Array, id string) string {
	for _, p := range a.Info().Portals {
		if p.ID == id {
			return p.Address
		}
	}
	return ""
}

func session(t *testing.T, addr, target string, id byte) *frontendtest.Conn {
	t.Helper()
	c, err := frontendtest.Normal(addr, initiatorIQN, target, [6]byte{0x80, 0, 0, 0, 1, id}, ioTimeout)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestParseNamesTheFieldAndTheFix(t *testing.T) {
	good := `
name: a1
target: iqn.2024-01.io.certkit:a1
luns: [{id: 0, size: 64MiB}, {id: 1, size: 1GiB, backing: file, path: /tmp/x.img}]
controllers:
  - {name: A, portals: [{listen: "127.0.0.1:0", proxy: "127.0.0.1:0"}]}
`
	c, err := array.Parse([]byte(good), "good.yaml")
	if err != nil {
		t.Fatalf("valid config: %v", err)
	}
	if c.LUNs[1].Backing != "file" || c.Controllers[0].Portals[0].Proxy != "127.0.0.1:0" {
		t.Errorf("parsed %+v", c)
	}
	cases := []struct{ yaml, want string }{
		{strings.Replace(good, "name: a1", "name: ''", 1), "name"},
		{strings.Replace(good, "target: iqn.2024-01.io.certkit:a1", "target: array-1", 1), "target \"array-1\": want a lowercase iSCSI name"},
		{strings.Replace(good, "size: 64MiB", "size: 64MB", 1), "luns[0].size: \"64MB\": want a byte count or a binary size like 64MiB"},
		{strings.Replace(good, "size: 64MiB", "size: 1000", 1), "luns[0].size: \"1000\": want a positive multiple of 512"},
		{strings.Replace(good, "{id: 1,", "{id: 0,", 1), "luns[1].id 0: used twice"},
		{strings.Replace(good, "backing: file, path: /tmp/x.img", "backing: file", 1), "luns[1].path: file backing needs a path"},
		{strings.Replace(good, "backing: file", "backing: nvme", 1), "luns[1].backing \"nvme\": want memory or file"},
		{strings.Replace(good, `listen: "127.0.0.1:0",`, `listen: "localhost",`, 1), "controllers[0].portals[0].listen \"localhost\": want host:port"},
		{strings.Replace(good, "controllers:", "controlers:", 1), "field controlers not found"},
		{good + "  - {name: A, portals: [{listen: \"127.0.0.1:0\"}]}\n", "controllers[1].name \"A\": used twice"},
	}
	for _, tc := range cases {
		_, err := array.Parse([]byte(tc.yaml), "bad.yaml")
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "bad.yaml") {
			t.Errorf("error %v\nwant it to name bad.yaml and contain %q", err, tc.want)
		}
	}
	if _, err := array.Load(filepath.Join(t.TempDir(), "missing.yaml")); err == nil || !strings.Contains(err.Error(), "missing.yaml") {
		t.Errorf("Load of a missing file: %v", err)
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"64MiB": 64 << 20, "1GiB": 1 << 30, "512KiB": 512 << 10, "4096": 4096, "2TiB": 2 << 40, "1024B": 1024} {
		if got, err := array.ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "0", "64MB", "1.5GiB", "-512", "100", "9999999TiB"} {
		if _, err := array.ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) accepted", in)
		}
	}
}

func runTool(t *testing.T, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), toolTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return string(out)
}

// libiscsi's tools are an independent initiator: if they see the LUNs and
// iscsi-perf keeps going past its first NOP-Out, the front end holds up.
func TestLibiscsiInitiator(t *testing.T) {
	for _, tool := range []string{"iscsi-ls", "iscsi-inq", "iscsi-readcapacity16", "iscsi-perf", "timeout"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed: apt-get install -y libiscsi-bin", tool)
		}
	}
	var mu sync.Mutex
	nops := map[bool]int{} // NOP-Outs by immediate bit
	cfg := config("libiscsi")
	a := startArray(t, cfg, array.Options{Trace: func(in bool, p *iscsi.PDU) {
		if in && p.Opcode() == iscsi.OpNOPOut && p.ITT() != iscsi.ReservedTag {
			mu.Lock()
			nops[p.Immediate()]++
			mu.Unlock()
		}
	}})
	addr := portalAddr(a, "A0") // through the fault proxy
	url := "iscsi://" + addr + "/" + cfg.Target

	out := runTool(t, "iscsi-ls", "-s", "iscsi://"+addr)
	for _, p := range a.Info().Portals {
		if !strings.Contains(out, fmt.Sprintf("Target:%s Portal:%s,%d", cfg.Target, p.Address, p.TPGT)) {
			t.Errorf("iscsi-ls does not list portal %s,%d:\n%s", p.Address, p.TPGT, out)
		}
	}
	if !regexp.MustCompile(`Lun:0\s+Type:DIRECT_ACCESS`).MatchString(out) || !regexp.MustCompile(`Lun:7\s+Type:DIRECT_ACCESS`).MatchString(out) {
		t.Errorf("iscsi-ls -s does not show LUNs 0 and 7:\n%s", out)
	}
	if out := runTool(t, "iscsi-inq", url+"/0"); !strings.Contains(out, "Peripheral Device Type:DIRECT_ACCESS") || !strings.Contains(out, "Vendor:CERTKIT") {
		t.Errorf("iscsi-inq:\n%s", out)
	}
	if out := runTool(t, "iscsi-readcapacity16", url+"/7"); !strings.Contains(out, "Total size:2097152") {
		t.Errorf("iscsi-readcapacity16 of the 2 MiB LUN 7:\n%s", out)
	}

	out = runTool(t, "timeout", "-s", "INT", "-k", "5", strconv.Itoa(perfSeconds+2),
		"iscsi-perf", "-t", strconv.Itoa(perfSeconds), "-m", "1", "-b", "8", url+"/0")
	// iscsi-perf counts down once a second; a stuck session stops the
	// count early (gotgt's stops at the first NOP-Out, 5 s in).
	if !strings.Contains(out, "00:00:01 - lba") || !strings.Contains(out, "finished.") {
		t.Errorf("iscsi-perf did not run its %d s:\n%s", perfSeconds, out)
	}
	m := regexp.MustCompile(`iops average (\d+)`).FindAllStringSubmatch(out, -1)
	if len(m) == 0 || m[len(m)-1][1] == "0" {
		t.Errorf("iscsi-perf reports no I/O:\n%s", out)
	}
	mu.Lock()
	defer mu.Unlock()
	if nops[false]+nops[true] == 0 {
		t.Errorf("iscsi-perf sent no NOP-Out in %d s; the test did not exercise it", perfSeconds)
	}
	t.Logf("iscsi-perf NOP-Outs: %d non-immediate, %d immediate", nops[false], nops[true])
}

// A LUN has one NAA on every path, derived from array name and LUN id, so
// it survives restarts and matches what the control API reports.
func TestNAAIsStableAcrossPathsAndRestarts(t *testing.T) {
	cfg := config("naa")
	read := func(a *array.Array) map[string]string {
		got := map[string]string{}
		for i, p := range a.Info().Portals {
			c := session(t, p.Address, cfg.Target, byte(i))
			for _, lun := range []int{0, 7} {
				res, err := c.Command(lun, frontendtest.Inquiry(true, 0x83, 512), 512, nil)
				if err != nil || res.CheckGood() != nil {
					t.Fatalf("VPD 0x83 of LUN %d via %s: %v %v", lun, p.ID, err, res)
				}
				naa, err := frontendtest.NAA(res.Data)
				if err != nil {
					t.Fatal(err)
				}
				got[fmt.Sprintf("%s/%d", p.ID, lun)] = naa
			}
			c.Close()
		}
		return got
	}
	a := startArray(t, cfg, array.Options{})
	first := read(a)
	info := a.Info()
	for _, l := range info.Targets[0].LUNs {
		for _, p := range info.Portals {
			if got := first[fmt.Sprintf("%s/%d", p.ID, l.ID)]; got != l.NAA || got != array.NAA(cfg.Name, l.ID) {
				t.Errorf("LUN %d via %s: VPD says %s, Info says %s", l.ID, p.ID, got, l.NAA)
			}
		}
	}
	if first["A0/0"] == first["A0/7"] {
		t.Error("LUNs 0 and 7 share an NAA")
	}
	a.Close()
	b := startArray(t, cfg, array.Options{})
	if again := read(b); fmt.Sprint(again) != fmt.Sprint(first) {
		t.Errorf("NAAs changed across a restart:\n%v\n%v", first, again)
	}
	other := config("naa-other")
	if array.NAA(other.Name, 0) == array.NAA(cfg.Name, 0) {
		t.Error("two arrays give LUN 0 the same NAA")
	}
}

func TestDataRoundTripsThroughGotgt(t *testing.T) {
	dir := t.TempDir()
	cfg := config("data")
	cfg.LUNs = append(cfg.LUNs, array.LUN{ID: 300, Size: "1MiB", Backing: array.BackingFile, Path: filepath.Join(dir, "lun300.img")})
	a := startArray(t, cfg, array.Options{})
	c := session(t, portalAddr(a, "B0"), cfg.Target, 1)
	rng := rand.New(rand.NewSource(3))
	for _, lun := range []int{0, 300} { // memory, and file via flat LUN addressing
		data := make([]byte, 64<<10)
		rng.Read(data)
		if res, err := c.Command(lun, frontendtest.Write10(40, 128), 0, data); err != nil || res.CheckGood() != nil {
			t.Fatalf("LUN %d write: %v %v", lun, err, res)
		}
		res, err := c.Command(lun, frontendtest.Read10(40, 128), len(data), nil)
		if err != nil || res.CheckGood() != nil {
			t.Fatalf("LUN %d read: %v %v", lun, err, res)
		}
		if !bytes.Equal(res.Data, data) {
			t.Errorf("LUN %d: data read back differs", lun)
		}
		if lun == 300 {
			f, err := os.ReadFile(cfg.LUNs[2].Path)
			if err != nil || len(f) != 1<<20 || !bytes.Equal(f[40*512:40*512+len(data)], data) {
				t.Errorf("file backing does not hold the written blocks (len %d, err %v)", len(f), err)
			}
		}
	}
	// Out of range is the SCSI layer's CHECK CONDITION, not a hang.
	res, err := c.Command(7, frontendtest.Read10(4096, 1), 512, nil)
	if err != nil {
		t.Fatal(err)
	}
	if k, asc, _ := res.SenseKey(); res.Status != 2 || k != 5 || asc != 0x21 {
		t.Errorf("read past the end: status %d sense %x/%x, want 05/21 (LBA out of range)", res.Status, k, asc)
	}
}

func TestAbsentLUN(t *testing.T) {
	cfg := config("absent")
	a := startArray(t, cfg, array.Options{})
	c := session(t, portalAddr(a, "B0"), cfg.Target, 1)
	res, err := c.Command(5, frontendtest.Inquiry(false, 0, 96), 96, nil)
	if err != nil || res.CheckGood() != nil || len(res.Data) == 0 || res.Data[0] != 0x7f {
		t.Fatalf("INQUIRY of absent LUN 5: %v %v, want peripheral qualifier 3 / type 1Fh", err, res)
	}
	res, err = c.Command(5, []byte{0, 0, 0, 0, 0, 0}, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if k, asc, _ := res.SenseKey(); res.Status != 2 || k != 5 || asc != 0x25 {
		t.Errorf("TEST UNIT READY of absent LUN 5: sense %x/%x, want 05/25 (LU not supported)", k, asc)
	}
	res, err = c.Command(5, []byte{0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0}, 256, nil)
	if err != nil || res.CheckGood() != nil || !bytes.Contains(res.Data, []byte{0, 7, 0, 0, 0, 0, 0, 0}) {
		t.Errorf("REPORT LUNS via absent LUN 5: %v %v", err, res)
	}
}

func TestFaultsInjectRevertAndRecord(t *testing.T) {
	cfg := config("faults")
	a := startArray(t, cfg, array.Options{})
	var arr control.Array = a
	c := session(t, portalAddr(a, "A0"), cfg.Target, 1)

	before := time.Now()
	rec, err := arr.Inject("A0", "reset")
	if err != nil {
		t.Fatal(err)
	}
	if rec.Portal != "A0" || rec.Kind != "reset" || rec.InjectedAt.Before(before) || rec.RevertedAt != nil || rec.ID == "" {
		t.Errorf("fault record %+v", rec)
	}
	if err := c.WaitClosed(); err != nil {
		t.Errorf("session through A0 after reset: %v", err)
	}
	if f := a.Info().Portals[0].Fault; f != "reset" {
		t.Errorf("Info shows fault %q on A0", f)
	}
	if fs := arr.Faults(); len(fs) != 1 || fs[0].ID != rec.ID {
		t.Errorf("Faults() = %+v", fs)
	}
	for _, tc := range []struct {
		portal, kind string
		class        error
	}{
		{"A0", "blackhole", control.ErrConflict},
		{"Z9", "reset", control.ErrNotFound},
		{"B0", "reset", control.ErrInvalid}, // no proxy
	} {
		if _, err := arr.Inject(tc.portal, tc.kind); !errors.Is(err, tc.class) || !strings.Contains(err.Error(), tc.portal) {
			t.Errorf("Inject(%s, %s): %v, want %v naming the portal", tc.portal, tc.kind, err, tc.class)
		}
	}
	done, err := arr.Revert(rec.ID)
	if err != nil || done.RevertedAt == nil || done.RevertedAt.Before(done.InjectedAt) {
		t.Fatalf("Revert: %+v %v", done, err)
	}
	if _, err := arr.Revert(rec.ID); !errors.Is(err, control.ErrNotFound) {
		t.Errorf("second Revert: %v, want not found", err)
	}
	if len(arr.Faults()) != 0 || a.Info().Portals[0].Fault != "" {
		t.Errorf("after revert: faults %v, portal %+v", arr.Faults(), a.Info().Portals[0])
	}
	ping := session(t, portalAddr(a, "A0"), cfg.Target, 2)
	if res, err := ping.Command(0, []byte{0, 0, 0, 0, 0, 0}, 0, nil); err != nil || res.CheckGood() != nil {
		t.Fatalf("login through A0 after revert: %v %v", err, res)
	}
	if _, err := arr.Inject("A0", "smoke"); !errors.Is(err, control.ErrInvalid) {
		t.Errorf("unknown kind: %v", err)
	}
	again, err := arr.Inject("A0", "blackhole")
	if err != nil || again.ID == rec.ID {
		t.Errorf("second fault: %+v %v, want a new ID", again, err)
	}
}

func TestArraysSideBySide(t *testing.T) {
	a := startArray(t, config("left"), array.Options{})
	b := startArray(t, config("right"), array.Options{})
	for _, x := range []*array.Array{a, b} {
		c := session(t, portalAddr(x, "B0"), x.Target(), 1)
		if res, err := c.Command(7, frontendtest.Read10(0, 1), 512, nil); err != nil || res.CheckGood() != nil {
			t.Fatalf("array %s: %v %v", x.Name(), err, res)
		}
	}
	// The same name twice in one process collides in gotgt's LU map.
	dup := config("left")
	dup.Target = "iqn.2024-01.io.certkit:left-2"
	if _, err := array.Start(context.Background(), dup); err == nil || !strings.Contains(err.Error(), "left") {
		t.Errorf("second array named left: %v", err)
	}
	// and the same IQN twice collides too.
	dup = config("left-2")
	dup.Target = a.Target()
	if _, err := array.Start(context.Background(), dup); err == nil || !strings.Contains(err.Error(), a.Target()) {
		t.Errorf("second array with target %s: %v", a.Target(), err)
	}
	// The failed starts left nothing behind: the original still works.
	c := session(t, portalAddr(a, "A0"), a.Target(), 2)
	if res, err := c.Command(0, frontendtest.Read10(0, 1), 512, nil); err != nil || res.CheckGood() != nil {
		t.Fatalf("array left after failed starts: %v %v", err, res)
	}
}

func TestStartFailsOnBusyAddress(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cfg := config("busy")
	cfg.Controllers[1].Portals[0].Listen = ln.Addr().String()
	if _, err := array.Start(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), ln.Addr().String()) {
		t.Fatalf("Start on a busy address: %v", err)
	}
	cfg = config("busy") // the name is free again
	a := startArray(t, cfg, array.Options{})
	a.Close()
}

func TestCloseReleasesEverything(t *testing.T) {
	base := runtime.NumGoroutine()
	cfg := config("leak")
	a, err := array.Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	var conns []*frontendtest.Conn
	for i, p := range a.Info().Portals {
		c := session(t, p.Address, cfg.Target, byte(i))
		if res, err := c.Command(0, frontendtest.Read10(0, 8), 4096, nil); err != nil || res.CheckGood() != nil {
			t.Fatal(err, res)
		}
		conns = append(conns, c)
	}
	if _, err := a.Inject("A0", "blackhole"); err != nil {
		t.Fatal(err)
	}
	addrs := []string{}
	for _, p := range a.Info().Portals {
		addrs = append(addrs, p.Address)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	for _, c := range conns {
		if err := c.WaitClosed(); err != nil {
			t.Error(err)
		}
	}
	for _, addr := range addrs {
		if c, err := net.DialTimeout("tcp", addr, ioTimeout); err == nil {
			c.Close()
			t.Errorf("%s still accepts connections after Close", addr)
		}
	}
	if _, err := a.Inject("A0", "reset"); err == nil {
		t.Error("Inject after Close succeeded")
	}
	deadline := time.Now().Add(ioTimeout)
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for runtime.NumGoroutine() > base {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("%d goroutines after Close, %d before:\n%s", runtime.NumGoroutine(), base, buf[:runtime.Stack(buf, true)])
		}
		<-tick.C
	}
	// The name, IQN and memory are free for a new array.
	startArray(t, cfg, array.Options{})
}

// TestMain keeps gotgt's routine warnings (every CHECK CONDITION) out of
// test output unless CERTKIT_GOTGT_LOG asks for them.
func TestMain(m *testing.M) {
	if os.Getenv("CERTKIT_GOTGT_LOG") == "" {
		os.Setenv("CERTKIT_GOTGT_LOG", "error")
	}
	os.Exit(m.Run())
}
