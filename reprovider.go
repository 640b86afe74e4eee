package kad

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/ipfs/go-cid"
	ds "github.com/ipfs/go-datastore"
	"github.com/ipfs/go-datastore/query"

	"github.com/kadlib/kad/internal/kbucket"
	"github.com/kadlib/kad/internal/reprovide"
)

// ErrReprovideDisabled is returned by StartProviding and StopProviding on
// a DHT built without Reprovide(true).
var ErrReprovideDisabled = errors.New("kad: reprovider disabled")

// Datastore layout: one entry per key to keep provided, named by the
// first byte of its position (so a region is a few prefix queries) and
// the hex of its multihash; and the schedule state.
const (
	reprovideKeysPrefix = "/kad/reprovide/keys"
	reprovideStateKey   = "/kad/reprovide/state"
)

// reprovideRetry is how soon a region that reached no peer (the node has
// not joined the network yet, or lost it) is tried again.
const reprovideRetry = time.Minute

// ReprovideStatus describes one region the reprovider worked on.
type ReprovideStatus struct {
	Region  int           // the region, in [0, Regions)
	Regions int           // how many regions the keyspace is cut into
	Cycle   time.Time     // when the current cycle started
	Keys    int           // keys of the region
	Report  ProvideReport // what announcing them took
	Err     error         // nil unless the region reached no peer; it is retried
	Behind  time.Duration // how late the region started against the schedule
	Took    time.Duration // how long the region took
}

// StartProviding announces keys now (as ProvideMany) and adds them to the
// set the reprovider keeps provided. Keys already in the set stay. It
// fails if the set cannot be written; an announcement that reaches no
// peer is only logged, since the reprovider will try again.
func (d *DHT) StartProviding(ctx context.Context, keys ...cid.Cid) error {
	return d.provs.startProviding(ctx, keys...)
}

// startProviding is StartProviding.
func (s *providerSide) startProviding(ctx context.Context, keys ...cid.Cid) error {
	if !s.rcfg.enabled {
		return ErrReprovideDisabled
	}
	if s.own.isClosed() {
		return ErrClosed
	}
	pks := make([]provKey, 0, len(keys))
	for _, c := range keys {
		mh, err := providerKey(c)
		if err != nil {
			return fmt.Errorf("kad: start providing: %w", err)
		}
		pks = append(pks, provKey{mh: mh, pos: kbucket.KeyForBytes(mh)})
	}
	b, err := s.ds.Batch(ctx)
	if err != nil {
		return fmt.Errorf("kad: start providing: %w", err)
	}
	for _, pk := range pks {
		if err := b.Put(ctx, reprovideDSKey(pk), []byte{}); err != nil {
			return fmt.Errorf("kad: start providing: %w", err)
		}
	}
	if err := b.Commit(ctx); err != nil {
		return fmt.Errorf("kad: start providing: %w", err)
	}
	if _, err := s.provideKeys(ctx, pks, nil); err != nil {
		if errors.Is(err, ErrClosed) || ctx.Err() != nil {
			return fmt.Errorf("kad: start providing: %w", err)
		}
		s.log.Info("start providing: first announcement failed; the reprovider will retry", "keys", len(pks), "err", err)
	}
	return nil
}

// StopProviding removes keys from the set the reprovider keeps provided.
// Records already announced expire on their own (ProvideValidity).
func (d *DHT) StopProviding(ctx context.Context, keys ...cid.Cid) error {
	return d.provs.stopProviding(ctx, keys...)
}

// stopProviding is StopProviding.
func (s *providerSide) stopProviding(ctx context.Context, keys ...cid.Cid) error {
	if !s.rcfg.enabled {
		return ErrReprovideDisabled
	}
	b, err := s.ds.Batch(ctx)
	if err != nil {
		return fmt.Errorf("kad: stop providing: %w", err)
	}
	for _, c := range keys {
		mh, err := providerKey(c)
		if err != nil {
			return fmt.Errorf("kad: stop providing: %w", err)
		}
		if err := b.Delete(ctx, reprovideDSKey(provKey{mh: mh, pos: kbucket.KeyForBytes(mh)})); err != nil {
			return fmt.Errorf("kad: stop providing: %w", err)
		}
	}
	if err := b.Commit(ctx); err != nil {
		return fmt.Errorf("kad: stop providing: %w", err)
	}
	return nil
}

func reprovideDSKey(pk provKey) ds.Key {
	return ds.NewKey(fmt.Sprintf("%s/%02x/%s", reprovideKeysPrefix, pk.pos[0], hex.EncodeToString(pk.mh)))
}

// startReprovider starts the reprovider loop, owned by s.own, if enabled.
func (s *providerSide) startReprovider() {
	rc := s.rcfg
	if !rc.enabled {
		return
	}
	r := &reprovider{
		ds:       s.ds,
		sched:    reprovide.Schedule{Interval: rc.interval, Bits: rc.bits},
		provide:  func(ctx context.Context, keys []provKey) (ProvideReport, error) { return s.provideKeys(ctx, keys, nil) },
		progress: rc.progress,
		log:      s.log,
	}
	s.own.spawn(func() { r.run(s.own.ctx) })
}

