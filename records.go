package kad

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ipfs/boxo/ipns"
	record "github.com/libp2p/go-libp2p-record"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/core/routing"

	"github.com/kadlib/kad/internal/kbucket"
	"github.com/kadlib/kad/internal/pb"
	"github.com/kadlib/kad/internal/records"
)

// ErrInvalidRecord is wrapped by PutValue's error when the record is
// refused before anything is sent: the validator rejects it, its
// namespace has no validator, or it is over MaxRecordSize.
var ErrInvalidRecord = errors.New("kad: invalid record")

// ErrNotStored is wrapped by PutValue's error when none of the closest
// peers accepted the record (it is still stored locally).
var ErrNotStored = errors.New("kad: no peer accepted the record")

const (
	// recordSweepInterval is how often expired records are swept out; reads
	// drop them anyway, the sweep only reclaims space.
	recordSweepInterval = time.Hour
	// recordSweepBatch bounds the deletions of one sweep step.
	recordSweepBatch = 256
)

// aminoPrefix is the protocol prefix of the public Amino DHT, where every
// peer validates the ipns namespace too.
const aminoPrefix protocol.ID = "/ipfs"

// buildValidator returns the validator to use, never sharing a map with
// the caller's options. The default is pk, plus ipns under the Amino
// prefix: there every go and js peer runs the IPNS validator, while a
// private network decides for itself which namespaces it serves. keys
// gives the IPNS validator the public keys that records do not embed.
func (v *valuesConfig) buildValidator(prefix protocol.ID, keys peerstore.KeyBook) record.Validator {
	var nv record.NamespacedValidator
	switch base := v.validator.(type) {
	case nil:
		nv = record.NamespacedValidator{"pk": record.PublicKeyValidator{}}
		if prefix == aminoPrefix {
			nv["ipns"] = ipns.Validator{KeyBook: keys}
		}
	case record.NamespacedValidator:
		nv = make(record.NamespacedValidator, len(base)+len(v.namespaces))
		for ns, val := range base {
			nv[ns] = val
		}
	default:
		return base
	}
	for _, n := range v.namespaces {
		nv[n.ns] = n.v
	}
	return nv
}

// valuesState is the values side's runtime state.
type valuesState struct {
	on        bool
	validator record.Validator
	store     *records.Store
}

// Validator returns the record validator the DHT checks values with, as
// the Validator and NamespacedValidator options built it, so code that
// reads through several DHTs (package dual) can choose among their
// answers as each DHT would. It is nil when DisableValues is set.
func (d *DHT) Validator() record.Validator { return d.ext.values.validator }

func (d *DHT) initValues() error {
	vc := &d.cfg.values
	if vc.disabled {
		return nil
	}
	d.ext.values = valuesState{
		on:        true,
		validator: vc.buildValidator(d.cfg.node.prefix, d.ps),
		store:     records.New(d.ext.ds, vc.maxRecordAge, time.Now),
	}
	d.srv.handle(pb.PutValue, d.handlePutValue)
	d.srv.handle(pb.GetValue, d.handleGetValue)
	return nil
}

// startValues starts the expiry sweep, owned by d.wg.
func (d *DHT) startValues() {
	if !d.ext.values.on {
		return
	}
	every := min(recordSweepInterval, max(d.cfg.values.maxRecordAge/2, time.Second))
	d.own.every(every, d.sweepRecords)
}

// sweepRecords runs sweep steps until no expired record is left, yielding
// between steps so puts and gets are never held up long.
func (d *DHT) sweepRecords() {
	total := 0
	for d.ctx.Err() == nil {
		n, done, err := d.ext.values.store.Sweep(d.ctx, recordSweepBatch)
		total += n
		if err != nil {
			if d.ctx.Err() == nil {
				d.log.Warn("record sweep failed", "err", err)
			}
			return
		}
		if done {
			break
		}
	}
	if total > 0 {
		d.log.Debug("expired records swept", "count", total)
	}
}

func (d *DHT) closeValues() error { return nil }

