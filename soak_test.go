package kad

import (
	"context"
	"math/rand/v2"
	"os"
	"runtime"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/stretchr/testify/require"
)

// TestSoakChurn runs 50 nodes while 10 % of them leave and new ones join
// every round, and checks that tables stay live and that goroutines and
// heap stay flat. KAD_SOAK_ROUNDS makes it longer (default 8 rounds). It
// runs in virtual time on memNetwork: the waits between refreshes cost
// nothing, and a reading taken once every goroutine is blocked counts
// exactly what stays.
func TestSoakChurn(t *testing.T) {
	if testing.Short() {
		t.Skip("soak: runs in the full (non-race) pass of scripts/test")
	}
	rounds := 8
	if v := os.Getenv("KAD_SOAK_ROUNDS"); v != "" {
		var n int
		for _, c := range v {
			n = n*10 + int(c-'0')
		}
		rounds = n
	}
	synctest.Test(t, func(t *testing.T) {
		const n, churn = 50, 5
		interval := 500 * time.Millisecond
		// The test runs each refresh itself (refreshAll), so it reads
		// goroutines and heap when no upkeep is in flight: with a ticker every
		// half second, 50 nodes' refresh lookups overlap on two cores and a
		// reading counts the backlog of the moment rather than what stays.
		opts := []Option{RefreshInterval(interval), RequestTimeout(2 * time.Second), manualRefresh()}
		tn := newMemTestNet(t, n, 12, opts...)
		r := rand.New(rand.NewPCG(13, 0))
		alive := map[peer.ID]bool{}
		live := make([]int, 0, n)
		for i, d := range tn.nodes {
			alive[d.self] = true
			live = append(live, i)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()

		liveness := func() float64 {
			var in, ok int
			for _, i := range live {
				for _, p := range tn.nodes[i].RoutingTable().ListPeers() {
					in++
					if alive[p] {
						ok++
					}
				}
			}
			return float64(ok) / float64(max(in, 1))
		}
		usage := func() (int, uint64) {
			runtime.GC()
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			return runtime.NumGoroutine(), ms.HeapAlloc
		}
		refreshAll := func() {
			var wg sync.WaitGroup
			for _, i := range live {
				d := tn.nodes[i]
				wg.Go(func() { d.keeper.refreshAndSave(ctx) })
			}
			wg.Wait()
		}
		// Streams and handlers of the last requests may still be closing:
		// the least of a few readings is what stays.
		steady := func() (int, uint64) {
			synctest.Wait()
			g, h := usage()
			for range 9 {
				time.Sleep(100 * time.Millisecond)
				g2, h2 := usage()
				g, h = min(g, g2), min(h, h2)
			}
			return g, h
		}
		var g0 int
		// Heap is compared per node ever created: the network keeps every
		// departed node (its identity, closed DHT and peerstore, for restart),
		// and each living node's peerstore keeps the departed peers' addresses
		// and protocols until it forgets them, so the heap grows with the
		// nodes created even when nothing in kad does.
		var h0 float64
		perHost := func(h uint64) float64 { return float64(h) / float64(len(tn.nodes)) }
		for round := 0; round < rounds; round++ {
			// churn: 10 % leave abruptly...
			for j := 0; j < churn; j++ {
				k := r.IntN(len(live))
				i := live[k]
				live = append(live[:k], live[k+1:]...)
				alive[tn.nodes[i].self] = false
				tn.kill(t, i)
			}
			// ...and as many join through a random live node.
			for j := 0; j < churn; j++ {
				b := tn.nodes[live[r.IntN(len(live))]]
				d, err := tn.mem.addNode(append([]Option{Mode(ModeServer), BootstrapPeers(memInfo(b))}, opts...)...)
				require.NoError(t, err)
				require.NoError(t, d.Bootstrap(ctx))
				tn.nodes = append(tn.nodes, d)
				live = append(live, len(tn.nodes)-1)
				alive[d.self] = true
			}
			// Two refreshes, an interval apart, let liveness checks and
			// lookups evict the dead.
			for range 2 {
				time.Sleep(interval)
				refreshAll()
			}
			lv := liveness()
			g, h := steady()
			// The baseline is the peak of the first rounds.
			if round <= 2 {
				g0, h0 = max(g0, g), max(h0, perHost(h))
			}
			t.Logf("round %d: live nodes %d, table liveness %.3f, goroutines %d, heap %.1f MiB", round, len(live), lv, g, float64(h)/(1<<20))
			require.GreaterOrEqual(t, lv, 0.9, "round %d", round)
		}
		g, h := steady()
		t.Logf("goroutines %d -> %d, heap per host created %.2f -> %.2f MiB (%d hosts)", g0, g, h0/(1<<20), perHost(h)/(1<<20), len(tn.nodes))
		// Readings are taken with no upkeep in flight, so they are exact: a
		// leak of one goroutine per five departed peers fails here.
		require.LessOrEqual(t, g, g0+rounds*churn/5, "goroutines flat")
		require.Less(t, perHost(h), 2*h0, "heap per host flat")
	})
}

// manualRefresh stops the refresh ticker: the test calls refreshOnce.
func manualRefresh() Option {
	return func(c *config) error { c.table.testManualRefresh = true; return nil }
}
