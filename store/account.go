package store

import (
	"context"
	"time"
)

// Role is what an account may do. The tenant (the manufacturer) has admins
// and operators; end users own devices.
type Role string

const (
	RoleAdmin    Role = "admin"    // everything
	RoleOperator Role = "operator" // factory and support: ledger, device state, certificates; no telemetry
	RoleUser     Role = "user"     // an end user: only the devices they own
)

// Valid tells whether r is one of the three roles.
func (r Role) Valid() bool { return r == RoleAdmin || r == RoleOperator || r == RoleUser }

// Staff tells whether r belongs to the tenant rather than to an end user.
func (r Role) Staff() bool { return r == RoleAdmin || r == RoleOperator }

// User is one account. PasswordHash is the encoded hash (package account
// makes and checks it); it never leaves the server.
type User struct {
	ID           int64     `json:"id"`
	Username     string    `json:"username"`
	Role         Role      `json:"role"`
	Disabled     bool      `json:"disabled"`
	CreatedAt    time.Time `json:"createdAt"`
	PasswordHash string    `json:"-"`
	// PasswordAt is when the password was last set (SetPassword revoked
	// the sessions of the time in the same transaction).
	PasswordAt time.Time `json:"passwordChangedAt"`
}

// Token kinds.
const (
	TokenSession = "session" // from a password login, short-lived
	TokenAPI     = "api"     // made by its user for a program, long-lived, scoped
)

// Token is one bearer token of a user. Only the SHA-256 of the secret is
// stored: the secret is shown once, when the token is made.
type Token struct {
	ID        int64     `json:"id"`
	UserID    int64     `json:"userId"`
	Kind      string    `json:"kind"`
	Name      string    `json:"name,omitempty"`
	Scopes    []string  `json:"scopes"`
	CreatedAt time.Time `json:"createdAt"`
	ExpiresAt time.Time `json:"expiresAt"`
	RevokedAt time.Time `json:"revokedAt,omitzero"`
	Hash      []byte    `json:"-"`
}

// Accounts stores users and their tokens.
type Accounts interface {
	// CreateUser stores u (its ID and CreatedAt are assigned); ErrExists
	// when the username is taken.
	CreateUser(ctx context.Context, u User) (User, error)
	GetUser(ctx context.Context, id int64) (User, error)
	GetUserByName(ctx context.Context, username string) (User, error)
	// ListUsers pages through users by username.
	ListUsers(ctx context.Context, opt ListOptions) ([]User, error)
	// SetPassword replaces the password hash and revokes the user's
	// session tokens in the same transaction.
	SetPassword(ctx context.Context, id int64, hash string, at time.Time) error
	// SetDisabled disables (revoking every token) or re-enables a user.
	SetDisabled(ctx context.Context, id int64, disabled bool, at time.Time) error
	// DeleteUser removes the user and their tokens.
	DeleteUser(ctx context.Context, id int64) error

	// CreateToken stores t (ID and CreatedAt assigned).
	CreateToken(ctx context.Context, t Token) (Token, error)
	// TokenByHash returns a token that is neither revoked nor expired at
	// now, with its user; ErrNotFound otherwise.
	TokenByHash(ctx context.Context, hash []byte, now time.Time) (Token, User, error)
	// ListTokens returns a user's tokens, newest first, revoked and expired
	// ones included.
	ListTokens(ctx context.Context, userID int64) ([]Token, error)
	// RevokeToken revokes one token of a user; ErrNotFound when the user
	// has no such token.
	RevokeToken(ctx context.Context, userID, id int64, at time.Time) error
}
