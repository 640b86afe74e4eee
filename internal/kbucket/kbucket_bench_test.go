package kbucket

import (
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// benchTable is a 1000-peer table with k = 20: buckets 0..49 are full.
// Buckets 0..7 hold real peers (their ids hash into those buckets), the
// deeper ones fabricated keys, since no real id can be found for them. It
// returns the real peers.
func benchTable(b *testing.B, replacements int) (*Table, []peer.ID) {
	b.Helper()
	r := newRand(42)
	tb := New(randPeer(r), 20, replacements)
	var real []peer.ID
	for cpl := range 8 {
		for _, p := range peersInBucket(b, tb, cpl, 20, r) {
			if tb.Add(p, t0) != Added {
				b.Fatal("setup: bucket unexpectedly full")
			}
			real = append(real, p)
		}
	}
	for cpl := 8; cpl < 50; cpl++ {
		for range 20 {
			if tb.add(randPeer(r), RandomIDWithCPL(tb.SelfKey(), cpl, r), t0) != Added {
				b.Fatal("setup: bucket unexpectedly full")
			}
		}
	}
	if tb.Size() != 1000 {
		b.Fatalf("setup: size %d", tb.Size())
	}
	return tb, real
}

func BenchmarkAdd(b *testing.B) {
	b.Run("known", func(b *testing.B) {
		// The common case: a peer already in the table answered again.
		tb, real := benchTable(b, 0)
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			tb.Add(real[i%len(real)], t0.Add(time.Duration(i)))
			i++
		}
	})
	b.Run("new-free-slot", func(b *testing.B) {
		// A peer is dropped and a fresh one (hashed on Add) takes its slot.
		tb, real := benchTable(b, 0)
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			p := real[i%len(real)]
			tb.Remove(p)
			tb.Add(p, t0)
			i++
		}
	})
	b.Run("new-full-bucket", func(b *testing.B) {
		// A mature table: newcomers land in full low buckets and churn
		// through the replacement caches.
		tb, _ := benchTable(b, 20)
		r := newRand(43)
		fresh := make([]peer.ID, 4096)
		for i := range fresh {
			fresh[i] = randPeer(r)
		}
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			tb.Add(fresh[i%len(fresh)], t0.Add(time.Duration(i)))
			i++
		}
	})
}

func BenchmarkNearest(b *testing.B) {
	tb, _ := benchTable(b, 0)
	r := newRand(44)
	for _, bc := range []struct {
		name string
		pick func(i int) ID
	}{
		// Random targets mostly share no prefix with self.
		{"random", func(int) ID { return RandomIDWithCPL(ID{}, r.IntN(256), r) }},
		// Targets near self, as in self lookups and deep refreshes.
		{"near-self", func(i int) ID { return RandomIDWithCPL(tb.SelfKey(), 20+i%30, r) }},
	} {
		targets := make([]ID, 1024)
		for i := range targets {
			targets[i] = bc.pick(i)
		}
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				tb.Nearest(targets[i%len(targets)], 20)
				i++
			}
		})
	}
}

func BenchmarkSortByDistance(b *testing.B) {
	r := newRand(45)
	ps := make([]peer.ID, 100)
	for i := range ps {
		ps[i] = randPeer(r)
	}
	target := RandomIDWithCPL(ID{}, 0, r)
	b.ReportAllocs()
	for b.Loop() {
		SortByDistance(ps, target)
	}
}

func BenchmarkCompareDistance(b *testing.B) {
	r := newRand(46)
	x, y, t := RandomIDWithCPL(ID{}, 0, r), RandomIDWithCPL(ID{}, 0, r), RandomIDWithCPL(ID{}, 0, r)
	b.ReportAllocs()
	var sink int
	for b.Loop() {
		sink += CompareDistance(x, y, t)
	}
	_ = sink
}
