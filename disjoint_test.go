package kad

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	mocknet "github.com/libp2p/go-libp2p/p2p/net/mock"
	"github.com/stretchr/testify/require"

	"github.com/kadlib/kad/internal/kbucket"
	"github.com/kadlib/kad/internal/pb"
)

// eclipseAnswer is a malicious node of an eclipse attack: asked for the
// peers closest to a key, it lists the k malicious peers closest to it,
// never an honest one, so a lookup that trusts it sees only attackers.
func eclipseAnswer(k int) mixedAnswer {
	return func(mx *mixedNet, self host.Host, _ peer.ID, req *pb.Message) *pb.Message {
		bad := make([]peer.ID, 0, len(mx.fakes))
		for _, f := range mx.fakes {
			if f.h.ID() != self.ID() {
				bad = append(bad, f.h.ID())
			}
		}
		kbucket.SortByDistance(bad, kbucket.KeyForBytes(req.Key))
		closer := make([]pb.Peer, 0, k)
		for _, p := range bad[:min(k, len(bad))] {
			closer = append(closer, entryOf(mx.mn.Host(p)))
		}
		return reply(req, closer)
	}
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil {
		return v
	}
	return def
}

// S/Kademlia disjoint paths against an eclipse attack: 20 % of the nodes
// are malicious, list only each other, and answer at once while honest
// peers take a 20 ms round trip, so a single path that meets one fills its
// window with attackers that all answered and stops there. Lookups split
// into disjoint paths return the true closest honest peers far more often.
// The network is small, so k is small to give lookups several hops: with
// Amino's k = 20 a lookup here sees most of the network and a single path
// is rarely eclipsed. KAD_DISJOINT_* change the parameters.
func TestDisjointPathsResistEclipse(t *testing.T) {
	if testing.Short() {
		t.Skip("200-node network")
	}
	var (
		n        = envInt("KAD_DISJOINT_N", 200)
		k        = envInt("KAD_DISJOINT_K", 8)
		alpha    = envInt("KAD_DISJOINT_ALPHA", 6)
		paths    = envInt("KAD_DISJOINT_D", 6)
		lookups  = envInt("KAD_DISJOINT_LOOKUPS", 160)
		nBad     = n / 5
		seed     = uint64(envInt("KAD_DISJOINT_SEED", 140))
		opts     = []Option{BucketSize(k), Resiliency(min(3, k)), Concurrency(alpha), RandomWalk(false), RequestTimeout(2 * time.Second)}
		mx       = newMixedNet(t, n-nBad, nBad, seed, eclipseAnswer(k), opts...)
		r        = rand.New(rand.NewPCG(seed, 1))
		all      = ids(mx.honest)
		honest   = setOf(all)
		ctx      = context.Background()
		hits     = map[int]int{}
		firsts   = map[int]int{}
		recalls  = map[int]float64{}
		requests = map[int]int64{}
	)
	for _, h := range mx.fakeHosts() {
		all = append(all, h.ID())
	}
	// Attackers answer at once; honest peers take a network round trip.
	lat := time.Duration(envInt("KAD_DISJOINT_LATENCY_MS", 20)) * time.Millisecond
	for i, a := range mx.honest {
		for _, b := range mx.honest[i+1:] {
			for _, l := range mx.mn.LinksBetweenPeers(a.self, b.self) {
				l.SetOptions(mocknet.LinkOptions{Latency: lat})
			}
		}
	}
	for range lookups {
		key := fmt.Sprintf("eclipse-%d", r.Uint64())
		d := mx.honest[r.IntN(len(mx.honest))]
		want := honestClosest(all, honest, key, k, d.self)
		for _, dp := range []int{1, paths} {
			d.q.cfg.disjointPaths = dp // safe: RandomWalk is off, only this goroutine runs lookups
			before := d.Stats().LookupRequests
			got, err := d.GetClosestPeers(ctx, key)
			require.NoError(t, err)
			requests[dp] += d.Stats().LookupRequests - before
			rc := honestRecall(got, want)
			recalls[dp] += rc
			if rc == 1 {
				hits[dp]++
			}
			if len(want) == 0 || slices.Contains(got, want[0]) {
				firsts[dp]++
			}
		}
	}
	rate := func(dp int) float64 { return float64(hits[dp]) / float64(lookups) }
	for _, dp := range []int{1, paths} {
		t.Logf("n=%d (%d malicious) k=%d alpha=%d, %d disjoint path(s): all true closest honest peers found in %d/%d lookups (%.0f%%), the closest one in %d/%d, mean recall %.3f, %.1f requests/lookup",
			n, nBad, k, alpha, dp, hits[dp], lookups, 100*rate(dp), firsts[dp], lookups, recalls[dp]/float64(lookups), float64(requests[dp])/float64(lookups))
	}
	meanRecall := func(dp int) float64 { return recalls[dp] / float64(lookups) }
	// Over 300 lookups the gain is 0.12 in mean recall and 12 % more
	// lookups finding the closest honest peer (0.78 -> 0.90, 78 % -> 90 %).
	// A run of 80 ranged from +0.06 to +0.25: the tables differ from run to
	// run, and CPU load narrows the attackers' head start. The margins sit
	// below that spread.
	require.GreaterOrEqual(t, firsts[paths], firsts[1]+lookups/32, "the closest honest peer is found far more often")
	require.GreaterOrEqual(t, meanRecall(paths), meanRecall(1)+0.04, "and more of the closest honest peers")
	require.GreaterOrEqual(t, hits[paths], hits[1])
}
