package cli

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/thingline/thingline/node"
	"github.com/thingline/thingline/pki"
	"github.com/thingline/thingline/pki/pkitest"
)

// TestRPCAndAttributeCommands runs the operator commands against a real
// node with a real MQTT device: a persistent call queued while the device
// is offline completes once it connects (rpc send --wait), and shows in
// rpc list and rpc get; attributes are set, read and deleted.
func TestRPCAndAttributeCommands(t *testing.T) {
	const token = "cli-rpc-token"
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n, err := node.Start(ctx, node.Config{DataDir: t.TempDir(), MQTTListen: "127.0.0.1:0", HTTPListen: "127.0.0.1:0",
		AdminToken: token, NodeID: "cli", Out: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	run := func(args ...string) (string, error) {
		root := NewRoot()
		var out bytes.Buffer
		root.SetOut(&out)
		root.SetErr(&out)
		root.SetArgs(append(args, "--server", "http://"+n.HTTPAddr(), "--token", token))
		err := root.ExecuteContext(ctx)
		return out.String(), err
	}

	ca, err := pki.LoadCA(n.PKIDir())
	if err != nil {
		t.Fatal(err)
	}
	sn := fmt.Sprintf("SN-CLI-%d", time.Now().UnixNano())
	id := pkitest.IssueDevice(t, ca, sn, pkitest.Opts{})
	root, _ := os.ReadFile(filepath.Join(n.PKIDir(), "root-ca.crt"))
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(root)
	cert, err := tls.LoadX509KeyPair(id.CertPath, id.KeyPath)
	if err != nil {
		t.Fatal(err)
	}
	connect := func() mqtt.Client {
		c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker("ssl://" + n.MQTTAddr()).SetClientID(sn).
			SetTLSConfig(&tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, ServerName: "127.0.0.1"}).
			SetAutoReconnect(false).SetProtocolVersion(4))
		if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("connect: %v", tok.Error())
		}
		return c
	}
	connect().Disconnect(0) // provisioned, then offline

	// Queued while offline; the device connects while --wait follows it.
	type result struct {
		out string
		err error
	}
	done := make(chan result, 1)
	go func() {
		out, err := run("rpc", "send", sn, "setInterval", `{"ms":5000}`, "--persistent", "--wait", "--retries", "1")
		done <- result{out, err}
	}()
	c := connect()
	defer c.Disconnect(0)
	c.Subscribe("v1/devices/me/rpc/request/+", 1, func(cl mqtt.Client, m mqtt.Message) {
		reqID := m.Topic()[strings.LastIndex(m.Topic(), "/")+1:]
		cl.Publish("v1/devices/me/rpc/response/"+reqID, 1, false, `{"ok":true,"interval_ms":5000}`)
	}).WaitTimeout(10 * time.Second)
	var res result
	select {
	case res = <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("rpc send --wait did not finish")
	}
	if res.err != nil || !strings.Contains(res.out, "SUCCESSFUL") || !strings.Contains(res.out, `"interval_ms": 5000`) {
		t.Fatalf("rpc send --wait: %v\n%s", res.err, res.out)
	}
	callID := strings.Fields(res.out)[0]

	out, err := run("rpc", "list", sn)
	if err != nil || !strings.Contains(out, callID) || !strings.Contains(out, "setInterval") || !strings.Contains(out, "SUCCESSFUL") {
		t.Errorf("rpc list: %v\n%s", err, out)
	}
	out, err = run("rpc", "get", callID)
	if err != nil || !strings.Contains(out, `"status": "SUCCESSFUL"`) {
		t.Errorf("rpc get: %v\n%s", err, out)
	}
	if _, err := run("rpc", "send", sn, "x", "not json"); err == nil {
		t.Error("rpc send with bad params JSON succeeded")
	}
	// A live call without --persistent prints the device's answer.
	out, err = run("rpc", "send", sn, "getState")
	if err != nil || !strings.Contains(out, `"ok": true`) {
		t.Errorf("rpc send (live): %v\n%s", err, out)
	}
	out, err = run("rpc", "delete", callID)
	if err != nil || !strings.Contains(out, "deleted") {
		t.Errorf("rpc delete: %v\n%s", err, out)
	}
	if _, err := run("rpc", "get", callID); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("rpc get after delete: %v", err)
	}

	if out, err = run("attributes", "set", sn, "interval=30", "color=red", "cfg={\"a\":1}"); err != nil || !strings.Contains(out, `"updated": 3`) {
		t.Fatalf("attributes set: %v\n%s", err, out)
	}
	out, err = run("attributes", "get", sn, "--scope", "shared")
	if err != nil || !strings.Contains(out, `"value": 30`) || !strings.Contains(out, `"value": "red"`) || !strings.Contains(out, `"a": 1`) {
		t.Errorf("attributes get: %v\n%s", err, out)
	}
	if out, err = run("attributes", "delete", sn, "color"); err != nil || !strings.Contains(out, `"deleted": 1`) {
		t.Errorf("attributes delete: %v\n%s", err, out)
	}
	out, _ = run("attributes", "get", sn, "--scope", "shared")
	if strings.Contains(out, `"color"`) || !strings.Contains(out, `"interval"`) {
		t.Errorf("deleted attribute still there:\n%s", out)
	}
}
