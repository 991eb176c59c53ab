package security

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"io"

	"github.com/thingline/thingline/protocomm/pb"
)

// Security 1: X25519 key agreement, the shared secret XORed with
// SHA-256(PoP) when a PoP is set, and AES-256-CTR keyed with it. Both
// directions consume one single keystream in order, which is why Encrypt and
// Decrypt share one cipher.Stream.

const (
	sec1KeyLen    = 32
	sec1RandomLen = 16
)

func sec1Key(priv *ecdh.PrivateKey, peer []byte, pop []byte) ([]byte, error) {
	pub, err := ecdh.X25519().NewPublicKey(peer)
	if err != nil {
		return nil, fmt.Errorf("%w: public key: %v", ErrMalformed, err)
	}
	shared, err := priv.ECDH(pub)
	if err != nil {
		return nil, fmt.Errorf("%w: key agreement: %v", ErrHandshake, err)
	}
	if len(pop) > 0 {
		h := sha256.Sum256(pop)
		subtle.XORBytes(shared, shared, h[:])
	}
	return shared, nil
}

func newCTR(key, iv []byte) (cipher.Stream, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewCTR(block, iv), nil
}

func newX25519(r io.Reader) (*ecdh.PrivateKey, error) {
	// The private key is read as raw bytes rather than through GenerateKey,
	// so that a fixed reader gives a fixed key in known-answer tests.
	seed, err := readRand(r, sec1KeyLen)
	if err != nil {
		return nil, err
	}
	return ecdh.X25519().NewPrivateKey(seed)
}

// Sec1 is the device side of security 1.
type Sec1 struct {
	pop []byte
	// Rand supplies the device key and device_random; nil means crypto/rand.
	Rand io.Reader
	sess *sec1Session
}

type sec1Session struct {
	id        uint32
	state     int // 0: expecting command 0, 1: expecting command 1, 2: established
	devPub    []byte
	clientPub []byte
	stream    cipher.Stream
}

// NewSec1 returns the device side of security 1 with proof of possession
// pop; an empty pop means no PoP (the "no_pop" capability).
func NewSec1(pop []byte) *Sec1 { return &Sec1{pop: clone(pop)} }

func (s *Sec1) Version() int      { return 1 }
func (s *Sec1) PatchVersion() int { return 0 }

// HasPoP reports whether a proof of possession is required.
func (s *Sec1) HasPoP() bool { return len(s.pop) > 0 }

func (s *Sec1) rand() io.Reader {
	if s.Rand != nil {
		return s.Rand
	}
	return rand.Reader
}

func (s *Sec1) NewSession(id uint32) { s.sess = &sec1Session{id: id} }

func (s *Sec1) CloseSession(id uint32) {
	if s.sess != nil && s.sess.id == id {
		s.sess = nil
	}
}

func (s *Sec1) HasSession(id uint32) bool { return s.sess != nil && s.sess.id == id }

func (s *Sec1) Handshake(id uint32, req []byte) ([]byte, error) {
	if !s.HasSession(id) {
		return nil, fmt.Errorf("security1: session %d: %w", id, ErrNoSession)
	}
	sd, err := decodeSession(req, pb.SecSchemeVersion_SecScheme1)
	if err != nil {
		return nil, fmt.Errorf("security1: %w", err)
	}
	in := sd.GetSec1()
	if in == nil {
		return nil, fmt.Errorf("security1: %w: no sec1 payload", ErrMalformed)
	}
	var out *pb.Sec1Payload
	switch in.Msg {
	case pb.Sec1MsgType_Session_Command0:
		out, err = s.command0(in.GetSc0())
	case pb.Sec1MsgType_Session_Command1:
		out, err = s.command1(in.GetSc1())
	default:
		err = fmt.Errorf("%w: message type %d", ErrMalformed, in.Msg)
	}
	if err != nil {
		return nil, fmt.Errorf("security1: %w", err)
	}
	return encodeSession(&pb.SessionData{SecVer: sd.SecVer, Proto: &pb.SessionData_Sec1{Sec1: out}})
}

