package twin

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// ThingsBoard device API topics the firmware uses.
const (
	TopicTelemetry     = "v1/devices/me/telemetry"
	TopicAttributes    = "v1/devices/me/attributes"
	TopicRPCRequest    = "v1/devices/me/rpc/request/"
	TopicRPCResponse   = "v1/devices/me/rpc/response/"
	TopicClaim         = "v1/devices/me/claim"
	TopicClaimResponse = "v1/devices/me/claim/response"
)

// FirmwareTitle is reported as the fw_title client attribute.
const FirmwareTitle = "thingline-twin"

// DefaultFirmwareVersion is reported when the state names no version.
const DefaultFirmwareVersion = "1.0.0"

// maxInflight caps unacknowledged publishes per twin: a twin whose server
// stopped acknowledging skips samples rather than queueing without bound.
const maxInflight = 16

var (
	errReboot       = errors.New("twin: reboot requested")
	errFactoryReset = errors.New("twin: factory reset requested")
)

// Stats are counters shared by the twins of one process; all fields are
// updated atomically.
type Stats struct {
	Connected atomic.Int64 // sessions up now
	Connects  atomic.Int64 // sessions established
	Sent      atomic.Int64 // QoS 1 publishes written
	Acked     atomic.Int64 // PUBACKs received
	Skipped   atomic.Int64 // samples not sent because too many were unacknowledged
	Errors    atomic.Int64 // failed connects and broken sessions
	RPCs      atomic.Int64 // RPC requests answered
}

// Broker is a parsed --broker address.
type Broker struct {
	Addr       string // host:port
	TLS        bool
	ServerName string // the name the server certificate must carry
}

// ParseBroker reads mqtts://host[:port] (port 8883 by default) or, for
// plain-MQTT experiments, mqtt://host[:port] (port 1883).
func ParseBroker(s string) (Broker, error) {
	u, err := url.Parse(s)
	if err != nil {
		return Broker{}, fmt.Errorf("twin: broker %q: %w", s, err)
	}
	var b Broker
	port := ""
	switch u.Scheme {
	case "mqtts", "ssl", "tls":
		b.TLS, port = true, "8883"
	case "mqtt", "tcp":
		port = "1883"
	default:
		return Broker{}, fmt.Errorf("twin: broker %q: scheme must be mqtts or mqtt", s)
	}
	host := u.Hostname()
	if host == "" {
		return Broker{}, fmt.Errorf("twin: broker %q has no host", s)
	}
	if p := u.Port(); p != "" {
		port = p
	}
	b.Addr = net.JoinHostPort(host, port)
	b.ServerName = host
	return b, nil
}

// ParseBrokers reads a comma-separated list of ParseBroker addresses: a
// twin connects to one and, when it cannot reach it, tries the next, as a
// device given several cloud nodes does. serverName, when not empty,
// overrides every broker's expected server name.
func ParseBrokers(s, serverName string) ([]Broker, error) {
	var bs []Broker
	for _, part := range strings.Split(s, ",") {
		b, err := ParseBroker(strings.TrimSpace(part))
		if err != nil {
			return nil, err
		}
		if serverName != "" {
			b.ServerName = serverName
		}
		bs = append(bs, b)
	}
	return bs, nil
}

// cloudConfig is shared by all the twins of a process.
type cloudConfig struct {
	brokers     []Broker // tried in turn from each twin's own starting point
	keepalive   time.Duration
	timeout     time.Duration // dial, TLS and CONNECT
	backoffMin  time.Duration
	backoffMax  time.Duration
	attrEvery   time.Duration // uptime attribute period
	interval    time.Duration // default telemetry period
	fwVersion   string
	stats       *Stats
	sched       *scheduler
	ramp        func(context.Context) error // paces connection attempts; nil means none
	logf        func(format string, args ...any)
	minInterval time.Duration
	claimSecret string // twin/claim.go
	claimWindow time.Duration
	// OTA (twin/ota.go). otaFail and otaRebooted are each device's
	// defaults; a Sim gives some of its devices others (SimConfig.OTAFail).
	otaFail         string
	otaChunk        int
	otaChunkTimeout time.Duration
	otaRebooted     *atomic.Bool // the reboot failure was acted out once
	// rpcBehaviour: methods answered otherwise, for tests (rpcbehaviour.go)
	rpcBehaviour RPCBehaviour
}

