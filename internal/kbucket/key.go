// Package kbucket is the pure Kademlia routing table of kad: keyspace
// arithmetic (sha2-256 keys, XOR distance) and 256 k-buckets indexed by the
// common prefix length with the local key.
//
// Nothing here locks, starts goroutines, reads the clock or touches the
// network: callers pass the current time in and act on the returned
// [Outcome] (for example by pinging the [Table.Oldest] peer of a full
// bucket). That keeps the table deterministic and cheap to test; the
// exported kad.RoutingTable wraps it in a mutex.
package kbucket

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"math/bits"
	"math/rand/v2"

	"github.com/libp2p/go-libp2p/core/peer"
)

// ID is a 256-bit position in the keyspace. It is a value type so that keys
// can be compared, copied and used as map keys without allocating.
type ID [32]byte

// KeyForBytes places an arbitrary DHT key (a record key, or a provider
// multihash) in the keyspace, as every implementation of the protocol does:
// by hashing it with sha2-256.
func KeyForBytes(b []byte) ID {
	return sha256.Sum256(b)
}

// PeerKey places a peer in the keyspace. It hashes the binary peer id (not
// its base58 or CID text form), which is what remote peers do too.
func PeerKey(p peer.ID) ID {
	// Copying into a stack buffer avoids the heap allocation a []byte
	// conversion of a string longer than 32 bytes would cost; real peer ids
	// are at most 42 bytes (identity multihash) or 34 (sha2-256 multihash).
	var buf [64]byte
	if len(p) <= len(buf) {
		n := copy(buf[:], p)
		return sha256.Sum256(buf[:n])
	}
	return sha256.Sum256([]byte(p))
}

// String renders the key in hex, the form the specifications use, so keys in
// logs and test failures can be checked against them.
func (a ID) String() string {
	return hex.EncodeToString(a[:])
}

// Xor is the Kademlia distance between two keys, itself a key: the smaller
// it is as a big-endian integer, the closer the keys are.
func (a ID) Xor(b ID) ID {
	var out ID
	for i := 0; i < len(a); i += 8 {
		binary.BigEndian.PutUint64(out[i:], binary.BigEndian.Uint64(a[i:])^binary.BigEndian.Uint64(b[i:]))
	}
	return out
}

// CommonPrefixLen is the number of leading bits a and b share (0..256). It
// selects the bucket a peer belongs in and bounds its distance: a larger
// common prefix means a smaller XOR distance.
func CommonPrefixLen(a, b ID) int {
	for i := 0; i < len(a); i += 8 {
		x := binary.BigEndian.Uint64(a[i:]) ^ binary.BigEndian.Uint64(b[i:])
		if x != 0 {
			return i*8 + bits.LeadingZeros64(x)
		}
	}
	return 256
}

// CompareDistance orders a and b by their XOR distance to target without
// materialising either distance: -1 if a is closer, +1 if b is closer, 0 if
// they are equally close (which only happens when a == b). Lookups and sorts
// call it in their inner loop, so it does not allocate.
func CompareDistance(a, b, target ID) int {
	for i := 0; i < len(target); i += 8 {
		t := binary.BigEndian.Uint64(target[i:])
		da := binary.BigEndian.Uint64(a[i:]) ^ t
		db := binary.BigEndian.Uint64(b[i:]) ^ t
		if da != db {
			if da < db {
				return -1
			}
			return 1
		}
	}
	return 0
}

// RandomIDWithCPL returns a uniformly random key in bucket cpl of self, that
// is one whose CommonPrefixLen with self is exactly cpl. Bucket refresh looks
// such a key up to find peers for a bucket. The key is built directly (copy
// cpl bits of self, flip the next, randomise the rest), so it costs the same
// for every cpl. It panics if cpl is outside 0..255, a programming error.
//
// The result is a keyspace position, not a preimage: a FIND_NODE sent on the
// wire carries bytes the remote side hashes, so use [RandomPeerIDWithCPL]
// when the key must travel.
func RandomIDWithCPL(self ID, cpl int, r *rand.Rand) ID {
	if cpl < 0 || cpl > 255 {
		panic("kbucket: RandomIDWithCPL: cpl out of range 0..255")
	}
	var out ID
	for i := 0; i < len(out); i += 8 {
		binary.BigEndian.PutUint64(out[i:], r.Uint64())
	}
	byteIdx, bitIdx := cpl/8, uint(cpl%8)
	copy(out[:byteIdx], self[:byteIdx])
	flip := byte(0x80) >> bitIdx // the first bit that must differ from self
	keep := ^(flip<<1 - 1)       // bits above it, copied from self (none when bitIdx is 0: flip<<1 wraps to 0)
	low := flip - 1              // bits below it stay random
	s := self[byteIdx]
	out[byteIdx] = s&keep | ^s&flip | out[byteIdx]&low
	return out
}

// RandomPeerIDWithCPL returns a random sha2-256-multihash peer id whose
// [PeerKey] has CommonPrefixLen exactly cpl with self, for refresh lookups that
// must send a real preimage on the wire (FIND_NODE carries peer id bytes, and
// the receiver hashes them). Finding one takes about 2^(cpl+1) hashes, so the
// search gives up after maxTries attempts and reports false; callers should
// only refresh the low buckets this way (a table of about N peers with bucket
// size k uses buckets up to roughly log2(N/k)).
func RandomPeerIDWithCPL(self ID, cpl int, r *rand.Rand, maxTries int) (peer.ID, bool) {
	if cpl < 0 || cpl > 255 {
		return "", false
	}
	// 0x12 = sha2-256, 0x20 = 32-byte digest: the multihash form of peer
	// ids derived from large (RSA) keys, which every implementation parses.
	var buf [34]byte
	buf[0], buf[1] = 0x12, 0x20
	for range maxTries {
		for i := 2; i < len(buf); i += 8 {
			binary.BigEndian.PutUint64(buf[i:], r.Uint64())
		}
		if CommonPrefixLen(self, sha256.Sum256(buf[:])) == cpl {
			return peer.ID(buf[:]), true
		}
	}
	return "", false
}

// dist is a XOR distance split into big-endian words, so that comparing two
// distances is at most four integer comparisons.
type dist [4]uint64

func distance(a, target ID) dist {
	var d dist
	for i := range d {
		d[i] = binary.BigEndian.Uint64(a[i*8:]) ^ binary.BigEndian.Uint64(target[i*8:])
	}
	return d
}

func (d dist) cmp(e dist) int {
	for i := range d {
		if d[i] != e[i] {
			if d[i] < e[i] {
				return -1
			}
			return 1
		}
	}
	return 0
}
