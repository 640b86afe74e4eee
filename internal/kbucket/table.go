package kbucket

import (
	"encoding/binary"
	"math/bits"
	"slices"
	"strconv"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// Outcome reports what [Table.Add] did, so the caller decides what to do next
// (for example ping the oldest peer of a full bucket) instead of the table
// doing I/O itself.
type Outcome int

const (
	// Added means the peer was inserted into its bucket.
	Added Outcome = iota
	// Updated means the peer was already in its bucket; its last-seen time
	// was refreshed.
	Updated
	// Pending means the peer's bucket is full, so the peer was put (or
	// refreshed) in that bucket's replacement cache. It takes the place of
	// the next bucket member that is removed, which is the caller's cue to
	// check the liveness of [Table.Oldest].
	Pending
	// Rejected means the peer cannot be stored: it is the local peer, the
	// empty id, or its bucket is full and replacement caches are disabled.
	Rejected
)

// String names the outcome for logs and test failures.
func (o Outcome) String() string {
	switch o {
	case Added:
		return "Added"
	case Updated:
		return "Updated"
	case Pending:
		return "Pending"
	case Rejected:
		return "Rejected"
	}
	return "Outcome(" + strconv.Itoa(int(o)) + ")"
}

// numBuckets is one bucket per possible common prefix length with self, bar
// 256 (self itself), so the table never splits buckets.
const numBuckets = 256

// entry is one known peer; its key is hashed once, on insertion, so that
// distance computations never hash again.
type entry struct {
	id       peer.ID
	key      ID
	lastSeen time.Time
}

// bucket holds the peers sharing one common prefix length with self, in
// insertion order. Both slices are allocated on first use: most of the 256
// buckets of a real table stay empty.
type bucket struct {
	peers        []entry
	replacements []entry
	refreshed    time.Time
}

// loc says where an indexed peer lives.
type loc struct {
	cpl    uint8
	cached bool // in the replacement cache rather than the bucket
}

// Table is the Kademlia routing table: 256 buckets of at most k peers, each
// with a replacement cache of candidates waiting for a free slot.
//
// A Table is not safe for concurrent mutation; callers wrap it in a lock.
// Methods that only report (Self, SelfKey, K, Find, Size, Peers, Nearest,
// LastSeen, Oldest, BucketFor, BucketSize, MaxCPL, LastRefreshed,
// Replacements) never write to the table, so they may run concurrently with
// each other under a read lock.
type Table struct {
	self    peer.ID
	selfKey ID
	k       int
	nrepl   int
	size    int
	index   map[peer.ID]loc
	// nonEmpty has bit (63 - cpl%64) of word cpl/64 set when bucket cpl
	// holds a peer, so scans visit only occupied buckets.
	nonEmpty [4]uint64
	buckets  [numBuckets]bucket
}

// New returns an empty table for the local peer self, with k peers per bucket
// and up to replacements candidates cached per bucket (0 disables the
// caches, so a full bucket rejects newcomers). It panics if k < 1: bucket
// size is validated with the options, so a bad value here is a programming
// error.
func New(self peer.ID, k int, replacements int) *Table {
	if k < 1 {
		panic("kbucket: New: k must be at least 1")
	}
	return &Table{
		self:    self,
		selfKey: PeerKey(self),
		k:       k,
		nrepl:   max(replacements, 0),
		index:   make(map[peer.ID]loc),
	}
}

// Self is the local peer, which the table never stores.
func (t *Table) Self() peer.ID { return t.self }

// SelfKey is the local peer's keyspace position, the origin buckets are
// measured from; refresh needs it to pick keys with [RandomIDWithCPL].
func (t *Table) SelfKey() ID { return t.selfKey }

// K is the bucket size, which is also how many peers a lookup answers with.
func (t *Table) K() int { return t.k }

// Add records that p is alive at time now. A new peer goes into its bucket if
// there is room, else into the bucket's replacement cache (evicting the least
// recently seen candidate when the cache is full). A known peer only has its
// last-seen time refreshed.
func (t *Table) Add(p peer.ID, now time.Time) Outcome {
	if p == t.self || p == "" {
		return Rejected
	}
	l, ok := t.index[p]
	if !ok {
		return t.add(p, PeerKey(p), now)
	}
	b := &t.buckets[l.cpl]
	if !l.cached {
		b.peers[indexOf(b.peers, p)].lastSeen = now
		return Updated
	}
	// A candidate's bucket is full: Remove promotes one the moment a slot
	// frees up.
	b.replacements[indexOf(b.replacements, p)].lastSeen = now
	return Pending
}

// add places a peer that is not in the table at the position key; tests use
// it directly to fill deep buckets with keys no hash would produce.
func (t *Table) add(p peer.ID, key ID, now time.Time) Outcome {
	cpl := uint8(t.BucketFor(key))
	b := &t.buckets[cpl]
	e := entry{id: p, key: key, lastSeen: now}
	if len(b.peers) < t.k {
		t.insert(cpl, e)
		return Added
	}
	if t.nrepl == 0 {
		return Rejected
	}
	if len(b.replacements) >= t.nrepl {
		i := oldest(b.replacements)
		delete(t.index, b.replacements[i].id)
		b.replacements = removeAt(b.replacements, i)
	}
	b.replacements = append(b.replacements, e)
	t.index[p] = loc{cpl: cpl, cached: true}
	return Pending
}

// insert appends e to bucket cpl, which must have room.
func (t *Table) insert(cpl uint8, e entry) {
	b := &t.buckets[cpl]
	if b.peers == nil {
		b.peers = make([]entry, 0, min(t.k, 64))
	}
	b.peers = append(b.peers, e)
	t.index[e.id] = loc{cpl: cpl}
	t.nonEmpty[cpl/64] |= 1 << (63 - cpl%64)
	t.size++
}

// Remove forgets p, whether it sits in a bucket or a replacement cache. When
// it leaves a bucket whose cache has candidates, the most recently seen one
// takes the free slot and is returned with ok set, so the caller can announce
// it; ok is false in every other case.
func (t *Table) Remove(p peer.ID) (promoted peer.ID, ok bool) {
	l, found := t.index[p]
	if !found {
		return "", false
	}
	delete(t.index, p)
	b := &t.buckets[l.cpl]
	if l.cached {
		b.replacements = removeAt(b.replacements, indexOf(b.replacements, p))
		return "", false
	}
	b.peers = removeAt(b.peers, indexOf(b.peers, p))
	t.size--
	if len(b.replacements) == 0 {
		if len(b.peers) == 0 {
			t.nonEmpty[l.cpl/64] &^= 1 << (63 - l.cpl%64)
		}
		return "", false
	}
	i := newest(b.replacements)
	e := b.replacements[i]
	b.replacements = removeAt(b.replacements, i)
	t.insert(l.cpl, e)
	return e.id, true
}

// Find reports whether p is in a bucket; candidates in replacement caches do
// not count, since lookups never return them.
func (t *Table) Find(p peer.ID) bool {
	l, ok := t.index[p]
	return ok && !l.cached
}

// Size is the number of peers in buckets, excluding replacement caches.
func (t *Table) Size() int { return t.size }

// Peers lists every peer in a bucket, bucket 0 first and in insertion order
// within a bucket. The slice is the caller's.
func (t *Table) Peers() []peer.ID {
	out := make([]peer.ID, 0, t.size)
	for w, word := range t.nonEmpty {
		for word != 0 {
			z := bits.LeadingZeros64(word)
			word &^= 1 << (63 - z)
			for _, e := range t.buckets[w*64+z].peers {
				out = append(out, e.id)
			}
		}
	}
	return out
}

// Nearest returns the (at most) n bucket peers closest to target, closest
// first, to answer FIND_NODE and to seed lookups.
//
// It never sorts the whole table. Let d = self XOR target. A peer in bucket j
// agrees with self on bits 0..j-1 and differs at bit j, so its distance to
// target starts with bits 0..j-1 of d followed by bit j of d inverted: each
// bucket is one contiguous range of distances, and bucket j is closer than
// every higher bucket exactly when bit j of d is 1. Visiting the buckets whose
// bit is 1 in ascending order, then those whose bit is 0 in descending order,
// therefore yields peers closest first, and only each visited bucket needs
// sorting.
func (t *Table) Nearest(target ID, n int) []peer.ID {
	n = min(n, t.size)
	if n <= 0 {
		return nil
	}
	out := make([]peer.ID, 0, n)
	d := distance(t.selfKey, target)
	for w := range d { // closer than all higher buckets: ascending
		word := t.nonEmpty[w] & d[w]
		for word != 0 && len(out) < n {
			z := bits.LeadingZeros64(word)
			word &^= 1 << (63 - z)
			cpl := w*64 + z
			out = t.buckets[cpl].appendNearest(out, cpl, target, n)
		}
	}
	for w := len(d) - 1; w >= 0; w-- { // farther than all higher buckets: descending
		word := t.nonEmpty[w] &^ d[w]
		for word != 0 && len(out) < n {
			z := bits.TrailingZeros64(word)
			word &^= 1 << z
			cpl := w*64 + 63 - z
			out = t.buckets[cpl].appendNearest(out, cpl, target, n)
		}
	}
	return out
}

// ranked is a bucket position and the first word of its distance to the
// target that can differ within the bucket; it is small so that sorting a
// bucket moves little memory, and the word settles almost every comparison.
type ranked struct {
	w uint64
	i int
}

// appendNearest appends the bucket's peers closest to target to out, closest
// first, until out holds n peers. cpl is the bucket's index.
func (b *bucket) appendNearest(out []peer.ID, cpl int, target ID, n int) []peer.ID {
	// All distances in bucket cpl share bits 0..cpl, so the word holding
	// bit cpl+1 is the first that can tell two of them apart.
	off := min((cpl+1)/64, 3) * 8
	var buf [64]ranked // covers the usual k = 20 without allocating
	var rs []ranked
	if len(b.peers) <= len(buf) {
		rs = buf[:len(b.peers)]
	} else {
		rs = make([]ranked, len(b.peers))
	}
	for i := range b.peers {
		rs[i] = ranked{w: binary.BigEndian.Uint64(b.peers[i].key[off:]) ^ binary.BigEndian.Uint64(target[off:]), i: i}
	}
	cmp := func(x, y ranked) int {
		if x.w != y.w {
			if x.w < y.w {
				return -1
			}
			return 1
		}
		return CompareDistance(b.peers[x.i].key, b.peers[y.i].key, target)
	}
	if len(rs) <= len(buf) {
		for i := 1; i < len(rs); i++ { // insertion sort: buckets are small
			x := rs[i]
			j := i
			for ; j > 0 && cmp(x, rs[j-1]) < 0; j-- {
				rs[j] = rs[j-1]
			}
			rs[j] = x
		}
	} else {
		slices.SortFunc(rs, cmp)
	}
	for _, r := range rs[:min(len(rs), n-len(out))] {
		out = append(out, b.peers[r.i].id)
	}
	return out
}

// SortByDistance orders peers closest to target first, in place. Each peer is
// hashed once up front rather than in every comparison.
func SortByDistance(peers []peer.ID, target ID) {
	if len(peers) < 2 {
		return
	}
	type keyed struct {
		d dist
		p peer.ID
	}
	ks := make([]keyed, len(peers))
	for i, p := range peers {
		ks[i] = keyed{d: distance(PeerKey(p), target), p: p}
	}
	slices.SortFunc(ks, func(x, y keyed) int { return x.d.cmp(y.d) })
	for i := range ks {
		peers[i] = ks[i].p
	}
}

// MarkSeen records that p was heard from at time now, whether it is in a
// bucket or waiting in a replacement cache (where recency decides which
// candidate is promoted first). Unknown peers are ignored: admission is
// [Table.Add]'s job.
func (t *Table) MarkSeen(p peer.ID, now time.Time) {
	if e := t.lookup(p); e != nil {
		e.lastSeen = now
	}
}

// LastSeen is when p was last added or marked seen, for bucket peers and
// replacement candidates alike; false if the table does not know p.
func (t *Table) LastSeen(p peer.ID) (time.Time, bool) {
	if e := t.lookup(p); e != nil {
		return e.lastSeen, true
	}
	return time.Time{}, false
}

// lookup finds p's entry in its bucket or replacement cache.
func (t *Table) lookup(p peer.ID) *entry {
	l, ok := t.index[p]
	if !ok {
		return nil
	}
	b := &t.buckets[l.cpl]
	if l.cached {
		return &b.replacements[indexOf(b.replacements, p)]
	}
	return &b.peers[indexOf(b.peers, p)]
}

// Oldest is the least recently seen peer of bucket cpl: the one to check
// for liveness when a full bucket turns a newcomer away. False if the bucket
// is empty or cpl is out of range.
func (t *Table) Oldest(cpl int) (peer.ID, bool) {
	if cpl < 0 || cpl >= numBuckets || len(t.buckets[cpl].peers) == 0 {
		return "", false
	}
	ps := t.buckets[cpl].peers
	return ps[oldest(ps)].id, true
}

// BucketFor is the bucket a key belongs in: its common prefix length with
// the local key, with 256 (the local key itself) folded into bucket 255.
func (t *Table) BucketFor(p ID) int {
	return min(CommonPrefixLen(t.selfKey, p), numBuckets-1)
}

// BucketSize is the number of peers in bucket cpl (0 when out of range), so
// refresh can tell which buckets need filling.
func (t *Table) BucketSize(cpl int) int {
	if cpl < 0 || cpl >= numBuckets {
		return 0
	}
	return len(t.buckets[cpl].peers)
}

// MaxCPL is the highest non-empty bucket, or -1 for an empty table. Buckets
// above it are almost surely empty in the whole network too, so refresh
// stops there.
func (t *Table) MaxCPL() int {
	for w := len(t.nonEmpty) - 1; w >= 0; w-- {
		if word := t.nonEmpty[w]; word != 0 {
			return w*64 + 63 - bits.TrailingZeros64(word)
		}
	}
	return -1
}

// Touch records that a lookup for a key in bucket cpl ran at time now, which
// is what refreshing a bucket means; out-of-range values are ignored.
func (t *Table) Touch(cpl int, now time.Time) {
	if cpl >= 0 && cpl < numBuckets {
		t.buckets[cpl].refreshed = now
	}
}

// LastRefreshed is the time last passed to [Table.Touch] for bucket cpl, the
// zero time if never (so a new table refreshes everything at once).
func (t *Table) LastRefreshed(cpl int) time.Time {
	if cpl < 0 || cpl >= numBuckets {
		return time.Time{}
	}
	return t.buckets[cpl].refreshed
}

// Replacements lists the candidates waiting in bucket cpl's cache, in the
// order they arrived. The slice is the caller's.
func (t *Table) Replacements(cpl int) []peer.ID {
	if cpl < 0 || cpl >= numBuckets || len(t.buckets[cpl].replacements) == 0 {
		return nil
	}
	rs := t.buckets[cpl].replacements
	out := make([]peer.ID, len(rs))
	for i, e := range rs {
		out[i] = e.id
	}
	return out
}

// indexOf finds p in es; the index map guarantees it is there.
func indexOf(es []entry, p peer.ID) int {
	for i := range es {
		if es[i].id == p {
			return i
		}
	}
	panic("kbucket: index and buckets disagree") // unreachable unless the table is corrupt
}

// removeAt deletes es[i], keeping the order of the rest, and clears the
// vacated slot so the peer id string can be collected.
func removeAt(es []entry, i int) []entry {
	copy(es[i:], es[i+1:])
	es[len(es)-1] = entry{}
	return es[:len(es)-1]
}

// oldest is the position of the least recently seen entry (the first one on
// ties); es must not be empty.
func oldest(es []entry) int {
	j := 0
	for i := 1; i < len(es); i++ {
		if es[i].lastSeen.Before(es[j].lastSeen) {
			j = i
		}
	}
	return j
}

// newest is the position of the most recently seen entry (the last one on
// ties); es must not be empty.
func newest(es []entry) int {
	j := 0
	for i := 1; i < len(es); i++ {
		if !es[i].lastSeen.Before(es[j].lastSeen) {
			j = i
		}
	}
	return j
}
