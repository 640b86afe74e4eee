// Package sim holds the simulator's settings and results, and the
// measurement helpers every run shares. The simulation itself is package
// kad's: it builds real kad nodes (newNode, every component as in
// production) over the in-memory network of memnet.go, in virtual time, and
// registers itself here when package kad is initialised. Nothing in this
// package decides how a node behaves, so the simulator cannot drift from
// the node.
//
// Run must be called inside a testing/synctest bubble: every wait of a
// simulated node is a timer, and only a bubble's virtual clock makes a run
// of thousands of nodes take seconds rather than hours. The public package
// github.com/kadlib/kad/sim wraps it in one (sim.Run(t, cfg)).
package sim

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/kadlib/kad/internal/kbucket"
)

// ErrInvalidConfig is wrapped by the error Run returns for a bad Config.
var ErrInvalidConfig = errors.New("sim: invalid config")

// ErrNoEngine is returned by Run when package kad, which runs the
// simulation, is not linked in.
var ErrNoEngine = errors.New("sim: no simulation engine: import github.com/kadlib/kad")

// Config describes one simulation. Zero fields take the defaults stated.
type Config struct {
	// N is the number of nodes, at least 2. No default.
	N int
	// K, Alpha and Beta are the nodes' BucketSize, Concurrency and
	// Resiliency options. 0 leaves the node's default (20, 10 and 3); Run
	// reports the values the nodes ran with in Result.Config.
	K, Alpha, Beta int
	// ConvergeAlpha is the nodes' ConvergeConcurrency option: the
	// requests in flight until the Beta closest answered. As in the node,
	// setting it also turns off the requests sent ahead to peers probably
	// among the k closest. 0 leaves it unset (Alpha, requests ahead on).
	//
	// The old simulator's NearFactor knob is gone: the node has no option
	// for it (lookup.NearFactor is a constant), and a knob the node lacks
	// would let the simulator run something kad never does.
	ConvergeAlpha int
	// Seed makes the setup reproducible: node identities, link latencies,
	// who joins through whom, the keys looked up and who stops. Runs with
	// the same seed agree closely but not bit for bit: requests answered at
	// the same virtual instant are handled in the order the goroutines
	// happen to run. Default 0.
	Seed uint64
	// LatencyMin and LatencyMax bound the one-way latency of each link,
	// drawn once per link from the seed; equal values give every link the
	// same latency. A request takes two one-way trips. Default 5 ms to
	// 100 ms.
	LatencyMin, LatencyMax time.Duration
	// FailDelay is how long a request to a stopped node takes to fail.
	// Default LatencyMax.
	FailDelay time.Duration
	// Bootstraps is how many random earlier nodes each node has as its
	// BootstrapPeers; each node then runs Bootstrap (connect to them, look
	// itself up, refresh every bucket). Nodes join in waves (one node at
	// first, then a twentieth of the nodes already there, at most 32),
	// through nodes of the earlier waves only, and a wave joins before the
	// next is added. Default 3.
	Bootstraps int
	// Rounds of self lookups (GetClosestPeers of its own id) by every
	// node after all have joined, letting early nodes learn of late ones
	// as a refresh would. Default 1; negative for none.
	Rounds int
	// Lookups is how many GetClosestPeers of random keys from random
	// nodes are measured, in each phase. Default 200.
	Lookups int
	// Churn is the fraction of nodes stopped at once after the first
	// phase; a second phase then measures lookups, and FindProviders of
	// records provided before the churn, among the survivors. The nodes'
	// periodic upkeep is off (RandomWalk(false)), so nothing but the
	// lookups themselves and the disconnect checks repairs the tables.
	// 0 skips it. Default 0.
	Churn float64
	// DisconnectChecks makes the stopped nodes' connections close under
	// their peers, as a crashed process's do: every peer is told, and
	// kad's disconnect check of a table peer whose connection dropped
	// evicts it (every table peer is connected in the simulation, as in
	// the mocknet benchmark, so this is the best case). Without it the
	// stopped nodes vanish unnoticed, as behind a partition, and only
	// the requests that fail to reach them evict them.
	DisconnectChecks bool
	// Logger reports progress. Default: silent.
	Logger *slog.Logger
	// Attack, when set, runs attack scenarios (see Attack) after the
	// lookup phase and before the churn; the Sybils leave and the
	// adversaries turn honest again before the churn. In such a run, odd
	// nodes run with Attack.Disjoint paths, and the lookup and churn phases
	// are measured from even nodes (one path) only. Default: none.
	Attack *Attack
}

