// Package providers is the provider record store: who announced that it
// has the content of a key, until when, and at which addresses. Records
// live in a go-datastore under Prefix, one entry per key holding all its
// providers, so a persistent datastore keeps them across restarts, with a
// small cache of hot keys in front. One entry per key makes every read an
// exact Get: its cost does not grow with what else the datastore holds,
// which a prefix query's does on a datastore without ordered keys (such
// as go-datastore's MapDatastore, whose queries read every entry).
//
// The store is pure in the project's sense: it reads no clock (every call
// takes now), starts no goroutine and does no network I/O, so expiry is
// tested by moving time by hand. Its caller runs the periodic Sweep.
package providers

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	ds "github.com/ipfs/go-datastore"
	dsq "github.com/ipfs/go-datastore/query"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
)

// ErrKeyFull is returned by Add for a new provider of a key that already
// has MaxPerKey live providers: the first providers keep their place, so a
// flood of fake announcements cannot push real ones out.
var ErrKeyFull = errors.New("providers: key has the maximum number of providers")

// ErrInvalidConfig is wrapped by the errors of New and Validate for a
// Config out of range.
var ErrInvalidConfig = errors.New("providers: invalid config")

// Config sets the store's limits.
type Config struct {
	// Validity is how long a record lasts after the provider's last
	// announcement (Amino: 48 h).
	Validity time.Duration
	// AddrTTL is how long the provider's addresses are kept (Amino: 24 h).
	// Past it the record is still returned, without addresses.
	AddrTTL time.Duration
	// MaxPerKey bounds the providers stored for one key.
	MaxPerKey int
	// CacheKeys is how many keys the hot-key cache holds; 0 disables it.
	CacheKeys int
	// FreshDatastore says the datastore holds no provider records yet and
	// only this store will write under Prefix (the DHT's own in-memory
	// datastore). The store then keeps the set of keys that have records,
	// so adding a key it has never seen needs no datastore read at all.
	// Without it a new key costs one Get of an absent entry.
	FreshDatastore bool
}

// Validate reports every out-of-range setting; New calls it, and the DHT's
// option layer calls it to reject a bad setting up front. Every error
// wraps ErrInvalidConfig.
func (c Config) Validate() error {
	var errs []error
	if c.Validity <= 0 {
		errs = append(errs, fmt.Errorf("%w: validity %v <= 0", ErrInvalidConfig, c.Validity))
	}
	if c.AddrTTL <= 0 {
		errs = append(errs, fmt.Errorf("%w: address TTL %v <= 0", ErrInvalidConfig, c.AddrTTL))
	}
	if c.Validity > 0 && c.AddrTTL > c.Validity {
		errs = append(errs, fmt.Errorf("%w: address TTL %v > validity %v: addresses would outlive their record", ErrInvalidConfig, c.AddrTTL, c.Validity))
	}
	if c.MaxPerKey < 1 {
		errs = append(errs, fmt.Errorf("%w: max providers per key %d < 1", ErrInvalidConfig, c.MaxPerKey))
	}
	if c.CacheKeys < 0 {
		errs = append(errs, fmt.Errorf("%w: cache size %d < 0", ErrInvalidConfig, c.CacheKeys))
	}
	return errors.Join(errs...)
}

// Store keeps provider records. It is safe for concurrent use; one mutex
// serializes all operations, which keeps the per-key bound and the cache
// exact.
type Store struct {
	ds  ds.Batching
	cfg Config

	mu     sync.Mutex
	cache  *lru
	cursor string // datastore key where the next Sweep resumes; "" from the start
	// present holds the encoded keys that may have records (a superset:
	// Sweep does not shrink it); nil unless Config.FreshDatastore.
	present map[string]struct{}
}

