package security

import (
	"fmt"

	"github.com/thingline/thingline/protocomm/pb"
)

// Sec0 is security scheme 0: a handshake that proves nothing and plaintext
// traffic. It exists for development boards and esp_prov --sec_ver 0.
type Sec0 struct{ id *uint32 }

// NewSec0 returns the device side of security 0.
func NewSec0() *Sec0 { return &Sec0{} }

func (s *Sec0) Version() int      { return 0 }
func (s *Sec0) PatchVersion() int { return 0 }

func (s *Sec0) NewSession(id uint32) { s.id = &id }

func (s *Sec0) CloseSession(id uint32) {
	if s.id != nil && *s.id == id {
		s.id = nil
	}
}

func (s *Sec0) HasSession(id uint32) bool { return s.id != nil && *s.id == id }

func (s *Sec0) Handshake(id uint32, req []byte) ([]byte, error) {
	sd, err := decodeSession(req, pb.SecSchemeVersion_SecScheme0)
	if err != nil {
		return nil, fmt.Errorf("security0: %w", err)
	}
	in := sd.GetSec0()
	if in == nil || in.Msg != pb.Sec0MsgType_S0_Session_Command || in.GetSc() == nil {
		return nil, fmt.Errorf("security0: %w: expected session command", ErrMalformed)
	}
	return encodeSession(&pb.SessionData{
		SecVer: pb.SecSchemeVersion_SecScheme0,
		Proto: &pb.SessionData_Sec0{Sec0: &pb.Sec0Payload{
			Msg:     pb.Sec0MsgType_S0_Session_Response,
			Payload: &pb.Sec0Payload_Sr{Sr: &pb.S0SessionResp{Status: pb.Status_Success}},
		}},
	})
}

// Encrypt and Decrypt copy: ESP-IDF's security 0 does not even check the
// session, so neither do we.
func (s *Sec0) Encrypt(id uint32, plain []byte) ([]byte, error) { return clone(plain), nil }
func (s *Sec0) Decrypt(id uint32, ct []byte) ([]byte, error)    { return clone(ct), nil }

func clone(b []byte) []byte { return append([]byte(nil), b...) }

// Client0 is the client side of security 0.
type Client0 struct{}

// NewClient0 returns the client side of security 0.
func NewClient0() *Client0 { return &Client0{} }

func (c *Client0) Version() int { return 0 }

func (c *Client0) Handshake(exchange func([]byte) ([]byte, error)) error {
	req, err := encodeSession(&pb.SessionData{
		SecVer: pb.SecSchemeVersion_SecScheme0,
		Proto: &pb.SessionData_Sec0{Sec0: &pb.Sec0Payload{
			Msg:     pb.Sec0MsgType_S0_Session_Command,
			Payload: &pb.Sec0Payload_Sc{Sc: &pb.S0SessionCmd{}},
		}},
	})
	if err != nil {
		return fmt.Errorf("security0: encoding session command: %w", err)
	}
	resp, err := exchange(req)
	if err != nil {
		return fmt.Errorf("security0: session command: %w", err)
	}
	// Like esp_prov, only the scheme of the answer is checked.
	if _, err := decodeSession(resp, pb.SecSchemeVersion_SecScheme0); err != nil {
		return fmt.Errorf("security0: session response: %w", err)
	}
	return nil
}

func (c *Client0) Encrypt(plain []byte) ([]byte, error) { return clone(plain), nil }
func (c *Client0) Decrypt(ct []byte) ([]byte, error)    { return clone(ct), nil }
