package control

import (
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// maxRequestBody bounds a request body; the largest valid one is a few dozen bytes.
const maxRequestBody = 64 << 10

type handler struct {
	a         Array
	tokenHash [sha256.Size]byte
	noToken   bool // refuse everything: no way to authenticate
	// needCert: requests must have come with a verified client
	// certificate (mutual TLS); certOnly: and that alone suffices.
	needCert, certOnly bool
	mux                *http.ServeMux
}

// NewHandler serves the control API of a, accepting only requests that carry
// token as a bearer token. An empty token refuses every request (fail closed).
func NewHandler(a Array, token string) http.Handler {
	return newHandler(a, token, false)
}

// newHandler is NewHandler; with mutualTLS it also requires a verified
// client certificate, which alone suffices when token is empty.
func newHandler(a Array, token string, mutualTLS bool) http.Handler {
	h := &handler{a: a, tokenHash: sha256.Sum256([]byte(token)), needCert: mutualTLS}
	switch {
	case token != "":
	case mutualTLS:
		h.certOnly = true
	default:
		h.noToken = true
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/info", h.info)
	mux.HandleFunc("GET /v1/faults", h.faults)
	mux.HandleFunc("POST /v1/faults", h.inject)
	mux.HandleFunc("DELETE /v1/faults", h.revertAll)
	mux.HandleFunc("DELETE /v1/faults/{id}", h.revert)
	mux.HandleFunc("GET /v1/alua", h.alua)
	mux.HandleFunc("PUT /v1/alua/{id}", h.setALUA)
	mux.HandleFunc("POST /v1/luns", h.addLUN)
	mux.HandleFunc("DELETE /v1/luns/{id}", h.removeLUN)
	mux.HandleFunc("PATCH /v1/luns/{id}", h.resizeLUN)
	mux.HandleFunc("GET /v1/luns/{id}/sha256", h.checksum)
	// The same, for one target of an array that serves several.
	mux.HandleFunc("POST /v1/targets/{target}/luns", h.addLUN)
	mux.HandleFunc("DELETE /v1/targets/{target}/luns/{id}", h.removeLUN)
	mux.HandleFunc("PATCH /v1/targets/{target}/luns/{id}", h.resizeLUN)
	mux.HandleFunc("GET /v1/targets/{target}/luns/{id}/sha256", h.checksum)
	// The same paths without a method answer 405 in JSON, not net/http's text.
	mux.HandleFunc("/v1/info", methodNotAllowed("GET"))
	mux.HandleFunc("/v1/faults", methodNotAllowed("GET, POST, DELETE"))
	mux.HandleFunc("/v1/faults/{id}", methodNotAllowed("DELETE"))
	mux.HandleFunc("/v1/alua", methodNotAllowed("GET"))
	mux.HandleFunc("/v1/alua/{id}", methodNotAllowed("PUT"))
	mux.HandleFunc("/v1/luns", methodNotAllowed("POST"))
	mux.HandleFunc("/v1/luns/{id}", methodNotAllowed("PATCH, DELETE"))
	mux.HandleFunc("/v1/luns/{id}/sha256", methodNotAllowed("GET"))
	mux.HandleFunc("/v1/targets/{target}/luns", methodNotAllowed("POST"))
	mux.HandleFunc("/v1/targets/{target}/luns/{id}", methodNotAllowed("PATCH, DELETE"))
	mux.HandleFunc("/v1/targets/{target}/luns/{id}/sha256", methodNotAllowed("GET"))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no route %s %s: the control API serves /v1/info, /v1/faults, /v1/alua, /v1/luns and /v1/targets/{iqn}/luns", r.Method, r.URL.Path))
	})
	h.mux = mux
	return h
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	if h.noToken {
		writeError(w, http.StatusInternalServerError, "array control has no token configured: restart the array with a control token")
		return
	}
	// The TLS handshake verified the certificate already; this refuses
	// anything that reached the handler some other way (fail closed).
	if h.needCert && (r.TLS == nil || len(r.TLS.VerifiedChains) == 0) {
		writeError(w, http.StatusUnauthorized, "no verified client certificate: this array's control API takes mutual TLS; connect over https:// with a client certificate signed by the CA the array trusts")
		return
	}
	if h.certOnly {
		h.mux.ServeHTTP(w, r)
		return
	}
	if msg := h.checkToken(r.Header.Get("Authorization")); msg != "" {
		w.Header().Set("WWW-Authenticate", `Bearer realm="certkit array control"`)
		writeError(w, http.StatusUnauthorized, msg)
		return
	}
	h.mux.ServeHTTP(w, r)
}

