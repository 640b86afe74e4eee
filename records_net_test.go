package kad

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/stretchr/testify/require"

	"github.com/kadlib/kad/internal/pb"
)

// latencies summarises GetValue durations.
type latencies []time.Duration

func (l latencies) mean() time.Duration {
	var sum time.Duration
	for _, d := range l {
		sum += d
	}
	return sum / time.Duration(max(len(l), 1))
}

func (l latencies) p95() time.Duration {
	if len(l) == 0 {
		return 0
	}
	s := slices.Clone(l)
	slices.Sort(s)
	return s[(len(s)*95+99)/100-1]
}

// otherThan picks a random node that is not any of the excluded ones.
func (tn *testNet) otherThan(r *rand.Rand, exclude ...*DHT) *DHT {
	for {
		d := tn.nodes[r.IntN(len(tn.nodes))]
		if !slices.Contains(exclude, d) {
			return d
		}
	}
}

// outside picks a random node not among the k closest to key (nor
// excluded), so it never holds the key's record after a put.
func (tn *testNet) outside(r *rand.Rand, key string, exclude ...*DHT) *DHT {
	closest := tn.trueClosest(key, 20, "")
	for {
		d := tn.otherThan(r, exclude...)
		if !slices.Contains(closest, d.self) {
			return d
		}
	}
}

func (tn *testNet) node(p peer.ID) *DHT {
	for _, d := range tn.nodes {
		if d.self == p {
			return d
		}
	}
	return nil
}

func TestValues100Nodes(t *testing.T) {
	if testing.Short() {
		t.Skip("100-node network")
	}
	const n = 100
	tn := newTestNet(t, n, 21, valueOpts()...)
	r := rand.New(rand.NewPCG(22, 0))

	t.Run("put and get 50", func(t *testing.T) {
		ctx := testCtx(t, 3*time.Minute)
		const keys = 50
		var lat latencies
		var ok, acceptedSum, holdersSum int
		var reqs int64
		for i := 0; i < keys; i++ {
			key := fmt.Sprintf("/test/key-%d", i)
			value := []byte(fmt.Sprintf("1:value-%d", i))
			putter := tn.otherThan(r)
			var accepted int
			require.NoError(t, putter.PutValue(ctx, key, value, Accepted(&accepted)))
			acceptedSum += accepted
			for _, p := range tn.trueClosest(key, 20, "") {
				if string(stored(t, tn.node(p), key)) == string(value) {
					holdersSum++
				}
			}
			reader := tn.otherThan(r, putter)
			before := reader.Stats()
			start := time.Now()
			got, err := reader.GetValue(ctx, key)
			lat = append(lat, time.Since(start))
			reqs += reader.Stats().LookupRequests - before.LookupRequests
			if err == nil && string(got) == string(value) {
				ok++
			} else {
				t.Errorf("key %d: got %q, %v", i, got, err)
			}
		}
		t.Logf("n=%d keys=%d read back=%d/%d accepted/put=%.1f true-closest holders/put=%.1f/20 GetValue mean=%v p95=%v requests/get=%.1f",
			n, keys, ok, keys, float64(acceptedSum)/keys, float64(holdersSum)/keys, lat.mean(), lat.p95(), float64(reqs)/keys)
		require.Equal(t, keys, ok)
	})

	t.Run("search yields the newer value", func(t *testing.T) {
		ctx := testCtx(t, time.Minute)
		key := "/test/search"
		reader := tn.outside(r, key)
		// The reader keeps v1 locally; v2 goes only to the closest peers.
		require.NoError(t, reader.PutValue(ctx, key, []byte("1:old")))
		require.NoError(t, tn.otherThan(r, reader).PutValue(ctx, key, []byte("2:new")))
		require.Equal(t, []byte("1:old"), stored(t, reader, key))
		ch, err := reader.SearchValue(ctx, key)
		require.NoError(t, err)
		var got []string
		for v := range ch {
			got = append(got, string(v))
		}
		require.Equal(t, []string{"1:old", "2:new"}, got, "each better value, in order")
		require.Equal(t, []byte("2:new"), stored(t, reader, key), "own stale copy refreshed")
	})

	t.Run("quorum stops early", func(t *testing.T) {
		ctx := testCtx(t, time.Minute)
		key := "/test/quorum"
		putter := tn.otherThan(r)
		require.NoError(t, putter.PutValue(ctx, key, []byte("1:q")))
		reader := tn.outside(r, key, putter)
		requests := func(q int) int64 {
			before := reader.Stats()
			v, err := reader.GetValue(ctx, key, Quorum(q))
			require.NoError(t, err)
			require.Equal(t, []byte("1:q"), v)
			return reader.Stats().LookupRequests - before.LookupRequests
		}
		full, q3 := requests(0), requests(3)
		t.Logf("requests: full lookup=%d quorum(3)=%d", full, q3)
		require.Less(t, q3, full)
		// Our own record counts: a quorum of one needs no request at all.
		require.NoError(t, putter.PutValue(ctx, key, []byte("2:q")))
		before := putter.Stats()
		v, err := putter.GetValue(ctx, key, Quorum(1))
		require.NoError(t, err)
		require.Equal(t, []byte("2:q"), v)
		require.Equal(t, before.LookupRequests, putter.Stats().LookupRequests)
	})

	t.Run("rejected record stored nowhere", func(t *testing.T) {
		ctx := testCtx(t, time.Minute)
		from := tn.otherThan(r)
		cases := []struct{ key, value string }{
			{"/test/rejected", "1:bad"},                         // the validator refuses it
			{"/nons/rejected", "1:x"},                           // no validator for the namespace
			{"/test/huge", "1:" + string(make([]byte, 64<<10))}, // over MaxRecordSize
		}
		for _, c := range cases {
			require.ErrorIs(t, from.PutValue(ctx, c.key, []byte(c.value)), ErrInvalidRecord, c.key)
			// Bypass the local check: every server must refuse it too.
			for _, d := range tn.nodes {
				if d == from {
					continue
				}
				kb := []byte(c.key)
				_, err := from.q.request(ctx, d.self, &pb.Message{Type: pb.PutValue, Key: kb, Record: &pb.Record{Key: kb, Value: []byte(c.value)}})
				require.Error(t, err, "node refuses %s", c.key)
			}
			for i, d := range tn.nodes {
				require.Nil(t, stored(t, d, c.key), "node %d stores %s", i, c.key)
			}
		}
	})

	t.Run("stale peer repaired", func(t *testing.T) {
		ctx := testCtx(t, time.Minute)
		key := "/test/repair"
		putter := tn.otherThan(r)
		require.NoError(t, putter.PutValue(ctx, key, []byte("2:fresh")))
		closest := tn.trueClosest(key, 20, putter.self)
		// One closest peer falls back to an old value, another loses it.
		stale, empty := tn.node(closest[0]), tn.node(closest[1])
		_, err := stale.vals.store.Put(ctx, []byte(key), []byte("1:old"), nil)
		require.NoError(t, err)
		require.NoError(t, empty.vals.store.Delete(ctx, []byte(key)))
		reader := tn.outside(r, key, putter)
		v, err := reader.GetValue(ctx, key)
		require.NoError(t, err)
		require.Equal(t, []byte("2:fresh"), v)
		waitFor(t, 10*time.Second, "stale and empty peers repaired", func() bool {
			return string(stored(t, stale, key)) == "2:fresh" && string(stored(t, empty, key)) == "2:fresh"
		})
	})
}