// device is one twin's cloud side: its MQTT session, its sensor and its
// runtime state. Twin wraps one with boot and provisioning; Sim runs many.
type device struct {
	id      *Identity
	cc      *cloudConfig
	persist func(State) error // nil when the state lives in memory only
	tlsConf *tls.Config

	schedGen, tickGen uint64 // owned by the scheduler, under its mu

	// Certificate rotation (rotate.go); rotateWithin 0 or saveIdentity
	// nil: off. rotated is set once a new identity is stored.
	rotateWithin time.Duration
	saveIdentity func(certPEM, keyPEM []byte) error
	rotated      atomic.Bool

	// broker is the index in cc.brokers of the broker to try next; only the
	// device's cloud goroutine touches it.
	broker int

	// How this device's firmware updates fail (OTAFail*), set before it
	// runs; otaRebooted: the reboot failure was acted out once.
	otaFail     string
	otaRebooted *atomic.Bool

	mu         sync.Mutex  // guards the fields below
	certAnswer chan []byte // a rotation waiting for cert/response
	st         State
	conn       *mqttConn
	dht        *dht11
	bootAt     time.Time
	nextTele   time.Time
	nextAttr   time.Time
	inflight   int
	claimed    bool // the claim secret got a final answer (twin/claim.go)
	// OTA (twin/ota.go): the session's download channel, the version
	// being downloaded, the last chunk request id, a reboot asked for.
	ota           *otaSession
	downloading   string
	failedVersion string
	reqID         int
	rebootAsked   bool
}

func newDevice(id *Identity, cc *cloudConfig, st State, persist func(State) error) *device {
	d := &device{id: id, cc: cc, persist: persist, st: st, dht: newDHT11(id.SN), bootAt: time.Now(),
		otaFail: cc.otaFail, otaRebooted: cc.otaRebooted}
	// Each twin starts at a broker of its own, so a fleet given several
	// spreads over them.
	if len(cc.brokers) > 0 {
		h := fnv.New32a()
		h.Write([]byte(id.SN))
		d.broker = int(h.Sum32() % uint32(len(cc.brokers)))
	}
	d.tlsConf = &tls.Config{
		Certificates: []tls.Certificate{id.Cert},
		RootCAs:      id.Roots,
		MinVersion:   tls.VersionTLS12,
		// The firmware's mbedTLS offers classic curves only; skipping Go's
		// default hybrid ML-KEM share also saves a kilobyte-sized key per
		// handshake, which matters at 10,000 twins.
		CurvePreferences: []tls.CurveID{tls.X25519, tls.CurveP256},
	}
	return d
}

// interval is the telemetry period; d.mu must be held.
func (d *device) interval() time.Duration {
	if d.st.IntervalMs > 0 {
		return time.Duration(d.st.IntervalMs) * time.Millisecond
	}
	return d.cc.interval
}

// tick does the periodic work due at now and returns when it is next due.
func (d *device) tick(now time.Time) time.Time {
	d.mu.Lock()
	c := d.conn
	var payload []byte
	if !now.Before(d.nextTele) {
		// The sensor is read even while offline, so that its drift follows
		// wall time and not connectivity.
		p := d.dht.telemetry(make([]byte, 0, 48))
		if c != nil {
			if d.inflight < maxInflight {
				payload = p
				d.inflight++
			} else {
				d.cc.stats.Skipped.Add(1)
			}
		}
		d.nextTele = d.nextTele.Add(d.interval())
		if d.nextTele.Before(now) {
			d.nextTele = now.Add(d.interval())
		}
	}
	var attrs []byte
	if c != nil && d.cc.attrEvery > 0 && !now.Before(d.nextAttr) {
		attrs = fmt.Appendf(nil, `{"uptime":%d}`, int64(now.Sub(d.bootAt)/time.Second))
		d.nextAttr = now.Add(d.cc.attrEvery)
		d.inflight++
	}
	next := d.nextTele
	if c != nil && d.cc.attrEvery > 0 && d.nextAttr.Before(next) {
		next = d.nextAttr
	}
	// Checking at a quarter of the keepalive lets a PINGREQ go out between
	// half and three quarters of it, well before the server's 1.5×.
	if ka := now.Add(d.cc.keepalive / 4); c != nil && ka.Before(next) {
		next = ka
	}
	d.mu.Unlock()
	if c == nil {
		return next
	}
	var err error
	if payload != nil {
		err = d.send(c, TopicTelemetry, payload)
	}
	if err == nil && attrs != nil {
		err = d.send(c, TopicAttributes, attrs)
	}
	if err == nil {
		err = c.pingIfIdle(now, d.cc.keepalive)
	}
	if err != nil {
		// The reader sees the closed connection and reconnects.
		c.conn.Close()
	}
	return next
}

