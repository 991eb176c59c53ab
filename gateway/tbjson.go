package gateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"unicode/utf8"

	"github.com/thingline/thingline/store"
)

// ParseTelemetry types a ThingsBoard telemetry payload: an object of
// key/values, an array of such objects, {"ts":..,"values":{..}} or an array of
// those. Records without a "ts" get now (ms since the epoch). Each value keeps
// its JSON text as sent (numbers are not reformatted, so 42 stays an integer
// and 42.0 a decimal); nested objects and arrays are compacted; null values
// are skipped, as ThingsBoard does. DeviceID is left zero for the caller.
//
// The returned values never alias payload: the caller may reuse its buffer.
func ParseTelemetry(payload []byte, now int64) ([]store.Record, error) {
	return parseTelemetry(payload, now, nil, nil)
}

// parseTelemetry is ParseTelemetry with the session's key cache, appending
// the records to dst (the session's work holds room for the usual one).
func parseTelemetry(payload []byte, now int64, keys keyCache, dst []store.Record) ([]store.Record, error) {
	p := parser{b: payload, arena: make([]byte, 0, len(payload)), keys: keys}
	p.ws()
	if p.i >= len(p.b) {
		return nil, errors.New("empty payload")
	}
	recs := dst
	switch p.b[p.i] {
	case '{':
		r, err := p.record(now)
		if err != nil {
			return nil, err
		}
		if len(r.Values) > 0 {
			recs = append(recs, r)
		}
	case '[':
		p.i++
		p.ws()
		if p.peek() == ']' {
			p.i++
			break
		}
		for {
			p.ws()
			if p.peek() != '{' {
				return nil, p.errf("array element is not an object")
			}
			r, err := p.record(now)
			if err != nil {
				return nil, err
			}
			if len(r.Values) > 0 {
				recs = append(recs, r)
			}
			p.ws()
			c := p.peek()
			p.i++
			if c == ']' {
				break
			}
			if c != ',' {
				return nil, p.errf("expected , or ] in array")
			}
		}
	default:
		return nil, p.errf("telemetry must be an object or an array of objects")
	}
	p.ws()
	if p.i != len(p.b) {
		return nil, p.errf("trailing data after JSON value")
	}
	return recs, nil
}

// ParseAttributes types a flat attributes object (client attributes
// publish) with the same value rules as ParseTelemetry.
func ParseAttributes(payload []byte) ([]store.KV, error) {
	return parseAttributes(payload, nil)
}

func parseAttributes(payload []byte, keys keyCache) ([]store.KV, error) {
	p := parser{b: payload, arena: make([]byte, 0, len(payload)), keys: keys}
	p.ws()
	if p.peek() != '{' {
		return nil, p.errf("attributes must be a JSON object")
	}
	fields, err := p.object()
	if err != nil {
		return nil, err
	}
	p.ws()
	if p.i != len(p.b) {
		return nil, p.errf("trailing data after JSON value")
	}
	return p.kvs(fields)
}

// field is one member of a parsed object: its decoded key and the extent of
// its value in the input.
type field struct {
	key        string
	start, end int
	kind       byte // 'o' object, 'a' array, 's' string, 'n' number, 't' true, 'f' false, 'z' null
}

// parser is a small single-pass JSON scanner. It exists (rather than
// encoding/json into maps) to keep key order, keep the exact text of each
// value, and avoid reflection on the hot telemetry path. It never recurses,
// so deep nesting cannot exhaust the stack.
type parser struct {
	b     []byte
	i     int
	arena []byte // backing store of the returned values, one allocation per payload
	keys  keyCache
	// fbuf backs the fields of the object being parsed: a telemetry
	// object rarely has more, and then parsing it grows no slice.
	fbuf [8]field
}

// keyCache holds the key strings one device has sent. A device sends the
// same few keys in every message; with the cache, parsing them allocates
// nothing. It belongs to one session's reading goroutine (no lock) and
// stops growing at maxCachedKeys, so a device inventing keys costs no
// more than without it.
type keyCache map[string]string

const maxCachedKeys = 64

func (c keyCache) intern(b []byte) string {
	if s, ok := c[string(b)]; ok {
		return s
	}
	s := string(b)
	if c != nil && len(c) < maxCachedKeys {
		c[s] = s
	}
	return s
}

func (p *parser) peek() byte {
	if p.i < len(p.b) {
		return p.b[p.i]
	}
	return 0
}

