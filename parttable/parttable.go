// Package parttable reads and writes ESP-IDF partition tables: the CSV
// format of partitions.csv and the binary image flashed at the partition
// table offset (0x8000 by default), byte for byte as ESP-IDF v5.5's
// gen_esp32part.py writes them.
package parttable

import (
	"bytes"
	"crypto/md5"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"unicode/utf8"
)

// Partition types, as numbered by ESP-IDF.
const (
	TypeApp            uint8 = 0x00
	TypeData           uint8 = 0x01
	TypeBootloader     uint8 = 0x02
	TypePartitionTable uint8 = 0x03
)

// Subtypes of TypeApp. OTA slots run from SubtypeOTA0 to SubtypeOTA0+15.
const (
	SubtypeFactory uint8 = 0x00
	SubtypeOTA0    uint8 = 0x10
	SubtypeTest    uint8 = 0x20
	SubtypeTEE0    uint8 = 0x30
	SubtypeTEE1    uint8 = 0x31
)

// Subtypes of TypeData.
const (
	SubtypeOTA       uint8 = 0x00
	SubtypePHY       uint8 = 0x01
	SubtypeNVS       uint8 = 0x02
	SubtypeCoredump  uint8 = 0x03
	SubtypeNVSKeys   uint8 = 0x04
	SubtypeEfuse     uint8 = 0x05
	SubtypeUndefined uint8 = 0x06
	SubtypeESPHTTPD  uint8 = 0x80
	SubtypeFAT       uint8 = 0x81
	SubtypeSPIFFS    uint8 = 0x82
	SubtypeLittleFS  uint8 = 0x83
	SubtypeTEEOTA    uint8 = 0x90
)

// Subtypes of TypeBootloader and TypePartitionTable.
const (
	SubtypePrimary  uint8 = 0x00
	SubtypeOTAImage uint8 = 0x01 // bootloader "ota" and partition_table "ota"
	SubtypeRecovery uint8 = 0x02 // bootloader only
)

// Sizes fixed by the binary format.
const (
	// MaxBinaryLength is the size of the binary table: entries, MD5 row and
	// 0xFF padding. The rest of the 4 KiB sector is left for a signature.
	MaxBinaryLength = 0xC00
	// SectorSize is the flash space the table occupies.
	SectorSize = 0x1000
	// DefaultOffset is CONFIG_PARTITION_TABLE_OFFSET's default.
	DefaultOffset = 0x8000

	entrySize      = 32
	nvsRWMinSize   = 0x3000
	otadataSize    = 0x2000
	flagEncrypted  = 1 << 0
	flagReadonly   = 1 << 1
	secureV1       = "v1"
	secureV2       = "v2"
	appOffsetAlign = 0x10000
)

var (
	entryMagic = [2]byte{0xAA, 0x50}
	md5Magic   = [2]byte{0xEB, 0xEB}
)

// Partition is one row of a table.
type Partition struct {
	Name                string
	Type, SubType       uint8
	Offset, Size        uint32
	Encrypted, Readonly bool
}

// End is the first offset after the partition.
func (p *Partition) End() uint64 { return uint64(p.Offset) + uint64(p.Size) }

// Table is a whole partition table, in the order of its rows.
type Table struct {
	Partitions []Partition
}

// CSVOptions are gen_esp32part.py's command-line settings that change how a
// table is read and checked. The zero value is the tool's default.
type CSVOptions struct {
	// TableOffset is where the table itself is flashed (--offset); 0 means
	// DefaultOffset. The first partition starts after its sector.
	TableOffset uint32
	// Secure is "", "v1" or "v2" (--secure). Secure boot v1 needs app sizes
	// aligned to 64 KiB.
	Secure string
	// FlashSize, when not 0, refuses tables ending past it (--flash-size).
	FlashSize uint32
	// PrimaryBootloaderOffset and RecoveryBootloaderOffset place rows of
	// type bootloader (--primary-bootloader-offset,
	// --recovery-bootloader-offset); nil means unset.
	PrimaryBootloaderOffset  *uint32
	RecoveryBootloaderOffset *uint32
	// ExtraSubtypes adds named subtypes, each "type,name,hexvalue", the
	// format of --extra-partition-subtypes.
	ExtraSubtypes []string
	// NoVerify skips the checks gen_esp32part.py skips with --no-verify.
	NoVerify bool
	// Getenv resolves $VAR and ${VAR} in CSV lines, as the tool does with
	// os.path.expandvars. nil means no variable is defined, so that parsing
	// does not depend on the caller's environment unless asked to.
	Getenv func(string) (string, bool)
}

