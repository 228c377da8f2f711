package htmlreport

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Plot geometry, in SVG user units (pixels at 100 %).
const (
	plotWidth   = 1000.0
	plotLeft    = 190.0 // room for path names
	plotRight   = 16.0
	rowHeight   = 22.0
	rowGap      = 8.0
	plotTop     = 34.0 // room for fault labels
	axisHeight  = 26.0
	latencyH    = 110.0
	maxElements = 20000 // segments drawn per plot; beyond, adjacent ones merge
)

// timelinePlot is the data of one test's timeline SVG.
type timelinePlot struct {
	Width, Height float64
	Left, Right   float64
	AxisY         float64
	Ticks         []tick
	Rows          []row
	Markers       []marker
	Bands         []band
	Origin        string // what time 0 on the axis is
	Legend        []legendItem
	Latency       *latencyPlot
}

type tick struct {
	X     float64
	Label string
}

type row struct {
	Label   string
	Note    string // "faulted", "I/O"
	Y       float64
	TextY   float64
	Segs    []seg
	Faulted bool
}

type seg struct {
	X, W  float64
	Class string
	Title string
	key   string // what merges with a neighbour: the same state
}

type marker struct {
	X, Y1, Y2 float64
	LabelY    float64
	Label     string
	Class     string
}

type band struct {
	X, Y, W, H float64
	Title      string
}

type legendItem struct {
	X     float64
	Class string
	Label string
}

type latencyPlot struct {
	Top, Height, Bottom float64
	Stems               string // SVG path: one vertical stem per OK read, "M x bottom V y ..."
	Fails               []point
	MaxLabel            string
}

type point struct {
	X, Y  float64
	Title string
}

// stateClass maps a path state (untrusted text) to one of the fixed CSS classes.
func stateClass(s string) string {
	switch strings.ToLower(s) {
	case "active", "active (i/o)", "on":
		return "st-active"
	case "dead":
		return "st-dead"
	case "standby", "active unoptimized", "ano":
		return "st-standby"
	case "disabled", "off":
		return "st-disabled"
	case "":
		return "st-missing"
	}
	return "st-other"
}

// scale maps times to x positions on [left, right].
type scale struct {
	t0, t1      time.Time
	left, right float64
}

func (s scale) x(t time.Time) float64 {
	span := s.t1.Sub(s.t0).Seconds()
	f := t.Sub(s.t0).Seconds() / span
	return s.left + math.Max(0, math.Min(1, f))*(s.right-s.left)
}

