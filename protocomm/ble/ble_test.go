package ble

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestCharUUID(t *testing.T) {
	cases := map[uint16]string{
		0xff4f: "021aff4f-0382-4aea-bff4-6b3f1c5adfb4",
		0xff51: "021aff51-0382-4aea-bff4-6b3f1c5adfb4",
		0xff54: "021aff54-0382-4aea-bff4-6b3f1c5adfb4",
	}
	for id, want := range cases {
		got, err := CharUUID(DefaultServiceUUID, id)
		if err != nil || got != want {
			t.Errorf("CharUUID(%#x) = %s, %v; want %s", id, got, err, want)
		}
	}
	// The manager's own default service UUID, upper case in.
	got, err := CharUUID("1775244D-6B43-439B-877C-060F2D9BED07", 0xff53)
	if err != nil || got != "1775ff53-6b43-439b-877c-060f2d9bed07" {
		t.Errorf("got %s, %v", got, err)
	}
	for _, bad := range []string{"", "021a9004", "021a9004-0382-4aea-bff4-6b3f1c5adfbz", "021a9004x0382-4aea-bff4-6b3f1c5adfb4"} {
		if _, err := CharUUID(bad, 1); err == nil {
			t.Errorf("CharUUID(%q) accepted", bad)
		}
	}
}

func TestEndpointValueFraming(t *testing.T) {
	var v endpointValue
	calls := 0
	echo := func(req []byte) ([]byte, error) {
		calls++
		return append([]byte("re:"), req...), nil
	}
	// A long write arrives in offset-ordered pieces; the handler runs once,
	// at the first read, and long reads continue by offset.
	req := bytes.Repeat([]byte("abcdefgh"), 40)
	for off := 0; off < len(req); off += 100 {
		if err := v.write(off, req[off:min(off+100, len(req))]); err != nil {
			t.Fatal(err)
		}
	}
	first, err := v.read(0, echo)
	if err != nil {
		t.Fatal(err)
	}
	rest, err := v.read(22, echo)
	if err != nil {
		t.Fatal(err)
	}
	if calls != 1 || !bytes.Equal(first, append([]byte("re:"), req...)) || !bytes.Equal(rest, first[22:]) {
		t.Fatalf("calls %d, first %q, rest %q", calls, first[:10], rest[:10])
	}
	// Re-reading from 0 without a new write returns the same answer.
	again, _ := v.read(0, echo)
	if calls != 1 || !bytes.Equal(again, first) {
		t.Fatal("re-read ran the handler again")
	}
	if err := v.write(5, []byte("x")); err == nil {
		t.Fatal("write with a gap accepted")
	}
	if err := v.write(0, make([]byte, MaxValue+1)); err == nil {
		t.Fatal("oversized request accepted")
	}
	if _, err := v.read(len(first)+1, echo); err == nil {
		t.Fatal("read past the end accepted")
	}
	_ = v.write(0, []byte("boom"))
	if _, err := v.read(0, func([]byte) ([]byte, error) { return nil, errors.New("handler failed") }); err == nil {
		t.Fatal("handler error swallowed")
	}
}

// Without BlueZ the transport says so plainly instead of hanging.
func TestNoAdapter(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := Dial(ctx, "PROV_000000", DialOptions{})
	if err == nil {
		c.Close()
		t.Skip("a Bluetooth adapter is present; this test covers its absence")
	}
	if !errors.Is(err, ErrNoAdapter) {
		if errors.Is(err, context.DeadlineExceeded) {
			t.Skip("an adapter is present but no PROV_000000 device; this test covers the absence of an adapter")
		}
		t.Fatalf("err %v, want ErrNoAdapter", err)
	}
	if !strings.Contains(err.Error(), "BlueZ") {
		t.Fatalf("error does not say what is missing: %v", err)
	}
}

func FuzzEndpointValue(f *testing.F) {
	f.Add(0, []byte("hello"), 0)
	f.Add(3, []byte("x"), 10)
	f.Fuzz(func(t *testing.T, woff int, data []byte, roff int) {
		var v endpointValue
		_ = v.write(0, []byte("abc"))
		_ = v.write(woff, data)
		_, _ = v.read(roff, func(b []byte) ([]byte, error) { return b, nil })
	})
}
