package htmlreport

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"testing/fstest"

	xhtml "golang.org/x/net/html"

	"github.com/certkit/certkit/reports/bundle"
)

// FuzzRender feeds arbitrary evidence.json and timeline.json to the report
// of a verified bundle: a bundle's evidence is untrusted, so Render must
// never fail or panic on it, and the page must stay well-formed and inert.
// Seeds: testdata/fuzz/FuzzRender and the evidence of the tests above.
func FuzzRender(f *testing.F) {
	b, err := bundle.Read(sampleBundle(f, failoverEvidence(false)))
	if err != nil {
		f.Fatal(err)
	}
	ev, _ := json.Marshal(failoverEvidence(true))
	tl, _ := json.Marshal(timeline())
	f.Add(ev, tl)
	f.Add([]byte(`{"samples":[{"At":"2026-01-01T00:00:00Z","States":{"p":"dead"}}],"io":[{"start":"2026-01-01T00:00:01Z","end":"2026-01-01T00:00:00Z"}]}`), []byte(`[]`))
	f.Add([]byte(`{"injected_at":"0001-01-01T00:00:00Z","samples":[{"At":"9999-12-31T23:59:59Z"},{"At":"0001-01-01T00:00:00Z"}]}`), []byte(`[{"at":"2026-01-01T00:00:00Z","action":"<b>"}]`))
	dir := "tests/failover.path.noop-timeout/"
	f.Fuzz(func(t *testing.T, evidence, timeline []byte) {
		raw := fstest.MapFS{
			dir + bundle.EvidenceFile: {Data: evidence},
			dir + bundle.TimelineFile: {Data: timeline},
		}
		var page bytes.Buffer
		if err := Render(&page, b, raw, Status{Incomplete: []string{string(evidence)}}); err != nil {
			t.Fatalf("Render: %v", err)
		}
		doc, err := xhtml.Parse(bytes.NewReader(page.Bytes()))
		if err != nil {
			t.Fatalf("page does not parse: %v", err)
		}
		if s := find(doc, tag("script")); len(s) != 0 {
			t.Fatalf("a <script> element in the page")
		}
		if strings.Contains(page.String(), "NaN") {
			t.Fatalf("NaN in the page")
		}
	})
}
