package factory

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/thingline/thingline/pki"
	"github.com/thingline/thingline/pki/pkitest"
	"github.com/thingline/thingline/spiffs"
	"github.com/thingline/thingline/tstest"
)

// TestMain lets a test re-exec its own binary as a separate inject
// process, so that races and kill -9 are exercised between real processes.
func TestMain(m *testing.M) {
	if os.Getenv("THINGLINE_FACTORY_CHILD") == "inject" {
		os.Exit(childInject())
	}
	os.Exit(m.Run())
}

func childInject() int {
	var count int
	fmt.Sscan(os.Getenv("CHILD_COUNT"), &count)
	var w *os.File
	if os.Getenv("CHILD_PROGRESS") != "" {
		w = os.Stdout
	}
	opt := InjectOptions{CADir: os.Getenv("CHILD_CA"), Out: os.Getenv("CHILD_OUT"), Count: count, Operator: os.Getenv("CHILD_OP"), Batch: "b"}
	if os.Getenv("CHILD_WORKERS") != "" {
		fmt.Sscan(os.Getenv("CHILD_WORKERS"), &opt.Workers)
	}
	if w != nil {
		opt.Progress = w
	}
	units, err := Inject(context.Background(), opt)
	for _, u := range units {
		fmt.Println(u.SN)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

func childCmd(t *testing.T, ca, out string, count int, env ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "THINGLINE_FACTORY_CHILD=inject", "CHILD_CA="+ca, "CHILD_OUT="+out, fmt.Sprint("CHILD_COUNT=", count))
	cmd.Env = append(cmd.Env, env...)
	return cmd
}

// devCA returns a CA directory holding only the three files inject needs.
func devCA(t *testing.T) string {
	t.Helper()
	full := pkitest.DevPKI(t)
	dir := t.TempDir()
	for _, f := range []string{pki.DeviceCertFile, pki.DeviceKeyFile, pki.RootCertFile} {
		b, err := os.ReadFile(filepath.Join(full, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func needOpenSSL(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl: not installed")
	}
}

func openssl(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("openssl", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// checkUnit checks a unit directory against the ledger and its image.
func checkUnit(t *testing.T, ca, dir, sn string, withKey bool, chainName string) {
	t.Helper()
	read := func(n string) []byte {
		b, err := os.ReadFile(filepath.Join(dir, n))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	img := read(ImageFile)
	fs, err := spiffs.Open(img, spiffs.DefaultConfig(len(img)))
	if err != nil {
		t.Fatalf("%s: opening image: %v", sn, err)
	}
	names := []string{DefaultCertName, chainName, ProvFile}
	if withKey {
		names = append(names, DefaultKeyName)
	} else if _, err := os.Stat(filepath.Join(dir, DefaultKeyName)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s: key file written in csr mode (err %v)", sn, err)
	}
	if n := len(fs.List()); n != len(names) {
		t.Errorf("%s: image holds %d files, want %d: %v", sn, n, len(names), fs.List())
	}
	for _, n := range names {
		got, err := fs.ReadFile("/" + n)
		if err != nil {
			t.Fatalf("%s: image file /%s: %v", sn, n, err)
		}
		if !bytes.Equal(got, read(n)) {
			t.Errorf("%s: image /%s differs from the unit's file", sn, n)
		}
	}
	man, err := ReadManifest(dir)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(img)
	if len(man.Images) != 1 || man.Images[0].SHA256 != hex.EncodeToString(sum[:]) || man.Images[0].Size != uint32(len(img)) || man.SN != sn {
		t.Errorf("%s: manifest %+v does not describe the image", sn, man)
	}
	p, err := ReadProvInfo(dir)
	if err != nil {
		t.Fatal(err)
	}
	if p.ServiceName != ServiceName(sn) || len(p.PoP) < 8 || p.Sec2Username != "wifiprov" {
		t.Errorf("%s: prov.json %+v", sn, p)
	}
	if pi, err := ReadProvInfoImage(img); err != nil || pi != p {
		t.Errorf("%s: prov.json in the image: %+v, %v", sn, pi, err)
	}
	if _, err := exec.LookPath("openssl"); err == nil {
		crt := filepath.Join(dir, DefaultCertName)
		if out := openssl(t, "verify", "-CAfile", filepath.Join(ca, pki.RootCertFile), "-untrusted", filepath.Join(ca, pki.DeviceCertFile), crt); !strings.Contains(out, ": OK") {
			t.Errorf("%s: openssl verify: %s", sn, out)
		}
		if out := openssl(t, "x509", "-noout", "-subject", "-in", crt); strings.TrimSpace(out) != "subject=CN = "+sn && strings.TrimSpace(out) != "subject=CN="+sn {
			t.Errorf("%s: subject %q", sn, out)
		}
		if withKey {
			// The key must be the one the certificate is for.
			pub1 := openssl(t, "x509", "-noout", "-pubkey", "-in", crt)
			pub2 := openssl(t, "pkey", "-pubout", "-in", filepath.Join(dir, DefaultKeyName))
			if pub1 != pub2 {
				t.Errorf("%s: key does not match certificate", sn)
			}
		}
	}
}

func TestInjectSequenceAndFiles(t *testing.T) {
	needOpenSSL(t)
	ca := devCA(t)
	out := t.TempDir()
	ctx := context.Background()
	units, err := Inject(ctx, InjectOptions{CADir: ca, Out: out, Count: 3, Operator: "ann", Batch: "B1"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"SN-000001", "SN-000002", "SN-000003"}
	if len(units) != 3 {
		t.Fatalf("got %d units", len(units))
	}
	for i, u := range units {
		if u.SN != want[i] || u.Dir != filepath.Join(out, want[i]) {
			t.Errorf("unit %d = %s in %s", i, u.SN, u.Dir)
		}
		checkUnit(t, ca, u.Dir, u.SN, true, DefaultChainName)
		if d := time.Until(u.NotAfter) - 1095*24*time.Hour; d > time.Minute || d < -time.Minute {
			t.Errorf("%s: not after %v, want 1095 days from now", u.SN, u.NotAfter)
		}
	}
	// The next run continues the sequence; an explicit SN is refused once
	// used, and the sequence skips SNs taken explicitly.
	if _, err := Inject(ctx, InjectOptions{CADir: ca, Out: out, SN: "SN-000005"}); err != nil {
		t.Fatal(err)
	}
	if _, err := Inject(ctx, InjectOptions{CADir: ca, Out: out, SN: "SN-000002"}); !errors.Is(err, ErrSNUsed) {
		t.Fatalf("reused SN: err = %v, want ErrSNUsed", err)
	}
	more, err := Inject(ctx, InjectOptions{CADir: ca, Out: out, Count: 2})
	if err != nil {
		t.Fatal(err)
	}
	if more[0].SN != "SN-000004" || more[1].SN != "SN-000006" {
		t.Fatalf("continued with %s, %s; want SN-000004, SN-000006", more[0].SN, more[1].SN)
	}

	l, err := OpenLedger(filepath.Join(out, LedgerFile))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	u, err := l.Unit(ctx, "SN-000001")
	if err != nil {
		t.Fatal(err)
	}
	if u.State != StateInjected || u.CertSerial != units[0].CertSerial || u.SHA256 != units[0].SHA256 || u.ImageSHA256 != units[0].ImageSHA256 ||
		!u.NotAfter.Equal(units[0].NotAfter) || u.Operator != "ann" || u.Batch != "B1" || u.LastStation != StationInjection {
		t.Errorf("ledger row %+v does not match %+v", u, units[0])
	}
	ev, err := l.Traveller(ctx, "SN-000001")
	if err != nil {
		t.Fatal(err)
	}
	if len(ev) != 1 || ev[0].Station != StationInjection || ev[0].Result != Pass || ev[0].Operator != "ann" || ev[0].Batch != "B1" {
		t.Errorf("traveller %+v", ev)
	}
}

func TestInjectCSRWritesNoKey(t *testing.T) {
	needOpenSSL(t)
	ca := devCA(t)
	out := t.TempDir()
	// The device makes its key and CSR; openssl stands in for it.
	key := filepath.Join(t.TempDir(), "dev.key")
	csr := filepath.Join(t.TempDir(), "dev.csr")
	openssl(t, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-subj", "/CN=whatever", "-out", csr)
	units, err := Inject(context.Background(), InjectOptions{CADir: ca, Out: out, CSR: csr, ChainName: "root_ca.crt"})
	if err != nil {
		t.Fatal(err)
	}
	checkUnit(t, ca, units[0].Dir, "SN-000001", false, "root_ca.crt")
	pub1 := openssl(t, "x509", "-noout", "-pubkey", "-in", filepath.Join(units[0].Dir, DefaultCertName))
	pub2 := openssl(t, "pkey", "-pubout", "-in", key)
	if pub1 != pub2 {
		t.Error("certificate is not for the csr's key")
	}
}

func TestInjectPartitionsSizeImage(t *testing.T) {
	ca := devCA(t)
	out := t.TempDir()
	csv := filepath.Join(t.TempDir(), "partitions.csv")
	os.WriteFile(csv, []byte("nvs,data,nvs,0x9000,0x6000,\nfactory,app,factory,0x10000,1M,\nstorage,data,spiffs,,0x20000,\n"), 0o644)
	units, err := Inject(context.Background(), InjectOptions{CADir: ca, Out: out, Partitions: csv})
	if err != nil {
		t.Fatal(err)
	}
	man, err := ReadManifest(units[0].Dir)
	if err != nil {
		t.Fatal(err)
	}
	img := man.Images[0]
	if img.Partition != "storage" || img.Offset != 0x110000 || img.Size != 0x20000 {
		t.Errorf("image %+v, want storage at 0x110000, 0x20000 bytes", img)
	}
	if fi, err := os.Stat(filepath.Join(units[0].Dir, ImageFile)); err != nil || fi.Size() != 0x20000 {
		t.Errorf("image file: %v, %v", fi, err)
	}
	// A spiffs partition too small fails before any SN is used.
	os.WriteFile(csv, []byte("nvs,data,nvs,0x9000,0x6000,\nstorage,data,spiffs,,0x1000,\n"), 0o644)
	if _, err := Inject(context.Background(), InjectOptions{CADir: ca, Out: out, Partitions: csv}); err == nil {
		t.Fatal("tiny spiffs partition accepted")
	}
	l, err := OpenLedger(filepath.Join(out, LedgerFile))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	us, _ := l.Units(context.Background(), "")
	if len(us) != 1 {
		t.Errorf("ledger has %d units, want 1", len(us))
	}
}

// TestInjectConcurrentProcesses races real inject processes on one ledger.
func TestInjectConcurrentProcesses(t *testing.T) {
	ca := devCA(t)
	out := t.TempDir()
	const procs, each = 3, 15
	var cmds []*exec.Cmd
	var outs []*bytes.Buffer
	for i := range procs {
		cmd := childCmd(t, ca, out, each, fmt.Sprint("CHILD_OP=p", i), "CHILD_WORKERS=2")
		var b bytes.Buffer
		cmd.Stdout, cmd.Stderr = &b, &b
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds, outs = append(cmds, cmd), append(outs, &b)
	}
	seen := map[string]int{}
	for i, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Fatalf("process %d: %v\n%s", i, err, outs[i])
		}
		for _, sn := range strings.Fields(outs[i].String()) {
			if prev, dup := seen[sn]; dup {
				t.Errorf("%s made by processes %d and %d", sn, prev, i)
			}
			seen[sn] = i
		}
	}
	if len(seen) != procs*each {
		t.Fatalf("%d distinct SNs, want %d", len(seen), procs*each)
	}
	for n := 1; n <= procs*each; n++ {
		if _, ok := seen[fmt.Sprintf("SN-%06d", n)]; !ok {
			t.Errorf("SN-%06d missing", n)
		}
	}
	l, err := OpenLedger(filepath.Join(out, LedgerFile))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	us, err := l.Units(context.Background(), StateInjected)
	if err != nil || len(us) != procs*each {
		t.Fatalf("ledger: %d injected units, err %v", len(us), err)
	}
	for _, u := range us {
		if u.Operator != fmt.Sprint("p", seen[u.SN]) {
			t.Errorf("%s recorded by %s, made by p%d", u.SN, u.Operator, seen[u.SN])
		}
	}
}

// TestInjectKill9 kills an inject process mid-batch and checks that every
// SN up to the highest reserved one is either complete or visibly
// abandoned, and that the next run continues after it.
func TestInjectKill9(t *testing.T) {
	ca := devCA(t)
	out := t.TempDir()
	cmd := childCmd(t, ca, out, 100000, "CHILD_WORKERS=2")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Kill once some units are done, so the kill lands mid-batch.
	tstest.CheckFor(t, 30*time.Second, 10*time.Millisecond, func() error {
		ents, _ := os.ReadDir(out)
		n := 0
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), "SN-") {
				n++
			}
		}
		if n < 10 {
			return fmt.Errorf("%d unit directories", n)
		}
		return nil
	})
	cmd.Process.Signal(os.Kill)
	cmd.Wait()

	ctx := context.Background()
	l, err := OpenLedger(filepath.Join(out, LedgerFile))
	if err != nil {
		t.Fatal(err)
	}
	us, err := l.Units(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	var maxSeq int64
	bySN := map[string]Unit{}
	abandoned := 0
	for _, u := range us {
		bySN[u.SN] = u
		maxSeq = max(maxSeq, u.Seq)
		switch u.State {
		case StateInjected:
			checkUnit(t, ca, u.Dir, u.SN, true, DefaultChainName)
		case StateAbandoned:
			abandoned++
			if _, err := os.Stat(u.Dir); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("abandoned %s still has its directory (err %v)", u.SN, err)
			}
		default:
			t.Errorf("%s left %s after its process died", u.SN, u.State)
		}
	}
	for n := int64(1); n <= maxSeq; n++ {
		if _, ok := bySN[fmt.Sprintf("SN-%06d", n)]; !ok {
			t.Errorf("SN-%06d below the highest reserved (%d) is not in the ledger", n, maxSeq)
		}
	}
	// No unit directory exists that the ledger does not call injected.
	ents, _ := os.ReadDir(out)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "SN-") && !strings.HasSuffix(e.Name(), ".abandoned") {
			if bySN[e.Name()].State != StateInjected {
				t.Errorf("directory %s is %q in the ledger", e.Name(), bySN[e.Name()].State)
			}
		}
		if strings.HasSuffix(e.Name(), ".partial") {
			t.Errorf("staging directory %s left behind", e.Name())
		}
	}
	t.Logf("killed after %d units reserved, %d abandoned", maxSeq, abandoned)
	next, err := Inject(ctx, InjectOptions{CADir: ca, Out: out})
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("SN-%06d", maxSeq+1); next[0].SN != want {
		t.Errorf("next unit %s, want %s", next[0].SN, want)
	}
}

func TestServiceName(t *testing.T) {
	// printf SN-000001 | sha256sum starts with 11770fff.
	want := "PROV_11770F"
	if got := ServiceName("SN-000001"); got != want {
		t.Errorf("ServiceName = %s, want %s", got, want)
	}
}

// TestInject1000 measures the throughput target: 1,000 P-256 units
// in under a minute. It takes tens of seconds, so it runs only when
// THINGLINE_TEST_SLOW is set.
func TestInject1000(t *testing.T) {
	if os.Getenv("THINGLINE_TEST_SLOW") == "" {
		t.Skip("set THINGLINE_TEST_SLOW=1 to run the 1,000-unit throughput test")
	}
	ca := devCA(t)
	out := t.TempDir()
	start := time.Now()
	units, err := Inject(context.Background(), InjectOptions{CADir: ca, Out: out, Count: 1000})
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	t.Logf("1000 units in %v", took)
	if len(units) != 1000 || took > time.Minute {
		t.Fatalf("%d units in %v; want 1000 in under a minute", len(units), took)
	}
}

func TestInjectRSA(t *testing.T) {
	needOpenSSL(t)
	ca := devCA(t)
	units, err := Inject(context.Background(), InjectOptions{CADir: ca, Out: t.TempDir(), KeyType: pki.KeyRSA, Days: 30})
	if err != nil {
		t.Fatal(err)
	}
	checkUnit(t, ca, units[0].Dir, units[0].SN, true, DefaultChainName)
	if out := openssl(t, "x509", "-noout", "-text", "-in", filepath.Join(units[0].Dir, DefaultCertName)); !strings.Contains(out, "rsaEncryption") || !strings.Contains(out, "Signature Algorithm: ecdsa-with-SHA256") {
		t.Errorf("not an rsa certificate signed with sha-256:\n%s", out)
	}
	if d := time.Until(units[0].NotAfter) - 30*24*time.Hour; d > time.Minute || d < -time.Minute {
		t.Errorf("not after %v, want 30 days from now", units[0].NotAfter)
	}
}

func TestInjectOptionErrors(t *testing.T) {
	ca := devCA(t)
	for _, opt := range []InjectOptions{
		{Out: t.TempDir()},
		{CADir: ca},
		{CADir: ca, Out: t.TempDir(), SN: "SN-1", Count: 2},
		{CADir: ca, Out: t.TempDir(), SNFormat: "SN-%s-%d"},
		{CADir: ca, Out: t.TempDir(), SNFormat: "SN-FIXED"},
		{CADir: ca, Out: t.TempDir(), SNFormat: "SN/%d"},
		{CADir: ca, Out: t.TempDir(), SN: "../x"},
		{CADir: ca, Out: t.TempDir(), CertName: "a/b"},
		{CADir: ca, Out: t.TempDir(), KeyName: "same", CertName: "same"},
		{CADir: t.TempDir(), Out: t.TempDir()},
	} {
		if _, err := Inject(context.Background(), opt); err == nil {
			t.Errorf("%+v accepted", opt)
		}
	}
}
