package sqldb

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/thingline/thingline/store"
)

// The audit trail: a backend's table events, which outlives the devices it
// names (by name, not ID). Retention trims it (retention.go).

const eventCols = "time, device, kind, reason, addr, node, detail"

// eventDetail checks an event's detail and gives it in the form stored.
func eventDetail(e store.Event) (any, error) {
	if len(e.Detail) == 0 {
		return nil, nil
	}
	if !json.Valid(e.Detail) {
		return nil, errors.New("detail is not JSON")
	}
	return string(e.Detail), nil
}

func eventArgs(e store.Event, detail any) []any {
	return []any{ToNS(orNow(e.Time)), e.Device, e.Kind, e.Reason, e.Addr, e.Node, detail}
}

func insertEvent(ctx context.Context, ex execer, e store.Event, detail any) error {
	_, err := ex.Exec(ctx, "INSERT INTO events("+eventCols+") VALUES (?, ?, ?, ?, ?, ?, ?)", eventArgs(e, detail)...)
	return err
}

// AddEvent implements store.Events.
func (t *Tables) AddEvent(ctx context.Context, e store.Event) error {
	detail, err := eventDetail(e)
	if err == nil {
		err = insertEvent(ctx, t.db, e, detail)
	}
	if err != nil {
		return fmt.Errorf("sqldb: adding event: %w", err)
	}
	return nil
}

// AddEvents implements store.Events: the events land together, in order.
func (t *Tables) AddEvents(ctx context.Context, es []store.Event) error {
	if len(es) == 0 {
		return nil
	}
	var args []any
	for _, e := range es {
		d, err := eventDetail(e)
		if err != nil {
			return fmt.Errorf("sqldb: adding events: %w", err)
		}
		args = append(args, eventArgs(e, d)...)
	}
	err := t.db.Write(ctx, func(ctx context.Context, tx *Tx) error {
		return insertRows(ctx, tx, "INSERT INTO events("+eventCols+")", "", 7, args)
	})
	if err != nil {
		return fmt.Errorf("sqldb: adding events: %w", err)
	}
	return nil
}

// ListEvents implements store.Events: newest first, paged by ID.
func (t *Tables) ListEvents(ctx context.Context, q store.EventQuery) ([]store.Event, error) {
	var where []string
	var args []any
	if q.Device != "" {
		where, args = append(where, "device=?"), append(args, q.Device)
	}
	if q.Kind != "" {
		where, args = append(where, "kind=?"), append(args, q.Kind)
	}
	if q.Before > 0 {
		where, args = append(where, "id<?"), append(args, q.Before)
	}
	query := "SELECT id, " + eventCols + " FROM events"
	if len(where) > 0 {
		query += " WHERE " + strings.Join(where, " AND ")
	}
	rows, err := t.db.Query(ctx, query+" ORDER BY id DESC LIMIT ?", append(args, Limit(q.Limit))...)
	out, err := collect(rows, err, func(r rowScanner) (store.Event, error) {
		var e store.Event
		var at int64
		var detail sql.NullString
		err := r.Scan(&e.ID, &at, &e.Device, &e.Kind, &e.Reason, &e.Addr, &e.Node, &detail)
		e.Time = FromNS(at)
		if detail.Valid {
			e.Detail = json.RawMessage(detail.String)
		}
		return e, err
	})
	if err != nil {
		return nil, fmt.Errorf("sqldb: listing events: %w", err)
	}
	return out, nil
}
