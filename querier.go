package kad

import (
	"context"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"

	"github.com/kadlib/kad/internal/kbucket"
	"github.com/kadlib/kad/internal/lookup"
	"github.com/kadlib/kad/internal/pb"
)

// querier runs lookups and single requests over the messenger. It keeps
// no state of its own between calls: the table it starts lookups from and
// reports answers and failures to is given as functions, so the same code
// runs on libp2p and in a simulated network.
type querier struct {
	self     peer.ID
	k        int
	cfg      lookupConfig
	maxAddrs int // addresses kept per peer of an answer
	own      *owner
	msgr     messenger
	tel      *telemetry
	ps       peerstore.AddrBook // where the addresses answers list go
	filter   *addrFilter
	// nearest returns the table's n peers closest to target (the seeds).
	nearest func(target kbucket.ID, n int) []peer.ID
	// onAnswer is told of each peer that answered a lookup request.
	onAnswer func(p peer.ID)
	// onFailure is told of each request that failed (not cancelled).
	onFailure func(p peer.ID, err error)
	// touch is told of each target a FIND_NODE lookup converged on, so
	// the table can skip refreshing its bucket.
	touch func(target kbucket.ID)
}

// closestPeers runs a FIND_NODE lookup for key and returns the k closest
// peers that answered, closest first.
func (q *querier) closestPeers(ctx context.Context, key []byte) ([]peer.ID, error) {
	return q.closestPeersOpts(ctx, key, lookupOpts{})
}

// closestPeersOpts is closestPeers with options.
func (q *querier) closestPeersOpts(ctx context.Context, key []byte, o lookupOpts) ([]peer.ID, error) {
	target := kbucket.KeyForBytes(key)
	res, err := q.runOpts(ctx, target, func(ctx context.Context, p peer.ID) (queryAnswer, error) {
		closer, connected, err := q.findNodeConnected(ctx, p, key)
		return queryAnswer{closer: closer, connected: connected}, err
	}, o)
	if err != nil {
		return nil, err
	}
	q.touch(target)
	return res.closest, nil
}

// queryFunc is what a lookup asks each peer.
type queryFunc func(ctx context.Context, p peer.ID) (queryAnswer, error)

// queryAnswer is what one peer told a lookup.
type queryAnswer struct {
	closer []peer.AddrInfo // the closer peers it gave
	// connected are those of closer it reported a live connection to,
	// for lookupOpts.vouch; nil when not read.
	connected []peer.ID
	stop      bool // end the lookup: found what it was looking for
}

// lookupResult is what a lookup found.
type lookupResult struct {
	closest []peer.ID // the k closest peers that answered, closest first
	stats   lookup.Stats
	stopped bool // ended early by a queryFunc
}

type queryReply struct {
	p   peer.ID
	ans queryAnswer
	err error
}

// run drives an internal/lookup state machine for target: it turns the
// machine's decisions into requests, one owned goroutine each, and feeds
// the answers back. It returns when the lookup ends, fn stops it, or ctx
// is done; requests still in flight are cancelled and finish in the
// background.
func (q *querier) run(ctx context.Context, target kbucket.ID, fn queryFunc) (*lookupResult, error) {
	return q.runOpts(ctx, target, fn, lookupOpts{})
}

// lookupOpts tune one lookup.
type lookupOpts struct {
	hook lookupHook
	// stopsEarly says fn may end the lookup before it converges (FindPeer,
	// a GetValue quorum, a FindProviders count): requests sent ahead to
	// peers near the target (lookup.Config.Near) would then be wasted.
	stopsEarly bool
	// vouch lets the lookup end without the answers of peers it had to
	// dial, once the Vouchers option's number of peers that answered
	// reported a connection to them (lookup.Config.Vouchers): for lookups
	// whose answers carry nothing but closer peers, whose result is all
	// the caller wants.
	vouch bool
}

// lookupHook is shown the lookup after each answer or failure, on the
// driver goroutine, so a caller can act before the lookup ends (optimistic
// provide). It must not block, must not keep l, and may only read it.
type lookupHook func(l *lookup.Lookup)

