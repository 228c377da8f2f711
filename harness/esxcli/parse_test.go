package esxcli

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestParseCorePathListReadsCompellentCapture(t *testing.T) {
	paths, err := ParseCorePathList(capture(t, capPathList, ""))
	if err != nil {
		t.Fatal(err)
	}
	want := []Path{{
		UID:                     "iqn.1998-01.com.vmware:ESXI-1-113d8999-00023d000001,iqn.2002-03.com.compellent:5000d3100077102b,t,0-naa.6000d31000771000000000000000000d",
		RuntimeName:             "vmhba38:C0:T1:L1",
		Device:                  "naa.6000d31000771000000000000000000d",
		DeviceDisplayName:       "COMPELNT iSCSI Disk (naa.6000d31000771000000000000000000d)",
		Adapter:                 "vmhba38",
		Channel:                 0,
		Target:                  1,
		LUN:                     1,
		Plugin:                  "NMP",
		State:                   PathActive,
		Transport:               "iscsi",
		AdapterIdentifier:       "iqn.1998-01.com.vmware:ESXI-1-113d8999",
		TargetIdentifier:        "00023d000001,iqn.2002-03.com.compellent:5000d3100077102b,t,0",
		AdapterTransportDetails: "iqn.1998-01.com.vmware:ESXI-1-113d8999",
		TargetTransportDetails:  "IQN=iqn.2002-03.com.compellent:5000d3100077102b Alias= Session=00023d000001 PortalTag=0",
		MaxIOSize:               131072,
	}}
	if !reflect.DeepEqual(paths, want) {
		t.Errorf("got  %+v\nwant %+v", paths, want)
	}
	p := paths[0]
	if tag, ok := p.PortalTag(); !ok || tag != 0 {
		t.Errorf("PortalTag = %d, %v", tag, ok)
	}
	if p.TargetIQN() != "iqn.2002-03.com.compellent:5000d3100077102b" || p.SessionISID() != "00023d000001" {
		t.Errorf("TargetIQN %q SessionISID %q", p.TargetIQN(), p.SessionISID())
	}
}

func TestParseCorePathListTakesUIDFromHeaderWithoutUIDField(t *testing.T) {
	out := "iqn.x-00023d000001,iqn.t,t,1-naa.1\n   Runtime Name: vmhba64:C0:T0:L0\n   Device: naa.1\n   Adapter: vmhba64\n" +
		"   Channel: 0\n   Target: 0\n   LUN: 0\n   State: dead\n"
	paths, err := ParseCorePathList(out)
	if err != nil {
		t.Fatal(err)
	}
	if paths[0].UID != "iqn.x-00023d000001,iqn.t,t,1-naa.1" || paths[0].State != PathDead {
		t.Errorf("got %+v", paths[0])
	}
}

func TestParseCoreDeviceListReadsComstarCapture(t *testing.T) {
	devs, err := ParseCoreDeviceList(capture(t, capDeviceList, "core device list"))
	if err != nil {
		t.Fatal(err)
	}
	want := []Device{{
		UID: "naa.600144f08", DisplayName: "SUN iSCSI Disk (naa.600144f08)", SizeMB: 204800,
		DeviceType: "Direct-Access", MultipathPlugin: "NMP", DevfsPath: "/vmfs/devices/disks/naa.600144f08",
		Vendor: "SUN", Model: "COMSTAR", Revision: "1.0", Status: "degraded",
		ThinProvisioning: "yes", VAAIStatus: "unknown", OtherUIDs: "vml.0200000000600144f08",
		HasSettableDisplayName: true, SCSILevel: 5, IsRDMCapable: true, OutstandingIOs: 32,
	}}
	if !reflect.DeepEqual(devs, want) {
		t.Errorf("got  %+v\nwant %+v", devs, want)
	}
}

