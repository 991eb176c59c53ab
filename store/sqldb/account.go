package sqldb

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"time"

	"github.com/thingline/thingline/store"
)

// Accounts: users and their bearer tokens (store.Accounts). Times are Unix
// nanoseconds; 0 means never.
func init() {
	Register(Migration{Name: "account/001", SQL: `
CREATE TABLE account_users (
	id {{id}},
	username TEXT NOT NULL UNIQUE,
	role TEXT NOT NULL,
	disabled {{bool}} NOT NULL,
	password_hash TEXT NOT NULL,
	password_at BIGINT NOT NULL,
	created_at BIGINT NOT NULL
);
CREATE TABLE account_tokens (
	id {{id}},
	user_id BIGINT NOT NULL REFERENCES account_users(id) ON DELETE CASCADE,
	kind TEXT NOT NULL,
	name TEXT NOT NULL,
	scopes TEXT NOT NULL,
	hash {{blob}} NOT NULL UNIQUE,
	created_at BIGINT NOT NULL,
	expires_at BIGINT NOT NULL,
	revoked_at BIGINT NOT NULL
);
CREATE INDEX account_tokens_user ON account_tokens(user_id)`})
}

func nanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromNanos(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

// isUnique tells whether err is a unique-constraint violation, in either
// dialect's wording.
func isUnique(err error) bool {
	if err == nil {
		return false
	}
	s := err.Error()
	return strings.Contains(s, "UNIQUE constraint failed") || strings.Contains(s, "SQLSTATE 23505") ||
		strings.Contains(s, "duplicate key value")
}

const userCols = "id, username, role, disabled, password_hash, password_at, created_at"

func scanUser(sc interface{ Scan(...any) error }) (store.User, error) {
	var u store.User
	var pw, created int64
	var role string
	if err := sc.Scan(&u.ID, &u.Username, &role, &u.Disabled, &u.PasswordHash, &pw, &created); err != nil {
		return u, err
	}
	u.Role = store.Role(role)
	u.PasswordAt, u.CreatedAt = fromNanos(pw), fromNanos(created)
	return u, nil
}

// CreateUser implements store.Accounts.
func (t *Tables) CreateUser(ctx context.Context, u store.User) (store.User, error) {
	if u.CreatedAt.IsZero() {
		u.CreatedAt = time.Now()
	}
	if u.PasswordAt.IsZero() {
		u.PasswordAt = u.CreatedAt
	}
	err := t.db.Write(ctx, func(ctx context.Context, tx *Tx) error {
		var err error
		u.ID, err = tx.Insert(ctx, "INSERT INTO account_users(username, role, disabled, password_hash, password_at, created_at) VALUES (?, ?, ?, ?, ?, ?)",
			u.Username, string(u.Role), u.Disabled, u.PasswordHash, nanos(u.PasswordAt), nanos(u.CreatedAt))
		return err
	})
	if isUnique(err) {
		return u, fmt.Errorf("sqldb: user %q: %w", u.Username, store.ErrExists)
	}
	if err != nil {
		return u, fmt.Errorf("sqldb: creating user %q: %w", u.Username, err)
	}
	u.CreatedAt, u.PasswordAt = fromNanos(nanos(u.CreatedAt)), fromNanos(nanos(u.PasswordAt))
	return u, nil
}

// GetUser implements store.Accounts.
func (t *Tables) GetUser(ctx context.Context, id int64) (store.User, error) {
	u, err := scanUser(t.db.QueryRow(ctx, "SELECT "+userCols+" FROM account_users WHERE id=?", id))
	return u, NotFound(err, fmt.Sprintf("user %d", id))
}

// GetUserByName implements store.Accounts.
func (t *Tables) GetUserByName(ctx context.Context, username string) (store.User, error) {
	u, err := scanUser(t.db.QueryRow(ctx, "SELECT "+userCols+" FROM account_users WHERE username=?", username))
	return u, NotFound(err, fmt.Sprintf("user %q", username))
}

// ListUsers implements store.Accounts.
func (t *Tables) ListUsers(ctx context.Context, opt store.ListOptions) ([]store.User, error) {
	limit := opt.Limit
	if limit <= 0 {
		limit = 100
	}
	rows, err := t.db.Query(ctx, "SELECT "+userCols+" FROM account_users WHERE username > ? ORDER BY username LIMIT ?", opt.After, limit)
	if err != nil {
		return nil, fmt.Errorf("sqldb: listing users: %w", err)
	}
	defer rows.Close()
	var us []store.User
	for rows.Next() {
		u, err := scanUser(rows)
		if err != nil {
			return nil, err
		}
		us = append(us, u)
	}
	return us, rows.Err()
}

// changed maps "no row changed" to ErrNotFound.
func changed(res sql.Result, what string) error {
	n, err := res.RowsAffected()
	if err != nil {
		return err
	}
	if n == 0 {
		return fmt.Errorf("%s: %w", what, store.ErrNotFound)
	}
	return nil
}

// SetPassword implements store.Accounts.
func (t *Tables) SetPassword(ctx context.Context, id int64, hash string, at time.Time) error {
	return t.db.Write(ctx, func(ctx context.Context, tx *Tx) error {
		res, err := tx.Exec(ctx, "UPDATE account_users SET password_hash=?, password_at=? WHERE id=?", hash, nanos(at), id)
		if err != nil {
			return err
		}
		if err := changed(res, fmt.Sprintf("user %d", id)); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, "UPDATE account_tokens SET revoked_at=? WHERE user_id=? AND kind=? AND revoked_at=0", nanos(at), id, store.TokenSession)
		return err
	})
}

