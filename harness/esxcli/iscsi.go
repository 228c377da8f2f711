package esxcli

// Adapter is one row of `esxcli iscsi adapter list`.
type Adapter struct {
	Name        string // "Adapter", e.g. vmhba64
	Driver      string // iscsi_vmk
	State       string // online
	UID         string // iscsi.vmhba64
	Description string // iSCSI Software Adapter
}

// ParseAdapterList reads `esxcli iscsi adapter list`.
func ParseAdapterList(out string) ([]Adapter, error) {
	t, err := ParseTable(CmdISCSIAdapterList, out)
	if err != nil {
		return nil, err
	}
	if len(t.Columns) == 0 {
		return nil, nil
	}
	c, err := newColumns(CmdISCSIAdapterList, t, []string{"Adapter", "Driver", "State", "UID", "Description"}, nil)
	if err != nil {
		return nil, err
	}
	adapters := make([]Adapter, 0, len(t.Rows))
	for _, r := range t.Rows {
		adapters = append(adapters, Adapter{
			Name: c.str(r, "Adapter"), Driver: c.str(r, "Driver"), State: c.str(r, "State"),
			UID: c.str(r, "UID"), Description: c.str(r, "Description"),
		})
	}
	return adapters, nil
}

// Param is one row of `esxcli iscsi adapter param get`.
type Param struct {
	Name     string // e.g. NoopOutInterval
	Current  string
	Default  string
	Min, Max string // "na" where ESXi prints na
	Settable bool
	Inherit  bool // false where the release prints no Inherit column
}

// ParseAdapterParams reads `esxcli iscsi adapter param get`.
func ParseAdapterParams(out string) ([]Param, error) {
	t, err := ParseTable(CmdISCSIParamGet, out)
	if err != nil {
		return nil, err
	}
	if len(t.Columns) == 0 {
		return nil, nil
	}
	c, err := newColumns(CmdISCSIParamGet, t, []string{"Name", "Current", "Default", "Min", "Max", "Settable"}, []string{"Inherit"})
	if err != nil {
		return nil, err
	}
	params := make([]Param, 0, len(t.Rows))
	for _, r := range t.Rows {
		params = append(params, Param{
			Name: c.str(r, "Name"), Current: c.str(r, "Current"), Default: c.str(r, "Default"),
			Min: c.str(r, "Min"), Max: c.str(r, "Max"),
			Settable: c.bool(r, "Settable"), Inherit: c.bool(r, "Inherit"),
		})
		if c.err != nil {
			return nil, c.err
		}
	}
	return params, nil
}

// SendTarget is one row of `esxcli iscsi adapter discovery sendtarget list`.
type SendTarget struct {
	Adapter string
	Address string // "Sendtarget": host:port
}

// ParseSendTargets reads `esxcli iscsi adapter discovery sendtarget list`.
func ParseSendTargets(out string) ([]SendTarget, error) {
	t, err := ParseTable(CmdISCSISendTargets, out)
	if err != nil {
		return nil, err
	}
	if len(t.Columns) == 0 {
		return nil, nil
	}
	c, err := newColumns(CmdISCSISendTargets, t, []string{"Adapter", "Sendtarget"}, nil)
	if err != nil {
		return nil, err
	}
	sts := make([]SendTarget, 0, len(t.Rows))
	for _, r := range t.Rows {
		sts = append(sts, SendTarget{Adapter: c.str(r, "Adapter"), Address: c.str(r, "Sendtarget")})
	}
	return sts, nil
}
