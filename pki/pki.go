// Package pki holds thingline's certificate authority: an offline-capable
// root, a device-issuing intermediate kept on the line, device and server
// certificates, revocation records and CRLs, plus the PEM and hashing helpers
// the factory and the cloud share.
package pki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha3"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// KeyType selects the algorithm of a generated key.
type KeyType string

const (
	// KeyEC is ECDSA on P-256, the default: the ESP32's mbedTLS handles it
	// in hardware-friendly time and certificates stay small.
	KeyEC KeyType = "ec"
	// KeyRSA is RSA-2048, for sites whose tooling expects RSA.
	KeyRSA KeyType = "rsa"
)

// File names inside a CA directory.
const (
	RootCertFile   = "root-ca.crt"
	RootKeyFile    = "root-ca.key"
	DeviceCertFile = "device-ca.crt"
	DeviceKeyFile  = "device-ca.key"
	ServerCertFile = "server.crt"
	ServerKeyFile  = "server.key"
)

// Default validity periods.
const (
	RootValidity     = 20 * 365 * 24 * time.Hour
	DeviceCAValidity = 10 * 365 * 24 * time.Hour
	DeviceValidity   = 1095 * 24 * time.Hour
	ServerValidity   = 825 * 24 * time.Hour
)

// backdate absorbs clock skew between the line and the devices' first
// SNTP sync, so a freshly issued certificate is already valid everywhere.
const backdate = 5 * time.Minute

// GenerateKey makes a new private key of type kt ("" means KeyEC).
func GenerateKey(kt KeyType) (crypto.Signer, error) {
	switch kt {
	case KeyEC, "":
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("pki: generating p-256 key: %w", err)
		}
		return k, nil
	case KeyRSA:
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			return nil, fmt.Errorf("pki: generating rsa-2048 key: %w", err)
		}
		return k, nil
	}
	return nil, fmt.Errorf("pki: unknown key type %q (want ec or rsa)", kt)
}

// KeyTypeOf reports the KeyType of a public key ("" when neither).
func KeyTypeOf(pub crypto.PublicKey) KeyType {
	switch pub.(type) {
	case *ecdsa.PublicKey:
		return KeyEC
	case *rsa.PublicKey:
		return KeyRSA
	}
	return ""
}

// ParseKeyType accepts "ec", "rsa" and "" (ec).
func ParseKeyType(s string) (KeyType, error) {
	switch strings.ToLower(s) {
	case "", "ec", "ecdsa", "p256", "p-256":
		return KeyEC, nil
	case "rsa", "rsa2048", "rsa-2048":
		return KeyRSA, nil
	}
	return "", fmt.Errorf("pki: unknown key type %q (want ec or rsa)", s)
}

// NewSerial returns a random positive 128-bit serial number. Random rather
// than sequential serials need no shared counter between stations and keep
// certificate contents unpredictable (the CA/B Forum reason for >= 64 bits).
func NewSerial() (*big.Int, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return nil, fmt.Errorf("pki: reading random serial: %w", err)
	}
	// Clearing the top bit keeps the DER INTEGER at 16 bytes without a
	// leading zero; a zero serial is forbidden, so force one low bit.
	b[0] &= 0x7f
	b[15] |= 1
	return new(big.Int).SetBytes(b), nil
}

// subjectKeyID follows RFC 5280 §4.2.1.2 method 1: SHA-1 of the
// subjectPublicKey bit string.
func subjectKeyID(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("pki: marshalling public key: %w", err)
	}
	var spki struct {
		Algorithm pkix.AlgorithmIdentifier
		PublicKey asn1.BitString
	}
	if _, err := asn1.Unmarshal(der, &spki); err != nil {
		return nil, fmt.Errorf("pki: parsing public key: %w", err)
	}
	sum := sha1.Sum(spki.PublicKey.Bytes)
	return sum[:], nil
}

