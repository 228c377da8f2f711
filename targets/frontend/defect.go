package frontend

// Defect makes a target misbehave on purpose. A certification harness is
// only as strict as its initiator: each defect is a negative control that a
// correct initiator must notice (by stalling, failing a path, ...), and the
// tests that use one say what the initiator did.
type Defect struct {
	// CloseWindowAfter, when not zero, shuts every session's CmdSN window
	// after that many SCSI commands were delivered: every PDU from then on
	// advertises MaxCmdSN = ExpCmdSN-1 (RFC 7143 §4.2.2.1), so a strict
	// initiator stops sending commands once it used up what was advertised
	// before. Commands within an earlier advertised window still run.
	CloseWindowAfter int
}
