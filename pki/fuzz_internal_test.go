package pki

import "testing"

func FuzzParseRevocations(f *testing.F) {
	f.Add([]byte(`{"crl_number":3,"revoked":[{"serial":"0A","revoked_at":"2026-01-02T03:04:05Z","reason":"keyCompromise"}]}`))
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"revoked":[{"serial":"-1"}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := parseRevocations(b)
		if err != nil {
			return
		}
		for _, x := range r.Revoked {
			if _, ok := r.Find(x.Serial); !ok {
				t.Fatalf("Find misses its own serial %q", x.Serial)
			}
			if _, err := ReasonCode(x.Reason); err != nil {
				t.Fatal(err)
			}
		}
	})
}
