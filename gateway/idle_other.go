//go:build !unix

package gateway

import "net"

// socketWatch is only available on Unix; elsewhere sessions block in
// tls.Conn.Read while idle.
func socketWatch(net.Conn) (readable func() bool, wait func() error) { return nil, nil }