func (o *CSVOptions) tableOffset() int64 {
	if o.TableOffset == 0 {
		return DefaultOffset
	}
	return int64(o.TableOffset)
}

// BinaryOptions change how the binary table is written.
type BinaryOptions struct {
	// DisableMD5 leaves out the MD5 row (--disable-md5sum), for bootloaders
	// built with CONFIG_PARTITION_TABLE_MD5 off.
	DisableMD5 bool
}

// entry is a row while it is parsed: values are wide and signed so that the
// checks see what the CSV said before it is narrowed to the binary fields,
// and offset and size may still be unset, as in the Python tool.
type entry struct {
	line                int
	name                string
	typ, subtype        int64
	offset, size        int64
	hasOffset           bool
	encrypted, readonly bool
}

// ParseCSV reads partitions.csv, fills in blank offsets and "up to" sizes,
// checks the table as gen_esp32part.py does (unless opt.NoVerify), and
// returns it. Errors name the CSV line when there is one.
func ParseCSV(r io.Reader, opt CSVOptions) (*Table, error) {
	raw, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("parttable: reading csv: %w", err)
	}
	text, err := decodeText(raw)
	if err != nil {
		return nil, err
	}
	kw, err := newKeywords(opt.ExtraSubtypes)
	if err != nil {
		return nil, err
	}
	if opt.Secure != "" && opt.Secure != secureV1 && opt.Secure != secureV2 {
		return nil, fmt.Errorf("parttable: secure boot version %q is not v1 or v2", opt.Secure)
	}
	tableOff := opt.tableOffset()
	if opt.PrimaryBootloaderOffset != nil && int64(*opt.PrimaryBootloaderOffset) >= tableOff {
		return nil, fmt.Errorf("parttable: primary bootloader offset %#x must be below the partition table at %#x",
			*opt.PrimaryBootloaderOffset, tableOff)
	}
	var es []*entry
	for i, line := range splitLines(text) {
		line = expandVars(line, opt.Getenv)
		if name, ok := leadingVar(line); ok {
			return nil, fmt.Errorf("parttable: line %d: unknown variable %q", i+1, name)
		}
		line = pyStrip(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		e, err := parseLine(line, i+1, kw, &opt)
		if err != nil {
			return nil, fmt.Errorf("parttable: line %d: %w", i+1, err)
		}
		es = append(es, e)
	}
	if err := placeEntries(es, tableOff); err != nil {
		return nil, err
	}
	if !opt.NoVerify {
		if err := verify(es, &opt); err != nil {
			return nil, err
		}
	}
	if opt.FlashSize != 0 {
		if err := verifyFits(es, int64(opt.FlashSize)); err != nil {
			return nil, err
		}
	}
	t := &Table{Partitions: make([]Partition, 0, len(es))}
	for _, e := range es {
		p, err := e.narrow()
		if err != nil {
			return nil, fmt.Errorf("parttable: line %d: %w", e.line, err)
		}
		t.Partitions = append(t.Partitions, p)
	}
	return t, nil
}

