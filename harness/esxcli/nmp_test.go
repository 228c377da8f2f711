package esxcli

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestParseSATPListReadsEveryRowOfTheCapture(t *testing.T) {
	satps, err := ParseSATPList(capture(t, capSATPList, "satp list"))
	if err != nil {
		t.Fatal(err)
	}
	if len(satps) != 12 {
		t.Fatalf("%d SATPs, want 12", len(satps))
	}
	if want := (SATP{Name: "VMW_SATP_ALUA", DefaultPSP: "VMW_PSP_MRU", Description: "Supports non-specific arrays that use the ALUA protocol"}); satps[0] != want {
		t.Errorf("first: %+v", satps[0])
	}
	if want := (SATP{Name: "VMW_SATP_DEFAULT_AA", DefaultPSP: "VMW_PSP_FIXED", Description: "Supports non-specific active/active arrays"}); satps[11] != want {
		t.Errorf("last: %+v", satps[11])
	}
	if want := (SATP{Name: "VMW_SATP_ALUA_CX", DefaultPSP: "VMW_PSP_RR", Description: "Placeholder (plugin not loaded)"}); satps[7] != want {
		t.Errorf("ALUA_CX: %+v", satps[7])
	}
}

func TestParsePSPList(t *testing.T) {
	out := "Name           Description\n-------------  --------------------------------\n" +
		"VMW_PSP_MRU    Most Recently Used Path Selector\nVMW_PSP_RR     Round Robin Path Selector\n"
	psps, err := ParsePSPList(out)
	if err != nil {
		t.Fatal(err)
	}
	want := []PSP{{"VMW_PSP_MRU", "Most Recently Used Path Selector"}, {"VMW_PSP_RR", "Round Robin Path Selector"}}
	if !reflect.DeepEqual(psps, want) {
		t.Errorf("got %+v", psps)
	}
}

// The published `satp rule list` is grep-filtered: no dashes row, and the
// blog lost the row's alignment. What it still proves: the column names and
// their order, and the order of a user rule's non-empty values.
func TestSATPRuleCaptureHasTheColumnsTheParserKnows(t *testing.T) {
	out := capture(t, capSATPRuleGrep, "satp rule list")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 {
		t.Fatalf("capture has %d lines", len(lines))
	}
	rest := lines[0]
	for _, c := range SATPRuleColumns {
		i := strings.Index(rest, c)
		if i < 0 || strings.TrimSpace(rest[:i]) != "" {
			t.Fatalf("column %q is not next in the header; left: %q", c, rest)
		}
		rest = rest[i+len(c):]
	}
	if strings.TrimSpace(rest) != "" {
		t.Errorf("header has more than SATPRuleColumns: %q", rest)
	}
	// The same rule read from the aligned layout has the capture row's values, in order.
	rules, err := ParseSATPRules(satpRulesOut)
	if err != nil {
		t.Fatal(err)
	}
	user := rules[3]
	got := strings.Join(strings.Fields(strings.Join([]string{user.SATP, user.Device, user.Vendor, user.Model, user.Driver,
		user.Transport, user.Options, user.RuleGroup, user.ClaimOptions, user.DefaultPSP, user.PSPOptions, user.Description}, " ")), " ")
	if want := strings.Join(strings.Fields(lines[1]), " "); got != want {
		t.Errorf("row values %q, capture %q", got, want)
	}
}

func TestParseSATPRulesKeepsEmptyCells(t *testing.T) {
	rules, err := ParseSATPRules(satpRulesOut)
	if err != nil {
		t.Fatal(err)
	}
	want := []SATPRule{
		{SATP: "VMW_SATP_MSA", Model: "MSA1000 VOLUME", RuleGroup: "system"},
		{SATP: "VMW_SATP_ALUA", Vendor: "NETAPP", Options: "reset_on_attempted_reserve", RuleGroup: "system", ClaimOptions: "tpgs_on",
			DefaultPSP: "VMW_PSP_RR", Description: "NetApp arrays with ALUA support"},
		{SATP: "VMW_SATP_DEFAULT_AA", Transport: "iscsi", RuleGroup: "system", Description: "Default for iSCSI"},
		{SATP: "VMW_SATP_ALUA", Vendor: "SUN", Model: "COMSTAR", RuleGroup: "user", DefaultPSP: "VMW_PSP_RR", PSPOptions: "iops=1",
			Description: "OmniOS Devices"},
	}
	if !reflect.DeepEqual(rules, want) {
		t.Errorf("got  %+v\nwant %+v", rules, want)
	}
}

