package kad

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/kadlib/kad/internal/pb"
	"github.com/kadlib/kad/internal/wire"
)

// oneWayWriteSize is the size of the writes that carry one-way messages:
// one write per message would cost a transport frame (and, on mocknet, a
// link delay) each.
const oneWayWriteSize = 16 << 10

// sendOneWay delivers messages that get no answer (ADD_PROVIDER) on a
// stream of their own and returns how many were written; written, if not
// nil, is called once all are. It then waits, at most the request
// timeout, for the peer to close its side: a go or kad peer closes after
// handling the messages and resets the stream if it refused one, but a js
// peer resets it either way, so a reset after the last write counts as
// delivered. That wait is what tells lost messages (a dial or protocol
// negotiation that fails) from delivered ones: a write into a stream the
// peer has reset can still report success (mocknet always does, and so
// does a lazily negotiated stream to a peer without the protocol). A peer
// that neither closes nor resets in time counts as reached.
func (q *querier) sendOneWay(ctx context.Context, p peer.ID, msgs []*pb.Message, written func()) (n int, err error) {
	start := time.Now()
	defer func() {
		for i, m := range msgs {
			var e error
			if i >= n {
				e = err
			}
			q.tel.observeOutbound(m.Type, start, e)
		}
	}()
	return q.msgr.sendOneWay(ctx, p, msgs, written)
}

// sendOneWay writes msgs on a stream of their own (see DHT.sendOneWay).
func (m *libp2pMessenger) sendOneWay(ctx context.Context, p peer.ID, msgs []*pb.Message, written func()) (n int, err error) {
	ctx, cancel := context.WithTimeout(ctx, m.timeout)
	defer cancel()
	s, err := openStream(ctx, m.h, p, m.protos)
	if err != nil {
		return 0, fmt.Errorf("open stream to %s: %w", p, err)
	}
	stop := context.AfterFunc(ctx, func() { _ = s.Reset() })
	defer stop()
	if dl, ok := ctx.Deadline(); ok {
		_ = s.SetDeadline(dl)
	}
	buf := make([]byte, 0, min(oneWayWriteSize, 1024*len(msgs))+1024)
	pending := 0
	flush := func() error {
		if len(buf) == 0 {
			return nil
		}
		if _, err := s.Write(buf); err != nil {
			_ = s.Reset()
			return fmt.Errorf("write to %s: %w", p, ctxErr(ctx, err))
		}
		n += pending
		buf, pending = buf[:0], 0
		return nil
	}
	for _, msg := range msgs {
		buf = wire.AppendMsg(buf, msg)
		pending++
		if len(buf) >= oneWayWriteSize {
			if err := flush(); err != nil {
				return n, err
			}
		}
	}
	if err := flush(); err != nil {
		return n, err
	}
	if err := s.CloseWrite(); err != nil {
		_ = s.Reset()
		return n, fmt.Errorf("close write to %s: %w", p, ctxErr(ctx, err))
	}
	if written != nil {
		written()
	}
	var b [1]byte
	_, err = io.ReadFull(s, b[:])
	switch {
	case errors.Is(err, io.EOF):
		_ = s.Close()
		return n, nil
	case err == nil:
		// An answer nobody asked for: the messages got there all the same.
		_ = s.Reset()
		return n, nil
	case errors.Is(ctx.Err(), context.DeadlineExceeded),
		errors.Is(err, network.ErrReset) && ctx.Err() == nil:
		_ = s.Reset()
		return n, nil
	default:
		_ = s.Reset()
		return n, fmt.Errorf("%s refused the messages: %w", p, ctxErr(ctx, err))
	}
}
