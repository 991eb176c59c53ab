package twin

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Auth modes, numbered as wifi_constants.proto's WifiAuthMode.
const (
	AuthOpen        = 0
	AuthWEP         = 1
	AuthWPAPSK      = 2
	AuthWPA2PSK     = 3
	AuthWPAWPA2PSK  = 4
	AuthWPA2Ent     = 5
	AuthWPA3PSK     = 6
	AuthWPA2WPA3PSK = 7
)

var authNames = map[string]int{
	"open": AuthOpen, "wep": AuthWEP, "wpa": AuthWPAPSK, "wpa-psk": AuthWPAPSK,
	"wpa2": AuthWPA2PSK, "wpa2-psk": AuthWPA2PSK, "wpa-wpa2": AuthWPAWPA2PSK,
	"wpa2-enterprise": AuthWPA2Ent, "wpa3": AuthWPA3PSK, "wpa3-psk": AuthWPA3PSK,
	"wpa2-wpa3": AuthWPA2WPA3PSK,
}

// Network is one access point of the simulated radio environment.
type Network struct {
	SSID       string `json:"ssid"`
	Passphrase string `json:"passphrase"`
	RSSI       int32  `json:"rssi"`
	Channel    uint32 `json:"channel"`
	Auth       int32  `json:"auth"`
}

// Errors of the simulated station, the two failure reasons the firmware can
// report through prov-config's WifiConnectFailedReason.
var (
	ErrAuth            = errors.New("wifi: authentication failed")
	ErrNetworkNotFound = errors.New("wifi: network not found")
)

// Station is the simulated Wi-Fi station of a twin. With no networks
// configured, any SSID with a plausible passphrase joins, so that a demo needs
// no network file.
type Station struct {
	Networks []Network // nil means "any network exists"
}

// Scan lists the configured networks, strongest first as esp_wifi_scan does.
func (s *Station) Scan() []Network {
	out := append([]Network(nil), s.Networks...)
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && out[j].RSSI > out[j-1].RSSI; j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}

// Connect joins ssid with pass, or returns ErrAuth or ErrNetworkNotFound.
func (s *Station) Connect(ssid, pass string) (Network, error) {
	if s.Networks == nil {
		if ssid == "" || len(ssid) > 32 {
			return Network{}, ErrNetworkNotFound
		}
		if !validPassphrase(pass) {
			return Network{}, ErrAuth
		}
		auth := int32(AuthWPA2PSK)
		if pass == "" {
			auth = AuthOpen
		}
		return Network{SSID: ssid, Passphrase: pass, RSSI: -50, Channel: 6, Auth: auth}, nil
	}
	for _, n := range s.Networks {
		if n.SSID != ssid {
			continue
		}
		if n.Auth != AuthOpen && n.Passphrase != pass {
			return Network{}, ErrAuth
		}
		return n, nil
	}
	return Network{}, ErrNetworkNotFound
}

// validPassphrase is WPA2's rule: 8 to 63 characters, or none for an open
// network. (64 hex digits, a raw PSK, do not fit the firmware's 64-byte
// buffer with its terminator.)
func validPassphrase(p string) bool {
	return p == "" || (len(p) >= 8 && len(p) <= 63)
}

// LoadNetworks reads a network file: either a JSON array of Network objects
// (auth as a number or a name such as "wpa2"), or text with one network per
// line, fields separated by tabs or '|':
//
//	ssid | passphrase | rssi | channel | auth
//
// where all but the SSID may be omitted and '#' starts a comment line. A line
// holding a tab is split at tabs only, so that an SSID may contain '|'.
func LoadNetworks(path string) ([]Network, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("twin: reading networks: %w", err)
	}
	nets, err := ParseNetworks(b)
	if err != nil {
		return nil, fmt.Errorf("twin: %s: %w", path, err)
	}
	return nets, nil
}

// ParseNetworks parses the content of a network file (see LoadNetworks).
func ParseNetworks(b []byte) ([]Network, error) {
	nets := []Network{}
	if t := bytes.TrimSpace(b); len(t) > 0 && t[0] == '[' {
		var raw []struct {
			SSID       string          `json:"ssid"`
			Passphrase string          `json:"passphrase"`
			RSSI       *int32          `json:"rssi"`
			Channel    *uint32         `json:"channel"`
			Auth       json.RawMessage `json:"auth"`
		}
		if err := json.Unmarshal(t, &raw); err != nil {
			return nil, fmt.Errorf("parsing networks: %w", err)
		}
		for i, r := range raw {
			n := Network{SSID: r.SSID, Passphrase: r.Passphrase, RSSI: -60, Channel: 1}
			if r.RSSI != nil {
				n.RSSI = *r.RSSI
			}
			if r.Channel != nil {
				n.Channel = *r.Channel
			}
			auth, err := parseAuth(strings.Trim(string(r.Auth), `"`), n.Passphrase)
			if err != nil {
				return nil, fmt.Errorf("network %d: %w", i, err)
			}
			n.Auth = auth
			if err := checkNetwork(n); err != nil {
				return nil, fmt.Errorf("network %d: %w", i, err)
			}
			nets = append(nets, n)
		}
		return nets, nil
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for line := 0; sc.Scan(); {
		line++
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		sep := "|"
		if strings.Contains(text, "\t") {
			sep = "\t"
		}
		fields := strings.Split(text, sep)
		for i := range fields {
			fields[i] = strings.TrimSpace(fields[i])
		}
		n := Network{SSID: fields[0], RSSI: -60, Channel: 1}
		if len(fields) > 1 {
			n.Passphrase = fields[1]
		}
		if len(fields) > 2 && fields[2] != "" {
			v, err := strconv.ParseInt(fields[2], 10, 32)
			if err != nil {
				return nil, fmt.Errorf("line %d: rssi: %w", line, err)
			}
			n.RSSI = int32(v)
		}
		if len(fields) > 3 && fields[3] != "" {
			v, err := strconv.ParseUint(fields[3], 10, 32)
			if err != nil {
				return nil, fmt.Errorf("line %d: channel: %w", line, err)
			}
			n.Channel = uint32(v)
		}
		auth := ""
		if len(fields) > 4 {
			auth = fields[4]
		}
		a, err := parseAuth(auth, n.Passphrase)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", line, err)
		}
		n.Auth = a
		if err := checkNetwork(n); err != nil {
			return nil, fmt.Errorf("line %d: %w", line, err)
		}
		nets = append(nets, n)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading networks: %w", err)
	}
	return nets, nil
}

func parseAuth(s, pass string) (int32, error) {
	if s == "" || s == "null" {
		if pass == "" {
			return AuthOpen, nil
		}
		return AuthWPA2PSK, nil
	}
	if v, err := strconv.Atoi(s); err == nil {
		if v < 0 || v > AuthWPA2WPA3PSK {
			return 0, fmt.Errorf("auth mode %d out of range", v)
		}
		return int32(v), nil
	}
	v, ok := authNames[strings.ToLower(s)]
	if !ok {
		return 0, fmt.Errorf("unknown auth mode %q", s)
	}
	return int32(v), nil
}

func checkNetwork(n Network) error {
	if n.SSID == "" || len(n.SSID) > 32 {
		return fmt.Errorf("ssid %q must have 1 to 32 bytes", n.SSID)
	}
	if n.Auth != AuthOpen && !validPassphrase(n.Passphrase) {
		return fmt.Errorf("passphrase of %q must have 8 to 63 characters", n.SSID)
	}
	if n.Channel < 1 || n.Channel > 14 {
		return fmt.Errorf("channel %d of %q out of 1..14", n.Channel, n.SSID)
	}
	return nil
}
