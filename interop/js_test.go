package interop

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/kadlib/kad"
	"github.com/kadlib/kad/interop/jspeer"
)

// The tests in js_*_test.go put kad next to js-libp2p's kad-dht, run by
// jspeer as a Node.js subprocess. They fail, never skip, when node or the
// js dependencies (npm ci in interop/js) are missing: CI must run them.

// TestMain checks that no test of the package leaves a goroutine behind:
// every kad DHT, host and js driver is closed by its test's cleanup.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// jsDir is interop/js, seen from this package's folder.
const jsDir = "js"

// tableWait bounds how long a node may take to admit a new neighbour:
// identify, then kad's FIND_NODE check or js's ping.
const tableWait = 15 * time.Second

// startJS starts n js nodes in parallel, in quiet mode (see
// interop/js/README.md); they stop when the test ends, and their stderr is
// logged if it failed.
func startJS(t *testing.T, n int) []*jspeer.Peer {
	t.Helper()
	// No js lookups but the tests' own: a js self lookup, a second after
	// start, would otherwise connect the ends of a line behind its middle.
	t.Setenv("KAD_JSPEER_QUIET", "1")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	peers, err := jspeer.StartN(ctx, jsDir, n)
	require.NoError(t, err, "starting the js peers (needs node and `npm ci` in interop/js)")
	jspeer.CloseAtEnd(t, peers)
	return peers
}

// node is one DHT node of either implementation, so a case can be written
// once and run with the roles swapped.
type node struct {
	kad *kad.DHT     // set for a kad node
	js  *jspeer.Peer // set for a js node
}

func (n node) kind() string {
	if n.kad != nil {
		return "kad"
	}
	return "js"
}

func (n node) String() string { return n.kind() + " " + n.id().ShortString() }

func (n node) id() peer.ID {
	if n.kad != nil {
		return n.kad.Host().ID()
	}
	return n.js.ID
}

func (n node) addrInfo() peer.AddrInfo {
	if n.kad != nil {
		return info(n.kad.Host())
	}
	return n.js.AddrInfo()
}

// dial opens a connection from n to other.
func (n node) dial(t *testing.T, ctx context.Context, other node) {
	t.Helper()
	if n.kad != nil {
		require.NoError(t, n.kad.Host().Connect(ctx, other.addrInfo()), "%v dials %v", n, other)
		return
	}
	require.NoError(t, n.js.ConnectInfo(ctx, other.addrInfo()), "%v dials %v", n, other)
}

// connected reports whether n has an open connection to p.
func (n node) connected(t *testing.T, ctx context.Context, p peer.ID) bool {
	t.Helper()
	if n.kad != nil {
		return n.kad.Host().Network().Connectedness(p) == network.Connected
	}
	var res struct {
		Peers []struct {
			ID string `json:"id"`
		} `json:"peers"`
	}
	require.NoError(t, n.js.Call(ctx, "peers", nil, &res))
	for _, c := range res.Peers {
		if c.ID == p.String() {
			return true
		}
	}
	return false
}

// waitTable waits until n's routing table holds every one of ids.
func (n node) waitTable(t *testing.T, ctx context.Context, ids ...peer.ID) {
	t.Helper()
	if n.kad != nil {
		eventually(t, tableWait, fmt.Sprintf("%v has %v in its routing table", n, ids), func() bool {
			for _, p := range ids {
				if !n.kad.RoutingTable().Find(p) {
					return false
				}
			}
			return true
		})
		return
	}
	wctx, cancel := context.WithTimeout(ctx, tableWait)
	defer cancel()
	require.NoError(t, n.js.WaitForRoutingTable(wctx, ids...))
}

// findPeer looks p up through the DHT; a js node skips its peer store, so
// the answer always comes from the network.
func (n node) findPeer(ctx context.Context, p peer.ID) (peer.AddrInfo, error) {
	if n.kad != nil {
		return n.kad.FindPeer(ctx, p)
	}
	return n.js.FindPeerNetwork(ctx, p)
}

func (n node) closest(ctx context.Context, key string) ([]peer.ID, error) {
	if n.kad != nil {
		return n.kad.GetClosestPeers(ctx, key)
	}
	return n.js.Closest(ctx, key)
}

// link connects a and b (a dials) and waits until each has the other in
// its routing table.
func link(t *testing.T, ctx context.Context, a, b node) {
	t.Helper()
	a.dial(t, ctx, b)
	a.waitTable(t, ctx, b.id())
	b.waitTable(t, ctx, a.id())
}

// Each side admits the other to its routing table, whichever dials: kad
// after js answers its FIND_NODE check, js after kad's identify lists
// /ipfs/kad/1.0.0 and the kad host answers ping. Then each finds the
// other and sees it as the closest peer to any key. (js looks kad up on
// the network, and kad answers FIND_NODE for its own id with itself; kad
// answers from the open connection: its lookups across a middle node are
// in TestJSLinePeers.)
func TestJSPair(t *testing.T) {
	for _, kadDials := range []bool{true, false} {
		name := map[bool]string{true: "kad dials js", false: "js dials kad"}[kadDials]
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
			defer cancel()
			k := node{kad: newJSKad(t)}
			j := node{js: startJS(t, 1)[0]}
			if kadDials {
				link(t, ctx, k, j)
			} else {
				link(t, ctx, j, k)
			}

			for _, c := range []struct{ from, to node }{{k, j}, {j, k}} {
				ai, err := c.from.findPeer(ctx, c.to.id())
				require.NoError(t, err, "%v finds %v", c.from, c.to)
				require.Equal(t, c.to.id(), ai.ID)
				requireAddrs(t, ai.Addrs, c.to.addrInfo().Addrs, "%v finds the listen addresses of %v", c.from, c.to)

				got, err := c.from.closest(ctx, "/v/pair")
				require.NoError(t, err, "%v: closest", c.from)
				require.Equal(t, []peer.ID{c.to.id()}, got, "%v: closest", c.from)
			}
		})
	}
}

// newNodes starts one node per kind ("kad" or "js"), the js ones in
// parallel.
func newNodes(t *testing.T, kinds ...string) []node {
	t.Helper()
	jsCount := 0
	for _, k := range kinds {
		if k == "js" {
			jsCount++
		}
	}
	var js []*jspeer.Peer
	if jsCount > 0 {
		js = startJS(t, jsCount)
	}
	out := make([]node, len(kinds))
	for i, k := range kinds {
		switch k {
		case "js":
			out[i] = node{js: js[0]}
			js = js[1:]
		case "kad":
			out[i] = node{kad: newJSKad(t)}
		default:
			t.Fatalf("unknown node kind %q", k)
		}
	}
	return out
}

// requireAddrs checks that got holds every address of want, printing
// both as text if not.
func requireAddrs(t *testing.T, got, want []ma.Multiaddr, msgAndArgs ...any) {
	t.Helper()
	text := func(as []ma.Multiaddr) []string {
		out := make([]string, len(as))
		for i, a := range as {
			out[i] = a.String()
		}
		return out
	}
	require.Subset(t, text(got), text(want), msgAndArgs...)
}
