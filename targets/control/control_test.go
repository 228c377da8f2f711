package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

const token = "s3cret-control-token"

// fakeArray is the Array test double: two controllers with one portal each,
// faults "blackhole" and "reset", one fault per portal.
type fakeArray struct {
	mu      sync.Mutex
	info    Info
	records map[string]*FaultRecord // every fault ever injected
	seq     int
	clock   time.Time

	injects    int                // Inject calls that reached the array
	revertErr  map[string]error   // Revert(id) fails with this
	injectGate chan chan struct{} // when set, Inject hands over a channel and waits for it to close
}

func newFakeArray() *fakeArray {
	return &fakeArray{
		info: Info{
			Name: "array-1",
			Targets: []Target{{
				IQN:  "iqn.2024-01.io.certkit:array-1",
				LUNs: []LUN{{ID: 0, NAA: "naa.6001405c0ffee00000000000000000a0", SizeBytes: 64 << 20}},
			}},
			Portals: []Portal{
				{ID: "A0", Controller: "A", TPGT: 1, Address: "127.0.0.1:13260"},
				{ID: "B0", Controller: "B", TPGT: 2, Address: "127.0.0.1:13261"},
			},
		},
		records:   map[string]*FaultRecord{},
		clock:     time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC),
		revertErr: map[string]error{},
	}
}

func (a *fakeArray) tick() time.Time {
	a.clock = a.clock.Add(time.Second)
	return a.clock
}

func (a *fakeArray) Info() Info {
	a.mu.Lock()
	defer a.mu.Unlock()
	info := a.info
	info.Portals = append([]Portal(nil), a.info.Portals...)
	return info
}

func (a *fakeArray) portal(id string) *Portal {
	for i := range a.info.Portals {
		if a.info.Portals[i].ID == id {
			return &a.info.Portals[i]
		}
	}
	return nil
}

func (a *fakeArray) Inject(portal, kind string) (FaultRecord, error) {
	if a.injectGate != nil {
		wait := make(chan struct{})
		a.injectGate <- wait
		<-wait
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.injects++
	p := a.portal(portal)
	if p == nil {
		return FaultRecord{}, NotFoundf("unknown portal %s (portals: A0, B0)", portal)
	}
	if kind != "blackhole" && kind != "reset" {
		return FaultRecord{}, Invalidf("unknown fault kind %q (want blackhole or reset)", kind)
	}
	if p.Fault != "" {
		return FaultRecord{}, Conflictf("portal %s already has fault %s active", portal, p.Fault)
	}
	a.seq++
	rec := &FaultRecord{ID: fmt.Sprintf("F%d", a.seq), Portal: portal, Kind: kind, InjectedAt: a.tick()}
	a.records[rec.ID] = rec
	p.Fault = kind
	return *rec, nil
}

func (a *fakeArray) Revert(id string) (FaultRecord, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.revertErr[id]; err != nil {
		return FaultRecord{}, err
	}
	rec := a.records[id]
	if rec == nil || rec.RevertedAt != nil {
		return FaultRecord{}, NotFoundf("no active fault %s", id)
	}
	at := a.tick()
	rec.RevertedAt = &at
	a.portal(rec.Portal).Fault = ""
	return *rec, nil
}

func (a *fakeArray) Faults() []FaultRecord {
	a.mu.Lock()
	defer a.mu.Unlock()
	var active []FaultRecord
	for _, r := range a.records {
		if r.RevertedAt == nil {
			active = append(active, *r)
		}
	}
	sort.Slice(active, func(i, j int) bool { return active[i].ID < active[j].ID })
	return active
}

// call sends one request to h and returns status, headers and body.
func call(t *testing.T, h http.Handler, method, path, auth, body string) (int, http.Header, string) {
	t.Helper()
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Fatalf("%s %s: Content-Type %q, want application/json", method, path, ct)
	}
	return rec.Code, rec.Header(), rec.Body.String()
}

// authed is call with the right token.
func authed(t *testing.T, h http.Handler, method, path, body string) (int, string) {
	t.Helper()
	code, _, b := call(t, h, method, path, "Bearer "+token, body)
	return code, b
}

