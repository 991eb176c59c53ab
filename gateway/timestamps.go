package gateway

import (
	"fmt"
	"time"

	"github.com/thingline/thingline/store"
)

// timestampsOutside tells, as the refusal's message, why a record's
// timestamp lies outside the accepted window around now; "" when all fit.
func (s *Server) timestampsOutside(recs []store.Record, now time.Time) string {
	ms := now.UnixMilli()
	ahead := ms + s.cfg.MaxTimestampAhead.Milliseconds()
	var oldest int64
	if s.cfg.MaxTimestampAge > 0 {
		oldest = ms - s.cfg.MaxTimestampAge.Milliseconds()
	}
	for _, r := range recs {
		switch {
		case r.TS > ahead:
			return fmt.Sprintf("ts %d is more than %v ahead of the server's clock (%d)", r.TS, s.cfg.MaxTimestampAhead, ms)
		case r.TS < oldest:
			return fmt.Sprintf("ts %d is more than %v behind the server's clock (%d)", r.TS, s.cfg.MaxTimestampAge, ms)
		}
	}
	return ""
}
