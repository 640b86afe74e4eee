package kad

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	ds "github.com/ipfs/go-datastore"
	record "github.com/libp2p/go-libp2p-record"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/core/routing"

	"github.com/kadlib/kad/internal/kbucket"
	"github.com/kadlib/kad/internal/pb"
	"github.com/kadlib/kad/internal/records"
)

// valuesDeps is what the values side uses of the rest of the node.
type valuesDeps struct {
	own *owner       // every goroutine it starts, and the node's lifetime
	q   *querier     // lookups and requests
	log *slog.Logger // the node's logger
	// closer returns the closer peers a GET_VALUE answer carries.
	closer func(key []byte, from peer.ID) []pb.Peer
	// closest looks up the peers closest to key, where a put goes.
	closest func(ctx context.Context, key string) ([]peer.ID, error)
}

// values is the values side: the record store and validator, the
// PUT_VALUE and GET_VALUE handlers, puts, gets and searches, repair and
// the expiry sweep. When the DHT has DisableValues, on is false and it
// has neither store nor validator.
type values struct {
	valuesDeps
	cfg  valuesConfig
	k    int     // bucket size: bounds the closer peers taken from an answer
	self peer.ID // our id

	on        bool
	validator record.Validator
	store     *records.Store
}

// newValues builds the values side on store, with the validator cfg
// builds for prefix (keys: the public keys records do not embed).
func newValues(cfg valuesConfig, k int, self peer.ID, prefix protocol.ID, keys peerstore.KeyBook, store ds.Batching, deps valuesDeps) *values {
	v := &values{valuesDeps: deps, cfg: cfg, k: k, self: self}
	if cfg.disabled {
		return v
	}
	v.on = true
	v.validator = cfg.buildValidator(prefix, keys)
	v.store = records.New(store, cfg.maxRecordAge, time.Now)
	return v
}

// start starts the expiry sweep, owned by own.
func (v *values) start() {
	if !v.on {
		return
	}
	every := min(recordSweepInterval, max(v.cfg.maxRecordAge/2, time.Second))
	v.own.every(every, v.sweep)
}

// sweep runs sweep steps until no expired record is left, yielding
// between steps so puts and gets are never held up long.
func (v *values) sweep() {
	ctx := v.own.ctx
	total := 0
	for ctx.Err() == nil {
		n, done, err := v.store.Sweep(ctx, recordSweepBatch)
		total += n
		if err != nil {
			if ctx.Err() == nil {
				v.log.Warn("record sweep failed", "err", err)
			}
			return
		}
		if done {
			break
		}
	}
	if total > 0 {
		v.log.Debug("expired records swept", "count", total)
	}
}

func (v *values) close() error { return nil }

// check says whether we would store key/value at all: size, then the
// validator.
func (v *values) check(key string, value []byte) error {
	if size, limit := len(key)+len(value), v.cfg.maxRecordSize; size > limit {
		return fmt.Errorf("%w: record of %d bytes over the %d-byte limit", ErrInvalidRecord, size, limit)
	}
	if err := v.validator.Validate(key, value); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidRecord, err)
	}
	return nil
}

// replaceIf returns the store's decision function: value replaces the
// stored record when they are equal (refreshing its age), when the stored
// one is no longer valid, or when the selector prefers value.
func (v *values) replaceIf(key string, value []byte) func(stored []byte) (bool, error) {
	return func(stored []byte) (bool, error) {
		if bytes.Equal(stored, value) {
			return true, nil
		}
		val := v.validator
		if val.Validate(key, stored) != nil {
			return true, nil
		}
		i, err := val.Select(key, [][]byte{value, stored})
		if err != nil {
			return false, fmt.Errorf("select: %w", err)
		}
		return i == 0, nil
	}
}

// local returns our stored record for key if it is still valid, deleting
// it if it is not.
func (v *values) local(ctx context.Context, key string) (records.Record, bool, error) {
	r, ok, err := v.store.Get(ctx, []byte(key))
	if err != nil || !ok {
		return records.Record{}, false, err
	}
	if err := v.validator.Validate(key, r.Value); err != nil {
		v.log.Debug("stored record no longer valid", "key", key, "err", err)
		return records.Record{}, false, v.store.Delete(ctx, []byte(key))
	}
	return r, true, nil
}

