package kad

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/stretchr/testify/require"

	"github.com/kadlib/kad/internal/pb"
)

// TestProtocolRemovedChecked: when identify reports that a connected table
// peer dropped our protocol, the peer is asked once. It stays while it
// answers on the protocol (go-libp2p can report the removal wrongly, see
// keeper.protocolRemoved), with the protocol back in the peerstore, and
// leaves once it stops serving.
func TestProtocolRemovedChecked(t *testing.T) {
	_, hs := identifiedHosts(t, 2)
	start := func(i int) *DHT {
		d, err := New(context.Background(), hs[i], Mode(ModeServer), RandomWalk(false))
		require.NoError(t, err)
		t.Cleanup(func() { _ = d.Close() })
		return d
	}
	// b's FIND_NODE handler is wrapped before a exists, so before any
	// traffic: it reports each probe b receives from a.
	b := start(1)
	probed := make(chan struct{}, 16)
	onRequest(b, pb.FindNode, func(from peer.ID, req *pb.Message) {
		if from == hs[0].ID() && bytes.Equal(req.Key, []byte(b.self)) {
			select {
			case probed <- struct{}{}:
			default:
			}
		}
	})
	a := start(0)
	waitFor(t, 10*time.Second, "tables filled", func() bool {
		return a.rt.Find(b.self) && b.rt.Find(a.self)
	})
	for len(probed) > 0 {
		<-probed
	}

	// What a stale identify response does on a: the peerstore loses the
	// protocol b has just announced, and identify reports its removal.
	em, err := a.Host().EventBus().Emitter(new(event.EvtPeerProtocolsUpdated))
	require.NoError(t, err)
	defer em.Close()
	require.NoError(t, a.Host().Peerstore().RemoveProtocols(b.self, a.Protocol()))
	require.NoError(t, em.Emit(event.EvtPeerProtocolsUpdated{Peer: b.self, Removed: []protocol.ID{a.Protocol()}}))
	select {
	case <-probed:
	case <-time.After(10 * time.Second):
		t.Fatal("b was not asked after its protocol was reported removed")
	}
	waitFor(t, 10*time.Second, "check of b finished", func() bool {
		_, busy := a.keeper.verifying.Load(b.self)
		return !busy
	})
	require.True(t, a.rt.Find(b.self), "b answered on the protocol but left a's table")
	protos, err := a.Host().Peerstore().SupportsProtocols(b.self, a.Protocol())
	require.NoError(t, err)
	require.Equal(t, []protocol.ID{a.Protocol()}, protos, "protocol not restored in the peerstore")

	// b really stops serving: its identify push reaches a, whose check
	// fails, and b leaves a's table.
	b.setServing(false)
	waitFor(t, 10*time.Second, "b removed from a's table", func() bool {
		return !a.rt.Find(b.self)
	})
}
