package kad

import (
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/kadlib/kad/internal/kbucket"
)

// RoutingTable is a read view of a DHT's k-bucket table, safe for
// concurrent use. Peers are placed by the XOR distance of the sha2-256 of
// their ids to ours.
type RoutingTable struct {
	mu       sync.Mutex
	t        *kbucket.Table
	failures map[peer.ID]int
	// onChange is called, outside the lock, for each peer added (true) or
	// removed (false).
	onChange func(p peer.ID, added bool)
	// div limits peers per IP group; nil when off. groupOf finds a peer's
	// group (from its addresses) for candidates the table promotes.
	div     *diversity
	groupOf func(p peer.ID) string
}

func newRoutingTable(self peer.ID, k int) *RoutingTable {
	return &RoutingTable{t: kbucket.New(self, k, k), failures: make(map[peer.ID]int)}
}

// Size is the number of peers in the table.
func (rt *RoutingTable) Size() int {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	return rt.t.Size()
}

// ListPeers returns every peer in the table.
func (rt *RoutingTable) ListPeers() []peer.ID {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	return rt.t.Peers()
}

// NearestPeers returns up to n peers of the table closest to key (the key's
// position is sha2-256(key); a peer's own id as a string gives its
// position), closest first.
func (rt *RoutingTable) NearestPeers(key string, n int) []peer.ID {
	return rt.nearest(kbucket.KeyForBytes([]byte(key)), n)
}

func (rt *RoutingTable) nearest(target kbucket.ID, n int) []peer.ID {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	return rt.t.Nearest(target, n)
}

// Find reports whether p is in the table.
func (rt *RoutingTable) Find(p peer.ID) bool {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	return rt.t.Find(p)
}

// hasRoom reports whether p's bucket has a free slot.
func (rt *RoutingTable) hasRoom(p peer.ID) bool {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	return rt.t.BucketSize(rt.t.BucketFor(kbucket.PeerKey(p))) < rt.t.K()
}

// add admits a peer known to be a live DHT server.
func (rt *RoutingTable) add(p peer.ID, now time.Time) kbucket.Outcome {
	g := ""
	if rt.div != nil && rt.groupOf != nil {
		g = rt.groupOf(p)
	}
	rt.mu.Lock()
	delete(rt.failures, p)
	var out kbucket.Outcome
	if rt.div != nil && !rt.t.Find(p) {
		cpl := rt.t.BucketFor(kbucket.PeerKey(p))
		if !rt.div.allows(g, cpl) {
			rt.mu.Unlock()
			return kbucket.Rejected
		}
		out = rt.t.Add(p, now)
		if out == kbucket.Added {
			rt.div.added(p, g, cpl)
		}
	} else {
		out = rt.t.Add(p, now)
	}
	cb := rt.onChange
	rt.mu.Unlock()
	if out == kbucket.Added && cb != nil {
		cb(p, true)
	}
	return out
}

// seen records that p answered, if it is in the table.
func (rt *RoutingTable) seen(p peer.ID, now time.Time) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if rt.t.Find(p) {
		delete(rt.failures, p)
		rt.t.MarkSeen(p, now)
	}
}

// remove evicts p, promoting a cached replacement into its place.
func (rt *RoutingTable) remove(p peer.ID) {
	rt.mu.Lock()
	had := rt.t.Find(p)
	delete(rt.failures, p)
	promoted, ok := rt.t.Remove(p)
	if rt.div != nil {
		cpl := rt.t.BucketFor(kbucket.PeerKey(p))
		if had {
			rt.div.removed(p, cpl)
		}
		if ok {
			// A promoted candidate is counted even past the limit: it
			// was admitted to the cache before, and an empty slot is
			// worse than a crowded group.
			g := ""
			if rt.groupOf != nil {
				rt.mu.Unlock()
				g = rt.groupOf(promoted)
				rt.mu.Lock()
			}
			rt.div.added(promoted, g, cpl)
		}
	}
	cb := rt.onChange
	rt.mu.Unlock()
	if cb == nil {
		return
	}
	if had {
		cb(p, false)
	}
	if ok {
		cb(promoted, true)
	}
}

// failed counts a failed request to p and evicts p after limit consecutive
// failures. It reports whether p was evicted.
func (rt *RoutingTable) failed(p peer.ID, limit int) bool {
	rt.mu.Lock()
	if !rt.t.Find(p) {
		rt.mu.Unlock()
		return false
	}
	rt.failures[p]++
	n := rt.failures[p]
	rt.mu.Unlock()
	if n >= limit {
		rt.remove(p)
		return true
	}
	return false
}

// withTable runs f with the table locked, for maintenance that needs
// several reads at once. f must not call back into rt.
func (rt *RoutingTable) withTable(f func(t *kbucket.Table)) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	f(rt.t)
}
