// Package security implements the protocomm security schemes of ESP-IDF's
// provisioning protocol: the device side (Scheme) answering handshake
// messages on the prov-session endpoint and encrypting every other
// endpoint's traffic, and the client side (Client) a phone app or esp_prov
// plays. One file per scheme: sec0.go, sec1.go, sec2.go (with srp6a.go).
package security

import (
	"errors"
	"io"

	"google.golang.org/protobuf/proto"

	"github.com/thingline/thingline/protocomm/pb"
)

// Errors callers test with errors.Is.
var (
	// ErrHandshake means the peer failed to prove it knows the secret (wrong
	// proof of possession, wrong SRP password) or answered out of order.
	ErrHandshake = errors.New("handshake failed")
	// ErrNoSession means traffic arrived for a session that is not (or no
	// longer, or not yet fully) established.
	ErrNoSession = errors.New("no established session")
	// ErrMalformed means a handshake message could not be decoded or has
	// fields of the wrong size or type.
	ErrMalformed = errors.New("malformed message")
)

// Scheme is the device side of one security scheme. A device holds at most
// one session at a time, as ESP-IDF does: opening a new one drops the old.
// Implementations are not safe for concurrent use; protocomm.Protocomm
// serializes the calls.
type Scheme interface {
	// Version is the sec_ver the scheme speaks (0, 1 or 2).
	Version() int
	// PatchVersion is advertised as sec_patch_ver in proto-ver.
	PatchVersion() int
	// NewSession starts a handshake for transport session id, closing any
	// other session.
	NewSession(id uint32)
	// CloseSession forgets session id if it is the current one.
	CloseSession(id uint32)
	// HasSession reports whether id is the current session, finished or not.
	HasSession(id uint32) bool
	// Handshake answers one SessionData message sent to prov-session.
	Handshake(id uint32, req []byte) ([]byte, error)
	// Encrypt and Decrypt protect the bodies of all other endpoints except
	// proto-ver once the handshake has finished.
	Encrypt(id uint32, plain []byte) ([]byte, error)
	Decrypt(id uint32, ciphertext []byte) ([]byte, error)
}

// Client is the client side of one security scheme. It holds exactly one
// session.
type Client interface {
	Version() int
	// Handshake runs the whole handshake; exchange posts one SessionData to
	// prov-session and returns the device's answer.
	Handshake(exchange func(req []byte) ([]byte, error)) error
	Encrypt(plain []byte) ([]byte, error)
	Decrypt(ciphertext []byte) ([]byte, error)
}

// readRand fills n bytes from r, which tests replace with a fixed stream to
// get reproducible transcripts.
func readRand(r io.Reader, n int) ([]byte, error) {
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, err
	}
	return b, nil
}

func decodeSession(req []byte, ver pb.SecSchemeVersion) (*pb.SessionData, error) {
	var sd pb.SessionData
	if err := proto.Unmarshal(req, &sd); err != nil {
		return nil, errors.Join(ErrMalformed, err)
	}
	// ESP-IDF refuses a request for another scheme rather than answering it.
	if sd.SecVer != ver {
		return nil, errors.Join(ErrMalformed, errors.New("security version mismatch"))
	}
	return &sd, nil
}

func encodeSession(sd *pb.SessionData) ([]byte, error) { return proto.Marshal(sd) }
