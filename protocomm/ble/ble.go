// Package ble is protocomm's Bluetooth LE transport through BlueZ over
// D-Bus: a GATT peripheral laid out as ESP-IDF's protocomm_nimble.c does
// (one READ|WRITE characteristic per endpoint, each named by a read-only
// 0x2901 user-description descriptor; the client writes the request and
// reads the answer back), advertised as PROV_xxxxxx with the service UUID,
// and the matching central (client) side.
package ble

import (
	"errors"
	"fmt"
	"strings"
)

// DefaultServiceUUID is the service UUID of ESP-IDF's provisioning
// examples, which esp_prov also falls back to.
const DefaultServiceUUID = "021a9004-0382-4aea-bff4-6b3f1c5adfb4"

// UserDescriptionUUID is the GATT Characteristic User Description
// descriptor that carries each endpoint's name.
const UserDescriptionUUID = "00002901-0000-1000-8000-00805f9b34fb"

// MaxValue is the largest request or response the transport carries: the
// ATT limit on an attribute value.
const MaxValue = 512

// ErrNoAdapter means there is no usable Bluetooth adapter: BlueZ is not
// running, the system D-Bus is unreachable or no controller is powered.
var ErrNoAdapter = errors.New("no Bluetooth adapter: BLE needs BlueZ (bluetoothd) on the system D-Bus and a powered controller; use --transport softap otherwise")

// CharUUID is the characteristic UUID of the endpoint with 16-bit id for
// service: the service UUID with characters 4-7 (bytes 12-13 of the
// little-endian array) replaced by the id.
func CharUUID(service string, id uint16) (string, error) {
	if err := checkUUID(service); err != nil {
		return "", err
	}
	s := strings.ToLower(service)
	return fmt.Sprintf("%s%04x%s", s[:4], id, s[8:]), nil
}

func checkUUID(u string) error {
	if len(u) != 36 {
		return fmt.Errorf("ble: uuid %q: want 36 characters", u)
	}
	for i, c := range u {
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return fmt.Errorf("ble: uuid %q: want '-' at %d", u, i)
			}
		default:
			if !strings.ContainsRune("0123456789abcdefABCDEF", c) {
				return fmt.Errorf("ble: uuid %q: bad character %q", u, c)
			}
		}
	}
	return nil
}

// endpointValue holds one characteristic's request being written and the
// answer to be read. BlueZ hands long writes over in pieces with offsets
// and long reads ask by offset, so the request runs when the first read at
// offset 0 follows writes.
type endpointValue struct {
	req     []byte
	pending bool
	resp    []byte
}

func (v *endpointValue) write(offset int, data []byte) error {
	if offset == 0 {
		v.req = v.req[:0]
	}
	if offset != len(v.req) {
		return fmt.Errorf("ble: write at offset %d, expected %d", offset, len(v.req))
	}
	if len(v.req)+len(data) > MaxValue {
		return fmt.Errorf("ble: request longer than %d bytes", MaxValue)
	}
	v.req = append(v.req, data...)
	v.pending = true
	return nil
}

func (v *endpointValue) read(offset int, handle func([]byte) ([]byte, error)) ([]byte, error) {
	if v.pending && offset == 0 {
		v.pending = false
		resp, err := handle(v.req)
		v.resp = nil
		if err != nil {
			return nil, err
		}
		if len(resp) > MaxValue {
			return nil, fmt.Errorf("ble: response longer than %d bytes", MaxValue)
		}
		v.resp = resp
	}
	if offset < 0 || offset > len(v.resp) {
		return nil, fmt.Errorf("ble: read at offset %d of a %d-byte value", offset, len(v.resp))
	}
	return v.resp[offset:], nil
}
