package lookup

import (
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/stretchr/testify/require"

	"github.com/kadlib/kad/internal/kbucket"
)

// fixture is a target and peers p[0], p[1], ... ordered by distance to it,
// closest first, so tests can name peers by rank.
type fixture struct {
	target kbucket.ID
	self   peer.ID
	p      []peer.ID
}

func newFixture(seed uint64, n int) fixture {
	r := rand.New(rand.NewPCG(seed, 1))
	f := fixture{target: randomKey(r), self: randomPeerID(r)}
	for range n {
		f.p = append(f.p, randomPeerID(r))
	}
	slices.SortFunc(f.p, func(a, b peer.ID) int {
		return kbucket.CompareDistance(kbucket.PeerKey(a), kbucket.PeerKey(b), f.target)
	})
	return f
}

// scrambled returns ps in a fixed non-sorted order, so tests prove the
// lookup sorts rather than trusting its input.
func scrambled(ps ...peer.ID) []peer.ID {
	out := slices.Clone(ps)
	slices.Reverse(out)
	if len(out) > 2 {
		out[0], out[len(out)/2] = out[len(out)/2], out[0]
	}
	return out
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"zero means defaults", Config{}, true},
		{"amino", Config{K: 20, Alpha: 10, Beta: 3, Disjoint: 1}, true},
		{"negative K", Config{K: -1}, false},
		{"negative Alpha", Config{Alpha: -1}, false},
		{"negative Beta", Config{Beta: -1}, false},
		{"Beta above K", Config{K: 5, Beta: 6}, false},
		{"Beta equal K", Config{K: 5, Beta: 5}, true},
		{"default Beta follows small K", Config{K: 2}, true},
		{"negative Disjoint", Config{Disjoint: -1}, false},
		{"Disjoint equal Alpha", Config{Alpha: 4, Disjoint: 4}, true},
		{"Disjoint above Alpha", Config{Alpha: 4, Disjoint: 5}, false},
		{"ConvergeAlpha below Alpha", Config{Alpha: 10, ConvergeAlpha: 3}, true},
		{"ConvergeAlpha above Alpha", Config{Alpha: 4, ConvergeAlpha: 5}, false},
		{"negative ConvergeAlpha", Config{ConvergeAlpha: -1}, false},
		{"FirstAlpha up to ConvergeAlpha", Config{ConvergeAlpha: 6, FirstAlpha: 6}, true},
		{"FirstAlpha above ConvergeAlpha", Config{ConvergeAlpha: 6, FirstAlpha: 7}, false},
		{"negative FirstAlpha", Config{FirstAlpha: -1}, false},
		{"Near", Config{Near: 0.01}, true},
		{"negative Near", Config{Near: -1}, false},
		{"NearAlpha below Alpha", Config{Alpha: 10, NearAlpha: 5}, false},
		{"FirstNear", Config{Near: 0.015, FirstNear: 0.01}, true},
		{"negative FirstNear", Config{FirstNear: -1}, false},
		{"Vouchers", Config{Vouchers: 2}, true},
		{"negative Vouchers", Config{Vouchers: -1}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if tt.ok {
				require.NoError(t, err)
			} else {
				require.ErrorIs(t, err, ErrInvalidConfig)
			}
		})
	}
}