// checkToken returns why the Authorization header is refused, "" if it is
// accepted. The messages never repeat what the caller sent.
func (h *handler) checkToken(header string) string {
	if header == "" {
		return "missing bearer token: send the array's control token as Authorization: Bearer <token>"
	}
	scheme, token, ok := strings.Cut(header, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "Authorization is not a bearer token: send the array's control token as Authorization: Bearer <token>"
	}
	// Comparing hashes keeps the comparison constant-time in the token's length too.
	sum := sha256.Sum256([]byte(strings.TrimSpace(token)))
	if subtle.ConstantTimeCompare(sum[:], h.tokenHash[:]) != 1 {
		return "invalid bearer token: use the control token the array was started with"
	}
	return ""
}

func (h *handler) info(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, h.a.Info())
}

func (h *handler) faults(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, nonNil(h.a.Faults()))
}

// InjectRequest is the body of POST /v1/faults: a fault on one portal, or
// on a whole controller, with its parameters.
type InjectRequest struct {
	Portal     string `json:"portal,omitempty"`
	Controller string `json:"controller,omitempty"`
	FaultSpec
}

// plain reports whether the request is a portal and a kind and nothing else.
func (r InjectRequest) plain() bool {
	return r.Controller == "" && r.FaultSpec == FaultSpec{Kind: r.Kind}
}

func (h *handler) inject(w http.ResponseWriter, r *http.Request) {
	const example = `{"portal": "A0", "kind": "blackhole"}`
	var req InjectRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxRequestBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("inject: request body is not a fault request (%v); send %s", err, example))
		return
	}
	if dec.More() {
		writeError(w, http.StatusBadRequest, "inject: request body holds more than one JSON value; send "+example)
		return
	}
	if (req.Portal == "") == (req.Controller == "") || req.Kind == "" {
		writeError(w, http.StatusBadRequest, `inject: request needs "kind" and one of "portal" or "controller"; send `+example)
		return
	}
	var rec FaultRecord
	var err error
	if fi, ok := h.a.(FaultInjector); ok {
		rec, err = fi.InjectFault(req)
	} else if req.plain() {
		rec, err = h.a.Inject(req.Portal, req.Kind)
	} else {
		err = Invalidf("inject %s: this array takes only a portal and a kind (no parameters, no controller faults)", req.Kind)
	}
	if err != nil {
		writeError(w, statusOf(err), err.Error())
		return
	}
	w.Header().Set("Location", "/v1/faults/"+url.PathEscape(rec.ID))
	writeJSON(w, http.StatusCreated, rec)
}

func (h *handler) revert(w http.ResponseWriter, r *http.Request) {
	rec, err := h.a.Revert(r.PathValue("id"))
	if err != nil {
		writeError(w, statusOf(err), err.Error())
		return
	}
	writeJSON(w, http.StatusOK, rec)
}

// revertAllBody is the error body of DELETE /v1/faults when some reverts
// failed: the ones that succeeded are still reported.
type revertAllBody struct {
	Error    string        `json:"error"`
	Reverted []FaultRecord `json:"reverted"`
}