func parseLine(line string, lineNo int, kw keywords, opt *CSVOptions) (*entry, error) {
	// Missing trailing fields count as blank and fields past the sixth are
	// ignored, as in the Python tool.
	fields := strings.Split(line+",,,,", ",")
	for i := range fields {
		fields[i] = pyStrip(fields[i])
	}
	e := &entry{line: lineNo, name: fields[0]}
	if fields[1] == "" {
		return nil, errors.New("field 'type' can't be left empty")
	}
	var err error
	if e.typ, err = parseInt(fields[1], kw.types); err != nil {
		return nil, err
	}
	if fields[2] == "" {
		if e.typ == int64(TypeApp) {
			return nil, errors.New("app partition cannot have an empty subtype")
		}
		e.subtype = int64(SubtypeUndefined)
	} else if e.subtype, err = parseInt(fields[2], kw.subtypes[e.typ]); err != nil {
		return nil, err
	}
	if err := e.parseOffset(fields[3], opt); err != nil {
		return nil, err
	}
	if err := e.parseSize(fields[4], opt); err != nil {
		return nil, err
	}
	for _, f := range strings.Split(fields[5], ":") {
		switch f {
		case "encrypted":
			e.encrypted = true
		case "readonly":
			e.readonly = true
		case "":
		default:
			return nil, fmt.Errorf("csv flag column contains unknown flag %q", f)
		}
	}
	return e, nil
}

func (e *entry) parseOffset(s string, opt *CSVOptions) error {
	switch {
	case e.typ == int64(TypeBootloader) && e.subtype == int64(SubtypePrimary):
		if opt.PrimaryBootloaderOffset == nil {
			return errors.New("primary bootloader offset is not defined")
		}
		e.offset, e.hasOffset = int64(*opt.PrimaryBootloaderOffset), true
		return nil
	case e.typ == int64(TypeBootloader) && e.subtype == int64(SubtypeRecovery):
		if opt.RecoveryBootloaderOffset == nil {
			return errors.New("recovery bootloader offset is not defined")
		}
		e.offset, e.hasOffset = int64(*opt.RecoveryBootloaderOffset), true
		return nil
	case e.typ == int64(TypePartitionTable) && e.subtype == int64(SubtypePrimary):
		e.offset, e.hasOffset = opt.tableOffset(), true
		return nil
	case s == "":
		return nil
	}
	v, err := parseInt(s, nil)
	if err != nil {
		return err
	}
	e.offset, e.hasOffset = v, true
	return nil
}

func (e *entry) parseSize(s string, opt *CSVOptions) error {
	switch {
	case e.typ == int64(TypeBootloader):
		if opt.PrimaryBootloaderOffset == nil {
			return errors.New("primary bootloader offset is not defined")
		}
		e.size = opt.tableOffset() - int64(*opt.PrimaryBootloaderOffset)
		return nil
	case e.typ == int64(TypePartitionTable):
		e.size = SectorSize
		return nil
	case s == "":
		return errors.New("size field can't be empty")
	}
	v, err := parseInt(s, nil)
	if err != nil {
		return err
	}
	e.size = v
	return nil
}

func (e *entry) isPrimaryFixed() bool {
	return (e.typ == int64(TypeBootloader) || e.typ == int64(TypePartitionTable)) && e.subtype == int64(SubtypePrimary)
}

// placeEntries gives blank offsets the next aligned free offset and turns a
// negative size -E into "up to offset E", walking the rows in CSV order.
func placeEntries(es []*entry, tableOff int64) error {
	lastEnd := tableOff + SectorSize
	for i, e := range es {
		if e.isPrimaryFixed() {
			continue
		}
		if e.hasOffset && e.offset < lastEnd {
			if i == 0 {
				return fmt.Errorf("parttable: line %d: partitions overlap: offset %#x is inside the partition table sector at %#x, use %#x or higher",
					e.line, e.offset, tableOff, lastEnd)
			}
			return fmt.Errorf("parttable: line %d: partitions overlap: offset %#x is before the end %#x of the previous partition",
				e.line, e.offset, lastEnd)
		}
		if !e.hasOffset {
			align := offsetAlign(e.typ)
			if r := lastEnd % align; r != 0 {
				lastEnd += align - r
			}
			e.offset, e.hasOffset = lastEnd, true
		}
		if e.size < 0 {
			e.size = -e.size - e.offset
		}
		lastEnd = e.offset + e.size
	}
	return nil
}