// errorOf decodes an error body and fails unless it is {"error": "..."}.
func errorOf(t *testing.T, body string) string {
	t.Helper()
	var e struct {
		Error string `json:"error"`
	}
	if err := json.Unmarshal([]byte(body), &e); err != nil || e.Error == "" {
		t.Fatalf("error body %q is not {\"error\": \"...\"}", body)
	}
	return e.Error
}

func decode[T any](t *testing.T, body string) T {
	t.Helper()
	var v T
	if err := json.Unmarshal([]byte(body), &v); err != nil {
		t.Fatalf("decoding %q: %v", body, err)
	}
	return v
}

func TestRequestsWithoutTheRightTokenAreRefused(t *testing.T) {
	a := newFakeArray()
	h := NewHandler(a, token)
	for _, tc := range []struct{ name, auth, want string }{
		{"no header", "", "missing bearer token"},
		{"basic auth", "Basic " + token, "not a bearer token"},
		{"scheme only", "Bearer", "not a bearer token"},
		{"wrong token", "Bearer wrong-guess", "invalid bearer token"},
		{"token prefix", "Bearer " + token[:len(token)-1], "invalid bearer token"},
		{"empty token", "Bearer ", "invalid bearer token"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, r := range []struct{ method, path, body string }{
				{"GET", "/v1/info", ""},
				{"POST", "/v1/faults", `{"portal":"A0","kind":"reset"}`},
				{"DELETE", "/v1/faults", ""},
				{"GET", "/no/such/route", ""}, // routes are not revealed without a token
			} {
				code, hdr, body := call(t, h, r.method, r.path, tc.auth, r.body)
				if code != http.StatusUnauthorized {
					t.Fatalf("%s %s: status %d, want 401", r.method, r.path, code)
				}
				if msg := errorOf(t, body); !strings.Contains(msg, tc.want) {
					t.Errorf("%s %s: error %q does not say %q", r.method, r.path, msg, tc.want)
				}
				if strings.Contains(body, "wrong-guess") || strings.Contains(body, token[:8]) {
					t.Errorf("%s %s: 401 body echoes a token: %s", r.method, r.path, body)
				}
				if !strings.HasPrefix(hdr.Get("WWW-Authenticate"), "Bearer") {
					t.Errorf("%s %s: WWW-Authenticate %q", r.method, r.path, hdr.Get("WWW-Authenticate"))
				}
			}
		})
	}
	if a.injects != 0 || len(a.Faults()) != 0 {
		t.Fatalf("refused requests reached the array: %d injects", a.injects)
	}

	// The scheme is case-insensitive (RFC 7235).
	if code, _, _ := call(t, h, "GET", "/v1/info", "bearer "+token, ""); code != http.StatusOK {
		t.Fatalf("lower-case bearer scheme: status %d", code)
	}
}

func TestHandlerWithoutTokenFailsClosed(t *testing.T) {
	h := NewHandler(newFakeArray(), "")
	code, _, body := call(t, h, "GET", "/v1/info", "Bearer ", "")
	if code != http.StatusInternalServerError || !strings.Contains(errorOf(t, body), "no token configured") {
		t.Fatalf("status %d, body %s; want 500 saying no token is configured", code, body)
	}
}

func TestInfoDescribesTheArrayInSnakeCase(t *testing.T) {
	a := newFakeArray()
	code, body := authed(t, NewHandler(a, token), "GET", "/v1/info", "")
	if code != http.StatusOK {
		t.Fatalf("status %d: %s", code, body)
	}
	if got := decode[Info](t, body); !reflect.DeepEqual(got, a.Info()) {
		t.Fatalf("info = %+v, want %+v", got, a.Info())
	}
	for _, key := range []string{`"name"`, `"targets"`, `"iqn"`, `"luns"`, `"naa"`, `"size_bytes"`, `"portals"`, `"controller"`, `"tpgt"`, `"address"`, `"fault"`} {
		if !strings.Contains(body, key) {
			t.Errorf("info JSON lacks key %s: %s", key, body)
		}
	}
}