func signatureAlgorithm(k crypto.Signer) x509.SignatureAlgorithm {
	switch k.Public().(type) {
	case *rsa.PublicKey:
		return x509.SHA256WithRSA
	case *ecdsa.PublicKey:
		return x509.ECDSAWithSHA256
	case ed25519.PublicKey:
		return x509.PureEd25519
	}
	return x509.UnknownSignatureAlgorithm
}

func leafKeyUsage(pub crypto.PublicKey) x509.KeyUsage {
	ku := x509.KeyUsageDigitalSignature
	if _, ok := pub.(*rsa.PublicKey); ok {
		// TLS 1.2 RSA key exchange needs it; ECDSA keys never encipher.
		ku |= x509.KeyUsageKeyEncipherment
	}
	return ku
}

func createCert(tmpl, parent *x509.Certificate, pub crypto.PublicKey, signer crypto.Signer) (*x509.Certificate, error) {
	if tmpl.SerialNumber == nil {
		s, err := NewSerial()
		if err != nil {
			return nil, err
		}
		tmpl.SerialNumber = s
	}
	ski, err := subjectKeyID(pub)
	if err != nil {
		return nil, err
	}
	tmpl.SubjectKeyId = ski
	if parent == nil {
		parent = tmpl
		tmpl.AuthorityKeyId = ski
	} else {
		tmpl.AuthorityKeyId = parent.SubjectKeyId
	}
	tmpl.SignatureAlgorithm = signatureAlgorithm(signer)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		return nil, fmt.Errorf("pki: signing certificate for %q: %w", tmpl.Subject.CommonName, err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("pki: parsing new certificate: %w", err)
	}
	return c, nil
}

func caTemplate(cn string, validity time.Duration, maxPath int) *x509.Certificate {
	now := time.Now()
	return &x509.Certificate{
		Subject:               pkix.Name{CommonName: cn, Organization: []string{"thingline"}},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            maxPath,
		MaxPathLenZero:        maxPath == 0,
	}
}

// NewRoot makes a self-signed root CA certificate (path length 1: it signs
// only device-issuing intermediates).
func NewRoot(key crypto.Signer, cn string, validity time.Duration) (*x509.Certificate, error) {
	if validity <= 0 {
		validity = RootValidity
	}
	return createCert(caTemplate(cn, validity, 1), nil, key.Public(), key)
}

// SignIntermediate makes a device-issuing intermediate (path length 0) for
// pub, signed by the root.
func SignIntermediate(root *x509.Certificate, rootKey crypto.Signer, pub crypto.PublicKey, cn string, validity time.Duration) (*x509.Certificate, error) {
	if validity <= 0 {
		validity = DeviceCAValidity
	}
	if err := checkKeyPair(root, rootKey); err != nil {
		return nil, err
	}
	tmpl := caTemplate(cn, validity, 0)
	if tmpl.NotAfter.After(root.NotAfter) {
		tmpl.NotAfter = root.NotAfter
	}
	return createCert(tmpl, root, pub, rootKey)
}

// SignIntermediateCSR checks a CSR's self-signature and signs it as a
// device-issuing intermediate. cn "" keeps the CSR's common name.
func SignIntermediateCSR(root *x509.Certificate, rootKey crypto.Signer, csrDER []byte, cn string, validity time.Duration) (*x509.Certificate, error) {
	csr, err := parseCSR(csrDER)
	if err != nil {
		return nil, err
	}
	if cn == "" {
		cn = csr.Subject.CommonName
	}
	if cn == "" {
		return nil, errors.New("pki: intermediate csr has no common name")
	}
	return SignIntermediate(root, rootKey, csr.PublicKey, cn, validity)
}

// NewCSR makes a PKCS#10 request (DER) for key with the given common name.
func NewCSR(key crypto.Signer, cn string) ([]byte, error) {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject:            pkix.Name{CommonName: cn, Organization: []string{"thingline"}},
		SignatureAlgorithm: signatureAlgorithm(key),
	}, key)
	if err != nil {
		return nil, fmt.Errorf("pki: creating csr for %q: %w", cn, err)
	}
	return der, nil
}

