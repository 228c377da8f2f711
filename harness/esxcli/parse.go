package esxcli

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// ParseError says which command's output could not be read, where, and why.
type ParseError struct {
	Command string // e.g. "esxcli storage core path list"
	Line    int    // 1-based line in the output; 0 when not about one line
	Msg     string
}

func (e *ParseError) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("%s: output line %d: %s", e.Command, e.Line, e.Msg)
	}
	return fmt.Sprintf("%s: %s", e.Command, e.Msg)
}

// Field is one "Key: Value" line of a record.
type Field struct {
	Key, Value string
	Line       int
}

// Record is one object of esxcli's default (text) formatter: a header line
// naming the object, then "Key: Value" lines indented by three spaces.
type Record struct {
	// Header is the object's line with a trailing ':' removed; "" when the
	// output starts with fields (e.g. `nmp psp roundrobin deviceconfig get`).
	Header string
	Line   int // line of the header (of the first field when there is none)
	Fields []Field
}

// Get returns the value of key.
func (r Record) Get(key string) (string, bool) {
	for _, f := range r.Fields {
		if f.Key == key {
			return f.Value, true
		}
	}
	return "", false
}

// flatKey is what a "Key: Value" line looks like when the 3-space indent is
// gone (as on blogs that stripped it): keys are words, digits and a little
// punctuation, never '.' or ',' the way device, path and session headers
// ("naa.6001...", "iqn.1998-01.com.vmware:...", "vmhba33,iqn...") have.
var flatKey = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9 ()/_#-]*:(\s|$)`)

// ParseBlocks reads the record layout of esxcli's text formatter. It takes
// both the canonical shape (header at column 0, fields indented) and the
// shape with indents stripped: when no field line is indented, a line that
// looks like "Key: Value" is a field and any other line a header. Records
// without a header (`system settings advanced list`, several `deviceconfig
// get` in a row) are separated by blank lines: a field after a blank line
// starts a new record when the current one already has fields. Other blank
// lines are ignored. command names the command in errors.
func ParseBlocks(command, out string) ([]Record, error) {
	lines := splitLines(out)
	indented := false
	for _, l := range lines {
		if l != "" && (l[0] == ' ' || l[0] == '\t') {
			indented = true
			break
		}
	}
	var recs []Record
	afterBlank := false
	for i, l := range lines {
		n := i + 1
		if l == "" {
			afterBlank = true
			continue
		}
		blank := afterBlank
		afterBlank = false
		isField := l[0] == ' ' || l[0] == '\t'
		if !indented {
			isField = flatKey.MatchString(l)
		}
		if !isField {
			recs = append(recs, Record{Header: strings.TrimSuffix(l, ":"), Line: n})
			continue
		}
		key, value, ok := cutField(strings.TrimSpace(l))
		if !ok {
			return nil, &ParseError{Command: command, Line: n, Msg: fmt.Sprintf("%q is not a \"Key: Value\" line", clip(l))}
		}
		if len(recs) == 0 || (blank && len(recs[len(recs)-1].Fields) > 0) {
			recs = append(recs, Record{Line: n})
		}
		r := &recs[len(recs)-1]
		if _, dup := r.Get(key); dup {
			return nil, &ParseError{Command: command, Line: n, Msg: fmt.Sprintf("field %q appears twice in record %q", key, clip(r.Header))}
		}
		r.Fields = append(r.Fields, Field{Key: key, Value: strings.TrimSpace(value), Line: n})
	}
	return recs, nil
}

// cutField splits "Key: Value" (or "Key:" with no value) at the first
// ": ", so values may hold colons ("Current Path=vmhba33:C0:T0:L0").
func cutField(l string) (key, value string, ok bool) {
	if i := strings.Index(l, ": "); i > 0 {
		return strings.TrimSpace(l[:i]), l[i+2:], true
	}
	if k, found := strings.CutSuffix(l, ":"); found && strings.TrimSpace(k) != "" {
		return strings.TrimSpace(k), "", true
	}
	return "", "", false
}

// Table is a column table of esxcli's text formatter: a header line, a row
// of dashes whose runs give the column widths, then one line per row.
type Table struct {
	Columns []string
	Rows    []Row
}

// Row is one line of a table, one cell per column.
type Row struct {
	Cells []string
	Line  int
}

