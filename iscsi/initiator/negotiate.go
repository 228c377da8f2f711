package initiator

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/certkit/certkit/iscsi"
)

// rule is how a key's result is computed from offer and answer (RFC 7143 §13).
type rule int

const (
	ruleMin  rule = iota // numeric, result is the minimum
	ruleMax              // numeric, result is the maximum
	ruleAnd              // Yes/No, result is the AND
	ruleOr               // Yes/No, result is the OR
	ruleList             // the answer is one of the offered values
)

type keyDef struct {
	rule   rule
	def    string // RFC default, used when a key is not (or irrelevantly) negotiated
	lo, hi uint64 // numeric range
}

var keyDefs = map[string]keyDef{
	"HeaderDigest":        {rule: ruleList, def: "None"},
	"DataDigest":          {rule: ruleList, def: "None"},
	"MaxConnections":      {rule: ruleMin, def: "1", lo: 1, hi: 65535},
	"InitialR2T":          {rule: ruleOr, def: "Yes"},
	"ImmediateData":       {rule: ruleAnd, def: "Yes"},
	"MaxBurstLength":      {rule: ruleMin, def: "262144", lo: 512, hi: 1<<24 - 1},
	"FirstBurstLength":    {rule: ruleMin, def: "65536", lo: 512, hi: 1<<24 - 1},
	"DefaultTime2Wait":    {rule: ruleMax, def: "2", lo: 0, hi: 3600},
	"DefaultTime2Retain":  {rule: ruleMin, def: "20", lo: 0, hi: 3600},
	"MaxOutstandingR2T":   {rule: ruleMin, def: "1", lo: 1, hi: 65535},
	"DataPDUInOrder":      {rule: ruleOr, def: "Yes"},
	"DataSequenceInOrder": {rule: ruleOr, def: "Yes"},
	"ErrorRecoveryLevel":  {rule: ruleMin, def: "0", lo: 0, hi: 2},
	// RFC 3720 markers; older targets still propose them.
	"IFMarker": {rule: ruleAnd, def: "No"},
	"OFMarker": {rule: ruleAnd, def: "No"},
}

// offers returns the operational keys this initiator sends, in order.
func offers(discovery bool, mrdsl uint32) iscsi.Text {
	t := iscsi.Text{{Key: "HeaderDigest", Value: "None"}, {Key: "DataDigest", Value: "None"}}
	if !discovery {
		t = append(t, iscsi.Text{
			{Key: "MaxConnections", Value: "1"},
			{Key: "InitialR2T", Value: "No"},
			{Key: "ImmediateData", Value: "Yes"},
		}...)
	}
	t.Add("MaxRecvDataSegmentLength", strconv.FormatUint(uint64(mrdsl), 10))
	if !discovery {
		t.Add("MaxBurstLength", "262144")
		t.Add("FirstBurstLength", "65536")
	}
	t.Add("DefaultTime2Wait", "2")
	t.Add("DefaultTime2Retain", "0")
	if !discovery {
		t = append(t, iscsi.Text{
			{Key: "MaxOutstandingR2T", Value: "1"},
			{Key: "DataPDUInOrder", Value: "Yes"},
			{Key: "DataSequenceInOrder", Value: "Yes"},
		}...)
	}
	t.Add("ErrorRecoveryLevel", "0")
	return t
}

// negotiation tracks the operational stage: what was offered, what the
// target answered or proposed, and what this side still owes it.
type negotiation struct {
	offered     map[string]string // our offers not yet answered
	prefs       map[string]string // what we would offer, for target proposals
	result      map[string]string
	targetMRDSL uint32
	tpgt        int
	alias       string
}

