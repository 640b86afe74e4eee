package kbucket

import (
	"encoding/binary"
	"math"

	"github.com/libp2p/go-libp2p/core/peer"
)

// Fraction maps a distance to [0, 1): its fraction of the keyspace, to 64
// bits of precision, which is plenty for any real network.
func Fraction(x ID) float64 {
	return float64(binary.BigEndian.Uint64(x[:8])) / (1 << 64)
}

// KthDistance estimates the distance, as a Fraction of the keyspace, from
// any key to its k-th closest peer: k/(N+1), with the network size N
// estimated from the distances of a node's own closest peers (nearest,
// closest first, as Table.Nearest gives them for the node's own key):
// with N peers spread uniformly, the i-th closest is at about i/(N+1), so
// a least-squares fit through them gives 1/(N+1). With fewer than k peers
// known the network may be smaller than k, and the estimate is +Inf.
func KthDistance(self ID, nearest []peer.ID, k int) float64 {
	if len(nearest) < k || k < 1 {
		return math.Inf(1)
	}
	var num, den float64
	for i, p := range nearest[:k] {
		x := Fraction(PeerKey(p).Xor(self))
		num += float64(i+1) * x
		den += float64((i + 1) * (i + 1))
	}
	return float64(k) * num / den
}
