package kad

import (
	"context"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/test"
	"github.com/libp2p/go-libp2p/p2p/net/connmgr"
	"github.com/stretchr/testify/require"

	"github.com/kadlib/kad/internal/kbucket"
)

// TestConnTags drives connTags from a real routing table: every table peer
// carries tableTagValue, exactly the k closest to the node nearTagValue,
// a removed peer loses its tag (and the next closest moves up), and close
// removes every tag and ignores later changes.
func TestConnTags(t *testing.T) {
	self := test.RandPeerIDFatal(t)
	const k = 4
	rt := newRoutingTable(self, 20)
	tags := map[peer.ID]int{}
	calls := 0
	ct := newTags(func(p peer.ID, v int) {
		calls++
		if v == 0 {
			delete(tags, p)
			return
		}
		tags[p] = v
	}, func(p peer.ID) int { return tags[p] }, self, k, rt.nearest)
	rt.onChange = ct.changed

	check := func(what string) {
		t.Helper()
		require.Equal(t, wantTags(rt, self, k), tags, what)
	}

	now := time.Now()
	for range 40 {
		rt.add(test.RandPeerIDFatal(t), now)
	}
	require.Greater(t, rt.Size(), k)
	check("after adds")

	for i, tc := range []struct {
		name string
		pick func() peer.ID
	}{
		{"a near peer leaves", func() peer.ID { return rt.nearest(kbucket.PeerKey(self), 1)[0] }},
		{"a far peer leaves", func() peer.ID {
			all := rt.nearest(kbucket.PeerKey(self), rt.Size())
			return all[len(all)-1]
		}},
	} {
		p := tc.pick()
		rt.remove(p)
		_, tagged := tags[p]
		require.False(t, tagged, "%d %s: the removed peer keeps its tag", i, tc.name)
		check(tc.name)
	}

	// A change that moves nothing sets nothing.
	before := calls
	ct.changed(rt.ListPeers()[0], true)
	require.Equal(t, before, calls, "a repeated add re-tagged peers")

	// repair sets lost tags again, on connected peers only.
	table := rt.ListPeers()
	lostUp, lostDown := table[0], table[1]
	delete(tags, lostUp)
	delete(tags, lostDown)
	require.Equal(t, 1, ct.repair(func(p peer.ID) bool { return p != lostDown }))
	_, down := tags[lostDown]
	require.False(t, down, "a peer not connected was tagged")
	tags[lostDown] = wantTags(rt, self, k)[lostDown]
	check("after repair")
	require.Zero(t, ct.repair(func(peer.ID) bool { return true }), "repair with nothing lost")

	ct.close()
	require.Empty(t, tags, "close left tags behind")
	rt.add(test.RandPeerIDFatal(t), now)
	require.Empty(t, tags, "a change after close tagged a peer")
}

// wantTags is the tag value each peer of rt should carry: nearTagValue for
// the k closest to self, tableTagValue for the others.
func wantTags(rt *RoutingTable, self peer.ID, k int) map[peer.ID]int {
	want := map[peer.ID]int{}
	for _, p := range rt.ListPeers() {
		want[p] = tableTagValue
	}
	for _, p := range rt.nearest(kbucket.PeerKey(self), k) {
		want[p] = nearTagValue
	}
	return want
}

