package sim

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/kadlib/kad/internal/kbucket"
	"github.com/kadlib/kad/internal/lookup"
)

// ErrInvalidConfig is wrapped by the error Run returns for a bad Config.
var ErrInvalidConfig = errors.New("sim: invalid config")

// Config describes one simulation. Zero fields take the defaults stated.
type Config struct {
	// N is the number of nodes, at least 2. No default.
	N int
	// K, Alpha and Beta configure tables and lookups as kad's options do.
	// Defaults 20, 10 and 3, kad's (and Amino's) defaults.
	K, Alpha, Beta int
	// ConvergeAlpha caps the requests in flight until the Beta closest
	// answered, as kad's ConvergeConcurrency option does. Default Alpha.
	ConvergeAlpha int
	// NearFactor scales the estimated distance to the K-th closest peer
	// into the lookups' Near distance, as lookup.NearFactor does for kad;
	// negative turns Near off. Default lookup.NearFactor.
	NearFactor float64
	// Seed makes the run reproducible: node ids, link latencies, who joins
	// through whom, the keys looked up and who stops. Default 0.
	Seed uint64
	// LatencyMin and LatencyMax bound the one-way latency of each link,
	// drawn once per link from the seed; equal values give every link the
	// same latency. A request takes two one-way trips. Default 5 ms to
	// 100 ms.
	LatencyMin, LatencyMax time.Duration
	// FailDelay is how long a request to a stopped node takes to fail.
	// Default one round trip, as a refused connection costs.
	FailDelay time.Duration
	// Bootstraps is how many random earlier nodes each node joins
	// through. Default 3.
	Bootstraps int
	// Rounds of self lookups by every node after all have joined, letting
	// early nodes learn of late ones as a refresh would. Default 1;
	// negative for none.
	Rounds int
	// Lookups is how many lookups of random keys from random nodes are
	// measured, in each phase. Default 200.
	Lookups int
	// Churn is the fraction of nodes stopped at once after the first
	// phase; a second phase then measures lookups and record retrieval
	// among the survivors, before any refresh. 0 skips it. Default 0.
	Churn float64
	// DisconnectChecks models kad's check of a table peer whose last
	// connection drops: when nodes stop, every live node that holds one in
	// its table learns at once and evicts it (the best case, where every
	// table peer is connected, as in the mocknet benchmark). Without it a
	// stopped node is evicted only by the lookups that fail to reach it.
	DisconnectChecks bool
	// Logger reports progress, useful at 100,000 nodes. Default: silent.
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.K == 0 {
		c.K = lookup.DefaultK
	}
	if c.Alpha == 0 {
		c.Alpha = lookup.DefaultAlpha
	}
	if c.Beta == 0 {
		c.Beta = min(lookup.DefaultBeta, c.K)
	}
	if c.NearFactor == 0 {
		c.NearFactor = lookup.NearFactor
	}
	if c.ConvergeAlpha == 0 {
		c.ConvergeAlpha = c.Alpha
	}
	if c.LatencyMin == 0 && c.LatencyMax == 0 {
		c.LatencyMin, c.LatencyMax = 5*time.Millisecond, 100*time.Millisecond
	}
	if c.Bootstraps == 0 {
		c.Bootstraps = 3
	}
	if c.Rounds == 0 {
		c.Rounds = 1
	}
	if c.Lookups == 0 {
		c.Lookups = 200
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

func (c Config) validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrInvalidConfig}, args...)...))
	}
	if c.N < 2 {
		bad("N = %d, want at least 2", c.N)
	}
	if err := (lookup.Config{K: c.K, Alpha: c.Alpha, Beta: c.Beta, ConvergeAlpha: c.ConvergeAlpha}).Validate(); err != nil {
		bad("%v", err)
	}
	if c.K < 1 {
		bad("K = %d, want at least 1", c.K)
	}
	if c.LatencyMin < 0 || c.LatencyMax < c.LatencyMin {
		bad("latency range [%v, %v]", c.LatencyMin, c.LatencyMax)
	}
	if c.FailDelay < 0 {
		bad("fail delay %v < 0", c.FailDelay)
	}
	if c.Bootstraps < 1 || c.Lookups < 1 {
		bad("bootstraps %d, lookups %d: want at least 1", c.Bootstraps, c.Lookups)
	}
	if c.Churn < 0 || c.Churn >= 1 {
		bad("churn %v, want [0, 1)", c.Churn)
	}
	return errors.Join(errs...)
}

// Phase summarises the lookups measured in one phase.
type Phase struct {
	Lookups int
	// Recall is the mean fraction of the true k closest live peers (the
	// origin excluded) a lookup returned; RecallMin the worst lookup's;
	// Perfect the fraction of lookups that found all k.
	Recall, RecallMin, Perfect float64
	// RPCs is the mean number of requests a lookup sent; Failed the mean
	// number of those that failed.
	RPCs, Failed float64
	// Hops is the mean of each lookup's longest referral chain behind a
	// peer of its result (lookup.Stats.Hops); HopsP50 and HopsP95 its
	// percentiles, HopsMax the largest.
	Hops                      float64
	HopsP50, HopsP95, HopsMax int
	// LatencyP50 and LatencyP95 are percentiles of virtual lookup time.
	LatencyP50, LatencyP95 time.Duration
	// DeadInResults counts stopped peers returned, over all lookups.
	DeadInResults int
	// RecordsFound, in the churn phase only, is the fraction of records
	// stored before the churn (on the k closest a lookup found, as
	// PutValue and Provide store them) that a lookup from a live node
	// after it reached: some surviving holder answered it.
	RecordsFound float64
}

