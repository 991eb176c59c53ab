package security

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/subtle"
	"encoding/binary"
	"fmt"
	"io"
	"math/big"

	"github.com/thingline/thingline/protocomm/pb"
)

// Security 2: SRP-6a (srp6a.go) and AES-256-GCM keyed with the first 32
// bytes of the SRP session key. Two nonce rules exist:
//   - patch 0 (before IDF 5.4.1): device_nonce is used unchanged for every
//     message in both directions, with whatever length the device sent;
//   - patch 1: a 12-byte nonce whose bytes 8..11 are a big-endian counter
//     shared by both directions, advanced after every successful encrypt
//     and decrypt.

const (
	sec2ProofLen    = 64
	sec2TagLen      = 16
	sec2Patch1Nonce = 12
	sec2Patch0Nonce = 16
)

// gcmState is the post-handshake cipher of either side.
type gcmState struct {
	aead  cipher.AEAD
	nonce []byte
	patch int
}

func newGCMState(key, nonce []byte, patch int) (*gcmState, error) {
	block, err := aes.NewCipher(key[:32])
	if err != nil {
		return nil, err
	}
	if patch == 1 && len(nonce) != sec2Patch1Nonce {
		return nil, fmt.Errorf("%w: patch 1 nonce must be %d bytes, got %d", ErrMalformed, sec2Patch1Nonce, len(nonce))
	}
	if len(nonce) < 8 || len(nonce) > 64 {
		return nil, fmt.Errorf("%w: nonce of %d bytes", ErrMalformed, len(nonce))
	}
	aead, err := cipher.NewGCMWithNonceSize(block, len(nonce))
	if err != nil {
		return nil, err
	}
	return &gcmState{aead: aead, nonce: clone(nonce), patch: patch}, nil
}

func (g *gcmState) counter() uint32 { return binary.BigEndian.Uint32(g.nonce[8:12]) }

func (g *gcmState) check() error {
	// ESP-IDF refuses to go on once the counter wrapped to 0 rather than
	// reuse a nonce; the client must open a new session.
	if g.patch == 1 && g.counter() == 0 {
		return fmt.Errorf("security2: nonce counter exhausted, restart the session")
	}
	return nil
}

func (g *gcmState) advance() {
	if g.patch == 1 {
		binary.BigEndian.PutUint32(g.nonce[8:12], g.counter()+1)
	}
}

func (g *gcmState) seal(plain []byte) ([]byte, error) {
	if err := g.check(); err != nil {
		return nil, err
	}
	out := g.aead.Seal(nil, g.nonce, plain, nil)
	g.advance()
	return out, nil
}

func (g *gcmState) open(ct []byte) ([]byte, error) {
	if err := g.check(); err != nil {
		return nil, err
	}
	if len(ct) < sec2TagLen {
		return nil, fmt.Errorf("security2: ciphertext shorter than the tag")
	}
	out, err := g.aead.Open(nil, g.nonce, ct, nil)
	if err != nil {
		return nil, fmt.Errorf("security2: decrypting: %w", err)
	}
	g.advance()
	return out, nil
}

// Sec2 is the device side of security 2.
type Sec2 struct {
	salt, verifier []byte
	patch          int
	// Rand supplies the SRP secret b and the nonce; nil means crypto/rand.
	Rand io.Reader
	sess *sec2Session
}

type sec2Session struct {
	id     uint32
	state  int // 0: expecting command 0, 1: expecting command 1, 2: established
	user   []byte
	aBytes []byte
	bBytes []byte
	key    []byte
	gcm    *gcmState
}

// NewSec2 returns the device side of security 2 for the salt and verifier
// from GenSaltVerifier. patch is the sec_patch_ver to speak: 1 for ESP-IDF
// 5.4.1 and later, 0 for older firmware and the apps that only know it.
func NewSec2(salt, verifier []byte, patch int) (*Sec2, error) {
	if len(salt) == 0 || len(verifier) == 0 || len(verifier) > srpNLen {
		return nil, fmt.Errorf("security2: salt and verifier must be set (verifier at most %d bytes)", srpNLen)
	}
	if patch != 0 && patch != 1 {
		return nil, fmt.Errorf("security2: unknown patch version %d", patch)
	}
	return &Sec2{salt: clone(salt), verifier: clone(verifier), patch: patch}, nil
}

