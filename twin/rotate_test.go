package twin

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/thingline/thingline/pki"
	"github.com/thingline/thingline/pki/pkitest"
	"github.com/thingline/thingline/spiffs"
)

func TestCheckRotationAnswer(t *testing.T) {
	ca := pkitest.NewCA(t)
	old := pkitest.IssueDevice(t, ca, "SN-1", pkitest.Opts{NotAfter: time.Now().Add(24 * time.Hour)})
	key, _ := pki.GenerateKey(pki.KeyEC)
	other, _ := pki.GenerateKey(pki.KeyEC)
	issue := func(k any, cn string, validity time.Duration) string {
		c, err := ca.IssueDevice(k, cn, validity)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(map[string]string{"cert": string(ca.LeafChainPEM(c))})
		return string(b)
	}
	if pem, err := checkRotationAnswer([]byte(issue(key.Public(), "SN-1", 0)), "SN-1", key, old.Cert); err != nil || !strings.Contains(string(pem), "CERTIFICATE") {
		t.Fatalf("good answer: %v", err)
	}
	for name, c := range map[string]struct{ answer, want string }{
		"error":     {`{"error":"too many certificate requests"}`, "refused by the server: too many"},
		"garbage":   {`not json`, "undecodable"},
		"empty":     {`{"cert":""}`, "no certificate"},
		"other-key": {issue(other.Public(), "SN-1", 0), "not for the key"},
		"other-cn":  {issue(key.Public(), "SN-2", 0), `for "SN-2"`},
		"shorter":   {issue(key.Public(), "SN-1", time.Hour), "no later than"},
	} {
		if _, err := checkRotationAnswer([]byte(c.answer), "SN-1", key, old.Cert); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", name, err, c.want)
		}
	}
}

func TestRewriteSPIFFSKeepsOtherFiles(t *testing.T) {
	img, err := spiffs.Build(spiffs.DefaultConfig(0x40000), []spiffs.File{
		{Path: "/device.crt", Data: []byte("old cert")},
		{Path: "/device.key", Data: []byte("old key")},
		{Path: "/prov.json", Data: []byte(`{"pop":"x"}`)},
	})
	if err != nil {
		t.Fatal(err)
	}
	out, err := rewriteSPIFFS(img, map[string][]byte{"device.crt": []byte("new cert"), "device.key": []byte("new key"), "extra": []byte("e")})
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != len(img) {
		t.Fatalf("image size %d, want %d", len(out), len(img))
	}
	read, err := spiffsReader(out)
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"device.crt": "new cert", "device.key": "new key", "prov.json": `{"pop":"x"}`, "extra": "e"} {
		if b, err := read(name); err != nil || string(b) != want {
			t.Errorf("%s = %q, %v; want %q", name, b, err, want)
		}
	}
	if _, err := rewriteSPIFFS([]byte("not an image"), nil); err == nil {
		t.Error("a broken image was rewritten")
	}
}
