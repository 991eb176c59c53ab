package node

import "testing"

func TestSplitBusURL(t *testing.T) {
	for _, c := range []struct{ in, servers, prefix string }{
		{"nats://h:4222", "nats://h:4222", ""},
		{"nats://h:4222?prefix=plant_a", "nats://h:4222", "plant_a"},
		{"nats://a:1,nats://b:2?prefix=x.y-z", "nats://a:1,nats://b:2", "x.y-z"},
	} {
		s, p, err := splitBusURL(c.in)
		if err != nil || s != c.servers || p != c.prefix {
			t.Errorf("%s: %q %q %v, want %q %q", c.in, s, p, err, c.servers, c.prefix)
		}
	}
	for _, bad := range []string{"nats://h?prefix=", "nats://h?prefix=a b", "nats://h?prefix=a.*", "nats://h?prefx=a", "nats://h?prefix=%zz"} {
		if _, _, err := splitBusURL(bad); err == nil {
			t.Errorf("%s: accepted", bad)
		}
	}
}
