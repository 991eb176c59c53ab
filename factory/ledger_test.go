package factory

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestBoardTravellerAndRecord(t *testing.T) {
	ca := devCA(t)
	out := t.TempDir()
	ctx := context.Background()
	l, err := OpenLedger(filepath.Join(out, LedgerFile))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	// Assembly and flashing happen before the SN exists.
	if err := l.RecordBoard(ctx, "MAC-01", StationAssembly, Pass, "bob", "B7", "torque ok"); err != nil {
		t.Fatal(err)
	}
	if err := l.RecordBoard(ctx, "MAC-01", StationFlashing, Pass, "bob", "B7", ""); err != nil {
		t.Fatal(err)
	}
	if ev, err := l.Traveller(ctx, "MAC-01"); err != nil || len(ev) != 2 {
		t.Fatalf("board traveller: %v, %v", ev, err)
	}
	if err := l.RecordStation(ctx, "SN-000001", StationTest, Pass, "", ""); !errors.Is(err, ErrUnknownUnit) {
		t.Fatalf("recording an unknown SN: %v", err)
	}
	units, err := Inject(ctx, InjectOptions{CADir: ca, Out: out, Board: "MAC-01", Batch: "B7", Operator: "cy"})
	if err != nil {
		t.Fatal(err)
	}
	sn := units[0].SN
	// A board links to one SN only.
	if _, err := Inject(ctx, InjectOptions{CADir: ca, Out: out, Board: "MAC-01"}); !errors.Is(err, ErrBoardLinked) {
		t.Fatalf("second link of a board: %v", err)
	}
	if err := l.RecordStation(ctx, sn, StationTest, Fail, "dee", "no telemetry"); err != nil {
		t.Fatal(err)
	}
	// An event recorded against the board after linking lands on the unit.
	if err := l.RecordBoard(ctx, "MAC-01", StationTest, Pass, "dee", "", "retest"); err != nil {
		t.Fatal(err)
	}
	ev, err := l.Traveller(ctx, sn)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ev {
		got = append(got, e.Station.String()+":"+string(e.Result))
	}
	want := "assembly:pass flashing:pass injection:pass test:fail test:pass"
	if strings.Join(got, " ") != want {
		t.Errorf("traveller %q, want %q", strings.Join(got, " "), want)
	}
	u, err := l.Unit(ctx, sn)
	if err != nil {
		t.Fatal(err)
	}
	if u.Board != "MAC-01" || u.LastStation != StationTest || u.LastResult != Pass {
		t.Errorf("unit %+v", u)
	}
	if err := l.RecordStation(ctx, sn, Station(9), Pass, "", ""); err == nil {
		t.Error("station 9 accepted")
	}
}

func TestReport(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 8, 0, 0, 0, time.UTC)
	ev := func(sn string, st Station, r Result, min int) Event {
		return Event{SN: sn, Station: st, Result: r, Time: t0.Add(time.Duration(min) * time.Minute)}
	}
	evs := []Event{
		ev("A", StationTest, Pass, 0),
		ev("B", StationTest, Fail, 5),
		ev("C", StationTest, Fail, 10),
		ev("C", StationTest, Pass, 15), // retest passes
		// A lunch break: 60 minutes not counted.
		ev("D", StationTest, Pass, 75),
		{Board: "X", Station: StationAssembly, Result: Pass, Time: t0},
	}
	st := report(evs)
	test := st[StationTest-1]
	if test.UnitsIn != 4 || test.UnitsOut != 3 || test.Failed != 1 || test.Passes != 3 || test.Fails != 2 {
		t.Errorf("test station %+v", test)
	}
	if test.Yield != 75 || test.FirstPass != 50 {
		t.Errorf("yield %.1f first pass %.1f, want 75 and 50", test.Yield, test.FirstPass)
	}
	if test.Active != 15*time.Minute || test.PerHour != 12 {
		t.Errorf("active %v rate %.1f, want 15m and 12/h", test.Active, test.PerHour)
	}
	if a := st[StationAssembly-1]; a.UnitsIn != 1 || a.UnitsOut != 1 || a.PerHour != 0 {
		t.Errorf("assembly %+v", a)
	}
	var b bytes.Buffer
	if err := WriteReport(&b, st); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "75.0%") || !strings.Contains(b.String(), "4 test") {
		t.Errorf("report:\n%s", b.String())
	}
}

