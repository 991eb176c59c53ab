package sqldb

import (
	"context"
	"crypto/subtle"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/thingline/thingline/store"
)

// Ownership: epochs of ownership, the devices' pending claim requests,
// pending bindings left by the delete policy, the audit log and the
// tenant's policy (store.Ownership).
func init() {
	Register(Migration{Name: "ownership/001", SQL: `
CREATE TABLE ownership_epochs (
	id {{id}},
	device_id BIGINT NOT NULL,
	device_name TEXT NOT NULL,
	user_id BIGINT NOT NULL,
	since BIGINT NOT NULL,
	until BIGINT NOT NULL,
	how TEXT NOT NULL,
	ended TEXT NOT NULL,
	keep_until BIGINT NOT NULL,
	wiped {{bool}} NOT NULL
);
CREATE UNIQUE INDEX ownership_epochs_current ON ownership_epochs(device_id) WHERE until = 0;
CREATE INDEX ownership_epochs_user ON ownership_epochs(user_id, until);
CREATE INDEX ownership_epochs_name ON ownership_epochs(device_name);
CREATE TABLE ownership_claims (
	device_id BIGINT PRIMARY KEY,
	device_name TEXT NOT NULL,
	kind TEXT NOT NULL,
	secret_hash {{blob}} NOT NULL,
	user_id BIGINT NOT NULL,
	reset {{bool}} NOT NULL,
	failures INTEGER NOT NULL,
	created_at BIGINT NOT NULL,
	expires_at BIGINT NOT NULL
);
CREATE TABLE ownership_pending (
	device_name TEXT PRIMARY KEY,
	user_id BIGINT NOT NULL,
	after_device BIGINT NOT NULL,
	created_at BIGINT NOT NULL
);
CREATE TABLE ownership_audit (
	id {{id}},
	at BIGINT NOT NULL,
	device_name TEXT NOT NULL,
	device_id BIGINT NOT NULL,
	action TEXT NOT NULL,
	user_id BIGINT NOT NULL,
	actor_id BIGINT NOT NULL,
	detail TEXT NOT NULL
);
CREATE INDEX ownership_audit_name ON ownership_audit(device_name, id);
CREATE TABLE ownership_policy (
	id INTEGER PRIMARY KEY,
	on_reset TEXT NOT NULL,
	keep_days INTEGER NOT NULL
)`})
	// The secret of the claim that began an epoch (see store.Epoch).
	Register(Migration{Name: "ownership/002", SQL: `ALTER TABLE ownership_epochs ADD COLUMN secret_hash {{blob}}`})
	// A deleted device's claim request goes with it; its epochs and audit
	// entries stay: they are the history GET …/owners shows. Its current
	// epoch ends as deleted.
	RegisterPurge(func(ctx context.Context, tx *Tx, device int64) error {
		if _, err := tx.Exec(ctx, "DELETE FROM ownership_claims WHERE device_id=?", device); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, "UPDATE ownership_epochs SET until=?, ended=? WHERE device_id=? AND until=0",
			time.Now().UnixNano(), store.EndDeleted, device)
		return err
	})
}

// maxClaimFailures is how many wrong secrets a claim request survives: the
// secret is the device's, but a user may guess; after this many the device
// must ask again.
const maxClaimFailures = 5

const epochCols = "e.id, e.device_id, e.device_name, e.user_id, COALESCE(u.username, ''), e.since, e.until, e.how, e.ended, e.keep_until, e.wiped, e.secret_hash"

const epochFrom = " FROM ownership_epochs e LEFT JOIN account_users u ON u.id = e.user_id "

func scanEpoch(sc interface{ Scan(...any) error }) (store.Epoch, error) {
	var e store.Epoch
	var since, until, keep int64
	err := sc.Scan(&e.ID, &e.DeviceID, &e.DeviceName, &e.UserID, &e.Username, &since, &until, &e.How, &e.Ended, &keep, &e.Wiped, &e.SecretHash)
	e.Since, e.Until, e.KeepUntil = fromNanos(since), fromNanos(until), fromNanos(keep)
	return e, err
}

