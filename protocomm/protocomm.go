// Package protocomm is the endpoint dispatcher of Espressif's protocomm
// protocol: named endpoints that a transport (HTTP in protocomm/httpd, BLE
// GATT in protocomm/ble) feeds with request bodies, the prov-session
// endpoint that runs the security handshake, and proto-ver, which answers
// in clear. Request and response bodies of every other endpoint are
// encrypted with the session's keys.
package protocomm

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"

	"github.com/thingline/thingline/protocomm/security"
)

// Endpoints every device has. The Wi-Fi provisioning ones live in wifiprov.
const (
	EndpointSession = "prov-session"
	EndpointVersion = "proto-ver"
)

// ErrUnknownEndpoint is returned by Handle for an endpoint nobody registered.
var ErrUnknownEndpoint = errors.New("unknown endpoint")

// Handler answers one decrypted request on an endpoint.
type Handler func(sessionID uint32, req []byte) ([]byte, error)

// Transport is the client side of a protocomm transport: it posts one
// request body to an endpoint and returns the device's answer.
type Transport interface {
	Do(ctx context.Context, endpoint string, req []byte) ([]byte, error)
}

// Protocomm dispatches requests to endpoints. It is safe for concurrent
// use; requests are handled one at a time, as on the device, so handlers
// must not call back into the Protocomm.
type Protocomm struct {
	mu      sync.Mutex // guards everything below and serializes the scheme
	scheme  security.Scheme
	eps     map[string]Handler
	version string
}

// New returns a Protocomm protecting its endpoints with scheme.
func New(scheme security.Scheme) *Protocomm {
	return &Protocomm{scheme: scheme, eps: map[string]Handler{}}
}

// Security returns the scheme, for transports and proto-ver builders.
func (p *Protocomm) Security() security.Scheme { return p.scheme }

// AddEndpoint registers (or replaces) the handler of name. prov-session and
// proto-ver are built in and cannot be replaced.
func (p *Protocomm) AddEndpoint(name string, h Handler) {
	if name == EndpointSession || name == EndpointVersion {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.eps[name] = h
}

// RemoveEndpoint unregisters name.
func (p *Protocomm) RemoveEndpoint(name string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.eps, name)
}

// HasEndpoint reports whether name is served, built-in endpoints included.
func (p *Protocomm) HasEndpoint(name string) bool {
	if name == EndpointSession || name == EndpointVersion {
		return true
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	_, ok := p.eps[name]
	return ok
}

// Endpoints lists the registered endpoint names, built-in ones included,
// sorted.
func (p *Protocomm) Endpoints() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	names := []string{EndpointSession, EndpointVersion}
	for n := range p.eps {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// SetVersion sets the string proto-ver returns, whatever it is sent.
func (p *Protocomm) SetVersion(v string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.version = v
}

// NewSession opens transport session id, closing any other: a device holds
// one security session at a time.
func (p *Protocomm) NewSession(id uint32) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.scheme.NewSession(id)
}

// CloseSession closes transport session id if it is the current one.
func (p *Protocomm) CloseSession(id uint32) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.scheme.CloseSession(id)
}

// Handle answers one request of transport session sessionID on endpoint.
// A prov-session request for a session the scheme does not know opens it.
func (p *Protocomm) Handle(sessionID uint32, endpoint string, body []byte) ([]byte, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch endpoint {
	case EndpointVersion:
		return []byte(p.version), nil
	case EndpointSession:
		if !p.scheme.HasSession(sessionID) {
			p.scheme.NewSession(sessionID)
		}
		resp, err := p.scheme.Handshake(sessionID, body)
		if err != nil {
			return nil, fmt.Errorf("protocomm: %s: %w", endpoint, err)
		}
		return resp, nil
	}
	h, ok := p.eps[endpoint]
	if !ok {
		return nil, fmt.Errorf("protocomm: %q: %w", endpoint, ErrUnknownEndpoint)
	}
	req, err := p.scheme.Decrypt(sessionID, body)
	if err != nil {
		return nil, fmt.Errorf("protocomm: %s: %w", endpoint, err)
	}
	resp, err := h(sessionID, req)
	if err != nil {
		return nil, fmt.Errorf("protocomm: %s: %w", endpoint, err)
	}
	out, err := p.scheme.Encrypt(sessionID, resp)
	if err != nil {
		return nil, fmt.Errorf("protocomm: %s: %w", endpoint, err)
	}
	return out, nil
}

// Session is the client side of a protocomm session over a Transport: the
// security handshake, then encrypted requests.
type Session struct {
	t   Transport
	sec security.Client
}

// Dial runs the security handshake of sec over t.
func Dial(ctx context.Context, t Transport, sec security.Client) (*Session, error) {
	err := sec.Handshake(func(req []byte) ([]byte, error) {
		return t.Do(ctx, EndpointSession, req)
	})
	if err != nil {
		return nil, fmt.Errorf("protocomm: establishing session: %w", err)
	}
	return &Session{t: t, sec: sec}, nil
}

// Call sends req encrypted to endpoint and returns the decrypted answer.
func (s *Session) Call(ctx context.Context, endpoint string, req []byte) ([]byte, error) {
	ct, err := s.sec.Encrypt(req)
	if err != nil {
		return nil, fmt.Errorf("protocomm: %s: %w", endpoint, err)
	}
	resp, err := s.t.Do(ctx, endpoint, ct)
	if err != nil {
		return nil, fmt.Errorf("protocomm: %s: %w", endpoint, err)
	}
	pt, err := s.sec.Decrypt(resp)
	if err != nil {
		return nil, fmt.Errorf("protocomm: %s: %w", endpoint, err)
	}
	return pt, nil
}

// Version asks proto-ver, which is never encrypted. The body is esp_prov's
// placeholder: devices refuse empty requests over HTTP.
func Version(ctx context.Context, t Transport) ([]byte, error) {
	v, err := t.Do(ctx, EndpointVersion, []byte("---"))
	if err != nil {
		return nil, fmt.Errorf("protocomm: %s: %w", EndpointVersion, err)
	}
	return v, nil
}
