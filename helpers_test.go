package kad

import (
	"context"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	mocknet "github.com/libp2p/go-libp2p/p2p/net/mock"
	"github.com/libp2p/go-libp2p/p2p/protocol/identify"
	"github.com/stretchr/testify/require"

	"github.com/kadlib/kad/internal/pb"
)

// waitFor polls cond every 20 ms until it holds or d passes. It is the
// package's one polling helper: inside a synctest bubble its sleeps are
// virtual and cost nothing; outside one (tests that need real libp2p
// hosts) they are real.
func waitFor(t testing.TB, d time.Duration, msg string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v: %s", d, msg)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// onRequest wraps d's server handler for typ, if it has one, so that seen
// runs on each such request before it is handled. Call it before any
// traffic can reach d: the handlers are read without a lock.
func onRequest(d *DHT, typ pb.MessageType, seen func(from peer.ID, req *pb.Message)) {
	inner, ok := d.srv.handlers[int32(typ)]
	if !ok {
		return
	}
	d.srv.handlers[int32(typ)] = func(ctx context.Context, from peer.ID, req *pb.Message) (*pb.Message, error) {
		seen(from, req)
		return inner(ctx, from, req)
	}
}

// identifiedHosts makes n mocknet hosts, links and connects them all, and
// waits until identify has run on every connection, so that DHTs started
// on them afterwards announce their protocol with an identify push.
//
// Starting the DHTs first and connecting them right after races
// go-libp2p's identify: the push announcing a just-registered protocol can
// be consumed before the identify response sent with the older snapshot,
// which then overwrites the peer's protocols without it, and nothing tells
// the other side again (seen about once in hundreds of runs on a loaded
// machine). Tests that wait for two nodes to admit each other start them
// on identified hosts instead.
// Further hosts can be added to the returned mocknet.
func identifiedHosts(t testing.TB, n int) (mocknet.Mocknet, []host.Host) {
	t.Helper()
	mn := mocknet.New()
	t.Cleanup(func() { _ = mn.Close() })
	return mn, addIdentifiedHosts(t, mn, n)
}

// addIdentifiedHosts adds n hosts to mn, links and connects every host of
// mn, and waits until identify has run on each connection of the new
// hosts (see identifiedHosts).
func addIdentifiedHosts(t testing.TB, mn mocknet.Mocknet, n int) []host.Host {
	t.Helper()
	hs := make([]host.Host, n)
	for i := range hs {
		h, err := mn.GenPeer()
		require.NoError(t, err)
		hs[i] = h
	}
	require.NoError(t, mn.LinkAll())
	require.NoError(t, mn.ConnectAllButSelf())
	for _, h := range hs {
		ids := h.(interface{ IDService() identify.IDService }).IDService()
		for _, c := range h.Network().Conns() {
			select {
			case <-ids.IdentifyWait(c):
			case <-time.After(10 * time.Second):
				t.Fatalf("identify did not finish on %s", c)
			}
		}
	}
	return hs
}

// newMemTestNet is newTestNet on a memNetwork, for tests run in virtual
// time (inside synctest.Test): n server nodes, each joined through up to
// 3 random earlier nodes, then a second round of self-lookups. Links have
// a one-way latency of 1 to 10 ms drawn from seed. Every node is stopped
// when the test ends.
func newMemTestNet(t testing.TB, n int, seed uint64, opts ...Option) *testNet {
	t.Helper()
	ctx := context.Background()
	mn := newMemNetwork(seed, time.Millisecond, 10*time.Millisecond)
	t.Cleanup(func() { require.NoError(t, mn.close()) })
	tn := &testNet{mem: mn}
	r := rand.New(rand.NewPCG(seed, 0))
	var infos []peer.AddrInfo
	for i := 0; i < n; i++ {
		var boots []peer.AddrInfo
		for j := 0; j < 3 && j < i; j++ {
			boots = append(boots, infos[r.IntN(i)])
		}
		d, err := mn.addNode(append([]Option{Mode(ModeServer), BootstrapPeers(boots...)}, opts...)...)
		require.NoError(t, err)
		infos = append(infos, memInfo(d))
		tn.nodes = append(tn.nodes, d)
	}
	tn.join(t, ctx)
	return tn
}

// join has every node but the first connect to its bootstrap peers and
// look itself up, a few at a time, as nodes would arrive in a real
// network (the bucket refreshes of Bootstrap would multiply setup time
// for little gain in a test network); then a second round of self
// lookups lets early nodes learn of late ones, as refresh would.
func (tn *testNet) join(t testing.TB, ctx context.Context) {
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	for i, d := range tn.nodes {
		if i == 0 {
			continue
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := d.keeper.connectBootstrapPeers(ctx); err != nil {
				t.Errorf("join: %v", err)
				return
			}
			if _, err := d.GetClosestPeers(ctx, string(d.self)); err != nil {
				t.Errorf("join: self lookup: %v", err)
			}
		})
		if i%16 == 0 {
			wg.Wait()
		}
	}
	wg.Wait()
	for _, d := range tn.nodes {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			_, _ = d.GetClosestPeers(ctx, string(d.self))
		})
	}
	wg.Wait()
}
