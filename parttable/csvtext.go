package parttable

import (
	"bytes"
	"errors"
	"fmt"
	"sort"
	"strings"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"
)

// The helpers here reproduce the Python string and integer rules that
// gen_esp32part.py leans on (str.splitlines, str.strip, int(x, 0),
// os.path.expandvars), because which CSVs are accepted, and what they mean,
// follows from them.

// maxValue bounds parsed numbers. Anything larger cannot end up in a 32-bit
// field of a valid table, so refusing it early changes no accepted table.
const maxValue = 1 << 62

type keywords struct {
	types    map[string]int64
	subtypes map[int64]map[string]int64
}

func builtinKeywords() keywords {
	kw := keywords{
		types: map[string]int64{
			"bootloader": int64(TypeBootloader), "partition_table": int64(TypePartitionTable),
			"app": int64(TypeApp), "data": int64(TypeData),
		},
		subtypes: map[int64]map[string]int64{
			int64(TypeBootloader):     {"primary": 0x00, "ota": 0x01, "recovery": 0x02},
			int64(TypePartitionTable): {"primary": 0x00, "ota": 0x01},
			int64(TypeApp):            {"factory": 0x00, "test": 0x20, "tee_0": 0x30, "tee_1": 0x31},
			int64(TypeData): {
				"ota": 0x00, "phy": 0x01, "nvs": 0x02, "coredump": 0x03, "nvs_keys": 0x04,
				"efuse": 0x05, "undefined": 0x06, "esphttpd": 0x80, "fat": 0x81,
				"spiffs": 0x82, "littlefs": 0x83, "tee_ota": 0x90,
			},
		},
	}
	for i := 0; i < 16; i++ {
		kw.subtypes[int64(TypeApp)][fmt.Sprintf("ota_%d", i)] = int64(SubtypeOTA0) + int64(i)
	}
	return kw
}

// newKeywords adds extra subtypes given as "type,name,hexvalue", refusing a
// value already named for that type.
func newKeywords(extra []string) (keywords, error) {
	kw := builtinKeywords()
	for _, x := range extra {
		f := strings.Split(x, ",")
		for i := range f {
			f[i] = pyStrip(f[i])
		}
		if len(f) < 3 {
			return kw, fmt.Errorf("parttable: extra subtype %q is not \"type,name,value\"", x)
		}
		typ, ok := kw.types[f[0]]
		if !ok {
			return kw, fmt.Errorf("parttable: extra subtype %q: invalid partition type %q", x, f[0])
		}
		v, err := parseHex(f[2])
		if err != nil {
			return kw, fmt.Errorf("parttable: extra subtype %q: %w", x, err)
		}
		for _, known := range kw.subtypes[typ] {
			if known == v {
				return kw, fmt.Errorf("parttable: extra subtype %q: duplicate value in partition subtype", x)
			}
		}
		kw.subtypes[typ][f[1]] = v
	}
	return kw, nil
}

func (kw keywords) typeName(t int64) string {
	for name, v := range kw.types {
		if v == t {
			return name
		}
	}
	return fmt.Sprint(t)
}

func (kw keywords) subtypeName(t, st int64) string {
	// Values are unique per type, so the first match is the only one.
	for name, v := range kw.subtypes[t] {
		if v == st {
			return name
		}
	}
	return fmt.Sprint(st)
}

// parseInt is the tool's parse_int: trailing k/m multiply by 1024 or
// 1024*1024 (repeatedly, "1kk" is 1 MiB), the rest is int(x, 0) or, failing
// that, a keyword (case-insensitive) when keywords are given.
func parseInt(v string, kw map[string]int64) (int64, error) {
	rs := []rune(v)
	mult := int64(1)
	for len(rs) > 0 {
		var m int64
		switch unicode.ToLower(rs[len(rs)-1]) {
		case 'k':
			m = 1024
		case 'm':
			m = 1024 * 1024
		default:
			goto base
		}
		if mult > maxValue/m {
			return 0, fmt.Errorf("value %q is out of range", v)
		}
		mult *= m
		rs = rs[:len(rs)-1]
	}
base:
	s := string(rs)
	n, ok, err := pyInt(s, 0)
	if err != nil {
		return 0, fmt.Errorf("value %q: %w", v, err)
	}
	if !ok {
		if len(kw) == 0 {
			return 0, fmt.Errorf("invalid field value %q", s)
		}
		var found bool
		if n, found = kw[pyLower(s)]; !found {
			names := make([]string, 0, len(kw))
			for k := range kw {
				names = append(names, k)
			}
			sort.Strings(names)
			return 0, fmt.Errorf("value %q is not valid, known keywords: %s", s, strings.Join(names, ", "))
		}
	}
	if n > maxValue/mult || n < -maxValue/mult {
		return 0, fmt.Errorf("value %q is out of range", v)
	}
	return n * mult, nil
}