func (s *Sec1) command0(sc0 *pb.SessionCmd0) (*pb.Sec1Payload, error) {
	ss := s.sess
	if ss.state != 0 {
		return nil, fmt.Errorf("%w: command 0 out of order", ErrHandshake)
	}
	if sc0 == nil || len(sc0.ClientPubkey) != sec1KeyLen {
		return nil, fmt.Errorf("%w: client public key must be %d bytes", ErrMalformed, sec1KeyLen)
	}
	priv, err := newX25519(s.rand())
	if err != nil {
		return nil, fmt.Errorf("generating device key: %w", err)
	}
	devRandom, err := readRand(s.rand(), sec1RandomLen)
	if err != nil {
		return nil, fmt.Errorf("generating device random: %w", err)
	}
	key, err := sec1Key(priv, sc0.ClientPubkey, s.pop)
	if err != nil {
		return nil, err
	}
	if ss.stream, err = newCTR(key, devRandom); err != nil {
		return nil, fmt.Errorf("setting up cipher: %w", err)
	}
	ss.devPub = priv.PublicKey().Bytes()
	ss.clientPub = clone(sc0.ClientPubkey)
	ss.state = 1
	return &pb.Sec1Payload{
		Msg: pb.Sec1MsgType_Session_Response0,
		Payload: &pb.Sec1Payload_Sr0{Sr0: &pb.SessionResp0{
			Status: pb.Status_Success, DevicePubkey: ss.devPub, DeviceRandom: devRandom,
		}},
	}, nil
}

func (s *Sec1) command1(sc1 *pb.SessionCmd1) (*pb.Sec1Payload, error) {
	ss := s.sess
	if ss.state != 1 {
		return nil, fmt.Errorf("%w: command 1 out of order", ErrHandshake)
	}
	if sc1 == nil || len(sc1.ClientVerifyData) != sec1KeyLen {
		return nil, fmt.Errorf("%w: client verify data must be %d bytes", ErrMalformed, sec1KeyLen)
	}
	check := make([]byte, sec1KeyLen)
	ss.stream.XORKeyStream(check, sc1.ClientVerifyData)
	if subtle.ConstantTimeCompare(check, ss.devPub) != 1 {
		// The session cannot continue: its keystream position is now
		// meaningless. The client has to start over.
		s.sess = nil
		return nil, fmt.Errorf("%w: key mismatch (wrong proof of possession?)", ErrHandshake)
	}
	verify := make([]byte, sec1KeyLen)
	ss.stream.XORKeyStream(verify, ss.clientPub)
	ss.state = 2
	return &pb.Sec1Payload{
		Msg: pb.Sec1MsgType_Session_Response1,
		Payload: &pb.Sec1Payload_Sr1{Sr1: &pb.SessionResp1{
			Status: pb.Status_Success, DeviceVerifyData: verify,
		}},
	}, nil
}

func (s *Sec1) established(id uint32) (*sec1Session, error) {
	if s.sess == nil || s.sess.id != id || s.sess.state != 2 {
		return nil, fmt.Errorf("security1: session %d: %w", id, ErrNoSession)
	}
	return s.sess, nil
}

func (s *Sec1) Encrypt(id uint32, plain []byte) ([]byte, error) {
	ss, err := s.established(id)
	if err != nil {
		return nil, err
	}
	out := make([]byte, len(plain))
	ss.stream.XORKeyStream(out, plain)
	return out, nil
}

func (s *Sec1) Decrypt(id uint32, ct []byte) ([]byte, error) { return s.Encrypt(id, ct) }

// Client1 is the client side of security 1.
type Client1 struct {
	pop []byte
	// Rand supplies the client key; nil means crypto/rand.
	Rand   io.Reader
	stream cipher.Stream
}

