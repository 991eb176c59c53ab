// Package wifiprov is ESP-IDF's wifi_provisioning manager on top of
// protocomm: the device side (Device) that a device twin runs to be
// provisioned exactly as real firmware is, by esp_prov or Espressif's phone
// apps, and the client side (Client, Provision) that plays the phone app.
package wifiprov

import (
	"fmt"

	"github.com/thingline/thingline/protocomm/pb"
)

// Standard endpoint names and their BLE 16-bit ids (manager.c). Custom
// endpoints take the ids after FirstCustomID in creation order.
const (
	EndpointCtrl    = "prov-ctrl"
	EndpointScan    = "prov-scan"
	EndpointSession = "prov-session"
	EndpointConfig  = "prov-config"
	EndpointVersion = "proto-ver"

	FirstCustomID = 0xff54
)

// EndpointIDs are the BLE characteristic ids of the standard endpoints.
var EndpointIDs = map[string]uint16{
	EndpointCtrl: 0xff4f, EndpointScan: 0xff50, EndpointSession: 0xff51,
	EndpointConfig: 0xff52, EndpointVersion: 0xff53,
}

// Version is the manager version reported in proto-ver.
const Version = "v1.1"

// AuthMode is an access point's security, numbered as on the wire.
type AuthMode int32

const (
	AuthOpen AuthMode = iota
	AuthWEP
	AuthWPAPSK
	AuthWPA2PSK
	AuthWPAWPA2PSK
	AuthWPA2Enterprise
	AuthWPA3PSK
	AuthWPA2WPA3PSK
)

func (a AuthMode) String() string {
	return pb.WifiAuthMode(a).String()
}

// AP is one access point a scan found.
type AP struct {
	SSID    string
	BSSID   []byte // 6 bytes, or nil
	Channel int
	RSSI    int
	Auth    AuthMode
}

// FailReason says why a connection failed, numbered as on the wire.
type FailReason int32

const (
	AuthError       FailReason = 0
	NetworkNotFound FailReason = 1
)

func (r FailReason) String() string {
	switch r {
	case AuthError:
		return "authentication error (wrong passphrase)"
	case NetworkNotFound:
		return "network not found (wrong SSID)"
	}
	return fmt.Sprintf("reason %d", int32(r))
}

// Result is the outcome of one connection attempt.
type Result struct {
	Connected bool
	IP        string     // IPv4 address when connected
	AP        AP         // the network joined, when connected
	Reason    FailReason // when not connected
}

// WiFi is the station interface the device provisions; the device twin
// implements it with its simulated radio.
type WiFi interface {
	Scan() []AP
	// Connect blocks until the attempt succeeded or failed.
	Connect(ssid, passphrase string) Result
}

// State is the station state reported by get-status, numbered as on the
// wire.
type State int32

const (
	Connected        State = 0
	Connecting       State = 1
	Disconnected     State = 2
	ConnectionFailed State = 3
)

func (s State) String() string { return pb.WifiStationState(s).String() }

// Status is what get-status reports, and what Provision returns.
type Status struct {
	State  State
	IP     string     // Connected
	AP     AP         // Connected
	Reason FailReason // ConnectionFailed
	// AttemptsRemaining is set while Connecting after a failed attempt
	// (IDF 5.4 and later); -1 when the device did not say.
	AttemptsRemaining int
}

func (s Status) String() string {
	switch s.State {
	case Connected:
		return fmt.Sprintf("connected to %q with address %s", s.AP.SSID, s.IP)
	case ConnectionFailed:
		return "connection failed: " + s.Reason.String()
	}
	return s.State.String()
}
