package kad

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/kadlib/kad/internal/kbucket"
	"github.com/kadlib/kad/internal/pb"
	"github.com/kadlib/kad/internal/wire"
)

// errBadRequest rejects a request: the stream is reset and nothing changes.
var errBadRequest = errors.New("kad: bad request")

// handlerFunc answers one request from a peer. A nil response with a nil
// error sends nothing (ADD_PROVIDER); an error resets the stream.
type handlerFunc func(ctx context.Context, from peer.ID, req *pb.Message) (*pb.Message, error)

func (d *DHT) coreHandlers() map[int32]handlerFunc {
	return map[int32]handlerFunc{
		int32(pb.FindNode): d.handleFindNode,
		int32(pb.Ping):     d.handlePing,
	}
}

// handleStream serves requests on one inbound stream until the peer
// closes it, it stays idle too long, or a request is bad.
func (d *DHT) handleStream(s network.Stream) {
	if !d.own.enter() {
		_ = s.Reset()
		return
	}
	defer d.own.leave()
	from := s.Conn().RemotePeer()
	release, err := d.admitStream(s, from)
	if err != nil {
		d.log.Debug("inbound stream refused", "peer", from, "err", err)
		_ = s.Reset()
		return
	}
	defer release()
	stop := context.AfterFunc(d.ctx, func() { _ = s.Reset() })
	defer stop()
	r := wire.NewReader(s, d.cfg.limits.maxMessageSize)
	r.Reserve = reserveReadBuffer(s)
	// One timer bounds both waits on the peer, the next request (idle
	// timeout) and the writing of an answer (request timeout), by resetting
	// the stream: deadlines would do, but not every transport honours them
	// (mocknet ignores them).
	timer := time.AfterFunc(d.cfg.limits.idleStream, func() { _ = s.Reset() })
	defer timer.Stop()
	for {
		timer.Reset(d.cfg.limits.idleStream)
		var req pb.Message
		if err := r.ReadMsg(&req); err != nil {
			if errors.Is(err, io.EOF) {
				_ = s.Close()
			} else {
				d.log.Debug("bad inbound message", "peer", from, "err", err)
				_ = s.Reset()
			}
			return
		}
		timer.Stop()
		resp, err := d.receive(d.ctx, from, &req)
		if err != nil {
			_ = s.Reset()
			return
		}
		if resp == nil {
			continue
		}
		timer.Reset(d.cfg.node.requestTimeout)
		if err := wire.WriteMsg(s, resp); err != nil {
			_ = s.Reset()
			return
		}
	}
}

// receive handles one request from a peer, whatever carried it: the
// per-peer rate limit, then serve; an answered request counts as a sign
// of life of its sender. An error means the request was refused (the
// carrier resets the stream) and changed nothing; a nil answer with no
// error means none is due (ADD_PROVIDER).
func (d *DHT) receive(ctx context.Context, from peer.ID, req *pb.Message) (*pb.Message, error) {
	d.tel.stats.inbound.Add(1)
	if err := d.limiter.allow(from, time.Now()); err != nil {
		d.tel.observeInbound(req.Type, err)
		d.log.Debug("request refused", "peer", from, "type", req.Type, "err", err)
		return nil, err
	}
	resp, err := d.serve(ctx, from, req)
	d.tel.observeInbound(req.Type, err)
	if err != nil {
		d.log.Debug("request rejected", "peer", from, "type", req.Type, "err", err)
		return nil, err
	}
	d.rt.seen(from, time.Now())
	return resp, nil
}

