package pki_test

import (
	"errors"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"github.com/thingline/thingline/pki"
)

// FuzzCheckCN: whatever CheckCN accepts has none of the characters it
// exists to keep out.
func FuzzCheckCN(f *testing.F) {
	for _, s := range []string{"SN-000001", " SN", "SN\n", "\u202e", strings.Repeat("a", 200)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, cn string) {
		err := pki.CheckCN(cn)
		if err != nil {
			if !errors.Is(err, pki.ErrBadCN) {
				t.Fatalf("error %v does not wrap ErrBadCN", err)
			}
			return
		}
		if len(cn) == 0 || len(cn) > pki.MaxCNLength || !utf8.ValidString(cn) || strings.TrimSpace(cn) != cn {
			t.Fatalf("accepted %q", cn)
		}
		for _, r := range cn {
			if unicode.IsControl(r) || unicode.Is(unicode.Cf, r) {
				t.Fatalf("accepted %q with %U", cn, r)
			}
		}
	})
}