func (v *values) handlePutValue(ctx context.Context, from peer.ID, req *pb.Message) (*pb.Message, error) {
	if len(req.Key) == 0 {
		return nil, fmt.Errorf("%w: PUT_VALUE without key", errBadRequest)
	}
	rec := req.Record
	if rec == nil {
		return nil, fmt.Errorf("%w: PUT_VALUE without record", errBadRequest)
	}
	if !bytes.Equal(req.Key, rec.Key) {
		return nil, fmt.Errorf("%w: PUT_VALUE key differs from record key", errBadRequest)
	}
	key := string(rec.Key)
	if err := v.check(key, rec.Value); err != nil {
		return nil, fmt.Errorf("%w: %w", errBadRequest, err)
	}
	if _, err := v.store.Put(ctx, rec.Key, rec.Value, v.replaceIf(key, rec.Value)); err != nil {
		if errors.Is(err, records.ErrNotBetter) {
			return nil, fmt.Errorf("%w: stored record is better", errBadRequest)
		}
		return nil, fmt.Errorf("store record: %w", err)
	}
	// Echo the request: go peers compare the echoed value with what they
	// sent. Peer lists have no business in a PUT_VALUE: drop them.
	return &pb.Message{Type: pb.PutValue, Key: req.Key, Record: rec, ClusterLevelRaw: req.ClusterLevelRaw}, nil
}

func (v *values) handleGetValue(ctx context.Context, from peer.ID, req *pb.Message) (*pb.Message, error) {
	if len(req.Key) == 0 {
		return nil, fmt.Errorf("%w: GET_VALUE without key", errBadRequest)
	}
	resp := &pb.Message{Type: pb.GetValue, Key: req.Key, ClusterLevelRaw: req.ClusterLevelRaw}
	r, ok, err := v.local(ctx, string(req.Key))
	if err != nil {
		// A datastore failure: still route the requester onwards.
		v.log.Warn("read stored record", "err", err)
	}
	if ok {
		resp.Record = &pb.Record{Key: r.Key, Value: r.Value, TimeReceived: r.TimeReceived()}
	}
	resp.CloserPeers = v.closer(req.Key, from)
	return resp, nil
}

// options applies routing options for the values API.
func (v *values) options(op, key string, opts []routing.Option) (*routing.Options, error) {
	if v.own.isClosed() {
		return nil, ErrClosed
	}
	if !v.on {
		return nil, fmt.Errorf("kad: %s: %w", op, routing.ErrNotSupported)
	}
	if key == "" {
		return nil, fmt.Errorf("kad: %s: %w: empty key", op, ErrInvalidRecord)
	}
	var o routing.Options
	if err := o.Apply(opts...); err != nil {
		return nil, fmt.Errorf("kad: %s: %w", op, err)
	}
	return &o, nil
}

func quorumOf(o *routing.Options) int {
	n, _ := o.Other[quorumKey{}].(int)
	return n
}

// put is PutValue.
func (v *values) put(ctx context.Context, key string, value []byte, opts []routing.Option) error {
	o, err := v.options("put value", key, opts)
	if err != nil {
		return err
	}
	acceptedOut, _ := o.Other[acceptedKey{}].(*int)
	if acceptedOut != nil {
		*acceptedOut = 0
	}
	if err := v.check(key, value); err != nil {
		return fmt.Errorf("kad: put value %q: %w", key, err)
	}
	old, err := v.store.Put(ctx, []byte(key), value, v.replaceIf(key, value))
	if errors.Is(err, records.ErrNotBetter) {
		return fmt.Errorf("kad: put value %q: %w", key, &record.ErrBetterRecord{Key: key, Value: old.Value})
	}
	if err != nil {
		return fmt.Errorf("kad: put value %q: %w", key, err)
	}
	if o.Offline {
		return nil
	}
	peers, err := v.closest(ctx, key)
	if err != nil {
		return fmt.Errorf("kad: put value %q: %w", key, err)
	}
	accepted, firstErr := v.putToPeers(ctx, key, value, peers)
	if acceptedOut != nil {
		*acceptedOut = accepted
	}
	v.log.Debug("value put", "key", key, "accepted", accepted, "of", len(peers))
	if accepted == 0 {
		return fmt.Errorf("kad: put value %q: %w (%d peers tried): %w", key, ErrNotStored, len(peers), firstErr)
	}
	return nil
}

