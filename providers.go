package kad

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/ipfs/go-cid"
	ds "github.com/ipfs/go-datastore"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/core/routing"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/kadlib/kad/internal/kbucket"
	"github.com/kadlib/kad/internal/pb"
	"github.com/kadlib/kad/internal/providers"
)

// With the core's peer routing and the values side, providers complete
// go-libp2p's content routing interface.
var _ routing.Routing = (*DHT)(nil)

// ErrProvidersDisabled is returned by Provide and FindProviders on a DHT
// built with DisableProviders.
var ErrProvidersDisabled = errors.New("kad: providers disabled")

// ErrNoPeerReached is returned by Provide when the announcement reached no
// peer at all: the record is stored locally only.
var ErrNoPeerReached = errors.New("kad: provide reached no peer")

// ErrInvalidCID is returned for an undefined CID, or one whose multihash
// is longer than peers accept as a provider key.
var ErrInvalidCID = errors.New("kad: invalid CID")

const (
	// maxProviderKeyLen is the longest provider key peers accept (go and
	// js reject longer ones): the multihash of the CID.
	maxProviderKeyLen = 80
	// providerSweepInterval is how often the built-in store is swept of
	// expired records, as go-libp2p-kad-dht does.
	providerSweepInterval = time.Hour
	// providerSweepBudget bounds the records one sweep step examines, so a
	// sweep never holds the store's lock for long.
	providerSweepBudget = 1024
	// providerCacheKeys is the size of the built-in store's hot-key cache.
	providerCacheKeys = 256
	// maxProvidersDecoded bounds the providers taken from one response.
	maxProvidersDecoded = 1000
)

// ProviderRecordStore keeps provider records: which peers announced that
// they have the content of a key. Keys are CID multihash bytes. Its method set
// is go-libp2p-kad-dht's providers.ProviderStore, so a store written for
// that library (its ProviderManager included) plugs in unchanged.
//
// A custom store owns its own expiry: the DHT sweeps only the built-in
// one. It must be safe for concurrent use.
type ProviderRecordStore interface {
	// AddProvider records that prov provides key. prov.Addrs may be empty
	// when the provider announced none.
	AddProvider(ctx context.Context, key []byte, prov peer.AddrInfo) error
	// GetProviders returns the live providers of key.
	GetProviders(ctx context.Context, key []byte) ([]peer.AddrInfo, error)
}

// providerSide is the providers side of a node: it owns the provider
// record store and answers ADD_PROVIDER and GET_PROVIDERS, announces
// (Provide, ProvideMany) and finds providers, and runs the store's sweep
// and the reprovider. Everything else it needs is passed in: the owner of
// its goroutines, the querier, and the table and the server as functions.
type providerSide struct {
	// Settings.
	self     peer.ID
	k        int // bucket size: peers a key is announced to
	beta     int // lookup resiliency: closest peers that must answer before a provide run counts as converged
	maxAddrs int // addresses kept per provider of an ADD_PROVIDER
	cfg      providersConfig
	rcfg     reprovideConfig

	// Owned state, set by newProviderSide.
	store   ProviderRecordStore // nil when disabled
	builtin *providers.Store    // nil for a custom store

	// Dependencies.
	own    *owner
	q      *querier
	log    *slog.Logger
	tel    *telemetry
	ds     ds.Batching         // the built-in store's records and the reprovider's keys
	ps     peerstore.Peerstore // providers' addresses
	filter *addrFilter
	// selfAddrs returns the addresses we are reached at.
	selfAddrs func() []ma.Multiaddr
	// closer returns the wire entries of the peers closest to key, less
	// from: the closer peers of an answer.
	closer func(key []byte, from peer.ID) []pb.Peer
	// encode makes the wire entry of p at addrs.
	encode func(p peer.ID, addrs []ma.Multiaddr) pb.Peer
	// nearest returns the table's n peers closest to target.
	nearest func(target kbucket.ID, n int) []peer.ID
	// tablePeers returns every peer of the table.
	tablePeers func() []peer.ID
	// touch marks the table bucket of target as just looked up.
	touch func(target kbucket.ID)
}

// builtinProviders adapts the pure store to ProviderRecordStore, reading
// the clock the store does not.
type builtinProviders struct{ s *providers.Store }

