package kad

import (
	"context"
	"math/rand/v2"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// closedWithin reports whether ch is closed (after draining anything
// still queued) within d.
func closedWithin(ch <-chan peer.AddrInfo, d time.Duration) bool {
	deadline := time.After(d)
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return true
			}
		case <-deadline:
			return false
		}
	}
}

// FindProvidersAsync closes its channel when the caller cancels mid-stream,
// when it never reads, when count is reached, when the lookup ends and when
// the DHT closes; once the network is shut down no goroutine is left. It
// runs in virtual time: a leaked goroutine also fails synctest.Test.
func TestFindProvidersAsyncNoLeak(t *testing.T) {
	// Goroutines of earlier tests in the package are not this test's.
	before := goleak.IgnoreCurrent()
	synctest.Test(t, func(t *testing.T) {
		tn := newMemTestNet(t, 20, 71)
		r := rand.New(rand.NewPCG(72, 0))
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		c := provCID(t, r)
		var providers []*DHT
		for len(providers) < 5 {
			d := provPick(tn, r, providers...)
			require.NoError(t, d.Provide(ctx, c, true))
			providers = append(providers, d)
		}
		from := provPick(tn, r, providers...)
		waitFor(t, 10*time.Second, "every provider is found", func() bool {
			got, err := from.FindProviders(ctx, c, 0)
			return err == nil && len(got) == len(providers)
		})

		// Cancel after the first.
		fctx, fcancel := context.WithCancel(ctx)
		ch := from.FindProvidersAsync(fctx, c, 0)
		select {
		case _, ok := <-ch:
			require.True(t, ok)
		case <-time.After(10 * time.Second):
			t.Fatal("cancel after the first: no provider")
		}
		fcancel()
		require.True(t, closedWithin(ch, 10*time.Second), "cancel after the first")

		// Never read.
		fctx, fcancel = context.WithCancel(ctx)
		ch = from.FindProvidersAsync(fctx, c, 0)
		time.Sleep(50 * time.Millisecond) // let the search block on the channel
		fcancel()
		require.True(t, closedWithin(ch, 10*time.Second), "never read")

		// Count reached.
		n := 0
		for range from.FindProvidersAsync(ctx, c, 2) {
			n++
		}
		require.Equal(t, 2, n, "count reached")

		// Lookup ends.
		nobody := provCID(t, r)
		require.True(t, closedWithin(from.FindProvidersAsync(ctx, nobody, 0), 20*time.Second), "lookup ends")

		// DHT closes.
		other := provPick(tn, r, from)
		ch = other.FindProvidersAsync(context.Background(), c, 0)
		require.NoError(t, other.Close())
		require.True(t, closedWithin(ch, 10*time.Second), "DHT closes")
		_, ok := <-other.FindProvidersAsync(context.Background(), cid.Cid{}, 0)
		require.False(t, ok)

		require.NoError(t, tn.mem.close())
		synctest.Wait()
		// The bubble's own goroutine, which runs this function, is no leak.
		goleak.VerifyNone(t, before, goleak.IgnoreTopFunction("testing/synctest.testingSynctestTest"))
	})
}
