package kad

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"
	mh "github.com/multiformats/go-multihash"

	"github.com/kadlib/kad/internal/kbucket"
	isim "github.com/kadlib/kad/internal/sim"
)

// The simulator (package sim, over internal/sim) runs this: real nodes on
// a memNetwork, so it measures kad itself rather than a model of it.
func init() { isim.Register(simulate) }

// simSettle is how long the simulation lets background work (admission
// probes, the rest of a Provide, disconnect checks) finish between
// phases; in virtual time it costs only the work itself.
const simSettle = time.Minute

// simulate runs one simulation described by cfg (defaults applied) on
// real nodes over an in-memory network. It must run inside a
// testing/synctest bubble: outside one, every latency is a real wait.
//
// Nodes join in waves (one at first, then a twentieth of those already
// there, at most 32): each is built with up to cfg.Bootstraps random nodes
// of the earlier waves as its BootstrapPeers, and a wave's nodes run
// Bootstrap together before the next wave is added; every node then runs
// cfg.Rounds self lookups. The nodes' periodic upkeep is off
// (RandomWalk(false)): what runs is the joins, the lookups measured, and
// what the node does on its own in answer to them (admission probes on
// new connections, evictions after failures, disconnect checks).
func simulate(cfg isim.Config) (res *isim.Result, err error) {
	ctx := context.Background()
	log := cfg.Logger
	opts := []Option{
		Mode(ModeServer), RandomWalk(false),
		Logger(slog.New(slog.DiscardHandler)),
	}
	if cfg.K > 0 {
		opts = append(opts, BucketSize(cfg.K))
	}
	if cfg.Alpha > 0 {
		opts = append(opts, Concurrency(cfg.Alpha))
	}
	if cfg.Beta > 0 {
		opts = append(opts, Resiliency(cfg.Beta))
	}
	if cfg.ConvergeAlpha > 0 {
		opts = append(opts, ConvergeConcurrency(cfg.ConvergeAlpha))
	}
	// The settings the nodes will run with, checked as New checks them.
	nc := defaults()
	for _, o := range opts {
		if err := o(&nc); err != nil {
			return nil, fmt.Errorf("%w: %v", isim.ErrInvalidConfig, err)
		}
	}
	if err := nc.validate(); err != nil {
		return nil, fmt.Errorf("%w: %v", isim.ErrInvalidConfig, err)
	}
	cfg.K, cfg.Alpha, cfg.Beta = nc.table.bucketSize, nc.lookup.concurrency, nc.lookup.resiliency
	k := cfg.K

	start := time.Now()
	mn := newMemNetwork(cfg.Seed, cfg.LatencyMin, cfg.LatencyMax)
	mn.failDelay = cfg.FailDelay
	defer func() {
		if cerr := mn.close(); cerr != nil && err == nil {
			res, err = nil, fmt.Errorf("sim: closing the network: %w", cerr)
		}
	}()
	rng := rand.New(rand.NewPCG(cfg.Seed, 0x51a1))
	res = &isim.Result{Config: cfg}
	s := &simNet{nodes: make([]*DHT, cfg.N), dead: make([]bool, cfg.N), index: make(map[peer.ID]int, cfg.N), k: k, attacking: cfg.Attack != nil}

	// Setup: nodes join in waves, each node through up to Bootstraps
	// random nodes of the earlier waves. A wave is a twentieth of the
	// nodes already there (1 to 32): joining one at a time leaves a
	// 10,000-node setup waiting on one lookup at a time.
	for lo := 0; lo < cfg.N; {
		hi := min(cfg.N, lo+min(max(lo/20, 1), 32))
		for i := lo; i < hi; i++ {
			var boots []peer.AddrInfo
			var picked []int
			for j := 0; j < cfg.Bootstraps && j < lo; j++ {
				if b := rng.IntN(lo); !slices.Contains(picked, b) {
					picked = append(picked, b)
					boots = append(boots, memInfo(s.nodes[b]))
				}
			}
			nopts := append(slices.Clip(opts), BootstrapPeers(boots...))
			if cfg.Attack != nil {
				nopts = append(nopts, simAttackOpts(cfg.Attack, i)...)
			}
			d, err := mn.addNode(nopts...)
			if err != nil {
				return nil, fmt.Errorf("sim: node %d: %w", i, err)
			}
			if cfg.Attack != nil {
				s.cabal.arm(d, i%4 >= 2)
			}
			s.nodes[i] = d
			s.index[d.self] = i
			s.ids = append(s.ids, d.self)
			s.keys = append(s.keys, kbucket.PeerKey(d.self))
		}
		if lo > 0 {
			errs := make([]error, hi-lo)
			var wg sync.WaitGroup
			for i := lo; i < hi; i++ {
				wg.Go(func() {
					if err := s.nodes[i].Bootstrap(ctx); err != nil {
						errs[i-lo] = fmt.Errorf("sim: node %d joining: %w", i, err)
					}
				})
			}
			wg.Wait()
			if err := errors.Join(errs...); err != nil {
				return nil, err
			}
		}
		if step := max(cfg.N/10, 1); hi/step > lo/step {
			log.Info("joined", "nodes", hi, "of", cfg.N, "virtual", time.Since(start))
		}
		lo = hi
	}
	for range max(cfg.Rounds, 0) {
		for _, d := range s.nodes {
			_, _ = d.GetClosestPeers(ctx, string(d.self))
		}
	}
	time.Sleep(simSettle)
	var inbound int64
	for _, d := range s.nodes {
		st := d.Stats()
		res.JoinLookups += st.Lookups
		res.JoinRPCs += st.LookupRequests
		inbound += st.InboundRequests
		res.TableSize += float64(d.rt.Size())
	}
	res.Probes = inbound - res.JoinRPCs
	res.TableSize /= float64(cfg.N)
	log.Info("setup done", "lookups", res.JoinLookups, "rpcs", res.JoinRPCs, "table", res.TableSize, "virtual", time.Since(start))

	res.Lookup = s.measure(ctx, rng, cfg.Lookups)
	log.Info("lookups measured", "recall", res.Lookup.Recall, "rpcs", res.Lookup.RPCs, "hops", res.Lookup.Hops)

	if cfg.Attack != nil {
		sybils, attacks, err := s.attack(ctx, cfg, mn, opts, rng)
		if err != nil {
			return nil, err
		}
		res.Attacks = attacks
		// The Sybils leave; the adversaries are honest again.
		for _, d := range sybils {
			if err := mn.stop(d); err != nil {
				return nil, fmt.Errorf("sim: stopping a sybil: %w", err)
			}
		}
		time.Sleep(simSettle)
	}

	// Records for the churn phase are provided before anyone stops.
	var records []cid.Cid
	if cfg.Churn > 0 {
		for range cfg.Lookups {
			h, err := mh.Sum(s.randomKey(rng), mh.SHA2_256, -1)
			if err != nil {
				return nil, err
			}
			c := cid.NewCidV1(cid.Raw, h)
			if err := s.nodes[s.randomLive(rng)].Provide(ctx, c, true); err != nil {
				return nil, fmt.Errorf("sim: provide: %w", err)
			}
			records = append(records, c)
		}
		time.Sleep(simSettle) // the rest of each Provide's sends
	}

	if cfg.Churn > 0 {
		stop := int(cfg.Churn * float64(cfg.N))
		for _, i := range rng.Perm(cfg.N)[:stop] {
			s.dead[i] = true
			halt := mn.vanish
			if cfg.DisconnectChecks {
				halt = mn.stop
			}
			if err := halt(s.nodes[i]); err != nil {
				return nil, fmt.Errorf("sim: stopping node %d: %w", i, err)
			}
		}
		time.Sleep(simSettle) // the disconnect checks
		ph := s.measure(ctx, rng, cfg.Lookups)
		found := 0
		for _, c := range records {
			for range s.nodes[s.randomLive(rng)].FindProvidersAsync(ctx, c, 1) {
				found++
			}
		}
		ph.RecordsFound = float64(found) / float64(len(records))
		res.Churn = &ph
		log.Info("churn measured", "recall", ph.Recall, "records", ph.RecordsFound)
	}
	res.VirtualDuration = time.Since(start)
	return res, nil
}

