package interop

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/multiformats/go-multihash"
	"github.com/stretchr/testify/require"

	"github.com/kadlib/kad"
	"github.com/kadlib/kad/interop/jspeer"
)

// peerLines are the three-node lines a - b - c of the issue; in each,
// each end looks the other up.
var peerLines = [][3]string{
	{"js", "kad", "kad"},
	{"kad", "js", "kad"},
}

// TestJSLinePeers builds lines a - b - c where the ends are connected to
// the middle only, and checks that each end finds the other, and its
// closest peers, only through the middle node of the line.
func TestJSLinePeers(t *testing.T) {
	for _, kinds := range peerLines {
		t.Run(strings.Join(kinds[:], "-"), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			ns := newNodes(t, kinds[:]...)
			a, b, c := ns[0], ns[1], ns[2]
			link(t, ctx, a, b)
			link(t, ctx, c, b)

			// FindPeer both ways. A kad lookup ends at the middle's answer
			// without dialing the target, so kad ends look first: a js
			// lookup may go on to dial it.
			finds := []struct{ from, to node }{{a, c}, {c, a}}
			if finds[0].from.js != nil {
				finds[0], finds[1] = finds[1], finds[0]
			}
			for _, f := range finds {
				require.False(t, f.from.connected(t, ctx, f.to.id()), "%v is not connected to %v before it looks it up", f.from, f.to)
				ai, err := f.from.findPeer(ctx, f.to.id())
				require.NoError(t, err, "%v finds %v through %v", f.from, f.to, b)
				require.Equal(t, f.to.id(), ai.ID)
				requireAddrs(t, ai.Addrs, f.to.addrInfo().Addrs, "%v finds the listen addresses of %v", f.from, f.to)
			}

			// GetClosestPeers both ways: each end reaches the other end
			// through the middle.
			for _, f := range finds {
				got, err := f.from.closest(ctx, "/v/line")
				require.NoError(t, err, "%v: closest", f.from)
				require.ElementsMatch(t, []peer.ID{b.id(), f.to.id()}, got, "%v: closest", f.from)
			}
		})
	}
}

// TestJSLineDiscovery: kad nodes with default options (server mode, no
// Bootstrap call) at both ends of a line whose middle is a js peer come to
// hold each other, through their own discovery, within seconds.
func TestJSLineDiscovery(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	b := node{js: startJS(t, 1)[0]}
	a, c := node{kad: newKad(t)}, node{kad: newKad(t)}
	start := time.Now()
	a.dial(t, ctx, b)
	c.dial(t, ctx, b)
	eventually(t, 20*time.Second, "the kad ends hold each other", func() bool {
		return a.kad.RoutingTable().Find(c.id()) && c.kad.RoutingTable().Find(a.id())
	})
	t.Logf("kad ends hold each other %v after dialling the js middle", time.Since(start).Round(time.Millisecond))
}

// recordLines are the lines of TestJSLineRecords: a publishes, c reads.
// js-kad-kad and kad-kad-js are the same line with the roles swapped.
var recordLines = [][3]string{
	{"js", "kad", "kad"},
	{"kad", "kad", "js"},
	{"kad", "js", "kad"},
}

