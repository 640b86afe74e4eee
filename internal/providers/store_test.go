package providers

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
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

// countingDS counts reads (queries and gets), to tell cache hits from
// datastore reads, and queries alone.
type countingDS struct {
	ds.Batching
	queries atomic.Int64 // Query and Get calls
	prefix  atomic.Int64 // Query calls
}

func (c *countingDS) Query(ctx context.Context, q dsq.Query) (dsq.Results, error) {
	c.queries.Add(1)
	c.prefix.Add(1)
	return c.Batching.Query(ctx, q)
}

func (c *countingDS) Get(ctx context.Context, k ds.Key) ([]byte, error) {
	c.queries.Add(1)
	return c.Batching.Get(ctx, k)
}

// encodeLegacy writes a record in the old layout's value format, as
// earlier versions stored it under dsKey.
func encodeLegacy(r *record) []byte {
	b := []byte{legacyVersion}
	b = binary.AppendVarint(b, r.received.UnixNano())
	var at int64
	if len(r.addrs) > 0 {
		at = r.addrsAt.UnixNano()
	}
	b = binary.AppendVarint(b, at)
	b = binary.AppendUvarint(b, uint64(len(r.addrs)))
	for _, a := range r.addrs {
		b = binary.AppendUvarint(b, uint64(len(a.Bytes())))
		b = append(b, a.Bytes()...)
	}
	return b
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
			st, err := s.Sweep(ctx, time.Now(), 2)
			require.NoError(t, err)
			require.LessOrEqual(t, st.Entries, 2, "a call reads at most its budget of entries")
			passes++
			removed += st.Removed
			scanned += st.Scanned
			if st.Done {
				break
			}
			require.Less(t, passes, 10, "sweep terminates")
		}
		require.Equal(t, 3, passes, "5 keys, 2 a call")
		require.Equal(t, 27, scanned)
		require.Equal(t, 25, removed)
		require.Equal(t, 1, dsCount(t, d), "one entry per key: key-0's")
		v, err := d.Get(ctx, ds.NewKey("/records/foo"))
		require.NoError(t, err)
		require.Equal(t, "a value record", string(v))

		// The cache saw the deletions: Get returns the survivors only.
		got, err := s.Get(ctx, []byte("key-0"), time.Now(), 0)
		require.NoError(t, err)
		require.ElementsMatch(t, fresh, ids(got))

		st, err := s.Sweep(ctx, time.Now(), 10)
		require.NoError(t, err)
		require.Equal(t, SweepStats{Entries: 1, Scanned: 2, Done: true}, st, "the next pass starts over")
		_, err = s.Sweep(ctx, time.Now(), 0)
		require.Error(t, err)
	})
}