// simNet is the nodes of a simulation, in the order they joined.
type simNet struct {
	nodes []*DHT
	ids   []peer.ID
	keys  []kbucket.ID
	index map[peer.ID]int
	dead  []bool
	k     int
	// The attack scenarios': who lies.
	cabal     simCabal
	attacking bool // the run has attack scenarios: odd nodes run DisjointPaths
}

// simLookupTail is how long measure waits, in virtual time, after a
// lookup returns before reading its counters: longer than a dial on the
// simulated links.
const simLookupTail = 2 * time.Second

// measure runs count GetClosestPeers of random keys, one at a time, from
// random live nodes and summarises them. A node runs one lookup at a time
// and nothing in the background, so the change in its Stats is the
// lookup's.
func (s *simNet) measure(ctx context.Context, rng *rand.Rand, count int) isim.Phase {
	samples := make([]isim.Sample, 0, count)
	for range count {
		i := s.randomLive(rng)
		d := s.nodes[i]
		key := s.randomKey(rng)
		in0 := s.inbound()
		before := d.Stats()
		start := time.Now()
		got, err := d.GetClosestPeers(ctx, string(key))
		lat := time.Since(start)
		// Let the dials the lookup did not wait for (vouches) finish
		// before reading the counters: a request it then no longer needs
		// is taken back from its count, and one it still sent arrives.
		time.Sleep(simLookupTail)
		after := d.Stats()
		sm := isim.Sample{
			Err:      err != nil,
			Requests: after.LookupRequests - before.LookupRequests,
			Failed:   after.OutboundFailed - before.OutboundFailed,
			Hops:     after.LookupHops - before.LookupHops,
			Messages: s.inbound() - in0,
			Latency:  lat,
			Recall:   isim.Recall(got, s.trueClosest(kbucket.KeyForBytes(key), i)),
		}
		for _, p := range got {
			if j, ok := s.index[p]; !ok || s.dead[j] {
				sm.Dead++
			}
		}
		samples = append(samples, sm)
	}
	return isim.Summarize(samples)
}