func (s *Sec2) Version() int      { return 2 }
func (s *Sec2) PatchVersion() int { return s.patch }

func (s *Sec2) rand() io.Reader {
	if s.Rand != nil {
		return s.Rand
	}
	return rand.Reader
}

func (s *Sec2) NewSession(id uint32) { s.sess = &sec2Session{id: id} }

func (s *Sec2) CloseSession(id uint32) {
	if s.sess != nil && s.sess.id == id {
		s.sess = nil
	}
}

func (s *Sec2) HasSession(id uint32) bool { return s.sess != nil && s.sess.id == id }

func (s *Sec2) Handshake(id uint32, req []byte) ([]byte, error) {
	if !s.HasSession(id) {
		return nil, fmt.Errorf("security2: session %d: %w", id, ErrNoSession)
	}
	sd, err := decodeSession(req, pb.SecSchemeVersion_SecScheme2)
	if err != nil {
		return nil, fmt.Errorf("security2: %w", err)
	}
	in := sd.GetSec2()
	if in == nil {
		return nil, fmt.Errorf("security2: %w: no sec2 payload", ErrMalformed)
	}
	var out *pb.Sec2Payload
	switch in.Msg {
	case pb.Sec2MsgType_S2Session_Command0:
		out, err = s.command0(in.GetSc0())
	case pb.Sec2MsgType_S2Session_Command1:
		out, err = s.command1(in.GetSc1())
	default:
		err = fmt.Errorf("%w: message type %d", ErrMalformed, in.Msg)
	}
	if err != nil {
		return nil, fmt.Errorf("security2: %w", err)
	}
	return encodeSession(&pb.SessionData{SecVer: sd.SecVer, Proto: &pb.SessionData_Sec2{Sec2: out}})
}

func (s *Sec2) command0(sc0 *pb.S2SessionCmd0) (*pb.Sec2Payload, error) {
	ss := s.sess
	if ss.state != 0 {
		return nil, fmt.Errorf("%w: command 0 out of order", ErrHandshake)
	}
	// ESP-IDF insists on a full-width A; esp_prov before IDF 5.5 sent 383
	// bytes about once in 256 sessions and simply failed then.
	if sc0 == nil || len(sc0.ClientPubkey) != srpNLen {
		return nil, fmt.Errorf("%w: client public key must be %d bytes", ErrMalformed, srpNLen)
	}
	if len(sc0.ClientUsername) == 0 || len(sc0.ClientUsername) > 0xffff {
		return nil, fmt.Errorf("%w: bad username length %d", ErrMalformed, len(sc0.ClientUsername))
	}
	a := new(big.Int).SetBytes(sc0.ClientPubkey)
	if new(big.Int).Mod(a, srpN).Sign() == 0 {
		return nil, fmt.Errorf("%w: client %v", ErrHandshake, errSRPParam)
	}
	b, err := srpRandom(s.rand())
	if err != nil {
		return nil, fmt.Errorf("generating secret: %w", err)
	}
	v := new(big.Int).SetBytes(s.verifier)
	// B = (k·v + g^b) mod N, sent in its minimal encoding as esp_srp.c does.
	bPub := new(big.Int).Mul(srpK, v)
	bPub.Add(bPub, new(big.Int).Exp(srpG, b, srpN))
	bPub.Mod(bPub, srpN)
	u := srpU(a, bPub)
	// S = (A · v^u)^b mod N
	sv := new(big.Int).Exp(v, u, srpN)
	sv.Mul(sv, a).Mod(sv, srpN)
	sv.Exp(sv, b, srpN)
	ss.key = srpHash(sv.Bytes())
	ss.user = clone(sc0.ClientUsername)
	ss.aBytes = clone(sc0.ClientPubkey)
	ss.bBytes = bPub.Bytes()
	ss.state = 1
	return &pb.Sec2Payload{
		Msg: pb.Sec2MsgType_S2Session_Response0,
		Payload: &pb.Sec2Payload_Sr0{Sr0: &pb.S2SessionResp0{
			Status: pb.Status_Success, DevicePubkey: ss.bBytes, DeviceSalt: clone(s.salt),
		}},
	}, nil
}

