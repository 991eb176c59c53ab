// Package spiffs builds and reads SPIFFS file system images as ESP-IDF
// firmware mounts them.
//
// Build produces images byte for byte identical to ESP-IDF v5.5.5's
// spiffsgen.py for the same files in the same order, so that a factory
// station can swap the Python tool for thingline without changing a single
// flashed byte. Open reads such images and, as far as reasonable, images that
// a device running SPIFFS has written to (deleted pages, moved index pages).
package spiffs

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Config holds the parameters of spiffsgen.py. The image geometry must match
// the firmware's sdkconfig (CONFIG_SPIFFS_PAGE_SIZE, CONFIG_SPIFFS_OBJ_NAME_LEN,
// CONFIG_SPIFFS_META_LENGTH, CONFIG_SPIFFS_USE_MAGIC[_LENGTH]), or the device
// will refuse or misread the image.
type Config struct {
	ImageSize          int  // bytes; a multiple of BlockSize. Ignored by Open, which uses the image's length.
	PageSize           int  // logical page size, a power of two; default 256
	BlockSize          int  // logical block size = flash erase sector; default 4096
	ObjNameLen         int  // bytes reserved for a name, including its NUL; default 32
	MetaLen            int  // bytes of per-file metadata; default 4
	UseMagic           bool // write the per-block magic SPIFFS checks at mount; default on
	UseMagicLen        bool // fold the block's distance from the end into the magic; default on
	FollowSymlinks     bool // BuildDir descends into symlinked directories; default off
	BigEndian          bool // target is big-endian; default off (the ESP32 is little-endian)
	AlignedObjIxTables bool // SPIFFS_ALIGNED_OBJECT_INDEX_TABLES; default off
}

// DefaultConfig returns spiffsgen.py's defaults for an image of imageSize
// bytes.
func DefaultConfig(imageSize int) Config {
	return Config{
		ImageSize:   imageSize,
		PageSize:    256,
		BlockSize:   4096,
		ObjNameLen:  32,
		MetaLen:     4,
		UseMagic:    true,
		UseMagicLen: true,
	}
}

// ErrFull reports that the files do not fit in the image.
var ErrFull = errors.New("image is full")

// Sizes of the fixed SPIFFS types (spiffs_config.h in ESP-IDF): object ids,
// span indexes, page indexes and block indexes are all 16 bits.
const (
	objIDLen     = 2
	spanIxLen    = 2
	pageIxLen    = 2
	dataHdrLen   = objIDLen + spanIxLen + 1 // obj id, span index, flags; packed
	dataHdrAlign = 8                        // the header rounded up to 4, as index pages lay it out
	ixHdrFixed   = dataHdrAlign + 4 + 1     // + size (u32) + type (u8), before name and meta

	objIDIndexFlag = 0x8000 // set in the object id of index pages
	objIDFree      = 0xffff
	objIDDeleted   = 0x0000

	flagUsedFinalIndex = 0xf8
	flagUsedFinal      = 0xfc
	typeFile           = 1

	// Page header flag bits; each is cleared (0) when the state applies.
	phUsed   = 1 << 0
	phFinal  = 1 << 1
	phIndex  = 1 << 2
	phIxDele = 1 << 6
	phDelet  = 1 << 7

	magicBase = 0x20140529

	maxImageSize = 1 << 31 // a sanity bound: SPIFFS addresses at most 65536 pages
)

// geometry is a validated Config with the sizes SPIFFS derives from it.
type geometry struct {
	cfg           Config
	order         binary.ByteOrder
	pageShift     uint
	pagesPerBlock int
	luPages       int // lookup pages at the start of every block
	luSlots       int // object ids per lookup page
	usable        int // pages per block that can hold objects
	dataContent   int // file bytes per data page
	ixHdrHead     int // header of an index page with span 0, before its page table
	headLim       int // page table entries in an index page with span 0
	lim           int // page table entries in later index pages
}

func newGeometry(cfg Config, imageSize int) (*geometry, error) {
	if cfg.PageSize < 16 || cfg.PageSize&(cfg.PageSize-1) != 0 {
		return nil, fmt.Errorf("spiffs: page size %d is not a power of two of at least 16", cfg.PageSize)
	}
	if cfg.BlockSize <= 0 || cfg.BlockSize%cfg.PageSize != 0 {
		return nil, fmt.Errorf("spiffs: block size %d is not a multiple of the page size %d", cfg.BlockSize, cfg.PageSize)
	}
	if imageSize < 0 || imageSize > maxImageSize || imageSize%cfg.BlockSize != 0 {
		return nil, fmt.Errorf("spiffs: image size %d is not a multiple of the block size %d (up to %d)", imageSize, cfg.BlockSize, maxImageSize)
	}
	if cfg.ObjNameLen < 0 || cfg.MetaLen < 0 {
		return nil, fmt.Errorf("spiffs: negative name (%d) or meta (%d) length", cfg.ObjNameLen, cfg.MetaLen)
	}
	g := &geometry{cfg: cfg, order: binary.LittleEndian}
	if cfg.BigEndian {
		g.order = binary.BigEndian
	}
	for 1<<g.pageShift < cfg.PageSize {
		g.pageShift++
	}
	g.pagesPerBlock = cfg.BlockSize / cfg.PageSize
	g.luPages = (g.pagesPerBlock*objIDLen + cfg.PageSize - 1) / cfg.PageSize
	g.luSlots = cfg.PageSize / objIDLen
	g.usable = g.pagesPerBlock - g.luPages
	g.dataContent = cfg.PageSize - dataHdrLen
	g.ixHdrHead = ixHdrFixed + cfg.ObjNameLen + cfg.MetaLen
	if cfg.AlignedObjIxTables {
		g.ixHdrHead = (g.ixHdrHead + pageIxLen - 1) &^ (pageIxLen - 1)
	}
	if g.ixHdrHead > cfg.PageSize {
		return nil, fmt.Errorf("spiffs: an index header of %d bytes (name %d, meta %d) does not fit a %d-byte page",
			g.ixHdrHead, cfg.ObjNameLen, cfg.MetaLen, cfg.PageSize)
	}
	g.headLim = (cfg.PageSize - g.ixHdrHead) / pageIxLen
	g.lim = (cfg.PageSize - dataHdrAlign) / pageIxLen
	return g, nil
}

// pageOffset is the byte offset of global page index pix.
func (g *geometry) pageOffset(pix int) int { return pix << g.pageShift }

// luOffset is the byte offset of the lookup entry for the k-th object page of
// block bix.
func (g *geometry) luOffset(bix, k int) int {
	return bix*g.cfg.BlockSize + (k/g.luSlots)*g.cfg.PageSize + (k%g.luSlots)*objIDLen
}

// magic is SPIFFS_MAGIC for block bix of an image of blocks blocks, narrowed
// to an object id as spiffsgen.py narrows it. ok is false when the value does
// not fit 16 bits, which spiffsgen.py cannot pack either.
func (g *geometry) magic(bix, blocks int) (v uint16, ok bool) {
	m := uint64(magicBase ^ g.cfg.PageSize)
	if g.cfg.UseMagicLen {
		m ^= uint64(blocks - bix)
	}
	m &= (2 << (8 * objIDLen)) - 1
	return uint16(m), m <= 0xffff
}
