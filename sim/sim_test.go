package sim_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kadlib/kad/sim"
)

// A small network of real nodes: lookups find the true closest peers in a
// few hops, and after 30 % of the nodes stop, with the disconnect checks,
// lookups return no stopped peer, find the live closest and reach the
// records provided before.
func TestRunSmallNetwork(t *testing.T) {
	res, err := sim.Run(t, sim.Config{N: 150, Seed: 1, Lookups: 40, Churn: 0.3, DisconnectChecks: true})
	require.NoError(t, err)
	t.Logf("setup: %d lookups, %d requests, %d probes, table %.1f, %v virtual", res.JoinLookups, res.JoinRPCs, res.Probes, res.TableSize, res.VirtualDuration)
	t.Logf("lookups: %+v", res.Lookup)
	t.Logf("churn: %+v", *res.Churn)
	require.Equal(t, 150, res.Config.N)
	require.Equal(t, 20, res.Config.K, "the node's default")
	require.Equal(t, 10, res.Config.Alpha)
	require.Equal(t, 3, res.Config.Beta)
	require.Greater(t, res.TableSize, 20.0, "tables filled while joining")
	require.Greater(t, res.Probes, int64(0), "admission probes are the node's own")

	l := res.Lookup
	require.Zero(t, l.Errors)
	require.GreaterOrEqual(t, l.Recall, 0.98)
	require.InDelta(t, 20, l.RPCs, 10, "requests per lookup")
	require.GreaterOrEqual(t, l.Messages, l.RPCs-1, "every request is received")
	require.InDelta(t, 2, l.Hops, 1)
	require.GreaterOrEqual(t, l.HopsMax, l.HopsP95)
	require.LessOrEqual(t, l.LatencyP50, l.LatencyP95)
	require.Greater(t, l.LatencyP50, 10*time.Millisecond, "at least a round trip")
	require.Zero(t, l.DeadInResults)

	ch := res.Churn
	require.NotNil(t, ch)
	require.Zero(t, ch.DeadInResults, "a lookup returns only peers that answered")
	require.GreaterOrEqual(t, ch.Recall, 0.95)
	require.GreaterOrEqual(t, ch.RecordsFound, 0.95)
}

// Without the disconnect checks the stopped nodes stay in tables until a
// request to them fails: lookups after the churn send requests that fail,
// and still return only peers that answered.
func TestRunChurnWithoutDisconnectChecks(t *testing.T) {
	res, err := sim.Run(t, sim.Config{N: 150, Seed: 2, Lookups: 40, Churn: 0.3})
	require.NoError(t, err)
	t.Logf("churn: %+v", *res.Churn)
	require.Greater(t, res.Churn.Failed, 0.0, "stopped peers were still in tables")
	require.Zero(t, res.Churn.DeadInResults)
	require.GreaterOrEqual(t, res.Churn.RecordsFound, 0.9)
}

// On equal links every request takes a whole number of round trips, so
// lookups do too.
func TestRunFixedLatency(t *testing.T) {
	res, err := sim.Run(t, sim.Config{N: 60, Seed: 3, Lookups: 20, LatencyMin: 20 * time.Millisecond, LatencyMax: 20 * time.Millisecond})
	require.NoError(t, err)
	require.Zero(t, res.Lookup.LatencyP50%(40*time.Millisecond), "%v", res.Lookup.LatencyP50)
	require.GreaterOrEqual(t, res.Lookup.Recall, 0.98)
	require.Nil(t, res.Churn)
}

// The node's options are the simulator's settings, and the node checks
// them: ConvergeAlpha above Alpha is refused as ConvergeConcurrency is.
func TestRunInvalidConfig(t *testing.T) {
	for _, c := range []sim.Config{
		{N: 1},
		{N: 10, Beta: 30},
		{N: 10, ConvergeAlpha: 11},
		{N: 10, LatencyMin: 2, LatencyMax: 1},
		{N: 10, Churn: 1},
		{N: 10, Lookups: -1},
	} {
		_, err := sim.Run(t, c)
		require.ErrorIs(t, err, sim.ErrInvalidConfig, "%+v", c)
	}
}