func TestParseNMPDeviceListReadsIndentStrippedMRUCapture(t *testing.T) {
	devs, err := ParseNMPDeviceList(capture(t, capNMPDevMRU, "nmp device list"))
	if err != nil {
		t.Fatal(err)
	}
	want := []NMPDevice{{
		UID:          "naa.600144f0928c010000004fc511ec0001",
		DisplayName:  "OI iSCSI Disk (naa.600144f0928c010000004fc511ec0001)",
		SATP:         "VMW_SATP_ALUA",
		SATPConfig:   "{implicit_support=on;explicit_support=off; explicit_allow=on;alua_followover=on;{TPG_id=0,TPG_state=AO}}",
		PSP:          "VMW_PSP_MRU",
		PSPConfig:    "Current Path=vmhba33:C0:T0:L0",
		WorkingPaths: []string{"vmhba33:C0:T0:L0"},
	}}
	if !reflect.DeepEqual(devs, want) {
		t.Errorf("got  %+v\nwant %+v", devs, want)
	}
	if got := devs[0].TPGStates(); !reflect.DeepEqual(got, []TPGState{{ID: 0, State: "AO"}}) {
		t.Errorf("TPGStates = %v", got)
	}
	if got := devs[0].CurrentPath(); got != "vmhba33:C0:T0:L0" {
		t.Errorf("CurrentPath = %q", got)
	}
}

func TestParseNMPDeviceListReadsRoundRobinCapture(t *testing.T) {
	devs, err := ParseNMPDeviceList(capture(t, capNMPDevRR, "nmp device list"))
	if err != nil {
		t.Fatal(err)
	}
	want := []NMPDevice{{
		UID:          "naa.600144f009d4d236000056918f920002",
		DisplayName:  "SUN iSCSI Disk (naa.600144f009d4d236000056918f920002)",
		SATP:         "VMW_SATP_ALUA",
		SATPConfig:   "{implicit_support=on;explicit_support=off; explicit_allow=on;alua_followover=on; action_OnRetryErrors=off; {TPG_id=0,TPG_state=AO}}",
		PSP:          "VMW_PSP_RR",
		PSPConfig:    "{policy=rr,iops=1000,bytes=10485760,useANO=0; lastPathIndex=1: NumIOsPending=0,numBytesPending=0}",
		WorkingPaths: []string{"vmhba37:C1:T0:L4", "vmhba37:C0:T0:L4"},
	}}
	if !reflect.DeepEqual(devs, want) {
		t.Errorf("got  %+v\nwant %+v", devs, want)
	}
	if devs[0].CurrentPath() != "" {
		t.Errorf("RR has no current path, got %q", devs[0].CurrentPath())
	}
}

func TestParseNMPPathListReadsGrepCapture(t *testing.T) {
	paths, err := ParseNMPPathList(nmpPathGrep(t))
	if err != nil {
		t.Fatal(err)
	}
	want := []NMPPath{
		{UID: "iqn.1998-01.com.vmware:macm-38de68076-00023d000003,iqn.2010-09.org.napp-it:zfs,t,1-naa.600144f009d4d236000056918f920002", RuntimeName: "vmhba37:C1:T0:L4"},
		{UID: "iqn.1998-01.com.vmware:macm-38de68076-00023d000001,iqn.2010-09.org.napp-it:zfs,t,1-naa.600144f009d4d236000056918f920002", RuntimeName: "vmhba37:C0:T0:L4"},
	}
	if !reflect.DeepEqual(paths, want) {
		t.Errorf("got  %+v\nwant %+v", paths, want)
	}
}

func TestParseNMPPathListReadsEveryField(t *testing.T) {
	out := `iqn.1998-01.com.vmware:esx-01-00023d000001,iqn.2024-01.io.certkit:array-1,t,1-naa.6001405a
   Runtime Name: vmhba64:C0:T0:L0
   Device: naa.6001405a
   Device Display Name: CERTKIT iSCSI Disk (naa.6001405a)
   Group State: active
   Array Priority: 0
   Storage Array Type Path Config: {TPG_id=1,TPG_state=AO,RTP_id=1,RTP_health=UP}
   Path Selection Policy Path Config: {current path; rank: 0}
`
	paths, err := ParseNMPPathList(out)
	if err != nil {
		t.Fatal(err)
	}
	want := NMPPath{
		UID: "iqn.1998-01.com.vmware:esx-01-00023d000001,iqn.2024-01.io.certkit:array-1,t,1-naa.6001405a", RuntimeName: "vmhba64:C0:T0:L0",
		Device: "naa.6001405a", DeviceDisplayName: "CERTKIT iSCSI Disk (naa.6001405a)", GroupState: "active", ArrayPriority: 0,
		SATPConfig: "{TPG_id=1,TPG_state=AO,RTP_id=1,RTP_health=UP}", PSPConfig: "{current path; rank: 0}",
	}
	if len(paths) != 1 || !reflect.DeepEqual(paths[0], want) {
		t.Errorf("got %+v", paths)
	}
}

