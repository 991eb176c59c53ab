package gateway

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.golang/paho"

	"github.com/thingline/thingline/bus"
	"github.com/thingline/thingline/pki"
	"github.com/thingline/thingline/store"
	"github.com/thingline/thingline/tstest"
)

func TestProvisionAndTelemetryShapesV5(t *testing.T) {
	e := newEnv(t, nil)
	cert, leaf := e.inter.device(t, "SN-000001")
	var live received
	stop, err := e.bus.Subscribe(bus.TopicTelemetry, func(b []byte) { live.add(msg{topic: "live", payload: string(b)}) })
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	c := e.v5(t, cert)

	d := e.device(t, "SN-000001")
	if d.Profile != "default" {
		t.Errorf("profile = %q, want default", d.Profile)
	}
	ev := e.waitEvent(t, "SN-000001", store.EventProvisioned, "")
	if !strings.Contains(string(ev.Detail), pki.SerialHex(leaf)) {
		t.Errorf("provisioned detail %s lacks serial %s", ev.Detail, pki.SerialHex(leaf))
	}
	creds, err := e.st.ListCredentials(context.Background(), d.ID)
	if err != nil || len(creds) != 1 {
		t.Fatalf("credentials = %v, %v", creds, err)
	}
	if creds[0].CredentialID != pki.CredentialID(leaf.Raw) || creds[0].Serial != pki.SerialHex(leaf) || creds[0].SHA256 != pki.Fingerprint(leaf.Raw) {
		t.Errorf("credential = %+v", creds[0])
	}
	tstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		d, err := e.st.GetDevice(context.Background(), "SN-000001")
		if err != nil || !d.Online || d.Node != "node-1" {
			return fmt.Errorf("device not online on node-1: %+v %v", d, err)
		}
		return nil
	})

	// Each ThingsBoard shape, on both topic families; the stored JSON text
	// must be exactly what was sent (whitespace of nested values aside).
	cases := []struct {
		topic, payload string
		want           map[string]store.Point // key → latest point
	}{
		{"v1/devices/me/telemetry", `{"temperature":42,"humidity":73.50,"s":"x\u00e9","b":true,"n":null,"o":{"a": [1, 2.0]}}`,
			map[string]store.Point{"temperature": {Value: json.RawMessage(`42`)}, "humidity": {Value: json.RawMessage(`73.50`)},
				"s": {Value: json.RawMessage(`"x\u00e9"`)}, "b": {Value: json.RawMessage(`true`)}, "o": {Value: json.RawMessage(`{"a":[1,2.0]}`)}}},
		{"v2/t", `[{"k1":"value1"},{"k2":false}]`,
			map[string]store.Point{"k1": {Value: json.RawMessage(`"value1"`)}, "k2": {Value: json.RawMessage(`false`)}}},
		{"v1/devices/me/telemetry", `{"ts":1451649600512,"values":{"t1":-1.5e3,"t2":9007199254740993}}`,
			map[string]store.Point{"t1": {TS: 1451649600512, Value: json.RawMessage(`-1.5e3`)}, "t2": {TS: 1451649600512, Value: json.RawMessage(`9007199254740993`)}}},
		{"v2/t", `[{"ts":1451649600000,"values":{"a1":22.5}},{"ts":1451649601000,"values":{"a1":22.7}}]`,
			map[string]store.Point{"a1": {TS: 1451649601000, Value: json.RawMessage(`22.7`)}}},
	}
	for _, tc := range cases {
		if code := c.pub(t, tc.topic, tc.payload); code != 0 {
			t.Fatalf("PUBACK %#x for %s", code, tc.payload)
		}
		// The PUBACK means stored: no waiting here.
		var keys []string
		for k := range tc.want {
			keys = append(keys, k)
		}
		got, err := e.st.LatestTelemetry(context.Background(), d.ID, keys)
		if err != nil {
			t.Fatal(err)
		}
		for k, w := range tc.want {
			g, ok := got[k]
			if !ok {
				t.Errorf("%s: key %s not stored", tc.payload, k)
				continue
			}
			if string(g.Value) != string(w.Value) {
				t.Errorf("%s: %s = %s, want %s", tc.payload, k, g.Value, w.Value)
			}
			if w.TS != 0 && g.TS != w.TS {
				t.Errorf("%s: %s ts = %d, want %d", tc.payload, k, g.TS, w.TS)
			}
		}
		if _, ok := got["n"]; ok {
			t.Errorf("null value was stored")
		}
	}
	// Live telemetry for consoles, one message per record.
	tstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		live.mu.Lock()
		defer live.mu.Unlock()
		for _, m := range live.msgs {
			if !json.Valid([]byte(m.payload)) {
				return fmt.Errorf("invalid live message %s", m.payload)
			}
			if m.payload == `{"device":"SN-000001","ts":1451649600512,"values":{"t1":-1.5e3,"t2":9007199254740993}}` {
				return nil
			}
		}
		return fmt.Errorf("live messages %v", live.msgs)
	})
	// The array of ts-objects stored both points.
	pts, err := e.st.QueryTelemetry(context.Background(), store.TelemetryQuery{DeviceID: d.ID, Keys: []string{"a1"}, From: 0, To: 1 << 62, Asc: true})
	if err != nil || len(pts["a1"]) != 2 || pts["a1"][0].TS != 1451649600000 || string(pts["a1"][0].Value) != "22.5" {
		t.Errorf("a1 series = %v, %v", pts, err)
	}
}

