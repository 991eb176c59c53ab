package wifiprov

import (
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
)

func TestAssocRoundTrip(t *testing.T) {
	u, s, err := DecodeAssocRequest(EncodeAssocRequest("42", "s3cret"))
	if err != nil || u != "42" || s != "s3cret" {
		t.Fatalf("request: %q %q %v", u, s, err)
	}
	st, node, err := DecodeAssocResponse(EncodeAssocResponse(AssocInvalidState, "SN-1"))
	if err != nil || st != AssocInvalidState || node != "SN-1" {
		t.Fatalf("response: %d %q %v", st, node, err)
	}
	// Bytes as RainMaker's generated code writes them: msg=0 omitted,
	// field 10 holding UserID (1) and SecretKey (2).
	want := []byte{0x52, 0x0a, 0x0a, 0x02, '4', '2', 0x12, 0x04, 'a', 'b', 'c', 'd'}
	if got := EncodeAssocRequest("42", "abcd"); string(got) != string(want) {
		t.Errorf("request bytes % x, want % x", got, want)
	}
	// Unknown fields are skipped.
	b := protowire.AppendTag(EncodeAssocRequest("7", "k"), 99, protowire.VarintType)
	b = protowire.AppendVarint(b, 1)
	if u, _, err := DecodeAssocRequest(b); err != nil || u != "7" {
		t.Errorf("with unknown field: %q %v", u, err)
	}
	for _, bad := range [][]byte{nil, {0xff}, EncodeAssocResponse(0, "x"), EncodeAssocRequest("", "k"), {0x52, 0x05, 0x0a}} {
		if _, _, err := DecodeAssocRequest(bad); err == nil {
			t.Errorf("accepted % x", bad)
		}
	}
}

func FuzzAssoc(f *testing.F) {
	f.Add(EncodeAssocRequest("1", "x"))
	f.Add(EncodeAssocResponse(1, "n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		DecodeAssocRequest(b)
		DecodeAssocResponse(b)
	})
}
