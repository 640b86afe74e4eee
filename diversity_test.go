package kad

import (
	"crypto/rand"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/stretchr/testify/require"

	"github.com/kadlib/kad/internal/kbucket"
)

func randomPeer(t *testing.T) peer.ID {
	_, pk, err := crypto.GenerateEd25519Key(rand.Reader)
	require.NoError(t, err)
	id, err := peer.IDFromPublicKey(pk)
	require.NoError(t, err)
	return id
}

func TestIPGroup(t *testing.T) {
	cases := []struct {
		addr, want string
	}{
		{"/ip4/8.8.4.4/tcp/1", "4:8.8.0.0"},
		{"/ip4/8.8.200.1/udp/1/quic-v1", "4:8.8.0.0"},
		{"/ip4/127.0.0.1/tcp/1", ""},
		{"/ip4/192.168.1.2/tcp/1", ""},
		{"/ip4/10.0.0.1/tcp/1", ""},
		{"/ip6/2001:db8:1:2::1/tcp/1", ""}, // documentation range: not public
		{"/ip6/2600:1f18:aaaa:1::1/tcp/1", "6:2600:1f18:aaaa::"},
		{"/ip6/::1/tcp/1", ""},
		{"/dns4/example.com/tcp/1", ""},
	}
	for _, tc := range cases {
		t.Run(tc.addr, func(t *testing.T) {
			require.Equal(t, tc.want, ipGroup([]ma.Multiaddr{ma.StringCast(tc.addr)}))
		})
	}
}

func TestDiversityLimitsGroups(t *testing.T) {
	self := randomPeer(t)
	rt := newRoutingTable(self, 20)
	rt.div = newDiversity(diversityLimits{perTable: 3, perBucket: 2})
	group := map[peer.ID]string{}
	rt.groupOf = func(p peer.ID) string { return group[p] }
	now := time.Now()
	selfKey := kbucket.PeerKey(self)

	var admitted, rejected int
	perBucket := map[int]int{}
	for i := 0; i < 40; i++ {
		p := randomPeer(t)
		group[p] = "4:1.2.0.0"
		if rt.add(p, now) == kbucket.Added {
			admitted++
			perBucket[kbucket.CommonPrefixLen(selfKey, kbucket.PeerKey(p))]++
		} else {
			rejected++
		}
	}
	require.Equal(t, 3, admitted, "at most 3 peers of one group in the table")
	for cpl, n := range perBucket {
		require.LessOrEqual(t, n, 2, "bucket %d", cpl)
	}
	// Exempt (private) peers are never limited.
	for i := 0; i < 10; i++ {
		p := randomPeer(t)
		group[p] = ""
		out := rt.add(p, now)
		require.Contains(t, []kbucket.Outcome{kbucket.Added, kbucket.Pending}, out)
	}
	// Removing a grouped peer frees its slot.
	var one peer.ID
	for _, p := range rt.ListPeers() {
		if group[p] != "" {
			one = p
			break
		}
	}
	rt.remove(one)
	freed := false
	for i := 0; i < 40 && !freed; i++ {
		p := randomPeer(t)
		group[p] = "4:1.2.0.0"
		freed = rt.add(p, now) == kbucket.Added
	}
	require.True(t, freed)
}
