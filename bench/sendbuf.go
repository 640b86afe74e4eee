package main

import (
	"context"
	"sync"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// A mocknet stream hands the writer's bytes over one Write at a time and,
// once 256 bytes are queued, holds the writer until the queued bytes have
// crossed the link: a writer of many small messages waits a link latency
// per 256 bytes, which no real transport does (TCP and QUIC have send
// buffers). bufStream gives a stream a send buffer: Write copies into it
// and returns, and a flusher started on demand (it exits when the buffer
// is empty, so idle streams hold no goroutine) writes everything queued
// in one Write. Both implementations' streams get it when the network is
// built with sendBuf, inbound and outbound alike.

// maxSendBuf bounds the bytes queued on one stream; a writer past it
// waits for the flusher, as on a real transport with a full buffer.
const maxSendBuf = 1 << 20

type bufStream struct {
	network.Stream
	mu       sync.Mutex
	cond     *sync.Cond
	buf      []byte
	flushing bool
	err      error
}

func newBufStream(s network.Stream) *bufStream {
	b := &bufStream{Stream: s}
	b.cond = sync.NewCond(&b.mu)
	return b
}

func (s *bufStream) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.buf) >= maxSendBuf && s.err == nil {
		s.cond.Wait()
	}
	if s.err != nil {
		return 0, s.err
	}
	s.buf = append(s.buf, p...)
	if !s.flushing {
		s.flushing = true
		go s.flush()
	}
	return len(p), nil
}

func (s *bufStream) flush() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.buf) > 0 && s.err == nil {
		b := s.buf
		s.buf = nil
		s.mu.Unlock()
		_, err := s.Stream.Write(b)
		s.mu.Lock()
		if err != nil {
			s.err = err
		}
		s.cond.Broadcast()
	}
	s.buf = nil
	s.flushing = false
	s.cond.Broadcast()
}

// drain waits until everything written has been handed to the stream.
func (s *bufStream) drain() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.flushing {
		s.cond.Wait()
	}
	return s.err
}

func (s *bufStream) CloseWrite() error {
	if err := s.drain(); err != nil {
		_ = s.Stream.Reset()
		return err
	}
	return s.Stream.CloseWrite()
}

func (s *bufStream) Close() error {
	if err := s.drain(); err != nil {
		_ = s.Stream.Reset()
		return err
	}
	return s.Stream.Close()
}

// bufNetwork is the host's network with NewStream wrapped: kad opens its
// streams through the network, not the host.
type bufNetwork struct {
	network.Network
}

func (n bufNetwork) NewStream(ctx context.Context, p peer.ID) (network.Stream, error) {
	s, err := n.Network.NewStream(ctx, p)
	if err != nil {
		return nil, err
	}
	return newBufStream(s), nil
}

func (h *countingHost) Network() network.Network {
	if !h.sendBuf {
		return h.Host.Network()
	}
	return bufNetwork{h.Host.Network()}
}

func (h *countingHost) NewStream(ctx context.Context, p peer.ID, pids ...protocol.ID) (network.Stream, error) {
	s, err := h.Host.NewStream(ctx, p, pids...)
	if err != nil || !h.sendBuf {
		return s, err
	}
	return newBufStream(s), nil
}
