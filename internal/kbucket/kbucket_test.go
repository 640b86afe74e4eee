package kbucket

import (
	"bytes"
	"encoding/hex"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/stretchr/testify/require"
)

var t0 = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

func newRand(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, 0x6b6164)) }

// randPeer is a random sha2-256 multihash peer id (the shape of an RSA peer
// id); the table never parses ids, so any bytes would do.
func randPeer(r *rand.Rand) peer.ID {
	b := make([]byte, 34)
	b[0], b[1] = 0x12, 0x20
	for i := 2; i < len(b); i++ {
		b[i] = byte(r.Uint32())
	}
	return peer.ID(b)
}

// peersInBucket draws random peers until n of them hash into bucket cpl of t.
func peersInBucket(t testing.TB, tb *Table, cpl, n int, r *rand.Rand) []peer.ID {
	t.Helper()
	var out []peer.ID
	for tries := 0; len(out) < n; tries++ {
		require.Less(t, tries, n<<(cpl+8), "too many tries for bucket %d", cpl)
		if p := randPeer(r); tb.BucketFor(PeerKey(p)) == cpl {
			out = append(out, p)
		}
	}
	return out
}

func mustHex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	require.NoError(t, err)
	return b
}

func idFromHex(t testing.TB, s string) ID {
	t.Helper()
	var id ID
	require.Equal(t, len(id), copy(id[:], mustHex(t, s)))
	return id
}

func TestKeyVectors(t *testing.T) {
	tests := []struct {
		name  string
		input string // hex
		key   string // hex
	}{
		// IPFS kad-dht spec, "Kademlia Keyspace" example: binary peer id
		// (identity multihash of an Ed25519 public key) -> identifier.
		{"spec peer id", "0024080112209e3b433cbd31c2b8a6ebbdca998bd0f4c2141c9c9af5422e976051b1e63af14d", "e43d28f0996557c0d5571d75c62a57a59d7ac1d30a51ecedcdb9d5e4afa56100"},
		// IPFS kad-dht spec, "Content Kademlia Identifier" example: the
		// multihash inside bafybeihfg3d7rdltd43u3tfvncx7n5loqofbsobojcadtmokrljfthuc7y.
		{"spec cid multihash", "1220e536c7f88d731f374dccb568aff6f56e838a19382e488039b1ca8ad2599e82fe", "d623250f3f660ab4c3a53d3c97b3f6a0194c548053488d093520206248253bcb"},
		// FIPS 180-2 sha2-256 vectors.
		{"empty", "", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
		{"abc", hex.EncodeToString([]byte("abc")), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := mustHex(t, tc.input)
			want := idFromHex(t, tc.key)
			require.Equal(t, want, KeyForBytes(in))
			require.Equal(t, want, PeerKey(peer.ID(in)))
			require.Equal(t, tc.key, want.String())
		})
	}
}

// The spec's base58 and CID lines name one peer and its hex line another;
// this pins the binary form our peer.Decode gives for the base58 line (it
// matches the spec's CID line) and the key that follows from it.
func TestPeerKeyOfDecodedID(t *testing.T) {
	p, err := peer.Decode("12D3KooWKudojFn6pff7Kah2Mkem3jtFfcntpG9X3QBNiggsYxK2")
	require.NoError(t, err)
	require.Equal(t, "00240801122095ee7472fb37c7423793fc57abe7c42fb8d1674dde5b443299ae2ff9cf346169", hex.EncodeToString([]byte(p)))
	require.Equal(t, "cf17fd5b0687074824db75f3e2cf1e8391a7498f489acb3c4eddb312756d8b6c", PeerKey(p).String())
}

// withBit returns the zero key with bit i (0 = most significant) set.
func withBit(i int) ID {
	var id ID
	id[i/8] = 0x80 >> (i % 8)
	return id
}

func TestXor(t *testing.T) {
	r := newRand(1)
	for range 100 {
		a, b := RandomIDWithCPL(ID{}, int(r.IntN(256)), r), RandomIDWithCPL(ID{}, int(r.IntN(256)), r)
		x := a.Xor(b)
		for i := range x {
			require.Equal(t, a[i]^b[i], x[i])
		}
		require.Equal(t, ID{}, a.Xor(a))
		require.Equal(t, a, x.Xor(b))
	}
}

