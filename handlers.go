package kad

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
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

// server answers other peers' requests: it owns the handlers of each
// message type and the inbound limits, and sees the table only through
// the functions it is given.
type server struct {
	self     peer.ID
	k        int
	node     nodeConfig
	limits   limitsConfig
	own      *owner
	log      *slog.Logger
	tel      *telemetry
	entries  *peerEntries
	limiter  *inboundLimiter
	handlers map[int32]handlerFunc
	// nearest returns the table's n peers closest to target.
	nearest func(target kbucket.ID, n int) []peer.ID
	// seen is told of each peer whose request we answered.
	seen func(p peer.ID, now time.Time)
}

func newServer(self peer.ID, cfg *config, own *owner, log *slog.Logger, tel *telemetry, entries *peerEntries,
	nearest func(kbucket.ID, int) []peer.ID, seen func(peer.ID, time.Time)) *server {
	s := &server{
		self: self, k: cfg.table.bucketSize, node: cfg.node, limits: cfg.limits,
		own: own, log: log, tel: tel, entries: entries,
		limiter: newInboundLimiter(cfg.limits), nearest: nearest, seen: seen,
	}
	s.handlers = map[int32]handlerFunc{
		int32(pb.FindNode): s.handleFindNode,
		int32(pb.Ping):     s.handlePing,
	}
	return s
}

// handle makes h answer requests of type t.
func (s *server) handle(t pb.MessageType, h handlerFunc) { s.handlers[int32(t)] = h }