// EncodeCSRPEM wraps a CSR's DER as "CERTIFICATE REQUEST".
func EncodeCSRPEM(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

// CSRFromPEM accepts PEM ("CERTIFICATE REQUEST" or the older "NEW
// CERTIFICATE REQUEST") or raw DER and returns the DER.
func CSRFromPEM(b []byte) ([]byte, error) {
	rest := b
	for {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type == "CERTIFICATE REQUEST" || blk.Type == "NEW CERTIFICATE REQUEST" {
			return blk.Bytes, nil
		}
	}
	if len(b) > 0 && b[0] == 0x30 {
		return b, nil
	}
	return nil, errors.New("pki: no certificate request found")
}

func parseCSR(der []byte) (*x509.CertificateRequest, error) {
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("pki: parsing csr: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("pki: csr signature: %w", err)
	}
	return csr, nil
}

func checkKeyPair(c *x509.Certificate, k crypto.Signer) error {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	e, ok := k.Public().(equaler)
	if !ok || !e.Equal(c.PublicKey) {
		return fmt.Errorf("pki: key does not match certificate %q", c.Subject.CommonName)
	}
	return nil
}

// InitCA makes a root and a device-issuing intermediate in dir. It refuses
// to overwrite an existing CA, because losing a CA key orphans every device
// certificate it issued.
func InitCA(dir string, kt KeyType) error {
	if err := refuseExisting(dir, RootCertFile, RootKeyFile, DeviceCertFile, DeviceKeyFile); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("pki: creating ca directory: %w", err)
	}
	rootKey, err := GenerateKey(kt)
	if err != nil {
		return err
	}
	root, err := NewRoot(rootKey, "thingline Root CA", 0)
	if err != nil {
		return err
	}
	devKey, err := GenerateKey(kt)
	if err != nil {
		return err
	}
	dev, err := SignIntermediate(root, rootKey, devKey.Public(), "thingline Device CA", 0)
	if err != nil {
		return err
	}
	if err := WriteKeyFile(filepath.Join(dir, RootKeyFile), rootKey); err != nil {
		return err
	}
	if err := WriteFileAtomic(filepath.Join(dir, RootCertFile), EncodeCertPEM(root), 0o644); err != nil {
		return err
	}
	if err := WriteKeyFile(filepath.Join(dir, DeviceKeyFile), devKey); err != nil {
		return err
	}
	return WriteFileAtomic(filepath.Join(dir, DeviceCertFile), EncodeCertPEM(dev), 0o644)
}

// CA is a device-issuing CA loaded from a directory.
type CA struct {
	Cert *x509.Certificate // device CA (intermediate)
	Key  crypto.Signer     // device CA key
	Root *x509.Certificate // root the device CA chains to
	Dir  string
}

// LoadCA reads device-ca.crt, device-ca.key and root-ca.crt from dir; the
// root key is not needed and normally absent on the line.
func LoadCA(dir string) (*CA, error) {
	certs, err := readCerts(filepath.Join(dir, DeviceCertFile))
	if err != nil {
		return nil, err
	}
	key, err := ReadKeyFile(filepath.Join(dir, DeviceKeyFile))
	if err != nil {
		return nil, err
	}
	roots, err := readCerts(filepath.Join(dir, RootCertFile))
	if err != nil {
		return nil, err
	}
	ca := &CA{Cert: certs[0], Key: key, Root: roots[0], Dir: dir}
	if err := checkKeyPair(ca.Cert, ca.Key); err != nil {
		return nil, err
	}
	if !ca.Cert.IsCA || ca.Cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("pki: %s is not a certificate-signing ca", filepath.Join(dir, DeviceCertFile))
	}
	if err := ca.Cert.CheckSignatureFrom(ca.Root); err != nil {
		return nil, fmt.Errorf("pki: device ca is not signed by %s: %w", filepath.Join(dir, RootCertFile), err)
	}
	return ca, nil
}

