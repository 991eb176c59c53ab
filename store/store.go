// Package store is the vocabulary of thingline's persistent state: devices,
// their credentials, attributes, telemetry, events, revocations and the
// registry of units the factory produced.
//
// Store is implemented by sibling packages: store/sqlite (the embedded
// default, one file in the data directory) and store/postgres (shared by
// several nodes). Both pass the same conformance suite in store/storetest.
//
// Values are kept as JSON text (json.RawMessage) exactly as the gateway typed
// them, so that a number stays a number, a string a string and a boolean a
// boolean on the way back out.
package store

import (
	"context"
	"encoding/json"
	"errors"
	"time"
)

// Errors returned by every implementation. Callers test them with errors.Is.
var (
	ErrNotFound = errors.New("not found")
	ErrExists   = errors.New("already exists")
	ErrClosed   = errors.New("store closed")
)

// Store is the whole persistent state of a thingline deployment.
type Store interface {
	Devices
	Credentials
	Attributes
	Telemetry
	Events
	Revocations
	Units
	Certificates
	Alarms
	AlarmRuleStates
	DeviceStates
	Profiles
	Retention
	Leases
	OTA
	Accounts
	Ownership
	RPCs
	SharedSync
	// Close flushes pending writes and releases the store.
	Close() error
}

// Device is one device record. Its Name is the identity the device proves
// with its certificate (the CN, through the profile's regular expression).
type Device struct {
	ID            int64            `json:"id"`
	Name          string           `json:"name"`
	Profile       string           `json:"profile"`
	CreatedAt     time.Time        `json:"createdAt"`
	FirstSeenAddr string           `json:"firstSeenAddr,omitempty"`
	LastSeenAt    time.Time        `json:"lastSeenAt,omitzero"`
	LastSeenAddr  string           `json:"lastSeenAddr,omitempty"`
	Online        bool             `json:"online"`
	Node          string           `json:"node,omitempty"`     // node holding the live session, if online
	Produced      *bool            `json:"produced,omitempty"` // nil when the factory registry is empty
	Counters      map[string]int64 `json:"counters,omitempty"` // e.g. rejected messages per reason
	// Firmware is the device's fw_version client attribute; only listings
	// fill it, so that a fleet table shows it without a query per row.
	Firmware string `json:"firmware,omitempty"`
	// Owner is the user name of the device's current owner; only
	// listings fill it.
	Owner string `json:"owner,omitempty"`
}

// ListOptions selects and pages through devices. Paging is by key (the
// sort key and the name of the last device of the previous page), never by
// offset, so that the last page of 100,000 devices costs what the first does.
type ListOptions struct {
	After string // return devices strictly after this name (in the sort order)
	// AfterKey is the sort key of the device named After, for sorts other
	// than by name: the listing resumes after (AfterKey, After).
	AfterKey int64
	Limit    int // 0 means the implementation's default (100)

	Sort DeviceSort // "" sorts by name
	Desc bool       // descending

	// Filters; the zero value of each selects every device.
	Search   string // case-insensitive substring of the name (the SN)
	Online   *bool
	Profile  string
	Firmware string // the fw_version client attribute
	Owner    int64  // the devices this user owns now (store.Ownership)
}

// DeviceSort is the order of a device listing. Every order is made total by
// the name.
type DeviceSort string

const (
	SortName     DeviceSort = "name"
	SortLastSeen DeviceSort = "lastSeen" // key: LastSeenAt in Unix nanoseconds (0 for never)
	SortCreated  DeviceSort = "created"  // key: the device ID, which grows with creation
)

// SortKey is d's key in the order s, the value of ListOptions.AfterKey that
// resumes a listing after d.
func (s DeviceSort) SortKey(d Device) int64 {
	switch s {
	case SortLastSeen:
		if d.LastSeenAt.IsZero() {
			return 0
		}
		return d.LastSeenAt.UnixNano()
	case SortCreated:
		return d.ID
	}
	return 0
}

// Valid tells whether s is a known order.
func (s DeviceSort) Valid() bool {
	switch s {
	case "", SortName, SortLastSeen, SortCreated:
		return true
	}
	return false
}

