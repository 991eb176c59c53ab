package gateway

import (
	"context"
	"testing"
	"time"

	"github.com/thingline/thingline/pki"
	"github.com/thingline/thingline/store"
)

// TestRevocationReloadWithoutNotice: a revocation whose bus notice never
// came (written to the store only) still ends the session and refuses the
// certificate, at the next reload.
func TestRevocationReloadWithoutNotice(t *testing.T) {
	e := newEnv(t, func(e *env, c *Config) { c.RevocationReload = 100 * time.Millisecond })
	cert, leaf := e.inter.device(t, "SN-RELOAD")
	c := e.v3(t, cert)
	c.pub(t, "v1/devices/me/telemetry", `{"t":1}`)
	if err := e.st.Revoke(context.Background(), store.Revocation{Serial: pki.SerialHex(leaf), Reason: "keyCompromise"}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.lost:
	case <-time.After(10 * time.Second):
		t.Fatal("the session of a certificate revoked in the store was not closed")
	}
	if _, _, err := e.tryV5(cert); err == nil {
		t.Fatal("a revoked certificate connected again")
	}
	e.waitEvent(t, "SN-RELOAD", store.EventRefused, ReasonRevoked)
}
