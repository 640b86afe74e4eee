package kad

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"
	mocknet "github.com/libp2p/go-libp2p/p2p/net/mock"
	mh "github.com/multiformats/go-multihash"
	"github.com/stretchr/testify/require"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/kadlib/kad/internal/kbucket"
)

// pmCIDs returns n CIDv1 (raw) of random content drawn from a seeded rng.
func pmCIDs(t testing.TB, n int, seed uint64) []cid.Cid {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, 7))
	out := make([]cid.Cid, n)
	for i := range out {
		var b [32]byte
		for j := range b {
			b[j] = byte(r.Uint32())
		}
		h, err := mh.Sum(b[:], mh.SHA2_256, -1)
		require.NoError(t, err)
		out[i] = cid.NewCidV1(cid.Raw, h)
	}
	return out
}

// pmNode is an extra node joined to tn, with its own meter to count what
// it sends.
type pmNode struct {
	*DHT
	reader *sdkmetric.ManualReader
}

func pmJoin(t testing.TB, tn *testNet, seed uint64, opts ...Option) *pmNode {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	h, err := tn.mn.GenPeer()
	require.NoError(t, err)
	require.NoError(t, tn.mn.LinkAll())
	r := rand.New(rand.NewPCG(seed, 1))
	var boots []peer.AddrInfo
	for range 3 {
		b := tn.nodes[r.IntN(len(tn.nodes))]
		boots = append(boots, peer.AddrInfo{ID: b.self, Addrs: b.h.Addrs()})
	}
	d, err := New(ctx, h, append([]Option{Mode(ModeServer), MeterProvider(mp), BootstrapPeers(boots...)}, opts...)...)
	require.NoError(t, err)
	t.Cleanup(func() { _ = d.Close() })
	require.NoError(t, d.keeper.connectBootstrapPeers(ctx))
	_, err = d.GetClosestPeers(ctx, string(d.self))
	require.NoError(t, err)
	return &pmNode{DHT: d, reader: reader}
}

// sent returns the requests the node sent, by message type.
func (n *pmNode) sent(t testing.TB) map[string]int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	require.NoError(t, n.reader.Collect(context.Background(), &rm))
	out := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != "kad.outbound.requests" {
				continue
			}
			for _, dp := range m.Data.(metricdata.Sum[int64]).DataPoints {
				v, _ := dp.Attributes.Value("type")
				out[v.AsString()] += dp.Value
			}
		}
	}
	return out
}

// pmFindable returns the fraction of cids for which a random node of tn
// finds prov as a provider.
func pmFindable(t testing.TB, tn *testNet, cids []cid.Cid, prov peer.ID, seed uint64) float64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var found atomic.Int64
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i, c := range cids {
		from := tn.nodes[rand.New(rand.NewPCG(seed, uint64(i))).IntN(len(tn.nodes))]
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			fctx, fcancel := context.WithTimeout(ctx, 30*time.Second)
			defer fcancel()
			for ai := range from.FindProvidersAsync(fctx, c, 0) {
				if ai.ID == prov {
					found.Add(1)
					fcancel()
				}
			}
		}()
	}
	wg.Wait()
	return float64(found.Load()) / float64(len(cids))
}

func pmEnvInt(t testing.TB, name string, def int) int {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	require.NoError(t, err, name)
	return n
}

// On a small network ProvideMany makes every CID findable with a small
// fraction of the lookups of one Provide per CID: one per region.
func TestProvideManySmall(t *testing.T) {
	const n, count = 30, 300
	tn := newTestNet(t, n, 101, RandomWalk(false))
	a := pmJoin(t, tn, 102, RandomWalk(false))
	cids := pmCIDs(t, count, 103)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	before := a.Stats().Lookups
	rep, err := a.ProvideManyReport(ctx, append(cids, cids[:10]...)) // duplicates count once
	require.NoError(t, err)
	require.Equal(t, count, rep.Keys)
	require.Zero(t, rep.KeysMissed)
	require.Equal(t, int64(rep.Lookups), a.Stats().Lookups-before)
	require.LessOrEqual(t, rep.Lookups*10, count, "lookups %d for %d keys", rep.Lookups, count)
	require.GreaterOrEqual(t, rep.Messages, count*20)
	require.Less(t, rep.Streams*10, rep.Messages, "several messages per stream")
	// Stored locally too.
	local, err := a.provs.store.GetProviders(ctx, cids[0].Hash())
	require.NoError(t, err)
	require.Len(t, local, 1)
	require.Equal(t, 1.0, pmFindable(t, tn, cids, a.self, 104))
}

