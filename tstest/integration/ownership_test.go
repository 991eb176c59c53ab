package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/thingline/thingline/tstest"
	"github.com/thingline/thingline/twin"
)

// ownerEnv is a cloud (one node on SQLite, or two on PostgreSQL and NATS:
// devices on one, the REST API of the other), factory units, and accounts:
// alice and bob (users), olga (operator).
type ownerEnv struct {
	t      *testing.T
	api    *server // REST calls go here
	mqtt   *server // twins connect here
	units  string
	tokens map[string]string
}

func newOwnerEnv(t *testing.T, cluster bool, units int) *ownerEnv {
	t.Helper()
	e := &ownerEnv{t: t, tokens: map[string]string{}}
	if cluster {
		storeURL, natsURL := clusterStore(t)
		dataA := t.TempDir()
		e.mqtt = startServer(t, dataA, "--store", storeURL, "--bus", natsURL, "--node-id", "node-a")
		pkiDir := e.mqtt.pkiDir()
		e.api = startServer(t, t.TempDir(), "--store", storeURL, "--bus", natsURL, "--node-id", "node-b",
			"--tls-cert", filepath.Join(pkiDir, "server.crt"), "--tls-key", filepath.Join(pkiDir, "server.key"),
			"--device-ca", filepath.Join(pkiDir, "device-ca.crt"))
	} else {
		e.mqtt = startServer(t, t.TempDir())
		e.api = e.mqtt
	}
	e.units = filepath.Join(t.TempDir(), "units")
	if o, err := thingline(t, "factory", "inject", "--ca-dir", e.mqtt.pkiDir(), "--out", e.units, "--count", fmt.Sprint(units), "--quiet"); err != nil {
		t.Fatalf("factory inject: %v\n%s", err, o)
	}
	for _, u := range []struct{ name, role string }{{"alice", "user"}, {"bob", "user"}, {"olga", "operator"}} {
		if code := e.api.api("POST", "/api/v1/users", fmt.Sprintf(`{"username":%q,"password":"pw-%s-123","role":%q}`, u.name, u.name, u.role), nil); code != 201 {
			t.Fatalf("creating %s: %d", u.name, code)
		}
		var login struct {
			Token string `json:"token"`
		}
		if code := e.call("", "POST", "/api/v1/auth/login", fmt.Sprintf(`{"username":%q,"password":"pw-%s-123"}`, u.name, u.name), &login); code != 200 || login.Token == "" {
			t.Fatalf("login %s: %d", u.name, code)
		}
		e.tokens[u.name] = login.Token
	}
	return e
}