// SetDisabled implements store.Accounts.
func (t *Tables) SetDisabled(ctx context.Context, id int64, disabled bool, at time.Time) error {
	return t.db.Write(ctx, func(ctx context.Context, tx *Tx) error {
		res, err := tx.Exec(ctx, "UPDATE account_users SET disabled=? WHERE id=?", disabled, id)
		if err != nil {
			return err
		}
		if err := changed(res, fmt.Sprintf("user %d", id)); err != nil {
			return err
		}
		if !disabled {
			return nil
		}
		// Re-enabling must not bring old tokens back: revoke them now.
		_, err = tx.Exec(ctx, "UPDATE account_tokens SET revoked_at=? WHERE user_id=? AND revoked_at=0", nanos(at), id)
		return err
	})
}

// DeleteUser implements store.Accounts.
func (t *Tables) DeleteUser(ctx context.Context, id int64) error {
	return t.db.Write(ctx, func(ctx context.Context, tx *Tx) error {
		// Explicit, not only ON DELETE CASCADE: SQLite enforces foreign
		// keys only when the connection asks for it.
		if _, err := tx.Exec(ctx, "DELETE FROM account_tokens WHERE user_id=?", id); err != nil {
			return err
		}
		res, err := tx.Exec(ctx, "DELETE FROM account_users WHERE id=?", id)
		if err != nil {
			return err
		}
		return changed(res, fmt.Sprintf("user %d", id))
	})
}

const tokenCols = "id, user_id, kind, name, scopes, created_at, expires_at, revoked_at"

func scanToken(sc interface{ Scan(...any) error }, extra ...any) (store.Token, error) {
	var tk store.Token
	var scopes string
	var created, expires, revoked int64
	dst := append([]any{&tk.ID, &tk.UserID, &tk.Kind, &tk.Name, &scopes, &created, &expires, &revoked}, extra...)
	if err := sc.Scan(dst...); err != nil {
		return tk, err
	}
	tk.Scopes = []string{}
	if scopes != "" {
		tk.Scopes = strings.Split(scopes, " ")
	}
	tk.CreatedAt, tk.ExpiresAt, tk.RevokedAt = fromNanos(created), fromNanos(expires), fromNanos(revoked)
	return tk, nil
}

