package store

import (
	"context"
	"errors"
	"time"
)

// ErrInUse is returned when something still refers to what is being
// deleted (a firmware package assigned to a device, a profile or a rollout).
var ErrInUse = errors.New("in use")

// Firmware update states, named as ThingsBoard's fw_state values. QUEUED and
// INITIATED are set by the server, the others reported by the device.
// CANCELED is thingline's: a queued device of an aborted or superseded
// rollout, never started.
const (
	OTAQueued      = "QUEUED"
	OTAInitiated   = "INITIATED"
	OTADownloading = "DOWNLOADING"
	OTADownloaded  = "DOWNLOADED"
	OTAVerified    = "VERIFIED"
	OTAUpdating    = "UPDATING"
	OTAUpdated     = "UPDATED"
	OTAFailed      = "FAILED"
	OTACanceled    = "CANCELED"
)

// OTATerminal tells whether state ends an update.
func OTATerminal(state string) bool {
	return state == OTAUpdated || state == OTAFailed || state == OTACanceled
}

// OTAPackage is an uploaded firmware image. Its bytes are read apart
// (OTAPackageData): listings never carry megabytes.
type OTAPackage struct {
	ID                int64     `json:"id"`
	Title             string    `json:"title"`
	Version           string    `json:"version"`
	Size              int64     `json:"size"`
	Checksum          string    `json:"checksum"`          // as fw_checksum carries it
	ChecksumAlgorithm string    `json:"checksumAlgorithm"` // SHA256, CRC32, MURMUR3_32…
	SHA256            string    `json:"sha256"`            // always kept, whatever the algorithm
	CreatedAt         time.Time `json:"createdAt"`
}

// Where a device's firmware target came from.
const (
	OTASourceDevice  = "device"  // assigned to this device
	OTASourceProfile = "profile" // inherited from its profile's assignment
	OTASourceRollout = "rollout" // a member of a staged rollout
)

// OTADevice is one device's firmware target and how far its update went.
type OTADevice struct {
	DeviceID  int64  `json:"-"`
	Device    string `json:"device"` // filled in by reads
	PackageID int64  `json:"package"`
	Source    string `json:"source"`
	RolloutID int64  `json:"rollout,omitempty"`
	Wave      int    `json:"wave,omitempty"` // 0-based wave of the rollout
	State     string `json:"state"`
	Error     string `json:"error,omitempty"`
	// Attempts counts the times the fw attributes were pushed for this
	// target (first push, re-push after a reboot mid-update or silence).
	Attempts       int       `json:"attempts"`
	CurrentTitle   string    `json:"currentTitle,omitempty"` // last current_fw_title reported
	CurrentVersion string    `json:"currentVersion,omitempty"`
	StateAt        time.Time `json:"stateAt"`
	// ReportAt is when the gateway received the last device report
	// applied: a report not newer is stale (another node's engine, or a
	// late copy) and changes nothing.
	ReportAt time.Time `json:"-"`
	Deadline time.Time `json:"deadline,omitzero"` // zero: no deadline (QUEUED waiting for its wave)
	// Rev is the row's revision: UpdateOTADevice writes only over the
	// revision it read, which is how several nodes agree on who acts.
	Rev int64 `json:"-"`
}

// OTADeviceQuery selects device rows; zero fields do not filter.
type OTADeviceQuery struct {
	RolloutID int64
	// FirstWaves, with RolloutID, keeps the rows of the rollout's first
	// FirstWaves waves (those started), earliest wave first.
	FirstWaves int
	// NoRollout keeps the rows of no rollout (device and profile
	// assignments).
	NoRollout bool
	PackageID int64
	States    []string
	DueBefore time.Time // non-terminal rows with a deadline at or before
	Limit     int       // 0 means 1000
}

// OTAHistoryEntry is one state change of one device's update.
type OTAHistoryEntry struct {
	ID        int64     `json:"id"`
	Time      time.Time `json:"time"`
	PackageID int64     `json:"package"`
	RolloutID int64     `json:"rollout,omitempty"`
	State     string    `json:"state"`
	Error     string    `json:"error,omitempty"`
}

