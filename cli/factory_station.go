package cli

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/thingline/thingline/factory"
)

func init() {
	registerFactory(factoryTestCmd)
	registerFactory(factoryLabelCmd)
	registerFactory(factoryPushCmd)
}

func factoryTestCmd() *cobra.Command {
	var server, token, caFile string
	var opt factory.TestOptions
	c := &cobra.Command{
		Use:   "test --server URL --token T --sn SN",
		Short: "Station 4: wait for the unit's first telemetry on the server and record pass or fail",
		Long: `test polls GET URL/api/v1/devices/{sn}/telemetry/latest until the unit's
first telemetry arrives (pass) or --timeout passes (fail), records the result
in the ledger and exits non-zero on fail.`,
		Args: cobra.NoArgs,
	}
	open := factoryLedgerFlags(c)
	c.RunE = func(cmd *cobra.Command, args []string) error {
		cl, err := factory.NewClient(server, factoryToken(token), caFile)
		if err != nil {
			return err
		}
		l, err := open()
		if err != nil {
			return err
		}
		defer l.Close()
		err = cl.TestUnit(cmd.Context(), l, opt)
		if errors.Is(err, factory.ErrTestFailed) {
			fmt.Fprintf(cmd.OutOrStdout(), "%s: FAIL\n", opt.SN)
			return &exitError{code: 1, err: err}
		}
		if err != nil {
			return err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "%s: PASS\n", opt.SN)
		return nil
	}
	f := c.Flags()
	f.StringVar(&server, "server", "", "thingline server URL")
	f.StringVar(&token, "token", "", "API token (default $THINGLINE_TOKEN)")
	f.StringVar(&caFile, "ca-file", "", "PEM CA bundle verifying an https server (e.g. the dev PKI's root-ca.crt)")
	f.StringVar(&opt.SN, "sn", "", "serial number of the unit under test")
	f.DurationVar(&opt.Timeout, "timeout", 60*time.Second, "how long to wait for the first telemetry")
	f.DurationVar(&opt.Interval, "interval", time.Second, "time between polls")
	f.StringVar(&opt.Operator, "operator", "", "operator recorded in the ledger")
	c.MarkFlagRequired("server")
	c.MarkFlagRequired("sn")
	return c
}

func factoryLabelCmd() *cobra.Command {
	var unit, out, ledger, sheet, batch, operator string
	c := &cobra.Command{
		Use:   "label (--unit OUT/SN | --out OUT --sheet sheet.pdf)",
		Short: "Station 5: write a unit's label (PNG, PDF, ZPL) or a batch sheet PDF",
		Long: `label --unit OUT/<SN> writes label.png, label.pdf and label.zpl into the unit
directory: the SN in text and the QR code Espressif's provisioning apps scan.
label --sheet FILE writes an A4 sheet with the labels of every injected unit
(of --batch, if given). Both record station 5 in the ledger.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if (unit == "") == (sheet == "") {
				return errors.New("factory: label: give exactly one of --unit and --sheet")
			}
			if unit != "" {
				lp := ledger
				if lp == "" {
					lp = filepath.Join(filepath.Dir(filepath.Clean(unit)), factory.LedgerFile)
				}
				if _, err := os.Stat(lp); err != nil {
					return fmt.Errorf("factory: ledger: %w", err)
				}
				l, err := factory.OpenLedger(lp)
				if err != nil {
					return err
				}
				defer l.Close()
				sn, err := factory.LabelUnit(cmd.Context(), l, unit, operator)
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s: %s, %s, %s\n", sn, filepath.Join(unit, factory.LabelPNG), filepath.Join(unit, factory.LabelPDF), filepath.Join(unit, factory.LabelZPL))
				return nil
			}
			lp := factoryLedgerPath(ledger, out)
			if _, err := os.Stat(lp); err != nil {
				return fmt.Errorf("factory: ledger: %w", err)
			}
			l, err := factory.OpenLedger(lp)
			if err != nil {
				return err
			}
			defer l.Close()
			sns, err := factory.LabelSheet(cmd.Context(), l, sheet, batch, operator)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: %d labels\n", sheet, len(sns))
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&unit, "unit", "", "unit directory OUT/<SN>")
	f.StringVar(&out, "out", ".", "output directory of inject, holding ledger.db (for --sheet)")
	f.StringVar(&sheet, "sheet", "", "write a batch sheet PDF here")
	f.StringVar(&batch, "batch", "", "only this batch on the sheet")
	f.StringVar(&ledger, "ledger", "", "ledger file (default: ledger.db beside the unit directories)")
	f.StringVar(&operator, "operator", "", "operator recorded in the ledger")
	return c
}

func factoryPushCmd() *cobra.Command {
	var server, token, caFile string
	c := &cobra.Command{
		Use:   "push --server URL --token T",
		Short: "Send the injected units and their station events to a thingline server",
		Args:  cobra.NoArgs,
	}
	open := factoryLedgerFlags(c)
	f := c.Flags()
	f.StringVar(&server, "server", "", "thingline server URL")
	f.StringVar(&token, "token", "", "API token (default $THINGLINE_TOKEN)")
	f.StringVar(&caFile, "ca-file", "", "PEM CA bundle verifying an https server")
	c.MarkFlagRequired("server")
	c.RunE = func(cmd *cobra.Command, args []string) error {
		cl, err := factory.NewClient(server, factoryToken(token), caFile)
		if err != nil {
			return err
		}
		l, err := open()
		if err != nil {
			return err
		}
		defer l.Close()
		us, err := l.StoreUnits(cmd.Context())
		if err != nil {
			return err
		}
		if len(us) == 0 {
			return errors.New("factory: push: no injected units in the ledger")
		}
		n, err := cl.Push(cmd.Context(), us)
		fmt.Fprintf(cmd.OutOrStdout(), "pushed %d of %d units\n", n, len(us))
		if err != nil {
			return err
		}
		evs, err := l.Events(cmd.Context())
		if err != nil || len(evs) == 0 {
			return err
		}
		sent, added, err := cl.PushEvents(cmd.Context(), evs)
		fmt.Fprintf(cmd.OutOrStdout(), "pushed %d station events, %d new to the server\n", sent, added)
		return err
	}
	return c
}

// factoryToken falls back to $THINGLINE_TOKEN, read at run time so that
// --help never prints the secret as a flag default.
func factoryToken(flag string) string {
	if flag != "" {
		return flag
	}
	return os.Getenv("THINGLINE_TOKEN")
}