func parseHex(s string) (int64, error) {
	n, ok, err := pyInt(s, 16)
	if err != nil {
		return 0, err
	}
	if !ok {
		return 0, fmt.Errorf("invalid hex value %q", s)
	}
	return n, nil
}

var errRange = errors.New("number out of range")

// pyInt is Python's int(s, base) for base 0 or 16 over ASCII digits: ok is
// false when Python would raise ValueError. Non-ASCII digits, which Python
// also accepts, are refused.
func pyInt(s string, base int64) (n int64, ok bool, err error) {
	s = pyStrip(s)
	neg := false
	if s != "" && (s[0] == '+' || s[0] == '-') {
		neg = s[0] == '-'
		s = s[1:]
	}
	prefixed := false
	if len(s) >= 2 && s[0] == '0' {
		p := s[1] | 0x20
		switch {
		case p == 'x' && (base == 0 || base == 16):
			base, prefixed = 16, true
		case p == 'o' && base == 0:
			base, prefixed = 8, true
		case p == 'b' && base == 0:
			base, prefixed = 2, true
		}
		if prefixed {
			s = s[2:]
			// An underscore may follow the prefix: 0x_ff is valid.
			if s != "" && s[0] == '_' {
				s = s[1:]
			}
		}
	}
	leadingZero := base == 0 && s != "" && s[0] == '0'
	if base == 0 {
		base = 10
	}
	if s == "" {
		return 0, false, nil
	}
	prevUnderscore := true // no underscore first
	nonZero := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '_' {
			if prevUnderscore {
				return 0, false, nil
			}
			prevUnderscore = true
			continue
		}
		prevUnderscore = false
		var d int64
		switch {
		case c >= '0' && c <= '9':
			d = int64(c - '0')
		case c|0x20 >= 'a' && c|0x20 <= 'z':
			d = int64(c|0x20-'a') + 10
		default:
			return 0, false, nil
		}
		if d >= base {
			return 0, false, nil
		}
		if d != 0 {
			nonZero = true
		}
		if n > (maxValue-d)/base {
			err = errRange
		} else {
			n = n*base + d
		}
	}
	if prevUnderscore {
		return 0, false, nil
	}
	// Python refuses decimal literals like "010" but takes "00".
	if leadingZero && nonZero {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	if neg {
		n = -n
	}
	return n, true, nil
}

// pyIsSpace is str.isspace for one character: Go's unicode.IsSpace plus the
// ASCII information separators that Python counts as whitespace.
func pyIsSpace(r rune) bool { return unicode.IsSpace(r) || (r >= 0x1c && r <= 0x1f) }

func pyStrip(s string) string { return strings.TrimFunc(s, pyIsSpace) }

// pyLower is str.lower for keyword lookups; the one difference from Go that
// could turn a non-keyword into a keyword is U+0130, which Python lowers to
// two characters.
func pyLower(s string) string {
	return strings.ToLower(strings.ReplaceAll(s, "\u0130", "i\u0307"))
}

// splitLines is str.splitlines: a line ends at \n, \r, \r\n, \v, \f,
// \x1c-\x1e, U+0085, U+2028 or U+2029, and a final break adds no line.
func splitLines(s string) []string {
	var lines []string
	start := 0
	for i := 0; i < len(s); {
		r, w := utf8.DecodeRuneInString(s[i:])
		switch r {
		case '\n', '\v', '\f', 0x1c, 0x1d, 0x1e, 0x85, 0x2028, 0x2029:
			lines = append(lines, s[start:i])
			i += w
			start = i
			continue
		case '\r':
			lines = append(lines, s[start:i])
			i += w
			if i < len(s) && s[i] == '\n' {
				i++
			}
			start = i
			continue
		}
		i += w
	}
	if start < len(s) {
		lines = append(lines, s[start:])
	}
	return lines
}

