package sqldb

// Device listings, counts and the fleet summary: the queries that select
// and aggregate the devices table (devices.go) for people.
//
// Listings page by key: the WHERE clause resumes after the (sort key, name)
// of the previous page's last row, and each order has an index that serves
// it (each backend's migrations), so any page of a large fleet costs what
// the first one does.

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/thingline/thingline/store"
)

// nameCol is the name column as listings compare and order it: byte
// order in both backends.
func nameCol(d Dialect) string {
	if d == Postgres {
		return `name COLLATE "C"`
	}
	return "name"
}

// likeOp is the case-insensitive pattern operator (SQLite's LIKE ignores
// ASCII case).
func likeOp(d Dialect) string {
	if d == Postgres {
		return "ILIKE"
	}
	return "LIKE"
}

// FirmwareCol is a column expression with the device's fw_version client
// attribute as stored JSON text (NULL when not reported).
const FirmwareCol = `(SELECT a.value FROM attributes a WHERE a.device = devices.id AND a.scope = 'client' AND a.key = 'fw_version')`

type builder struct {
	d     Dialect
	where []string
	args  []any
}

// arg adds a parameter; queries are spelled with ? and rebound at the end.
func (b *builder) arg(v any) string {
	b.args = append(b.args, v)
	return "?"
}

// likeEscape escapes the pattern characters of s for LIKE … ESCAPE '\'.
func likeEscape(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`)
	return r.Replace(s)
}

func (b *builder) filters(o store.ListOptions) {
	if o.Search != "" {
		b.where = append(b.where, "name "+likeOp(b.d)+" "+b.arg("%"+likeEscape(o.Search)+"%")+` ESCAPE '\'`)
	}
	if o.Online != nil {
		b.where = append(b.where, "online = "+b.arg(*o.Online))
	}
	if o.Owner != 0 {
		b.where = append(b.where, "id IN (SELECT device_id FROM ownership_epochs WHERE until = 0 AND user_id = "+b.arg(o.Owner)+")")
	}
	if o.Profile != "" {
		b.where = append(b.where, "profile = "+b.arg(o.Profile))
	}
	if o.Firmware != "" {
		b.where = append(b.where, FirmwareCol+" = "+b.arg(strconv.Quote(o.Firmware)))
	}
}

func (b *builder) whereSQL() string {
	if len(b.where) == 0 {
		return ""
	}
	return " WHERE " + strings.Join(b.where, " AND ")
}

// sortCol is the column of an order other than by name.
func sortCol(s store.DeviceSort) string {
	switch s {
	case store.SortLastSeen:
		return "last_seen_at"
	case store.SortCreated:
		return "id"
	}
	return ""
}

// ownerCol is the user name of the device's current owner (NULL for none).
const ownerCol = `(SELECT u.username FROM ownership_epochs e JOIN account_users u ON u.id = e.user_id WHERE e.device_id = devices.id AND e.until = 0)`

// DeviceList returns the query selecting cols plus the firmware and owner
// columns of the devices o selects, in its order, one page.
func DeviceList(d Dialect, cols string, o store.ListOptions, limit int) (string, []any, error) {
	if !o.Sort.Valid() {
		return "", nil, fmt.Errorf("unknown device order %q", o.Sort)
	}
	b := &builder{d: d}
	b.filters(o)
	cmp, dir := ">", "ASC"
	if o.Desc {
		cmp, dir = "<", "DESC"
	}
	col := sortCol(o.Sort)
	var order string
	switch {
	case col == "":
		// Ascending from "" selects every name, as listings always did.
		if !o.Desc || o.After != "" {
			b.where = append(b.where, nameCol(d)+" "+cmp+" "+b.arg(o.After))
		}
		order = nameCol(d) + " " + dir
	case col == "id":
		if o.After != "" {
			b.where = append(b.where, "id "+cmp+" "+b.arg(o.AfterKey))
		}
		order = "id " + dir
	default:
		if o.After != "" {
			// A row value: both backends compare it lexicographically
			// and walk the (col, name) index with it.
			b.where = append(b.where, fmt.Sprintf("(%s, %s) %s (%s, %s)", col, nameCol(d), cmp, b.arg(o.AfterKey), b.arg(o.After)))
		}
		order = col + " " + dir + ", " + nameCol(d) + " " + dir
	}
	q := "SELECT " + cols + ", " + FirmwareCol + ", " + ownerCol + " FROM devices" + b.whereSQL() + " ORDER BY " + order + " LIMIT " + b.arg(limit)
	return rebind(d, q), b.args, nil
}

