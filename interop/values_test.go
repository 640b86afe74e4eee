package interop

import (
	"bytes"
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	godht "github.com/libp2p/go-libp2p-kad-dht"
	"github.com/libp2p/go-libp2p/core/routing"
	"github.com/stretchr/testify/require"

	"github.com/kadlib/kad"
)

// versioned is the "t" namespace validator both implementations use here:
// values are "<version>:<data>" and the highest version wins.
type versioned struct{}

func version(v []byte) (uint64, error) {
	s, _, ok := bytes.Cut(v, []byte(":"))
	if !ok {
		return 0, errors.New("no version")
	}
	return strconv.ParseUint(string(s), 10, 64)
}

func (versioned) Validate(_ string, v []byte) error {
	_, err := version(v)
	return err
}

func (versioned) Select(_ string, vals [][]byte) (int, error) {
	best, bestV := -1, uint64(0)
	for i, v := range vals {
		n, err := version(v)
		if err == nil && (best < 0 || n > bestV) {
			best, bestV = i, n
		}
	}
	if best < 0 {
		return 0, errors.New("no valid value")
	}
	return best, nil
}

// newKadT is a kad server accepting the "t" namespace.
func newKadT(t *testing.T) *kad.DHT {
	t.Helper()
	return newKad(t, kad.NamespacedValidator("t", versioned{}))
}

// newGoKadT is a go-libp2p-kad-dht server accepting the "t" namespace. It
// refuses extra validators under the /ipfs prefix, so it gets its own
// prefix and speaks /ipfs/kad/1.0.0 through the override.
func newGoKadT(t *testing.T) *godht.IpfsDHT {
	t.Helper()
	return newGoKad(t,
		godht.ProtocolPrefix("/x"),
		godht.V1ProtocolOverride("/ipfs/kad/1.0.0"),
		godht.NamespacedValidator("t", versioned{}),
		godht.BootstrapPeers(),
	)
}

func TestGoKadValues(t *testing.T) {
	t.Run("kad puts, go reads", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		k1, k2 := newKadT(t), newKadT(t)
		connect(t, ctx, k1.Host(), k2.Host())
		eventually(t, 10*time.Second, "kad nodes know each other", func() bool { return k1.RoutingTable().Find(k2.Host().ID()) })

		// Held by kad nodes only.
		var accepted int
		require.NoError(t, k1.PutValue(ctx, "/t/kad-only", []byte("1:kad only"), kad.Accepted(&accepted)))
		require.Equal(t, 1, accepted)

		// go-libp2p-kad-dht accepts what kad sends it.
		g0 := newGoKadT(t)
		connect(t, ctx, k1.Host(), g0.Host())
		eventually(t, 10*time.Second, "kad knows the go node", func() bool { return k1.RoutingTable().Find(g0.Host().ID()) })
		require.NoError(t, k1.PutValue(ctx, "/t/from-kad", []byte("1:from kad"), kad.Accepted(&accepted)))
		require.Equal(t, 2, accepted, "the kad and the go node both accepted")

		// A fresh go node that knows only a kad node reads the key only
		// kad nodes hold, through kad's GET_VALUE answers.
		g1 := newGoKadT(t)
		connect(t, ctx, g1.Host(), k2.Host())
		eventually(t, 10*time.Second, "go reader knows the kad node", func() bool { return g1.RoutingTable().Find(k2.Host().ID()) != "" })
		for key, want := range map[string]string{"/t/kad-only": "1:kad only", "/t/from-kad": "1:from kad"} {
			v, err := g1.GetValue(ctx, key)
			require.NoError(t, err, key)
			require.Equal(t, want, string(v), key)
		}

		// With every kad node gone, the go node still serves what kad put
		// on it: it stored the PUT_VALUE.
		for _, k := range []*kad.DHT{k1, k2} {
			require.NoError(t, k.Close())
			require.NoError(t, k.Host().Close())
		}
		g2 := newGoKadT(t)
		connect(t, ctx, g2.Host(), g0.Host())
		eventually(t, 10*time.Second, "second go reader knows the go node", func() bool { return g2.RoutingTable().Find(g0.Host().ID()) != "" })
		v, err := g2.GetValue(ctx, "/t/from-kad")
		require.NoError(t, err)
		require.Equal(t, []byte("1:from kad"), v)
	})

	t.Run("go puts, kad reads", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		g0, g2 := newGoKadT(t), newGoKadT(t)
		connect(t, ctx, g0.Host(), g2.Host())
		eventually(t, 10*time.Second, "go nodes know each other", func() bool { return g0.RoutingTable().Find(g2.Host().ID()) != "" })

		// Held by go nodes only.
		require.NoError(t, g0.PutValue(ctx, "/t/go-only", []byte("1:go only")))

		// kad stores what go-libp2p-kad-dht sends it.
		k0 := newKadT(t)
		connect(t, ctx, g0.Host(), k0.Host())
		eventually(t, 10*time.Second, "go knows the kad node", func() bool { return g0.RoutingTable().Find(k0.Host().ID()) != "" })
		require.NoError(t, g0.PutValue(ctx, "/t/from-go", []byte("1:from go")))
		v, err := k0.GetValue(ctx, "/t/from-go", routing.Offline)
		require.NoError(t, err, "kad node stored go's PUT_VALUE")
		require.Equal(t, []byte("1:from go"), v)

		// A fresh kad node that knows only a go node reads both keys
		// through the wire, and a newer version wins over an older one.
		k1 := newKadT(t)
		connect(t, ctx, k1.Host(), g2.Host())
		eventually(t, 10*time.Second, "kad reader knows the go node", func() bool { return k1.RoutingTable().Find(g2.Host().ID()) })
		_, err = k1.GetValue(ctx, "/t/go-only", routing.Offline)
		require.ErrorIs(t, err, routing.ErrNotFound, "the reader starts empty")
		for key, want := range map[string]string{"/t/go-only": "1:go only", "/t/from-go": "1:from go"} {
			v, err := k1.GetValue(ctx, key)
			require.NoError(t, err, key)
			require.Equal(t, want, string(v), key)
		}
		require.NoError(t, g0.PutValue(ctx, "/t/go-only", []byte("2:go newer")))
		ch, err := k1.SearchValue(ctx, "/t/go-only")
		require.NoError(t, err)
		var last []byte
		for v := range ch {
			last = v
		}
		require.Equal(t, []byte("2:go newer"), last)
	})
}