func TestCommonPrefixLen(t *testing.T) {
	ones := ID{}
	for i := range ones {
		ones[i] = 0xff
	}
	tests := []struct {
		name string
		a, b ID
		want int
	}{
		{"equal zero", ID{}, ID{}, 256},
		{"equal ones", ones, ones, 256},
		{"first bit", ID{}, withBit(0), 0},
		{"all differ", ID{}, ones, 0},
		{"bit 7", ID{}, withBit(7), 7},
		{"bit 8", ID{}, withBit(8), 8},
		{"bit 63", ID{}, withBit(63), 63},
		{"bit 64", ID{}, withBit(64), 64},
		{"bit 100", ones, ones.Xor(withBit(100)), 100},
		{"bit 255", ID{}, withBit(255), 255},
		{"first of two", withBit(10), withBit(200), 10},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, CommonPrefixLen(tc.a, tc.b))
			require.Equal(t, tc.want, CommonPrefixLen(tc.b, tc.a))
		})
	}
}

func TestCompareDistance(t *testing.T) {
	ones := ID{}
	for i := range ones {
		ones[i] = 0xff
	}
	tests := []struct {
		name         string
		a, b, target ID
		want         int
	}{
		{"same key", withBit(3), withBit(3), ID{}, 0},
		{"a is target", withBit(9), withBit(8), withBit(9), -1},
		{"b is target", withBit(9), withBit(8), withBit(8), 1},
		{"lower bit closer", withBit(200), withBit(100), ID{}, -1},
		{"higher bit farther", withBit(0), withBit(255), ID{}, 1},
		{"in last word", withBit(254), withBit(255), ID{}, 1},
		// 0x7f.. is numerically next to the target 0x80.., yet farthest by XOR.
		{"xor not numeric", ones.Xor(withBit(0)), ones, withBit(0), 1},
		{"shared prefix", withBit(0).Xor(withBit(70)), withBit(0).Xor(withBit(71)), withBit(0), 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, CompareDistance(tc.a, tc.b, tc.target))
			require.Equal(t, -tc.want, CompareDistance(tc.b, tc.a, tc.target))
		})
	}
	// Against the definition: compare the distances as big-endian integers.
	r := newRand(2)
	for range 2000 {
		tg := RandomIDWithCPL(ID{}, r.IntN(256), r)
		a := RandomIDWithCPL(tg, r.IntN(20), r) // often share long prefixes
		b := RandomIDWithCPL(tg, r.IntN(20), r)
		da, db := a.Xor(tg), b.Xor(tg) // the definition, as byte strings
		require.Equal(t, slices.Compare(da[:], db[:]), CompareDistance(a, b, tg))
	}
}

func TestRandomIDWithCPL(t *testing.T) {
	for seed := range uint64(20) {
		r := newRand(seed)
		self := RandomIDWithCPL(ID{}, r.IntN(256), r)
		for cpl := range 256 {
			id := RandomIDWithCPL(self, cpl, r)
			require.Equal(t, cpl, CommonPrefixLen(self, id), "seed %d", seed)
		}
	}
	// The bits after the forced ones must be fair coins.
	r := newRand(99)
	self := PeerKey("self")
	const draws = 4000
	for _, cpl := range []int{0, 1, 7, 8, 9, 63, 64, 130, 250, 254} {
		counts := make([]int, 256)
		for range draws {
			id := RandomIDWithCPL(self, cpl, r)
			for i := cpl + 1; i < 256; i++ {
				if id[i/8]&(0x80>>(i%8)) != 0 {
					counts[i]++
				}
			}
		}
		for i := cpl + 1; i < 256; i++ {
			require.InDelta(t, draws/2, counts[i], draws/10, "cpl %d bit %d", cpl, i)
		}
	}
	for _, bad := range []int{-1, 256} {
		require.Panics(t, func() { RandomIDWithCPL(self, bad, r) })
	}
}

