package kad

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	mh "github.com/multiformats/go-multihash"

	"github.com/kadlib/kad/internal/kbucket"
	"github.com/kadlib/kad/internal/pb"
	isim "github.com/kadlib/kad/internal/sim"
)

// The attack scenarios of the simulator (isim.Attack): adversaries are
// kad nodes whose handlers lie once turned adversarial.

// simNS is the namespace of the values the attack scenarios write.
const simNS = "sim"

// simCabal is what the active adversaries share: who they are (an
// immutable snapshot, swapped whole between scenarios) and the stale
// records they kept.
type simCabal struct {
	members atomic.Pointer[simMembers]
	lies    atomic.Int64 // requests answered falsely
	stale   sync.Map     // value key -> version 1, validly tagged
}

type simMembers struct {
	set     map[peer.ID]bool
	ids     []peer.ID
	keys    []kbucket.ID
	entries []pb.Peer
}

func (c *simCabal) set(nodes []*DHT) {
	m := &simMembers{set: make(map[peer.ID]bool, len(nodes))}
	for _, d := range nodes {
		m.set[d.self] = true
		m.ids = append(m.ids, d.self)
		m.keys = append(m.keys, kbucket.PeerKey(d.self))
		var addrs [][]byte
		for _, a := range d.selfAddrs() {
			addrs = append(addrs, a.Bytes())
		}
		m.entries = append(m.entries, pb.Peer{ID: []byte(d.self), Addrs: addrs})
	}
	c.members.Store(m)
}

// closest is the wire entries of the k members closest to key, but for
// self and the asker.
func (m *simMembers) closest(key []byte, k int, self, from peer.ID) []pb.Peer {
	best := isim.ClosestIndexes(kbucket.KeyForBytes(key), k, m.keys, func(j int) bool { return m.ids[j] == self || m.ids[j] == from })
	out := make([]pb.Peer, len(best))
	for x, j := range best {
		out[x] = m.entries[j]
	}
	return out
}

// arm wraps d's handlers: while d is a member of the cabal they lie, as
// Attack describes; otherwise d answers as kad does. It must run before
// anyone can send d a request.
func (c *simCabal) arm(d *DHT, forger bool) {
	honest := make(map[int32]handlerFunc, len(d.srv.handlers))
	for t, h := range d.srv.handlers {
		honest[t] = h
	}
	k := d.cfg.table.bucketSize
	lie := func(t pb.MessageType, h func(m *simMembers, from peer.ID, req *pb.Message) (*pb.Message, error)) {
		d.srv.handle(t, func(ctx context.Context, from peer.ID, req *pb.Message) (*pb.Message, error) {
			if m := c.members.Load(); m != nil && m.set[d.self] {
				c.lies.Add(1)
				return h(m, from, req)
			}
			return honest[int32(t)](ctx, from, req)
		})
	}
	lie(pb.FindNode, func(m *simMembers, from peer.ID, req *pb.Message) (*pb.Message, error) {
		return &pb.Message{Type: pb.FindNode, Key: req.Key, CloserPeers: m.closest(req.Key, k, d.self, from)}, nil
	})
	lie(pb.GetProviders, func(m *simMembers, from peer.ID, req *pb.Message) (*pb.Message, error) {
		return &pb.Message{Type: pb.GetProviders, Key: req.Key, CloserPeers: m.closest(req.Key, k, d.self, from)}, nil
	})
	lie(pb.AddProvider, func(*simMembers, peer.ID, *pb.Message) (*pb.Message, error) { return nil, nil })
	lie(pb.PutValue, func(_ *simMembers, _ peer.ID, req *pb.Message) (*pb.Message, error) {
		return &pb.Message{Type: pb.PutValue, Key: req.Key, Record: req.Record}, nil
	})
	lie(pb.GetValue, func(m *simMembers, from peer.ID, req *pb.Message) (*pb.Message, error) {
		key := string(req.Key)
		val := isim.Forge(key, 1<<32)
		if v, ok := c.stale.Load(key); ok && !forger {
			val = v.([]byte)
		}
		return &pb.Message{Type: pb.GetValue, Key: req.Key, Record: &pb.Record{Key: req.Key, Value: val},
			CloserPeers: m.closest(req.Key, k, d.self, from)}, nil
	})
}