// Writes do not fill the cache (a node that receives announcements for
// many keys holds no decoded copy of them); a key that is read is cached,
// a hot key is answered from the cache and stays current through writes;
// the cache is bounded and a new store on the same datastore (a restart)
// finds every record.
func TestCacheAndRestart(t *testing.T) {
	ctx := context.Background()
	d := newDS()
	s := newStore(t, d, testConfig())
	p := peers(t, 1)[0]
	t0 := time.Unix(1_700_000_000, 0)
	for i := 0; i < 6; i++ {
		require.NoError(t, s.Add(ctx, []byte(fmt.Sprintf("k%d", i)), p, []ma.Multiaddr{addr(t, i)}, t0))
	}
	require.Equal(t, 0, s.CachedKeys(), "writes cache nothing")
	for i := 0; i < 6; i++ {
		_, err := s.Get(ctx, []byte(fmt.Sprintf("k%d", i)), t0, 0)
		require.NoError(t, err)
	}
	require.Equal(t, 4, s.CachedKeys(), "bounded by CacheKeys")

	// A write to a cached key updates the cached set.
	require.NoError(t, s.Add(ctx, []byte("k5"), p, []ma.Multiaddr{addr(t, 9)}, t0))
	before := d.queries.Load()
	got, err := s.Get(ctx, []byte("k5"), t0, 0)
	require.NoError(t, err)
	require.Equal(t, []peer.AddrInfo{{ID: p, Addrs: []ma.Multiaddr{addr(t, 9)}}}, got, "cached set after a write")
	require.Equal(t, before, d.queries.Load(), "hot key served from the cache")
	require.NoError(t, s.Add(ctx, []byte("k5"), p, []ma.Multiaddr{addr(t, 5)}, t0))

	for i := 0; i < 10; i++ {
		got, err := s.Get(ctx, []byte("k5"), t0, 0)
		require.NoError(t, err)
		require.Len(t, got, 1)
	}
	require.Equal(t, before, d.queries.Load(), "hot key served from the cache")
	_, err = s.Get(ctx, []byte("k0"), t0, 0)
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

// Garbage in the namespace is deleted on read instead of failing reads,
// and garbage in the old layout by Sweep.
func TestCorruptRecords(t *testing.T) {
	ctx := context.Background()
	d := newDS()
	s := newStore(t, d, testConfig())
	p := peers(t, 1)[0]
	key := []byte("key")
	require.NoError(t, d.Put(ctx, setKey(key), []byte{setVersion, 1, 3, 9, 9, 9}))
	got, err := s.Get(ctx, key, time.Now(), 0)
	require.NoError(t, err)
	require.Empty(t, got)
	require.Equal(t, 0, dsCount(t, d))

	require.NoError(t, d.Put(ctx, dsKey(key, p), []byte{9, 9, 9}))
	require.NoError(t, d.Put(ctx, ds.RawKey(keyPrefix(key)+"not-base32!"), encodeLegacy(&record{received: time.Now()})))
	st, err := s.Sweep(ctx, time.Now(), 10)
	require.NoError(t, err)
	require.Equal(t, SweepStats{Entries: 2, Scanned: 2, Removed: 2, Done: true}, st)
	require.Equal(t, 0, dsCount(t, d))
}

// Records an earlier version stored one entry per provider are moved into
// their key's entry by Sweep, keeping times and addresses; expired ones go.
func TestSweepMigratesOldLayout(t *testing.T) {
	ctx := context.Background()
	d := newDS()
	ps := peers(t, 3)
	now := time.Unix(1_700_000_000, 0)
	key := []byte("old-key")
	for i, p := range ps {
		r := &record{received: now.Add(-time.Duration(i) * time.Hour), addrsAt: now.Add(-time.Duration(i) * time.Hour), addrs: []ma.Multiaddr{addr(t, i)}}
		if i == 2 {
			r.received = now.Add(-validity - time.Second)
		}
		require.NoError(t, d.Put(ctx, dsKey(key, p), encodeLegacy(r)))
	}
	s := newStore(t, d, testConfig())
	require.NoError(t, s.Add(ctx, key, ps[1], nil, now.Add(-30*time.Minute)), "a newer record of ps[1] wins over its old one")
	for {
		st, err := s.Sweep(ctx, now, 2)
		require.NoError(t, err)
		if st.Done {
			break
		}
	}
	require.Equal(t, 1, dsCount(t, d), "one entry for the key, the old ones gone")
	got, err := s.Get(ctx, key, now, 0)
	require.NoError(t, err)
	// ps[1]'s newer record came without addresses, before the old one
	// was read: it keeps none.
	require.Equal(t, []peer.AddrInfo{{ID: ps[0], Addrs: []ma.Multiaddr{addr(t, 0)}}, {ID: ps[1]}}, got)
	fresh := newStore(t, d, testConfig())
	got2, err := fresh.Get(ctx, key, now, 0)
	require.NoError(t, err)
	require.Equal(t, got, got2, "read back from the datastore")
}

func TestRecordCodec(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 123_000_000)
	cases := []*record{
		{received: t0},
		{received: t0, addrsAt: t0.Add(-time.Hour), addrs: []ma.Multiaddr{addr(t, 1), addr(t, 2)}},
	}
	for _, r := range cases {
		got, err := decodeRecord(encodeLegacy(r))
		require.NoError(t, err)
		require.True(t, r.received.Equal(got.received))
		require.True(t, r.addrsAt.Equal(got.addrsAt))
		require.Equal(t, len(r.addrs), len(got.addrs))
		for i := range r.addrs {
			require.True(t, r.addrs[i].Equal(got.addrs[i]))
		}
	}
	for _, bad := range [][]byte{nil, {2}, {1}, {1, 2}, {1, 2, 2}, {1, 2, 2, 1, 50}, append(encodeLegacy(cases[0]), 0)} {
		_, err := decodeRecord(bad)
		require.ErrorIs(t, err, errCorrupt, "%x", bad)
	}

	ps := peers(t, 2)
	set := keySet{ps[0]: cases[0], ps[1]: cases[1]}
	enc := encodeSet(set)
	require.Equal(t, len(enc), cap(enc), "the encoding is sized exactly")
	got, err := decodeSet(enc)
	require.NoError(t, err)
	require.Len(t, got, 2)
	for p, r := range set {
		require.True(t, r.received.Equal(got[p].received), "%v", got[p].received)
		require.True(t, r.addrsAt.Equal(got[p].addrsAt))
		require.Equal(t, r.addrs, got[p].addrs)
	}
	require.Equal(t, enc, encodeSet(got), "the same set encodes the same")
	for _, bad := range [][]byte{nil, {1}, {setVersion}, {setVersion, 1}, {setVersion, 9, 1, 2, 3}, append(slices.Clone(enc), 0), enc[:len(enc)-1]} {
		_, err := decodeSet(bad)
		require.ErrorIs(t, err, errCorrupt, "%x", bad)
	}
}

