package store

// AsyncAppender is implemented by stores that can report the durability of
// appended telemetry from their own commit path, so that a caller (the
// gateway, acknowledging a device's message) needs no goroutine waiting for
// each append: at the fleet's shape — thousands of devices, one message in
// flight each — a waiting goroutine per message was one wake-up and one
// goroutine start per message.
type AsyncAppender interface {
	// AppendTelemetryAsync queues recs and returns; it blocks only while
	// the store's queue is full. done runs exactly once, when recs are
	// durably stored (err nil, with AppendTelemetry's guarantee) or have
	// failed. The records of one call are of one device, and the done
	// functions of one device's appends run in the order of the calls, one
	// at a time, on a goroutine of the store that other appends wait for:
	// done must not block.
	AppendTelemetryAsync(recs []Record, done func(err error))
}
