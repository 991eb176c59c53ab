package cli

import (
	"errors"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/thingline/thingline/factory"
)

func init() {
	registerFactory(factoryUnitsCmd)
	registerFactory(factoryUnitCmd)
	registerFactory(factoryReportCmd)
	registerFactory(factoryRecordCmd)
	registerFactory(factoryAssembleCmd)
}

// factoryLedgerFlags adds --ledger and --out and returns a function opening
// the ledger they name. Reading commands refuse a ledger that does not
// exist rather than create an empty one in the wrong directory.
func factoryLedgerFlags(c *cobra.Command) func() (*factory.Ledger, error) {
	var ledger, out string
	c.Flags().StringVar(&ledger, "ledger", "", "ledger file (default OUT/ledger.db)")
	c.Flags().StringVar(&out, "out", ".", "output directory of inject, holding ledger.db")
	return func() (*factory.Ledger, error) {
		p := factoryLedgerPath(ledger, out)
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("factory: ledger: %w", err)
		}
		return factory.OpenLedger(p)
	}
}

func factoryDate(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Format("2006-01-02")
}

func factoryUnitsCmd() *cobra.Command {
	var state string
	c := &cobra.Command{
		Use:   "units",
		Short: "List the units of the ledger: SN, state, last station, certificate serial, not-after",
		Args:  cobra.NoArgs,
	}
	open := factoryLedgerFlags(c)
	c.Flags().StringVar(&state, "state", "", "only units in this state (reserved, injected, abandoned)")
	c.RunE = func(cmd *cobra.Command, args []string) error {
		l, err := open()
		if err != nil {
			return err
		}
		defer l.Close()
		us, err := l.Units(cmd.Context(), state)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SN\tSTATE\tLAST STATION\tCERT SERIAL\tNOT AFTER\tBATCH")
		for _, u := range us {
			last := "-"
			if u.LastStation != 0 {
				last = fmt.Sprintf("%d %s %s", int(u.LastStation), u.LastStation, u.LastResult)
			}
			serial := u.CertSerial
			if serial == "" {
				serial = "-"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", u.SN, u.State, last, serial, factoryDate(u.NotAfter), u.Batch)
		}
		return tw.Flush()
	}
	return c
}

func factoryUnitCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "unit SN|BOARD",
		Short: "Show a unit's traveller: its record and every station event",
		Args:  cobra.ExactArgs(1),
	}
	open := factoryLedgerFlags(c)
	c.RunE = func(cmd *cobra.Command, args []string) error {
		l, err := open()
		if err != nil {
			return err
		}
		defer l.Close()
		evs, err := l.Traveller(cmd.Context(), args[0])
		if err != nil {
			return err
		}
		w := cmd.OutOrStdout()
		u, err := l.Unit(cmd.Context(), args[0])
		switch {
		case err == nil:
			fmt.Fprintf(w, "SN:           %s\nState:        %s\n", u.SN, u.State)
			if u.Board != "" {
				fmt.Fprintf(w, "Board:        %s\n", u.Board)
			}
			fmt.Fprintf(w, "Directory:    %s\nBatch:        %s\nOperator:     %s\nReserved:     %s\n", u.Dir, u.Batch, u.Operator, u.ReservedAt.Format(time.RFC3339))
			if u.State == factory.StateInjected {
				fmt.Fprintf(w, "Injected:     %s\nCert serial:  %s\nSHA-256:      %s\nNot after:    %s\nImage SHA-256: %s\nKey on device only: %v\n",
					u.InjectedAt.Format(time.RFC3339), u.CertSerial, u.SHA256, u.NotAfter.Format(time.RFC3339), u.ImageSHA256, u.KeyOnDevice)
			}
		case errors.Is(err, factory.ErrUnknownUnit):
			fmt.Fprintf(w, "Board:        %s (no serial number yet)\n", args[0])
		default:
			return err
		}
		fmt.Fprintln(w)
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "TIME\tSTATION\tRESULT\tOPERATOR\tBATCH\tDETAIL")
		for _, e := range evs {
			fmt.Fprintf(tw, "%s\t%d %s\t%s\t%s\t%s\t%s\n", e.Time.Format(time.RFC3339), int(e.Station), e.Station, e.Result, e.Operator, e.Batch, e.Detail)
		}
		return tw.Flush()
	}
	return c
}

func factoryReportCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "report",
		Short: "Yield and throughput per station",
		Long: `report counts, per station, the units that came in, went out (latest result
pass) and failed, the yield, the first-pass yield, and the units per hour over
the station's active time (pauses longer than 10 minutes left out).`,
		Args: cobra.NoArgs,
	}
	open := factoryLedgerFlags(c)
	c.RunE = func(cmd *cobra.Command, args []string) error {
		l, err := open()
		if err != nil {
			return err
		}
		defer l.Close()
		st, err := l.Report(cmd.Context())
		if err != nil {
			return err
		}
		return factory.WriteReport(cmd.OutOrStdout(), st)
	}
	return c
}

func factoryRecordCmd() *cobra.Command {
	var sn, board, station, result, operator, batch, detail string
	c := &cobra.Command{
		Use:   "record --station N (--sn SN | --board ID) --result pass|fail",
		Short: "Record a station event in a unit's traveller",
		Long: `record appends one event to a traveller. Use --sn for a unit that has its
serial number, --board for a board that does not yet (stations 1 and 2 come
before identity injection; inject --board links the board to its SN).`,
		Args: cobra.NoArgs,
	}
	open := factoryLedgerFlags(c)
	f := c.Flags()
	f.StringVar(&station, "station", "", "station: 1-5 or assembly, flashing, injection, test, label")
	f.StringVar(&sn, "sn", "", "serial number of the unit")
	f.StringVar(&board, "board", "", "board id, for a unit without a serial number yet")
	f.StringVar(&result, "result", "pass", "pass or fail")
	f.StringVar(&operator, "operator", "", "operator")
	f.StringVar(&batch, "batch", "", "batch (for --board; an SN's event takes the unit's batch)")
	f.StringVar(&detail, "detail", "", "free text: measurements, failure reason")
	c.MarkFlagRequired("station")
	c.RunE = func(cmd *cobra.Command, args []string) error {
		st, err := factory.ParseStation(station)
		if err != nil {
			return err
		}
		return factoryRecord(cmd, open, st, sn, board, result, operator, batch, detail)
	}
	return c
}

func factoryRecord(cmd *cobra.Command, open func() (*factory.Ledger, error), st factory.Station, sn, board, result, operator, batch, detail string) error {
	res, err := factory.ParseResult(result)
	if err != nil {
		return err
	}
	if (sn == "") == (board == "") {
		return errors.New("factory: record: give exactly one of --sn and --board")
	}
	l, err := open()
	if err != nil {
		return err
	}
	defer l.Close()
	if sn != "" {
		err = l.RecordStation(cmd.Context(), sn, st, res, operator, detail)
	} else {
		err = l.RecordBoard(cmd.Context(), board, st, res, operator, batch, detail)
	}
	if err != nil {
		return err
	}
	who := sn
	if who == "" {
		who = "board " + board
	}
	fmt.Fprintf(cmd.OutOrStdout(), "%s: station %d %s %s\n", who, int(st), st, res)
	return nil
}

func factoryAssembleCmd() *cobra.Command {
	var sn, board, result, operator, batch, detail string
	c := &cobra.Command{
		Use:   "assemble (--board ID | --sn SN) [--result pass|fail]",
		Short: "Station 1: record a board's assembly",
		Long: `assemble records station 1. Assembly comes before the unit has a serial
number, so the board is named by its own traveller id (a sticker, the ESP32's
MAC...); inject --board ID later links that traveller to the SN.`,
		Args: cobra.NoArgs,
	}
	var ledger, out string
	c.Flags().StringVar(&ledger, "ledger", "", "ledger file (default OUT/ledger.db)")
	c.Flags().StringVar(&out, "out", ".", "output directory of inject, holding ledger.db")
	f := c.Flags()
	f.StringVar(&board, "board", "", "board traveller id")
	f.StringVar(&sn, "sn", "", "serial number, when the unit already has one")
	f.StringVar(&result, "result", "pass", "pass or fail")
	f.StringVar(&operator, "operator", "", "operator")
	f.StringVar(&batch, "batch", "", "batch")
	f.StringVar(&detail, "detail", "", "free text")
	c.RunE = func(cmd *cobra.Command, args []string) error {
		// Assembly is the first station: it may create the ledger.
		open := func() (*factory.Ledger, error) { return factory.OpenLedger(factoryLedgerPath(ledger, out)) }
		return factoryRecord(cmd, open, factory.StationAssembly, sn, board, result, operator, batch, detail)
	}
	return c
}
