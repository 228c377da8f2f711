package esxcli

import "time"

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

// Commands of the iscsi session and target namespaces the typed parsers read.
const (
	CmdISCSISessionList    = "esxcli iscsi session list"
	CmdISCSIConnectionList = "esxcli iscsi session connection list"
	CmdISCSIPortalList     = "esxcli iscsi adapter target portal list"
)

// Session is one record of `esxcli iscsi session list`: one iSCSI session
// of an adapter to a target portal group, with what its login negotiated.
type Session struct {
	Adapter              string
	Target               string // target IQN
	ISID                 string // 12 hex digits, e.g. 00023d000001
	TargetPortalGroupTag int
	AuthenticationMethod string // none, chap, ...
	DataPDUInOrder       bool
	DataSequenceInOrder  bool
	DefaultTime2Retain   int
	DefaultTime2Wait     int
	ErrorRecoveryLevel   int
	FirstBurstLength     int
	ImmediateData        bool
	InitialR2T           bool
	MaxBurstLength       int
	MaxConnections       int
	MaxOutstandingR2T    int
	TSIH                 int
}

// ParseSessionList reads `esxcli iscsi session list`.
func ParseSessionList(out string) ([]Session, error) {
	recs, err := ParseBlocks(CmdISCSISessionList, out)
	if err != nil {
		return nil, err
	}
	sessions := make([]Session, 0, len(recs))
	for _, r := range recs {
		f := &fields{cmd: CmdISCSISessionList, rec: r}
		s := Session{
			Adapter:              f.str("Adapter", true),
			Target:               f.str("Target", true),
			ISID:                 f.str("ISID", true),
			TargetPortalGroupTag: f.int("TargetPortalGroupTag", true),
			AuthenticationMethod: f.str("AuthenticationMethod", false),
			DataPDUInOrder:       f.bool("DataPduInOrder", false),
			DataSequenceInOrder:  f.bool("DataSequenceInOrder", false),
			DefaultTime2Retain:   f.int("DefaultTime2Retain", false),
			DefaultTime2Wait:     f.int("DefaultTime2Wait", false),
			ErrorRecoveryLevel:   f.int("ErrorRecoveryLevel", false),
			FirstBurstLength:     f.int("FirstBurstLength", false),
			ImmediateData:        f.bool("ImmediateData", false),
			InitialR2T:           f.bool("InitialR2T", false),
			MaxBurstLength:       f.int("MaxBurstLength", false),
			MaxConnections:       f.int("MaxConnections", false),
			MaxOutstandingR2T:    f.int("MaxOutstandingR2T", false),
			TSIH:                 f.int("TSIH", false),
		}
		if f.err != nil {
			return nil, f.err
		}
		sessions = append(sessions, s)
	}
	return sessions, nil
}

// ConnectionTimeLayout is how `iscsi session connection list` prints times
// (MM/DD/YY, host clock): 12/14/12 18:59:57.
const ConnectionTimeLayout = "01/02/06 15:04:05"

// Connection is one record of `esxcli iscsi session connection list`.
type Connection struct {
	Adapter                      string
	Target                       string
	ISID                         string
	CID                          int
	DataDigest, HeaderDigest     string // NONE, CRC32C
	IFMarker                     bool
	IFMarkerInterval             int
	MaxRecvDataSegmentLength     int
	MaxTransmitDataSegmentLength int
	OFMarker                     bool
	OFMarkerInterval             int
	ConnectionAddress            string // the portal's IP
	RemoteAddress                string
	LocalAddress                 string
	// The times as the host printed them, read in UTC (ESXi's clock is UTC
	// unless changed); zero when not printed.
	SessionCreateTime    time.Time
	ConnectionCreateTime time.Time
	ConnectionStartTime  time.Time
	State                string // logged_in, ...
}

// ParseConnectionList reads `esxcli iscsi session connection list`.
func ParseConnectionList(out string) ([]Connection, error) {
	recs, err := ParseBlocks(CmdISCSIConnectionList, out)
	if err != nil {
		return nil, err
	}
	conns := make([]Connection, 0, len(recs))
	for _, r := range recs {
		f := &fields{cmd: CmdISCSIConnectionList, rec: r}
		c := Connection{
			Adapter:                      f.str("Adapter", true),
			Target:                       f.str("Target", true),
			ISID:                         f.str("ISID", true),
			CID:                          f.int("CID", true),
			DataDigest:                   f.str("DataDigest", false),
			HeaderDigest:                 f.str("HeaderDigest", false),
			IFMarker:                     f.bool("IFMarker", false),
			IFMarkerInterval:             f.int("IFMarkerInterval", false),
			MaxRecvDataSegmentLength:     f.int("MaxRecvDataSegmentLength", false),
			MaxTransmitDataSegmentLength: f.int("MaxTransmitDataSegmentLength", false),
			OFMarker:                     f.bool("OFMarker", false),
			OFMarkerInterval:             f.int("OFMarkerInterval", false),
			ConnectionAddress:            f.str("ConnectionAddress", false),
			RemoteAddress:                f.str("RemoteAddress", false),
			LocalAddress:                 f.str("LocalAddress", false),
			SessionCreateTime:            f.time("SessionCreateTime", ConnectionTimeLayout),
			ConnectionCreateTime:         f.time("ConnectionCreateTime", ConnectionTimeLayout),
			ConnectionStartTime:          f.time("ConnectionStartTime", ConnectionTimeLayout),
			State:                        f.str("State", true),
		}
		if f.err != nil {
			return nil, f.err
		}
		conns = append(conns, c)
	}
	return conns, nil
}

// TargetPortal is one row of `esxcli iscsi adapter target portal list`.
type TargetPortal struct {
	Adapter string
	Target  string // target IQN
	IP      string
	Port    int
	TPGT    int // "Tpgt"
}

// ParseTargetPortals reads `esxcli iscsi adapter target portal list`.
func ParseTargetPortals(out string) ([]TargetPortal, error) {
	c, err := readTable(CmdISCSIPortalList, out, []string{"Adapter", "Target", "IP", "Port", "Tpgt"}, nil)
	if c == nil {
		return nil, err
	}
	portals := make([]TargetPortal, 0, len(c.t.Rows))
	for _, r := range c.t.Rows {
		portals = append(portals, TargetPortal{Adapter: c.str(r, "Adapter"), Target: c.str(r, "Target"), IP: c.str(r, "IP"),
			Port: c.int(r, "Port"), TPGT: c.int(r, "Tpgt")})
		if c.err != nil {
			return nil, c.err
		}
	}
	return portals, nil
}
