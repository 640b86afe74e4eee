package kad

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"golang.org/x/time/rate"

	"github.com/kadlib/kad/internal/pb"
)

// ServiceName is the go-libp2p resource manager service that inbound DHT
// streams, and the memory of their read buffers, are charged to: give it
// limits of its own with rcmgr's AddServiceLimit and AddServicePeerLimit.
const ServiceName = "libp2p.kad"

// errLimited rejects a stream or a request over one of the server's limits.
var errLimited = errors.New("kad: over limit")

// inboundLimiter enforces the bounds on inbound streams, per peer and in
// total, and each peer's request rate (a token bucket, x/time/rate's). It
// reads no clock: callers pass now. Safe for concurrent use.
type inboundLimiter struct {
	maxTotal, maxPerPeer int
	rate                 rate.Limit // 0: no request limit
	burst                int

	mu      sync.Mutex
	total   int
	peers   map[peer.ID]*peerLimit
	pruneAt int // prune refilled entries once the map reaches this size
	// latest is the latest now seen. Callers read the clock before taking
	// mu, so their times can arrive slightly out of order; a rate.Limiter
	// given an earlier time than its last moves its clock back and would
	// credit the same interval twice, so buckets are driven by latest.
	latest time.Time

	rejectedStreams, rejectedRequests int64
}

// peerLimit is one peer's open streams and request bucket.
type peerLimit struct {
	streams int
	bucket  *rate.Limiter // nil when there is no request limit
}

// minPrune is the map size below which refilled entries are not pruned.
const minPrune = 64

func newInboundLimiter(c limitsConfig) *inboundLimiter {
	return &inboundLimiter{
		maxTotal:   c.streamsTotal,
		maxPerPeer: c.streamsPerPeer,
		rate:       rate.Limit(c.peerRate),
		burst:      c.peerBurst,
		peers:      make(map[peer.ID]*peerLimit),
		pruneAt:    minPrune,
	}
}

// clock returns now, or the latest time seen if now is earlier. Called
// with mu held.
func (l *inboundLimiter) clock(now time.Time) time.Time {
	if now.Before(l.latest) {
		return l.latest
	}
	l.latest = now
	return now
}

// entry returns p's state, creating it with a full bucket.
func (l *inboundLimiter) entry(p peer.ID, now time.Time) *peerLimit {
	e := l.peers[p]
	if e == nil {
		if len(l.peers) >= l.pruneAt {
			l.prune(now)
			l.pruneAt = max(2*len(l.peers), minPrune)
		}
		e = &peerLimit{}
		if l.rate > 0 {
			e.bucket = rate.NewLimiter(l.rate, l.burst)
		}
		l.peers[p] = e
	}
	return e
}

// prune forgets peers with no open stream whose bucket has refilled: a
// fresh entry would be the same. Entries with a partly empty bucket stay,
// so a peer cannot reset its bucket by closing its streams.
func (l *inboundLimiter) prune(now time.Time) {
	for p, e := range l.peers {
		if e.streams > 0 {
			continue
		}
		if e.bucket != nil && e.bucket.TokensAt(now) < float64(l.burst) {
			continue
		}
		delete(l.peers, p)
	}
}

// openStream admits a new inbound stream from p, or refuses it when p or
// the node holds as many as allowed. An admitted stream must be released
// with closeStream.
func (l *inboundLimiter) openStream(p peer.ID, now time.Time) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	now = l.clock(now)
	if l.total >= l.maxTotal {
		l.rejectedStreams++
		return fmt.Errorf("%w: %d inbound streams open", errLimited, l.total)
	}
	e := l.entry(p, now)
	if e.streams >= l.maxPerPeer {
		l.rejectedStreams++
		return fmt.Errorf("%w: peer holds %d inbound streams", errLimited, e.streams)
	}
	e.streams++
	l.total++
	return nil
}

// closeStream releases a stream openStream admitted.
func (l *inboundLimiter) closeStream(p peer.ID) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if e := l.peers[p]; e != nil && e.streams > 0 {
		e.streams--
		l.total--
	}
}