// CurrentOwner implements store.Ownership.
func (t *Tables) CurrentOwner(ctx context.Context, deviceID int64, name string) (store.Epoch, error) {
	e, err := scanEpoch(t.db.QueryRow(ctx, "SELECT "+epochCols+epochFrom+"WHERE e.device_id=? AND e.until=0", deviceID))
	if err == nil || name == "" {
		return e, NotFound(err, fmt.Sprintf("owner of device %d", deviceID))
	}
	if err = NotFound(err, "owner"); !errors.Is(err, store.ErrNotFound) {
		return e, err
	}
	// A pending binding from the delete policy applies to the first
	// record bearing the name after the deleted one.
	var n int
	if err := t.db.QueryRow(ctx, "SELECT count(*) FROM ownership_pending WHERE device_name=? AND after_device < ?", name, deviceID).Scan(&n); err != nil || n == 0 {
		return e, NotFound(nilIf(err, n == 0), fmt.Sprintf("owner of device %d", deviceID))
	}
	err = t.db.Write(ctx, func(ctx context.Context, tx *Tx) error {
		var user, created int64
		err := tx.QueryRow(ctx, "SELECT user_id, created_at FROM ownership_pending WHERE device_name=? AND after_device < ?", name, deviceID).Scan(&user, &created)
		if err != nil {
			return NotFound(err, "pending owner") // bound meanwhile by another node
		}
		if _, err := tx.Exec(ctx, "DELETE FROM ownership_pending WHERE device_name=?", name); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `INSERT INTO ownership_epochs(device_id, device_name, user_id, since, until, how, ended, keep_until, wiped)
			SELECT ?, ?, ?, ?, 0, ?, '', 0, ? WHERE NOT EXISTS (SELECT 1 FROM ownership_epochs WHERE device_id=? AND until=0)`,
			deviceID, name, user, created, store.ClaimAssociation, false, deviceID)
		return err
	})
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return e, fmt.Errorf("sqldb: binding pending owner of %q: %w", name, err)
	}
	e, err = scanEpoch(t.db.QueryRow(ctx, "SELECT "+epochCols+epochFrom+"WHERE e.device_id=? AND e.until=0", deviceID))
	return e, NotFound(err, fmt.Sprintf("owner of device %d", deviceID))
}

// nilIf turns "no error" into sql's no-rows error when cond holds, so that
// NotFound maps it.
func nilIf(err error, cond bool) error {
	if err == nil && cond {
		return errNoRows
	}
	return err
}

var errNoRows = sql.ErrNoRows

// OwnedDevices implements store.Ownership.
func (t *Tables) OwnedDevices(ctx context.Context, userID int64) ([]int64, error) {
	rows, err := t.db.Query(ctx, "SELECT device_id FROM ownership_epochs WHERE user_id=? AND until=0 ORDER BY device_name", userID)
	if err != nil {
		return nil, fmt.Errorf("sqldb: devices of user %d: %w", userID, err)
	}
	defer rows.Close()
	var ids []int64
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	return ids, rows.Err()
}

// Owners implements store.Ownership.
func (t *Tables) Owners(ctx context.Context, name string) ([]store.Epoch, error) {
	es, err := t.epochs(ctx, "WHERE e.device_name=? ORDER BY e.id", name)
	if err != nil {
		return nil, fmt.Errorf("sqldb: owners of %q: %w", name, err)
	}
	return es, nil
}

// UserEpochs implements store.Ownership.
func (t *Tables) UserEpochs(ctx context.Context, userID int64) ([]store.Epoch, error) {
	es, err := t.epochs(ctx, "WHERE e.user_id=? ORDER BY e.id DESC LIMIT 1000", userID)
	if err != nil {
		return nil, fmt.Errorf("sqldb: epochs of user %d: %w", userID, err)
	}
	return es, nil
}

// GetEpoch implements store.Ownership.
func (t *Tables) GetEpoch(ctx context.Context, id int64) (store.Epoch, error) {
	e, err := scanEpoch(t.db.QueryRow(ctx, "SELECT "+epochCols+epochFrom+"WHERE e.id=?", id))
	return e, NotFound(err, fmt.Sprintf("epoch %d", id))
}

