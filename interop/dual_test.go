package interop

import (
	"context"
	"crypto/rand"
	"testing"
	"time"

	godht "github.com/libp2p/go-libp2p-kad-dht"
	godual "github.com/libp2p/go-libp2p-kad-dht/dual"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/routing"
	"github.com/stretchr/testify/require"

	"github.com/kadlib/kad"
	"github.com/kadlib/kad/dual"
)

// dualNode is a dual DHT of either implementation, with the side a test
// exercises.
type dualNode struct {
	impl    string
	h       host.Host
	dual    routing.Routing
	side    routing.Routing // the WAN or LAN DHT under test
	inTable func(peer.ID) bool
}

// newKadDual starts a kad dual DHT. For the WAN side, the WAN DHT is made
// a server that counts loopback as public; the LAN side keeps its
// defaults.
func newKadDual(t *testing.T, side string) *dualNode {
	t.Helper()
	var opts []dual.Option
	if side == "WAN" {
		opts = append(opts, dual.WanDHTOption(kad.Mode(kad.ModeServer), kad.AddressFilter(kad.AnyAddrs)))
	}
	h := newHost(t)
	d, err := dual.New(context.Background(), h, opts...)
	require.NoError(t, err)
	t.Cleanup(func() { _ = d.Close() })
	s := d.LAN()
	if side == "WAN" {
		s = d.WAN()
	}
	return &dualNode{impl: "kad", h: h, dual: d, side: s, inTable: s.RoutingTable().Find}
}

// newGoDual starts a go-libp2p-kad-dht dual DHT with no bootstrap peers.
// For the WAN side its WAN DHT is made a server whose filters pass
// loopback peers. Its LAN DHT drops loopback addresses by default (its
// AddressFilter), the only addresses a loopback test has, so that filter
// is lifted on the LAN side too.
func newGoDual(t *testing.T, side string) *dualNode {
	t.Helper()
	opts := []godual.Option{
		godual.DHTOption(godht.BootstrapPeers()),
		godual.LanDHTOption(godht.AddressFilter(nil)),
	}
	if side == "WAN" {
		opts = append(opts, godual.WanDHTOption(
			godht.Mode(godht.ModeServer),
			godht.QueryFilter(func(any, peer.AddrInfo) bool { return true }),
			godht.RoutingTableFilter(func(any, peer.ID) bool { return true }),
			godht.AddressFilter(nil),
		))
	}
	h := newHost(t)
	d, err := godual.New(h, opts...)
	require.NoError(t, err)
	t.Cleanup(func() { _ = d.Close() })
	s := d.LAN
	if side == "WAN" {
		s = d.WAN
	}
	return &dualNode{impl: "go", h: h, dual: d, side: s, inTable: func(p peer.ID) bool { return s.RoutingTable().Find(p) != "" }}
}

// join connects a to b and waits until each has the other in the side's
// table.
func join(t *testing.T, ctx context.Context, a, b *dualNode) {
	t.Helper()
	connect(t, ctx, a.h, b.h)
	eventually(t, 15*time.Second, a.impl+" and "+b.impl+" have each other in their tables", func() bool {
		return a.inTable(b.h.ID()) && b.inTable(a.h.ID())
	})
}

// pkRecord is a valid /pk record under both implementations' default
// validators: a fresh peer's public key.
func pkRecord(t *testing.T) (string, []byte) {
	t.Helper()
	_, pub, err := crypto.GenerateEd25519Key(rand.Reader)
	require.NoError(t, err)
	id, err := peer.IDFromPublicKey(pub)
	require.NoError(t, err)
	b, err := crypto.MarshalPublicKey(pub)
	require.NoError(t, err)
	return "/pk/" + string(id), b
}

// Both ways on each side: a writer of one implementation stores a value,
// provides a CID and is the only route to a peer; a reader of the other
// implementation that joins afterwards, knowing only the writer, reads
// all three through the side under test and through its dual DHT.
func TestDualGoKad(t *testing.T) {
	makers := map[string]func(*testing.T, string) *dualNode{"kad": newKadDual, "go": newGoDual}
	for _, side := range []string{"LAN", "WAN"} {
		for _, dir := range [][2]string{{"kad", "go"}, {"go", "kad"}} {
			t.Run(side+"/"+dir[0]+"-to-"+dir[1], func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
				defer cancel()
				w := makers[dir[0]](t, side)
				other := makers[dir[1]](t, side) // the peer to find, of the reader's implementation
				join(t, ctx, other, w)

				key, val := pkRecord(t)
				require.NoError(t, w.dual.PutValue(ctx, key, val))
				c := testCID(t, "dual "+side+" "+dir[0])
				require.NoError(t, w.dual.Provide(ctx, c, true))

				r := makers[dir[1]](t, side)
				join(t, ctx, r, w)

				t.Run("FindPeer", func(t *testing.T) {
					ai, err := r.side.FindPeer(ctx, other.h.ID())
					require.NoError(t, err)
					require.NotEmpty(t, ai.Addrs)
					ai, err = r.dual.FindPeer(ctx, other.h.ID())
					require.NoError(t, err)
					require.NotEmpty(t, ai.Addrs)
				})
				t.Run("GetValue", func(t *testing.T) {
					v, err := r.side.GetValue(ctx, key)
					require.NoError(t, err)
					require.Equal(t, val, v)
					v, err = r.dual.GetValue(ctx, key)
					require.NoError(t, err)
					require.Equal(t, val, v)
				})
				t.Run("FindProviders", func(t *testing.T) {
					for _, rt := range []routing.Routing{r.side, r.dual} {
						var got []peer.ID
						fctx, fcancel := context.WithTimeout(ctx, 30*time.Second)
						for ai := range rt.FindProvidersAsync(fctx, c, 1) {
							got = append(got, ai.ID)
						}
						fcancel()
						require.Equal(t, []peer.ID{w.h.ID()}, got)
					}
				})
			})
		}
	}
}

// A go dual DHT whose WAN side serves and accepts loopback peers is, to a
// kad dual DHT with default filters, a LAN peer only: it enters kad's LAN
// table and never its WAN table, even offered as a bootstrap peer.
func TestDualGoKadLoopbackStaysOffWAN(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	g := newGoDual(t, "WAN")
	h := newHost(t)
	k, err := dual.New(ctx, h, dual.WanDHTOption(kad.Mode(kad.ModeServer), kad.BootstrapPeers(info(g.h))))
	require.NoError(t, err)
	t.Cleanup(func() { _ = k.Close() })
	connect(t, ctx, h, g.h)
	eventually(t, 15*time.Second, "kad's LAN table has the go peer", func() bool { return k.LAN().RoutingTable().Find(g.h.ID()) })
	eventually(t, 15*time.Second, "the go WAN side has seen kad's WAN protocol", func() bool {
		protos, err := g.h.Peerstore().SupportsProtocols(h.ID(), "/ipfs/kad/1.0.0")
		return err == nil && len(protos) == 1
	})
	require.Error(t, k.WAN().Bootstrap(ctx), "the only WAN bootstrap peer is refused")
	require.NoError(t, k.Bootstrap(ctx), "the LAN side bootstraps")
	require.False(t, k.WAN().RoutingTable().Find(g.h.ID()))
	require.Zero(t, k.WAN().RoutingTable().Size())
	_, err = k.WAN().GetClosestPeers(ctx, "key")
	require.ErrorIs(t, err, kad.ErrNoPeers)
}
