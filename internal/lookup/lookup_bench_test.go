package lookup

import (
	"math/rand/v2"
	"testing"

	"github.com/kadlib/kad/internal/kbucket"
)

// BenchmarkLookup measures one full lookup (default config) over a 500-peer
// simulated network. Peer answers are precomputed, so the figures are the
// state machine's own cost plus a thin driver loop.
func BenchmarkLookup(b *testing.B) {
	for _, bc := range []struct {
		name string
		cfg  Config
	}{
		{"single", Config{}},
		{"disjoint3", Config{Disjoint: 3}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			s := newSimNet(1, simConfig{n: 500, neighbours: 20, random: 10})
			r := rand.New(rand.NewPCG(1, 1))
			const targets = 16
			var selves [targets]int
			var keys [targets]kbucket.ID
			for i := range targets {
				selves[i], keys[i] = r.IntN(len(s.ids)), randomKey(r)
				s.run(nil, r, selves[i], keys[i], bc.cfg) // warm the answer cache
			}
			b.ReportAllocs()
			b.ResetTimer()
			i := 0
			for b.Loop() {
				s.run(nil, r, selves[i%targets], keys[i%targets], bc.cfg)
				i++
			}
		})
	}
}
