package kad

import (
	"crypto/rand"
	"errors"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	mocknet "github.com/libp2p/go-libp2p/p2p/net/mock"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/stretchr/testify/require"

	"github.com/kadlib/kad/internal/pb"
)

func TestAddressFilterPresets(t *testing.T) {
	addrs := func(ss ...string) peer.AddrInfo {
		ai := peer.AddrInfo{}
		for _, s := range ss {
			ai.Addrs = append(ai.Addrs, ma.StringCast(s))
		}
		return ai
	}
	for _, tc := range []struct {
		name            string
		ai              peer.AddrInfo
		public, private bool
	}{
		{"none", addrs(), false, false},
		{"public v4", addrs("/ip4/1.2.3.4/tcp/4001"), true, false},
		{"public v6", addrs("/ip6/2001:4860::1/udp/4001/quic-v1"), true, false},
		{"loopback", addrs("/ip4/127.0.0.1/tcp/4001"), false, true},
		{"loopback v6", addrs("/ip6/::1/tcp/4001"), false, true},
		{"private", addrs("/ip4/192.168.1.7/tcp/4001"), false, true},
		{"both", addrs("/ip4/10.0.0.1/tcp/4001", "/ip4/1.2.3.4/tcp/4001"), true, true},
		{"relayed only", addrs("/ip4/1.2.3.4/tcp/4001/p2p/12D3KooWBTfHsM2hi9tqFALLSpAskM1dGb8g66tdh41rxThe1ag9/p2p-circuit"), false, false},
		{"dns", addrs("/dns4/example.com/tcp/4001"), true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.public, PublicAddrs(tc.ai), "PublicAddrs")
			require.Equal(t, tc.private, PrivateAddrs(tc.ai), "PrivateAddrs")
			require.True(t, AnyAddrs(tc.ai))
		})
	}
}

func TestAddressFilterValidation(t *testing.T) {
	mn := mocknet.New()
	t.Cleanup(func() { _ = mn.Close() })
	h, err := mn.GenPeer()
	require.NoError(t, err)
	_, err = New(t.Context(), h, AddressFilter(nil))
	require.ErrorIs(t, err, ErrInvalidOption)
	d, err := New(t.Context(), h, AddressFilter(AnyAddrs))
	require.NoError(t, err)
	require.NoError(t, d.Close())
}

// A peer the filter refuses never enters the table and is never asked:
// not as a bootstrap peer, not when identify announces it, not when a
// response lists it.
func TestAddressFilterAdmissionAndLookups(t *testing.T) {
	// Fake servers at various addresses; each answers every FIND_NODE
	// with all the others.
	addrOf := map[string]string{
		"pub":   "/ip4/1.2.3.4/tcp/4001",
		"pub2":  "/ip4/1.2.3.5/tcp/4001",
		"loop":  "/ip4/127.0.0.1/tcp/4002",
		"loop2": "/ip4/127.0.0.2/tcp/4002",
		"priv":  "/ip4/192.168.1.7/tcp/4001",
	}
	all := []string{"pub", "pub2", "loop", "loop2", "priv"}
	for _, tc := range []struct {
		name   string
		filter func(peer.AddrInfo) bool
		seed   string
		used   []string // asked and admitted; the others neither
	}{
		{"any", AnyAddrs, "pub", all},
		{"public", PublicAddrs, "pub", []string{"pub", "pub2"}},
		{"private", PrivateAddrs, "loop", []string{"loop", "loop2", "priv"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testCtx(t, 30*time.Second)
			mn := mocknet.New()
			t.Cleanup(func() { _ = mn.Close() })
			addPeer := func(addr string) peer.ID {
				sk, _, err := crypto.GenerateEd25519Key(rand.Reader)
				require.NoError(t, err)
				h, err := mn.AddPeer(sk, ma.StringCast(addr))
				require.NoError(t, err)
				return h.ID()
			}
			self := addPeer("/ip4/10.9.9.9/tcp/4001")
			fakes := map[string]*fakeServer{}
			var entries []pb.Peer
			for _, name := range all {
				h := mn.Host(addPeer(addrOf[name]))
				entries = append(entries, entryOf(h))
				fakes[name] = serveFake(h, func(_ peer.ID, req *pb.Message) *pb.Message {
					return reply(req, entries)
				})
			}
			require.NoError(t, mn.LinkAll())
			d, err := New(ctx, mn.Host(self), Mode(ModeServer), AddressFilter(tc.filter), RandomWalk(false))
			require.NoError(t, err)
			t.Cleanup(func() { _ = d.Close() })

			used := map[string]bool{}
			for _, name := range tc.used {
				used[name] = true
			}
			for _, name := range all {
				h := fakes[name].h
				err := d.keeper.addPeer(ctx, peer.AddrInfo{ID: h.ID(), Addrs: h.Addrs()})
				if used[name] {
					require.NoError(t, err, name)
				} else {
					require.True(t, errors.Is(err, errFiltered), "%s: %v", name, err)
				}
			}
			// The lookup below starts from the seed alone.
			for _, name := range all {
				if name != tc.seed {
					d.rt.remove(fakes[name].h.ID())
				}
			}
			got, err := d.GetClosestPeers(ctx, "some key")
			require.NoError(t, err)
			// Connected and identified, the refused peers are offered to
			// the table once more.
			for _, name := range all {
				d.keeper.consider(fakes[name].h.ID())
			}
			var gotNames []string
			for _, name := range all {
				id := fakes[name].h.ID()
				if used[name] {
					require.Positive(t, fakes[name].requests.Load(), "%s asked", name)
					require.True(t, d.rt.Find(id), "%s in the table", name)
					require.Contains(t, got, id)
					gotNames = append(gotNames, name)
				} else {
					require.Zero(t, fakes[name].requests.Load(), "%s never asked", name)
					require.False(t, d.rt.Find(id), "%s never in the table", name)
					d.keeper.admit(id)
					require.False(t, d.rt.Find(id), "%s refused by admit", name)
				}
			}
			require.ElementsMatch(t, tc.used, gotNames)
			require.Len(t, got, len(tc.used))
		})
	}
}