func offsetAlign(typ int64) int64 {
	if typ == int64(TypeApp) {
		return appOffsetAlign
	}
	return 0x1000
}

// pyMod is Python's %, whose result takes the divisor's sign, so that the
// checks agree with the tool on negative values.
func pyMod(a, b int64) int64 {
	m := a % b
	if m != 0 && (m < 0) != (b < 0) {
		m += b
	}
	return m
}

func verify(es []*entry, opt *CSVOptions) error {
	for _, e := range es {
		if err := e.verify(opt); err != nil {
			return fmt.Errorf("parttable: partition %q invalid: %w", e.name, err)
		}
	}
	seen := map[string]bool{}
	for _, e := range es {
		if seen[e.name] {
			return fmt.Errorf("parttable: partition names must be unique: %q is used twice", e.name)
		}
		seen[e.name] = true
	}
	sorted := append([]*entry(nil), es...)
	sort.SliceStable(sorted, func(i, j int) bool { return sorted[i].offset < sorted[j].offset })
	tableEnd := opt.tableOffset() + SectorSize
	var last *entry
	for _, e := range sorted {
		if e.offset < tableEnd && !e.isPrimaryFixed() {
			return fmt.Errorf("parttable: partition %q offset %#x is below %#x", e.name, e.offset, tableEnd)
		}
		if last != nil && e.offset < last.offset+last.size {
			return fmt.Errorf("parttable: partition %q at %#x overlaps %#x-%#x", e.name, e.offset, last.offset, last.offset+last.size-1)
		}
		last = e
	}
	for _, c := range []struct {
		subtype uint8
		what    string
	}{{SubtypeOTA, "otadata"}, {SubtypeTEEOTA, "tee otadata"}} {
		var found []*entry
		for _, e := range es {
			if e.typ == int64(TypeData) && e.subtype == int64(c.subtype) {
				found = append(found, e)
			}
		}
		if len(found) > 1 {
			return fmt.Errorf("parttable: found %d %s partitions, only one may have type data and subtype %#x", len(found), c.what, c.subtype)
		}
		if len(found) == 1 && found[0].size != otadataSize {
			return fmt.Errorf("parttable: %s partition %q must have size 0x2000, not %#x", c.what, found[0].name, found[0].size)
		}
	}
	return nil
}

func (e *entry) verify(opt *CSVOptions) error {
	if a := offsetAlign(e.typ); pyMod(e.offset, a) != 0 {
		return fmt.Errorf("offset %#x is not aligned to %#x", e.offset, a)
	}
	if e.typ == int64(TypeApp) {
		a := int64(0x1000)
		if opt.Secure == secureV1 {
			// The v1 signature block sits at the very end of a 64 KiB block.
			a = 0x10000
		}
		if pyMod(e.size, a) != 0 {
			return fmt.Errorf("size %#x is not aligned to %#x", e.size, a)
		}
	}
	if e.typ == int64(TypeData) && (e.subtype == int64(SubtypeOTA) || e.subtype == int64(SubtypeCoredump)) && e.readonly {
		return fmt.Errorf("partition of type %d and subtype %d is always read-write and cannot be read-only", e.typ, e.subtype)
	}
	if e.typ == int64(TypeData) && e.subtype == int64(SubtypeNVS) && e.size < nvsRWMinSize && !e.readonly {
		return fmt.Errorf("nvs partition of size %#x must be flagged readonly (read/write nvs needs at least %#x)", e.size, nvsRWMinSize)
	}
	return nil
}

// verifyFits checks the end of the partition with the highest offset, the
// way the tool measures a table.
func verifyFits(es []*entry, flash int64) error {
	if len(es) == 0 {
		return nil
	}
	last := es[0]
	for _, e := range es[1:] {
		if e.offset > last.offset {
			last = e
		}
	}
	if end := last.offset + last.size; flash < end {
		return fmt.Errorf("parttable: partitions end at %#x, past the flash size %#x", end, flash)
	}
	return nil
}

