package cli

import (
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/thingline/thingline/factory"
	"github.com/thingline/thingline/pki"
)

func init() { registerFactory(factoryInjectCmd) }

// factoryLedgerPath resolves --ledger, falling back to OUT/ledger.db.
func factoryLedgerPath(ledger, out string) string {
	if ledger != "" {
		return ledger
	}
	if out == "" {
		out = "."
	}
	return filepath.Join(out, factory.LedgerFile)
}

// factoryProgress is where a batch draws its progress bar: stdout when it
// is a terminal, nowhere otherwise, so logs and pipes stay clean.
func factoryProgress(cmd *cobra.Command, quiet bool) io.Writer {
	if quiet {
		return nil
	}
	if f, ok := cmd.OutOrStdout().(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		return f
	}
	return nil
}

func factoryInjectCmd() *cobra.Command {
	var opt factory.InjectOptions
	var keyType string
	var quiet bool
	c := &cobra.Command{
		Use:   "inject --ca-dir D --out OUT [--count N | --sn SN]",
		Short: "Station 3: make units' identities (key, certificate, SPIFFS image) and record them",
		Long: `inject makes, for each unit, OUT/<SN>/ with the device certificate (CN = SN,
followed by the device CA), its private key (unless --csr), the CA chain the
device verifies the server with, prov.json, spiffs.bin holding those files and
manifest.json, and records the unit in the ledger (OUT/ledger.db by default).

Serial numbers come from the ledger's durable sequence (--sn-format, default
SN-%06d), or one explicit --sn. A serial number is never used twice, even by
concurrent inject processes or after a crash.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			kt, err := pki.ParseKeyType(keyType)
			if err != nil {
				return err
			}
			opt.KeyType = kt
			opt.Ledger = factoryLedgerPath(opt.Ledger, opt.Out)
			opt.Progress = factoryProgress(cmd, quiet)
			units, err := factory.Inject(cmd.Context(), opt)
			w := cmd.OutOrStdout()
			if opt.Progress == nil || len(units) <= 20 {
				for _, u := range units {
					fmt.Fprintf(w, "%s\t%s\tserial %s\tnot after %s\n", u.SN, u.Dir, u.CertSerial, u.NotAfter.Format("2006-01-02"))
				}
			}
			if err != nil {
				return err
			}
			if len(units) > 1 {
				fmt.Fprintf(w, "injected %d units: %s .. %s\n", len(units), units[0].SN, units[len(units)-1].SN)
			}
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&opt.CADir, "ca-dir", "", "directory holding device-ca.crt, device-ca.key and root-ca.crt")
	f.StringVar(&opt.Out, "out", "", "output directory: one directory per unit, and the ledger")
	f.IntVar(&opt.Count, "count", 0, "number of units to make from the sequence (default 1)")
	f.StringVar(&opt.SN, "sn", "", "make one unit with this serial number instead")
	f.StringVar(&opt.SNFormat, "sn-format", factory.DefaultSNFormat, "format of sequence serial numbers")
	f.StringVar(&opt.Partitions, "partitions", "", "partitions.csv; the image is sized to its spiffs partition (default: built-in 4 MiB layout, spiffs 0x290000/0x40000)")
	f.StringVar(&opt.CSR, "csr", "", "sign this device-made CSR (PEM or DER) instead of making a key; no key is written")
	f.StringVar(&opt.Ledger, "ledger", "", "ledger file (default OUT/ledger.db)")
	f.StringVar(&keyType, "key-type", string(pki.KeyEC), "device key type: ec (P-256) or rsa (2048)")
	f.IntVar(&opt.Days, "days", factory.DefaultDays, "certificate validity in days")
	f.StringVar(&opt.Operator, "operator", "", "operator recorded in the ledger")
	f.StringVar(&opt.Batch, "batch", "", "batch recorded in the ledger")
	f.StringVar(&opt.Board, "board", "", "traveller id of the assembled board to link to the serial number (one unit)")
	f.StringVar(&opt.CertName, "cert-name", factory.DefaultCertName, "certificate file name, in the unit directory and the image")
	f.StringVar(&opt.KeyName, "key-name", factory.DefaultKeyName, "private key file name")
	f.StringVar(&opt.ChainName, "chain-name", factory.DefaultChainName, "server CA chain file name (e.g. root_ca.crt)")
	f.IntVar(&opt.Workers, "workers", 0, "units made in parallel (default: one per CPU)")
	f.BoolVarP(&quiet, "quiet", "q", false, "no progress bar")
	c.MarkFlagRequired("ca-dir")
	c.MarkFlagRequired("out")
	return c
}
