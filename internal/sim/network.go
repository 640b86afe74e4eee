// Package sim runs kad's routing code over an in-memory network in virtual
// time: thousands to a hundred thousand nodes, each with its own
// internal/kbucket table, looking peers up with the internal/lookup state
// machine, the very code a kad node runs. No libp2p host, no goroutine, no
// clock: a lookup is driven event by event, each request's answer arriving
// after a seeded per-link round trip, so a run is deterministic and a
// network far larger than any mocknet shows how the lookup and the table
// behave at the scale of the public network before kad is deployed there.
//
// What is modelled, and how it maps to the real node:
//   - a node's table is kbucket.New(self, k, k), as newRoutingTable builds;
//   - a lookup is seeded with the table's k nearest peers and driven like
//     runLookup drives it: the peers Next returns are asked, each answer
//     goes to OnSuccess (and admits the peer) or to OnFailure (and evicts
//     the peer, as noteFailure does for a peer it cannot reach);
//   - a server answers a request with its k nearest table peers other than
//     the requester, as handleFindNode does, and admits the requester when
//     its bucket has room, as identify plus the FIND_NODE admission probe
//     do on a new connection;
//   - a node joins through a few random earlier nodes, looks itself up and
//     then looks up a random key in every bucket up to its deepest
//     non-empty one (at most 15), as Bootstrap does.
//
// Not modelled: message loss, CPU and bandwidth, address handling, IP
// diversity limits, and the cost of the admission probes (they are counted
// apart from lookup requests, as kad's Stats do).
package sim

import (
	"encoding/binary"
	"math/rand/v2"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/kadlib/kad/internal/kbucket"
	"github.com/kadlib/kad/internal/lookup"
)

// epoch is virtual time zero; tables record last-seen times from it.
var epoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// maxRefreshCPL matches the real node's bound on refreshed buckets.
const maxRefreshCPL = 15

// network is every node of a simulation and the links between them.
type network struct {
	cfg    Config
	ids    []peer.ID
	keys   []kbucket.ID
	index  map[peer.ID]int32
	tables []*kbucket.Table
	dead   []bool
	now    time.Duration // virtual clock
	rng    *rand.Rand

	probes int64 // admission probes a real node would send
}

func newNetwork(cfg Config) *network {
	r := rand.New(rand.NewPCG(cfg.Seed, 0x51a1))
	n := &network{
		cfg:    cfg,
		ids:    make([]peer.ID, cfg.N),
		keys:   make([]kbucket.ID, cfg.N),
		index:  make(map[peer.ID]int32, cfg.N),
		tables: make([]*kbucket.Table, cfg.N),
		dead:   make([]bool, cfg.N),
		rng:    r,
	}
	// Peer ids in the sha2-256 multihash form, as RSA-keyed peers have:
	// real ids, so the keyspace positions are the ones a real node computes.
	var buf [34]byte
	buf[0], buf[1] = 0x12, 0x20
	for i := range n.ids {
		for j := 2; j < len(buf); j += 8 {
			binary.BigEndian.PutUint64(buf[j:], r.Uint64())
		}
		id := peer.ID(buf[:])
		if _, dup := n.index[id]; dup {
			panic("sim: duplicate peer id") // 2^-256: unreachable
		}
		n.ids[i] = id
		n.keys[i] = kbucket.PeerKey(id)
		n.index[id] = int32(i)
	}
	return n
}

// at is the current virtual time as a wall-clock time for the tables.
func (n *network) at() time.Time { return epoch.Add(n.now) }

// oneWay is the seeded latency of the link between a and b: the same in
// both directions and on every call, drawn from [LatencyMin, LatencyMax].
func (n *network) oneWay(a, b int) time.Duration {
	lo, hi := n.cfg.LatencyMin, n.cfg.LatencyMax
	if hi <= lo {
		return lo
	}
	if a > b {
		a, b = b, a
	}
	x := mix(n.cfg.Seed ^ mix(uint64(a)<<32|uint64(b)))
	return lo + time.Duration(x%uint64(hi-lo+1))
}

// mix is splitmix64's finaliser: a fast, well-spread hash of a link.
func mix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ x>>30) * 0xbf58476d1ce4e5b9
	x = (x ^ x>>27) * 0x94d049bb133111eb
	return x ^ x>>31
}

// rtt is how long a request from a to b takes to be answered.
func (n *network) rtt(a, b int) time.Duration { return 2 * n.oneWay(a, b) }

// failDelay is how long a request to a dead peer takes to fail.
func (n *network) failDelay(a, b int) time.Duration {
	if n.cfg.FailDelay > 0 {
		return n.cfg.FailDelay
	}
	return n.rtt(a, b) // a refused connection costs a round trip
}

// admit adds p to node i's table, as the real node does once p answered
// its admission probe.
func (n *network) admit(i, p int) {
	if i == p {
		return
	}
	n.tables[i].Add(n.ids[p], n.at())
}

// serve is node s answering a FIND_NODE about target from node from: its k
// nearest table peers other than the requester. A new requester is
// admitted if its bucket has room, as a real server admits a peer that
// connected and passed its probe; a known one is marked seen, as
// handleStream does.
func (n *network) serve(s, from int, target kbucket.ID) []peer.ID {
	t := n.tables[s]
	k := n.cfg.K
	near := t.Nearest(target, k+1)
	out := near[:0]
	fromID := n.ids[from]
	for _, p := range near {
		if p != fromID && len(out) < k {
			out = append(out, p)
		}
	}
	switch {
	case t.Find(fromID):
		t.MarkSeen(fromID, n.at())
	case t.BucketSize(t.BucketFor(n.keys[from])) < t.K():
		// The real node probes a new peer, then admits it, only when its
		// bucket has room (consider in dht.go).
		n.probes++
		t.Add(fromID, n.at())
	}
	return out
}