// Rollout statuses.
const (
	RolloutRunning   = "running"
	RolloutPaused    = "paused"
	RolloutCompleted = "completed"
	RolloutAborted   = "aborted"
)

// OTARollout is a staged update of a set of devices to one package.
type OTARollout struct {
	ID          int64  `json:"id"`
	PackageID   int64  `json:"package"`
	Profile     string `json:"profile,omitempty"` // when the devices were chosen by profile
	Status      string `json:"status"`
	PauseReason string `json:"pauseReason,omitempty"`
	Waves       []int  `json:"waves"`       // device count of each wave
	CurrentWave int    `json:"currentWave"` // 0-based index of the last wave started
	Total       int    `json:"total"`
	// SuccessPercent of the current wave must be UPDATED before the next
	// wave starts.
	SuccessPercent int `json:"successPercent"`
	// FailureMax failures (since the last resume) pause the rollout.
	FailureMax    int       `json:"failureMax"`
	FailuresAcked int       `json:"failuresAcked"` // failures already counted at the last resume
	CreatedAt     time.Time `json:"createdAt"`
	UpdatedAt     time.Time `json:"updatedAt"`
	Rev           int64     `json:"-"`
}

// OTARolloutMember is one device of a rollout with its outcome there.
type OTARolloutMember struct {
	DeviceID  int64     `json:"-"`
	Device    string    `json:"device"`
	Wave      int       `json:"wave"`
	State     string    `json:"state"`
	Error     string    `json:"error,omitempty"`
	UpdatedAt time.Time `json:"updatedAt"`
}

// OTA stores firmware packages, per-device update state and rollouts.
type OTA interface {
	// CreateOTAPackage stores a package with its bytes; ErrExists when the
	// title and version are taken.
	CreateOTAPackage(ctx context.Context, p OTAPackage, data []byte) (OTAPackage, error)
	GetOTAPackage(ctx context.Context, id int64) (OTAPackage, error)
	OTAPackageData(ctx context.Context, id int64) ([]byte, error)
	ListOTAPackages(ctx context.Context) ([]OTAPackage, error)
	// DeleteOTAPackage refuses (ErrInUse) while a device, profile or
	// unfinished rollout targets the package.
	DeleteOTAPackage(ctx context.Context, id int64) error

	// SetOTAProfile assigns a package to a profile (0 removes it).
	SetOTAProfile(ctx context.Context, profile string, packageID int64) error
	// GetOTAProfile returns the profile's package, 0 when none.
	GetOTAProfile(ctx context.Context, profile string) (int64, error)

	// PutOTADevice sets a device's target unconditionally (an
	// assignment), recording the state in the history; a previous
	// unfinished rollout membership of the device is canceled.
	PutOTADevice(ctx context.Context, d OTADevice) (OTADevice, error)
	// DeleteOTADevice removes a device's target (unassignment).
	DeleteOTADevice(ctx context.Context, deviceID int64) error
	GetOTADevice(ctx context.Context, deviceID int64) (OTADevice, error)
	// UpdateOTADevice writes d only if the stored row's revision is still
	// d.Rev (ok=false otherwise, nothing written). A state change is
	// recorded in the history and in the rollout membership.
	UpdateOTADevice(ctx context.Context, d OTADevice) (stored OTADevice, ok bool, err error)
	ListOTADevices(ctx context.Context, q OTADeviceQuery) ([]OTADevice, error)
	// OTAHistory returns a device's state changes at or after since,
	// newest first (since is the ownership epoch's lower bound).
	OTAHistory(ctx context.Context, deviceID int64, since time.Time, limit int) ([]OTAHistoryEntry, error)
	// DeleteOTAHistoryBefore removes at most q.Limit history entries
	// older than q.Before (every entry is finished: q.Finished changes
	// nothing); more tells that some may remain. A device's current
	// target and state stay.
	DeleteOTAHistoryBefore(ctx context.Context, q HistoryPurge) (removed int64, more bool, err error)

	// CreateOTARollout stores a rollout with its members and makes each
	// member's device row QUEUED for it, in one transaction.
	CreateOTARollout(ctx context.Context, r OTARollout, members []OTARolloutMember) (OTARollout, error)
	GetOTARollout(ctx context.Context, id int64) (OTARollout, error)
	// ListOTARollouts returns rollouts newest first, of one status when
	// status is not empty.
	ListOTARollouts(ctx context.Context, status string) ([]OTARollout, error)
	// UpdateOTARollout writes r only over revision r.Rev.
	UpdateOTARollout(ctx context.Context, r OTARollout) (stored OTARollout, ok bool, err error)
	// OTARolloutMembers lists every member with its outcome, for people
	// (the API, the console); deciding reads OTARolloutCounts.
	OTARolloutMembers(ctx context.Context, id int64) ([]OTARolloutMember, error)
	// OTARolloutCounts returns how many of the rollout's members are in
	// each state, per wave (states with no member may be left out). The
	// store changes them in the transaction that changes a membership, so
	// they always equal a recount of OTARolloutMembers, and reading them
	// costs O(waves), whatever the number of members.
	OTARolloutCounts(ctx context.Context, id int64) ([]OTAStateCount, error)
	// CancelOTARolloutQueued marks the rollout's still-QUEUED devices
	// CANCELED (abort) and returns how many.
	CancelOTARolloutQueued(ctx context.Context, id int64, reason string, at time.Time) (int, error)
}