// allow takes one token from p's bucket, or reports that p is over its
// request rate.
func (l *inboundLimiter) allow(p peer.ID, now time.Time) error {
	if l.rate <= 0 {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	now = l.clock(now)
	if !l.entry(p, now).bucket.AllowN(now, 1) {
		l.rejectedRequests++
		return fmt.Errorf("%w: request rate of %g/s exceeded", errLimited, float64(l.rate))
	}
	return nil
}

// limiterStats are the limiter's counters, for tests and operators.
type limiterStats struct {
	open, tracked                     int
	rejectedStreams, rejectedRequests int64
}

func (l *inboundLimiter) stats() limiterStats {
	l.mu.Lock()
	defer l.mu.Unlock()
	return limiterStats{open: l.total, tracked: len(l.peers), rejectedStreams: l.rejectedStreams, rejectedRequests: l.rejectedRequests}
}

// admitStream applies the stream limits to a new inbound stream and
// charges it to the kad service of the host's resource manager. It
// returns the release to call when the stream ends.
func (srv *server) admitStream(s network.Stream, from peer.ID) (release func(), err error) {
	if err := srv.limiter.openStream(from, time.Now()); err != nil {
		return nil, err
	}
	release = func() { srv.limiter.closeStream(from) }
	if err := s.Scope().SetService(ServiceName); err != nil {
		release()
		return nil, fmt.Errorf("kad: resource manager: %w", err)
	}
	return release, nil
}

// reserveReadBuffer charges the growth of a stream's read buffer to the
// stream's resource manager scope: the scope gives it back when the
// stream ends, which is when the buffer is dropped.
func reserveReadBuffer(s network.Stream) func(n int) error {
	return func(n int) error {
		return s.Scope().ReserveMemory(n, network.ReservationPriorityMedium)
	}
}

// checkRequest applies the limits every request is held to, whatever its
// type, before any handler runs.
func (s *server) checkRequest(req *pb.Message) error {
	if n := len(req.Key); n > s.limits.maxKeySize {
		return fmt.Errorf("%w: key of %d bytes over the %d-byte limit", errBadRequest, n, s.limits.maxKeySize)
	}
	return nil
}

// trimResponse keeps an answer within the response limits, whatever the
// handler put in it: at most k closer peers, MaxProvidersPerResponse
// providers and MaxAddrsPerPeer addresses per entry.
func (s *server) trimResponse(m *pb.Message) {
	if len(m.CloserPeers) > s.k+1 {
		// k plus the exact target of a FIND_NODE.
		m.CloserPeers = m.CloserPeers[:s.k+1]
	}
	if len(m.ProviderPeers) > s.limits.provsPerResp {
		m.ProviderPeers = m.ProviderPeers[:s.limits.provsPerResp]
	}
	trimAddrs(m, s.limits.maxAddrsPerPeer)
}

// maxPeersInbound bounds the entries kept from one inbound response: more
// than any caller decodes (2k closer peers, 1000 providers).
const maxPeersInbound = 1024

// trimInbound bounds what a peer's answer can make us keep and parse:
// entries past maxPeersInbound and addresses past MaxAddrsPerPeer per
// entry are dropped before anything else reads them.
func trimInbound(m *pb.Message, maxAddrs int) {
	if len(m.CloserPeers) > maxPeersInbound {
		m.CloserPeers = m.CloserPeers[:maxPeersInbound]
	}
	if len(m.ProviderPeers) > maxPeersInbound {
		m.ProviderPeers = m.ProviderPeers[:maxPeersInbound]
	}
	trimAddrs(m, maxAddrs)
}

func trimAddrs(m *pb.Message, n int) {
	for i := range m.CloserPeers {
		if e := &m.CloserPeers[i]; len(e.Addrs) > n {
			e.Addrs = e.Addrs[:n]
		}
	}
	for i := range m.ProviderPeers {
		if e := &m.ProviderPeers[i]; len(e.Addrs) > n {
			e.Addrs = e.Addrs[:n]
		}
	}
}
