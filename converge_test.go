package kad

import (
	"context"
	"fmt"
	"math"
	"testing"
	"time"

	mocknet "github.com/libp2p/go-libp2p/p2p/net/mock"
	"github.com/stretchr/testify/require"

	"github.com/kadlib/kad/internal/lookup"
)

func TestConvergeConcurrencyOption(t *testing.T) {
	mn := mocknet.New()
	t.Cleanup(func() { _ = mn.Close() })
	h, err := mn.GenPeer()
	require.NoError(t, err)
	for name, opts := range map[string][]Option{
		"negative":          {ConvergeConcurrency(-1)},
		"above concurrency": {Concurrency(4), ConvergeConcurrency(5)},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := New(context.Background(), h, opts...)
			require.ErrorIs(t, err, ErrInvalidOption)
		})
	}

	// A network whose lookups converge with 2 requests in flight still
	// finds the true closest peers.
	tn := newTestNet(t, 40, 401, RandomWalk(false), ConvergeConcurrency(2))
	ctx := testCtx(t, time.Minute)
	for i := range 10 {
		key := fmt.Sprintf("converge-%d", i)
		d := tn.nodes[i*3]
		got, err := d.GetClosestPeers(ctx, key)
		require.NoError(t, err)
		require.Equal(t, 1.0, recall(got, tn.trueClosest(key, 20, d.self)), key)
	}
}

// Lookups that run to the end ask probable result members ahead (Near);
// lookups that may stop early, and nodes set to converge with fewer
// requests, do not.
func TestLookupNear(t *testing.T) {
	tn := newTestNet(t, 30, 402, RandomWalk(false))
	d := tn.nodes[3]
	near, first := d.q.near(20, false)
	require.Greater(t, first, 0.0)
	require.False(t, math.IsInf(near, 1), "29 peers known: an estimate, not everything")
	require.InDelta(t, lookup.NearFactor/lookup.FirstNearFactor*first, near, 1e-12, "before the first answer: a fraction of the estimate")
	near, first = d.q.near(20, true)
	require.Zero(t, near, "a lookup that may stop early")
	require.Zero(t, first)

	narrow := newTestNet(t, 2, 403, RandomWalk(false), ConvergeConcurrency(3)).nodes[0]
	near, first = narrow.q.near(20, false)
	require.Zero(t, near)
	require.Zero(t, first)
}
