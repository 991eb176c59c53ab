package pki

import (
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/thingline/thingline/filelock"
)

// RevocationsFile is the CA directory's record of revoked serials; CRLs are
// generated from it.
const RevocationsFile = "revoked.json"

// DefaultCRLValidity is how far ahead a CRL's nextUpdate lies.
const DefaultCRLValidity = 30 * 24 * time.Hour

// reasons maps RFC 5280 §5.3.1 CRLReason names to codes. certificateHold
// and removeFromCRL are left out: thingline revocations are permanent, a
// device that comes back gets a new certificate.
var reasons = map[string]int{
	"unspecified":          0,
	"keyCompromise":        1,
	"cACompromise":         2,
	"affiliationChanged":   3,
	"superseded":           4,
	"cessationOfOperation": 5,
	"privilegeWithdrawn":   9,
	"aACompromise":         10,
}

// ReasonCode returns the RFC 5280 code of a reason name (case-insensitive;
// "" is unspecified).
func ReasonCode(name string) (int, error) {
	if name == "" {
		return 0, nil
	}
	for n, c := range reasons {
		if strings.EqualFold(n, name) {
			return c, nil
		}
	}
	return 0, fmt.Errorf("pki: unknown revocation reason %q (want one of %s)", name, strings.Join(ReasonNames(), ", "))
}

// ReasonName returns the RFC 5280 name of a reason code, or "reason(N)"
// for codes thingline does not issue.
func ReasonName(code int) string {
	for n, c := range reasons {
		if c == code {
			return n
		}
	}
	switch code {
	case 6:
		return "certificateHold"
	case 8:
		return "removeFromCRL"
	}
	return fmt.Sprintf("reason(%d)", code)
}

// ReasonNames lists the accepted reason names, sorted by code.
func ReasonNames() []string {
	var out []string
	for n := range reasons {
		out = append(out, n)
	}
	sort.Slice(out, func(i, j int) bool { return reasons[out[i]] < reasons[out[j]] })
	return out
}

// Revocation is one revoked certificate.
type Revocation struct {
	Serial    string    `json:"serial"` // lower-case hex, as SerialHex
	RevokedAt time.Time `json:"revoked_at"`
	Reason    string    `json:"reason"` // RFC 5280 name
}

// Revocations is the content of revoked.json. CRLNumber is the number of
// the last CRL generated, so the next one is strictly greater (RFC 5280
// §5.2.3) even after the process restarts.
type Revocations struct {
	CRLNumber int64        `json:"crl_number"`
	Revoked   []Revocation `json:"revoked"`
}

// Find returns the record of serial (any form ParseSerial accepts).
func (r *Revocations) Find(serial string) (Revocation, bool) {
	n, err := ParseSerial(serial)
	if err != nil {
		return Revocation{}, false
	}
	want := n.Text(16)
	for _, x := range r.Revoked {
		if x.Serial == want {
			return x, true
		}
	}
	return Revocation{}, false
}

// LoadRevocations reads dir/revoked.json; a missing file is an empty list.
func LoadRevocations(dir string) (*Revocations, error) {
	path := filepath.Join(dir, RevocationsFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return &Revocations{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	r, err := parseRevocations(b)
	if err != nil {
		return nil, fmt.Errorf("pki: %s: %w", path, err)
	}
	return r, nil
}

func parseRevocations(b []byte) (*Revocations, error) {
	var r Revocations
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("decoding revocations: %w", err)
	}
	if r.CRLNumber < 0 {
		return nil, fmt.Errorf("negative crl number %d", r.CRLNumber)
	}
	for i, x := range r.Revoked {
		n, err := ParseSerial(x.Serial)
		if err != nil {
			return nil, fmt.Errorf("entry %d: %w", i, err)
		}
		if _, err := ReasonCode(x.Reason); err != nil {
			return nil, fmt.Errorf("entry %d: %w", i, err)
		}
		r.Revoked[i].Serial = n.Text(16)
	}
	return &r, nil
}

func saveRevocations(dir string, r *Revocations) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("pki: encoding revocations: %w", err)
	}
	return WriteFileAtomic(filepath.Join(dir, RevocationsFile), append(b, '\n'), 0o644)
}

// updateRevocations runs fn on the current revocations under an exclusive
// lock of the CA directory and saves the result, so that two stations
// revoking at once cannot lose each other's entries.
func updateRevocations(dir string, fn func(*Revocations) error) error {
	unlock, err := filelock.Lock(filepath.Join(dir, ".lock"))
	if err != nil {
		return fmt.Errorf("pki: locking %s: %w", dir, err)
	}
	defer unlock()
	r, err := LoadRevocations(dir)
	if err != nil {
		return err
	}
	if err := fn(r); err != nil {
		return err
	}
	return saveRevocations(dir, r)
}