// Summary queries: each returns (group, count) rows.
const (
	summaryOnline   = `SELECT CASE WHEN online THEN 'online' ELSE 'offline' END, count(*) FROM devices GROUP BY 1`
	summaryProfiles = `SELECT profile, count(*) FROM devices GROUP BY profile`
	summaryFirmware = `SELECT value, count(*) FROM attributes WHERE scope = 'client' AND key = 'fw_version' GROUP BY value`
)

// summaryExpiry returns the query counting devices by the bucket (its
// index in buckets, as text) of their newest certificate's expiry. Times in
// the credentials table are Unix nanoseconds.
func summaryExpiry(d Dialect, buckets []store.ExpiryBucket) (string, []any) {
	b := &builder{d: d}
	var cases strings.Builder
	for i, bk := range buckets {
		if bk.Before == 0 {
			continue
		}
		fmt.Fprintf(&cases, " WHEN na < %s THEN '%d'", b.arg(time.UnixMilli(bk.Before).UnixNano()), i)
	}
	q := "SELECT CASE" + cases.String() + fmt.Sprintf(" ELSE '%d' END, count(*) FROM (SELECT max(not_after) AS na FROM credentials GROUP BY device) t GROUP BY 1", len(buckets)-1)
	return rebind(d, q), b.args
}

// Firmware decodes the stored JSON text of the fw_version attribute; a
// value that is not a JSON string is shown as it was stored.
func Firmware(v sql.NullString) string {
	if !v.Valid {
		return ""
	}
	var s string
	if json.Unmarshal([]byte(v.String), &s) != nil {
		return v.String
	}
	return s
}

// CountDevices counts the devices opt's filters select.
func (t *Tables) CountDevices(ctx context.Context, opt store.ListOptions) (int64, error) {
	b := &builder{d: t.db.dialect}
	b.filters(opt)
	var n int64
	if err := t.db.read.QueryRowContext(ctx, rebind(b.d, "SELECT count(*) FROM devices"+b.whereSQL()), b.args...).Scan(&n); err != nil {
		return 0, fmt.Errorf("sqldb: counting devices: %w", err)
	}
	return n, nil
}

// FleetSummary aggregates the fleet in one read transaction, so that its
// counts agree with each other.
func (t *Tables) FleetSummary(ctx context.Context, now time.Time) (store.FleetSummary, error) {
	sum := store.FleetSummary{Profiles: map[string]int64{}, Firmware: map[string]int64{}, CertExpiry: store.ExpiryBuckets(now)}
	tx, err := t.db.read.BeginTx(ctx, &sql.TxOptions{ReadOnly: true, Isolation: isolation(t.db.dialect)})
	if err != nil {
		return sum, fmt.Errorf("sqldb: fleet summary: %w", err)
	}
	defer tx.Rollback()
	query := func(q string, args []any, row func(group string, n int64)) error {
		rows, err := tx.QueryContext(ctx, q, args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var g string
			var n int64
			if err := rows.Scan(&g, &n); err != nil {
				return err
			}
			row(g, n)
		}
		return rows.Err()
	}
	err = query(summaryOnline, nil, func(g string, n int64) {
		sum.Devices += n
		if g == "online" {
			sum.Online = n
		}
	})
	if err != nil {
		return sum, fmt.Errorf("sqldb: counting devices: %w", err)
	}
	if err := query(summaryProfiles, nil, func(g string, n int64) { sum.Profiles[g] = n }); err != nil {
		return sum, fmt.Errorf("sqldb: counting profiles: %w", err)
	}
	reported := int64(0)
	err = query(summaryFirmware, nil, func(g string, n int64) {
		sum.Firmware[Firmware(sql.NullString{String: g, Valid: true})] += n
		reported += n
	})
	if err != nil {
		return sum, fmt.Errorf("sqldb: counting firmware versions: %w", err)
	}
	if none := sum.Devices - reported; none > 0 {
		sum.Firmware[""] = none
	}
	q, args := summaryExpiry(t.db.dialect, sum.CertExpiry)
	err = query(q, args, func(g string, n int64) {
		if i, err := strconv.Atoi(g); err == nil && i >= 0 && i < len(sum.CertExpiry) {
			sum.CertExpiry[i].Count = n
		}
	})
	if err != nil {
		return sum, fmt.Errorf("sqldb: counting certificate expiries: %w", err)
	}
	return sum, nil
}

// isolation makes a multi-query read see one snapshot: SQLite's read
// transactions always do; PostgreSQL's need REPEATABLE READ.
func isolation(d Dialect) sql.IsolationLevel {
	if d == Postgres {
		return sql.LevelRepeatableRead
	}
	return sql.LevelDefault
}
