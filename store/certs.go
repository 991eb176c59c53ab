package store

import (
	"context"
	"time"
)

// Event kinds of the certificate life cycle.
const (
	EventCertIssued   = "certificate-issued"   // a rotation request was signed; Detail: {"serial","previous","notAfter"}
	EventCertRefused  = "certificate-refused"  // a rotation request was refused; Reason says why
	EventCertExpiring = "certificate-expiring" // the current certificate expires within the threshold
	EventCertRevoked  = "certificate-revoked"  // a credential was revoked; Reason: operator, rotation, crl
	EventCRLImported  = "crl-imported"         // a CRL was imported; Detail: {"issuer","number","entries","added"}
)

// CurrentCredential is a device's newest credential, for the fleet's
// expiry view and the expiry monitor.
type CurrentCredential struct {
	Device   string    `json:"device"`
	DeviceID int64     `json:"-"`
	Serial   string    `json:"serial"`
	Issuer   string    `json:"issuer"`
	NotAfter time.Time `json:"notAfter"`
}

// Retirement schedules the revocation of a device's previous certificate
// at the end of a rotation's grace period.
type Retirement struct {
	DeviceID int64     `json:"-"`
	Serial   string    `json:"serial"`   // the certificate retired, lower-case hex
	Next     string    `json:"next"`     // the certificate that replaces it
	RetireAt time.Time `json:"retireAt"` // when it is revoked
	Done     bool      `json:"done"`     // revoked already
}

// Certificates is the state of the certificate life cycle beyond the
// credentials and revocations themselves: rotations' grace periods, the
// expiry notices already given, the numbering of the server's CRLs.
// Every method that acts is conditional in the store, so that the
// background jobs of several nodes never act twice on one row.
type Certificates interface {
	// CurrentCredentials returns the newest credential (by first use) of
	// every device that is not revoked, soonest expiry first, at most
	// limit (0: every one) of those expiring before before (zero: any).
	CurrentCredentials(ctx context.Context, before time.Time, limit int) ([]CurrentCredential, error)
	// RevocationsOf returns the revocations among serials (lower-case hex).
	RevocationsOf(ctx context.Context, serials []string) (map[string]Revocation, error)
	// ScheduleRetirement records that r.Serial is to be revoked at
	// r.RetireAt. A serial already scheduled keeps its earlier time.
	ScheduleRetirement(ctx context.Context, r Retirement) error
	// ListRetirements returns the retirements of a device, newest first.
	ListRetirements(ctx context.Context, deviceID int64) ([]Retirement, error)
	// RetireDue revokes (reason "superseded") every scheduled serial whose
	// time has come by now, at most limit, each in one transaction with
	// marking it done, and returns those this call revoked: a serial is
	// returned to exactly one caller however many nodes call at once.
	RetireDue(ctx context.Context, now time.Time, limit int) ([]Revocation, error)
	// ClaimExpiryNotice records that the expiry of serial was announced and
	// tells whether this call was the first to do so.
	ClaimExpiryNotice(ctx context.Context, serial string, at time.Time) (bool, error)
	// NextCRLNumber returns the next number of the CRLs signed by issuer
	// (any stable key, e.g. the CA's key id in hex), strictly greater than
	// every number returned before, on every node.
	NextCRLNumber(ctx context.Context, issuer string) (int64, error)
}
