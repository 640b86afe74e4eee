package kad

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	ds "github.com/ipfs/go-datastore"
	dssync "github.com/ipfs/go-datastore/sync"
	"github.com/stretchr/testify/require"

	"github.com/kadlib/kad/internal/kbucket"
	"github.com/kadlib/kad/internal/reprovide"
)

// rpFake is a reprovider on a fake network: provide records when each
// key was announced, in virtual time.
type rpFake struct {
	mu       sync.Mutex
	at       map[string][]time.Time
	statuses []ReprovideStatus
	fail     int // the next fail provides reach no peer
}

func (f *rpFake) provide(_ context.Context, keys []provKey) (ProvideReport, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail > 0 {
		f.fail--
		return ProvideReport{Keys: len(keys), KeysMissed: len(keys)}, ErrNoPeerReached
	}
	now := time.Now()
	for _, k := range keys {
		f.at[string(k.mh)] = append(f.at[string(k.mh)], now)
	}
	return ProvideReport{Keys: len(keys), Lookups: 1}, nil
}

// snap returns the statuses so far, once the reprovider is idle.
func (f *rpFake) snap() []ReprovideStatus {
	synctest.Wait()
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]ReprovideStatus(nil), f.statuses...)
}

func (f *rpFake) start(ctx context.Context, store ds.Datastore, s reprovide.Schedule) (stop func()) {
	r := &reprovider{
		ds: store, sched: s, provide: f.provide,
		progress: func(st ReprovideStatus) { f.mu.Lock(); f.statuses = append(f.statuses, st); f.mu.Unlock() },
		log:      slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); r.run(ctx) }()
	return func() { cancel(); <-done }
}

// rpKeys puts n random keys in store, as StartProviding does.
func rpKeys(t *testing.T, store ds.Datastore, n int) []provKey {
	r := rand.New(rand.NewPCG(5, 6))
	keys := make([]provKey, n)
	for i := range keys {
		mh := make([]byte, 34)
		mh[0], mh[1] = 0x12, 0x20
		for j := 2; j < len(mh); j++ {
			mh[j] = byte(r.Uint32())
		}
		keys[i] = provKey{mh: mh, pos: kbucket.KeyForBytes(mh)}
		require.NoError(t, store.Put(context.Background(), reprovideDSKey(keys[i]), []byte{}))
	}
	return keys
}

// Every key is reprovided once per interval, at its region's offset, and
// regions are spread evenly: never two in one slot.
func TestReproviderEveryKeyEachInterval(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := reprovide.Schedule{Interval: 22 * time.Hour, Bits: 6}
		store := dssync.MutexWrap(ds.NewMapDatastore())
		keys := rpKeys(t, store, 2000)
		f := &rpFake{at: map[string][]time.Time{}}
		t0 := time.Now()
		stop := f.start(t.Context(), store, s)
		time.Sleep(2*s.Interval + s.Slot()/2)
		stop()

		for _, k := range keys {
			at := f.at[string(k.mh)]
			require.Len(t, at, 2, "key reprovided once per interval")
			region := reprovide.RegionOf(k.pos, s.Bits)
			// The first cycle starts one slot in, leaving time to join.
			require.Equal(t, t0.Add(s.Slot()+time.Duration(region)*s.Slot()), at[0])
			require.Equal(t, s.Interval, at[1].Sub(at[0]))
		}
		require.Len(t, f.statuses, 2*s.Regions())
		total := 0
		for i, st := range f.statuses {
			require.Equal(t, i%s.Regions(), st.Region)
			require.Zero(t, st.Behind)
			require.NoError(t, st.Err)
			total += st.Keys
		}
		require.Equal(t, 2*len(keys), total)
	})
}

// A restart resumes at the saved region: on time after a short stop, and
// after a long one with the overdue region now and the rest spaced as
// before, never a burst.
func TestReproviderResumesWithoutBurst(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := reprovide.Schedule{Interval: 16 * time.Hour, Bits: 4} // a region an hour
		store := dssync.MutexWrap(ds.NewMapDatastore())
		rpKeys(t, store, 500)
		f := &rpFake{at: map[string][]time.Time{}}
		t0 := time.Now()
		stop := f.start(t.Context(), store, s)
		time.Sleep(5*time.Hour + 30*time.Minute) // regions 0-4 done
		stop()
		require.Len(t, f.statuses, 5)

		// Stopped for 10 minutes: region 5 still runs at its time.
		time.Sleep(10 * time.Minute)
		stop = f.start(t.Context(), store, s)
		time.Sleep(time.Hour)
		stop()
		require.Len(t, f.statuses, 6)
		require.Equal(t, 5, f.statuses[5].Region)
		require.Zero(t, f.statuses[5].Behind)

		// Down for 20 hours: region 6 (due at t0+7h) runs at once, reported
		// late; region 7 an hour later, and so on.
		time.Sleep(20 * time.Hour)
		restart := time.Now()
		n := len(f.statuses)
		stop = f.start(t.Context(), store, s)
		time.Sleep(time.Minute)
		sts := f.snap()
		require.Len(t, sts, n+1, "one region right after the restart, no burst")
		st := sts[n]
		require.Equal(t, 6, st.Region)
		require.Equal(t, restart.Sub(t0.Add(7*time.Hour)), st.Behind)
		time.Sleep(3 * time.Hour)
		stop()
		require.Len(t, f.statuses, n+4)
		for i, st := range f.statuses[n+1:] {
			require.Equal(t, 7+i, st.Region)
			require.Zero(t, st.Behind)
		}
	})
}

