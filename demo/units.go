package demo

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/thingline/thingline/factory"
	"github.com/thingline/thingline/pki"
)

// tokenFile keeps the demo's admin token in clear beside its data: the
// demo must print ready-to-paste commands on every run, and the node only
// keeps a hash of the token it makes.
const tokenFile = "admin-token"

// loadToken returns the demo's admin token, making it on the first run.
func loadToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		tok := strings.TrimSpace(string(b))
		if tok == "" || strings.ContainsAny(tok, " \t\r\n") {
			return "", fmt.Errorf("demo: %s is corrupt; remove it to make a new token", path)
		}
		return tok, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("demo: reading admin token: %w", err)
	}
	var raw [24]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", fmt.Errorf("demo: making admin token: %w", err)
	}
	tok := "tl_" + base64.RawURLEncoding.EncodeToString(raw[:])
	if err := pki.WriteFileAtomic(path, []byte(tok+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("demo: storing admin token: %w", err)
	}
	return tok, nil
}

// unit is one factory unit the demo runs as a twin.
type unit struct {
	sn     string
	dir    string
	prov   factory.ProvInfo
	reused bool
}

func (u unit) image() string { return filepath.Join(u.dir, factory.ImageFile) }

// unitsDir is the factory's output directory; its ledger.db keeps the SN
// sequence across runs.
func unitsDir(opt Options) string { return filepath.Join(opt.Dir, "units") }

// prepareUnits reuses the units earlier runs injected (the first opt.Units
// still usable with this node's CA) and injects the missing ones, which
// continue the ledger's SN sequence.
func prepareUnits(ctx context.Context, opt Options, caDir string, w *lockedWriter) ([]unit, error) {
	out := unitsDir(opt)
	if err := os.MkdirAll(out, 0o755); err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}
	pool, err := deviceCAPool(caDir)
	if err != nil {
		return nil, err
	}
	units, err := reusableUnits(ctx, opt, pool)
	if err != nil {
		return nil, err
	}
	if missing := opt.Units - len(units); missing > 0 {
		res, err := factory.Inject(ctx, factory.InjectOptions{
			CADir:    caDir,
			Out:      out,
			Count:    missing,
			Operator: "demo",
			Batch:    "demo",
		})
		if err != nil {
			return nil, fmt.Errorf("demo: injecting %d units: %w", missing, err)
		}
		for _, r := range res {
			units = append(units, unit{sn: r.SN, dir: r.Dir})
		}
	}
	for i := range units {
		u := &units[i]
		if u.prov, err = factory.ReadProvInfo(u.dir); err != nil {
			return nil, fmt.Errorf("demo: unit %s: %w", u.sn, err)
		}
		how := "injected"
		if u.reused {
			how = "reused  "
		}
		w.printf("   %-12s %s  %s  PoP %s  %s\n", u.sn, how, u.prov.ServiceName, u.prov.PoP, u.dir)
	}
	return units, nil
}

// reusableUnits lists the injected units of the ledger whose files are
// still there and whose certificate the node trusts: a demo directory
// whose node data was removed gets a new CA, and its old units would only
// be refused.
func reusableUnits(ctx context.Context, opt Options, pool *x509.CertPool) ([]unit, error) {
	path := filepath.Join(unitsDir(opt), factory.LedgerFile)
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	l, err := factory.OpenLedger(path)
	if err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}
	defer l.Close()
	all, err := l.Units(ctx, factory.StateInjected)
	if err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}
	var units []unit
	for _, lu := range all {
		if len(units) == opt.Units {
			break
		}
		if lu.KeyOnDevice {
			continue // no private key in the image: nothing a twin could boot from
		}
		dir := l.UnitDir(lu)
		if _, err := os.Stat(filepath.Join(dir, factory.ImageFile)); err != nil {
			continue
		}
		if !trusted(filepath.Join(dir, factory.DefaultCertName), pool) {
			continue
		}
		units = append(units, unit{sn: lu.SN, dir: dir, reused: true})
	}
	return units, nil
}

func deviceCAPool(caDir string) (*x509.CertPool, error) {
	b, err := os.ReadFile(filepath.Join(caDir, pki.DeviceCertFile))
	if err != nil {
		return nil, fmt.Errorf("demo: device CA: %w", err)
	}
	certs, err := pki.ParseCertsPEM(b)
	if err != nil || len(certs) == 0 {
		return nil, fmt.Errorf("demo: device CA %s: no certificate (%v)", caDir, err)
	}
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	return pool, nil
}

// trusted tells whether the certificate file chains to pool.
func trusted(certFile string, pool *x509.CertPool) bool {
	b, err := os.ReadFile(certFile)
	if err != nil {
		return false
	}
	certs, err := pki.ParseCertsPEM(b)
	if err != nil || len(certs) == 0 {
		return false
	}
	_, err = certs[0].Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	return err == nil
}

// pushRegistry sends the ledger's injected units to the node's registry of
// produced units through the REST API, as `thingline factory push` does, so
// that the cloud can tell produced devices from strangers.
func pushRegistry(ctx context.Context, opt Options, server, token string) (int, error) {
	l, err := factory.OpenLedger(filepath.Join(unitsDir(opt), factory.LedgerFile))
	if err != nil {
		return 0, fmt.Errorf("demo: %w", err)
	}
	defer l.Close()
	us, err := l.StoreUnits(ctx)
	if err != nil {
		return 0, fmt.Errorf("demo: %w", err)
	}
	c, err := factory.NewClient(server, token, "")
	if err != nil {
		return 0, fmt.Errorf("demo: %w", err)
	}
	n, err := c.Push(ctx, us)
	if err != nil {
		return n, fmt.Errorf("demo: pushing the registry: %w", err)
	}
	return n, nil
}
