package providers

import (
	"context"
	"encoding/binary"
	"fmt"
	"testing"
	"time"

	ds "github.com/ipfs/go-datastore"
	dssync "github.com/ipfs/go-datastore/sync"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
)

// benchStore is an in-memory store with Amino's limits and a cache of
// cacheKeys keys, holding keys keys with perKey providers each.
func benchStore(b *testing.B, cacheKeys, keys, perKey int) (*Store, [][]byte, []peer.ID, []ma.Multiaddr) {
	b.Helper()
	s, err := New(dssync.MutexWrap(ds.NewMapDatastore()), Config{
		Validity: 48 * time.Hour, AddrTTL: 24 * time.Hour, MaxPerKey: 64, CacheKeys: cacheKeys,
	})
	if err != nil {
		b.Fatal(err)
	}
	ks := make([][]byte, keys)
	for i := range ks {
		k := make([]byte, 34) // a sha2-256 multihash
		k[0], k[1] = 0x12, 0x20
		binary.BigEndian.PutUint64(k[2:], uint64(i)+1)
		ks[i] = k
	}
	ps := make([]peer.ID, perKey)
	for i := range ps {
		id := make([]byte, 34)
		id[0], id[1] = 0x12, 0x20
		binary.BigEndian.PutUint64(id[26:], uint64(i)+1)
		ps[i] = peer.ID(id)
	}
	addrs := []ma.Multiaddr{ma.StringCast("/ip4/10.0.0.1/tcp/4001"), ma.StringCast("/ip6/2001:db8::1/udp/4001/quic-v1")}
	ctx := context.Background()
	for _, k := range ks {
		for _, p := range ps {
			if err := s.Add(ctx, k, p, addrs, t0); err != nil {
				b.Fatal(err)
			}
		}
	}
	return s, ks, ps, addrs
}

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func BenchmarkAdd(b *testing.B) {
	ctx := context.Background()
	b.Run("reannounce", func(b *testing.B) {
		// A provider renews a record the store holds (and caches).
		s, ks, ps, addrs := benchStore(b, 256, 100, 4)
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if err := s.Add(ctx, ks[i%len(ks)], ps[i%len(ps)], addrs, t0.Add(time.Duration(i))); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
	// A first provider for a key never seen, on a datastore the store did
	// not create (no FreshDatastore index) already holding 400, 10,000 or
	// 100,000 records: one Get of an absent entry, then a write. The cost
	// per key must not grow with the records held; with the old layout's
	// prefix query it grew linearly (58 µs at 400 records).
	for _, held := range []int{400, 10_000, 100_000} {
		b.Run(fmt.Sprintf("new-key/held=%d", held), func(b *testing.B) {
			s, _, ps, addrs := benchStore(b, 256, held/4, 4)
			b.ReportAllocs()
			key := make([]byte, 34)
			key[0], key[1] = 0x12, 0x20
			i := 0
			for b.Loop() {
				binary.BigEndian.PutUint64(key[2:], uint64(i)+1<<32)
				if err := s.Add(ctx, key, ps[0], addrs, t0); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
	}
}

func BenchmarkGet(b *testing.B) {
	ctx := context.Background()
	for _, bc := range []struct {
		name      string
		cacheKeys int
	}{
		{"cached", 256},  // every key fits the hot-key cache
		{"datastore", 0}, // every Get reads the datastore
	} {
		b.Run(bc.name, func(b *testing.B) {
			s, ks, _, _ := benchStore(b, bc.cacheKeys, 100, 4)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				got, err := s.Get(ctx, ks[i%len(ks)], t0.Add(time.Hour), 20)
				if err != nil || len(got) != 4 {
					b.Fatalf("got %d providers, err %v", len(got), err)
				}
				i++
			}
		})
	}
}