// putToPeers sends PUT_VALUE to every peer in parallel and waits for all.
// It returns how many accepted and the first failure.
func (v *values) putToPeers(ctx context.Context, key string, value []byte, peers []peer.ID) (int, error) {
	var (
		wg       sync.WaitGroup
		accepted atomic.Int32
		errOnce  sync.Once
		firstErr error
	)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(v.own.ctx, cancel)
	defer stop()
	for _, p := range peers {
		wg.Add(1)
		if !v.own.spawn(func() {
			defer wg.Done()
			if err := v.putToPeer(ctx, p, key, value); err != nil {
				errOnce.Do(func() { firstErr = err })
				return
			}
			accepted.Add(1)
		}) {
			wg.Done()
			errOnce.Do(func() { firstErr = ErrClosed })
		}
	}
	wg.Wait()
	if firstErr == nil && len(peers) == 0 {
		firstErr = ErrNoPeers
	}
	return int(accepted.Load()), firstErr
}

// putToPeer sends one PUT_VALUE and checks the echo, as go peers do.
func (v *values) putToPeer(ctx context.Context, p peer.ID, key string, value []byte) error {
	kb := []byte(key)
	resp, err := v.q.request(ctx, p, &pb.Message{Type: pb.PutValue, Key: kb, Record: &pb.Record{Key: kb, Value: value}})
	if err != nil {
		return fmt.Errorf("put value to %s: %w", p, err)
	}
	if resp.Record == nil || !bytes.Equal(resp.Record.Value, value) {
		return fmt.Errorf("put value to %s: echo differs from the record sent", p)
	}
	return nil
}

// get is GetValue.
func (v *values) get(ctx context.Context, key string, opts []routing.Option) ([]byte, error) {
	o, err := v.options("get value", key, opts)
	if err != nil {
		return nil, err
	}
	best, err := v.searchValue(ctx, key, o, nil)
	if best == nil {
		if err == nil {
			err = routing.ErrNotFound
		} else if !errors.Is(err, routing.ErrNotFound) {
			err = fmt.Errorf("%w: %w", routing.ErrNotFound, err)
		}
		return nil, fmt.Errorf("kad: get value %q: %w", key, err)
	}
	return best, nil
}

// search is SearchValue.
func (v *values) search(ctx context.Context, key string, opts []routing.Option) (<-chan []byte, error) {
	o, err := v.options("search value", key, opts)
	if err != nil {
		return nil, err
	}
	out := make(chan []byte)
	if !v.own.spawn(func() {
		defer close(out)
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		stop := context.AfterFunc(v.own.ctx, cancel)
		defer stop()
		_, err := v.searchValue(ctx, key, o, func(ctx context.Context, val []byte) {
			select {
			case out <- val:
			case <-ctx.Done():
			}
		})
		if err != nil {
			v.log.Debug("search value ended", "key", key, "err", err)
		}
	}) {
		return nil, fmt.Errorf("kad: search value: %w", ErrClosed)
	}
	return out, nil
}

// valueSearch is the state one GetValue or SearchValue shares between the
// lookup's request goroutines.
type valueSearch struct {
	validator record.Validator
	key       string
	quorum    int
	emit      func(ctx context.Context, v []byte) // may be nil
	seen      func(from peer.ID, v []byte)        // OnValue; may be nil

	mu      sync.Mutex
	ended   bool
	best    []byte
	valid   int                // valid values seen, ours included
	answers map[peer.ID][]byte // what each peer answered: nil for no valid value
}