func newNegotiation(offer iscsi.Text) *negotiation {
	n := &negotiation{
		offered:     map[string]string{},
		prefs:       map[string]string{},
		result:      map[string]string{},
		targetMRDSL: iscsi.DefaultMaxRecvDataSegmentLength,
	}
	for _, kv := range offers(false, 0) {
		n.prefs[kv.Key] = kv.Value
	}
	n.prefs["IFMarker"], n.prefs["OFMarker"] = "No", "No"
	for _, kv := range offer {
		n.offered[kv.Key] = kv.Value
		n.prefs[kv.Key] = kv.Value
	}
	return n
}

// declare records keys that are declarations rather than negotiations.
// It reports whether key was one.
func (n *negotiation) declare(key, value string) (bool, error) {
	switch key {
	case "MaxRecvDataSegmentLength":
		v, err := parseNum(key, value, 512, 1<<24-1)
		if err != nil {
			return true, err
		}
		n.targetMRDSL = uint32(v)
	case "TargetPortalGroupTag":
		v, err := parseNum(key, value, 0, 65535)
		if err != nil {
			return true, err
		}
		n.tpgt = int(v)
	case "TargetAlias":
		n.alias = value
	case "TargetAddress", "AuthMethod":
		// Redirects carry TargetAddress with a status class of 1; AuthMethod
		// belongs to the security stage and is checked there.
	default:
		return false, nil
	}
	return true, nil
}

// apply takes the keys of one Login Response and returns the answers this
// side owes for keys the target proposed on its own.
func (n *negotiation) apply(keys iscsi.Text) (iscsi.Text, error) {
	var answers iscsi.Text
	for _, kv := range keys {
		if ok, err := n.declare(kv.Key, kv.Value); ok {
			if err != nil {
				return nil, err
			}
			continue
		}
		def, known := keyDefs[kv.Key]
		if offer, ok := n.offered[kv.Key]; ok {
			delete(n.offered, kv.Key)
			switch kv.Value {
			case "Irrelevant", "Reject", "NotUnderstood":
				n.result[kv.Key] = def.def
				continue
			}
			if err := checkAnswer(kv.Key, def, offer, kv.Value); err != nil {
				return nil, err
			}
			n.result[kv.Key] = kv.Value
			continue
		}
		if !known {
			answers.Add(kv.Key, "NotUnderstood")
			continue
		}
		ans, err := answer(kv.Key, def, n.prefs[kv.Key], kv.Value)
		if err != nil {
			return nil, err
		}
		n.result[kv.Key] = ans
		answers.Add(kv.Key, ans)
	}
	return answers, nil
}

// checkAnswer verifies the target's answer to our offer is one RFC 7143 §13
// permits for the key's result function.
func checkAnswer(key string, def keyDef, offer, got string) error {
	bad := func(why string) error {
		return fmt.Errorf("target answered %s=%s to the offer %s=%s: %s", key, got, key, offer, why)
	}
	switch def.rule {
	case ruleMin, ruleMax:
		v, err := parseNum(key, got, def.lo, def.hi)
		if err != nil {
			return err
		}
		o, _ := strconv.ParseUint(offer, 10, 64)
		if def.rule == ruleMin && v > o {
			return bad("the result of a minimum cannot exceed the offer")
		}
		if def.rule == ruleMax && v < o {
			return bad("the result of a maximum cannot be below the offer")
		}
	case ruleAnd, ruleOr:
		if got != "Yes" && got != "No" {
			return bad("not Yes or No")
		}
		if def.rule == ruleAnd && offer == "No" && got == "Yes" {
			return bad("the AND of No is No")
		}
		if def.rule == ruleOr && offer == "Yes" && got == "No" {
			return bad("the OR of Yes is Yes")
		}
	case ruleList:
		for _, o := range strings.Split(offer, ",") {
			if o == got {
				return nil
			}
		}
		return bad("not one of the offered values")
	}
	return nil
}