func TestAttributesAndRPCV3(t *testing.T) {
	e := newEnv(t, nil)
	cert, _ := e.inter.device(t, "SN-000002")
	c := e.v3(t, cert)
	c.sub(t, "v1/devices/me/attributes")
	c.sub(t, "v1/devices/me/attributes/response/+")
	c.sub(t, "v1/devices/me/rpc/request/+")
	c.sub(t, "v1/devices/me/rpc/response/+")
	d := e.device(t, "SN-000002")
	ctx := context.Background()

	// Client attributes, stored before the PUBACK.
	c.pub(t, "v1/devices/me/attributes", `{"firmwareVersion":"2.1.0","bootCount":7}`)
	attrs, err := e.st.GetAttributes(ctx, d.ID, store.ClientScope, nil)
	if err != nil || string(attrs["firmwareVersion"].Value) != `"2.1.0"` || string(attrs["bootCount"].Value) != `7` {
		t.Fatalf("client attributes = %v, %v", attrs, err)
	}
	if err := e.st.SetAttributes(ctx, d.ID, store.SharedScope, map[string]json.RawMessage{"interval": json.RawMessage(`30`), "mode": json.RawMessage(`"eco"`)}, time.Now()); err != nil {
		t.Fatal(err)
	}

	// Attribute request: comma-separated key strings.
	c.pub(t, "v1/devices/me/attributes/request/1", `{"clientKeys":"firmwareVersion","sharedKeys":"interval,missing"}`)
	m := c.rx.wait(t, "v1/devices/me/attributes/response/1")
	if m.payload != `{"client":{"firmwareVersion":"2.1.0"},"shared":{"interval":30}}` {
		t.Errorf("attribute response = %s", m.payload)
	}
	// No keys: everything.
	c.pub(t, "v1/devices/me/attributes/request/2", `{}`)
	m = c.rx.wait(t, "v1/devices/me/attributes/response/2")
	var all map[string]map[string]json.RawMessage
	if err := json.Unmarshal([]byte(m.payload), &all); err != nil || len(all["client"]) != 2 || len(all["shared"]) != 2 {
		t.Errorf("all attributes = %s", m.payload)
	}

	// Shared attribute push through the bus.
	if _, err := e.bus.Request(ctx, "SN-000002", bus.Command{Kind: bus.CommandAttributes, Payload: json.RawMessage(`{"mode":"boost"}`)}); err != nil {
		t.Fatal(err)
	}
	m = c.rx.wait(t, "v1/devices/me/attributes")
	if m.payload != `{"mode":"boost"}` || m.qos != 1 {
		t.Errorf("pushed attributes = %+v", m)
	}

	// Server-side RPC: the device answers on the response topic.
	answered := make(chan struct{})
	go func() {
		defer close(answered)
		m := c.rx.wait(t, "v1/devices/me/rpc/request/1")
		var req rpcRequest
		if json.Unmarshal([]byte(m.payload), &req) != nil || req.Method != "setGpio" || string(req.Params) != `{"pin":23,"value":1}` {
			t.Errorf("rpc request = %s", m.payload)
		}
		c.Publish("v1/devices/me/rpc/response/1", 1, false, `{"pin":23,"value":1,"ok":true}`).Wait()
	}()
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	reply, err := e.bus.Request(rctx, "SN-000002", bus.Command{Kind: bus.CommandRPC, Payload: json.RawMessage(`{"method":"setGpio","params":{"pin":23,"value":1}}`)})
	if err != nil || string(reply) != `{"pin":23,"value":1,"ok":true}` {
		t.Errorf("rpc reply = %s, %v", reply, err)
	}
	<-answered

	// A device that does not answer: the caller's deadline gives ErrTimeout.
	_, err = e.bus.Request(ctx, "SN-000002", bus.Command{Kind: bus.CommandRPC, TimeoutMs: 200, Payload: json.RawMessage(`{"method":"sleep"}`)})
	if !errors.Is(err, bus.ErrTimeout) {
		t.Errorf("unanswered rpc: %v, want ErrTimeout", err)
	}

	// Client-side RPC: built-ins and an unknown method.
	before := time.Now().UnixMilli()
	c.pub(t, "v1/devices/me/rpc/request/7", `{"method":"getCurrentTime","params":{}}`)
	m = c.rx.wait(t, "v1/devices/me/rpc/response/7")
	var ct struct{ CurrentTime int64 }
	if json.Unmarshal([]byte(m.payload), &ct) != nil || ct.CurrentTime < before || ct.CurrentTime > time.Now().UnixMilli() {
		t.Errorf("getCurrentTime = %s", m.payload)
	}
	c.pub(t, "v1/devices/me/rpc/request/8", `{"method":"getSessionLimits","params":{}}`)
	m = c.rx.wait(t, "v1/devices/me/rpc/response/8")
	var lim struct {
		MaxPayloadSize      int
		MaxInflightMessages int
		RateLimits          map[string]any
	}
	// ThingsBoard's SDKs need the rateLimits key; null means no limit.
	if json.Unmarshal([]byte(m.payload), &lim) != nil || lim.MaxPayloadSize != 65536 || lim.MaxInflightMessages != maxPending ||
		len(lim.RateLimits) != 3 || lim.RateLimits["messages"] != nil || !strings.Contains(m.payload, `"telemetryDataPoints":null`) {
		t.Errorf("getSessionLimits = %s", m.payload)
	}
	c.pub(t, "v1/devices/me/rpc/request/9", `{"method":"reboot","params":{}}`)
	if m = c.rx.wait(t, "v1/devices/me/rpc/response/9"); m.payload != `{"error":"unsupported method: reboot"}` {
		t.Errorf("unknown client rpc = %s", m.payload)
	}
}