func TestConfigNormalized(t *testing.T) {
	tests := []struct {
		name string
		in   Config
		want Config
	}{
		{"defaults", Config{}, Config{K: 20, Alpha: 10, Beta: 3, ConvergeAlpha: 10, FirstAlpha: 4, NearAlpha: 20, Disjoint: 1}},
		{"negatives become defaults", Config{K: -1, Alpha: -2, Beta: -3, ConvergeAlpha: -1, FirstAlpha: -1, Disjoint: -4}, Config{K: 20, Alpha: 10, Beta: 3, ConvergeAlpha: 10, FirstAlpha: 4, NearAlpha: 20, Disjoint: 1}},
		{"Beta clamped to K", Config{K: 2, Beta: 5}, Config{K: 2, Alpha: 10, Beta: 2, ConvergeAlpha: 10, FirstAlpha: 4, NearAlpha: 10, Disjoint: 1}},
		{"Disjoint clamped to Alpha", Config{Alpha: 2, Disjoint: 5}, Config{K: 20, Alpha: 2, Beta: 3, ConvergeAlpha: 2, FirstAlpha: 2, NearAlpha: 20, Disjoint: 2}},
		{"ConvergeAlpha clamped to Alpha", Config{Alpha: 4, ConvergeAlpha: 9}, Config{K: 20, Alpha: 4, Beta: 3, ConvergeAlpha: 4, FirstAlpha: 4, NearAlpha: 20, Disjoint: 1}},
		{"FirstAlpha clamped to ConvergeAlpha", Config{ConvergeAlpha: 3, FirstAlpha: 9}, Config{K: 20, Alpha: 10, Beta: 3, ConvergeAlpha: 3, FirstAlpha: 3, NearAlpha: 20, Disjoint: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := tt.in
			require.Equal(t, tt.want, in.normalized())
			require.Equal(t, tt.in, in, "caller's config mutated")
		})
	}
}

func TestNewWithoutUsableSeeds(t *testing.T) {
	f := newFixture(1, 1)
	tests := []struct {
		name  string
		seeds []peer.ID
	}{
		{"nil", nil},
		{"only self", []peer.ID{f.self, f.self}},
		{"only empty id", []peer.ID{""}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := New(f.target, f.self, tt.seeds, Config{})
			send, done := l.Next()
			require.Empty(t, send)
			require.True(t, done)
			require.Empty(t, l.Result())
			require.Empty(t, l.Closest(5))
			require.Equal(t, Stats{}, l.Stats())
		})
	}
}

func TestNewIgnoresSelfAndDuplicates(t *testing.T) {
	f := newFixture(2, 3)
	seeds := []peer.ID{f.p[2], f.self, f.p[0], f.p[2], "", f.p[1], f.p[0]}
	l := New(f.target, f.self, seeds, Config{})
	require.Equal(t, 3, l.Stats().Known)
	require.Equal(t, Unknown, l.State(f.self))
	require.Equal(t, f.p, l.Closest(10))
	send, done := l.Next()
	require.False(t, done)
	require.Equal(t, f.p, send, "closest first, each once, never self")
}

func TestNextRespectsAlpha(t *testing.T) {
	for _, alpha := range []int{1, 3, 10} {
		t.Run("", func(t *testing.T) {
			f := newFixture(3, 15)
			l := New(f.target, f.self, scrambled(f.p...), Config{Alpha: alpha, FirstAlpha: alpha})
			send, _ := l.Next()
			require.Equal(t, f.p[:alpha], send)
			require.Equal(t, alpha, l.InFlight())
			send, done := l.Next()
			require.Empty(t, send, "nothing more while Alpha are in flight")
			require.False(t, done)

			l.OnSuccess(f.p[0], nil)
			send, _ = l.Next()
			require.Equal(t, []peer.ID{f.p[alpha]}, send, "one answer frees one slot")
			require.Equal(t, alpha, l.InFlight())
		})
	}
}

func TestNextOnlyQueriesTheKClosest(t *testing.T) {
	f := newFixture(4, 6)
	l := New(f.target, f.self, scrambled(f.p...), Config{K: 3, Alpha: 10})
	send, _ := l.Next()
	require.Equal(t, f.p[:3], send, "peers outside the K closest are never asked")

	l.OnFailure(f.p[1])
	send, _ = l.Next()
	require.Equal(t, []peer.ID{f.p[3]}, send, "a failure lets the next peer into the window")

	l.OnSuccess(f.p[0], nil)
	l.OnSuccess(f.p[2], nil)
	_, done := l.Next()
	require.False(t, done, "p3 is among the K closest and has not answered")
	l.OnSuccess(f.p[3], nil)
	send, done = l.Next()
	require.Empty(t, send)
	require.True(t, done)
	require.Equal(t, []peer.ID{f.p[0], f.p[2], f.p[3]}, l.Result())
	require.Equal(t, Heard, l.State(f.p[4]))
	require.Equal(t, Failed, l.State(f.p[1]))
	require.Equal(t, Stats{Requests: 4, Succeeded: 3, Failed: 1, Hops: 1, Known: 6}, l.Stats())
}