func (b builtinProviders) AddProvider(ctx context.Context, key []byte, prov peer.AddrInfo) error {
	return b.s.Add(ctx, key, prov.ID, prov.Addrs, time.Now())
}

func (b builtinProviders) GetProviders(ctx context.Context, key []byte) ([]peer.AddrInfo, error) {
	return b.s.Get(ctx, key, time.Now(), 0)
}

// newProviderSide returns s, which carries the settings and dependencies,
// with its record store opened: the custom one of the config, or the
// built-in one on s.ds with params. With providers disabled it has none,
// and every operation fails with ErrProvidersDisabled.
func newProviderSide(s providerSide, params providers.Config) (*providerSide, error) {
	if s.cfg.disabled {
		return &s, nil
	}
	if s.cfg.store != nil {
		s.store = s.cfg.store
		return &s, nil
	}
	st, err := providers.New(s.ds, params)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidOption, err)
	}
	s.builtin = st
	s.store = builtinProviders{st}
	return &s, nil
}

// enabled reports whether the side has a store, so serves and announces.
func (s *providerSide) enabled() bool { return s.store != nil }

// start starts the expiry sweep of the built-in store and the reprovider.
func (s *providerSide) start() {
	if s.builtin != nil {
		s.own.every(providerSweepInterval, s.sweep)
	}
	s.startReprovider()
}

// sweep runs one full pass over the built-in store, in bounded steps that
// each release its lock.
func (s *providerSide) sweep() {
	ctx := s.own.ctx
	removed := 0
	for ctx.Err() == nil {
		st, err := s.builtin.Sweep(ctx, time.Now(), providerSweepBudget)
		if err != nil {
			s.log.Warn("provider sweep failed", "err", err)
			return
		}
		removed += st.Removed
		if st.Done {
			break
		}
	}
	s.log.Debug("provider sweep", "removed", removed)
}

// providerKey is the wire key of c: its multihash, so CIDv0 and CIDv1 of
// the same content are one key.
func providerKey(c cid.Cid) ([]byte, error) {
	if !c.Defined() {
		return nil, fmt.Errorf("%w: undefined", ErrInvalidCID)
	}
	mh := c.Hash()
	if len(mh) == 0 || len(mh) > maxProviderKeyLen {
		return nil, fmt.Errorf("%w: multihash of %d bytes (at most %d)", ErrInvalidCID, len(mh), maxProviderKeyLen)
	}
	return []byte(mh), nil
}

func checkProviderKey(key []byte) error {
	if len(key) == 0 || len(key) > maxProviderKeyLen {
		return fmt.Errorf("%w: provider key of %d bytes", errBadRequest, len(key))
	}
	return nil
}

// Provide announces that this node has the content of c. The record is
// stored locally first; with announce it is also sent (ADD_PROVIDER) to
// the k peers closest to c's multihash. Sends start as soon as the lookup
// has found peers that are very likely among the closest, and Provide
// returns once half of k have been sent to; the rest of the
// lookup and the sends to the final k closest finish in the background,
// owned by the DHT. It fails with ErrNoPeerReached if no peer could be
// reached.
func (d *DHT) Provide(ctx context.Context, c cid.Cid, announce bool) (err error) {
	return d.provs.provide(ctx, c, announce)
}

// FindProviders returns up to count providers of c (count 0: all that the
// lookup finds), local ones first. It ends the lookup as soon as count are
// found. An error is returned only when nothing was found.
func (d *DHT) FindProviders(ctx context.Context, c cid.Cid, count int) (_ []peer.AddrInfo, err error) {
	return d.provs.findProviders(ctx, c, count)
}

// FindProvidersAsync streams the providers of c as they are found, local
// ones first, each peer once. The channel closes when count have been
// sent (count 0: no limit), when the lookup ends, or when ctx is done or
// the DHT closes; on any error it closes without sending. The caller need
// not drain it: the search stops with ctx.
func (d *DHT) FindProvidersAsync(ctx context.Context, c cid.Cid, count int) <-chan peer.AddrInfo {
	return d.provs.findProvidersAsync(ctx, c, count)
}

