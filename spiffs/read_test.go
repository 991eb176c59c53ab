package spiffs

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"math/rand"
	"testing"
)

// TestRoundTrip puts many shapes of file sets through Build and Open.
func TestRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	configs := []Config{DefaultConfig(0x40000)}
	for _, page := range []int{128, 256, 512, 1024} {
		for _, block := range []int{4096, 8192, 65536} {
			c := DefaultConfig(0x40000)
			c.PageSize, c.BlockSize = page, block
			c.BigEndian = rng.Intn(2) == 0
			c.AlignedObjIxTables = rng.Intn(2) == 0
			c.UseMagic = rng.Intn(3) != 0
			c.UseMagicLen = rng.Intn(2) == 0
			c.MetaLen = rng.Intn(9)
			c.ObjNameLen = 16 + rng.Intn(page/2-16-c.MetaLen+1)
			configs = append(configs, c)
		}
	}
	for i, cfg := range configs {
		for trial := 0; trial < 4; trial++ {
			var files []File
			budget := cfg.ImageSize / 2
			for n := rng.Intn(12); n >= 0 && budget > 0; n-- {
				var size int
				switch rng.Intn(4) {
				case 0:
					size = 0
				case 1:
					size = rng.Intn(cfg.PageSize * 3)
				default:
					size = rng.Intn(min(budget, 40000) + 1)
				}
				budget -= size + cfg.PageSize
				data := make([]byte, size)
				rng.Read(data)
				name := fmt.Sprintf("/d%d/f%d", trial, n)
				files = append(files, File{Path: name[:min(len(name), cfg.ObjNameLen)], Data: data})
			}
			t.Run(fmt.Sprintf("cfg%d/trial%d", i, trial), func(t *testing.T) {
				img, err := Build(cfg, files)
				if err != nil {
					t.Fatalf("Build(%+v): %v", cfg, err)
				}
				if len(img) != cfg.ImageSize {
					t.Fatalf("image is %d bytes", len(img))
				}
				fsys, err := Open(img, cfg)
				if err != nil {
					t.Fatal(err)
				}
				checkContents(t, fsys, files)
			})
		}
	}
}

// device is a test helper that edits an image the way SPIFFS on a device
// does when it rewrites files.
type device struct {
	t   *testing.T
	g   *geometry
	img []byte
}

func newDevice(t *testing.T, cfg Config, files []File) *device {
	t.Helper()
	img, err := Build(cfg, files)
	if err != nil {
		t.Fatal(err)
	}
	g, err := newGeometry(cfg, len(img))
	if err != nil {
		t.Fatal(err)
	}
	return &device{t: t, g: g, img: img}
}

func (d *device) page(pix int) []byte { return d.img[d.g.pageOffset(pix):][:d.g.cfg.PageSize] }

func (d *device) luAt(pix int) []byte {
	bix, k := pix/d.g.pagesPerBlock, pix%d.g.pagesPerBlock-d.g.luPages
	return d.img[d.g.luOffset(bix, k):]
}

// find returns the live page with header id and span.
func (d *device) find(id uint16, span int) int {
	d.t.Helper()
	for pix := 0; pix < len(d.img)/d.g.cfg.PageSize; pix++ {
		if pix%d.g.pagesPerBlock < d.g.luPages {
			continue
		}
		p := d.page(pix)
		if d.g.order.Uint16(p) == id && int(d.g.order.Uint16(p[2:])) == span && p[4]&phDelet != 0 && p[4]&phUsed == 0 {
			return pix
		}
	}
	d.t.Fatalf("no page %#x span %d", id, span)
	return 0
}

// free returns the last unused page, far from where Build puts things.
func (d *device) free() int {
	d.t.Helper()
	for pix := len(d.img)/d.g.cfg.PageSize - 1; pix >= 0; pix-- {
		if pix%d.g.pagesPerBlock >= d.g.luPages && d.g.order.Uint16(d.luAt(pix)) == objIDFree {
			d.g.order.PutUint16(d.luAt(pix), 0) // reserve it until the caller writes the entry
			return pix
		}
	}
	d.t.Fatal("no free page")
	return 0
}

// move copies page from to a free page and deletes the original, as SPIFFS
// does when it rewrites a page; it returns the new page.
func (d *device) move(from int) int {
	to := d.free()
	copy(d.page(to), d.page(from))
	copy(d.luAt(to)[:2], d.luAt(from)[:2])
	d.delete(from)
	return to
}

// delete marks a page deleted in both places SPIFFS does.
func (d *device) delete(pix int) {
	d.page(pix)[4] &^= phDelet
	d.g.order.PutUint16(d.luAt(pix), objIDDeleted)
}

func (d *device) open() *FS {
	d.t.Helper()
	fsys, err := Open(d.img, d.g.cfg)
	if err != nil {
		d.t.Fatal(err)
	}
	return fsys
}