// A region that reaches no peer is retried, not skipped.
func TestReproviderRetriesFailedRegion(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := reprovide.Schedule{Interval: 16 * time.Hour, Bits: 4}
		store := dssync.MutexWrap(ds.NewMapDatastore())
		rpKeys(t, store, 200)
		f := &rpFake{at: map[string][]time.Time{}, fail: 2}
		stop := f.start(t.Context(), store, s)
		time.Sleep(time.Hour + 2*reprovideRetry + time.Second)
		stop()
		require.Len(t, f.statuses, 3)
		require.ErrorIs(t, f.statuses[0].Err, ErrNoPeerReached)
		require.ErrorIs(t, f.statuses[1].Err, ErrNoPeerReached)
		require.NoError(t, f.statuses[2].Err)
		require.Equal(t, 0, f.statuses[2].Region)
		require.Equal(t, 2*reprovideRetry, f.statuses[2].Behind)
	})
}

// On a real network: StartProviding announces and persists, the
// reprovider's options are validated, StopProviding removes.
func TestStartStopProviding(t *testing.T) {
	tn := newTestNet(t, 15, 301, RandomWalk(false))
	a := pmJoin(t, tn, 302, RandomWalk(false), Reprovide(true))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cids := pmCIDs(t, 50, 303)
	require.NoError(t, a.StartProviding(ctx, cids...))
	require.Equal(t, 1.0, pmFindable(t, tn, cids, a.self, 304))
	r := &reprovider{ds: a.ext.ds, sched: reprovide.Schedule{Interval: time.Hour, Bits: 0}, log: a.log}
	keys, err := r.regionKeys(ctx, 0)
	require.NoError(t, err)
	require.Len(t, keys, 50)
	require.NoError(t, a.StopProviding(ctx, cids[:20]...))
	keys, err = r.regionKeys(ctx, 0)
	require.NoError(t, err)
	require.Len(t, keys, 30)

	require.ErrorIs(t, tn.nodes[0].StartProviding(ctx, cids[0]), ErrReprovideDisabled)
	for _, opts := range [][]Option{
		{Reprovide(true), ReprovideInterval(0)},
		{Reprovide(true), ReprovideRegions(17)},
		{Reprovide(true), ReprovideInterval(48 * time.Hour)},
		{Reprovide(true), DisableProviders()},
	} {
		h, err := tn.mn.GenPeer()
		require.NoError(t, err)
		_, err = New(ctx, h, opts...)
		require.True(t, errors.Is(err, ErrInvalidOption), "%v", err)
	}
}

// A region's keys are read with one query per first byte it spans, or
// with one query of every kept key when it spans a quarter of the
// keyspace or more (a MapDatastore reads all its entries per query);
// either way exactly the region's keys come back.
func TestReproviderRegionKeysQueries(t *testing.T) {
	ctx := context.Background()
	for _, c := range []struct {
		bits, queries int
	}{
		{0, 1}, {2, 1}, {3, 32}, {8, 1}, {10, 1},
	} {
		t.Run(fmt.Sprintf("bits %d", c.bits), func(t *testing.T) {
			store := &countingDS{Batching: dssync.MutexWrap(ds.NewMapDatastore())}
			keys := rpKeys(t, store, 3000)
			// Other entries of the store are not kept keys.
			require.NoError(t, store.Put(ctx, ds.NewKey("/providers/x"), []byte{1}))
			r := &reprovider{ds: store, sched: reprovide.Schedule{Interval: time.Hour, Bits: c.bits}, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
			for _, region := range []int{0, r.sched.Regions() - 1} {
				store.queries.Store(0)
				got, err := r.regionKeys(ctx, region)
				require.NoError(t, err)
				require.Equal(t, int64(c.queries), store.queries.Load())
				want := 0
				for _, k := range keys {
					if reprovide.RegionOf(k.pos, c.bits) == region {
						want++
					}
				}
				require.Len(t, got, want)
				for _, k := range got {
					require.Equal(t, region, reprovide.RegionOf(k.pos, c.bits))
				}
			}
		})
	}
}
