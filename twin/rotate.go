package twin

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/thingline/thingline/pki"
)

// Certificate rotation, as firmware that never sees a factory again does
// it: when its certificate expires within RotateWithin, the device makes a
// new key, sends a CSR for its own CN on v1/devices/me/cert/request, and
// stores the key and the certificate from v1/devices/me/cert/response in
// its SPIFFS partition, where cert_manager reads them at the next boot.
// It then restarts, so the new identity is loaded exactly as a power cycle
// would load it, and connects with it. See docs/certificates.md.

// Topics of certificate rotation.
const (
	TopicCertRequest  = "v1/devices/me/cert/request"
	TopicCertResponse = "v1/devices/me/cert/response"
)

// DefaultRotateWithin is the CLI's --rotate-within.
const DefaultRotateWithin = 720 * time.Hour

// rotationTimeout bounds the wait for the server's answer; a later attempt
// follows after rotationRetry.
const (
	rotationTimeout = 30 * time.Second
	rotationRetry   = 10 * time.Minute
)

// errRotated ends the session after a rotation: the device restarts to
// load its new identity.
var errRotated = errors.New("twin: certificate rotated")

// rotationDue returns how long until the certificate leaf must be rotated
// (zero or less: now).
func rotationDue(leaf *x509.Certificate, within time.Duration, now time.Time) time.Duration {
	return leaf.NotAfter.Add(-within).Sub(now)
}

// watchRotation runs beside a session: once the certificate is due it
// rotates, and on success closes the session so that runCloud restarts the
// device. It returns when ctx (the session's) ends.
func (d *device) watchRotation(ctx context.Context, c *mqttConn) {
	leaf := d.id.Cert.Leaf
	for {
		wait := rotationDue(leaf, d.rotateWithin, time.Now())
		if wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
		}
		err := d.rotate(ctx, c)
		if err == nil {
			d.rotated.Store(true)
			c.conn.Close()
			return
		}
		if ctx.Err() != nil {
			return
		}
		d.cc.logf("%s: certificate rotation: %v; trying again in %v", d.id.SN, err, rotationRetry)
		t := time.NewTimer(rotationRetry)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// rotate does one request and, when the answer is good, stores the new
// key and certificate.
func (d *device) rotate(ctx context.Context, c *mqttConn) error {
	leaf := d.id.Cert.Leaf
	key, err := pki.GenerateKey(pki.KeyTypeOf(leaf.PublicKey))
	if err != nil {
		return err
	}
	der, err := pki.NewCSR(key, d.id.SN)
	if err != nil {
		return err
	}
	req, _ := json.Marshal(map[string]string{"csr": string(pki.EncodeCSRPEM(der))})
	answers := make(chan []byte, 1)
	d.mu.Lock()
	d.certAnswer = answers
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		d.certAnswer = nil
		d.mu.Unlock()
	}()
	d.cc.logf("%s: certificate %s expires %s: asking for a new one", d.id.SN, pki.SerialHex(leaf), leaf.NotAfter.UTC().Format(time.RFC3339))
	if err := d.send(c, TopicCertRequest, req); err != nil {
		return fmt.Errorf("sending the request: %w", err)
	}
	var answer []byte
	t := time.NewTimer(rotationTimeout)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return fmt.Errorf("no answer within %v", rotationTimeout)
	case answer = <-answers:
	}
	certPEM, err := checkRotationAnswer(answer, d.id.SN, key, leaf)
	if err != nil {
		return err
	}
	keyPEM, err := pki.EncodeKeyPEM(key)
	if err != nil {
		return err
	}
	if err := d.saveIdentity(certPEM, keyPEM); err != nil {
		return fmt.Errorf("storing the new certificate: %w", err)
	}
	d.cc.logf("%s: new certificate stored; restarting to use it", d.id.SN)
	return nil
}

// checkRotationAnswer accepts only a certificate for this device and this
// key that outlives the current one, and returns the PEM to store.
func checkRotationAnswer(answer []byte, sn string, key crypto.Signer, old *x509.Certificate) ([]byte, error) {
	var a struct {
		Cert  string `json:"cert"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal(answer, &a); err != nil {
		return nil, fmt.Errorf("undecodable answer: %w", err)
	}
	if a.Error != "" {
		return nil, fmt.Errorf("refused by the server: %s", a.Error)
	}
	certs, err := pki.ParseCertsPEM([]byte(a.Cert))
	if err != nil || len(certs) == 0 {
		return nil, fmt.Errorf("the answer holds no certificate (%v)", err)
	}
	nl := certs[0]
	type equaler interface{ Equal(crypto.PublicKey) bool }
	if pub, ok := key.Public().(equaler); !ok || !pub.Equal(nl.PublicKey) {
		return nil, errors.New("the certificate is not for the key that was sent")
	}
	if nl.Subject.CommonName != sn {
		return nil, fmt.Errorf("the certificate is for %q, not %q", nl.Subject.CommonName, sn)
	}
	if !nl.NotAfter.After(old.NotAfter) {
		return nil, fmt.Errorf("the certificate expires %s, no later than the current one", nl.NotAfter.UTC().Format(time.RFC3339))
	}
	return pki.EncodeCertPEM(certs...), nil
}

// deliverCertAnswer hands a cert/response message to a waiting rotation;
// an answer nobody waits for is dropped.
func (d *device) deliverCertAnswer(payload []byte) {
	d.mu.Lock()
	ch := d.certAnswer
	d.mu.Unlock()
	if ch == nil {
		return
	}
	select {
	case ch <- append([]byte(nil), payload...):
	default:
	}
}