func TestInjectListAndRevertAFault(t *testing.T) {
	a := newFakeArray()
	h := NewHandler(a, token)

	code, hdr, body := call(t, h, "POST", "/v1/faults", "Bearer "+token, `{"portal": "A0", "kind": "blackhole"}`)
	if code != http.StatusCreated {
		t.Fatalf("inject: status %d: %s", code, body)
	}
	rec := decode[FaultRecord](t, body)
	if rec.ID == "" || rec.Portal != "A0" || rec.Kind != "blackhole" || rec.InjectedAt.IsZero() || rec.RevertedAt != nil {
		t.Fatalf("inject returned %+v", rec)
	}
	if hdr.Get("Location") != "/v1/faults/"+rec.ID {
		t.Errorf("Location = %q", hdr.Get("Location"))
	}
	if strings.Contains(body, "reverted_at") {
		t.Errorf("active fault shows reverted_at: %s", body)
	}

	code, body = authed(t, h, "GET", "/v1/faults", "")
	if got := decode[[]FaultRecord](t, body); code != http.StatusOK || len(got) != 1 || got[0].ID != rec.ID {
		t.Fatalf("faults: status %d, %s; want the one fault", code, body)
	}
	_, body = authed(t, h, "GET", "/v1/info", "")
	if p := decode[Info](t, body).Portals[0]; p.Fault != "blackhole" {
		t.Fatalf("portal A0 fault = %q in info", p.Fault)
	}

	code, body = authed(t, h, "DELETE", "/v1/faults/"+rec.ID, "")
	if code != http.StatusOK {
		t.Fatalf("revert: status %d: %s", code, body)
	}
	if got := decode[FaultRecord](t, body); got.ID != rec.ID || got.RevertedAt == nil || !got.RevertedAt.After(got.InjectedAt) {
		t.Fatalf("revert returned %+v", got)
	}
	// Active faults only, and an empty list is [] not null.
	if _, body = authed(t, h, "GET", "/v1/faults", ""); strings.TrimSpace(body) != "[]" {
		t.Fatalf("faults after revert = %s, want []", body)
	}
}

func TestInjectRefusals(t *testing.T) {
	a := newFakeArray()
	h := NewHandler(a, token)
	if code, body := authed(t, h, "POST", "/v1/faults", `{"portal":"A0","kind":"reset"}`); code != http.StatusCreated {
		t.Fatalf("first inject: %d %s", code, body)
	}
	for _, tc := range []struct {
		name, body string
		status     int
		want       string
	}{
		{"second fault on a portal", `{"portal":"A0","kind":"blackhole"}`, http.StatusConflict, "portal A0 already has fault reset active"},
		{"unknown portal", `{"portal":"Z9","kind":"reset"}`, http.StatusNotFound, "unknown portal Z9"},
		{"unknown kind", `{"portal":"B0","kind":"meteor"}`, http.StatusBadRequest, `unknown fault kind "meteor"`},
		{"not JSON", `portal=A0`, http.StatusBadRequest, "not a fault request"},
		{"missing kind", `{"portal":"B0"}`, http.StatusBadRequest, `needs "kind" and one of "portal" or "controller"`},
		{"portal and controller", `{"portal":"B0","controller":"B","kind":"reset"}`, http.StatusBadRequest, `one of "portal" or "controller"`},
		{"parameters to a plain array", `{"portal":"B0","kind":"latency","delay":"5ms"}`, http.StatusBadRequest, `takes only a portal and a kind`},
		{"unknown field", `{"portal":"B0","kind":"reset","colour":"red"}`, http.StatusBadRequest, `unknown field "colour"`},
		{"two values", `{"portal":"B0","kind":"reset"} {}`, http.StatusBadRequest, "more than one JSON value"},
		{"empty body", ``, http.StatusBadRequest, "not a fault request"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body := authed(t, h, "POST", "/v1/faults", tc.body)
			if code != tc.status {
				t.Fatalf("status %d, want %d: %s", code, tc.status, body)
			}
			if msg := errorOf(t, body); !strings.Contains(msg, tc.want) {
				t.Fatalf("error %q does not say %q", msg, tc.want)
			}
		})
	}
	if n := len(a.Faults()); n != 1 {
		t.Fatalf("%d active faults after refused injects, want 1", n)
	}
}

