package gateway

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/thingline/thingline/pki"
	"github.com/thingline/thingline/store"
)

// Certificate rotation over MQTT: a device publishes {"csr":"<PEM>"} on
// v1/devices/me/cert/request and is answered on v1/devices/me/cert/response
// with {"cert":"<PEM chain>","serial":..,"notAfter":..} or {"error":".."}.
// The gateway checks the rate and hands the request to the Issuer (the
// online issuing CA lives in package pki, wired by the node); it records
// the previous certificate's retirement after the grace period, which the
// certificate monitor carries out on whichever node sweeps first.

// Issuer signs rotation requests. It is implemented by the node over
// pki.CA, so that the gateway holds no CA key logic.
type Issuer interface {
	// SignRotation checks csr (PEM) for the device whose certificate CN is
	// cn and returns the new certificate and the PEM chain to hand the
	// device (leaf first). An error wrapping pki.ErrBadCSR is the device's
	// fault and is told to it; any other is logged and the device is told
	// only to try again.
	SignRotation(ctx context.Context, cn string, csr []byte) (*x509.Certificate, []byte, error)
}

// Defaults of the rotation settings in Config.
const (
	DefaultRotationGrace = 7 * 24 * time.Hour
	DefaultCSRBurst      = 5
	DefaultCSREvery      = 10 * time.Minute
)

const certResponseTopic = v1Prefix + "cert/response"

// newRotationsMetric counts rotation requests by result: "issued" or the
// refusal reason of the certificate-refused event.
func newRotationsMetric() *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "thingline", Subsystem: "gateway", Name: "certificate_requests_total",
		Help: "Certificate rotation requests by result (issued, or the refusal reason).",
	}, []string{"result"})
}

// certDefaults fills in the rotation and revocation settings of the Config.
func (s *Server) certDefaults() {
	if s.cfg.RevocationReload <= 0 {
		s.cfg.RevocationReload = DefaultRevocationReload
	}
	if s.cfg.RotationGrace <= 0 {
		s.cfg.RotationGrace = DefaultRotationGrace
	}
	if s.cfg.CSRBurst <= 0 {
		s.cfg.CSRBurst = DefaultCSRBurst
	}
	if s.cfg.CSREvery <= 0 {
		s.cfg.CSREvery = DefaultCSREvery
	}
}

// csrBucket is a device's token bucket of rotation requests.
type csrBucket struct {
	tokens float64
	at     time.Time
}

// allowCSR takes a token from device's bucket: CSRBurst at once, one more
// every CSREvery. Signing costs a private-key operation and a store write,
// and a rotation is a rare event, so a device asking in a loop is refused
// without work.
func (s *Server) allowCSR(device string, now time.Time) bool {
	burst := float64(s.cfg.CSRBurst)
	s.limitMu.Lock()
	defer s.limitMu.Unlock()
	if s.csrBuckets == nil || len(s.csrBuckets) > 100000 {
		s.csrBuckets = map[string]*csrBucket{}
	}
	b := s.csrBuckets[device]
	if b == nil {
		b = &csrBucket{tokens: burst, at: now}
		s.csrBuckets[device] = b
	}
	b.tokens = min(burst, b.tokens+float64(now.Sub(b.at))/float64(s.cfg.CSREvery))
	b.at = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// parseCertRequest reads {"csr":"<PEM>"} in the read path, while the
// payload's buffer is still the message's.
func parseCertRequest(payload []byte) (string, error) {
	var req struct {
		CSR string `json:"csr"`
	}
	if err := json.Unmarshal(payload, &req); err != nil || req.CSR == "" {
		return "", errors.New(`the request must be {"csr":"<PEM certificate request>"}`)
	}
	return req.CSR, nil
}

// answerCertRequest runs after the request's place in the session's
// pipeline: it signs, records and answers. perr is parseCertRequest's.
func (ss *session) answerCertRequest(ctx context.Context, csr string, perr error) {
	s := ss.srv
	now := s.now()
	refuse := func(reason, msg string) {
		s.met.rotations.WithLabelValues(reason).Inc()
		ss.certResponse(map[string]string{"error": msg})
		if s.limited(ss.dev.Name, store.EventCertRefused) {
			s.met.eventsDropped.Inc()
			return
		}
		detail, _ := json.Marshal(map[string]string{"error": msg, "serial": ss.serial})
		s.event(store.Event{Device: ss.dev.Name, Kind: store.EventCertRefused, Reason: reason, Addr: ss.addr, Detail: detail})
	}
	if !s.allowCSR(ss.dev.Name, now) {
		refuse("rate-limited", "too many certificate requests: try again later")
		return
	}
	if s.cfg.Issuer == nil {
		refuse("no-issuer", "certificate rotation is not available: this server holds no issuing CA key")
		return
	}
	if perr != nil {
		refuse("bad-request", perr.Error())
		return
	}
	leaf, chain, err := s.cfg.Issuer.SignRotation(ctx, ss.leaf.Subject.CommonName, []byte(csr))
	if err != nil {
		if errors.Is(err, pki.ErrBadCSR) {
			refuse("bad-csr", err.Error())
			return
		}
		s.log.Error("gateway: signing a rotation request", "device", ss.dev.Name, "err", err)
		refuse("issuer-error", "the certificate could not be issued; try again later")
		return
	}
	if !leaf.NotAfter.After(ss.leaf.NotAfter) {
		// The issuing CA expires first (a leaf never outlives it): a
		// certificate that does not outlive the current one is no
		// rotation, and retiring the current one for it would lock the
		// device out. Nothing is scheduled; the operator must renew the CA.
		s.log.Warn("gateway: issuing CA expires before the certificate it would replace",
			"device", ss.dev.Name, "ca_not_after", leaf.NotAfter)
		refuse("issuer-expiring", "the issuing CA expires before the current certificate: no longer-lived certificate can be issued")
		return
	}
	serial := pki.SerialHex(leaf)
	// The previous certificate is retired after the grace period whether
	// or not the device ever uses the new one: a device that lost it asks
	// again with the old certificate, still valid until then.
	err = s.st.ScheduleRetirement(ctx, store.Retirement{
		DeviceID: ss.dev.ID, Serial: ss.serial, Next: serial, RetireAt: now.Add(s.cfg.RotationGrace),
	})
	if err != nil {
		s.log.Error("gateway: scheduling a retirement", "device", ss.dev.Name, "err", err)
		refuse("store-error", "the certificate could not be issued; try again later")
		return
	}
	detail, _ := json.Marshal(map[string]any{"serial": serial, "previous": ss.serial, "notAfter": leaf.NotAfter,
		"retireAt": now.Add(s.cfg.RotationGrace)})
	s.event(store.Event{Device: ss.dev.Name, Kind: store.EventCertIssued, Addr: ss.addr, Detail: detail})
	s.met.rotations.WithLabelValues("issued").Inc()
	ss.certResponse(map[string]any{"cert": string(chain), "serial": serial, "notAfter": leaf.NotAfter})
}

func (ss *session) certResponse(v any) {
	b, _ := json.Marshal(v)
	sub, _ := ss.sub(subCertResponse)
	if err := ss.publish(certResponseTopic, b, sub.qos); err != nil {
		ss.srv.log.Debug("gateway: answering a certificate request", "device", ss.dev.Name, "err", err)
	}
}