func TestCloserPeerKeepsLookupGoing(t *testing.T) {
	f := newFixture(5, 4)
	l := New(f.target, f.self, []peer.ID{f.p[2], f.p[3]}, Config{K: 2})
	send, _ := l.Next()
	require.Equal(t, []peer.ID{f.p[2], f.p[3]}, send)

	l.OnSuccess(f.p[3], []peer.ID{f.self, f.p[2], f.p[0]})
	require.Equal(t, Heard, l.State(f.p[0]))
	require.Equal(t, 3, l.Stats().Known, "self and known peers are not added")
	send, done := l.Next()
	require.Equal(t, []peer.ID{f.p[0]}, send)
	require.False(t, done)

	l.OnSuccess(f.p[2], []peer.ID{f.p[1]})
	l.OnSuccess(f.p[0], nil)
	send, done = l.Next()
	require.Equal(t, []peer.ID{f.p[1]}, send, "p1 pushed into the window")
	require.False(t, done)
	l.OnSuccess(f.p[1], nil)
	_, done = l.Next()
	require.True(t, done)
	require.Equal(t, []peer.ID{f.p[0], f.p[1]}, l.Result())
	// p[3] answered but was pushed out of the K closest.
	require.Equal(t, Succeeded, l.State(f.p[3]))
}

func TestIgnoredEvents(t *testing.T) {
	f := newFixture(6, 4)
	l := New(f.target, f.self, f.p[:3], Config{Alpha: 1})
	send, _ := l.Next()
	require.Equal(t, []peer.ID{f.p[0]}, send)
	before := l.Stats()

	l.OnSuccess(f.p[3], []peer.ID{f.p[3]}) // unknown peer
	l.OnSuccess(f.p[1], nil)               // known but never asked
	l.OnFailure(f.p[2])                    // known but never asked
	l.OnFailure(f.self)
	require.Equal(t, before, l.Stats())
	require.Equal(t, Unknown, l.State(f.p[3]))
	require.Equal(t, Heard, l.State(f.p[1]))
	require.Equal(t, Heard, l.State(f.p[2]))

	l.OnSuccess(f.p[0], nil)
	l.OnSuccess(f.p[0], []peer.ID{f.p[3]}) // repeat
	l.OnFailure(f.p[0])                    // failure after success
	require.Equal(t, Succeeded, l.State(f.p[0]))
	require.Equal(t, Unknown, l.State(f.p[3]))
	require.Equal(t, 0, l.InFlight())
	require.Equal(t, 1, l.Stats().Succeeded)
	require.Equal(t, 0, l.Stats().Failed)
}

func TestFailedPeerIsNeverAskedOrReturned(t *testing.T) {
	f := newFixture(7, 3)
	l := New(f.target, f.self, f.p[:2], Config{})
	l.Next()
	l.OnFailure(f.p[0])
	l.OnSuccess(f.p[1], []peer.ID{f.p[0], f.p[2]})
	require.Equal(t, Failed, l.State(f.p[0]), "a failed peer mentioned again stays failed")
	require.Equal(t, []peer.ID{f.p[1], f.p[2]}, l.Closest(10))
	send, _ := l.Next()
	require.Equal(t, []peer.ID{f.p[2]}, send)
	l.OnSuccess(f.p[2], nil)
	_, done := l.Next()
	require.True(t, done)
	require.Equal(t, []peer.ID{f.p[1], f.p[2]}, l.Result())
}

