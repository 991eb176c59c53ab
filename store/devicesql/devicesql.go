// Package devicesql builds the SQL of device listings, counts and the fleet
// summary for both SQL backends (store/sqlite, store/postgres), which differ
// only in placeholders, collation and case-insensitive matching.
//
// Listings page by key: the WHERE clause resumes after the (sort key, name)
// of the previous page's last row, and each order has an index that serves
// it, so any page of a large fleet costs what the first one does.
package devicesql

import (
	"database/sql"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/thingline/thingline/store"
)

// Dialect is what differs between the backends.
type Dialect struct {
	// Placeholder returns the n-th (1-based) parameter marker.
	Placeholder func(n int) string
	// Name is the name column as it must be compared and ordered: byte
	// order in both backends.
	Name string
	// Like is the case-insensitive pattern operator.
	Like string
}

// SQLite is the dialect of store/sqlite (LIKE ignores ASCII case there).
var SQLite = Dialect{Placeholder: func(int) string { return "?" }, Name: "name", Like: "LIKE"}

// Postgres is the dialect of store/postgres.
var Postgres = Dialect{Placeholder: func(n int) string { return "$" + strconv.Itoa(n) }, Name: `name COLLATE "C"`, Like: "ILIKE"}

// FirmwareCol is a column expression with the device's fw_version client
// attribute as stored JSON text (NULL when not reported).
const FirmwareCol = `(SELECT a.value FROM attributes a WHERE a.device = devices.id AND a.scope = 'client' AND a.key = 'fw_version')`

type builder struct {
	d     Dialect
	where []string
	args  []any
}

func (b *builder) arg(v any) string {
	b.args = append(b.args, v)
	return b.d.Placeholder(len(b.args))
}

// likeEscape escapes the pattern characters of s for LIKE … ESCAPE '\'.
func likeEscape(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`)
	return r.Replace(s)
}

func (b *builder) filters(o store.ListOptions) {
	if o.Search != "" {
		b.where = append(b.where, "name "+b.d.Like+" "+b.arg("%"+likeEscape(o.Search)+"%")+` ESCAPE '\'`)
	}
	if o.Online != nil {
		b.where = append(b.where, "online = "+b.arg(*o.Online))
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

// List returns the query selecting cols plus FirmwareCol (last) of the
// devices o selects, in its order, one page.
func List(d Dialect, cols string, o store.ListOptions, limit int) (string, []any, error) {
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
			b.where = append(b.where, d.Name+" "+cmp+" "+b.arg(o.After))
		}
		order = d.Name + " " + dir
	case col == "id":
		if o.After != "" {
			b.where = append(b.where, "id "+cmp+" "+b.arg(o.AfterKey))
		}
		order = "id " + dir
	default:
		if o.After != "" {
			// A row value: both backends compare it lexicographically
			// and walk the (col, name) index with it.
			b.where = append(b.where, fmt.Sprintf("(%s, %s) %s (%s, %s)", col, d.Name, cmp, b.arg(o.AfterKey), b.arg(o.After)))
		}
		order = col + " " + dir + ", " + d.Name + " " + dir
	}
	q := "SELECT " + cols + ", " + FirmwareCol + " FROM devices" + b.whereSQL() + " ORDER BY " + order + " LIMIT " + b.arg(limit)
	return q, b.args, nil
}

// Count returns the query counting the devices o's filters select.
func Count(d Dialect, o store.ListOptions) (string, []any) {
	b := &builder{d: d}
	b.filters(o)
	return "SELECT count(*) FROM devices" + b.whereSQL(), b.args
}

// Summary queries: each returns (group, count) rows.
const (
	SummaryOnline   = `SELECT CASE WHEN online THEN 'online' ELSE 'offline' END, count(*) FROM devices GROUP BY 1`
	SummaryProfiles = `SELECT profile, count(*) FROM devices GROUP BY profile`
	SummaryFirmware = `SELECT value, count(*) FROM attributes WHERE scope = 'client' AND key = 'fw_version' GROUP BY value`
)

// SummaryExpiry returns the query counting devices by the bucket (its
// index in buckets, as text) of their newest certificate's expiry. Times in
// the credentials table are Unix nanoseconds.
func SummaryExpiry(d Dialect, buckets []store.ExpiryBucket) (string, []any) {
	b := &builder{d: d}
	var cases strings.Builder
	for i, bk := range buckets {
		if bk.Before == 0 {
			continue
		}
		fmt.Fprintf(&cases, " WHEN na < %s THEN '%d'", b.arg(time.UnixMilli(bk.Before).UnixNano()), i)
	}
	q := "SELECT CASE" + cases.String() + fmt.Sprintf(" ELSE '%d' END, count(*) FROM (SELECT max(not_after) AS na FROM credentials GROUP BY device) t GROUP BY 1", len(buckets)-1)
	return q, b.args
}

// Scanner is a row of either backend.
type Scanner interface{ Scan(dest ...any) error }

// WithFirmware scans a row selected by List: the backend's device columns
// into the destinations its scanner passes, and FirmwareCol into FW.
type WithFirmware struct {
	Scanner
	FW *sql.NullString
}

// Scan implements Scanner.
func (w WithFirmware) Scan(dest ...any) error { return w.Scanner.Scan(append(dest, w.FW)...) }

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

// RowFunc receives one (group, count) row of a summary query.
type RowFunc func(group string, n int64)

// Summary runs the summary queries with query, which calls row for each
// row of a (group, count) query, and assembles the fleet summary.
func Summary(d Dialect, now time.Time, query func(q string, args []any, row RowFunc) error) (store.FleetSummary, error) {
	sum := store.FleetSummary{Profiles: map[string]int64{}, Firmware: map[string]int64{}, CertExpiry: store.ExpiryBuckets(now)}
	err := query(SummaryOnline, nil, func(g string, n int64) {
		sum.Devices += n
		if g == "online" {
			sum.Online = n
		}
	})
	if err != nil {
		return sum, fmt.Errorf("counting devices: %w", err)
	}
	if err := query(SummaryProfiles, nil, func(g string, n int64) { sum.Profiles[g] = n }); err != nil {
		return sum, fmt.Errorf("counting profiles: %w", err)
	}
	reported := int64(0)
	err = query(SummaryFirmware, nil, func(g string, n int64) {
		sum.Firmware[Firmware(sql.NullString{String: g, Valid: true})] += n
		reported += n
	})
	if err != nil {
		return sum, fmt.Errorf("counting firmware versions: %w", err)
	}
	if none := sum.Devices - reported; none > 0 {
		sum.Firmware[""] = none
	}
	q, args := SummaryExpiry(d, sum.CertExpiry)
	err = query(q, args, func(g string, n int64) {
		if i, err := strconv.Atoi(g); err == nil && i >= 0 && i < len(sum.CertExpiry) {
			sum.CertExpiry[i].Count = n
		}
	})
	if err != nil {
		return sum, fmt.Errorf("counting certificate expiries: %w", err)
	}
	return sum, nil
}
