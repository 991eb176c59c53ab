package api

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/thingline/thingline/bus"
	"github.com/thingline/thingline/pki"
	"github.com/thingline/thingline/store"
)

// Certificates: a device's credentials with their status, revoking the one
// in use, the fleet's expiry view, importing CRLs and publishing the
// server's own. See docs/certificates.md.

// credentialView is a credential with its life-cycle status.
type credentialView struct {
	store.Credential
	// Status is "active", "retiring" (superseded by a rotation, revoked at
	// RetireAt) or "revoked".
	Status     string            `json:"status"`
	Revocation *store.Revocation `json:"revocation,omitempty"`
	RetireAt   time.Time         `json:"retireAt,omitzero"`
}

// credentialViews lists a device's credentials, newest first, each with
// its status.
func (s *Server) credentialViews(ctx context.Context, d store.Device) ([]credentialView, error) {
	cs, err := s.cfg.Store.ListCredentials(ctx, d.ID)
	if err != nil {
		return nil, err
	}
	serials := make([]string, len(cs))
	for i, c := range cs {
		serials[i] = c.Serial
	}
	revs, err := s.cfg.Store.RevocationsOf(ctx, serials)
	if err != nil {
		return nil, err
	}
	rets, err := s.cfg.Store.ListRetirements(ctx, d.ID)
	if err != nil {
		return nil, err
	}
	retireAt := map[string]time.Time{}
	for _, r := range rets {
		if !r.Done {
			retireAt[r.Serial] = r.RetireAt
		}
	}
	out := make([]credentialView, len(cs))
	for i, c := range cs {
		v := credentialView{Credential: c, Status: "active"}
		if r, ok := revs[c.Serial]; ok {
			v.Status, v.Revocation = "revoked", &r
		} else if at, ok := retireAt[c.Serial]; ok {
			v.Status, v.RetireAt = "retiring", at
		}
		out[i] = v
	}
	return out, nil
}

func (s *Server) listCredentials(w http.ResponseWriter, r *http.Request) error {
	d, err := s.device(r)
	if err != nil {
		return err
	}
	vs, err := s.credentialViews(r.Context(), d)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{"credentials": vs})
	return nil
}

// announceRevocation tells every node's gateway, which refuses the serial
// from then on and closes a session presenting it.
func (s *Server) announceRevocation(ctx context.Context, rev store.Revocation) {
	note, _ := json.Marshal(rev)
	if err := s.cfg.Bus.Publish(ctx, bus.TopicRevocations, note); err != nil {
		s.cfg.Logger.Warn("api: announcing revocation", "serial", rev.Serial, "err", err)
	}
}

// revokeCredential revokes a device's certificate: the one in use (the
// credential seen last) unless the body names a serial of the device.
func (s *Server) revokeCredential(w http.ResponseWriter, r *http.Request) error {
	d, err := s.device(r)
	if err != nil {
		return err
	}
	var req struct {
		Serial string `json:"serial"`
		Reason string `json:"reason"`
	}
	if r.ContentLength != 0 {
		if err := decodeBody(w, r, &req); err != nil {
			return err
		}
	}
	code, err := pki.ReasonCode(req.Reason)
	if err != nil {
		return errorf(http.StatusBadRequest, "%v", err)
	}
	vs, err := s.credentialViews(r.Context(), d)
	if err != nil {
		return err
	}
	var target *credentialView
	if req.Serial != "" {
		serial, ok := normalizeSerial(req.Serial)
		if !ok {
			return errorf(http.StatusBadRequest, "serial must be a hexadecimal certificate serial number")
		}
		for i := range vs {
			if vs[i].Serial == serial {
				target = &vs[i]
			}
		}
		if target == nil {
			return errorf(http.StatusNotFound, "device %q never presented a certificate with serial %s", d.Name, serial)
		}
	} else {
		for i := range vs {
			if vs[i].Status != "revoked" && (target == nil || vs[i].LastSeen.After(target.LastSeen)) {
				target = &vs[i]
			}
		}
		if target == nil {
			return errorf(http.StatusConflict, "device %q has no certificate left to revoke", d.Name)
		}
	}
	if target.Revocation != nil {
		return errorf(http.StatusConflict, "certificate %s of %q is already revoked (%s)", target.Serial, d.Name, target.Revocation.Reason)
	}
	rev := store.Revocation{Serial: target.Serial, Reason: pki.ReasonName(code), RevokedAt: time.Now().UTC()}
	if err := s.cfg.Store.Revoke(r.Context(), rev); err != nil {
		return err
	}
	s.announceRevocation(r.Context(), rev)
	detail, _ := json.Marshal(map[string]string{"serial": rev.Serial, "reason": rev.Reason})
	if err := s.cfg.Store.AddEvent(r.Context(), store.Event{Time: rev.RevokedAt, Device: d.Name, Kind: store.EventCertRevoked,
		Reason: "operator", Node: s.cfg.Node, Detail: detail}); err != nil {
		s.cfg.Logger.Warn("api: recording revocation", "device", d.Name, "err", err)
	}
	writeJSON(w, http.StatusCreated, struct {
		Device string `json:"device"`
		store.Revocation
	}{d.Name, rev})
	return nil
}

