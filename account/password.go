// Package account holds what accounts need beyond their tables: password
// hashing (argon2id), bearer token secrets, and the limits on login
// attempts. It is a leaf: it knows the store's vocabulary and nothing else
// of thingline, so the API can use it directly.
package account

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"golang.org/x/crypto/argon2"
)

// Argon2id parameters: OWASP's minimum configuration (19 MiB, 2 passes, 1
// lane), cheap enough that a small node answers logins quickly, costly
// enough that a stolen table is slow to attack. They are encoded in every
// hash, so raising them later leaves existing hashes valid.
const (
	argonMemory  = 19 * 1024 // KiB
	argonTime    = 2
	argonThreads = 1
	argonKeyLen  = 32
	saltLen      = 16
)

// Password length limits: the lower bound is the usual minimum; the upper
// one stops a megabyte password from costing the server a megabyte hash.
const (
	MinPassword = 8
	MaxPassword = 256
)

// ErrMismatch is returned by CheckPassword for a wrong password.
var ErrMismatch = errors.New("account: password does not match")

// CheckPasswordPolicy says why a password is not acceptable, or nil.
func CheckPasswordPolicy(pw string) error {
	switch n := utf8.RuneCountInString(pw); {
	case n < MinPassword:
		return fmt.Errorf("password must have at least %d characters", MinPassword)
	case len(pw) > MaxPassword:
		return fmt.Errorf("password must have at most %d bytes", MaxPassword)
	}
	return nil
}

// HashPassword returns the PHC-style encoding of pw's argon2id hash with a
// fresh salt: $argon2id$v=19$m=…,t=…,p=…$salt$hash.
func HashPassword(pw string) (string, error) {
	salt := make([]byte, saltLen)
	if _, err := rand.Read(salt); err != nil {
		return "", fmt.Errorf("account: salt: %w", err)
	}
	key := argon2.IDKey([]byte(pw), salt, argonTime, argonMemory, argonThreads, argonKeyLen)
	b64 := base64.RawStdEncoding
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, argonMemory, argonTime, argonThreads,
		b64.EncodeToString(salt), b64.EncodeToString(key)), nil
}

// CheckPassword verifies pw against an encoded hash in constant time.
func CheckPassword(encoded, pw string) error {
	parts := strings.Split(encoded, "$")
	if len(parts) != 6 || parts[1] != "argon2id" {
		return errors.New("account: unknown password hash format")
	}
	var ver int
	if _, err := fmt.Sscanf(parts[2], "v=%d", &ver); err != nil || ver != argon2.Version {
		return errors.New("account: unsupported argon2 version")
	}
	var m uint32
	var t uint32
	var p uint8
	if _, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &m, &t, &p); err != nil || m == 0 || t == 0 || p == 0 || m > 1<<22 || t > 100 {
		return errors.New("account: bad argon2 parameters")
	}
	b64 := base64.RawStdEncoding
	salt, err := b64.DecodeString(parts[4])
	if err != nil {
		return errors.New("account: bad salt")
	}
	want, err := b64.DecodeString(parts[5])
	if err != nil || len(want) == 0 || len(want) > 128 {
		return errors.New("account: bad hash")
	}
	if len(pw) > MaxPassword {
		return ErrMismatch
	}
	got := argon2.IDKey([]byte(pw), salt, t, m, p, uint32(len(want)))
	if subtle.ConstantTimeCompare(got, want) != 1 {
		return ErrMismatch
	}
	return nil
}

// dummyHash is checked against when a login names no account, so that the
// answer takes as long as for a wrong password and does not reveal which
// usernames exist.
var dummyHash, _ = HashPassword("thingline-no-such-user")

// BurnPasswordCheck spends the time of one password check.
func BurnPasswordCheck(pw string) { CheckPassword(dummyHash, pw) }
