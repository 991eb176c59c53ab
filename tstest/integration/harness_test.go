// Package integration drives the thingline binary as a user would: `serve`
// as a separate process on loopback, real MQTT clients (paho and Debian's
// mosquitto_pub/mosquitto_sub), openssl and curl.
package integration

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/thingline/thingline/pki"
)

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "thingline-integration-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "thingline")
	out, err := exec.Command("go", "build", "-o", binary, "github.com/thingline/thingline/cmd/thingline").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "building thingline: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

const testToken = "test-admin-token"

// server is a `thingline serve` process.
type server struct {
	t        *testing.T
	cmd      *exec.Cmd
	data     string
	mqttAddr string
	httpAddr string
	mu       sync.Mutex
	stderr   strings.Builder
	exited   chan struct{}
}

var addrLine = regexp.MustCompile(`devices connect to mqtts://(\S+), API at http://(\S+)`)

// startServer runs `thingline serve` on ephemeral loopback ports with the
// data directory data and waits until it listens.
func startServer(t *testing.T, data string, args ...string) *server {
	t.Helper()
	s := &server{t: t, data: data, exited: make(chan struct{})}
	argv := append([]string{"serve", "--data", data, "--mqtt-listen", "127.0.0.1:0",
		"--http-listen", "127.0.0.1:0", "--admin-token", testToken}, args...)
	s.cmd = exec.Command(binary, argv...)
	pr, pw := io.Pipe()
	s.cmd.Stderr = pw
	s.cmd.Stdout = pw
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		once := false
		for sc.Scan() {
			line := sc.Text()
			s.mu.Lock()
			s.stderr.WriteString(line + "\n")
			if m := addrLine.FindStringSubmatch(line); m != nil && !once {
				s.mqttAddr, s.httpAddr = m[1], m[2]
				once = true
				close(ready)
			}
			s.mu.Unlock()
		}
	}()
	go func() {
		s.cmd.Wait()
		pw.Close()
		close(s.exited)
	}()
	select {
	case <-ready:
	case <-s.exited:
		t.Fatalf("thingline serve exited early:\n%s", s.output())
	case <-time.After(30 * time.Second):
		s.kill()
		t.Fatalf("thingline serve did not start in 30s:\n%s", s.output())
	}
	t.Cleanup(func() {
		s.stop()
		if t.Failed() {
			t.Logf("server output:\n%s", s.output())
		}
	})
	return s
}

func (s *server) output() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stderr.String()
}

// kill ends the server with SIGKILL, as a power cut or OOM kill would.
func (s *server) kill() {
	s.cmd.Process.Kill()
	<-s.exited
}

// stop ends the server with SIGTERM and waits for a clean exit.
func (s *server) stop() {
	select {
	case <-s.exited:
		return
	default:
	}
	s.cmd.Process.Signal(os.Interrupt)
	select {
	case <-s.exited:
	case <-time.After(15 * time.Second):
		s.t.Errorf("server did not stop within 15s of SIGINT")
		s.kill()
	}
}

func (s *server) pkiDir() string { return filepath.Join(s.data, "pki") }

// api calls the REST API and decodes a JSON answer into out (if non-nil).
func (s *server) api(method, path string, body string, out any) int {
	s.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, "http://"+s.httpAddr+path, rd)
	if err != nil {
		s.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+testToken)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil && len(b) > 0 {
		if err := json.Unmarshal(b, out); err != nil {
			s.t.Fatalf("%s %s: %d, undecodable %q: %v", method, path, resp.StatusCode, b, err)
		}
	}
	return resp.StatusCode
}

// deviceCA loads the development PKI's device CA.
func (s *server) deviceCA() *pki.CA {
	s.t.Helper()
	ca, err := pki.LoadCA(s.pkiDir())
	if err != nil {
		s.t.Fatal(err)
	}
	return ca
}

// tlsConfig is what a device holding certFile/keyFile and trusting the
// development root uses.
func (s *server) tlsConfig(certFile, keyFile string) *tls.Config {
	s.t.Helper()
	root, err := os.ReadFile(filepath.Join(s.pkiDir(), "root-ca.crt"))
	if err != nil {
		s.t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(root)
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		s.t.Fatal(err)
	}
	return &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, ServerName: "127.0.0.1"}
}

// connect opens an MQTT 3.1.1 session (the firmware's esp-mqtt default)
// with paho.
func (s *server) connect(certFile, keyFile, clientID string) (mqtt.Client, error) {
	return s.connectWith(certFile, keyFile, clientID, nil)
}

// connectWith is connect with a handler for the connection's loss.
func (s *server) connectWith(certFile, keyFile, clientID string, onLost mqtt.ConnectionLostHandler) (mqtt.Client, error) {
	return dialMQTT(s.mqttAddr, s.tlsConfig(certFile, keyFile), clientID, onLost)
}

// dialMQTT opens an MQTT 3.1.1 session with paho over TLS.
func dialMQTT(addr string, tc *tls.Config, clientID string, onLost mqtt.ConnectionLostHandler) (mqtt.Client, error) {
	opts := mqtt.NewClientOptions().
		AddBroker("ssl://" + addr).
		SetClientID(clientID).
		SetTLSConfig(tc).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetCleanSession(true).
		SetProtocolVersion(4).
		SetConnectTimeout(10 * time.Second).
		SetWriteTimeout(10 * time.Second)
	if onLost != nil {
		opts.SetConnectionLostHandler(onLost)
	}
	c := mqtt.NewClient(opts)
	tok := c.Connect()
	if !tok.WaitTimeout(15 * time.Second) {
		return nil, fmt.Errorf("connect timed out")
	}
	if err := tok.Error(); err != nil {
		return nil, err
	}
	return c, nil
}

func needTool(t *testing.T, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Skipf("%s not installed: this test needs it", name)
	}
}