// Attack describes the attack scenarios a run measures after its lookup
// phase, on the same network. Every node runs kad; an adversary is a kad
// node whose request handlers lie once it is turned adversarial, which
// happens only after setup, so adversaries hold the places in honest
// tables that their share of the network gives them.
//
// Collusion, for each fraction f: the first f of a fixed random order of
// the nodes turn adversarial together (the sets are nested) and answer
// every FIND_NODE, GET_VALUE and GET_PROVIDERS with the adversaries
// closest to the key only (an eclipse), answer GET_VALUE with a stale
// record (an older version, validly signed; half of them) or a forged one
// (a newer version with a bad signature; the other half), accept
// PUT_VALUE without storing and drop ADD_PROVIDER, and never return a
// provider. Then, for each of 1 and Disjoint disjoint paths, honest nodes
// whose DisjointPaths is that value write Records values (version 2 of a
// key whose version 1 the adversaries hold) and provide Records CIDs, and
// other honest nodes of that group look up Records random keys, read each
// value and look for each CID's provider.
//
// Sybil: with no other adversary, Sybils fresh nodes whose ids share
// more leading bits with a target key than any honest node can be
// expected to join (honestly), then turn adversarial as above; a value
// key and a CID are targeted so, for each path setting, and Records
// honest nodes look them up, read the value and look for the provider.
type Attack struct {
	// Fractions of the nodes adversarial, one collusion scenario each,
	// each in (0, 0.5]. Default 0.05, 0.1, 0.2.
	Fractions []float64
	// Disjoint is the DisjointPaths compared with 1: every node of odd
	// index runs with it. Default 3.
	Disjoint int
	// Records is the values written, CIDs provided and random keys looked
	// up per scenario and path setting. Default 100.
	Records int
	// Sybils is the size of each Sybil cluster; 0 leaves the node's
	// bucket size, negative skips the Sybil scenario.
	Sybils int
}

// AttackPhase is one attack scenario measured with one path setting.
type AttackPhase struct {
	Kind string // "collusion" or "sybil"
	// Fraction is the adversaries' share of the nodes: for "sybil", all
	// four clusters' nodes (a value key and a CID per path setting, each
	// surrounded by Attack.Sybils nodes) over N.
	Fraction float64
	Disjoint int // the readers' and writers' DisjointPaths
	// Recall is the mean fraction of the honest peers a GetClosestPeers
	// should return that it did; RecallMin the worst lookup's. Under
	// collusion, those are the honest live peers among the k live peers
	// closest to the key (adversaries cannot move, so those truly close
	// hold their places in any result; an eclipse takes the honest rest).
	// Under a Sybil cluster, the k honest live peers closest to the key,
	// which a k-peer result misses wherever the cluster is closer. The
	// origin is excluded. RPCs is the mean requests per lookup.
	Recall, RecallMin, RPCs float64
	// ValueOK is the fraction of reads that returned the latest valid
	// version; ProviderOK of FindProviders that found the honest
	// provider; PutErrors and ProvideErrors count writes that failed.
	ValueOK, ProviderOK      float64
	PutErrors, ProvideErrors int
	Lookups, Reads           int
	// Lies counts the requests the adversaries answered falsely.
	Lies int64
}

