package kad

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kadlib/kad/internal/pb"
	isim "github.com/kadlib/kad/internal/sim"
)

// A node that vanishes is not reported disconnected: its peers keep it in
// their tables until a request to it fails, after the fail delay.
func TestMemNetVanish(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		mn, a, b, c := memHub(t, 9, 5*time.Millisecond)
		require.NoError(t, mn.vanish(b))
		settle()
		require.True(t, a.RoutingTable().Find(b.self), "nobody told a")
		require.False(t, a.msgr.connected(b.self))
		start := time.Now()
		_, err := a.q.request(context.Background(), b.self, &pb.Message{Type: pb.Ping})
		require.ErrorIs(t, err, errMemUnreachable)
		require.Equal(t, 5*time.Millisecond, time.Since(start))
		require.NoError(t, mn.stop(c))
		settle()
		require.False(t, a.RoutingTable().Find(c.self), "a stopped node's peers are told")
	})
}

// The registered engine runs a small network with churn, and leaves no
// node running (synctest.Test fails if a goroutine is left).
func TestSimulateSmall(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		res, err := isim.Run(isim.Config{N: 40, Seed: 4, Lookups: 20, Churn: 0.2, Bootstraps: 2})
		require.NoError(t, err)
		require.Equal(t, 20, res.Lookup.Lookups)
		require.Equal(t, 2, res.Config.Bootstraps)
		require.Equal(t, 20, res.Config.K)
		require.GreaterOrEqual(t, res.Lookup.Recall, 0.98)
		require.Positive(t, res.Lookup.RPCs)
		require.Positive(t, res.Lookup.Hops)
		require.NotNil(t, res.Churn)
	})
}
