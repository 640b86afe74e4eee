package providers

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	ds "github.com/ipfs/go-datastore"
	dsq "github.com/ipfs/go-datastore/query"
	dssync "github.com/ipfs/go-datastore/sync"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/test"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/stretchr/testify/require"
)

const (
	validity = 48 * time.Hour
	addrTTL  = 24 * time.Hour
)

func testConfig() Config {
	return Config{Validity: validity, AddrTTL: addrTTL, MaxPerKey: 8, CacheKeys: 4}
}

// countingDS counts queries, to tell cache hits from datastore reads.
type countingDS struct {
	ds.Batching
	queries atomic.Int64
}

func (c *countingDS) Query(ctx context.Context, q dsq.Query) (dsq.Results, error) {
	c.queries.Add(1)
	return c.Batching.Query(ctx, q)
}

func newDS() *countingDS {
	return &countingDS{Batching: dssync.MutexWrap(ds.NewMapDatastore())}
}

func newStore(t *testing.T, d ds.Batching, cfg Config) *Store {
	t.Helper()
	s, err := New(d, cfg)
	require.NoError(t, err)
	return s
}

func peers(t *testing.T, n int) []peer.ID {
	t.Helper()
	out := make([]peer.ID, n)
	for i := range out {
		p, err := test.RandPeerID()
		require.NoError(t, err)
		out[i] = p
	}
	return out
}

func addr(t *testing.T, port int) ma.Multiaddr {
	t.Helper()
	a, err := ma.NewMultiaddr(fmt.Sprintf("/ip4/10.0.0.1/tcp/%d", port))
	require.NoError(t, err)
	return a
}

func ids(ais []peer.AddrInfo) []peer.ID {
	out := make([]peer.ID, len(ais))
	for i, ai := range ais {
		out[i] = ai.ID
	}
	return out
}

func TestConfigValidate(t *testing.T) {
	cases := []struct {
		name string
		mod  func(*Config)
		ok   bool
	}{
		{"defaults", func(*Config) {}, true},
		{"no cache", func(c *Config) { c.CacheKeys = 0 }, true},
		{"zero validity", func(c *Config) { c.Validity = 0 }, false},
		{"negative addr ttl", func(c *Config) { c.AddrTTL = -time.Second }, false},
		{"addr ttl beyond validity", func(c *Config) { c.AddrTTL = c.Validity + time.Second }, false},
		{"zero per key", func(c *Config) { c.MaxPerKey = 0 }, false},
		{"negative cache", func(c *Config) { c.CacheKeys = -1 }, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig()
			tc.mod(&cfg)
			_, err := New(newDS(), cfg)
			if tc.ok {
				require.NoError(t, err)
			} else {
				require.ErrorIs(t, err, ErrInvalidConfig)
			}
		})
	}
	_, err := New(nil, testConfig())
	require.ErrorIs(t, err, ErrInvalidConfig)
}

func TestAddGetOrderAndLimit(t *testing.T) {
	ctx := context.Background()
	s := newStore(t, newDS(), testConfig())
	ps := peers(t, 3)
	t0 := time.Unix(1_700_000_000, 0)
	key := []byte("some-multihash")
	for i, p := range ps {
		require.NoError(t, s.Add(ctx, key, p, []ma.Multiaddr{addr(t, 4000+i)}, t0.Add(time.Duration(i)*time.Minute)))
	}
	got, err := s.Get(ctx, key, t0.Add(time.Hour), 0)
	require.NoError(t, err)
	require.Equal(t, []peer.ID{ps[2], ps[1], ps[0]}, ids(got), "most recent first")
	require.Equal(t, []ma.Multiaddr{addr(t, 4002)}, got[0].Addrs)

	got, err = s.Get(ctx, key, t0.Add(time.Hour), 2)
	require.NoError(t, err)
	require.Equal(t, []peer.ID{ps[2], ps[1]}, ids(got))

	got, err = s.Get(ctx, []byte("other"), t0, 0)
	require.NoError(t, err)
	require.Empty(t, got)

	require.Error(t, s.Add(ctx, nil, ps[0], nil, t0))
	require.Error(t, s.Add(ctx, key, "", nil, t0))
}