// expiryMonth is one month of the fleet's expiry view.
type expiryMonth struct {
	Month string `json:"month"` // YYYY-MM, UTC
	Count int    `json:"count"`
}

// expiryBands are the fleet view's "expires within" counts.
var expiryBands = []struct {
	name string
	days time.Duration
}{{"30d", 30}, {"90d", 90}, {"365d", 365}}

// certificateExpiry is the fleet's expiry view: how many current
// certificates expire in each month, and the soonest ones.
func (s *Server) certificateExpiry(w http.ResponseWriter, r *http.Request) error {
	limit, err := queryInt(r, "limit", 20, 0, 1000)
	if err != nil {
		return err
	}
	cur, err := s.cfg.Store.CurrentCredentials(r.Context(), time.Time{}, 0)
	if err != nil {
		return err
	}
	now := time.Now()
	resp := struct {
		Total   int                       `json:"total"`
		Expired int                       `json:"expired"`
		Within  map[string]int            `json:"within"`
		Months  []expiryMonth             `json:"months"`
		Soonest []store.CurrentCredential `json:"soonest"`
	}{Total: len(cur), Within: map[string]int{}, Months: []expiryMonth{}}
	for _, b := range expiryBands {
		resp.Within[b.name] = 0
	}
	for _, c := range cur {
		left := c.NotAfter.Sub(now)
		if left <= 0 {
			resp.Expired++
		}
		for _, b := range expiryBands {
			if left < b.days*24*time.Hour {
				resp.Within[b.name]++
			}
		}
		m := c.NotAfter.UTC().Format("2006-01")
		if n := len(resp.Months); n > 0 && resp.Months[n-1].Month == m {
			resp.Months[n-1].Count++
		} else {
			resp.Months = append(resp.Months, expiryMonth{Month: m, Count: 1})
		}
	}
	resp.Soonest = cur[:min(len(cur), int(limit))]
	if resp.Soonest == nil {
		resp.Soonest = []store.CurrentCredential{}
	}
	writeJSON(w, http.StatusOK, resp)
	return nil
}

// maxCRL bounds an imported CRL: a million-device fleet's CRL with every
// tenth device revoked is about 4 MiB of DER.
const maxCRL = 16 << 20