// call makes a REST call as a user ("" for none, "admin" for the admin
// token) and decodes the answer into out.
func (e *ownerEnv) call(user, method, path, body string, out any) int {
	e.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, "http://"+e.api.httpAddr+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	switch user {
	case "":
	case "admin":
		req.Header.Set("Authorization", "Bearer "+testToken)
	default:
		req.Header.Set("Authorization", "Bearer "+e.tokens[user])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil && len(b) > 0 && (resp.StatusCode/100 == 2 || strings.Contains(path, "/claim")) {
		if err := json.Unmarshal(b, out); err != nil {
			e.t.Fatalf("%s %s: %d, undecodable %q", method, path, resp.StatusCode, b)
		}
	}
	return resp.StatusCode
}

// startTwin boots a unit's twin against the device node until the test ends.
func (e *ownerEnv) startTwin(sn string, mod func(*twin.Config)) *twin.Twin {
	e.t.Helper()
	cfg := twin.Config{
		SPIFFS: filepath.Join(e.units, sn, "spiffs.bin"), StateDir: e.t.TempDir(),
		Broker: "mqtts://" + e.mqtt.mqttAddr, Prov: twin.ProvNone,
		Interval: 100 * time.Millisecond, BackoffMin: 50 * time.Millisecond, BackoffMax: 500 * time.Millisecond,
	}
	if mod != nil {
		mod(&cfg)
	}
	tw, err := twin.New(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { tw.Run(ctx); close(done) }()
	e.t.Cleanup(func() { cancel(); <-done })
	return tw
}

type pendingClaim struct {
	Kind      string    `json:"kind"`
	Reset     bool      `json:"reset"`
	ExpiresAt time.Time `json:"expiresAt"`
}

type ownersAnswer struct {
	Owners []struct {
		UserID   int64     `json:"userId"`
		Username string    `json:"username"`
		Since    time.Time `json:"since"`
		Ended    string    `json:"ended"`
	} `json:"owners"`
	Audit []struct {
		Action string `json:"action"`
	} `json:"audit"`
	Pending *pendingClaim `json:"pendingClaim"`
}

func (e *ownerEnv) owners(sn string) ownersAnswer {
	e.t.Helper()
	var o ownersAnswer
	if code := e.call("admin", "GET", "/api/v1/devices/"+sn+"/owners", "", &o); code != 200 {
		e.t.Fatalf("owners of %s: %d", sn, code)
	}
	return o
}

// waitClaim waits until the device has a claim request pending, with the
// reset mark as given.
func (e *ownerEnv) waitClaim(sn string, reset bool) pendingClaim {
	e.t.Helper()
	var p pendingClaim
	tstest.CheckFor(e.t, 30*time.Second, 50*time.Millisecond, func() error {
		o := e.owners(sn)
		if o.Pending == nil || o.Pending.Reset != reset {
			return fmt.Errorf("no claim request (reset=%v) from %s: %+v", reset, sn, o.Pending)
		}
		p = *o.Pending
		return nil
	})
	return p
}

type claimAnswer struct {
	Result  string `json:"result"`
	Outcome string `json:"outcome"`
}

func (e *ownerEnv) claim(user, sn, secret string) (int, claimAnswer) {
	e.t.Helper()
	var a claimAnswer
	code := e.call(user, "POST", "/api/v1/devices/"+sn+"/claim", fmt.Sprintf(`{"secretKey":%q}`, secret), &a)
	return code, a
}

type point struct {
	TS int64 `json:"ts"`
}

// telemetry returns the caller's view of a device's temperature series.
func (e *ownerEnv) telemetry(user, sn string) (int, []point) {
	e.t.Helper()
	var res map[string][]point
	code := e.call(user, "GET", "/api/v1/devices/"+sn+"/telemetry?keys=temperature&from=0&limit=10000&order=asc", "", &res)
	return code, res["temperature"]
}

// notice is one event of the live stream.
type notice struct {
	Topic  string
	Device string `json:"device"`
	TS     int64  `json:"ts"`
	At     time.Time
}

// stream opens a user's live stream on srv and collects its notices until
// the test ends.
func (e *ownerEnv) stream(srv *server, user string) *noticeLog {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+srv.httpAddr+"/api/v1/stream", nil)
	req.Header.Set("Authorization", "Bearer "+e.tokens[user])
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		e.t.Fatal(err)
	}
	if resp.StatusCode != 200 {
		cancel()
		e.t.Fatalf("stream as %s: %d", user, resp.StatusCode)
	}
	l := &noticeLog{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer resp.Body.Close()
		br := bufio.NewReader(resp.Body)
		topic := ""
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			switch {
			case strings.HasPrefix(line, "event: "):
				topic = strings.TrimSpace(line[len("event: "):])
			case strings.HasPrefix(line, "data: "):
				var n notice
				if json.Unmarshal([]byte(line[len("data: "):]), &n) == nil {
					n.Topic, n.At = topic, time.Now()
					l.mu.Lock()
					l.ns = append(l.ns, n)
					l.mu.Unlock()
				}
			}
		}
	}()
	e.t.Cleanup(func() { cancel(); <-done })
	return l
}

type noticeLog struct {
	mu sync.Mutex
	ns []notice
}

func (l *noticeLog) all() []notice {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]notice(nil), l.ns...)
}

func backends(t *testing.T, run func(t *testing.T, cluster bool)) {
	t.Run("sqlite", func(t *testing.T) { run(t, false) })
	t.Run("postgres-two-nodes", func(t *testing.T) { run(t, true) })
}

