package esxcli

import (
	"strings"
	"testing"
)

// The fuzz targets assert that no output, however malformed, makes a parser
// panic, and that what the generic parsers accept is well formed. Seeds are
// the captures; `go test -fuzz=FuzzParseCorePathList` explores from them and
// keeps what it finds under testdata/fuzz.

func blockSeeds(f *testing.F) {
	for _, s := range []string{
		capture(f, capPathList, ""),
		capture(f, capDeviceList, "core device list"),
		capture(f, capNMPDevMRU, "nmp device list"),
		capture(f, capNMPDevRR, "nmp device list"),
		nmpPathGrep(f),
		capture(f, capNetworkPort, "networkportal list"),
		capture(f, capSessionList, "session list"),
		capture(f, capRoundRobinGC, "deviceconfig get"),
		capture(f, capConnList, "connection list"),
		capture(f, capAdvancedList, "list -o /Net/UseHwTSO"),
		capture(f, capNMPDevFixed, "nmp device list"),
		fixedConfigOut,
		pathStatsOut,
		"", "\n", ":", "   :", "a:\n b: c\n", "\t\r\n  x: y",
	} {
		f.Add(s)
	}
}

func tableSeeds(f *testing.F) {
	for _, s := range []string{
		capture(f, capAdapterList, "adapter list"),
		capture(f, capParamGet, "param get"),
		capture(f, capPortalList, "portal list"),
		capture(f, capSATPList, "satp list"),
		capture(f, capSATPRuleGrep, "satp rule list"),
		satpRulesOut,
		sendTargetsOut,
		"", "-", "a\n-\n", "a b\n- -\n\n x", "  a\n  -\nxyz\n", "a\n--- -\n",
	} {
		f.Add(s)
	}
}

func FuzzParseBlocks(f *testing.F) {
	blockSeeds(f)
	f.Fuzz(func(t *testing.T, out string) {
		recs, err := ParseBlocks("fuzz", out)
		if err != nil {
			return
		}
		for _, r := range recs {
			for _, fl := range r.Fields {
				if fl.Key == "" || fl.Line < 1 || strings.ContainsAny(fl.Key, "\n") {
					t.Fatalf("record %q: bad field %+v", r.Header, fl)
				}
			}
		}
	})
}

func FuzzParseTable(f *testing.F) {
	tableSeeds(f)
	f.Fuzz(func(t *testing.T, out string) {
		tab, err := ParseTable("fuzz", out)
		if err != nil {
			return
		}
		for _, r := range tab.Rows {
			if len(r.Cells) != len(tab.Columns) {
				t.Fatalf("row on line %d has %d cells for %d columns", r.Line, len(r.Cells), len(tab.Columns))
			}
		}
	})
}

func FuzzParseCorePathList(f *testing.F) {
	blockSeeds(f)
	f.Fuzz(func(t *testing.T, out string) { _, _ = ParseCorePathList(out) })
}

func FuzzParseCoreDeviceList(f *testing.F) {
	blockSeeds(f)
	f.Fuzz(func(t *testing.T, out string) { _, _ = ParseCoreDeviceList(out) })
}

func FuzzParseNMPDeviceList(f *testing.F) {
	blockSeeds(f)
	f.Fuzz(func(t *testing.T, out string) {
		devs, err := ParseNMPDeviceList(out)
		for _, d := range devs {
			_, _, _ = d.TPGStates(), d.CurrentPath(), d.PreferredPath()
			_, _ = d.RoundRobin()
			_ = d.SATPFlags()
		}
		_ = err
	})
}

func FuzzParseNMPPathList(f *testing.F) {
	blockSeeds(f)
	f.Fuzz(func(t *testing.T, out string) { _, _ = ParseNMPPathList(out) })
}

func FuzzParsePathStats(f *testing.F) {
	blockSeeds(f)
	f.Fuzz(func(t *testing.T, out string) { _, _ = ParsePathStats(out) })
}

func FuzzParseAdapterList(f *testing.F) {
	tableSeeds(f)
	f.Fuzz(func(t *testing.T, out string) { _, _ = ParseAdapterList(out) })
}

func FuzzParseAdapterParams(f *testing.F) {
	tableSeeds(f)
	f.Fuzz(func(t *testing.T, out string) { _, _ = ParseAdapterParams(out) })
}

func FuzzParseSendTargets(f *testing.F) {
	tableSeeds(f)
	f.Fuzz(func(t *testing.T, out string) { _, _ = ParseSendTargets(out) })
}

func FuzzParseBool(f *testing.F) {
	for _, s := range []string{"true\n", "false\n", "", "maybe"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, out string) { _, _ = ParseBool(CmdISCSISoftwareGet, out) })
}

func FuzzParseSATPList(f *testing.F) {
	tableSeeds(f)
	f.Fuzz(func(t *testing.T, out string) { _, _ = ParseSATPList(out) })
}

func FuzzParsePSPList(f *testing.F) {
	tableSeeds(f)
	f.Fuzz(func(t *testing.T, out string) { _, _ = ParsePSPList(out) })
}

func FuzzParseSATPRules(f *testing.F) {
	tableSeeds(f)
	f.Fuzz(func(t *testing.T, out string) { _, _ = ParseSATPRules(out) })
}

func FuzzParseTargetPortals(f *testing.F) {
	tableSeeds(f)
	f.Fuzz(func(t *testing.T, out string) { _, _ = ParseTargetPortals(out) })
}

func FuzzParseRoundRobinConfig(f *testing.F) {
	blockSeeds(f)
	f.Fuzz(func(t *testing.T, out string) { _, _ = ParseRoundRobinConfig(out) })
}

func FuzzParseFixedConfig(f *testing.F) {
	blockSeeds(f)
	f.Fuzz(func(t *testing.T, out string) { _, _ = ParseFixedConfig(out) })
}

func FuzzParseSessionList(f *testing.F) {
	blockSeeds(f)
	f.Fuzz(func(t *testing.T, out string) { _, _ = ParseSessionList(out) })
}

func FuzzParseConnectionList(f *testing.F) {
	blockSeeds(f)
	f.Fuzz(func(t *testing.T, out string) { _, _ = ParseConnectionList(out) })
}

func FuzzParseAdvancedList(f *testing.F) {
	blockSeeds(f)
	f.Fuzz(func(t *testing.T, out string) { _, _ = ParseAdvancedList(out) })
}
