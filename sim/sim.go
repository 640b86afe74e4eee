// Package sim runs a network of kad nodes in memory and in virtual time:
// real nodes, built from the same components as New builds them (routing
// table keeper, querier, server, values, providers), connected by an
// in-memory network with seeded per-link latencies instead of libp2p
// hosts. It exists so that benchmarks and operators outside this module
// can see how kad's lookups behave at sizes no mocknet reaches: hops,
// requests and recall of the true closest peers, before and right after a
// fraction of the nodes stops. Because it runs the node itself, it cannot
// drift from it: every setting is one of the node's options.
//
// Virtual time comes from testing/synctest, which needs a *testing.T, so
// a simulation runs from a test:
//
//	func TestNetwork(t *testing.T) {
//		res, err := sim.Run(t, sim.Config{N: 1000, Seed: 1, Lookups: 200})
//		if err != nil {
//			t.Fatal(err)
//		}
//		t.Logf("recall %.3f, %.1f requests, %.2f hops per lookup",
//			res.Lookup.Recall, res.Lookup.RPCs, res.Lookup.Hops)
//	}
//
// Run wraps the whole simulation in synctest.Test, so it must not be
// called from inside a synctest bubble. Runs with the same Config agree
// closely but not bit for bit (requests answered at the same virtual
// instant are handled in whatever order the goroutines run). See Config
// for the defaults and Result for what is measured.
package sim

import (
	"testing"
	"testing/synctest"

	_ "github.com/kadlib/kad" // registers the simulation engine
	isim "github.com/kadlib/kad/internal/sim"
)

// Config describes one simulation; zero fields take the defaults it states.
type Config = isim.Config

// Phase summarises the lookups measured in one phase of a run.
type Phase = isim.Phase

// Result is what a simulation measured.
type Result = isim.Result

// Attack describes the attack scenarios a run measures (adversaries that
// collude or surround a key); see its fields for the defaults.
type Attack = isim.Attack

// AttackPhase is one attack scenario measured with one path setting.
type AttackPhase = isim.AttackPhase

// ErrInvalidConfig is wrapped by the error Run returns for a bad Config.
var ErrInvalidConfig = isim.ErrInvalidConfig

// Run builds a network of cfg.N kad nodes in a synctest bubble, each
// joining through a few earlier ones with Bootstrap, measures lookups of
// random keys, then (with cfg.Churn) stops a fraction of the nodes at once
// and measures again. The network is torn down before it returns.
func Run(t *testing.T, cfg Config) (*Result, error) {
	t.Helper()
	var (
		res *Result
		err error
	)
	synctest.Test(t, func(*testing.T) { res, err = isim.Run(cfg) })
	return res, err
}
