package kad

import (
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"testing"
	"testing/synctest"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/stretchr/testify/require"

	"github.com/kadlib/kad/internal/kbucket"
	"github.com/kadlib/kad/internal/pb"
)

// memNodes adds n nodes with opts (server mode unless opts say otherwise)
// to mn; every node of mn is stopped when the test ends.
func memNodes(t testing.TB, mn *memNetwork, n int, opts ...Option) []*DHT {
	t.Helper()
	t.Cleanup(func() { require.NoError(t, mn.close()) })
	nodes := make([]*DHT, n)
	for i := range nodes {
		d, err := mn.addNode(append([]Option{Mode(ModeServer)}, opts...)...)
		require.NoError(t, err)
		nodes[i] = d
	}
	return nodes
}

// memHub returns a network of three server nodes on 20 ms links (seeded by
// seed, failing requests after failDelay), without upkeep, where the first
// is connected to the other two.
func memHub(t testing.TB, seed uint64, failDelay time.Duration) (mn *memNetwork, a, b, c *DHT) {
	t.Helper()
	mn = newMemNetwork(seed, 20*time.Millisecond, 20*time.Millisecond)
	mn.failDelay = failDelay
	nodes := memNodes(t, mn, 3, RandomWalk(false))
	a, b, c = nodes[0], nodes[1], nodes[2]
	require.NoError(t, mn.connect(a, b))
	require.NoError(t, mn.connect(a, c))
	settle()
	return mn, a, b, c
}

// memJoin makes every node of nodes but the first join through the first:
// Bootstrap, then a second self-lookup by everyone so that early nodes
// learn of late ones, as newTestNet does on mocknet.
func memJoin(t testing.TB, nodes []*DHT) {
	t.Helper()
	ctx := context.Background()
	boot := memInfo(nodes[0])
	for _, d := range nodes[1:] {
		d.keeper.cfg.bootstrapPeers = []peer.AddrInfo{boot}
		require.NoError(t, d.keeper.connectBootstrapPeers(ctx))
		_, err := d.GetClosestPeers(ctx, string(d.self))
		require.NoError(t, err)
	}
	for _, d := range nodes {
		_, _ = d.GetClosestPeers(ctx, string(d.self))
	}
}

// lookupRecall runs a GetClosestPeers for a random key from every node and
// returns the share of the true k closest they found.
func lookupRecall(t testing.TB, nodes []*DHT, seed uint64) float64 {
	t.Helper()
	ids := make([]peer.ID, len(nodes))
	for i, d := range nodes {
		ids[i] = d.self
	}
	rng := rand.New(rand.NewPCG(seed, 2))
	var hits, total int
	for i, d := range nodes {
		key := make([]byte, 16)
		for j := range key {
			key[j] = byte(rng.Uint32())
		}
		got, err := d.GetClosestPeers(context.Background(), string(key))
		require.NoError(t, err, "lookup from node %d", i)
		truth := trueClosest(kbucket.KeyForBytes(key), ids, d.self, d.cfg.table.bucketSize)
		for _, p := range truth {
			if slices.Contains(got, p) {
				hits++
			}
		}
		total += len(truth)
	}
	return float64(hits) / float64(total)
}

// settle lets a second of virtual time pass, then waits for every
// goroutine of the bubble to block: background work started before (an
// admission check, a lost peer's check) is done.
func settle() {
	time.Sleep(time.Second)
	synctest.Wait()
}

// A request and its answer take two one-way latencies of virtual time,
// links are symmetric and within the bounds, and a node reaches a peer
// only once it knows an address of it or has a connection to it.
func TestMemNetRoundTrip(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		mn := newMemNetwork(1, 30*time.Millisecond, 30*time.Millisecond)
		nodes := memNodes(t, mn, 3, RandomWalk(false))
		a, b, c := nodes[0], nodes[1], nodes[2]
		ctx := context.Background()
		ping := &pb.Message{Type: pb.Ping}

		_, err := a.q.request(ctx, b.self, ping)
		require.ErrorIs(t, err, errMemUnreachable, "no address, no connection")
		require.False(t, a.msgr.connected(b.self))

		require.NoError(t, mn.connect(a, b))
		settle() // the admission checks connect started
		require.True(t, a.RoutingTable().Find(b.self))
		require.True(t, b.RoutingTable().Find(a.self))
		start := time.Now()
		resp, err := a.q.request(ctx, b.self, ping)
		require.NoError(t, err)
		require.Equal(t, pb.Ping, resp.Type)
		require.Equal(t, 60*time.Millisecond, time.Since(start))
		require.Equal(t, a.selfAddrs(), b.msgr.connAddrs(a.self))

		// A dial through an address learned from an answer makes a
		// connection, and identify then tells both sides of the other.
		require.NoError(t, c.keeper.addPeer(ctx, memInfo(a)))
		closer, err := c.q.findNode(ctx, a.self, []byte(b.self))
		require.NoError(t, err)
		require.Equal(t, b.self, closer[0].ID)
		start = time.Now()
		_, err = c.q.request(ctx, b.self, ping)
		require.NoError(t, err)
		require.Equal(t, 60*time.Millisecond, time.Since(start))
		require.True(t, c.msgr.connected(b.self) && b.msgr.connected(c.self))
		settle()
		require.True(t, b.RoutingTable().Find(c.self), "b admitted c after identify")

		// Drawn latencies: symmetric, within bounds, not all equal, and
		// a round trip takes twice the link's.
		mn2 := newMemNetwork(2, 5*time.Millisecond, 80*time.Millisecond)
		ns := memNodes(t, mn2, 8, RandomWalk(false))
		lats := map[time.Duration]bool{}
		for _, x := range ns {
			for _, y := range ns {
				if x == y {
					continue
				}
				l := mn2.latency(x.self, y.self)
				require.Equal(t, l, mn2.latency(y.self, x.self))
				require.GreaterOrEqual(t, l, 5*time.Millisecond)
				require.LessOrEqual(t, l, 80*time.Millisecond)
				lats[l] = true
			}
		}
		require.Greater(t, len(lats), 10)
		require.NoError(t, mn2.connect(ns[0], ns[1]))
		settle()
		start = time.Now()
		_, err = ns[0].q.request(ctx, ns[1].self, ping)
		require.NoError(t, err)
		require.Equal(t, 2*mn2.latency(ns[0].self, ns[1].self), time.Since(start))
	})
}

