package kad

import (
	"context"
	"math/rand/v2"
	"slices"
	"testing"
	"testing/synctest"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/stretchr/testify/require"

	"github.com/kadlib/kad/internal/kbucket"
)

// newTCPNode starts a loopback TCP host and a server DHT on it with the
// default options otherwise; both are closed when the test ends.
func newTCPNode(t testing.TB, opts ...Option) *DHT {
	t.Helper()
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.DisableRelay())
	require.NoError(t, err)
	d, err := New(context.Background(), h, append([]Option{Mode(ModeServer)}, opts...)...)
	if err != nil {
		_ = h.Close()
		require.NoError(t, err)
	}
	t.Cleanup(func() {
		_ = d.Close()
		_ = h.Close()
	})
	return d
}

func hostInfo(h host.Host) peer.AddrInfo { return peer.AddrInfo{ID: h.ID(), Addrs: h.Addrs()} }

// TestDiscoveryLine: A and C, each connected by their host only to B and
// with no Bootstrap call, come to hold each other.
func TestDiscoveryLine(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a, b, c := newTCPNode(t), newTCPNode(t), newTCPNode(t)
	start := time.Now()
	require.NoError(t, a.Host().Connect(ctx, hostInfo(b.Host())))
	require.NoError(t, c.Host().Connect(ctx, hostInfo(b.Host())))
	waitFor(t, 20*time.Second, "A and C hold each other", func() bool {
		return a.RoutingTable().Find(c.self) && c.RoutingTable().Find(a.self)
	})
	t.Logf("A and C hold each other %v after connecting to B", time.Since(start).Round(time.Millisecond))
}

// TestDiscoveryNoRandomWalk: with random walk off, a node whose table
// gains a peer sends nothing further in the background.
func TestDiscoveryNoRandomWalk(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a := newTCPNode(t, RandomWalk(false))
	b := newTCPNode(t, RandomWalk(false))
	c := newTCPNode(t, RandomWalk(false))
	require.NoError(t, a.Host().Connect(ctx, hostInfo(b.Host())))
	require.NoError(t, c.Host().Connect(ctx, hostInfo(b.Host())))
	waitFor(t, 20*time.Second, "B admits A and C", func() bool {
		return b.RoutingTable().Find(a.self) && b.RoutingTable().Find(c.self) &&
			a.RoutingTable().Find(b.self) && c.RoutingTable().Find(b.self)
	})
	// No discovery run was asked for (kickDiscovery queues none with
	// random walk off, and maintain, which would run it, has returned),
	// so A and C learn nothing of each other and run no lookup.
	for _, d := range []*DHT{a, b, c} {
		require.Zero(t, len(d.keeper.discoverKick))
		require.Zero(t, d.Stats().Lookups)
	}
	require.False(t, a.RoutingTable().Find(c.self))
	require.False(t, c.RoutingTable().Find(a.self))
}

// TestDiscoveryStar: 30 nodes that each connect their host only to node
// 0, with no Bootstrap call, fill their tables, and their lookups then
// find the true closest peers.
func TestDiscoveryStar(t *testing.T) {
	n := 30
	if testing.Short() {
		n = 16 // under the race detector; the full run has 30
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	nodes := make([]*DHT, n)
	for i := range nodes {
		nodes[i] = newTCPNode(t)
	}
	start := time.Now()
	for _, d := range nodes[1:] {
		require.NoError(t, d.Host().Connect(ctx, hostInfo(nodes[0].Host())))
	}
	want := min(20, n-1)
	waitFor(t, 50*time.Second, "every node holds enough peers", func() bool {
		for _, d := range nodes {
			if d.RoutingTable().Size() < want {
				return false
			}
		}
		return true
	})
	fill := time.Since(start)
	sizes := make([]int, n)
	for i, d := range nodes {
		sizes[i] = d.RoutingTable().Size()
	}
	t.Logf("%d nodes hold >= %d peers each %v after connecting to node 0 (sizes %v)", n, want, fill.Round(time.Millisecond), sizes)

	// Lookups from every node for random keys find the true k closest.
	ids := make([]peer.ID, n)
	for i, d := range nodes {
		ids[i] = d.self
	}
	rng := rand.New(rand.NewPCG(1, 2))
	k := nodes[0].cfg.table.bucketSize
	var hits, total int
	for i, d := range nodes {
		key := make([]byte, 16)
		for j := range key {
			key[j] = byte(rng.Uint32())
		}
		got, err := d.GetClosestPeers(ctx, string(key))
		require.NoError(t, err, "lookup from node %d", i)
		truth := trueClosest(kbucket.KeyForBytes(key), ids, d.self, k)
		for _, p := range truth {
			if slices.Contains(got, p) {
				hits++
			}
		}
		total += len(truth)
	}
	recall := float64(hits) / float64(total)
	t.Logf("lookup recall of the true %d closest: %.3f (%d of %d)", k, recall, hits, total)
	require.GreaterOrEqual(t, recall, 0.98)
}

// trueClosest returns the k peers of ids closest to target, without self
// (a lookup never returns its own node).
func trueClosest(target kbucket.ID, ids []peer.ID, self peer.ID, k int) []peer.ID {
	others := slices.DeleteFunc(slices.Clone(ids), func(p peer.ID) bool { return p == self })
	kbucket.SortByDistance(others, target)
	return others[:min(k, len(others))]
}

// A discovery request made while the table was young is dropped when its
// run comes if the table is full by then and a run has finished: a
// joined node runs discovery once, not again a few seconds later in the
// middle of its application's work (memnet, virtual time).
func TestDiscoveryOnceWhenFull(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		mn := newMemNetwork(9, 20*time.Millisecond, 20*time.Millisecond)
		nodes := memNodes(t, mn, 40, RefreshInterval(time.Hour))
		memJoin(t, nodes)
		for range 30 {
			settle()
		}
		for i, d := range nodes {
			require.GreaterOrEqual(t, d.rt.Size(), 20, "node %d", i)
			require.Equal(t, int64(1), d.keeper.discoverRuns.Load(), "node %d", i)
		}
		// Nothing more runs while the network is quiet.
		before := int64(0)
		for _, d := range nodes {
			before += d.Stats().Lookups
		}
		for range 30 {
			settle()
		}
		after := int64(0)
		for _, d := range nodes {
			after += d.Stats().Lookups
		}
		require.Equal(t, before, after)
	})
}