// runOpts is run with options.
func (q *querier) runOpts(ctx context.Context, target kbucket.ID, fn queryFunc, o lookupOpts) (_ *lookupResult, err error) {
	hook := o.hook
	if q.own.isClosed() {
		return nil, ErrClosed
	}
	ctx, cancel := context.WithTimeout(ctx, q.cfg.timeout)
	defer cancel()
	stopLife := context.AfterFunc(q.own.ctx, cancel)
	defer stopLife()

	k := q.k
	seeds := q.filter.seeds(q.nearest(target, k))
	if len(seeds) == 0 {
		return nil, ErrNoPeers
	}
	cfg := lookup.Config{
		K: k, Alpha: q.cfg.concurrency, ConvergeAlpha: q.cfg.convergeAlpha, Beta: q.cfg.resiliency, Disjoint: q.cfg.disjointPaths,
	}
	cfg.Near, cfg.FirstNear = q.near(k, o.stopsEarly)
	if o.vouch && q.cfg.vouchers > 0 {
		// See the Vouchers option.
		cfg.Vouchers, cfg.Reachable = q.cfg.vouchers, q.msgr.connected
	}
	l := lookup.New(target, q.self, seeds, cfg)
	q.tel.stats.lookups.Add(1)
	start := time.Now()
	// Near requests can take the requests in flight up to max(alpha, k).
	replies := make(chan queryReply, max(q.cfg.concurrency, k))
	res := &lookupResult{}
	inflight := 0
	defer func() {
		st := l.Stats()
		res.stats = st
		q.tel.stats.lookupRequests.Add(int64(st.Requests))
		q.tel.stats.lookupHops.Add(int64(st.Hops))
		q.tel.observeLookup(target, start, st.Hops, st.Requests, err)
	}()
	for {
		send, done := l.Next()
		if done {
			break
		}
		for _, p := range send {
			ask := fn
			if cfg.Vouchers > 0 && !q.msgr.connected(p) {
				// The lookup may end on vouches before this dial does: let
				// the dial finish anyway (the messenger's request timeout
				// bounds it, Close stops it), so the handshake paid for
				// leaves a connection for what the caller does next with
				// the result; but ask p only if the lookup still waits for
				// the answer, which would otherwise reach nobody.
				ask = func(ctx context.Context, p peer.ID) (queryAnswer, error) {
					if err := q.msgr.connect(q.own.ctx, p); err != nil {
						return queryAnswer{}, err
					}
					if err := ctx.Err(); err != nil {
						// Not sent after all: take it back from the
						// lookup's request count (added when it returned).
						q.tel.stats.lookupRequests.Add(-1)
						return queryAnswer{}, err
					}
					return fn(ctx, p)
				}
			}
			if !q.own.spawn(func() {
				ans, err := ask(ctx, p)
				select {
				case replies <- queryReply{p: p, ans: ans, err: err}:
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
					q.tel.stats.outboundFailed.Add(1)
					q.onFailure(r.p, r.err)
				}
				if hook != nil {
					hook(l)
				}
				continue
			}
			q.onAnswer(r.p)
			l.OnAnswer(r.p, q.filter.candidates(r.ans.closer), r.ans.connected)
			if hook != nil {
				hook(l)
			}
			if r.ans.stop {
				res.stopped = true
				res.closest = l.Result()
				return res, nil
			}
		}
	}
	res.closest = l.Result()
	return res, nil
}

// near returns the Near and FirstNear distances of a lookup
// (lookup.Config): the estimated distance from a key to its k-th closest
// peer, from our own closest peers, scaled by lookup.NearFactor and
// lookup.FirstNearFactor. 0 (off) for a lookup that may stop early, and
// with ConvergeConcurrency set, whose point is to send fewer requests.
func (q *querier) near(k int, stopsEarly bool) (near, first float64) {
	if stopsEarly || q.cfg.convergeAlpha != 0 {
		return 0, 0
	}
	kth := q.kthDistance(k)
	return lookup.NearFactor * kth, lookup.FirstNearFactor * kth
}

// kthDistance estimates the distance from any key to its k-th closest
// peer from our own closest peers (kbucket.KthDistance).
func (q *querier) kthDistance(k int) float64 {
	self := kbucket.PeerKey(q.self)
	return kbucket.KthDistance(self, q.nearest(self, k), k)
}

// learnAddrs remembers the addresses of peers a response listed, briefly,
// so the lookup can dial them.
func (q *querier) learnAddrs(peers []peer.AddrInfo) {
	ps := q.ps
	for _, ai := range peers {
		if len(ai.Addrs) > 0 && ai.ID != q.self {
			ps.AddAddrs(ai.ID, ai.Addrs, peerstore.TempAddrTTL)
		}
	}
}

// request sends req to p and records the outcome.
func (q *querier) request(ctx context.Context, p peer.ID, req *pb.Message) (resp *pb.Message, err error) {
	start := time.Now()
	defer func() { q.tel.observeOutbound(req.Type, start, err) }()
	resp, err = q.msgr.request(ctx, p, req)
	if err != nil {
		return nil, err
	}
	if resp.Type != req.Type {
		return nil, fmt.Errorf("kad: %s answered %s with %s", p, req.Type, resp.Type)
	}
	trimInbound(resp, q.maxAddrs)
	return resp, nil
}

// findNode asks p for the peers closest to key.
func (q *querier) findNode(ctx context.Context, p peer.ID, key []byte) ([]peer.AddrInfo, error) {
	closer, _, err := q.findNodeConnected(ctx, p, key)
	return closer, err
}

// findNodeConnected is findNode that also returns those of the closer
// peers p said it is connected to.
func (q *querier) findNodeConnected(ctx context.Context, p peer.ID, key []byte) (closer []peer.AddrInfo, connected []peer.ID, err error) {
	resp, err := q.request(ctx, p, &pb.Message{Type: pb.FindNode, Key: key})
	if err != nil {
		return nil, nil, err
	}
	closer, connected = decodePeersConnected(resp.CloserPeers, q.self, maxCloserPeersFactor*q.k)
	q.learnAddrs(closer)
	return closer, connected, nil
}