// Every block capture parses the same in ESXi's layout and indent-stripped.
func TestBlockParsersAcceptBothLayouts(t *testing.T) {
	isHeader := func(l string) bool { return !flatKey.MatchString(l) }
	check := func(name, out string, parse func(string) (any, error)) {
		t.Helper()
		a, err := parse(out)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		b, err := parse(reindent(out, isHeader))
		if err != nil {
			t.Fatalf("%s re-indented: %v", name, err)
		}
		if !reflect.DeepEqual(a, b) {
			t.Errorf("%s: layouts differ:\n%+v\n%+v", name, a, b)
		}
	}
	check("path list", capture(t, capPathList, ""), func(s string) (any, error) { return ParseCorePathList(s) })
	check("device list", capture(t, capDeviceList, "core device list"), func(s string) (any, error) { return ParseCoreDeviceList(s) })
	check("nmp mru", capture(t, capNMPDevMRU, "nmp device list"), func(s string) (any, error) { return ParseNMPDeviceList(s) })
	check("nmp rr", capture(t, capNMPDevRR, "nmp device list"), func(s string) (any, error) { return ParseNMPDeviceList(s) })
	check("nmp path", nmpPathGrep(t), func(s string) (any, error) { return ParseNMPPathList(s) })
	check("path stats", pathStatsOut, func(s string) (any, error) { return ParsePathStats(s) })
}

func TestParseBlocksReadsIndentStrippedRecordsWithEmptyValues(t *testing.T) {
	recs, err := ParseBlocks("esxcli iscsi networkportal list", capture(t, capNetworkPort, "networkportal list"))
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1 || recs[0].Header != "vmhba33" || len(recs[0].Fields) != 31 {
		t.Fatalf("got %d records, first %q with %d fields", len(recs), recs[0].Header, len(recs[0].Fields))
	}
	for key, want := range map[string]string{"Vmknic": "vmk1", "MAC Address": "00:50:56:17:16:07", "IPv6": "", "Reserved Ports": "63488~65536", "Path Status": "active"} {
		if v, ok := recs[0].Get(key); !ok || v != want {
			t.Errorf("%s = %q, %v; want %q", key, v, ok, want)
		}
	}
}

func TestParseBlocksSplitsFlatRecordsAtHeaders(t *testing.T) {
	recs, err := ParseBlocks("esxcli iscsi session list", capture(t, capSessionList, "session list"))
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 2 {
		t.Fatalf("%d records", len(recs))
	}
	for i, isid := range []string{"00023d000001", "00023d000003"} {
		r := recs[i]
		if r.Header != "vmhba33,iqn.2010-09.org.openindiana:02:bd79a6ff-33c2-41d3-8f0e-9c8d8b6e9fcb,"+isid {
			t.Errorf("header %q", r.Header)
		}
		if v, _ := r.Get("ISID"); v != isid {
			t.Errorf("ISID %q", v)
		}
		if v, _ := r.Get("Target"); v != "iqn.2010-09.org.openindiana:02:bd79a6ff-33c2-41d3-8f0e-9c8d8b6e9fcb" {
			t.Errorf("Target %q (a value with colons)", v)
		}
	}
}

