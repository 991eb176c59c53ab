package gateway

import (
	"context"
	"time"
)

// DefaultRevocationReload is how often the deny-list is read again from
// the store.
const DefaultRevocationReload = time.Minute

// reloadRevocations keeps the in-memory deny-list in step with the store
// even when a notice on bus.TopicRevocations was lost (a NATS reconnect,
// a node that was starting): every period it reads the revocations again,
// adds the new ones and closes the sessions presenting them. Notices stay
// the fast path (well under a second); this bounds the slow one.
func (s *Server) reloadRevocations(stop <-chan struct{}) {
	defer s.evWG.Done()
	t := time.NewTicker(s.cfg.RevocationReload)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.RevocationReload)
		revs, err := s.st.ListRevocations(ctx)
		cancel()
		if err != nil {
			s.log.Warn("gateway: reloading revocations", "err", err)
			continue
		}
		for _, r := range revs {
			serial := normalizeSerial(r.Serial)
			if !s.isRevoked(serial) {
				s.addRevocation(serial)
				s.closeRevoked(serial)
			}
		}
	}
}