func TestReadDeviceWrittenImage(t *testing.T) {
	cfg := DefaultConfig(0x40000)
	big := make([]byte, 40000) // two index pages
	rand.New(rand.NewSource(2)).Read(big)
	files := []File{{Path: "/big", Data: big}, {Path: "/small", Data: []byte("small")}, {Path: "/gone", Data: []byte("bye")}}

	t.Run("rewritten pages", func(t *testing.T) {
		d := newDevice(t, cfg, files)
		const id = 1
		// Rewrite data span 110 (listed by index span 1) and span 5 (index span 0):
		// new data pages elsewhere, new index pages pointing at them, the old ones deleted.
		want := append([]byte(nil), big...)
		for _, span := range []int{110, 5} {
			old := d.find(id, span)
			nu := d.move(old)
			content := d.page(nu)[dataHdrLen:]
			for i := range content {
				content[i] ^= 0x5a
			}
			copy(want[span*d.g.dataContent:], content[:min(len(content), len(want)-span*d.g.dataContent)])
			ixSpan, entry, hdr := 0, span, d.g.ixHdrHead
			if span >= d.g.headLim {
				ixSpan, entry, hdr = 1, span-d.g.headLim, dataHdrAlign
			}
			ix := d.move(d.find(id|objIDIndexFlag, ixSpan))
			d.g.order.PutUint16(d.page(ix)[hdr+2*entry:], uint16(nu))
		}
		// The index pages now lie after the pages they index, span 0 after span 1.
		fsys := d.open()
		got, err := fsys.ReadFile("/big")
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatal("rewritten file reads back wrong")
		}
		if !bytes.Equal(got[5*251:6*251], want[5*251:6*251]) || bytes.Equal(got[5*251:6*251], big[5*251:6*251]) {
			t.Fatal("span 5 is not the rewritten one")
		}
	})

	t.Run("deleted files", func(t *testing.T) {
		d := newDevice(t, cfg, files)
		d.delete(d.find(3|objIDIndexFlag, 0))
		d.delete(d.find(3, 0))
		// Being deleted: the index header's IXDELE flag is cleared first.
		d.page(d.find(2|objIDIndexFlag, 0))[4] &^= phIxDele
		if got := d.open().List(); len(got) != 1 || got[0].Path != "/big" {
			t.Fatalf("List = %v, want only /big", got)
		}
		if _, err := d.open().ReadFile("/gone"); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("ReadFile(/gone): %v", err)
		}
	})

	t.Run("unfinished and unsized", func(t *testing.T) {
		d := newDevice(t, cfg, files)
		d.page(d.find(3|objIDIndexFlag, 0))[4] |= phFinal // being written
		ix := d.page(d.find(2|objIDIndexFlag, 0))
		d.g.order.PutUint32(ix[dataHdrAlign:], 0xffffffff) // created, size not yet written
		fsys := d.open()
		if got := fsys.List(); len(got) != 2 || got[1] != (Entry{Path: "/small", Size: 0}) {
			t.Fatalf("List = %v", got)
		}
		if got, err := fsys.ReadFile("/small"); err != nil || len(got) != 0 {
			t.Fatalf("ReadFile(/small) = %q, %v", got, err)
		}
	})

	t.Run("broken index entries", func(t *testing.T) {
		d := newDevice(t, cfg, files)
		ix := d.page(d.find(1|objIDIndexFlag, 0))
		d.g.order.PutUint16(ix[d.g.ixHdrHead+2*7:], 0xfffe) // beyond the image
		d.g.order.PutUint16(ix[d.g.ixHdrHead+2*8:], 0)      // a lookup page
		d.g.order.PutUint16(ix[d.g.ixHdrHead+2*9:], 17)     // another page
		got, err := d.open().ReadFile("/big")
		if err != nil || !bytes.Equal(got, big) {
			t.Fatalf("ReadFile with broken entries: %v", err)
		}
		// With the page itself gone there is nothing to fall back on.
		d.delete(d.find(1, 9))
		if _, err := d.open().ReadFile("/big"); !errors.Is(err, errNoPage) {
			t.Fatalf("ReadFile without span 9: %v", err)
		}
	})

	t.Run("lookup and header disagree", func(t *testing.T) {
		d := newDevice(t, cfg, files)
		d.g.order.PutUint16(d.luAt(d.find(2|objIDIndexFlag, 0)), 7)
		if got := d.open().List(); len(got) != 2 {
			t.Fatalf("List = %v, want /small left out", got)
		}
	})

	t.Run("size beyond the image", func(t *testing.T) {
		d := newDevice(t, cfg, files)
		d.g.order.PutUint32(d.page(d.find(2|objIDIndexFlag, 0))[dataHdrAlign:], 0x7fffffff)
		if _, err := d.open().ReadFile("/small"); err == nil {
			t.Fatal("ReadFile accepted a size larger than the image")
		}
	})
}