// reply is a request in flight, resolved at virtual time at.
type reply struct {
	at   time.Duration
	to   int
	fail bool
}

// trace is what one lookup did.
type trace struct {
	l       *lookup.Lookup
	result  []peer.ID
	stats   lookup.Stats
	latency time.Duration
}

// lookupFrom runs one lookup for target from node self to completion and
// advances the virtual clock by its duration. It is the driver runLookup
// is, with the network replaced by the event list: at most Alpha events
// pending, so a linear scan beats a heap.
func (n *network) lookupFrom(self int, target kbucket.ID) trace {
	t := n.tables[self]
	start := n.now
	var near float64
	if n.cfg.ConvergeAlpha == n.cfg.Alpha && n.cfg.NearFactor > 0 {
		// As the real driver does (query.go lookupNear).
		near = n.cfg.NearFactor * kbucket.KthDistance(n.keys[self], t.Nearest(n.keys[self], n.cfg.K), n.cfg.K)
	}
	l := lookup.New(target, n.ids[self], t.Nearest(target, n.cfg.K), lookup.Config{
		K: n.cfg.K, Alpha: n.cfg.Alpha, Beta: n.cfg.Beta, ConvergeAlpha: n.cfg.ConvergeAlpha, Near: near,
	})
	var pending []reply
	for {
		send, done := l.Next()
		if done {
			break
		}
		for _, p := range send {
			j := int(n.index[p])
			if n.dead[j] {
				pending = append(pending, reply{at: n.now + n.failDelay(self, j), to: j, fail: true})
			} else {
				pending = append(pending, reply{at: n.now + n.rtt(self, j), to: j})
			}
		}
		if len(pending) == 0 {
			break
		}
		first := 0
		for i := range pending {
			if pending[i].at < pending[first].at {
				first = i
			}
		}
		ev := pending[first]
		pending[first] = pending[len(pending)-1]
		pending = pending[:len(pending)-1]
		n.now = ev.at
		p := n.ids[ev.to]
		if ev.fail {
			l.OnFailure(p)
			t.Remove(p) // unreachable: evicted, as noteFailure does
			continue
		}
		l.OnSuccess(p, n.serve(ev.to, self, target))
		n.admit(self, ev.to)
	}
	// Requests still in flight are abandoned, as the real driver does; the
	// clock stays at the moment the lookup ended.
	tr := trace{l: l, result: l.Result(), stats: l.Stats(), latency: n.now - start}
	t.Touch(t.BucketFor(target), n.at())
	return tr
}

// join brings node i into the network through boots, as Bootstrap does:
// connect and admit both ways, look up our own id, then look up a random
// key in each bucket up to the deepest non-empty one (bounded), one lookup
// at a time. It returns the lookups run and the requests they sent.
func (n *network) join(i int, boots []int) (lookups, requests int) {
	for _, b := range boots {
		n.admit(i, b)
		n.admit(b, i)
		n.probes += 2
	}
	t := n.tables[i]
	if t.Size() == 0 {
		return 0, 0
	}
	requests += n.lookupFrom(i, n.keys[i]).stats.Requests
	lookups++
	for cpl := 0; cpl <= min(t.MaxCPL(), maxRefreshCPL); cpl++ {
		requests += n.lookupFrom(i, kbucket.RandomIDWithCPL(t.SelfKey(), cpl, n.rng)).stats.Requests
		lookups++
	}
	return lookups, requests
}

// trueClosest returns the k live nodes closest to target, other than self.
func (n *network) trueClosest(target kbucket.ID, k, self int) []peer.ID {
	best := make([]int, 0, k+1)
	for j := range n.ids {
		if j == self || n.dead[j] {
			continue
		}
		if len(best) == k && kbucket.CompareDistance(n.keys[j], n.keys[best[k-1]], target) >= 0 {
			continue
		}
		at := len(best)
		for at > 0 && kbucket.CompareDistance(n.keys[j], n.keys[best[at-1]], target) < 0 {
			at--
		}
		best = append(best, 0)
		copy(best[at+1:], best[at:])
		best[at] = j
		if len(best) > k {
			best = best[:k]
		}
	}
	out := make([]peer.ID, len(best))
	for x, j := range best {
		out[x] = n.ids[j]
	}
	return out
}

// recall is the fraction of want present in got.
func recall(got, want []peer.ID) float64 {
	if len(want) == 0 {
		return 1
	}
	set := make(map[peer.ID]struct{}, len(got))
	for _, p := range got {
		set[p] = struct{}{}
	}
	hit := 0
	for _, p := range want {
		if _, ok := set[p]; ok {
			hit++
		}
	}
	return float64(hit) / float64(len(want))
}

// randomKey is a uniformly random keyspace position.
func (n *network) randomKey() kbucket.ID {
	var k kbucket.ID
	for i := 0; i < len(k); i += 8 {
		binary.BigEndian.PutUint64(k[i:], n.rng.Uint64())
	}
	return k
}

// randomLive picks a live node uniformly.
func (n *network) randomLive() int {
	for {
		if i := n.rng.IntN(len(n.ids)); !n.dead[i] {
			return i
		}
	}
}