func (e *entry) narrow() (Partition, error) {
	switch {
	case e.typ < 0 || e.typ > 0xFF:
		return Partition{}, fmt.Errorf("type %d does not fit in a byte", e.typ)
	case e.subtype < 0 || e.subtype > 0xFF:
		return Partition{}, fmt.Errorf("subtype %d does not fit in a byte", e.subtype)
	case e.offset < 0 || e.offset > 0xFFFFFFFF:
		return Partition{}, fmt.Errorf("offset %#x does not fit in 32 bits", e.offset)
	case e.size < 0 || e.size > 0xFFFFFFFF:
		return Partition{}, fmt.Errorf("size %#x does not fit in 32 bits", e.size)
	}
	return Partition{
		Name: e.name, Type: uint8(e.typ), SubType: uint8(e.subtype),
		Offset: uint32(e.offset), Size: uint32(e.size),
		Encrypted: e.encrypted, Readonly: e.readonly,
	}, nil
}

// Verify runs the checks of ParseCSV on t, for tables read from a binary.
// opt.NoVerify is ignored; opt.FlashSize is checked when set.
func (t *Table) Verify(opt CSVOptions) error {
	es := make([]*entry, len(t.Partitions))
	for i, p := range t.Partitions {
		es[i] = &entry{line: i + 1, name: p.Name, typ: int64(p.Type), subtype: int64(p.SubType),
			offset: int64(p.Offset), size: int64(p.Size), hasOffset: true,
			encrypted: p.Encrypted, readonly: p.Readonly}
	}
	if err := verify(es, &opt); err != nil {
		return err
	}
	if opt.FlashSize != 0 {
		return verifyFits(es, int64(opt.FlashSize))
	}
	return nil
}

// ParseBinary reads a binary table, such as partition-table.bin or the
// 0x1000 bytes read back from flash at the table offset. It stops at the
// first all-0xFF row and checks the MD5 row when one is present. It does not
// run Verify.
func ParseBinary(b []byte) (*Table, error) {
	h := md5.New()
	t := &Table{}
	for o := 0; o < len(b); o += entrySize {
		if len(b)-o < entrySize {
			return nil, errors.New("parttable: binary table length must be a multiple of 32 bytes")
		}
		row := b[o : o+entrySize]
		if bytes.Count(row, []byte{0xFF}) == entrySize {
			return t, nil
		}
		if row[0] == md5Magic[0] && row[1] == md5Magic[1] {
			if sum := h.Sum(nil); !bytes.Equal(row[16:], sum) {
				return nil, fmt.Errorf("parttable: md5 checksums don't match at byte %#x (computed %x, stored %x)", o, sum, row[16:])
			}
			continue
		}
		h.Write(row)
		if row[0] != entryMagic[0] || row[1] != entryMagic[1] {
			return nil, fmt.Errorf("parttable: invalid magic bytes %x in row at byte %#x", row[:2], o)
		}
		label := row[12:28]
		if i := bytes.IndexByte(label, 0); i >= 0 {
			label = label[:i]
		}
		if !utf8.Valid(label) {
			return nil, fmt.Errorf("parttable: partition name %q at byte %#x is not utf-8", label, o)
		}
		// Unknown flag bits are dropped, as the tool does after a warning:
		// they may come from a newer format.
		flags := binary.LittleEndian.Uint32(row[28:32])
		t.Partitions = append(t.Partitions, Partition{
			Name:      string(label),
			Type:      row[2],
			SubType:   row[3],
			Offset:    binary.LittleEndian.Uint32(row[4:8]),
			Size:      binary.LittleEndian.Uint32(row[8:12]),
			Encrypted: flags&flagEncrypted != 0,
			Readonly:  flags&flagReadonly != 0,
		})
	}
	return nil, errors.New("parttable: binary table is missing an end-of-table marker")
}

// MarshalBinary writes the binary table with its MD5 row, padded with 0xFF
// to MaxBinaryLength.
func (t *Table) MarshalBinary() ([]byte, error) { return t.Binary(BinaryOptions{}) }