// buildTimeline lays out the path-state rows, the I/O row, fault markers
// and the expected-detection band of one test. It returns nil when the
// evidence holds nothing to draw.
func buildTimeline(ev *evidence, faults []faultEvent, detection *window) *timelinePlot {
	samples := sortedSamples(ev.Samples)
	if len(samples) == 0 && len(ev.IO) == 0 {
		return nil
	}
	var times []time.Time
	add := func(ts ...time.Time) {
		for _, t := range ts {
			if !t.IsZero() {
				times = append(times, t)
			}
		}
	}
	for _, s := range samples {
		add(s.Sent, s.At)
	}
	for _, io := range ev.IO {
		add(io.Start, io.End)
	}
	for _, f := range faults {
		add(f.When())
	}
	add(ev.InjectedAt, ev.RevertedAt)
	if len(times) == 0 {
		return nil
	}
	t0, t1 := slices.MinFunc(times, time.Time.Compare), slices.MaxFunc(times, time.Time.Compare)
	if detection != nil && !ev.InjectedAt.IsZero() {
		if end := ev.InjectedAt.Add(detection.hi); end.After(t1) && detection.hi > 0 {
			t1 = end
		}
	}
	if !t1.After(t0) {
		t1 = t0.Add(time.Second)
	}
	pad := t1.Sub(t0) / 50
	t0, t1 = t0.Add(-pad), t1.Add(pad)
	sc := scale{t0: t0, t1: t1, left: plotLeft, right: plotWidth - plotRight}
	p := &timelinePlot{Width: plotWidth, Left: sc.left, Right: sc.right}

	// Rows: the faulted path first, then the others named, then any other seen.
	var paths []string
	seen := map[string]bool{}
	addPath := func(name string) {
		if name != "" && !seen[name] {
			seen[name] = true
			paths = append(paths, name)
		}
	}
	addPath(ev.FaultPath)
	for _, o := range ev.OtherPaths {
		addPath(o)
	}
	var rest []string
	for _, s := range samples {
		for name := range s.States {
			if !seen[name] && !slices.Contains(rest, name) {
				rest = append(rest, name)
			}
		}
	}
	slices.Sort(rest)
	for _, name := range rest {
		addPath(name)
	}
	const maxRows = 64
	if len(paths) > maxRows {
		paths = paths[:maxRows]
	}

	y := plotTop
	budget := maxElements / max(1, len(paths)+1)
	for _, name := range paths {
		r := row{Label: name, Y: y, TextY: y + rowHeight/2 + 4, Faulted: name == ev.FaultPath}
		if r.Faulted {
			r.Note = "faulted"
		}
		r.Segs = stateSegments(sc, samples, name, budget)
		p.Rows = append(p.Rows, r)
		y += rowHeight + rowGap
	}
	if len(ev.IO) > 0 {
		r := row{Label: "I/O", Note: "reads", Y: y, TextY: y + rowHeight/2 + 4, Segs: ioSegments(sc, ev.IO, budget)}
		p.Rows = append(p.Rows, r)
		y += rowHeight + rowGap
	}
	rowsBottom := y - rowGap

	// The window in which the faulted path is expected to turn dead.
	if detection != nil && ev.FaultPath != "" && !ev.InjectedAt.IsZero() && len(p.Rows) > 0 && p.Rows[0].Faulted {
		x0, x1 := sc.x(ev.InjectedAt.Add(detection.lo)), sc.x(ev.InjectedAt.Add(detection.hi))
		if detection.hi <= 0 {
			x1 = sc.right
		}
		p.Bands = append(p.Bands, band{X: x0, Y: p.Rows[0].Y - 3, W: math.Max(1, x1-x0), H: rowHeight + 6,
			Title: "expected: " + ev.FaultPath + " dead " + detection.label + " after the fault"})
	}

	// Fault markers: one line per event, labels alternating height so neighbours do not collide.
	for i, f := range faults {
		x := sc.x(f.When())
		label := f.Action
		if f.Kind != "" {
			label += " " + f.Kind
		}
		if f.Portal != "" {
			label += " " + f.Portal
		}
		class := "mk-inject"
		if f.Action == "revert" {
			class = "mk-revert"
		}
		if f.Error != "" {
			class, label = "mk-error", label+" (failed)"
		}
		p.Markers = append(p.Markers, marker{X: x, Y1: plotTop - 6, Y2: rowsBottom + 4, LabelY: 12 + float64(i%2)*13, Label: label, Class: class})
	}
	if len(faults) == 0 {
		for _, m := range []struct {
			t     time.Time
			label string
			class string
		}{{ev.InjectedAt, "fault injected", "mk-inject"}, {ev.RevertedAt, "fault reverted", "mk-revert"}} {
			if !m.t.IsZero() {
				p.Markers = append(p.Markers, marker{X: sc.x(m.t), Y1: plotTop - 6, Y2: rowsBottom + 4, LabelY: 12, Label: m.label, Class: m.class})
			}
		}
	}

	// Axis, in seconds from the fault (or from the first sample).
	origin := ev.InjectedAt
	p.Origin = "the fault injection"
	if origin.IsZero() {
		origin = t0
		p.Origin = "the first observation"
	}
	p.Origin += " (" + origin.UTC().Format("2006-01-02 15:04:05.000 MST") + ")"
	p.AxisY = rowsBottom + 6
	step := tickStep(t1.Sub(t0).Seconds())
	first := math.Ceil(t0.Sub(origin).Seconds()/step) * step
	for s := first; origin.Add(time.Duration(s * float64(time.Second))).Before(t1); s += step {
		p.Ticks = append(p.Ticks, tick{X: sc.x(origin.Add(time.Duration(s * float64(time.Second)))), Label: secondsLabel(s)})
		if len(p.Ticks) > 40 {
			break
		}
	}
	y = p.AxisY + axisHeight

	if lat := latency(sc, ev.IO, y+8); lat != nil {
		p.Latency = lat
		y = lat.Bottom + 18
	}
	x := plotLeft
	for _, l := range []legendItem{{Class: "st-active", Label: "active"}, {Class: "st-dead", Label: "dead"},
		{Class: "st-standby", Label: "standby"}, {Class: "st-other", Label: "other state"}, {Class: "st-pollerr", Label: "poll failed"},
		{Class: "io-ok", Label: "read ok"}, {Class: "io-fail", Label: "read failed"}} {
		l.X = x
		p.Legend = append(p.Legend, l)
		x += 108
	}
	p.Height = y + 22
	return p
}