func readCerts(path string) ([]*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	cs, err := ParseCertsPEM(b)
	if err != nil {
		return nil, fmt.Errorf("pki: %s: %w", path, err)
	}
	return cs, nil
}

// ReadKeyFile reads a PEM private key.
func ReadKeyFile(path string) (crypto.Signer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	k, err := ParseKeyPEM(b)
	if err != nil {
		return nil, fmt.Errorf("pki: %s: %w", path, err)
	}
	return k, nil
}

// WriteKeyFile writes k as PKCS#8 PEM, readable by the owner only.
func WriteKeyFile(path string, k crypto.Signer) error {
	b, err := EncodeKeyPEM(k)
	if err != nil {
		return err
	}
	return WriteFileAtomic(path, b, 0o600)
}

// DeviceTemplate returns the template IssueDevice signs, for callers (test
// helpers) that need to adjust validity dates before signing with Issue.
func (ca *CA) DeviceTemplate(cn string, validity time.Duration) *x509.Certificate {
	if validity <= 0 {
		validity = DeviceValidity
	}
	now := time.Now()
	notAfter := now.Add(validity)
	if ca.Cert != nil && notAfter.After(ca.Cert.NotAfter) {
		// A leaf outliving its issuer fails path validation anyway; say
		// so in the certificate rather than on the device in ten years.
		notAfter = ca.Cert.NotAfter
	}
	tmpl := &x509.Certificate{
		// The device's serial number is its common name and nothing else
		// is in the subject: ThingsBoard names auto-provisioned devices
		// after the CN.
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             now.Add(-backdate),
		NotAfter:              notAfter,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	return tmpl
}

// Issue signs tmpl for pub with the device CA, filling in the key usage for
// pub's algorithm when the template has none.
func (ca *CA) Issue(tmpl *x509.Certificate, pub crypto.PublicKey) (*x509.Certificate, error) {
	if tmpl.KeyUsage == 0 {
		tmpl.KeyUsage = leafKeyUsage(pub)
	}
	return createCert(tmpl, ca.Cert, pub, ca.Key)
}

// IssueDevice signs a device client certificate for pub with common name
// cn. validity 0 means 1095 days.
func (ca *CA) IssueDevice(pub crypto.PublicKey, cn string, validity time.Duration) (*x509.Certificate, error) {
	if cn == "" {
		return nil, errors.New("pki: device certificate needs a common name")
	}
	if len(cn) > 64 {
		// RFC 5280's ub-common-name; mbedTLS and ThingsBoard names are
		// happier well below it anyway.
		return nil, fmt.Errorf("pki: common name %.20q... longer than 64 bytes", cn)
	}
	if pub == nil {
		return nil, errors.New("pki: device certificate needs a public key")
	}
	return ca.Issue(ca.DeviceTemplate(cn, validity), pub)
}

// SignCSR checks csrDER's self-signature and issues a device certificate for
// its key. Only the key is taken from the request; cn "" takes the CSR's
// common name. Extensions the request asks for are ignored on purpose.
func (ca *CA) SignCSR(csrDER []byte, cn string, validity time.Duration) (*x509.Certificate, error) {
	csr, err := parseCSR(csrDER)
	if err != nil {
		return nil, err
	}
	if cn == "" {
		cn = csr.Subject.CommonName
	}
	return ca.IssueDevice(csr.PublicKey, cn, validity)
}

// ChainPEM returns the device CA followed by the root: what a TLS peer
// presenting a device certificate must add to reach the root.
func (ca *CA) ChainPEM() []byte {
	return EncodeCertPEM(ca.Cert, ca.Root)
}

// LeafChainPEM returns leaf followed by the device CA: what a device
// presents in its TLS handshake so that a server trusting only the root
// (or ThingsBoard's certificate-chain provisioning) can build the path.
func (ca *CA) LeafChainPEM(leaf *x509.Certificate) []byte {
	return EncodeCertPEM(leaf, ca.Cert)
}

// EnsureDevPKI makes the development PKI of `thingline serve` under
// dir/pki unless all its files exist already. The server certificate is
// signed directly by the root (see IssueServer).
func EnsureDevPKI(dir string, hosts []string) (bool, error) {
	p := filepath.Join(dir, "pki")
	all := true
	for _, f := range []string{RootCertFile, DeviceCertFile, DeviceKeyFile, ServerCertFile, ServerKeyFile} {
		if _, err := os.Stat(filepath.Join(p, f)); err != nil {
			all = false
			break
		}
	}
	if all {
		return false, nil
	}
	if _, err := os.Stat(filepath.Join(p, DeviceCertFile)); errors.Is(err, os.ErrNotExist) {
		if err := InitCA(p, KeyEC); err != nil {
			return false, err
		}
	}
	if err := IssueServer(p, hosts); err != nil {
		return false, err
	}
	return true, nil
}

// IssueServer (re)makes server.crt and server.key in dir. It signs with the
// root when root-ca.key is present, so that the server chain stays apart
// from the device CA: a device certificate can never pass as a server and
// the root is the single trust anchor devices carry. Without the root key
// (offline root) it falls back to the device CA and server.crt then holds
// the leaf followed by device-ca.crt, so clients trusting only the root
// still verify it. The names localhost and 127.0.0.1 are always included.
func IssueServer(dir string, hosts []string) error {
	roots, err := readCerts(filepath.Join(dir, RootCertFile))
	if err != nil {
		return err
	}
	var signerCert *x509.Certificate
	var signerKey crypto.Signer
	var chain []*x509.Certificate
	if k, err := ReadKeyFile(filepath.Join(dir, RootKeyFile)); err == nil {
		signerCert, signerKey = roots[0], k
	} else if errors.Is(err, os.ErrNotExist) {
		ca, err := LoadCA(dir)
		if err != nil {
			return err
		}
		signerCert, signerKey, chain = ca.Cert, ca.Key, []*x509.Certificate{ca.Cert}
	} else {
		return err
	}
	if err := checkKeyPair(signerCert, signerKey); err != nil {
		return err
	}
	key, err := GenerateKey(KeyEC)
	if err != nil {
		return err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: "thingline server", Organization: []string{"thingline"}},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(ServerValidity),
		KeyUsage:              leafKeyUsage(key.Public()),
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	seen := map[string]bool{}
	for _, h := range append([]string{"localhost", "127.0.0.1"}, hosts...) {
		h = strings.TrimSpace(h)
		if h == "" || seen[h] {
			continue
		}
		seen[h] = true
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	if len(tmpl.DNSNames) > 0 {
		tmpl.Subject.CommonName = tmpl.DNSNames[0]
	}
	c, err := createCert(tmpl, signerCert, key.Public(), signerKey)
	if err != nil {
		return err
	}
	if err := WriteKeyFile(filepath.Join(dir, ServerKeyFile), key); err != nil {
		return err
	}
	return WriteFileAtomic(filepath.Join(dir, ServerCertFile), EncodeCertPEM(append([]*x509.Certificate{c}, chain...)...), 0o644)
}

// CredentialID is ThingsBoard's X.509 credentials id: lower-case hex
// SHA3-256 over the ASCII base64 (standard alphabet, padded, no line
// breaks) of the certificate's DER.
func CredentialID(der []byte) string {
	sum := sha3.Sum256([]byte(base64.StdEncoding.EncodeToString(der)))
	return hex.EncodeToString(sum[:])
}

// Fingerprint is the lower-case hex SHA-256 of der.
func Fingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

// SerialHex renders a serial number as lower-case hex without leading
// zeros, the form revocation records and ledgers use.
func SerialHex(c *x509.Certificate) string {
	if c == nil || c.SerialNumber == nil {
		return ""
	}
	return c.SerialNumber.Text(16)
}

// ParseSerial accepts hex (optionally 0x-prefixed, colon-separated as
// openssl prints it) and returns the number. RFC 5280 §4.1.2.2 caps
// serials at 20 octets, so longer input is refused.
func ParseSerial(s string) (*big.Int, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	t = strings.TrimPrefix(t, "0x")
	t = strings.ReplaceAll(t, ":", "")
	if len(strings.TrimLeft(t, "0")) > 40 {
		return nil, fmt.Errorf("pki: serial %q longer than 20 octets", s)
	}
	n, ok := new(big.Int).SetString(t, 16)
	if !ok || t == "" || n.Sign() <= 0 {
		return nil, fmt.Errorf("pki: bad serial %q (want positive hex)", s)
	}
	return n, nil
}

// EncodeCertPEM concatenates the certificates as "CERTIFICATE" PEM blocks.
func EncodeCertPEM(c ...*x509.Certificate) []byte {
	var b bytes.Buffer
	for _, x := range c {
		_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: x.Raw})
	}
	return b.Bytes()
}

