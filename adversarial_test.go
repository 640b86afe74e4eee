package kad

import (
	"context"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/stretchr/testify/require"

	"github.com/kadlib/kad/internal/kbucket"
	"github.com/kadlib/kad/internal/pb"
	"github.com/kadlib/kad/internal/wire"
)

// workload is what honest nodes store before the network turns bad.
type workload struct {
	values map[string][]byte
	cids   []cid.Cid
}

// placeWorkload puts n values and provides n CIDs, each from a random node.
func placeWorkload(t *testing.T, ctx context.Context, nodes []*DHT, r *rand.Rand, n int) workload {
	t.Helper()
	w := workload{values: make(map[string][]byte)}
	for i := range n {
		key := fmt.Sprintf("/test/adv-%d-%d", i, r.Uint32())
		w.values[key] = []byte(fmt.Sprintf("1:%d", i))
		require.NoError(t, nodes[r.IntN(len(nodes))].PutValue(ctx, key, w.values[key]))
		c := provCID(t, r)
		require.NoError(t, nodes[r.IntN(len(nodes))].Provide(ctx, c, true))
		w.cids = append(w.cids, c)
	}
	return w
}

// workloadResult counts the operations that found what honest nodes hold.
type workloadResult struct {
	lookups, closestOK, valuesOK, providersOK int
	recall                                    float64 // mean, over GetClosestPeers
	slowest                                   time.Duration
}

func (r workloadResult) String() string {
	n := float64(r.lookups)
	return fmt.Sprintf("closest peers %d/%d (recall %.3f), values %d/%d, providers %d/%d, slowest operation %v",
		r.closestOK, r.lookups, r.recall/n, r.valuesOK, r.lookups, r.providersOK, r.lookups, r.slowest.Round(time.Millisecond))
}

// runWorkload reads every value and provider back and looks up as many
// random keys, each from a random node of from, with no deadline but the
// DHT's own LookupTimeout. A lookup is right when it returns every honest
// peer among the k closest of all (the others may be there or not: bad
// peers that answer are peers too).
func runWorkload(t *testing.T, w workload, from []*DHT, all []peer.ID, honest map[peer.ID]bool, r *rand.Rand) workloadResult {
	t.Helper()
	var res workloadResult
	timed := func(f func()) {
		start := time.Now()
		f()
		res.slowest = max(res.slowest, time.Since(start))
	}
	ctx := context.Background()
	i := 0
	for key, want := range w.values {
		d := from[r.IntN(len(from))]
		res.lookups++
		timed(func() {
			got, err := d.GetValue(ctx, key)
			if err == nil && string(got) == string(want) {
				res.valuesOK++
			}
		})
		timed(func() {
			provs, err := d.FindProviders(ctx, w.cids[i], 1)
			if err == nil && len(provs) == 1 {
				res.providersOK++
			}
		})
		k := fmt.Sprintf("random-%d", r.Uint64())
		timed(func() {
			got, err := d.GetClosestPeers(ctx, k)
			if err != nil {
				return
			}
			rc := honestRecall(got, honestClosest(all, honest, k, d.cfg.table.bucketSize, d.self))
			res.recall += rc
			if rc == 1 {
				res.closestOK++
			}
		})
		i++
	}
	return res
}

// honestClosest is the honest peers among the k peers of all closest to
// key, self excluded.
func honestClosest(all []peer.ID, honest map[peer.ID]bool, key string, k int, self peer.ID) []peer.ID {
	ids := make([]peer.ID, 0, len(all))
	for _, p := range all {
		if p != self {
			ids = append(ids, p)
		}
	}
	kbucket.SortByDistance(ids, kbucket.KeyForBytes([]byte(key)))
	var out []peer.ID
	for _, p := range ids[:min(k, len(ids))] {
		if honest[p] {
			out = append(out, p)
		}
	}
	return out
}

// honestRecall is recall, counting a lookup with no honest peer to find
// as a full success.
func honestRecall(got, want []peer.ID) float64 {
	if len(want) == 0 {
		return 1
	}
	return recall(got, want)
}

func setOf(ps []peer.ID) map[peer.ID]bool {
	m := make(map[peer.ID]bool, len(ps))
	for _, p := range ps {
		m[p] = true
	}
	return m
}

func ids(nodes []*DHT) []peer.ID {
	out := make([]peer.ID, len(nodes))
	for i, d := range nodes {
		out[i] = d.self
	}
	return out
}

