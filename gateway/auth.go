package gateway

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/thingline/thingline/pki"
	"github.com/thingline/thingline/store"
)

// Refusal reasons written in `refused` events and counted in metrics.
const (
	ReasonNoClientCert  = "no-client-certificate"
	ReasonUnknownCA     = "unknown-ca"
	ReasonSelfSigned    = "self-signed"
	ReasonExpired       = "expired"
	ReasonNotYetValid   = "not-yet-valid"
	ReasonBadChain      = "bad-chain"
	ReasonBadUsage      = "bad-key-usage"
	ReasonRevoked       = "revoked"
	ReasonCNMismatch    = "cn-mismatch"
	ReasonUnknownDevice = "unknown-device"
	ReasonStoreError    = "store-error"
	ReasonBadCN         = "bad-cn" // see pki.DeviceCN
)

// refusal is an identity refusal. Returned from VerifyConnection it aborts
// the handshake with a TLS alert; the connection handler then finds it in
// the handshake error with errors.As and records it.
type refusal struct {
	reason string
	device string // derived name, when one can be derived
	cn     string
	serial string
	issuer string
	err    error
}

func (r *refusal) Error() string {
	if r.err != nil {
		return fmt.Sprintf("gateway: client certificate refused (%s): %v", r.reason, r.err)
	}
	return "gateway: client certificate refused (" + r.reason + ")"
}

func (r *refusal) detail() json.RawMessage {
	d := map[string]string{"cn": r.cn, "serial": r.serial, "issuer": r.issuer}
	if r.err != nil {
		d["error"] = r.err.Error()
	}
	b, _ := json.Marshal(d)
	return b
}

func (s *Server) newRefusal(reason string, leaf *x509.Certificate, err error) *refusal {
	r := &refusal{reason: reason, err: err}
	if leaf != nil {
		r.cn = leaf.Subject.CommonName
		r.serial = pki.SerialHex(leaf)
		r.issuer = leaf.Issuer.String()
		if cn, err := pki.DeviceCN(leaf); err == nil {
			r.device, _ = s.profile.deviceName(cn)
		}
	}
	return r
}

// verifyConnection runs inside the TLS handshake, so an untrusted chain
// costs one chain verification and an alert, nothing more. It replaces Go's
// built-in client verification (ClientAuth is RequestClientCert) so that a
// missing certificate is also seen and recorded here.
func (s *Server) verifyConnection(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return s.newRefusal(ReasonNoClientCert, nil, nil)
	}
	leaf := cs.PeerCertificates[0]
	now := s.now()
	key := chainKey(cs.PeerCertificates)
	if s.chainCached(key, now) {
		return nil
	}
	opts := x509.VerifyOptions{
		Roots:         s.roots,
		Intermediates: x509.NewCertPool(),
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	for _, c := range cs.PeerCertificates[1:] {
		opts.Intermediates.AddCert(c)
	}
	chains, err := leaf.Verify(opts)
	if err != nil {
		return s.newRefusal(s.classify(leaf, opts.CurrentTime, err), leaf, err)
	}
	s.cacheChain(key, chains[0])
	return nil
}

// A verified chain is remembered by the hash of the presented
// certificates, with the interval in which all of them are valid: a
// reconnecting device then costs no signature check beyond the TLS
// handshake's own (chain verification was a quarter of the server's
// handshake CPU). The trust anchors never change during a Server's life.
type chainValidity struct{ notBefore, notAfter time.Time }

const maxChainCache = 200000

func chainKey(certs []*x509.Certificate) [32]byte {
	h := sha256.New()
	for _, c := range certs {
		var n [4]byte
		binary.BigEndian.PutUint32(n[:], uint32(len(c.Raw)))
		h.Write(n[:])
		h.Write(c.Raw)
	}
	var k [32]byte
	h.Sum(k[:0])
	return k
}

func (s *Server) chainCached(key [32]byte, now time.Time) bool {
	s.chainMu.RLock()
	v, ok := s.chains[key]
	s.chainMu.RUnlock()
	return ok && !now.Before(v.notBefore) && !now.After(v.notAfter)
}

