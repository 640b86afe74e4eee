package kad

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kadlib/kad/internal/kbucket"
)

func TestInspect(t *testing.T) {
	ctx := testCtx(t, time.Minute)
	tn := newTestNet(t, 30, 17, valueOpts(RandomWalk(false))...)
	d := tn.nodes[0]

	// Buckets: every table peer once, in its bucket, with its distance.
	bs := d.RoutingTable().Buckets()
	seen := map[string]bool{}
	self := kbucket.PeerKey(d.self)
	for i, b := range bs {
		if i > 0 {
			require.Greater(t, b.Index, bs[i-1].Index, "buckets in index order")
		}
		require.NotEmpty(t, b.Peers)
		for _, p := range b.Peers {
			require.False(t, seen[string(p.ID)])
			seen[string(p.ID)] = true
			require.Equal(t, [32]byte(kbucket.PeerKey(p.ID).Xor(self)), p.Distance)
			require.Equal(t, b.Index, kbucket.CommonPrefixLen(self, kbucket.PeerKey(p.ID)))
			require.False(t, p.LastSeen.IsZero())
		}
	}
	require.Len(t, seen, d.RoutingTable().Size())

	// Recent lookups: newest first, with the target's position.
	before := len(d.RecentLookups(recentLookups))
	_, err := d.GetClosestPeers(ctx, "inspect")
	require.NoError(t, err)
	ls := d.RecentLookups(1)
	require.Len(t, ls, 1)
	require.Equal(t, [32]byte(kbucket.KeyForBytes([]byte("inspect"))), ls[0].Target)
	require.Positive(t, ls[0].Requests)
	require.Positive(t, ls[0].Hops)
	require.Positive(t, ls[0].Duration)
	require.Empty(t, ls[0].Err)
	require.Len(t, d.RecentLookups(recentLookups), min(before+1, recentLookups))
	require.Empty(t, d.RecentLookups(-1))

	// Store counts, summed over the network: one value on each of the k
	// closest, one provider record on each of the k closest.
	require.NoError(t, d.PutValue(ctx, "/test/inspect", []byte("1:hello")))
	c := provCID(t, rand.New(rand.NewPCG(1, 2)))
	require.NoError(t, d.Provide(ctx, c, true))
	var values, provs, holders int
	count := func() bool {
		values, provs, holders = 0, 0, 0
		for _, n := range tn.nodes {
			sc, err := n.StoreCounts(ctx)
			require.NoError(t, err)
			values += sc.Values
			provs += sc.Providers
			ps, err := n.provs.builtin.Get(ctx, c.Hash(), time.Now(), 0)
			require.NoError(t, err)
			if len(ps) > 0 {
				holders++
			}
		}
		// Provide returns once half of k were sent to; the rest follow,
		// and a send made before the lookup ended may reach a peer that
		// ends up just outside the k closest (optimistic provide), so the
		// exact number of holders is not known in advance: wait until
		// the counts agree with the stores and the k closest had time to
		// get theirs.
		return provs >= 20 && provs == holders
	}
	waitFor(t, 10*time.Second, "provider records on the k closest, counted right", count)
	require.GreaterOrEqual(t, values, 10)
	require.LessOrEqual(t, values, 21)
	require.GreaterOrEqual(t, provs, 10)
	require.LessOrEqual(t, provs, len(tn.nodes))

	// The network size estimate is the right order of magnitude.
	est := d.NetworkSizeEstimate()
	require.Greater(t, est, 10.0)
	require.Less(t, est, 120.0)
}

func TestNetworkSizeSmall(t *testing.T) {
	tn := newTestNet(t, 4, 3, RandomWalk(false))
	// Fewer than k peers: the network is the table and us.
	d := tn.nodes[0]
	require.Equal(t, float64(d.RoutingTable().Size()+1), d.NetworkSizeEstimate())
}

func TestLookupRing(t *testing.T) {
	r := newLookupRing(3)
	require.Empty(t, r.last(5))
	for i := range 5 {
		r.add(LookupInfo{Hops: i})
	}
	got := r.last(5)
	require.Len(t, got, 3)
	require.Equal(t, []int{4, 3, 2}, []int{got[0].Hops, got[1].Hops, got[2].Hops})
	require.Len(t, r.last(2), 2)
}