func TestV2TopicsAndRPCV5(t *testing.T) {
	e := newEnv(t, nil)
	cert, _ := e.inter.device(t, "SN-000003")
	c := e.v5(t, cert)
	// QoS 2 is granted as QoS 1; an unknown filter is refused.
	codes := c.sub(t, "v2/a", "v2/a/res/+", "v2/r/req/+", "foo/#")
	if string(codes) != "\x01\x01\x01\x8f" {
		t.Errorf("suback codes = %x", codes)
	}
	ctx := context.Background()
	if code := c.pub(t, "v2/a", `{"fw":"1.0"}`); code != 0 {
		t.Fatalf("v2/a puback %#x", code)
	}
	c.pub(t, "v2/a/req/5", `{"clientKeys":"fw"}`)
	if m := c.rx.wait(t, "v2/a/res/5"); m.payload != `{"client":{"fw":"1.0"}}` {
		t.Errorf("v2 attribute response = %s", m.payload)
	}
	if _, err := e.bus.Request(ctx, "SN-000003", bus.Command{Kind: bus.CommandAttributes, Payload: json.RawMessage(`{"deleted":["x"]}`)}); err != nil {
		t.Fatal(err)
	}
	if m := c.rx.wait(t, "v2/a"); m.payload != `{"deleted":["x"]}` {
		t.Errorf("v2 push = %s", m.payload)
	}
	answered := make(chan struct{})
	go func() {
		defer close(answered)
		c.rx.wait(t, "v2/r/req/1")
		c.Publish(ctx, &paho.Publish{Topic: "v2/r/res/1", QoS: 1, Payload: []byte(`"done"`)})
	}()
	defer func() { <-answered }()
	reply, err := e.bus.Request(ctx, "SN-000003", bus.Command{Kind: bus.CommandRPC, TimeoutMs: 5000, Payload: json.RawMessage(`{"method":"ping"}`)})
	if err != nil || string(reply) != `"done"` {
		t.Errorf("v2 rpc reply = %s, %v", reply, err)
	}
}

// TestPubackOrderUnderPipelining sends more QoS 1 messages than the
// in-flight limit without waiting: every PUBACK comes back, in PUBLISH
// order, and every message is stored.
func TestPubackOrderUnderPipelining(t *testing.T) {
	e := newEnv(t, nil)
	cert, _ := e.inter.device(t, "SN-PIPE")
	conn, err := rawConnect(e, cert)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	const n = 700
	topic := "v1/devices/me/telemetry"
	go func() {
		w := bufio.NewWriter(conn)
		for i := 1; i <= n; i++ {
			payload := fmt.Sprintf(`{"ts":%d,"values":{"seq":%d}}`, 1000+i, i)
			f := []byte{0x32, byte(2 + len(topic) + 2 + len(payload))}
			f = binary.BigEndian.AppendUint16(f, uint16(len(topic)))
			f = append(f, topic...)
			f = binary.BigEndian.AppendUint16(f, uint16(i))
			w.Write(append(f, payload...))
		}
		w.Flush()
	}()
	conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	r := bufio.NewReader(conn)
	for i := 1; i <= n; i++ {
		var ack [4]byte
		if _, err := io.ReadFull(r, ack[:]); err != nil {
			t.Fatalf("puback %d: %v", i, err)
		}
		if ack[0] != 0x40 || binary.BigEndian.Uint16(ack[2:]) != uint16(i) {
			t.Fatalf("ack %d = %x", i, ack)
		}
	}
	d := e.device(t, "SN-PIPE")
	pts, err := e.st.QueryTelemetry(context.Background(), store.TelemetryQuery{DeviceID: d.ID, Keys: []string{"seq"}, From: 0, To: 1 << 40, Limit: n + 1})
	if err != nil || len(pts["seq"]) != n {
		t.Fatalf("stored %d points, %v", len(pts["seq"]), err)
	}
}