// Lookups finish within LookupTimeout and still find what honest nodes
// hold when some nodes answer every request with random fake peers, or
// never answer at all.
func TestAdversarialNodes(t *testing.T) {
	if testing.Short() {
		t.Skip("two 34-node networks")
	}
	const lookupTimeout = 20 * time.Second
	opts := valueOpts(RequestTimeout(time.Second), LookupTimeout(lookupTimeout))
	var silent atomic.Bool
	cases := []struct {
		name   string
		answer mixedAnswer
	}{
		{"random fake peers", func(_ *mixedNet, _ host.Host, _ peer.ID, req *pb.Message) *pb.Message {
			r := rand.New(rand.NewPCG(uint64(len(req.Key)), rand.Uint64()))
			closer := make([]pb.Peer, 20)
			for i := range closer {
				closer[i] = fakeEntry(r)
			}
			return reply(req, closer)
		}},
		{"never answers", func(_ *mixedNet, _ host.Host, _ peer.ID, req *pb.Message) *pb.Message {
			// It answers while the network forms, so that it sits in
			// tables, then hangs on every request.
			if silent.Load() {
				return nil
			}
			return reply(req, nil)
		}},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			silent.Store(false)
			mx := newMixedNet(t, 30, 4, uint64(100+i), tc.answer, opts...)
			silent.Store(true)
			inTables := 0
			for _, d := range mx.honest {
				for _, f := range mx.fakes {
					if d.rt.Find(f.h.ID()) {
						inTables++
					}
				}
			}
			r := rand.New(rand.NewPCG(uint64(110+i), 0))
			ctx := testCtx(t, 3*time.Minute)
			w := placeWorkload(t, ctx, mx.honest, r, 8)
			all := ids(mx.honest)
			for _, h := range mx.fakeHosts() {
				all = append(all, h.ID())
			}
			res := runWorkload(t, w, mx.honest, all, setOf(ids(mx.honest)), r)
			var asked int64
			for _, f := range mx.fakes {
				asked += f.requests.Load()
			}
			t.Logf("%s: %d bad nodes in %d table slots, asked %d times; %v", tc.name, len(mx.fakes), inTables, asked, res)
			require.Positive(t, asked, "the bad nodes took part")
			require.Less(t, res.slowest, lookupTimeout+2*time.Second)
			require.Equal(t, res.lookups, res.valuesOK)
			require.Equal(t, res.lookups, res.providersOK)
			require.GreaterOrEqual(t, res.closestOK, res.lookups*9/10)
		})
	}
}

