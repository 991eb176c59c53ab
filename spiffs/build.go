package spiffs

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"unicode/utf8"
)

// File is one file to put in an image. Path is the SPIFFS object name the
// firmware opens (after the VFS mount point), such as "/device.crt".
type File struct {
	Path string
	Data []byte
}

// Build lays files out in that order exactly as spiffsgen.py does and returns
// the image, cfg.ImageSize bytes long. Files that do not fit give an error
// wrapping ErrFull.
//
// One deliberate difference: spiffsgen.py pads a name by its length in
// characters rather than bytes, which moves the page table of a file with a
// non-ASCII name off the place SPIFFS reads it from, so that the device cannot
// read that file. Build pads by bytes, so such names work; for ASCII names the
// two agree byte for byte.
func Build(cfg Config, files []File) ([]byte, error) {
	g, err := newGeometry(cfg, cfg.ImageSize)
	if err != nil {
		return nil, err
	}
	if len(files) > objIDIndexFlag-1 {
		return nil, fmt.Errorf("spiffs: %d files, more than SPIFFS object ids allow (%d)", len(files), objIDIndexFlag-1)
	}
	seen := make(map[string]bool, len(files))
	for _, f := range files {
		if err := checkName(f.Path, cfg.ObjNameLen); err != nil {
			return nil, err
		}
		if seen[f.Path] {
			return nil, fmt.Errorf("spiffs: %q given twice", f.Path)
		}
		seen[f.Path] = true
	}
	b := &builder{g: g, img: make([]byte, cfg.ImageSize), used: make([]int, cfg.ImageSize/cfg.BlockSize)}
	for i := range b.img {
		b.img[i] = 0xff
	}
	for i, f := range files {
		// Object ids count from 1 in file order, as in spiffsgen.py.
		if err := b.addFile(uint16(i+1), f); err != nil {
			return nil, fmt.Errorf("spiffs: adding %s: %w", f.Path, err)
		}
	}
	if err := b.writeMagic(); err != nil {
		return nil, err
	}
	return b.img, nil
}

// checkName accepts what spiffsgen.py accepts for ASCII names: a leading
// slash and up to objNameLen bytes, which leaves no room for the NUL when the
// name is exactly objNameLen long (SPIFFS then reads the name up to the
// field's end).
func checkName(name string, objNameLen int) error {
	switch {
	case !strings.HasPrefix(name, "/"):
		return fmt.Errorf("spiffs: name %q does not start with /", name)
	case !utf8.ValidString(name) || strings.IndexByte(name, 0) >= 0:
		return fmt.Errorf("spiffs: name %q is not valid UTF-8 without NUL bytes", name)
	case len(name) > objNameLen:
		return fmt.Errorf("spiffs: name %q is %d bytes, longer than the object name length %d", name, len(name), objNameLen)
	}
	return nil
}

// builder follows spiffsgen.py's allocation: blocks are filled in order, a
// file's index page goes where the file starts, data pages follow, a new
// index page is started where the previous one fills up, and a file that
// reaches the end of a block continues in the next one.
type builder struct {
	g    *geometry
	img  []byte
	used []int // object pages taken in each block
	cur  int   // blocks allocated so far; the last one is being filled
}

// indexPage is an index page being filled with data page indexes.
type indexPage struct {
	off, hdr, count, limit int
}

func (b *builder) remaining() int {
	if b.cur == 0 {
		return 0
	}
	return b.g.usable - b.used[b.cur-1]
}

func (b *builder) nextBlock() error {
	if b.cur == len(b.used) {
		return fmt.Errorf("%w (%d bytes)", ErrFull, b.g.cfg.ImageSize)
	}
	b.cur++
	return nil
}

// place takes the next page of the current block for an object page whose
// lookup entry is lu and returns its global page index.
func (b *builder) place(lu uint16) int {
	bix := b.cur - 1
	k := b.used[bix]
	b.used[bix]++
	b.g.order.PutUint16(b.img[b.g.luOffset(bix, k):], lu)
	return bix*b.g.pagesPerBlock + b.g.luPages + k
}

func (b *builder) newIndexPage(id uint16, span int, f File) (*indexPage, error) {
	if span > math.MaxUint16 {
		return nil, fmt.Errorf("%w: too many index pages", ErrFull)
	}
	g := b.g
	off := g.pageOffset(b.place(id | objIDIndexFlag))
	p := b.img[off : off+g.cfg.PageSize]
	g.order.PutUint16(p, id|objIDIndexFlag)
	g.order.PutUint16(p[2:], uint16(span))
	p[4] = flagUsedFinalIndex
	if span != 0 {
		return &indexPage{off: off, hdr: dataHdrAlign, limit: g.lim}, nil
	}
	g.order.PutUint32(p[dataHdrAlign:], uint32(len(f.Data)))
	p[dataHdrAlign+4] = typeFile
	rest := p[ixHdrFixed:g.ixHdrHead]
	n := copy(rest, f.Path)
	for i := n; i < len(rest); i++ {
		rest[i] = 0
	}
	return &indexPage{off: off, hdr: g.ixHdrHead, limit: g.headLim}, nil
}

