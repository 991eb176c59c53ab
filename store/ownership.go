package store

import (
	"context"
	"errors"
	"time"
)

// Epoch is one period of one user's ownership of one device. A device has
// at most one current epoch (Until zero). What a user may see of a device
// is bounded below by the Since of their current epoch: a new owner never
// sees anything from before their ownership began.
type Epoch struct {
	ID         int64     `json:"id"`
	DeviceID   int64     `json:"deviceId"`
	DeviceName string    `json:"device"`
	UserID     int64     `json:"userId"`
	Username   string    `json:"username,omitempty"`
	Since      time.Time `json:"since"`
	Until      time.Time `json:"until,omitzero"`
	How        string    `json:"how"`             // ClaimDevice, ClaimAssociation, or "admin"
	Ended      string    `json:"ended,omitempty"` // why it ended: an End… value
	// KeepUntil is how long the data of an ended epoch is kept for its
	// owner's export; zero means it was wiped (or the epoch is current).
	KeepUntil time.Time `json:"keepUntil,omitzero"`
	Wiped     bool      `json:"wiped,omitempty"` // its data is gone
	// SecretHash is the secret of the claim that began the epoch, so that
	// a device repeating that claim (it missed the answer) hears SUCCESS.
	SecretHash []byte `json:"-"`
}

// Why an epoch ended.
const (
	EndReleased    = "released"    // the owner (or an admin) let the device go
	EndTransferred = "transferred" // a reset device was claimed by another user
	EndDeleted     = "deleted"     // the record was removed (delete policy, or by an admin)
)

// Kinds of claim requests a device makes.
const (
	ClaimDevice      = "claim"       // ThingsBoard's: v1/devices/me/claim with a secret key
	ClaimAssociation = "association" // zero-touch: user id and secret handed over at provisioning
)

// ClaimRequest is the device's half of a claim, kept until it expires or is
// matched. Only the SHA-256 of the secret is stored.
type ClaimRequest struct {
	DeviceID   int64
	DeviceName string
	Kind       string
	SecretHash []byte
	UserID     int64 // association: the user the provisioning app named
	Reset      bool  // the device was factory-reset: the owner may change
	CreatedAt  time.Time
	ExpiresAt  time.Time
}

// Reset policies: what a reset device claimed by another user does.
const (
	PolicyTransfer = "transfer" // the new owner gets the record; data is split into epochs
	PolicyDelete   = "delete"   // the record is removed; the device auto-provisions afresh
)

// OwnershipPolicy is the tenant's policy for case B (a reset device claimed
// by a user other than its owner).
type OwnershipPolicy struct {
	OnReset string `json:"onReset"` // PolicyTransfer (default) or PolicyDelete
	// KeepDays is how long an ended epoch's data stays for its owner's
	// export; 0 wipes it at once.
	KeepDays int `json:"keepDays"`
}

// Claim is a user's attempt to match a device's claim request.
type Claim struct {
	DeviceID   int64
	DeviceName string
	UserID     int64
	Kind       string // must match the request's kind
	SecretHash []byte
	Policy     OwnershipPolicy
	At         time.Time
}

// Claim outcomes.
const (
	OutcomeClaimed     = "claimed"     // unowned device, now the caller's
	OutcomeSameOwner   = "same-owner"  // case A: the caller already owned it; history continues
	OutcomeTransferred = "transferred" // case B, transfer: new epoch for the caller
	// OutcomeDelete is case B under the delete policy: the epoch ended as
	// deleted and the next record bearing the name (a record other than
	// this one) will belong to the caller; the caller must now delete this
	// record with DeleteDevice.
	OutcomeDelete = "delete"
)

// Claim failures, tested with errors.Is.
var (
	ErrNoClaim      = errors.New("no claim request pending") // none, expired, or another kind
	ErrWrongSecret  = errors.New("secret does not match")
	ErrOwned        = errors.New("device already owned") // owned by another user and not reset
	ErrNotOwner     = errors.New("not the device's owner")
	ErrClaimPending = errors.New("claim request still pending")
)

// AuditEntry is one ownership change.
type AuditEntry struct {
	ID       int64     `json:"id"`
	At       time.Time `json:"at"`
	Device   string    `json:"device"`
	DeviceID int64     `json:"deviceId"`
	Action   string    `json:"action"`            // an Audit… value
	UserID   int64     `json:"userId,omitempty"`  // the owner concerned
	ActorID  int64     `json:"actorId,omitempty"` // who acted (0: the admin token or the device)
	Detail   string    `json:"detail,omitempty"`
}

// Audit actions.
const (
	AuditClaim       = "claim"    // a user became the owner of an unowned device
	AuditReclaim     = "reclaim"  // case A: the owner claimed their reset device again
	AuditTransfer    = "transfer" // case B: ownership moved to another user
	AuditRelease     = "release"  // an owner (or an admin) let the device go
	AuditDelete      = "delete"   // case B under the delete policy: the record was removed
	AuditClaimFailed = "claim-failed"
)

// Ownership stores who owns which device, since when, the devices' pending
// claim requests, the audit log of every change, and the tenant's policy.
type Ownership interface {
	// CurrentOwner returns the device's current epoch; ErrNotFound when
	// nobody owns it. name binds a pending ownership left by the delete
	// policy to the record that now bears that name.
	CurrentOwner(ctx context.Context, deviceID int64, name string) (Epoch, error)
	// OwnedDevices returns the ids of the devices the user owns now.
	OwnedDevices(ctx context.Context, userID int64) ([]int64, error)
	// Owners returns a device name's epochs, oldest first.
	Owners(ctx context.Context, name string) ([]Epoch, error)
	// UserEpochs returns a user's epochs, current and ended, newest first.
	UserEpochs(ctx context.Context, userID int64) ([]Epoch, error)
	GetEpoch(ctx context.Context, id int64) (Epoch, error)
	// PutClaimRequest records a device's claim request, replacing an
	// earlier one of the device.
	PutClaimRequest(ctx context.Context, r ClaimRequest) error
	// GetClaimRequest returns the device's pending request (expired ones
	// are ErrNotFound).
	GetClaimRequest(ctx context.Context, deviceID int64, now time.Time) (ClaimRequest, error)
	// Claim matches c against the device's pending request and applies the
	// outcome atomically: of concurrent claims of one request exactly one
	// succeeds. The request is consumed on success. Failures are ErrNoClaim,
	// ErrWrongSecret or ErrOwned; each outcome and failure is audited.
	Claim(ctx context.Context, c Claim) (outcome string, e Epoch, err error)
	// Release ends the user's current epoch of the device (userID 0: any
	// owner, for an admin).
	Release(ctx context.Context, deviceID int64, userID, actorID int64, policy OwnershipPolicy, at time.Time) (Epoch, error)
	// Audit lists the audit log of one device name (all when empty),
	// newest first.
	Audit(ctx context.Context, name string, limit int) ([]AuditEntry, error)
	GetPolicy(ctx context.Context) (OwnershipPolicy, error)
	SetPolicy(ctx context.Context, p OwnershipPolicy) error
	// ExpiredEpochs returns ended epochs whose KeepUntil passed before now
	// and that are not wiped yet; MarkWiped records that their data is gone.
	ExpiredEpochs(ctx context.Context, now time.Time, limit int) ([]Epoch, error)
	MarkWiped(ctx context.Context, epochID int64) error
}
