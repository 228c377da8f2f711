package junit

import (
	"bytes"
	"encoding/xml"
	"strings"
	"testing"
	"time"
)

type doc struct {
	XMLName  xml.Name `xml:"testsuites"`
	Tests    int      `xml:"tests,attr"`
	Failures int      `xml:"failures,attr"`
	Errors   int      `xml:"errors,attr"`
	Skipped  int      `xml:"skipped,attr"`
	Time     string   `xml:"time,attr"`
	Suites   []struct {
		Name      string `xml:"name,attr"`
		Tests     int    `xml:"tests,attr"`
		Failures  int    `xml:"failures,attr"`
		Errors    int    `xml:"errors,attr"`
		Skipped   int    `xml:"skipped,attr"`
		Time      string `xml:"time,attr"`
		Timestamp string `xml:"timestamp,attr"`
		Props     []prop `xml:"properties>property"`
		Cases     []struct {
			Name      string `xml:"name,attr"`
			Classname string `xml:"classname,attr"`
			Time      string `xml:"time,attr"`
			Props     []prop `xml:"properties>property"`
			Failure   *msg   `xml:"failure"`
			Error     *msg   `xml:"error"`
			Skipped   *msg   `xml:"skipped"`
		} `xml:"testcase"`
	} `xml:"testsuite"`
}

type prop struct {
	Name  string `xml:"name,attr"`
	Value string `xml:"value,attr"`
}

type msg struct {
	Message string `xml:"message,attr"`
	Body    string `xml:",chardata"`
}

func TestWriteReadableByCITools(t *testing.T) {
	var buf bytes.Buffer
	err := Write(&buf, Suite{
		Name:       "certkit",
		Timestamp:  time.Date(2026, 1, 2, 15, 4, 5, 0, time.FixedZone("CET", 3600)),
		Properties: []Property{{"tool_version", "v1"}},
		Cases: []Case{
			{Name: "blackhole A0", Classname: "certkit", Status: Passed, Time: 14500 * time.Millisecond, Properties: []Property{{"measurement.path_dead_after", "12.4 s"}}},
			{Name: "reset B0", Classname: "certkit", Status: Failed, Message: "path still active", Details: "path still active\nsamples: ...", Time: 30 * time.Second},
			{Name: "alua", Classname: "certkit", Status: Skipped, Message: "no ALUA"},
			{Name: "lab", Classname: "certkit", Status: Error, Message: "array unreachable", Time: -time.Second},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(buf.String(), `<?xml version="1.0" encoding="UTF-8"?>`) {
		t.Errorf("no XML declaration:\n%s", buf.String())
	}
	var d doc
	if err := xml.Unmarshal(buf.Bytes(), &d); err != nil {
		t.Fatalf("%v\n%s", err, buf.String())
	}
	if d.Tests != 4 || d.Failures != 1 || d.Errors != 1 || d.Skipped != 1 || d.Time != "44.500" {
		t.Errorf("testsuites counts = %+v", d)
	}
	s := d.Suites[0]
	if s.Name != "certkit" || s.Tests != 4 || s.Failures != 1 || s.Errors != 1 || s.Skipped != 1 || s.Time != "44.500" {
		t.Errorf("testsuite = %+v", s)
	}
	if s.Timestamp != "2026-01-02T14:04:05" {
		t.Errorf("timestamp = %q, want UTC without zone", s.Timestamp)
	}
	if len(s.Props) != 1 || s.Props[0] != (prop{"tool_version", "v1"}) {
		t.Errorf("suite properties = %+v", s.Props)
	}
	c := s.Cases
	if c[0].Time != "14.500" || c[0].Failure != nil || c[0].Skipped != nil || len(c[0].Props) != 1 || c[0].Props[0].Value != "12.4 s" {
		t.Errorf("passed case = %+v", c[0])
	}
	if c[1].Failure == nil || c[1].Failure.Message != "path still active" || c[1].Failure.Body != "path still active\nsamples: ..." {
		t.Errorf("failed case = %+v", c[1])
	}
	if c[2].Skipped == nil || c[2].Skipped.Message != "no ALUA" || c[2].Time != "0.000" {
		t.Errorf("skipped case = %+v", c[2])
	}
	if c[3].Error == nil || c[3].Error.Body != "array unreachable" || c[3].Time != "0.000" {
		t.Errorf("error case = %+v", c[3])
	}
}

func TestWriteKeepsXMLWellFormed(t *testing.T) {
	var buf bytes.Buffer
	err := Write(&buf, Suite{Name: `a<b>&"c"`, Cases: []Case{{Name: "x\x00y", Status: Failed, Message: "esc \x1b[31m red ]]> done"}}})
	if err != nil {
		t.Fatal(err)
	}
	var d doc
	if err := xml.Unmarshal(buf.Bytes(), &d); err != nil {
		t.Fatalf("not well-formed: %v\n%q", err, buf.String())
	}
	if d.Suites[0].Name != `a<b>&"c"` || d.Suites[0].Cases[0].Name != "x\uFFFDy" || d.Suites[0].Cases[0].Failure.Message != "esc \uFFFD[31m red ]]> done" {
		t.Errorf("round trip = %+v", d.Suites[0])
	}
}

func TestWriteRejectsUnknownStatus(t *testing.T) {
	err := Write(&bytes.Buffer{}, Suite{Name: "s", Cases: []Case{{Name: "c", Status: "ok"}}})
	if err == nil || !strings.Contains(err.Error(), `case 0 ("c"): unknown status "ok"`) {
		t.Errorf("error = %v", err)
	}
}

func TestWriteEmptySuite(t *testing.T) {
	var buf bytes.Buffer
	if err := Write(&buf, Suite{Name: "empty"}); err != nil {
		t.Fatal(err)
	}
	var d doc
	if err := xml.Unmarshal(buf.Bytes(), &d); err != nil || d.Tests != 0 || len(d.Suites) != 1 || d.Suites[0].Time != "0.000" {
		t.Errorf("%+v %v\n%s", d, err, buf.String())
	}
}