// send publishes at QoS 1 and counts it.
func (d *device) send(c *mqttConn, topic string, payload []byte) error {
	if err := c.publish(topic, payload, 1); err != nil {
		return err
	}
	d.cc.stats.Sent.Add(1)
	return nil
}

// runCloud keeps the device connected until ctx ends or a reboot or factory
// reset is requested, which it returns.
func (d *device) runCloud(ctx context.Context) error {
	failures := 0
	for {
		if d.cc.ramp != nil {
			if err := d.cc.ramp(ctx); err != nil {
				return err
			}
		}
		c, err := d.connect(ctx)
		if err == nil {
			failures = 0
			err = d.session(ctx, c)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if errors.Is(err, errReboot) || errors.Is(err, errFactoryReset) {
			return err
		}
		if d.rotated.Load() {
			// Restart to load the stored identity, as the firmware's
			// cert_manager reads it at boot only.
			return fmt.Errorf("%w: %w", errReboot, errRotated)
		}
		d.cc.stats.Errors.Add(1)
		wait := backoff(failures, d.cc.backoffMin, d.cc.backoffMax)
		failures++
		d.cc.logf("%s: %v; reconnecting in %v", d.id.SN, err, wait.Round(time.Millisecond))
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// backoff is esp-mqtt's reconnect delay made exponential: min·2^n capped at
// max, with "equal jitter" (half fixed, half random) so that 10,000 twins
// dropped together do not come back together.
func backoff(n int, min, max time.Duration) time.Duration {
	d := min
	for i := 0; i < n && d < max; i++ {
		d *= 2
	}
	if d > max {
		d = max
	}
	half := d / 2
	return half + rand.N(half+1)
}

// connect opens a session with the current broker; when that fails, the
// next attempt goes to the next broker of the list.
func (d *device) connect(ctx context.Context) (*mqttConn, error) {
	if len(d.cc.brokers) == 0 {
		return nil, errors.New("no broker configured")
	}
	b := d.cc.brokers[d.broker%len(d.cc.brokers)]
	c, err := d.connectTo(ctx, b)
	if err != nil {
		d.broker = (d.broker + 1) % len(d.cc.brokers)
	}
	return c, err
}

func (d *device) connectTo(ctx context.Context, b Broker) (*mqttConn, error) {
	dctx, cancel := context.WithTimeout(ctx, d.cc.timeout)
	defer cancel()
	var nd net.Dialer
	raw, err := nd.DialContext(dctx, "tcp", b.Addr)
	if err != nil {
		return nil, fmt.Errorf("dialing %s: %w", b.Addr, err)
	}
	conn := raw
	if b.TLS {
		conf := d.tlsConf
		if conf.ServerName != b.ServerName {
			conf = conf.Clone()
			conf.ServerName = b.ServerName
		}
		tc := tls.Client(raw, conf)
		if err := tc.HandshakeContext(dctx); err != nil {
			raw.Close()
			return nil, fmt.Errorf("tls handshake with %s: %w", b.Addr, err)
		}
		conn = tc
	}
	// CONNECT/CONNACK is not context-aware; closing the connection is
	// what makes Ctrl-C interrupt a server that accepted but never answers.
	stop := context.AfterFunc(dctx, func() { conn.Close() })
	defer stop()
	c, err := mqttHandshake(conn, d.clientID(), d.cc.keepalive, d.cc.timeout)
	if err != nil {
		conn.Close()
		return nil, err
	}
	return c, nil
}

// clientID follows esp-mqtt's default, ESP32_ and the MAC's last 3 bytes.
func (d *device) clientID() string {
	return "ESP32_" + strings.ReplaceAll(d.id.MAC[9:], ":", "")
}

// session serves one established MQTT session until it breaks.
func (d *device) session(ctx context.Context, c *mqttConn) error {
	stop := context.AfterFunc(ctx, func() { c.disconnect() })
	defer stop()
	rotates := d.rotateWithin > 0 && d.saveIdentity != nil
	// The OTA filters are the SDK's (twin/ota.go).
	filters := []string{TopicRPCRequest + "+", TopicAttributes, TopicClaimResponse, topicAttrResponse + "+", topicFWResponse + "+"}
	if rotates {
		filters = append(filters, TopicCertResponse)
	}
	if err := c.subscribe(1, filters...); err != nil {
		c.conn.Close()
		return fmt.Errorf("subscribing: %w", err)
	}
	if rotates {
		rctx, stopRotation := context.WithCancel(ctx)
		defer stopRotation()
		go d.watchRotation(rctx, c)
	}
	now := time.Now()
	d.mu.Lock()
	kv := map[string]any{
		"sn": d.id.SN, "mac": d.id.MAC, "fw_title": FirmwareTitle, "fw_version": d.fwVersion(),
		"uptime": int64(now.Sub(d.bootAt) / time.Second),
	}
	if d.st.Owner != "" {
		kv["owner"] = d.st.Owner
	}
	attrs, _ := json.Marshal(kv)
	d.conn = c
	d.inflight = 1
	octx, endOTA := context.WithCancel(ctx)
	defer endOTA()
	d.ota = &otaSession{ctx: octx, chunks: make(chan fwChunk, 4)}
	d.nextAttr = now.Add(d.cc.attrEvery)
	if d.nextTele.Before(now) {
		d.nextTele = now
	}
	d.mu.Unlock()
	d.cc.stats.Connects.Add(1)
	d.cc.stats.Connected.Add(1)
	d.cc.logf("%s: connected to %s", d.id.SN, c.conn.RemoteAddr())
	defer func() {
		d.mu.Lock()
		d.conn = nil
		d.ota = nil
		d.inflight = 0
		d.mu.Unlock()
		d.cc.stats.Connected.Add(-1)
		c.conn.Close()
	}()
	if err := d.send(c, TopicAttributes, attrs); err != nil {
		return fmt.Errorf("reporting attributes: %w", err)
	}
	if claim := d.claimRequest(); claim != nil {
		if err := d.send(c, TopicClaim, claim); err != nil {
			return fmt.Errorf("claiming: %w", err)
		}
	}
	if err := d.otaOnConnect(c); err != nil {
		return fmt.Errorf("reporting firmware: %w", err)
	}
	d.cc.sched.schedule(d, now)
	for {
		c.conn.SetReadDeadline(time.Now().Add(d.cc.keepalive * 3 / 2))
		pk, err := c.read()
		if err != nil {
			if d.takeReboot() {
				return errReboot
			}
			return fmt.Errorf("session: %w", err)
		}
		switch pk.FixedHeader.Type {
		case packets.Publish:
			if pk.FixedHeader.Qos > 0 {
				if err := c.puback(pk.PacketID); err != nil {
					return fmt.Errorf("acknowledging: %w", err)
				}
			}
			if err := d.handlePublish(c, pk.TopicName, pk.Payload); err != nil {
				c.disconnect()
				return err
			}
		case packets.Puback:
			d.cc.stats.Acked.Add(1)
			d.mu.Lock()
			if d.inflight > 0 {
				d.inflight--
			}
			d.mu.Unlock()
		case packets.Suback:
			for _, rc := range pk.ReasonCodes {
				if rc >= 0x80 {
					d.cc.logf("%s: the server refused a subscription", d.id.SN)
				}
			}
		case packets.Disconnect:
			return errors.New("session: server sent disconnect")
		}
	}
}

// fwVersion is the running firmware's version; d.mu must be held.
func (d *device) fwVersion() string {
	if d.st.FWVersion != "" {
		return d.st.FWVersion
	}
	return d.cc.fwVersion
}

// handlePublish acts on a server message. It returns errReboot or
// errFactoryReset when the session must end for that.
func (d *device) handlePublish(c *mqttConn, topic string, payload []byte) error {
	switch {
	case strings.HasPrefix(topic, TopicRPCRequest):
		id := topic[len(TopicRPCRequest):]
		if id == "" || strings.Contains(id, "/") {
			return nil
		}
		skip, reply := d.cc.rpcBehaviour.override(payload)
		if skip {
			return nil
		}
		var action error
		if reply == nil {
			reply, action = d.rpc(payload)
		}
		d.cc.stats.RPCs.Add(1)
		if err := d.send(c, TopicRPCResponse+id, reply); err != nil {
			return fmt.Errorf("answering rpc: %w", err)
		}
		return action
	case topic == TopicAttributes:
		d.applyAttributes(c, payload)
	case topic == TopicCertResponse:
		d.deliverCertAnswer(payload)
	case topic == TopicClaimResponse:
		d.claimResponse(payload)
	default:
		d.otaPublish(c, topic, payload)
	}
	return nil
}

// StateView is what the getState RPC answers: the state without the Wi-Fi
// passphrase, plus identity and runtime facts.
type StateView struct {
	SN         string      `json:"sn"`
	MAC        string      `json:"mac"`
	FWTitle    string      `json:"fw_title"`
	FWVersion  string      `json:"fw_version"`
	SSID       string      `json:"ssid,omitempty"`
	Owner      string      `json:"owner,omitempty"`
	Claim      string      `json:"claim,omitempty"` // the last answer to a claim but PENDING
	Reset      bool        `json:"reset,omitempty"` // factory-reset, not claimed since
	IntervalMs int64       `json:"interval_ms"`
	UptimeS    int64       `json:"uptime_s"`
	BootCount  int64       `json:"boot_count"`
	PendingOTA *PendingOTA `json:"pending_ota,omitempty"`
	Connected  bool        `json:"connected"`
}

func (d *device) view() StateView {
	d.mu.Lock()
	defer d.mu.Unlock()
	v := StateView{
		SN: d.id.SN, MAC: d.id.MAC, FWTitle: FirmwareTitle, FWVersion: d.fwVersion(),
		Owner: d.st.Owner, Claim: d.st.Claim, Reset: d.st.Reset, IntervalMs: int64(d.interval() / time.Millisecond),
		UptimeS: int64(time.Since(d.bootAt) / time.Second), BootCount: d.st.BootCount,
		PendingOTA: d.st.clone().PendingOTA, Connected: d.conn != nil,
	}
	if d.st.WiFi != nil {
		v.SSID = d.st.WiFi.SSID
	}
	return v
}

func (d *device) rpc(payload []byte) (reply []byte, action error) {
	var req struct {
		Method string          `json:"method"`
		Params json.RawMessage `json:"params"`
	}
	if err := json.Unmarshal(payload, &req); err != nil {
		return errorReply("bad request: " + err.Error()), nil
	}
	switch req.Method {
	case "getState":
		b, _ := json.Marshal(d.view())
		return b, nil
	case "setInterval":
		ms, err := parseInterval(req.Params)
		if err != nil {
			return errorReply(err.Error()), nil
		}
		if err := d.setInterval(ms); err != nil {
			return errorReply(err.Error()), nil
		}
		return fmt.Appendf(nil, `{"ok":true,"interval_ms":%d}`, ms), nil
	case "reboot":
		return []byte(`{"ok":true}`), errReboot
	case "factoryReset":
		return []byte(`{"ok":true}`), errFactoryReset
	}
	return errorReply("unknown method " + strconv.Quote(req.Method)), nil
}

func errorReply(msg string) []byte {
	b, _ := json.Marshal(map[string]string{"error": msg})
	return b
}

// parseInterval accepts {"ms":N}, N, or "N" in milliseconds.
func parseInterval(p json.RawMessage) (int64, error) {
	var obj struct {
		Ms *json.Number `json:"ms"`
	}
	var num json.Number
	if err := json.Unmarshal(p, &obj); err == nil && obj.Ms != nil {
		num = *obj.Ms
	} else if err := json.Unmarshal(p, &num); err != nil {
		return 0, errors.New(`params must be {"ms":N} or a number of milliseconds`)
	}
	ms, err := strconv.ParseInt(num.String(), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("interval %q is not a whole number of milliseconds", num.String())
	}
	return ms, nil
}

// setInterval changes and persists the telemetry period and reschedules.
func (d *device) setInterval(ms int64) error {
	min := d.cc.minInterval
	if min <= 0 {
		min = 10 * time.Millisecond
	}
	if time.Duration(ms)*time.Millisecond < min || ms > 24*3600*1000 {
		return fmt.Errorf("interval %d ms out of range %d..%d", ms, min.Milliseconds(), 24*3600*1000)
	}
	d.mu.Lock()
	d.st.IntervalMs = ms
	st := d.st.clone()
	d.nextTele = time.Now().Add(d.interval())
	d.mu.Unlock()
	if d.persist != nil {
		if err := d.persist(st); err != nil {
			return err
		}
	}
	d.cc.sched.schedule(d, time.Now())
	return nil
}

// applyAttributes applies the shared attributes the firmware understands:
// interval (ms) and the firmware announcement (fw_*, twin/ota.go). Others
// are ignored, as the firmware ignores keys it does not know.
func (d *device) applyAttributes(c *mqttConn, payload []byte) {
	var kv map[string]json.RawMessage
	if err := json.Unmarshal(payload, &kv); err != nil {
		d.cc.logf("%s: ignoring bad attribute update: %v", d.id.SN, err)
		return
	}
	if v, ok := kv["interval"]; ok {
		if ms, err := parseInterval(v); err == nil {
			if err := d.setInterval(ms); err != nil {
				d.cc.logf("%s: shared attribute interval: %v", d.id.SN, err)
			}
		}
	}
	if _, ok := kv["fw_version"]; ok && c != nil {
		d.otaOffer(c, payload)
	}
}
