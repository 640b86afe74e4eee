package kad

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sort"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	mocknet "github.com/libp2p/go-libp2p/p2p/net/mock"
	"github.com/stretchr/testify/require"

	"github.com/kadlib/kad/internal/kbucket"
)

// testNet is a mocknet of kad nodes, every one a server, each bootstrapped
// from a few random earlier nodes.
type testNet struct {
	mn    mocknet.Mocknet
	mem   *memNetwork // instead of mn: newMemTestNet
	nodes []*DHT
}

func newTestNet(t testing.TB, n int, seed uint64, opts ...Option) *testNet {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	mn := mocknet.New()
	t.Cleanup(func() { _ = mn.Close() })
	tn := &testNet{mn: mn}
	r := rand.New(rand.NewPCG(seed, 0))
	var infos []peer.AddrInfo
	for i := 0; i < n; i++ {
		h, err := mn.GenPeer()
		require.NoError(t, err)
		infos = append(infos, peer.AddrInfo{ID: h.ID(), Addrs: h.Addrs()})
		// Each node joins through up to 3 random earlier nodes.
		var boots []peer.AddrInfo
		for j := 0; j < 3 && j < i; j++ {
			boots = append(boots, infos[r.IntN(i)])
		}
		d, err := New(ctx, h, append([]Option{Mode(ModeServer), BootstrapPeers(boots...)}, opts...)...)
		require.NoError(t, err)
		t.Cleanup(func() { _ = d.Close() })
		tn.nodes = append(tn.nodes, d)
	}
	require.NoError(t, mn.LinkAll())
	tn.join(t, ctx)
	return tn
}

// trueClosest returns the k ids closest to key among all nodes.
func (tn *testNet) trueClosest(key string, k int, exclude peer.ID) []peer.ID {
	target := kbucket.KeyForBytes([]byte(key))
	var ids []peer.ID
	for _, d := range tn.nodes {
		if d.self != exclude {
			ids = append(ids, d.self)
		}
	}
	kbucket.SortByDistance(ids, target)
	if len(ids) > k {
		ids = ids[:k]
	}
	return ids
}

func recall(got, want []peer.ID) float64 {
	set := make(map[peer.ID]bool, len(got))
	for _, p := range got {
		set[p] = true
	}
	hit := 0
	for _, p := range want {
		if set[p] {
			hit++
		}
	}
	return float64(hit) / float64(len(want))
}

func TestGetClosestPeersRecall(t *testing.T) {
	if testing.Short() {
		t.Skip("200-node network")
	}
	const n, keys = 200, 50
	tn := newTestNet(t, n, 1)
	r := rand.New(rand.NewPCG(2, 0))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var sumRecall float64
	var sumReq, sumHops int64
	for i := 0; i < keys; i++ {
		key := fmt.Sprintf("key-%d", r.Uint64())
		d := tn.nodes[r.IntN(n)]
		before := d.Stats()
		got, err := d.GetClosestPeers(ctx, key)
		require.NoError(t, err)
		after := d.Stats()
		require.True(t, sort.SliceIsSorted(got, func(a, b int) bool {
			tk := kbucket.KeyForBytes([]byte(key))
			return kbucket.CompareDistance(kbucket.PeerKey(got[a]), kbucket.PeerKey(got[b]), tk) < 0
		}), "results sorted by distance")
		require.Len(t, got, 20)
		sumRecall += recall(got, tn.trueClosest(key, 20, d.self))
		sumReq += after.LookupRequests - before.LookupRequests
		sumHops += after.LookupHops - before.LookupHops
	}
	mean := sumRecall / keys
	t.Logf("n=%d keys=%d recall=%.4f rpcs/lookup=%.2f hops/lookup=%.2f", n, keys, mean, float64(sumReq)/keys, float64(sumHops)/keys)
	require.GreaterOrEqual(t, mean, 0.98)
}

func TestFindPeerEveryNode(t *testing.T) {
	if testing.Short() {
		t.Skip("200-node network")
	}
	const n = 200
	tn := newTestNet(t, n, 3)
	r := rand.New(rand.NewPCG(4, 0))
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	for i, target := range tn.nodes {
		from := tn.nodes[(i+1+r.IntN(n-1))%n]
		ai, err := from.FindPeer(ctx, target.self)
		require.NoError(t, err, "node %d", i)
		require.Equal(t, target.self, ai.ID)
		require.NotEmpty(t, ai.Addrs)
	}
}

// kill stops node i abruptly, as a crash would: its links are cut and its
// connections dropped, so peers see only silence.
func (tn *testNet) kill(t testing.TB, i int) {
	t.Helper()
	d := tn.nodes[i]
	if tn.mem != nil {
		_ = tn.mem.stop(d)
		return
	}
	for _, o := range tn.nodes {
		if o.self == d.self {
			continue
		}
		_ = tn.mn.UnlinkPeers(d.self, o.self)
		_ = tn.mn.DisconnectPeers(d.self, o.self)
	}
	_ = d.Close()
	_ = d.h.Close()
}