// A provider record with one address takes well under the old layout's
// room: about 140 bytes of key and value for a 34-byte multihash and an
// Ed25519 provider, the key no longer repeated per provider.
func TestStoredBytesPerRecord(t *testing.T) {
	ctx := context.Background()
	d := newDS()
	s := newStore(t, d, testConfig())
	p, err := peer.Decode("12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA")
	require.NoError(t, err)
	key := make([]byte, 34)
	key[0], key[1] = 0x12, 0x20
	a := ma.StringCast("/ip6/100::1/tcp/4242")
	require.NoError(t, s.Add(ctx, key, p, []ma.Multiaddr{a}, time.Now()))
	res, err := d.Query(ctx, dsq.Query{Prefix: Prefix})
	require.NoError(t, err)
	all, err := res.Rest()
	require.NoError(t, err)
	require.Len(t, all, 1)
	size := len(all[0].Key) + len(all[0].Value)
	old := len(dsKey(key, p).String()) + len(encodeLegacy(&record{received: time.Now(), addrsAt: time.Now(), addrs: []ma.Multiaddr{a}}))
	t.Logf("bytes per record: %d (old layout %d)", size, old)
	require.Less(t, size, 145)
	require.Less(t, size, old)
}

func FuzzDecodeRecord(f *testing.F) {
	f.Add(encodeLegacy(&record{received: time.Unix(1, 0)}))
	f.Add([]byte{1, 2, 2, 1, 8, 4, 10, 0, 0, 1, 6, 0, 80})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := decodeRecord(b)
		if err != nil {
			return
		}
		again, err := decodeRecord(encodeLegacy(r))
		if err != nil {
			t.Fatalf("re-encoded record does not decode: %v", err)
		}
		if len(again.addrs) != len(r.addrs) || !again.received.Equal(r.received) {
			t.Fatalf("round trip changed the record")
		}
	})
}

