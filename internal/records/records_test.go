package records

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"testing/synctest"
	"time"

	ds "github.com/ipfs/go-datastore"
	"github.com/ipfs/go-datastore/query"
	dssync "github.com/ipfs/go-datastore/sync"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/kadlib/kad/internal/pb"
)

const maxAge = 48 * time.Hour

func newStore() (*Store, ds.Batching) {
	d := dssync.MutexWrap(ds.NewMapDatastore())
	return New(d, maxAge, nil), d
}

func count(t *testing.T, d ds.Datastore, prefix string) int {
	t.Helper()
	res, err := d.Query(context.Background(), query.Query{Prefix: prefix, KeysOnly: true})
	require.NoError(t, err)
	all, err := res.Rest()
	require.NoError(t, err)
	return len(all)
}

func TestPutGetRoundTrip(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name       string
		key, value []byte
	}{
		{"namespaced", []byte("/pk/abc"), []byte("value")},
		{"binary key", []byte{0, '/', 0xff, '/', 0}, []byte{1, 2, 3}},
		{"empty value", []byte("/x/empty"), nil},
		{"slashes only", []byte("///"), []byte("v")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				s, _ := newStore()
				_, ok, err := s.Get(ctx, tc.key)
				require.NoError(t, err)
				require.False(t, ok)
				put, err := s.Put(ctx, tc.key, tc.value, nil)
				require.NoError(t, err)
				require.Equal(t, time.Now(), put.Received)
				got, ok, err := s.Get(ctx, tc.key)
				require.NoError(t, err)
				require.True(t, ok)
				require.Equal(t, tc.key, got.Key)
				require.Equal(t, len(tc.value), len(got.Value))
				require.True(t, got.Received.Equal(time.Now()))
			})
		})
	}
}

// The stored entry is the wire Record: a protobuf decoder of the DHT's
// Message reads it back, timeReceived included.
func TestEntryIsWireRecord(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		s, d := newStore()
		_, err := s.Put(ctx, []byte("/v/k"), []byte("hello"), nil)
		require.NoError(t, err)
		raw, err := d.Get(ctx, Key([]byte("/v/k")))
		require.NoError(t, err)
		msg := protowire.AppendTag(nil, 3, protowire.BytesType)
		msg = protowire.AppendBytes(msg, raw)
		var m pb.Message
		require.NoError(t, m.Unmarshal(msg))
		require.NotNil(t, m.Record)
		require.Equal(t, []byte("/v/k"), m.Record.Key)
		require.Equal(t, []byte("hello"), m.Record.Value)
		require.Equal(t, "2000-01-01T00:00:00Z", m.Record.TimeReceived)
		_, err = time.Parse(time.RFC3339, m.Record.TimeReceived)
		require.NoError(t, err)
	})
}

// A record lives exactly maxAge after it was received; reading it later
// deletes it from the datastore.
func TestExpiryInVirtualTime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		s, d := newStore()
		key := []byte("/v/expiring")
		_, err := s.Put(ctx, key, []byte("v"), nil)
		require.NoError(t, err)

		time.Sleep(maxAge)
		_, ok, err := s.Get(ctx, key)
		require.NoError(t, err)
		require.True(t, ok, "still there at exactly the max age")

		time.Sleep(time.Nanosecond)
		_, ok, err = s.Get(ctx, key)
		require.NoError(t, err)
		require.False(t, ok, "gone just after the max age")
		has, err := d.Has(ctx, Key(key))
		require.NoError(t, err)
		require.False(t, has, "an expired record read is deleted")

		// A put refreshes the clock.
		_, err = s.Put(ctx, key, []byte("v"), nil)
		require.NoError(t, err)
		time.Sleep(maxAge / 2)
		_, err = s.Put(ctx, key, []byte("v"), nil)
		require.NoError(t, err)
		time.Sleep(maxAge * 3 / 4)
		_, ok, err = s.Get(ctx, key)
		require.NoError(t, err)
		require.True(t, ok, "re-put restarted the age")
	})
}