// inbound is the requests every node received so far.
func (s *simNet) inbound() int64 {
	var n int64
	for _, d := range s.nodes {
		n += d.tel.stats.inbound.Load()
	}
	return n
}

// trueClosest is the k live nodes closest to target, but for node self.
func (s *simNet) trueClosest(target kbucket.ID, self int) []peer.ID {
	ids := make([]peer.ID, 0, len(s.ids))
	keys := make([]kbucket.ID, 0, len(s.ids))
	for j := range s.ids {
		if j != self && !s.dead[j] {
			ids = append(ids, s.ids[j])
			keys = append(keys, s.keys[j])
		}
	}
	return isim.TrueClosest(target, s.k, ids, keys)
}

// randomKey is 32 random bytes: a key to look up or a record's content.
func (s *simNet) randomKey(rng *rand.Rand) []byte {
	b := make([]byte, 32)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

// randomLive picks a live node uniformly; in an attack run, one of the
// even nodes, which run with one path (DisjointPaths(1)), so the lookup
// and churn phases measure what a run without attacks does.
func (s *simNet) randomLive(rng *rand.Rand) int {
	for {
		i := rng.IntN(len(s.nodes))
		if s.attacking && i%2 == 1 {
			continue
		}
		if !s.dead[i] {
			return i
		}
	}
}
