package pki

import (
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// MaxCNLength bounds a device certificate's Common Name, in bytes. It is
// the device's name everywhere (store keys, bus subjects, URLs, labels).
const MaxCNLength = 128

// ErrBadCN is wrapped by every refusal of DeviceCN.
var ErrBadCN = errors.New("unusable certificate common name")

// DeviceCN returns the Common Name a device is named by, refusing one that
// could confuse a person or a program: the subject must hold exactly one
// CN (with two, which one names the device would depend on the parser:
// Go's keeps the last, OpenSSL's tools often show the first), it must be
// valid UTF-8, hold no control or format characters (no NUL, newline,
// escape, bidirectional override or zero-width character), not begin or
// end with white space, and be at most MaxCNLength bytes.
func DeviceCN(cert *x509.Certificate) (string, error) {
	n := 0
	for _, atv := range cert.Subject.Names {
		if atv.Type.Equal(oidCommonName) {
			n++
		}
	}
	if n != 1 {
		return "", fmt.Errorf("%w: the subject has %d common names, want exactly one", ErrBadCN, n)
	}
	cn := cert.Subject.CommonName
	if err := CheckCN(cn); err != nil {
		return "", err
	}
	return cn, nil
}

// CheckCN applies DeviceCN's rules to one name.
func CheckCN(cn string) error {
	switch {
	case cn == "":
		return fmt.Errorf("%w: empty", ErrBadCN)
	case len(cn) > MaxCNLength:
		return fmt.Errorf("%w: %d bytes, at most %d", ErrBadCN, len(cn), MaxCNLength)
	case !utf8.ValidString(cn):
		return fmt.Errorf("%w: not valid UTF-8", ErrBadCN)
	}
	for i, r := range cn {
		if unicode.IsControl(r) || unicode.Is(unicode.Cf, r) {
			return fmt.Errorf("%w: control or format character %U at byte %d", ErrBadCN, r, i)
		}
	}
	if strings.TrimSpace(cn) != cn {
		return fmt.Errorf("%w: leading or trailing white space", ErrBadCN)
	}
	return nil
}