func isWordByte(c byte) bool {
	return c == '_' || (c >= '0' && c <= '9') || (c|0x20 >= 'a' && c|0x20 <= 'z')
}

// expandVars is os.path.expandvars on POSIX: $NAME and ${NAME} are replaced
// when getenv knows them and left alone otherwise.
func expandVars(s string, getenv func(string) (string, bool)) string {
	if !strings.Contains(s, "$") {
		return s
	}
	var b strings.Builder
	i := 0
	for {
		j := strings.IndexByte(s[i:], '$')
		if j < 0 {
			b.WriteString(s[i:])
			return b.String()
		}
		j += i
		b.WriteString(s[i:j])
		var name string
		end := j + 1
		switch {
		case end < len(s) && s[end] == '{':
			k := strings.IndexByte(s[end:], '}')
			if k < 0 {
				b.WriteByte('$')
				i = j + 1
				continue
			}
			name, end = s[end+1:end+k], end+k+1
		case end < len(s) && isWordByte(s[end]):
			for end < len(s) && isWordByte(s[end]) {
				end++
			}
			name = s[j+1 : end]
		default:
			b.WriteByte('$')
			i = j + 1
			continue
		}
		if v, ok := lookup(getenv, name); ok {
			b.WriteString(v)
		} else {
			b.WriteString(s[j:end])
		}
		i = end
	}
}

func lookup(getenv func(string) (string, bool), name string) (string, bool) {
	if getenv == nil {
		return "", false
	}
	return getenv(name)
}

// leadingVar reports a $NAME left unexpanded at the very start of a line,
// which the tool refuses (it checks nowhere else).
func leadingVar(s string) (string, bool) {
	if len(s) < 2 || s[0] != '$' || !(s[1] == '_' || (s[1]|0x20 >= 'a' && s[1]|0x20 <= 'z')) {
		return "", false
	}
	end := 2
	for end < len(s) && isWordByte(s[end]) {
		end++
	}
	return s[1:end], true
}

// decodeText follows the tool: a byte order mark selects UTF-8, UTF-16 or
// UTF-32, anything else must be UTF-8.
func decodeText(b []byte) (string, error) {
	switch {
	case bytes.HasPrefix(b, []byte{0xEF, 0xBB, 0xBF}):
		b = b[3:]
	case bytes.HasPrefix(b, []byte{0xFF, 0xFE}):
		return decodeUTF16(b[2:], false)
	case bytes.HasPrefix(b, []byte{0xFE, 0xFF}):
		return decodeUTF16(b[2:], true)
	case bytes.HasPrefix(b, []byte{0x00, 0x00, 0xFE, 0xFF}):
		return decodeUTF32BE(b[4:])
	}
	if !utf8.Valid(b) {
		return "", errors.New("parttable: csv is not valid utf-8")
	}
	return string(b), nil
}

func decodeUTF16(b []byte, bigEndian bool) (string, error) {
	if len(b)%2 != 0 {
		return "", errors.New("parttable: utf-16 csv has an odd length")
	}
	u := make([]uint16, len(b)/2)
	for i := range u {
		if bigEndian {
			u[i] = uint16(b[2*i])<<8 | uint16(b[2*i+1])
		} else {
			u[i] = uint16(b[2*i+1])<<8 | uint16(b[2*i])
		}
	}
	for i := 0; i < len(u); i++ {
		switch {
		case u[i] >= 0xD800 && u[i] < 0xDC00 && i+1 < len(u) && u[i+1] >= 0xDC00 && u[i+1] < 0xE000:
			i++
		case u[i] >= 0xD800 && u[i] < 0xE000:
			// utf16.Decode would turn it into U+FFFD; Python refuses it.
			return "", errors.New("parttable: utf-16 csv has a lone surrogate")
		}
	}
	rs := utf16.Decode(u)
	return string(rs), nil
}

func decodeUTF32BE(b []byte) (string, error) {
	if len(b)%4 != 0 {
		return "", errors.New("parttable: utf-32 csv length is not a multiple of 4")
	}
	var sb strings.Builder
	for i := 0; i < len(b); i += 4 {
		r := rune(uint32(b[i])<<24 | uint32(b[i+1])<<16 | uint32(b[i+2])<<8 | uint32(b[i+3]))
		if !utf8.ValidRune(r) {
			return "", errors.New("parttable: utf-32 csv has an invalid character")
		}
		sb.WriteRune(r)
	}
	return sb.String(), nil
}
