package kad

import (
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/require"

	isim "github.com/kadlib/kad/internal/sim"
)

// The attack scenarios run on real nodes: colluding adversaries lie as
// Attack describes, and a Sybil cluster surrounds its targets.
func TestSimulateAttacks(t *testing.T) {
	n := 300
	if testing.Short() {
		n = 120
	}
	var res *isim.Result
	var err error
	synctest.Test(t, func(t *testing.T) {
		res, err = isim.Run(isim.Config{N: n, Seed: 7, Lookups: 20, LatencyMin: 10 * time.Millisecond, LatencyMax: 10 * time.Millisecond,
			Attack: &isim.Attack{Fractions: []float64{0.1, 0.3}, Records: 30}})
	})
	require.NoError(t, err)
	require.Len(t, res.Attacks, 6)
	for i, ph := range res.Attacks {
		t.Logf("%-9s %.2f d=%d: recall %.3f (min %.2f), %.1f RPCs, value %.2f, provider %.2f, put errors %d, provide errors %d, lies %d",
			ph.Kind, ph.Fraction, ph.Disjoint, ph.Recall, ph.RecallMin, ph.RPCs, ph.ValueOK, ph.ProviderOK, ph.PutErrors, ph.ProvideErrors, ph.Lies)
		require.Equal(t, []int{1, 3}[i%2], ph.Disjoint)
		require.Equal(t, 30, ph.Reads)
		require.Positive(t, ph.Lies, "the adversaries lied")
		switch ph.Kind {
		case "collusion":
			// At this size every lookup still reaches the honest closest
			// peers, and the latest value and the provider are found.
			require.GreaterOrEqual(t, ph.Recall, 0.95)
			require.GreaterOrEqual(t, ph.ValueOK, 0.95)
			require.GreaterOrEqual(t, ph.ProviderOK, 0.95)
		case "sybil":
			// The cluster outranks the honest nodes near its targets: a
			// k-peer result holds few of them. (Whether the value and the
			// provider survive depends on whether a write reached an
			// honest node; bench/README has the figures.)
			require.Less(t, ph.Recall, 0.5)
		default:
			t.Fatalf("kind %q", ph.Kind)
		}
	}
	require.Equal(t, []float64{0.1, 0.1, 0.3, 0.3}, []float64{res.Attacks[0].Fraction, res.Attacks[1].Fraction, res.Attacks[2].Fraction, res.Attacks[3].Fraction})
}