// Devices stores device records.
type Devices interface {
	// EnsureDevice is the auto-provisioning step, atomic with respect to
	// concurrent connections presenting the same name: it creates d when no
	// device has d.Name (created=true), and records c as a credential of the
	// device when its fingerprint is new (rotated=true for an existing
	// device whose previous credential differs). When ev is not nil and the
	// device was created or rotated, ev is recorded in the same transaction
	// as its Kind EventProvisioned or EventRotation: the fact and its audit
	// record land together or not at all. It returns the stored device.
	EnsureDevice(ctx context.Context, d Device, c Credential, ev *Event) (dev Device, created, rotated bool, err error)
	GetDevice(ctx context.Context, name string) (Device, error)
	GetDeviceByID(ctx context.Context, id int64) (Device, error)
	ListDevices(ctx context.Context, opt ListOptions) ([]Device, error)
	// CountDevices counts the devices opt's filters select (paging and
	// order are ignored).
	CountDevices(ctx context.Context, opt ListOptions) (int64, error)
	// FleetSummary aggregates the whole fleet for an overview.
	FleetSummary(ctx context.Context, now time.Time) (FleetSummary, error)
	// DeleteDevice removes the device with its credentials, attributes and
	// telemetry. Events are kept: they are the audit trail.
	DeleteDevice(ctx context.Context, name string) error
	// SetOnline records a session start (online=true, with the peer address)
	// or end on node.
	SetOnline(ctx context.Context, id int64, node string, online bool, addr string, at time.Time) error
	// ResetNode marks every device whose session was held by node offline;
	// a node calls it when it starts, since its previous sessions are gone.
	ResetNode(ctx context.Context, node string) error
	// AddCounter adds delta to the named per-device counter.
	AddCounter(ctx context.Context, id int64, name string, delta int64) error
}

// FleetSummary is the fleet at a glance.
type FleetSummary struct {
	Devices  int64            `json:"devices"`
	Online   int64            `json:"online"`
	Profiles map[string]int64 `json:"profiles"` // devices per profile
	Firmware map[string]int64 `json:"firmware"` // devices per fw_version client attribute ("" for none reported)
	// CertExpiry counts devices by when their newest certificate expires,
	// one entry per bucket of ExpiryBuckets, in that order.
	CertExpiry []ExpiryBucket `json:"certExpiry"`
}

// ExpiryBucket is one bar of the certificate-expiry histogram: devices
// whose newest certificate expires before Before (and after the previous
// bucket's bound).
type ExpiryBucket struct {
	Label  string `json:"label"`
	Before int64  `json:"before,omitempty"` // Unix ms; 0 for the open last bucket
	Count  int64  `json:"count"`
}

// ExpiryBuckets are the bounds of the certificate-expiry histogram, from
// now: expired, within a week, a month, a quarter, a year, later.
func ExpiryBuckets(now time.Time) []ExpiryBucket {
	day := 24 * time.Hour
	b := []ExpiryBucket{
		{Label: "expired", Before: now.UnixMilli()},
		{Label: "≤ 7 days", Before: now.Add(7 * day).UnixMilli()},
		{Label: "≤ 30 days", Before: now.Add(30 * day).UnixMilli()},
		{Label: "≤ 90 days", Before: now.Add(90 * day).UnixMilli()},
		{Label: "≤ 1 year", Before: now.Add(365 * day).UnixMilli()},
		{Label: "later"},
	}
	return b
}

// ProvisioningEvent is the event EnsureDevice records for its outcome: ev
// as EventProvisioned when the device was created, as EventRotation when a
// known device presented a new credential; none (false) otherwise, or when
// ev is nil.
func ProvisioningEvent(ev *Event, created, rotated bool) (Event, bool) {
	if ev == nil || !created && !rotated {
		return Event{}, false
	}
	e := *ev
	e.Kind = EventRotation
	if created {
		e.Kind = EventProvisioned
	}
	return e, true
}