func FuzzDecodeSet(f *testing.F) {
	p, _ := peer.Decode("12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA")
	f.Add(encodeSet(keySet{p: {received: time.Unix(1, 0), addrsAt: time.Unix(1, 0), addrs: []ma.Multiaddr{ma.StringCast("/ip4/1.2.3.4/tcp/1")}}}))
	f.Add([]byte{setVersion, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		set, err := decodeSet(b)
		if err != nil {
			return
		}
		enc := encodeSet(set)
		if cap(enc) != len(enc) {
			t.Fatalf("encoded set of %d bytes in a buffer of %d", len(enc), cap(enc))
		}
		again, err := decodeSet(enc)
		if err != nil {
			t.Fatalf("re-encoded set does not decode: %v", err)
		}
		if len(again) != len(set) {
			t.Fatalf("round trip changed the set")
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

// On a datastore the store did not create, adding and reading keys costs
// exact Gets only: no prefix query, whose cost on an unordered datastore
// grows with everything it holds.
func TestNoPrefixQueryPerKey(t *testing.T) {
	ctx := context.Background()
	d := newDS()
	s := newStore(t, d, testConfig())
	p := peers(t, 1)[0]
	for i := 0; i < 200; i++ {
		require.NoError(t, s.Add(ctx, []byte(fmt.Sprintf("k%d", i)), p, []ma.Multiaddr{addr(t, i)}, time.Now()))
	}
	for i := 0; i < 200; i++ {
		got, err := s.Get(ctx, []byte(fmt.Sprintf("k%d", i)), time.Now(), 0)
		require.NoError(t, err)
		require.Len(t, got, 1)
	}
	require.Zero(t, d.prefix.Load())
	require.Equal(t, int64(400), d.queries.Load(), "one Get per new key, one per read of a key no longer in the 4-key cache")
}

// batchDS counts batches and direct puts, and can fail every commit.
type batchDS struct {
	*countingDS
	puts, commits atomic.Int64
	failCommit    bool
}

func (b *batchDS) Put(ctx context.Context, k ds.Key, v []byte) error {
	b.puts.Add(1)
	return b.countingDS.Put(ctx, k, v)
}

func (b *batchDS) Batch(ctx context.Context) (ds.Batch, error) {
	inner, err := b.countingDS.Batch(ctx)
	if err != nil {
		return nil, err
	}
	return &failingBatch{Batch: inner, d: b}, nil
}

type failingBatch struct {
	ds.Batch
	d *batchDS
}

func (f *failingBatch) Commit(ctx context.Context) error {
	f.d.commits.Add(1)
	if f.d.failCommit {
		return errors.New("commit refused")
	}
	return f.Batch.Commit(ctx)
}

func TestAddMany(t *testing.T) {
	ctx := context.Background()
	ps := peers(t, 3)
	keys := [][]byte{[]byte("a"), []byte("b"), []byte("c"), nil}
	t.Run("one batch, every key readable", func(t *testing.T) {
		d := &batchDS{countingDS: newDS()}
		s := newStore(t, d, testConfig())
		full, err := s.AddMany(ctx, keys, ps[0], []ma.Multiaddr{addr(t, 1)}, time.Now())
		require.NoError(t, err)
		require.Zero(t, full)
		require.EqualValues(t, 1, d.commits.Load())
		require.Zero(t, d.puts.Load(), "no write outside the batch")
		again := newStore(t, d, testConfig()) // read from the datastore, not the cache
		for _, k := range keys[:3] {
			got, err := again.Get(ctx, k, time.Now(), 0)
			require.NoError(t, err)
			require.Equal(t, []peer.ID{ps[0]}, ids(got))
			require.Len(t, got[0].Addrs, 1)
		}
	})
	t.Run("full keys are counted and left out", func(t *testing.T) {
		cfg := testConfig()
		cfg.MaxPerKey = 1
		s := newStore(t, &batchDS{countingDS: newDS()}, cfg)
		require.NoError(t, s.Add(ctx, []byte("b"), ps[1], nil, time.Now()))
		full, err := s.AddMany(ctx, keys, ps[0], nil, time.Now())
		require.NoError(t, err)
		require.Equal(t, 1, full)
		got, err := s.Get(ctx, []byte("b"), time.Now(), 0)
		require.NoError(t, err)
		require.Equal(t, []peer.ID{ps[1]}, ids(got))
	})
	t.Run("a failed batch leaves nothing behind", func(t *testing.T) {
		d := &batchDS{countingDS: newDS(), failCommit: true}
		s := newStore(t, d, testConfig())
		_, err := s.AddMany(ctx, keys, ps[0], nil, time.Now())
		require.Error(t, err)
		for _, k := range keys[:3] {
			got, err := s.Get(ctx, k, time.Now(), 0)
			require.NoError(t, err)
			require.Empty(t, got, "the cache must not keep what the batch did not write")
		}
	})
}