// ProvideManyChan batches a stream and reports the sum of its batches.
func TestProvideManyChan(t *testing.T) {
	tn := newTestNet(t, 20, 111, RandomWalk(false))
	a := pmJoin(t, tn, 112, RandomWalk(false))
	cids := pmCIDs(t, 100, 113)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ch := make(chan cid.Cid)
	go func() {
		defer close(ch)
		ch <- cid.Undef // skipped
		for _, c := range cids {
			ch <- c
		}
	}()
	rep, err := a.ProvideManyChan(ctx, ch)
	require.NoError(t, err)
	require.Equal(t, 100, rep.Keys)
	require.Equal(t, 1.0, pmFindable(t, tn, cids, a.self, 114))
}

func TestProvideManyErrors(t *testing.T) {
	tn := newTestNet(t, 1, 121)
	d := tn.nodes[0]
	ctx := context.Background()
	require.ErrorIs(t, d.ProvideMany(ctx, []cid.Cid{cid.Undef}), ErrInvalidCID)
	require.NoError(t, d.ProvideMany(ctx, nil))
	// Alone: stored locally, sent nowhere.
	cids := pmCIDs(t, 3, 122)
	require.ErrorIs(t, d.ProvideMany(ctx, cids), ErrNoPeerReached)
	local, err := d.provs.store.GetProviders(ctx, cids[1].Hash())
	require.NoError(t, err)
	require.Len(t, local, 1)
	require.NoError(t, d.Close())
	require.ErrorIs(t, d.ProvideMany(ctx, cids), ErrClosed)
}

// TestProvideManyVsProvide compares ProvideMany with one Provide per CID
// on the same network: lookups, messages, wall time, findability. The
// size comes from KAD_PROVIDEMANY_N (nodes, default 100) and
// KAD_PROVIDEMANY_CIDS (default 2000); the per-CID side runs
// KAD_PROVIDE_PARALLEL Provides at a time (default 8). Once the network
// is set up every link gets KAD_PROVIDEMANY_LATENCY_MS of one-way latency
// (default 20, as on the bench network), so that round trips, not the CPU
// of a hundred nodes sharing two cores, set the pace.
func TestProvideManyVsProvide(t *testing.T) {
	if testing.Short() {
		t.Skip("100-node network")
	}
	n := pmEnvInt(t, "KAD_PROVIDEMANY_N", 100)
	count := pmEnvInt(t, "KAD_PROVIDEMANY_CIDS", 2000)
	par := pmEnvInt(t, "KAD_PROVIDE_PARALLEL", 8)
	setup := time.Now()
	tn := newTestNet(t, n, 201, RandomWalk(false))
	many := pmJoin(t, tn, 202, RandomWalk(false))
	each := pmJoin(t, tn, 203, RandomWalk(false))
	t.Logf("network of %d nodes in %v", n, time.Since(setup).Round(time.Millisecond))
	lat := time.Duration(pmEnvInt(t, "KAD_PROVIDEMANY_LATENCY_MS", 20)) * time.Millisecond
	for _, a := range tn.mn.Links() {
		for _, b := range a {
			for l := range b {
				l.SetOptions(mocknet.LinkOptions{Latency: lat})
			}
		}
	}
	cidsMany := pmCIDs(t, count, 204)
	cidsEach := pmCIDs(t, count, 205)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()

	start := time.Now()
	rep, err := many.ProvideManyReport(ctx, cidsMany)
	require.NoError(t, err)
	tMany := time.Since(start)

	start = time.Now()
	var failed atomic.Int64
	var wg sync.WaitGroup
	sem := make(chan struct{}, par)
	for _, c := range cidsEach {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := each.Provide(ctx, c, true); err != nil {
				failed.Add(1)
			}
		}()
	}
	wg.Wait()
	tEach := time.Since(start)
	// Close waits for the announcements Provide left running.
	require.NoError(t, each.Close())
	tEachAll := time.Since(start)
	require.NoError(t, many.Close())

	lm, le := many.Stats().Lookups, each.Stats().Lookups
	sm, se := many.sent(t), each.sent(t)
	fm := pmFindable(t, tn, cidsMany, many.self, 206)
	fe := pmFindable(t, tn, cidsEach, each.self, 207)
	fmt.Printf("ProvideMany vs Provide per CID: nodes=%d cids=%d k=20 latency=%v (per-CID parallelism %d)\n", n, count, lat, par)
	fmt.Printf("  ProvideMany: lookups=%d (regions) FIND_NODE=%d ADD_PROVIDER=%d streams=%d wall=%v findable=%.4f\n",
		lm, sm["FIND_NODE"], sm["ADD_PROVIDER"], rep.Streams, tMany.Round(time.Millisecond), fm)
	fmt.Printf("  Provide x%d: lookups=%d FIND_NODE=%d ADD_PROVIDER=%d streams=%d wall=%v (all sends done %v) failed=%d findable=%.4f\n",
		count, le, se["FIND_NODE"], se["ADD_PROVIDER"], se["ADD_PROVIDER"], tEach.Round(time.Millisecond), tEachAll.Round(time.Millisecond), failed.Load(), fe)
	fmt.Printf("  ratios: lookups %.1fx fewer, messages (FIND_NODE+ADD_PROVIDER) %.2fx fewer, wall %.1fx faster (%.1fx vs all sends done)\n",
		float64(le)/float64(lm), float64(se["FIND_NODE"]+se["ADD_PROVIDER"])/float64(sm["FIND_NODE"]+sm["ADD_PROVIDER"]),
		tEach.Seconds()/tMany.Seconds(), tEachAll.Seconds()/tMany.Seconds())
	require.GreaterOrEqual(t, fm, 0.99)
	require.GreaterOrEqual(t, fe, 0.99)
	require.GreaterOrEqual(t, le, 20*lm, "ProvideMany makes >= 20x fewer lookups")
}

