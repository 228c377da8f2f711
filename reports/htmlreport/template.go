package htmlreport

import (
	"html/template"
	"math"
	"strconv"
	"strings"
)

var pageTemplate = template.Must(template.New("page").Funcs(template.FuncMap{
	"f1":    f1,
	"upper": strings.ToUpper,
	"count": func(m map[string]int, k string) int { return m[k] },
	"add":   func(a, b float64) float64 { return a + b },
	"sub":   func(a, b float64) float64 { return a - b },
}).Parse(pageHTML))

// f1 formats an SVG coordinate with at most one decimal.
func f1(v float64) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return "0"
	}
	s := strconv.FormatFloat(v, 'f', 1, 64)
	return strings.TrimSuffix(s, ".0")
}

const pageHTML = `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src data:">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="certkit report">
<title>{{.Title}}</title>
<style>
:root { --ok:#2e7d32; --bad:#c62828; --warn:#b26a00; --mute:#6b7280; --line:#d9dde3; --bg:#f6f7f9; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color:#1f2328; margin:0; background:#fff; }
header.top { padding: 18px 28px 14px; border-bottom: 1px solid var(--line); background: var(--bg); }
h1 { font-size: 20px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 28px 0 10px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h3 { font-size: 14px; margin: 18px 0 6px; }
main { padding: 0 28px 40px; max-width: 1120px; }
.sub { color: var(--mute); }
.verdict { display:inline-block; font-weight:700; font-size:15px; padding:3px 12px; border-radius:4px; color:#fff; margin-right:10px; }
.v-passed { background: var(--ok); } .v-failed { background: var(--bad); } .v-none { background: var(--mute); }
.banner { margin: 14px 0 0; padding: 10px 14px; border-radius: 4px; border: 1px solid; }
.banner.warn { background:#fff8e6; border-color:#f0c36d; }
.banner.bad { background:#fdecea; border-color:#f5b5ad; }
.banner ul { margin: 4px 0 0; padding-left: 20px; }
table { border-collapse: collapse; margin: 6px 0 10px; }
th, td { text-align: left; padding: 4px 12px 4px 0; vertical-align: top; border-bottom: 1px solid #eef0f3; }
th { font-weight: 600; color: #374151; }
table.facts th { width: 200px; font-weight: 500; color: var(--mute); }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.id { white-space: nowrap; }
.status { font-weight: 700; font-size: 12px; padding: 1px 7px; border-radius: 3px; color: #fff; white-space: nowrap; }
.s-passed { background: var(--ok); } .s-failed { background: var(--bad); } .s-error { background: #7b1fa2; } .s-skipped { background: var(--mute); }
.ok { color: var(--ok); font-weight: 600; } .bad { color: var(--bad); font-weight: 600; }
section.test { margin-top: 26px; padding-top: 4px; }
section.test > h2 { display:flex; gap: 10px; align-items: baseline; }
pre { background: var(--bg); border: 1px solid var(--line); padding: 8px 10px; border-radius: 4px; white-space: pre-wrap; word-break: break-word; font-size: 12.5px; max-height: 420px; overflow: auto; }
pre.reason { border-color: #f5b5ad; background: #fdf3f2; }
code, .mono { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 12.5px; }
a { color: #0b57d0; text-decoration: none; } a:hover { text-decoration: underline; }
.note { color: var(--warn); }
.files { columns: 2; column-gap: 28px; padding-left: 18px; margin: 6px 0; }
.files li { break-inside: avoid; }
svg.timeline { width: 100%; max-width: 1000px; height: auto; display: block; border: 1px solid var(--line); border-radius: 4px; background: #fff; }
svg text { font: 11px system-ui, -apple-system, "DejaVu Sans", sans-serif; fill: #1f2328; }
svg text.axis { fill: var(--mute); }
svg text.rowlabel { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 11px; }
svg .lane { fill: #f3f4f6; }
svg .st-active { fill: #43a047; } svg .st-dead { fill: #e53935; } svg .st-standby { fill: #fbc02d; }
svg .st-disabled { fill: #9e9e9e; } svg .st-other { fill: #8e24aa; } svg .st-missing { fill: #cfd8dc; }
svg .st-pollerr { fill: #b0bec5; } svg .io-ok { fill: #1e88e5; } svg .io-fail { fill: #e53935; }
svg .band { fill: #e53935; fill-opacity: .05; stroke: #b71c1c; stroke-width: 1.5; stroke-dasharray: 4 3; }
svg .mk-inject { stroke: #c62828; } svg .mk-revert { stroke: #1565c0; } svg .mk-error { stroke: #7b1fa2; }
svg line.mk { stroke-width: 1.5; stroke-dasharray: 5 3; }
svg text.mk-inject { fill: #c62828; } svg text.mk-revert { fill: #1565c0; } svg text.mk-error { fill: #7b1fa2; }
svg .grid { stroke: #eceff1; } svg .axisline { stroke: #9aa3ad; }
svg path.lat { fill: none; stroke: #1e88e5; stroke-width: 2; stroke-linecap: round; }
svg .latfail { fill: #e53935; }
.bar { display:inline-block; height: 10px; background: #1e88e5; border-radius: 2px; vertical-align: middle; }
footer { color: var(--mute); font-size: 12px; padding: 14px 28px; border-top: 1px solid var(--line); }
</style>
</head>
<body>
<header class="top">
<h1>certkit certification report</h1>
<div><span class="verdict {{.VerdictCSS}}">{{.Verdict}}</span>
<span>{{.Total}} tests: {{count .Counts "passed"}} passed, {{count .Counts "failed"}} failed, {{count .Counts "error"}} error, {{count .Counts "skipped"}} skipped</span></div>
<div class="sub">bundle <span class="mono">{{.BundleName}}</span> · certkit {{.Manifest.ToolVersion}} · catalog {{with .Manifest.CatalogVersion}}{{.}}{{else}}(none){{end}} · {{.Complete}}</div>
{{if .Status.Incomplete}}<div class="banner bad" id="incomplete"><strong>Incomplete bundle.</strong> It does not record a whole certification run:
<ul>{{range .Status.Incomplete}}<li>{{.}}</li>{{end}}</ul></div>{{end}}
{{if eq .Manifest.Completeness "finalized"}}<div class="banner warn" id="finalized"><strong>Finalized after the run died.</strong>
The run was killed or crashed; <code>certkit bundle finalize</code> sealed the evidence it had written.
{{with .Manifest.Finalization}}{{if .NoVerdict}}Tests without a verdict (recorded as errors): {{range $i, $id := .NoVerdict}}{{if $i}}, {{end}}<code>{{$id}}</code>{{end}}.{{end}}{{end}}</div>{{end}}
</header>
<main>
<h2 id="summary">Summary</h2>
<table class="facts">
<tr><th>run</th><td>{{.Run}}</td></tr>
<tr><th>integrity</th><td>intact: every file matches the manifest's SHA-256 (schema {{.Manifest.SchemaVersion}}, {{len .Manifest.Files}} files)</td></tr>
<tr><th>signature</th><td>{{if .Status.Trusted}}<span class="ok">valid, by the trusted key</span> <code>{{.Status.Signer}}</code>{{else if .Status.Signer}}valid, by key <code>{{.Status.Signer}}</code> — not checked against a trusted key{{else}}none{{end}}</td></tr>
<tr><th>completeness</th><td>{{if .Status.Incomplete}}<span class="bad">incomplete</span>{{else if .Manifest.Required}}<span class="ok">every one of the {{len .Manifest.Required}} required tests recorded</span>{{if not .Status.CatalogKnown}} (catalog {{.Manifest.CatalogVersion}} not known to this certkit: checked against the bundle's own list){{end}}{{else}}no required list in the bundle: not checked{{end}}</td></tr>
{{range .Lab}}<tr><th>lab {{.Key}}</th><td>{{.Value}}</td></tr>{{end}}
</table>
{{if or .Hosts .Arrays}}
<table>
<tr><th>component</th><th>name</th><th>product</th><th>version</th><th>build</th><th>more</th></tr>
{{range .Hosts}}<tr><td>host</td><td class="mono">{{.Name}}</td><td>{{.Product}}</td><td>{{.Version}}</td><td>{{.Build}}</td><td>{{.Extra}}</td></tr>{{end}}
{{range .Arrays}}<tr><td>array</td><td class="mono">{{.Name}}</td><td>{{.Product}}</td><td>{{.Version}}</td><td>{{.Build}}</td><td>{{.Extra}}</td></tr>{{end}}
</table>
{{end}}
<table id="tests">
<tr><th>status</th><th>test</th><th>duration</th><th>detail</th></tr>
{{range .Tests}}<tr><td><span class="status s-{{.Status}}">{{upper .Status}}</span></td><td class="id"><a href="#{{.Anchor}}" class="mono">{{.ID}}</a></td><td class="num">{{.Duration}}</td><td>{{.Reason}}</td></tr>
{{end}}</table>

{{range .Tests}}
<section class="test" id="{{.Anchor}}">
<h2><span class="status s-{{.Status}}">{{upper .Status}}</span> <span class="mono">{{.ID}}</span></h2>
{{if .Name}}<div class="sub">{{.Name}}</div>{{end}}
<div class="sub">{{if .Start}}started {{.Start}}, took {{.Duration}}{{else}}not started{{end}}</div>
{{if .Reason}}<pre{{if or (eq .Status "failed") (eq .Status "error")}} class="reason"{{end}}>{{.Reason}}</pre>{{end}}
{{range .Notes}}<p class="note">{{.}}</p>{{end}}
{{if .Measures}}
<h3>Expected vs measured</h3>
<table class="measures">
<tr><th>measurement</th><th>measured</th><th>expected</th><th></th></tr>
{{range .Measures}}<tr><td class="mono">{{.Name}}</td><td class="num">{{.Value}}</td><td>{{.Expected}}</td><td class="{{.VerdictCSS}}">{{.Verdict}}</td></tr>
{{end}}</table>
{{end}}
{{if .Facts}}<table class="facts">{{range .Facts}}<tr><th>{{.Key}}</th><td class="mono">{{.Value}}</td></tr>{{end}}</table>{{end}}
{{with $p := .Plot}}
<h3>Timeline: path states, faults and I/O</h3>
<svg class="timeline" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {{f1 .Width}} {{f1 .Height}}" role="img" aria-label="timeline of path states, faults and I/O">
{{range .Ticks}}<line class="grid" x1="{{f1 .X}}" x2="{{f1 .X}}" y1="28" y2="{{f1 $p.AxisY}}"/>{{end}}
{{range .Rows}}<rect class="lane" x="{{f1 $p.Left}}" y="{{f1 .Y}}" width="{{f1 (sub $p.Right $p.Left)}}" height="22"/>
<text class="rowlabel" x="6" y="{{f1 .TextY}}">{{.Label}}{{if .Note}} ({{.Note}}){{end}}</text>
{{$y := .Y}}{{range .Segs}}<rect class="{{.Class}}" x="{{f1 .X}}" y="{{f1 $y}}" width="{{f1 .W}}" height="22"><title>{{.Title}}</title></rect>{{end}}
{{end}}
{{range .Bands}}<rect class="band" x="{{f1 .X}}" y="{{f1 .Y}}" width="{{f1 .W}}" height="{{f1 .H}}"><title>{{.Title}}</title></rect>{{end}}
{{range .Markers}}<line class="mk {{.Class}}" x1="{{f1 .X}}" x2="{{f1 .X}}" y1="{{f1 .Y1}}" y2="{{f1 .Y2}}"/><text class="{{.Class}}" x="{{f1 (add .X 3)}}" y="{{f1 .LabelY}}">{{.Label}}</text>{{end}}
<line class="axisline" x1="{{f1 .Left}}" x2="{{f1 .Right}}" y1="{{f1 .AxisY}}" y2="{{f1 .AxisY}}"/>
{{range .Ticks}}<text class="axis" x="{{f1 .X}}" y="{{f1 (add $p.AxisY 14)}}" text-anchor="middle">{{.Label}}</text>{{end}}
{{with .Latency}}<text class="rowlabel" x="6" y="{{f1 (add .Top 10)}}">read latency</text>
<text class="axis" x="{{f1 (sub $p.Left 6)}}" y="{{f1 (add .Top 4)}}" text-anchor="end">{{.MaxLabel}}</text>
<text class="axis" x="{{f1 (sub $p.Left 6)}}" y="{{f1 .Bottom}}" text-anchor="end">0</text>
<line class="axisline" x1="{{f1 $p.Left}}" x2="{{f1 $p.Right}}" y1="{{f1 .Bottom}}" y2="{{f1 .Bottom}}"/>
<line class="grid" x1="{{f1 $p.Left}}" x2="{{f1 $p.Right}}" y1="{{f1 .Top}}" y2="{{f1 .Top}}"/>
{{if .Stems}}<path class="lat" d="{{.Stems}}"/>{{end}}
{{range .Fails}}<circle class="latfail" cx="{{f1 .X}}" cy="{{f1 .Y}}" r="3"><title>{{.Title}}</title></circle>{{end}}
{{end}}
{{range .Legend}}<rect class="legend {{.Class}}" x="{{f1 .X}}" y="{{f1 (sub $p.Height 16)}}" width="12" height="10"/><text x="{{f1 (add .X 16)}}" y="{{f1 (sub $p.Height 7)}}">{{.Label}}</text>{{end}}
</svg>
<div class="sub">Time axis: seconds from {{.Origin}}. Each path's state is what a poll saw, held until the next poll; hover a bar for details. The I/O lane shows each read from start to end; below it, how long each read took, at the time it ended.{{if .Bands}} The dashed box is where the expectation puts the faulted path's turn to dead.{{end}}</div>
{{end}}
{{if .Faults}}
<h3>Faults</h3>
<table class="faults">
<tr><th>at (UTC)</th><th>from fault</th><th>action</th><th>array / portal</th><th>kind</th><th>fault id</th><th>array says</th><th>error</th></tr>
{{range .Faults}}<tr><td class="mono">{{.At}}</td><td class="num">{{.Offset}}</td><td>{{.Action}}</td><td class="mono">{{.Target}}</td><td>{{.Kind}}</td><td class="mono">{{.ID}}</td><td class="mono">{{.ArrayAt}}</td><td class="bad">{{.Error}}</td></tr>
{{end}}</table>
{{end}}
{{if or .PathIO .IOSummary}}
<h3>I/O per path</h3>
{{with .IOSummary}}<div>{{.}}</div>{{end}}
{{if .PathIO}}<table class="pathio">
<tr><th>path</th><th>reads before the fault</th><th>after the failover</th><th>change</th><th></th></tr>
{{range .PathIO}}<tr><td class="mono">{{.Path}}{{if .Faulted}} (faulted){{end}}{{if .Working}} (working){{end}}</td><td class="num">{{.Before}}</td><td class="num">{{.After}}</td><td class="num">{{.Delta}}</td><td><svg width="170" height="12" xmlns="http://www.w3.org/2000/svg"><rect class="io-ok" x="0" y="1" width="{{f1 .BarW}}" height="10"/></svg></td></tr>
{{end}}</table>{{end}}
{{end}}
{{if .Limits}}<h3>Limits recorded with the evidence</h3>
<table class="facts">{{range .Limits}}<tr><th class="mono">{{.Key}}</th><td>{{.Value}}</td></tr>{{end}}</table>{{end}}
{{if .Files}}<h3>Raw evidence</h3>
<ul class="files">{{range .Files}}<li><a href="{{.Href}}" class="mono">{{.Path}}</a> <span class="sub">{{.Size}}</span></li>{{end}}</ul>{{end}}
</section>
{{end}}

<h2 id="hosts">Host captures</h2>
{{if .HostFiles}}<ul class="files">{{range .HostFiles}}<li><a href="{{.Href}}" class="mono">{{.Path}}</a> <span class="sub">{{.Size}}</span></li>{{end}}</ul>
<div class="sub">Command logs hold every command the harness ran on the host, with its time, exit code and output.</div>{{else}}<p class="sub">none recorded</p>{{end}}

{{if .Profile}}<h2 id="profile">Lab profile <span class="sub">(secrets redacted)</span></h2>
<pre>{{.Profile}}</pre>{{end}}

<h2 id="files">Every file in the bundle</h2>
<table class="allfiles">
<tr><th>file</th><th>size</th><th>SHA-256</th></tr>
{{range .Files}}<tr><td><a href="{{.Href}}" class="mono">{{.Path}}</a></td><td class="num">{{.Size}}</td><td class="mono">{{with .SHA}}{{.}}…{{end}}</td></tr>
{{end}}</table>
</main>
<footer>Generated {{.Generated}} by certkit report from the verified bundle. Raw files are in <code>raw/</code> next to this page.</footer>
</body>
</html>
`