func (b *builder) addFile(id uint16, f File) error {
	g := b.g
	if uint64(len(f.Data)) > math.MaxUint32 {
		return fmt.Errorf("%d bytes is more than SPIFFS sizes hold", len(f.Data))
	}
	if b.remaining() == 0 {
		if err := b.nextBlock(); err != nil {
			return err
		}
	}
	ix, err := b.newIndexPage(id, 0, f)
	if err != nil {
		return err
	}
	ixSpan, dataSpan := 1, 0
	for off := 0; off < len(f.Data); off += g.dataContent {
		chunk := f.Data[off:min(off+g.dataContent, len(f.Data))]
		for {
			if b.remaining() == 0 {
				if err := b.nextBlock(); err != nil {
					return err
				}
				continue
			}
			if ix.count >= ix.limit {
				if ix, err = b.newIndexPage(id, ixSpan, f); err != nil {
					return err
				}
				ixSpan++
				continue
			}
			break
		}
		if dataSpan > math.MaxUint16 {
			return fmt.Errorf("%w: too many data pages for one file", ErrFull)
		}
		pix := b.place(id)
		if pix > math.MaxUint16 {
			return fmt.Errorf("%w: page %d is beyond 16-bit page indexes", ErrFull, pix)
		}
		p := b.img[g.pageOffset(pix):][:g.cfg.PageSize]
		g.order.PutUint16(p, id)
		g.order.PutUint16(p[2:], uint16(dataSpan))
		p[4] = flagUsedFinal
		copy(p[dataHdrLen:], chunk)
		g.order.PutUint16(b.img[ix.off+ix.hdr+ix.count*pageIxLen:], uint16(pix))
		ix.count++
		dataSpan++
	}
	return nil
}

// writeMagic puts SPIFFS_MAGIC into every block, used or not, at the place
// spiffsgen.py puts it: the last-but-one slot of the block's last lookup
// page, unless the lookup entries already reach it.
func (b *builder) writeMagic() error {
	g := b.g
	if !g.cfg.UseMagic {
		return nil
	}
	last := (g.luPages - 1) * g.luSlots
	for bix, used := range b.used {
		if max(used-last, 0) > g.luSlots-2 {
			continue
		}
		v, ok := g.magic(bix, len(b.used))
		if !ok {
			return fmt.Errorf("spiffs: magic of block %d does not fit 16 bits; use fewer blocks", bix)
		}
		g.order.PutUint16(b.img[g.luOffset(bix, last+g.luSlots-2):], v)
	}
	return nil
}

// BuildDir builds an image from the regular files under dir, named by their
// path relative to dir with a leading slash.
//
// spiffsgen.py adds files in os.walk order: in each directory its files, then
// its subdirectories one by one, each listed in whatever order the file system
// returns them. BuildDir walks the same way but sorts each directory's
// entries by name, so its output is reproducible; it equals spiffsgen.py's
// whenever os.walk happens to list entries sorted, or when spiffsgen.py is
// run with a sorting os.walk (see testdata/sortedwalk.py).
//
// Like os.walk, a symbolic link to a file is always followed, and a link to a
// directory only with cfg.FollowSymlinks. Links that loop, dangling links and
// special files are errors.
func BuildDir(cfg Config, dir string) ([]byte, error) {
	files, err := ReadDir(dir, cfg.FollowSymlinks, int64(cfg.ImageSize))
	if err != nil {
		return nil, err
	}
	return Build(cfg, files)
}

// ReadDir collects the files under dir in BuildDir's order. It fails with
// ErrFull as soon as the files add up to more than limit bytes, which could
// never fit an image of limit bytes, so that a wrong directory is not read
// into memory whole.
func ReadDir(dir string, followSymlinks bool, limit int64) ([]File, error) {
	fi, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("spiffs: reading %s: %w", dir, err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("spiffs: %s is not a directory", dir)
	}
	w := walker{follow: followSymlinks, limit: limit}
	if err := w.walk(dir, "", []os.FileInfo{fi}); err != nil {
		return nil, err
	}
	return w.files, nil
}

type walker struct {
	follow bool
	limit  int64
	total  int64
	files  []File
}

// walk adds the files of dir, whose name relative to the root is rel, then
// descends. parents are the directories on the way down, to catch loops.
func (w *walker) walk(dir, rel string, parents []os.FileInfo) error {
	entries, err := os.ReadDir(dir) // sorted by name
	if err != nil {
		return fmt.Errorf("spiffs: reading %s: %w", dir, err)
	}
	type subdir struct {
		name string
		info os.FileInfo
	}
	var dirs []subdir
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		fi, err := os.Stat(p) // follows links, as os.walk's is_dir does
		if err != nil {
			return fmt.Errorf("spiffs: reading %s: %w", p, err)
		}
		if fi.IsDir() {
			if e.Type()&os.ModeSymlink == 0 || w.follow {
				dirs = append(dirs, subdir{e.Name(), fi})
			}
			continue
		}
		if !fi.Mode().IsRegular() {
			return fmt.Errorf("spiffs: %s is not a regular file", p)
		}
		w.total += fi.Size()
		if w.total > w.limit {
			return fmt.Errorf("spiffs: the files add up to more than %d bytes: %w", w.limit, ErrFull)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return fmt.Errorf("spiffs: reading %s: %w", p, err)
		}
		w.files = append(w.files, File{Path: "/" + filepath.ToSlash(filepath.Join(rel, e.Name())), Data: data})
	}
	for _, d := range dirs {
		for _, p := range parents {
			if os.SameFile(p, d.info) {
				return fmt.Errorf("spiffs: %s loops back to a parent directory", filepath.Join(dir, d.name))
			}
		}
		if err := w.walk(filepath.Join(dir, d.name), filepath.Join(rel, d.name), append(parents, d.info)); err != nil {
			return err
		}
	}
	return nil
}
