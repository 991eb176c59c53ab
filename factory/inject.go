package factory

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/thingline/thingline/parttable"
	"github.com/thingline/thingline/pki"
)

// Defaults of station 3.
const (
	DefaultSNFormat   = "SN-%06d"
	DefaultDays       = 1095
	DefaultCertName   = "device.crt"
	DefaultKeyName    = "device.key"
	DefaultChainName  = "server_chain.pem"
	LedgerFile        = "ledger.db"
	ImageFile         = "spiffs.bin"
	ManifestFile      = "manifest.json"
	DefaultImageSize  = 0x40000
	PartitionTableOff = parttable.DefaultOffset
)

// DefaultPartitionsCSV is the table used when inject is given none: the
// ESP-IDF single-app layout with a 2.5 MiB app and a 256 KiB spiffs
// partition, fitting a 4 MiB flash.
const DefaultPartitionsCSV = `# Name,     Type, SubType, Offset,   Size,     Flags
nvs,        data, nvs,     0x9000,   0x6000,
phy_init,   data, phy,     0xf000,   0x1000,
factory,    app,  factory, 0x10000,  0x280000,
spiffs,     data, spiffs,  0x290000, 0x40000,
`

// InjectOptions are the settings of station 3.
type InjectOptions struct {
	CADir      string // holds device-ca.crt, device-ca.key and root-ca.crt
	Out        string // unit directories are made under it
	Count      int    // units to make from the sequence; 0 with SN == "" means 1
	SN         string // one explicit serial number instead of the sequence
	SNFormat   string // fmt format of sequence SNs; default DefaultSNFormat
	Partitions string // partitions.csv giving the spiffs partition; default DefaultPartitionsCSV
	CSR        string // a device-made CSR (PEM or DER): no private key is made or written
	Ledger     string // default Out/ledger.db
	KeyType    pki.KeyType
	Days       int // certificate validity; default 1095
	Operator   string
	Batch      string
	Board      string // traveller id of the assembled board, linked to the SN (one unit only)
	CertName   string // default device.crt
	KeyName    string // default device.key
	ChainName  string // default server_chain.pem
	Workers    int    // parallel units; default GOMAXPROCS
	Progress   io.Writer
}

// UnitResult is one unit made by Inject.
type UnitResult struct {
	SN          string
	Dir         string
	CertSerial  string // lower-case hex, no leading zeros
	SHA256      string // fingerprint of the certificate DER, lower-case hex
	NotAfter    time.Time
	ImageSHA256 string
}

// ManifestImage is one image to flash.
type ManifestImage struct {
	Partition string `json:"partition"`
	Offset    uint32 `json:"offset"`
	Size      uint32 `json:"size"` // partition size; the image is exactly this long
	File      string `json:"file"` // relative to the unit directory
	SHA256    string `json:"sha256"`
}

// ManifestPartition is one row of the partition table the unit was made
// for.
type ManifestPartition struct {
	Name    string `json:"name"`
	Type    uint8  `json:"type"`
	SubType uint8  `json:"subtype"`
	Offset  uint32 `json:"offset"`
	Size    uint32 `json:"size"`
}

// Manifest is manifest.json in a unit directory: what station 2's flash
// plan needs to write this unit's own images.
type Manifest struct {
	SN                   string              `json:"sn"`
	PartitionTableOffset uint32              `json:"partitionTableOffset"`
	Partitions           []ManifestPartition `json:"partitions"`
	Images               []ManifestImage     `json:"images"`
}

// ReadManifest reads manifest.json from a unit directory.
func ReadManifest(dir string) (*Manifest, error) {
	b, err := os.ReadFile(filepath.Join(dir, ManifestFile))
	if err != nil {
		return nil, fmt.Errorf("factory: reading manifest: %w", err)
	}
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("factory: parsing %s: %w", filepath.Join(dir, ManifestFile), err)
	}
	return &m, nil
}

