package parttable

import "testing"

// TestParseIntLikeTheTool pins parse_int's results, each taken from
// gen_esp32part.py v1.5 itself (error means it raised).
func TestParseIntLikeTheTool(t *testing.T) {
	const bad = -1 << 63
	for _, c := range []struct {
		in   string
		kw   map[string]int64
		want int64
	}{
		{"0x_1000", nil, 4096}, {"1_000", nil, 1000}, {"010", nil, bad}, {"00", nil, 0}, {"0_0", nil, 0},
		{"0o10", nil, 8}, {"0b101", nil, 5}, {"1kk", nil, 1 << 20}, {"-0x1000", nil, -4096}, {"4 k", nil, 4096},
		{"0x", nil, bad}, {"1__0", nil, bad}, {"_1", nil, bad}, {"1_", nil, bad}, {"+5", nil, 5}, {"0X1F", nil, 31},
		{"1K", nil, 1024}, {"1M", nil, 1 << 20}, {"1mk", nil, 1 << 30}, {"0b", nil, bad}, {"0xg", nil, bad},
		{"1.5K", nil, bad}, {"0x10\u212a", nil, 16384}, {"0x1000 ", nil, 4096}, {"1e3", nil, bad},
		{"DATA", builtinKeywords().types, 1}, {"Data", builtinKeywords().types, 1}, {"appk", builtinKeywords().types, 0},
		{"datam", builtinKeywords().types, 1 << 20}, {"nvs_\u212aeys", builtinKeywords().types, bad},
		{"nvs_\u212aeys", builtinKeywords().subtypes[1], 4},
	} {
		got, err := parseInt(c.in, c.kw)
		if c.want == bad {
			if err == nil {
				t.Errorf("%q: got %d, the tool refuses it", c.in, got)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("%q: got %d, %v, want %d", c.in, got, err, c.want)
		}
	}
}