func TestRandomPeerIDWithCPL(t *testing.T) {
	r := newRand(3)
	self := PeerKey("self")
	for cpl := range 10 {
		p, ok := RandomPeerIDWithCPL(self, cpl, r, 1<<16)
		require.True(t, ok, "cpl %d", cpl)
		require.Equal(t, cpl, CommonPrefixLen(self, PeerKey(p)))
		_, err := peer.IDFromBytes([]byte(p))
		require.NoError(t, err, "must be a parseable peer id")
	}
	_, ok := RandomPeerIDWithCPL(self, 3, r, 0)
	require.False(t, ok)
	_, ok = RandomPeerIDWithCPL(self, 256, r, 10)
	require.False(t, ok)
}

func TestOutcomeString(t *testing.T) {
	for o, want := range map[Outcome]string{Added: "Added", Updated: "Updated", Pending: "Pending", Rejected: "Rejected", 7: "Outcome(7)"} {
		require.Equal(t, want, o.String())
	}
}

func TestNew(t *testing.T) {
	require.Panics(t, func() { New("self", 0, 1) })
	tb := New("self", 20, -3)
	require.Equal(t, peer.ID("self"), tb.Self())
	require.Equal(t, PeerKey("self"), tb.SelfKey())
	require.Equal(t, 20, tb.K())
	require.Equal(t, 0, tb.Size())
	require.Equal(t, -1, tb.MaxCPL())
	require.Empty(t, tb.Peers())
	require.Nil(t, tb.Nearest(ID{}, 20))
	_, ok := tb.Oldest(0)
	require.False(t, ok)
	// Negative cache size means no cache: a full bucket rejects.
	tb = New("self", 1, -3)
	ps := peersInBucket(t, tb, 0, 2, newRand(4))
	require.Equal(t, Added, tb.Add(ps[0], t0))
	require.Equal(t, Rejected, tb.Add(ps[1], t0))
	require.Nil(t, tb.Replacements(0))
}

func TestAddNeverSelf(t *testing.T) {
	tb := New("self", 20, 5)
	require.Equal(t, Rejected, tb.Add("self", t0))
	require.Equal(t, Rejected, tb.Add("", t0))
	require.False(t, tb.Find("self"))
	require.Equal(t, 0, tb.Size())
	_, ok := tb.LastSeen("self")
	require.False(t, ok)
	_, ok = tb.Remove("self")
	require.False(t, ok)
}

func TestAddUpdateRemove(t *testing.T) {
	r := newRand(5)
	tb := New(randPeer(r), 20, 5)
	p := randPeer(r)
	cpl := tb.BucketFor(PeerKey(p))

	require.Equal(t, Added, tb.Add(p, t0))
	require.True(t, tb.Find(p))
	require.Equal(t, 1, tb.Size())
	require.Equal(t, 1, tb.BucketSize(cpl))
	require.Equal(t, cpl, tb.MaxCPL())
	seen, ok := tb.LastSeen(p)
	require.True(t, ok)
	require.Equal(t, t0, seen)

	require.Equal(t, Updated, tb.Add(p, t0.Add(time.Minute)))
	seen, _ = tb.LastSeen(p)
	require.Equal(t, t0.Add(time.Minute), seen)
	tb.MarkSeen(p, t0.Add(time.Hour))
	seen, _ = tb.LastSeen(p)
	require.Equal(t, t0.Add(time.Hour), seen)
	require.Equal(t, 1, tb.Size())

	tb.MarkSeen("unknown", t0) // no effect
	require.False(t, tb.Find("unknown"))

	promoted, ok := tb.Remove(p)
	require.False(t, ok)
	require.Empty(t, promoted)
	require.False(t, tb.Find(p))
	require.Equal(t, 0, tb.Size())
	require.Equal(t, 0, tb.BucketSize(cpl))
	require.Equal(t, -1, tb.MaxCPL())
	_, ok = tb.Remove(p)
	require.False(t, ok)
}