func TestAllSeedsFail(t *testing.T) {
	f := newFixture(8, 5)
	l := New(f.target, f.self, f.p, Config{Alpha: 2})
	for {
		send, done := l.Next()
		if done {
			break
		}
		require.NotEmpty(t, send)
		for _, p := range send {
			l.OnFailure(p)
		}
	}
	require.Empty(t, l.Result())
	require.Equal(t, Stats{Requests: 5, Failed: 5, Known: 5}, l.Stats())
}

func TestEventsAfterDoneAreHarmless(t *testing.T) {
	f := newFixture(9, 4)
	l := New(f.target, f.self, f.p[:3], Config{K: 1})
	send, _ := l.Next()
	require.Equal(t, f.p[:1], send, "K = 1: only the closest is eligible")
	l.OnSuccess(f.p[0], nil)
	_, done := l.Next()
	require.True(t, done)

	result, stats := l.Result(), l.Stats()
	l.OnSuccess(f.p[1], []peer.ID{f.p[3]})
	l.OnFailure(f.p[0])
	send, done = l.Next()
	require.Empty(t, send)
	require.True(t, done)
	require.Equal(t, result, l.Result())
	require.Equal(t, stats, l.Stats())
}

func TestHops(t *testing.T) {
	f := newFixture(10, 4)
	// A referral chain p3 -> p2 -> p1 -> p0, each closer than the last.
	l := New(f.target, f.self, f.p[3:], Config{K: 4})
	for i := 3; i >= 0; i-- {
		send, done := l.Next()
		require.False(t, done)
		require.Equal(t, []peer.ID{f.p[i]}, send)
		var closer []peer.ID
		if i > 0 {
			closer = []peer.ID{f.p[i-1]}
		}
		l.OnSuccess(f.p[i], closer)
	}
	_, done := l.Next()
	require.True(t, done)
	require.Equal(t, f.p, l.Result())
	require.Equal(t, Stats{Requests: 4, Succeeded: 4, Hops: 4, Known: 4}, l.Stats())
}

func TestClosest(t *testing.T) {
	f := newFixture(11, 5)
	l := New(f.target, f.self, f.p, Config{Alpha: 2})
	l.Next() // p0, p1 in flight
	l.OnSuccess(f.p[0], nil)
	l.OnFailure(f.p[1])
	tests := []struct {
		n    int
		want []peer.ID
	}{
		{-1, []peer.ID{}},
		{0, []peer.ID{}},
		{2, []peer.ID{f.p[0], f.p[2]}},
		{10, []peer.ID{f.p[0], f.p[2], f.p[3], f.p[4]}},
	}
	for _, tt := range tests {
		require.Equal(t, tt.want, l.Closest(tt.n), "n = %d", tt.n)
	}
}

func TestPeerStateString(t *testing.T) {
	for s, want := range map[PeerState]string{
		Unknown: "unknown", Heard: "heard", Waiting: "waiting",
		Succeeded: "succeeded", Failed: "failed", PeerState(99): "invalid",
	} {
		require.Equal(t, want, s.String())
	}
}

func TestDisjointDealsSeedsAndSplitsAlpha(t *testing.T) {
	f := newFixture(12, 7)
	// Seeds p1..p6 are dealt by rank: path 0 gets p1, p3, p5 and path 1
	// gets p2, p4, p6. Alpha 3 over 2 paths: budgets 2 and 1.
	l := New(f.target, f.self, scrambled(f.p[1:]...), Config{Alpha: 3, Disjoint: 2})
	send, _ := l.Next()
	require.Equal(t, []peer.ID{f.p[1], f.p[3], f.p[2]}, send)

	// p2 (path 1) reveals p0, the closest peer of all: it joins path 1 only.
	l.OnSuccess(f.p[2], []peer.ID{f.p[0]})
	send, _ = l.Next()
	require.Equal(t, []peer.ID{f.p[0]}, send, "path 0 is at its budget, path 1 asks p0")
	require.Equal(t, 1, l.peers[f.p[0]].path)

	// Path 0 learning p0 again must not let path 0 query it.
	l.OnSuccess(f.p[1], []peer.ID{f.p[0]})
	send, _ = l.Next()
	require.Equal(t, []peer.ID{f.p[5]}, send)
}

