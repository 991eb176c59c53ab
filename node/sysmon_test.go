package node

import (
	"slices"
	"testing"
)

func TestSysmonEnv(t *testing.T) {
	for _, tc := range []struct {
		in, want []string
	}{
		{[]string{"HOME=/h"}, []string{"HOME=/h", "GODEBUG=" + sysmonGODEBUG}},
		{[]string{"GODEBUG=", "A=b"}, []string{"GODEBUG=" + sysmonGODEBUG, "A=b"}},
		{[]string{"GODEBUG=gctrace=1"}, []string{"GODEBUG=gctrace=1," + sysmonGODEBUG}},
		// Already tuned (the re-executed process), or the operator's own.
		{[]string{"GODEBUG=" + sysmonGODEBUG}, nil},
		{[]string{"GODEBUG=gctrace=1, schedtrace=0"}, nil},
		{[]string{"GODEBUG=schedtrace=1000,scheddetail=1"}, nil},
	} {
		if got := sysmonEnv(tc.in); !slices.Equal(got, tc.want) {
			t.Errorf("sysmonEnv(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