func TestParseBlocksReadsFieldsWithoutHeader(t *testing.T) {
	recs, err := ParseBlocks("esxcli storage nmp psp roundrobin deviceconfig get", capture(t, capRoundRobinGC, "deviceconfig get"))
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1 || recs[0].Header != "" || recs[0].Line != 1 {
		t.Fatalf("got %+v", recs)
	}
	if v, _ := recs[0].Get("IOOperation Limit"); v != "1000" {
		t.Errorf("IOOperation Limit = %q", v)
	}
}

func TestParsePathStats(t *testing.T) {
	stats, err := ParsePathStats(pathStatsOut)
	if err != nil {
		t.Fatal(err)
	}
	want := []PathStats{
		{Path: "vmhba64:C0:T0:L0", SuccessfulCommands: 437865323, BlocksRead: 2390925674, BlocksWritten: 25340206445,
			ReadOperations: 31367192, WriteOperations: 404557595, FailedCommands: 85, FailedBlocksRead: 512,
			FailedReadOperations: 1, FailedWriteOperations: 52},
		{Path: "vmhba64:C1:T0:L0", SuccessfulCommands: 7, BlocksRead: 8, ReadOperations: 1},
	}
	if !reflect.DeepEqual(stats, want) {
		t.Errorf("got  %+v\nwant %+v", stats, want)
	}
}

func TestParseAdapterListReadsAlignedTable(t *testing.T) {
	ads, err := ParseAdapterList(capture(t, capAdapterList, "adapter list"))
	if err != nil {
		t.Fatal(err)
	}
	want := []Adapter{{Name: "vmhba37", Driver: "iscsi_vmk", State: "online", UID: "iscsi.vmhba37", Description: "iSCSI Software Adapter"}}
	if !reflect.DeepEqual(ads, want) {
		t.Errorf("got %+v", ads)
	}
}

func TestParseAdapterParamsReadsCollapsedTable(t *testing.T) {
	params, err := ParseAdapterParams(capture(t, capParamGet, "param get"))
	if err != nil {
		t.Fatal(err)
	}
	if len(params) != 19 {
		t.Fatalf("%d params, want 19", len(params))
	}
	byName := map[string]Param{}
	for _, p := range params {
		byName[p.Name] = p
	}
	for _, want := range []Param{
		{Name: "ErrorRecoveryLevel", Current: "0", Default: "0", Min: "0", Max: "2"},
		{Name: "InitialR2T", Current: "false", Default: "false", Min: "na", Max: "na"},
		{Name: "LoginTimeout", Current: "5", Default: "5", Min: "1", Max: "60", Settable: true},
		{Name: "NoopOutInterval", Current: "15", Default: "15", Min: "1", Max: "60", Settable: true},
		{Name: "NoopOutTimeout", Current: "10", Default: "10", Min: "10", Max: "30", Settable: true},
		{Name: "RecoveryTimeout", Current: "10", Default: "10", Min: "1", Max: "120", Settable: true},
		{Name: "DelayedAck", Current: "false", Default: "true", Min: "na", Max: "na", Settable: true},
		{Name: "HeaderDigest", Current: "prohibited", Default: "prohibited", Min: "na", Max: "na", Settable: true},
	} {
		if got := byName[want.Name]; got != want {
			t.Errorf("%s: got %+v, want %+v", want.Name, got, want)
		}
	}
}

func TestParseAdapterParamsReadsAlignedTableWithInherit(t *testing.T) {
	out := `Name                  Current     Default     Min  Max       Settable  Inherit
--------------------  ----------  ----------  ---  --------  --------  -------
NoopOutInterval       1           15          1    60            true    false
DataDigest            prohibited  prohibited  na   na            true     true
`
	params, err := ParseAdapterParams(out)
	if err != nil {
		t.Fatal(err)
	}
	want := []Param{
		{Name: "NoopOutInterval", Current: "1", Default: "15", Min: "1", Max: "60", Settable: true},
		{Name: "DataDigest", Current: "prohibited", Default: "prohibited", Min: "na", Max: "na", Settable: true, Inherit: true},
	}
	if !reflect.DeepEqual(params, want) {
		t.Errorf("got %+v", params)
	}
}

