package cli

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"github.com/thingline/thingline/parttable"
	"github.com/thingline/thingline/spiffs"
)

func init() { register(newSpiffsCmd) }

func newSpiffsCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "spiffs",
		Short: "Build SPIFFS images (as ESP-IDF's spiffsgen.py does) and read them",
	}
	c.AddCommand(newSpiffsBuildCmd(), newSpiffsLsCmd(), newSpiffsCatCmd())
	return c
}

// spiffsGeometryFlags registers the flags that describe an image's layout,
// with spiffsgen.py's names and defaults, into cfg.
func spiffsGeometryFlags(c *cobra.Command, cfg *spiffs.Config) {
	f := c.Flags()
	f.IntVar(&cfg.PageSize, "page-size", cfg.PageSize, "logical page size (CONFIG_SPIFFS_PAGE_SIZE)")
	f.IntVar(&cfg.BlockSize, "block-size", cfg.BlockSize, "logical block size, the flash sector size")
	f.IntVar(&cfg.ObjNameLen, "obj-name-len", cfg.ObjNameLen, "maximum path length including NUL (CONFIG_SPIFFS_OBJ_NAME_LEN)")
	f.IntVar(&cfg.MetaLen, "meta-len", cfg.MetaLen, "file metadata length (CONFIG_SPIFFS_META_LENGTH)")
	f.BoolVar(&cfg.BigEndian, "big-endian", cfg.BigEndian, "the target is big-endian")
	f.BoolVar(&cfg.AlignedObjIxTables, "aligned-obj-ix-tables", cfg.AlignedObjIxTables, "SPIFFS_ALIGNED_OBJECT_INDEX_TABLES is set")
}

func newSpiffsBuildCmd() *cobra.Command {
	cfg := spiffs.DefaultConfig(0)
	var noMagic, noMagicLen bool
	var partitions, partName string
	c := &cobra.Command{
		Use:   "build [SIZE|-] DIR OUT.bin",
		Short: "Build a SPIFFS image from a directory, byte for byte as spiffsgen.py",
		Long: `Build a SPIFFS image of SIZE bytes (decimal, 0x hex, or with a K or M suffix)
from the files under DIR and write it to OUT.bin. The result is the same as
ESP-IDF v5.5.5's spiffsgen.py with the same flags, given that spiffsgen.py
lists each directory in sorted order (it uses the file system's order).

With --partitions, SIZE comes from the table's spiffs data partition (or the
one named by --partition); SIZE may then be omitted or given as -, and if it
is given it must agree with the table.

OUT.bin is replaced only when the whole image has been built and written.`,
		Args: cobra.RangeArgs(2, 3),
		RunE: func(cmd *cobra.Command, args []string) error {
			if cmd.Flags().Changed("no-magic") {
				cfg.UseMagic = !noMagic
			}
			if cmd.Flags().Changed("no-magic-len") {
				cfg.UseMagicLen = !noMagicLen
			}
			sizeArg := "-"
			if len(args) == 3 {
				sizeArg, args = args[0], args[1:]
			}
			size, err := spiffsImageSize(sizeArg, partitions, partName)
			if err != nil {
				return err
			}
			cfg.ImageSize = size
			img, err := spiffs.BuildDir(cfg, args[0])
			if err != nil {
				return err
			}
			return spiffsWriteFile(args[1], img)
		},
	}
	spiffsGeometryFlags(c, &cfg)
	f := c.Flags()
	f.BoolVar(&cfg.UseMagic, "use-magic", cfg.UseMagic, "write the SPIFFS magic (CONFIG_SPIFFS_USE_MAGIC)")
	f.BoolVar(&noMagic, "no-magic", false, "do not write the magic")
	f.BoolVar(&cfg.UseMagicLen, "use-magic-len", cfg.UseMagicLen, "fold the block position into the magic (CONFIG_SPIFFS_USE_MAGIC_LENGTH)")
	f.BoolVar(&noMagicLen, "no-magic-len", false, "do not fold the block position into the magic")
	f.BoolVar(&cfg.FollowSymlinks, "follow-symlinks", cfg.FollowSymlinks, "descend into symbolic links to directories")
	f.StringVar(&partitions, "partitions", "", "take SIZE from this partitions.csv")
	f.StringVar(&partName, "partition", "", "with --partitions, the partition's name (default: the first spiffs data partition)")
	c.MarkFlagsMutuallyExclusive("use-magic", "no-magic")
	c.MarkFlagsMutuallyExclusive("use-magic-len", "no-magic-len")
	return c
}