func (s *Sec2) command1(sc1 *pb.S2SessionCmd1) (*pb.Sec2Payload, error) {
	ss := s.sess
	if ss.state != 1 {
		return nil, fmt.Errorf("%w: command 1 out of order", ErrHandshake)
	}
	if sc1 == nil || len(sc1.ClientProof) != sec2ProofLen {
		return nil, fmt.Errorf("%w: client proof must be %d bytes", ErrMalformed, sec2ProofLen)
	}
	m1 := srpM1(string(ss.user), s.salt, ss.aBytes, ss.bBytes, ss.key)
	if subtle.ConstantTimeCompare(m1, sc1.ClientProof) != 1 {
		s.sess = nil
		return nil, fmt.Errorf("%w: client proof mismatch (wrong username or password?)", ErrHandshake)
	}
	m2 := srpM2(ss.aBytes, m1, ss.key)
	var nonce []byte
	var err error
	if s.patch == 1 {
		if nonce, err = readRand(s.rand(), 8); err != nil {
			return nil, fmt.Errorf("generating nonce: %w", err)
		}
		nonce = binary.BigEndian.AppendUint32(nonce, 1)
	} else if nonce, err = readRand(s.rand(), sec2Patch0Nonce); err != nil {
		return nil, fmt.Errorf("generating nonce: %w", err)
	}
	if ss.gcm, err = newGCMState(ss.key, nonce, s.patch); err != nil {
		return nil, err
	}
	ss.state = 2
	return &pb.Sec2Payload{
		Msg: pb.Sec2MsgType_S2Session_Response1,
		Payload: &pb.Sec2Payload_Sr1{Sr1: &pb.S2SessionResp1{
			Status: pb.Status_Success, DeviceProof: m2, DeviceNonce: clone(nonce),
		}},
	}, nil
}

func (s *Sec2) established(id uint32) (*sec2Session, error) {
	if s.sess == nil || s.sess.id != id || s.sess.state != 2 {
		return nil, fmt.Errorf("security2: session %d: %w", id, ErrNoSession)
	}
	return s.sess, nil
}

func (s *Sec2) Encrypt(id uint32, plain []byte) ([]byte, error) {
	ss, err := s.established(id)
	if err != nil {
		return nil, err
	}
	return ss.gcm.seal(plain)
}

func (s *Sec2) Decrypt(id uint32, ct []byte) ([]byte, error) {
	ss, err := s.established(id)
	if err != nil {
		return nil, err
	}
	return ss.gcm.open(ct)
}

// Client2 is the client side of security 2.
type Client2 struct {
	user, pass string
	patch      int
	// Rand supplies the SRP secret a; nil means crypto/rand.
	Rand io.Reader
	gcm  *gcmState
}

// NewClient2 returns the client side of security 2. patch is the device's
// sec_patch_ver from proto-ver (0 when absent).
func NewClient2(user, pass string, patch int) *Client2 {
	return &Client2{user: user, pass: pass, patch: patch}
}

func (c *Client2) Version() int { return 2 }

// clientKey draws a until A = g^a mod N fills all 384 bytes: devices refuse
// a shorter A, and a leading zero byte cannot be sent either since the
// proof hashes A in its minimal encoding.
func clientKey(r io.Reader) (a, aPub *big.Int, err error) {
	for {
		if a, err = srpRandom(r); err != nil {
			return nil, nil, err
		}
		aPub = new(big.Int).Exp(srpG, a, srpN)
		if len(aPub.Bytes()) == srpNLen {
			return a, aPub, nil
		}
	}
}