func TestParseRoundRobinConfigReadsBeforeAndAfterSet(t *testing.T) {
	before, err := ParseRoundRobinConfig(capture(t, capRoundRobinGC, "deviceconfig get"))
	if err != nil {
		t.Fatal(err)
	}
	dev := "naa.600144f009d4d236000056918f920002"
	if want := []RoundRobinConfig{{Device: dev, ByteLimit: 10485760, IOPSLimit: 1000, LimitType: "Default"}}; !reflect.DeepEqual(before, want) {
		t.Errorf("before: %+v", before)
	}
	// The second get follows `deviceconfig set -I 1 -t iops`.
	after, err := ParseRoundRobinConfig(captureNth(t, capRoundRobinGC, "deviceconfig get", 1))
	if err != nil {
		t.Fatal(err)
	}
	if want := []RoundRobinConfig{{Device: dev, ByteLimit: 10485760, IOPSLimit: 1, LimitType: "Iops"}}; !reflect.DeepEqual(after, want) {
		t.Errorf("after: %+v", after)
	}
}

func TestParseRoundRobinConfigSplitsRecordsAtBlankLines(t *testing.T) {
	one := "   Byte Limit: 10485760\n   Device: naa.%s\n   IOOperation Limit: 1\n   Limit Type: Iops\n   Use Active Unoptimized Paths: %s\n"
	out := "\n" + strings.Replace(strings.Replace(one, "%s", "1", 1), "%s", "false", 1) + "\n" +
		strings.Replace(strings.Replace(one, "%s", "2", 1), "%s", "true", 1)
	cfgs, err := ParseRoundRobinConfig(out)
	if err != nil {
		t.Fatal(err)
	}
	if len(cfgs) != 2 || cfgs[0].Device != "naa.1" || cfgs[1].Device != "naa.2" || cfgs[0].UseANO || !cfgs[1].UseANO {
		t.Errorf("got %+v", cfgs)
	}
}

func TestParseFixedConfig(t *testing.T) {
	cfgs, err := ParseFixedConfig(fixedConfigOut)
	if err != nil {
		t.Fatal(err)
	}
	if want := []FixedConfig{{Device: "naa.6090a088006f910fe8df241e1a01d012", PreferredPath: "vmhba33:C7:T12:L0"}}; !reflect.DeepEqual(cfgs, want) {
		t.Errorf("got %+v", cfgs)
	}
	// A release that prints the path alone still reads.
	cfgs, err = ParseFixedConfig("   Preferred Path: vmhba64:C1:T0:L0\n")
	if err != nil || len(cfgs) != 1 || cfgs[0].PreferredPath != "vmhba64:C1:T0:L0" {
		t.Errorf("path only: %+v, %v", cfgs, err)
	}
}

func TestNMPDeviceReadsFixedPSPConfig(t *testing.T) {
	devs, err := ParseNMPDeviceList(capture(t, capNMPDevFixed, "nmp device list"))
	if err != nil {
		t.Fatal(err)
	}
	want := []NMPDevice{{
		UID:          "naa.6090a088006f910fe8df241e1a01d012",
		DisplayName:  "EQLOGIC iSCSI Disk (naa.6090a088006f910fe8df241e1a01d012)",
		SATP:         "VMW_SATP_EQL",
		SATPConfig:   "SATP VMW_SATP_EQL does not support device configuration.",
		PSP:          "VMW_PSP_FIXED",
		PSPConfig:    "{preferred=vmhba33:C7:T12:L0;current=vmhba33:C7:T12:L0}",
		WorkingPaths: []string{"vmhba33:C7:T12:L0"},
	}}
	if !reflect.DeepEqual(devs, want) {
		t.Fatalf("got  %+v\nwant %+v", devs, want)
	}
	d := devs[0]
	if d.CurrentPath() != "vmhba33:C7:T12:L0" || d.PreferredPath() != "vmhba33:C7:T12:L0" {
		t.Errorf("CurrentPath %q PreferredPath %q", d.CurrentPath(), d.PreferredPath())
	}
	if d.SATPFlags() != nil {
		t.Errorf("an SATP without device config has no flags: %v", d.SATPFlags())
	}
}

