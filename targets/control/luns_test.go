package control

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// lunArray adds LUN management to the double: LUNs by ID, sizes in bytes,
// and the last checksum request it saw.
type lunArray struct {
	*fakeArray
	sizes    map[int]int64
	lastSum  [3]int64 // id, offset, length
	removals []int
}

func newLUNArray() *lunArray {
	return &lunArray{fakeArray: newFakeArray(), sizes: map[int]int64{0: 64 << 20}}
}

func fakeSize(s string) (int64, error) {
	var n int64
	if _, err := fmt.Sscanf(s, "%dMiB", &n); err != nil || n <= 0 {
		return 0, Invalidf("size %q: want e.g. 64MiB", s)
	}
	return n << 20, nil
}

func (a *lunArray) AddLUN(req AddLUNRequest) (LUN, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	n, err := fakeSize(req.Size)
	if err != nil {
		return LUN{}, err
	}
	if _, ok := a.sizes[req.ID]; ok {
		return LUN{}, Conflictf("LUN %d exists", req.ID)
	}
	if req.Backing != "" && req.Backing != "memory" && req.Backing != "file" {
		return LUN{}, Invalidf("backing %q: want memory or file", req.Backing)
	}
	a.sizes[req.ID] = n
	return LUN{ID: req.ID, NAA: fmt.Sprintf("naa.%016x", req.ID), SizeBytes: n}, nil
}

func (a *lunArray) RemoveLUN(id int) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, ok := a.sizes[id]; !ok {
		return NotFoundf("no LUN %d", id)
	}
	delete(a.sizes, id)
	a.removals = append(a.removals, id)
	return nil
}

func (a *lunArray) ResizeLUN(id int, size string) (LUN, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	cur, ok := a.sizes[id]
	if !ok {
		return LUN{}, NotFoundf("no LUN %d", id)
	}
	n, err := fakeSize(size)
	if err != nil {
		return LUN{}, err
	}
	if n < cur {
		return LUN{}, Invalidf("LUN %d only grows", id)
	}
	a.sizes[id] = n
	return LUN{ID: id, NAA: fmt.Sprintf("naa.%016x", id), SizeBytes: n}, nil
}

func (a *lunArray) Checksum(id int, offset, length int64) (string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, ok := a.sizes[id]; !ok {
		return "", NotFoundf("no LUN %d", id)
	}
	a.lastSum = [3]int64{int64(id), offset, length}
	return fmt.Sprintf("%064x", offset+length), nil
}

