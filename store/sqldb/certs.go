package sqldb

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/thingline/thingline/store"
)

// The certificate life cycle's tables. credentials, devices and
// revocations are created by the backends (devices.go), with the same name
// and columns in both, so the queries below read and write them too: a
// retirement and its revocation must be one transaction.
func init() {
	Register(Migration{Name: "certs/001", SQL: `
CREATE TABLE cert_retirements (
	serial TEXT PRIMARY KEY,
	device BIGINT NOT NULL,
	next_serial TEXT NOT NULL,
	retire_at BIGINT NOT NULL,
	done_at BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX cert_retirements_due ON cert_retirements(retire_at) WHERE done_at = 0;
CREATE INDEX cert_retirements_device ON cert_retirements(device);
CREATE TABLE cert_expiry_notices (
	serial TEXT PRIMARY KEY,
	device BIGINT NOT NULL,
	noticed_at BIGINT NOT NULL
);
CREATE INDEX cert_expiry_notices_device ON cert_expiry_notices(device);
CREATE TABLE crl_numbers (
	issuer TEXT PRIMARY KEY,
	number BIGINT NOT NULL
)`})
	RegisterPurge(func(ctx context.Context, tx *Tx, device int64) error {
		if _, err := tx.Exec(ctx, "DELETE FROM cert_retirements WHERE device=?", device); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, "DELETE FROM cert_expiry_notices WHERE device=?", device)
		return err
	})
}

func certNS(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func certTime(v int64) time.Time {
	if v == 0 {
		return time.Time{}
	}
	return time.Unix(0, v).UTC()
}

// CurrentCredentials implements store.Certificates.
func (t *Tables) CurrentCredentials(ctx context.Context, before time.Time, limit int) ([]store.CurrentCredential, error) {
	if limit <= 0 {
		limit = 1 << 30
	}
	bound := int64(1<<63 - 1)
	if !before.IsZero() {
		bound = before.UnixNano()
	}
	rows, err := t.db.Query(ctx, `SELECT d.name, d.id, c.serial, c.issuer, c.not_after
		FROM credentials c JOIN devices d ON d.id = c.device
		WHERE NOT EXISTS (SELECT 1 FROM credentials n WHERE n.device = c.device AND n.first_seen > c.first_seen)
		AND NOT EXISTS (SELECT 1 FROM revocations r WHERE r.serial = c.serial)
		AND c.not_after < ?
		ORDER BY c.not_after, d.name LIMIT ?`, bound, limit)
	if err != nil {
		return nil, fmt.Errorf("sqldb: listing current credentials: %w", err)
	}
	defer rows.Close()
	var out []store.CurrentCredential
	for rows.Next() {
		var c store.CurrentCredential
		var na int64
		if err := rows.Scan(&c.Device, &c.DeviceID, &c.Serial, &c.Issuer, &na); err != nil {
			return nil, fmt.Errorf("sqldb: listing current credentials: %w", err)
		}
		c.NotAfter = certTime(na)
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqldb: listing current credentials: %w", err)
	}
	return out, nil
}

// RevocationsOf implements store.Certificates.
func (t *Tables) RevocationsOf(ctx context.Context, serials []string) (map[string]store.Revocation, error) {
	out := map[string]store.Revocation{}
	const chunk = 500
	for len(serials) > 0 {
		n := min(len(serials), chunk)
		part := serials[:n]
		serials = serials[n:]
		args := make([]any, len(part))
		for i, s := range part {
			args[i] = s
		}
		q := "SELECT serial, reason, revoked_at FROM revocations WHERE serial IN (?" + strings.Repeat(",?", len(part)-1) + ")"
		rows, err := t.db.Query(ctx, q, args...)
		if err != nil {
			return nil, fmt.Errorf("sqldb: reading revocations: %w", err)
		}
		for rows.Next() {
			var r store.Revocation
			var at int64
			if err := rows.Scan(&r.Serial, &r.Reason, &at); err != nil {
				rows.Close()
				return nil, fmt.Errorf("sqldb: reading revocations: %w", err)
			}
			r.RevokedAt = certTime(at)
			out[r.Serial] = r
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return nil, fmt.Errorf("sqldb: reading revocations: %w", err)
		}
	}
	return out, nil
}

// ScheduleRetirement implements store.Certificates.
func (t *Tables) ScheduleRetirement(ctx context.Context, r store.Retirement) error {
	if r.Serial == "" {
		return fmt.Errorf("sqldb: scheduling retirement: empty serial")
	}
	_, err := t.db.Exec(ctx, `INSERT INTO cert_retirements(serial, device, next_serial, retire_at) VALUES (?, ?, ?, ?)
		ON CONFLICT (serial) DO UPDATE SET retire_at = CASE WHEN excluded.retire_at < cert_retirements.retire_at
			THEN excluded.retire_at ELSE cert_retirements.retire_at END`,
		r.Serial, r.DeviceID, r.Next, certNS(r.RetireAt))
	if err != nil {
		return fmt.Errorf("sqldb: scheduling retirement of %s: %w", r.Serial, err)
	}
	return nil
}

// ListRetirements implements store.Certificates.
func (t *Tables) ListRetirements(ctx context.Context, deviceID int64) ([]store.Retirement, error) {
	rows, err := t.db.Query(ctx, `SELECT serial, next_serial, retire_at, done_at FROM cert_retirements
		WHERE device = ? ORDER BY retire_at DESC, serial`, deviceID)
	if err != nil {
		return nil, fmt.Errorf("sqldb: listing retirements: %w", err)
	}
	defer rows.Close()
	var out []store.Retirement
	for rows.Next() {
		r := store.Retirement{DeviceID: deviceID}
		var at, done int64
		if err := rows.Scan(&r.Serial, &r.Next, &at, &done); err != nil {
			return nil, fmt.Errorf("sqldb: listing retirements: %w", err)
		}
		r.RetireAt, r.Done = certTime(at), done != 0
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqldb: listing retirements: %w", err)
	}
	return out, nil
}

// RetireDue implements store.Certificates. Each serial is claimed by a
// conditional update in the transaction that revokes it: of several nodes
// sweeping at once, exactly one sees the row change.
func (t *Tables) RetireDue(ctx context.Context, now time.Time, limit int) ([]store.Revocation, error) {
	if limit <= 0 {
		limit = 100
	}
	rows, err := t.db.Query(ctx, `SELECT serial FROM cert_retirements WHERE done_at = 0 AND retire_at <= ?
		ORDER BY retire_at, serial LIMIT ?`, certNS(now), limit)
	if err != nil {
		return nil, fmt.Errorf("sqldb: finding due retirements: %w", err)
	}
	var due []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			rows.Close()
			return nil, fmt.Errorf("sqldb: finding due retirements: %w", err)
		}
		due = append(due, s)
	}
	err = rows.Err()
	rows.Close()
	if err != nil {
		return nil, fmt.Errorf("sqldb: finding due retirements: %w", err)
	}
	var out []store.Revocation
	for _, serial := range due {
		rev := store.Revocation{Serial: serial, Reason: "superseded", RevokedAt: now.UTC()}
		claimed := false
		err := t.db.Write(ctx, func(ctx context.Context, tx *Tx) error {
			claimed = false
			res, err := tx.Exec(ctx, "UPDATE cert_retirements SET done_at = ? WHERE serial = ? AND done_at = 0", certNS(now), serial)
			if err != nil {
				return err
			}
			if n, err := res.RowsAffected(); err != nil || n != 1 {
				return err
			}
			claimed = true
			_, err = tx.Exec(ctx, `INSERT INTO revocations(serial, reason, revoked_at) VALUES (?, ?, ?)
				ON CONFLICT (serial) DO NOTHING`, rev.Serial, rev.Reason, certNS(rev.RevokedAt))
			return err
		})
		if err != nil {
			return out, fmt.Errorf("sqldb: retiring %s: %w", serial, err)
		}
		if claimed {
			out = append(out, rev)
		}
	}
	return out, nil
}