func TestFullBucketAndReplacements(t *testing.T) {
	r := newRand(6)
	tb := New(randPeer(r), 2, 2)
	ps := peersInBucket(t, tb, 1, 6, r)
	at := func(m int) time.Time { return t0.Add(time.Duration(m) * time.Minute) }

	require.Equal(t, Added, tb.Add(ps[0], at(0)))
	require.Equal(t, Added, tb.Add(ps[1], at(1)))
	require.Equal(t, Pending, tb.Add(ps[2], at(2)), "full bucket")
	require.Equal(t, Pending, tb.Add(ps[3], at(3)))
	require.False(t, tb.Find(ps[2]), "candidates are not in the bucket")
	require.Equal(t, 2, tb.Size())
	require.Equal(t, []peer.ID{ps[2], ps[3]}, tb.Replacements(1))

	// Refreshing a candidate keeps it Pending and makes it the newest.
	require.Equal(t, Pending, tb.Add(ps[2], at(4)))
	seen, ok := tb.LastSeen(ps[2])
	require.True(t, ok)
	require.Equal(t, at(4), seen)

	// A full cache evicts its least recently seen candidate (ps[3]).
	require.Equal(t, Pending, tb.Add(ps[4], at(5)))
	require.ElementsMatch(t, []peer.ID{ps[2], ps[4]}, tb.Replacements(1))
	_, ok = tb.LastSeen(ps[3])
	require.False(t, ok, "evicted candidates are forgotten")

	oldest, ok := tb.Oldest(1)
	require.True(t, ok)
	require.Equal(t, ps[0], oldest)
	tb.MarkSeen(ps[0], at(6))
	oldest, _ = tb.Oldest(1)
	require.Equal(t, ps[1], oldest)

	// Removing a bucket member promotes the most recently seen candidate.
	tb.MarkSeen(ps[2], at(7))
	promoted, ok := tb.Remove(ps[1])
	require.True(t, ok)
	require.Equal(t, ps[2], promoted)
	require.True(t, tb.Find(ps[2]))
	require.Equal(t, 2, tb.Size())
	require.Equal(t, []peer.ID{ps[4]}, tb.Replacements(1))
	seen, _ = tb.LastSeen(ps[2])
	require.Equal(t, at(7), seen, "promotion keeps last-seen")

	// Removing a candidate neither promotes nor touches the bucket.
	promoted, ok = tb.Remove(ps[4])
	require.False(t, ok)
	require.Empty(t, promoted)
	require.Nil(t, tb.Replacements(1))
	require.Equal(t, 2, tb.Size())

	// With an empty cache, removal just frees the slot.
	promoted, ok = tb.Remove(ps[0])
	require.False(t, ok)
	require.Empty(t, promoted)
	require.Equal(t, 1, tb.Size())
	require.Equal(t, Added, tb.Add(ps[5], at(8)))
	require.Equal(t, Updated, tb.Add(ps[5], at(9)))
}

func TestBucketRefresh(t *testing.T) {
	tb := New("self", 20, 0)
	for _, cpl := range []int{-1, 256} {
		require.Zero(t, tb.BucketSize(cpl))
		require.True(t, tb.LastRefreshed(cpl).IsZero())
		tb.Touch(cpl, t0) // ignored, must not panic
		_, ok := tb.Oldest(cpl)
		require.False(t, ok)
		require.Nil(t, tb.Replacements(cpl))
	}
	require.True(t, tb.LastRefreshed(3).IsZero())
	tb.Touch(3, t0)
	require.Equal(t, t0, tb.LastRefreshed(3))
	require.True(t, tb.LastRefreshed(4).IsZero())
}

func TestBucketFor(t *testing.T) {
	tb := New("self", 20, 0)
	r := newRand(7)
	for cpl := range 256 {
		require.Equal(t, cpl, tb.BucketFor(RandomIDWithCPL(tb.SelfKey(), cpl, r)))
	}
	require.Equal(t, 255, tb.BucketFor(tb.SelfKey()), "self folds into the last bucket")
}

