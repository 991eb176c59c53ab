//go:build !unix

package gateway

// writeNow cannot write without waiting here: it writes nothing, and
// pollConn.send writes b from a goroutine of its own.
func (p *pollConn) writeNow(b []byte) (int, error) { return 0, nil }
