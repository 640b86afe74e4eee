package lookup

import (
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/stretchr/testify/require"

	"github.com/kadlib/kad/internal/kbucket"
)

// simNet is a fixed table of answers for the state machine's property
// tests and benchmarks (TestLookupProperties, BenchmarkLookup): every node
// knows a fixed set of peers (its true closest neighbours plus a few
// random ones) and answers a request with the closest of them to the
// target. Dead nodes fail every request; evil nodes collude and answer
// only with evil nodes. It models no node: no time, no latency, no table
// that changes. The network simulator, which runs real kad nodes, is
// package kad's simulate.go (package sim).
type simNet struct {
	ids   []peer.ID
	keys  []kbucket.ID
	index map[peer.ID]int
	table [][]int // table[i]: indices of the peers node i knows
	dead  []bool
	evil  []bool
	evils []int // indices of evil nodes
	k     int   // how many peers a node answers with
	// evilFirst delivers evil answers before any honest one, as attackers
	// that answer at once would.
	evilFirst bool
	// answers memoises answer per target: routing tables never change, and
	// benchmarks should measure the lookup, not the simulated peers.
	answers map[kbucket.ID][][]peer.ID
}

type simConfig struct {
	n          int     // nodes
	neighbours int     // true closest neighbours each node knows
	random     int     // extra random peers each node knows
	deadFrac   float64 // fraction of nodes that fail every request
	evilFrac   float64 // fraction of nodes that answer only with evil nodes
	evilFirst  bool    // evil nodes answer before honest ones
}

func randomPeerID(r *rand.Rand) peer.ID {
	var b [32]byte
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return peer.ID(b[:])
}

func randomKey(r *rand.Rand) kbucket.ID {
	var k kbucket.ID
	for i := range k {
		k[i] = byte(r.Uint32())
	}
	return k
}

func newSimNet(seed uint64, c simConfig) *simNet {
	r := rand.New(rand.NewPCG(seed, 0x5eed))
	s := &simNet{
		ids:   make([]peer.ID, c.n),
		keys:  make([]kbucket.ID, c.n),
		index: make(map[peer.ID]int, c.n),
		table: make([][]int, c.n),
		dead:  make([]bool, c.n),
		evil:  make([]bool, c.n),
		k:     DefaultK,

		evilFirst: c.evilFirst,
		answers:   make(map[kbucket.ID][][]peer.ID),
	}
	for i := range s.ids {
		s.ids[i] = randomPeerID(r)
		s.keys[i] = kbucket.PeerKey(s.ids[i])
		s.index[s.ids[i]] = i
		// Draw both fates for every node so the layout of the network does
		// not depend on which fractions a test asks for.
		dead, evil := r.Float64(), r.Float64()
		s.dead[i] = dead < c.deadFrac
		s.evil[i] = !s.dead[i] && evil < c.evilFrac
		if s.evil[i] {
			s.evils = append(s.evils, i)
		}
	}
	all := make([]int, c.n)
	for i := range all {
		all[i] = i
	}
	for i := range s.ids {
		known := s.nearest(all, s.keys[i], c.neighbours, func(j int) bool { return j == i })
		for range c.random {
			if j := r.IntN(c.n); j != i && !slices.Contains(known, j) {
				known = append(known, j)
			}
		}
		s.table[i] = known
	}
	return s
}

// nearest returns the (at most) k indices of cand closest to target,
// closest first, leaving out those skip reports. It keeps a short sorted list
// rather than sorting cand: building a network calls it once per node, and
// that must stay fast under the race detector.
func (s *simNet) nearest(cand []int, target kbucket.ID, k int, skip func(int) bool) []int {
	best := make([]int, 0, k+1)
	for _, j := range cand {
		if skip != nil && skip(j) {
			continue
		}
		if len(best) == k && kbucket.CompareDistance(s.keys[j], s.keys[best[k-1]], target) >= 0 {
			continue
		}
		at, _ := slices.BinarySearchFunc(best, j, func(a, b int) int {
			return kbucket.CompareDistance(s.keys[a], s.keys[b], target)
		})
		best = slices.Insert(best, at, j)
		if len(best) > k {
			best = best[:k]
		}
	}
	return best
}

// closest returns the k peers among idx closest to target.
func (s *simNet) closest(idx []int, target kbucket.ID, k int) []peer.ID {
	near := s.nearest(idx, target, k, nil)
	out := make([]peer.ID, len(near))
	for n, i := range near {
		out[n] = s.ids[i]
	}
	return out
}

// answer is what node i returns for a request about target.
func (s *simNet) answer(i int, target kbucket.ID) []peer.ID {
	memo := s.answers[target]
	if memo == nil {
		memo = make([][]peer.ID, len(s.ids))
		s.answers[target] = memo
	}
	if memo[i] == nil {
		if s.evil[i] {
			memo[i] = s.closest(s.evils, target, s.k)
		} else {
			memo[i] = s.closest(s.table[i], target, s.k)
		}
	}
	return memo[i]
}

