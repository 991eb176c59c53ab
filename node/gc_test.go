package node

import "testing"

func TestGCTarget(t *testing.T) {
	const small, large, huge = 8 << 20, 256 << 20, 1 << 30
	for _, c := range []struct {
		name              string
		current, quiet    int
		packets, hs       float64
		heap              uint64
		want, wantQuietAt int
	}{
		{"messages streaming, small heap", gcQuietPercent, 5, 50000, 0, small, gcStreamPercent, 0},
		{"messages streaming, large heap: the headroom", gcQuietPercent, 5, 50000, 0, large, 200, 0},
		{"messages streaming, huge heap", gcStreamPercent, 0, 50000, 0, huge, gcBusyPercent, 0},
		{"messages and a storm", gcStreamPercent, 0, 50000, 1500, large, gcBusyPercent, 0},
		{"connection storm, small heap", gcBusyPercent, 0, 100, 1500, small, gcLazyPercent, 0},
		{"connection storm, large heap", gcLazyPercent, 0, 100, 1500, large, gcBusyPercent, 0},
		{"first light interval keeps the target", gcLazyPercent, 0, 10, 1, small, gcLazyPercent, 1},
		{"third light interval goes quiet", gcLazyPercent, 2, 10, 1, small, gcQuietPercent, 3},
		{"quiet stays quiet", gcQuietPercent, 7, 0, 0, large, gcQuietPercent, 8},
	} {
		got, q := gcTarget(c.current, c.quiet, c.packets, c.hs, c.heap)
		if got != c.want || q != c.wantQuietAt {
			t.Errorf("%s: gcTarget = %d, quiet %d; want %d, quiet %d", c.name, got, q, c.want, c.wantQuietAt)
		}
	}
}