// Requests to a stopped node fail after the fail delay, its peers drop it
// from their tables once its connections close, a stopped node's own
// requests fail, a client refuses requests like a peer without the
// protocol, and the request timeout and the caller's context bound every
// request.
func TestMemNetFailures(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		mn, a, b, c := memHub(t, 3, 7*time.Millisecond)
		ctx := context.Background()
		ping := &pb.Message{Type: pb.Ping}
		require.True(t, a.RoutingTable().Find(b.self))

		require.NoError(t, mn.stop(b))
		require.False(t, a.msgr.connected(b.self))
		settle() // a's check of the lost peer
		require.False(t, a.RoutingTable().Find(b.self), "a evicted b once its connection dropped")
		start := time.Now()
		_, err := a.q.request(ctx, b.self, ping)
		require.ErrorIs(t, err, errMemUnreachable)
		require.Equal(t, 7*time.Millisecond, time.Since(start))
		_, err = b.msgr.request(ctx, a.self, ping)
		require.ErrorIs(t, err, ErrClosed, "a stopped node sends nothing")

		// A restarted node is reachable again at the same address.
		b2, err := mn.restart(b, Mode(ModeServer), RandomWalk(false))
		require.NoError(t, err)
		require.Equal(t, b.self, b2.self)
		_, err = a.q.request(ctx, b.self, ping)
		require.NoError(t, err)

		// A client answers nothing.
		cl, err := mn.addNode(Mode(ModeClient), RandomWalk(false))
		require.NoError(t, err)
		require.NoError(t, mn.connect(a, cl))
		settle()
		require.False(t, a.RoutingTable().Find(cl.self), "a client is no table candidate")
		require.True(t, cl.RoutingTable().Find(a.self))
		start = time.Now()
		_, err = a.q.request(ctx, cl.self, ping)
		require.ErrorIs(t, err, errMemNotServing)
		require.Equal(t, 7*time.Millisecond, time.Since(start))

		// The request timeout: a 2 s link and a 1 s timeout.
		slow := newMemNetwork(4, 2*time.Second, 2*time.Second)
		sn := memNodes(t, slow, 2, RandomWalk(false), RequestTimeout(time.Second))
		require.NoError(t, slow.connect(sn[0], sn[1]))
		settle()
		start = time.Now()
		_, err = sn[0].q.request(ctx, sn[1].self, ping)
		require.ErrorIs(t, err, context.DeadlineExceeded)
		require.Equal(t, time.Second, time.Since(start))
		// The caller's context, cancelled after half a second.
		cctx, cancel := context.WithCancel(ctx)
		time.AfterFunc(500*time.Millisecond, cancel)
		start = time.Now()
		_, err = sn[0].q.request(cctx, sn[1].self, ping)
		require.True(t, errors.Is(err, context.Canceled), "%v", err)
		require.Equal(t, 500*time.Millisecond, time.Since(start))
		// One-way sends: counted and written once the peer is reached.
		var written bool
		before := c.Stats().InboundRequests
		n, err := a.msgr.sendOneWay(ctx, c.self, []*pb.Message{ping, ping}, func() { written = true })
		require.NoError(t, err)
		require.Equal(t, 2, n)
		require.True(t, written)
		require.Equal(t, before+2, c.Stats().InboundRequests)
	})
}

// 50 nodes joining through node 0 form a network whose lookups find the
// true closest peers, in virtual time.
func TestMemNetConverges(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		mn := newMemNetwork(5, 5*time.Millisecond, 60*time.Millisecond)
		nodes := memNodes(t, mn, 50, RandomWalk(false))
		start := time.Now()
		memJoin(t, nodes)
		joined := time.Since(start)
		r := lookupRecall(t, nodes, 6)
		t.Logf("50 nodes joined in %v of virtual time; lookup recall %.3f", joined, r)
		require.GreaterOrEqual(t, r, 0.98)
	})
}

// Self-starting discovery: 50 nodes each connected only to node 0, with no
// Bootstrap call, fill their tables, and their lookups find the true
// closest peers (TestDiscoveryStar on real hosts).
func TestMemNetDiscoveryStar(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const n = 50
		mn := newMemNetwork(7, 5*time.Millisecond, 60*time.Millisecond)
		nodes := memNodes(t, mn, n)
		start := time.Now()
		for _, d := range nodes[1:] {
			require.NoError(t, mn.connect(d, nodes[0]))
		}
		want := min(20, n-1)
		waitFor(t, time.Minute, "every node holds enough peers", func() bool {
			for _, d := range nodes {
				if d.RoutingTable().Size() < want {
					return false
				}
			}
			return true
		})
		t.Logf("%d nodes hold >= %d peers each %v of virtual time after connecting to node 0", n, want, time.Since(start))
		r := lookupRecall(t, nodes, 8)
		t.Logf("lookup recall %.3f", r)
		require.GreaterOrEqual(t, r, 0.98)
	})
}
