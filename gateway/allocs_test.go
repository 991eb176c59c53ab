package gateway

import (
	"testing"
)

// TestParseIntoWork checks that the usual message, one record, is parsed
// into the room its work holds, one allocation fewer than into a new slice.
func TestParseIntoWork(t *testing.T) {
	msg := []byte(`{"temperature":23.5,"humidity":56}`)
	keys := keyCache{}
	var w work
	recs, err := parseTelemetry(msg, 7, keys, w.one[:0:1])
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1 || &recs[0] != &w.one[0] || recs[0].TS != 7 || len(recs[0].Values) != 2 {
		t.Fatalf("parsed %+v; want one record in the work's room", recs)
	}
	into := testing.AllocsPerRun(100, func() { parseTelemetry(msg, 7, keys, w.one[:0:1]) })
	fresh := testing.AllocsPerRun(100, func() { parseTelemetry(msg, 7, keys, nil) })
	if into != fresh-1 {
		t.Errorf("allocations per message: %v into the work, %v into a new slice; want one fewer", into, fresh)
	}
	// Two records outgrow the room: both are returned, in a slice of their own.
	recs, err = parseTelemetry([]byte(`[{"a":1},{"b":2}]`), 8, keys, w.one[:0:1])
	if err != nil || len(recs) != 2 || recs[0].Values[0].Key != "a" || recs[1].Values[0].Key != "b" || &recs[0] == &w.one[0] {
		t.Fatalf("two records: %+v, %v", recs, err)
	}
}
