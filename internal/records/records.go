// Package records keeps DHT value records in a go-datastore, each with the
// time it was received, and forgets them once they are older than a
// maximum age. It is pure: it reads time only through the clock it is
// given, starts no goroutine and knows nothing of the network or of record
// validation (the caller decides which of two values wins).
//
// Records live under Prefix, one datastore key per record key (base32 of
// the raw key bytes, so any byte string is a valid datastore key), so a
// datastore shared with other users (provider records) never collides.
// Each entry is the record as the wire encodes it: key (field 1), value
// (field 2) and timeReceived (field 5, RFC 3339), so a stored entry can be
// read by any protobuf decoder of the DHT's Record message.
package records

import (
	"context"
	"encoding/base32"
	"errors"
	"fmt"
	"sync"
	"time"

	ds "github.com/ipfs/go-datastore"
	"github.com/ipfs/go-datastore/query"
	"google.golang.org/protobuf/encoding/protowire"
)

// Prefix is the datastore namespace of every record.
const Prefix = "/records"

// ErrNotBetter is returned by Put when the stored record is preferred to
// the new one, which is then dropped.
var ErrNotBetter = errors.New("records: stored record is preferred")

// b32 turns arbitrary key bytes into a datastore-safe path segment.
var b32 = base32.StdEncoding.WithPadding(base32.NoPadding)

// Record is a stored value and when it arrived.
type Record struct {
	Key      []byte
	Value    []byte
	Received time.Time
}

// TimeReceived formats Received as the wire's timeReceived field.
func (r Record) TimeReceived() string { return FormatTime(r.Received) }