// simAttackOpts are the options every node of an attack run adds: the
// simulation's validator, and on odd nodes the compared path setting.
func simAttackOpts(a *isim.Attack, i int) []Option {
	opts := []Option{NamespacedValidator(simNS, isim.Validator{})}
	if i%2 == 1 {
		opts = append(opts, DisjointPaths(a.Disjoint))
	}
	return opts
}

// attack runs cfg.Attack's scenarios on the joined network s.
// It returns the Sybil nodes it added, still running.
func (s *simNet) attack(ctx context.Context, cfg isim.Config, mn *memNetwork, opts []Option, rng *rand.Rand) (sybils []*DHT, _ []isim.AttackPhase, err error) {
	a := cfg.Attack
	order := rng.Perm(len(s.nodes))
	var out []isim.AttackPhase
	for _, f := range a.Fractions {
		adv := order[:int(f*float64(len(s.nodes)))]
		bad := make([]*DHT, len(adv))
		for x, i := range adv {
			bad[x] = s.nodes[i]
		}
		s.cabal.set(bad)
		for _, d := range []int{1, a.Disjoint} {
			ph, err := s.attackPhase(ctx, rng, a, d, nil)
			if err != nil {
				return nil, nil, err
			}
			ph.Kind, ph.Fraction = "collusion", f
			cfg.Logger.Info("attack measured", "kind", ph.Kind, "fraction", f, "disjoint", d,
				"recall", ph.Recall, "value", ph.ValueOK, "provider", ph.ProviderOK)
			out = append(out, ph)
		}
	}
	s.cabal.set(nil)
	if a.Sybils < 0 {
		return nil, out, nil
	}
	size := a.Sybils
	if size == 0 {
		size = s.k
	}
	// One cluster per path setting, around a value key and a CID each.
	targets := make([]simTarget, 2)
	for x := range targets {
		targets[x].key = "/" + simNS + "/sybil-target-" + strconv.Itoa(x)
		h, err := mh.Sum([]byte("sybil target "+strconv.Itoa(x)), mh.SHA2_256, -1)
		if err != nil {
			return sybils, nil, err
		}
		targets[x].c = cid.NewCidV1(cid.Raw, h)
		for _, tk := range []kbucket.ID{kbucket.KeyForBytes([]byte(targets[x].key)), kbucket.KeyForBytes(targets[x].c.Hash())} {
			keys := simGrind(cfg.Seed+uint64(len(sybils)), tk, size, bits.Len(uint(len(s.nodes)))+2)
			for _, key := range keys {
				d, err := s.join(ctx, mn, rng, key, append(slices.Clip(opts), simAttackOpts(a, 0)...))
				if err != nil {
					return sybils, nil, err
				}
				sybils = append(sybils, d)
			}
		}
	}
	time.Sleep(simSettle)
	s.cabal.set(sybils)
	for x, d := range []int{1, a.Disjoint} {
		ph, err := s.attackPhase(ctx, rng, a, d, &targets[x])
		if err != nil {
			return sybils, nil, err
		}
		ph.Kind, ph.Fraction = "sybil", float64(len(sybils))/float64(len(s.nodes))
		cfg.Logger.Info("attack measured", "kind", ph.Kind, "sybils", len(sybils), "disjoint", d,
			"recall", ph.Recall, "value", ph.ValueOK, "provider", ph.ProviderOK)
		out = append(out, ph)
	}
	s.cabal.set(nil)
	return sybils, out, nil
}

// simTarget is what a Sybil cluster surrounds: a value key and a CID.
type simTarget struct {
	key string
	c   cid.Cid
}

