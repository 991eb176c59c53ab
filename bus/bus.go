// Package bus carries commands from the API of any node to the node that
// holds a device's live session, and broadcasts cluster-wide notices
// (sessions taken over, devices deleted, certificates revoked, live telemetry).
//
// Two sibling implementations exist: bus/inproc for one process (the
// embedded default and most tests) and bus/nats for several nodes.
package bus

import (
	"context"
	"encoding/json"
	"errors"
)

// ErrNoSession is returned by Request when no node holds a live session for
// the device: the device is offline.
var ErrNoSession = errors.New("device has no live session")

// ErrClosed is returned by every method of a closed bus.
var ErrClosed = errors.New("bus closed")

// ErrTimeout is returned by Request when the device did not answer in time.
var ErrTimeout = errors.New("device did not answer in time")

// Command kinds understood by the gateway.
const (
	CommandRPC        = "rpc"        // Payload: {"method":..,"params":..}; Reply: the device's JSON answer
	CommandAttributes = "attributes" // Payload: shared attribute update {"k":v} or {"deleted":[..]}; Reply: null once sent, {"pushed":false} when the device is not subscribed
	CommandDisconnect = "disconnect" // Payload: {"reason":".."}; Reply: null once closed
	// CommandRPCSend publishes one attempt of a persistent RPC. Payload:
	// {"id":n,"method":..,"params":..}, n becoming the MQTT request id.
	// Reply once the device acknowledged it (PUBACK at QoS 1, written at
	// QoS 0): {"delivered":true}; {"delivered":false,"reason":..} when the
	// session cannot take it (not subscribed to RPC requests); ErrTimeout
	// when no acknowledgement came in time. The device's answer comes
	// later, on any node, through the gateway's RPC hooks.
	CommandRPCSend = "rpc-send"
	// CommandClaimResult tells the device how its claim request ended:
	// Payload: {"result":"SUCCESS"|"FAILURE"|…}, published on
	// v1/devices/me/claim/response when the device subscribed; Reply: null.
	CommandClaimResult = "claim-result"
)

// Command is addressed to one device.
type Command struct {
	Kind      string          `json:"kind"`
	Payload   json.RawMessage `json:"payload,omitempty"`
	TimeoutMs int64           `json:"timeoutMs,omitempty"`
}

// Handler runs a command on the node that holds the device's session and
// returns the device's reply.
type Handler func(ctx context.Context, cmd Command) (json.RawMessage, error)

// Well-known broadcast topics.
const (
	TopicSessions    = "sessions"    // a node opened a session: {"device":..,"node":..,"addr":..,"session":..}
	TopicRevocations = "revocations" // a serial was revoked: store.Revocation
	TopicDevices     = "devices"     // a device changed: {"device":..,"op":"deleted"}, or {"op":"units-added"}
	TopicTelemetry   = "telemetry"   // live telemetry for consoles: {"device":..,"ts":..,"values":{..}}
	// Notices of the operation phase, for the live stream and for the
	// concepts that react to each other; each payload carries "device" and
	// is defined by the package that publishes it (see its doc in docs/).
	TopicState  = "state"  // a device went online or offline
	TopicAlarms = "alarms" // an alarm was raised, acknowledged or cleared
	TopicRPC    = "rpc"    // a persistent RPC changed status
	TopicOTA    = "ota"    // a device's firmware update moved on
	// TopicOTAReport carries, from the gateway to the OTA engine, what a
	// device reported about its firmware (fw_state, current_fw_version…)
	// once stored, and firmware download activity (gateway/ota.go).
	TopicOTAReport = "ota-report"
)

// Bus is the messaging fabric shared by all nodes of a deployment.
type Bus interface {
	// Serve makes this node the handler of commands for device until the
	// returned stop function is called. A later Serve for the same device
	// (on any node) replaces it: the replaced handler is then called once
	// with a CommandDisconnect whose payload is {"reason":"session taken
	// over"}, so that the older session closes wherever it lives.
	Serve(device string, h Handler) (stop func(), err error)
	// Request delivers cmd to the device's handler and waits for its reply,
	// at most until ctx is done. It returns ErrNoSession when no node serves
	// the device.
	Request(ctx context.Context, device string, cmd Command) (json.RawMessage, error)
	// Publish broadcasts data on topic to every subscriber on every node.
	Publish(ctx context.Context, topic string, data []byte) error
	// Subscribe calls fn for each message published on topic until the
	// returned stop function is called. fn must not block for long.
	Subscribe(topic string, fn func(data []byte)) (stop func(), err error)
	Close() error
}

// Watcher is implemented by buses that know whether anyone listens on a
// topic, so that a publisher can skip building a notice nobody reads (live
// telemetry when no console is open). A networked bus cannot know about
// other nodes and does not implement it.
type Watcher interface {
	Watched(topic string) bool
}

// Buffered is implemented by buses whose Publish hands the message over
// without running or waiting for any subscriber (a networked bus writes to
// its connection's buffer): a publisher on a path shared by many devices
// (the gateway's acknowledgements from the store's commit path) may then
// publish there.
type Buffered interface {
	PublishBuffered()
}