// reprovider walks the regions of the keyspace on schedule. It touches
// the network only through provide, so it runs as well on a fake one.
type reprovider struct {
	ds       ds.Datastore
	sched    reprovide.Schedule
	provide  func(context.Context, []provKey) (ProvideReport, error)
	progress func(ReprovideStatus)
	log      *slog.Logger
}

// run reprovides region after region until ctx ends.
func (r *reprovider) run(ctx context.Context) {
	st, err := r.loadState(ctx)
	if err != nil {
		r.log.Warn("reprovider: saved state unreadable, starting a new cycle", "err", err)
	}
	for {
		var late time.Duration
		st, late = r.sched.Resume(st, time.Now())
		if !r.waitUntil(ctx, r.sched.Due(st)) {
			return
		}
		due := r.sched.Due(st)
		start := time.Now()
		status := ReprovideStatus{Region: st.Next, Regions: r.sched.Regions(), Cycle: st.CycleStart, Behind: max(late, start.Sub(due))}
		keys, err := r.regionKeys(ctx, st.Next)
		if err == nil && len(keys) > 0 {
			status.Keys = len(keys)
			status.Report, err = r.provide(ctx, keys)
		}
		status.Took = time.Since(start)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			status.Err = err
			r.report(status)
			// Try the same region again soon, without touching the saved
			// state: its lateness shows in Behind.
			if !r.waitUntil(ctx, time.Now().Add(min(reprovideRetry, r.sched.Slot()))) {
				return
			}
			continue
		}
		st = r.sched.Advance(st)
		if err := r.ds.Put(ctx, ds.NewKey(reprovideStateKey), st.Marshal()); err != nil && ctx.Err() == nil {
			r.log.Warn("reprovider: save state", "err", err)
		}
		r.report(status)
	}
}

func (r *reprovider) report(s ReprovideStatus) {
	switch {
	case s.Err != nil:
		r.log.Warn("reprovide region failed", "region", s.Region, "keys", s.Keys, "err", s.Err)
	case s.Behind > r.sched.Slot():
		r.log.Warn("reprovider falling behind", "region", s.Region, "behind", s.Behind, "keys", s.Keys, "took", s.Took)
	default:
		r.log.Debug("reprovided region", "region", s.Region, "keys", s.Keys, "lookups", s.Report.Lookups, "took", s.Took)
	}
	if r.progress != nil {
		r.progress(s)
	}
}

// waitUntil waits for t, and reports false if ctx ended first.
func (r *reprovider) waitUntil(ctx context.Context, t time.Time) bool {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err() == nil
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-tm.C:
		return true
	}
}

func (r *reprovider) loadState(ctx context.Context) (reprovide.State, error) {
	b, err := r.ds.Get(ctx, ds.NewKey(reprovideStateKey))
	if errors.Is(err, ds.ErrNotFound) {
		return r.sched.Start(time.Now()), nil
	}
	if err == nil {
		var st reprovide.State
		if st, err = reprovide.UnmarshalState(b); err == nil {
			return st, nil
		}
	}
	return r.sched.Start(time.Now()), fmt.Errorf("kad: reprovider state: %w", err)
}

// regionWideQuery is how many first bytes a region must span before its
// keys are read with one query of every kept key rather than one query
// per first byte. Some stores answer any prefix query by reading all
// their entries (go-datastore's MapDatastore), so 256 queries for a
// region of the whole keyspace read the store 256 times: 1.4 s for
// 10,000 kept keys beside 10,000 provider records, against 16 ms for one
// query.
const regionWideQuery = 64

// regionKeys reads the keys of region i from the datastore.
func (r *reprovider) regionKeys(ctx context.Context, i int) ([]provKey, error) {
	lo, hi := reprovide.FirstBytes(i, r.sched.Bits)
	prefixes := make([]string, 0, int(hi)-int(lo)+1)
	if int(hi)-int(lo)+1 >= regionWideQuery {
		prefixes = append(prefixes, reprovideKeysPrefix)
	} else {
		for b := int(lo); b <= int(hi); b++ {
			prefixes = append(prefixes, fmt.Sprintf("%s/%02x", reprovideKeysPrefix, b))
		}
	}
	var out []provKey
	for _, prefix := range prefixes {
		res, err := r.ds.Query(ctx, query.Query{Prefix: prefix, KeysOnly: true})
		if err != nil {
			return nil, fmt.Errorf("kad: reprovider: read keys: %w", err)
		}
		for e := range res.Next() {
			if e.Error != nil {
				_ = res.Close()
				return nil, fmt.Errorf("kad: reprovider: read keys: %w", e.Error)
			}
			mh, err := hex.DecodeString(ds.RawKey(e.Key).BaseNamespace())
			if err != nil || len(mh) == 0 {
				r.log.Debug("reprovider: bad key in datastore", "key", e.Key)
				continue
			}
			pk := provKey{mh: mh, pos: kbucket.KeyForBytes(mh)}
			if reprovide.RegionOf(pk.pos, r.sched.Bits) == i {
				out = append(out, pk)
			}
		}
		if err := res.Close(); err != nil {
			return nil, fmt.Errorf("kad: reprovider: read keys: %w", err)
		}
	}
	return out, nil
}
