package security

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"math/big"
	"os"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/thingline/thingline/protocomm/pb"
)

// vector is one handshake transcript computed by ESP-IDF v5.5.5's esp_prov
// security1.py / security2.py (client) plus an independent Python device,
// with fixed randomness. See docs/protocomm.md for how it was produced.
type vector struct {
	PoP        string `json:"pop"`
	User       string `json:"user"`
	Password   string `json:"password"`
	Patch      int    `json:"patch"`
	Salt       string `json:"salt"`
	Verifier   string `json:"verifier"`
	ClientRand string `json:"client_rand"`
	DeviceRand string `json:"device_rand"`
	ShortFirst bool   `json:"short_first"`
	Cmd0       string `json:"cmd0"`
	Resp0      string `json:"resp0"`
	Cmd1       string `json:"cmd1"`
	Resp1      string `json:"resp1"`
	SessionKey string `json:"session_key"`
	Msgs       []struct {
		Req, ReqCT, Resp, RespCT string
	} `json:"msgs"`
}

func (v *vector) UnmarshalJSON(b []byte) error {
	type plain vector
	var aux struct {
		plain
		Msgs []struct {
			Req    string `json:"req"`
			ReqCT  string `json:"req_ct"`
			Resp   string `json:"resp"`
			RespCT string `json:"resp_ct"`
		} `json:"msgs"`
	}
	if err := json.Unmarshal(b, &aux); err != nil {
		return err
	}
	*v = vector(aux.plain)
	v.Msgs = nil
	for _, m := range aux.Msgs {
		v.Msgs = append(v.Msgs, struct{ Req, ReqCT, Resp, RespCT string }{m.Req, m.ReqCT, m.Resp, m.RespCT})
	}
	return nil
}

func loadVectors(t *testing.T) map[string]vector {
	t.Helper()
	b, err := os.ReadFile("testdata/vectors.json")
	if err != nil {
		t.Fatal(err)
	}
	var vs map[string]vector
	if err := json.Unmarshal(b, &vs); err != nil {
		t.Fatal(err)
	}
	return vs
}

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// runKAT drives client against device, checking every message on the wire
// against the vector.
func runKAT(t *testing.T, v vector, dev Scheme, cli Client) {
	t.Helper()
	const sid = 0x1234
	dev.NewSession(sid)
	want := [][2]string{{v.Cmd0, v.Resp0}, {v.Cmd1, v.Resp1}}
	step := 0
	err := cli.Handshake(func(req []byte) ([]byte, error) {
		if step >= len(want) {
			t.Fatalf("unexpected handshake message %d", step)
		}
		if got := hex.EncodeToString(req); got != want[step][0] {
			t.Errorf("client message %d:\n got %s\nwant %s", step, got, want[step][0])
		}
		resp, err := dev.Handshake(sid, req)
		if err != nil {
			return nil, err
		}
		if got := hex.EncodeToString(resp); got != want[step][1] {
			t.Errorf("device message %d:\n got %s\nwant %s", step, got, want[step][1])
		}
		step++
		return resp, nil
	})
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	for i, m := range v.Msgs {
		ct, err := cli.Encrypt(unhex(t, m.Req))
		if err != nil {
			t.Fatal(err)
		}
		if hex.EncodeToString(ct) != m.ReqCT {
			t.Errorf("request %d ciphertext %x, want %s", i, ct, m.ReqCT)
		}
		pt, err := dev.Decrypt(sid, ct)
		if err != nil || hex.EncodeToString(pt) != m.Req {
			t.Fatalf("device decrypt %d: %x, %v", i, pt, err)
		}
		rct, err := dev.Encrypt(sid, unhex(t, m.Resp))
		if err != nil {
			t.Fatal(err)
		}
		if hex.EncodeToString(rct) != m.RespCT {
			t.Errorf("response %d ciphertext %x, want %s", i, rct, m.RespCT)
		}
		rpt, err := cli.Decrypt(rct)
		if err != nil || hex.EncodeToString(rpt) != m.Resp {
			t.Fatalf("client decrypt %d: %x, %v", i, rpt, err)
		}
	}
}

func TestSec1KnownAnswer(t *testing.T) {
	vs := loadVectors(t)
	for _, name := range []string{"sec1_pop", "sec1_nopop"} {
		t.Run(name, func(t *testing.T) {
			v := vs[name]
			dev := NewSec1([]byte(v.PoP))
			dev.Rand = bytes.NewReader(unhex(t, v.DeviceRand))
			cli := NewClient1([]byte(v.PoP))
			cli.Rand = bytes.NewReader(unhex(t, v.ClientRand))
			runKAT(t, v, dev, cli)
		})
	}
}