// ClaimExpiryNotice implements store.Certificates.
func (t *Tables) ClaimExpiryNotice(ctx context.Context, serial string, at time.Time) (bool, error) {
	var first bool
	err := t.db.Write(ctx, func(ctx context.Context, tx *Tx) error {
		var device int64
		err := tx.QueryRow(ctx, "SELECT device FROM credentials WHERE serial = ? LIMIT 1", serial).Scan(&device)
		if err != nil {
			return NotFound(err, "credential "+serial)
		}
		res, err := tx.Exec(ctx, `INSERT INTO cert_expiry_notices(serial, device, noticed_at) VALUES (?, ?, ?)
			ON CONFLICT (serial) DO NOTHING`, serial, device, certNS(at))
		if err != nil {
			return err
		}
		n, err := res.RowsAffected()
		first = n == 1
		return err
	})
	if err != nil {
		return false, fmt.Errorf("sqldb: claiming expiry notice of %s: %w", serial, err)
	}
	return first, nil
}

// NextCRLNumber implements store.Certificates.
func (t *Tables) NextCRLNumber(ctx context.Context, issuer string) (int64, error) {
	var n int64
	err := t.db.Write(ctx, func(ctx context.Context, tx *Tx) error {
		return tx.QueryRow(ctx, `INSERT INTO crl_numbers(issuer, number) VALUES (?, 1)
			ON CONFLICT (issuer) DO UPDATE SET number = crl_numbers.number + 1 RETURNING number`, issuer).Scan(&n)
	})
	if err != nil {
		return 0, fmt.Errorf("sqldb: numbering crl of %s: %w", issuer, err)
	}
	return n, nil
}

// Revoke implements store.Revocations.
func (t *Tables) Revoke(ctx context.Context, r store.Revocation) error {
	if r.Serial == "" {
		return fmt.Errorf("sqldb: revoking: empty serial")
	}
	_, err := t.db.Exec(ctx, `INSERT INTO revocations(serial, reason, revoked_at) VALUES (?, ?, ?)
		ON CONFLICT (serial) DO UPDATE SET reason=excluded.reason`, r.Serial, r.Reason, ToNS(orNow(r.RevokedAt)))
	if err != nil {
		return fmt.Errorf("sqldb: revoking %s: %w", r.Serial, err)
	}
	return nil
}

// ListRevocations implements store.Revocations.
func (t *Tables) ListRevocations(ctx context.Context) ([]store.Revocation, error) {
	rows, err := t.db.Query(ctx, "SELECT serial, reason, revoked_at FROM revocations ORDER BY revoked_at, serial")
	out, err := collect(rows, err, func(r rowScanner) (store.Revocation, error) {
		var rev store.Revocation
		var at int64
		err := r.Scan(&rev.Serial, &rev.Reason, &at)
		rev.RevokedAt = FromNS(at)
		return rev, err
	})
	if err != nil {
		return nil, fmt.Errorf("sqldb: listing revocations: %w", err)
	}
	return out, nil
}