// Col returns the index of the column called name, or -1.
func (t *Table) Col(name string) int {
	for i, c := range t.Columns {
		if c == name {
			return i
		}
	}
	return -1
}

// ParseTable reads a column table. Cells are cut at the columns the dashes
// row gives, so cells may hold spaces ("iSCSI Software Adapter") or be
// empty. When the header does not line up with the dashes (blogs collapse
// runs of spaces), lines are split at white space instead and the last
// column takes the rest of the line.
func ParseTable(command, out string) (*Table, error) {
	lines := splitLines(out)
	i := 0
	for i < len(lines) && lines[i] == "" {
		i++
	}
	if i == len(lines) {
		return &Table{}, nil
	}
	header := lines[i]
	j := i + 1
	for j < len(lines) && lines[j] == "" {
		j++
	}
	if j == len(lines) || strings.Trim(lines[j], "- ") != "" || !strings.Contains(lines[j], "-") {
		return nil, &ParseError{Command: command, Line: j + 1, Msg: fmt.Sprintf("no row of dashes under the header %q; is this a column table?", clip(header))}
	}
	starts := dashStarts(lines[j])
	t := &Table{}
	aligned := lineUp(header, starts, true)
	if aligned {
		t.Columns = cut(header, starts)
	} else {
		t.Columns = strings.Fields(header)
		if len(t.Columns) != len(starts) {
			return nil, &ParseError{Command: command, Line: i + 1, Msg: fmt.Sprintf("header %q has %d names but the dashes row %d columns", clip(header), len(t.Columns), len(starts))}
		}
	}
	for k := j + 1; k < len(lines); k++ {
		l := lines[k]
		if l == "" {
			continue
		}
		var cells []string
		if aligned && lineUp(l, starts, false) {
			cells = cut(l, starts)
		} else {
			f := strings.Fields(l)
			if len(f) < len(starts) {
				return nil, &ParseError{Command: command, Line: k + 1, Msg: fmt.Sprintf("row %q has %d cells, want %d (%s)", clip(l), len(f), len(starts), strings.Join(t.Columns, ", "))}
			}
			cells = append(f[:len(starts)-1:len(starts)-1], strings.Join(f[len(starts)-1:], " "))
		}
		t.Rows = append(t.Rows, Row{Cells: cells, Line: k + 1})
	}
	return t, nil
}

// dashStarts returns where each run of dashes starts.
func dashStarts(dashes string) []int {
	var starts []int
	for i := 0; i < len(dashes); i++ {
		if dashes[i] == '-' && (i == 0 || dashes[i-1] != '-') {
			starts = append(starts, i)
		}
	}
	return starts
}

// lineUp reports whether l's cells sit in the columns: a space before every
// column start it reaches. A header must reach every column with a name.
func lineUp(l string, starts []int, header bool) bool {
	for _, s := range starts {
		switch {
		case s < len(l):
			if (s > 0 && l[s-1] != ' ') || (header && l[s] == ' ') {
				return false
			}
		case header:
			return false
		case s == len(l) && s > 0 && l[s-1] != ' ':
			return false
		}
	}
	return true
}

// cut slices l at the column starts and trims each cell.
func cut(l string, starts []int) []string {
	cells := make([]string, len(starts))
	for i, s := range starts {
		if s >= len(l) {
			continue
		}
		end := len(l)
		if i+1 < len(starts) && starts[i+1]-1 < end {
			end = starts[i+1] - 1
		}
		if end < s {
			end = s
		}
		cells[i] = strings.TrimSpace(l[s:end])
	}
	return cells
}

// ParseBool reads the single true/false line some commands print
// (`esxcli iscsi software get`).
func ParseBool(command, out string) (bool, error) {
	switch s := strings.TrimSpace(out); s {
	case "true":
		return true, nil
	case "false":
		return false, nil
	default:
		return false, &ParseError{Command: command, Msg: fmt.Sprintf("output %q is not true or false", clip(s))}
	}
}

// splitLines splits output into lines without line ends or trailing blanks.
func splitLines(out string) []string {
	out = strings.TrimSuffix(out, "\n")
	if out == "" {
		return nil
	}
	lines := strings.Split(out, "\n")
	for i, l := range lines {
		lines[i] = strings.TrimRight(l, " \t\r")
	}
	return lines
}

// clip shortens what an error quotes.
func clip(s string) string {
	if len(s) > 80 {
		return s[:77] + "..."
	}
	return s
}

