package spiffs

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"sort"
)

// Entry is a file in an image.
type Entry struct {
	Path string
	Size int64
}

// FS is a read-only view of a SPIFFS image.
type FS struct {
	g       *geometry
	img     []byte
	entries []Entry            // sorted by path
	byName  map[string]*object // files only
}

// object gathers the live pages of one SPIFFS object.
type object struct {
	id       uint16
	name     string
	size     int64
	typ      byte
	deleting bool
	ix       map[int]int // index span -> page index
	data     map[int]int // data span -> page index, from the page headers
}

// Open reads the image's directory. cfg gives the geometry (PageSize,
// BlockSize, ObjNameLen, MetaLen, BigEndian, AlignedObjIxTables); the image
// may be any multiple of the block size long. The magic is not required, so
// images built without it open too.
//
// A page counts only when its lookup entry and its header agree and its flags
// say it is written, finalised and not deleted, which skips the obsolete
// pages a device leaves behind when it rewrites a file. Index pages may be
// anywhere in any order. Open never trusts a length or index from the image
// without checking it against the image.
func Open(image []byte, cfg Config) (*FS, error) {
	g, err := newGeometry(cfg, len(image))
	if err != nil {
		return nil, err
	}
	f := &FS{g: g, img: image, byName: map[string]*object{}}
	objs := map[uint16]*object{}
	get := func(id uint16) *object {
		o := objs[id]
		if o == nil {
			o = &object{id: id, ix: map[int]int{}, data: map[int]int{}}
			objs[id] = o
		}
		return o
	}
	blocks := len(image) / cfg.BlockSize
	for bix := 0; bix < blocks; bix++ {
		for k := 0; k < g.usable; k++ {
			lu := g.order.Uint16(image[g.luOffset(bix, k):])
			if lu == objIDFree || lu == objIDDeleted {
				continue
			}
			pix := bix*g.pagesPerBlock + g.luPages + k
			p := image[g.pageOffset(pix):][:cfg.PageSize]
			id, span, flags := g.order.Uint16(p), int(g.order.Uint16(p[2:])), p[4]
			if id != lu || flags&(phUsed|phFinal) != 0 || flags&phDelet == 0 {
				continue
			}
			isIndex := flags&phIndex == 0
			if isIndex != (id&objIDIndexFlag != 0) {
				continue
			}
			o := get(id &^ objIDIndexFlag)
			if !isIndex {
				if _, dup := o.data[span]; !dup {
					o.data[span] = pix
				}
				continue
			}
			if _, dup := o.ix[span]; dup {
				continue
			}
			o.ix[span] = pix
			if span != 0 {
				continue
			}
			o.deleting = flags&phIxDele == 0
			o.size = int64(g.order.Uint32(p[dataHdrAlign:]))
			if o.size == 0xffffffff { // created, never written
				o.size = 0
			}
			o.typ = p[dataHdrAlign+4]
			name := p[ixHdrFixed : ixHdrFixed+cfg.ObjNameLen]
			if i := bytes.IndexByte(name, 0); i >= 0 {
				name = name[:i]
			}
			o.name = string(name)
		}
	}
	ids := make([]int, 0, len(objs))
	for id := range objs {
		ids = append(ids, int(id))
	}
	sort.Ints(ids)
	for _, id := range ids {
		o := objs[uint16(id)]
		if _, ok := o.ix[0]; !ok || o.deleting || o.typ != typeFile || o.name == "" {
			continue
		}
		if _, dup := f.byName[o.name]; dup { // keep the lower id, deterministically
			continue
		}
		f.byName[o.name] = o
		f.entries = append(f.entries, Entry{Path: o.name, Size: o.size})
	}
	sort.Slice(f.entries, func(i, j int) bool { return f.entries[i].Path < f.entries[j].Path })
	return f, nil
}

// List returns the files in the image, sorted by path.
func (f *FS) List() []Entry {
	return append([]Entry(nil), f.entries...)
}

// ReadFile returns the contents of the file named path (such as
// "/device.crt"). A missing file gives an error wrapping fs.ErrNotExist.
func (f *FS) ReadFile(path string) ([]byte, error) {
	o := f.byName[path]
	if o == nil {
		return nil, fmt.Errorf("spiffs: %s: %w", path, fs.ErrNotExist)
	}
	g := f.g
	if o.size > int64(len(f.img)) {
		return nil, fmt.Errorf("spiffs: %s: size %d is larger than the image", path, o.size)
	}
	out := make([]byte, 0, o.size)
	for span := 0; int64(len(out)) < o.size; span++ {
		pix, err := f.dataPage(o, span)
		if err != nil {
			return nil, fmt.Errorf("spiffs: %s: %w", path, err)
		}
		p := f.img[g.pageOffset(pix):][:g.cfg.PageSize]
		n := min(int64(g.dataContent), o.size-int64(len(out)))
		out = append(out, p[dataHdrLen:dataHdrLen+int(n)]...)
	}
	return out, nil
}

var errNoPage = errors.New("data page missing")

// dataPage finds the page holding data span span of o: where the object's
// index says, as SPIFFS looks it up, or else wherever a live page header
// claims it.
func (f *FS) dataPage(o *object, span int) (int, error) {
	g := f.g
	ixSpan, entry := 0, span
	if span >= g.headLim {
		ixSpan = 1 + (span-g.headLim)/g.lim
		entry = (span - g.headLim) % g.lim
	}
	if ipix, ok := o.ix[ixSpan]; ok {
		hdr := dataHdrAlign
		if ixSpan == 0 {
			hdr = g.ixHdrHead
		}
		pix := int(g.order.Uint16(f.img[g.pageOffset(ipix)+hdr+entry*pageIxLen:]))
		if f.isData(pix, o.id, span) {
			return pix, nil
		}
	}
	if pix, ok := o.data[span]; ok {
		return pix, nil
	}
	return 0, fmt.Errorf("%w: span %d", errNoPage, span)
}

// isData reports whether page pix is a live data page of object id with the
// given span.
func (f *FS) isData(pix int, id uint16, span int) bool {
	g := f.g
	bix, k := pix/g.pagesPerBlock, pix%g.pagesPerBlock-g.luPages
	if k < 0 || g.pageOffset(pix+1) > len(f.img) {
		return false
	}
	if g.order.Uint16(f.img[g.luOffset(bix, k):]) != id {
		return false
	}
	p := f.img[g.pageOffset(pix):]
	flags := p[4]
	return g.order.Uint16(p) == id && int(g.order.Uint16(p[2:])) == span &&
		flags&(phUsed|phFinal|phIndex) == phIndex && flags&phDelet != 0
}
