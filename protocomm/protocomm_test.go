package protocomm_test

import (
	"context"
	"errors"
	"testing"

	"github.com/thingline/thingline/protocomm"
	"github.com/thingline/thingline/protocomm/security"
)

// direct is an in-process transport: Handle called straight, one session.
type direct struct {
	pc  *protocomm.Protocomm
	sid uint32
}

func (d direct) Do(_ context.Context, ep string, req []byte) ([]byte, error) {
	return d.pc.Handle(d.sid, ep, req)
}

func TestDispatch(t *testing.T) {
	pc := protocomm.New(security.NewSec1([]byte("pop")))
	pc.SetVersion("V9")
	pc.AddEndpoint("echo", func(sid uint32, req []byte) ([]byte, error) { return append(req, byte(sid)), nil })
	pc.AddEndpoint("fail", func(uint32, []byte) ([]byte, error) { return nil, errors.New("no") })
	pc.AddEndpoint(protocomm.EndpointVersion, func(uint32, []byte) ([]byte, error) { return []byte("hijacked"), nil })
	ctx := context.Background()

	// proto-ver answers in clear, before and without any session.
	if v, err := protocomm.Version(ctx, direct{pc, 5}); err != nil || string(v) != "V9" {
		t.Fatalf("proto-ver: %q %v", v, err)
	}
	if _, err := pc.Handle(5, "echo", []byte("x")); !errors.Is(err, security.ErrNoSession) {
		t.Fatalf("echo before handshake: %v", err)
	}
	if _, err := pc.Handle(5, "nothing", []byte("x")); !errors.Is(err, protocomm.ErrUnknownEndpoint) {
		t.Fatalf("unknown endpoint: %v", err)
	}
	s, err := protocomm.Dial(ctx, direct{pc, 7}, security.NewClient1([]byte("pop")))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := s.Call(ctx, "echo", []byte("hi")); err != nil || string(got) != "hi\x07" {
		t.Fatalf("echo: %q %v", got, err)
	}
	if _, err := s.Call(ctx, "fail", []byte("x")); err == nil {
		t.Fatal("handler error lost")
	}
	// Another session id on the session endpoint takes over: session 7 is gone.
	if _, err := protocomm.Dial(ctx, direct{pc, 8}, security.NewClient1([]byte("pop"))); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Call(ctx, "echo", []byte("hi")); err == nil {
		t.Fatal("old session still served")
	}
	want := []string{"echo", "fail", "proto-ver", "prov-session"}
	if got := pc.Endpoints(); len(got) != len(want) || got[0] != want[0] || got[3] != want[3] {
		t.Fatalf("endpoints %v", got)
	}
}