func TestProvideManyRuns(t *testing.T) {
	for _, c := range []struct {
		name        string
		n, k, known int
		kth         float64
		want        int
	}{
		{"few keys: one run", 10, 20, 50, 20.0 / 1000, 1},
		{"100 nodes: two runs", 1000, 20, 60, 20.0 / 100, 2},
		{"1,000 nodes", 10000, 20, 150, 20.0 / 1000, 13},
		{"10,000 nodes: capped", 10000, 20, 200, 20.0 / 10000, provideManyWalkers},
		{"keys cap the runs", 200, 20, 200, 20.0 / 10000, 4},
		{"table under k: known peers", 5000, 20, 7, math.Inf(1), 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			require.Equal(t, c.want, provideManyRuns(c.n, c.k, c.kth, c.known))
		})
	}
}

// ProvideMany puts every record on its key's true k closest peers, with
// about one lookup per subtree of fewer than k peers (not one per key,
// nor one per change of a key's closest set), in virtual time over memnet.
func TestProvideManyPlacement(t *testing.T) {
	n, count := 150, 3000
	if testing.Short() {
		n, count = 80, 1000
	}
	synctest.Test(t, func(t *testing.T) {
		mn := newMemNetwork(11, 5*time.Millisecond, 40*time.Millisecond)
		nodes := memNodes(t, mn, n, RandomWalk(false))
		memJoin(t, nodes)
		ids := make([]peer.ID, n)
		for i, d := range nodes {
			ids[i] = d.self
		}
		prov := nodes[n/2]
		cids := pmCIDs(t, count, 12)
		start := time.Now()
		var placedAt time.Duration
		rep, err := prov.ProvideManyReport(context.Background(), cids, ProvideManyProgress(func(p ProvideProgress) {
			if p.Placed == count && placedAt == 0 {
				placedAt = time.Since(start)
			}
		}))
		took := time.Since(start)
		require.NoError(t, err)
		settle() // the last one-way messages arrive
		require.Equal(t, count, rep.Keys)
		require.Zero(t, rep.KeysMissed)
		require.Equal(t, count*20, rep.Messages, "each key to k peers, no more")
		// A subtree the lookups cover holds about k/2 to k peers.
		require.LessOrEqual(t, rep.Lookups, 2*n/10+provideManyRuns(count, 20, prov.provs.q.kthDistance(20), n), "lookups")
		byID := map[peer.ID]*DHT{}
		for _, d := range nodes {
			byID[d.self] = d
		}
		misplaced := 0
		for _, c := range cids {
			for _, p := range trueClosest(kbucket.KeyForBytes(c.Hash()), ids, prov.self, 20) {
				got, err := byID[p].provs.store.GetProviders(context.Background(), c.Hash())
				require.NoError(t, err)
				if len(got) != 1 || got[0].ID != prov.self {
					misplaced++
				}
			}
		}
		t.Logf("%d nodes, %d keys: %d lookups, %d messages on %d streams, all placed after %v, done after %v of virtual time; %d of %d records off their true closest",
			n, count, rep.Lookups, rep.Messages, rep.Streams, placedAt, took, misplaced, count*20)
		require.Zero(t, misplaced)
	})
}
