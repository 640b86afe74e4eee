package kad

import (
	"context"
	"fmt"
	"math"
	"sync"

	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/kadlib/kad/internal/kbucket"
	"github.com/kadlib/kad/internal/lookup"
	"github.com/kadlib/kad/internal/pb"
)

// Optimistic provide. A classic provide waits for the whole lookup, whose
// tail (the last of the k closest answering) is its slowest part, and only
// then sends. Here a peer gets the record as soon as it is very likely to
// be among the k closest:
//
//   - near: its distance to the key is below the expected distance of the
//     k-th closest peer, k/N of the keyspace, with N the network size
//     estimated from how densely peers surround us in our own table. This
//     applies from the start (to the seeds) and to every peer a response
//     names, before it is even asked;
//   - converged: once the beta closest peers known have answered, nothing
//     much closer remains to be found, so the k closest known get it;
//   - final: when the lookup ends, whichever of its k closest did not.
//
// Provide returns once the record was written to half of k such peers (or,
// in a small network, once every send finished); the lookup and the
// remaining sends go on in the background, owned by the DHT and stopped by
// Close. Half is plenty to be found: a finder's lookup ends by asking the
// k closest peers, so it needs just one of them to hold the record, and
// with half of them holding it even a 30% crash of the network leaves one
// with overwhelming probability. Waiting for more would mostly wait for
// dials to peers we are not yet connected to. A record sent to a peer that
// ends up just outside the k closest costs that peer one entry; it is
// never a miss.

// provideReturnNum/provideReturnDen of k written sends end Provide's wait.
const (
	provideReturnNum = 1
	provideReturnDen = 2
)

// provideRun is one announcement in flight.
type provideRun struct {
	s      *providerSide
	ctx    context.Context // of the sends: outlives Provide's return
	target kbucket.ID
	msg    *pb.Message
	k      int
	near   float64 // normalized distance under which a peer gets the record at once

	// Driver-goroutine state: touched only by the lookup hook and, after
	// the lookup returned, by the same goroutine.
	converged bool
	attempted map[peer.ID]bool
	sends     sync.WaitGroup

	mu        sync.Mutex
	written   int // sends whose message was written
	reached   int // sends the peer accepted (closed its side, no reset)
	pending   int // sends not finished
	done      bool
	lookupErr error
	changed   chan struct{} // capacity 1: a poke after every change
}

// announce sends ADD_PROVIDER for key to the k closest peers, optimistically
// (see above), and returns once enough were written.
func (s *providerSide) announce(ctx context.Context, key []byte, addrs []ma.Multiaddr) error {
	k := s.k
	// The sends outlive Provide's return, so they run on a context of their
	// own: cancelled by the caller only until Provide returns, by Close
	// always.
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	unlinkCaller := context.AfterFunc(ctx, cancel)
	defer unlinkCaller()
	r := &provideRun{
		s:         s,
		ctx:       rctx,
		target:    kbucket.KeyForBytes(key),
		msg:       s.addProviderMsg(key, addrs),
		k:         k,
		near:      optimisticNear(s.q.kthDistance(k)),
		attempted: make(map[peer.ID]bool),
		changed:   make(chan struct{}, 1),
	}
	if !s.own.spawn(func() {
		stopLife := context.AfterFunc(s.own.ctx, cancel)
		defer stopLife()
		defer cancel()
		r.run(key)
	}) {
		cancel()
		return ErrClosed
	}

	returnAfter := (provideReturnNum*k + provideReturnDen - 1) / provideReturnDen
	for {
		r.mu.Lock()
		written, reached, pending, done, lerr := r.written, r.reached, r.pending, r.done, r.lookupErr
		r.mu.Unlock()
		if written >= returnAfter {
			return nil
		}
		if done && pending == 0 {
			if reached > 0 {
				return nil
			}
			if lerr != nil {
				return fmt.Errorf("%w: %w", ErrNoPeerReached, lerr)
			}
			return ErrNoPeerReached
		}
		select {
		case <-r.changed:
		case <-ctx.Done():
			cancel()
			return fmt.Errorf("%w (%d sends written)", ctx.Err(), written)
		}
	}
}

