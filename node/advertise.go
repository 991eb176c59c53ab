package node

import (
	"net"
	"slices"
)

// DeviceAddr is the host:port a device should be pointed at: the listener's
// own address, or, when it listens on every interface (":8883"), a name or
// address the server certificate covers, so that the device's TLS check of
// the server passes. note, when not empty, says what a device elsewhere on
// the network needs.
func (n *Node) DeviceAddr() (addr, note string) {
	host, port, err := net.SplitHostPort(n.MQTTAddr())
	if err != nil {
		return n.MQTTAddr(), ""
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsUnspecified() {
		return n.MQTTAddr(), ""
	}
	var names []string
	if n.serverCert != nil {
		names = append(names, n.serverCert.DNSNames...)
		for _, ip := range n.serverCert.IPAddresses {
			names = append(names, ip.String())
		}
	}
	// A name other than the loopback ones is what the operator issued the
	// certificate for: the address devices use.
	for _, h := range names {
		if !isLoopbackName(h) {
			return net.JoinHostPort(h, port), ""
		}
	}
	local := "127.0.0.1"
	if !slices.Contains(names, local) && slices.Contains(names, "localhost") {
		local = "localhost"
	}
	if ip := firstNetworkIP(); ip != "" {
		note = "devices on the network reach this node at mqtts://" + net.JoinHostPort(ip, port) +
			" once the server certificate names that address (--tls-cert/--tls-key; the development one names only localhost and 127.0.0.1)"
	}
	return net.JoinHostPort(local, port), note
}

func isLoopbackName(h string) bool {
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// firstNetworkIP is an address of this machine that other machines can
// reach, preferring IPv4; empty when it has none.
func firstNetworkIP() string {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return ""
	}
	var v6 string
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok || ipn.IP.IsLoopback() || ipn.IP.IsLinkLocalUnicast() || ipn.IP.IsLinkLocalMulticast() {
			continue
		}
		if ipn.IP.To4() != nil {
			return ipn.IP.String()
		}
		if v6 == "" {
			v6 = ipn.IP.String()
		}
	}
	return v6
}