// fields reads typed values out of a record, keeping the first error.
type fields struct {
	cmd string
	rec Record
	err error
}

func (f *fields) fail(line int, format string, args ...any) {
	if f.err == nil {
		f.err = &ParseError{Command: f.cmd, Line: line, Msg: fmt.Sprintf(format, args...)}
	}
}

func (f *fields) lookup(key string, required bool) (Field, bool) {
	for _, fl := range f.rec.Fields {
		if fl.Key == key {
			return fl, true
		}
	}
	if required {
		f.fail(f.rec.Line, "record %q has no %q field; is this `%s` output?", clip(f.rec.Header), key, f.cmd)
	}
	return Field{}, false
}

func (f *fields) str(key string, required bool) string {
	fl, _ := f.lookup(key, required)
	return fl.Value
}

func (f *fields) int(key string, required bool) int {
	fl, ok := f.lookup(key, required)
	if !ok {
		return 0
	}
	v, err := strconv.Atoi(fl.Value)
	if err != nil {
		f.fail(fl.Line, "%s: %q is not an integer", key, clip(fl.Value))
	}
	return v
}

func (f *fields) int64(key string, required bool) int64 {
	fl, ok := f.lookup(key, required)
	if !ok {
		return 0
	}
	v, err := strconv.ParseInt(fl.Value, 10, 64)
	if err != nil {
		f.fail(fl.Line, "%s: %q is not an integer", key, clip(fl.Value))
	}
	return v
}

// time reads an optional time printed in layout; an empty value is the
// zero time.
func (f *fields) time(key, layout string) time.Time {
	fl, ok := f.lookup(key, false)
	if !ok || fl.Value == "" {
		return time.Time{}
	}
	v, err := time.Parse(layout, fl.Value)
	if err != nil {
		f.fail(fl.Line, "%s: %q is not a time like %q", key, clip(fl.Value), layout)
	}
	return v
}

func (f *fields) uint64(key string, required bool) uint64 {
	fl, ok := f.lookup(key, required)
	if !ok {
		return 0
	}
	v, err := strconv.ParseUint(fl.Value, 10, 64)
	if err != nil {
		f.fail(fl.Line, "%s: %q is not a count", key, clip(fl.Value))
	}
	return v
}

func (f *fields) bool(key string, required bool) bool {
	fl, ok := f.lookup(key, required)
	if !ok {
		return false
	}
	switch fl.Value {
	case "true":
		return true
	case "false":
		return false
	}
	f.fail(fl.Line, "%s: %q is not true or false", key, clip(fl.Value))
	return false
}

// columns reads typed cells out of a table.
type columns struct {
	cmd string
	t   *Table
	idx map[string]int
	err error
}

func newColumns(cmd string, t *Table, required, optional []string) (*columns, error) {
	c := &columns{cmd: cmd, t: t, idx: map[string]int{}}
	for _, name := range required {
		i := t.Col(name)
		if i < 0 {
			return nil, &ParseError{Command: cmd, Line: 1, Msg: fmt.Sprintf("no %q column among %q; is this `%s` output?", name, t.Columns, cmd)}
		}
		c.idx[name] = i
	}
	for _, name := range optional {
		if i := t.Col(name); i >= 0 {
			c.idx[name] = i
		}
	}
	return c, nil
}

func (c *columns) str(r Row, name string) string {
	i, ok := c.idx[name]
	if !ok || i >= len(r.Cells) {
		return ""
	}
	return r.Cells[i]
}

func (c *columns) int(r Row, name string) int {
	if _, ok := c.idx[name]; !ok {
		return 0
	}
	v, err := strconv.Atoi(c.str(r, name))
	if err != nil && c.err == nil {
		c.err = &ParseError{Command: c.cmd, Line: r.Line, Msg: fmt.Sprintf("%s: %q is not an integer", name, clip(c.str(r, name)))}
	}
	return v
}

func (c *columns) bool(r Row, name string) bool {
	if _, ok := c.idx[name]; !ok {
		return false
	}
	switch v := c.str(r, name); v {
	case "true":
		return true
	case "false":
		return false
	default:
		if c.err == nil {
			c.err = &ParseError{Command: c.cmd, Line: r.Line, Msg: fmt.Sprintf("%s: %q is not true or false", name, clip(v))}
		}
		return false
	}
}