// serve answers one request within the request timeout: the limits every
// request is held to, then its type's handler, then the response limits.
// An error means the request is refused and changed nothing.
func (d *DHT) serve(ctx context.Context, from peer.ID, req *pb.Message) (*pb.Message, error) {
	if err := d.checkRequest(req); err != nil {
		return nil, err
	}
	h, ok := d.handlers[int32(req.Type)]
	if !ok {
		return nil, fmt.Errorf("%w: unsupported message type %s", errBadRequest, req.Type)
	}
	ctx, cancel := context.WithTimeout(ctx, d.cfg.node.requestTimeout)
	defer cancel()
	resp, err := h(ctx, from, req)
	if err != nil {
		return nil, err
	}
	if resp != nil {
		d.trimResponse(resp)
	}
	return resp, nil
}

func (d *DHT) handlePing(_ context.Context, _ peer.ID, req *pb.Message) (*pb.Message, error) {
	return &pb.Message{Type: pb.Ping}, nil
}

func (d *DHT) handleFindNode(_ context.Context, from peer.ID, req *pb.Message) (*pb.Message, error) {
	if len(req.Key) == 0 {
		return nil, fmt.Errorf("%w: FIND_NODE without key", errBadRequest)
	}
	resp := &pb.Message{Type: pb.FindNode, Key: req.Key, ClusterLevelRaw: req.ClusterLevelRaw}
	// The exact target first, whenever we know its addresses: it is how a
	// peer checks that another answers about itself.
	if target, err := peer.IDFromBytes(req.Key); err == nil {
		if e, ok := d.peerEntry(target); ok {
			resp.CloserPeers = append(resp.CloserPeers, e)
		}
	}
	resp.CloserPeers = append(resp.CloserPeers, d.closerPeers(req.Key, from)...)
	return resp, nil
}

// closerPeers returns wire entries for the k closest table peers to key,
// excluding the requester and peers whose addresses we do not know.
func (d *DHT) closerPeers(key []byte, from peer.ID) []pb.Peer {
	k := d.cfg.table.bucketSize
	near := d.rt.nearest(kbucket.KeyForBytes(key), k+1)
	out := make([]pb.Peer, 0, k)
	for _, p := range near {
		if p == from || p == d.self {
			continue
		}
		if e, ok := d.peerEntry(p); ok {
			out = append(out, e)
			if len(out) == k {
				break
			}
		}
	}
	return out
}

// peerEntry builds a wire entry for p with at most maxAddrsPerPeer of its
// addresses; ok is false when none are known.
func (d *DHT) peerEntry(p peer.ID) (pb.Peer, bool) {
	var addrs []ma.Multiaddr
	if p == d.self {
		addrs = d.selfAddrs()
	} else {
		addrs = d.ps.Addrs(p)
	}
	if len(addrs) == 0 {
		return pb.Peer{}, false
	}
	return d.encodePeer(p, addrs), true
}

func (d *DHT) encodePeer(p peer.ID, addrs []ma.Multiaddr) pb.Peer {
	if len(addrs) > d.cfg.limits.maxAddrsPerPeer {
		addrs = addrs[:d.cfg.limits.maxAddrsPerPeer]
	}
	e := pb.Peer{ID: []byte(p), Addrs: make([][]byte, 0, len(addrs))}
	for _, a := range addrs {
		e.Addrs = append(e.Addrs, a.Bytes())
	}
	if p != d.self && d.msgr.connected(p) {
		e.Connection = pb.Connected
	}
	return e
}

// decodePeers turns wire entries into AddrInfos, dropping entries with a
// garbage id and addresses that do not parse, and never returning
// ourselves. At most limit entries are kept.
func decodePeers(in []pb.Peer, self peer.ID, limit int) []peer.AddrInfo {
	out := make([]peer.AddrInfo, 0, min(len(in), limit))
	for _, e := range in {
		if len(out) == limit {
			break
		}
		id, err := peer.IDFromBytes(e.ID)
		if err != nil || id == self {
			continue
		}
		ai := peer.AddrInfo{ID: id}
		for _, b := range e.Addrs {
			a, err := ma.NewMultiaddrBytes(b)
			if err != nil {
				continue
			}
			ai.Addrs = append(ai.Addrs, a)
		}
		out = append(out, ai)
	}
	return out
}