// Binary writes the binary table. Names longer than 16 bytes are cut, as
// the tool's struct packing does.
func (t *Table) Binary(opt BinaryOptions) ([]byte, error) {
	out := make([]byte, 0, MaxBinaryLength)
	for _, p := range t.Partitions {
		var row [entrySize]byte
		copy(row[0:2], entryMagic[:])
		row[2], row[3] = p.Type, p.SubType
		binary.LittleEndian.PutUint32(row[4:8], p.Offset)
		binary.LittleEndian.PutUint32(row[8:12], p.Size)
		copy(row[12:28], p.Name)
		var flags uint32
		if p.Encrypted {
			flags |= flagEncrypted
		}
		if p.Readonly {
			flags |= flagReadonly
		}
		binary.LittleEndian.PutUint32(row[28:32], flags)
		out = append(out, row[:]...)
		if len(out) >= MaxBinaryLength {
			break
		}
	}
	if !opt.DisableMD5 {
		sum := md5.Sum(out)
		out = append(out, md5Magic[:]...)
		out = append(out, bytes.Repeat([]byte{0xFF}, 14)...)
		out = append(out, sum[:]...)
	}
	if len(out) >= MaxBinaryLength {
		return nil, fmt.Errorf("parttable: %d partitions make a binary table longer than %#x bytes", len(t.Partitions), MaxBinaryLength)
	}
	return append(out, bytes.Repeat([]byte{0xFF}, MaxBinaryLength-len(out))...), nil
}

// CSV prints the table in the tool's own CSV style: names for known types
// and subtypes, hex offsets, sizes in M or K when they divide evenly.
func (t *Table) CSV() string { return t.csv(builtinKeywords()) }

// CSVWithSubtypes is CSV naming also the extra subtypes, given as in
// CSVOptions.ExtraSubtypes.
func (t *Table) CSVWithSubtypes(extra []string) (string, error) {
	kw, err := newKeywords(extra)
	if err != nil {
		return "", err
	}
	return t.csv(kw), nil
}

func (t *Table) csv(kw keywords) string {
	var b strings.Builder
	b.WriteString("# ESP-IDF Partition Table\n# Name, Type, SubType, Offset, Size, Flags\n")
	for _, p := range t.Partitions {
		var flags []string
		if p.Encrypted {
			flags = append(flags, "encrypted")
		}
		if p.Readonly {
			flags = append(flags, "readonly")
		}
		fmt.Fprintf(&b, "%s,%s,%s,%#x,%s,%s\n", p.Name,
			kw.typeName(int64(p.Type)), kw.subtypeName(int64(p.Type), int64(p.SubType)),
			p.Offset, sizeText(p.Size), strings.Join(flags, ":"))
	}
	return b.String()
}

func sizeText(n uint32) string {
	switch {
	case n%0x100000 == 0:
		return fmt.Sprintf("%dM", n/0x100000)
	case n%0x400 == 0:
		return fmt.Sprintf("%dK", n/0x400)
	}
	return fmt.Sprintf("%#x", n)
}

// FindSubtype returns the first partition of that type and subtype, or nil.
func (t *Table) FindSubtype(typ, subtype uint8) *Partition {
	for i := range t.Partitions {
		if t.Partitions[i].Type == typ && t.Partitions[i].SubType == subtype {
			return &t.Partitions[i]
		}
	}
	return nil
}

// Find returns the partition called name, or nil.
func (t *Table) Find(name string) *Partition {
	for i := range t.Partitions {
		if t.Partitions[i].Name == name {
			return &t.Partitions[i]
		}
	}
	return nil
}

// FirstApp returns the partition the bootloader starts when otadata is
// blank: the factory app, else ota_0, else nil.
func (t *Table) FirstApp() *Partition {
	if p := t.FindSubtype(TypeApp, SubtypeFactory); p != nil {
		return p
	}
	return t.FindSubtype(TypeApp, SubtypeOTA0)
}