// revertAll reverts every active fault, carrying on past failures so that
// one stuck fault does not leave the others injected.
func (h *handler) revertAll(w http.ResponseWriter, r *http.Request) {
	reverted := []FaultRecord{}
	var msgs []string
	status := http.StatusOK
	for _, f := range h.a.Faults() {
		rec, err := h.a.Revert(f.ID)
		switch {
		case errors.Is(err, ErrNotFound):
			// Reverted by someone else meanwhile: the goal is reached.
		case err != nil:
			if status == http.StatusOK {
				status = statusOf(err)
			}
			msgs = append(msgs, fmt.Sprintf("revert fault %s on portal %s: %v", f.ID, f.Portal, err))
		default:
			reverted = append(reverted, rec)
		}
	}
	if msgs != nil {
		writeJSON(w, status, revertAllBody{Error: strings.Join(msgs, "; "), Reverted: reverted})
		return
	}
	writeJSON(w, http.StatusOK, reverted)
}

func (h *handler) aluaArray(w http.ResponseWriter) (ALUAArray, bool) {
	a, ok := h.a.(ALUAArray)
	if !ok {
		writeError(w, http.StatusNotFound, "this array presents no ALUA target port groups")
	}
	return a, ok
}

func (h *handler) alua(w http.ResponseWriter, r *http.Request) {
	if a, ok := h.aluaArray(w); ok {
		writeJSON(w, http.StatusOK, nonNil(a.ALUA()))
	}
}

// setALUARequest is the body of PUT /v1/alua/{id}.
type setALUARequest struct {
	State string `json:"state"`
}

func (h *handler) setALUA(w http.ResponseWriter, r *http.Request) {
	a, ok := h.aluaArray(w)
	if !ok {
		return
	}
	id, err := strconv.Atoi(r.PathValue("id"))
	if err != nil {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("set ALUA: %q is not a target port group ID (a number, see GET /v1/alua)", r.PathValue("id")))
		return
	}
	var req setALUARequest
	if err := decodeBody(w, r, &req); err != nil || req.State == "" {
		writeError(w, http.StatusBadRequest, `set ALUA: send {"state": "AO|ANO|standby|unavailable|transitioning"}`)
		return
	}
	g, err := a.SetALUA(id, req.State)
	if err != nil {
		writeError(w, statusOf(err), err.Error())
		return
	}
	writeJSON(w, http.StatusOK, g)
}

// lunManager returns the LUNs a /v1/luns or /v1/targets/{target}/luns
// route acts on, or answers the error.
func (h *handler) lunManager(w http.ResponseWriter, r *http.Request) (LUNManager, bool) {
	const fixed = "this array cannot add, remove, resize or checksum LUNs at run time; its LUNs are fixed by its config (see GET /v1/info)"
	target := r.PathValue("target")
	if target == "" {
		m, ok := h.a.(LUNManager)
		if !ok {
			writeError(w, http.StatusNotFound, fixed)
		}
		return m, ok
	}
	tm, ok := h.a.(TargetLUNManager)
	if !ok {
		writeError(w, http.StatusNotFound, fixed)
		return nil, false
	}
	m, err := tm.LUNsOf(target)
	if err != nil {
		writeError(w, statusOf(err), err.Error())
		return nil, false
	}
	return m, true
}

// lunID reads the {id} of a /v1/luns/{id} route, answering 400 if it is
// not a LUN number.
func lunID(w http.ResponseWriter, r *http.Request, op string) (int, bool) {
	id, err := strconv.Atoi(r.PathValue("id"))
	if err != nil || id < 0 {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("%s: %q is not a LUN number (see GET /v1/info)", op, r.PathValue("id")))
		return 0, false
	}
	return id, true
}

// decodeBody reads exactly one JSON object into v, refusing unknown fields.
func decodeBody(w http.ResponseWriter, r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxRequestBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("more than one JSON value")
	}
	return nil
}

