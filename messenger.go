package kad

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/kadlib/kad/internal/pb"
	"github.com/kadlib/kad/internal/wire"
)

// ErrNoResponse is returned when a peer closes a stream without answering.
var ErrNoResponse = errors.New("kad: peer sent no response")

// messenger is the node's one seam to the network: everything a node
// sends goes through it. libp2pMessenger is the real one; a simulated
// network puts its own in its place. Answers to other peers' requests
// come back through serve, which whatever carries their requests calls.
type messenger interface {
	// request sends req to p and returns p's answer, within the request
	// timeout.
	request(ctx context.Context, p peer.ID, req *pb.Message) (*pb.Message, error)
	// sendOneWay delivers msgs, which get no answer (ADD_PROVIDER), to p
	// and returns how many were written; written, if not nil, is called
	// once all are. An error means they may not have arrived.
	sendOneWay(ctx context.Context, p peer.ID, msgs []*pb.Message, written func()) (int, error)
	// connect opens a connection to p unless one is open, within the
	// request timeout.
	connect(ctx context.Context, p peer.ID) error
	// connected reports whether a connection to p is open.
	connected(p peer.ID) bool
	// connAddrs returns the remote addresses of the open connections to p.
	connAddrs(p peer.ID) []ma.Multiaddr
}

// libp2pMessenger sends messages on libp2p streams, one stream per
// request. Streams are not kept for reuse: with the protocol proposed
// lazily (openStream) a fresh stream costs no round trip, while an idle
// pooled one would pin a handler goroutine and buffers on the peer, and
// goroutines here, for the few requests it might save.
type libp2pMessenger struct {
	h       host.Host
	protos  []protocol.ID
	timeout time.Duration
	maxMsg  int
}

func newLibp2pMessenger(h host.Host, protos []protocol.ID, timeout time.Duration, maxMsg int) *libp2pMessenger {
	return &libp2pMessenger{h: h, protos: protos, timeout: timeout, maxMsg: maxMsg}
}

func (s *libp2pMessenger) connect(ctx context.Context, p peer.ID) error {
	if s.connected(p) {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if _, err := s.h.Network().DialPeer(ctx, p); err != nil {
		return fmt.Errorf("connect to %s: %w", p, err)
	}
	return nil
}

func (s *libp2pMessenger) connected(p peer.ID) bool {
	return s.h.Network().Connectedness(p) == network.Connected
}

func (s *libp2pMessenger) connAddrs(p peer.ID) []ma.Multiaddr {
	conns := s.h.Network().ConnsToPeer(p)
	if len(conns) == 0 {
		return nil
	}
	addrs := make([]ma.Multiaddr, len(conns))
	for i, c := range conns {
		addrs[i] = c.RemoteMultiaddr()
	}
	return addrs
}

// request sends req to p on a new stream and returns its response.
func (s *libp2pMessenger) request(ctx context.Context, p peer.ID, req *pb.Message) (*pb.Message, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	st, err := openStream(ctx, s.h, p, s.protos)
	if err != nil {
		return nil, fmt.Errorf("open stream to %s: %w", p, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = st.SetDeadline(dl)
	}
	// A blocked read does not watch ctx (and not every transport honours
	// deadlines): reset the stream if ctx ends.
	stop := context.AfterFunc(ctx, func() { _ = st.Reset() })
	defer stop()
	if err := wire.WriteMsg(st, req); err != nil {
		_ = st.Reset()
		return nil, ctxErr(ctx, err)
	}
	resp := new(pb.Message)
	if err := wire.NewReader(st, s.maxMsg).ReadMsg(resp); err != nil {
		_ = st.Reset()
		if errors.Is(err, io.EOF) {
			err = ErrNoResponse
		}
		return nil, ctxErr(ctx, err)
	}
	// The reader reuses its buffer: copy out what the response aliases.
	out := resp.Clone()
	// Closing our side ends the peer's handler, which is waiting for a
	// next request.
	_ = st.Close()
	return out, nil
}

// ctxErr prefers the context's error, which says why a stream was reset.
func ctxErr(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("%w (%v)", cerr, err)
	}
	return err
}