func (s *Server) cacheChain(key [32]byte, chain []*x509.Certificate) {
	v := chainValidity{notBefore: chain[0].NotBefore, notAfter: chain[0].NotAfter}
	for _, c := range chain[1:] {
		if c.NotBefore.After(v.notBefore) {
			v.notBefore = c.NotBefore
		}
		if c.NotAfter.Before(v.notAfter) {
			v.notAfter = c.NotAfter
		}
	}
	s.chainMu.Lock()
	if len(s.chains) >= maxChainCache {
		// Crude but bounded: start over rather than track recency.
		s.chains = map[[32]byte]chainValidity{}
	}
	s.chains[key] = v
	s.chainMu.Unlock()
}

// classify names the reason a chain failed to verify.
func (s *Server) classify(leaf *x509.Certificate, now time.Time, err error) string {
	var inv x509.CertificateInvalidError
	if errors.As(err, &inv) {
		switch inv.Reason {
		case x509.Expired:
			c := inv.Cert
			if c == nil {
				c = leaf
			}
			if now.Before(c.NotBefore) {
				return ReasonNotYetValid
			}
			return ReasonExpired
		case x509.IncompatibleUsage:
			return ReasonBadUsage
		}
		return ReasonBadChain
	}
	var ua x509.UnknownAuthorityError
	if errors.As(err, &ua) {
		// CheckSignatureFrom would insist on CA flags a device key lacks.
		if bytes.Equal(leaf.RawSubject, leaf.RawIssuer) && leaf.CheckSignature(leaf.SignatureAlgorithm, leaf.RawTBSCertificate, leaf.Signature) == nil {
			return ReasonSelfSigned
		}
		return ReasonUnknownCA
	}
	return ReasonBadChain
}

// isRevoked checks the in-memory deny-list.
func (s *Server) isRevoked(serial string) bool {
	s.revMu.RLock()
	defer s.revMu.RUnlock()
	_, ok := s.revoked[serial]
	return ok
}

func (s *Server) addRevocation(serial string) {
	serial = normalizeSerial(serial)
	if serial == "" {
		return
	}
	s.revMu.Lock()
	s.revoked[serial] = struct{}{}
	s.revMu.Unlock()
}

// normalizeSerial accepts the forms an operator might type (upper case,
// colons, leading zeros) and returns the canonical lower-case hex.
func normalizeSerial(sn string) string {
	n, err := pki.ParseSerial(sn)
	if err != nil {
		return strings.ToLower(strings.TrimSpace(sn))
	}
	return n.Text(16)
}

// credential describes leaf for the store.
// credential is leaf's record; serial and fingerprint (pki.SerialHex,
// pki.Fingerprint) are the caller's, already computed.
func credential(leaf *x509.Certificate, serial, fingerprint string, now time.Time) store.Credential {
	return store.Credential{
		Serial:       serial,
		Issuer:       leaf.Issuer.String(),
		Subject:      leaf.Subject.String(),
		NotBefore:    leaf.NotBefore,
		NotAfter:     leaf.NotAfter,
		SHA256:       fingerprint,
		CredentialID: pki.CredentialID(leaf.Raw),
		PEM:          string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leaf.Raw})),
		FirstSeen:    now,
		LastSeen:     now,
	}
}

// identity is the outcome of authorizing a CONNECT.
type identity struct {
	dev store.Device
}

// knownCred caches that a device name was already ensured with this
// fingerprint, so reconnects of known devices cost no store write.
type knownCred struct {
	id     int64
	sha256 string
}

