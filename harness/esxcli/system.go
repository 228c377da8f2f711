package esxcli

// CmdAdvancedList is the command ParseAdvancedList reads.
const CmdAdvancedList = "esxcli system settings advanced list"

// AdvancedOption is one record of `esxcli system settings advanced list`
// (with -o, the one option asked for), e.g. /Misc/APDTimeout.
type AdvancedOption struct {
	Path               string // /Misc/APDTimeout
	Type               string // integer, string
	IntValue           int64
	DefaultIntValue    int64
	MinValue, MaxValue int64
	StringValue        string
	DefaultStringValue string
	ValidCharacters    string
	Description        string
}

// ParseAdvancedList reads `esxcli system settings advanced list`: records
// without a header line, separated by blank lines. Path and Type are
// required; the values are read when printed.
func ParseAdvancedList(out string) ([]AdvancedOption, error) {
	recs, err := ParseBlocks(CmdAdvancedList, out)
	if err != nil {
		return nil, err
	}
	opts := make([]AdvancedOption, 0, len(recs))
	for _, r := range recs {
		f := &fields{cmd: CmdAdvancedList, rec: r}
		o := AdvancedOption{
			Path:               f.str("Path", true),
			Type:               f.str("Type", true),
			IntValue:           f.int64("Int Value", false),
			DefaultIntValue:    f.int64("Default Int Value", false),
			MinValue:           f.int64("Min Value", false),
			MaxValue:           f.int64("Max Value", false),
			StringValue:        f.str("String Value", false),
			DefaultStringValue: f.str("Default String Value", false),
			ValidCharacters:    f.str("Valid Characters", false),
			Description:        f.str("Description", false),
		}
		if f.err != nil {
			return nil, f.err
		}
		opts = append(opts, o)
	}
	return opts, nil
}