// TestJSLineRecords: in a line a - b - c, a publishes a value and a
// provider record while c is not there; c then joins through b and finds
// the value, the provider and a itself, all served by b. A kad reader
// stops at b's answer (Quorum(1), count 1, FindPeer), so it must never
// connect to a; a js reader cannot be stopped early, so a leaves the DHT
// first and the js reader must say that b's answer is where each record
// came from.
func TestJSLineRecords(t *testing.T) {
	for _, kinds := range recordLines {
		t.Run(strings.Join(kinds[:], "-"), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			ns := newNodes(t, kinds[:]...)
			a, b, c := ns[0], ns[1], ns[2]
			prober := newHost(t)

			link(t, ctx, a, b)
			key := "/v/line-" + a.id().String()
			value := []byte("published by " + a.String())
			content := contentCID(t, "line content "+a.id().String(), multihash.SHA2_256)
			a.put(t, ctx, key, value)
			b.requireStored(t, ctx, key, value)
			a.provide(t, ctx, content)
			requireServes(t, ctx, prober, b, content, a)

			if c.js != nil {
				// A js lookup cannot be stopped at b's answer: it would go
				// on to a, which would answer c's reads too. So a leaves
				// the DHT (its host stays up, connected to b) and b drops
				// it from its table: only b can answer c.
				require.NotNil(t, a.kad, "a js reader needs a kad publisher here")
				require.NoError(t, a.kad.Close())
				require.NotNil(t, b.kad, "a js reader needs a kad middle here")
				eventually(t, tableWait, "b drops a, which left the DHT", func() bool { return !b.kad.RoutingTable().Find(a.id()) })
			}
			link(t, ctx, c, b)
			require.False(t, c.connected(t, ctx, a.id()), "%v is not connected to %v before it reads", c, a)
			if c.kad != nil {
				got, err := c.kad.GetValue(ctx, key, kad.Quorum(1))
				require.NoError(t, err)
				require.Equal(t, value, got)
				provs, err := c.kad.FindProviders(ctx, content, 1)
				require.NoError(t, err)
				require.Equal(t, []peer.ID{a.id()}, ids(provs))
				requireAddrs(t, provs[0].Addrs, a.addrInfo().Addrs)
				ai, err := c.kad.FindPeer(ctx, a.id())
				require.NoError(t, err)
				requireAddrs(t, ai.Addrs, a.addrInfo().Addrs)
				require.False(t, c.connected(t, ctx, a.id()), "%v read everything from %v without contacting %v", c, b, a)
				return
			}

			// Three js lookups at once, each starting from b, the only peer
			// c knows: a is reached, if at all, only after b answered.
			var (
				wg               sync.WaitGroup
				got              []byte
				gotFrom          peer.ID
				provs            []jspeer.FoundProvider
				ai               peer.AddrInfo
				errV, errP, errF error
			)
			wg.Go(func() { got, gotFrom, errV = c.js.GetFrom(ctx, key) })
			wg.Go(func() { provs, errP = c.js.FindProvidersFrom(ctx, content, 1) })
			wg.Go(func() { ai, errF = c.js.FindPeerNetwork(ctx, a.id()) })
			wg.Wait()
			require.NoError(t, errV)
			require.Equal(t, value, got)
			require.Equal(t, b.id(), gotFrom, "the value came from %v", b)
			require.NoError(t, errP)
			require.Len(t, provs, 1)
			require.Equal(t, a.id(), provs[0].ID)
			require.Equal(t, b.id(), provs[0].From, "the provider record came from %v", b)
			requireAddrs(t, provs[0].Addrs, a.addrInfo().Addrs)
			require.NoError(t, errF)
			requireAddrs(t, ai.Addrs, a.addrInfo().Addrs)
		})
	}
}

// TestJSRecordsOutliveJS: a value and a provider record that a js node
// stored on kad are served to a kad node that never saw js, after the js
// node is gone.
func TestJSRecordsOutliveJS(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ns := newNodes(t, "js", "kad", "kad")
	j, b, c := ns[0], ns[1], ns[2]
	prober := newHost(t)
	link(t, ctx, j, b)
	const key = "/v/left-by-js"
	value := []byte("js was here")
	content := contentCID(t, "left by js", multihash.SHA2_256)
	j.put(t, ctx, key, value)
	b.requireStored(t, ctx, key, value)
	j.provide(t, ctx, content)
	requireServes(t, ctx, prober, b, content, j)
	jsAddrs := j.addrInfo().Addrs
	require.NoError(t, j.js.Close())

	link(t, ctx, c, b)
	got, err := c.kad.GetValue(ctx, key)
	require.NoError(t, err)
	require.Equal(t, value, got)
	provs, err := c.kad.FindProviders(ctx, content, 0)
	require.NoError(t, err)
	require.Equal(t, []peer.ID{j.id()}, ids(provs))
	requireAddrs(t, provs[0].Addrs, jsAddrs, "the js provider's addresses, as kad stored them")
}
