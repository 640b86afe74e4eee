package sim

import (
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestRunSmallNetwork(t *testing.T) {
	res, err := Run(Config{N: 300, Seed: 1, Lookups: 50, Churn: 0.3})
	require.NoError(t, err)
	require.Equal(t, 300, res.Config.N)
	require.Greater(t, res.TableSize, 20.0, "tables filled while joining")
	require.GreaterOrEqual(t, res.Lookup.Recall, 0.98)
	require.Greater(t, res.Lookup.RPCs, 0.0)
	require.GreaterOrEqual(t, res.Lookup.HopsMax, res.Lookup.HopsP95)
	require.LessOrEqual(t, res.Lookup.LatencyP50, res.Lookup.LatencyP95)
	require.Zero(t, res.Lookup.DeadInResults)

	require.NotNil(t, res.Churn)
	require.Zero(t, res.Churn.DeadInResults, "a lookup returns only peers that answered")
	require.Greater(t, res.Churn.Failed, 0.0, "stopped peers were still in tables")
	require.GreaterOrEqual(t, res.Churn.Recall, 0.8)
	t.Logf("%+v", *res.Churn)
	require.GreaterOrEqual(t, res.Churn.RecordsFound, 0.98)
}

func TestRunIsDeterministic(t *testing.T) {
	cfg := Config{N: 150, Seed: 7, Lookups: 20, Churn: 0.2}
	a, err := Run(cfg)
	require.NoError(t, err)
	b, err := Run(cfg)
	require.NoError(t, err)
	a.Config.Logger, b.Config.Logger = nil, nil
	require.Equal(t, a, b)
	cfg.Seed = 8
	c, err := Run(cfg)
	require.NoError(t, err)
	require.NotEqual(t, a.JoinRPCs, c.JoinRPCs)
}

func TestFixedLatency(t *testing.T) {
	res, err := Run(Config{N: 100, Lookups: 10, LatencyMin: 20 * time.Millisecond, LatencyMax: 20 * time.Millisecond})
	require.NoError(t, err)
	// Every event is a 40 ms round trip, so lookups take whole multiples.
	require.Zero(t, res.Lookup.LatencyP50%(40*time.Millisecond))
	require.Nil(t, res.Churn)
}

func TestLinkLatencyIsSymmetricAndInRange(t *testing.T) {
	n := newNetwork(Config{N: 50, Seed: 3}.withDefaults())
	for a := range 50 {
		for b := range 50 {
			l := n.oneWay(a, b)
			require.Equal(t, l, n.oneWay(b, a))
			require.GreaterOrEqual(t, l, 5*time.Millisecond)
			require.LessOrEqual(t, l, 100*time.Millisecond)
		}
	}
}

func TestInvalidConfig(t *testing.T) {
	for _, c := range []Config{
		{N: 1},
		{N: 10, Beta: 30},
		{N: 10, LatencyMin: 2, LatencyMax: 1},
		{N: 10, Churn: 1},
		{N: 10, Lookups: -1},
	} {
		_, err := Run(c)
		require.True(t, errors.Is(err, ErrInvalidConfig), "%+v: %v", c, err)
	}
}

// Fewer requests in flight while converging trade round trips for
// requests: the same network needs fewer requests per lookup and no
// fewer hops, and still finds every true closest peer.
func TestConvergeAlphaTradeoff(t *testing.T) {
	run := func(conv int) *Result {
		r, err := Run(Config{N: 500, Lookups: 100, Seed: 3, ConvergeAlpha: conv})
		require.NoError(t, err)
		return r
	}
	wide, narrow := run(0), run(4)
	require.Equal(t, 10, wide.Config.ConvergeAlpha, "default: alpha")
	require.Equal(t, 1.0, wide.Lookup.Recall)
	require.Equal(t, 1.0, narrow.Lookup.Recall)
	require.Less(t, narrow.Lookup.RPCs, wide.Lookup.RPCs)
	require.GreaterOrEqual(t, narrow.Lookup.LatencyP50, wide.Lookup.LatencyP50)
	_, err := Run(Config{N: 10, ConvergeAlpha: 11})
	require.ErrorIs(t, err, ErrInvalidConfig)
}

// With disconnect checks, stopped nodes leave every table at once, so
// answers list live peers only and lookups right after the churn find the
// live closest peers; without them answers are padded with dead peers.
func TestDisconnectChecks(t *testing.T) {
	run := func(checks bool) *Result {
		r, err := Run(Config{N: 1000, Lookups: 200, Seed: 5, Churn: 0.3, DisconnectChecks: checks})
		require.NoError(t, err)
		return r
	}
	without, with := run(false), run(true)
	require.Zero(t, without.Churn.DeadInResults)
	require.Zero(t, with.Churn.DeadInResults)
	require.Less(t, without.Churn.Recall, 0.98)
	require.GreaterOrEqual(t, with.Churn.Recall, 0.99)
	require.Zero(t, with.Churn.Failed, "no request goes to a stopped node")
}