func TestParseSendTargets(t *testing.T) {
	sts, err := ParseSendTargets(sendTargetsOut)
	if err != nil {
		t.Fatal(err)
	}
	want := []SendTarget{{Adapter: "vmhba64", Address: "127.0.0.1:40001"}, {Adapter: "vmhba64", Address: "127.0.0.1:40002"}}
	if !reflect.DeepEqual(sts, want) {
		t.Errorf("got %+v", sts)
	}
	if sts, err := ParseSendTargets(""); err != nil || len(sts) != 0 {
		t.Errorf("no send targets: %v, %v", sts, err)
	}
}

func TestParseTableCutsCellsWithSpacesAtColumns(t *testing.T) {
	tab, err := ParseTable("esxcli storage nmp satp list", capture(t, capSATPList, "satp list"))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(tab.Columns, []string{"Name", "Default PSP", "Description"}) || len(tab.Rows) != 12 {
		t.Fatalf("columns %q, %d rows", tab.Columns, len(tab.Rows))
	}
	if got := tab.Rows[0].Cells; !reflect.DeepEqual(got, []string{"VMW_SATP_ALUA", "VMW_PSP_MRU", "Supports non-specific arrays that use the ALUA protocol"}) {
		t.Errorf("row 0: %q", got)
	}
	if tab.Rows[11].Line != 14 {
		t.Errorf("last row on line %d", tab.Rows[11].Line)
	}
}

func TestParseTableSplitsCollapsedRowsAtSpaces(t *testing.T) {
	tab, err := ParseTable("esxcli iscsi adapter target portal list", capture(t, capPortalList, "portal list"))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(tab.Columns, []string{"Adapter", "Target", "IP", "Port", "Tpgt"}) || len(tab.Rows) != 2 {
		t.Fatalf("columns %q, %d rows", tab.Columns, len(tab.Rows))
	}
	if got := tab.Rows[1].Cells; !reflect.DeepEqual(got, []string{"vmhba33", "iqn.2010-09.org.openindiana:02:bd79a6ff-33c2-41d3-8f0e-9c8d8b6e9fcb", "10.131.67.12", "3260", "1"}) {
		t.Errorf("row 1: %q", got)
	}
}

func TestParseTableKeepsEmptyCellsOfAlignedRows(t *testing.T) {
	out := "Adapter  Driver     State   UID            Description\n" +
		"-------  ---------  ------  -------------  -----------\n" +
		"vmhba64  iscsi_vmk  online  iscsi.vmhba64\n"
	ads, err := ParseAdapterList(out)
	if err != nil {
		t.Fatal(err)
	}
	if len(ads) != 1 || ads[0].UID != "iscsi.vmhba64" || ads[0].Description != "" {
		t.Errorf("got %+v", ads)
	}
}

func TestParseBool(t *testing.T) {
	for out, want := range map[string]bool{"true\n": true, "false": false, "  true  \r\n": true} {
		if got, err := ParseBool(CmdISCSISoftwareGet, out); err != nil || got != want {
			t.Errorf("%q: %v, %v", out, got, err)
		}
	}
	_, err := ParseBool(CmdISCSISoftwareGet, "enabled\n")
	if err == nil || !strings.Contains(err.Error(), "esxcli iscsi software get") {
		t.Errorf("bad bool: %v", err)
	}
}