// trueClosest returns the k nodes closest to target, other than self, that
// a correct lookup should find: alive and honest ones.
func (s *simNet) trueClosest(self int, target kbucket.ID, k int) []peer.ID {
	var idx []int
	for i := range s.ids {
		if i != self && !s.dead[i] && !s.evil[i] {
			idx = append(idx, i)
		}
	}
	return s.closest(idx, target, k)
}

// recall is the fraction of want found in got.
func recall(got, want []peer.ID) float64 {
	if len(want) == 0 {
		return 1
	}
	n := 0
	for _, p := range want {
		if slices.Contains(got, p) {
			n++
		}
	}
	return float64(n) / float64(len(want))
}

// runTrace is what a simulated lookup observed.
type runTrace struct {
	result   []peer.ID
	asked    []peer.ID
	steps    int
	lookup   *Lookup
	wantPath map[peer.ID]int // path each peer should belong to, tracked independently
}

// run drives one lookup from node self to completion over the network,
// delivering one answer per step in a random order. With t non-nil it checks
// the state machine's invariants at every step.
func (s *simNet) run(t testing.TB, r *rand.Rand, self int, target kbucket.ID, cfg Config) runTrace {
	norm := cfg.normalized()
	seeds := s.closest(s.table[self], target, norm.K)
	l := New(target, s.ids[self], seeds, cfg)
	tr := runTrace{lookup: l}
	if t != nil {
		// Seeds are sorted then dealt round-robin to the paths.
		sorted := slices.Clone(seeds)
		slices.SortFunc(sorted, func(a, b peer.ID) int {
			return kbucket.CompareDistance(kbucket.PeerKey(a), kbucket.PeerKey(b), target)
		})
		tr.wantPath = make(map[peer.ID]int)
		for i, p := range sorted {
			tr.wantPath[p] = i % norm.Disjoint
		}
	}
	asked := make(map[peer.ID]bool)
	var pending []peer.ID
	bound := len(s.ids) + 1 // every step resolves one request; a peer is asked once
	for {
		send, done := l.Next()
		if t != nil {
			for _, p := range send {
				require.NotEqual(t, s.ids[self], p, "asked self")
				require.False(t, asked[p], "asked %v twice", p)
				require.Equal(t, Waiting, l.State(p))
				require.Equal(t, tr.wantPath[p], l.peers[p].path, "peer queried by another path than the one that learned it")
			}
		}
		for _, p := range send {
			asked[p] = true
			tr.asked = append(tr.asked, p)
		}
		pending = append(pending, send...)
		if t != nil {
			require.Equal(t, len(pending), l.InFlight())
			require.LessOrEqual(t, l.InFlight(), norm.Alpha)
			perPath := make([]int, norm.Disjoint)
			for _, p := range pending {
				perPath[tr.wantPath[p]]++
			}
			for i, n := range perPath {
				require.LessOrEqual(t, n, l.paths[i].budget)
			}
		}
		if done {
			break
		}
		tr.steps++
		if t != nil {
			require.NotEmpty(t, pending, "stalled: not done, nothing to send, nothing in flight")
			require.LessOrEqual(t, tr.steps, bound, "did not terminate")
		}
		j := r.IntN(len(pending))
		if s.evilFirst {
			if e := slices.IndexFunc(pending, func(p peer.ID) bool { return s.evil[s.index[p]] }); e >= 0 {
				j = e
			}
		}
		p := pending[j]
		pending = slices.Delete(pending, j, j+1)
		i := s.index[p]
		if s.dead[i] {
			l.OnFailure(p)
			continue
		}
		closer := s.answer(i, target)
		if t != nil {
			for _, c := range closer {
				if _, ok := tr.wantPath[c]; !ok && c != s.ids[self] {
					tr.wantPath[c] = tr.wantPath[p]
				}
			}
		}
		l.OnSuccess(p, closer)
	}
	tr.result = l.Result()
	if t != nil {
		// Termination rule: the K closest non-failed peers, hence the Beta
		// closest, all answered. With disjoint paths this holds too: each
		// of the merged K closest is among its own path's K closest.
		for _, p := range l.Closest(norm.K) {
			require.Equal(t, Succeeded, l.State(p), "done with %v not answered among the K closest", p)
		}
		// Requests abandoned when the lookup ended may still come back;
		// they must not change anything.
		before := l.Stats()
		for _, p := range pending {
			if s.dead[s.index[p]] {
				l.OnFailure(p)
			} else {
				l.OnSuccess(p, s.answer(s.index[p], target))
			}
		}
		require.Equal(t, tr.result, l.Result())
		require.Equal(t, before, l.Stats())
		_, done := l.Next()
		require.True(t, done)
	}
	return tr
}
