package esxcli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const capturesDir = "../../fixtures/captures"

// capture returns what a command printed in a capture file: the lines after
// the prompt line containing prompt, up to the next prompt or "## " heading.
// With prompt "", the lines before any prompt or heading (files that quote
// output without a prompt). The "# source:"/"# note:" lines are skipped.
func capture(tb testing.TB, file, prompt string) string {
	tb.Helper()
	return captureNth(tb, file, prompt, 0)
}

// captureNth is capture for the n-th (from 0) prompt line containing prompt.
func captureNth(tb testing.TB, file, prompt string, n int) string {
	tb.Helper()
	data, err := os.ReadFile(filepath.Join(capturesDir, file))
	if err != nil {
		tb.Fatalf("capture: %v", err)
	}
	lines := strings.Split(string(data), "\n")
	for len(lines) > 0 && (strings.HasPrefix(lines[0], "# source:") || strings.HasPrefix(lines[0], "# note:")) {
		lines = lines[1:]
	}
	isBreak := func(l string) bool {
		return strings.HasPrefix(l, "~ # ") || strings.HasPrefix(l, "[root@") || strings.HasPrefix(l, "## ") ||
			strings.HasPrefix(l, "# esxcli ")
	}
	start := 0
	if prompt != "" {
		start = -1
		seen := 0
		for i, l := range lines {
			if isBreak(l) && strings.Contains(l, prompt) {
				if seen == n {
					start = i + 1
					break
				}
				seen++
			}
		}
		if start < 0 {
			tb.Fatalf("capture %s: no prompt line %d with %q", file, n, prompt)
		}
	}
	var out []string
	for _, l := range lines[start:] {
		if isBreak(l) {
			break
		}
		out = append(out, l)
	}
	for len(out) > 0 && strings.TrimSpace(out[len(out)-1]) == "" {
		out = out[:len(out)-1]
	}
	return strings.Join(out, "\n") + "\n"
}

// without drops the lines equal to one of drop (grep's "--", a wrapped prompt).
func without(out string, drop ...string) string {
	var keep []string
	for _, l := range strings.Split(out, "\n") {
		skip := false
		for _, d := range drop {
			if l == d {
				skip = true
			}
		}
		if !skip {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

// reindent turns indent-stripped block output into the canonical shape
// (fields indented by three spaces), and canonical output into the
// stripped shape, so each capture tests both layouts.
func reindent(out string, header func(string) bool) string {
	lines := strings.Split(out, "\n")
	for i, l := range lines {
		switch {
		case l == "":
		case strings.HasPrefix(l, "   "):
			lines[i] = strings.TrimLeft(l, " ")
		case !header(l):
			lines[i] = "   " + l
		}
	}
	return strings.Join(lines, "\n")
}

// Captures the tests and fuzz seeds use.
const (
	capPathList     = "esxcli_storage_core_path_list_iscsi_compellent_esxi55.txt"
	capDeviceList   = "esxcli_storage_core_device_list_iscsi_comstar_esxi55_elatov.txt"
	capNMPDevMRU    = "esxcli_storage_nmp_device_list_alua_mru_iscsi_elatov.txt"
	capNMPDevRR     = "esxcli_storage_nmp_device_list_alua_rr_esxi6_elatov.txt"
	capNMPPathGrep  = "esxcli_storage_nmp_path_list_grep_iqn_esxi6_elatov.txt"
	capAdapterList  = "esxcli_iscsi_adapter_list_esxi55_elatov.txt"
	capParamGet     = "esxcli_iscsi_adapter_param_get_elatov.txt"
	capPortalList   = "esxcli_iscsi_adapter_target_portal_list_elatov.txt"
	capSATPList     = "esxcli_storage_nmp_satp_list_esxi6_elatov.txt"
	capNetworkPort  = "esxcli_iscsi_networkportal_list_elatov.txt"
	capSessionList  = "esxcli_iscsi_session_list_elatov.txt"
	capRoundRobinGC = "esxcli_storage_nmp_psp_roundrobin_deviceconfig_get_set_esxi6_elatov.txt"
	capConnList     = "esxcli_iscsi_session_connection_list_elatov.txt"
	capAdvancedList = "esxcli_system_settings_advanced_list_o_esxi6_elatov.txt"
	capSATPRuleGrep = "esxcli_storage_nmp_satp_rule_list_grep_esxi6_elatov.txt"
	capNMPDevFixed  = "esxcli_storage_nmp_device_list_fixed_iscsi_eql_elatov.txt"
)

// Synthetic outputs in ESXi's canonical layout for commands no published
// capture shows; their shape follows the captured siblings (the column
// table of `iscsi adapter list`, the record of `core device stats get`).
const (
	sendTargetsOut = `Adapter  Sendtarget
-------  ---------------
vmhba64  127.0.0.1:40001
vmhba64  127.0.0.1:40002
`
	// satpRulesOut is `storage nmp satp rule list` in ESXi's aligned
	// layout (the published capture is grep-filtered and lost its
	// alignment): empty cells in the middle of rows, and the last column
	// empty on some.
	satpRulesOut = `Name                 Device  Vendor  Model           Driver  Transport  Options                     Rule Group  Claim Options  Default PSP  PSP Options  Description
-------------------  ------  ------  --------------  ------  ---------  --------------------------  ----------  -------------  -----------  -----------  -------------------------------
VMW_SATP_MSA                         MSA1000 VOLUME                                                 system
VMW_SATP_ALUA                NETAPP                                     reset_on_attempted_reserve  system      tpgs_on        VMW_PSP_RR                NetApp arrays with ALUA support
VMW_SATP_DEFAULT_AA                                          iscsi                                  system                                               Default for iSCSI
VMW_SATP_ALUA                SUN     COMSTAR                                                        user                       VMW_PSP_RR   iops=1       OmniOS Devices
`
	// fixedConfigOut is `storage nmp psp fixed deviceconfig get`, of which
	// no capture was found: the fields of its result type.
	fixedConfigOut = `   Device: naa.6090a088006f910fe8df241e1a01d012
   Preferred Path: vmhba33:C7:T12:L0
`
	pathStatsOut = `vmhba64:C0:T0:L0
   Successful Commands: 437865323
   Blocks Read: 2390925674
   Blocks Written: 25340206445
   Read Operations: 31367192
   Write Operations: 404557595
   Reserve Operations: 0
   Reservation Conflicts: 0
   Failed Commands: 85
   Failed Blocks Read: 512
   Failed Blocks Written: 0
   Failed Read Operations: 1
   Failed Write Operations: 52
   Failed Reserve Operations: 0

vmhba64:C1:T0:L0
   Successful Commands: 7
   Blocks Read: 8
   Blocks Written: 0
   Read Operations: 1
   Write Operations: 0
   Failed Commands: 0
`
)

func nmpPathGrep(tb testing.TB) string {
	// The blog wrapped the prompt ("... | grep ^iq" / "n -A 1"); grep -A put
	// "--" between matches.
	return without(capture(tb, capNMPPathGrep, "nmp path list"), "n -A 1", "--")
}