func TestDisjointPathsFinishIndependently(t *testing.T) {
	f := newFixture(13, 2)
	l := New(f.target, f.self, f.p, Config{K: 1, Disjoint: 2})
	send, _ := l.Next()
	require.Equal(t, f.p, send)
	l.OnSuccess(f.p[0], nil)
	_, done := l.Next()
	require.False(t, done, "path 1 still waits for p1")
	l.OnSuccess(f.p[1], nil)
	_, done = l.Next()
	require.True(t, done)
	require.Equal(t, f.p[:1], l.Result(), "results merged, K closest")
}

// TestLookupProperties drives many lookups over simulated networks and
// checks, at every step, the invariants in simNet.run (never more than
// Alpha in flight, never a peer twice, never self, bounded steps, harmless
// late answers), then the quality of each result.
func TestLookupProperties(t *testing.T) {
	// Two networks, shared by the cases (building one is the slow part):
	// every node knows its 20 closest neighbours and 10 random peers; in the
	// second, 30% of the nodes fail every request.
	honest := newSimNet(100, simConfig{n: 500, neighbours: 20, random: 10})
	failing := newSimNet(101, simConfig{n: 500, neighbours: 20, random: 10, deadFrac: 0.3})
	tests := []struct {
		name       string
		net        *simNet
		cfg        Config
		minRecall  float64 // average over the runs
		maxAvgHops float64
	}{
		{"amino defaults", honest, Config{}, 0.98, 6},
		{"alpha 1", honest, Config{Alpha: 1}, 0.98, 6},
		{"alpha 3 beta 1", honest, Config{Alpha: 3, Beta: 1}, 0.98, 6},
		{"k 5", honest, Config{K: 5, Alpha: 3}, 0.95, 8},
		{"30% failing", failing, Config{}, 0.95, 6},
		{"30% failing k 5", failing, Config{K: 5, Alpha: 2}, 0.8, 8},
		{"disjoint 3", honest, Config{Disjoint: 3}, 0.98, 6},
		{"disjoint 10", honest, Config{Disjoint: 10}, 0.98, 6},
		{"disjoint 3, 30% failing", failing, Config{Disjoint: 3}, 0.95, 6},
	}
	const runs = 30
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := tt.net
			r := rand.New(rand.NewPCG(uint64(i), 42))
			cfg := tt.cfg.normalized()
			var sumRecall float64
			var sumHops int
			for range runs {
				self := r.IntN(len(s.ids))
				target := randomKey(r)
				tr := s.run(t, r, self, target, tt.cfg)

				require.LessOrEqual(t, len(tr.result), cfg.K)
				require.True(t, slices.IsSortedFunc(tr.result, func(a, b peer.ID) int {
					return kbucket.CompareDistance(kbucket.PeerKey(a), kbucket.PeerKey(b), target)
				}), "result not sorted closest first")
				for _, p := range tr.result {
					require.Equal(t, Succeeded, tr.lookup.State(p))
					require.False(t, s.dead[s.index[p]], "failed peer %v in result", p)
					require.NotEqual(t, s.ids[self], p)
				}
				st := tr.lookup.Stats()
				require.Equal(t, len(tr.asked), st.Requests)
				require.Equal(t, st.Requests, st.Succeeded+st.Failed+tr.lookup.InFlight())

				sumRecall += recall(tr.result, s.trueClosest(self, target, cfg.K))
				sumHops += st.Hops
			}
			avgRecall, avgHops := sumRecall/runs, float64(sumHops)/runs
			t.Logf("recall %.3f, hops %.2f", avgRecall, avgHops)
			require.GreaterOrEqual(t, avgRecall, tt.minRecall)
			require.LessOrEqual(t, avgHops, tt.maxAvgHops)
		})
	}
}

