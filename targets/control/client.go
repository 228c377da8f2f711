package control

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"syscall"
	"time"
)

// maxResponseBody bounds what the client reads from an array.
const maxResponseBody = 16 << 20

// Client calls an array's control API. Every call is bounded by its context.
type Client struct {
	base  string
	token string
	http  *http.Client
	tls   bool // ClientTLS was given
	// tlsCfg is ClientTLS's config, for probeTLS.
	tlsCfg *tls.Config
	// hasCert: ClientTLS gave a client certificate.
	hasCert bool
}

// NewClient calls the control API at baseURL ("http://127.0.0.1:4321") with
// token as its bearer token. An array serving TLS needs an https:// URL and
// ClientTLS; with mutual TLS the token may be empty if the array takes the
// client certificate alone, and then no Authorization header is sent.
func NewClient(baseURL, token string, opts ...ClientOption) *Client {
	c := &Client{base: strings.TrimRight(baseURL, "/"), token: token, http: &http.Client{}}
	for _, o := range opts {
		o(c)
	}
	return c
}

// URL is the array's control URL, as errors name it.
func (c *Client) URL() string { return c.base }

// APIError is an error answer from the array. errors.Is matches it against
// ErrInvalid, ErrUnauthorized, ErrNotFound and ErrConflict by status.
type APIError struct {
	URL     string // the array's control URL
	Op      string // what the client tried, e.g. "inject blackhole on portal A0"
	Status  int
	Message string // the array's message

	reverted []FaultRecord // RevertAll's partial result
}

func (e *APIError) Error() string {
	return fmt.Sprintf("array control at %s: %s: %s", e.URL, e.Op, e.Message)
}

func (e *APIError) Is(target error) bool {
	class := classOf(e.Status)
	return class != nil && target == class
}

// Info describes the array: targets, LUNs, portals and their faults.
func (c *Client) Info(ctx context.Context) (Info, error) {
	var info Info
	err := c.do(ctx, "get info", http.MethodGet, "/v1/info", nil, http.StatusOK, &info)
	return info, err
}

// Faults lists the active faults.
func (c *Client) Faults(ctx context.Context) ([]FaultRecord, error) {
	var recs []FaultRecord
	err := c.do(ctx, "list faults", http.MethodGet, "/v1/faults", nil, http.StatusOK, &recs)
	return recs, err
}

// Inject starts a fault of kind on portal (a portal ID such as "A0").
func (c *Client) Inject(ctx context.Context, portal, kind string) (FaultRecord, error) {
	var rec FaultRecord
	op := fmt.Sprintf("inject %s on portal %s", kind, portal)
	err := c.do(ctx, op, http.MethodPost, "/v1/faults", InjectRequest{Portal: portal, FaultSpec: FaultSpec{Kind: kind}}, http.StatusCreated, &rec)
	return rec, err
}

// InjectFault starts a fault with parameters, on a portal or a controller.
func (c *Client) InjectFault(ctx context.Context, req InjectRequest) (FaultRecord, error) {
	var rec FaultRecord
	where := "portal " + req.Portal
	if req.Controller != "" {
		where = "controller " + req.Controller
	}
	op := fmt.Sprintf("inject %s on %s", req.Kind, where)
	err := c.do(ctx, op, http.MethodPost, "/v1/faults", req, http.StatusCreated, &rec)
	return rec, err
}

// ALUA lists the array's target port groups and their access states.
func (c *Client) ALUA(ctx context.Context) ([]ALUAGroup, error) {
	var gs []ALUAGroup
	err := c.do(ctx, "list ALUA groups", http.MethodGet, "/v1/alua", nil, http.StatusOK, &gs)
	return gs, err
}

// SetALUA sets a target port group's access state, as an implicit
// transition of the array would.
func (c *Client) SetALUA(ctx context.Context, id int, state string) (ALUAGroup, error) {
	var g ALUAGroup
	op := fmt.Sprintf("set ALUA group %d to %s", id, state)
	err := c.do(ctx, op, http.MethodPut, fmt.Sprintf("/v1/alua/%d", id), setALUARequest{State: state}, http.StatusOK, &g)
	return g, err
}

