// Package flash makes station 2's flash plans: which image goes to which
// flash offset for one unit, taken from an ESP-IDF build directory, the
// build's own partition table and the unit directory made by the factory.
// A plan becomes an esptool command line or one merged image.
package flash

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/thingline/thingline/parttable"
)

// Image names used in plans, the same as the keys of flasher_args.json.
const (
	NameBootloader     = "bootloader"
	NamePartitionTable = "partition-table"
	NameOTAData        = "otadata"
	NameApp            = "app"
)

// Files of an ESP-IDF build directory and of a unit directory.
const (
	FlasherArgsFile    = "flasher_args.json"
	BootloaderFile     = "bootloader/bootloader.bin"
	PartitionTableFile = "partition_table/partition-table.bin"
	OTADataFile        = "ota_data_initial.bin"
	UnitSPIFFSFile     = "spiffs.bin"
)

// Image is one file to write at one flash offset.
type Image struct {
	Offset uint32
	Path   string
	Name   string // NameBootloader, NameApp, ... or the unit image's partition name
	SHA256 string // of the file, lower-case hex
	Size   int
	// Partition is the table's partition the image goes into, "" for the
	// bootloader and the table itself.
	Partition string
	// Limit is the room the image has at Offset.
	Limit uint32
}

// Plan is what to write, in flash order.
type Plan []Image

// bootloaderOffsets are esptool's BOOTLOADER_FLASH_OFFSET per chip: the
// ROM looks for the second-stage bootloader there.
var bootloaderOffsets = map[string]uint32{
	"esp32":   0x1000,
	"esp32s2": 0x1000,
	"esp32s3": 0x0,
	"esp32c2": 0x0,
	"esp32c3": 0x0,
	"esp32c6": 0x0,
	"esp32h2": 0x0,
	"esp32c5": 0x2000,
	"esp32p4": 0x2000,
	"esp32h4": 0x2000,
}

// BootloaderOffset returns where chip's ROM loads the bootloader from.
func BootloaderOffset(chip string) (uint32, error) {
	off, ok := bootloaderOffsets[strings.ToLower(chip)]
	if !ok {
		chips := make([]string, 0, len(bootloaderOffsets))
		for c := range bootloaderOffsets {
			chips = append(chips, c)
		}
		sort.Strings(chips)
		return 0, fmt.Errorf("flash: unknown chip %q (known: %s)", chip, strings.Join(chips, ", "))
	}
	return off, nil
}

// UnitImage is an image of the unit directory as the factory's manifest
// describes it: the partition it was made for, and its checksum.
type UnitImage struct {
	Partition string
	Offset    uint32 // of the partition the image was made for
	Size      uint32 // of that partition
	File      string // relative to the unit directory
	SHA256    string // lower-case hex; "" skips the check
}

// Config says where a plan's images come from.
type Config struct {
	Chip     string
	BuildDir string // an ESP-IDF build directory
	// UnitDir is the unit's directory (OUT/<SN>); "" plans the base
	// firmware only.
	UnitDir string
	// UnitImages are the unit directory's images. When nil, the unit
	// directory's spiffs.bin goes to the table's spiffs partition.
	UnitImages []UnitImage
	// TableOffset is where the partition table goes; 0 takes the offset
	// from flasher_args.json, else parttable.DefaultOffset.
	TableOffset uint32
}

// flasherEntry is one image entry of flasher_args.json.
type flasherEntry struct {
	Offset string `json:"offset"`
	File   string `json:"file"`
}

// flasherArgs is the part of ESP-IDF's flasher_args.json the plan reads.
// Besides these keys it has one object per image, keyed by image name
// ("app", "bootloader", "partition-table", "otadata", ...).
type flasherArgs struct {
	ExtraEsptoolArgs struct {
		Chip string `json:"chip"`
	} `json:"extra_esptool_args"`
	entries map[string]flasherEntry
}

func readFlasherArgs(buildDir string) (*flasherArgs, error) {
	path := filepath.Join(buildDir, FlasherArgsFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("flash: %w", err)
	}
	var fa flasherArgs
	if err := json.Unmarshal(b, &fa); err != nil {
		return nil, fmt.Errorf("flash: parsing %s: %w", path, err)
	}
	var all map[string]json.RawMessage
	if err := json.Unmarshal(b, &all); err != nil {
		return nil, fmt.Errorf("flash: parsing %s: %w", path, err)
	}
	fa.entries = map[string]flasherEntry{}
	for k, raw := range all {
		var e flasherEntry
		// Only image entries are objects with a file; others are skipped.
		if json.Unmarshal(raw, &e) == nil && e.File != "" {
			fa.entries[k] = e
		}
	}
	return &fa, nil
}

