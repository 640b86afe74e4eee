package kad

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/libp2p/go-libp2p/core/peer"
	"go.opentelemetry.io/otel/attribute"

	"github.com/kadlib/kad/internal/kbucket"
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

// GetClosestPeers returns the k peers closest to key (by sha2-256 of the
// key bytes) that answered, closest first. A peer the node had no
// connection to counts as answered once two peers that answered reported
// a live connection to it: the lookup then does not wait for a handshake
// (three round trips over TCP) only to hear that the peer is alive. For
// a peer's own position use string(peerID) as the key.
func (d *DHT) GetClosestPeers(ctx context.Context, key string) (_ []peer.ID, err error) {
	ctx, span := d.tel.startSpan(ctx, "GetClosestPeers")
	defer func() { endSpan(span, err) }()
	if key == "" {
		return nil, fmt.Errorf("kad: get closest peers: empty key")
	}
	closest, err := d.q.closestPeersOpts(ctx, []byte(key), lookupOpts{vouch: true})
	if err != nil {
		return nil, fmt.Errorf("kad: get closest peers: %w", err)
	}
	return closest, nil
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
	res, err := d.q.runOpts(ctx, kbucket.KeyForBytes(kb), func(ctx context.Context, p peer.ID) (queryAnswer, error) {
		closer, err := d.q.findNode(ctx, p, kb)
		if err != nil {
			return queryAnswer{}, err
		}
		if p == id {
			return queryAnswer{closer: closer, stop: true}, nil
		}
		for _, ai := range closer {
			if ai.ID == id && len(ai.Addrs) > 0 {
				return queryAnswer{closer: closer, stop: true}, nil
			}
		}
		return queryAnswer{closer: closer}, nil
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