// TargetLUNs are the LUN operations on one target of an array that serves
// several (Client.Target); the Client's own LUN methods act on an array's
// only target.
type TargetLUNs struct {
	c      *Client
	prefix string // the routes' prefix: /v1/luns or /v1/targets/<iqn>/luns
	of     string // " of target <iqn>" in messages; "" for the only target
}

// Target returns the LUN operations on the target named iqn.
func (c *Client) Target(iqn string) *TargetLUNs {
	return &TargetLUNs{c: c, prefix: "/v1/targets/" + url.PathEscape(iqn) + "/luns", of: " of target " + iqn}
}

func (c *Client) onlyTarget() *TargetLUNs { return &TargetLUNs{c: c, prefix: "/v1/luns"} }

// AddLUN adds a LUN to the array's only target; see TargetLUNs.AddLUN.
func (c *Client) AddLUN(ctx context.Context, req AddLUNRequest) (LUN, error) {
	return c.onlyTarget().AddLUN(ctx, req)
}

// RemoveLUN removes a LUN of the array's only target; see TargetLUNs.RemoveLUN.
func (c *Client) RemoveLUN(ctx context.Context, id int) error {
	return c.onlyTarget().RemoveLUN(ctx, id)
}

// ResizeLUN resizes a LUN of the array's only target; see TargetLUNs.ResizeLUN.
func (c *Client) ResizeLUN(ctx context.Context, id int, size string) (LUN, error) {
	return c.onlyTarget().ResizeLUN(ctx, id, size)
}

// Checksum checks a LUN of the array's only target; see TargetLUNs.Checksum.
func (c *Client) Checksum(ctx context.Context, id int, offset, length int64) (string, error) {
	return c.onlyTarget().Checksum(ctx, id, offset, length)
}

// AddLUN adds a LUN to the target while hosts are logged in; each of their
// I_T nexuses is owed UNIT ATTENTION 06/3F/0E (REPORTED LUNS DATA HAS
// CHANGED).
func (t *TargetLUNs) AddLUN(ctx context.Context, req AddLUNRequest) (LUN, error) {
	var l LUN
	op := fmt.Sprintf("add LUN %d of %s%s", req.ID, req.Size, t.of)
	err := t.c.do(ctx, op, http.MethodPost, t.prefix, req, http.StatusCreated, &l)
	return l, err
}

// RemoveLUN removes a LUN: commands to it then end with 05/25/00 (LOGICAL
// UNIT NOT SUPPORTED), and the remaining LUs owe 06/3F/0E.
func (t *TargetLUNs) RemoveLUN(ctx context.Context, id int) error {
	return t.c.do(ctx, fmt.Sprintf("remove LUN %d%s", id, t.of), http.MethodDelete, fmt.Sprintf("%s/%d", t.prefix, id), nil, http.StatusNoContent, nil)
}

// ResizeLUN changes a LUN's size ("128MiB"); its I_T nexuses are owed
// UNIT ATTENTION 06/2A/09 (CAPACITY DATA HAS CHANGED).
func (t *TargetLUNs) ResizeLUN(ctx context.Context, id int, size string) (LUN, error) {
	var l LUN
	op := fmt.Sprintf("resize LUN %d%s to %s", id, t.of, size)
	err := t.c.do(ctx, op, http.MethodPatch, fmt.Sprintf("%s/%d", t.prefix, id), resizeLUNRequest{Size: size}, http.StatusOK, &l)
	return l, err
}

// Checksum returns the SHA-256 (hex) of length bytes of a LUN from offset,
// read from the array's backing store rather than through iSCSI; length 0
// means to the end of the LUN.
func (t *TargetLUNs) Checksum(ctx context.Context, id int, offset, length int64) (string, error) {
	var body checksumBody
	op := fmt.Sprintf("checksum LUN %d%s from offset %d to its end", id, t.of, offset)
	if length != 0 {
		op = fmt.Sprintf("checksum %d bytes of LUN %d%s at offset %d", length, id, t.of, offset)
	}
	path := fmt.Sprintf("%s/%d/sha256?offset=%d&length=%d", t.prefix, id, offset, length)
	err := t.c.do(ctx, op, http.MethodGet, path, nil, http.StatusOK, &body)
	return body.SHA256, err
}