// WithDefaults returns c with its zero fields set to their defaults, but
// for those the node decides (K, Alpha, Beta): the engine reports those.
func (c Config) WithDefaults() Config {
	if c.LatencyMin == 0 && c.LatencyMax == 0 {
		c.LatencyMin, c.LatencyMax = 5*time.Millisecond, 100*time.Millisecond
	}
	if c.FailDelay == 0 {
		c.FailDelay = c.LatencyMax
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
	if c.Attack != nil {
		a := *c.Attack
		if a.Fractions == nil {
			a.Fractions = []float64{0.05, 0.1, 0.2}
		}
		if a.Disjoint == 0 {
			a.Disjoint = 3
		}
		if a.Records == 0 {
			a.Records = 100
		}
		c.Attack = &a
	}
	return c
}

// validate checks what the simulation owns; the nodes' own settings
// (K, Alpha, Beta, ConvergeAlpha) are checked by the node, as its
// options are.
func (c Config) validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrInvalidConfig}, args...)...))
	}
	if c.N < 2 {
		bad("N = %d, want at least 2", c.N)
	}
	if c.K < 0 || c.Alpha < 0 || c.Beta < 0 || c.ConvergeAlpha < 0 {
		bad("K %d, Alpha %d, Beta %d, ConvergeAlpha %d: want >= 0", c.K, c.Alpha, c.Beta, c.ConvergeAlpha)
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
	if a := c.Attack; a != nil {
		for _, f := range a.Fractions {
			if !(f > 0 && f <= 0.5) {
				bad("attack fraction %v, want (0, 0.5]", f)
			}
		}
		if a.Disjoint < 1 || a.Records < 1 {
			bad("attack disjoint paths %d, records %d: want at least 1", a.Disjoint, a.Records)
		}
	}
	return errors.Join(errs...)
}

// Phase summarises the lookups measured in one phase.
type Phase struct {
	Lookups int
	// Errors counts lookups that returned an error (they count with the
	// peers they returned, usually none, in the recall).
	Errors int
	// Recall is the mean fraction of the true k closest live peers (the
	// origin excluded) a lookup returned; RecallMin the worst lookup's;
	// Perfect the fraction of lookups that found all k.
	Recall, RecallMin, Perfect float64
	// RPCs is the mean number of requests a lookup sent, and Failed of
	// those that failed, from the origin's Stats (LookupRequests and
	// OutboundFailed).
	RPCs, Failed float64
	// Messages is the mean number of requests all nodes received per
	// lookup, as the mocknet benchmark counts them: the lookup's requests
	// that arrived plus the admission probes its new connections caused.
	Messages float64
	// Hops is the mean of each lookup's longest referral chain behind a
	// peer of its result (Stats.LookupHops); HopsP50 and HopsP95 its
	// percentiles, HopsMax the largest.
	Hops                      float64
	HopsP50, HopsP95, HopsMax int
	// LatencyP50 and LatencyP95 are percentiles of virtual lookup time.
	LatencyP50, LatencyP95 time.Duration
	// DeadInResults counts stopped peers returned, over all lookups.
	DeadInResults int
	// RecordsFound, in the churn phase only, is the fraction of the
	// records provided before the churn (Provide from a random node) that
	// a FindProviders from a random live node found after it.
	RecordsFound float64
}

// Result is what a simulation measured.
type Result struct {
	Config Config // with defaults applied, K, Alpha and Beta the nodes'
	// JoinLookups and JoinRPCs count the lookups and their requests while
	// joining and in the self-lookup rounds (the nodes' Stats); Probes
	// every other request received meanwhile: admission probes and checks.
	JoinLookups int64
	JoinRPCs    int64
	Probes      int64
	TableSize   float64 // mean routing table size after setup
	// VirtualDuration is the virtual time the whole run took.
	VirtualDuration time.Duration
	Lookup          Phase
	Churn           *Phase // nil when Config.Churn is 0
	// Attacks holds each attack scenario and path setting, in the order
	// run; nil without Config.Attack.
	Attacks []AttackPhase
}

var (
	engineMu sync.Mutex
	engine   func(Config) (*Result, error)
)

