package kad

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"go.opentelemetry.io/otel/attribute"

	"github.com/kadlib/kad/internal/kbucket"
	"github.com/kadlib/kad/internal/lookup"
	"github.com/kadlib/kad/internal/pb"
)

// ErrNoPeers is returned when a lookup has no peer to start from: the
// routing table is empty (call Bootstrap) or every peer failed.
var ErrNoPeers = errors.New("kad: no peers to query")

// maxCloserPeers caps the peers taken from one response, so a hostile
// peer listing thousands costs nothing.
const maxCloserPeersFactor = 2

// Stats are cumulative counters of a DHT's activity, for operators and
// benchmarks. Take two snapshots and subtract to measure an interval.
type Stats struct {
	Lookups         int64 // lookups run
	LookupRequests  int64 // requests sent by lookups
	LookupHops      int64 // sum over lookups of their hop count
	OutboundFailed  int64 // requests that failed or timed out
	InboundRequests int64 // requests received
}

type stats struct {
	lookups, lookupRequests, lookupHops, outboundFailed, inbound atomic.Int64
}

// Stats returns the counters so far.
func (d *DHT) Stats() Stats {
	return Stats{
		Lookups:         d.tel.stats.lookups.Load(),
		LookupRequests:  d.tel.stats.lookupRequests.Load(),
		LookupHops:      d.tel.stats.lookupHops.Load(),
		OutboundFailed:  d.tel.stats.outboundFailed.Load(),
		InboundRequests: d.tel.stats.inbound.Load(),
	}
}

// queryFunc is what a lookup asks each peer. It returns the closer peers
// the peer gave, and stop=true to end the lookup early (found what it was
// looking for).
type queryFunc func(ctx context.Context, p peer.ID) (closer []peer.AddrInfo, stop bool, err error)

// lookupResult is what a lookup found.
type lookupResult struct {
	closest []peer.ID // the k closest peers that answered, closest first
	stats   lookup.Stats
	stopped bool // ended early by a queryFunc
}

type queryReply struct {
	p      peer.ID
	closer []peer.AddrInfo
	stop   bool
	err    error
}

// runLookup drives an internal/lookup state machine for target: it turns
// the machine's decisions into requests, one goroutine each, and feeds the
// answers back. It is the only place lookups touch the network. It returns
// when the lookup ends, fn stops it, or ctx is done; requests still in
// flight are cancelled and finish in the background, owned by the DHT.
func (d *DHT) runLookup(ctx context.Context, target kbucket.ID, fn queryFunc) (*lookupResult, error) {
	return d.runLookupOpts(ctx, target, fn, lookupOpts{})
}

// lookupOpts tune one lookup.
type lookupOpts struct {
	hook lookupHook
	// stopsEarly says fn may end the lookup before it converges (FindPeer,
	// a GetValue quorum, a FindProviders count): requests sent ahead to
	// peers near the target (lookup.Config.Near) would then be wasted.
	stopsEarly bool
}

// lookupHook is shown the lookup after each answer or failure, on the
// driver goroutine, so a caller can act before the lookup ends (optimistic
// provide). It must not block, must not keep l, and may only read it.
type lookupHook func(l *lookup.Lookup)

// runLookupWith is runLookup with a progress hook.
func (d *DHT) runLookupWith(ctx context.Context, target kbucket.ID, fn queryFunc, hook lookupHook) (*lookupResult, error) {
	return d.runLookupOpts(ctx, target, fn, lookupOpts{hook: hook})
}