// authorize decides, after the handshake, whether leaf may open a session:
// revocation, the CN regex, the device record (auto-provisioning, rotation)
// and the factory registry. A non-nil refusal means CONNACK "not authorized".
func (s *Server) authorize(ctx context.Context, leaf *x509.Certificate, addr string) (identity, *refusal) {
	serial := pki.SerialHex(leaf)
	if s.isRevoked(serial) {
		return identity{}, s.newRefusal(ReasonRevoked, leaf, nil)
	}
	// The name's hygiene before the profile's expression: "(.*)" would
	// take a CN with a newline or two CNs as readily as a good one.
	cn, err := pki.DeviceCN(leaf)
	if err != nil {
		return identity{}, s.newRefusal(ReasonBadCN, leaf, err)
	}
	name, ok := s.profile.deviceName(cn)
	if !ok {
		return identity{}, s.newRefusal(ReasonCNMismatch, leaf, fmt.Errorf("cn %q does not match %q", cn, s.profile.CNRegex))
	}
	fp := pki.Fingerprint(leaf.Raw)
	s.mu.Lock()
	kc, cached := s.known[name]
	s.mu.Unlock()
	if cached && kc.sha256 == fp {
		return identity{dev: store.Device{ID: kc.id, Name: name, Profile: s.profile.Name}}, nil
	}
	now := s.now()
	if !s.profile.AllowCreate {
		if _, err := s.st.GetDevice(ctx, name); errors.Is(err, store.ErrNotFound) {
			return identity{}, s.newRefusal(ReasonUnknownDevice, leaf, nil)
		} else if err != nil {
			return identity{}, s.newRefusal(ReasonStoreError, leaf, err)
		}
	}
	cred := credential(leaf, serial, fp, now)
	detail := certDetail(leaf.Subject.CommonName, cred)
	// The provisioning or rotation event is written with the device, in
	// one transaction: no device without its audit record, and one store
	// round trip (and fsync) before CONNACK rather than two.
	dev, _, _, err := s.st.EnsureDevice(ctx, store.Device{
		Name: name, Profile: s.profile.Name, CreatedAt: now, FirstSeenAddr: addr,
	}, cred, &store.Event{Device: name, Addr: addr, Node: s.node, Time: now, Detail: detail})
	if err != nil {
		return identity{}, s.newRefusal(ReasonStoreError, leaf, fmt.Errorf("ensuring device: %w", err))
	}
	if s.unitUnknown(ctx, name) {
		s.event(store.Event{Device: name, Kind: store.EventUnknownUnit, Addr: addr, Detail: detail})
	}
	s.mu.Lock()
	s.known[name] = knownCred{id: dev.ID, sha256: fp}
	s.mu.Unlock()
	return identity{dev: dev}, nil
}

// certDetail is the detail of a provisioning, rotation or unknown-unit
// event: {"cn","issuer","serial","sha256"}.
func certDetail(cn string, c store.Credential) json.RawMessage {
	b, _ := json.Marshal(struct {
		CN     string `json:"cn"`
		Issuer string `json:"issuer"`
		Serial string `json:"serial"`
		SHA256 string `json:"sha256"`
	}{cn, c.Issuer, c.Serial, c.SHA256})
	return b
}

// unitUnknown tells whether the factory registry is in use and lacks sn.
// The registry size is cached briefly: it only matters whether it is empty.
func (s *Server) unitUnknown(ctx context.Context, sn string) bool {
	s.mu.Lock()
	count, at := s.unitCount, s.unitCountAt
	s.mu.Unlock()
	// Units are never removed from the registry, so once it holds some the
	// count only needs refreshing now and then; while it is empty it is
	// asked again after a second, so that the first push takes effect at
	// once without a query per connection in a reconnect storm.
	if at.IsZero() || time.Since(at) > 10*time.Second || (count == 0 && time.Since(at) > time.Second) {
		n, err := s.st.CountUnits(ctx)
		if err != nil {
			s.log.Warn("gateway: counting units", "err", err)
			return false
		}
		count = n
		s.mu.Lock()
		s.unitCount, s.unitCountAt = n, time.Now()
		s.mu.Unlock()
	}
	if count == 0 {
		return false
	}
	_, err := s.st.GetUnit(ctx, sn)
	return errors.Is(err, store.ErrNotFound)
}
