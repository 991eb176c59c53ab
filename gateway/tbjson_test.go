package gateway

import (
	"fmt"
	"strings"
	"testing"
)

// TestKeyCache checks that a session's key cache changes nothing in what
// is parsed, saves the key allocations of a device's usual message, and
// stops growing for a device that invents keys.
func TestKeyCache(t *testing.T) {
	msg := []byte(`{"ts":1700000000000,"values":{"temperature":23.5,"humidity":56,"seq":7}}`)
	keys := keyCache{}
	for range 2 {
		recs, err := parseTelemetry(msg, 0, keys, nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) != 1 || recs[0].TS != 1700000000000 || len(recs[0].Values) != 3 ||
			recs[0].Values[0].Key != "temperature" || string(recs[0].Values[0].Value) != "23.5" ||
			recs[0].Values[2].Key != "seq" || string(recs[0].Values[2].Value) != "7" {
			t.Fatalf("parsed with the cache: %+v", recs)
		}
	}
	without := testing.AllocsPerRun(100, func() { ParseTelemetry(msg, 0) })
	with := testing.AllocsPerRun(100, func() { parseTelemetry(msg, 0, keys, nil) })
	// Five keys: ts, values and the three values' keys.
	if with > without-5 {
		t.Errorf("allocations per message: %v with the cache, %v without; want 5 fewer", with, without)
	}

	var b strings.Builder
	b.WriteString("{")
	for i := range 3 * maxCachedKeys {
		fmt.Fprintf(&b, `"k%d":%d,`, i, i)
	}
	b.WriteString(`"last":1}`)
	recs, err := parseTelemetry([]byte(b.String()), 0, keys, nil)
	if err != nil || len(recs) != 1 || len(recs[0].Values) != 3*maxCachedKeys+1 {
		t.Fatalf("many keys: %d values, %v", len(recs[0].Values), err)
	}
	if len(keys) > maxCachedKeys {
		t.Errorf("cache holds %d keys, more than %d", len(keys), maxCachedKeys)
	}
}