func (h *handler) addLUN(w http.ResponseWriter, r *http.Request) {
	m, ok := h.lunManager(w, r)
	if !ok {
		return
	}
	const example = `{"id": 3, "size": "64MiB"} or {"id": 4, "size": "1GiB", "backing": "file", "path": "/var/tmp/a4.img"}`
	var body struct {
		ID      *int   `json:"id"`
		Size    string `json:"size"`
		Backing string `json:"backing"`
		Path    string `json:"path"`
	}
	if err := decodeBody(w, r, &body); err != nil {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("add LUN: request body is not a LUN (%v); send %s", err, example))
		return
	}
	if body.ID == nil || body.Size == "" {
		writeError(w, http.StatusBadRequest, `add LUN: request needs "id" and "size"; send `+example)
		return
	}
	l, err := m.AddLUN(AddLUNRequest{ID: *body.ID, Size: body.Size, Backing: body.Backing, Path: body.Path})
	if err != nil {
		writeError(w, statusOf(err), err.Error())
		return
	}
	w.Header().Set("Location", strings.TrimSuffix(r.URL.Path, "/")+"/"+strconv.Itoa(l.ID))
	writeJSON(w, http.StatusCreated, l)
}

func (h *handler) removeLUN(w http.ResponseWriter, r *http.Request) {
	m, ok := h.lunManager(w, r)
	if !ok {
		return
	}
	id, ok := lunID(w, r, "remove LUN")
	if !ok {
		return
	}
	if err := m.RemoveLUN(id); err != nil {
		writeError(w, statusOf(err), err.Error())
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// resizeLUNRequest is the body of PATCH /v1/luns/{id}.
type resizeLUNRequest struct {
	Size string `json:"size"`
}

func (h *handler) resizeLUN(w http.ResponseWriter, r *http.Request) {
	m, ok := h.lunManager(w, r)
	if !ok {
		return
	}
	id, ok := lunID(w, r, "resize LUN")
	if !ok {
		return
	}
	var req resizeLUNRequest
	if err := decodeBody(w, r, &req); err != nil || req.Size == "" {
		writeError(w, http.StatusBadRequest, `resize LUN: send {"size": "128MiB"} (a byte count or KiB, MiB, GiB, TiB)`)
		return
	}
	l, err := m.ResizeLUN(id, req.Size)
	if err != nil {
		writeError(w, statusOf(err), err.Error())
		return
	}
	writeJSON(w, http.StatusOK, l)
}

// checksumBody is the answer of GET /v1/luns/{id}/sha256.
type checksumBody struct {
	SHA256 string `json:"sha256"`
}

func (h *handler) checksum(w http.ResponseWriter, r *http.Request) {
	m, ok := h.lunManager(w, r)
	if !ok {
		return
	}
	id, ok := lunID(w, r, "checksum LUN")
	if !ok {
		return
	}
	var offLen [2]int64
	for i, key := range []string{"offset", "length"} {
		v := r.URL.Query().Get(key)
		if v == "" {
			continue
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("checksum LUN %d: %s %q is not a byte count (0 or more)", id, key, v))
			return
		}
		offLen[i] = n
	}
	sum, err := m.Checksum(id, offLen[0], offLen[1])
	if err != nil {
		writeError(w, statusOf(err), err.Error())
		return
	}
	writeJSON(w, http.StatusOK, checksumBody{SHA256: sum})
}

func methodNotAllowed(allow string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Allow", allow)
		writeError(w, http.StatusMethodNotAllowed, fmt.Sprintf("method %s not allowed on %s (allowed: %s)", r.Method, r.URL.Path, allow))
	}
}

// errorBody is every error response.
type errorBody struct {
	Error string `json:"error"`
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, errorBody{Error: msg})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		b, _ = json.Marshal(errorBody{Error: "encoding response: " + err.Error()})
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// DefaultAddr is where Serve listens when given no address.
const DefaultAddr = "127.0.0.1:0"

// ServeOption changes how Serve listens.
type ServeOption func(*serveConfig)

type serveConfig struct {
	allowRemote bool
	tls         *tls.Config
	tlsSet      bool
}

// AllowRemote lets Serve bind an address other hosts can reach, including
// all interfaces (":7070", "0.0.0.0:7070"). Without ServeTLS the API is
// plain HTTP: the token crosses the network in the clear, so use it only on
// a lab network you trust, or add ServeTLS with client CAs (mutual TLS).
func AllowRemote() ServeOption { return func(c *serveConfig) { c.allowRemote = true } }