func TestRevertOfUnknownFaultIs404(t *testing.T) {
	h := NewHandler(newFakeArray(), token)
	code, body := authed(t, h, "DELETE", "/v1/faults/F404", "")
	if code != http.StatusNotFound || !strings.Contains(errorOf(t, body), "no active fault F404") {
		t.Fatalf("status %d, %s; want 404 naming F404", code, body)
	}
}

func TestRevertAllRevertsEveryFaultAndReportsFailures(t *testing.T) {
	a := newFakeArray()
	h := NewHandler(a, token)
	authed(t, h, "POST", "/v1/faults", `{"portal":"A0","kind":"reset"}`)
	authed(t, h, "POST", "/v1/faults", `{"portal":"B0","kind":"blackhole"}`)

	code, body := authed(t, h, "DELETE", "/v1/faults", "")
	if got := decode[[]FaultRecord](t, body); code != http.StatusOK || len(got) != 2 || got[0].RevertedAt == nil || got[1].RevertedAt == nil {
		t.Fatalf("revert all: status %d, %s; want both faults reverted", code, body)
	}
	if len(a.Faults()) != 0 {
		t.Fatalf("faults left: %+v", a.Faults())
	}
	if _, body = authed(t, h, "DELETE", "/v1/faults", ""); strings.TrimSpace(body) != "[]" {
		t.Fatalf("revert all with none active = %s, want []", body)
	}

	// One stuck fault does not keep the others injected.
	authed(t, h, "POST", "/v1/faults", `{"portal":"A0","kind":"reset"}`)     // F3
	authed(t, h, "POST", "/v1/faults", `{"portal":"B0","kind":"blackhole"}`) // F4
	a.revertErr["F3"] = errors.New("proxy for A0 is closed")
	code, body = authed(t, h, "DELETE", "/v1/faults", "")
	if code != http.StatusInternalServerError {
		t.Fatalf("status %d, want 500: %s", code, body)
	}
	if msg := errorOf(t, body); !strings.Contains(msg, "revert fault F3 on portal A0: proxy for A0 is closed") {
		t.Fatalf("error %q does not name the stuck fault", msg)
	}
	if got := decode[revertAllBody](t, body).Reverted; len(got) != 1 || got[0].ID != "F4" {
		t.Fatalf("reverted = %+v, want F4", got)
	}
}

func TestUnknownRoutesAndMethodsAnswerJSON(t *testing.T) {
	h := NewHandler(newFakeArray(), token)
	for _, tc := range []struct {
		method, path string
		status       int
		allow        string
	}{
		{"GET", "/v2/info", http.StatusNotFound, ""},
		{"GET", "/", http.StatusNotFound, ""},
		{"PUT", "/v1/info", http.StatusMethodNotAllowed, "GET"},
		{"PATCH", "/v1/faults", http.StatusMethodNotAllowed, "GET, POST, DELETE"},
		{"GET", "/v1/faults/F1", http.StatusMethodNotAllowed, "DELETE"},
	} {
		code, hdr, body := call(t, h, tc.method, tc.path, "Bearer "+token, "")
		if code != tc.status {
			t.Errorf("%s %s: status %d, want %d", tc.method, tc.path, code, tc.status)
		}
		if msg := errorOf(t, body); !strings.Contains(msg, tc.path) {
			t.Errorf("%s %s: error %q does not name the path", tc.method, tc.path, msg)
		}
		if hdr.Get("Allow") != tc.allow {
			t.Errorf("%s %s: Allow %q, want %q", tc.method, tc.path, hdr.Get("Allow"), tc.allow)
		}
	}
}