// runLookupOpts is runLookup with options.
func (d *DHT) runLookupOpts(ctx context.Context, target kbucket.ID, fn queryFunc, o lookupOpts) (*lookupResult, error) {
	hook := o.hook
	if d.own.isClosed() {
		return nil, ErrClosed
	}
	ctx, cancel := context.WithTimeout(ctx, d.cfg.lookup.timeout)
	defer cancel()
	stopLife := context.AfterFunc(d.ctx, cancel)
	defer stopLife()

	k := d.cfg.table.bucketSize
	seeds := d.seedsFor(d.rt.nearest(target, k))
	if len(seeds) == 0 {
		return nil, ErrNoPeers
	}
	l := lookup.New(target, d.self, seeds, lookup.Config{
		K: k, Alpha: d.cfg.lookup.concurrency, ConvergeAlpha: d.cfg.lookup.convergeAlpha, Beta: d.cfg.lookup.resiliency, Disjoint: d.cfg.lookup.disjointPaths,
		Near: d.lookupNear(k, o.stopsEarly),
	})
	d.tel.stats.lookups.Add(1)
	// Near requests can take the requests in flight up to max(alpha, k).
	replies := make(chan queryReply, max(d.cfg.lookup.concurrency, k))
	res := &lookupResult{}
	inflight := 0
	defer func() {
		st := l.Stats()
		res.stats = st
		d.tel.stats.lookupRequests.Add(int64(st.Requests))
		d.tel.stats.lookupHops.Add(int64(st.Hops))
		d.tel.observeLookup(st.Hops, st.Requests)
	}()
	for {
		send, done := l.Next()
		if done {
			break
		}
		for _, p := range send {
			if !d.own.spawn(func() {
				closer, stop, err := fn(ctx, p)
				select {
				case replies <- queryReply{p: p, closer: closer, stop: stop, err: err}:
				case <-ctx.Done():
				}
			}) {
				res.closest = l.Result()
				return res, fmt.Errorf("kad: lookup: %w", ErrClosed)
			}
			inflight++
		}
		if inflight == 0 {
			break
		}
		select {
		case <-ctx.Done():
			res.closest = l.Result()
			return res, fmt.Errorf("kad: lookup: %w", ctx.Err())
		case r := <-replies:
			inflight--
			if r.err != nil {
				l.OnFailure(r.p)
				if ctx.Err() == nil {
					d.tel.stats.outboundFailed.Add(1)
					d.noteFailure(r.p, r.err)
				}
				if hook != nil {
					hook(l)
				}
				continue
			}
			d.admit(r.p)
			l.OnSuccess(r.p, d.candidates(r.closer))
			if hook != nil {
				hook(l)
			}
			if r.stop {
				res.stopped = true
				res.closest = l.Result()
				return res, nil
			}
		}
	}
	res.closest = l.Result()
	return res, nil
}

// lookupNear is the Near distance of a lookup (lookup.Config.Near): the
// estimated distance from a key to its k-th closest peer, from our own
// closest peers, with lookup.NearFactor's margin. 0 (off) for a lookup
// that may stop early, and with ConvergeConcurrency set, whose point is to
// send fewer requests.
func (d *DHT) lookupNear(k int, stopsEarly bool) float64 {
	if stopsEarly || d.cfg.lookup.convergeAlpha != 0 {
		return 0
	}
	return lookup.NearFactor * d.kthDistance(k)
}

// kthDistance estimates the distance from any key to its k-th closest
// peer from our own closest peers (kbucket.KthDistance).
func (d *DHT) kthDistance(k int) float64 {
	self := kbucket.PeerKey(d.self)
	return kbucket.KthDistance(self, d.rt.nearest(self, k), k)
}

// noteFailure evicts a table peer we could not reach at all, and one that
// failed several requests in a row: one slow answer is not death, and some
// peers refuse single requests (js rejects providers of non-sha256 keys).
func (d *DHT) noteFailure(p peer.ID, err error) {
	if !d.msgr.connected(p) {
		d.rt.remove(p)
		return
	}
	d.rt.failed(p, 3)
}

// learnAddrs remembers the addresses of peers a response listed, briefly,
// so the lookup can dial them.
func (d *DHT) learnAddrs(peers []peer.AddrInfo) {
	ps := d.ps
	for _, ai := range peers {
		if len(ai.Addrs) > 0 && ai.ID != d.self {
			ps.AddAddrs(ai.ID, ai.Addrs, peerstore.TempAddrTTL)
		}
	}
}