// ErrNotLoopback is what Serve's refusal of a non-loopback address without
// AllowRemote matches (errors.Is).
var ErrNotLoopback = errors.New("not a loopback address")

// Server is a running control API.
type Server struct {
	srv       *http.Server
	url       string
	mutualTLS bool
	done      chan error // the result of http.Server.Serve

	closeOnce sync.Once
	closeErr  error
}

// Serve binds exactly addr (DefaultAddr when empty) and serves the control
// API of a there. Addresses that are not loopback are refused unless
// AllowRemote is given.
//
// Requests must carry token as a bearer token. With ServeTLS the API is
// served over TLS 1.3 (an https:// URL); when its config names client CAs,
// clients must also present a certificate that chains to them, and both
// are checked. The token may then be empty: the client certificate alone
// authenticates. Without mutual TLS an empty token is refused.
func Serve(addr string, a Array, token string, opts ...ServeOption) (*Server, error) {
	var cfg serveConfig
	for _, o := range opts {
		o(&cfg)
	}
	if addr == "" {
		addr = DefaultAddr
	}
	var tlsCfg *tls.Config
	if cfg.tlsSet {
		var err error
		if tlsCfg, err = serverTLS(cfg.tls, addr); err != nil {
			return nil, err
		}
	}
	mutual := tlsCfg != nil && tlsCfg.ClientCAs != nil
	if token == "" && !mutual {
		return nil, fmt.Errorf("array control: serve on %s: empty control token; give the array a token (or serve with mutual TLS)", addr)
	}
	if !cfg.allowRemote {
		if err := checkLoopback(addr, tlsCfg != nil); err != nil {
			return nil, err
		}
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("array control: listen on %s: %w", addr, err)
	}
	scheme := "http://"
	if tlsCfg != nil {
		scheme = "https://"
	}
	s := &Server{
		srv: &http.Server{
			Handler:           newHandler(a, token, mutual),
			ReadHeaderTimeout: 10 * time.Second,
			IdleTimeout:       2 * time.Minute,
			TLSConfig:         tlsCfg,
			Protocols:         http1Only(),
		},
		url:       scheme + ln.Addr().String(),
		mutualTLS: mutual,
		done:      make(chan error, 1),
	}
	go func() {
		if tlsCfg != nil {
			s.done <- s.srv.ServeTLS(ln, "", "")
			return
		}
		s.done <- s.srv.Serve(ln)
	}()
	return s, nil
}

// checkLoopback refuses addresses other hosts could reach. Host names other
// than localhost are refused too: what they resolve to is not ours to trust.
func checkLoopback(addr string, overTLS bool) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("array control: serve on %q: not host:port: %w", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	if overTLS {
		return fmt.Errorf("array control: refusing to serve on %s: %w; listen on 127.0.0.1, or pass control.AllowRemote() to let other hosts reach the API", addr, ErrNotLoopback)
	}
	return fmt.Errorf("array control: refusing to serve on %s: %w, and the API carries its token over plain HTTP; "+
		"listen on 127.0.0.1, or pass control.AllowRemote() on a trusted lab network (with ServeTLS for mutual TLS)", addr, ErrNotLoopback)
}

// URL is the base URL clients use, e.g. "http://127.0.0.1:4321", or
// "https://127.0.0.1:4321" with ServeTLS.
func (s *Server) URL() string { return s.url }

// MutualTLS reports whether clients must present a certificate.
func (s *Server) MutualTLS() bool { return s.mutualTLS }

// Close stops the server and drops open connections.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		err := s.srv.Close()
		if serr := <-s.done; err == nil && !errors.Is(serr, http.ErrServerClosed) {
			err = serr
		}
		if err != nil {
			s.closeErr = fmt.Errorf("array control at %s: close: %w", s.url, err)
		}
	})
	return s.closeErr
}
