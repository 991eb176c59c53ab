// Package loadgen drives many devices, each with its own certificate,
// against an MQTT-over-TLS server and measures what it sees: handshakes per
// second, acknowledged messages per second, acknowledgement latency.
//
// Its MQTT client is deliberately lean (one TLS connection, the packet codec
// of github.com/mochi-mqtt/server/v2/packets, no session state), so that the
// load generator costs little of the machine it shares with the server.
package loadgen

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// Conn is one device's MQTT 3.1.1 connection.
type Conn struct {
	nc  *tls.Conn
	r   *bufio.Reader
	buf bytes.Buffer
	// small holds the body of a small packet (a PUBACK's is 2 bytes), so
	// that reading acknowledgements allocates nothing.
	small [8]byte
}

// Dial connects over TLS with cfg and completes CONNECT/CONNACK as
// clientID. A refusal is returned as an error naming the return code.
func Dial(addr string, cfg *tls.Config, clientID string, timeout time.Duration) (*Conn, error) {
	d := &net.Dialer{Timeout: timeout}
	nc, err := tls.DialWithDialer(d, "tcp", addr, cfg)
	if err != nil {
		return nil, fmt.Errorf("loadgen: tls: %w", err)
	}
	c := &Conn{nc: nc, r: bufio.NewReaderSize(nc, 512)}
	nc.SetDeadline(time.Now().Add(timeout))
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: 4,
		Connect: packets.ConnectParams{
			ProtocolName:     []byte("MQTT"),
			Clean:            true,
			Keepalive:        300,
			ClientIdentifier: clientID,
		},
	}
	if err := c.write(&pk); err != nil {
		nc.Close()
		return nil, err
	}
	fh, body, err := c.Read()
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("loadgen: waiting for CONNACK: %w", err)
	}
	if fh.Type != packets.Connack || len(body) < 2 {
		nc.Close()
		return nil, fmt.Errorf("loadgen: expected CONNACK, got packet type %d", fh.Type)
	}
	if body[1] != 0 {
		nc.Close()
		return nil, fmt.Errorf("loadgen: connection refused, return code %d", body[1])
	}
	nc.SetDeadline(time.Time{})
	return c, nil
}

func (c *Conn) write(pk *packets.Packet) error {
	c.buf.Reset()
	var err error
	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = pk.ConnectEncode(&c.buf)
	case packets.Publish:
		err = pk.PublishEncode(&c.buf)
	case packets.Disconnect:
		err = pk.DisconnectEncode(&c.buf)
	default:
		return fmt.Errorf("loadgen: cannot send packet type %d", pk.FixedHeader.Type)
	}
	if err != nil {
		return fmt.Errorf("loadgen: encoding: %w", err)
	}
	_, err = c.nc.Write(c.buf.Bytes())
	return err
}

// Publish sends one PUBLISH; qos 1 needs a non-zero id.
func (c *Conn) Publish(topic string, qos byte, id uint16, payload []byte) error {
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Publish, Qos: qos},
		ProtocolVersion: 4,
		TopicName:       topic,
		PacketID:        id,
		Payload:         payload,
	}
	return c.write(&pk)
}

// Read reads one packet and returns its fixed header and body; a small
// body is valid until the next Read.
func (c *Conn) Read() (packets.FixedHeader, []byte, error) {
	var fh packets.FixedHeader
	b, err := c.r.ReadByte()
	if err != nil {
		return fh, nil, err
	}
	if err := fh.Decode(b); err != nil {
		return fh, nil, err
	}
	n, _, err := packets.DecodeLength(c.r)
	if err != nil {
		return fh, nil, err
	}
	if n > 1<<20 {
		return fh, nil, errors.New("loadgen: packet too large")
	}
	var body []byte
	if n <= len(c.small) {
		body = c.small[:n]
	} else {
		body = make([]byte, n)
	}
	if _, err := io.ReadFull(c.r, body); err != nil {
		return fh, nil, err
	}
	fh.Remaining = n
	return fh, body, nil
}

// Close sends DISCONNECT and closes the connection.
func (c *Conn) Close() error {
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}, ProtocolVersion: 4}
	c.nc.SetWriteDeadline(time.Now().Add(time.Second))
	c.write(&pk)
	return c.nc.Close()
}

// Abort closes the connection without DISCONNECT.
func (c *Conn) Abort() error { return c.nc.Close() }
