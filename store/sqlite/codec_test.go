package sqlite

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/thingline/thingline/store"
)

func TestCodecRoundTrip(t *testing.T) {
	recs := []store.Record{
		{TS: 1700000000123, Values: []store.KV{{Key: "temp", Value: json.RawMessage(`23.5`)}, {Key: "s", Value: json.RawMessage(`"x"`)}}},
		{TS: -5, Values: nil},
		{TS: 0, Values: []store.KV{{Key: "", Value: json.RawMessage(`{"a":[1,2]}`)}}},
	}
	var raw []byte
	for _, r := range recs {
		raw = appendRecord(raw, r.TS, appendKVs(nil, r.Values))
	}
	got, err := decodeChunk(encodeChunk(raw))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(recs) {
		t.Fatalf("decoded %d records; want %d", len(got), len(recs))
	}
	for i := range recs {
		if got[i].TS != recs[i].TS || len(got[i].Values) != len(recs[i].Values) {
			t.Fatalf("record %d = %+v; want %+v", i, got[i], recs[i])
		}
		for j, kv := range recs[i].Values {
			if got[i].Values[j].Key != kv.Key || !bytes.Equal(got[i].Values[j].Value, kv.Value) {
				t.Errorf("record %d value %d = %s=%s; want %s=%s", i, j, got[i].Values[j].Key, got[i].Values[j].Value, kv.Key, kv.Value)
			}
		}
	}
	chunk := append([]byte{chunkRaw}, raw...)
	if _, err := decodeChunk(chunk); err != nil {
		t.Errorf("raw chunk: %v", err)
	}
	for n := range len(chunk) {
		if _, err := decodeChunk(chunk[:n]); err == nil && n > 1 {
			// A truncation can land on a record boundary and decode fine:
			// only the boundaries may.
			if n != 1+len(appendRecord(nil, recs[0].TS, appendKVs(nil, recs[0].Values))) &&
				n != len(chunk)-len(appendRecord(nil, recs[2].TS, appendKVs(nil, recs[2].Values))) {
				t.Errorf("truncated chunk (%d of %d bytes) decoded without error", n, len(chunk))
			}
		}
	}
}

// FuzzDecodeChunk: chunk blobs are read back from the database file, which
// may be damaged; the decoder must fail cleanly, and what it accepts must
// re-encode to the same bytes.
func FuzzDecodeChunk(f *testing.F) {
	rec := appendRecord(nil, 1700000000000, appendKVs(nil, []store.KV{{Key: "t", Value: json.RawMessage("1")}}))
	f.Add([]byte{})
	f.Add(append([]byte{chunkRaw}, rec...))
	f.Add(encodeChunk(bytes.Repeat(rec, 50)))
	f.Add([]byte{chunkRaw, 0x02, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Add([]byte{chunkRaw, 0x00, 0x01, 0x05, 'a'})
	f.Fuzz(func(t *testing.T, b []byte) {
		recs, err := decodeChunk(b)
		if err != nil || len(b) == 0 || b[0] != chunkRaw {
			return
		}
		var again []byte
		for _, r := range recs {
			again = appendRecord(again, r.TS, appendKVs(nil, r.Values))
		}
		if !bytes.Equal(again, b[1:]) {
			// Varints have non-minimal encodings that decode to the same
			// value; what matters is that the decoded records are stable.
			recs2, err := decodeChunk(append([]byte{chunkRaw}, again...))
			if err != nil || len(recs2) != len(recs) {
				t.Fatalf("re-encoded chunk does not decode to the same records: %v", err)
			}
		}
	})
}

// FuzzLogRecords covers the ingest log rows, read back at every open.
func FuzzLogRecords(f *testing.F) {
	f.Add(appendLogRecord(nil, 7, 1700000000000, appendKVs(nil, []store.KV{{Key: "t", Value: json.RawMessage("1")}})))
	f.Add([]byte{0x80})
	f.Add([]byte{0x01, 0x02, 0x03, 0x01, 0x00, 0x7f})
	f.Fuzz(func(t *testing.T, b []byte) {
		n := 0
		err := eachLogRecord(b, func(dev, ts int64, kvs []byte) {
			n++
			if err := eachKV(kvs, func(_, _ []byte) {}); err != nil {
				t.Fatalf("eachLogRecord passed on kvs that eachKV refuses: %v", err)
			}
		})
		if err == nil && len(b) > 0 && n == 0 {
			t.Fatal("non-empty log row decoded to no record")
		}
	})
}