// TestOwnershipLifecycle: ThingsBoard-style claims with twins and the REST
// API — a wrong secret, two users racing (exactly one wins), the result
// seen by the device, the operator kept from telemetry, case A (same user
// after a reset: continuous history), case B with transfer (a new epoch:
// the new owner sees nothing from before, the previous owner is refused at
// once), case B with delete (a fresh record), release, the audit log, and
// an expired claim window. On SQLite, and on PostgreSQL with the device on
// one node and the API on the other.
func TestOwnershipLifecycle(t *testing.T) {
	backends(t, func(t *testing.T, cluster bool) {
		e := newOwnerEnv(t, cluster, 2)
		const sn = "SN-000001"
		tw := e.startTwin(sn, func(c *twin.Config) { c.ClaimSecret = "s3cret" })
		e.waitClaim(sn, false)

		if code, a := e.claim("alice", sn, "wrong"); code != 400 || a.Result != "FAILURE" {
			t.Errorf("wrong secret: %d %+v, want 400 FAILURE", code, a)
		}
		// Racing users: exactly one wins.
		var wg sync.WaitGroup
		codes := map[string]int{}
		var mu sync.Mutex
		for _, u := range []string{"alice", "bob"} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				code, _ := e.claim(u, sn, "s3cret")
				mu.Lock()
				codes[u] = code
				mu.Unlock()
			}()
		}
		wg.Wait()
		owner, other := "alice", "bob"
		switch {
		case codes["alice"] == 200 && codes["bob"] != 200:
		case codes["bob"] == 200 && codes["alice"] != 200:
			owner, other = "bob", "alice"
		default:
			t.Fatalf("race: %v, want exactly one 200", codes)
		}
		// The device is told.
		tstest.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
			if v := tw.View(); v.Claim != "SUCCESS" {
				return fmt.Errorf("twin's claim result %q", v.Claim)
			}
			return nil
		})
		var list struct {
			Devices []struct {
				Name string `json:"name"`
				ID   int64  `json:"id"`
			} `json:"devices"`
		}
		if code := e.call(owner, "GET", "/api/v1/devices", "", &list); code != 200 || len(list.Devices) != 1 || list.Devices[0].Name != sn {
			t.Errorf("owner's devices: %d %+v", code, list)
		}
		firstID := list.Devices[0].ID
		if code := e.call(other, "GET", "/api/v1/devices/"+sn, "", nil); code != 404 {
			t.Errorf("non-owner reads the device: %d, want 404", code)
		}
		if code, _ := e.telemetry(other, sn); code != 404 {
			t.Errorf("non-owner reads telemetry: %d, want 404", code)
		}
		if code := e.call("olga", "GET", "/api/v1/devices/"+sn, "", nil); code != 200 {
			t.Errorf("operator reads the device: %d, want 200", code)
		}
		for _, p := range []string{"/telemetry", "/telemetry/latest", "/attributes"} {
			if code := e.call("olga", "GET", "/api/v1/devices/"+sn+p, "", nil); code != 403 {
				t.Errorf("operator reads %s: %d, want 403", p, code)
			}
		}
		if code := e.call("olga", "GET", "/api/v1/devices/"+sn+"/credentials", "", nil); code != 200 {
			t.Errorf("operator reads certificates: %d, want 200", code)
		}
		var pts []point
		tstest.CheckFor(t, 20*time.Second, 100*time.Millisecond, func() error {
			if _, pts = e.telemetry(owner, sn); len(pts) < 3 {
				return fmt.Errorf("owner sees %d points", len(pts))
			}
			return nil
		})
		if code := e.call(owner, "POST", "/api/v1/devices/"+sn+"/attributes", `{"ownerNote":"private"}`, nil); code != 200 {
			t.Errorf("owner sets a shared attribute: %d", code)
		}

		// Case A: reset, the same user claims again: same epoch, history kept.
		before := pts[len(pts)-1].TS
		if err := tw.FactoryReset(); err != nil {
			t.Fatal(err)
		}
		e.waitClaim(sn, true)
		if code, a := e.claim(owner, sn, "s3cret"); code != 200 || a.Outcome != "same-owner" {
			t.Fatalf("case A: %d %+v", code, a)
		}
		if _, pts := e.telemetry(owner, sn); len(pts) == 0 || pts[0].TS > before {
			t.Errorf("case A: history before the reset is gone (%d points)", len(pts))
		}

		// Case B, transfer: the other user claims the reset device. The
		// previous owner watches the live stream on the device's node, the
		// claim goes through the other node.
		if err := tw.FactoryReset(); err != nil {
			t.Fatal(err)
		}
		e.waitClaim(sn, true)
		oldStream := e.stream(e.mqtt, owner)
		tstest.CheckFor(t, 20*time.Second, 50*time.Millisecond, func() error {
			for _, n := range oldStream.all() {
				if n.Topic == "telemetry" && n.Device == sn {
					return nil
				}
			}
			return fmt.Errorf("the owner's stream shows no telemetry of %s", sn)
		})
		if code, a := e.claim(other, sn, "s3cret"); code != 200 || a.Outcome != "transferred" {
			t.Fatalf("case B: %d %+v", code, a)
		}
		transferredAt := time.Now()
		newStream := e.stream(e.api, other)
		// The previous owner is refused at once, everywhere.
		for _, p := range []string{"", "/telemetry", "/telemetry/latest", "/attributes", "/credentials"} {
			if code := e.call(owner, "GET", "/api/v1/devices/"+sn+p, "", nil); code != 404 {
				t.Errorf("previous owner GET %s: %d, want 404", p, code)
			}
		}
		if code := e.call(owner, "GET", "/api/v1/events?device="+sn, "", nil); code != 404 {
			t.Errorf("previous owner's events: %d, want 404", code)
		}
		o := e.owners(sn)
		since := o.Owners[len(o.Owners)-1].Since.UnixMilli()
		tstest.CheckFor(t, 20*time.Second, 100*time.Millisecond, func() error {
			code, pts := e.telemetry(other, sn)
			if code != 200 || len(pts) == 0 {
				return fmt.Errorf("new owner: %d, %d points", code, len(pts))
			}
			return nil
		})
		// Nothing from before the new epoch, through any endpoint.
		if _, pts := e.telemetry(other, sn); len(pts) > 0 && pts[0].TS < since {
			t.Errorf("new owner sees a point at %d, before their epoch began at %d", pts[0].TS, since)
		}
		var latest map[string]point
		e.call(other, "GET", "/api/v1/devices/"+sn+"/telemetry/latest", "", &latest)
		for k, p := range latest {
			if p.TS < since {
				t.Errorf("latest %s at %d is before the epoch (%d)", k, p.TS, since)
			}
		}
		var attrs map[string]map[string]struct {
			TS int64 `json:"lastUpdateTs"`
		}
		e.call(other, "GET", "/api/v1/devices/"+sn+"/attributes", "", &attrs)
		for sc, m := range attrs {
			for k, a := range m {
				if a.TS < since {
					t.Errorf("%s attribute %s set at %d, before the epoch", sc, k, a.TS)
				}
			}
		}
		if _, ok := attrs["shared"]["ownerNote"]; ok {
			t.Error("the new owner sees the previous owner's shared attribute")
		}
		var evs struct {
			Events []struct {
				Time time.Time `json:"time"`
			} `json:"events"`
		}
		if code := e.call(other, "GET", "/api/v1/events?device="+sn, "", &evs); code != 200 {
			t.Errorf("new owner's events: %d", code)
		}
		for _, ev := range evs.Events {
			if ev.Time.UnixMilli() < since {
				t.Errorf("new owner sees an event of %v, before the epoch", ev.Time)
			}
		}
		// The streams: the previous owner's stops showing the device as soon
		// as the change reaches its node; the new owner's starts with it.
		// Wait until the device has streamed for a while after the
		// transfer, so that the previous owner's stream had its chance.
		tstest.CheckFor(t, 20*time.Second, 50*time.Millisecond, func() error {
			for _, n := range newStream.all() {
				if n.Topic == "telemetry" && n.Device == sn && n.At.After(transferredAt.Add(2*time.Second)) {
					return nil
				}
			}
			return fmt.Errorf("the new owner's stream shows no telemetry of %s 2 s after the transfer", sn)
		})
		for _, n := range newStream.all() {
			if n.Device == sn && n.TS != 0 && n.TS < since {
				t.Errorf("the new owner's stream shows a %s notice of %d, before the epoch (%d)", n.Topic, n.TS, since)
			}
		}
		for _, n := range oldStream.all() {
			if n.Device == sn && n.At.After(transferredAt.Add(time.Second)) {
				t.Errorf("the previous owner's stream still shows %s of %s %v after the transfer", n.Topic, sn, n.At.Sub(transferredAt))
			}
		}
		// The previous owner may still export their own epoch, and only it.
		var mine struct {
			Epochs []struct {
				ID    int64  `json:"id"`
				Ended string `json:"ended"`
			} `json:"epochs"`
		}
		if code := e.call(owner, "GET", "/api/v1/ownership/epochs", "", &mine); code != 200 || len(mine.Epochs) == 0 || mine.Epochs[0].Ended != "transferred" {
			t.Fatalf("previous owner's epochs: %d %+v", code, mine)
		}
		var export struct {
			Telemetry map[string][]point `json:"telemetry"`
		}
		exportPath := fmt.Sprintf("/api/v1/ownership/epochs/%d/telemetry?keys=temperature&limit=10000", mine.Epochs[0].ID)
		if code := e.call(owner, "GET", exportPath, "", &export); code != 200 || len(export.Telemetry["temperature"]) == 0 {
			t.Errorf("previous owner's export: %d, %d points", code, len(export.Telemetry["temperature"]))
		}
		for _, p := range export.Telemetry["temperature"] {
			if p.TS >= since {
				t.Errorf("the export holds a point at %d, after the epoch ended (%d)", p.TS, since)
			}
		}
		if code := e.call(other, "GET", exportPath, "", nil); code != 404 {
			t.Errorf("the new owner reads the previous epoch's export: %d, want 404", code)
		}
		// The admin still sees everything.
		if code, pts := e.telemetry("admin", sn); code != 200 || len(pts) == 0 || pts[0].TS >= since {
			t.Errorf("admin's view of the history: %d, %d points", code, len(pts))
		}

		// Case B, delete: the record goes, the device comes back as a new
		// record owned by the claimant, with none of the old data.
		if code := e.call("admin", "PUT", "/api/v1/ownership/policy", `{"onReset":"delete","keepDays":0}`, nil); code != 200 {
			t.Fatalf("policy: %d", code)
		}
		if err := tw.FactoryReset(); err != nil {
			t.Fatal(err)
		}
		e.waitClaim(sn, true)
		claimedAt := time.Now().UnixMilli()
		if code, a := e.claim(owner, sn, "s3cret"); code != 200 || a.Outcome != "delete" {
			t.Fatalf("case B, delete: %d %+v", code, a)
		}
		if code := e.call(other, "GET", "/api/v1/devices/"+sn, "", nil); code != 404 {
			t.Errorf("owner before the delete: %d, want 404", code)
		}
		tstest.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
			var d struct {
				ID int64 `json:"id"`
			}
			if code := e.call(owner, "GET", "/api/v1/devices/"+sn, "", &d); code != 200 || d.ID == firstID {
				return fmt.Errorf("fresh record: %d, id %d (old %d)", code, d.ID, firstID)
			}
			return nil
		})
		if _, pts := e.telemetry("admin", sn); len(pts) > 0 && pts[0].TS < claimedAt-1000 {
			t.Errorf("the recreated record holds old telemetry (first point %d, claim at %d)", pts[0].TS, claimedAt)
		}
		// Three resets and a deletion, each followed by a reconnection
		// within seconds, replaced sessions that were already over: none
		// was taken over, so no cloned identity is suspected.
		var cloned struct {
			Events []struct {
				Detail json.RawMessage `json:"detail"`
			} `json:"events"`
		}
		if code := e.call("admin", "GET", "/api/v1/events?device="+sn+"&kind=possible-cloned-identity", "", &cloned); code != 200 || len(cloned.Events) > 0 {
			t.Errorf("cloned-identity events after resets and a deletion: %d %+v", code, cloned.Events)
		}

		// Release.
		if code := e.call(owner, "POST", "/api/v1/devices/"+sn+"/release", "", nil); code != 200 {
			t.Errorf("release: %d", code)
		}
		if code := e.call(owner, "GET", "/api/v1/devices/"+sn, "", nil); code != 404 {
			t.Errorf("after release: %d, want 404", code)
		}
		o = e.owners(sn)
		actions := map[string]bool{}
		for _, a := range o.Audit {
			actions[a.Action] = true
		}
		for _, a := range []string{"claim", "claim-failed", "reclaim", "transfer", "delete", "release"} {
			if !actions[a] {
				t.Errorf("audit log lacks %q: %v", a, actions)
			}
		}
		if len(o.Owners) < 3 {
			t.Errorf("owners history: %+v", o.Owners)
		}

		// An expired window: the claim fails.
		tb := e.startTwin("SN-000002", func(c *twin.Config) { c.ClaimSecret = "late"; c.ClaimWindow = 1500 * time.Millisecond })
		p := e.waitClaim("SN-000002", false)
		tstest.CheckFor(t, 10*time.Second, 100*time.Millisecond, func() error {
			if time.Now().Before(p.ExpiresAt.Add(50 * time.Millisecond)) {
				return fmt.Errorf("window still open until %v", p.ExpiresAt)
			}
			return nil
		})
		if code, a := e.claim("alice", "SN-000002", "late"); code != 400 || a.Result != "FAILURE" {
			t.Errorf("claim after the window: %d %+v, want 400 FAILURE", code, a)
		}
		// The device is told its window passed unmatched.
		tstest.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
			if v := tb.View(); v.Claim != "EXPIRED" {
				return fmt.Errorf("twin's claim result %q", v.Claim)
			}
			return nil
		})
	})
}