// Records expire after Validity and their addresses after AddrTTL, counted
// from the last announcement, in virtual time.
func TestExpiry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		d := newDS()
		s := newStore(t, d, testConfig())
		ps := peers(t, 2)
		key := []byte("key")
		a := []ma.Multiaddr{addr(t, 1)}
		require.NoError(t, s.Add(ctx, key, ps[0], a, time.Now()))
		require.NoError(t, s.Add(ctx, key, ps[1], a, time.Now()))

		time.Sleep(addrTTL - time.Second)
		got, err := s.Get(ctx, key, time.Now(), 0)
		require.NoError(t, err)
		require.Len(t, got, 2)
		require.NotEmpty(t, got[0].Addrs)

		// ps[1] announces again, without addresses: the record is renewed,
		// its old addresses still expire on their own clock.
		require.NoError(t, s.Add(ctx, key, ps[1], nil, time.Now()))
		time.Sleep(time.Second)
		got, err = s.Get(ctx, key, time.Now(), 0)
		require.NoError(t, err)
		require.Len(t, got, 2)
		for _, ai := range got {
			require.Empty(t, ai.Addrs, "addresses expire after %v", addrTTL)
		}

		time.Sleep(validity - addrTTL - time.Second)
		got, err = s.Get(ctx, key, time.Now(), 0)
		require.NoError(t, err)
		require.Len(t, got, 2, "one second before validity ends")

		time.Sleep(time.Second)
		got, err = s.Get(ctx, key, time.Now(), 0)
		require.NoError(t, err)
		require.Equal(t, []peer.ID{ps[1]}, ids(got), "ps[0] expired; ps[1] was renewed")
		require.Equal(t, 1, dsCount(t, d), "the expired record is deleted on read")

		time.Sleep(addrTTL)
		got, err = s.Get(ctx, key, time.Now(), 0)
		require.NoError(t, err)
		require.Empty(t, got)
	})
}

func dsCount(t *testing.T, d ds.Batching) int {
	t.Helper()
	res, err := d.Query(context.Background(), dsq.Query{Prefix: Prefix, KeysOnly: true})
	require.NoError(t, err)
	all, err := res.Rest()
	require.NoError(t, err)
	return len(all)
}

func TestMaxPerKey(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		cfg := testConfig()
		cfg.MaxPerKey = 3
		s := newStore(t, newDS(), cfg)
		ps := peers(t, 5)
		key := []byte("popular")
		for _, p := range ps[:3] {
			require.NoError(t, s.Add(ctx, key, p, nil, time.Now()))
		}
		require.ErrorIs(t, s.Add(ctx, key, ps[3], nil, time.Now()), ErrKeyFull)
		require.NoError(t, s.Add(ctx, key, ps[0], nil, time.Now()), "renewing a stored provider is always allowed")
		require.NoError(t, s.Add(ctx, []byte("other"), ps[3], nil, time.Now()), "the bound is per key")

		time.Sleep(validity)
		require.NoError(t, s.Add(ctx, key, ps[4], nil, time.Now()), "expired records free their place")
	})
}

