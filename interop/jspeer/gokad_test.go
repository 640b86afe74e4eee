package jspeer_test

import (
	"context"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	godht "github.com/libp2p/go-libp2p-kad-dht"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/stretchr/testify/require"
)

// TestJSWithGoKadDHT checks the harness against the reference Go
// implementation, so that a failure in a kad-versus-js test can be told
// apart from a harness problem. Values are left out: on /ipfs/kad/1.0.0
// go-libp2p-kad-dht accepts only the pk and ipns namespaces.
func TestJSWithGoKadDHT(t *testing.T) {
	js := startPeers(t, 1)[0]
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.DisableRelay())
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, h.Close()) })
	g, err := godht.New(h, godht.Mode(godht.ModeServer))
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, g.Close()) })

	require.NoError(t, js.ConnectInfo(ctx, peer.AddrInfo{ID: h.ID(), Addrs: h.Addrs()}))
	require.NoError(t, js.WaitForRoutingTable(ctx, h.ID()))
	deadline := time.Now().Add(10 * time.Second)
	for g.RoutingTable().Find(js.ID) == "" {
		require.True(t, time.Now().Before(deadline), "go-libp2p-kad-dht never admitted the js peer")
		time.Sleep(50 * time.Millisecond)
	}

	t.Run("js provides, go finds", func(t *testing.T) {
		k := sha256CID(t, "provided by js")
		require.NoError(t, js.Provide(ctx, k))
		var found []peer.AddrInfo
		deadline := time.Now().Add(10 * time.Second)
		for len(found) == 0 {
			require.True(t, time.Now().Before(deadline), "go never saw the js provider record")
			found, err = g.FindProviders(ctx, k)
			require.NoError(t, err)
			if len(found) == 0 {
				time.Sleep(100 * time.Millisecond)
			}
		}
		require.Equal(t, []peer.ID{js.ID}, ids(found))
	})

	t.Run("go provides, js finds", func(t *testing.T) {
		k := sha256CID(t, "provided by go")
		require.NoError(t, g.Provide(ctx, k, true))
		found, err := js.FindProviders(ctx, k, 1)
		require.NoError(t, err)
		require.Equal(t, []peer.ID{h.ID()}, ids(found))
		require.NotEmpty(t, found[0].Addrs)
	})

	t.Run("findPeer both ways", func(t *testing.T) {
		info, err := js.FindPeerNetwork(ctx, h.ID())
		require.NoError(t, err)
		require.Equal(t, h.ID(), info.ID)
		require.NotEmpty(t, info.Addrs)

		found, err := g.FindPeer(ctx, js.ID)
		require.NoError(t, err)
		require.NotEmpty(t, found.Addrs)
	})

	t.Run("closest", func(t *testing.T) {
		closest, err := js.Closest(ctx, "some key")
		require.NoError(t, err)
		require.Equal(t, []peer.ID{h.ID()}, closest)
	})
}
