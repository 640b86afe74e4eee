package interop

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	godht "github.com/libp2p/go-libp2p-kad-dht"
	"github.com/libp2p/go-libp2p/core/peer"
	mh "github.com/multiformats/go-multihash"
	"github.com/stretchr/testify/require"

	"github.com/kadlib/kad"
)

func testCID(t *testing.T, s string) cid.Cid {
	t.Helper()
	h, err := mh.Sum([]byte(s), mh.SHA2_256, -1)
	require.NoError(t, err)
	return cid.NewCidV1(cid.Raw, h)
}

func hasProvider(ais []peer.AddrInfo, p peer.ID) bool {
	return slices.ContainsFunc(ais, func(ai peer.AddrInfo) bool { return ai.ID == p && len(ai.Addrs) > 0 })
}

// mixedNet is kad and go-libp2p-kad-dht servers on loopback TCP, everyone
// joined through the first node of each implementation and bootstrapped.
func mixedNet(t *testing.T, ctx context.Context, each int) ([]*kad.DHT, []*godht.IpfsDHT) {
	t.Helper()
	var kads []*kad.DHT
	var gos []*godht.IpfsDHT
	for i := 0; i < each; i++ {
		kads = append(kads, newKad(t))
		gos = append(gos, newGoKad(t))
	}
	for i := 0; i < each; i++ {
		if i > 0 {
			connect(t, ctx, kads[i].Host(), kads[0].Host())
			connect(t, ctx, gos[i].Host(), gos[0].Host())
		}
		connect(t, ctx, kads[i].Host(), gos[0].Host())
		connect(t, ctx, gos[i].Host(), kads[0].Host())
	}
	for _, k := range kads {
		eventually(t, 15*time.Second, "kad table non-empty", func() bool { return k.RoutingTable().Size() > 0 })
		require.NoError(t, k.Bootstrap(ctx))
	}
	for _, g := range gos {
		eventually(t, 15*time.Second, "go table non-empty", func() bool { return g.RoutingTable().Size() > 0 })
		require.NoError(t, g.Bootstrap(ctx))
	}
	return kads, gos
}

// kad announces, go-libp2p-kad-dht stores (its ADD_PROVIDER handling is
// asynchronous, hence the polling) and finds; go announces, kad stores and
// finds, with addresses.
func TestGoKadProviders(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const each = 4
	kads, gos := mixedNet(t, ctx, each)

	t.Run("kad provides, go finds", func(t *testing.T) {
		for i, k := range kads {
			c := testCID(t, fmt.Sprintf("from kad %d", i))
			start := time.Now()
			require.NoError(t, k.Provide(ctx, c, true))
			t.Logf("kad %d Provide took %v", i, time.Since(start))
			stored := 0
			eventually(t, 10*time.Second, "go nodes store kad's record", func() bool {
				stored = 0
				for _, g := range gos {
					got, err := g.ProviderStore().GetProviders(ctx, c.Hash())
					if err == nil && hasProvider(got, k.Host().ID()) {
						stored++
					}
				}
				return stored == each
			})
			for _, g := range gos {
				eventually(t, 10*time.Second, "go finds kad's record", func() bool {
					fctx, fcancel := context.WithTimeout(ctx, 5*time.Second)
					defer fcancel()
					got, err := g.FindProviders(fctx, c)
					return err == nil && hasProvider(got, k.Host().ID())
				})
			}
		}
	})

	t.Run("go provides, kad finds", func(t *testing.T) {
		for i, g := range gos {
			c := testCID(t, fmt.Sprintf("from go %d", i))
			start := time.Now()
			require.NoError(t, g.Provide(ctx, c, true))
			t.Logf("go %d Provide took %v", i, time.Since(start))
			for _, k := range kads {
				got, err := k.FindProviders(ctx, c, 0)
				require.NoError(t, err)
				require.True(t, hasProvider(got, g.Host().ID()), "kad finds go's record with addresses")
				var streamed []peer.ID
				for ai := range k.FindProvidersAsync(ctx, c, 1) {
					streamed = append(streamed, ai.ID)
				}
				require.Equal(t, []peer.ID{g.Host().ID()}, streamed)
			}
		}
	})

	t.Run("CIDv0 from go, CIDv1 from kad", func(t *testing.T) {
		h, err := mh.Sum([]byte("v0 and v1"), mh.SHA2_256, -1)
		require.NoError(t, err)
		require.NoError(t, gos[1].Provide(ctx, cid.NewCidV0(h), true))
		got, err := kads[2].FindProviders(ctx, cid.NewCidV1(cid.DagProtobuf, h), 1)
		require.NoError(t, err)
		require.True(t, hasProvider(got, gos[1].Host().ID()))
	})
}

// A kad node whose only peer is go-libp2p-kad-dht announces to it, and a
// go node whose only peer is kad announces to it: the record crosses the
// implementation boundary directly, and reaching the peer is reported.
func TestGoKadProvidersDirect(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	k, g := newKad(t), newGoKad(t)
	connect(t, ctx, k.Host(), g.Host())
	eventually(t, 10*time.Second, "tables", func() bool {
		return k.RoutingTable().Find(g.Host().ID()) && g.RoutingTable().Find(k.Host().ID()) != ""
	})

	c := testCID(t, "direct from kad")
	require.NoError(t, k.Provide(ctx, c, true), "go closes the stream after storing: the send counts as reached")
	eventually(t, 10*time.Second, "go stored kad's record", func() bool {
		got, err := g.ProviderStore().GetProviders(ctx, c.Hash())
		return err == nil && hasProvider(got, k.Host().ID())
	})

	c = testCID(t, "direct from go")
	require.NoError(t, g.Provide(ctx, c, true))
	var got []peer.AddrInfo
	eventually(t, 10*time.Second, "kad stored go's record", func() bool {
		var err error
		got, err = k.FindProviders(ctx, c, 0)
		return err == nil && hasProvider(got, g.Host().ID())
	})
	require.ElementsMatch(t, g.Host().Addrs(), got[0].Addrs)
}