func serve(t *testing.T, a Array) *Server {
	t.Helper()
	s, err := Serve("127.0.0.1:0", a, token)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestServeBindsOnlyLoopbackUnlessAllowed(t *testing.T) {
	s := serve(t, newFakeArray())
	if !strings.HasPrefix(s.URL(), "http://127.0.0.1:") {
		t.Fatalf("URL() = %s", s.URL())
	}
	busy := strings.TrimPrefix(s.URL(), "http://")
	if _, err := Serve(busy, newFakeArray(), token); err == nil || !strings.Contains(err.Error(), busy) {
		t.Fatalf("Serve on a busy address: %v, want an error naming %s", err, busy)
	}

	for _, addr := range []string{":0", "0.0.0.0:0", "[::]:0", "192.0.2.1:0", "lab-box.example:0"} {
		_, err := Serve(addr, newFakeArray(), token)
		if err == nil || !strings.Contains(err.Error(), "not a loopback address") || !strings.Contains(err.Error(), "AllowRemote") {
			t.Errorf("Serve(%q): %v, want a refusal pointing at AllowRemote", addr, err)
		}
	}
	for _, addr := range []string{"127.0.0.1:0", "127.1.2.3:0", "[::1]:0", "localhost:0"} {
		if err := checkLoopback(addr, false); err != nil {
			t.Errorf("checkLoopback(%q): %v", addr, err)
		}
	}
	if _, err := Serve("127.0.0.1", newFakeArray(), token); err == nil || !strings.Contains(err.Error(), "host:port") {
		t.Errorf("Serve without a port: %v", err)
	}

	// AllowRemote lifts the check: binding a TEST-NET address then fails in
	// the kernel, not in certkit (and nothing off loopback gets bound).
	_, err := Serve("192.0.2.1:0", newFakeArray(), token, AllowRemote())
	if err == nil || strings.Contains(err.Error(), "not a loopback address") || !strings.Contains(err.Error(), "listen on 192.0.2.1:0") {
		t.Errorf("Serve with AllowRemote: %v, want a listen error", err)
	}
	if _, err := Serve("", newFakeArray(), ""); err == nil || !strings.Contains(err.Error(), "empty control token") {
		t.Errorf("Serve with no token: %v", err)
	}
}

func TestServeDefaultsToLoopback(t *testing.T) {
	s, err := Serve("", newFakeArray(), token)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if !strings.HasPrefix(s.URL(), "http://127.0.0.1:") {
		t.Fatalf("URL() = %s, want loopback", s.URL())
	}
}

func TestClientRoundTrip(t *testing.T) {
	ctx := context.Background()
	a := newFakeArray()
	s := serve(t, a)
	c := NewClient(s.URL()+"/", token)
	if c.URL() != s.URL() {
		t.Fatalf("client URL %s, server %s", c.URL(), s.URL())
	}

	info, err := c.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(info, a.Info()) {
		t.Fatalf("Info() = %+v", info)
	}

	rec, err := c.Inject(ctx, "A0", "reset")
	if err != nil {
		t.Fatal(err)
	}
	if rec.Portal != "A0" || rec.Kind != "reset" || !rec.InjectedAt.Equal(a.records[rec.ID].InjectedAt) {
		t.Fatalf("Inject() = %+v", rec)
	}
	if _, err := c.Inject(ctx, "B0", "blackhole"); err != nil {
		t.Fatal(err)
	}
	faults, err := c.Faults(ctx)
	if err != nil || len(faults) != 2 {
		t.Fatalf("Faults() = %+v, %v", faults, err)
	}

	// Errors name the array, the operation and the array's reason.
	_, err = c.Inject(ctx, "A0", "blackhole")
	want := "array control at " + s.URL() + ": inject blackhole on portal A0: portal A0 already has fault reset active"
	if err == nil || err.Error() != want {
		t.Fatalf("second inject: %v\nwant: %s", err, want)
	}
	var apiErr *APIError
	if !errors.Is(err, ErrConflict) || !errors.As(err, &apiErr) || apiErr.Status != http.StatusConflict {
		t.Fatalf("second inject: %#v, want an APIError matching ErrConflict", err)
	}
	if _, err := c.Inject(ctx, "Z9", "reset"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("inject on unknown portal: %v, want ErrNotFound", err)
	}
	if _, err := c.Inject(ctx, "B0", "meteor"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("inject unknown kind: %v, want ErrInvalid", err)
	}

	got, err := c.Revert(ctx, rec.ID)
	if err != nil || got.RevertedAt == nil {
		t.Fatalf("Revert() = %+v, %v", got, err)
	}
	_, err = c.Revert(ctx, rec.ID)
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "revert fault "+rec.ID+": no active fault "+rec.ID) {
		t.Fatalf("second revert: %v", err)
	}
	if _, err := c.Revert(ctx, ""); err == nil || !strings.Contains(err.Error(), "empty fault ID") {
		t.Fatalf("revert of empty ID: %v", err)
	}
	if _, err := c.Revert(ctx, "F/../../info"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("revert of an ID with slashes: %v, want ErrNotFound (escaped, not routed elsewhere)", err)
	}

	all, err := c.RevertAll(ctx)
	if err != nil || len(all) != 1 || all[0].Portal != "B0" {
		t.Fatalf("RevertAll() = %+v, %v", all, err)
	}
	if faults, err := c.Faults(ctx); err != nil || len(faults) != 0 {
		t.Fatalf("Faults() after RevertAll = %+v, %v", faults, err)
	}

	// A partial RevertAll still returns what it reverted.
	c.Inject(ctx, "A0", "reset")
	stuck, _ := c.Inject(ctx, "B0", "reset")
	a.revertErr[stuck.ID] = errors.New("proxy for B0 is closed")
	all, err = c.RevertAll(ctx)
	if err == nil || !strings.Contains(err.Error(), "proxy for B0 is closed") || len(all) != 1 || all[0].Portal != "A0" {
		t.Fatalf("partial RevertAll() = %+v, %v", all, err)
	}
}