// simGrind returns n keys whose peer ids share at least prefix leading
// bits with target.
func simGrind(seed uint64, target kbucket.ID, n, prefix int) []crypto.PrivKey {
	var sd [32]byte
	binary.LittleEndian.PutUint64(sd[:], seed)
	binary.LittleEndian.PutUint64(sd[8:], 0x5b11)
	src := rand.NewChaCha8(sd)
	var out []crypto.PrivKey
	for len(out) < n {
		key, _, err := crypto.GenerateEd25519Key(src)
		if err != nil {
			continue
		}
		id, err := peer.IDFromPrivateKey(key)
		if err != nil {
			continue
		}
		if kbucket.CommonPrefixLen(kbucket.PeerKey(id), target) >= prefix {
			out = append(out, key)
		}
	}
	return out
}

// join adds a node with identity key, armed but honest, joining through
// three random live nodes.
func (s *simNet) join(ctx context.Context, mn *memNetwork, rng *rand.Rand, key crypto.PrivKey, opts []Option) (*DHT, error) {
	var boots []peer.AddrInfo
	for range 3 {
		boots = append(boots, memInfo(s.nodes[s.randomLive(rng)]))
	}
	d, err := mn.addNodeWithKey(key, append(opts, BootstrapPeers(boots...))...)
	if err != nil {
		return nil, fmt.Errorf("sim: sybil: %w", err)
	}
	s.cabal.arm(d, false)
	if err := d.Bootstrap(ctx); err != nil {
		return nil, fmt.Errorf("sim: sybil joining: %w", err)
	}
	return d, nil
}