// importCRL reads a CRL (PEM or DER), verifies it against the configured
// device CAs and adds its entries to the revocations.
func (s *Server) importCRL(w http.ResponseWriter, r *http.Request) error {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return errorf(http.StatusRequestEntityTooLarge, "CRL larger than %d bytes", mbe.Limit)
		}
		return errorf(http.StatusBadRequest, "reading the CRL: %v", err)
	}
	crl, err := pki.ParseCRL(body, nil)
	if err != nil {
		return errorf(http.StatusBadRequest, "%v", err)
	}
	var issuer *x509.Certificate
	for _, ca := range s.cfg.CRLAnchors {
		if crl.CheckSignatureFrom(ca) == nil {
			issuer = ca
			break
		}
	}
	if issuer == nil {
		return errorf(http.StatusUnprocessableEntity, "the CRL of %q is not signed by a configured device CA", crl.Issuer.String())
	}
	entries := pki.CRLRevocations(crl)
	serials := make([]string, len(entries))
	for i, e := range entries {
		serials[i] = e.Serial
	}
	known, err := s.cfg.Store.RevocationsOf(r.Context(), serials)
	if err != nil {
		return err
	}
	added := 0
	for _, e := range entries {
		if _, ok := known[e.Serial]; ok {
			continue
		}
		rev := store.Revocation{Serial: e.Serial, Reason: e.Reason, RevokedAt: e.RevokedAt}
		if err := s.cfg.Store.Revoke(r.Context(), rev); err != nil {
			return err
		}
		known[e.Serial] = rev
		s.announceRevocation(r.Context(), rev)
		added++
	}
	number := ""
	if crl.Number != nil {
		number = crl.Number.String()
	}
	resp := map[string]any{
		"issuer": issuer.Subject.String(), "number": number, "entries": len(entries), "added": added,
		"thisUpdate": crl.ThisUpdate, "nextUpdate": crl.NextUpdate,
		"stale": !crl.NextUpdate.IsZero() && crl.NextUpdate.Before(time.Now()),
	}
	detail, _ := json.Marshal(resp)
	if err := s.cfg.Store.AddEvent(r.Context(), store.Event{Time: time.Now(), Kind: store.EventCRLImported, Node: s.cfg.Node, Detail: detail}); err != nil {
		s.cfg.Logger.Warn("api: recording crl import", "err", err)
	}
	writeJSON(w, http.StatusOK, resp)
	return nil
}

// CRLFile is the name under /crl/ of the server's own CRL.
const CRLFile = "device-ca.crl"

// crlValidity is the nextUpdate of the server's CRL; a cached CRL is
// signed again once half of it has passed or the revocations changed.
const crlValidity = 24 * time.Hour

// crlCache keeps the last CRL signed by this node.
type crlCache struct {
	mu     sync.Mutex // leaf lock
	sum    [32]byte   // of the revocations it lists
	der    []byte
	signed time.Time
}

// serverCRL serves the issuing CA's CRL (DER, application/pkix-crl) over
// every revocation in the store.
func (s *Server) serverCRL(w http.ResponseWriter, r *http.Request) error {
	if r.PathValue("file") != CRLFile {
		return errorf(http.StatusNotFound, "no CRL named %q (the issuing CA's is %s)", r.PathValue("file"), CRLFile)
	}
	ca := s.cfg.CRLIssuer
	if ca == nil {
		return errorf(http.StatusNotFound, "this server holds no issuing CA key and publishes no CRL")
	}
	revs, err := s.cfg.Store.ListRevocations(r.Context())
	if err != nil {
		return err
	}
	slices.SortFunc(revs, func(a, b store.Revocation) int {
		if a.Serial < b.Serial {
			return -1
		} else if a.Serial > b.Serial {
			return 1
		}
		return 0
	})
	h := sha256.New()
	entries := make([]pki.Revocation, len(revs))
	for i, rv := range revs {
		h.Write([]byte(rv.Serial + "|" + rv.Reason + "|" + rv.RevokedAt.UTC().Format(time.RFC3339Nano) + "\n"))
		entries[i] = pki.Revocation{Serial: rv.Serial, RevokedAt: rv.RevokedAt, Reason: rv.Reason}
	}
	var sum [32]byte
	h.Sum(sum[:0])
	c := &s.crl
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.der == nil || c.sum != sum || time.Since(c.signed) > crlValidity/2 {
		number, err := s.cfg.Store.NextCRLNumber(r.Context(), hex.EncodeToString(ca.Cert.SubjectKeyId))
		if err != nil {
			return err
		}
		der, err := ca.SignCRL(number, entries, crlValidity)
		if err != nil {
			return err
		}
		c.der, c.sum, c.signed = der, sum, time.Now()
	}
	w.Header().Set("Content-Type", "application/pkix-crl")
	w.Header().Set("Cache-Control", "max-age=300")
	_, err = w.Write(c.der)
	return err
}