// fabricated builds a table holding perBucket peers in each of buckets
// 0..buckets-1, with keys no real peer could hash to: deep buckets cannot be
// filled with real ids. It returns each peer's key.
func fabricated(tb *Table, buckets, perBucket int, r *rand.Rand) map[peer.ID]ID {
	keys := make(map[peer.ID]ID)
	for cpl := range buckets {
		for range perBucket {
			p := randPeer(r)
			key := RandomIDWithCPL(tb.SelfKey(), cpl, r)
			if tb.add(p, key, t0) == Added {
				keys[p] = key
			}
		}
	}
	return keys
}

// bruteNearest sorts every known peer by distance to target: the reference
// Nearest must agree with.
func bruteNearest(keys map[peer.ID]ID, target ID) []peer.ID {
	type keyed struct {
		d ID
		p peer.ID
	}
	all := make([]keyed, 0, len(keys))
	for p, k := range keys {
		all = append(all, keyed{k.Xor(target), p})
	}
	slices.SortFunc(all, func(a, b keyed) int { return bytes.Compare(a.d[:], b.d[:]) })
	out := make([]peer.ID, len(all))
	for i, k := range all {
		out[i] = k.p
	}
	return out
}

func TestNearestMatchesBruteForce(t *testing.T) {
	r := newRand(8)

	// Deep table: 2000 peers, 20 in each of buckets 0..99.
	deep := New(randPeer(r), 20, 0)
	deepKeys := fabricated(deep, 100, 20, r)
	require.Equal(t, 2000, deep.Size())

	// Real ids, big buckets (exercises the per-bucket sort beyond 64).
	wide := New(randPeer(r), 2000, 0)
	wideKeys := make(map[peer.ID]ID)
	for range 2000 {
		p := randPeer(r)
		require.Equal(t, Added, wide.Add(p, t0))
		wideKeys[p] = PeerKey(p)
	}

	for _, tc := range []struct {
		name string
		tb   *Table
		keys map[peer.ID]ID
	}{{"deep", deep, deepKeys}, {"wide", wide, wideKeys}} {
		t.Run(tc.name, func(t *testing.T) {
			var targets []ID
			for range 40 {
				targets = append(targets, RandomIDWithCPL(ID{}, r.IntN(256), r))
			}
			for cpl := 0; cpl < 256; cpl += 1 + cpl/16 { // targets inside buckets of self
				targets = append(targets, RandomIDWithCPL(tc.tb.SelfKey(), cpl, r))
			}
			targets = append(targets, tc.tb.SelfKey())
			hits := 0
			for _, k := range tc.keys { // exact hits
				if hits++; hits > 10 {
					break
				}
				targets = append(targets, k)
			}
			for i, target := range targets {
				want := bruteNearest(tc.keys, target)
				for _, n := range []int{1, 3, 20, 77, 5000} {
					got := tc.tb.Nearest(target, n)
					if w := want[:min(n, len(want))]; !slices.Equal(w, got) {
						require.Equal(t, w, got, "target %d (%s) n %d", i, target, n)
					}
				}
			}
			require.Nil(t, tc.tb.Nearest(targets[0], 0))
			require.Nil(t, tc.tb.Nearest(targets[0], -1))
		})
	}
}

func TestSortByDistance(t *testing.T) {
	r := newRand(9)
	for _, size := range []int{0, 1, 2, 10, 500} {
		ps := make([]peer.ID, size)
		keys := make(map[peer.ID]ID, size)
		for i := range ps {
			ps[i] = randPeer(r)
			keys[ps[i]] = PeerKey(ps[i])
		}
		target := RandomIDWithCPL(ID{}, r.IntN(256), r)
		want := bruteNearest(keys, target)
		SortByDistance(ps, target)
		if size == 0 {
			require.Empty(t, ps)
			continue
		}
		require.Equal(t, want, ps)
	}
}

