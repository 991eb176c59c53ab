package twin

import "testing"

func TestParseBrokers(t *testing.T) {
	bs, err := ParseBrokers("mqtts://a:1, mqtts://b,mqtt://c:3", "")
	if err != nil {
		t.Fatal(err)
	}
	want := []Broker{{Addr: "a:1", TLS: true, ServerName: "a"}, {Addr: "b:8883", TLS: true, ServerName: "b"}, {Addr: "c:3", ServerName: "c"}}
	if len(bs) != len(want) {
		t.Fatalf("got %+v", bs)
	}
	for i := range want {
		if bs[i] != want[i] {
			t.Errorf("broker %d = %+v, want %+v", i, bs[i], want[i])
		}
	}
	if bs, _ := ParseBrokers("mqtts://a:1,mqtts://b:2", "cloud"); bs[0].ServerName != "cloud" || bs[1].ServerName != "cloud" {
		t.Errorf("server name override: %+v", bs)
	}
	for _, bad := range []string{"", "mqtts://a,", "http://a", "mqtts://a,mqtts://"} {
		if _, err := ParseBrokers(bad, ""); err == nil {
			t.Errorf("ParseBrokers(%q) accepted", bad)
		}
	}
}