// A peer flooding a node with requests from many streams gets most of
// them refused, costs bounded memory, and honest peers are still served.
// It runs on mocknet, in real time, on purpose: the flood comes on raw
// libp2p streams and the stream limits are the libp2p carrier's
// (handleStream), which memNetwork does not run; the rate it measures is
// a real one.
func TestAdversarialFlood(t *testing.T) {
	tn := newTestNet(t, 8, 120, RandomWalk(false))
	victim, honest := tn.nodes[0], tn.nodes[1]
	fh, err := tn.mn.GenPeer()
	require.NoError(t, err)
	require.NoError(t, tn.mn.LinkAll())
	_, err = tn.mn.ConnectPeers(fh.ID(), victim.self)
	require.NoError(t, err)

	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	heapBefore, goroutinesBefore := heap(), runtime.NumGoroutine()

	const workers, floodFor = 8, 3 * time.Second
	var sent, answered, refused atomic.Int64
	ctx, cancel := context.WithTimeout(context.Background(), floodFor)
	defer cancel()
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 121))
			for ctx.Err() == nil {
				s, err := fh.NewStream(ctx, victim.self, amino)
				if err != nil {
					continue
				}
				c := &rawConn{t: t, s: s, r: wire.NewReader(s, wire.DefaultMaxMessageSize)}
				for ctx.Err() == nil {
					sent.Add(1)
					if _, err := c.ask(&pb.Message{Type: pb.FindNode, Key: []byte(fmt.Sprint(r.Uint64()))}); err != nil {
						refused.Add(1)
						break
					}
					answered.Add(1)
				}
				_ = s.Reset()
			}
		}()
	}
	// Meanwhile an honest peer asks every 50 ms.
	var honestAsked, honestOK int
	var slowest time.Duration
	for ctx.Err() == nil {
		start := time.Now()
		rctx, rcancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := honest.q.request(rctx, victim.self, &pb.Message{Type: pb.FindNode, Key: []byte("honest")})
		rcancel()
		honestAsked++
		if err == nil {
			honestOK++
		}
		slowest = max(slowest, time.Since(start))
		time.Sleep(50 * time.Millisecond) // real time: the flood runs for floodFor
	}
	wg.Wait()
	rate := float64(sent.Load()) / floodFor.Seconds()

	// Then streams opened and left waiting, to use up the stream limits.
	const streamsHeld = 100
	perPeer := victim.cfg.limits.streamsPerPeer
	rejectedBefore := victim.srv.limiter.stats().rejectedStreams
	for range streamsHeld {
		s, err := fh.NewStream(context.Background(), victim.self, amino)
		require.NoError(t, err)
		defer func() { _ = s.Reset() }()
		_, _ = s.Write([]byte{0x80}) // half a length: an admitted handler waits
	}
	waitFor(t, 10*time.Second, "streams past the per-peer limit refused", func() bool {
		st := victim.srv.limiter.stats()
		return st.open >= perPeer && st.rejectedStreams-rejectedBefore == int64(streamsHeld-perPeer)
	})
	_, err = honest.q.request(context.Background(), victim.self, &pb.Message{Type: pb.FindNode, Key: []byte("held")})
	require.NoError(t, err, "the honest peer is served while the attacker holds its streams")

	heapAfter := heap()
	st := victim.srv.limiter.stats()
	t.Logf("flood: %.0f requests/s sent for %v on %d concurrent streams: %d answered, %d refused by the rate limit",
		rate, floodFor, workers, answered.Load(), refused.Load())
	t.Logf("flood: then %d streams held open: %d admitted (%d open in all), %d refused; heap %.1f MiB before, %.1f MiB after; goroutines %d before, %d after",
		streamsHeld, streamsHeld-int(st.rejectedStreams-rejectedBefore), st.open, st.rejectedStreams-rejectedBefore, float64(heapBefore)/(1<<20), float64(heapAfter)/(1<<20), goroutinesBefore, runtime.NumGoroutine())
	t.Logf("flood: honest peer served %d/%d during the flood, slowest %v", honestOK, honestAsked, slowest.Round(time.Millisecond))
	require.Equal(t, honestAsked, honestOK, "the honest peer is always served")
	require.Greater(t, refused.Load(), answered.Load()/2, "the rate limit refused much of the flood")
	require.LessOrEqual(t, answered.Load(), int64(floodFor.Seconds()*victim.cfg.limits.peerRate)+int64(victim.cfg.limits.peerBurst)+int64(workers))
	require.Less(t, heapAfter, heapBefore+64<<20, "memory stays bounded")
	_, err = honest.q.request(context.Background(), victim.self, &pb.Message{Type: pb.FindNode, Key: []byte("after")})
	require.NoError(t, err, "the node still answers after the flood")
}

// In a network where 30 % of the nodes died abruptly, with every table
// still full of them, lookups finish within their timeout and still find
// the values and providers the living hold.
func TestChurn30PercentDead(t *testing.T) {
	if testing.Short() {
		t.Skip("40-node network")
	}
	const n, dead, lookupTimeout = 40, 12, 20 * time.Second
	tn := newTestNet(t, n, 130, valueOpts(RequestTimeout(time.Second), LookupTimeout(lookupTimeout), RandomWalk(false))...)
	r := rand.New(rand.NewPCG(131, 0))
	ctx := testCtx(t, 3*time.Minute)
	w := placeWorkload(t, ctx, tn.nodes, r, 10)
	killed := map[int]bool{}
	for len(killed) < dead {
		i := r.IntN(n)
		if !killed[i] {
			killed[i] = true
			tn.kill(t, i)
		}
	}
	var live []*DHT
	for i, d := range tn.nodes {
		if !killed[i] {
			live = append(live, d)
		}
	}
	stale := 0
	for _, d := range live {
		for i := range killed {
			if d.rt.Find(tn.nodes[i].self) {
				stale++
			}
		}
	}
	res := runWorkload(t, w, live, ids(live), setOf(ids(live)), r)
	t.Logf("%d of %d nodes dead (%d dead entries in live tables): %v", dead, n, stale, res)
	require.Less(t, res.slowest, lookupTimeout+2*time.Second)
	require.GreaterOrEqual(t, res.valuesOK, res.lookups*9/10)
	require.GreaterOrEqual(t, res.providersOK, res.lookups*9/10)
	require.GreaterOrEqual(t, res.closestOK, res.lookups*9/10)
}
