package esxcli

// Commands of the NMP plugin namespaces the typed parsers read.
const (
	CmdSATPList            = "esxcli storage nmp satp list"
	CmdSATPRuleList        = "esxcli storage nmp satp rule list"
	CmdPSPList             = "esxcli storage nmp psp list"
	CmdRoundRobinConfigGet = "esxcli storage nmp psp roundrobin deviceconfig get"
	CmdFixedConfigGet      = "esxcli storage nmp psp fixed deviceconfig get"
)

// SATP is one row of `esxcli storage nmp satp list`.
type SATP struct {
	Name        string // VMW_SATP_ALUA
	DefaultPSP  string // VMW_PSP_MRU
	Description string // "Placeholder (plugin not loaded)" for SATPs not loaded
}

// ParseSATPList reads `esxcli storage nmp satp list`.
func ParseSATPList(out string) ([]SATP, error) {
	c, err := readTable(CmdSATPList, out, []string{"Name", "Default PSP", "Description"}, nil)
	if c == nil {
		return nil, err
	}
	satps := make([]SATP, 0, len(c.t.Rows))
	for _, r := range c.t.Rows {
		satps = append(satps, SATP{Name: c.str(r, "Name"), DefaultPSP: c.str(r, "Default PSP"), Description: c.str(r, "Description")})
	}
	return satps, nil
}

// PSP is one row of `esxcli storage nmp psp list`.
type PSP struct {
	Name        string // VMW_PSP_RR
	Description string
}

// ParsePSPList reads `esxcli storage nmp psp list`.
func ParsePSPList(out string) ([]PSP, error) {
	c, err := readTable(CmdPSPList, out, []string{"Name", "Description"}, nil)
	if c == nil {
		return nil, err
	}
	psps := make([]PSP, 0, len(c.t.Rows))
	for _, r := range c.t.Rows {
		psps = append(psps, PSP{Name: c.str(r, "Name"), Description: c.str(r, "Description")})
	}
	return psps, nil
}

// SATPRuleColumns are the columns of `esxcli storage nmp satp rule list`
// on ESXi 6.x and later, in order (ESXi 5.x lacks Rule Group).
var SATPRuleColumns = []string{"Name", "Device", "Vendor", "Model", "Driver", "Transport", "Options",
	"Rule Group", "Claim Options", "Default PSP", "PSP Options", "Description"}

// SATPRule is one row of `esxcli storage nmp satp rule list`: a claim rule
// that gives matching devices to an SATP (and, when set, a default PSP).
type SATPRule struct {
	SATP         string // "Name", e.g. VMW_SATP_ALUA
	Device       string
	Vendor       string
	Model        string
	Driver       string
	Transport    string // iscsi, fc, ...
	Options      string // e.g. reset_on_attempted_reserve
	RuleGroup    string // system, user; "" where the release prints no Rule Group
	ClaimOptions string // tpgs_on, tpgs_off
	DefaultPSP   string
	PSPOptions   string // e.g. iops=1
	Description  string
}

// ParseSATPRules reads `esxcli storage nmp satp rule list`.
func ParseSATPRules(out string) ([]SATPRule, error) {
	optional := []string{}
	for _, c := range SATPRuleColumns {
		if c != "Name" && c != "Default PSP" {
			optional = append(optional, c)
		}
	}
	c, err := readTable(CmdSATPRuleList, out, []string{"Name", "Default PSP"}, optional)
	if c == nil {
		return nil, err
	}
	rules := make([]SATPRule, 0, len(c.t.Rows))
	for _, r := range c.t.Rows {
		rules = append(rules, SATPRule{
			SATP: c.str(r, "Name"), Device: c.str(r, "Device"), Vendor: c.str(r, "Vendor"), Model: c.str(r, "Model"),
			Driver: c.str(r, "Driver"), Transport: c.str(r, "Transport"), Options: c.str(r, "Options"),
			RuleGroup: c.str(r, "Rule Group"), ClaimOptions: c.str(r, "Claim Options"), DefaultPSP: c.str(r, "Default PSP"),
			PSPOptions: c.str(r, "PSP Options"), Description: c.str(r, "Description"),
		})
	}
	return rules, nil
}

// RoundRobinConfig is `esxcli storage nmp psp roundrobin deviceconfig get`.
type RoundRobinConfig struct {
	Device    string
	ByteLimit uint64 // "Byte Limit"
	IOPSLimit uint64 // "IOOperation Limit"
	LimitType string // Default, Iops, Bytes
	UseANO    bool   // "Use Active Unoptimized Paths"
}

// ParseRoundRobinConfig reads `esxcli storage nmp psp roundrobin
// deviceconfig get`: one record per device (a shell loop over devices
// prints several, separated by blank lines).
func ParseRoundRobinConfig(out string) ([]RoundRobinConfig, error) {
	recs, err := ParseBlocks(CmdRoundRobinConfigGet, out)
	if err != nil {
		return nil, err
	}
	cfgs := make([]RoundRobinConfig, 0, len(recs))
	for _, r := range recs {
		f := &fields{cmd: CmdRoundRobinConfigGet, rec: r}
		c := RoundRobinConfig{
			Device:    f.str("Device", true),
			ByteLimit: f.uint64("Byte Limit", true),
			IOPSLimit: f.uint64("IOOperation Limit", true),
			LimitType: f.str("Limit Type", true),
			UseANO:    f.bool("Use Active Unoptimized Paths", true),
		}
		if f.err != nil {
			return nil, f.err
		}
		cfgs = append(cfgs, c)
	}
	return cfgs, nil
}

// FixedConfig is `esxcli storage nmp psp fixed deviceconfig get`.
type FixedConfig struct {
	Device        string // "" where the release prints only the path
	PreferredPath string // runtime name, vmhba64:C0:T0:L0
}

// ParseFixedConfig reads `esxcli storage nmp psp fixed deviceconfig get`.
// No published capture of this command was found; it reads the fields of
// the command's result type (FixedDeviceConfiguration): Preferred Path,
// and Device when printed.
func ParseFixedConfig(out string) ([]FixedConfig, error) {
	recs, err := ParseBlocks(CmdFixedConfigGet, out)
	if err != nil {
		return nil, err
	}
	cfgs := make([]FixedConfig, 0, len(recs))
	for _, r := range recs {
		f := &fields{cmd: CmdFixedConfigGet, rec: r}
		c := FixedConfig{Device: f.str("Device", false), PreferredPath: f.str("Preferred Path", true)}
		if f.err != nil {
			return nil, f.err
		}
		cfgs = append(cfgs, c)
	}
	return cfgs, nil
}

// readTable parses a column table and checks its columns; a nil *columns
// with a nil error is an empty output.
func readTable(cmd, out string, required, optional []string) (*columns, error) {
	t, err := ParseTable(cmd, out)
	if err != nil {
		return nil, err
	}
	if len(t.Columns) == 0 {
		return nil, nil
	}
	return newColumns(cmd, t, required, optional)
}
