package sqlite

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/klauspost/compress/zstd"

	"github.com/thingline/thingline/store"
)

// The value encoding is shared by the ingest log (one record's values per
// row) and the chunks (many records back to back). It is a plain
// length-prefixed sequence rather than JSON so that appending is a copy and
// decoding allocates nothing but the output slices:
//
//	record := varint(ts) kvs                    (chunks)
//	logrec := uvarint(device) varint(ts) kvs    (log rows)
//	kvs    := uvarint(n) n × kv
//	kv     := uvarint(len) key uvarint(len) value

var errCorrupt = errors.New("corrupt telemetry encoding")

// A chunk's data is a format byte and the records: zstd-compressed, since
// telemetry repeats its key names and value shapes and compacting writes
// every record a second time; raw is accepted for data written uncompressed.
const (
	chunkRaw  = 0
	chunkZstd = 1
)

// maxChunk bounds what one chunk may decompress to, so that a damaged blob
// cannot make a reader allocate without limit.
const maxChunk = 64 << 20

var (
	zenc, _ = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
	zdec, _ = zstd.NewReader(nil, zstd.WithDecoderConcurrency(0), zstd.WithDecoderMaxMemory(maxChunk))
)

// encodeChunk wraps encoded records into a chunk's data.
func encodeChunk(records []byte) []byte {
	return zenc.EncodeAll(records, []byte{chunkZstd})
}

// chunkRecords returns the encoded records of a chunk's data.
func chunkRecordsOf(data []byte) ([]byte, error) {
	if len(data) == 0 {
		return nil, errCorrupt
	}
	switch data[0] {
	case chunkRaw:
		return data[1:], nil
	case chunkZstd:
		out, err := zdec.DecodeAll(data[1:], nil)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", errCorrupt, err)
		}
		return out, nil
	}
	return nil, fmt.Errorf("%w: chunk format %d", errCorrupt, data[0])
}

// maxKVs bounds the number of values a decoder accepts in one record, so that
// a corrupt count cannot make it allocate without limit.
const maxKVs = 1 << 16

func appendKVs(b []byte, kvs []store.KV) []byte {
	b = binary.AppendUvarint(b, uint64(len(kvs)))
	for _, kv := range kvs {
		b = binary.AppendUvarint(b, uint64(len(kv.Key)))
		b = append(b, kv.Key...)
		b = binary.AppendUvarint(b, uint64(len(kv.Value)))
		b = append(b, kv.Value...)
	}
	return b
}

func appendRecord(b []byte, ts int64, kvs []byte) []byte {
	b = binary.AppendVarint(b, ts)
	return append(b, kvs...)
}

// splitKVs returns the encoded kvs at the start of b and the rest.
func splitKVs(b []byte) (kvs, rest []byte, err error) {
	n, k := binary.Uvarint(b)
	if k <= 0 || n > maxKVs {
		return nil, nil, errCorrupt
	}
	p := k
	for range n {
		for range 2 {
			l, k := binary.Uvarint(b[p:])
			if k <= 0 || l > uint64(len(b)-p-k) {
				return nil, nil, errCorrupt
			}
			p += k + int(l)
		}
	}
	return b[:p], b[p:], nil
}

// eachKV calls fn for each key and value of encoded kvs. The slices alias b;
// keys come as bytes so that map lookups (m[string(key)]) need no copy.
func eachKV(b []byte, fn func(key, value []byte)) error {
	n, k := binary.Uvarint(b)
	if k <= 0 || n > maxKVs {
		return errCorrupt
	}
	p := k
	for range n {
		l, k := binary.Uvarint(b[p:])
		if k <= 0 || l > uint64(len(b)-p-k) {
			return errCorrupt
		}
		key := b[p+k : p+k+int(l)]
		p += k + int(l)
		l, k = binary.Uvarint(b[p:])
		if k <= 0 || l > uint64(len(b)-p-k) {
			return errCorrupt
		}
		fn(key, b[p+k:p+k+int(l)])
		p += k + int(l)
	}
	if p != len(b) {
		return errCorrupt
	}
	return nil
}

// eachRecord calls fn for each record of a chunk.
func eachRecord(b []byte, fn func(ts int64, kvs []byte) error) error {
	for len(b) > 0 {
		ts, k := binary.Varint(b)
		if k <= 0 {
			return errCorrupt
		}
		kvs, rest, err := splitKVs(b[k:])
		if err != nil {
			return err
		}
		if err := fn(ts, kvs); err != nil {
			return err
		}
		b = rest
	}
	return nil
}

// decodeChunk decodes a whole chunk's data; it is the parser the fuzz
// target drives.
func decodeChunk(data []byte) ([]store.Record, error) {
	b, err := chunkRecordsOf(data)
	if err != nil {
		return nil, fmt.Errorf("sqlite: decoding chunk: %w", err)
	}
	var out []store.Record
	err = eachRecord(b, func(ts int64, kvs []byte) error {
		r := store.Record{TS: ts}
		err := eachKV(kvs, func(k, v []byte) {
			r.Values = append(r.Values, store.KV{Key: string(k), Value: append([]byte(nil), v...)})
		})
		out = append(out, r)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("sqlite: decoding chunk: %w", err)
	}
	return out, nil
}

func appendLogRecord(b []byte, dev, ts int64, kvs []byte) []byte {
	b = binary.AppendUvarint(b, uint64(dev))
	return appendRecord(b, ts, kvs)
}

// eachLogRecord calls fn for each record of a log row.
func eachLogRecord(b []byte, fn func(dev, ts int64, kvs []byte)) error {
	for len(b) > 0 {
		dev, k := binary.Uvarint(b)
		if k <= 0 {
			return errCorrupt
		}
		b = b[k:]
		ts, k := binary.Varint(b)
		if k <= 0 {
			return errCorrupt
		}
		kvs, rest, err := splitKVs(b[k:])
		if err != nil {
			return err
		}
		fn(int64(dev), ts, kvs)
		b = rest
	}
	return nil
}
