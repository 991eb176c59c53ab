package gateway

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/thingline/thingline/store"
)

// TestTimestampsAndNumbersOutsideRange: telemetry stamped more than the
// window ahead of (or, when configured, behind) the server's clock, and
// numbers beyond float64 or integers beyond int64, anywhere in a message,
// are refused with a reason and nothing of the message is stored.
func TestTimestampsAndNumbersOutsideRange(t *testing.T) {
	e := newEnv(t, func(_ *env, cfg *Config) { cfg.MaxTimestampAge = 365 * 24 * time.Hour })
	cert, _ := e.inter.device(t, "SN-DATA")
	c := e.v5(t, cert)
	now := time.Now().UnixMilli()
	day := (24 * time.Hour).Milliseconds()
	cases := []struct {
		payload string
		reason  string
	}{
		{fmt.Sprintf(`{"ts":%d,"values":{"future":1}}`, now+day+10*60*1000), "rejected.timestamp"},
		{fmt.Sprintf(`[{"ts":%d,"values":{"ok":1}},{"ts":%d,"values":{"future":2}}]`, now, now+2*day), "rejected.timestamp"},
		{fmt.Sprintf(`{"ts":%d,"values":{"ancient":1}}`, now-2*365*day), "rejected.timestamp"},
		{`{"ts":9223372036854775807,"values":{"future":3}}`, "rejected.timestamp"},
		{`{"big":1e400}`, "rejected.payload-format"},
		{`{"big":-1e309}`, "rejected.payload-format"},
		{`{"big":9223372036854775808}`, "rejected.payload-format"},
		{`{"big":-9223372036854775809}`, "rejected.payload-format"},
		{`{"big":{"inner":[1,2,1e999]}}`, "rejected.payload-format"},
		{`{"big":[18446744073709551616]}`, "rejected.payload-format"},
		{`{"big":1` + strings.Repeat("0", 400) + `.5}`, "rejected.payload-format"},
		{`{"ts":99999999999999999999,"values":{"future":4}}`, "rejected.payload-format"},
	}
	counts := map[string]int64{}
	for _, tc := range cases {
		if code := c.pub(t, "v1/devices/me/telemetry", tc.payload); code != codePayloadFormat {
			t.Errorf("%.60s: PUBACK %#x, want %#x", tc.payload, code, codePayloadFormat)
		}
		counts[tc.reason]++
	}
	// At the edges: accepted.
	good := []string{
		fmt.Sprintf(`{"ts":%d,"values":{"edge":1}}`, now+day-60*1000),
		`{"max":9223372036854775807,"min":-9223372036854775808,"f":1.7976931348623157e308,"tiny":5e-324}`,
		`{"nested":{"a":[9223372036854775807,1e308]}}`,
	}
	for _, p := range good {
		if code := c.pub(t, "v1/devices/me/telemetry", p); code != 0 {
			t.Errorf("%.60s: PUBACK %#x, want success", p, code)
		}
	}
	for reason, n := range counts {
		e.waitCounter(t, "SN-DATA", reason, n)
	}
	d := e.device(t, "SN-DATA")
	pts, err := e.st.LatestTelemetry(context.Background(), d.ID, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"future", "ancient", "big", "ok"} {
		if p, ok := pts[k]; ok {
			t.Errorf("refused value %q stored: %s", k, p.Value)
		}
	}
	for _, k := range []string{"edge", "max", "min", "f", "tiny", "nested"} {
		if _, ok := pts[k]; !ok {
			t.Errorf("accepted value %q not stored (have %v)", k, pts)
		}
	}
	e.waitEvent(t, "SN-DATA", store.EventBadInput, badTime)
}