// Sweep deletes expired records a bounded number at a time, resuming where
// it stopped, and never touches other namespaces of the datastore.
func TestSweep(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		d := newDS()
		require.NoError(t, d.Put(ctx, ds.NewKey("/records/foo"), []byte("a value record")))
		s := newStore(t, d, testConfig())
		ps := peers(t, 25)
		for i, p := range ps {
			key := []byte(fmt.Sprintf("key-%d", i%5))
			require.NoError(t, s.Add(ctx, key, p, []ma.Multiaddr{addr(t, i)}, time.Now()))
		}
		time.Sleep(time.Hour)
		fresh := peers(t, 2)
		for _, p := range fresh {
			require.NoError(t, s.Add(ctx, []byte("key-0"), p, nil, time.Now()))
		}
		time.Sleep(validity - time.Hour)

		var passes, removed, scanned int
		for {
			st, err := s.Sweep(ctx, time.Now(), 10)
			require.NoError(t, err)
			require.LessOrEqual(t, st.Scanned, 10, "a call examines at most its budget")
			passes++
			removed += st.Removed
			scanned += st.Scanned
			if st.Done {
				break
			}
			require.Less(t, passes, 10, "sweep terminates")
		}
		require.Equal(t, 3, passes)
		require.Equal(t, 27, scanned)
		require.Equal(t, 25, removed)
		require.Equal(t, 2, dsCount(t, d))
		v, err := d.Get(ctx, ds.NewKey("/records/foo"))
		require.NoError(t, err)
		require.Equal(t, "a value record", string(v))

		// The cache saw the deletions: Get returns the survivors only.
		got, err := s.Get(ctx, []byte("key-0"), time.Now(), 0)
		require.NoError(t, err)
		require.ElementsMatch(t, fresh, ids(got))

		st, err := s.Sweep(ctx, time.Now(), 10)
		require.NoError(t, err)
		require.Equal(t, SweepStats{Scanned: 2, Done: true}, st, "the next pass starts over")
		_, err = s.Sweep(ctx, time.Now(), 0)
		require.Error(t, err)
	})
}

// A hot key is answered from the cache; the cache is bounded and a new
// store on the same datastore (a restart) finds every record.
func TestCacheAndRestart(t *testing.T) {
	ctx := context.Background()
	d := newDS()
	s := newStore(t, d, testConfig())
	p := peers(t, 1)[0]
	t0 := time.Unix(1_700_000_000, 0)
	for i := 0; i < 6; i++ {
		require.NoError(t, s.Add(ctx, []byte(fmt.Sprintf("k%d", i)), p, []ma.Multiaddr{addr(t, i)}, t0))
	}
	require.Equal(t, 4, s.CachedKeys(), "bounded by CacheKeys")

	before := d.queries.Load()
	for i := 0; i < 10; i++ {
		got, err := s.Get(ctx, []byte("k5"), t0, 0)
		require.NoError(t, err)
		require.Len(t, got, 1)
	}
	require.Equal(t, before, d.queries.Load(), "hot key served from the cache")
	_, err := s.Get(ctx, []byte("k0"), t0, 0)
	require.NoError(t, err)
	require.Equal(t, before+1, d.queries.Load(), "an evicted key is read from the datastore")

	cfg := testConfig()
	cfg.CacheKeys = 0
	s2 := newStore(t, d, cfg)
	for i := 0; i < 6; i++ {
		got, err := s2.Get(ctx, []byte(fmt.Sprintf("k%d", i)), t0.Add(time.Hour), 0)
		require.NoError(t, err)
		require.Equal(t, []peer.AddrInfo{{ID: p, Addrs: []ma.Multiaddr{addr(t, i)}}}, got)
	}
	require.Equal(t, 0, s2.CachedKeys())
}

// Garbage in the namespace is deleted on read instead of failing reads.
func TestCorruptRecords(t *testing.T) {
	ctx := context.Background()
	d := newDS()
	s := newStore(t, d, testConfig())
	p := peers(t, 1)[0]
	key := []byte("key")
	require.NoError(t, d.Put(ctx, dsKey(key, p), []byte{9, 9, 9}))
	require.NoError(t, d.Put(ctx, ds.RawKey(keyPrefix(key)+"not-base32!"), (&record{received: time.Now()}).encode()))
	got, err := s.Get(ctx, key, time.Now(), 0)
	require.NoError(t, err)
	require.Empty(t, got)
	require.Equal(t, 0, dsCount(t, d))
}