// stateSegments draws name's state between consecutive polls: what a poll
// saw holds until the next poll.
func stateSegments(sc scale, samples []pathSample, name string, budget int) []seg {
	var out []seg
	for i, s := range samples {
		if s.At.IsZero() {
			continue
		}
		end := s.At
		if i+1 < len(samples) {
			end = samples[i+1].At
		}
		x0, x1 := sc.x(s.At), sc.x(end)
		if i+1 == len(samples) {
			x1 = x0 + 3
		}
		class, key := "st-pollerr", "poll failed: "+s.Err
		if s.Err == "" {
			st := s.States[name]
			class = stateClass(st)
			if st == "" {
				st = "not listed"
			}
			key = name + ": " + st
		}
		if n := len(out); n > 0 && (out[n-1].key == key || len(out) >= budget) {
			out[n-1].W = x1 - out[n-1].X
			continue
		}
		out = append(out, seg{X: x0, W: x1 - x0, Class: class, key: key,
			Title: key + " (from " + s.At.UTC().Format("15:04:05.000") + ")"})
	}
	for i := range out {
		out[i].W = math.Max(out[i].W, 1)
	}
	return out
}

// ioSegments draws each I/O from its start to its end.
func ioSegments(sc scale, ios []ioSample, budget int) []seg {
	sorted := slices.Clone(ios)
	slices.SortStableFunc(sorted, func(a, b ioSample) int { return a.Start.Compare(b.Start) })
	var out []seg
	for _, io := range sorted {
		if io.Start.IsZero() || io.End.Before(io.Start) {
			continue
		}
		class, title := "io-ok", "read ok"
		if !io.OK {
			class, title = "io-fail", "read failed: "+io.Error
		}
		title += fmt.Sprintf(", %s at %s", seconds(io.End.Sub(io.Start)), io.Start.UTC().Format("15:04:05.000"))
		x0, x1 := sc.x(io.Start), sc.x(io.End)
		if n := len(out); n > 0 && out[n-1].Class == class && (x0-(out[n-1].X+out[n-1].W) < 0.5 || len(out) >= budget) {
			out[n-1].W = math.Max(out[n-1].W, x1-out[n-1].X)
			continue
		}
		out = append(out, seg{X: x0, W: math.Max(x1-x0, 1.5), Class: class, Title: title})
	}
	return out
}

// latency plots how long each I/O took, at the time it ended.
func latency(sc scale, ios []ioSample, top float64) *latencyPlot {
	var maxD time.Duration
	n := 0
	for _, io := range ios {
		if !io.Start.IsZero() && !io.End.Before(io.Start) {
			maxD = max(maxD, io.End.Sub(io.Start))
			n++
		}
	}
	if n == 0 {
		return nil
	}
	if maxD <= 0 {
		maxD = time.Millisecond
	}
	l := &latencyPlot{Top: top, Height: latencyH, Bottom: top + latencyH, MaxLabel: seconds(maxD)}
	yOf := func(d time.Duration) float64 { return l.Bottom - float64(d)/float64(maxD)*latencyH }
	sorted := slices.Clone(ios)
	slices.SortStableFunc(sorted, func(a, b ioSample) int { return a.End.Compare(b.End) })
	var pts strings.Builder
	drawn := 0
	for _, io := range sorted {
		if io.Start.IsZero() || io.End.Before(io.Start) {
			continue
		}
		x, y := sc.x(io.End), yOf(io.End.Sub(io.Start))
		if !io.OK {
			if len(l.Fails) < maxElements/4 {
				l.Fails = append(l.Fails, point{X: x, Y: y, Title: "read failed after " + seconds(io.End.Sub(io.Start)) + ": " + io.Error})
			}
			continue
		}
		if drawn < maxElements {
			fmt.Fprintf(&pts, "M%.1f %.1fV%.1f", x, l.Bottom, math.Min(y, l.Bottom-1.5))
			drawn++
		}
	}
	l.Stems = pts.String()
	return l
}

// tickStep picks a step giving at most ~10 ticks over span seconds.
func tickStep(span float64) float64 {
	for _, s := range []float64{0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 43200, 86400} {
		if span/s <= 10 {
			return s
		}
	}
	return math.Ceil(span/10/86400) * 86400
}

func secondsLabel(s float64) string {
	if math.Abs(s) < 1e-9 {
		return "0"
	}
	sign := "+"
	if s < 0 {
		sign = "-"
	}
	v := strings.TrimRight(strconv.FormatFloat(math.Abs(s), 'f', 3, 64), "0")
	return sign + strings.TrimSuffix(v, ".") + "s"
}

// seconds renders a duration for a reviewer: "11.76 s", "250 ms".
func seconds(d time.Duration) string {
	if d < time.Second && d > -time.Second {
		return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 1, 64) + " ms"
	}
	return strconv.FormatFloat(d.Seconds(), 'f', 2, 64) + " s"
}

// window is an expected interval after the fault, from a threshold.
type window struct {
	lo, hi time.Duration // hi <= 0: unbounded
	label  string        // "between 10 s and 15 s"
}
