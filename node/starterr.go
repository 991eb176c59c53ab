package node

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"syscall"
)

// StartError is a failure to start a node: what failed, why, and what the
// person starting it can do. Its message is one line.
type StartError struct {
	What string // "device listener :8883"
	Err  error
	Hint string // "stop what uses it or choose another address with --mqtt-listen"
}

func (e *StartError) Error() string {
	msg := e.What + ": " + oneLine(e.Err.Error())
	if e.Hint != "" {
		msg += "; " + e.Hint
	}
	return msg
}

func (e *StartError) Unwrap() error { return e.Err }

func startErr(what string, err error, hint string) error {
	if err == nil {
		err = errors.New("failed")
	}
	return &StartError{What: what, Err: err, Hint: hint}
}

// oneLine folds a multi-line cause (some drivers' errors have several)
// into one line.
func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// listenHint says what to do about a listener that could not be opened.
func listenHint(err error, flag string) string {
	switch {
	case errors.Is(err, syscall.EADDRINUSE):
		return "another process uses this address: stop it, or choose another with " + flag
	case errors.Is(err, syscall.EACCES):
		return "ports below 1024 need privileges: choose another with " + flag
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return "this machine has no such address: choose another with " + flag
	}
	return "check the address given with " + flag
}

// redactURL hides a password in a store or bus URL: the error is printed
// and logged.
func redactURL(u string) string {
	p, err := url.Parse(u)
	if err != nil || p.User == nil {
		if err != nil && strings.Contains(u, "@") {
			return "(unparsable URL)"
		}
		return u
	}
	return p.Redacted()
}

func storeName(cfg Config) string {
	if cfg.StoreURL == "" {
		return fmt.Sprintf("SQLite in %s", cfg.DataDir)
	}
	return redactURL(cfg.StoreURL)
}
