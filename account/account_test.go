package account

import (
	"strings"
	"testing"
	"time"
)

func TestPassword(t *testing.T) {
	h, err := HashPassword("correct horse")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(h, "$argon2id$v=19$m=19456,t=2,p=1$") {
		t.Errorf("hash %q: not the argon2id encoding", h)
	}
	if err := CheckPassword(h, "correct horse"); err != nil {
		t.Errorf("right password: %v", err)
	}
	if err := CheckPassword(h, "correct horsE"); err != ErrMismatch {
		t.Errorf("wrong password: %v", err)
	}
	h2, _ := HashPassword("correct horse")
	if h2 == h {
		t.Error("two hashes of one password are equal: no salt")
	}
	for _, bad := range []string{"", "$bcrypt$x", "$argon2id$v=19$m=0,t=1,p=1$AAAA$AAAA", "$argon2id$v=19$m=99999999,t=1,p=1$AAAA$AAAA", "$argon2id$v=19$m=8,t=1,p=1$!!$AAAA"} {
		if err := CheckPassword(bad, "x"); err == nil {
			t.Errorf("hash %q accepted", bad)
		}
	}
	if CheckPasswordPolicy("short") == nil || CheckPasswordPolicy(strings.Repeat("x", 300)) == nil || CheckPasswordPolicy("long enough") != nil {
		t.Error("password policy")
	}
}

func TestSecret(t *testing.T) {
	s, h, err := NewSecret(PrefixAPI)
	if err != nil {
		t.Fatal(err)
	}
	if !LooksLikeToken(s) || string(HashSecret(s)) != string(h) || len(h) != 32 {
		t.Errorf("secret %q", s)
	}
	if LooksLikeToken("tla_short") || LooksLikeToken("Bearer x") {
		t.Error("bad shapes accepted")
	}
}

func TestLimiter(t *testing.T) {
	l := NewLimiter(3, time.Minute)
	now := time.Unix(1000, 0)
	for i := 0; i < 3; i++ {
		if ok, _ := l.Allow("k", now); !ok {
			t.Fatalf("attempt %d refused", i)
		}
		l.Fail("k", now.Add(time.Duration(i)*time.Second))
	}
	ok, wait := l.Allow("k", now.Add(3*time.Second))
	if ok || wait != 57*time.Second {
		t.Errorf("after 3 failures: ok=%v wait=%v", ok, wait)
	}
	if ok, _ := l.Allow("other", now); !ok {
		t.Error("another key is limited")
	}
	if ok, _ := l.Allow("k", now.Add(61*time.Second)); !ok {
		t.Error("oldest failure left the window, still refused")
	}
	l.Reset("k")
	if ok, _ := l.Allow("k", now.Add(4*time.Second)); !ok {
		t.Error("reset did not forget")
	}
	l.Max = 2
	l.Fail("a", now)
	l.Fail("b", now)
	l.Fail("c", now)
	if len(l.keys) > 2 {
		t.Errorf("%d keys kept, max 2", len(l.keys))
	}
}
