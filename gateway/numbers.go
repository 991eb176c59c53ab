package gateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
)

// Numbers a device sends are stored as the JSON text it sent, so a number
// no JSON client can hold would be stored and then break every reader:
// JavaScript and Go decode 1e400 as Infinity or an error, and integers past
// int64 lose their value in most clients. Such numbers are refused: an
// integer (no fraction, no exponent) must fit int64, any other number
// float64.

// numberInRange checks one JSON number's text (already grammatical).
func numberInRange(s []byte) error {
	if !bytes.ContainsAny(s, ".eE") {
		// 18 digits always fit int64: only longer ones need parsing.
		if len(s) <= 18 {
			return nil
		}
		if _, err := strconv.ParseInt(string(s), 10, 64); err != nil {
			return fmt.Errorf("integer %.40s is outside the 64-bit range", s)
		}
		return nil
	}
	// Without an exponent only a number of over 300 digits can overflow.
	if len(s) < 300 && !bytes.ContainsAny(s, "eE") {
		return nil
	}
	if f, err := strconv.ParseFloat(string(s), 64); err != nil && math.IsInf(f, 0) {
		return fmt.Errorf("number %.40s is outside the float64 range", s)
	}
	return nil
}

// nestedNumbersInRange applies numberInRange to every number inside a
// nested object or array value.
func nestedNumbersInRange(raw []byte) error {
	if !bytes.ContainsAny(raw, "0123456789") {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if n, ok := tok.(json.Number); ok {
			if err := numberInRange([]byte(n)); err != nil {
				return err
			}
		}
	}
}