// provide is Provide.
func (s *providerSide) provide(ctx context.Context, c cid.Cid, announce bool) (err error) {
	ctx, span := s.tel.startSpan(ctx, "Provide")
	defer func() { endSpan(span, err) }()
	if s.own.isClosed() {
		return ErrClosed
	}
	store := s.store
	if store == nil {
		return ErrProvidersDisabled
	}
	key, err := providerKey(c)
	if err != nil {
		return fmt.Errorf("kad: provide: %w", err)
	}
	addrs := s.selfAddrs()
	if err := store.AddProvider(ctx, key, peer.AddrInfo{ID: s.self, Addrs: addrs}); err != nil {
		if !errors.Is(err, providers.ErrKeyFull) {
			return fmt.Errorf("kad: provide %s: store locally: %w", c, err)
		}
		// A key crowded with other providers is no reason not to announce.
		s.log.Debug("local provider store full for key", "cid", c)
	}
	if !announce {
		return nil
	}
	if len(addrs) == 0 {
		return fmt.Errorf("kad: provide %s: the host has no addresses to announce", c)
	}
	if err := s.announce(ctx, key, addrs); err != nil {
		return fmt.Errorf("kad: provide %s: %w", c, err)
	}
	return nil
}

// findProviders is FindProviders.
func (s *providerSide) findProviders(ctx context.Context, c cid.Cid, count int) (_ []peer.AddrInfo, err error) {
	ctx, span := s.tel.startSpan(ctx, "FindProviders")
	defer func() { endSpan(span, err) }()
	key, err := s.checkFind(c, count)
	if err != nil {
		return nil, fmt.Errorf("kad: find providers: %w", err)
	}
	var out []peer.AddrInfo
	err = s.find(ctx, key, count, func(_ context.Context, ai peer.AddrInfo) bool {
		out = append(out, ai)
		return true
	})
	if err != nil && len(out) == 0 {
		return nil, fmt.Errorf("kad: find providers %s: %w", c, err)
	}
	return out, nil
}

// findProvidersAsync is FindProvidersAsync.
func (s *providerSide) findProvidersAsync(ctx context.Context, c cid.Cid, count int) <-chan peer.AddrInfo {
	out := make(chan peer.AddrInfo)
	key, err := s.checkFind(c, count)
	if err != nil {
		s.log.Debug("find providers", "cid", c, "err", err)
		close(out)
		return out
	}
	ctx, cancel := context.WithCancel(ctx)
	stopLife := context.AfterFunc(s.own.ctx, cancel)
	end := func() {
		stopLife()
		cancel()
		close(out)
	}
	if !s.own.spawn(func() {
		defer end()
		err := s.find(ctx, key, count, func(ctx context.Context, ai peer.AddrInfo) bool {
			select {
			case out <- ai:
				return true
			case <-ctx.Done():
				return false
			}
		})
		if err != nil {
			s.log.Debug("find providers", "cid", c, "err", err)
		}
	}) {
		end()
	}
	return out
}

func (s *providerSide) checkFind(c cid.Cid, count int) ([]byte, error) {
	if s.own.isClosed() {
		return nil, ErrClosed
	}
	if s.store == nil {
		return nil, ErrProvidersDisabled
	}
	if count < 0 {
		return nil, fmt.Errorf("negative count %d", count)
	}
	return providerKey(c)
}

// find offers each provider of key, once, to emit: first those
// in the local store, then those the peers on the way to key's closest
// peers list. It stops when count were accepted (count 0: never), when
// emit refuses one, when the lookup ends, or with ctx. emit is never
// called concurrently nor after find returns.
func (s *providerSide) find(ctx context.Context, key []byte, count int, emit func(context.Context, peer.AddrInfo) bool) error {
	var (
		mu       sync.Mutex
		seen     = make(map[peer.ID]bool)
		sent     int
		finished bool // no more emits: count reached, refused, or returned
	)
	// offer emits ai unless it was seen, and reports whether to go on.
	offer := func(ctx context.Context, ai peer.AddrInfo) bool {
		mu.Lock()
		defer mu.Unlock()
		if finished || ctx.Err() != nil {
			return false
		}
		if seen[ai.ID] {
			return true
		}
		seen[ai.ID] = true
		if len(ai.Addrs) == 0 {
			ai.Addrs = s.ps.Addrs(ai.ID)
		}
		if !emit(ctx, ai) {
			finished = true
			return false
		}
		sent++
		if count > 0 && sent >= count {
			finished = true
		}
		return !finished
	}
	defer func() {
		mu.Lock()
		finished = true
		mu.Unlock()
	}()

	local, err := s.store.GetProviders(ctx, key)
	if err != nil {
		s.log.Warn("read local providers", "err", err)
	}
	for _, ai := range local {
		if ai.ID == s.self {
			ai.Addrs = s.selfAddrs()
		}
		if !offer(ctx, ai) {
			return nil
		}
	}

	_, err = s.q.runOpts(ctx, kbucket.KeyForBytes(key), func(ctx context.Context, p peer.ID) (queryAnswer, error) {
		resp, err := s.q.request(ctx, p, &pb.Message{Type: pb.GetProviders, Key: key})
		if err != nil {
			return queryAnswer{}, err
		}
		closer := decodePeers(resp.CloserPeers, s.self, maxCloserPeersFactor*s.k)
		s.q.learnAddrs(closer)
		provs := decodePeers(resp.ProviderPeers, "", maxProvidersDecoded)
		s.q.learnAddrs(provs)
		for _, ai := range provs {
			if ai.ID == s.self {
				ai.Addrs = s.selfAddrs()
			}
			if !offer(ctx, ai) {
				return queryAnswer{closer: closer, stop: true}, nil
			}
		}
		return queryAnswer{closer: closer}, nil
	}, lookupOpts{stopsEarly: count > 0})
	return err
}