// TestConnTagsOnHost: over loopback TCP hosts with go-libp2p's default
// connection manager, each node's table peers carry its tag with the
// right value, and Close removes them from the host, which lives on.
func TestConnTagsOnHost(t *testing.T) {
	const n, k = 8, 3
	nodes := make([]*DHT, n)
	for i := range nodes {
		nodes[i] = newTCPNode(t, BucketSize(k))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := 1; i < n; i++ {
		require.NoError(t, nodes[i].Host().Connect(ctx, hostInfo(nodes[0].Host())))
	}
	name := "kad:" + string(nodes[0].Protocol())
	tagged := func(d *DHT, p peer.ID) int {
		return d.Host().ConnManager().GetTagInfo(p).Tags[name]
	}
	// Tags follow table changes; wait for every node's tags to match its
	// table at one moment.
	match := func(d *DHT) bool {
		want := wantTags(d.rt, d.self, k)
		if len(want) == 0 {
			return false
		}
		for p, v := range want {
			if tagged(d, p) != v {
				return false
			}
		}
		return true
	}
	waitFor(t, 20*time.Second, "tags match the tables", func() bool {
		for _, d := range nodes {
			if !match(d) {
				return false
			}
		}
		return true
	})

	// go-libp2p's manager forgets a peer's tags with its last
	// connection; the node sets a table peer's tag again on each new
	// connection. Forget it by hand and deliver a Connected.
	d := nodes[0]
	var p peer.ID
	for _, q := range d.RoutingTable().ListPeers() {
		if d.msgr.connected(q) {
			p = q
			break
		}
	}
	require.NotEmpty(t, p, "no connected table peer")
	d.Host().ConnManager().UntagPeer(p, name)
	require.Zero(t, tagged(d, p))
	conns := d.Host().Network().ConnsToPeer(p)
	require.NotEmpty(t, conns)
	d.notifiee().Connected(d.Host().Network(), conns[0])
	d.keeper.tags.mu.Lock()
	want := d.keeper.tags.value[p]
	d.keeper.tags.mu.Unlock()
	require.Positive(t, want)
	require.Equal(t, want, tagged(d, p), "tag set again on Connected")

	// A Disconnected while another connection remains sets it again.
	d.Host().ConnManager().UntagPeer(p, name)
	d.notifiee().Disconnected(d.Host().Network(), conns[0])
	require.Equal(t, want, tagged(d, p), "tag set again on Disconnected with a connection left")

	// The manager can still lose it when notifications cross (see
	// connTags.repair): the keeper's repair sets it again.
	d.Host().ConnManager().UntagPeer(p, name)
	require.Equal(t, 1, d.keeper.tags.repair(d.msgr.connected))
	require.Equal(t, want, tagged(d, p), "tag set again by repair")

	table := d.RoutingTable().ListPeers()
	require.NoError(t, d.Close())
	for _, p := range table {
		require.Zero(t, tagged(d, p), "peer %s still tagged after Close", p)
	}
}

// TestLostPeerNotRedialledWithoutRoom: a table peer that disconnects is
// checked (redialled) while the host's connection manager is under its
// low watermark, and left alone at or above it, where a redial would only
// get another connection trimmed. The node is a client, so its peers do
// not hold it and nothing else redials.
func TestLostPeerNotRedialledWithoutRoom(t *testing.T) {
	for _, tc := range []struct {
		name      string
		low, high int
		checked   bool
	}{
		{"room", 50, 100, true},
		{"at the low watermark", 2, 100, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cm, err := connmgr.NewConnManager(tc.low, tc.high)
			require.NoError(t, err)
			h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.DisableRelay(), libp2p.ConnectionManager(cm))
			require.NoError(t, err)
			a, err := New(context.Background(), h, Mode(ModeClient), RandomWalk(false))
			require.NoError(t, err)
			t.Cleanup(func() { _ = a.Close(); _ = h.Close() })

			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			var servers []*DHT
			for range 3 {
				s := newTCPNode(t, RandomWalk(false))
				servers = append(servers, s)
				// Dialled and probed as a bootstrap peer is, not left to
				// identify: a DHT started just before its host connects
				// can lose go-libp2p's identify race (identifiedHosts).
				require.NoError(t, a.keeper.addPeer(ctx, hostInfo(s.Host())))
			}
			b := servers[0]
			waitFor(t, 10*time.Second, "a holds its servers", func() bool { return a.rt.Size() == len(servers) })

			// Cut the connection to b, leaving two; whatever the
			// notification did, ask again directly and see whether a check
			// was queued or run.
			require.NoError(t, h.Network().ClosePeer(b.self))
			waitFor(t, 10*time.Second, "disconnected", func() bool { return !a.msgr.connected(b.self) })
			require.Equal(t, tc.checked, a.keeper.connRoom(), "room with two connections")
			a.keeper.peerDisconnected(b.self)
			l := a.keeper.lost
			l.mu.Lock()
			_, checked := l.checked[b.self]
			queued := l.queued[b.self]
			l.mu.Unlock()
			require.Equal(t, tc.checked, checked || queued, "check of the lost peer")
			if tc.checked {
				waitFor(t, 10*time.Second, "b redialled", func() bool { return a.msgr.connected(b.self) })
			} else {
				require.False(t, a.msgr.connected(b.self), "b redialled without room")
			}
			require.True(t, a.rt.Find(b.self), "a live peer was evicted")
		})
	}
}