// spiffsImageSize settles the image size from the SIZE argument and the
// partition table, when there is one.
func spiffsImageSize(arg, csvPath, name string) (int, error) {
	given := arg != "-"
	var size int64
	if given {
		n, err := spiffsParseSize(arg)
		if err != nil {
			return 0, err
		}
		size = n
	}
	if csvPath == "" {
		if name != "" {
			return 0, errors.New("spiffs: --partition needs --partitions")
		}
		if !given {
			return 0, errors.New("spiffs: give SIZE or --partitions")
		}
		return int(size), nil
	}
	p, err := spiffsPartition(csvPath, name)
	if err != nil {
		return 0, err
	}
	if given && size != int64(p.Size) {
		return 0, fmt.Errorf("spiffs: SIZE %d disagrees with partition %s of %s (%d bytes)", size, p.Name, csvPath, p.Size)
	}
	return int(p.Size), nil
}

func spiffsPartition(csvPath, name string) (*parttable.Partition, error) {
	f, err := os.Open(csvPath)
	if err != nil {
		return nil, fmt.Errorf("spiffs: %w", err)
	}
	defer f.Close()
	t, err := parttable.ParseCSV(f, parttable.CSVOptions{})
	if err != nil {
		return nil, fmt.Errorf("spiffs: reading %s: %w", csvPath, err)
	}
	var p *parttable.Partition
	if name == "" {
		p = t.FindSubtype(parttable.TypeData, parttable.SubtypeSPIFFS)
		if p == nil {
			return nil, fmt.Errorf("spiffs: %s has no spiffs data partition", csvPath)
		}
	} else {
		p = t.Find(name)
		if p == nil {
			return nil, fmt.Errorf("spiffs: %s has no partition %q", csvPath, name)
		}
		if p.Type != parttable.TypeData || p.SubType != parttable.SubtypeSPIFFS {
			return nil, fmt.Errorf("spiffs: partition %q of %s is not a spiffs data partition", name, csvPath)
		}
	}
	return p, nil
}

// spiffsParseSize reads a byte count: decimal, 0x hex, and an optional K or M
// suffix (binary multiples), as partition tables write sizes.
func spiffsParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	mult := int64(1)
	switch {
	case strings.HasSuffix(t, "K") || strings.HasSuffix(t, "k"):
		mult, t = 1<<10, t[:len(t)-1]
	case strings.HasSuffix(t, "M") || strings.HasSuffix(t, "m"):
		mult, t = 1<<20, t[:len(t)-1]
	}
	var n uint64
	var err error
	if strings.HasPrefix(t, "0x") || strings.HasPrefix(t, "0X") {
		n, err = strconv.ParseUint(t[2:], 16, 32)
	} else {
		n, err = strconv.ParseUint(t, 10, 32)
	}
	if err != nil || t == "" {
		return 0, fmt.Errorf("spiffs: size %q is not a number like 262144, 0x40000, 256K or 1M", s)
	}
	if int64(n)*mult > 1<<31 {
		return 0, fmt.Errorf("spiffs: size %q is too large", s)
	}
	return int64(n) * mult, nil
}

// spiffsWriteFile replaces path with data only once data is safely on disk,
// so that a failure never leaves a partial image behind to be flashed.
func spiffsWriteFile(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if _, err := tmp.Write(data); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	// An image may hold a device key: owner-only.
	if err := tmp.Chmod(0o600); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	ok = true
	return nil
}

func openSpiffsImage(path string, cfg spiffs.Config) (*spiffs.FS, error) {
	img, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("spiffs: %w", err)
	}
	fsys, err := spiffs.Open(img, cfg)
	if err != nil {
		return nil, fmt.Errorf("spiffs: opening %s: %w", path, err)
	}
	return fsys, nil
}

func newSpiffsLsCmd() *cobra.Command {
	cfg := spiffs.DefaultConfig(0)
	c := &cobra.Command{
		Use:   "ls IMAGE",
		Short: "List the files in a SPIFFS image: path and size per line",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			fsys, err := openSpiffsImage(args[0], cfg)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			for _, e := range fsys.List() {
				if _, err := fmt.Fprintf(w, "%s\t%d\n", e.Path, e.Size); err != nil {
					return err
				}
			}
			return nil
		},
	}
	spiffsGeometryFlags(c, &cfg)
	return c
}

func newSpiffsCatCmd() *cobra.Command {
	cfg := spiffs.DefaultConfig(0)
	c := &cobra.Command{
		Use:   "cat IMAGE PATH",
		Short: "Write a file of a SPIFFS image to standard output",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			fsys, err := openSpiffsImage(args[0], cfg)
			if err != nil {
				return err
			}
			name := args[1]
			if !strings.HasPrefix(name, "/") { // SPIFFS names carry the slash; forgive its absence
				name = "/" + name
			}
			data, err := fsys.ReadFile(name)
			if err != nil {
				return err
			}
			_, err = cmd.OutOrStdout().Write(data)
			return err
		},
	}
	spiffsGeometryFlags(c, &cfg)
	return c
}
