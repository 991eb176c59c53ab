package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/thingline/thingline/factory"
	"github.com/thingline/thingline/flash"
	"github.com/thingline/thingline/pki"
)

func init() { registerFactory(factoryFlashCmd) }

// esptoolNames are looked up on PATH in this order: pip's esptool 4
// installs esptool.py, esptool 5 installs esptool.
var esptoolNames = []string{"esptool.py", "esptool"}

func factoryFlashCmd() *cobra.Command {
	var (
		port, chip, build, unit, merged, ledger, operator string
		baud, mergedSize                                  int
		dryRun                                            bool
	)
	c := &cobra.Command{
		Use:   "flash --port P --chip esp32 --build DIR [--unit OUT/SN]",
		Short: "Station 2: flash bootloader, partition table, app and the unit's SPIFFS image with esptool",
		Long: `flash plans what to write from an ESP-IDF build directory (bootloader at the
chip's own offset, partition-table.bin, the app from flasher_args.json or the
build's only top-level .bin, ota_data_initial.bin when the table has otadata)
and the unit directory OUT/<SN> (the images of its manifest.json, else its
spiffs.bin). Every offset but the bootloader's comes from the build's own
partition table; images larger than their partition, and overlapping images,
are refused.

It prints the plan and runs esptool.py (or esptool) from PATH. --dry-run
prints the esptool command instead; --merged FILE writes one image for
offset 0, padded with 0xFF, as esptool merge_bin does. After a real flash
of a unit, the result is recorded as station 2 in the ledger (--ledger,
default OUT/ledger.db when it exists).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg := flash.Config{Chip: chip, BuildDir: build, UnitDir: unit}
			var sn string
			if unit != "" {
				man, err := factory.ReadManifest(unit)
				switch {
				case err == nil:
					sn = man.SN
					cfg.UnitImages = []flash.UnitImage{}
					for _, im := range man.Images {
						cfg.UnitImages = append(cfg.UnitImages, flash.UnitImage{Partition: im.Partition,
							Offset: im.Offset, Size: im.Size, File: im.File, SHA256: im.SHA256})
					}
				case errors.Is(err, os.ErrNotExist):
					// A unit directory made by hand: its spiffs.bin goes to
					// the table's spiffs partition.
				default:
					return err
				}
				if sn == "" {
					sn = filepath.Base(filepath.Clean(unit))
				}
			}
			plan, err := flash.NewPlan(cfg)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprint(out, plan)

			if merged != "" {
				img, err := flash.Merge(plan, mergedSize)
				if err != nil {
					return err
				}
				// The merged image holds the SPIFFS partition, key included.
				if err := pki.WriteFileAtomic(merged, img, 0o600); err != nil {
					return fmt.Errorf("factory: flash: writing merged image: %w", err)
				}
				fmt.Fprintf(out, "merged image: %s (%#x bytes, write at 0x0)\n", merged, len(img))
			}

			argv := flash.EsptoolArgs(plan, port, chip, baud)
			tool, lookErr := findEsptool()
			if dryRun {
				if tool != "" {
					argv[0] = filepath.Base(tool)
				}
				fmt.Fprintln(out, flashShellJoin(argv))
				return nil
			}
			if merged != "" && port == "" {
				return nil // only the merged image was asked for
			}
			if lookErr != nil {
				return lookErr
			}
			if port == "" {
				return errors.New("factory: flash: --port is required to flash (or use --dry-run or --merged)")
			}
			runErr := runEsptool(cmd.Context(), tool, argv[1:], out, cmd.ErrOrStderr())
			if sn != "" {
				if err := recordFlash(cmd, ledger, unit, sn, operator, runErr); err != nil {
					return errors.Join(runErr, err)
				}
			}
			return runErr
		},
	}
	f := c.Flags()
	f.StringVar(&port, "port", "", "serial port of the unit (e.g. /dev/ttyUSB0)")
	f.StringVar(&chip, "chip", "esp32", "target chip: esp32, esp32s2, esp32s3, esp32c2, esp32c3, esp32c5, esp32c6, esp32h2, esp32p4")
	f.StringVar(&build, "build", "build", "ESP-IDF build directory")
	f.StringVar(&unit, "unit", "", "unit directory OUT/<SN>, as factory inject makes it")
	f.IntVar(&baud, "baud", 460800, "serial baud rate")
	f.BoolVar(&dryRun, "dry-run", false, "print the esptool command instead of running it")
	f.StringVar(&merged, "merged", "", "also write the plan as one merged image to FILE")
	f.IntVar(&mergedSize, "merged-size", 0, "pad the merged image with 0xFF to this many bytes (0: up to the last image)")
	f.StringVar(&ledger, "ledger", "", "ledger recording station 2 (default OUT/ledger.db beside the unit, when it exists)")
	f.StringVar(&operator, "operator", "", "operator recorded in the ledger")
	return c
}

func findEsptool() (string, error) {
	for _, name := range esptoolNames {
		if p, err := exec.LookPath(name); err == nil {
			return p, nil
		}
	}
	return "", errors.New("factory: flash: neither esptool.py nor esptool is on PATH (install esptool, or use --dry-run or --merged)")
}

func runEsptool(ctx context.Context, tool string, args []string, stdout, stderr io.Writer) error {
	c := exec.CommandContext(ctx, tool, args...)
	c.Stdout, c.Stderr = stdout, stderr
	if err := c.Run(); err != nil {
		return fmt.Errorf("factory: flash: %s: %w", filepath.Base(tool), err)
	}
	return nil
}

// recordFlash is station 2's ledger hook: pass or fail of the esptool run
// goes to the unit's traveller.
func recordFlash(cmd *cobra.Command, ledger, unit, sn, operator string, runErr error) error {
	path := ledger
	if path == "" {
		path = filepath.Join(filepath.Dir(filepath.Clean(unit)), factory.LedgerFile)
		if _, err := os.Stat(path); err != nil {
			return nil // no ledger beside the unit: nothing to record
		}
	}
	l, err := factory.OpenLedger(path)
	if err != nil {
		return err
	}
	defer l.Close()
	result, detail := factory.Pass, "flashed"
	if runErr != nil {
		result, detail = factory.Fail, runErr.Error()
	}
	// The record must land even when the run was interrupted.
	if err := l.RecordStation(context.WithoutCancel(cmd.Context()), sn, factory.StationFlashing, result, operator, detail); err != nil {
		return err
	}
	fmt.Fprintf(cmd.OutOrStdout(), "%s: station 2 %s recorded in %s\n", sn, result, path)
	return nil
}

// flashShellJoin quotes argv for a POSIX shell, so that a printed command can be
// pasted as it is.
func flashShellJoin(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		if a != "" && strings.IndexFunc(a, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./=:,+@%", r))
		}) < 0 {
			q[i] = a
			continue
		}
		q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return strings.Join(q, " ")
}