// checkRecord says whether we would store key/value at all: size, then
// the validator.
func (d *DHT) checkRecord(key string, value []byte) error {
	if size, limit := len(key)+len(value), d.cfg.values.maxRecordSize; size > limit {
		return fmt.Errorf("%w: record of %d bytes over the %d-byte limit", ErrInvalidRecord, size, limit)
	}
	if err := d.ext.values.validator.Validate(key, value); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidRecord, err)
	}
	return nil
}

// replaceIf returns the store's decision function: value replaces the
// stored record when they are equal (refreshing its age), when the stored
// one is no longer valid, or when the selector prefers value.
func (d *DHT) replaceIf(key string, value []byte) func(stored []byte) (bool, error) {
	return func(stored []byte) (bool, error) {
		if bytes.Equal(stored, value) {
			return true, nil
		}
		v := d.ext.values.validator
		if v.Validate(key, stored) != nil {
			return true, nil
		}
		i, err := v.Select(key, [][]byte{value, stored})
		if err != nil {
			return false, fmt.Errorf("select: %w", err)
		}
		return i == 0, nil
	}
}

// localRecord returns our stored record for key if it is still valid,
// deleting it if it is not.
func (d *DHT) localRecord(ctx context.Context, key string) (records.Record, bool, error) {
	r, ok, err := d.ext.values.store.Get(ctx, []byte(key))
	if err != nil || !ok {
		return records.Record{}, false, err
	}
	if err := d.ext.values.validator.Validate(key, r.Value); err != nil {
		d.log.Debug("stored record no longer valid", "key", key, "err", err)
		return records.Record{}, false, d.ext.values.store.Delete(ctx, []byte(key))
	}
	return r, true, nil
}

func (d *DHT) handlePutValue(ctx context.Context, from peer.ID, req *pb.Message) (*pb.Message, error) {
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
	if err := d.checkRecord(key, rec.Value); err != nil {
		return nil, fmt.Errorf("%w: %w", errBadRequest, err)
	}
	if _, err := d.ext.values.store.Put(ctx, rec.Key, rec.Value, d.replaceIf(key, rec.Value)); err != nil {
		if errors.Is(err, records.ErrNotBetter) {
			return nil, fmt.Errorf("%w: stored record is better", errBadRequest)
		}
		return nil, fmt.Errorf("store record: %w", err)
	}
	// Echo the request: go peers compare the echoed value with what they
	// sent. Peer lists have no business in a PUT_VALUE: drop them.
	return &pb.Message{Type: pb.PutValue, Key: req.Key, Record: rec, ClusterLevelRaw: req.ClusterLevelRaw}, nil
}

func (d *DHT) handleGetValue(ctx context.Context, from peer.ID, req *pb.Message) (*pb.Message, error) {
	if len(req.Key) == 0 {
		return nil, fmt.Errorf("%w: GET_VALUE without key", errBadRequest)
	}
	resp := &pb.Message{Type: pb.GetValue, Key: req.Key, ClusterLevelRaw: req.ClusterLevelRaw}
	r, ok, err := d.localRecord(ctx, string(req.Key))
	if err != nil {
		// A datastore failure: still route the requester onwards.
		d.log.Warn("read stored record", "err", err)
	}
	if ok {
		resp.Record = &pb.Record{Key: r.Key, Value: r.Value, TimeReceived: r.TimeReceived()}
	}
	resp.CloserPeers = d.srv.closerPeers(req.Key, from)
	return resp, nil
}

