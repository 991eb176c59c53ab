package twin

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
)

// ProvInfo is the image's prov.json: the per-unit provisioning secrets the
// factory put next to the certificate.
type ProvInfo struct {
	ServiceName  string `json:"service_name"`
	PoP          string `json:"pop"`
	Sec2Username string `json:"sec2_username"`
}

// FileNames are the names of the identity files inside the SPIFFS image (or
// a unit directory). The zero value means the factory's defaults.
type FileNames struct {
	Cert, Key, Chain, Prov string
}

func (n FileNames) withDefaults() FileNames {
	if n.Cert == "" {
		n.Cert = "device.crt"
	}
	if n.Key == "" {
		n.Key = "device.key"
	}
	if n.Chain == "" {
		n.Chain = "server_chain.pem"
	}
	if n.Prov == "" {
		n.Prov = "prov.json"
	}
	return n
}

// Identity is what the firmware's cert_manager loads at boot.
type Identity struct {
	SN    string // the certificate's CN, which is the unit's serial number
	Cert  tls.Certificate
	Roots *x509.CertPool // the server is verified against these
	Prov  ProvInfo       // zero when the image has no prov.json
	MAC   string         // a stable, Espressif-looking station MAC
}

// ReadFunc reads one file of the device's storage by bare name.
type ReadFunc func(name string) ([]byte, error)

// DirReader reads identity files from a directory, such as a factory unit
// directory.
func DirReader(dir string) ReadFunc {
	return func(name string) ([]byte, error) { return os.ReadFile(filepath.Join(dir, name)) }
}

// LoadIdentity loads the certificate, key, CA chain and prov.json through
// read. prov.json is optional, as it is for the seed firmware, which predates it.
func LoadIdentity(read ReadFunc, names FileNames) (*Identity, error) {
	names = names.withDefaults()
	certPEM, err := read(names.Cert)
	if err != nil {
		return nil, fmt.Errorf("twin: loading %s: %w", names.Cert, err)
	}
	keyPEM, err := read(names.Key)
	if err != nil {
		return nil, fmt.Errorf("twin: loading %s: %w", names.Key, err)
	}
	chainPEM, err := read(names.Chain)
	if err != nil {
		return nil, fmt.Errorf("twin: loading %s: %w", names.Chain, err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("twin: %s and %s: %w", names.Cert, names.Key, err)
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("twin: parsing %s: %w", names.Cert, err)
	}
	cert.Leaf = leaf
	roots, chain, err := chainPool(chainPEM)
	if err != nil {
		return nil, fmt.Errorf("twin: %s: %w", names.Chain, err)
	}
	// Chain auto-provisioning needs the intermediate in the client's
	// Certificate message. A device.crt holding only the leaf gets its
	// issuer from the chain file, as an ESP-IDF build that concatenates
	// them would send it.
	if len(cert.Certificate) == 1 {
		for _, c := range chain {
			if bytes.Equal(c.RawSubject, leaf.RawIssuer) && !bytes.Equal(c.RawSubject, c.RawIssuer) &&
				leaf.CheckSignatureFrom(c) == nil {
				cert.Certificate = append(cert.Certificate, c.Raw)
				break
			}
		}
	}
	id := &Identity{SN: leaf.Subject.CommonName, Cert: cert, Roots: roots}
	if id.SN == "" {
		return nil, fmt.Errorf("twin: %s has no common name", names.Cert)
	}
	id.MAC = macFor(id.SN)
	if b, err := read(names.Prov); err == nil {
		if err := json.Unmarshal(b, &id.Prov); err != nil {
			return nil, fmt.Errorf("twin: parsing %s: %w", names.Prov, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("twin: loading %s: %w", names.Prov, err)
	}
	return id, nil
}

// chains interns parsed CA chains by content: every unit of a batch carries
// the same server_chain.pem, and a simulator of 10,000 twins should parse
// and hold it once, not 10,000 times.
var chains sync.Map // string(PEM) → *parsedChain

type parsedChain struct {
	pool  *x509.CertPool
	certs []*x509.Certificate
}

func chainPool(b []byte) (*x509.CertPool, []*x509.Certificate, error) {
	if v, ok := chains.Load(string(b)); ok {
		pc := v.(*parsedChain)
		return pc.pool, pc.certs, nil
	}
	certs, err := parseCerts(b)
	if err != nil {
		return nil, nil, fmt.Errorf("parsing: %w", err)
	}
	if len(certs) == 0 {
		return nil, nil, errors.New("holds no certificate")
	}
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	v, _ := chains.LoadOrStore(string(b), &parsedChain{pool: pool, certs: certs})
	pc := v.(*parsedChain)
	return pc.pool, pc.certs, nil
}

func parseCerts(b []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return out, nil
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
}

// macFor derives a stable MAC under Espressif's 24:0A:C4 OUI from the SN, so
// that a twin reports the same MAC on every boot.
func macFor(sn string) string {
	h := sha256.Sum256([]byte(sn))
	return fmt.Sprintf("24:0A:C4:%02X:%02X:%02X", h[0], h[1], h[2])
}

// serviceName is the firmware's default BLE/SoftAP name, PROV_ and the last
// three bytes of the MAC, used when prov.json does not name the service.
func serviceName(id *Identity) string {
	if id.Prov.ServiceName != "" {
		return id.Prov.ServiceName
	}
	return "PROV_" + strings.ReplaceAll(id.MAC[9:], ":", "")
}
