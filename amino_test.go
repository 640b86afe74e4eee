package kad

import (
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/stretchr/testify/require"
)

func TestAminoBootstrapPeers(t *testing.T) {
	peers := AminoBootstrapPeers()
	require.NotEmpty(t, peers)
	seen := make(map[peer.ID]bool)
	addrs := 0
	for _, p := range peers {
		require.NoError(t, p.ID.Validate(), p.ID)
		require.False(t, seen[p.ID], "peer %s listed twice", p.ID)
		seen[p.ID] = true
		require.NotEmpty(t, p.Addrs, p.ID)
		for _, a := range p.Addrs {
			_, id := peer.SplitAddr(a)
			require.Empty(t, id, "addresses carry no /p2p part: %s", a)
		}
		addrs += len(p.Addrs)
	}
	require.Len(t, peers, 5, "four dnsaddr peers and the fixed-IP one")
	require.Equal(t, len(aminoBootstrapAddrs), addrs, "no address lost in grouping")

	peers[0].ID = ""
	peers[0].Addrs[0] = nil
	again := AminoBootstrapPeers()
	require.NotEqual(t, peer.ID(""), again[0].ID, "each call returns a fresh slice")
	require.NotNil(t, again[0].Addrs[0])
}

func TestParseP2pAddrs(t *testing.T) {
	tests := []struct {
		name  string
		addrs []string
		ok    bool
	}{
		{"amino", aminoBootstrapAddrs, true},
		{"not a multiaddr", []string{"/nope"}, false},
		{"no peer id", []string{"/ip4/1.2.3.4/tcp/1"}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseP2pAddrs(tc.addrs)
			if tc.ok {
				require.NoError(t, err)
			} else {
				require.Error(t, err)
			}
		})
	}
}