func TestNMPDevicePSPConfigAccessors(t *testing.T) {
	cases := []struct {
		name, config       string
		current, preferred string
		rr                 bool
	}{
		{"MRU", "Current Path=vmhba33:C0:T0:L0", "vmhba33:C0:T0:L0", "", false},
		{"FIXED, current elsewhere", "{preferred=vmhba39:C0:T0:L12;current=vmhba39:C0:T4:L12}", "vmhba39:C0:T4:L12", "vmhba39:C0:T0:L12", false},
		{"FIXED, ESX 4 spacing", "{preferred= vmhba37:C0:T1:L6;current= vmhba37:C0:T1:L6}", "vmhba37:C0:T1:L6", "vmhba37:C0:T1:L6", false},
		{"FIXED, no path yet", "{preferred=NONE;current=NONE}", "NONE", "NONE", false},
		{"RR", "{policy=rr,iops=1000,bytes=10485760,useANO=0; lastPathIndex=1: NumIOsPending=0,numBytesPending=0}", "", "", true},
	}
	for _, c := range cases {
		d := NMPDevice{PSPConfig: c.config}
		if d.CurrentPath() != c.current || d.PreferredPath() != c.preferred {
			t.Errorf("%s: CurrentPath %q PreferredPath %q", c.name, d.CurrentPath(), d.PreferredPath())
		}
		if _, ok := d.RoundRobin(); ok != c.rr {
			t.Errorf("%s: RoundRobin ok=%v", c.name, ok)
		}
	}
}

func TestNMPDeviceReadsRoundRobinStateOfTheCapture(t *testing.T) {
	devs, err := ParseNMPDeviceList(capture(t, capNMPDevRR, "nmp device list"))
	if err != nil {
		t.Fatal(err)
	}
	rr, ok := devs[0].RoundRobin()
	if want := (RRState{Policy: "rr", IOPS: 1000, Bytes: 10485760, LastPathIndex: 1}); !ok || rr != want {
		t.Errorf("RoundRobin = %+v, %v", rr, ok)
	}
	want := map[string]string{"implicit_support": "on", "explicit_support": "off", "explicit_allow": "on",
		"alua_followover": "on", "action_OnRetryErrors": "off"}
	if got := devs[0].SATPFlags(); !reflect.DeepEqual(got, want) {
		t.Errorf("SATPFlags = %v", got)
	}
}

func TestNMPParsersRejectMalformedOutput(t *testing.T) {
	cases := []struct {
		name  string
		parse func(string) error
		out   string
		want  []string
	}{
		{"satp list: wrong table", func(s string) error { _, err := ParseSATPList(s); return err }, sendTargetsOut,
			[]string{CmdSATPList, `no "Name" column`}},
		{"rules: no Default PSP column", func(s string) error { _, err := ParseSATPRules(s); return err },
			"Name           Vendor\n-------------  ------\nVMW_SATP_ALUA  SUN\n", []string{CmdSATPRuleList, `no "Default PSP" column`}},
		{"rr get: limit not a count", func(s string) error { _, err := ParseRoundRobinConfig(s); return err },
			strings.Replace(capture(t, capRoundRobinGC, "deviceconfig get"), "IOOperation Limit: 1000", "IOOperation Limit: lots", 1),
			[]string{CmdRoundRobinConfigGet, "line 3", `IOOperation Limit: "lots" is not a count`}},
		{"rr get: not the command's output", func(s string) error { _, err := ParseRoundRobinConfig(s); return err },
			fixedConfigOut, []string{CmdRoundRobinConfigGet, `no "Byte Limit" field`}},
		{"fixed get: no preferred path", func(s string) error { _, err := ParseFixedConfig(s); return err },
			"   Device: naa.1\n", []string{CmdFixedConfigGet, `no "Preferred Path" field`}},
	}
	for _, c := range cases {
		err := c.parse(c.out)
		var pe *ParseError
		if !errors.As(err, &pe) {
			t.Errorf("%s: got %v, want a *ParseError", c.name, err)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q lacks %q", c.name, err, w)
			}
		}
	}
}