// handleStream serves requests on one inbound stream until the peer
// closes it, it stays idle too long, or a request is bad.
func (srv *server) handleStream(s network.Stream) {
	if !srv.own.enter() {
		_ = s.Reset()
		return
	}
	defer srv.own.leave()
	from := s.Conn().RemotePeer()
	release, err := srv.admitStream(s, from)
	if err != nil {
		srv.log.Debug("inbound stream refused", "peer", from, "err", err)
		_ = s.Reset()
		return
	}
	defer release()
	stop := context.AfterFunc(srv.own.ctx, func() { _ = s.Reset() })
	defer stop()
	r := wire.NewReader(s, srv.limits.maxMessageSize)
	r.Reserve = reserveReadBuffer(s)
	// One timer bounds both waits on the peer, the next request (idle
	// timeout) and the writing of an answer (request timeout), by resetting
	// the stream: deadlines would do, but not every transport honours them
	// (mocknet ignores them).
	timer := time.AfterFunc(srv.limits.idleStream, func() { _ = s.Reset() })
	defer timer.Stop()
	for {
		timer.Reset(srv.limits.idleStream)
		var req pb.Message
		if err := r.ReadMsg(&req); err != nil {
			if errors.Is(err, io.EOF) {
				_ = s.Close()
			} else {
				srv.log.Debug("bad inbound message", "peer", from, "err", err)
				_ = s.Reset()
			}
			return
		}
		timer.Stop()
		resp, err := srv.receive(srv.own.ctx, from, &req)
		if err != nil {
			_ = s.Reset()
			return
		}
		if resp == nil {
			continue
		}
		timer.Reset(srv.node.requestTimeout)
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
func (s *server) receive(ctx context.Context, from peer.ID, req *pb.Message) (*pb.Message, error) {
	s.tel.stats.inbound.Add(1)
	if err := s.limiter.allow(from, time.Now()); err != nil {
		s.tel.observeInbound(req.Type, err)
		s.log.Debug("request refused", "peer", from, "type", req.Type, "err", err)
		return nil, err
	}
	resp, err := s.serve(ctx, from, req)
	s.tel.observeInbound(req.Type, err)
	if err != nil {
		s.log.Debug("request rejected", "peer", from, "type", req.Type, "err", err)
		return nil, err
	}
	s.seen(from, time.Now())
	return resp, nil
}

// serve answers one request within the request timeout: the limits every
// request is held to, then its type's handler, then the response limits.
// An error means the request is refused and changed nothing.
func (s *server) serve(ctx context.Context, from peer.ID, req *pb.Message) (*pb.Message, error) {
	if err := s.checkRequest(req); err != nil {
		return nil, err
	}
	h, ok := s.handlers[int32(req.Type)]
	if !ok {
		return nil, fmt.Errorf("%w: unsupported message type %s", errBadRequest, req.Type)
	}
	ctx, cancel := context.WithTimeout(ctx, s.node.requestTimeout)
	defer cancel()
	resp, err := h(ctx, from, req)
	if err != nil {
		return nil, err
	}
	if resp != nil {
		s.trimResponse(resp)
	}
	return resp, nil
}

func (s *server) handlePing(_ context.Context, _ peer.ID, req *pb.Message) (*pb.Message, error) {
	return &pb.Message{Type: pb.Ping}, nil
}

func (s *server) handleFindNode(_ context.Context, from peer.ID, req *pb.Message) (*pb.Message, error) {
	if len(req.Key) == 0 {
		return nil, fmt.Errorf("%w: FIND_NODE without key", errBadRequest)
	}
	resp := &pb.Message{Type: pb.FindNode, Key: req.Key, ClusterLevelRaw: req.ClusterLevelRaw}
	// The exact target first, whenever we know its addresses: it is how a
	// peer checks that another answers about itself.
	if target, err := peer.IDFromBytes(req.Key); err == nil {
		if e, ok := s.entries.entry(target); ok {
			resp.CloserPeers = append(resp.CloserPeers, e)
		}
	}
	resp.CloserPeers = append(resp.CloserPeers, s.closerPeers(req.Key, from)...)
	return resp, nil
}

// closerPeers returns wire entries for the k closest table peers to key,
// excluding the requester and peers whose addresses we do not know.
func (s *server) closerPeers(key []byte, from peer.ID) []pb.Peer {
	k := s.k
	near := s.nearest(kbucket.KeyForBytes(key), k+1)
	out := make([]pb.Peer, 0, k)
	for _, p := range near {
		if p == from || p == s.self {
			continue
		}
		if e, ok := s.entries.entry(p); ok {
			out = append(out, e)
			if len(out) == k {
				break
			}
		}
	}
	return out
}

// peerEntries turns peers into wire entries: their known addresses (ours
// for ourselves), at most maxAddrs of them, and whether we are connected.
type peerEntries struct {
	self      peer.ID
	maxAddrs  int
	ps        peerstore.AddrBook
	selfAddrs func() []ma.Multiaddr
	msgr      messenger
}

// entry builds a wire entry for p; ok is false when no address is known.
func (e *peerEntries) entry(p peer.ID) (pb.Peer, bool) {
	var addrs []ma.Multiaddr
	if p == e.self {
		addrs = e.selfAddrs()
	} else {
		addrs = e.ps.Addrs(p)
	}
	if len(addrs) == 0 {
		return pb.Peer{}, false
	}
	return e.encode(p, addrs), true
}

func (e *peerEntries) encode(p peer.ID, addrs []ma.Multiaddr) pb.Peer {
	if len(addrs) > e.maxAddrs {
		addrs = addrs[:e.maxAddrs]
	}
	out := pb.Peer{ID: []byte(p), Addrs: make([][]byte, 0, len(addrs))}
	for _, a := range addrs {
		out.Addrs = append(out.Addrs, a.Bytes())
	}
	if p != e.self && e.msgr.connected(p) {
		out.Connection = pb.Connected
	}
	return out
}

// decodePeers turns wire entries into AddrInfos, dropping entries with a
// garbage id and addresses that do not parse, and never returning
// ourselves. At most limit entries are kept.
func decodePeers(in []pb.Peer, self peer.ID, limit int) []peer.AddrInfo {
	out, _ := decodePeersConnected(in, self, limit)
	return out
}

// decodePeersConnected is decodePeers that also returns the ids of the
// kept entries the sender marked CONNECTED (for lookup vouches).
func decodePeersConnected(in []pb.Peer, self peer.ID, limit int) (out []peer.AddrInfo, connected []peer.ID) {
	out = make([]peer.AddrInfo, 0, min(len(in), limit))
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
		if e.Connection == pb.Connected {
			connected = append(connected, id)
		}
	}
	return out, connected
}
