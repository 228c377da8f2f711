package esxcli

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

const openIndianaIQN = "iqn.2010-09.org.openindiana:02:bd79a6ff-33c2-41d3-8f0e-9c8d8b6e9fcb"

func TestParseSessionListReadsEveryFieldOfTheCapture(t *testing.T) {
	sessions, err := ParseSessionList(capture(t, capSessionList, "session list"))
	if err != nil {
		t.Fatal(err)
	}
	base := Session{
		Adapter: "vmhba33", Target: openIndianaIQN, TargetPortalGroupTag: 1, AuthenticationMethod: "none",
		DataPDUInOrder: true, DataSequenceInOrder: true, DefaultTime2Retain: 0, DefaultTime2Wait: 2,
		ErrorRecoveryLevel: 0, FirstBurstLength: 65536, ImmediateData: true, InitialR2T: true,
		MaxBurstLength: 262144, MaxConnections: 1, MaxOutstandingR2T: 1,
	}
	first, second := base, base
	first.ISID, first.TSIH = "00023d000001", 14
	second.ISID, second.TSIH = "00023d000003", 18
	if want := []Session{first, second}; !reflect.DeepEqual(sessions, want) {
		t.Errorf("got  %+v\nwant %+v", sessions, want)
	}
}

func TestParseConnectionListReadsEveryFieldOfTheCapture(t *testing.T) {
	conns, err := ParseConnectionList(capture(t, capConnList, "connection list"))
	if err != nil {
		t.Fatal(err)
	}
	at := func(s string) time.Time {
		v, err := time.Parse(ConnectionTimeLayout, s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	base := Connection{
		Adapter: "vmhba33", Target: openIndianaIQN, CID: 0, DataDigest: "NONE", HeaderDigest: "NONE",
		MaxRecvDataSegmentLength: 131072, MaxTransmitDataSegmentLength: 32768,
		ConnectionAddress: "192.168.1.107", RemoteAddress: "192.168.1.107", LocalAddress: "192.168.1.106", State: "logged_in",
	}
	first, second := base, base
	first.ISID = "00023d000001"
	first.SessionCreateTime, first.ConnectionCreateTime, first.ConnectionStartTime = at("12/14/12 18:59:57"), at("12/14/12 18:59:57"), at("12/14/12 18:59:57")
	second.ISID = "00023d000003"
	second.SessionCreateTime, second.ConnectionCreateTime, second.ConnectionStartTime = at("12/16/12 21:02:12"), at("12/16/12 21:02:12"), at("12/16/12 21:02:12")
	if want := []Connection{first, second}; !reflect.DeepEqual(conns, want) {
		t.Errorf("got  %+v\nwant %+v", conns, want)
	}
	if got := first.SessionCreateTime; got.Year() != 2012 || got.Month() != time.December || got.Day() != 14 {
		t.Errorf("MM/DD/YY read as %v", got)
	}
}

func TestParseTargetPortalsReadsTheCollapsedCapture(t *testing.T) {
	portals, err := ParseTargetPortals(capture(t, capPortalList, "portal list"))
	if err != nil {
		t.Fatal(err)
	}
	want := []TargetPortal{
		{Adapter: "vmhba33", Target: "iqn.2010-09.org.openindiana:02:bd79a6ff-33c2-41d3-8f0e-9c8d8b6e9fcb", IP: "192.168.1.107", Port: 3260, TPGT: 1},
		{Adapter: "vmhba33", Target: "iqn.2010-09.org.openindiana:02:bd79a6ff-33c2-41d3-8f0e-9c8d8b6e9fcb", IP: "10.131.67.12", Port: 3260, TPGT: 1},
	}
	if !reflect.DeepEqual(portals, want) {
		t.Errorf("got %+v", portals)
	}
}

func TestParseAdvancedListReadsBothOptionsOfTheCapture(t *testing.T) {
	for _, c := range []struct {
		option string
		want   AdvancedOption
	}{
		{"/Net/TcpipDefLROEnabled", AdvancedOption{Path: "/Net/TcpipDefLROEnabled", Type: "integer", IntValue: 0, DefaultIntValue: 1,
			MinValue: 0, MaxValue: 1, Description: "LRO enabled for TCP/IP"}},
		{"/Net/UseHwTSO", AdvancedOption{Path: "/Net/UseHwTSO", Type: "integer", IntValue: 0, DefaultIntValue: 1,
			MinValue: 0, MaxValue: 1, Description: "When non-zero, use pNIC HW TSO offload if available"}},
	} {
		opts, err := ParseAdvancedList(capture(t, capAdvancedList, "list -o "+c.option))
		if err != nil {
			t.Fatal(err)
		}
		if len(opts) != 1 || opts[0] != c.want {
			t.Errorf("%s: got %+v", c.option, opts)
		}
	}
}

func TestParseAdvancedListSplitsHeaderlessRecordsAtBlankLines(t *testing.T) {
	out := "   Path: /Misc/APDHandlingEnable\n   Type: integer\n   Int Value: 1\n\n" +
		"   Path: /Misc/APDTimeout\n   Type: integer\n   Int Value: 140\n   Max Value: 99999\n   String Value:\n"
	opts, err := ParseAdvancedList(out)
	if err != nil {
		t.Fatal(err)
	}
	want := []AdvancedOption{{Path: "/Misc/APDHandlingEnable", Type: "integer", IntValue: 1},
		{Path: "/Misc/APDTimeout", Type: "integer", IntValue: 140, MaxValue: 99999}}
	if !reflect.DeepEqual(opts, want) {
		t.Errorf("got %+v", opts)
	}
}

func TestSessionParsersRejectMalformedOutput(t *testing.T) {
	cases := []struct {
		name  string
		parse func(string) error
		out   string
		want  []string
	}{
		{"session: TPGT not a number", func(s string) error { _, err := ParseSessionList(s); return err },
			strings.Replace(capture(t, capSessionList, "session list"), "TargetPortalGroupTag: 1", "TargetPortalGroupTag: one", 1),
			[]string{CmdISCSISessionList, "line 5", `TargetPortalGroupTag: "one" is not an integer`}},
		{"session: no ISID", func(s string) error { _, err := ParseSessionList(s); return err },
			"vmhba64,iqn.x,1\n   Adapter: vmhba64\n   Target: iqn.x\n   TargetPortalGroupTag: 1\n",
			[]string{CmdISCSISessionList, `no "ISID" field`}},
		{"connection: time in another layout", func(s string) error { _, err := ParseConnectionList(s); return err },
			strings.Replace(capture(t, capConnList, "connection list"), "SessionCreateTime: 12/14/12 18:59:57", "SessionCreateTime: 2012-12-14T18:59:57Z", 1),
			[]string{CmdISCSIConnectionList, "line 17", "SessionCreateTime", "is not a time like"}},
		{"portal: port not a number", func(s string) error { _, err := ParseTargetPortals(s); return err },
			strings.Replace(capture(t, capPortalList, "portal list"), " 3260 ", " iscsi ", 1),
			[]string{CmdISCSIPortalList, "line 3", `Port: "iscsi" is not an integer`}},
		{"advanced: no Path", func(s string) error { _, err := ParseAdvancedList(s); return err },
			"   Type: integer\n   Int Value: 1\n", []string{CmdAdvancedList, `no "Path" field`}},
		{"advanced: value not an integer", func(s string) error { _, err := ParseAdvancedList(s); return err },
			"   Path: /Misc/APDTimeout\n   Type: integer\n   Int Value: 1.5\n", []string{CmdAdvancedList, "line 3", `Int Value: "1.5"`}},
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
