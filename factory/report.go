package factory

import (
	"context"
	"fmt"
	"io"
	"sort"
	"text/tabwriter"
	"time"
)

// IdleGap is the longest pause between two events of a station that still
// counts as the station working; longer pauses (breaks, shifts, a line
// stop) are left out of its active time.
const IdleGap = 10 * time.Minute

// StationStats is one station's line of the report.
type StationStats struct {
	Station   Station
	UnitsIn   int           // units with at least one event at the station
	UnitsOut  int           // units whose latest result there is pass
	Failed    int           // units whose latest result there is fail
	Passes    int           // pass events, retests included
	Fails     int           // fail events
	Yield     float64       // UnitsOut / UnitsIn, in percent; 0 when no unit came in
	FirstPass float64       // percent of units that passed at their first attempt
	Active    time.Duration // time between events, pauses over IdleGap left out
	PerHour   float64       // UnitsOut per hour of Active; 0 when Active is under a second
}

// Report computes yield and throughput per station from the ledger's
// events. A unit is its SN, or its board id for events recorded before it
// had one.
func (l *Ledger) Report(ctx context.Context) ([]StationStats, error) {
	evs, err := l.Events(ctx)
	if err != nil {
		return nil, err
	}
	return report(evs), nil
}

// StationReport computes the report from events the caller holds (the
// server's copy of a ledger's events, for instance).
func StationReport(evs []Event) []StationStats { return report(evs) }

func report(evs []Event) []StationStats {
	out := make([]StationStats, 0, 5)
	for st := StationAssembly; st <= StationLabel; st++ {
		s := StationStats{Station: st}
		first := map[string]Result{}
		latest := map[string]Result{}
		var times []time.Time
		for _, e := range evs {
			if e.Station != st {
				continue
			}
			key := e.SN
			if key == "" {
				key = "board:" + e.Board
			}
			if _, ok := first[key]; !ok {
				first[key] = e.Result
			}
			latest[key] = e.Result
			if e.Result == Pass {
				s.Passes++
			} else {
				s.Fails++
			}
			times = append(times, e.Time)
		}
		s.UnitsIn = len(latest)
		firstPass := 0
		for k, r := range latest {
			if r == Pass {
				s.UnitsOut++
			} else {
				s.Failed++
			}
			if first[k] == Pass {
				firstPass++
			}
		}
		if s.UnitsIn > 0 {
			s.Yield = 100 * float64(s.UnitsOut) / float64(s.UnitsIn)
			s.FirstPass = 100 * float64(firstPass) / float64(s.UnitsIn)
		}
		sort.Slice(times, func(i, j int) bool { return times[i].Before(times[j]) })
		for i := 1; i < len(times); i++ {
			if d := times[i].Sub(times[i-1]); d <= IdleGap {
				s.Active += d
			}
		}
		// Below a second the rate is noise, not throughput.
		if s.Active >= time.Second {
			s.PerHour = float64(s.UnitsOut) / s.Active.Hours()
		}
		out = append(out, s)
	}
	return out
}

// WriteReport prints the report as a table.
func WriteReport(w io.Writer, stats []StationStats) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "STATION\tIN\tOUT\tFAILED\tPASS EV\tFAIL EV\tYIELD\tFIRST PASS\tACTIVE\tUNITS/H")
	for _, s := range stats {
		yield, fp, rate := "-", "-", "-"
		if s.UnitsIn > 0 {
			yield = fmt.Sprintf("%.1f%%", s.Yield)
			fp = fmt.Sprintf("%.1f%%", s.FirstPass)
		}
		if s.PerHour > 0 {
			rate = fmt.Sprintf("%.0f", s.PerHour)
		}
		fmt.Fprintf(tw, "%d %s\t%d\t%d\t%d\t%d\t%d\t%s\t%s\t%s\t%s\n", int(s.Station), s.Station, s.UnitsIn, s.UnitsOut, s.Failed,
			s.Passes, s.Fails, yield, fp, s.Active.Round(time.Second), rate)
	}
	return tw.Flush()
}