// TestDisjointResistsEclipse: 20% of the peers collude, answer at once and
// only ever name each other. A single path is steered into their cluster and
// stops there; disjoint paths keep the paths seeded with honest peers clean,
// so they find more of the true honest closest peers.
func TestDisjointResistsEclipse(t *testing.T) {
	const nets, runs = 3, 30
	var sims [nets]*simNet
	for i := range sims {
		sims[i] = newSimNet(uint64(i), simConfig{n: 500, neighbours: 20, random: 10, evilFrac: 0.2, evilFirst: true})
	}
	score := func(cfg Config) (avgRecall float64, foundClosest int) {
		for seed, s := range sims {
			r := rand.New(rand.NewPCG(uint64(seed), 2)) // same selves and targets for both configs
			for range runs {
				self := r.IntN(len(s.ids))
				for s.evil[self] {
					self = r.IntN(len(s.ids))
				}
				target := randomKey(r)
				tr := s.run(t, r, self, target, cfg)
				avgRecall += recall(tr.result, s.trueClosest(self, target, DefaultK)) / (nets * runs)
				if slices.Contains(tr.result, s.trueClosest(self, target, 1)[0]) {
					foundClosest++
				}
			}
		}
		return avgRecall, foundClosest
	}
	single, singleFound := score(Config{})
	disjoint, disjointFound := score(Config{Disjoint: 3})
	t.Logf("honest recall: single %.3f, disjoint %.3f; closest honest peer found: single %d/%d, disjoint %d/%d",
		single, disjoint, singleFound, nets*runs, disjointFound, nets*runs)
	// Recall stays below 1 for both: colluders that really are among the
	// closest take their place in the result.
	require.Greater(t, disjoint, single+0.05)
	require.Greater(t, disjointFound, singleFound)
}

// With ConvergeAlpha below Alpha, only ConvergeAlpha requests are in
// flight until the Beta closest have answered; then Alpha apply.
func TestConvergeAlpha(t *testing.T) {
	f := newFixture(9, 20)
	l := New(f.target, f.self, scrambled(f.p...), Config{K: 20, Alpha: 8, Beta: 3, ConvergeAlpha: 2})
	send, _ := l.Next()
	require.Equal(t, f.p[:2], send, "two in flight while converging")
	l.OnSuccess(f.p[0], nil)
	send, _ = l.Next()
	require.Equal(t, []peer.ID{f.p[2]}, send, "still converging: one freed slot, one request")
	l.OnSuccess(f.p[1], nil)
	send, _ = l.Next()
	require.Equal(t, []peer.ID{f.p[3]}, send)
	l.OnSuccess(f.p[2], nil)
	send, _ = l.Next()
	require.Len(t, send, 7, "the 3 closest answered: up to Alpha (8) in flight")
	require.Equal(t, f.p[4:11], send)
	require.Equal(t, 8, l.InFlight())
}

// Until the first answer only FirstAlpha seeds are asked; a failure hands
// its slot to the next seed, and the first answer opens the lookup up to
// ConvergeAlpha.
func TestFirstAlpha(t *testing.T) {
	f := newFixture(10, 20)
	l := New(f.target, f.self, scrambled(f.p...), Config{})
	send, _ := l.Next()
	require.Equal(t, f.p[:DefaultFirstAlpha], send, "the 4 closest seeds first")
	l.OnFailure(f.p[0])
	send, _ = l.Next()
	require.Equal(t, []peer.ID{f.p[4]}, send, "a failed seed frees its slot for the next")
	l.OnSuccess(f.p[1], nil)
	send, _ = l.Next()
	require.Len(t, send, 7, "after the first answer: up to 10 in flight")
	require.Equal(t, 10, l.InFlight())
	// Only the closest Alpha+Beta candidates are eligible while converging:
	// p[1..13] (p[0] failed), of which p[1..4] were asked.
	require.Equal(t, f.p[5:12], send)
}