// OTAProgress counts a rollout's members by outcome, overall and per wave.
type OTAProgress struct {
	Total      int               `json:"total"`
	Queued     int               `json:"queued"`
	InProgress int               `json:"inProgress"`
	Updated    int               `json:"updated"`
	Failed     int               `json:"failed"`
	Canceled   int               `json:"canceled"`
	Waves      []OTAWaveProgress `json:"waves"`
}

// OTAWaveProgress is one wave's count.
type OTAWaveProgress struct {
	Wave       int `json:"wave"`
	Size       int `json:"size"`
	Queued     int `json:"queued"`
	InProgress int `json:"inProgress"`
	Updated    int `json:"updated"`
	Failed     int `json:"failed"`
	Canceled   int `json:"canceled"`
}

// OTAStateCount is how many members of one wave of a rollout are in one
// state.
type OTAStateCount struct {
	Wave  int    `json:"wave"`
	State string `json:"state"`
	N     int    `json:"n"`
}

// RolloutProgress reads r's counts from s into an OTAProgress.
func RolloutProgress(ctx context.Context, s OTA, r OTARollout) (OTAProgress, error) {
	counts, err := s.OTARolloutCounts(ctx, r.ID)
	if err != nil {
		return OTAProgress{}, err
	}
	return OTAProgressOf(r.Waves, counts), nil
}

// OTAProgressOf sums per-state counts into an OTAProgress with one entry
// per wave.
func OTAProgressOf(waves []int, counts []OTAStateCount) OTAProgress {
	p := newProgress(waves)
	for _, c := range counts {
		p.add(c.Wave, c.State, c.N)
	}
	return p
}

// CountOTARollout tallies a rollout's members into an OTAProgress with one
// entry per wave.
func CountOTARollout(waves []int, members []OTARolloutMember) OTAProgress {
	p := newProgress(waves)
	for _, m := range members {
		p.add(m.Wave, m.State, 1)
	}
	return p
}

func newProgress(waves []int) OTAProgress {
	p := OTAProgress{Waves: make([]OTAWaveProgress, len(waves))}
	for i, n := range waves {
		p.Waves[i] = OTAWaveProgress{Wave: i, Size: n}
	}
	return p
}

// add counts n members of wave in state: QUEUED, UPDATED, FAILED and
// CANCELED are outcomes of their own, every other state is in progress.
func (p *OTAProgress) add(wave int, state string, n int) {
	p.Total += n
	var w *OTAWaveProgress
	if wave >= 0 && wave < len(p.Waves) {
		w = &p.Waves[wave]
	} else {
		w = &OTAWaveProgress{}
	}
	switch state {
	case OTAQueued:
		p.Queued += n
		w.Queued += n
	case OTAUpdated:
		p.Updated += n
		w.Updated += n
	case OTAFailed:
		p.Failed += n
		w.Failed += n
	case OTACanceled:
		p.Canceled += n
		w.Canceled += n
	default:
		p.InProgress += n
		w.InProgress += n
	}
}
