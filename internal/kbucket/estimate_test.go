package kbucket

import (
	"math/rand/v2"
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/stretchr/testify/require"
)

// The network-size estimate behind optimistic provide and near requests:
// with N peers spread uniformly, it is close to k/(N+1) of the keyspace.
func TestKthDistance(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 5))
	const k = 20
	for _, n := range []int{100, 1000, 10000} {
		var sum float64
		const trials = 20
		for trial := 0; trial < trials; trial++ {
			ids := make([]peer.ID, n)
			for i := range ids {
				var b [34]byte
				for j := range b {
					b[j] = byte(r.Uint32())
				}
				ids[i] = peer.ID(b[:])
			}
			self := PeerKey(ids[0])
			rest := ids[1:]
			SortByDistance(rest, self)
			sum += KthDistance(self, rest[:k], k) * float64(n)
		}
		mean := sum / trials
		t.Logf("N=%d: threshold x N = %.1f (ideal %d)", n, mean, k)
		require.InDelta(t, k, mean, k*0.35, "N=%d", n)
	}
	require.True(t, KthDistance(ID{}, nil, k) > 1, "fewer than k peers: every peer is near")
}