// After values are stored, 30 % of the nodes stop abruptly; the survivors
// still read at least 98 % of the keys.
func TestValuesChurn(t *testing.T) {
	if testing.Short() {
		t.Skip("100-node network")
	}
	const n, keys, dead = 100, 100, 30
	tn := newTestNet(t, n, 31, valueOpts()...)
	r := rand.New(rand.NewPCG(32, 0))
	ctx := testCtx(t, 4*time.Minute)
	for i := 0; i < keys; i++ {
		require.NoError(t, tn.otherThan(r).PutValue(ctx, fmt.Sprintf("/test/churn-%d", i), []byte(fmt.Sprintf("1:%d", i))))
	}
	perm := r.Perm(n)
	var gone []*DHT
	for _, i := range perm[:dead] {
		d := tn.nodes[i]
		gone = append(gone, d)
		require.NoError(t, d.Close())
		require.NoError(t, d.h.Close())
		for _, o := range tn.nodes {
			if o != d {
				_ = tn.mn.UnlinkPeers(d.self, o.self)
			}
		}
	}
	var lat latencies
	ok := 0
	for i := 0; i < keys; i++ {
		key := fmt.Sprintf("/test/churn-%d", i)
		reader := tn.otherThan(r, gone...)
		start := time.Now()
		got, err := reader.GetValue(ctx, key)
		lat = append(lat, time.Since(start))
		if err == nil && string(got) == fmt.Sprintf("1:%d", i) {
			ok++
		} else {
			t.Logf("key %d: %q, %v", i, got, err)
		}
	}
	rate := float64(ok) / keys
	t.Logf("n=%d stopped=%d keys=%d read back=%d (%.0f%%) GetValue mean=%v p95=%v", n, dead, keys, ok, 100*rate, lat.mean(), lat.p95())
	require.GreaterOrEqual(t, rate, 0.98)
}
