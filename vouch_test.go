package kad

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/stretchr/testify/require"

	"github.com/kadlib/kad/internal/kbucket"
	"github.com/kadlib/kad/internal/pb"
)

// vouchRTT is the round trip of vouchNet's links; a dial costs three.
const vouchRTT = 40 * time.Millisecond

// vouchNet is 40 joined server nodes on vouchRTT links, without upkeep,
// where new connections then cost three round trips, and their ids.
func vouchNet(t *testing.T, opts ...Option) (*memNetwork, []*DHT, []peer.ID) {
	t.Helper()
	mn := newMemNetwork(41, vouchRTT/2, vouchRTT/2)
	nodes := memNodes(t, mn, 40, append([]Option{RandomWalk(false)}, opts...)...)
	memJoin(t, nodes)
	settle()
	mn.dialDelay = 3 * vouchRTT
	ids := make([]peer.ID, len(nodes))
	for i, d := range nodes {
		ids[i] = d.self
	}
	return mn, nodes, ids
}

// vouchTruth returns key's true 20 closest among ids (d excluded) and how
// many of them d has no connection to.
func vouchTruth(d *DHT, ids []peer.ID, key string) (truth []peer.ID, unconnected int) {
	truth = trueClosest(kbucket.KeyForBytes([]byte(key)), ids, d.self, 20)
	for _, p := range truth {
		if !d.msgr.connected(p) {
			unconnected++
		}
	}
	return truth, unconnected
}

// On a network where a new connection costs three round trips, a
// GetClosestPeers whose result holds peers the origin is not connected to
// ends without waiting for their handshakes once two answering peers
// report a connection to them, and still finds every one of the true 20
// closest; the dials it did not wait for finish in the background.
func TestGetClosestPeersTakesVouchesForUnconnectedPeers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		mn, nodes, ids := vouchNet(t)
		ctx := context.Background()
		vouchedLookups := 0
		for i := range 40 {
			d := nodes[i]
			key := fmt.Sprintf("vouch-%d", i)
			truth, unconnected := vouchTruth(d, ids, key)
			start := time.Now()
			got, err := d.GetClosestPeers(ctx, key)
			took := time.Since(start)
			require.NoError(t, err)
			require.Equal(t, 1.0, recall(got, truth), key)
			if unconnected == 0 {
				continue
			}
			// An answer over a new connection takes the handshake and a
			// round trip: ending sooner means it was not waited for.
			if took < mn.dialDelay+vouchRTT {
				vouchedLookups++
				notAnswered := 0
				for _, p := range got {
					if !d.msgr.connected(p) {
						notAnswered++
					}
				}
				require.Positive(t, notAnswered, "%s: returned before any handshake ended", key)
			}
			// The dials the lookup did not wait for finish on their own:
			// the connections are there for what the caller does next.
			settle()
			for _, p := range truth {
				require.True(t, d.msgr.connected(p), "%s: no connection to %s after the lookup", key, p)
			}
		}
		require.Positive(t, vouchedLookups, "no lookup ended on vouches")
	})
}

// Vouches never bring back a stopped peer: its connections are gone, so
// nobody reports one, and a lookup from a node that never connected to it
// has to ask it, which fails.
func TestVouchesSkipStoppedPeers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		mn := newMemNetwork(42, 20*time.Millisecond, 20*time.Millisecond)
		nodes := memNodes(t, mn, 30, RandomWalk(false))
		memJoin(t, nodes)
		settle()
		mn.dialDelay = 120 * time.Millisecond
		dead := map[peer.ID]bool{}
		for _, d := range nodes[20:] {
			dead[d.self] = true
			require.NoError(t, mn.stop(d))
		}
		ctx := context.Background()
		for i, d := range nodes[:20] {
			got, err := d.GetClosestPeers(ctx, fmt.Sprintf("stopped-%d", i))
			require.NoError(t, err)
			for _, p := range got {
				require.False(t, dead[p], "lookup %d returned stopped peer %s", i, p)
			}
		}
	})
}

// Vouchers(0) turns vouching off: GetClosestPeers then waits for every
// result member's answer, handshakes included.
func TestVouchersOff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		mn, nodes, ids := vouchNet(t, Vouchers(0))
		dialled := 0
		for i, d := range nodes {
			key := fmt.Sprintf("vouch-%d", i)
			truth, unconnected := vouchTruth(d, ids, key)
			start := time.Now()
			got, err := d.GetClosestPeers(context.Background(), key)
			require.NoError(t, err)
			require.Equal(t, 1.0, recall(got, truth), key)
			for _, p := range got {
				require.True(t, d.msgr.connected(p), "%s: %s returned without an answer", key, p)
			}
			if unconnected > 0 {
				dialled++
				require.GreaterOrEqual(t, time.Since(start), mn.dialDelay+vouchRTT, key)
			}
		}
		require.Positive(t, dialled, "no lookup needed a new connection")
	})
}

// The dials a lookup that ended on vouches did not wait for still finish,
// but the peers at their end are not asked: their answers would arrive
// after the lookup ended, for nobody.
func TestVouchedPeersNotAskedAfterLookup(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		mn := newMemNetwork(41, vouchRTT/2, vouchRTT/2)
		nodes := memNodes(t, mn, 40, RandomWalk(false))
		var mu sync.Mutex
		asked := map[[2]string]int{} // (asked peer, key): FIND_NODEs received
		for _, d := range nodes {
			self := d.self
			onRequest(d, pb.FindNode, func(_ peer.ID, req *pb.Message) {
				mu.Lock()
				asked[[2]string{string(self), string(req.Key)}]++
				mu.Unlock()
			})
		}
		memJoin(t, nodes)
		settle()
		mn.dialDelay = 3 * vouchRTT
		vouched := 0
		for i, d := range nodes {
			key := fmt.Sprintf("vouch-%d", i)
			got, err := d.GetClosestPeers(context.Background(), key)
			require.NoError(t, err)
			var notAnswered []peer.ID
			for _, p := range got {
				if !d.msgr.connected(p) {
					notAnswered = append(notAnswered, p)
				}
			}
			settle()
			for _, p := range notAnswered {
				vouched++
				require.True(t, d.msgr.connected(p), "%s: the dial to %s did not finish", key, p)
				mu.Lock()
				n := asked[[2]string{string(p), key}]
				mu.Unlock()
				require.Zero(t, n, "%s: %s was asked after the lookup ended", key, p)
			}
		}
		require.Positive(t, vouched, "no lookup ended on vouches")
	})
}
