package kad

import (
	"context"
	"fmt"
	"testing"
	"time"

	mocknet "github.com/libp2p/go-libp2p/p2p/net/mock"
	"github.com/stretchr/testify/require"
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