// checkInvariants verifies the table against its own index and bitmap.
func checkInvariants(t *testing.T, tb *Table) {
	t.Helper()
	peers := tb.Peers()
	require.Len(t, peers, tb.Size())
	seen := make(map[peer.ID]bool)
	for _, p := range peers {
		require.False(t, seen[p], "duplicate %s", p)
		seen[p] = true
		require.True(t, tb.Find(p))
	}
	indexed := 0
	maxCPL := -1
	for cpl := range numBuckets {
		b := &tb.buckets[cpl]
		require.LessOrEqual(t, len(b.peers), tb.K())
		require.LessOrEqual(t, len(b.replacements), tb.nrepl)
		if len(b.replacements) > 0 {
			require.Len(t, b.peers, tb.K(), "candidates wait only for full buckets")
		}
		require.Equal(t, len(b.peers) > 0, tb.nonEmpty[cpl/64]&(1<<(63-cpl%64)) != 0, "bitmap bucket %d", cpl)
		if len(b.peers) > 0 {
			maxCPL = cpl
		}
		for _, e := range b.peers {
			require.Equal(t, loc{cpl: uint8(cpl)}, tb.index[e.id])
			require.Equal(t, cpl, tb.BucketFor(e.key))
			require.NotEqual(t, tb.Self(), e.id)
			indexed++
		}
		for _, e := range b.replacements {
			require.Equal(t, loc{cpl: uint8(cpl), cached: true}, tb.index[e.id])
			require.Equal(t, cpl, tb.BucketFor(e.key))
			require.False(t, tb.Find(e.id))
			indexed++
		}
	}
	require.Len(t, tb.index, indexed)
	require.Equal(t, maxCPL, tb.MaxCPL())
}

func TestRandomOperations(t *testing.T) {
	for seed := range uint64(5) {
		r := newRand(100 + seed)
		tb := New(randPeer(r), 3, 2)
		pool := make([]peer.ID, 60)
		for i := range pool {
			pool[i] = randPeer(r)
		}
		pool = append(pool, tb.Self())
		now := t0
		for step := range 3000 {
			now = now.Add(time.Second)
			p := pool[r.IntN(len(pool))]
			wasIn := tb.Find(p)
			switch r.IntN(4) {
			case 0, 1:
				out := tb.Add(p, now)
				switch {
				case p == tb.Self():
					require.Equal(t, Rejected, out)
				case wasIn:
					require.Equal(t, Updated, out)
				default:
					require.Contains(t, []Outcome{Added, Pending}, out)
				}
				require.Equal(t, out == Added || out == Updated, tb.Find(p))
			case 2:
				size := tb.Size()
				promoted, ok := tb.Remove(p)
				require.False(t, tb.Find(p))
				if ok {
					require.True(t, wasIn)
					require.True(t, tb.Find(promoted))
					require.Equal(t, size, tb.Size())
				} else if wasIn {
					require.Equal(t, size-1, tb.Size())
				}
			case 3:
				tb.MarkSeen(p, now)
				if at, ok := tb.LastSeen(p); ok {
					require.Equal(t, now, at)
				}
			}
			if step%100 == 0 {
				checkInvariants(t, tb)
			}
		}
		checkInvariants(t, tb)
	}
}

func TestPeersOrder(t *testing.T) {
	r := newRand(10)
	tb := New(randPeer(r), 20, 0)
	keys := fabricated(tb, 5, 3, r)
	got := tb.Peers()
	require.Len(t, got, 15)
	for i := 1; i < len(got); i++ {
		require.LessOrEqual(t, tb.BucketFor(keys[got[i-1]]), tb.BucketFor(keys[got[i]]))
	}
}

func TestNoAllocs(t *testing.T) {
	r := newRand(11)
	tb := New(randPeer(r), 20, 0)
	keys := fabricated(tb, 30, 20, r)
	var some peer.ID
	for p := range keys {
		some = p
		break
	}
	target := RandomIDWithCPL(ID{}, 0, r)
	require.Zero(t, testing.AllocsPerRun(100, func() { tb.Add(some, t0) }), "Add of a known peer")
	require.Zero(t, testing.AllocsPerRun(100, func() { CompareDistance(keys[some], target, target) }))
	require.Zero(t, testing.AllocsPerRun(100, func() { PeerKey(some) }))
	require.Equal(t, 1.0, testing.AllocsPerRun(100, func() { tb.Nearest(target, 20) }), "only the result")
}
