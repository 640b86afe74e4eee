package sim

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
)

// Validator accepts the attack scenarios' values, made by Sign: an 8-byte version
// and a tag only the simulation's honest writers can make (a keyed hash
// standing for a signature); the highest version wins.
type Validator struct{}

// Sign is version v of the value under key, validly tagged.
func Sign(key string, v uint64) []byte {
	out := binary.BigEndian.AppendUint64(nil, v)
	h := sha256.New()
	h.Write([]byte("kad simulation writer key"))
	h.Write([]byte(key))
	h.Write(out)
	return h.Sum(out)
}

// Forge is version v of the value under key with a bad tag.
func Forge(key string, v uint64) []byte {
	out := Sign(key, v)
	out[len(out)-1] ^= 0xff
	return out
}

// ErrForged is returned by Validator.Validate for a value Sign did not
// make.
var ErrForged = errors.New("sim: forged value")

// Validate accepts a value made by Sign for key.
func (Validator) Validate(key string, value []byte) error {
	if len(value) != 8+sha256.Size {
		return fmt.Errorf("%w: %d bytes", ErrForged, len(value))
	}
	if !bytes.Equal(value, Sign(key, binary.BigEndian.Uint64(value))) {
		return ErrForged
	}
	return nil
}

// Select picks the highest version.
func (Validator) Select(_ string, values [][]byte) (int, error) {
	best := -1
	var bestV uint64
	for i, v := range values {
		if len(v) < 8 {
			continue
		}
		if n := binary.BigEndian.Uint64(v); best < 0 || n > bestV {
			best, bestV = i, n
		}
	}
	if best < 0 {
		return 0, ErrForged
	}
	return best, nil
}
