package providers

import (
	"encoding/base32"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
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

// legacyVersion is the first byte of a value in the old layout, one
// datastore entry per (key, provider) under keyPrefix(key); setVersion of
// a value in the current one, one entry per key (setKey) holding all its
// providers. Sweep moves old entries into the current layout.
const (
	legacyVersion = 1
	setVersion    = 2
)

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

// setKey is where the providers of key are stored: one exact key, so
// finding them is a Get, whatever else the datastore holds.
func setKey(key []byte) ds.Key {
	return ds.RawKey(Prefix + b32.EncodeToString(key))
}

// keyPrefix is the prefix of key's entries in the old layout, ending in '/'.
func keyPrefix(key []byte) string {
	return Prefix + b32.EncodeToString(key) + "/"
}

// dsKey is where the old layout stored the record of provider p for key.
func dsKey(key []byte, p peer.ID) ds.Key {
	return ds.RawKey(keyPrefix(key) + b32.EncodeToString([]byte(p)))
}

// parseDSKey splits an old-layout datastore key back into the provided key (in its
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

// decodeRecord parses an old-layout value: version byte, received and
// addrsAt as signed varint Unix nanoseconds (0 for no addresses), the
// address count, then each address length-prefixed. Addresses that do not
// parse are dropped; anything else malformed is errCorrupt.
func decodeRecord(b []byte) (*record, error) {
	if len(b) == 0 || b[0] != legacyVersion {
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
	var err error
	if r.addrs, b, err = readAddrs(b, count, ""); err != nil {
		return nil, err
	}
	if len(b) != 0 {
		return nil, fmt.Errorf("%w: %d trailing bytes", errCorrupt, len(b))
	}
	if len(r.addrs) > 0 {
		r.addrsAt = time.Unix(0, at)
	}
	return r, nil
}

// readAddrs reads count length-prefixed addresses from the front of b and
// returns them with the rest of b. Addresses that do not parse are
// dropped; a length running past b is errCorrupt, named with what.
func readAddrs(b []byte, count uint64, what string) ([]ma.Multiaddr, []byte, error) {
	var out []ma.Multiaddr
	for j := uint64(0); j < count; j++ {
		l, n := binary.Uvarint(b)
		if n <= 0 || l > uint64(len(b)-n) {
			return nil, nil, fmt.Errorf("%w: %saddress %d", errCorrupt, what, j)
		}
		raw := b[n : n+int(l)]
		b = b[n+int(l):]
		a, err := ma.NewMultiaddrBytes(append([]byte(nil), raw...))
		if err != nil {
			continue
		}
		out = append(out, a)
	}
	return out, b, nil
}

// encodeSet writes the providers of one key as: version byte, the count,
// then per provider its id (length-prefixed), the time of its last
// announcement as signed varint Unix milliseconds, how long before that
// its addresses arrived (signed varint ms, only if it has addresses), the
// address count and each address length-prefixed. About 70 bytes for a
// provider with one address: the key is not repeated per provider, times
// take 6 bytes and 1 instead of 9 and 9. Times are kept to the
// millisecond; Add truncates them so the cache agrees with the datastore.
func encodeSet(set keySet) []byte {
	// The exact size: a datastore may keep the slice as given (go-datastore's
	// MapDatastore does), and every stored set would carry the slack of a
	// worst-case estimate, about 60 bytes for a set of one.
	n := 1 + uvarintLen(uint64(len(set)))
	for p, r := range set {
		n += uvarintLen(uint64(len(p))) + len(p) + varintLen(r.received.UnixMilli()) + uvarintLen(uint64(len(r.addrs)))
		if len(r.addrs) == 0 {
			continue
		}
		n += varintLen(r.received.UnixMilli() - r.addrsAt.UnixMilli())
		for _, a := range r.addrs {
			l := len(a.Bytes())
			n += uvarintLen(uint64(l)) + l
		}
	}
	// Providers in id order: the same set always encodes the same.
	ps := make([]peer.ID, 0, len(set))
	for p := range set {
		ps = append(ps, p)
	}
	slices.Sort(ps)
	b := make([]byte, 0, n)
	b = append(b, setVersion)
	b = binary.AppendUvarint(b, uint64(len(ps)))
	for _, p := range ps {
		r := set[p]
		b = binary.AppendUvarint(b, uint64(len(p)))
		b = append(b, p...)
		b = binary.AppendVarint(b, r.received.UnixMilli())
		b = binary.AppendUvarint(b, uint64(len(r.addrs)))
		if len(r.addrs) == 0 {
			continue
		}
		b = binary.AppendVarint(b, r.received.UnixMilli()-r.addrsAt.UnixMilli())
		for _, a := range r.addrs {
			ab := a.Bytes()
			b = binary.AppendUvarint(b, uint64(len(ab)))
			b = append(b, ab...)
		}
	}
	return b
}

// uvarintLen is the length of x as binary.AppendUvarint writes it.
func uvarintLen(x uint64) int {
	n := 1
	for x >= 0x80 {
		x >>= 7
		n++
	}
	return n
}

// varintLen is the length of x as binary.AppendVarint writes it.
func varintLen(x int64) int {
	ux := uint64(x) << 1
	if x < 0 {
		ux = ^ux
	}
	return uvarintLen(ux)
}

// decodeSet parses what encodeSet wrote. Addresses that do not parse are
// dropped; anything else malformed is errCorrupt.
func decodeSet(b []byte) (keySet, error) {
	if len(b) == 0 || b[0] != setVersion {
		return nil, fmt.Errorf("%w: unknown version", errCorrupt)
	}
	b = b[1:]
	count, n := binary.Uvarint(b)
	// Each provider takes at least 4 bytes: a corrupt count cannot make
	// the map allocate more than the value's size.
	if n <= 0 || count > uint64(len(b))/4 {
		return nil, fmt.Errorf("%w: provider count", errCorrupt)
	}
	b = b[n:]
	set := make(keySet, count)
	for i := uint64(0); i < count; i++ {
		l, n := binary.Uvarint(b)
		if n <= 0 || l == 0 || l > uint64(len(b)-n) {
			return nil, fmt.Errorf("%w: provider %d id", errCorrupt, i)
		}
		p, err := peer.IDFromBytes(b[n : n+int(l)])
		if err != nil {
			return nil, fmt.Errorf("%w: provider %d id: %v", errCorrupt, i, err)
		}
		b = b[n+int(l):]
		recv, n := binary.Varint(b)
		if n <= 0 {
			return nil, fmt.Errorf("%w: provider %d time", errCorrupt, i)
		}
		b = b[n:]
		na, n := binary.Uvarint(b)
		if n <= 0 || na > maxStoredAddrs {
			return nil, fmt.Errorf("%w: provider %d address count", errCorrupt, i)
		}
		b = b[n:]
		r := &record{received: time.UnixMilli(recv)}
		if na > 0 {
			age, n := binary.Varint(b)
			if n <= 0 {
				return nil, fmt.Errorf("%w: provider %d address time", errCorrupt, i)
			}
			b = b[n:]
			r.addrsAt = time.UnixMilli(recv - age)
		}
		if r.addrs, b, err = readAddrs(b, na, fmt.Sprintf("provider %d ", i)); err != nil {
			return nil, err
		}
		if na > 0 && len(r.addrs) == 0 {
			r.addrsAt = time.Time{}
		}
		if _, dup := set[p]; dup {
			return nil, fmt.Errorf("%w: provider %s twice", errCorrupt, p)
		}
		set[p] = r
	}
	if len(b) != 0 {
		return nil, fmt.Errorf("%w: %d trailing bytes", errCorrupt, len(b))
	}
	return set, nil
}
