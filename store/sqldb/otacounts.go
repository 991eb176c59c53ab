package sqldb

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"

	"github.com/thingline/thingline/store"
)

// A rollout's members counted by wave and state, so that the engine's tick
// reads a few rows per rollout instead of every member.
//
// Exactness: ota_rollout_counts is, at every commit, the GROUP BY of
// ota_rollout_devices on (rollout_id, wave, state). Every write of a
// membership's state goes through setMember, which writes over the state
// it read (a compare-and-set on the membership row) and records the move
// in a tally; the tally is added to the counts in the same transaction,
// as increments (n = n + delta), never as values read and written back.
// Under PostgreSQL's read committed a concurrent writer of the same
// membership makes the compare-and-set fail and setMember read again, and
// concurrent increments of one count row wait for each other's row lock;
// SQLite has one writer. The counts are written last in a transaction and
// in key order, so two transactions never hold count rows the other waits
// for, and never wait for a device row while holding one.
func init() {
	Register(Migration{Name: "ota/004", SQL: `
CREATE TABLE ota_rollout_counts (
  rollout_id BIGINT NOT NULL,
  wave INTEGER NOT NULL,
  state TEXT NOT NULL,
  n BIGINT NOT NULL,
  PRIMARY KEY (rollout_id, wave, state)
);
INSERT INTO ota_rollout_counts(rollout_id, wave, state, n)
 SELECT rollout_id, wave, state, count(*) FROM ota_rollout_devices GROUP BY rollout_id, wave, state`})
}

// countKey is one row of ota_rollout_counts.
type countKey struct {
	rollout int64
	wave    int
	state   string
}

// tally collects the count changes of one transaction.
type tally map[countKey]int

// move records that one member of a rollout's wave went from state from
// to state to; an empty state is no membership (created or deleted).
func (c tally) move(rollout int64, wave int, from, to string) {
	if from == to {
		return
	}
	if from != "" {
		c[countKey{rollout, wave, from}]--
	}
	if to != "" {
		c[countKey{rollout, wave, to}]++
	}
}

// apply adds the tally to the counts, one statement per changed count,
// in key order (see the top of the file for why).
func (c tally) apply(ctx context.Context, tx *Tx) error {
	keys := make([]countKey, 0, len(c))
	for k, d := range c {
		if d != 0 {
			keys = append(keys, k)
		}
	}
	slices.SortFunc(keys, func(a, b countKey) int {
		return cmp.Or(cmp.Compare(a.rollout, b.rollout), cmp.Compare(a.wave, b.wave), cmp.Compare(a.state, b.state))
	})
	for _, k := range keys {
		if _, err := tx.Exec(ctx, `INSERT INTO ota_rollout_counts(rollout_id, wave, state, n) VALUES (?,?,?,?)
 ON CONFLICT (rollout_id, wave, state) DO UPDATE SET n = ota_rollout_counts.n + excluded.n`,
			k.rollout, k.wave, k.state, c[k]); err != nil {
			return fmt.Errorf("counting rollout %d: %w", k.rollout, err)
		}
	}
	clear(c)
	return nil
}

// setMember writes a membership's state, error and time and counts the
// move, unless keep says to leave the state read as it is (keep nil
// writes whatever the state). A device without that membership is no
// error: there is nothing to write or count.
func setMember(ctx context.Context, tx *Tx, c tally, rollout, device int64, state, errText string, at int64, keep func(old string) bool) error {
	for range 10 {
		var wave int
		var old string
		err := tx.QueryRow(ctx, "SELECT wave, state FROM ota_rollout_devices WHERE rollout_id=? AND device_id=?",
			rollout, device).Scan(&wave, &old)
		if errors.Is(err, sql.ErrNoRows) {
			return nil
		}
		if err != nil {
			return err
		}
		if keep != nil && keep(old) {
			return nil
		}
		res, err := tx.Exec(ctx, `UPDATE ota_rollout_devices SET state=?, error=?, updated_at=?
 WHERE rollout_id=? AND device_id=? AND state=?`, state, errText, at, rollout, device, old)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n == 1 {
			c.move(rollout, wave, old, state)
			return nil
		}
		// Another transaction changed the state since we read it.
	}
	return fmt.Errorf("membership of device %d in rollout %d kept changing", device, rollout)
}

// purgeMembers deletes a device's memberships and uncounts them. It
// counts the rows as deleted (RETURNING), not as read before, so that a
// membership changed meanwhile is uncounted in its last state.
func purgeMembers(ctx context.Context, tx *Tx, device int64) error {
	rows, err := tx.Query(ctx, "DELETE FROM ota_rollout_devices WHERE device_id=? RETURNING rollout_id, wave, state", device)
	if err != nil {
		return err
	}
	c := tally{}
	for rows.Next() {
		var k countKey
		if err := rows.Scan(&k.rollout, &k.wave, &k.state); err != nil {
			rows.Close()
			return err
		}
		c.move(k.rollout, k.wave, k.state, "")
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	return c.apply(ctx, tx)
}

// OTARolloutCounts implements store.OTA.
func (t *Tables) OTARolloutCounts(ctx context.Context, id int64) ([]store.OTAStateCount, error) {
	rows, err := t.db.Query(ctx, "SELECT wave, state, n FROM ota_rollout_counts WHERE rollout_id=? AND n<>0 ORDER BY wave, state", id)
	if err != nil {
		return nil, fmt.Errorf("sqldb: counting rollout %d: %w", id, err)
	}
	return scanAll(rows, func(sc interface{ Scan(...any) error }) (store.OTAStateCount, error) {
		var c store.OTAStateCount
		err := sc.Scan(&c.Wave, &c.State, &c.N)
		return c, err
	})
}