func TestPutReplaceDecision(t *testing.T) {
	ctx := context.Background()
	boom := errors.New("boom")
	tests := []struct {
		name      string
		replace   func([]byte) (bool, error)
		wantErr   error
		wantValue string
	}{
		{"nil replaces", nil, nil, "new"},
		{"yes replaces", func([]byte) (bool, error) { return true, nil }, nil, "new"},
		{"no keeps", func([]byte) (bool, error) { return false, nil }, ErrNotBetter, "old"},
		{"error keeps", func([]byte) (bool, error) { return false, boom }, boom, "old"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, _ := newStore()
			_, err := s.Put(ctx, []byte("/v/k"), []byte("old"), nil)
			require.NoError(t, err)
			var seen []byte
			replace := tc.replace
			if replace != nil {
				replace = func(stored []byte) (bool, error) { seen = stored; return tc.replace(stored) }
			}
			r, err := s.Put(ctx, []byte("/v/k"), []byte("new"), replace)
			require.ErrorIs(t, err, tc.wantErr)
			if tc.replace != nil {
				require.Equal(t, "old", string(seen), "replace sees the stored value")
			}
			if errors.Is(err, ErrNotBetter) {
				require.Equal(t, "old", string(r.Value), "ErrNotBetter returns the stored record")
			}
			got, ok, err := s.Get(ctx, []byte("/v/k"))
			require.NoError(t, err)
			require.True(t, ok)
			require.Equal(t, tc.wantValue, string(got.Value))
		})
	}
}

// An expired stored record does not take part in the decision.
func TestPutOverExpiredSkipsDecision(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		s, _ := newStore()
		_, err := s.Put(ctx, []byte("/v/k"), []byte("old"), nil)
		require.NoError(t, err)
		time.Sleep(maxAge + time.Second)
		called := false
		_, err = s.Put(ctx, []byte("/v/k"), []byte("new"), func([]byte) (bool, error) { called = true; return false, nil })
		require.NoError(t, err)
		require.False(t, called)
	})
}

// Sweep removes expired and corrupt records in bounded batches, keeps
// fresh ones and never touches keys outside its prefix.
func TestSweepBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		s, d := newStore()
		const old, fresh, limit = 1000, 500, 300
		for i := 0; i < old; i++ {
			_, err := s.Put(ctx, fmt.Appendf(nil, "/v/old-%d", i), []byte("x"), nil)
			require.NoError(t, err)
		}
		time.Sleep(24 * time.Hour)
		for i := 0; i < fresh; i++ {
			_, err := s.Put(ctx, fmt.Appendf(nil, "/v/fresh-%d", i), []byte("x"), nil)
			require.NoError(t, err)
		}
		require.NoError(t, d.Put(ctx, Key([]byte("/v/corrupt")), []byte{0xff, 0xff}))
		require.NoError(t, d.Put(ctx, ds.NewKey("/providers/abc"), []byte("not ours")))

		n, done, err := s.Sweep(ctx, limit)
		require.NoError(t, err)
		require.True(t, done)
		require.Equal(t, 1, n, "only the corrupt entry before anything expires")

		time.Sleep(25 * time.Hour) // the old batch is 49 h old, the fresh 25 h
		var calls, total int
		for done = false; !done; calls++ {
			require.Less(t, calls, 10, "sweep must finish")
			n, done, err = s.Sweep(ctx, limit)
			require.NoError(t, err)
			require.LessOrEqual(t, n, limit)
			total += n
		}
		require.Equal(t, old, total)
		require.Equal(t, 4, calls, "ceil(1000/300) batches")
		require.Equal(t, fresh, count(t, d, Prefix))
		require.Equal(t, 1, count(t, d, "/providers"))

		_, _, err = s.Sweep(ctx, 0)
		require.Error(t, err)
	})
}

func TestSweepHonoursContext(t *testing.T) {
	s, _ := newStore()
	ctx, cancel := context.WithCancel(context.Background())
	for i := 0; i < 10; i++ {
		_, err := s.Put(ctx, fmt.Appendf(nil, "/v/%d", i), []byte("x"), nil)
		require.NoError(t, err)
	}
	cancel()
	_, _, err := s.Sweep(ctx, 5)
	require.ErrorIs(t, err, context.Canceled)
}

func TestDelete(t *testing.T) {
	ctx := context.Background()
	s, _ := newStore()
	_, err := s.Put(ctx, []byte("/v/k"), []byte("v"), nil)
	require.NoError(t, err)
	require.NoError(t, s.Delete(ctx, []byte("/v/k")))
	_, ok, err := s.Get(ctx, []byte("/v/k"))
	require.NoError(t, err)
	require.False(t, ok)
	require.NoError(t, s.Delete(ctx, []byte("/v/absent")))
}

func TestKeyUnderPrefix(t *testing.T) {
	for _, k := range [][]byte{[]byte("/pk/x"), {0}, []byte("a/b/c"), make([]byte, 300)} {
		dk := Key(k)
		require.True(t, ds.NewKey(Prefix).IsAncestorOf(dk), "%q", dk)
		require.Equal(t, 2, len(dk.Namespaces()), "one segment under the prefix: %q", dk)
	}
	require.NotEqual(t, Key([]byte("a")), Key([]byte("b")))
}
