package kad

import (
	"context"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/ipfs/go-datastore/query"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/kadlib/kad/internal/kbucket"
	"github.com/kadlib/kad/internal/providers"
	"github.com/kadlib/kad/internal/records"
)

// This file holds the read-only views a status page or a debugger needs
// of a running node: the table by bucket, the recent lookups, what the
// node stores and how big the network looks. Each is a snapshot the
// caller owns; none changes what the node does.

// Bucket is a snapshot of one k-bucket: the table's peers whose keyspace
// position shares exactly Index leading bits with ours.
type Bucket struct {
	// Index is the common prefix length with our position. A peer of
	// bucket i is at an XOR distance in [2^(255-i), 2^(256-i)): the
	// higher the index, the closer the peers and the fewer exist.
	Index int
	Peers []BucketPeer // in the order they entered the bucket
	// Replacements is how many candidates wait for a slot in the bucket.
	Replacements int
}

// BucketPeer is one peer of a Bucket.
type BucketPeer struct {
	ID peer.ID
	// Distance is the XOR of the peer's keyspace position (sha2-256 of its
	// id) and ours, big-endian.
	Distance [32]byte
	// LastSeen is when the peer last answered one of our requests or sent
	// us one.
	LastSeen time.Time
	// Failures counts our requests to it that failed in a row since then.
	// The table evicts a peer after 3, or at once when it cannot be
	// reached at all.
	Failures int
}

// Buckets returns the non-empty buckets, lowest index (farthest peers)
// first. It copies the table under its lock, so it costs one pass over
// the table's peers.
func (rt *RoutingTable) Buckets() []Bucket {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	self := rt.t.SelfKey()
	var out []Bucket
	byIndex := map[int]int{} // bucket index -> position in out
	for _, p := range rt.t.Peers() {
		key := kbucket.PeerKey(p)
		i := rt.t.BucketFor(key)
		pos, ok := byIndex[i]
		if !ok {
			pos = len(out)
			byIndex[i] = pos
			out = append(out, Bucket{Index: i, Replacements: len(rt.t.Replacements(i))})
		}
		seen, _ := rt.t.LastSeen(p)
		out[pos].Peers = append(out[pos].Peers, BucketPeer{
			ID: p, Distance: key.Xor(self), LastSeen: seen, Failures: rt.failures[p],
		})
	}
	return out // Peers lists bucket 0 first, so out is in index order
}

// recentLookups is how many finished lookups RecentLookups remembers.
const recentLookups = 64

// LookupInfo describes one finished lookup.
type LookupInfo struct {
	// Target is the keyspace position looked up: the sha2-256 of the key
	// (of the peer id for FindPeer and GetClosestPeers of a peer, of the
	// multihash for provider lookups).
	Target   [32]byte
	Start    time.Time
	Duration time.Duration
	// Hops is the longest referral chain behind the result: a peer we
	// knew that answered is 1 hop, a peer it told us of is 2, and so on.
	Hops     int
	Requests int // requests sent
	// Err is how the lookup failed ("" when it converged or found what it
	// looked for); a lookup cut short by its context counts as failed.
	Err string
}

// RecentLookups returns up to n of the node's last 64 finished lookups,
// newest first: those of the public methods and those the node runs by
// itself (bootstrap, table refresh, discovery). It is safe for concurrent
// use and holds a fixed amount of memory.
func (d *DHT) RecentLookups(n int) []LookupInfo {
	return d.tel.recent.last(n)
}

// lookupRing keeps the last lookups in fixed memory.
type lookupRing struct {
	mu   sync.Mutex
	buf  []LookupInfo
	next int // where the next one goes
	full bool
}

func newLookupRing(n int) *lookupRing { return &lookupRing{buf: make([]LookupInfo, n)} }

func (r *lookupRing) add(li LookupInfo) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.buf[r.next] = li
	r.next = (r.next + 1) % len(r.buf)
	if r.next == 0 {
		r.full = true
	}
}

func (r *lookupRing) last(n int) []LookupInfo {
	r.mu.Lock()
	defer r.mu.Unlock()
	have := r.next
	if r.full {
		have = len(r.buf)
	}
	n = min(max(n, 0), have)
	out := make([]LookupInfo, n)
	for i := range out {
		out[i] = r.buf[(r.next-1-i+len(r.buf))%len(r.buf)]
	}
	return out
}

// StoreCounts is what a node stores for the network.
type StoreCounts struct {
	// Values is the number of value records held (0 with DisableValues).
	Values int
	// Providers is the number of provider records held, one per provider
	// of a key; -1 with a custom ProviderStore, which kad cannot count.
	Providers int
}

// StoreCounts counts the records the node stores, expired ones included
// until the periodic sweep deletes them. It reads every key of both
// stores from the datastore (keys only), so poll it every few seconds at
// most; the metrics gauges call it once per collection.
func (d *DHT) StoreCounts(ctx context.Context) (StoreCounts, error) {
	var c StoreCounts
	var err error
	if d.vals.on {
		if c.Values, err = d.countKeys(ctx, records.Prefix); err != nil {
			return StoreCounts{}, err
		}
	}
	switch {
	case d.provs.builtin != nil:
		if c.Providers, err = d.countKeys(ctx, providers.Prefix); err != nil {
			return StoreCounts{}, err
		}
	case d.provs.store != nil:
		c.Providers = -1
	}
	return c, nil
}

// countKeys counts the datastore's keys under prefix.
func (d *DHT) countKeys(ctx context.Context, prefix string) (int, error) {
	res, err := d.ext.ds.Query(ctx, query.Query{Prefix: prefix, KeysOnly: true})
	if err != nil {
		return 0, fmt.Errorf("kad: count %s: %w", prefix, err)
	}
	defer res.Close()
	n := 0
	for e := range res.Next() {
		if e.Error != nil {
			return 0, fmt.Errorf("kad: count %s: %w", prefix, e.Error)
		}
		n++
	}
	return n, ctx.Err()
}

// NetworkSizeEstimate estimates how many DHT servers the network has,
// this node included, from the distances of its k closest peers: with N
// servers spread evenly over the keyspace, the i-th closest to any
// position is about i/N of the keyspace away. The estimate is only as
// good as the table around our own position, which the node's self
// lookups keep fresh. With fewer than k peers in the table the network
// is taken to be those peers and us.
func (d *DHT) NetworkSizeEstimate() float64 {
	k := d.cfg.table.bucketSize
	kth := d.q.kthDistance(k)
	if math.IsInf(kth, 0) || kth <= 0 {
		return float64(d.rt.Size() + 1)
	}
	return float64(k) / kth
}