// Revert ends the fault with the given ID and returns its final record.
func (c *Client) Revert(ctx context.Context, id string) (FaultRecord, error) {
	var rec FaultRecord
	if id == "" {
		return rec, fmt.Errorf("array control at %s: revert fault: empty fault ID (RevertAll reverts every fault)", c.base)
	}
	err := c.do(ctx, "revert fault "+id, http.MethodDelete, "/v1/faults/"+url.PathEscape(id), nil, http.StatusOK, &rec)
	return rec, err
}

// RevertAll ends every active fault. When some reverts fail it still returns
// the faults that were reverted, with an error naming the others.
func (c *Client) RevertAll(ctx context.Context) ([]FaultRecord, error) {
	var recs []FaultRecord
	err := c.do(ctx, "revert all faults", http.MethodDelete, "/v1/faults", nil, http.StatusOK, &recs)
	var apiErr *APIError
	if errors.As(err, &apiErr) {
		recs = apiErr.reverted
	}
	return recs, err
}

func (c *Client) do(ctx context.Context, op, method, path string, in any, want int, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("array control at %s: %s: encoding request: %w", c.base, op, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return fmt.Errorf("array control at %s: %s: %w", c.base, op, err)
	}
	if c.tls && req.URL.Scheme != "https" {
		// The TLS settings would go unused and the token out in the clear.
		return fmt.Errorf("array control at %s: %s: the client has TLS settings but the URL is not https://; use the https:// URL the array prints", c.base, op)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	req.Header.Set("Accept", "application/json")
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return c.transportError(ctx, op, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBody))
	if err != nil {
		return c.transportError(ctx, op, err)
	}
	if resp.StatusCode != want {
		return c.apiError(op, resp, b)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("array control at %s: %s: decoding %s response: %w", c.base, op, resp.Status, err)
	}
	return nil
}

func (c *Client) transportError(ctx context.Context, op string, err error) error {
	// *url.Error repeats method and URL; the prefix already names the array.
	var uerr *url.Error
	if errors.As(err, &uerr) {
		err = uerr.Err
	}
	hint := tlsHint(err, c.hasCert)
	if hint == "" && c.tlsCfg != nil && ctx.Err() == nil {
		// In TLS 1.3 the client's handshake ends before the array has
		// checked its certificate; the array's verdict, an alert, races
		// the request, and the transport may report only the closed
		// connection. Ask once more, on a connection of our own.
		if perr := c.probeTLS(ctx); perr != nil {
			if h := tlsHint(perr, c.hasCert); h != "" {
				err, hint = perr, h
			}
		}
	}
	if errors.Is(err, syscall.ECONNREFUSED) {
		hint = " (is the array running and serving its control API at this address?)"
	}
	return fmt.Errorf("array control at %s: %s: %w%s", c.base, op, err, hint)
}

// tlsProbeWait bounds how long probeTLS waits for the array's alert after
// its handshake; an array that accepted the client sends nothing.
const tlsProbeWait = 2 * time.Second

// probeTLS completes a TLS handshake with the array and waits briefly for
// an alert: the reason, if any, the array refuses this client.
func (c *Client) probeTLS(ctx context.Context) error {
	u, err := url.Parse(c.base)
	if err != nil {
		return nil
	}
	addr := u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(u.Hostname(), "443")
	}
	d := tls.Dialer{Config: c.tlsCfg}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	deadline := time.Now().Add(tlsProbeWait)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	_ = conn.SetReadDeadline(deadline)
	_, err = conn.Read(make([]byte, 1))
	return err
}

func (c *Client) apiError(op string, resp *http.Response, b []byte) error {
	e := &APIError{URL: c.base, Op: op, Status: resp.StatusCode}
	var body struct {
		Error    string        `json:"error"`
		Reverted []FaultRecord `json:"reverted"`
	}
	if json.Unmarshal(b, &body) == nil && body.Error != "" {
		e.Message = body.Error
		e.reverted = body.Reverted
	} else if resp.StatusCode == http.StatusBadRequest && bytes.Contains(b, []byte("HTTP request to an HTTPS server")) {
		e.Message = "the array serves HTTPS at this address: use its https:// control URL, with its CA certificate and, for mutual TLS, a client certificate and key"
	} else {
		const max = 200
		if len(b) > max {
			b = b[:max]
		}
		e.Message = fmt.Sprintf("unexpected response %s: %q", resp.Status, bytes.TrimSpace(b))
	}
	return e
}
