package kad

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/kadlib/kad/internal/pb"
	"github.com/kadlib/kad/internal/wire"
)

// ErrNoResponse is returned when a peer closes a stream without answering.
var ErrNoResponse = errors.New("kad: peer sent no response")

// maxIdleStreams is how many idle outbound streams are kept per peer. A
// few let concurrent lookups reuse streams without queueing behind each
// other; more would pin a handler goroutine on the remote for nothing.
const maxIdleStreams = 1

// outStream is an outbound stream with its reader, reusable for several
// request/response exchanges.
type outStream struct {
	s  network.Stream
	r  *wire.Reader
	at time.Time // when it went idle
}

// sender sends requests to peers over pooled, reused streams.
type sender struct {
	h       host.Host
	protos  []protocol.ID
	timeout time.Duration
	maxMsg  int
	idleTTL time.Duration

	mu   sync.Mutex
	idle map[peer.ID][]*outStream
}

func newSender(h host.Host, protos []protocol.ID, timeout time.Duration, maxMsg int, idleTTL time.Duration) *sender {
	return &sender{h: h, protos: protos, timeout: timeout, maxMsg: maxMsg, idleTTL: idleTTL, idle: make(map[peer.ID][]*outStream)}
}

func (s *sender) get(p peer.ID, now time.Time) *outStream {
	s.mu.Lock()
	defer s.mu.Unlock()
	list := s.idle[p]
	for len(list) > 0 {
		os := list[len(list)-1]
		list = list[:len(list)-1]
		if now.Sub(os.at) < s.idleTTL {
			if len(list) == 0 {
				delete(s.idle, p)
			} else {
				s.idle[p] = list
			}
			return os
		}
		_ = os.s.Close()
	}
	delete(s.idle, p)
	return nil
}

func (s *sender) put(p peer.ID, os *outStream) {
	os.at = time.Now()
	s.mu.Lock()
	if len(s.idle[p]) < maxIdleStreams {
		s.idle[p] = append(s.idle[p], os)
		s.mu.Unlock()
		return
	}
	s.mu.Unlock()
	_ = os.s.Close()
}

// dropPeer closes the idle streams to p, called when p disconnects.
func (s *sender) dropPeer(p peer.ID) {
	s.mu.Lock()
	list := s.idle[p]
	delete(s.idle, p)
	s.mu.Unlock()
	for _, os := range list {
		_ = os.s.Reset()
	}
}

// sweep closes idle streams that have waited longer than the idle TTL:
// each pins goroutines here and on the remote.
func (s *sender) sweep(now time.Time) {
	var old []*outStream
	s.mu.Lock()
	for p, list := range s.idle {
		kept := list[:0]
		for _, os := range list {
			if now.Sub(os.at) >= s.idleTTL {
				old = append(old, os)
			} else {
				kept = append(kept, os)
			}
		}
		if len(kept) == 0 {
			delete(s.idle, p)
		} else {
			s.idle[p] = kept
		}
	}
	s.mu.Unlock()
	for _, os := range old {
		_ = os.s.Close()
	}
}

// closeAll closes every idle stream, on DHT Close.
func (s *sender) closeAll() {
	s.mu.Lock()
	all := s.idle
	s.idle = make(map[peer.ID][]*outStream)
	s.mu.Unlock()
	for _, list := range all {
		for _, os := range list {
			_ = os.s.Reset()
		}
	}
}

// request sends req to p and returns its response. A reused stream that
// turns out to be dead is replaced once by a fresh one.
func (s *sender) request(ctx context.Context, p peer.ID, req *pb.Message) (*pb.Message, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	for attempt := 0; attempt < 2; attempt++ {
		os := s.get(p, time.Now())
		reused := os != nil
		if os == nil {
			st, err := openStream(ctx, s.h, p, s.protos)
			if err != nil {
				return nil, fmt.Errorf("open stream to %s: %w", p, err)
			}
			os = &outStream{s: st, r: wire.NewReader(st, s.maxMsg)}
		}
		resp, err := s.exchange(ctx, os, req)
		if err == nil {
			s.put(p, os)
			return resp, nil
		}
		_ = os.s.Reset()
		if !reused || ctx.Err() != nil {
			return nil, err
		}
	}
	return nil, fmt.Errorf("request to %s: %w", p, ErrNoResponse)
}

func (s *sender) exchange(ctx context.Context, os *outStream, req *pb.Message) (*pb.Message, error) {
	if dl, ok := ctx.Deadline(); ok {
		_ = os.s.SetDeadline(dl)
	}
	// A blocked read does not watch ctx: reset the stream if ctx ends.
	stop := context.AfterFunc(ctx, func() { _ = os.s.Reset() })
	defer stop()
	if err := wire.WriteMsg(os.s, req); err != nil {
		return nil, ctxErr(ctx, err)
	}
	resp := new(pb.Message)
	if err := os.r.ReadMsg(resp); err != nil {
		if errors.Is(err, io.EOF) {
			err = ErrNoResponse
		}
		return nil, ctxErr(ctx, err)
	}
	// The reader reuses its buffer: copy out what the response aliases.
	out := resp.Clone()
	_ = os.s.SetDeadline(time.Time{})
	return out, nil
}

// send writes msg to p without waiting for an answer (ADD_PROVIDER).
func (s *sender) send(ctx context.Context, p peer.ID, msg *pb.Message) error {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	for attempt := 0; attempt < 2; attempt++ {
		os := s.get(p, time.Now())
		reused := os != nil
		if os == nil {
			st, err := openStream(ctx, s.h, p, s.protos)
			if err != nil {
				return fmt.Errorf("open stream to %s: %w", p, err)
			}
			os = &outStream{s: st, r: wire.NewReader(st, s.maxMsg)}
		}
		if dl, ok := ctx.Deadline(); ok {
			_ = os.s.SetWriteDeadline(dl)
		}
		// Not every transport honours deadlines (mocknet does not): a
		// write blocked past ctx is ended by resetting the stream.
		stop := context.AfterFunc(ctx, func() { _ = os.s.Reset() })
		err := wire.WriteMsg(os.s, msg)
		if stop() && err == nil {
			_ = os.s.SetWriteDeadline(time.Time{})
			s.put(p, os)
			return nil
		}
		_ = os.s.Reset()
		if !reused || ctx.Err() != nil {
			return ctxErr(ctx, err)
		}
	}
	return fmt.Errorf("send to %s: %w", p, ErrNoResponse)
}

// ctxErr prefers the context's error, which says why a stream was reset.
func ctxErr(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("%w (%v)", cerr, err)
	}
	return err
}