// attackPhase measures one scenario with the honest nodes whose
// DisjointPaths is d: lookups of random keys, and values written and
// CIDs provided then read back by other honest nodes. With a target, the
// keys are the target's (one write, Records reads), as a Sybil attack
// aims at one key.
func (s *simNet) attackPhase(ctx context.Context, rng *rand.Rand, a *isim.Attack, d int, tg *simTarget) (ph isim.AttackPhase, err error) {
	ph = isim.AttackPhase{Disjoint: d, RecallMin: 1}
	lies := s.cabal.lies.Load()
	defer func() { ph.Lies = s.cabal.lies.Load() - lies }()
	// Honest nodes of the group: odd nodes run a.Disjoint, even ones 1.
	var group []int
	m := s.cabal.members.Load()
	for i := range s.nodes {
		if (m == nil || !m.set[s.ids[i]]) && !s.dead[i] && (i%2 == 1) == (d != 1 || a.Disjoint == 1) {
			group = append(group, i)
		}
	}
	if len(group) < 2 {
		return ph, errors.New("sim: attack: too few honest nodes in a group")
	}
	pick := func() int { return group[rng.IntN(len(group))] }
	type job struct {
		origin, writer, provider int
		key                      string
		c                        cid.Cid
		lookup                   []byte
	}
	jobs := make([]job, a.Records)
	for x := range jobs {
		j := &jobs[x]
		j.origin, j.writer, j.provider = pick(), pick(), pick()
		for j.writer == j.origin || j.provider == j.origin {
			j.writer, j.provider = pick(), pick()
		}
		if tg != nil {
			j.key, j.c, j.lookup = tg.key, tg.c, []byte(tg.key)
			continue
		}
		j.key = "/" + simNS + "/" + strconv.FormatUint(rng.Uint64(), 16)
		h, err := mh.Sum(s.randomKey(rng), mh.SHA2_256, -1)
		if err != nil {
			return ph, err
		}
		j.c = cid.NewCidV1(cid.Raw, h)
		j.lookup = s.randomKey(rng)
	}
	if tg != nil {
		for x := range jobs {
			jobs[x].writer, jobs[x].provider = jobs[0].writer, jobs[0].provider
			for jobs[x].origin == jobs[0].writer || jobs[x].origin == jobs[0].provider {
				jobs[x].origin = pick()
			}
		}
	}
	var mu sync.Mutex
	each := func(fn func(j *job)) {
		var wg sync.WaitGroup
		sem := make(chan struct{}, 16)
		for x := range jobs {
			wg.Go(func() {
				sem <- struct{}{}
				defer func() { <-sem }()
				fn(&jobs[x])
			})
		}
		wg.Wait()
	}
	// Writes: version 1 is what the adversaries kept; version 2 is put.
	writes := jobs
	if tg != nil {
		writes = jobs[:1]
	}
	for x := range writes {
		s.cabal.stale.Store(writes[x].key, isim.Sign(writes[x].key, 1))
	}
	var wg sync.WaitGroup
	for x := range writes {
		j := &writes[x]
		wg.Go(func() {
			perr := s.nodes[j.writer].PutValue(ctx, j.key, isim.Sign(j.key, 2))
			verr := s.nodes[j.provider].Provide(ctx, j.c, true)
			mu.Lock()
			defer mu.Unlock()
			if perr != nil {
				ph.PutErrors++
			}
			if verr != nil {
				ph.ProvideErrors++
			}
		})
	}
	wg.Wait()
	time.Sleep(simSettle) // the rest of each Provide's and PutValue's sends
	var valueOK, provOK int
	var recall, rpcs float64
	each(func(j *job) {
		o := s.nodes[j.origin]
		before := o.Stats().LookupRequests
		got, _ := o.GetClosestPeers(ctx, string(j.lookup))
		after := o.Stats().LookupRequests
		r := isim.Recall(got, s.trueHonest(kbucket.KeyForBytes(j.lookup), j.origin, tg != nil))
		val, _ := o.GetValue(ctx, j.key)
		found := false
		fctx, cancel := context.WithCancel(ctx)
		for p := range o.FindProvidersAsync(fctx, j.c, 1) {
			if p.ID == s.nodes[j.provider].self {
				found = true
			}
		}
		cancel()
		mu.Lock()
		defer mu.Unlock()
		recall += r
		ph.RecallMin = min(ph.RecallMin, r)
		rpcs += float64(after - before)
		if bytes.Equal(val, isim.Sign(j.key, 2)) {
			valueOK++
		}
		if found {
			provOK++
		}
	})
	n := float64(len(jobs))
	ph.Lookups, ph.Reads = len(jobs), len(jobs)
	ph.Recall, ph.RPCs = recall/n, rpcs/n
	ph.ValueOK, ph.ProviderOK = float64(valueOK)/n, float64(provOK)/n
	return ph, nil
}

// trueHonest is what an attacked lookup for target from node self should
// find. With outranked false, the honest live nodes among the k live nodes
// closest to target, adversaries included: adversaries can lie but not
// move, so those truly close take their places in any result, and what an
// eclipse can take away is the honest rest. With outranked true (a Sybil
// cluster, placed to outrank every honest node), the k honest live nodes
// closest to target, which a result of k peers misses wherever the
// cluster is closer.
func (s *simNet) trueHonest(target kbucket.ID, self int, outranked bool) []peer.ID {
	m := s.cabal.members.Load()
	ids := make([]peer.ID, 0, len(s.ids))
	keys := make([]kbucket.ID, 0, len(s.ids))
	for j := range s.ids {
		if j != self && !s.dead[j] && (!outranked || m == nil || !m.set[s.ids[j]]) {
			ids = append(ids, s.ids[j])
			keys = append(keys, s.keys[j])
		}
	}
	if outranked || m == nil {
		return isim.TrueClosest(target, s.k, ids, keys)
	}
	for _, id := range m.ids {
		if !slices.Contains(ids, id) { // sybils are not among s.ids
			ids = append(ids, id)
			keys = append(keys, kbucket.PeerKey(id))
		}
	}
	var honest []peer.ID
	for _, p := range isim.TrueClosest(target, s.k, ids, keys) {
		if !m.set[p] {
			honest = append(honest, p)
		}
	}
	return honest
}