// answer computes this side's response to a key the target proposed.
func answer(key string, def keyDef, pref, proposed string) (string, error) {
	switch def.rule {
	case ruleMin, ruleMax:
		v, err := parseNum(key, proposed, def.lo, def.hi)
		if err != nil {
			return "", err
		}
		p, _ := strconv.ParseUint(pref, 10, 64)
		if def.rule == ruleMin {
			v = min(v, p)
		} else {
			v = max(v, p)
		}
		return strconv.FormatUint(v, 10), nil
	case ruleAnd, ruleOr:
		if proposed != "Yes" && proposed != "No" {
			return "", fmt.Errorf("target proposed %s=%s, which is not Yes or No", key, proposed)
		}
		if def.rule == ruleAnd {
			return yesNo(proposed == "Yes" && pref == "Yes"), nil
		}
		return yesNo(proposed == "Yes" || pref == "Yes"), nil
	default: // ruleList
		for _, v := range strings.Split(proposed, ",") {
			if v == pref {
				return v, nil
			}
		}
		return "Reject", nil
	}
}

// params turns the negotiated keys into Params, RFC defaults filling gaps.
func (n *negotiation) params() (Params, error) {
	get := func(k string) string {
		if v, ok := n.result[k]; ok {
			return v
		}
		return keyDefs[k].def
	}
	num := func(k string) uint64 {
		v, _ := strconv.ParseUint(get(k), 10, 64)
		return v
	}
	p := Params{
		HeaderDigest:                   get("HeaderDigest") != "None",
		DataDigest:                     get("DataDigest") != "None",
		MaxConnections:                 int(num("MaxConnections")),
		InitialR2T:                     get("InitialR2T") == "Yes",
		ImmediateData:                  get("ImmediateData") == "Yes",
		TargetMaxRecvDataSegmentLength: n.targetMRDSL,
		MaxBurstLength:                 uint32(num("MaxBurstLength")),
		FirstBurstLength:               uint32(num("FirstBurstLength")),
		DefaultTime2Wait:               int(num("DefaultTime2Wait")),
		DefaultTime2Retain:             int(num("DefaultTime2Retain")),
		MaxOutstandingR2T:              int(num("MaxOutstandingR2T")),
		DataPDUInOrder:                 get("DataPDUInOrder") == "Yes",
		DataSequenceInOrder:            get("DataSequenceInOrder") == "Yes",
		ErrorRecoveryLevel:             int(num("ErrorRecoveryLevel")),
		TargetPortalGroupTag:           n.tpgt,
		TargetAlias:                    n.alias,
	}
	if p.HeaderDigest || p.DataDigest {
		return p, fmt.Errorf("target settled on digests (HeaderDigest=%s, DataDigest=%s); only None is supported", get("HeaderDigest"), get("DataDigest"))
	}
	if p.ErrorRecoveryLevel != 0 {
		return p, fmt.Errorf("target settled on ErrorRecoveryLevel=%d; only 0 is supported", p.ErrorRecoveryLevel)
	}
	if !p.DataPDUInOrder || !p.DataSequenceInOrder {
		return p, fmt.Errorf("target settled on DataPDUInOrder=%s, DataSequenceInOrder=%s; only Yes is supported", get("DataPDUInOrder"), get("DataSequenceInOrder"))
	}
	if p.FirstBurstLength > p.MaxBurstLength {
		// RFC 7143 §13.14: FirstBurstLength MUST NOT exceed MaxBurstLength.
		p.FirstBurstLength = p.MaxBurstLength
	}
	return p, nil
}

func parseNum(key, value string, lo, hi uint64) (uint64, error) {
	// RFC 7143 §6.1: numbers are decimal or 0x-prefixed hexadecimal.
	base, digits := 10, value
	if len(value) > 2 && (value[:2] == "0x" || value[:2] == "0X") {
		base, digits = 16, value[2:]
	}
	v, err := strconv.ParseUint(digits, base, 64)
	if err != nil || v < lo || v > hi {
		return 0, fmt.Errorf("target sent %s=%q, not a number in %d..%d", key, value, lo, hi)
	}
	return v, nil
}

func yesNo(b bool) string {
	if b {
		return "Yes"
	}
	return "No"
}