// EncodeKeyPEM writes k as PKCS#8 "PRIVATE KEY", what `openssl genpkey`
// writes and mbedTLS reads.
func EncodeKeyPEM(k crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, fmt.Errorf("pki: encoding private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// ParseCertsPEM returns every CERTIFICATE block in b, in order; other
// blocks are skipped. It fails when there is none.
func ParseCertsPEM(b []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	rest := b
	for {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("pki: parsing certificate %d: %w", len(out)+1, err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("pki: no certificate found")
	}
	return out, nil
}

// ParseKeyPEM reads the first private key block: PKCS#8 "PRIVATE KEY",
// PKCS#1 "RSA PRIVATE KEY" or SEC1 "EC PRIVATE KEY". Encrypted keys are
// refused.
func ParseKeyPEM(b []byte) (crypto.Signer, error) {
	rest := b
	for {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			return nil, errors.New("pki: no private key found")
		}
		var k any
		var err error
		switch blk.Type {
		case "PRIVATE KEY":
			k, err = x509.ParsePKCS8PrivateKey(blk.Bytes)
		case "RSA PRIVATE KEY":
			k, err = x509.ParsePKCS1PrivateKey(blk.Bytes)
		case "EC PRIVATE KEY":
			k, err = x509.ParseECPrivateKey(blk.Bytes)
		case "ENCRYPTED PRIVATE KEY":
			return nil, errors.New("pki: encrypted private keys are not supported")
		default:
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("pki: parsing %s: %w", strings.ToLower(blk.Type), err)
		}
		s, ok := k.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("pki: unsupported private key type %T", k)
		}
		return s, nil
	}
}

// WriteFileAtomic writes data to a temporary file beside path, syncs it and
// renames it over path, so readers see the old or the new content, never a
// torn file, even across a power cut on the line.
func WriteFileAtomic(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("pki: writing %s: %w", path, err)
	}
	tmp := f.Name()
	fail := func(err error) error {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("pki: writing %s: %w", path, err)
	}
	if err := f.Chmod(perm); err != nil {
		return fail(err)
	}
	if _, err := f.Write(data); err != nil {
		return fail(err)
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("pki: writing %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("pki: writing %s: %w", path, err)
	}
	// The rename is only durable once the directory entry is on disk.
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

// MkdirPrivate makes dir (and its parents) and leaves dir itself readable
// by its owner only, whatever the umask and whatever its mode was: it holds
// keys or a database with device data.
func MkdirPrivate(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if fi.Mode().Perm()&0o077 != 0 {
		if err := os.Chmod(dir, 0o700); err != nil {
			return fmt.Errorf("making %s owner-only: %w", dir, err)
		}
	}
	return nil
}
