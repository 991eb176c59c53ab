package pki

import (
	"errors"
	"strings"
	"testing"
)

func TestCheckCN(t *testing.T) {
	for _, cn := range []string{"SN-000001", "Ünit 7", strings.Repeat("x", MaxCNLength), "a b"} {
		if err := CheckCN(cn); err != nil {
			t.Errorf("CheckCN(%q) = %v, want nil", cn, err)
		}
	}
	for _, cn := range []string{"", " a", "a ", "a\t", "\u00a0a", "a\nb", "a\x00", "a\x7f", "a\u0085b", "a\u202eb", "a\u200bb", "a\ufeff",
		"\xff\xfe", strings.Repeat("x", MaxCNLength+1)} {
		if err := CheckCN(cn); !errors.Is(err, ErrBadCN) {
			t.Errorf("CheckCN(%q) = %v, want ErrBadCN", cn, err)
		}
	}
}