// ErrAlreadyRevoked is returned when revoking a serial a second time.
var ErrAlreadyRevoked = errors.New("already revoked")

// Revoke records serial (hex) as revoked for reason (an RFC 5280 name) in
// the CA directory. The serial is not checked against issued certificates:
// the CA keeps no issuance index, and revoking a stranger is harmless.
func (ca *CA) Revoke(serial, reason string, at time.Time) (Revocation, error) {
	n, err := ParseSerial(serial)
	if err != nil {
		return Revocation{}, err
	}
	code, err := ReasonCode(reason)
	if err != nil {
		return Revocation{}, err
	}
	if at.IsZero() {
		at = time.Now()
	}
	rec := Revocation{Serial: n.Text(16), RevokedAt: at.UTC().Truncate(time.Second), Reason: ReasonName(code)}
	err = updateRevocations(ca.Dir, func(r *Revocations) error {
		if old, ok := r.Find(rec.Serial); ok {
			return fmt.Errorf("pki: serial %s: %w (%s at %s)", rec.Serial, ErrAlreadyRevoked, old.Reason, old.RevokedAt.Format(time.RFC3339))
		}
		r.Revoked = append(r.Revoked, rec)
		return nil
	})
	return rec, err
}

// CRL signs a CRL over every recorded revocation with the device CA,
// valid for validity (0 means 30 days), and returns its DER. Each call
// takes the next CRL number and records it.
func (ca *CA) CRL(validity time.Duration) ([]byte, error) {
	var der []byte
	err := updateRevocations(ca.Dir, func(r *Revocations) error {
		r.CRLNumber++
		var err error
		der, err = ca.SignCRL(r.CRLNumber, r.Revoked, validity)
		return err
	})
	if err != nil {
		return nil, err
	}
	return der, nil
}

// SignCRL signs a v2 CRL numbered number over entries with the CA's key,
// valid from now (backdated for clock skew) for validity (0 means 30
// days), and returns its DER. The caller keeps number strictly increasing.
func (ca *CA) SignCRL(number int64, entries []Revocation, validity time.Duration) ([]byte, error) {
	if validity <= 0 {
		validity = DefaultCRLValidity
	}
	now := time.Now()
	tmpl := &x509.RevocationList{
		Number:     big.NewInt(number),
		ThisUpdate: now.Add(-backdate),
		NextUpdate: now.Add(validity),
	}
	for _, x := range entries {
		n, err := ParseSerial(x.Serial)
		if err != nil {
			return nil, err
		}
		code, err := ReasonCode(x.Reason)
		if err != nil {
			return nil, err
		}
		tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries, x509.RevocationListEntry{
			SerialNumber:   n,
			RevocationTime: x.RevokedAt,
			ReasonCode:     code,
		})
	}
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, ca.Cert, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("pki: signing crl: %w", err)
	}
	return der, nil
}

// EncodeCRLPEM wraps a CRL's DER as "X509 CRL", the label openssl uses.
func EncodeCRLPEM(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der})
}

// ParseCRL reads a CRL in PEM ("X509 CRL") or DER form. When issuer is not
// nil the CRL's signature must verify against it.
func ParseCRL(b []byte, issuer *x509.Certificate) (*x509.RevocationList, error) {
	der := b
	if blk, _ := pem.Decode(b); blk != nil {
		if blk.Type != "X509 CRL" {
			return nil, fmt.Errorf("pki: expected an X509 CRL block, found %q", blk.Type)
		}
		der = blk.Bytes
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		return nil, fmt.Errorf("pki: parsing crl: %w", err)
	}
	if issuer != nil {
		if err := crl.CheckSignatureFrom(issuer); err != nil {
			return nil, fmt.Errorf("pki: crl signature: %w", err)
		}
	}
	return crl, nil
}

// CRLRevocations lists a CRL's entries in thingline's record form.
func CRLRevocations(crl *x509.RevocationList) []Revocation {
	out := make([]Revocation, 0, len(crl.RevokedCertificateEntries))
	for _, e := range crl.RevokedCertificateEntries {
		if e.SerialNumber == nil {
			continue
		}
		out = append(out, Revocation{
			Serial:    e.SerialNumber.Text(16),
			RevokedAt: e.RevocationTime.UTC(),
			Reason:    ReasonName(e.ReasonCode),
		})
	}
	return out
}