// rawCall is call for answers without a body (204).
func rawCall(h http.Handler, method, path string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, path, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

func TestLUNRoutes(t *testing.T) {
	a := newLUNArray()
	h := NewHandler(a, token)

	code, hdr, body := call(t, h, "POST", "/v1/luns", "Bearer "+token, `{"id": 3, "size": "8MiB"}`)
	if code != http.StatusCreated || hdr.Get("Location") != "/v1/luns/3" {
		t.Fatalf("add: status %d, Location %q: %s", code, hdr.Get("Location"), body)
	}
	if l := decode[LUN](t, body); l.ID != 3 || l.SizeBytes != 8<<20 {
		t.Fatalf("add answered %+v", l)
	}
	// LUN 0 is a valid id: "id" must be present, not non-zero.
	code, body = authed(t, h, "POST", "/v1/luns", `{"id": 0, "size": "8MiB"}`)
	if code != http.StatusConflict || !strings.Contains(errorOf(t, body), "LUN 0 exists") {
		t.Fatalf("add of an existing LUN 0: %d %s, want 409 from the array", code, body)
	}

	code, body = authed(t, h, "PATCH", "/v1/luns/3", `{"size": "16MiB"}`)
	if code != http.StatusOK || decode[LUN](t, body).SizeBytes != 16<<20 {
		t.Fatalf("resize: %d %s", code, body)
	}
	code, body = authed(t, h, "GET", "/v1/luns/3/sha256?offset=4096&length=512", "")
	if code != http.StatusOK || a.lastSum != [3]int64{3, 4096, 512} || decode[checksumBody](t, body).SHA256 != fmt.Sprintf("%064x", 4096+512) {
		t.Fatalf("checksum: %d %s; array saw %v", code, body, a.lastSum)
	}
	if !strings.Contains(body, `"sha256"`) {
		t.Fatalf("checksum body %s has no sha256 key", body)
	}
	if code, _ = authed(t, h, "GET", "/v1/luns/3/sha256", ""); code != http.StatusOK || a.lastSum != [3]int64{3, 0, 0} {
		t.Fatalf("checksum without a range: %d; array saw %v, want offset 0 and length 0 (to the end)", code, a.lastSum)
	}

	req := rawCall(h, "DELETE", "/v1/luns/3")
	if req.Code != http.StatusNoContent || req.Body.Len() != 0 || fmt.Sprint(a.removals) != "[3]" {
		t.Fatalf("remove: status %d body %q, array removed %v", req.Code, req.Body.String(), a.removals)
	}
	code, body = authed(t, h, "DELETE", "/v1/luns/3", "")
	if code != http.StatusNotFound || !strings.Contains(errorOf(t, body), "no LUN 3") {
		t.Fatalf("second remove: %d %s", code, body)
	}
}

func TestLUNRouteRefusals(t *testing.T) {
	h := NewHandler(newLUNArray(), token)
	for _, tc := range []struct {
		method, path, body string
		status             int
		says               string
	}{
		{"POST", "/v1/luns", `{"size": "8MiB"}`, 400, `needs "id" and "size"`},
		{"POST", "/v1/luns", `{"id": 4}`, 400, `needs "id" and "size"`},
		{"POST", "/v1/luns", `{"id": 4, "size": "8MiB", "raid": 5}`, 400, "not a LUN"},
		{"POST", "/v1/luns", `{"id": 4, "size": "8MiB"} {}`, 400, "more than one JSON value"},
		{"POST", "/v1/luns", `{"id": 4, "size": "huge"}`, 400, `size "huge"`},
		{"POST", "/v1/luns", `{"id": 4, "size": "8MiB", "backing": "tape"}`, 400, "memory or file"},
		{"PATCH", "/v1/luns/0", `{}`, 400, `send {"size"`},
		{"PATCH", "/v1/luns/0", `{"size": "1MiB"}`, 400, "only grows"},
		{"PATCH", "/v1/luns/9", `{"size": "128MiB"}`, 404, "no LUN 9"},
		{"PATCH", "/v1/luns/zero", `{"size": "128MiB"}`, 400, `"zero" is not a LUN number`},
		{"DELETE", "/v1/luns/-1", "", 400, "not a LUN number"},
		{"GET", "/v1/luns/0/sha256?offset=-5", "", 400, `offset "-5"`},
		{"GET", "/v1/luns/0/sha256?length=1k", "", 400, `length "1k"`},
		{"GET", "/v1/luns/9/sha256", "", 404, "no LUN 9"},
	} {
		code, body := authed(t, h, tc.method, tc.path, tc.body)
		if code != tc.status || !strings.Contains(errorOf(t, body), tc.says) {
			t.Errorf("%s %s %s: %d %s; want %d saying %q", tc.method, tc.path, tc.body, code, body, tc.status, tc.says)
		}
	}
	for _, tc := range []struct{ method, path, allow string }{
		{"GET", "/v1/luns", "POST"},
		{"PUT", "/v1/luns/0", "PATCH, DELETE"},
		{"POST", "/v1/luns/0/sha256", "GET"},
	} {
		code, hdr, body := call(t, h, tc.method, tc.path, "Bearer "+token, "")
		if code != http.StatusMethodNotAllowed || hdr.Get("Allow") != tc.allow || !strings.Contains(errorOf(t, body), tc.path) {
			t.Errorf("%s %s: %d Allow %q %s; want 405 allowing %s", tc.method, tc.path, code, hdr.Get("Allow"), body, tc.allow)
		}
	}
}

func TestLUNRoutesOnAnArrayWithFixedLUNs(t *testing.T) {
	h := NewHandler(newFakeArray(), token)
	for _, r := range []struct{ method, path, body string }{
		{"POST", "/v1/luns", `{"id": 3, "size": "8MiB"}`},
		{"DELETE", "/v1/luns/0", ""},
		{"PATCH", "/v1/luns/0", `{"size": "128MiB"}`},
		{"GET", "/v1/luns/0/sha256", ""},
	} {
		code, body := authed(t, h, r.method, r.path, r.body)
		if code != http.StatusNotFound || !strings.Contains(errorOf(t, body), "cannot add, remove, resize or checksum LUNs") {
			t.Errorf("%s %s on a plain array: %d %s", r.method, r.path, code, body)
		}
	}
}

func TestLUNRoutesNeedTheToken(t *testing.T) {
	a := newLUNArray()
	h := NewHandler(a, token)
	for _, r := range []struct{ method, path, body string }{
		{"POST", "/v1/luns", `{"id": 3, "size": "8MiB"}`},
		{"DELETE", "/v1/luns/0", ""},
		{"PATCH", "/v1/luns/0", `{"size": "128MiB"}`},
		{"GET", "/v1/luns/0/sha256", ""},
	} {
		if code, _, _ := call(t, h, r.method, r.path, "Bearer wrong", r.body); code != http.StatusUnauthorized {
			t.Errorf("%s %s with a wrong token: %d", r.method, r.path, code)
		}
	}
	if len(a.sizes) != 1 || a.sizes[0] != 64<<20 || a.removals != nil {
		t.Fatalf("refused requests reached the array: %v, removed %v", a.sizes, a.removals)
	}
}

func TestClientLUNMethods(t *testing.T) {
	a := newLUNArray()
	c := NewClient(serve(t, a).URL(), token)
	ctx := context.Background()
	l, err := c.AddLUN(ctx, AddLUNRequest{ID: 5, Size: "4MiB", Backing: "file", Path: "/var/tmp/a5.img"})
	if err != nil || l.ID != 5 || l.SizeBytes != 4<<20 {
		t.Fatalf("AddLUN = %+v, %v", l, err)
	}
	if _, err := c.AddLUN(ctx, AddLUNRequest{ID: 5, Size: "4MiB"}); !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "add LUN 5") {
		t.Fatalf("second AddLUN: %v, want a conflict naming the call", err)
	}
	if l, err := c.ResizeLUN(ctx, 5, "8MiB"); err != nil || l.SizeBytes != 8<<20 {
		t.Fatalf("ResizeLUN = %+v, %v", l, err)
	}
	if _, err := c.ResizeLUN(ctx, 5, "2MiB"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("shrinking ResizeLUN: %v", err)
	}
	sum, err := c.Checksum(ctx, 5, 1024, 2048)
	if err != nil || sum != fmt.Sprintf("%064x", 3072) || a.lastSum != [3]int64{5, 1024, 2048} {
		t.Fatalf("Checksum = %q, %v; array saw %v", sum, err, a.lastSum)
	}
	if err := c.RemoveLUN(ctx, 5); err != nil {
		t.Fatal(err)
	}
	if err := c.RemoveLUN(ctx, 5); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "remove LUN 5") {
		t.Fatalf("second RemoveLUN: %v", err)
	}
	if _, err := c.Checksum(ctx, 5, 0, 0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Checksum of a removed LUN: %v", err)
	}
	// An array with fixed LUNs says so through the client too.
	plain := NewClient(serve(t, newFakeArray()).URL(), token)
	if err := plain.RemoveLUN(ctx, 0); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "cannot add, remove") {
		t.Fatalf("RemoveLUN on a plain array: %v", err)
	}
}
