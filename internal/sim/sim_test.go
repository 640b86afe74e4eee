package sim

import (
	"crypto/sha256"
	"fmt"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/stretchr/testify/require"

	"github.com/kadlib/kad/internal/kbucket"
)

// The simulation itself is package kad's, tested through package sim;
// here are the settings and the measurements.

func TestInvalidConfig(t *testing.T) {
	for _, c := range []Config{
		{N: 1},
		{N: 10, K: -1},
		{N: 10, LatencyMin: 2, LatencyMax: 1},
		{N: 10, FailDelay: -1},
		{N: 10, Churn: 1},
		{N: 10, Lookups: -1},
		{N: 10, Bootstraps: -1},
	} {
		_, err := Run(c)
		require.ErrorIs(t, err, ErrInvalidConfig, "%+v", c)
	}
}

// Without package kad linked in there is nothing to run.
func TestNoEngine(t *testing.T) {
	_, err := Run(Config{N: 10})
	require.ErrorIs(t, err, ErrNoEngine)
}

func TestDefaults(t *testing.T) {
	c := Config{N: 10}.WithDefaults()
	require.Equal(t, 5*time.Millisecond, c.LatencyMin)
	require.Equal(t, 100*time.Millisecond, c.LatencyMax)
	require.Equal(t, c.LatencyMax, c.FailDelay)
	require.Equal(t, 3, c.Bootstraps)
	require.Equal(t, 1, c.Rounds)
	require.Equal(t, 200, c.Lookups)
	require.Zero(t, c.K, "the node's default, reported by the engine")
	require.NotNil(t, c.Logger)
}

func TestSummarize(t *testing.T) {
	var s []Sample
	for i := range 20 {
		s = append(s, Sample{Recall: 1, Requests: 20, Failed: 1, Messages: 22, Hops: int64(1 + i%3), Latency: time.Duration(i+1) * time.Millisecond})
	}
	s[3].Recall, s[3].Err, s[3].Dead = 0.5, true, 2
	ph := Summarize(s)
	require.Equal(t, 20, ph.Lookups)
	require.Equal(t, 1, ph.Errors)
	require.InDelta(t, 0.975, ph.Recall, 1e-9)
	require.Equal(t, 0.5, ph.RecallMin)
	require.InDelta(t, 0.95, ph.Perfect, 1e-9)
	require.Equal(t, 20.0, ph.RPCs)
	require.Equal(t, 1.0, ph.Failed)
	require.Equal(t, 22.0, ph.Messages)
	require.Equal(t, 2, ph.DeadInResults)
	require.Equal(t, 3, ph.HopsMax)
	require.Equal(t, 2, ph.HopsP50)
	require.Equal(t, 10*time.Millisecond, ph.LatencyP50)
	require.Equal(t, 19*time.Millisecond, ph.LatencyP95)
	require.Equal(t, Phase{RecallMin: 1}, Summarize(nil))
}

func TestTrueClosestAndRecall(t *testing.T) {
	var ids []peer.ID
	var keys []kbucket.ID
	for i := range 100 {
		h := sha256.Sum256(fmt.Appendf(nil, "peer-%d", i))
		ids = append(ids, peer.ID(h[:]))
		keys = append(keys, kbucket.PeerKey(ids[i]))
	}
	target := kbucket.KeyForBytes([]byte("target"))
	got := TrueClosest(target, 20, ids, keys)
	want := append([]peer.ID(nil), ids...)
	kbucket.SortByDistance(want, target)
	require.Equal(t, want[:20], got)
	require.Len(t, TrueClosest(target, 20, ids[:5], keys[:5]), 5)
	require.Equal(t, 1.0, Recall(got, want[:20]))
	require.Equal(t, 0.5, Recall(got[:10], want[:20]))
	require.Equal(t, 1.0, Recall(nil, nil))
}
