package pki

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
	"time"
)

// Key sizes a device may ask to be certified for. RSA above 4096 bits buys
// nothing on an ESP32 and makes every handshake verification costlier for
// the server, so it is refused like a weak key.
const (
	MinRSABits = 2048
	MaxRSABits = 4096
)

// ErrBadCSR is wrapped by every refusal of CheckDeviceCSR: the request
// is unreadable, its signature does not verify, or its content breaks the
// policy. It is the requester's fault, so its message may be shown to it.
var ErrBadCSR = errors.New("certificate request refused")

var oidCommonName = asn1.ObjectIdentifier{2, 5, 4, 3}

// CheckDeviceCSR parses a device's certificate request (PEM or DER) and
// checks that a device named cn may have it signed: the self-signature
// verifies, the subject carries exactly one common name and it is cn, the
// key is ECDSA P-256 or P-384 or RSA of MinRSABits to MaxRSABits, and no
// subject alternative name is asked for. Other subject attributes are
// allowed (openssl's prompts add them) but never copied: the certificate
// subject holds the CN only.
func CheckDeviceCSR(b []byte, cn string) (*x509.CertificateRequest, error) {
	der, err := CSRFromPEM(b)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadCSR, err)
	}
	csr, err := parseCSR(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadCSR, err)
	}
	cns := 0
	for _, a := range csr.Subject.Names {
		if a.Type.Equal(oidCommonName) {
			cns++
		}
	}
	if cns != 1 {
		return nil, fmt.Errorf("pki: %w: the subject must hold exactly one common name, found %d", ErrBadCSR, cns)
	}
	if csr.Subject.CommonName != cn {
		return nil, fmt.Errorf("pki: %w: common name %q is not the device's %q", ErrBadCSR, csr.Subject.CommonName, cn)
	}
	if len(csr.DNSNames)+len(csr.EmailAddresses)+len(csr.IPAddresses)+len(csr.URIs) > 0 {
		return nil, fmt.Errorf("pki: %w: subject alternative names are not allowed", ErrBadCSR)
	}
	if err := checkDeviceKey(csr.PublicKey); err != nil {
		return nil, err
	}
	return csr, nil
}

func checkDeviceKey(pub any) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve == elliptic.P256() || k.Curve == elliptic.P384() {
			return nil
		}
		return fmt.Errorf("pki: %w: ECDSA curve %s (want P-256 or P-384)", ErrBadCSR, k.Curve.Params().Name)
	case *rsa.PublicKey:
		if n := k.N.BitLen(); n < MinRSABits || n > MaxRSABits {
			return fmt.Errorf("pki: %w: RSA key of %d bits (want %d to %d)", ErrBadCSR, n, MinRSABits, MaxRSABits)
		}
		return nil
	}
	return fmt.Errorf("pki: %w: key type %T (want ECDSA P-256/P-384 or RSA)", ErrBadCSR, pub)
}

// SignDeviceCSR is the online issuing step of certificate rotation: it
// checks csr with CheckDeviceCSR for the device cn and issues a device
// certificate for its key, with the factory's profile and validity
// (0 means DeviceValidity).
func (ca *CA) SignDeviceCSR(csr []byte, cn string, validity time.Duration) (*x509.Certificate, error) {
	req, err := CheckDeviceCSR(csr, cn)
	if err != nil {
		return nil, err
	}
	return ca.IssueDevice(req.PublicKey, cn, validity)
}

// SignRotation is the online issuing CA as the gateway sees it: it signs
// a device's rotation request (SignDeviceCSR, the factory's validity) and
// returns the certificate and the chain the device presents from then on
// (leaf, then this CA).
func (ca *CA) SignRotation(_ context.Context, cn string, csr []byte) (*x509.Certificate, []byte, error) {
	leaf, err := ca.SignDeviceCSR(csr, cn, DeviceValidity)
	if err != nil {
		return nil, nil, err
	}
	return leaf, ca.LeafChainPEM(leaf), nil
}

// LoadIssuer loads an online issuing CA from a certificate file (the CA
// first, optionally followed by the certificates above it) and its key
// file, for a server that signs rotation requests and its own CRL with a
// CA given on the command line rather than the development PKI. The
// returned CA's Root is the last certificate of the file when it holds
// more than one, else nil; Dir is empty (no revoked.json is kept).
func LoadIssuer(certFile, keyFile string) (*CA, error) {
	certs, err := readCerts(certFile)
	if err != nil {
		return nil, err
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("pki: %s holds no certificate", certFile)
	}
	key, err := ReadKeyFile(keyFile)
	if err != nil {
		return nil, err
	}
	ca := &CA{Cert: certs[0], Key: key}
	if len(certs) > 1 {
		ca.Root = certs[len(certs)-1]
	}
	if err := checkKeyPair(ca.Cert, ca.Key); err != nil {
		return nil, err
	}
	if !ca.Cert.IsCA || ca.Cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("pki: %s is not a certificate-signing ca", certFile)
	}
	return ca, nil
}
