package kad

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// ProvideManyProgress reports totals that only grow and end at the
// report's, one call at a time.
func TestProvideManyProgress(t *testing.T) {
	tn := newTestNet(t, 20, 131, RandomWalk(false))
	a := pmJoin(t, tn, 132, RandomWalk(false))
	cids := pmCIDs(t, 200, 133)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var (
		mu    sync.Mutex
		calls []ProvideProgress
		busy  bool
	)
	rep, err := a.ProvideManyReport(ctx, cids, ProvideManyProgress(func(p ProvideProgress) {
		mu.Lock()
		require.False(t, busy, "calls one at a time")
		busy = true
		calls = append(calls, p)
		busy = false
		mu.Unlock()
	}))
	require.NoError(t, err)
	mu.Lock()
	defer mu.Unlock()
	require.NotEmpty(t, calls)
	for i := 1; i < len(calls); i++ {
		prev, cur := calls[i-1], calls[i]
		require.GreaterOrEqual(t, cur.Placed, prev.Placed)
		require.GreaterOrEqual(t, cur.Report.Lookups, prev.Report.Lookups)
		require.GreaterOrEqual(t, cur.Report.Messages, prev.Report.Messages)
		require.LessOrEqual(t, cur.Placed, cur.Report.Keys)
	}
	last := calls[len(calls)-1]
	require.Equal(t, rep, last.Report)
	require.Equal(t, len(cids), last.Placed)

	_, err = a.ProvideManyReport(ctx, cids, ProvideManyProgress(nil))
	require.ErrorIs(t, err, ErrInvalidOption)
}
