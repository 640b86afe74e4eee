package kad

import (
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/test"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/stretchr/testify/require"

	"github.com/kadlib/kad/internal/pb"
)

// decodePeersConnected keeps what decodePeers keeps (valid ids other than
// ours, at most limit, unparsable addresses dropped) and names the kept
// entries marked CONNECTED, in order.
func TestDecodePeersConnected(t *testing.T) {
	self, a, b, c := test.RandPeerIDFatal(t), test.RandPeerIDFatal(t), test.RandPeerIDFatal(t), test.RandPeerIDFatal(t)
	addr := ma.StringCast("/ip4/127.0.0.1/tcp/4001")
	entry := func(p peer.ID, conn pb.ConnectionType) pb.Peer {
		return pb.Peer{ID: []byte(p), Addrs: [][]byte{addr.Bytes(), {0xff}}, Connection: conn}
	}
	in := []pb.Peer{
		entry(a, pb.Connected),
		{ID: []byte("garbage"), Connection: pb.Connected},
		entry(self, pb.Connected),
		entry(b, pb.NotConnected),
		entry(c, pb.Connected),
	}
	for _, tc := range []struct {
		name      string
		limit     int
		ids       []peer.ID
		connected []peer.ID
	}{
		{"all", 10, []peer.ID{a, b, c}, []peer.ID{a, c}},
		{"limit counts kept entries only", 2, []peer.ID{a, b}, []peer.ID{a}},
		{"limit 0", 0, nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, connected := decodePeersConnected(in, self, tc.limit)
			var ids []peer.ID
			for _, ai := range out {
				ids = append(ids, ai.ID)
				require.Equal(t, []ma.Multiaddr{addr}, ai.Addrs)
			}
			require.Equal(t, tc.ids, ids)
			require.Equal(t, tc.connected, connected)
			require.Equal(t, out, decodePeers(in, self, tc.limit))
		})
	}
}