// Credential is one certificate a device has presented.
type Credential struct {
	DeviceID     int64     `json:"deviceId"`
	Serial       string    `json:"serial"` // certificate serial, lower-case hex
	Issuer       string    `json:"issuer"`
	Subject      string    `json:"subject"`
	NotBefore    time.Time `json:"notBefore"`
	NotAfter     time.Time `json:"notAfter"`
	SHA256       string    `json:"sha256"`       // fingerprint of the DER, lower-case hex
	CredentialID string    `json:"credentialId"` // ThingsBoard's: SHA3-256 hex of the PEM body
	PEM          string    `json:"pem,omitempty"`
	FirstSeen    time.Time `json:"firstSeen"`
	LastSeen     time.Time `json:"lastSeen"`
}

// Credentials stores the certificate history of devices.
type Credentials interface {
	// ListCredentials returns a device's credentials, newest first.
	ListCredentials(ctx context.Context, deviceID int64) ([]Credential, error)
}

// Scope is an attribute scope, as in ThingsBoard.
type Scope string

const (
	ClientScope Scope = "client" // reported by the device
	SharedScope Scope = "shared" // set by the server, pushed to the device
	ServerScope Scope = "server" // private to the server
)

// Attribute is one attribute value with the time it was last set.
type Attribute struct {
	Value     json.RawMessage `json:"value"`
	UpdatedAt int64           `json:"lastUpdateTs"` // ms since the epoch
}

// Attributes stores client, shared and server attributes.
type Attributes interface {
	SetAttributes(ctx context.Context, deviceID int64, scope Scope, kv map[string]json.RawMessage, at time.Time) error
	// GetAttributes returns the named keys (all keys when keys is empty);
	// missing keys are absent from the map.
	GetAttributes(ctx context.Context, deviceID int64, scope Scope, keys []string) (map[string]Attribute, error)
	DeleteAttributes(ctx context.Context, deviceID int64, scope Scope, keys []string) error
}

// KV is one telemetry key and its JSON value.
type KV struct {
	Key   string
	Value json.RawMessage
}

// Record is one timestamped set of telemetry values of one device.
type Record struct {
	DeviceID int64
	TS       int64 // ms since the epoch
	Values   []KV
}

// Point is one value of one key at one time.
type Point struct {
	TS    int64           `json:"ts"`
	Value json.RawMessage `json:"value"`
}

// TelemetryQuery selects points of one device.
type TelemetryQuery struct {
	DeviceID int64
	Keys     []string // empty means every key
	From, To int64    // inclusive bounds, ms since the epoch
	Limit    int      // per key; 0 means the implementation's default (100)
	Asc      bool     // oldest first; the default is newest first, so Limit keeps the latest
}

// Telemetry stores time series.
type Telemetry interface {
	// AppendTelemetry returns only once recs are durably stored: a crash of
	// the process (or of the machine) after it returns loses none of them.
	// Implementations group concurrent calls into one commit.
	AppendTelemetry(ctx context.Context, recs []Record) error
	// LatestTelemetry returns the newest point of each key (all keys when
	// keys is empty).
	LatestTelemetry(ctx context.Context, deviceID int64, keys []string) (map[string]Point, error)
	QueryTelemetry(ctx context.Context, q TelemetryQuery) (map[string][]Point, error)
}

// Event kinds.
const (
	EventConnect     = "connect"
	EventDisconnect  = "disconnect"
	EventRefused     = "refused"     // authentication or authorization refusal; Reason says why
	EventProvisioned = "provisioned" // device created on its first connection
	EventRotation    = "rotation"    // known device presented a new valid certificate
	EventTakeover    = "takeover"    // a newer session replaced an older one
	EventCloned      = "possible-cloned-identity"
	EventBadInput    = "bad-input"      // a message refused for its content
	EventUnknownUnit = "unknown-serial" // chains to the device CA, never produced
)

// Event is one entry of the audit trail.
type Event struct {
	ID     int64           `json:"id"`
	Time   time.Time       `json:"time"`
	Device string          `json:"device,omitempty"` // empty when no name could be derived
	Kind   string          `json:"kind"`
	Reason string          `json:"reason,omitempty"`
	Addr   string          `json:"addr,omitempty"`
	Node   string          `json:"node,omitempty"`
	Detail json.RawMessage `json:"detail,omitempty"`
}