func TestSec2KnownAnswer(t *testing.T) {
	vs := loadVectors(t)
	for _, name := range []string{"sec2_patch1", "sec2_patch0", "sec2_short_a"} {
		t.Run(name, func(t *testing.T) {
			v := vs[name]
			dev, err := NewSec2(unhex(t, v.Salt), unhex(t, v.Verifier), v.Patch)
			if err != nil {
				t.Fatal(err)
			}
			dev.Rand = bytes.NewReader(unhex(t, v.DeviceRand))
			cli := NewClient2(v.User, v.Password, v.Patch)
			cr := bytes.NewReader(unhex(t, v.ClientRand))
			cli.Rand = cr
			runKAT(t, v, dev, cli)
			if cr.Len() != 0 {
				t.Errorf("client left %d random bytes unused; esp_prov re-draws a short A the same way", cr.Len())
			}
		})
	}
}

// A 383-byte A (what esp_prov before 5.5 sent once in 256 sessions) is
// refused by the device, like ESP-IDF does, and the device serves the next
// client.
func TestSec2ShortClientKeyRefused(t *testing.T) {
	v := loadVectors(t)["sec2_short_a"]
	first := unhex(t, v.ClientRand)[:32]
	first[0] |= 0x80
	aPub := new(big.Int).Exp(srpG, new(big.Int).SetBytes(first), srpN).Bytes()
	if len(aPub) != 383 {
		t.Fatalf("vector's first draw gives a %d-byte A, want 383", len(aPub))
	}
	dev, err := NewSec2(unhex(t, v.Salt), unhex(t, v.Verifier), 1)
	if err != nil {
		t.Fatal(err)
	}
	dev.NewSession(1)
	req, _ := proto.Marshal(&pb.SessionData{SecVer: 2, Proto: &pb.SessionData_Sec2{Sec2: &pb.Sec2Payload{
		Payload: &pb.Sec2Payload_Sc0{Sc0: &pb.S2SessionCmd0{ClientUsername: []byte(v.User), ClientPubkey: aPub}},
	}}})
	if _, err := dev.Handshake(1, req); !errors.Is(err, ErrMalformed) {
		t.Fatalf("383-byte A: err %v, want ErrMalformed", err)
	}
	handshake(t, dev, 2, NewClient2(v.User, v.Password, 1))
}

func handshake(t *testing.T, dev Scheme, sid uint32, cli Client) {
	t.Helper()
	dev.NewSession(sid)
	if err := cli.Handshake(func(req []byte) ([]byte, error) { return dev.Handshake(sid, req) }); err != nil {
		t.Fatalf("handshake: %v", err)
	}
	ct, err := cli.Encrypt([]byte("ping"))
	if err != nil {
		t.Fatal(err)
	}
	pt, err := dev.Decrypt(sid, ct)
	if err != nil || string(pt) != "ping" {
		t.Fatalf("device decrypt: %q, %v", pt, err)
	}
}

func TestWrongSecretRefused(t *testing.T) {
	salt, ver, err := GenSaltVerifier("wifiprov", "abcd1234", 16)
	if err != nil {
		t.Fatal(err)
	}
	sec2, err := NewSec2(salt, ver, 1)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name      string
		dev       Scheme
		bad, good Client
	}{
		{"sec1", NewSec1([]byte("abcd1234")), NewClient1([]byte("wrong")), NewClient1([]byte("abcd1234"))},
		{"sec1 no pop given", NewSec1([]byte("abcd1234")), NewClient1(nil), NewClient1([]byte("abcd1234"))},
		{"sec2 password", sec2, NewClient2("wifiprov", "wrong", 1), NewClient2("wifiprov", "abcd1234", 1)},
		{"sec2 user", sec2, NewClient2("someone", "abcd1234", 1), NewClient2("wifiprov", "abcd1234", 1)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.dev.NewSession(9)
			err := c.bad.Handshake(func(req []byte) ([]byte, error) { return c.dev.Handshake(9, req) })
			if !errors.Is(err, ErrHandshake) {
				t.Fatalf("bad secret: err %v, want ErrHandshake", err)
			}
			if _, err := c.dev.Encrypt(9, []byte("x")); !errors.Is(err, ErrNoSession) {
				t.Fatalf("session usable after failed handshake: %v", err)
			}
			handshake(t, c.dev, 10, c.good)
		})
	}
}