func (fa *flasherArgs) entry(name string) (flasherEntry, bool) {
	if fa == nil {
		return flasherEntry{}, false
	}
	e, ok := fa.entries[name]
	return e, ok
}

// offset parses an entry's offset, as CMake wrote it ("0x1000").
func (e flasherEntry) offset() (uint32, error) {
	n, err := strconv.ParseUint(e.Offset, 0, 32)
	if err != nil {
		return 0, fmt.Errorf("flash: %s: offset %q: %w", FlasherArgsFile, e.Offset, err)
	}
	return uint32(n), nil
}

// NewPlan builds and checks the plan for one unit: bootloader at the chip's
// offset, the partition table, otadata's initial image when the table has
// otadata and the build made one, the app at the first app partition, and
// the unit's images at their partitions — every offset but the
// bootloader's taken from the build's partition table.
func NewPlan(cfg Config) (Plan, error) {
	bootOff, err := BootloaderOffset(cfg.Chip)
	if err != nil {
		return nil, err
	}
	if cfg.BuildDir == "" {
		return nil, errors.New("flash: no build directory")
	}
	fa, err := readFlasherArgs(cfg.BuildDir)
	if err != nil {
		return nil, err
	}
	if fa != nil && fa.ExtraEsptoolArgs.Chip != "" && !strings.EqualFold(fa.ExtraEsptoolArgs.Chip, cfg.Chip) {
		return nil, fmt.Errorf("flash: the build is for %s, not %s", fa.ExtraEsptoolArgs.Chip, cfg.Chip)
	}
	buildFile := func(name, def string) (string, *flasherEntry) {
		if e, ok := fa.entry(name); ok {
			return filepath.Join(cfg.BuildDir, filepath.FromSlash(e.File)), &e
		}
		return filepath.Join(cfg.BuildDir, filepath.FromSlash(def)), nil
	}
	var plan Plan

	// The partition table first: every other offset but the bootloader's
	// comes from it.
	ptPath, ptEntry := buildFile(NamePartitionTable, PartitionTableFile)
	tableOff := cfg.TableOffset
	if tableOff == 0 && ptEntry != nil {
		if tableOff, err = ptEntry.offset(); err != nil {
			return nil, err
		}
	}
	if tableOff == 0 {
		tableOff = parttable.DefaultOffset
	}
	ptImg, ptBytes, err := loadImage(ptPath, NamePartitionTable, tableOff, "", parttable.SectorSize)
	if err != nil {
		return nil, err
	}
	table, err := parttable.ParseBinary(ptBytes)
	if err != nil {
		return nil, fmt.Errorf("flash: %s: %w", ptPath, err)
	}
	if err := table.Verify(parttable.CSVOptions{TableOffset: tableOff}); err != nil {
		return nil, fmt.Errorf("flash: %s: %w", ptPath, err)
	}

	blPath, blEntry := buildFile(NameBootloader, BootloaderFile)
	if blEntry != nil {
		if off, err := blEntry.offset(); err != nil {
			return nil, err
		} else if off != bootOff {
			return nil, fmt.Errorf("flash: the build puts the bootloader at %#x but %s loads it from %#x", off, cfg.Chip, bootOff)
		}
	}
	if bootOff >= tableOff {
		return nil, fmt.Errorf("flash: bootloader offset %#x is not below the partition table at %#x", bootOff, tableOff)
	}
	blImg, _, err := loadImage(blPath, NameBootloader, bootOff, "", tableOff-bootOff)
	if err != nil {
		return nil, err
	}
	plan = append(plan, blImg, ptImg)

	app := table.FirstApp()
	if app == nil {
		return nil, fmt.Errorf("flash: %s has no factory or ota_0 app partition", ptPath)
	}
	appPath, appEntry, err := appFile(cfg.BuildDir, fa)
	if err != nil {
		return nil, err
	}
	if appEntry != nil {
		if off, err := appEntry.offset(); err != nil {
			return nil, err
		} else if off != app.Offset {
			return nil, fmt.Errorf("flash: %s puts the app at %#x but the partition table's %s is at %#x", FlasherArgsFile, off, app.Name, app.Offset)
		}
	}
	appImg, _, err := loadPartitionImage(appPath, NameApp, app)
	if err != nil {
		return nil, err
	}
	plan = append(plan, appImg)

	if ota := table.FindSubtype(parttable.TypeData, parttable.SubtypeOTA); ota != nil {
		otaPath, _ := buildFile(NameOTAData, OTADataFile)
		if _, err := os.Stat(otaPath); err == nil {
			img, _, err := loadPartitionImage(otaPath, NameOTAData, ota)
			if err != nil {
				return nil, err
			}
			plan = append(plan, img)
		}
	}

	unitImgs, err := unitImages(cfg, table)
	if err != nil {
		return nil, err
	}
	plan = append(plan, unitImgs...)
	if err := plan.Check(); err != nil {
		return nil, err
	}
	return plan, nil
}

