package twin

import (
	"hash/fnv"
	"math"
	"math/rand/v2"
	"strconv"
)

// dht11 simulates the firmware's DHT11: humidity in whole percent, the
// temperature in 0.1 °C steps, both drifting slowly around a per-unit
// baseline inside the sensor's range (20–90 %RH, 0–50 °C).
type dht11 struct {
	rng          *rand.Rand
	temp, hum    float64 // current true values
	baseT, baseH float64
}

func newDHT11(seed string) *dht11 {
	h := fnv.New64a()
	h.Write([]byte(seed))
	s := h.Sum64()
	rng := rand.New(rand.NewPCG(s, s>>17|1))
	d := &dht11{rng: rng, baseT: 19 + rng.Float64()*8, baseH: 35 + rng.Float64()*25}
	d.temp, d.hum = d.baseT, d.baseH
	return d
}

// read advances the drift by one sample and returns what the sensor reports.
func (d *dht11) read() (temp float64, hum int) {
	// Mean-reverting random walk: small steps, pulled back to the baseline,
	// so that a long run stays plausible.
	d.temp += (d.baseT-d.temp)*0.01 + d.rng.NormFloat64()*0.05
	d.hum += (d.baseH-d.hum)*0.01 + d.rng.NormFloat64()*0.2
	d.temp = math.Min(50, math.Max(0, d.temp))
	d.hum = math.Min(90, math.Max(20, d.hum))
	return math.Round(d.temp*10) / 10, int(math.Round(d.hum))
}

// telemetry is the firmware's payload: {"temperature":23.5,"humidity":56}.
// The temperature keeps its decimal point so that ThingsBoard types it as a
// double even when it is whole.
func (d *dht11) telemetry(buf []byte) []byte {
	t, h := d.read()
	buf = append(buf, `{"temperature":`...)
	buf = strconv.AppendFloat(buf, t, 'f', 1, 64)
	buf = append(buf, `,"humidity":`...)
	buf = strconv.AppendInt(buf, int64(h), 10)
	return append(buf, '}')
}