// New returns a store on d. The store does not close d.
func New(d ds.Batching, cfg Config) (*Store, error) {
	if d == nil {
		return nil, fmt.Errorf("%w: nil datastore", ErrInvalidConfig)
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Store{ds: d, cfg: cfg, cache: newLRU(cfg.CacheKeys)}
	if cfg.FreshDatastore {
		s.present = make(map[string]struct{})
	}
	return s, nil
}

func (s *Store) expired(r *record, now time.Time) bool {
	return !now.Before(r.received.Add(s.cfg.Validity))
}

func (s *Store) addrsExpired(r *record, now time.Time) bool {
	return len(r.addrs) == 0 || !now.Before(r.addrsAt.Add(s.cfg.AddrTTL))
}

// Add records that p provides key as of now, at addrs. Announcing again
// renews the record; an announcement without addresses keeps the
// addresses already known, until they expire.
func (s *Store) Add(ctx context.Context, key []byte, p peer.ID, addrs []ma.Multiaddr, now time.Time) error {
	if len(key) == 0 {
		return errors.New("providers: add: empty key")
	}
	if p == "" {
		return errors.New("providers: add: empty peer id")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	k, v, undo, err := s.prepare(ctx, key, p, addrs, now)
	if err != nil {
		return fmt.Errorf("providers: add: %w", err)
	}
	if err := s.ds.Put(ctx, k, v); err != nil {
		undo()
		return fmt.Errorf("providers: add: %w", err)
	}
	s.markPresent(key)
	return nil
}

// AddMany is Add for each of keys with one datastore batch: one write
// (one sync, on a datastore that syncs each write, as go-ds-leveldb does
// by default) instead of one per key. Keys that already have MaxPerKey
// other providers are left out and counted in full; empty keys are
// skipped. If the batch fails, nothing of it is kept.
func (s *Store) AddMany(ctx context.Context, keys [][]byte, p peer.ID, addrs []ma.Multiaddr, now time.Time) (full int, err error) {
	if p == "" {
		return 0, errors.New("providers: add: empty peer id")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	b, err := s.ds.Batch(ctx)
	if err != nil {
		return 0, fmt.Errorf("providers: add: %w", err)
	}
	var added [][]byte
	fail := func(err error) (int, error) {
		// The cached sets hold what the batch did not write: forget them.
		for _, key := range added {
			s.cache.remove(b32.EncodeToString(key))
		}
		return full, fmt.Errorf("providers: add: %w", err)
	}
	for _, key := range keys {
		if len(key) == 0 {
			continue
		}
		k, v, _, err := s.prepare(ctx, key, p, addrs, now)
		if errors.Is(err, ErrKeyFull) {
			full++
			continue
		}
		if err != nil {
			return fail(err)
		}
		added = append(added, key)
		if err := b.Put(ctx, k, v); err != nil {
			return fail(err)
		}
	}
	if err := b.Commit(ctx); err != nil {
		return fail(err)
	}
	for _, key := range added {
		s.markPresent(key)
	}
	return full, nil
}

// prepare renews or adds p's record in key's set (the cached one, if the
// key is cached) and returns the entry to write, and undo, which puts the
// set back as it was. Called
// with s.mu held.
func (s *Store) prepare(ctx context.Context, key []byte, p peer.ID, addrs []ma.Multiaddr, now time.Time) (ds.Key, []byte, func(), error) {
	set, err := s.load(ctx, key, now, false)
	if err != nil {
		return ds.Key{}, nil, nil, err
	}
	r, ok := set[p]
	if !ok {
		if len(set) >= s.cfg.MaxPerKey {
			return ds.Key{}, nil, nil, ErrKeyFull
		}
		r = &record{}
	}
	// Kept to the millisecond, as stored, so a set read back from the
	// datastore equals the cached one.
	now = time.UnixMilli(now.UnixMilli())
	nr := &record{received: now, addrsAt: r.addrsAt, addrs: r.addrs}
	if len(addrs) > 0 {
		nr.addrs = slices.Clone(addrs)
		if len(nr.addrs) > maxStoredAddrs {
			nr.addrs = nr.addrs[:maxStoredAddrs]
		}
		nr.addrsAt = now
	} else if s.addrsExpired(nr, now) {
		nr.addrs, nr.addrsAt = nil, time.Time{}
	}
	old, had := set[p]
	set[p] = nr
	undo := func() {
		if had {
			set[p] = old
		} else {
			delete(set, p)
		}
	}
	return setKey(key), encodeSet(set), undo, nil
}

// markPresent notes that key has an entry. Called with s.mu held.
func (s *Store) markPresent(key []byte) {
	if s.present != nil {
		s.present[b32.EncodeToString(key)] = struct{}{}
	}
}

// Get returns the live providers of key, most recently announced first,
// at most limit of them (limit <= 0: all). A provider whose addresses
// expired is returned without addresses.
func (s *Store) Get(ctx context.Context, key []byte, now time.Time, limit int) ([]peer.AddrInfo, error) {
	if len(key) == 0 {
		return nil, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	set, err := s.load(ctx, key, now, true)
	if err != nil {
		return nil, fmt.Errorf("providers: get: %w", err)
	}
	out := make([]peer.AddrInfo, 0, len(set))
	for p, r := range set {
		ai := peer.AddrInfo{ID: p}
		if !s.addrsExpired(r, now) {
			ai.Addrs = slices.Clone(r.addrs)
		}
		out = append(out, ai)
	}
	slices.SortFunc(out, func(a, b peer.AddrInfo) int {
		if c := set[b.ID].received.Compare(set[a.ID].received); c != 0 {
			return c
		}
		return bytes.Compare([]byte(a.ID), []byte(b.ID))
	})
	if limit > 0 && len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}

// load returns the live provider set of key, from the cache or the
// datastore (one Get of the key's entry), dropping what expired and
// deleting an entry that cannot be decoded. Called with s.mu held. A
// cached set is returned as is, so changes to it stick; one read from the
// datastore is cached only if keep (reads keep it: a key that is asked
// for is hot; writes do not: a node receiving announcements for many keys
// would otherwise hold a decoded copy of the last CacheKeys of them
// beside the datastore's, used by nothing).
func (s *Store) load(ctx context.Context, key []byte, now time.Time, keep bool) (keySet, error) {
	enc := b32.EncodeToString(key)
	if set, ok := s.cache.get(enc); ok {
		return set, s.dropExpired(ctx, key, set, now)
	}
	if s.present != nil {
		if _, ok := s.present[enc]; !ok {
			set := make(keySet)
			if keep {
				s.cache.put(enc, set)
			}
			return set, nil
		}
	}
	v, err := s.ds.Get(ctx, setKey(key))
	var set keySet
	switch {
	case errors.Is(err, ds.ErrNotFound):
		set = make(keySet)
	case err != nil:
		return nil, err
	default:
		if set, err = decodeSet(v); err != nil {
			set = make(keySet)
			if err := s.ds.Delete(ctx, setKey(key)); err != nil {
				return nil, err
			}
		} else if err := s.dropExpired(ctx, key, set, now); err != nil {
			return nil, err
		}
	}
	if s.present != nil && len(set) == 0 {
		delete(s.present, enc)
	}
	if keep {
		s.cache.put(enc, set)
	}
	return set, nil
}

// dropExpired deletes the expired providers of set, and rewrites key's
// entry (or deletes it, if none is left) when any went.
func (s *Store) dropExpired(ctx context.Context, key []byte, set keySet, now time.Time) error {
	n := len(set)
	for p, r := range set {
		if s.expired(r, now) {
			delete(set, p)
		}
	}
	if len(set) == n {
		return nil
	}
	return s.write(ctx, setKey(key), set)
}

// write stores set as key's entry, or deletes the entry if set is empty.
func (s *Store) write(ctx context.Context, k ds.Key, set keySet) error {
	if len(set) == 0 {
		return s.ds.Delete(ctx, k)
	}
	return s.ds.Put(ctx, k, encodeSet(set))
}

func (s *Store) deleteKeys(ctx context.Context, keys []ds.Key) error {
	if len(keys) == 0 {
		return nil
	}
	b, err := s.ds.Batch(ctx)
	if err != nil {
		return err
	}
	for _, k := range keys {
		if err := b.Delete(ctx, k); err != nil {
			return err
		}
	}
	return b.Commit(ctx)
}

// SweepStats says what one Sweep call did.
type SweepStats struct {
	Entries int  // datastore entries read: keys, and records of the old layout
	Scanned int  // provider records examined
	Removed int  // expired or corrupt records deleted
	Done    bool // the pass reached the end of the store; the next starts over
}

// Sweep reads at most budget datastore entries (one per key), in key
// order from where the previous call stopped, and deletes the expired
// records. Bounding each call keeps the lock short and the work per tick
// small however many records the store holds; call it until Done for a
// full pass. Records of the old layout (one entry per key and provider,
// written by earlier versions) are moved into their key's entry, or
// deleted if expired or corrupt.
func (s *Store) Sweep(ctx context.Context, now time.Time, budget int) (SweepStats, error) {
	var st SweepStats
	if budget < 1 {
		return st, fmt.Errorf("providers: sweep: budget %d < 1", budget)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	q := dsq.Query{Prefix: Prefix, Orders: []dsq.Order{dsq.OrderByKey{}}, Limit: budget}
	if s.cursor != "" {
		q.Filters = []dsq.Filter{dsq.FilterKeyCompare{Op: dsq.GreaterThan, Key: s.cursor}}
	}
	res, err := s.ds.Query(ctx, q)
	if err != nil {
		return st, fmt.Errorf("providers: sweep: %w", err)
	}
	type legacy struct {
		dsKey string
		enc   string
		p     peer.ID
		r     *record
	}
	var (
		stale   []ds.Key
		moves   []legacy
		rewrite = map[string]keySet{}
		last    string
	)
	for e := range res.Next() {
		if e.Error != nil {
			_ = res.Close()
			return st, fmt.Errorf("providers: sweep: %w", e.Error)
		}
		st.Entries++
		last = e.Key
		enc := e.Key[len(Prefix):]
		if strings.Contains(enc, "/") {
			// The old layout: one record.
			st.Scanned++
			enc, p, err := parseDSKey(e.Key)
			r, derr := decodeRecord(e.Value)
			if err != nil || derr != nil || s.expired(r, now) {
				stale = append(stale, ds.RawKey(e.Key))
				st.Removed++
				continue
			}
			moves = append(moves, legacy{e.Key, enc, p, r})
			continue
		}
		set, err := decodeSet(e.Value)
		if err != nil {
			stale = append(stale, ds.RawKey(e.Key))
			st.Removed++
			if cached, ok := s.cache.peek(enc); ok {
				clear(cached)
			}
			continue
		}
		st.Scanned += len(set)
		n := len(set)
		for p, r := range set {
			if s.expired(r, now) {
				delete(set, p)
				if cached, ok := s.cache.peek(enc); ok {
					delete(cached, p)
				}
			}
		}
		if len(set) < n {
			st.Removed += n - len(set)
			rewrite[e.Key] = set
		}
	}
	if err := res.Close(); err != nil {
		return st, fmt.Errorf("providers: sweep: %w", err)
	}
	for k, set := range rewrite {
		if err := s.write(ctx, ds.RawKey(k), set); err != nil {
			return st, fmt.Errorf("providers: sweep: %w", err)
		}
	}
	if err := s.deleteKeys(ctx, stale); err != nil {
		return st, fmt.Errorf("providers: sweep: %w", err)
	}
	for _, m := range moves {
		if err := s.migrate(ctx, m.enc, m.p, m.r, now); err != nil {
			return st, fmt.Errorf("providers: sweep: %w", err)
		}
		if err := s.ds.Delete(ctx, ds.RawKey(m.dsKey)); err != nil {
			return st, fmt.Errorf("providers: sweep: %w", err)
		}
	}
	if st.Entries < budget {
		st.Done = true
		s.cursor = ""
	} else {
		s.cursor = last
	}
	return st, nil
}

// migrate adds an old-layout record of provider p to its key's entry,
// unless the entry already has a newer record of p or is full.
func (s *Store) migrate(ctx context.Context, enc string, p peer.ID, r *record, now time.Time) error {
	key, err := b32.DecodeString(enc)
	if err != nil || len(key) == 0 {
		return nil // parseDSKey accepted it, but it names no key: drop it
	}
	set, err := s.load(ctx, key, now, false)
	if err != nil {
		return err
	}
	if cur, ok := set[p]; (ok && !cur.received.Before(r.received)) || (!ok && len(set) >= s.cfg.MaxPerKey) {
		return nil
	}
	set[p] = &record{received: time.UnixMilli(r.received.UnixMilli()), addrsAt: time.UnixMilli(r.addrsAt.UnixMilli()), addrs: r.addrs}
	if len(r.addrs) == 0 {
		set[p].addrsAt = time.Time{}
	}
	if s.present != nil {
		s.present[enc] = struct{}{}
	}
	return s.write(ctx, setKey(key), set)
}

// CachedKeys is how many keys the hot-key cache holds, for tests and
// metrics.
func (s *Store) CachedKeys() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cache.len()
}
