package gateway

import (
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/thingline/thingline/store"
	"github.com/thingline/thingline/tstest"
)

// TestBadCommonNamesRefused: a certificate whose CN cannot safely name a
// device is refused at CONNECT with a bad-cn refusal event, before the
// profile's "(.*)" could take it, and no device is created.
func TestBadCommonNamesRefused(t *testing.T) {
	e := newEnv(t, nil)
	twoCNs := func(c *x509.Certificate) {
		c.Subject.ExtraNames = []pkix.AttributeTypeAndValue{
			{Type: asn1.ObjectIdentifier{2, 5, 4, 3}, Value: "SN-VICTIM"},
			{Type: asn1.ObjectIdentifier{2, 5, 4, 3}, Value: "SN-OTHER"},
		}
	}
	cases := []struct {
		name, cn string
		opts     []leafOpt
	}{
		{"trailing space", "SN-1 ", nil},
		{"leading space", " SN-1", nil},
		{"newline", "SN-1\nlevel=ERROR", nil},
		{"NUL", "SN-1\x00", nil},
		{"escape", "SN-\x1b[31m1", nil},
		{"bidi override", "SN-\u202e1", nil},
		{"zero width", "SN-\u200b1", nil},
		{"too long", strings.Repeat("A", 129), nil},
		{"empty", "", nil},
		{"two CNs", "", []leafOpt{twoCNs}},
	}
	for _, tc := range cases {
		cert, _ := e.inter.device(t, tc.cn, tc.opts...)
		conn, code, err := dialConnect(e, cert, 60)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		conn.Close()
		if code != v3NotAuthorized {
			t.Errorf("%s: CONNACK %d, want %d (not authorized)", tc.name, code, v3NotAuthorized)
		}
	}
	// The longest allowed name still works.
	okCert, _ := e.inter.device(t, strings.Repeat("B", 128))
	conn, code, err := dialConnect(e, okCert, 60)
	if err != nil || code != 0 {
		t.Fatalf("a 128-byte CN: %v, CONNACK %d", err, code)
	}
	conn.Close()

	tstest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		evs, err := e.st.ListEvents(context.Background(), store.EventQuery{Kind: store.EventRefused, Limit: 100})
		if err != nil {
			return err
		}
		n := 0
		for _, ev := range evs {
			if ev.Reason == ReasonBadCN {
				n++
			}
		}
		if n != len(cases) {
			return fmt.Errorf("bad-cn refusals recorded: %d, want %d", n, len(cases))
		}
		return nil
	})
	ds, err := e.st.ListDevices(context.Background(), store.ListOptions{Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	if len(ds) != 1 || ds[0].Name != strings.Repeat("B", 128) {
		var names []string
		for _, d := range ds {
			names = append(names, d.Name)
		}
		t.Errorf("devices after the refusals: %q, want only the 128-byte one", names)
	}
}