func TestClientWithWrongTokenNeverShowsIt(t *testing.T) {
	s := serve(t, newFakeArray())
	_, err := NewClient(s.URL(), "not-the-token").Info(context.Background())
	if !errors.Is(err, ErrUnauthorized) || !strings.Contains(err.Error(), "array control at "+s.URL()+": get info: invalid bearer token") {
		t.Fatalf("Info with a wrong token: %v", err)
	}
	if strings.Contains(err.Error(), "not-the-token") || strings.Contains(err.Error(), token) {
		t.Fatalf("error shows a token: %v", err)
	}
}

func TestClientCallsEndWithTheirContext(t *testing.T) {
	a := newFakeArray()
	a.injectGate = make(chan chan struct{})
	s := serve(t, a)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := NewClient(s.URL(), token).Inject(ctx, "A0", "reset")
		errc <- err
	}()
	release := <-a.injectGate // the request reached the array and hangs there
	defer close(release)
	cancel()
	err := <-errc
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "array control at "+s.URL()+": inject reset on portal A0") {
		t.Fatalf("cancelled Inject: %v", err)
	}
}

func TestClientNamesAnUnreachableArray(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + ln.Addr().String()
	ln.Close()
	_, err = NewClient(url, token).Faults(context.Background())
	if err == nil || !strings.HasPrefix(err.Error(), "array control at "+url+": list faults: ") || !strings.Contains(err.Error(), "is the array running") {
		t.Fatalf("Faults from a stopped array: %v", err)
	}
}

func TestClientReportsNonAPIResponses(t *testing.T) {
	gw := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "upstream array unavailable", http.StatusBadGateway)
	}))
	defer gw.Close()
	_, err := NewClient(gw.URL, token).Info(context.Background())
	if err == nil || !strings.Contains(err.Error(), `unexpected response 502 Bad Gateway: "upstream array unavailable"`) {
		t.Fatalf("Info through a broken gateway: %v", err)
	}

	garbled := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "{not json")
	}))
	defer garbled.Close()
	_, err = NewClient(garbled.URL, token).Info(context.Background())
	if err == nil || !strings.Contains(err.Error(), "array control at "+garbled.URL+": get info: decoding 200 OK response") {
		t.Fatalf("Info with a garbled answer: %v", err)
	}
}