func (c *Client2) Handshake(exchange func([]byte) ([]byte, error)) error {
	r := c.Rand
	if r == nil {
		r = rand.Reader
	}
	a, aPub, err := clientKey(r)
	if err != nil {
		return fmt.Errorf("security2: generating client key: %w", err)
	}
	aBytes := aPub.Bytes()
	req, err := encodeSession(&pb.SessionData{
		SecVer: pb.SecSchemeVersion_SecScheme2,
		Proto: &pb.SessionData_Sec2{Sec2: &pb.Sec2Payload{
			Msg: pb.Sec2MsgType_S2Session_Command0,
			Payload: &pb.Sec2Payload_Sc0{Sc0: &pb.S2SessionCmd0{
				ClientUsername: []byte(c.user), ClientPubkey: aBytes,
			}},
		}},
	})
	if err != nil {
		return fmt.Errorf("security2: encoding command 0: %w", err)
	}
	resp, err := exchange(req)
	if err != nil {
		return fmt.Errorf("security2: command 0: %w", err)
	}
	sd, err := decodeSession(resp, pb.SecSchemeVersion_SecScheme2)
	if err != nil {
		return fmt.Errorf("security2: response 0: %w", err)
	}
	sr0 := sd.GetSec2().GetSr0()
	if sr0 == nil || sr0.Status != pb.Status_Success || len(sr0.DeviceSalt) == 0 ||
		len(sr0.DevicePubkey) == 0 || len(sr0.DevicePubkey) > srpNLen {
		return fmt.Errorf("security2: response 0: %w: missing or failed", ErrHandshake)
	}
	bPub := new(big.Int).SetBytes(sr0.DevicePubkey)
	if new(big.Int).Mod(bPub, srpN).Sign() == 0 {
		return fmt.Errorf("security2: %w: device %v", ErrHandshake, errSRPParam)
	}
	u := srpU(aPub, bPub)
	if u.Sign() == 0 {
		return fmt.Errorf("security2: %w: u is zero", ErrHandshake)
	}
	x := srpX(sr0.DeviceSalt, c.user, c.pass)
	// S = (B - k·g^x)^(a + u·x) mod N
	base := new(big.Int).Exp(srpG, x, srpN)
	base.Mul(base, srpK)
	base.Sub(bPub, base).Mod(base, srpN)
	exp := new(big.Int).Mul(u, x)
	exp.Add(exp, a)
	key := srpHash(new(big.Int).Exp(base, exp, srpN).Bytes())
	m1 := srpM1(c.user, sr0.DeviceSalt, aBytes, sr0.DevicePubkey, key)

	req, err = encodeSession(&pb.SessionData{
		SecVer: pb.SecSchemeVersion_SecScheme2,
		Proto: &pb.SessionData_Sec2{Sec2: &pb.Sec2Payload{
			Msg:     pb.Sec2MsgType_S2Session_Command1,
			Payload: &pb.Sec2Payload_Sc1{Sc1: &pb.S2SessionCmd1{ClientProof: m1}},
		}},
	})
	if err != nil {
		return fmt.Errorf("security2: encoding command 1: %w", err)
	}
	resp, err = exchange(req)
	if err != nil {
		return fmt.Errorf("security2: command 1 (wrong username or password?): %w", err)
	}
	sd, err = decodeSession(resp, pb.SecSchemeVersion_SecScheme2)
	if err != nil {
		return fmt.Errorf("security2: response 1: %w", err)
	}
	sr1 := sd.GetSec2().GetSr1()
	if sr1 == nil || sr1.Status != pb.Status_Success {
		return fmt.Errorf("security2: response 1: %w: missing or failed", ErrHandshake)
	}
	if subtle.ConstantTimeCompare(sr1.DeviceProof, srpM2(aBytes, m1, key)) != 1 {
		return fmt.Errorf("security2: %w: device proof mismatch", ErrHandshake)
	}
	g, err := newGCMState(key, sr1.DeviceNonce, c.patch)
	if err != nil {
		return fmt.Errorf("security2: %w", err)
	}
	c.gcm = g
	return nil
}

func (c *Client2) Encrypt(plain []byte) ([]byte, error) {
	if c.gcm == nil {
		return nil, fmt.Errorf("security2: %w", ErrNoSession)
	}
	return c.gcm.seal(plain)
}

func (c *Client2) Decrypt(ct []byte) ([]byte, error) {
	if c.gcm == nil {
		return nil, fmt.Errorf("security2: %w", ErrNoSession)
	}
	return c.gcm.open(ct)
}
