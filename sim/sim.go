// Package sim simulates a kad network of up to a hundred thousand nodes in
// memory and in virtual time, running kad's own routing table and lookup
// state machine (internal/kbucket and internal/lookup, the code a kad node
// runs) with seeded link latencies and churn. It exists so that benchmarks
// and operators outside this module can see how lookups behave at the
// scale of the public network: hops, requests and recall of the true
// closest peers, before and right after a fraction of the nodes stops.
//
// A run is deterministic for a given Config. See Config for the model's
// defaults and Result for what is measured.
package sim

import isim "github.com/kadlib/kad/internal/sim"

// Config describes one simulation; zero fields take the defaults it states.
type Config = isim.Config

// Phase summarises the lookups measured in one phase of a run.
type Phase = isim.Phase

// Result is what a simulation measured.
type Result = isim.Result

// ErrInvalidConfig is wrapped by the error Run returns for a bad Config.
var ErrInvalidConfig = isim.ErrInvalidConfig

// Run builds a network of cfg.N nodes, each joining through a few earlier
// ones, measures lookups of random keys, then (with cfg.Churn) stops a
// fraction of the nodes at once and measures again.
func Run(cfg Config) (*Result, error) { return isim.Run(cfg) }