func TestServerCloseStopsServing(t *testing.T) {
	s, err := Serve("127.0.0.1:0", newFakeArray(), token)
	if err != nil {
		t.Fatal(err)
	}
	c := NewClient(s.URL(), token)
	if _, err := c.Info(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := c.Info(context.Background()); err == nil {
		t.Fatal("Info after Close succeeded")
	}
}

// fullArray adds fault parameters, controller faults and ALUA to the double.
type fullArray struct {
	*fakeArray
	lastReq InjectRequest
	groups  []ALUAGroup
}

func (a *fullArray) InjectFault(req InjectRequest) (FaultRecord, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if req.Controller != "" && req.Controller != "A" && req.Controller != "B" {
		return FaultRecord{}, NotFoundf("no controller %s", req.Controller)
	}
	a.lastReq = req
	a.seq++
	spec := req.FaultSpec
	rec := FaultRecord{ID: fmt.Sprintf("f%d", a.seq), Portal: req.Portal, Controller: req.Controller,
		Kind: req.Kind, Spec: &spec, InjectedAt: a.tick()}
	a.records[rec.ID] = &rec
	return rec, nil
}

func (a *fullArray) ALUA() []ALUAGroup { return a.groups }

func (a *fullArray) SetALUA(id int, state string) (ALUAGroup, error) {
	for i, g := range a.groups {
		if g.ID == id {
			if state != "AO" && state != "standby" {
				return ALUAGroup{}, Invalidf("unknown ALUA state %q", state)
			}
			a.groups[i].State = state
			return a.groups[i], nil
		}
	}
	return ALUAGroup{}, NotFoundf("no target port group %d", id)
}

func TestFaultParametersAndControllerFaultsReachAnArrayThatTakesThem(t *testing.T) {
	a := &fullArray{fakeArray: newFakeArray()}
	c := NewClient(serve(t, a).URL(), token)
	lun := uint64(3)
	rec, err := c.InjectFault(context.Background(), InjectRequest{Portal: "A0",
		FaultSpec: FaultSpec{Kind: "fail-opcode", Opcode: "0x28", LUN: &lun, Sense: "05/25/00"}})
	if err != nil {
		t.Fatal(err)
	}
	if rec.Spec == nil || rec.Spec.Opcode != "0x28" || *rec.Spec.LUN != 3 || a.lastReq.Sense != "05/25/00" {
		t.Fatalf("record %+v, array saw %+v", rec, a.lastReq)
	}
	if _, err := c.InjectFault(context.Background(), InjectRequest{Controller: "A", FaultSpec: FaultSpec{Kind: "reboot", Duration: "30s"}}); err != nil {
		t.Fatal(err)
	}
	if a.lastReq.Controller != "A" || a.lastReq.Duration != "30s" {
		t.Fatalf("array saw %+v", a.lastReq)
	}
	_, err = c.InjectFault(context.Background(), InjectRequest{Controller: "Z", FaultSpec: FaultSpec{Kind: "crash"}})
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "no controller Z") {
		t.Fatalf("unknown controller: %v", err)
	}
}

func TestALUARoutes(t *testing.T) {
	a := &fullArray{fakeArray: newFakeArray(), groups: []ALUAGroup{{1, "A", "AO"}, {2, "B", "standby"}}}
	c := NewClient(serve(t, a).URL(), token)
	ctx := context.Background()
	gs, err := c.ALUA(ctx)
	if err != nil || len(gs) != 2 || gs[1].State != "standby" {
		t.Fatalf("ALUA() = %+v, %v", gs, err)
	}
	g, err := c.SetALUA(ctx, 2, "AO")
	if err != nil || g.State != "AO" || a.groups[1].State != "AO" {
		t.Fatalf("SetALUA = %+v, %v", g, err)
	}
	if _, err := c.SetALUA(ctx, 7, "AO"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown group: %v", err)
	}
	if _, err := c.SetALUA(ctx, 1, "sideways"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("unknown state: %v", err)
	}
	// An array without ALUA says so.
	plain := NewClient(serve(t, newFakeArray()).URL(), token)
	if _, err := plain.ALUA(ctx); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "no ALUA") {
		t.Fatalf("ALUA on a plain array: %v", err)
	}
}