// request sends req to p and records the outcome.
func (d *DHT) request(ctx context.Context, p peer.ID, req *pb.Message) (resp *pb.Message, err error) {
	start := time.Now()
	defer func() { d.tel.observeOutbound(req.Type, start, err) }()
	resp, err = d.msgr.request(ctx, p, req)
	if err != nil {
		return nil, err
	}
	if resp.Type != req.Type {
		return nil, fmt.Errorf("kad: %s answered %s with %s", p, req.Type, resp.Type)
	}
	d.trimInbound(resp)
	return resp, nil
}

// findNode asks p for the peers closest to key.
func (d *DHT) findNode(ctx context.Context, p peer.ID, key []byte) ([]peer.AddrInfo, error) {
	resp, err := d.request(ctx, p, &pb.Message{Type: pb.FindNode, Key: key})
	if err != nil {
		return nil, err
	}
	closer := decodePeers(resp.CloserPeers, d.self, maxCloserPeersFactor*d.cfg.table.bucketSize)
	d.learnAddrs(closer)
	return closer, nil
}

// GetClosestPeers returns the k peers closest to key (by sha2-256 of the
// key bytes) that answered, closest first. For a peer's own position use
// string(peerID) as the key.
func (d *DHT) GetClosestPeers(ctx context.Context, key string) (_ []peer.ID, err error) {
	ctx, span := d.tel.startSpan(ctx, "GetClosestPeers")
	defer func() { endSpan(span, err) }()
	if key == "" {
		return nil, fmt.Errorf("kad: get closest peers: empty key")
	}
	kb := []byte(key)
	res, err := d.runLookup(ctx, kbucket.KeyForBytes(kb), func(ctx context.Context, p peer.ID) ([]peer.AddrInfo, bool, error) {
		closer, err := d.findNode(ctx, p, kb)
		return closer, false, err
	})
	if err != nil {
		return nil, fmt.Errorf("kad: get closest peers: %w", err)
	}
	d.touchBucket(kbucket.KeyForBytes(kb))
	return res.closest, nil
}

// FindPeer finds the addresses of peer id: from a live connection if there
// is one, otherwise by a lookup that ends as soon as a peer tells us them.
func (d *DHT) FindPeer(ctx context.Context, id peer.ID) (_ peer.AddrInfo, err error) {
	ctx, span := d.tel.startSpan(ctx, "FindPeer", attribute.String("peer", id.String()))
	defer func() { endSpan(span, err) }()
	if err := id.Validate(); err != nil {
		return peer.AddrInfo{}, fmt.Errorf("kad: find peer: %w", err)
	}
	if d.own.isClosed() {
		return peer.AddrInfo{}, ErrClosed
	}
	if id == d.self {
		return peer.AddrInfo{ID: id, Addrs: d.selfAddrs()}, nil
	}
	if d.msgr.connected(id) {
		if addrs := d.ps.Addrs(id); len(addrs) > 0 {
			return peer.AddrInfo{ID: id, Addrs: addrs}, nil
		}
	}
	var found peer.AddrInfo
	kb := []byte(id)
	res, err := d.runLookupOpts(ctx, kbucket.KeyForBytes(kb), func(ctx context.Context, p peer.ID) ([]peer.AddrInfo, bool, error) {
		closer, err := d.findNode(ctx, p, kb)
		if err != nil {
			return nil, false, err
		}
		if p == id {
			return closer, true, nil
		}
		for _, ai := range closer {
			if ai.ID == id && len(ai.Addrs) > 0 {
				return closer, true, nil
			}
		}
		return closer, false, nil
	}, lookupOpts{stopsEarly: true})
	if err != nil {
		return peer.AddrInfo{}, fmt.Errorf("kad: find peer %s: %w", id, err)
	}
	if res.stopped {
		found = peer.AddrInfo{ID: id, Addrs: d.ps.Addrs(id)}
		if len(found.Addrs) > 0 {
			return found, nil
		}
	}
	return peer.AddrInfo{}, fmt.Errorf("kad: find peer %s: %w", id, routingErrNotFound)
}

// touchBucket records that the bucket holding target was just looked up,
// so refresh can skip it.
func (d *DHT) touchBucket(target kbucket.ID) {
	now := time.Now()
	d.rt.withTable(func(t *kbucket.Table) { t.Touch(t.BucketFor(target), now) })
}