// EventQuery selects events, newest first.
type EventQuery struct {
	Device string // empty means every device
	Kind   string // empty means every kind
	Before int64  // return IDs strictly below this one; 0 means from the newest
	Limit  int    // 0 means the implementation's default (100)
}

// Events stores the audit trail.
type Events interface {
	AddEvent(ctx context.Context, e Event) error
	// AddEvents records events in one transaction, in order (their IDs
	// ascend as the slice does): all of them or, on error, none.
	AddEvents(ctx context.Context, es []Event) error
	ListEvents(ctx context.Context, q EventQuery) ([]Event, error)
}

// Revocation is one revoked certificate serial.
type Revocation struct {
	Serial    string    `json:"serial"` // lower-case hex, no leading zeros
	Reason    string    `json:"reason"`
	RevokedAt time.Time `json:"revokedAt"`
}

// Revocations stores the deny-list of certificate serials.
type Revocations interface {
	Revoke(ctx context.Context, r Revocation) error
	ListRevocations(ctx context.Context) ([]Revocation, error)
}

// Unit is one unit the factory produced, as sent by `thingline factory push`.
type Unit struct {
	SN         string    `json:"sn"`
	Serial     string    `json:"certSerial"` // certificate serial, lower-case hex
	SHA256     string    `json:"sha256"`
	NotAfter   time.Time `json:"notAfter"`
	Batch      string    `json:"batch,omitempty"`
	ProducedAt time.Time `json:"producedAt"`
	TestPassed *bool     `json:"testPassed,omitempty"`
}

// UnitQuery selects units of the registry.
type UnitQuery struct {
	Batch  string // "" for every batch
	Search string // case-insensitive substring of the SN
	After  string // SNs strictly after this one
	Limit  int    // 0 means the implementation's default (100)
}

// Batch is one production batch of the registry.
type Batch struct {
	Batch         string    `json:"batch"`
	Units         int64     `json:"units"`
	TestPassed    int64     `json:"testPassed"`
	TestFailed    int64     `json:"testFailed"`
	FirstProduced time.Time `json:"firstProduced"`
	LastProduced  time.Time `json:"lastProduced"`
}

// UnitEvent is one station event of a unit's traveller, as the factory's
// ledger recorded it.
type UnitEvent struct {
	SN       string    `json:"sn,omitempty"`
	Board    string    `json:"board,omitempty"` // bare board id, for events before the unit had an SN
	Station  int       `json:"station"`         // 1 assembly … 5 label
	Result   string    `json:"result"`          // pass or fail
	Operator string    `json:"operator,omitempty"`
	Batch    string    `json:"batch,omitempty"`
	Time     time.Time `json:"time"`
	Detail   string    `json:"detail,omitempty"`
}

// UnitEventQuery selects station events.
type UnitEventQuery struct {
	SN    string // one unit's traveller
	Batch string // one batch
	Limit int    // 0 means every matching event
}

// Units is the registry of produced serial numbers.
type Units interface {
	// AddUnits inserts or updates units by SN.
	AddUnits(ctx context.Context, units []Unit) error
	GetUnit(ctx context.Context, sn string) (Unit, error)
	// CountUnits tells whether the registry is in use at all.
	CountUnits(ctx context.Context) (int64, error)
	// ListUnits pages through the registry by SN.
	ListUnits(ctx context.Context, q UnitQuery) ([]Unit, error)
	// UnitBatches summarizes the registry per batch, newest batch first.
	UnitBatches(ctx context.Context) ([]Batch, error)
	// UnitDevice is the name of the device that presented the unit's
	// certificate, ErrNotFound when none has yet.
	UnitDevice(ctx context.Context, sn string) (string, error)
	// AddUnitEvents records station events of the factory's ledger; an
	// event already recorded (same unit, station, time and result) is
	// skipped, so a ledger may be pushed again. It returns how many were new.
	AddUnitEvents(ctx context.Context, evs []UnitEvent) (int, error)
	// UnitEvents returns station events, oldest first: one unit's
	// traveller (SN, with the events of its board before it had one), or
	// a batch's, or all.
	UnitEvents(ctx context.Context, q UnitEventQuery) ([]UnitEvent, error)
}
