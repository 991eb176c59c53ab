package twin

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// StateFile is the name of the persisted state inside the --state directory.
const StateFile = "state.json"

// WiFiCredentials are the station credentials provisioning stored.
type WiFiCredentials struct {
	SSID       string `json:"ssid"`
	Passphrase string `json:"passphrase"`
}

// PendingOTA is an update the device accepted but has not applied yet.
type PendingOTA struct {
	Title   string `json:"title"`
	Version string `json:"version"`
}

// State is the twin's equivalent of the firmware's NVS: everything that
// survives a reboot but not a factory reset. The identity is not here: it
// lives in the SPIFFS image, which a factory reset keeps.
type State struct {
	WiFi       *WiFiCredentials `json:"wifi,omitempty"`
	Owner      string           `json:"owner,omitempty"`
	FWVersion  string           `json:"fw_version,omitempty"`
	PendingOTA *PendingOTA      `json:"pending_ota,omitempty"`
	IntervalMs int64            `json:"interval_ms,omitempty"`
	BootCount  int64            `json:"boot_count,omitempty"`
	// Assoc is what the provisioning app handed over on cloud_user_assoc,
	// forwarded to the cloud on each connection until it answers.
	Assoc *Association `json:"assoc,omitempty"`
	// Reset marks a factory reset not yet followed by a successful claim:
	// the next claim or association says reset:true, so the cloud may give
	// the device to another user (RainMaker's reset flag).
	Reset bool `json:"reset,omitempty"`
	// Claim is the last answer to a claim request other than PENDING:
	// SUCCESS, CLAIMED, EXPIRED or FAILURE.
	Claim string `json:"claim,omitempty"`
}

// Association is a user–node association in waiting: the user's id and the
// one-time secret the app also sends to the cloud.
type Association struct {
	UserID string `json:"user_id"`
	Secret string `json:"secret"`
}

// Provisioned tells whether the state holds Wi-Fi credentials.
func (s State) Provisioned() bool { return s.WiFi != nil }

// clone returns a deep copy, so that callers never share the pointers.
func (s State) clone() State {
	if s.WiFi != nil {
		w := *s.WiFi
		s.WiFi = &w
	}
	if s.PendingOTA != nil {
		o := *s.PendingOTA
		s.PendingOTA = &o
	}
	if s.Assoc != nil {
		a := *s.Assoc
		s.Assoc = &a
	}
	return s
}

// LoadState reads dir's state file. A missing file is the state of a unit
// fresh from the factory, not an error.
func LoadState(dir string) (State, error) {
	var s State
	b, err := os.ReadFile(filepath.Join(dir, StateFile))
	if errors.Is(err, os.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return s, fmt.Errorf("twin: reading state: %w", err)
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return s, fmt.Errorf("twin: parsing state %s: %w", filepath.Join(dir, StateFile), err)
	}
	return s, nil
}

// SaveState writes s to dir atomically: a crash leaves either the old or
// the new file, never a torn one, as NVS's own commit does.
func SaveState(dir string, s State) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("twin: creating state dir: %w", err)
	}
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("twin: encoding state: %w", err)
	}
	f, err := os.CreateTemp(dir, ".state-*.tmp")
	if err != nil {
		return fmt.Errorf("twin: writing state: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after the rename
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return fmt.Errorf("twin: writing state: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("twin: syncing state: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("twin: writing state: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, StateFile)); err != nil {
		return fmt.Errorf("twin: replacing state: %w", err)
	}
	// The rename is durable only once the directory entry is.
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// ResetState is the factory reset of a stopped twin (`thingline device
// reset`): Wi-Fi credentials and runtime state go, the firmware version
// stays because it belongs to the flashed application, not to NVS, and the
// reset is remembered so that the next claim is marked as one.
func ResetState(dir string) error {
	s, err := LoadState(dir)
	if err != nil {
		// A corrupt state is exactly what a reset must get rid of.
		s = State{}
	}
	return SaveState(dir, State{FWVersion: s.FWVersion, Reset: true})
}
