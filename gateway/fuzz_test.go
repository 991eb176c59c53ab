package gateway

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"
)

func FuzzParseTelemetry(f *testing.F) {
	for _, s := range []string{
		`{"temperature":42,"humidity":73}`,
		`[{"key1":"value1"},{"key2":true}]`,
		`{"ts":1451649600512,"values":{"temperature":42,"humidity":73}}`,
		`[{"ts":1451649600000,"values":{"t":22.5}},{"ts":1451649601000,"values":{"t":22.7}}]`,
		`{"a":{"b":[1,{"c":null}]},"s":"\u00e9\n","n":-0.5e-3,"z":null}`,
		`{"a":1,"a":2}`, `[]`, `{}`, `{"ts":1,"values":[]}`, `[[`, `{"a":"\ud800"}`, "{\"a\":\"\xff\"}",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		recs, err := ParseTelemetry(payload, 7)
		if err != nil {
			if len(recs) != 0 {
				t.Fatal("records returned with an error")
			}
			return
		}
		// Whatever is accepted is JSON, and so is every stored value.
		if !json.Valid(payload) {
			t.Fatalf("accepted invalid JSON %q", payload)
		}
		for _, r := range recs {
			if len(r.Values) == 0 {
				t.Fatal("empty record")
			}
			seen := map[string]bool{}
			for _, kv := range r.Values {
				if kv.Key == "" || seen[kv.Key] {
					t.Fatalf("bad or duplicate key %q", kv.Key)
				}
				seen[kv.Key] = true
				if !json.Valid(kv.Value) || string(kv.Value) == "null" {
					t.Fatalf("bad value %q for %q", kv.Value, kv.Key)
				}
			}
		}
		// The values never alias the input buffer.
		for i := range payload {
			payload[i] = 'x'
		}
		for _, r := range recs {
			for _, kv := range r.Values {
				if !json.Valid(kv.Value) {
					t.Fatal("value aliases the payload buffer")
				}
			}
		}
	})
}

// FuzzReadPacket drives the packet reading path — fixed header, remaining
// length, body decoding for MQTT 3.1.1 and 5, topic classification and
// payload typing — with arbitrary bytes. None of it may panic.
func FuzzReadPacket(f *testing.F) {
	f.Add([]byte{0x10, 13, 0, 4, 'M', 'Q', 'T', 'T', 4, 2, 0, 30, 0, 1, 'x'}, true)
	f.Add([]byte{0x32, 34, 0, 23, 'v', '1', '/', 'd', 'e', 'v', 'i', 'c', 'e', 's', '/', 'm', 'e', '/', 't', 'e', 'l', 'e', 'm', 'e', 't', 'r', 'y', 0, 1, '{', '"', 'a', '"', ':', '1', '}'}, false)
	f.Add([]byte{0x82, 8, 0, 1, 0, 0, 3, 'v', '2', '/', 'a'}, true)
	f.Add([]byte{0x82, 6, 0, 1, 0, 0, 1, 'a'}, true)
	f.Add([]byte{0xc0, 0}, false)
	f.Add([]byte{0xe0, 2, 0x04, 0}, true)
	f.Add([]byte{0x30, 0xff, 0xff, 0xff, 0xff}, false)
	f.Fuzz(func(t *testing.T, data []byte, v5 bool) {
		r := bytes.NewReader(data)
		for r.Len() > 0 {
			fh, err := readFixedHeader(r)
			if err != nil {
				return
			}
			if fh.Remaining > r.Len() {
				return
			}
			buf := make([]byte, fh.Remaining)
			r.Read(buf)
			pk := packets.Packet{FixedHeader: fh, ProtocolVersion: 4}
			if v5 {
				pk.ProtocolVersion = 5
			}
			if err := decode(&pk, buf); err != nil {
				continue
			}
			switch fh.Type {
			case packets.Connect:
				pk.ConnectValidate()
			case packets.Subscribe:
				pk.SubscribeValidate()
				for _, s := range pk.Filters {
					if _, st, ok := classifyFilter(s.Filter); !ok && st != styleV1 {
						t.Fatalf("style %d for refused filter", st)
					}
				}
			case packets.Publish:
				pk.PublishValidate(0)
				kind, _, _ := classifyPublish(pk.TopicName)
				switch kind {
				case pubTelemetry:
					ParseTelemetry(pk.Payload, 1)
				case pubAttributes:
					ParseAttributes(pk.Payload)
				case pubAttrRequest:
					parseAttrRequest(pk.Payload)
				case pubRPCRequest:
					parseRPC(pk.Payload)
				}
			}
		}
	})
}

func TestParseTelemetryTyping(t *testing.T) {
	recs, err := ParseTelemetry([]byte(` { "i" : 42 , "d":42.0, "big":1234567890123456789, "s":"42", "b":false, "o":{ "x" : [ 1 , "y" ] }, "n":null } `), 5)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"i=42", "d=42.0", "big=1234567890123456789", `s="42"`, "b=false", `o={"x":[1,"y"]}`}
	if len(recs) != 1 || recs[0].TS != 5 || len(recs[0].Values) != len(want) {
		t.Fatalf("records = %+v", recs)
	}
	for i, kv := range recs[0].Values {
		if got := kv.Key + "=" + string(kv.Value); got != want[i] {
			t.Errorf("value %d = %s, want %s", i, got, want[i])
		}
	}
	for _, bad := range []string{``, `1`, `"s"`, `[1]`, `{"a":}`, `{"a":1,}`, `{"a":01}`, `{"a":1.}`, `{"":1}`, `{"a":[1,}`, `{"a":1} x`,
		`{"ts":1.5,"values":{"a":1}}`, `{"ts":-1,"values":{"a":1}}`, `{"a":12345678901234567890}`, `{"a":1e400}`, `{"ts":1,"values":3}`, "{\"a\":\"\x01\"}"} {
		if _, err := ParseTelemetry([]byte(bad), 0); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
}