// TestZeroTouchAssociation: `thingline provision --user-token --api` plays
// the app: it asks whose device this is, hands the device the user's id and
// a secret over cloud_user_assoc, sends the Wi-Fi credentials, and claims
// the device once it is online; after a factory reset another user does
// the same and the device is transferred.
func TestZeroTouchAssociation(t *testing.T) {
	backends(t, func(t *testing.T, cluster bool) {
		e := newOwnerEnv(t, cluster, 1)
		const sn = "SN-000001"
		b, err := os.ReadFile(filepath.Join(e.units, sn, "prov.json"))
		if err != nil {
			t.Fatal(err)
		}
		var prov struct {
			PoP string `json:"pop"`
		}
		json.Unmarshal(b, &prov)
		tw := e.startTwin(sn, func(c *twin.Config) { c.Prov = twin.ProvSoftAP })
		provision := func(user string) string {
			var addr string
			tstest.CheckFor(t, 20*time.Second, 50*time.Millisecond, func() error {
				if addr = tw.ProvAddr(); addr == "" {
					return fmt.Errorf("the twin does not serve provisioning yet")
				}
				return nil
			})
			out, err := thingline(t, "provision", "--service", addr, "--pop", prov.PoP, "--ssid", "home", "--passphrase", "secret123",
				"--user-token", e.tokens[user], "--api", "http://"+e.api.httpAddr, "--poll", "200ms", "--timeout", "60s")
			if err != nil {
				t.Fatalf("provision as %s: %v\n%s", user, err, out)
			}
			return out
		}
		out := provision("alice")
		if !strings.Contains(out, "is unowned") || !strings.Contains(out, "is yours") {
			t.Errorf("first provisioning:\n%s", out)
		}
		if code := e.call("alice", "GET", "/api/v1/devices/"+sn, "", nil); code != 200 {
			t.Errorf("alice's device: %d", code)
		}
		var w struct {
			Owner string `json:"owner"`
		}
		if e.call("bob", "GET", "/api/v1/devices/"+sn+"/whose", "", &w); w.Owner != "someone-else" {
			t.Errorf("whose, asked by bob: %q", w.Owner)
		}
		if err := tw.FactoryReset(); err != nil {
			t.Fatal(err)
		}
		out = provision("bob")
		if !strings.Contains(out, "belongs to someone else") || !strings.Contains(out, "(transferred)") {
			t.Errorf("provisioning after the reset:\n%s", out)
		}
		if code := e.call("alice", "GET", "/api/v1/devices/"+sn, "", nil); code != 404 {
			t.Errorf("alice after the transfer: %d, want 404", code)
		}
		if e.call("bob", "GET", "/api/v1/devices/"+sn+"/whose", "", &w); w.Owner != "mine" {
			t.Errorf("whose, asked by bob after: %q", w.Owner)
		}
	})
}

