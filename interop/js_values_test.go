package interop

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/routing"
	"github.com/stretchr/testify/require"

	"github.com/kadlib/kad"
	"github.com/kadlib/kad/interop/jspeer"
)

// greatestWins is the "v" namespace of the js peer (peer.mjs) in Go: any
// value is valid and of several the bytewise greatest wins, the first of
// equal ones. Both sides must pick the same best record, or each would
// keep "repairing" the other.
type greatestWins struct{}

func (greatestWins) Validate(string, []byte) error { return nil }

func (greatestWins) Select(_ string, vals [][]byte) (int, error) {
	if len(vals) == 0 {
		return 0, errors.New("no values to select from")
	}
	best := 0
	for i := 1; i < len(vals); i++ {
		if bytes.Compare(vals[i], vals[best]) > 0 {
			best = i
		}
	}
	return best, nil
}

// newJSKad starts a kad server that, like the js peer, accepts the "v"
// namespace. Its random walk is off: these cases check what each request
// finds through the nodes the test linked, and a kad node's background
// discovery would connect the ends of a line by itself
// (TestJSLineDiscovery tests that).
func newJSKad(t *testing.T) *kad.DHT {
	t.Helper()
	return newKad(t, kad.NamespacedValidator("v", greatestWins{}), kad.RandomWalk(false))
}

// put stores value under key through n, and checks it reached at least
// one remote peer.
func (n node) put(t *testing.T, ctx context.Context, key string, value []byte) {
	t.Helper()
	if n.kad != nil {
		var accepted int
		require.NoError(t, n.kad.PutValue(ctx, key, value, kad.Accepted(&accepted)), "%v puts %q", n, key)
		require.Positive(t, accepted, "%v puts %q", n, key)
		return
	}
	require.NoError(t, n.js.Put(ctx, key, value), "%v puts %q", n, key)
}

func (n node) get(ctx context.Context, key string) ([]byte, error) {
	if n.kad != nil {
		return n.kad.GetValue(ctx, key)
	}
	return n.js.Get(ctx, key)
}

// stored returns the record n itself keeps under key, without a lookup.
func (n node) stored(ctx context.Context, key string) ([]byte, error) {
	if n.kad != nil {
		return n.kad.GetValue(ctx, key, routing.Offline)
	}
	return n.js.GetLocal(ctx, key)
}

// requireStored waits until n keeps value under key: a PUT_VALUE's echo
// comes after the store in both implementations, so no wait should be
// needed, but a repair runs in the background.
func (n node) requireStored(t *testing.T, ctx context.Context, key string, value []byte) {
	t.Helper()
	var got []byte
	var err error
	eventually(t, 5*time.Second, n.String()+" stores "+key, func() bool {
		got, err = n.stored(ctx, key)
		return err == nil && bytes.Equal(got, value)
	})
}

// TestJSValues stores values from each side and reads them from the
// other, on a pair of nodes: the writer's PUT_VALUE must be accepted and
// kept by the other side, and the reader's GET_VALUE answered.
func TestJSValues(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ns := newNodes(t, "kad", "js")
	k, j := ns[0], ns[1]
	link(t, ctx, k, j)

	for _, c := range []struct{ from, to node }{{k, j}, {j, k}} {
		t.Run(c.from.kind()+" put, "+c.to.kind()+" get", func(t *testing.T) {
			key := "/v/from-" + c.from.id().String()
			value := []byte("written by " + c.from.String())
			c.from.put(t, ctx, key, value)
			c.to.requireStored(t, ctx, key, value)
			got, err := c.to.get(ctx, key)
			require.NoError(t, err)
			require.Equal(t, value, got)
		})
	}

	// Both sides pick the same best of several values: a better value
	// replaces a worse one wherever it lands, and a read repairs the peer
	// that missed it.
	t.Run("better value wins both ways", func(t *testing.T) {
		const key = "/v/contested"
		k.put(t, ctx, key, []byte("b-1"))
		j.requireStored(t, ctx, key, []byte("b-1"))
		j.put(t, ctx, key, []byte("b-2"))
		k.requireStored(t, ctx, key, []byte("b-2"))
		k.put(t, ctx, key, []byte("b-3"))
		j.requireStored(t, ctx, key, []byte("b-3"))
		for _, n := range []node{k, j} {
			got, err := n.get(ctx, key)
			require.NoError(t, err)
			require.Equal(t, "b-3", string(got), "%v reads the best value", n)
		}

		// kad refuses a worse value (stream reset, no echo); the js
		// writer keeps its own copy, and its next read corrects it.
		res, err := j.js.PutResult(ctx, key, []byte("b-0"))
		require.NoError(t, err)
		require.Empty(t, res.Stored, "kad does not acknowledge a worse record")
		k.requireStored(t, ctx, key, []byte("b-3"))
		got, err := j.get(ctx, key)
		require.NoError(t, err)
		require.Equal(t, "b-3", string(got))
		j.requireStored(t, ctx, key, []byte("b-3"))
	})

	// js's only built-in namespace: it answers GET_VALUE for /pk/<its id>
	// with its public key, which kad checks with its pk validator. (kad,
	// like go-libp2p-kad-dht, serves only stored /pk records.)
	t.Run("kad reads js's public key", func(t *testing.T) {
		pub, err := j.id().ExtractPublicKey()
		require.NoError(t, err)
		want, err := crypto.MarshalPublicKey(pub)
		require.NoError(t, err)
		got, err := k.kad.GetValue(ctx, "/pk/"+string(j.id()))
		require.NoError(t, err)
		require.Equal(t, want, got)
	})

	// kad-dht 15 echoes a PUT_VALUE even when its validator refused the
	// record, so kad (like any writer) counts it as accepted: only a read
	// shows it was not kept.
	t.Run("js echoes a record it refused", func(t *testing.T) {
		w := node{kad: newKad(t, kad.NamespacedValidator("w", greatestWins{}))}
		link(t, ctx, w, j)
		var accepted int
		require.NoError(t, w.kad.PutValue(ctx, "/w/unknown-to-js", []byte("x"), kad.Accepted(&accepted)))
		require.Equal(t, 1, accepted, "js echoed the record")
		_, err := j.js.GetLocal(ctx, "/w/unknown-to-js")
		require.ErrorIs(t, err, jspeer.ErrNotFound, "js did not keep it")
	})

	t.Run("missing key", func(t *testing.T) {
		_, err := k.get(ctx, "/v/nobody-wrote-this")
		require.ErrorIs(t, err, routing.ErrNotFound)
		_, err = j.get(ctx, "/v/nobody-wrote-this")
		require.ErrorIs(t, err, jspeer.ErrNotFound)
	})
}
