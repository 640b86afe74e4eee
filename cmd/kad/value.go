package main

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// cliNamespace is the namespace of the values kad's commands put and get:
// keys "/kad-cli/<name>". A DHT stores only values its validator accepts,
// and a namespace's validator must be the same on every node, so serve
// and the one-shot commands all register cliValidator for it.
const cliNamespace = "kad-cli"

// A /kad-cli/ record's value is "<unix nanoseconds>\n<data>": the data is
// whatever the user put, the time when they put it, so that of two values
// every node prefers the newer one.

// encodeValue wraps data written at t.
func encodeValue(data []byte, t time.Time) []byte {
	return append([]byte(strconv.FormatInt(t.UnixNano(), 10)+"\n"), data...)
}

// decodeValue splits a record value into its write time and data.
func decodeValue(v []byte) (time.Time, []byte, error) {
	head, data, ok := bytes.Cut(v, []byte("\n"))
	if !ok {
		return time.Time{}, nil, errors.New("kad-cli: value without a time line")
	}
	ns, err := strconv.ParseInt(string(head), 10, 64)
	if err != nil || ns <= 0 {
		return time.Time{}, nil, fmt.Errorf("kad-cli: bad time %q", head)
	}
	return time.Unix(0, ns), data, nil
}

// cliKey turns a command-line name into a key: "greeting" and
// "/kad-cli/greeting" are both /kad-cli/greeting.
func cliKey(name string) (string, error) {
	prefix := "/" + cliNamespace + "/"
	if strings.HasPrefix(name, "/") {
		if !strings.HasPrefix(name, prefix) || len(name) == len(prefix) {
			return "", usagef("key %q: kad's commands read and write only keys under %s, the namespace they have a validator for", name, prefix)
		}
		return name, nil
	}
	if name == "" {
		return "", usagef("empty name")
	}
	return prefix + name, nil
}

// cliValidator is the permissive validator of the kad-cli namespace: any
// data is valid, and the newest write wins. It proves nothing about who
// wrote a value; applications that need that sign their records (as IPNS
// does) and check the signature in their own validator.
type cliValidator struct{}

// Validate implements record.Validator: the key is /kad-cli/<name> and
// the value carries its write time.
func (cliValidator) Validate(key string, value []byte) error {
	name, ok := strings.CutPrefix(key, "/"+cliNamespace+"/")
	if !ok || name == "" {
		return fmt.Errorf("kad-cli: bad key %q", key)
	}
	_, _, err := decodeValue(value)
	return err
}

// Select implements record.Validator: the newest value, and of values
// written at the same instant the greatest, so every node picks the same.
func (cliValidator) Select(_ string, values [][]byte) (int, error) {
	best := -1
	var bestT time.Time
	for i, v := range values {
		t, _, err := decodeValue(v)
		if err != nil {
			continue
		}
		if best < 0 || t.After(bestT) || (t.Equal(bestT) && bytes.Compare(v, values[best]) > 0) {
			best, bestT = i, t
		}
	}
	if best < 0 {
		return 0, errors.New("kad-cli: no valid value")
	}
	return best, nil
}
