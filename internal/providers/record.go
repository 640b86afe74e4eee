package providers

import (
	"encoding/base32"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"time"

	ds "github.com/ipfs/go-datastore"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
)

// Prefix is the datastore namespace of provider records. The values side
// keeps its records under "/records/" in the same datastore, so the two
// never see each other's keys.
const Prefix = "/providers/"

// b32 encodes keys and peer ids into datastore key segments: its alphabet
// has no '/', so a segment can never be mistaken for a path separator.
var b32 = base32.StdEncoding.WithPadding(base32.NoPadding)

// recordVersion is the first byte of every stored value, so the encoding
// can change later without misreading old records.
const recordVersion = 1

// maxStoredAddrs bounds the addresses decoded from one stored value, so a
// corrupted value cannot make a decode allocate without limit.
const maxStoredAddrs = 64

var errCorrupt = errors.New("providers: corrupt record")

// record is one provider of one key.
type record struct {
	received time.Time      // last time the provider announced the key
	addrsAt  time.Time      // when addrs were received; zero if none
	addrs    []ma.Multiaddr // the provider's addresses, as it announced them
}

// keyPrefix is the datastore prefix of every provider of key, ending in '/'.
func keyPrefix(key []byte) string {
	return Prefix + b32.EncodeToString(key) + "/"
}

// dsKey is where the record of provider p for key is stored.
func dsKey(key []byte, p peer.ID) ds.Key {
	return ds.RawKey(keyPrefix(key) + b32.EncodeToString([]byte(p)))
}

// parseDSKey splits a datastore key back into the provided key (in its
// encoded form, as the cache indexes it) and the provider.
func parseDSKey(k string) (encKey string, p peer.ID, err error) {
	rest, ok := strings.CutPrefix(k, Prefix)
	if !ok {
		return "", "", fmt.Errorf("%w: key %q outside %s", errCorrupt, k, Prefix)
	}
	encKey, encPeer, ok := strings.Cut(rest, "/")
	if !ok || encKey == "" || strings.Contains(encPeer, "/") {
		return "", "", fmt.Errorf("%w: key %q", errCorrupt, k)
	}
	raw, err := b32.DecodeString(encPeer)
	if err != nil {
		return "", "", fmt.Errorf("%w: key %q: %v", errCorrupt, k, err)
	}
	p, err = peer.IDFromBytes(raw)
	if err != nil {
		return "", "", fmt.Errorf("%w: key %q: %v", errCorrupt, k, err)
	}
	return encKey, p, nil
}

// encode writes a record as: version byte, received and addrsAt as signed
// varint Unix nanoseconds (0 for no addresses), the address count, then
// each address length-prefixed.
func (r *record) encode() []byte {
	n := 1 + 3*binary.MaxVarintLen64
	for _, a := range r.addrs {
		n += binary.MaxVarintLen64 + len(a.Bytes())
	}
	b := make([]byte, 0, n)
	b = append(b, recordVersion)
	b = binary.AppendVarint(b, r.received.UnixNano())
	var at int64
	if len(r.addrs) > 0 {
		at = r.addrsAt.UnixNano()
	}
	b = binary.AppendVarint(b, at)
	b = binary.AppendUvarint(b, uint64(len(r.addrs)))
	for _, a := range r.addrs {
		ab := a.Bytes()
		b = binary.AppendUvarint(b, uint64(len(ab)))
		b = append(b, ab...)
	}
	return b
}

// decodeRecord parses what encode wrote. Addresses that do not parse are
// dropped; anything else malformed is errCorrupt.
func decodeRecord(b []byte) (*record, error) {
	if len(b) == 0 || b[0] != recordVersion {
		return nil, fmt.Errorf("%w: unknown version", errCorrupt)
	}
	b = b[1:]
	recv, n := binary.Varint(b)
	if n <= 0 {
		return nil, fmt.Errorf("%w: received time", errCorrupt)
	}
	b = b[n:]
	at, n := binary.Varint(b)
	if n <= 0 {
		return nil, fmt.Errorf("%w: address time", errCorrupt)
	}
	b = b[n:]
	count, n := binary.Uvarint(b)
	if n <= 0 || count > maxStoredAddrs {
		return nil, fmt.Errorf("%w: address count", errCorrupt)
	}
	b = b[n:]
	r := &record{received: time.Unix(0, recv)}
	for i := uint64(0); i < count; i++ {
		l, n := binary.Uvarint(b)
		if n <= 0 || l > uint64(len(b)-n) {
			return nil, fmt.Errorf("%w: address %d", errCorrupt, i)
		}
		raw := b[n : n+int(l)]
		b = b[n+int(l):]
		a, err := ma.NewMultiaddrBytes(append([]byte(nil), raw...))
		if err != nil {
			continue
		}
		r.addrs = append(r.addrs, a)
	}
	if len(b) != 0 {
		return nil, fmt.Errorf("%w: %d trailing bytes", errCorrupt, len(b))
	}
	if len(r.addrs) > 0 {
		r.addrsAt = time.Unix(0, at)
	}
	return r, nil
}
