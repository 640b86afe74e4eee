package kbucket

import (
	"crypto/sha256"
	"encoding/binary"
	"math/rand/v2"
)

// Cover is a set of keyspace subtrees (all keys sharing some prefix) that
// are marked as covered, for instance because a lookup has found every
// peer in them. Two covered siblings make their parent covered. The zero
// value is an empty cover. It does not lock.
//
// ProvideMany uses it to know when the closest peers it has learned of for
// a key are the key's true closest: a lookup whose k-th closest peer
// shares p leading bits with the target has found every peer sharing p+1
// bits with it, so that subtree is covered; and a key whose k closest
// known peers all lie in a covered subtree has no unknown peer closer.
type Cover struct {
	root coverNode
}

type coverNode struct {
	full  bool
	child [2]*coverNode
}

// bit is bit i (0 = most significant) of id.
func bit(id ID, i int) int {
	return int(id[i/8]>>(7-uint(i%8))) & 1
}

// flipBit returns id with bit i inverted.
func flipBit(id ID, i int) ID {
	id[i/8] ^= 0x80 >> uint(i%8)
	return id
}

// Mark covers the subtree of the keys sharing the first depth bits
// (0..256) of id.
func (c *Cover) Mark(id ID, depth int) {
	depth = min(max(depth, 0), 256)
	path := make([]*coverNode, 0, depth+1)
	n := &c.root
	for i := range depth {
		if n.full {
			return
		}
		path = append(path, n)
		b := bit(id, i)
		if n.child[b] == nil {
			n.child[b] = &coverNode{}
		}
		n = n.child[b]
	}
	n.full, n.child = true, [2]*coverNode{}
	// Two covered children cover their parent.
	for i := len(path) - 1; i >= 0; i-- {
		p := path[i]
		if p.child[0] == nil || p.child[1] == nil || !p.child[0].full || !p.child[1].full {
			break
		}
		p.full, p.child = true, [2]*coverNode{}
	}
}

// Covered reports whether the whole subtree of the keys sharing the first
// depth bits of id is covered.
func (c *Cover) Covered(id ID, depth int) bool {
	depth = min(max(depth, 0), 256)
	n := &c.root
	for i := range depth {
		if n.full {
			return true
		}
		if n = n.child[bit(id, i)]; n == nil {
			return false
		}
	}
	return n.full
}

// Uncovered returns a subtree inside the one of the keys sharing the first
// depth bits of id that holds no covered key, as a key of it and its
// prefix length, preferring the part on id's own side: id itself if it is
// not covered. ok is false when the whole subtree is covered.
func (c *Cover) Uncovered(id ID, depth int) (key ID, prefix int, ok bool) {
	depth = min(max(depth, 0), 256)
	n := &c.root
	for i := 0; ; i++ {
		switch {
		case n == nil:
			return id, i, true
		case n.full || i == 256:
			return ID{}, 0, false
		}
		b := bit(id, i)
		if i >= depth && n.child[b] != nil && n.child[b].full {
			// Marking merges covered siblings, so the other side is not
			// covered whole.
			id = flipBit(id, i)
			b ^= 1
		}
		n = n.child[b]
	}
}

// KeyWithPrefix returns bytes whose keyspace position ([KeyForBytes])
// shares at least prefix leading bits with id: a key a FIND_NODE can carry
// (the receiver hashes it) to look into that subtree. The bytes have the
// form of a sha2-256 multihash. Finding them takes about 2^prefix hashes,
// so the search gives up after maxTries and reports false.
func KeyWithPrefix(id ID, prefix int, r *rand.Rand, maxTries int) ([]byte, bool) {
	var buf [34]byte
	buf[0], buf[1] = 0x12, 0x20
	for range maxTries {
		for i := 2; i < len(buf); i += 8 {
			binary.BigEndian.PutUint64(buf[i:], r.Uint64())
		}
		if CommonPrefixLen(id, sha256.Sum256(buf[:])) >= prefix {
			return buf[:], true
		}
	}
	return nil, false
}
