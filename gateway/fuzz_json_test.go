package gateway

import (
	"encoding/json"
	"testing"
)

// FuzzParseAttributes: client attribute publishes. Whatever is accepted
// is a JSON object and every stored value is JSON with its numbers in range.
func FuzzParseAttributes(f *testing.F) {
	for _, s := range []string{
		`{"fw":"1.0","mac":"aa:bb","ok":true}`, `{"a":{"b":[1,2,{"c":"d"}]}}`, `{"n":1e308,"i":-9223372036854775808}`,
		`{"big":1e400}`, `{"a":null}`, `{}`, `[]`, `{"a":1}x`, "{\"\xff\":1}",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		kv, err := ParseAttributes(payload)
		if err != nil {
			return
		}
		if !json.Valid(payload) {
			t.Fatalf("accepted invalid JSON %q", payload)
		}
		for _, x := range kv {
			if x.Key == "" || !json.Valid(x.Value) {
				t.Fatalf("bad key/value %q=%q", x.Key, x.Value)
			}
			if err := nestedNumbersInRange(x.Value); err != nil {
				t.Fatalf("accepted %q: %v", x.Value, err)
			}
		}
	})
}

// FuzzParseRequests: the JSON of attribute requests and client-side RPC
// requests. Neither may panic; an accepted request has a method or keys.
func FuzzParseRequests(f *testing.F) {
	for _, s := range []string{
		`{"clientKeys":"a,b","sharedKeys":"c"}`, `{"method":"getTime","params":{}}`, `{"method":""}`, `{"sharedKeys":1}`, `null`, `[`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		parseAttrRequest(payload)
		if req, err := parseRPC(payload); err == nil && !json.Valid(payload) {
			t.Fatalf("accepted RPC %+v from invalid JSON %q", req, payload)
		}
	})
}

// FuzzNumberInRange: numberInRange agrees with encoding/json about which
// numbers a float64 can hold.
func FuzzNumberInRange(f *testing.F) {
	for _, s := range []string{"0", "-1", "1e308", "1e309", "-1e400", "9223372036854775807", "9223372036854775808", "1.5", "5e-324"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		var n json.Number
		if json.Unmarshal([]byte(s), &n) != nil || string(n) != s {
			return // not a lone JSON number
		}
		err := numberInRange([]byte(s))
		var fl float64
		if err == nil && json.Unmarshal([]byte(s), &fl) != nil {
			t.Fatalf("%s accepted but no float64 holds it", s)
		}
	})
}
