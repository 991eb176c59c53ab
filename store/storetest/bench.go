package storetest

import (
	"context"
	"fmt"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/thingline/thingline/store"
)

// BenchAppend measures durably acknowledged telemetry messages per second:
// many goroutines (like the gateway's sessions) each append one record of
// three keys at a time, spread over devices. It reports msgs/s. start, if
// not nil, is called when the setup is done and the measurement begins.
func BenchAppend(b *testing.B, s store.Store, devices, parallelism int, start func()) {
	ctx := context.Background()
	ids := make([]int64, devices)
	for i := range ids {
		d, _, _, err := s.EnsureDevice(ctx, store.Device{Name: fmt.Sprintf("bench-%d", i)}, store.Credential{}, nil)
		if err != nil {
			b.Fatal(err)
		}
		ids[i] = d.ID
	}
	var n atomic.Int64
	t0 := time.Now().UnixMilli()
	b.SetParallelism(parallelism)
	if start != nil {
		start()
	}
	cpu0 := processCPU()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := n.Add(1)
			r := store.Record{DeviceID: ids[i%int64(devices)], TS: t0 + i/int64(devices), Values: []store.KV{
				{Key: "temperature", Value: raw(strconv.FormatFloat(20+float64(i%100)/10, 'f', 1, 64))},
				{Key: "humidity", Value: raw(strconv.FormatInt(40+i%30, 10))},
				{Key: "battery", Value: raw(`3.31`)},
			}}
			if err := s.AppendTelemetry(ctx, []store.Record{r}); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
	// CPU per message says more than msgs/s on a shared machine: with the
	// load of other processes, the wall-clock rate mostly measures them.
	b.ReportMetric(float64((processCPU()-cpu0).Nanoseconds())/1e3/float64(b.N), "cpu-µs/msg")
}

// BenchQuery fills a store with points of 3 keys, one every second for
// each of devices devices, then measures the dashboard's two reads: the
// newest 100 points of one key, and the latest values. settle, if not nil,
// runs after loading (e.g. the statistics a running database would have).
func BenchQuery(b *testing.B, s store.Store, devices, perDevice int, settle func()) {
	ctx := context.Background()
	ids := make([]int64, devices)
	for i := range ids {
		d, _, _, err := s.EnsureDevice(ctx, store.Device{Name: fmt.Sprintf("q-%d", i)}, store.Credential{}, nil)
		if err != nil {
			b.Fatal(err)
		}
		ids[i] = d.ID
	}
	t0 := time.Now().Add(-time.Duration(perDevice) * time.Second).UnixMilli()
	var recs []store.Record
	for j := range perDevice {
		for _, id := range ids {
			recs = append(recs, store.Record{DeviceID: id, TS: t0 + int64(j)*1000, Values: []store.KV{
				{Key: "temperature", Value: raw(strconv.Itoa(20 + j%10))},
				{Key: "humidity", Value: raw(strconv.Itoa(40 + j%30))},
				{Key: "battery", Value: raw(`3.31`)},
			}})
			if len(recs) == 2000 {
				if err := s.AppendTelemetry(ctx, recs); err != nil {
					b.Fatal(err)
				}
				recs = recs[:0]
			}
		}
	}
	if err := s.AppendTelemetry(ctx, recs); err != nil {
		b.Fatal(err)
	}
	if c, ok := s.(Compacter); ok {
		if err := c.Compact(ctx); err != nil {
			b.Fatal(err)
		}
	}
	if settle != nil {
		settle()
	}
	b.Run("newest100", func(b *testing.B) {
		i := 0
		for b.Loop() {
			i++
			got, err := s.QueryTelemetry(ctx, store.TelemetryQuery{DeviceID: ids[i%devices], Keys: []string{"temperature"}, To: time.Now().UnixMilli()})
			if err != nil || len(got["temperature"]) != 100 {
				b.Fatalf("query: %d points, %v", len(got["temperature"]), err)
			}
		}
	})
	b.Run("latest", func(b *testing.B) {
		i := 0
		for b.Loop() {
			i++
			got, err := s.LatestTelemetry(ctx, ids[i%devices], nil)
			if err != nil || len(got) != 3 {
				b.Fatalf("latest: %v, %v", got, err)
			}
		}
	})
}

// BenchEnsureDevice measures the provisioning path of a device's
// connection: EnsureDevice with its certificate and the provisioning
// event, then SetOnline, from parallelism goroutines per CPU (the
// gateway's handshakes). Sub-benchmark "new" creates a device each time (a
// fleet's first connections), "reconnect" ensures one of 1,000 devices
// that exist with that certificate (a reconnect storm after a failover).
// It reports devices/s and this process's CPU per device (the database's
// own CPU not counted), which is what tells two implementations apart on a
// shared machine.
func BenchEnsureDevice(b *testing.B, s store.Store, parallelism int) {
	run := time.Now().UnixNano()
	var next atomic.Int64 // across the runs of "new", which b.Run repeats
	b.Run("new", func(b *testing.B) {
		benchEnsure(b, s, parallelism, func(int64) int64 { return next.Add(1) }, true, run)
	})
	b.Run("reconnect", func(b *testing.B) {
		const devices = 1000
		for i := range int64(devices) {
			ensureBenchDevice(b, s, run+1, i, false)
		}
		benchEnsure(b, s, parallelism, func(i int64) int64 { return i % devices }, false, run+1)
	})
}

func benchEnsure(b *testing.B, s store.Store, parallelism int, dev func(int64) int64, create bool, run int64) {
	var n atomic.Int64
	b.SetParallelism(parallelism)
	cpu0 := processCPU()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if !ensureBenchDevice(b, s, run, dev(n.Add(1)), create) {
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "devices/s")
	b.ReportMetric(float64((processCPU()-cpu0).Nanoseconds())/1e3/float64(b.N), "cpu-µs/device")
}

// ensureBenchDevice connects device i of a run, which must be created
// by this call if create is set.
func ensureBenchDevice(b *testing.B, s store.Store, run, i int64, create bool) bool {
	ctx := context.Background()
	name := fmt.Sprintf("ensure-%d-%d", run, i)
	c := store.Credential{
		Serial: fmt.Sprintf("%x", i), Issuer: "CN=bench CA", Subject: "CN=" + name,
		NotBefore: time.Unix(1.7e9, 0), NotAfter: time.Unix(2e9, 0),
		SHA256: fmt.Sprintf("%064x", i), CredentialID: name, PEM: "-----BEGIN CERTIFICATE-----",
	}
	ev := &store.Event{Device: name, Addr: "192.0.2.1:4000", Node: "bench",
		Detail: raw(`{"cn":"` + name + `","serial":"` + c.Serial + `"}`)}
	d, created, _, err := s.EnsureDevice(ctx, store.Device{Name: name, FirstSeenAddr: ev.Addr}, c, ev)
	if err == nil && create && !created {
		err = fmt.Errorf("device %s not created", name)
	}
	if err == nil {
		err = s.SetOnline(ctx, d.ID, "bench", true, ev.Addr, time.Time{})
	}
	if err != nil {
		b.Error(err)
		return false
	}
	return true
}