// Result is what a simulation measured.
type Result struct {
	Config Config // with defaults applied
	// JoinLookups and JoinRPCs count the lookups and requests nodes sent
	// while joining and in the self-lookup rounds; Probes the admission
	// probes a real node would have sent on top.
	JoinLookups     int
	JoinRPCs        int64
	Probes          int64
	TableSize       float64 // mean routing table size after setup
	VirtualDuration time.Duration
	Lookup          Phase
	Churn           *Phase // nil when Config.Churn is 0
}

// Run builds a network of cfg.N nodes, measures lookups, then (with
// cfg.Churn) stops a fraction of the nodes and measures again.
func Run(cfg Config) (*Result, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	n := newNetwork(cfg)
	res := &Result{Config: cfg}

	// Setup: node i joins through up to Bootstraps random earlier nodes.
	for i := range n.ids {
		n.tables[i] = kbucket.New(n.ids[i], cfg.K, cfg.K)
		var boots []int
		for j := 0; j < cfg.Bootstraps && j < i; j++ {
			if b := n.rng.IntN(i); !slices.Contains(boots, b) {
				boots = append(boots, b)
			}
		}
		l, r := n.join(i, boots)
		res.JoinLookups += l
		res.JoinRPCs += int64(r)
		if (i+1)%max(cfg.N/10, 1) == 0 {
			log.Info("joined", "nodes", i+1, "of", cfg.N)
		}
	}
	for range cfg.Rounds {
		for i := range n.ids {
			res.JoinRPCs += int64(n.lookupFrom(i, n.keys[i]).stats.Requests)
			res.JoinLookups++
		}
	}
	res.Probes = n.probes
	size := 0
	for _, t := range n.tables {
		size += t.Size()
	}
	res.TableSize = float64(size) / float64(cfg.N)
	log.Info("setup done", "lookups", res.JoinLookups, "rpcs", res.JoinRPCs, "table", res.TableSize)

	// Records for the churn phase are stored before anyone stops.
	type record struct {
		key     kbucket.ID
		holders []peer.ID
	}
	var records []record
	if cfg.Churn > 0 {
		for range cfg.Lookups {
			key := n.randomKey()
			records = append(records, record{key: key, holders: n.lookupFrom(n.randomLive(), key).result})
		}
	}

	res.Lookup = n.measure(cfg.Lookups)
	log.Info("lookups measured", "recall", res.Lookup.Recall, "rpcs", res.Lookup.RPCs, "hops", res.Lookup.Hops)

	if cfg.Churn > 0 {
		stop := int(cfg.Churn * float64(cfg.N))
		for _, i := range n.rng.Perm(cfg.N)[:stop] {
			n.dead[i] = true
		}
		if cfg.DisconnectChecks {
			for i, t := range n.tables {
				if n.dead[i] {
					continue
				}
				// A promoted replacement may have stopped too: it is
				// checked in turn, as the real node checks it on admission.
				for changed := true; changed; {
					changed = false
					for _, p := range t.Peers() {
						if n.dead[n.index[p]] {
							t.Remove(p)
							changed = true
						}
					}
				}
			}
		}
		ph := n.measure(cfg.Lookups)
		res.Churn = &ph
		// Records are looked up after the random keys, with their own keys.
		found := 0
		for _, rec := range records {
			tr := n.lookupFrom(n.randomLive(), rec.key)
			for _, h := range rec.holders {
				if !n.dead[n.index[h]] && tr.l.State(h) == lookup.Succeeded {
					found++
					break
				}
			}
		}
		res.Churn.RecordsFound = float64(found) / float64(len(records))
		log.Info("churn measured", "recall", ph.Recall, "records", res.Churn.RecordsFound)
	}
	res.VirtualDuration = n.now
	return res, nil
}

// measure runs count lookups of random keys from random live nodes and
// summarises them.
func (n *network) measure(count int) Phase {
	ph := Phase{Lookups: count, RecallMin: 1}
	hops := make([]int, 0, count)
	lat := make([]time.Duration, 0, count)
	var req, failed, perfect int
	for range count {
		self := n.randomLive()
		key := n.randomKey()
		tr := n.lookupFrom(self, key)
		r := recall(tr.result, n.trueClosest(key, n.cfg.K, self))
		ph.Recall += r
		ph.RecallMin = min(ph.RecallMin, r)
		if r == 1 {
			perfect++
		}
		for _, p := range tr.result {
			if n.dead[n.index[p]] {
				ph.DeadInResults++
			}
		}
		req += tr.stats.Requests
		failed += tr.stats.Failed
		hops = append(hops, tr.stats.Hops)
		lat = append(lat, tr.latency)
	}
	c := float64(count)
	ph.Recall /= c
	ph.Perfect = float64(perfect) / c
	ph.RPCs = float64(req) / c
	ph.Failed = float64(failed) / c
	slices.Sort(hops)
	slices.Sort(lat)
	sum := 0
	for _, h := range hops {
		sum += h
	}
	ph.Hops = float64(sum) / c
	ph.HopsP50, ph.HopsP95, ph.HopsMax = pct(hops, 0.5), pct(hops, 0.95), hops[len(hops)-1]
	ph.LatencyP50, ph.LatencyP95 = pct(lat, 0.5), pct(lat, 0.95)
	return ph
}

// pct is the p-quantile of sorted xs (nearest rank).
func pct[T any](xs []T, p float64) T {
	i := int(p*float64(len(xs))+0.5) - 1
	return xs[min(max(i, 0), len(xs)-1)]
}
