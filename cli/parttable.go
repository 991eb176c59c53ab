package cli

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/thingline/thingline/parttable"
)

func init() { register(newParttableCmd) }

func newParttableCmd() *cobra.Command {
	var (
		offset, flashSize, secure, primaryBoot, recoveryBoot string
		noMD5, noVerify, quiet                               bool
		extra                                                []string
	)
	c := &cobra.Command{
		Use:   "parttable INPUT [OUTPUT]",
		Short: "Convert ESP-IDF partition tables between CSV and binary, as gen_esp32part.py does",
		Long: `parttable reads partitions.csv and writes the binary partition table, byte for
byte as ESP-IDF v5.5's gen_esp32part.py with the same flags; given a binary
table (it starts with the bytes AA 50) it prints it back as CSV. OUTPUT
defaults to standard output; its directory is created when missing.

$VAR and ${VAR} in the CSV are replaced from the environment, as the tool
does. Errors in the table exit with status 2, like the tool.`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			opt := parttable.CSVOptions{NoVerify: noVerify, Secure: secure, ExtraSubtypes: extra, Getenv: os.LookupEnv}
			var err error
			if opt.TableOffset, err = parttableParseU32("--offset", offset); err != nil {
				return err
			}
			if opt.TableOffset == 0 {
				return errors.New("parttable: --offset 0 leaves no room for a bootloader")
			}
			if flashSize != "" {
				mb, err := strconv.Atoi(strings.TrimSuffix(flashSize, "MB"))
				if err != nil || !strings.HasSuffix(flashSize, "MB") || mb <= 0 || mb > 128 || mb&(mb-1) != 0 {
					return fmt.Errorf("parttable: --flash-size %q is not one of 1MB, 2MB, 4MB, ... 128MB", flashSize)
				}
				opt.FlashSize = uint32(mb) << 20
			}
			for _, b := range []struct {
				flag, val string
				dst       **uint32
			}{{"--primary-bootloader-offset", primaryBoot, &opt.PrimaryBootloaderOffset},
				{"--recovery-bootloader-offset", recoveryBoot, &opt.RecoveryBootloaderOffset}} {
				if b.val == "" {
					continue
				}
				n, err := parttableParseU32(b.flag, b.val)
				if err != nil {
					return err
				}
				*b.dst = &n
			}
			in, err := parttableReadInput(cmd, args[0])
			if err != nil {
				return err
			}
			var out []byte
			// The tool tells a binary by its first row's magic; an empty
			// binary table (all 0xFF) is known by its name instead.
			if bytes.HasPrefix(in, []byte{0xAA, 0x50}) || strings.EqualFold(filepath.Ext(args[0]), ".bin") {
				out, err = parttableToCSV(in, opt)
			} else {
				out, err = parttableToBinary(in, opt, noMD5)
			}
			if err != nil {
				// The tool exits 2 for a bad table; scripts may rely on it.
				return &exitError{code: 2, err: err}
			}
			dst := "-"
			if len(args) == 2 {
				dst = args[1]
			}
			return parttableWriteOutput(cmd, dst, out)
		},
	}
	f := c.Flags()
	f.StringVarP(&offset, "offset", "o", "0x8000", "flash offset of the partition table")
	f.StringVar(&flashSize, "flash-size", "", "refuse tables that do not fit this flash (1MB, 2MB, 4MB ... 128MB)")
	f.BoolVar(&noMD5, "disable-md5sum", false, "leave out the MD5 row (CONFIG_PARTITION_TABLE_MD5 off)")
	f.BoolVar(&noVerify, "no-verify", false, "skip the checks of the table's fields")
	f.BoolVarP(&quiet, "quiet", "q", false, "accepted for gen_esp32part.py compatibility; status is never printed")
	f.StringVar(&secure, "secure", "", "require app partitions fit for secure boot: v1 (the default when given bare) or v2")
	f.Lookup("secure").NoOptDefVal = "v1"
	f.StringVar(&primaryBoot, "primary-bootloader-offset", "", "offset of a primary bootloader row")
	f.StringVar(&recoveryBoot, "recovery-bootloader-offset", "", "offset of a recovery bootloader row")
	f.StringArrayVar(&extra, "extra-partition-subtypes", nil, `extra subtype "type,name,value" (repeat the flag for more)`)
	return c
}

func parttableToBinary(in []byte, opt parttable.CSVOptions, noMD5 bool) ([]byte, error) {
	t, err := parttable.ParseCSV(bytes.NewReader(in), opt)
	if err != nil {
		return nil, err
	}
	return t.Binary(parttable.BinaryOptions{DisableMD5: noMD5})
}

func parttableToCSV(in []byte, opt parttable.CSVOptions) ([]byte, error) {
	t, err := parttable.ParseBinary(in)
	if err != nil {
		return nil, err
	}
	if !opt.NoVerify {
		if err := t.Verify(opt); err != nil {
			return nil, err
		}
	} else if opt.FlashSize != 0 {
		if err := t.Verify(parttable.CSVOptions{FlashSize: opt.FlashSize, TableOffset: opt.TableOffset}); err != nil {
			return nil, err
		}
	}
	s, err := t.CSVWithSubtypes(opt.ExtraSubtypes)
	return []byte(s), err
}

// parttableParseU32 reads a number the way the tool's int(x, 0) does for offsets.
func parttableParseU32(flag, s string) (uint32, error) {
	n, err := strconv.ParseUint(s, 0, 32)
	if err != nil {
		return 0, fmt.Errorf("parttable: %s %q: not a 32-bit number", flag, s)
	}
	return uint32(n), nil
}

func parttableReadInput(cmd *cobra.Command, name string) ([]byte, error) {
	var b []byte
	var err error
	if name == "-" {
		b, err = io.ReadAll(cmd.InOrStdin())
	} else {
		b, err = os.ReadFile(name)
	}
	if err != nil {
		return nil, fmt.Errorf("parttable: reading input: %w", err)
	}
	return b, nil
}

func parttableWriteOutput(cmd *cobra.Command, name string, b []byte) error {
	if name == "-" {
		_, err := cmd.OutOrStdout().Write(b)
		return err
	}
	if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
		return fmt.Errorf("parttable: %w", err)
	}
	if err := os.WriteFile(name, b, 0o644); err != nil {
		return fmt.Errorf("parttable: writing output: %w", err)
	}
	return nil
}