// handleAddProvider stores the entries of an ADD_PROVIDER that announce
// the sender itself with at least one address; others are ignored, since
// nothing proves a third party provides anything. A request with nothing
// to store is rejected, as go-libp2p-kad-dht does. No answer is sent.
func (s *providerSide) handleAddProvider(ctx context.Context, from peer.ID, req *pb.Message) (*pb.Message, error) {
	if err := checkProviderKey(req.Key); err != nil {
		return nil, err
	}
	key := bytes.Clone(req.Key)
	stored := 0
	for _, e := range req.ProviderPeers {
		id, err := peer.IDFromBytes(e.ID)
		if err != nil || id != from {
			s.log.Debug("ADD_PROVIDER for another peer ignored", "from", from)
			continue
		}
		addrs := make([]ma.Multiaddr, 0, min(len(e.Addrs), s.maxAddrs))
		for _, b := range e.Addrs {
			if len(addrs) == s.maxAddrs {
				break
			}
			a, err := ma.NewMultiaddrBytes(bytes.Clone(b))
			if err != nil {
				continue
			}
			// js peers announce "<addr>/p2p/<id>": keep "<addr>", as the
			// peerstore does, so AddrInfos we serve and return carry no
			// /p2p/ suffix; an address naming another peer is dropped.
			if a, id := peer.SplitAddr(a); a != nil && (id == "" || id == from) {
				addrs = append(addrs, a)
			}
		}
		if len(addrs) == 0 {
			continue
		}
		s.ps.AddAddrs(from, addrs, s.cfg.addrTTL)
		if err := s.store.AddProvider(ctx, key, peer.AddrInfo{ID: from, Addrs: addrs}); err != nil {
			s.log.Debug("provider not stored", "from", from, "err", err)
			continue
		}
		stored++
	}
	if stored == 0 {
		return nil, fmt.Errorf("%w: ADD_PROVIDER with no valid provider", errBadRequest)
	}
	return nil, nil
}

// handleGetProviders answers with the providers of the key, the most
// recently announced first and at most k of them (responses stay small
// for peers with strict message limits, and each of the k closest peers
// answers a finder), plus the k closest peers we know.
func (s *providerSide) handleGetProviders(ctx context.Context, from peer.ID, req *pb.Message) (*pb.Message, error) {
	if err := checkProviderKey(req.Key); err != nil {
		return nil, err
	}
	resp := &pb.Message{Type: pb.GetProviders, Key: req.Key, ClusterLevelRaw: req.ClusterLevelRaw}
	provs, err := s.store.GetProviders(ctx, bytes.Clone(req.Key))
	if err != nil {
		s.log.Warn("read providers", "err", err)
	}
	for _, ai := range provs {
		if len(resp.ProviderPeers) == s.k {
			break
		}
		addrs := ai.Addrs
		switch {
		case ai.ID == s.self:
			addrs = s.selfAddrs()
		case len(addrs) == 0:
			addrs = s.ps.Addrs(ai.ID)
		}
		resp.ProviderPeers = append(resp.ProviderPeers, s.encode(ai.ID, addrs))
	}
	resp.CloserPeers = s.closer(req.Key, from)
	return resp, nil
}