func TestReserveWithoutRunDies(t *testing.T) {
	// A run that ends normally with leftover reservations abandons them at
	// once, so they never stay reserved.
	dir := t.TempDir()
	ctx := context.Background()
	l, err := OpenLedger(filepath.Join(dir, LedgerFile))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	r, err := l.startRun()
	if err != nil {
		t.Fatal(err)
	}
	rs, err := l.reserveNext(ctx, r, 3, DefaultSNFormat, dir, "op", "b")
	if err != nil || len(rs) != 3 {
		t.Fatal(rs, err)
	}
	// Another opener must not take a live run's reservations.
	l2, err := OpenLedger(filepath.Join(dir, LedgerFile))
	if err != nil {
		t.Fatal(err)
	}
	l2.Close()
	if us, _ := l.Units(ctx, StateReserved); len(us) != 3 {
		t.Fatalf("%d reserved after another open, want 3", len(us))
	}
	if err := l.endRun(ctx, r); err != nil {
		t.Fatal(err)
	}
	us, _ := l.Units(ctx, StateAbandoned)
	if len(us) != 3 {
		t.Fatalf("%d abandoned, want 3", len(us))
	}
	if _, err := os.Stat(r.lock.Name()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("run lock left behind: %v", err)
	}
	ev, _ := l.Traveller(ctx, us[0].SN)
	if len(ev) != 1 || ev[0].Result != Fail || !strings.Contains(ev[0].Detail, "abandoned") {
		t.Errorf("abandoned unit's traveller %+v", ev)
	}
}

func TestValidSN(t *testing.T) {
	for _, sn := range []string{"SN-000001", "ABC_1.2"} {
		if err := validSN(sn); err != nil {
			t.Errorf("%q refused: %v", sn, err)
		}
	}
	for _, sn := range []string{"", ".", "..", "../x", "a/b", "a b", ".hidden", "-x", "x.abandoned", strings.Repeat("x", 65), "é"} {
		if err := validSN(sn); err == nil {
			t.Errorf("%q accepted", sn)
		}
	}
}

func FuzzParseProvInfo(f *testing.F) {
	f.Add([]byte(`{"service_name":"PROV_11770F","pop":"abcdefgh","sec2_username":"wifiprov"}`))
	f.Add([]byte(`{}`))
	f.Add([]byte(`[1,2]`))
	f.Add([]byte(`{"service_name":"` + strings.Repeat("x", 40) + `","pop":"p"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := ParseProvInfo(b)
		if err != nil {
			return
		}
		if p.ServiceName == "" || p.PoP == "" || len(p.ServiceName) > 29 {
			t.Fatalf("accepted %+v", p)
		}
		_ = p.QRPayload()
	})
}

func FuzzParseStation(f *testing.F) {
	for _, s := range []string{"1", "5", "label", "TEST", "0", "6", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		st, err := ParseStation(s)
		if err == nil && !st.Valid() {
			t.Fatalf("%q parsed to invalid station %d", s, st)
		}
	})
}

func TestLedgerPathWithURIChars(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a?b#c%20d")
	l, err := OpenLedger(filepath.Join(dir, LedgerFile))
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	if _, err := os.Stat(filepath.Join(dir, LedgerFile)); err != nil {
		t.Fatalf("ledger not at its path: %v", err)
	}
}

// TestSweepDeadRun plays a process that died between putting a unit's
// directory in place and recording it: its lock is released as the kernel
// would, and the next opener must abandon the SN and set the files aside.
func TestSweepDeadRun(t *testing.T) {
	out := t.TempDir()
	ctx := context.Background()
	l, err := OpenLedger(filepath.Join(out, LedgerFile))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	r, err := l.startRun()
	if err != nil {
		t.Fatal(err)
	}
	rs, err := l.reserveNext(ctx, r, 2, DefaultSNFormat, out, "op", "b")
	if err != nil {
		t.Fatal(err)
	}
	if err := writeUnitDir(filepath.Join(out, rs[0].sn), map[string][]byte{"a": []byte("x")}, nil); err != nil {
		t.Fatal(err)
	}
	os.Mkdir(stagingDir(filepath.Join(out, rs[1].sn)), 0o755)
	r.lock.Close() // the process is gone

	l2, err := OpenLedger(filepath.Join(out, LedgerFile))
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	for _, x := range rs {
		u, err := l2.Unit(ctx, x.sn)
		if err != nil || u.State != StateAbandoned {
			t.Errorf("%s: %+v, %v", x.sn, u, err)
		}
	}
	if _, err := os.Stat(filepath.Join(out, rs[0].sn)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("unrecorded unit directory still in place: %v", err)
	}
	if _, err := os.Stat(filepath.Join(out, rs[0].sn+".abandoned", "a")); err != nil {
		t.Errorf("unrecorded unit not set aside: %v", err)
	}
	if _, err := os.Stat(stagingDir(filepath.Join(out, rs[1].sn))); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("staging directory left: %v", err)
	}
	if _, err := os.Stat(r.lock.Name()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("dead run's lock file left: %v", err)
	}
}