// TestAccountsCLI: the account commands call the REST API as a person
// would: an admin adds a user, the user logs in and makes an API token,
// which then works; the admin disables the user and the token stops.
func TestAccountsCLI(t *testing.T) {
	s := startServer(t, t.TempDir())
	srv := "http://" + s.httpAddr
	run := func(args ...string) string {
		t.Helper()
		out, err := thingline(t, append(args, "--server", srv)...)
		if err != nil {
			t.Fatalf("thingline %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
	run("user", "add", "dana", "--password", "dana-pass-1", "--role", "user", "--token", testToken)
	if out := run("user", "list", "--token", testToken); !strings.Contains(out, `"dana"`) {
		t.Errorf("user list:\n%s", out)
	}
	var login struct {
		Token string `json:"token"`
	}
	if err := json.Unmarshal([]byte(run("login", "dana", "--password", "dana-pass-1")), &login); err != nil || login.Token == "" {
		t.Fatalf("login: %v", err)
	}
	var tok struct {
		ID    int64  `json:"id"`
		Token string `json:"token"`
	}
	if err := json.Unmarshal([]byte(run("token", "create", "--name", "ci", "--scopes", "read", "--expires-in", "1h", "--token", login.Token)), &tok); err != nil || tok.Token == "" {
		t.Fatalf("token create: %v", err)
	}
	if out := run("owner", "whose", "SN-000123", "--token", tok.Token); !strings.Contains(out, "unowned") {
		t.Errorf("owner whose:\n%s", out)
	}
	run("user", "disable", "dana", "--token", testToken)
	if out, err := thingline(t, "token", "list", "--server", srv, "--token", tok.Token); err == nil || !strings.Contains(out, "401") {
		t.Errorf("a disabled user's token still works:\n%s", out)
	}
}