// With Near set, once a peer answered, candidates within Near of the target
// are asked at once, beyond the converging budget and Alpha, up to
// NearAlpha in flight; farther ones wait for the usual rules.
func TestNearCandidatesAskedAtOnce(t *testing.T) {
	f := newFixture(11, 40)
	// The 25th closest of the fixture bounds "near": p[0..24] are near.
	near := kbucket.Fraction(kbucket.PeerKey(f.p[24]).Xor(f.target))
	l := New(f.target, f.self, scrambled(f.p[30:]...), Config{K: 20, Alpha: 10, Beta: 3, Near: near, NearAlpha: 20})
	send, _ := l.Next()
	require.Equal(t, f.p[30:34], send, "no answer yet: 4 seeds, however near")
	l.OnSuccess(f.p[30], f.p[:30])
	send, _ = l.Next()
	// The window is p[0..19], all near: every one is asked (19 in flight
	// with the 3 seeds still out, under NearAlpha = 20), not just the
	// Alpha+Beta closest.
	require.Equal(t, f.p[:17], send[:17])
	require.Len(t, send, 17)
	require.Equal(t, 20, l.InFlight())

	// Without Near, the same answer opens only the converging window.
	l = New(f.target, f.self, scrambled(f.p[30:]...), Config{K: 20, Alpha: 10, Beta: 3})
	l.Next()
	l.OnSuccess(f.p[30], f.p[:30])
	send, _ = l.Next()
	require.Len(t, send, 7, "up to Alpha in flight")
	require.Equal(t, f.p[:7], send)
}

// A candidate the driver must dial (Reachable false) counts as answered
// once Vouchers distinct answering peers reported a connection to it, so
// the lookup ends without waiting for the handshake; nothing else
// changes which peers must answer.
func TestVouchers(t *testing.T) {
	f := newFixture(12, 4)
	p0, p1, p2, p3 := f.p[0], f.p[1], f.p[2], f.p[3]
	none := []peer.ID(nil)
	tests := []struct {
		name      string
		vouchers  int
		reachable bool // whether p0, the closest, is reachable
		// what p1, p2 and p3 report connected, answering with p0
		conn [3][]peer.ID
		// p0Fails: its request fails before the others answer
		p0Fails  bool
		done     bool
		result   []peer.ID
		vouched  int
		inFlight int
	}{
		{name: "two vouches end the wait", vouchers: 2, conn: [3][]peer.ID{{p0}, {p0}, none},
			done: true, result: []peer.ID{p0, p1, p2}, vouched: 1, inFlight: 1},
		{name: "one vouch is not enough", vouchers: 2, conn: [3][]peer.ID{{p0}, none, none},
			inFlight: 1},
		{name: "a repeated entry vouches once", vouchers: 2, conn: [3][]peer.ID{{p0, p0}, none, none},
			inFlight: 1},
		{name: "a reachable peer must answer", vouchers: 2, reachable: true, conn: [3][]peer.ID{{p0}, {p0}, {p0}},
			inFlight: 1},
		{name: "off by default", conn: [3][]peer.ID{{p0}, {p0}, {p0}},
			inFlight: 1},
		{name: "a failure overrides the vouches", vouchers: 2, conn: [3][]peer.ID{{p0}, {p0}, none}, p0Fails: true,
			done: true, result: []peer.ID{p1, p2, p3}},
		{name: "one voucher is enough when so set", vouchers: 1, conn: [3][]peer.ID{{p0}, none, none},
			done: true, result: []peer.ID{p0, p1, p2}, vouched: 1, inFlight: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := New(f.target, f.self, scrambled(p1, p2, p3), Config{K: 3, Alpha: 10, Vouchers: tt.vouchers,
				Reachable: func(p peer.ID) bool { return tt.reachable || p != p0 }})
			send, _ := l.Next()
			require.ElementsMatch(t, []peer.ID{p1, p2, p3}, send)
			l.OnAnswer(p1, []peer.ID{p0}, tt.conn[0])
			send, done := l.Next()
			require.Equal(t, []peer.ID{p0}, send, "p0 is asked as soon as it is heard of")
			require.False(t, done)
			if tt.p0Fails {
				l.OnFailure(p0)
			}
			l.OnAnswer(p2, []peer.ID{p0}, tt.conn[1])
			l.OnAnswer(p3, []peer.ID{p0}, tt.conn[2])
			send, done = l.Next()
			require.Empty(t, send)
			require.Equal(t, tt.done, done)
			require.Equal(t, tt.inFlight, l.InFlight())
			if !done {
				// Without enough vouches the lookup ends only on p0's answer.
				l.OnSuccess(p0, nil)
				_, done = l.Next()
				require.True(t, done)
				require.Equal(t, []peer.ID{p0, p1, p2}, l.Result())
				require.Zero(t, l.Stats().Vouched)
				return
			}
			require.Equal(t, tt.result, l.Result())
			require.Equal(t, tt.vouched, l.Stats().Vouched)
			l.OnSuccess(p0, nil)
			require.Equal(t, tt.result, l.Result(), "a late answer changes nothing")
		})
	}
}

