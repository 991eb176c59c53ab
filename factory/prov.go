package factory

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/thingline/thingline/spiffs"
)

// ProvFile is the name of the provisioning facts, in the unit directory
// and at the root of the SPIFFS image.
const ProvFile = "prov.json"

// DefaultSec2Username is the Security 2 user name of Espressif's examples
// (esp_prov's --sec2_username default in the wifi_prov_mgr example).
const DefaultSec2Username = "wifiprov"

// ProvInfo is what a unit needs to be provisioned over BLE: the name it
// advertises and the proof of possession (the Security 2 password) printed
// on its label.
type ProvInfo struct {
	ServiceName  string `json:"service_name"`
	PoP          string `json:"pop"`
	Sec2Username string `json:"sec2_username"`
}

// ServiceName is the BLE device name of the unit with serial number sn:
// PROV_ and the first 6 upper-case hex digits of SHA-256(sn). It is derived
// from the SN, not from the radio's MAC as ESP-IDF's examples do, so that
// the label can be printed before the board is powered.
func ServiceName(sn string) string {
	sum := sha256.Sum256([]byte(sn))
	return "PROV_" + strings.ToUpper(hex.EncodeToString(sum[:3]))
}

// popAlphabet leaves out characters a person misreads from a label
// (0/o, 1/l/i).
const popAlphabet = "abcdefghjkmnpqrstuvwxyz23456789"

// popLen characters of popAlphabet give 49 bits: Security 2's SRP6a
// verifier is stored on the device, so the PoP only has to resist online
// guessing over BLE.
const popLen = 10

// NewPoP returns a random proof of possession.
func NewPoP() string {
	b := make([]byte, popLen)
	out := make([]byte, 0, popLen)
	for len(out) < popLen {
		rand.Read(b)
		for _, c := range b {
			// Rejection keeps the choice uniform: 248 is the largest
			// multiple of 31 below 256.
			if c < 248 && len(out) < popLen {
				out = append(out, popAlphabet[int(c)%len(popAlphabet)])
			}
		}
	}
	return string(out)
}

// NewProvInfo makes the provisioning facts of a new unit.
func NewProvInfo(sn string) ProvInfo {
	return ProvInfo{ServiceName: ServiceName(sn), PoP: NewPoP(), Sec2Username: DefaultSec2Username}
}

// Marshal encodes p as prov.json.
func (p ProvInfo) Marshal() []byte {
	b, _ := json.Marshal(p)
	return append(b, '\n')
}

// ParseProvInfo decodes prov.json, as read from a unit directory or from the
// unit's SPIFFS image.
func ParseProvInfo(b []byte) (ProvInfo, error) {
	var p ProvInfo
	if err := json.Unmarshal(b, &p); err != nil {
		return p, fmt.Errorf("factory: parsing %s: %w", ProvFile, err)
	}
	if p.ServiceName == "" || p.PoP == "" {
		return p, fmt.Errorf("factory: parsing %s: service_name and pop are required", ProvFile)
	}
	if len(p.ServiceName) > 29 {
		// MAX_BLE_DEVNAME_LEN in ESP-IDF's BLE provisioning scheme.
		return p, fmt.Errorf("factory: parsing %s: service_name longer than 29 bytes", ProvFile)
	}
	return p, nil
}

// ReadProvInfo reads prov.json from a unit directory (or the path of the
// file itself).
func ReadProvInfo(dirOrFile string) (ProvInfo, error) {
	path := dirOrFile
	if fi, err := os.Stat(path); err == nil && fi.IsDir() {
		path = filepath.Join(path, ProvFile)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return ProvInfo{}, fmt.Errorf("factory: reading provisioning facts: %w", err)
	}
	return ParseProvInfo(b)
}

// ReadProvInfoImage reads /prov.json from a unit's SPIFFS image, as the
// firmware (or its twin) finds it after flashing.
func ReadProvInfoImage(img []byte) (ProvInfo, error) {
	fs, err := spiffs.Open(img, spiffs.DefaultConfig(len(img)))
	if err != nil {
		return ProvInfo{}, fmt.Errorf("factory: reading provisioning facts: %w", err)
	}
	b, err := fs.ReadFile("/" + ProvFile)
	if err != nil {
		return ProvInfo{}, fmt.Errorf("factory: reading provisioning facts: %w", err)
	}
	return ParseProvInfo(b)
}

// QRPayload is the text of the provisioning QR code that Espressif's
// provisioning apps scan (ESP BLE Provisioning): the device name, the
// Security 2 user name and the PoP, over BLE.
func (p ProvInfo) QRPayload() string {
	// A struct keeps the field order of Espressif's examples.
	v := struct {
		Ver       string `json:"ver"`
		Name      string `json:"name"`
		Username  string `json:"username,omitempty"`
		PoP       string `json:"pop"`
		Transport string `json:"transport"`
	}{"v1", p.ServiceName, p.Sec2Username, p.PoP, "ble"}
	b, _ := json.Marshal(v)
	return string(b)
}