func TestParsersRejectMalformedOutputNamingCommandAndLine(t *testing.T) {
	cases := []struct {
		name  string
		parse func(string) error
		out   string
		want  []string
	}{
		{"path list: LUN not a number", func(s string) error { _, err := ParseCorePathList(s); return err },
			strings.Replace(capture(t, capPathList, ""), "LUN: 1", "LUN: one", 1),
			[]string{CmdCorePathList, "line 9", `LUN: "one" is not an integer`}},
		{"path list: no State", func(s string) error { _, err := ParseCorePathList(s); return err },
			without(capture(t, capPathList, ""), "   State: active"),
			[]string{CmdCorePathList, "line 1", `no "State" field`}},
		{"path list: indented line without colon", func(s string) error { _, err := ParseCorePathList(s); return err },
			"naa.1\n   Runtime Name vmhba64:C0:T0:L0\n   State: active\n",
			[]string{CmdCorePathList, "line 2", "not a \"Key: Value\" line"}},
		{"path list: field twice", func(s string) error { _, err := ParseCorePathList(s); return err },
			"naa.1\n   State: active\n   State: dead\n",
			[]string{CmdCorePathList, "line 3", `"State" appears twice`}},
		{"nmp device: no PSP", func(s string) error { _, err := ParseNMPDeviceList(s); return err },
			"naa.1\n   Storage Array Type: VMW_SATP_ALUA\n",
			[]string{CmdNMPDeviceList, "line 1", `no "Path Selection Policy" field`}},
		{"nmp device: bad bool", func(s string) error { _, err := ParseNMPDeviceList(s); return err },
			strings.Replace(capture(t, capNMPDevRR, "nmp device list"), "Is USB: false", "Is USB: no", 1),
			[]string{CmdNMPDeviceList, "line 9", `Is USB: "no" is not true or false`}},
		{"nmp device: fields without a device", func(s string) error { _, err := ParseNMPDeviceList(s); return err },
			"   Storage Array Type: VMW_SATP_ALUA\n   Path Selection Policy: VMW_PSP_MRU\n",
			[]string{CmdNMPDeviceList, "line 1", "without its UID"}},
		{"nmp path: no runtime name", func(s string) error { _, err := ParseNMPPathList(s); return err },
			"iqn.x-naa.1\n   Device: naa.1\n",
			[]string{CmdNMPPathList, "line 1", `no "Runtime Name"`}},
		{"path stats: negative count", func(s string) error { _, err := ParsePathStats(s); return err },
			strings.Replace(pathStatsOut, "Blocks Read: 8", "Blocks Read: -8", 1),
			[]string{CmdCorePathStatsGet, "line 18", `Blocks Read: "-8" is not a count`}},
		{"adapter list: not a table", func(s string) error { _, err := ParseAdapterList(s); return err },
			"vmhba64\n   Driver: iscsi_vmk\n",
			[]string{CmdISCSIAdapterList, "line 2", "no row of dashes"}},
		{"adapter list: wrong columns", func(s string) error { _, err := ParseAdapterList(s); return err },
			sendTargetsOut,
			[]string{CmdISCSIAdapterList, `no "Driver" column`}},
		{"params: short row", func(s string) error { _, err := ParseAdapterParams(s); return err },
			capture(t, capParamGet, "param get") + "LoginTimeout 5 5\n",
			[]string{CmdISCSIParamGet, "line 22", "has 3 cells, want 7"}},
		{"params: bad Settable", func(s string) error { _, err := ParseAdapterParams(s); return err },
			strings.Replace(capture(t, capParamGet, "param get"), "MaxCmds 128 128 2 2048 false false", "MaxCmds 128 128 2 2048 maybe false", 1),
			[]string{CmdISCSIParamGet, "line 10", `Settable: "maybe"`}},
		{"params: header and dashes disagree", func(s string) error { _, err := ParseAdapterParams(s); return err },
			"Name Current\n---- ------- ---\nx 1 2\n",
			[]string{CmdISCSIParamGet, "line 1", "2 names but the dashes row 3 columns"}},
		{"send targets: header only, no dashes", func(s string) error { _, err := ParseSendTargets(s); return err },
			"Adapter  Sendtarget\n",
			[]string{CmdISCSISendTargets, "no row of dashes"}},
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

func TestEmptyOutputIsNoRecords(t *testing.T) {
	if p, err := ParseCorePathList(""); err != nil || len(p) != 0 {
		t.Errorf("path list: %v, %v", p, err)
	}
	if p, err := ParseNMPDeviceList("\n\n"); err != nil || len(p) != 0 {
		t.Errorf("nmp device list: %v, %v", p, err)
	}
	if p, err := ParseAdapterParams(""); err != nil || len(p) != 0 {
		t.Errorf("params: %v, %v", p, err)
	}
}