// offer takes one peer's answer (nil: no valid value) and reports whether
// the quorum is reached. Better values are emitted in order, under mu.
func (s *valueSearch) offer(ctx context.Context, from peer.ID, v []byte) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended {
		return true
	}
	s.answers[from] = v
	if v == nil {
		return false
	}
	s.valid++
	if s.seen != nil {
		s.seen(from, v)
	}
	better := s.best == nil
	if !better && !bytes.Equal(v, s.best) {
		i, err := s.validator.Select(s.key, [][]byte{s.best, v})
		better = err == nil && i == 1
	}
	if better {
		s.best = v
		if s.emit != nil {
			s.emit(ctx, v)
		}
	}
	return s.quorum > 0 && s.valid >= s.quorum
}

// searchValue runs a value search and returns the best value (nil if none)
// with the lookup's error, if any.
func (v *values) searchValue(ctx context.Context, key string, o *routing.Options, emit func(context.Context, []byte)) ([]byte, error) {
	s := &valueSearch{validator: v.validator, key: key, quorum: quorumOf(o), emit: emit, answers: make(map[peer.ID][]byte)}
	s.seen, _ = o.Other[onValueKey{}].(func(peer.ID, []byte))
	local, haveLocal, err := v.local(ctx, key)
	if err != nil {
		v.log.Warn("read stored record", "key", key, "err", err)
	}
	var localValue []byte
	if haveLocal {
		localValue = local.Value
		if localValue == nil {
			localValue = []byte{} // an empty value is still a value
		}
		if s.offer(ctx, v.self, localValue) || o.Offline {
			return s.best, nil
		}
	}
	if o.Offline {
		return nil, nil
	}
	kb := []byte(key)
	res, lerr := v.q.runOpts(ctx, kbucket.KeyForBytes(kb), func(ctx context.Context, p peer.ID) (queryAnswer, error) {
		resp, err := v.q.request(ctx, p, &pb.Message{Type: pb.GetValue, Key: kb})
		if err != nil {
			return queryAnswer{}, err
		}
		closer := decodePeers(resp.CloserPeers, v.self, maxCloserPeersFactor*v.k)
		v.q.learnAddrs(closer)
		return queryAnswer{closer: closer, stop: s.offer(ctx, p, v.received(p, key, resp.Record))}, nil
	}, lookupOpts{stopsEarly: s.quorum > 0})
	s.mu.Lock()
	s.ended = true
	best, answers := s.best, s.answers
	s.mu.Unlock()
	if res != nil && best != nil {
		v.repair(key, best, localValue, res.closest, answers)
	}
	return best, lerr
}

// received returns the value of a record a peer sent for key, or nil when
// there is none or it is not valid.
func (v *values) received(from peer.ID, key string, rec *pb.Record) []byte {
	if rec == nil {
		return nil
	}
	if string(rec.Key) != key {
		v.log.Debug("peer answered with a record for another key", "peer", from)
		return nil
	}
	if err := v.check(key, rec.Value); err != nil {
		v.log.Debug("peer answered with an invalid record", "peer", from, "err", err)
		return nil
	}
	if rec.Value == nil {
		return []byte{}
	}
	return rec.Value
}

// repair sends best to the closest peers that answered without it, and
// refreshes our own copy if it was older, in the background (owned by
// own, bounded by the request timeout, cancelled by Close) so that a read
// never waits for writes.
func (v *values) repair(key string, best, local []byte, closest []peer.ID, answers map[peer.ID][]byte) {
	var stale []peer.ID
	for _, p := range closest {
		if val, ok := answers[p]; ok && !bytes.Equal(val, best) {
			stale = append(stale, p)
		}
	}
	if local != nil && !bytes.Equal(local, best) {
		if _, err := v.store.Put(v.own.ctx, []byte(key), best, v.replaceIf(key, best)); err != nil {
			v.log.Debug("refresh local record", "key", key, "err", err)
		}
	}
	if len(stale) == 0 {
		return
	}
	v.log.Debug("repairing stale peers", "key", key, "peers", len(stale))
	v.own.spawn(func() {
		n, err := v.putToPeers(v.own.ctx, key, best, stale)
		if n < len(stale) {
			v.log.Debug("repair incomplete", "key", key, "repaired", n, "of", len(stale), "err", err)
		}
	})
}
