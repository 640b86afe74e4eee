package kad

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	msmux "github.com/multiformats/go-multistream"
)

// openStream opens a stream to p for the first of protos without waiting
// for identify. A host's Connect and NewStream wait for identify to finish
// on a new connection before they return or negotiate (one round trip or more), and for a
// peer whose protocols it does not know yet it negotiates eagerly (one
// more). A lookup talks mostly to peers it just heard of, so it would pay
// both on most requests. Here the protocol is proposed lazily instead: the
// multistream header goes out with the first message and the peer's
// acceptance comes back in front of its answer; a peer that does not speak
// the protocol fails the first read, as a refused negotiation would.
func openStream(ctx context.Context, h host.Host, p peer.ID, protos []protocol.ID) (network.Stream, error) {
	if len(protos) == 0 {
		return nil, errors.New("kad: no protocol to open a stream for")
	}
	// Dial through the network, not host.Connect, which waits for
	// identify too.
	if h.Network().Connectedness(p) != network.Connected {
		if _, err := h.Network().DialPeer(ctx, p); err != nil {
			return nil, err
		}
	}
	s, err := h.Network().NewStream(network.WithNoDial(ctx, "already connected"), p)
	if err != nil {
		return nil, fmt.Errorf("open stream: %w", err)
	}
	proto := protos[0]
	if known, err := h.Peerstore().SupportsProtocols(p, protos...); err == nil && len(known) > 0 {
		proto = known[0]
	}
	if err := s.SetProtocol(proto); err != nil {
		_ = s.Reset()
		return nil, fmt.Errorf("open stream: %w", err)
	}
	return &lazyStream{Stream: s, rw: msmux.NewMSSelect(s, proto)}, nil
}

// lazyStream is a stream whose protocol negotiation rides on its first
// write and first read.
type lazyStream struct {
	network.Stream
	rw io.ReadWriteCloser
}

func (s *lazyStream) Read(b []byte) (int, error)  { return s.rw.Read(b) }
func (s *lazyStream) Write(b []byte) (int, error) { return s.rw.Write(b) }
func (s *lazyStream) Close() error                { return s.rw.Close() }

// CloseWrite flushes the negotiation header first if nothing was written,
// so the peer still learns the protocol of a stream closed unused.
func (s *lazyStream) CloseWrite() error {
	if f, ok := s.rw.(interface{ Flush() error }); ok {
		_ = f.Flush()
	}
	return s.Stream.CloseWrite()
}
