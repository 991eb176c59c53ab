package integration

import (
	"bufio"
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/thingline/thingline/pki/pkitest"
	"github.com/thingline/thingline/tstest"
)

// TestStreamWithCurlAndAlarmCLI: curl -N follows the live stream of a
// device while an operator manages an alarm rule and the alarm it raises
// with the thingline CLI, all against a real `serve`.
func TestStreamWithCurlAndAlarmCLI(t *testing.T) {
	needTool(t, "curl")
	s := startServer(t, t.TempDir())
	api := "http://" + s.httpAddr

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	curl := exec.CommandContext(ctx, "curl", "-N", "-sS", "-H", "Authorization: Bearer "+testToken, api+"/api/v1/stream?device=SN-CURL")
	out, err := curl.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := curl.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cancel()
		curl.Wait()
	}()
	var mu sync.Mutex
	var seen []string
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			mu.Lock()
			seen = append(seen, sc.Text())
			mu.Unlock()
		}
	}()
	waitLine := func(what string, re *regexp.Regexp) {
		t.Helper()
		tstest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
			mu.Lock()
			defer mu.Unlock()
			for _, l := range seen {
				if re.MatchString(l) {
					return nil
				}
			}
			return fmt.Errorf("curl saw no %s in %q", what, seen)
		})
	}
	waitLine("stream preamble", regexp.MustCompile(`^: thingline live stream`))

	cli := func(args ...string) string {
		t.Helper()
		args = append(args, "--server", api, "--token", testToken)
		b, err := exec.Command(binary, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("thingline %s: %v\n%s", strings.Join(args, " "), err, b)
		}
		return string(b)
	}
	if out := cli("alarm", "rules", "add", "default", "--type", "hot", "--key", "temperature", "--severity", "critical",
		"--raise", ">40", "--clear", "<=38"); !strings.Contains(out, `"hot"`) {
		t.Fatalf("rules add printed %s", out)
	}
	if out := cli("profile", "settings", "default", "--inactivity-timeout", "5m", "--retention-telemetry", "90d"); !strings.Contains(out, `"5m0s"`) || !strings.Contains(out, `"2160h0m0s"`) {
		t.Fatalf("profile settings printed %s", out)
	}

	dev := pkitest.IssueDevice(t, s.deviceCA(), "SN-CURL", pkitest.Opts{})
	c, err := s.connect(dev.CertPath, dev.KeyPath, "SN-CURL")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Disconnect(100)
	waitLine("connect state", regexp.MustCompile(`^data: \{"device":"SN-CURL".*"connected":true`))
	// Rules are re-read every 5 s: keep it hot until the alarm comes.
	tstest.CheckFor(t, 30*time.Second, 500*time.Millisecond, func() error {
		if tok := c.Publish("v1/devices/me/telemetry", 1, false, `{"temperature":44.5}`); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			return fmt.Errorf("publish: %v", tok.Error())
		}
		if !strings.Contains(cli("alarm", "list", "--device", "SN-CURL", "--status", "ACTIVE"), "hot") {
			return fmt.Errorf("no active alarm yet")
		}
		return nil
	})
	waitLine("telemetry", regexp.MustCompile(`^data: \{"device":"SN-CURL","ts":\d+,"values":\{"temperature":44.5\}\}$`))
	waitLine("raised alarm", regexp.MustCompile(`^data: .*"op":"raised".*"type":"hot"`))

	list := cli("alarm", "list", "--device", "SN-CURL")
	m := regexp.MustCompile(`(?m)^(\d+)\s+SN-CURL\s+hot\s+CRITICAL\s+ACTIVE_UNACK`).FindStringSubmatch(list)
	if m == nil {
		t.Fatalf("alarm list:\n%s", list)
	}
	if out := cli("alarm", "ack", m[1]); !strings.Contains(out, "ACTIVE_ACK") {
		t.Errorf("alarm ack printed %s", out)
	}
	waitLine("acknowledged alarm", regexp.MustCompile(`^data: .*"op":"acknowledged"`))
	if out := cli("alarm", "clear", m[1]); !strings.Contains(out, "CLEARED_ACK") {
		t.Errorf("alarm clear printed %s", out)
	}
	waitLine("cleared alarm", regexp.MustCompile(`^data: .*"op":"cleared"`))
	if out, err := exec.Command(binary, "alarm", "ack", "nope", "--server", api, "--token", testToken).CombinedOutput(); err == nil {
		t.Errorf("alarm ack nope succeeded: %s", out)
	}
}
