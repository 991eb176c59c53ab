// Package alarm raises, acknowledges and clears device alarms, keeps the
// online/offline state of devices with their inactivity timeout, and
// evaluates the alarm rules of device profiles on incoming telemetry.
//
// Every change of an alarm is recorded in the store (store.Alarms, whose
// partial unique index de-duplicates raises across nodes) and announced
// on bus.TopicAlarms as a store.AlarmNotice. See docs/alarms.md.
package alarm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/thingline/thingline/bus"
	"github.com/thingline/thingline/store"
)

// Service raises and clears alarms. It keeps no state of its own: any
// number of them, on any number of nodes, can work on the same store.
type Service struct {
	st  store.Store
	bus bus.Bus
	log *slog.Logger
	now func() time.Time
}

// NewService returns a Service on st that announces changes on b. log may
// be nil.
func NewService(st store.Store, b bus.Bus, log *slog.Logger) *Service {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Service{st: st, bus: b, log: log, now: time.Now}
}

// Raise raises an alarm of typ on the named device, or folds the raise
// into the active alarm of that device and type (see store.Alarms).
// detail is marshalled to JSON (a json.RawMessage is kept as it is); nil
// means none.
func (s *Service) Raise(ctx context.Context, device, typ string, sev store.Severity, detail any) (store.Alarm, error) {
	d, err := s.st.GetDevice(ctx, device)
	if err != nil {
		return store.Alarm{}, fmt.Errorf("alarm: raising %s on %s: %w", typ, device, err)
	}
	return s.RaiseDevice(ctx, d, typ, sev, detail)
}

// RaiseDevice is Raise for a device record already at hand.
func (s *Service) RaiseDevice(ctx context.Context, d store.Device, typ string, sev store.Severity, detail any) (store.Alarm, error) {
	var raw json.RawMessage
	switch v := detail.(type) {
	case nil:
	case json.RawMessage:
		raw = v
	default:
		b, err := json.Marshal(v)
		if err != nil {
			return store.Alarm{}, fmt.Errorf("alarm: raising %s on %s: detail: %w", typ, d.Name, err)
		}
		raw = b
	}
	a, created, err := s.st.RaiseAlarm(ctx, store.AlarmRaise{DeviceID: d.ID, Device: d.Name, Type: typ, Severity: sev, Detail: raw, Time: s.now()})
	if err != nil {
		return store.Alarm{}, fmt.Errorf("alarm: raising %s on %s: %w", typ, d.Name, err)
	}
	op := store.AlarmOpUpdated
	if created {
		op = store.AlarmOpRaised
		s.log.Info("alarm raised", "device", d.Name, "type", typ, "severity", sev, "id", a.ID)
	}
	Announce(ctx, s.bus, op, a)
	return a, nil
}

// Clear clears the active alarm of typ on the named device. cleared is
// false (and err nil) when there was none.
func (s *Service) Clear(ctx context.Context, device, typ string) (a store.Alarm, cleared bool, err error) {
	d, err := s.st.GetDevice(ctx, device)
	if err != nil {
		return store.Alarm{}, false, fmt.Errorf("alarm: clearing %s on %s: %w", typ, device, err)
	}
	return s.ClearDevice(ctx, d.ID, typ, "system")
}

// ClearDevice clears the active alarm of typ on the device with id, on
// behalf of by.
func (s *Service) ClearDevice(ctx context.Context, id int64, typ, by string) (store.Alarm, bool, error) {
	a, err := s.st.ClearActiveAlarm(ctx, id, typ, by, s.now())
	if errors.Is(err, store.ErrNotFound) {
		return store.Alarm{}, false, nil
	}
	if err != nil {
		return store.Alarm{}, false, fmt.Errorf("alarm: clearing %s on device %d: %w", typ, id, err)
	}
	s.log.Info("alarm cleared", "device", a.Device, "type", typ, "id", a.ID, "by", by)
	Announce(ctx, s.bus, store.AlarmOpCleared, a)
	return a, true, nil
}

// Ack acknowledges the alarm with id on behalf of by.
func (s *Service) Ack(ctx context.Context, id int64, by string) (store.Alarm, error) {
	a, changed, err := s.st.AckAlarm(ctx, id, by, s.now())
	if err != nil {
		return a, fmt.Errorf("alarm: acknowledging %d: %w", id, err)
	}
	if changed {
		Announce(ctx, s.bus, store.AlarmOpAcked, a)
	}
	return a, nil
}

// ClearID clears the alarm with id on behalf of by.
func (s *Service) ClearID(ctx context.Context, id int64, by string) (store.Alarm, error) {
	a, changed, err := s.st.ClearAlarm(ctx, id, by, s.now())
	if err != nil {
		return a, fmt.Errorf("alarm: clearing %d: %w", id, err)
	}
	if changed {
		Announce(ctx, s.bus, store.AlarmOpCleared, a)
	}
	return a, nil
}

// Announce publishes what happened to a on bus.TopicAlarms. A failed
// publish is not an error of the change (the store has it): live viewers
// miss one notice.
func Announce(ctx context.Context, b bus.Bus, op string, a store.Alarm) {
	n := store.AlarmNotice{Device: a.Device, TS: time.Now().UnixMilli(), Op: op, Alarm: a}
	data, err := json.Marshal(n)
	if err != nil {
		return
	}
	b.Publish(ctx, bus.TopicAlarms, data)
}