func TestGarbageRefused(t *testing.T) {
	salt, ver, _ := GenSaltVerifier("u", "p", 16)
	sec2, _ := NewSec2(salt, ver, 1)
	for _, dev := range []Scheme{NewSec0(), NewSec1([]byte("pop")), sec2} {
		dev.NewSession(3)
		for _, req := range [][]byte{{0xff, 0xff, 0xff}, {0x10, 0x07}, {}, {0x10, 0x01, 0x5a, 0x00}} {
			if _, err := dev.Handshake(3, req); err == nil && dev.Version() != 0 {
				t.Errorf("sec%d accepted %x", dev.Version(), req)
			}
		}
		if dev.Version() == 0 {
			continue
		}
		if _, err := dev.Decrypt(3, []byte("not encrypted at all")); err == nil {
			t.Errorf("sec%d decrypted before the handshake", dev.Version())
		}
	}
	// After a finished sec2 handshake, a forged ciphertext fails and does
	// not advance the nonce: the genuine next message still decrypts.
	cli := NewClient2("u", "p", 1)
	handshake(t, sec2, 4, cli)
	if _, err := sec2.Decrypt(4, bytes.Repeat([]byte{7}, 40)); err == nil {
		t.Fatal("forged ciphertext accepted")
	}
	ct, _ := cli.Encrypt([]byte("after"))
	if pt, err := sec2.Decrypt(4, ct); err != nil || string(pt) != "after" {
		t.Fatalf("after forgery: %q, %v", pt, err)
	}
}

func TestSec2NonceCounter(t *testing.T) {
	salt, ver, _ := GenSaltVerifier("u", "p", 8)
	dev, _ := NewSec2(salt, ver, 1)
	cli := NewClient2("u", "p", 1)
	handshake(t, dev, 1, cli)
	// Encrypting the same plaintext twice must give different ciphertexts
	// under patch 1, and the same under patch 0.
	a, _ := dev.Encrypt(1, []byte("same"))
	b, _ := dev.Encrypt(1, []byte("same"))
	if bytes.Equal(a, b) {
		t.Fatal("patch 1 reused a nonce")
	}
	dev0, _ := NewSec2(salt, ver, 0)
	handshake(t, dev0, 1, NewClient2("u", "p", 0))
	a, _ = dev0.Encrypt(1, []byte("same"))
	b, _ = dev0.Encrypt(1, []byte("same"))
	if !bytes.Equal(a, b) {
		t.Fatal("patch 0 must keep its constant nonce")
	}
	// A client that assumes the wrong patch cannot talk to the device.
	dev1, _ := NewSec2(salt, ver, 1)
	wrong := NewClient2("u", "p", 0)
	handshake(t, dev1, 1, wrong)
	ct, _ := wrong.Encrypt([]byte("x"))
	if _, err := dev1.Decrypt(1, ct); err == nil {
		t.Fatal("second message decrypted with patch mismatch")
	}
}

func TestGenSaltVerifier(t *testing.T) {
	v := loadVectors(t)["sec2_patch1"]
	salt := unhex(t, v.Salt)
	// The verifier for the vector's salt, as esp_prov's srp6a computes it.
	got := new(big.Int).Exp(srpG, srpX(salt, v.User, v.Password), srpN).Bytes()
	if hex.EncodeToString(got) != v.Verifier {
		t.Fatal("verifier differs from esp_prov's")
	}
	zeros := bytes.NewReader(append(make([]byte, 16), bytes.Repeat([]byte{1}, 16)...))
	s, _, err := genSaltVerifier(zeros, "u", "p", 16)
	if err != nil || s[0] == 0 {
		t.Fatalf("salt %x, %v: a leading zero byte must be re-drawn", s, err)
	}
	if _, _, err := GenSaltVerifier("u", "p", 0); err == nil {
		t.Fatal("salt length 0 accepted")
	}
}

func FuzzSchemeHandshake(f *testing.F) {
	vs := map[string]vector{}
	if b, err := os.ReadFile("testdata/vectors.json"); err == nil {
		_ = json.Unmarshal(b, &vs)
	}
	for _, v := range vs {
		for _, h := range []string{v.Cmd0, v.Cmd1} {
			b, _ := hex.DecodeString(h)
			f.Add(b)
		}
	}
	f.Add([]byte{0x10, 0x00, 0x52, 0x02, 0xa2, 0x01, 0x00})
	salt, ver, _ := GenSaltVerifier("u", "p", 16)
	f.Fuzz(func(t *testing.T, req []byte) {
		sec2, _ := NewSec2(salt, ver, 1)
		for _, dev := range []Scheme{NewSec0(), NewSec1([]byte("pop")), sec2} {
			dev.NewSession(1)
			_, _ = dev.Handshake(1, req)
			_, _ = dev.Handshake(1, req)
			_, _ = dev.Decrypt(1, req)
		}
	})
}