// Vouches count only from answers on the candidate's own disjoint path, so
// a path cannot be steered by what another path heard.
func TestVouchersStayOnTheirPath(t *testing.T) {
	f := newFixture(13, 6)
	// Two paths: seeds p1, p3, p5 go to path 0 and p2, p4 to path 1 after
	// sorting (p1, p2, p3, p4, p5 dealt in turn).
	l := New(f.target, f.self, scrambled(f.p[1:]...), Config{K: 2, Alpha: 4, Disjoint: 2, Vouchers: 1,
		Reachable: func(p peer.ID) bool { return p != f.p[0] }})
	send, _ := l.Next()
	require.ElementsMatch(t, f.p[1:5], send)
	l.OnAnswer(f.p[1], []peer.ID{f.p[0]}, nil) // p0 joins path 0, no vouch
	send, _ = l.Next()
	require.Equal(t, []peer.ID{f.p[0]}, send)
	l.OnAnswer(f.p[2], []peer.ID{f.p[0]}, []peer.ID{f.p[0]}) // path 1 vouches: ignored
	l.OnAnswer(f.p[3], nil, nil)
	l.OnAnswer(f.p[4], nil, nil)
	_, done := l.Next()
	require.False(t, done, "path 0 still waits for p0")
	require.Equal(t, Waiting, l.State(f.p[0]))
}

// Before the first answer, seeds within FirstNear are asked at once beside
// the FirstAlpha closest (up to NearAlpha in flight); after it, Near
// applies as before.
func TestFirstNear(t *testing.T) {
	f := newFixture(14, 30)
	dist := func(i int) float64 { return kbucket.Fraction(kbucket.PeerKey(f.p[i]).Xor(f.target)) }
	tests := []struct {
		name      string
		firstNear float64
		nearAlpha int
		want      []peer.ID // asked before any answer
	}{
		{name: "off", want: f.p[:DefaultFirstAlpha]},
		{name: "within the distance of the 12th", firstNear: dist(11), want: f.p[:12]},
		{name: "nearer than the FirstAlpha closest", firstNear: dist(1), want: f.p[:DefaultFirstAlpha]},
		{name: "capped by NearAlpha", firstNear: dist(29), nearAlpha: 15, want: f.p[:15]},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := New(f.target, f.self, scrambled(f.p...), Config{K: 20, Alpha: 10, Near: 2 * tt.firstNear,
				FirstNear: tt.firstNear, NearAlpha: tt.nearAlpha})
			send, done := l.Next()
			require.False(t, done)
			require.Equal(t, tt.want, send)
		})
	}
}
