package node

import (
	"crypto/x509"
	"errors"
	"time"

	"github.com/thingline/thingline/certmon"
	"github.com/thingline/thingline/gateway"
	"github.com/thingline/thingline/pki"
)

// issuer loads the online issuing CA that signs rotation requests and the
// server's CRL: the development PKI's device CA, or the first --device-ca
// with --device-ca-key. Without a key it returns nil: rotation requests are
// then answered with an error and no CRL is published.
func (n *Node) issuer(deviceCAs []*x509.Certificate) (*pki.CA, error) {
	cfg := n.cfg
	if len(cfg.DeviceCAs) == 0 {
		ca, err := pki.LoadCA(n.pkiDir)
		if err != nil {
			return nil, startErr("loading the issuing CA", err, "the development PKI in "+n.pkiDir+" is incomplete")
		}
		return ca, nil
	}
	if cfg.DeviceCAKey == "" {
		return nil, nil
	}
	ca, err := pki.LoadIssuer(cfg.DeviceCAs[0], cfg.DeviceCAKey)
	if err != nil {
		return nil, startErr("loading the issuing CA", err, "--device-ca-key must be the key of the first --device-ca")
	}
	for _, c := range deviceCAs {
		if c.Equal(ca.Cert) {
			return ca, nil
		}
	}
	return nil, startErr("loading the issuing CA", errors.New("not a device CA"), "--device-ca-key must be the key of the first --device-ca")
}

// startCertMonitor starts the expiry and retirement sweeps. The retirement
// sweep runs often enough for the rotation grace: a quarter of it, between
// one second and certmon.DefaultRetireEvery.
func (n *Node) startCertMonitor(grace time.Duration) {
	mc := n.cfg.CertMonitor
	mc.Store, mc.Bus, mc.Node, mc.Logger = n.store, n.bus, n.cfg.NodeID, n.cfg.Logger
	if mc.RetireEvery <= 0 {
		if grace <= 0 {
			grace = gateway.DefaultRotationGrace
		}
		mc.RetireEvery = min(max(grace/4, time.Second), certmon.DefaultRetireEvery)
	}
	n.certmon = certmon.Start(mc)
}