// valueOptions applies routing options for the values API.
func (d *DHT) valueOptions(op, key string, opts []routing.Option) (*routing.Options, error) {
	if d.own.isClosed() {
		return nil, ErrClosed
	}
	if !d.ext.values.on {
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

// PutValue stores value under key on the k peers closest to key, and
// locally. The record is checked first (ErrInvalidRecord: nothing is
// sent), then the lookup runs and every closest peer is sent PUT_VALUE in
// parallel. It succeeds when at least one peer accepted (Accepted reports
// how many) and fails with ErrNotStored when none did. With
// routing.Offline it only stores locally. If the local store holds a
// record the validator prefers, it fails with *record.ErrBetterRecord.
func (d *DHT) PutValue(ctx context.Context, key string, value []byte, opts ...routing.Option) (err error) {
	ctx, span := d.tel.startSpan(ctx, "PutValue")
	defer func() { endSpan(span, err) }()
	o, err := d.valueOptions("put value", key, opts)
	if err != nil {
		return err
	}
	acceptedOut, _ := o.Other[acceptedKey{}].(*int)
	if acceptedOut != nil {
		*acceptedOut = 0
	}
	if err := d.checkRecord(key, value); err != nil {
		return fmt.Errorf("kad: put value %q: %w", key, err)
	}
	old, err := d.ext.values.store.Put(ctx, []byte(key), value, d.replaceIf(key, value))
	if errors.Is(err, records.ErrNotBetter) {
		return fmt.Errorf("kad: put value %q: %w", key, &record.ErrBetterRecord{Key: key, Value: old.Value})
	}
	if err != nil {
		return fmt.Errorf("kad: put value %q: %w", key, err)
	}
	if o.Offline {
		return nil
	}
	peers, err := d.GetClosestPeers(ctx, key)
	if err != nil {
		return fmt.Errorf("kad: put value %q: %w", key, err)
	}
	accepted, firstErr := d.putToPeers(ctx, key, value, peers)
	if acceptedOut != nil {
		*acceptedOut = accepted
	}
	d.log.Debug("value put", "key", key, "accepted", accepted, "of", len(peers))
	if accepted == 0 {
		return fmt.Errorf("kad: put value %q: %w (%d peers tried): %w", key, ErrNotStored, len(peers), firstErr)
	}
	return nil
}

// putToPeers sends PUT_VALUE to every peer in parallel and waits for all.
// It returns how many accepted and the first failure.
func (d *DHT) putToPeers(ctx context.Context, key string, value []byte, peers []peer.ID) (int, error) {
	var (
		wg       sync.WaitGroup
		accepted atomic.Int32
		errOnce  sync.Once
		firstErr error
	)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(d.ctx, cancel)
	defer stop()
	for _, p := range peers {
		wg.Add(1)
		if !d.own.spawn(func() {
			defer wg.Done()
			if err := d.putToPeer(ctx, p, key, value); err != nil {
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
func (d *DHT) putToPeer(ctx context.Context, p peer.ID, key string, value []byte) error {
	kb := []byte(key)
	resp, err := d.q.request(ctx, p, &pb.Message{Type: pb.PutValue, Key: kb, Record: &pb.Record{Key: kb, Value: value}})
	if err != nil {
		return fmt.Errorf("put value to %s: %w", p, err)
	}
	if resp.Record == nil || !bytes.Equal(resp.Record.Value, value) {
		return fmt.Errorf("put value to %s: echo differs from the record sent", p)
	}
	return nil
}

// GetValue returns the best valid value stored under key: its own record
// and those of the peers met on a lookup for key are validated and
// compared with the validator's Select. The lookup runs to the end unless
// a Quorum is reached first. Afterwards the closest peers that answered
// with an older value or none are sent the best one in the background
// (repair). With routing.Offline only the local store is read. A key
// nobody holds gives an error wrapping routing.ErrNotFound.
func (d *DHT) GetValue(ctx context.Context, key string, opts ...routing.Option) (_ []byte, err error) {
	ctx, span := d.tel.startSpan(ctx, "GetValue")
	defer func() { endSpan(span, err) }()
	o, err := d.valueOptions("get value", key, opts)
	if err != nil {
		return nil, err
	}
	best, err := d.searchValue(ctx, key, o, nil)
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

// SearchValue streams each better value for key as it is found: the first
// valid value, then every value the validator prefers to the last one
// sent, so the last value received is GetValue's answer. The channel is
// closed when the lookup ends (as GetValue's, Quorum included) or ctx is
// done; cancel ctx to stop reading early. Repair runs as for GetValue.
func (d *DHT) SearchValue(ctx context.Context, key string, opts ...routing.Option) (<-chan []byte, error) {
	o, err := d.valueOptions("search value", key, opts)
	if err != nil {
		return nil, err
	}
	out := make(chan []byte)
	if !d.own.spawn(func() {
		defer close(out)
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		stop := context.AfterFunc(d.ctx, cancel)
		defer stop()
		_, err := d.searchValue(ctx, key, o, func(ctx context.Context, v []byte) {
			select {
			case out <- v:
			case <-ctx.Done():
			}
		})
		if err != nil {
			d.log.Debug("search value ended", "key", key, "err", err)
		}
	}) {
		return nil, fmt.Errorf("kad: search value: %w", ErrClosed)
	}
	return out, nil
}

// valueSearch is the state one GetValue or SearchValue shares between the
// lookup's request goroutines.
type valueSearch struct {
	d      *DHT
	key    string
	quorum int
	emit   func(ctx context.Context, v []byte) // may be nil
	seen   func(from peer.ID, v []byte)        // OnValue; may be nil

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
		i, err := s.d.ext.values.validator.Select(s.key, [][]byte{s.best, v})
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
func (d *DHT) searchValue(ctx context.Context, key string, o *routing.Options, emit func(context.Context, []byte)) ([]byte, error) {
	s := &valueSearch{d: d, key: key, quorum: quorumOf(o), emit: emit, answers: make(map[peer.ID][]byte)}
	s.seen, _ = o.Other[onValueKey{}].(func(peer.ID, []byte))
	local, haveLocal, err := d.localRecord(ctx, key)
	if err != nil {
		d.log.Warn("read stored record", "key", key, "err", err)
	}
	var localValue []byte
	if haveLocal {
		localValue = local.Value
		if localValue == nil {
			localValue = []byte{} // an empty value is still a value
		}
		if s.offer(ctx, d.self, localValue) || o.Offline {
			return s.best, nil
		}
	}
	if o.Offline {
		return nil, nil
	}
	kb := []byte(key)
	res, lerr := d.q.runOpts(ctx, kbucket.KeyForBytes(kb), func(ctx context.Context, p peer.ID) ([]peer.AddrInfo, bool, error) {
		resp, err := d.q.request(ctx, p, &pb.Message{Type: pb.GetValue, Key: kb})
		if err != nil {
			return nil, false, err
		}
		closer := decodePeers(resp.CloserPeers, d.self, maxCloserPeersFactor*d.cfg.table.bucketSize)
		d.q.learnAddrs(closer)
		return closer, s.offer(ctx, p, d.receivedValue(p, key, resp.Record)), nil
	}, lookupOpts{stopsEarly: s.quorum > 0})
	s.mu.Lock()
	s.ended = true
	best, answers := s.best, s.answers
	s.mu.Unlock()
	if res != nil && best != nil {
		d.repair(key, best, localValue, res.closest, answers)
	}
	return best, lerr
}

// receivedValue returns the value of a record a peer sent for key, or nil
// when there is none or it is not valid.
func (d *DHT) receivedValue(from peer.ID, key string, rec *pb.Record) []byte {
	if rec == nil {
		return nil
	}
	if string(rec.Key) != key {
		d.log.Debug("peer answered with a record for another key", "peer", from)
		return nil
	}
	if err := d.checkRecord(key, rec.Value); err != nil {
		d.log.Debug("peer answered with an invalid record", "peer", from, "err", err)
		return nil
	}
	if rec.Value == nil {
		return []byte{}
	}
	return rec.Value
}

// repair sends best to the closest peers that answered without it, and
// refreshes our own copy if it was older, in the background (owned by
// d.wg, bounded by the request timeout, cancelled by Close) so that a read
// never waits for writes.
func (d *DHT) repair(key string, best, local []byte, closest []peer.ID, answers map[peer.ID][]byte) {
	var stale []peer.ID
	for _, p := range closest {
		if v, ok := answers[p]; ok && !bytes.Equal(v, best) {
			stale = append(stale, p)
		}
	}
	if local != nil && !bytes.Equal(local, best) {
		if _, err := d.ext.values.store.Put(d.ctx, []byte(key), best, d.replaceIf(key, best)); err != nil {
			d.log.Debug("refresh local record", "key", key, "err", err)
		}
	}
	if len(stale) == 0 {
		return
	}
	d.log.Debug("repairing stale peers", "key", key, "peers", len(stale))
	d.own.spawn(func() {
		n, err := d.putToPeers(d.ctx, key, best, stale)
		if n < len(stale) {
			d.log.Debug("repair incomplete", "key", key, "repaired", n, "of", len(stale), "err", err)
		}
	})
}
