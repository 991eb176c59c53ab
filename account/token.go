package account

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"strings"
)

// Bearer token secrets are 32 random bytes, base64url, behind a prefix
// that tells a person (and a secret scanner) what they are holding. They
// carry 256 bits of entropy, so a plain SHA-256 is the right stored form:
// a slow hash protects guessable secrets like passwords, not random ones,
// and a fast one keeps every request's lookup cheap.
const (
	PrefixSession = "tls_" // thingline session
	PrefixAPI     = "tla_" // thingline API token
)

// NewSecret returns a fresh token secret with the prefix, and its hash.
func NewSecret(prefix string) (secret string, hash []byte, err error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", nil, fmt.Errorf("account: token: %w", err)
	}
	secret = prefix + base64.RawURLEncoding.EncodeToString(b)
	return secret, HashSecret(secret), nil
}

// HashSecret is the stored form of a token secret.
func HashSecret(secret string) []byte {
	h := sha256.Sum256([]byte(secret))
	return h[:]
}

// LooksLikeToken tells whether s has the shape of one of our token secrets,
// so that anything else is refused without a store lookup.
func LooksLikeToken(s string) bool {
	if !strings.HasPrefix(s, PrefixSession) && !strings.HasPrefix(s, PrefixAPI) {
		return false
	}
	return len(s) == len(PrefixAPI)+43
}

// Scopes of API tokens. A token carries a subset; a session token carries
// all of them. They narrow what the user's role allows, never widen it.
const (
	ScopeRead  = "read"  // GET requests
	ScopeWrite = "write" // every other method
)

// ValidScope tells whether s is a known scope.
func ValidScope(s string) bool { return s == ScopeRead || s == ScopeWrite }