// FormatTime formats t as RFC 3339 in UTC with nanoseconds, the form the
// wire's timeReceived uses.
func FormatTime(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

// Store is a record store. It is safe for concurrent use.
type Store struct {
	ds     ds.Batching
	maxAge time.Duration
	now    func() time.Time
	// mu makes Put's read-compare-write atomic, and keeps Sweep from
	// deleting a record that was just replaced by a fresh one.
	mu sync.Mutex
}

// New returns a store over d whose records expire maxAge after they were
// received, as told by now (time.Now when nil).
func New(d ds.Batching, maxAge time.Duration, now func() time.Time) *Store {
	if now == nil {
		now = time.Now
	}
	return &Store{ds: d, maxAge: maxAge, now: now}
}

// Key returns the datastore key of a record key.
func Key(key []byte) ds.Key {
	return ds.NewKey(Prefix + "/" + b32.EncodeToString(key))
}

func (s *Store) expired(r Record, now time.Time) bool {
	return now.Sub(r.Received) > s.maxAge
}

// Get returns the record stored under key, ok=false if there is none. An
// expired or undecodable entry counts as none and is deleted on the way.
func (s *Store) Get(ctx context.Context, key []byte) (Record, bool, error) {
	r, st, err := s.read(ctx, key)
	if err != nil || st != stale {
		return r, st == found, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	// Check again under the lock: a fresh Put may have replaced it.
	r, st, err = s.read(ctx, key)
	if err != nil || st != stale {
		return r, st == found, err
	}
	if err := s.ds.Delete(ctx, Key(key)); err != nil {
		return Record{}, false, fmt.Errorf("records: delete stale entry: %w", err)
	}
	return Record{}, false, nil
}

type readState int

const (
	absent readState = iota
	found
	stale // expired or undecodable
)

func (s *Store) read(ctx context.Context, key []byte) (Record, readState, error) {
	b, err := s.ds.Get(ctx, Key(key))
	if errors.Is(err, ds.ErrNotFound) {
		return Record{}, absent, nil
	}
	if err != nil {
		return Record{}, absent, fmt.Errorf("records: get: %w", err)
	}
	r, err := decode(b)
	if err != nil || s.expired(r, s.now()) {
		return Record{}, stale, nil
	}
	return r, found, nil
}

// Put stores value under key, stamped with the current time. When a
// record is already stored (and not expired), replace(stored) decides:
// false keeps the stored one and Put returns it with ErrNotBetter; an
// error from replace is returned as is. A nil replace always replaces.
// On success Put returns the record as stored.
func (s *Store) Put(ctx context.Context, key, value []byte, replace func(stored []byte) (bool, error)) (Record, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if replace != nil {
		old, st, err := s.read(ctx, key)
		if err != nil {
			return Record{}, err
		}
		if st == found {
			yes, err := replace(old.Value)
			if err != nil {
				return Record{}, err
			}
			if !yes {
				return old, ErrNotBetter
			}
		}
	}
	r := Record{
		Key:      append([]byte(nil), key...),
		Value:    append([]byte(nil), value...),
		Received: s.now(),
	}
	if err := s.ds.Put(ctx, Key(key), encode(r)); err != nil {
		return Record{}, fmt.Errorf("records: put: %w", err)
	}
	return r, nil
}

// Delete removes the record under key, if any.
func (s *Store) Delete(ctx context.Context, key []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.ds.Delete(ctx, Key(key)); err != nil {
		return fmt.Errorf("records: delete: %w", err)
	}
	return nil
}

// Sweep deletes expired and undecodable records, at most limit of them
// in one batch, so one call holds bounded memory and the store lock for a
// bounded time. done is false when it stopped at the limit: call again.
func (s *Store) Sweep(ctx context.Context, limit int) (deleted int, done bool, err error) {
	if limit < 1 {
		return 0, false, fmt.Errorf("records: sweep limit %d < 1", limit)
	}
	now := s.now()
	res, err := s.ds.Query(ctx, query.Query{Prefix: Prefix})
	if err != nil {
		return 0, false, fmt.Errorf("records: sweep query: %w", err)
	}
	var stale []ds.Key
	done = true
	for {
		e, more := res.NextSync()
		if !more {
			break
		}
		if e.Error == nil {
			e.Error = ctx.Err()
		}
		if e.Error != nil {
			_ = res.Close()
			return 0, false, fmt.Errorf("records: sweep: %w", e.Error)
		}
		r, derr := decode(e.Value)
		if derr == nil && !s.expired(r, now) {
			continue
		}
		stale = append(stale, ds.RawKey(e.Key))
		if len(stale) == limit {
			done = false
			break
		}
	}
	if err := res.Close(); err != nil {
		return 0, false, fmt.Errorf("records: sweep close: %w", err)
	}
	if len(stale) == 0 {
		return 0, done, ctx.Err()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	b, err := s.ds.Batch(ctx)
	if err != nil {
		return 0, false, fmt.Errorf("records: sweep batch: %w", err)
	}
	now = s.now()
	for _, k := range stale {
		// A record put since the scan is fresh again: keep it.
		v, err := s.ds.Get(ctx, k)
		if errors.Is(err, ds.ErrNotFound) {
			continue
		}
		if err != nil {
			return 0, false, fmt.Errorf("records: sweep get: %w", err)
		}
		if r, derr := decode(v); derr == nil && !s.expired(r, now) {
			continue
		}
		if err := b.Delete(ctx, k); err != nil {
			return 0, false, fmt.Errorf("records: sweep delete: %w", err)
		}
		deleted++
	}
	if err := b.Commit(ctx); err != nil {
		return 0, false, fmt.Errorf("records: sweep commit: %w", err)
	}
	return deleted, done, nil
}

// Wire field numbers of the Record message.
const (
	fKey  = 1
	fVal  = 2
	fTime = 5
)

var errCorrupt = errors.New("records: corrupt entry")

func encode(r Record) []byte {
	t := FormatTime(r.Received)
	b := make([]byte, 0, len(r.Key)+len(r.Value)+len(t)+16)
	b = protowire.AppendTag(b, fKey, protowire.BytesType)
	b = protowire.AppendBytes(b, r.Key)
	b = protowire.AppendTag(b, fVal, protowire.BytesType)
	b = protowire.AppendBytes(b, r.Value)
	b = protowire.AppendTag(b, fTime, protowire.BytesType)
	b = protowire.AppendString(b, t)
	return b
}

// decode parses an entry, skipping unknown fields. The result does not
// alias b.
func decode(b []byte) (Record, error) {
	var r Record
	var ts string
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return Record{}, errCorrupt
		}
		b = b[n:]
		if typ != protowire.BytesType || (num != fKey && num != fVal && num != fTime) {
			n = protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return Record{}, errCorrupt
			}
			b = b[n:]
			continue
		}
		v, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return Record{}, errCorrupt
		}
		b = b[n:]
		switch num {
		case fKey:
			r.Key = append([]byte(nil), v...)
		case fVal:
			r.Value = append([]byte(nil), v...)
		case fTime:
			ts = string(v)
		}
	}
	t, err := time.Parse(time.RFC3339Nano, ts)
	if err != nil {
		return Record{}, fmt.Errorf("%w: time received %q: %w", errCorrupt, ts, err)
	}
	r.Received = t
	return r, nil
}