// NewClient1 returns the client side of security 1 proving pop (empty for
// devices without a PoP).
func NewClient1(pop []byte) *Client1 { return &Client1{pop: clone(pop)} }

func (c *Client1) Version() int { return 1 }

func (c *Client1) Handshake(exchange func([]byte) ([]byte, error)) error {
	r := c.Rand
	if r == nil {
		r = rand.Reader
	}
	priv, err := newX25519(r)
	if err != nil {
		return fmt.Errorf("security1: generating client key: %w", err)
	}
	clientPub := priv.PublicKey().Bytes()
	req, err := encodeSession(&pb.SessionData{
		SecVer: pb.SecSchemeVersion_SecScheme1,
		Proto: &pb.SessionData_Sec1{Sec1: &pb.Sec1Payload{
			Msg:     pb.Sec1MsgType_Session_Command0,
			Payload: &pb.Sec1Payload_Sc0{Sc0: &pb.SessionCmd0{ClientPubkey: clientPub}},
		}},
	})
	if err != nil {
		return fmt.Errorf("security1: encoding command 0: %w", err)
	}
	resp, err := exchange(req)
	if err != nil {
		return fmt.Errorf("security1: command 0: %w", err)
	}
	sd, err := decodeSession(resp, pb.SecSchemeVersion_SecScheme1)
	if err != nil {
		return fmt.Errorf("security1: response 0: %w", err)
	}
	sr0 := sd.GetSec1().GetSr0()
	if sr0 == nil || sr0.Status != pb.Status_Success || len(sr0.DeviceRandom) != sec1RandomLen {
		return fmt.Errorf("security1: response 0: %w: missing or failed", ErrHandshake)
	}
	key, err := sec1Key(priv, sr0.DevicePubkey, c.pop)
	if err != nil {
		return fmt.Errorf("security1: %w", err)
	}
	if c.stream, err = newCTR(key, sr0.DeviceRandom); err != nil {
		return fmt.Errorf("security1: setting up cipher: %w", err)
	}
	verify := make([]byte, len(sr0.DevicePubkey))
	c.stream.XORKeyStream(verify, sr0.DevicePubkey)
	req, err = encodeSession(&pb.SessionData{
		SecVer: pb.SecSchemeVersion_SecScheme1,
		Proto: &pb.SessionData_Sec1{Sec1: &pb.Sec1Payload{
			Msg:     pb.Sec1MsgType_Session_Command1,
			Payload: &pb.Sec1Payload_Sc1{Sc1: &pb.SessionCmd1{ClientVerifyData: verify}},
		}},
	})
	if err != nil {
		return fmt.Errorf("security1: encoding command 1: %w", err)
	}
	resp, err = exchange(req)
	if err != nil {
		c.stream = nil
		return fmt.Errorf("security1: command 1 (wrong proof of possession?): %w", err)
	}
	sd, err = decodeSession(resp, pb.SecSchemeVersion_SecScheme1)
	if err != nil {
		c.stream = nil
		return fmt.Errorf("security1: response 1: %w", err)
	}
	sr1 := sd.GetSec1().GetSr1()
	if sr1 == nil {
		c.stream = nil
		return fmt.Errorf("security1: response 1: %w: missing", ErrHandshake)
	}
	check := make([]byte, len(sr1.DeviceVerifyData))
	c.stream.XORKeyStream(check, sr1.DeviceVerifyData)
	if !bytes.Equal(check, clientPub) {
		c.stream = nil
		return fmt.Errorf("security1: %w: device failed to verify", ErrHandshake)
	}
	return nil
}

func (c *Client1) Encrypt(plain []byte) ([]byte, error) {
	if c.stream == nil {
		return nil, fmt.Errorf("security1: %w", ErrNoSession)
	}
	out := make([]byte, len(plain))
	c.stream.XORKeyStream(out, plain)
	return out, nil
}

func (c *Client1) Decrypt(ct []byte) ([]byte, error) { return c.Encrypt(ct) }