// CreateToken implements store.Accounts.
func (t *Tables) CreateToken(ctx context.Context, tk store.Token) (store.Token, error) {
	if tk.CreatedAt.IsZero() {
		tk.CreatedAt = time.Now()
	}
	for _, s := range tk.Scopes {
		if s == "" || strings.Contains(s, " ") {
			return tk, fmt.Errorf("sqldb: token scope %q: must be one word", s)
		}
	}
	err := t.db.Write(ctx, func(ctx context.Context, tx *Tx) error {
		var err error
		tk.ID, err = tx.Insert(ctx, "INSERT INTO account_tokens(user_id, kind, name, scopes, hash, created_at, expires_at, revoked_at) VALUES (?, ?, ?, ?, ?, ?, ?, 0)",
			tk.UserID, tk.Kind, tk.Name, strings.Join(tk.Scopes, " "), tk.Hash, nanos(tk.CreatedAt), nanos(tk.ExpiresAt))
		return err
	})
	if err != nil {
		return tk, fmt.Errorf("sqldb: creating token: %w", err)
	}
	tk.CreatedAt, tk.ExpiresAt = fromNanos(nanos(tk.CreatedAt)), fromNanos(nanos(tk.ExpiresAt))
	if tk.Scopes == nil {
		tk.Scopes = []string{}
	}
	return tk, nil
}

// TokenByHash implements store.Accounts.
func (t *Tables) TokenByHash(ctx context.Context, hash []byte, now time.Time) (store.Token, store.User, error) {
	var u store.User
	var pw, created int64
	var role string
	row := t.db.QueryRow(ctx, `SELECT t.id, t.user_id, t.kind, t.name, t.scopes, t.created_at, t.expires_at, t.revoked_at,
		u.id, u.username, u.role, u.disabled, u.password_hash, u.password_at, u.created_at
		FROM account_tokens t JOIN account_users u ON u.id = t.user_id
		WHERE t.hash=? AND t.revoked_at=0 AND t.expires_at > ?`, hash, nanos(now))
	tk, err := scanToken(row, &u.ID, &u.Username, &role, &u.Disabled, &u.PasswordHash, &pw, &created)
	if err != nil {
		return tk, u, NotFound(err, "token")
	}
	u.Role = store.Role(role)
	u.PasswordAt, u.CreatedAt = fromNanos(pw), fromNanos(created)
	return tk, u, nil
}

// ListTokens implements store.Accounts.
func (t *Tables) ListTokens(ctx context.Context, userID int64) ([]store.Token, error) {
	rows, err := t.db.Query(ctx, "SELECT "+tokenCols+" FROM account_tokens WHERE user_id=? ORDER BY id DESC LIMIT 1000", userID)
	if err != nil {
		return nil, fmt.Errorf("sqldb: listing tokens: %w", err)
	}
	defer rows.Close()
	var ts []store.Token
	for rows.Next() {
		tk, err := scanToken(rows)
		if err != nil {
			return nil, err
		}
		ts = append(ts, tk)
	}
	return ts, rows.Err()
}

// RevokeToken implements store.Accounts.
func (t *Tables) RevokeToken(ctx context.Context, userID, id int64, at time.Time) error {
	res, err := t.db.Exec(ctx, "UPDATE account_tokens SET revoked_at=? WHERE id=? AND user_id=? AND revoked_at=0", nanos(at), id, userID)
	if err != nil {
		return fmt.Errorf("sqldb: revoking token %d: %w", id, err)
	}
	if err := changed(res, fmt.Sprintf("token %d", id)); err != nil {
		// Already revoked is success: revoking is idempotent.
		var n int
		if qerr := t.db.QueryRow(ctx, "SELECT count(*) FROM account_tokens WHERE id=? AND user_id=?", id, userID).Scan(&n); qerr == nil && n > 0 {
			return nil
		}
		return err
	}
	return nil
}

var _ store.Accounts = (*Tables)(nil)
