package twin

import (
	"bufio"
	"bytes"
	"testing"
)

func FuzzReadPacket(f *testing.F) {
	for _, s := range [][]byte{
		{0x20, 0x02, 0x00, 0x00},       // CONNACK
		{0x40, 0x02, 0x00, 0x01},       // PUBACK
		{0x90, 0x03, 0x00, 0x01, 0x01}, // SUBACK
		{0xd0, 0x00},                   // PINGRESP
		{0x32, 0x09, 0x00, 0x03, 'a', '/', 'b', 0x00, 0x07, '{', '}'}, // PUBLISH QoS 1
		{0x30, 0xff, 0xff, 0xff, 0xff, 0x7f},                          // length overflow
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bufio.NewReader(bytes.NewReader(b))
		for range 8 {
			if _, err := readPacket(r); err != nil {
				return
			}
		}
	})
}

func FuzzParseNetworks(f *testing.F) {
	f.Add([]byte("home\tsecret123\t-40\t6\twpa2\n"))
	f.Add([]byte(`[{"ssid":"a","passphrase":"12345678","auth":"wpa3"}]`))
	f.Add([]byte("x|y|z"))
	f.Fuzz(func(t *testing.T, b []byte) {
		nets, err := ParseNetworks(b)
		if err != nil {
			return
		}
		for _, n := range nets {
			if checkNetwork(n) != nil {
				t.Fatalf("accepted invalid network %+v", n)
			}
		}
	})
}

func FuzzDeviceRPC(f *testing.F) {
	f.Add([]byte(`{"method":"setInterval","params":{"ms":100}}`))
	f.Add([]byte(`{"method":"getState"}`))
	f.Add([]byte(`{"method":"setInterval","params":"12"}`))
	f.Add([]byte(`[1,2`))
	f.Add([]byte(`{"shared":{"fw_title":"thingline-twin","fw_version":"2","fw_size":10,"fw_checksum":"ab","fw_checksum_algorithm":"SHA256"}}`))
	cc := &cloudConfig{interval: 50, keepalive: 1, stats: new(Stats), logf: func(string, ...any) {}, sched: newScheduler()}
	id := &Identity{SN: "SN-1", MAC: macFor("SN-1")}
	f.Fuzz(func(t *testing.T, b []byte) {
		d := newDevice(id, cc, State{}, nil)
		reply, _ := d.rpc(b)
		if len(reply) == 0 || reply[0] != '{' {
			t.Fatalf("reply %q", reply)
		}
		d.applyAttributes(nil, b)
		// Whatever the server sends on the OTA topics is parsed safely.
		d.otaPublish(nil, "v1/devices/me/attributes/response/1", b)
		d.otaPublish(nil, "v2/fw/response/1/chunk/0", b)
		d.otaPublish(nil, "v2/fw/error", b)
	})
}
