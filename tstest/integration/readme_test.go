package integration

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// readmeCommands returns the command lines of README.md's sh blocks, with
// continuation lines joined and comments cut, and the comment lines
// themselves (they say what a command leaves behind).
func readmeCommands(t *testing.T) (cmds, comments []string) {
	t.Helper()
	f, err := os.Open(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	in, cont := false, ""
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "```sh"):
			in = true
			continue
		case strings.HasPrefix(line, "```"):
			in = false
			continue
		case !in:
			continue
		}
		if strings.HasPrefix(strings.TrimSpace(line), "#") {
			comments = append(comments, strings.TrimSpace(line))
			continue
		}
		if i := strings.Index(line, " #"); i >= 0 {
			line = line[:i]
		}
		line = strings.TrimSpace(line)
		if strings.HasSuffix(line, `\`) {
			cont += strings.TrimSuffix(line, `\`) + " "
			continue
		}
		if line = strings.TrimSpace(cont + line); line != "" {
			cmds = append(cmds, line)
		}
		cont = ""
	}
	return cmds, comments
}

// TestREADMECommands runs the README's commands as written, on loopback:
// `go install ./cmd/thingline` puts the command on PATH, then the first
// start of `serve` (with its listeners moved to ephemeral ports), the
// factory line against its development PKI, and the two-node cluster on
// this machine's PostgreSQL and NATS in place of the README's db and nats
// hosts. What cannot run here (a flash to a serial port, the whole test
// suite, which is this run) is named in the log.
func TestREADMECommands(t *testing.T) {
	cmds, comments := readmeCommands(t)
	if len(cmds) < 5 {
		t.Fatalf("only %d commands found in README.md", len(cmds))
	}
	repo, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	bin := t.TempDir()
	env := append(os.Environ(), "GOBIN="+bin, "PATH="+bin+string(os.PathListSeparator)+os.Getenv("PATH"), "THINGLINE_ADMIN_TOKEN=")
	work := t.TempDir()
	shell := func(dir, line string) *exec.Cmd {
		c := exec.Command("sh", "-c", line)
		c.Dir, c.Env = dir, env
		return c
	}
	ephemeral := " --mqtt-listen 127.0.0.1:0 --http-listen 127.0.0.1:0"
	ran := map[string]bool{}
	for _, line := range cmds {
		switch {
		case line == "go install ./cmd/thingline":
			if out, err := shell(repo, line).CombinedOutput(); err != nil {
				t.Fatalf("%s: %v\n%s", line, err, out)
			}
			if out, err := shell(work, "thingline --help").CombinedOutput(); err != nil {
				t.Fatalf("thingline --help after %s: %v\n%s", line, err, out)
			}
			// The README's "go run ./cmd/thingline serve": the first start
			// makes thingline-data with the development PKI.
			runUntilListening(t, shell(work, "exec thingline serve"+ephemeral))
		case strings.HasPrefix(line, "thingline factory inject"):
			if out, err := shell(work, line).CombinedOutput(); err != nil {
				t.Fatalf("%s: %v\n%s", line, err, out)
			}
			checkListedFiles(t, work, comments)
		case strings.HasPrefix(line, "thingline serve --store postgres://user@db/thingline"):
			storeURL, natsURL := clusterStore(t)
			node := filepath.Join(work, "node-"+regexp.MustCompile(`--node-id (\S+)`).FindStringSubmatch(line)[1])
			if err := os.Mkdir(node, 0o700); err != nil {
				t.Fatal(err)
			}
			// "the first node's DATA/pki files will do"
			for _, f := range []string{"server.crt", "server.key", "device-ca.crt"} {
				b, err := os.ReadFile(filepath.Join(work, "thingline-data", "pki", f))
				if err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(node, f), b, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			l := strings.ReplaceAll(line, "postgres://user@db/thingline", "'"+storeURL+"'")
			l = strings.ReplaceAll(l, "nats://nats:4222", "'"+natsURL+"'")
			runUntilListening(t, shell(node, "exec "+l+ephemeral))
		default:
			t.Logf("not run here: %s", line)
			continue
		}
		ran[line] = true
	}
	if len(ran) < 4 {
		t.Errorf("ran only %d of the README's commands: %v", len(ran), ran)
	}
}

// checkListedFiles checks the files a README comment like
// "# units/SN-000001/{a,b}" lists.
func checkListedFiles(t *testing.T, dir string, comments []string) {
	t.Helper()
	re := regexp.MustCompile(`^# (\S+/)\{([^}]+)\}$`)
	n := 0
	for _, c := range comments {
		m := re.FindStringSubmatch(c)
		if m == nil {
			continue
		}
		for _, f := range strings.Split(m[2], ",") {
			n++
			if _, err := os.Stat(filepath.Join(dir, m[1], f)); err != nil {
				t.Errorf("README says %s%s is made: %v", m[1], f, err)
			}
		}
	}
	if n == 0 {
		t.Error("README lists no files made by the factory")
	}
}