func TestRecordCodec(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 123)
	cases := []*record{
		{received: t0},
		{received: t0, addrsAt: t0.Add(-time.Hour), addrs: []ma.Multiaddr{addr(t, 1), addr(t, 2)}},
	}
	for _, r := range cases {
		got, err := decodeRecord(r.encode())
		require.NoError(t, err)
		require.True(t, r.received.Equal(got.received))
		require.True(t, r.addrsAt.Equal(got.addrsAt))
		require.Equal(t, len(r.addrs), len(got.addrs))
		for i := range r.addrs {
			require.True(t, r.addrs[i].Equal(got.addrs[i]))
		}
	}
	for _, bad := range [][]byte{nil, {2}, {1}, {1, 2}, {1, 2, 2}, {1, 2, 2, 1, 50}, append(cases[0].encode(), 0)} {
		_, err := decodeRecord(bad)
		require.ErrorIs(t, err, errCorrupt, "%x", bad)
	}
}

func FuzzDecodeRecord(f *testing.F) {
	f.Add((&record{received: time.Unix(1, 0)}).encode())
	f.Add([]byte{1, 2, 2, 1, 8, 4, 10, 0, 0, 1, 6, 0, 80})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := decodeRecord(b)
		if err != nil {
			return
		}
		again, err := decodeRecord(r.encode())
		if err != nil {
			t.Fatalf("re-encoded record does not decode: %v", err)
		}
		if len(again.addrs) != len(r.addrs) || !again.received.Equal(r.received) {
			t.Fatalf("round trip changed the record")
		}
	})
}

// With FreshDatastore the store knows which keys have records: a key never
// added costs no datastore query, and every answer is the same as without
// the index, across adds, renewals, expiry, sweeps and cache evictions.
func TestFreshDatastoreIndex(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		plainDS, freshDS := newDS(), newDS()
		plain := newStore(t, plainDS, testConfig())
		cfg := testConfig()
		cfg.FreshDatastore = true
		fresh := newStore(t, freshDS, cfg)

		for i := 0; i < 50; i++ {
			require.NoError(t, fresh.Add(ctx, []byte(fmt.Sprintf("new-%d", i)), peers(t, 1)[0], nil, time.Now()))
		}
		require.Zero(t, freshDS.queries.Load(), "new keys are added without a query")
		_, err := fresh.Get(ctx, []byte("never added"), time.Now(), 0)
		require.NoError(t, err)
		require.Zero(t, freshDS.queries.Load(), "an unknown key is answered without a query")
		_, err = fresh.Get(ctx, []byte("new-0"), time.Now(), 0)
		require.NoError(t, err)
		require.Equal(t, int64(1), freshDS.queries.Load(), "a key evicted from the cache is read back")

		r := rand.New(rand.NewPCG(7, 7))
		ps := peers(t, 6)
		for step := 0; step < 2000; step++ {
			key := []byte(fmt.Sprintf("k%d", r.IntN(12)))
			switch op := r.IntN(10); {
			case op < 5:
				p := ps[r.IntN(len(ps))]
				a := []ma.Multiaddr{addr(t, r.IntN(100))}
				e1 := plain.Add(ctx, key, p, a, time.Now())
				e2 := fresh.Add(ctx, key, p, a, time.Now())
				require.Equal(t, e1, e2, "step %d", step)
			case op < 8:
				g1, e1 := plain.Get(ctx, key, time.Now(), 0)
				g2, e2 := fresh.Get(ctx, key, time.Now(), 0)
				require.NoError(t, e1)
				require.NoError(t, e2)
				require.Equal(t, g1, g2, "step %d", step)
			case op < 9:
				_, e1 := plain.Sweep(ctx, time.Now(), 5)
				_, e2 := fresh.Sweep(ctx, time.Now(), 5)
				require.NoError(t, e1)
				require.NoError(t, e2)
			default:
				time.Sleep(time.Duration(r.IntN(12)) * time.Hour)
			}
		}
	})
}
