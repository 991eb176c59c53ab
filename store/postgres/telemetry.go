package postgres

import (
	"context"
	"encoding/json"
	"fmt"
	"math"

	"github.com/jackc/pgx/v5"

	"github.com/thingline/thingline/store"
	"github.com/thingline/thingline/store/sqldb"
)

// querier is what both the pool and a transaction offer.
type querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// deviceExists guards the telemetry reads: rows a late append wrote for a
// deleted device must stay invisible.
func deviceExists(ctx context.Context, q querier, id int64) (bool, error) {
	var ok bool
	err := q.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM devices WHERE id=$1)", id).Scan(&ok)
	return ok, err
}

// LatestTelemetry returns the newest point (by timestamp) of each key.
func (s *Store) LatestTelemetry(ctx context.Context, deviceID int64, keys []string) (map[string]store.Point, error) {
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	out := map[string]store.Point{}
	err := pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{AccessMode: pgx.ReadOnly, IsoLevel: pgx.RepeatableRead}, func(tx pgx.Tx) error {
		if ok, err := deviceExists(ctx, tx, deviceID); err != nil || !ok {
			return err
		}
		// One backward walk of the (device, ts) index per key: quick for
		// the keys a device sends often, long for a rare one.
		rows, err := tx.Query(ctx, `SELECT k.key, t.ts, t.vals[array_position(t.keys, k.key)]
			FROM device_keys k CROSS JOIN LATERAL (
				SELECT ts, keys, vals FROM telemetry
				WHERE device=k.device AND keys @> ARRAY[k.key] ORDER BY ts DESC LIMIT 1) t
			WHERE k.device=$1 AND (coalesce(cardinality($2::text[]), 0) = 0 OR k.key = ANY($2))`, deviceID, keys)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var k, v string
			var p store.Point
			if err := rows.Scan(&k, &p.TS, &v); err != nil {
				return err
			}
			p.Value = json.RawMessage(v)
			out[k] = p
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("postgres: reading latest telemetry: %w", err)
	}
	return out, nil
}

// QueryTelemetry asks, per key, for the newest (or oldest) limit rows that
// hold the key: each is a walk of the (device, ts) index that stops at its
// LIMIT, and all of them travel in one round trip.
func (s *Store) QueryTelemetry(ctx context.Context, q store.TelemetryQuery) (map[string][]store.Point, error) {
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	limit := sqldb.Limit(q.Limit)
	to := q.To
	if to == 0 {
		to = math.MaxInt64
	}
	out := map[string][]store.Point{}
	err := pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{AccessMode: pgx.ReadOnly, IsoLevel: pgx.RepeatableRead}, func(tx pgx.Tx) error {
		if ok, err := deviceExists(ctx, tx, q.DeviceID); err != nil || !ok {
			return err
		}
		rows, err := tx.Query(ctx, `SELECT key FROM device_keys WHERE device=$1
			AND (coalesce(cardinality($2::text[]), 0) = 0 OR key = ANY($2))`, q.DeviceID, q.Keys)
		if err != nil {
			return err
		}
		keys, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return err
		}
		if len(keys) == 0 {
			return nil
		}
		order := "DESC"
		if q.Asc {
			order = "ASC"
		}
		b := &pgx.Batch{}
		for _, k := range keys {
			b.Queue(`SELECT ts, vals[array_position(keys, $4)] FROM telemetry
				WHERE device=$1 AND ts BETWEEN $2 AND $3 AND keys @> ARRAY[$4::text]
				ORDER BY ts `+order+` LIMIT $5`, q.DeviceID, q.From, to, k, limit)
		}
		br := tx.SendBatch(ctx, b)
		defer br.Close()
		for _, k := range keys {
			rows, err := br.Query()
			if err != nil {
				return err
			}
			for rows.Next() {
				var p store.Point
				var v string
				if err := rows.Scan(&p.TS, &v); err != nil {
					rows.Close()
					return err
				}
				p.Value = json.RawMessage(v)
				out[k] = append(out[k], p)
			}
			rows.Close()
			if err := rows.Err(); err != nil {
				return err
			}
		}
		return br.Close()
	})
	if err != nil {
		return nil, fmt.Errorf("postgres: querying telemetry: %w", err)
	}
	return out, nil
}