// appFile finds the application binary: flasher_args.json's app entry, else
// the build directory's only top-level .bin.
func appFile(buildDir string, fa *flasherArgs) (string, *flasherEntry, error) {
	if e, ok := fa.entry(NameApp); ok {
		return filepath.Join(buildDir, filepath.FromSlash(e.File)), &e, nil
	}
	bins, err := filepath.Glob(filepath.Join(buildDir, "*.bin"))
	if err != nil {
		return "", nil, fmt.Errorf("flash: %w", err)
	}
	var apps []string
	for _, b := range bins {
		// ota_data_initial.bin sits beside the app in OTA builds.
		if filepath.Base(b) != OTADataFile {
			apps = append(apps, b)
		}
	}
	switch len(apps) {
	case 1:
		return apps[0], nil, nil
	case 0:
		return "", nil, fmt.Errorf("flash: no %s and no application .bin in %s", FlasherArgsFile, buildDir)
	}
	return "", nil, fmt.Errorf("flash: no %s and several .bin files in %s (%s): cannot tell the application",
		FlasherArgsFile, buildDir, strings.Join(apps, ", "))
}

func unitImages(cfg Config, table *parttable.Table) ([]Image, error) {
	if cfg.UnitDir == "" {
		if len(cfg.UnitImages) > 0 {
			return nil, errors.New("flash: unit images without a unit directory")
		}
		return nil, nil
	}
	if cfg.UnitImages == nil {
		path := filepath.Join(cfg.UnitDir, UnitSPIFFSFile)
		if _, err := os.Stat(path); err != nil {
			return nil, fmt.Errorf("flash: unit directory: %w", err)
		}
		p := table.FindSubtype(parttable.TypeData, parttable.SubtypeSPIFFS)
		if p == nil {
			return nil, fmt.Errorf("flash: the unit has %s but the partition table has no spiffs partition", UnitSPIFFSFile)
		}
		img, _, err := loadPartitionImage(path, p.Name, p)
		if err != nil {
			return nil, err
		}
		return []Image{img}, nil
	}
	var imgs []Image
	for _, u := range cfg.UnitImages {
		p := table.Find(u.Partition)
		if p == nil {
			return nil, fmt.Errorf("flash: unit image %s is for partition %q, which the build's partition table lacks", u.File, u.Partition)
		}
		if p.Offset != u.Offset || p.Size != u.Size {
			return nil, fmt.Errorf("flash: unit image %s was made for %s at %#x size %#x, but the build's table has it at %#x size %#x",
				u.File, u.Partition, u.Offset, u.Size, p.Offset, p.Size)
		}
		if u.File == "" || filepath.IsAbs(u.File) || !filepath.IsLocal(filepath.FromSlash(u.File)) {
			return nil, fmt.Errorf("flash: unit image file %q is not inside the unit directory", u.File)
		}
		img, _, err := loadPartitionImage(filepath.Join(cfg.UnitDir, filepath.FromSlash(u.File)), p.Name, p)
		if err != nil {
			return nil, err
		}
		if u.SHA256 != "" && !strings.EqualFold(u.SHA256, img.SHA256) {
			return nil, fmt.Errorf("flash: %s has sha256 %s, the manifest says %s", img.Path, img.SHA256, u.SHA256)
		}
		imgs = append(imgs, img)
	}
	return imgs, nil
}

