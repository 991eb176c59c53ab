package pki

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

func refuseExisting(dir string, files ...string) error {
	for _, f := range files {
		if _, err := os.Stat(filepath.Join(dir, f)); err == nil {
			return fmt.Errorf("pki: %s already exists, refusing to overwrite", filepath.Join(dir, f))
		}
	}
	return nil
}

// InitRoot makes only the root (root-ca.crt, root-ca.key) in dir: the
// first step on the offline machine.
func InitRoot(dir string, kt KeyType) error {
	if err := refuseExisting(dir, RootCertFile, RootKeyFile); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("pki: creating ca directory: %w", err)
	}
	key, err := GenerateKey(kt)
	if err != nil {
		return err
	}
	root, err := NewRoot(key, "thingline Root CA", 0)
	if err != nil {
		return err
	}
	if err := WriteKeyFile(filepath.Join(dir, RootKeyFile), key); err != nil {
		return err
	}
	return WriteFileAtomic(filepath.Join(dir, RootCertFile), EncodeCertPEM(root), 0o644)
}

// InitIntermediateKey makes device-ca.key in dir and returns a PEM CSR for
// it, to be signed on the offline machine by SignIntermediateFile. The key
// never leaves dir.
func InitIntermediateKey(dir string, kt KeyType) ([]byte, error) {
	if err := refuseExisting(dir, DeviceKeyFile, DeviceCertFile); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("pki: creating ca directory: %w", err)
	}
	key, err := GenerateKey(kt)
	if err != nil {
		return nil, err
	}
	csr, err := NewCSR(key, "thingline Device CA")
	if err != nil {
		return nil, err
	}
	if err := WriteKeyFile(filepath.Join(dir, DeviceKeyFile), key); err != nil {
		return nil, err
	}
	return EncodeCSRPEM(csr), nil
}

// SignIntermediateFile signs the CSR in csrPEM with the root in rootDir
// and writes the device CA certificate to out. root-ca.crt is written
// beside out as well (or checked to be the same root if already there), so
// that copying out's directory back to the line completes the CA.
func SignIntermediateFile(rootDir string, csrPEM []byte, out string, validity time.Duration) error {
	roots, err := readCerts(filepath.Join(rootDir, RootCertFile))
	if err != nil {
		return err
	}
	rootKey, err := ReadKeyFile(filepath.Join(rootDir, RootKeyFile))
	if err != nil {
		return err
	}
	der, err := CSRFromPEM(csrPEM)
	if err != nil {
		return err
	}
	c, err := SignIntermediateCSR(roots[0], rootKey, der, "", validity)
	if err != nil {
		return err
	}
	rootOut := filepath.Join(filepath.Dir(out), RootCertFile)
	if b, err := os.ReadFile(rootOut); err == nil {
		have, err := ParseCertsPEM(b)
		if err != nil {
			return fmt.Errorf("pki: %s: %w", rootOut, err)
		}
		if !bytes.Equal(have[0].Raw, roots[0].Raw) {
			return fmt.Errorf("pki: %s holds a different root", rootOut)
		}
	} else if err := WriteFileAtomic(rootOut, EncodeCertPEM(roots[0]), 0o644); err != nil {
		return err
	}
	return WriteFileAtomic(out, EncodeCertPEM(c), 0o644)
}