// epochs lists the epochs a WHERE clause selects.
func (t *Tables) epochs(ctx context.Context, where string, args ...any) ([]store.Epoch, error) {
	rows, err := t.db.Query(ctx, "SELECT "+epochCols+epochFrom+where, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var es []store.Epoch
	for rows.Next() {
		e, err := scanEpoch(rows)
		if err != nil {
			return nil, err
		}
		es = append(es, e)
	}
	return es, rows.Err()
}

// PutClaimRequest implements store.Ownership.
func (t *Tables) PutClaimRequest(ctx context.Context, r store.ClaimRequest) error {
	err := t.db.Write(ctx, func(ctx context.Context, tx *Tx) error {
		if _, err := tx.Exec(ctx, "DELETE FROM ownership_claims WHERE device_id=?", r.DeviceID); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO ownership_claims(device_id, device_name, kind, secret_hash, user_id, reset, failures, created_at, expires_at)
			VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?)`,
			r.DeviceID, r.DeviceName, r.Kind, r.SecretHash, r.UserID, r.Reset, nanos(r.CreatedAt), nanos(r.ExpiresAt))
		return err
	})
	if err != nil {
		return fmt.Errorf("sqldb: claim request of %q: %w", r.DeviceName, err)
	}
	return nil
}

const claimCols = "device_id, device_name, kind, secret_hash, user_id, reset, created_at, expires_at"

func scanClaim(sc interface{ Scan(...any) error }) (store.ClaimRequest, error) {
	var r store.ClaimRequest
	var created, expires int64
	err := sc.Scan(&r.DeviceID, &r.DeviceName, &r.Kind, &r.SecretHash, &r.UserID, &r.Reset, &created, &expires)
	r.CreatedAt, r.ExpiresAt = fromNanos(created), fromNanos(expires)
	return r, err
}

// GetClaimRequest implements store.Ownership.
func (t *Tables) GetClaimRequest(ctx context.Context, deviceID int64, now time.Time) (store.ClaimRequest, error) {
	r, err := scanClaim(t.db.QueryRow(ctx, "SELECT "+claimCols+" FROM ownership_claims WHERE device_id=? AND expires_at > ?", deviceID, nanos(now)))
	return r, NotFound(err, fmt.Sprintf("claim request of device %d", deviceID))
}

func audit(ctx context.Context, tx *Tx, at time.Time, name string, dev int64, action string, user, actor int64, detail string) error {
	_, err := tx.Exec(ctx, "INSERT INTO ownership_audit(at, device_name, device_id, action, user_id, actor_id, detail) VALUES (?, ?, ?, ?, ?, ?, ?)",
		nanos(at), name, dev, action, user, actor, detail)
	return err
}

// keepUntil is when an epoch ended at at stops being kept; zero wipes it.
func keepUntil(p store.OwnershipPolicy, at time.Time) int64 {
	if p.KeepDays <= 0 {
		return 0
	}
	return at.Add(time.Duration(p.KeepDays) * 24 * time.Hour).UnixNano()
}

// forUpdate locks the rows a PostgreSQL transaction read (of the given
// tables, for a join); SQLite serializes writes anyway and has no FOR UPDATE.
func (t *Tables) forUpdate(of ...string) string {
	if t.db.Dialect() != Postgres {
		return ""
	}
	if len(of) > 0 {
		return " FOR UPDATE OF " + of[0]
	}
	return " FOR UPDATE"
}

// Claim implements store.Ownership.
func (t *Tables) Claim(ctx context.Context, c store.Claim) (outcome string, ep store.Epoch, err error) {
	var fail error
	err = t.db.Write(ctx, func(ctx context.Context, tx *Tx) error {
		fail = nil
		// FOR UPDATE: on PostgreSQL concurrent claims of one request queue
		// here, and all but the first find it consumed. (SQLite's writes
		// are serial already.)
		r, err := scanClaim(tx.QueryRow(ctx, "SELECT "+claimCols+" FROM ownership_claims WHERE device_id=? AND expires_at > ?"+t.forUpdate(), c.DeviceID, nanos(c.At)))
		if err == nil && r.Kind != c.Kind {
			err = errNoRows
		}
		if err != nil {
			if err = NotFound(err, ""); !errors.Is(err, store.ErrNotFound) {
				return err
			}
			fail = store.ErrNoClaim
			return audit(ctx, tx, c.At, c.DeviceName, c.DeviceID, store.AuditClaimFailed, 0, c.UserID, "no claim request pending")
		}
		// ThingsBoard's rule: two empty keys match. The association also
		// names the user: another user's secret never matches.
		if subtle.ConstantTimeCompare(r.SecretHash, c.SecretHash) != 1 || r.Kind == store.ClaimAssociation && r.UserID != c.UserID {
			fail = store.ErrWrongSecret
			if _, err := tx.Exec(ctx, "UPDATE ownership_claims SET failures = failures + 1 WHERE device_id=?", c.DeviceID); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, "DELETE FROM ownership_claims WHERE device_id=? AND failures >= ?", c.DeviceID, maxClaimFailures); err != nil {
				return err
			}
			return audit(ctx, tx, c.At, c.DeviceName, c.DeviceID, store.AuditClaimFailed, 0, c.UserID, "wrong secret")
		}
		cur, err := scanEpoch(tx.QueryRow(ctx, "SELECT "+epochCols+epochFrom+"WHERE e.device_id=? AND e.until=0", c.DeviceID))
		owned := err == nil
		if err != nil {
			if err = NotFound(err, ""); !errors.Is(err, store.ErrNotFound) {
				return err
			}
			err = nil
		}
		switch {
		case owned && cur.UserID == c.UserID:
			outcome, ep = store.OutcomeSameOwner, cur
			err = audit(ctx, tx, c.At, c.DeviceName, c.DeviceID, store.AuditReclaim, c.UserID, c.UserID, r.Kind)
		case owned && !r.Reset:
			fail = store.ErrOwned
			return audit(ctx, tx, c.At, c.DeviceName, c.DeviceID, store.AuditClaimFailed, 0, c.UserID, "owned by another user and not reset")
		case owned && c.Policy.OnReset == store.PolicyDelete:
			outcome, ep = store.OutcomeDelete, cur
			if _, err := tx.Exec(ctx, "UPDATE ownership_epochs SET until=?, ended=?, keep_until=0 WHERE id=?", nanos(c.At), store.EndDeleted, cur.ID); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, "DELETE FROM ownership_pending WHERE device_name=?", c.DeviceName); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, "INSERT INTO ownership_pending(device_name, user_id, after_device, created_at) VALUES (?, ?, ?, ?)",
				c.DeviceName, c.UserID, c.DeviceID, nanos(c.At)); err != nil {
				return err
			}
			err = audit(ctx, tx, c.At, c.DeviceName, c.DeviceID, store.AuditDelete, c.UserID, c.UserID, fmt.Sprintf("previous owner %d; record removed", cur.UserID))
		default:
			outcome = store.OutcomeClaimed
			action := store.AuditClaim
			if owned {
				outcome, action = store.OutcomeTransferred, store.AuditTransfer
				if _, err := tx.Exec(ctx, "UPDATE ownership_epochs SET until=?, ended=?, keep_until=? WHERE id=?",
					nanos(c.At), store.EndTransferred, keepUntil(c.Policy, c.At), cur.ID); err != nil {
					return err
				}
			}
			var id int64
			id, err = tx.Insert(ctx, `INSERT INTO ownership_epochs(device_id, device_name, user_id, since, until, how, ended, keep_until, wiped, secret_hash)
				VALUES (?, ?, ?, ?, 0, ?, '', 0, ?, ?)`, c.DeviceID, c.DeviceName, c.UserID, nanos(c.At), r.Kind, false, r.SecretHash)
			if err != nil {
				return err
			}
			ep = store.Epoch{ID: id, DeviceID: c.DeviceID, DeviceName: c.DeviceName, UserID: c.UserID, Since: fromNanos(nanos(c.At)), How: r.Kind}
			detail := r.Kind
			if owned {
				detail = fmt.Sprintf("%s; previous owner %d", r.Kind, cur.UserID)
			}
			err = audit(ctx, tx, c.At, c.DeviceName, c.DeviceID, action, c.UserID, c.UserID, detail)
		}
		if err != nil {
			return err
		}
		_, err = tx.Exec(ctx, "DELETE FROM ownership_claims WHERE device_id=?", c.DeviceID)
		return err
	})
	if err != nil {
		return "", ep, fmt.Errorf("sqldb: claiming %q: %w", c.DeviceName, err)
	}
	if fail != nil {
		return "", ep, fmt.Errorf("claiming %q: %w", c.DeviceName, fail)
	}
	return outcome, ep, nil
}

// Release implements store.Ownership.
func (t *Tables) Release(ctx context.Context, deviceID, userID, actorID int64, p store.OwnershipPolicy, at time.Time) (store.Epoch, error) {
	var ep store.Epoch
	err := t.db.Write(ctx, func(ctx context.Context, tx *Tx) error {
		var err error
		ep, err = scanEpoch(tx.QueryRow(ctx, "SELECT "+epochCols+epochFrom+"WHERE e.device_id=? AND e.until=0"+t.forUpdate("e"), deviceID))
		if err != nil {
			if err = NotFound(err, ""); errors.Is(err, store.ErrNotFound) {
				return store.ErrNotOwner
			}
			return err
		}
		if userID != 0 && ep.UserID != userID {
			return store.ErrNotOwner
		}
		ep.Until, ep.Ended = fromNanos(nanos(at)), store.EndReleased
		ep.KeepUntil = fromNanos(keepUntil(p, at))
		if _, err := tx.Exec(ctx, "UPDATE ownership_epochs SET until=?, ended=?, keep_until=? WHERE id=?", nanos(at), store.EndReleased, keepUntil(p, at), ep.ID); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "DELETE FROM ownership_claims WHERE device_id=?", deviceID); err != nil {
			return err
		}
		return audit(ctx, tx, at, ep.DeviceName, deviceID, store.AuditRelease, ep.UserID, actorID, "")
	})
	if err != nil {
		return ep, fmt.Errorf("sqldb: releasing device %d: %w", deviceID, err)
	}
	return ep, nil
}

// Audit implements store.Ownership.
func (t *Tables) Audit(ctx context.Context, name string, limit int) ([]store.AuditEntry, error) {
	if limit <= 0 || limit > 1000 {
		limit = 100
	}
	q := "SELECT id, at, device_name, device_id, action, user_id, actor_id, detail FROM ownership_audit"
	args := []any{}
	if name != "" {
		q += " WHERE device_name=?"
		args = append(args, name)
	}
	q += " ORDER BY id DESC LIMIT ?"
	rows, err := t.db.Query(ctx, q, append(args, limit)...)
	if err != nil {
		return nil, fmt.Errorf("sqldb: ownership audit: %w", err)
	}
	defer rows.Close()
	var as []store.AuditEntry
	for rows.Next() {
		var a store.AuditEntry
		var at int64
		if err := rows.Scan(&a.ID, &at, &a.Device, &a.DeviceID, &a.Action, &a.UserID, &a.ActorID, &a.Detail); err != nil {
			return nil, err
		}
		a.At = fromNanos(at)
		as = append(as, a)
	}
	return as, rows.Err()
}

// GetPolicy implements store.Ownership.
func (t *Tables) GetPolicy(ctx context.Context) (store.OwnershipPolicy, error) {
	p := store.OwnershipPolicy{OnReset: store.PolicyTransfer, KeepDays: 30}
	err := t.db.QueryRow(ctx, "SELECT on_reset, keep_days FROM ownership_policy WHERE id=1").Scan(&p.OnReset, &p.KeepDays)
	if err != nil && !errors.Is(NotFound(err, ""), store.ErrNotFound) {
		return p, fmt.Errorf("sqldb: ownership policy: %w", err)
	}
	return p, nil
}

// SetPolicy implements store.Ownership.
func (t *Tables) SetPolicy(ctx context.Context, p store.OwnershipPolicy) error {
	if p.OnReset != store.PolicyTransfer && p.OnReset != store.PolicyDelete {
		return fmt.Errorf("sqldb: policy onReset %q: want %s or %s", p.OnReset, store.PolicyTransfer, store.PolicyDelete)
	}
	return t.db.Write(ctx, func(ctx context.Context, tx *Tx) error {
		if _, err := tx.Exec(ctx, "DELETE FROM ownership_policy WHERE id=1"); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, "INSERT INTO ownership_policy(id, on_reset, keep_days) VALUES (1, ?, ?)", p.OnReset, p.KeepDays)
		return err
	})
}

// ExpiredEpochs implements store.Ownership.
func (t *Tables) ExpiredEpochs(ctx context.Context, now time.Time, limit int) ([]store.Epoch, error) {
	es, err := t.epochs(ctx, "WHERE e.until > 0 AND e.wiped = ? AND e.keep_until < ? AND e.ended <> ? ORDER BY e.id LIMIT ?",
		false, nanos(now), store.EndDeleted, limit)
	if err != nil {
		return nil, fmt.Errorf("sqldb: expired epochs: %w", err)
	}
	return es, nil
}

// MarkWiped implements store.Ownership.
func (t *Tables) MarkWiped(ctx context.Context, epochID int64) error {
	_, err := t.db.Exec(ctx, "UPDATE ownership_epochs SET wiped=? WHERE id=?", true, epochID)
	return err
}

var _ store.Ownership = (*Tables)(nil)