func loadPartitionImage(path, name string, p *parttable.Partition) (Image, []byte, error) {
	img, b, err := loadImage(path, name, p.Offset, p.Name, p.Size)
	return img, b, err
}

// loadImage reads a file and refuses it when it is empty or larger than
// limit, the room it has at offset.
func loadImage(path, name string, offset uint32, partition string, limit uint32) (Image, []byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Image{}, nil, fmt.Errorf("flash: %s: %w", name, err)
	}
	if len(b) == 0 {
		return Image{}, nil, fmt.Errorf("flash: %s: %s is empty", name, path)
	}
	if uint64(len(b)) > uint64(limit) {
		where := "its room"
		if partition != "" {
			where = "partition " + partition
		}
		return Image{}, nil, fmt.Errorf("flash: %s: %s is %#x bytes, larger than %s (%#x bytes at %#x)",
			name, path, len(b), where, limit, offset)
	}
	sum := sha256.Sum256(b)
	return Image{Offset: offset, Path: path, Name: name, SHA256: hex.EncodeToString(sum[:]), Size: len(b),
		Partition: partition, Limit: limit}, b, nil
}

// Check sorts the plan by offset and refuses images that overlap, or that
// are larger than their room.
func (p Plan) Check() error {
	sort.SliceStable(p, func(i, j int) bool { return p[i].Offset < p[j].Offset })
	for i, img := range p {
		if img.Limit != 0 && uint64(img.Size) > uint64(img.Limit) {
			return fmt.Errorf("flash: %s (%#x bytes) does not fit its %#x bytes at %#x", img.Name, img.Size, img.Limit, img.Offset)
		}
		if end := uint64(img.Offset) + uint64(img.Size); end > 1<<32 {
			return fmt.Errorf("flash: %s ends past 4 GiB", img.Name)
		} else if i+1 < len(p) && end > uint64(p[i+1].Offset) {
			return fmt.Errorf("flash: %s (%#x-%#x) overlaps %s at %#x", img.Name, img.Offset, end-1, p[i+1].Name, p[i+1].Offset)
		}
	}
	return nil
}

// End is the first offset after the last image.
func (p Plan) End() uint64 {
	var end uint64
	for _, img := range p {
		if e := uint64(img.Offset) + uint64(img.Size); e > end {
			end = e
		}
	}
	return end
}

// String prints the plan, one image a line.
func (p Plan) String() string {
	var b strings.Builder
	for _, img := range p {
		part := img.Partition
		if part == "" {
			part = "-"
		}
		sum := img.SHA256
		if len(sum) > 16 {
			sum = sum[:16]
		}
		fmt.Fprintf(&b, "%-10s %-16s %-12s %8d  %-16s  %s\n", fmt.Sprintf("%#x", img.Offset), img.Name, part, img.Size, sum, img.Path)
	}
	return b.String()
}

// EsptoolArgs returns the esptool command line writing the plan, starting
// with "esptool.py".
func EsptoolArgs(plan Plan, port, chip string, baud int) []string {
	args := []string{"esptool.py", "--chip", chip, "--port", port, "--baud", strconv.Itoa(baud), "write_flash"}
	for _, img := range plan {
		args = append(args, fmt.Sprintf("%#x", img.Offset), img.Path)
	}
	return args
}

// Merge returns the plan as one image to write at offset 0, like esptool's
// merge_bin in raw format: gaps are 0xFF, and the image is padded with 0xFF
// to size (0 means up to the end of the last image).
func Merge(plan Plan, size int) ([]byte, error) {
	p := append(Plan(nil), plan...)
	if err := p.Check(); err != nil {
		return nil, err
	}
	end := p.End()
	if size == 0 {
		size = int(end)
	}
	if size < 0 || uint64(size) < end {
		return nil, fmt.Errorf("flash: images end at %#x, past the merged size %#x", end, size)
	}
	out := bytes.Repeat([]byte{0xFF}, size)
	for _, img := range p {
		b, err := os.ReadFile(img.Path)
		if err != nil {
			return nil, fmt.Errorf("flash: merging: %w", err)
		}
		// The file must still be the one the plan checked.
		if sum := sha256.Sum256(b); len(b) != img.Size || hex.EncodeToString(sum[:]) != img.SHA256 {
			return nil, fmt.Errorf("flash: merging: %s changed since the plan was made", img.Path)
		}
		copy(out[img.Offset:], b)
	}
	return out, nil
}
