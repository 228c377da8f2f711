// Package junit writes test results as JUnit XML, the format CI systems
// (Jenkins, GitLab, GitHub Actions reporters) read.
//
// The shape follows what those tools accept: <testsuites> holding one
// <testsuite> with <testcase> elements; a failed case has <failure>, an
// errored one <error>, a skipped one <skipped>; times are seconds with
// millisecond precision. Per-case <properties> carry measurements, the way
// pytest's record_property does; tools that do not know them ignore them.
package junit

import (
	"encoding/xml"
	"fmt"
	"io"
	"time"
)

// Status is the outcome of one test case.
type Status string

const (
	Passed  Status = "passed"
	Failed  Status = "failed"
	Skipped Status = "skipped"
	Error   Status = "error"
)

// Property is a name/value pair attached to a suite or a case.
type Property struct {
	Name, Value string
}

// Case is one test case.
type Case struct {
	Name       string
	Classname  string
	Status     Status
	Message    string // failure, error or skip reason
	Details    string // body of <failure>/<error>; Message when empty
	Time       time.Duration
	Properties []Property
}

// Suite is one test suite.
type Suite struct {
	Name       string
	Timestamp  time.Time     // start of the run; omitted when zero
	Time       time.Duration // total; the sum of case times when zero
	Properties []Property
	Cases      []Case
}

type xmlSuites struct {
	XMLName  xml.Name `xml:"testsuites"`
	Name     string   `xml:"name,attr"`
	Tests    int      `xml:"tests,attr"`
	Failures int      `xml:"failures,attr"`
	Errors   int      `xml:"errors,attr"`
	Skipped  int      `xml:"skipped,attr"`
	Time     string   `xml:"time,attr"`
	Suites   []xmlSuite
}

type xmlSuite struct {
	XMLName    xml.Name       `xml:"testsuite"`
	Name       string         `xml:"name,attr"`
	Tests      int            `xml:"tests,attr"`
	Failures   int            `xml:"failures,attr"`
	Errors     int            `xml:"errors,attr"`
	Skipped    int            `xml:"skipped,attr"`
	Time       string         `xml:"time,attr"`
	Timestamp  string         `xml:"timestamp,attr,omitempty"`
	Properties *xmlProperties `xml:"properties"`
	Cases      []xmlCase      `xml:"testcase"`
}

type xmlProperties struct {
	Properties []xmlProperty `xml:"property"`
}

type xmlProperty struct {
	Name  string `xml:"name,attr"`
	Value string `xml:"value,attr"`
}

type xmlCase struct {
	Name       string         `xml:"name,attr"`
	Classname  string         `xml:"classname,attr"`
	Time       string         `xml:"time,attr"`
	Properties *xmlProperties `xml:"properties"`
	Skipped    *xmlMessage    `xml:"skipped"`
	Error      *xmlMessage    `xml:"error"`
	Failure    *xmlMessage    `xml:"failure"`
}

type xmlMessage struct {
	Message string `xml:"message,attr,omitempty"`
	Type    string `xml:"type,attr,omitempty"`
	Body    string `xml:",chardata"`
}

// Write writes s as a JUnit XML document. Characters XML cannot carry
// (NUL, most control characters) are replaced with U+FFFD.
func Write(w io.Writer, s Suite) error {
	xs := xmlSuite{Name: s.Name, Properties: properties(s.Properties)}
	if !s.Timestamp.IsZero() {
		xs.Timestamp = s.Timestamp.UTC().Format("2006-01-02T15:04:05")
	}
	var total time.Duration
	for i, c := range s.Cases {
		xc := xmlCase{Name: c.Name, Classname: c.Classname, Time: seconds(c.Time), Properties: properties(c.Properties)}
		body := c.Details
		if body == "" {
			body = c.Message
		}
		switch c.Status {
		case Passed:
		case Failed:
			xs.Failures++
			xc.Failure = &xmlMessage{Message: c.Message, Type: "failure", Body: body}
		case Error:
			xs.Errors++
			xc.Error = &xmlMessage{Message: c.Message, Type: "error", Body: body}
		case Skipped:
			xs.Skipped++
			xc.Skipped = &xmlMessage{Message: c.Message}
		default:
			return fmt.Errorf("junit: suite %q: case %d (%q): unknown status %q; want passed, failed, skipped or error", s.Name, i, c.Name, c.Status)
		}
		total += max(c.Time, 0)
		xs.Cases = append(xs.Cases, xc)
	}
	if s.Time > 0 {
		total = s.Time
	}
	xs.Tests, xs.Time = len(s.Cases), seconds(total)
	doc := xmlSuites{Name: s.Name, Tests: xs.Tests, Failures: xs.Failures, Errors: xs.Errors, Skipped: xs.Skipped, Time: xs.Time, Suites: []xmlSuite{xs}}
	if _, err := io.WriteString(w, xml.Header); err != nil {
		return err
	}
	enc := xml.NewEncoder(w)
	enc.Indent("", "  ")
	if err := enc.Encode(doc); err != nil {
		return fmt.Errorf("junit: suite %q: %w", s.Name, err)
	}
	_, err := io.WriteString(w, "\n")
	return err
}

func properties(ps []Property) *xmlProperties {
	if len(ps) == 0 {
		return nil
	}
	out := &xmlProperties{}
	for _, p := range ps {
		out.Properties = append(out.Properties, xmlProperty(p))
	}
	return out
}

func seconds(d time.Duration) string {
	return fmt.Sprintf("%.3f", max(d, 0).Seconds())
}