func (p *parser) errf(format string, a ...any) error {
	return fmt.Errorf("invalid payload at offset %d: %s", p.i, fmt.Sprintf(format, a...))
}

func (p *parser) ws() {
	for p.i < len(p.b) {
		switch p.b[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

// record parses one object at p.i: either the {"ts":..,"values":{..}} form
// (ThingsBoard's rule: only when both keys are present) or plain values.
func (p *parser) record(now int64) (store.Record, error) {
	fields, err := p.object()
	if err != nil {
		return store.Record{}, err
	}
	var ts, values *field
	for i := range fields {
		switch fields[i].key {
		case "ts":
			ts = &fields[i]
		case "values":
			values = &fields[i]
		}
	}
	if ts == nil || values == nil {
		kv, err := p.kvs(fields)
		return store.Record{TS: now, Values: kv}, err
	}
	if ts.kind != 'n' {
		return store.Record{}, errors.New("invalid payload: ts must be a number of milliseconds")
	}
	t, err := strconv.ParseInt(string(p.b[ts.start:ts.end]), 10, 64)
	if err != nil || t < 0 {
		return store.Record{}, fmt.Errorf("invalid payload: ts %q is not a non-negative integer", p.b[ts.start:ts.end])
	}
	if values.kind != 'o' {
		return store.Record{}, errors.New("invalid payload: values must be an object")
	}
	sub := parser{b: p.b[:values.end], i: values.start, arena: p.arena, keys: p.keys}
	vf, err := sub.object()
	if err != nil {
		return store.Record{}, err
	}
	kv, err := sub.kvs(vf)
	p.arena = sub.arena
	return store.Record{TS: t, Values: kv}, err
}

// kvs turns fields into key/values: null skipped, the last duplicate key
// wins, nested JSON compacted.
func (p *parser) kvs(fields []field) ([]store.KV, error) {
	var seen map[string]int
	if len(fields) > 16 {
		seen = make(map[string]int, len(fields))
	}
	out := make([]store.KV, 0, len(fields))
	for _, f := range fields {
		if f.kind == 'z' {
			continue
		}
		if f.key == "" {
			return nil, errors.New("invalid payload: empty key")
		}
		start := len(p.arena)
		raw := p.b[f.start:f.end]
		if f.kind == 'o' || f.kind == 'a' {
			var buf bytes.Buffer
			if err := json.Compact(&buf, raw); err != nil {
				return nil, fmt.Errorf("invalid payload: value of %q: %w", f.key, err)
			}
			if err := nestedNumbersInRange(buf.Bytes()); err != nil {
				return nil, fmt.Errorf("invalid payload: value of %q: %w", f.key, err)
			}
			p.arena = append(p.arena, buf.Bytes()...)
		} else {
			p.arena = append(p.arena, raw...)
		}
		v := json.RawMessage(p.arena[start:len(p.arena):len(p.arena)])
		idx := -1
		if seen != nil {
			if j, ok := seen[f.key]; ok {
				idx = j
			}
		} else {
			for j := range out {
				if out[j].Key == f.key {
					idx = j
					break
				}
			}
		}
		if idx >= 0 {
			out[idx].Value = v
			continue
		}
		if seen != nil {
			seen[f.key] = len(out)
		}
		out = append(out, store.KV{Key: f.key, Value: v})
	}
	return out, nil
}

// object parses the object at p.i and leaves p.i after its closing brace.
func (p *parser) object() ([]field, error) {
	if p.peek() != '{' {
		return nil, p.errf("expected object")
	}
	p.i++
	fields := p.fbuf[:0]
	p.ws()
	if p.peek() == '}' {
		p.i++
		return fields, nil
	}
	for {
		p.ws()
		if p.peek() != '"' {
			return nil, p.errf("expected string key")
		}
		ks := p.i
		if err := p.str(); err != nil {
			return nil, err
		}
		key, err := p.decodeKey(p.b[ks:p.i])
		if err != nil {
			return nil, p.errf("bad key: %v", err)
		}
		p.ws()
		if p.peek() != ':' {
			return nil, p.errf("expected : after key")
		}
		p.i++
		p.ws()
		start := p.i
		kind, err := p.value()
		if err != nil {
			return nil, err
		}
		fields = append(fields, field{key: key, start: start, end: p.i, kind: kind})
		p.ws()
		c := p.peek()
		p.i++
		if c == '}' {
			return fields, nil
		}
		if c != ',' {
			p.i--
			return nil, p.errf("expected , or } in object")
		}
	}
}

func (p *parser) decodeKey(raw []byte) (string, error) {
	if bytes.IndexByte(raw, '\\') < 0 {
		return p.keys.intern(raw[1 : len(raw)-1]), nil
	}
	var s string
	err := json.Unmarshal(raw, &s)
	return s, err
}

// value skips one JSON value and tells its kind. Objects and arrays are
// only delimited here (brackets matched, strings skipped); their full
// validation happens when they are compacted.
func (p *parser) value() (byte, error) {
	switch c := p.peek(); {
	case c == '"':
		return 's', p.str()
	case c == '{' || c == '[':
		return p.nested()
	case c == '-' || (c >= '0' && c <= '9'):
		return 'n', p.number()
	case c == 't':
		return 't', p.lit("true")
	case c == 'f':
		return 'f', p.lit("false")
	case c == 'n':
		return 'z', p.lit("null")
	case c == 0 && p.i >= len(p.b):
		return 0, p.errf("unexpected end of payload")
	default:
		return 0, p.errf("unexpected character %q", c)
	}
}

func (p *parser) lit(s string) error {
	if !bytes.HasPrefix(p.b[p.i:], []byte(s)) {
		return p.errf("bad literal")
	}
	p.i += len(s)
	return nil
}

// str skips a string at p.i, checking escapes, control characters and UTF-8.
func (p *parser) str() error {
	p.i++ // opening quote
	start := p.i
	for p.i < len(p.b) {
		c := p.b[p.i]
		switch {
		case c == '"':
			if !utf8.Valid(p.b[start:p.i]) {
				return p.errf("string is not valid UTF-8")
			}
			p.i++
			return nil
		case c == '\\':
			p.i++
			if p.i >= len(p.b) {
				return p.errf("unterminated escape")
			}
			switch p.b[p.i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				p.i++
			case 'u':
				if p.i+5 > len(p.b) {
					return p.errf("short \\u escape")
				}
				for _, h := range p.b[p.i+1 : p.i+5] {
					if !isHex(h) {
						return p.errf("bad \\u escape")
					}
				}
				p.i += 5
			default:
				return p.errf("bad escape")
			}
		case c < 0x20:
			return p.errf("control character in string")
		default:
			p.i++
		}
	}
	return p.errf("unterminated string")
}

func isHex(c byte) bool {
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')
}

func (p *parser) digits() int {
	n := 0
	for p.i < len(p.b) && p.b[p.i] >= '0' && p.b[p.i] <= '9' {
		p.i++
		n++
	}
	return n
}

// number checks the JSON number grammar.
func (p *parser) number() error {
	start := p.i
	if err := p.numberGrammar(); err != nil {
		return err
	}
	if err := numberInRange(p.b[start:p.i]); err != nil {
		return p.errf("%v", err)
	}
	return nil
}

func (p *parser) numberGrammar() error {
	if p.peek() == '-' {
		p.i++
	}
	switch c := p.peek(); {
	case c == '0':
		p.i++
	case c >= '1' && c <= '9':
		p.digits()
	default:
		return p.errf("bad number")
	}
	if p.peek() == '.' {
		p.i++
		if p.digits() == 0 {
			return p.errf("bad number fraction")
		}
	}
	if c := p.peek(); c == 'e' || c == 'E' {
		p.i++
		if c := p.peek(); c == '+' || c == '-' {
			p.i++
		}
		if p.digits() == 0 {
			return p.errf("bad number exponent")
		}
	}
	return nil
}

// nested skips an object or array by bracket matching, without recursion.
func (p *parser) nested() (byte, error) {
	kind := byte('o')
	if p.b[p.i] == '[' {
		kind = 'a'
	}
	var stack []byte
	for p.i < len(p.b) {
		switch c := p.b[p.i]; c {
		case '"':
			if err := p.str(); err != nil {
				return 0, err
			}
			continue
		case '{', '[':
			stack = append(stack, c)
		case '}', ']':
			if len(stack) == 0 {
				return 0, p.errf("unbalanced brackets")
			}
			open := stack[len(stack)-1]
			if (open == '{') != (c == '}') {
				return 0, p.errf("mismatched brackets")
			}
			stack = stack[:len(stack)-1]
			if len(stack) == 0 {
				p.i++
				return kind, nil
			}
		}
		p.i++
	}
	return 0, p.errf("unterminated %s", map[byte]string{'o': "object", 'a': "array"}[kind])
}