// Register sets the function that runs simulations. Package kad calls it
// when it is initialised; nothing else should.
func Register(run func(Config) (*Result, error)) {
	engineMu.Lock()
	defer engineMu.Unlock()
	engine = run
}

// Run applies cfg's defaults, checks it, and runs the simulation. It must
// be called inside a testing/synctest bubble.
func Run(cfg Config) (*Result, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	engineMu.Lock()
	run := engine
	engineMu.Unlock()
	if run == nil {
		return nil, ErrNoEngine
	}
	return run(cfg)
}

// Sample is one measured lookup.
type Sample struct {
	Err      bool
	Recall   float64
	Requests int64
	Failed   int64
	Messages int64
	Hops     int64
	Latency  time.Duration
	Dead     int // stopped peers among those returned
}

// Summarize turns the samples of a phase into its figures.
func Summarize(samples []Sample) Phase {
	ph := Phase{Lookups: len(samples), RecallMin: 1}
	if len(samples) == 0 {
		return ph
	}
	hops := make([]int, 0, len(samples))
	lat := make([]time.Duration, 0, len(samples))
	var req, failed, msgs, sumHops int64
	perfect := 0
	for _, s := range samples {
		if s.Err {
			ph.Errors++
		}
		ph.Recall += s.Recall
		ph.RecallMin = min(ph.RecallMin, s.Recall)
		if s.Recall == 1 {
			perfect++
		}
		ph.DeadInResults += s.Dead
		req += s.Requests
		failed += s.Failed
		msgs += s.Messages
		sumHops += s.Hops
		hops = append(hops, int(s.Hops))
		lat = append(lat, s.Latency)
	}
	c := float64(len(samples))
	ph.Recall /= c
	ph.Perfect = float64(perfect) / c
	ph.RPCs = float64(req) / c
	ph.Failed = float64(failed) / c
	ph.Messages = float64(msgs) / c
	ph.Hops = float64(sumHops) / c
	slices.Sort(hops)
	slices.Sort(lat)
	ph.HopsP50, ph.HopsP95, ph.HopsMax = pct(hops, 0.5), pct(hops, 0.95), hops[len(hops)-1]
	ph.LatencyP50, ph.LatencyP95 = pct(lat, 0.5), pct(lat, 0.95)
	return ph
}

// pct is the p-quantile of sorted xs (nearest rank).
func pct[T any](xs []T, p float64) T {
	i := int(p*float64(len(xs))+0.5) - 1
	return xs[min(max(i, 0), len(xs)-1)]
}

// TrueClosest returns the k peers of cands closest to target, closest
// first.
func TrueClosest(target kbucket.ID, k int, cands []peer.ID, keys []kbucket.ID) []peer.ID {
	best := ClosestIndexes(target, k, keys, nil)
	out := make([]peer.ID, len(best))
	for x, j := range best {
		out[x] = cands[j]
	}
	return out
}

// ClosestIndexes returns the indexes of the k keys closest to target,
// closest first, leaving out every j for which skip (if not nil) is true.
func ClosestIndexes(target kbucket.ID, k int, keys []kbucket.ID, skip func(j int) bool) []int {
	best := make([]int, 0, k+1)
	for j := range keys {
		if skip != nil && skip(j) {
			continue
		}
		if len(best) == k && kbucket.CompareDistance(keys[j], keys[best[k-1]], target) >= 0 {
			continue
		}
		at := len(best)
		for at > 0 && kbucket.CompareDistance(keys[j], keys[best[at-1]], target) < 0 {
			at--
		}
		best = slices.Insert(best, at, j)
		if len(best) > k {
			best = best[:k]
		}
	}
	return best
}

// Recall is the fraction of want present in got.
func Recall(got, want []peer.ID) float64 {
	if len(want) == 0 {
		return 1
	}
	set := make(map[peer.ID]struct{}, len(got))
	for _, p := range got {
		set[p] = struct{}{}
	}
	hit := 0
	for _, p := range want {
		if _, ok := set[p]; ok {
			hit++
		}
	}
	return float64(hit) / float64(len(want))
}
