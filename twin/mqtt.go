package twin

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// maxPacket bounds what the twin accepts from the server; ThingsBoard's own
// limit is 64 KiB, so anything much larger is an attack or a bug.
const maxPacket = 256 << 10

// mqttConn is a lean MQTT 3.1.1 client session on the mochi-mqtt packet
// codec. It exists instead of a full client library because the simulator
// runs 10,000 of them: a session here is one reader goroutine, a small read
// buffer and a mutex, while sending is done by the shared scheduler.
type mqttConn struct {
	conn         net.Conn
	br           *bufio.Reader
	writeTimeout time.Duration // bounds every write, so a stuck server cannot block the scheduler

	wmu    sync.Mutex // guards the fields below and conn writes
	wbuf   bytes.Buffer
	nextID uint16
	last   time.Time // last packet written, for keepalive
}

var errConnRefused = errors.New("mqtt: connection refused")

// connackReasons names MQTT 3.1.1's CONNACK return codes.
var connackReasons = map[byte]string{
	1: "unacceptable protocol version",
	2: "identifier rejected",
	3: "server unavailable",
	4: "bad user name or password",
	5: "not authorized",
}

// mqttHandshake sends CONNECT on conn and waits for CONNACK.
func mqttHandshake(conn net.Conn, clientID string, keepalive time.Duration, timeout time.Duration) (*mqttConn, error) {
	c := &mqttConn{conn: conn, br: bufio.NewReaderSize(conn, 1024), writeTimeout: timeout}
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: 4,
		Connect: packets.ConnectParams{
			ProtocolName:     []byte("MQTT"),
			ClientIdentifier: clientID,
			Keepalive:        uint16(keepalive / time.Second),
			Clean:            true,
		},
	}
	conn.SetReadDeadline(time.Now().Add(timeout))
	defer conn.SetReadDeadline(time.Time{})
	if err := c.write(func(b *bytes.Buffer) error { return pk.ConnectEncode(b) }); err != nil {
		return nil, fmt.Errorf("mqtt: sending connect: %w", err)
	}
	ack, err := c.read()
	if err != nil {
		return nil, fmt.Errorf("mqtt: waiting for connack: %w", err)
	}
	if ack.FixedHeader.Type != packets.Connack {
		return nil, fmt.Errorf("mqtt: expected connack, got packet type %d", ack.FixedHeader.Type)
	}
	if ack.ReasonCode != 0 {
		reason := connackReasons[ack.ReasonCode]
		if reason == "" {
			reason = "unknown reason"
		}
		return nil, fmt.Errorf("%w: code %d (%s)", errConnRefused, ack.ReasonCode, reason)
	}
	return c, nil
}

// write encodes one packet into the shared buffer and sends it whole.
func (c *mqttConn) write(enc func(*bytes.Buffer) error) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.wbuf.Reset()
	if err := enc(&c.wbuf); err != nil {
		return err
	}
	c.conn.SetWriteDeadline(time.Now().Add(c.writeTimeout))
	if _, err := c.conn.Write(c.wbuf.Bytes()); err != nil {
		return err
	}
	c.last = time.Now()
	return nil
}

// packetID returns the next non-zero packet identifier; c.wmu must be held.
func (c *mqttConn) packetID() uint16 {
	c.nextID++
	if c.nextID == 0 {
		c.nextID = 1
	}
	return c.nextID
}

func (c *mqttConn) publish(topic string, payload []byte, qos byte) error {
	return c.write(func(b *bytes.Buffer) error {
		pk := packets.Packet{
			FixedHeader:     packets.FixedHeader{Type: packets.Publish, Qos: qos},
			ProtocolVersion: 4,
			TopicName:       topic,
			Payload:         payload,
		}
		if qos > 0 {
			pk.PacketID = c.packetID()
		}
		return pk.PublishEncode(b)
	})
}

func (c *mqttConn) subscribe(qos byte, filters ...string) error {
	return c.write(func(b *bytes.Buffer) error {
		pk := packets.Packet{
			FixedHeader:     packets.FixedHeader{Type: packets.Subscribe, Qos: 1},
			ProtocolVersion: 4,
			PacketID:        c.packetID(),
		}
		for _, f := range filters {
			pk.Filters = append(pk.Filters, packets.Subscription{Filter: f, Qos: qos})
		}
		return pk.SubscribeEncode(b)
	})
}

func (c *mqttConn) puback(id uint16) error {
	return c.write(func(b *bytes.Buffer) error {
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, ProtocolVersion: 4, PacketID: id}
		return pk.PubackEncode(b)
	})
}

// pingIfIdle sends PINGREQ when nothing was written for half the keepalive,
// so that the server never sees a silent session.
func (c *mqttConn) pingIfIdle(now time.Time, keepalive time.Duration) error {
	c.wmu.Lock()
	idle := now.Sub(c.last)
	c.wmu.Unlock()
	if idle < keepalive/2 {
		return nil
	}
	return c.write(func(b *bytes.Buffer) error {
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}}
		return pk.PingreqEncode(b)
	})
}

func (c *mqttConn) disconnect() {
	c.wmu.Lock()
	c.writeTimeout = min(c.writeTimeout, time.Second)
	c.wmu.Unlock()
	c.write(func(b *bytes.Buffer) error {
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}, ProtocolVersion: 4}
		return pk.DisconnectEncode(b)
	})
	c.conn.Close()
}

// read returns the next packet from the server.
func (c *mqttConn) read() (packets.Packet, error) {
	return readPacket(c.br)
}

// readPacket decodes one MQTT 3.1.1 packet from r. It never panics on
// hostile input: lengths are bounded and the codec's decoders check bounds.
func readPacket(r *bufio.Reader) (packets.Packet, error) {
	var pk packets.Packet
	pk.ProtocolVersion = 4
	hb, err := r.ReadByte()
	if err != nil {
		return pk, err
	}
	if err := pk.FixedHeader.Decode(hb); err != nil {
		return pk, fmt.Errorf("mqtt: bad fixed header: %w", err)
	}
	n, _, err := packets.DecodeLength(r)
	if err != nil {
		return pk, fmt.Errorf("mqtt: bad remaining length: %w", err)
	}
	if n < 0 || n > maxPacket {
		return pk, fmt.Errorf("mqtt: packet of %d bytes exceeds %d", n, maxPacket)
	}
	pk.FixedHeader.Remaining = n
	buf := make([]byte, n)
	if _, err := io.ReadFull(r, buf); err != nil {
		return pk, fmt.Errorf("mqtt: reading packet body: %w", err)
	}
	switch pk.FixedHeader.Type {
	case packets.Connack:
		err = pk.ConnackDecode(buf)
	case packets.Publish:
		err = pk.PublishDecode(buf)
		if err == nil {
			// The codec may alias the topic to buf; copy so that the
			// packet owns its strings whatever the codec does.
			pk.TopicName = string([]byte(pk.TopicName))
		}
	case packets.Puback:
		err = pk.PubackDecode(buf)
	case packets.Suback:
		err = pk.SubackDecode(buf)
	case packets.Pingresp:
		err = pk.PingrespDecode(buf)
	case packets.Unsuback:
		err = pk.UnsubackDecode(buf)
	case packets.Disconnect:
		err = pk.DisconnectDecode(buf)
	default:
		err = fmt.Errorf("unexpected packet type %d from server", pk.FixedHeader.Type)
	}
	if err != nil {
		return pk, fmt.Errorf("mqtt: decoding packet type %d: %w", pk.FixedHeader.Type, err)
	}
	return pk, nil
}