func (o *InjectOptions) defaults() error {
	if o.CADir == "" {
		return errors.New("factory: inject: a ca directory is required")
	}
	if o.Out == "" {
		return errors.New("factory: inject: an output directory is required")
	}
	if o.SN != "" && o.Count > 1 {
		return errors.New("factory: inject: an explicit sn makes exactly one unit")
	}
	if o.Count < 0 {
		return fmt.Errorf("factory: inject: negative count %d", o.Count)
	}
	if o.Count == 0 {
		o.Count = 1
	}
	if o.CSR != "" && o.Count != 1 {
		return errors.New("factory: inject: a csr makes exactly one unit")
	}
	if o.Board != "" && o.Count != 1 {
		return errors.New("factory: inject: a board id links exactly one unit")
	}
	if o.SNFormat == "" {
		o.SNFormat = DefaultSNFormat
	}
	if s := fmt.Sprintf(o.SNFormat, 1); strings.Contains(s, "%!") || s == fmt.Sprintf(o.SNFormat, 2) {
		return fmt.Errorf("factory: inject: sn format %q must hold exactly one integer verb such as %%06d", o.SNFormat)
	}
	if err := validSN(fmt.Sprintf(o.SNFormat, 1)); err != nil {
		return fmt.Errorf("factory: inject: sn format %q: %w", o.SNFormat, err)
	}
	// The ledger keeps absolute unit paths: its readers (and the sweep of
	// a dead run) may run from another working directory.
	out, err := filepath.Abs(o.Out)
	if err != nil {
		return fmt.Errorf("factory: inject: %w", err)
	}
	o.Out = out
	if o.Ledger == "" {
		o.Ledger = filepath.Join(o.Out, LedgerFile)
	}
	if o.KeyType == "" {
		o.KeyType = pki.KeyEC
	}
	if o.Days == 0 {
		o.Days = DefaultDays
	}
	if o.Days < 0 {
		return fmt.Errorf("factory: inject: negative validity %d days", o.Days)
	}
	for _, n := range []*string{&o.CertName, &o.KeyName, &o.ChainName} {
		if *n != "" && (strings.ContainsAny(*n, `/\`) || *n == "." || *n == ".." || len(*n) > 30) {
			// SPIFFS keeps at most 31 bytes of name with the leading slash.
			return fmt.Errorf("factory: inject: invalid file name %q", *n)
		}
	}
	if o.CertName == "" {
		o.CertName = DefaultCertName
	}
	if o.KeyName == "" {
		o.KeyName = DefaultKeyName
	}
	if o.ChainName == "" {
		o.ChainName = DefaultChainName
	}
	names := map[string]bool{o.CertName: true, o.KeyName: true, o.ChainName: true, ProvFile: true, ImageFile: true, ManifestFile: true}
	if len(names) != 6 {
		return errors.New("factory: inject: file names must differ from each other and from prov.json, spiffs.bin and manifest.json")
	}
	if o.Workers <= 0 {
		o.Workers = runtime.GOMAXPROCS(0)
	}
	return nil
}

// loadPartitions returns the table and its spiffs partition.
func loadPartitions(path string) (*parttable.Table, *parttable.Partition, error) {
	var r io.Reader = strings.NewReader(DefaultPartitionsCSV)
	if path != "" {
		f, err := os.Open(path)
		if err != nil {
			return nil, nil, fmt.Errorf("factory: %w", err)
		}
		defer f.Close()
		r = f
	}
	t, err := parttable.ParseCSV(r, parttable.CSVOptions{})
	if err != nil {
		return nil, nil, fmt.Errorf("factory: partition table: %w", err)
	}
	p := t.FindSubtype(parttable.TypeData, parttable.SubtypeSPIFFS)
	if p == nil {
		return nil, nil, errors.New("factory: partition table has no spiffs partition")
	}
	return t, p, nil
}

// injector holds what every unit of one Inject call shares.
type injector struct {
	opt      InjectOptions
	ca       *pki.CA
	csrDER   []byte
	table    *parttable.Table
	spiffs   *parttable.Partition
	validity time.Duration
	chainPEM []byte
}

// Inject is station 3: it makes opt.Count units (or the one opt.SN), each
// with a fresh key (or the device's CSR), a certificate whose CN is the SN,
// the CA chain the device uses to verify the server, prov.json, a SPIFFS
// image holding those files, and a flash manifest, and records each unit
// in the ledger. See docs/factory.md for the crash guarantees.
//
// On error it returns the units finished so far with the error.
func Inject(ctx context.Context, opt InjectOptions) ([]UnitResult, error) {
	if err := opt.defaults(); err != nil {
		return nil, err
	}
	ca, err := pki.LoadCA(opt.CADir)
	if err != nil {
		return nil, fmt.Errorf("factory: inject: %w", err)
	}
	in := &injector{opt: opt, ca: ca, validity: time.Duration(opt.Days) * 24 * time.Hour}
	// The server certificate of the development PKI is signed by the
	// root, so the root alone is what the device needs to verify it.
	in.chainPEM = pki.EncodeCertPEM(ca.Root)
	if in.table, in.spiffs, err = loadPartitions(opt.Partitions); err != nil {
		return nil, err
	}
	if opt.CSR != "" {
		b, err := os.ReadFile(opt.CSR)
		if err != nil {
			return nil, fmt.Errorf("factory: inject: %w", err)
		}
		if in.csrDER, err = pki.CSRFromPEM(b); err != nil {
			return nil, fmt.Errorf("factory: inject: %s: %w", opt.CSR, err)
		}
		if _, err := x509.ParseCertificateRequest(in.csrDER); err != nil {
			return nil, fmt.Errorf("factory: inject: %s: %w", opt.CSR, err)
		}
	}
	// The image is built once up front with placeholder files, so a
	// partition too small for the credentials fails before any SN is used.
	if _, err := in.image(map[string][]byte{opt.CertName: make([]byte, 2048), opt.KeyName: make([]byte, 2048),
		opt.ChainName: in.chainPEM, ProvFile: make([]byte, 128)}); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(opt.Out, 0o755); err != nil {
		return nil, fmt.Errorf("factory: inject: %w", err)
	}
	l, err := OpenLedger(opt.Ledger)
	if err != nil {
		return nil, err
	}
	defer l.Close()
	r, err := l.startRun()
	if err != nil {
		return nil, err
	}
	results, err := in.run(ctx, l, r)
	if endErr := l.endRun(ctx, r); err == nil {
		err = endErr
	}
	sort.Slice(results, func(i, j int) bool { return results[i].SN < results[j].SN })
	return results, err
}

type made struct {
	res  UnitResult
	c    completion
	err  error
	sn   string
	path string
}

func (in *injector) run(ctx context.Context, l *Ledger, r *run) ([]UnitResult, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	opt := in.opt
	var bar *progressbar.ProgressBar
	if opt.Progress != nil && opt.Count > 1 {
		bar = progressbar.NewOptions(opt.Count, progressbar.OptionSetWriter(opt.Progress),
			progressbar.OptionSetDescription("injecting"), progressbar.OptionShowCount(),
			progressbar.OptionThrottle(100*time.Millisecond), progressbar.OptionSetPredictTime(true),
			progressbar.OptionOnCompletion(func() { fmt.Fprintln(opt.Progress) }))
	}

	jobs := make(chan reservation)
	done := make(chan made, opt.Workers)
	var reserveErr error
	go func() {
		defer close(jobs)
		if opt.SN != "" {
			if reserveErr = l.reserveSN(ctx, r, opt.SN, opt.Out, opt.Operator, opt.Batch); reserveErr == nil {
				select {
				case jobs <- reservation{sn: opt.SN}:
				case <-ctx.Done():
				}
			}
			return
		}
		// Small chunks bound what a crash can abandon, while amortizing
		// the reservation commit over several units.
		chunk := 2 * opt.Workers
		for left := opt.Count; left > 0; {
			if ctx.Err() != nil {
				return
			}
			rs, err := l.reserveNext(ctx, r, min(chunk, left), opt.SNFormat, opt.Out, opt.Operator, opt.Batch)
			if err != nil {
				reserveErr = err
				return
			}
			left -= len(rs)
			for _, x := range rs {
				select {
				case jobs <- x:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	var wg sync.WaitGroup
	for range opt.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for x := range jobs {
				done <- in.makeUnit(ctx, x.sn)
			}
		}()
	}
	go func() { wg.Wait(); close(done) }()

	var results []UnitResult
	var firstErr error
	fail := func(err error) {
		if firstErr == nil {
			firstErr = err
			cancel()
		}
	}
	for m := range done {
		batch := []made{m}
		// Group commit: whatever else is ready shares the fsync of OUT
		// and the ledger transaction.
	drain:
		for len(batch) < 64 {
			select {
			case m2, ok := <-done:
				if !ok {
					break drain
				}
				batch = append(batch, m2)
			default:
				break drain
			}
		}
		var cs []completion
		var ok []made
		for _, b := range batch {
			if b.err != nil {
				os.RemoveAll(stagingDir(filepath.Join(opt.Out, b.sn)))
				if err := l.abandon(context.WithoutCancel(ctx), b.sn, opt.Operator, opt.Batch, b.err.Error()); err != nil {
					fail(err)
				}
				fail(b.err)
				continue
			}
			cs = append(cs, b.c)
			ok = append(ok, b)
		}
		if len(cs) == 0 {
			continue
		}
		// The renames into OUT must be durable before the ledger says
		// injected.
		if err := syncDir(opt.Out); err != nil {
			fail(err)
			continue
		}
		// The completion is committed even when ctx is cancelled: the
		// files are already in place.
		if err := l.complete(context.WithoutCancel(ctx), cs); err != nil {
			fail(err)
			continue
		}
		for _, b := range ok {
			results = append(results, b.res)
		}
		if bar != nil {
			bar.Add(len(ok))
		}
	}
	if bar != nil && firstErr != nil {
		bar.Exit()
	}
	if reserveErr != nil && firstErr == nil {
		firstErr = reserveErr
	}
	if firstErr == nil && ctx.Err() != nil {
		firstErr = fmt.Errorf("factory: inject: %w", ctx.Err())
	}
	if firstErr == nil && len(results) != opt.Count {
		firstErr = fmt.Errorf("factory: inject: made %d of %d units", len(results), opt.Count)
	}
	return results, firstErr
}

// makeUnit makes one reserved unit's files and puts its directory in place.
func (in *injector) makeUnit(ctx context.Context, sn string) made {
	m := made{sn: sn}
	if err := ctx.Err(); err != nil {
		m.err = fmt.Errorf("factory: inject %s: %w", sn, err)
		return m
	}
	if err := in.makeUnitFiles(sn, &m); err != nil {
		m.err = fmt.Errorf("factory: inject %s: %w", sn, err)
	}
	return m
}

func (in *injector) makeUnitFiles(sn string, m *made) error {
	opt := in.opt
	var cert *x509.Certificate
	var keyPEM []byte
	if in.csrDER != nil {
		c, err := in.ca.SignCSR(in.csrDER, sn, in.validity)
		if err != nil {
			return err
		}
		cert = c
	} else {
		k, err := pki.GenerateKey(opt.KeyType)
		if err != nil {
			return err
		}
		if cert, err = in.ca.IssueDevice(k.Public(), sn, in.validity); err != nil {
			return err
		}
		if keyPEM, err = pki.EncodeKeyPEM(k); err != nil {
			return err
		}
	}
	prov := NewProvInfo(sn)
	// device.crt carries the device CA after the leaf, so the device
	// presents the whole chain and a server trusting only the root can
	// verify it.
	files := map[string][]byte{
		opt.CertName:  pki.EncodeCertPEM(cert, in.ca.Cert),
		opt.ChainName: in.chainPEM,
		ProvFile:      prov.Marshal(),
	}
	if keyPEM != nil {
		files[opt.KeyName] = keyPEM
	}
	img, err := in.image(files)
	if err != nil {
		return err
	}
	imgSum := sha256.Sum256(img)
	imgHash := hex.EncodeToString(imgSum[:])
	man := Manifest{SN: sn, PartitionTableOffset: PartitionTableOff}
	for _, p := range in.table.Partitions {
		man.Partitions = append(man.Partitions, ManifestPartition{Name: p.Name, Type: p.Type, SubType: p.SubType, Offset: p.Offset, Size: p.Size})
	}
	man.Images = []ManifestImage{{Partition: in.spiffs.Name, Offset: in.spiffs.Offset, Size: in.spiffs.Size, File: ImageFile, SHA256: imgHash}}
	manJSON, err := json.MarshalIndent(man, "", "  ")
	if err != nil {
		return err
	}
	files[ImageFile] = img
	files[ManifestFile] = append(manJSON, '\n')

	dir := filepath.Join(opt.Out, sn)
	// The key, the PoP (prov.json) and the image holding both are owner-only.
	if err := writeUnitDir(dir, files, map[string]bool{opt.KeyName: true, ProvFile: true, ImageFile: true}); err != nil {
		return err
	}
	m.path = dir
	m.res = UnitResult{SN: sn, Dir: dir, CertSerial: pki.SerialHex(cert), SHA256: pki.Fingerprint(cert.Raw), NotAfter: cert.NotAfter.UTC(), ImageSHA256: imgHash}
	detail := "key made on the line"
	if in.csrDER != nil {
		detail = "device csr signed; no key on the line"
	}
	m.c = completion{sn: sn, board: opt.Board, certSerial: m.res.CertSerial, sha256: m.res.SHA256, imageHash: imgHash,
		notAfter: m.res.NotAfter, keyOnDevice: in.csrDER != nil, operator: opt.Operator, batch: opt.Batch, detail: detail}
	return nil
}

// imageOrder is the order files go into the SPIFFS image: credentials
// first, as spiffsgen.py would add them from a directory listing sorted by
// the caller.
func (in *injector) imageOrder() []string {
	return []string{in.opt.CertName, in.opt.KeyName, in.opt.ChainName, ProvFile}
}

// writeUnitDir writes the files into a staging directory, syncing each,
// then renames the directory into place: dir either holds every file or
// does not exist. The caller syncs the parent before recording the unit.
func writeUnitDir(dir string, files map[string][]byte, secret map[string]bool) error {
	tmp := stagingDir(dir)
	if err := os.RemoveAll(tmp); err != nil {
		return err
	}
	if _, err := os.Lstat(dir); err == nil {
		return fmt.Errorf("%s already exists", dir)
	}
	// Owner-only: the unit's key, PoP and image are inside.
	if err := os.Mkdir(tmp, 0o700); err != nil {
		return err
	}
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		perm := os.FileMode(0o644)
		if secret[n] {
			perm = 0o600
		}
		if err := writeSync(filepath.Join(tmp, n), files[n], perm); err != nil {
			os.RemoveAll(tmp)
			return err
		}
	}
	if err := syncDir(tmp); err != nil {
		os.RemoveAll(tmp)
		return err
	}
	if err := os.Rename(tmp, dir); err != nil {
		os.RemoveAll(tmp)
		return err
	}
	return nil
}

func writeSync(path string, data []byte, perm os.FileMode) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, perm)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("factory: syncing %s: %w", dir, err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("factory: syncing %s: %w", dir, err)
	}
	return nil
}
