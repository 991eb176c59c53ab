// Package deptest keeps the package graph the shape docs/architecture.md
// describes: data flows device → gateway → store and commands API → bus →
// gateway, the factory and device sides never reach into the cloud's
// internals, and the vocabulary packages depend on nothing of ours.
package deptest

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
)

const mod = "github.com/thingline/thingline/"

// forbidden maps a package to the packages of ours it must not import,
// directly or indirectly.
var forbidden = map[string][]string{
	"store": {"gateway", "api", "node", "bus", "twin", "factory"},
	"bus":   {"gateway", "api", "node", "store", "twin", "factory"},
	// The shared SQL tables are part of the backends: only they import it.
	"store/sqldb": {"gateway", "api", "node", "bus", "twin", "factory", "store/sqlite", "store/postgres"},
	"gateway":     {"api", "node", "twin", "factory", "alarm", "ota", "certmon", "rpc", "retention", "store/sqlite", "store/postgres", "store/sqldb", "bus/inproc", "bus/nats"},
	"api":         {"gateway", "node", "twin", "alarm", "ota", "certmon", "rpc", "retention", "store/sqlite", "store/postgres", "store/sqldb", "bus/inproc", "bus/nats"},
	"pki":         {"gateway", "api", "node", "store", "bus", "twin", "factory"},
	"spiffs":      {"gateway", "api", "node", "store", "bus", "twin", "factory", "pki"},
	"parttable":   {"gateway", "api", "node", "store", "bus", "twin", "factory", "pki", "spiffs"},
	"protocomm":   {"gateway", "api", "node", "store", "bus", "twin", "factory"},
	"wifiprov":    {"gateway", "api", "node", "store", "bus", "twin", "factory"},
	// The twin is a device: it reaches the cloud only over the network.
	"twin":    {"gateway", "api", "node", "store", "bus", "ota"},
	"factory": {"gateway", "node", "twin", "bus", "store/sqlite", "store/postgres"},
	"loadgen": {"gateway", "api", "node", "store", "bus", "twin", "factory"},
	// Alarms, device state and rules run beside the gateway, seeing it only
	// through the vocabularies and the hook it declares.
	"alarm": {"gateway", "api", "node", "twin", "factory", "store/sqlite", "store/postgres", "store/sqldb", "bus/inproc", "bus/nats"},
	// The OTA engine runs beside the gateway like alarms do.
	"ota": {"gateway", "api", "node", "twin", "factory", "store/sqlite", "store/postgres", "store/sqldb", "bus/inproc", "bus/nats"},
	// Firmware checksums are a leaf the API, the OTA engine and the twin share.
	"ota/checksum": {"gateway", "api", "node", "store", "bus", "twin", "factory", "pki", "ota"},
	// The console sees the system only through the API's HTTP handler, so
	// it can never show what the API would refuse.
	"console": {"gateway", "api", "node", "store", "bus", "twin", "factory", "pki"},
	// The certificate monitor sweeps the store beside the gateway; it
	// reaches devices only through revocation notices on the bus.
	"certmon": {"gateway", "api", "node", "twin", "factory", "store/sqlite", "store/postgres", "store/sqldb", "bus/inproc", "bus/nats"},
	// Ownership's background work sees the system through the store only.
	"ownership": {"gateway", "api", "node", "bus", "twin", "factory", "store/sqlite", "store/postgres", "store/sqldb"},
	// Accounts are a leaf the API uses: hashing, token secrets, limits.
	"account": {"gateway", "api", "node", "bus", "twin", "factory", "store/sqlite", "store/postgres", "store/sqldb"},
	// Persistent RPC runs beside the gateway, wired to it by node.
	"rpc":       {"gateway", "api", "node", "twin", "factory", "alarm", "ota", "certmon", "store/sqlite", "store/postgres", "store/sqldb", "bus/inproc", "bus/nats"},
	"retention": {"gateway", "api", "node", "bus", "twin", "factory", "store/sqlite", "store/postgres", "store/sqldb"},
}

func TestForbiddenImports(t *testing.T) {
	for pkg, bad := range forbidden {
		out, err := exec.Command("go", "list", "-deps", "-json=ImportPath", mod+pkg).Output()
		if err != nil {
			t.Fatalf("go list %s: %v", pkg, err)
		}
		deps := map[string]bool{}
		dec := json.NewDecoder(strings.NewReader(string(out)))
		for dec.More() {
			var p struct{ ImportPath string }
			if err := dec.Decode(&p); err != nil {
				t.Fatal(err)
			}
			deps[strings.TrimPrefix(p.ImportPath, mod)] = true
		}
		if !deps[pkg] {
			t.Fatalf("go list %s did not list the package itself", pkg)
		}
		for _, b := range bad {
			if deps[b] {
				t.Errorf("%s imports %s (directly or not): see docs/architecture.md", pkg, b)
			}
		}
	}
}