// optimisticNear is the distance within which a provide sends to a peer
// before its lookup ends: the estimated distance to a key's k-th closest
// peer. With fewer than k peers known there is no estimate (+Inf), and
// every peer would count as near, so the first peers met, wherever they
// are, would take the sends Provide waits for: then nothing is sent
// early, and the sends go to the closest peers the lookup finds.
func optimisticNear(kth float64) float64 {
	if math.IsInf(kth, 1) {
		return 0
	}
	return kth
}

// addProviderMsg announces us, at addrs, as a provider of key.
func (s *providerSide) addProviderMsg(key []byte, addrs []ma.Multiaddr) *pb.Message {
	return &pb.Message{Type: pb.AddProvider, Key: key, ProviderPeers: []pb.Peer{s.encode(s.self, addrs)}}
}

// run drives the lookup, sends to its final k closest and waits for every
// send; it runs on its own goroutine.
func (r *provideRun) run(key []byte) {
	s := r.s
	for _, p := range s.nearest(r.target, r.k) {
		if r.isNear(p) {
			r.send(p)
		}
	}
	res, err := s.q.runOpts(r.ctx, r.target, func(ctx context.Context, p peer.ID) (queryAnswer, error) {
		closer, err := s.q.findNode(ctx, p, key)
		return queryAnswer{closer: closer}, err
	}, lookupOpts{hook: r.onProgress})
	if res != nil && r.ctx.Err() == nil {
		for _, p := range res.closest {
			if !r.attempted[p] {
				r.send(p)
			}
		}
	}
	if err == nil {
		s.touch(r.target)
	}
	r.mu.Lock()
	r.done, r.lookupErr = true, err
	r.mu.Unlock()
	r.poke()
	r.sends.Wait()
	r.mu.Lock()
	written, reached := r.written, r.reached
	r.mu.Unlock()
	s.log.Debug("provide finished", "key", r.target, "attempted", len(r.attempted), "written", written, "reached", reached, "err", err)
}

// onProgress is the lookup hook: it sends to the peers now likely among
// the k closest.
func (r *provideRun) onProgress(l *lookup.Lookup) {
	cands := l.Closest(r.k)
	if !r.converged {
		beta := min(r.s.beta, len(cands))
		conv := beta > 0
		for _, p := range cands[:beta] {
			if l.State(p) != lookup.Succeeded {
				conv = false
				break
			}
		}
		r.converged = conv
	}
	for _, p := range cands {
		if !r.attempted[p] && (r.converged || r.isNear(p)) {
			r.send(p)
		}
	}
}

func (r *provideRun) isNear(p peer.ID) bool {
	return kbucket.Fraction(kbucket.PeerKey(p).Xor(r.target)) < r.near
}

func (r *provideRun) poke() {
	select {
	case r.changed <- struct{}{}:
	default:
	}
}

// send starts one ADD_PROVIDER to p.
func (r *provideRun) send(p peer.ID) {
	r.attempted[p] = true
	r.mu.Lock()
	r.pending++
	r.mu.Unlock()
	r.sends.Add(1)
	started := r.s.own.spawn(func() {
		defer r.sends.Done()
		_, err := r.s.q.sendOneWay(r.ctx, p, []*pb.Message{r.msg}, func() {
			r.mu.Lock()
			r.written++
			r.mu.Unlock()
			r.poke()
		})
		if err != nil {
			r.s.log.Debug("ADD_PROVIDER not delivered", "peer", p, "err", err)
		}
		r.mu.Lock()
		r.pending--
		if err == nil {
			r.reached++
		}
		r.mu.Unlock()
		r.poke()
	})
	if !started { // closing: nothing was sent
		r.sends.Done()
		r.mu.Lock()
		r.pending--
		r.mu.Unlock()
		r.poke()
	}
}
