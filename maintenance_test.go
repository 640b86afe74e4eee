package kad

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"testing/synctest"
	"time"

	ds "github.com/ipfs/go-datastore"
	dssync "github.com/ipfs/go-datastore/sync"
	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/host/eventbus"
	mocknet "github.com/libp2p/go-libp2p/p2p/net/mock"
	"github.com/stretchr/testify/require"

	"github.com/kadlib/kad/internal/kbucket"
)

func totalInbound(nodes []*DHT) int64 {
	var n int64
	for _, d := range nodes {
		n += d.Stats().InboundRequests
	}
	return n
}

func TestRandomWalkOffSendsNothingWhileIdle(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tn := newMemTestNet(t, 12, 7, RandomWalk(false), RefreshInterval(50*time.Millisecond))
		// Let admission checks triggered by the joins settle: once every
		// goroutine is blocked, none is in flight.
		settle()
		before := totalInbound(tn.nodes)
		time.Sleep(500 * time.Millisecond) // ten refresh intervals
		synctest.Wait()
		require.Equal(t, before, totalInbound(tn.nodes), "no request while idle with random walk off")
	})
}

func TestRefreshFillsTable(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tn := newMemTestNet(t, 30, 8)
		// A newcomer that only knows one peer and never calls Bootstrap: the
		// background refresh alone must fill its table.
		d, err := tn.mem.addNode(Mode(ModeServer), RefreshInterval(100*time.Millisecond))
		require.NoError(t, err)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		require.NoError(t, d.keeper.addPeer(ctx, memInfo(tn.nodes[0])))
		require.Equal(t, 1, d.RoutingTable().Size())
		waitFor(t, 15*time.Second, "refresh fills the table", func() bool { return d.RoutingTable().Size() >= 20 })
	})
}

// fullBucket runs lookups from a, a node of a network with buckets of
// one peer (so most peers wait in replacement caches), until one of its
// buckets is full with a candidate waiting, and returns the bucket's peer
// and the candidate.
func fullBucket(t *testing.T, a *DHT) (oldest, candidate peer.ID) {
	t.Helper()
	// Admission checks run in the background; peers that answer a lookup
	// are admitted, or wait in the cache.
	i := 0
	waitFor(t, 10*time.Second, "a full bucket with a waiting candidate", func() bool {
		i++
		_, _ = a.GetClosestPeers(context.Background(), fmt.Sprintf("fill-%d", i))
		a.rt.withTable(func(tb *kbucket.Table) {
			for cpl := 0; cpl <= tb.MaxCPL(); cpl++ {
				if reps := tb.Replacements(cpl); len(reps) > 0 && tb.BucketSize(cpl) == 1 {
					oldest, _ = tb.Oldest(cpl)
					candidate = reps[len(reps)-1]
					return
				}
			}
		})
		return oldest != ""
	})
	require.NotEmpty(t, oldest, "a full bucket with a waiting candidate")
	return oldest, candidate
}

func TestDeadPeerReplacedByCandidate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tn := newMemTestNet(t, 16, 9, BucketSize(1), Resiliency(1), RandomWalk(false))
		a := tn.nodes[0]
		dead, candidate := fullBucket(t, a)
		// The bucket's peer dies abruptly.
		for i, d := range tn.nodes {
			if d.self == dead {
				tn.kill(t, i)
			}
		}
		a.keeper.checkLiveness(context.Background(), time.Now().Add(time.Hour))
		require.False(t, a.RoutingTable().Find(dead), "dead peer evicted")
		require.True(t, a.RoutingTable().Find(candidate), "cached candidate promoted")
	})
}

// A candidate for a full bucket gets the bucket's least recently seen peer
// asked only when that peer is stale (not seen within the refresh
// interval): asking one that answered lately would only confirm it, and
// cost a request and often a handshake.
func TestBucketFullChecksOnlyStalePeers(t *testing.T) {
	for _, tc := range []struct {
		name    string
		age     time.Duration // since the bucket's peer was last seen
		checked bool
	}{
		{"seen a minute ago: not asked", time.Minute, false},
		{"seen just within the refresh interval: not asked", 10*time.Minute - time.Second, false},
		{"stale: asked", 10*time.Minute + time.Second, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				tn := newMemTestNet(t, 16, 9, BucketSize(1), Resiliency(1), RandomWalk(false), RefreshInterval(10*time.Minute))
				a := tn.nodes[0]
				oldest, candidate := fullBucket(t, a)
				synctest.Wait() // admission checks and their answers are done
				seenAt := time.Now().Add(-tc.age)
				a.rt.seen(oldest, seenAt)

				a.keeper.onBucketFull(candidate)
				time.Sleep(5 * time.Second) // virtual: time for a probe and its answer
				synctest.Wait()

				var last time.Time
				a.rt.withTable(func(tb *kbucket.Table) { last, _ = tb.LastSeen(oldest) })
				if tc.checked {
					require.True(t, last.After(seenAt), "the stale peer was asked, answered and is seen anew")
				} else {
					require.Equal(t, seenAt, last, "a peer seen lately is not asked")
				}
				require.True(t, a.RoutingTable().Find(oldest), "a live peer keeps its slot either way")
			})
		})
	}
}

func TestModeFollowsReachability(t *testing.T) {
	cases := []struct {
		mode  ModeOpt
		start ModeOpt
		steps []struct {
			r    network.Reachability
			want ModeOpt
		}
	}{
		{ModeAuto, ModeClient, []struct {
			r    network.Reachability
			want ModeOpt
		}{{network.ReachabilityPublic, ModeServer}, {network.ReachabilityPrivate, ModeClient}, {network.ReachabilityUnknown, ModeClient}}},
		{ModeAutoServer, ModeServer, []struct {
			r    network.Reachability
			want ModeOpt
		}{{network.ReachabilityPrivate, ModeClient}, {network.ReachabilityUnknown, ModeServer}, {network.ReachabilityPublic, ModeServer}}},
		{ModeClient, ModeClient, []struct {
			r    network.Reachability
			want ModeOpt
		}{{network.ReachabilityPublic, ModeClient}}},
		{ModeServer, ModeServer, []struct {
			r    network.Reachability
			want ModeOpt
		}{{network.ReachabilityPrivate, ModeServer}}},
	}
	for _, tc := range cases {
		t.Run(tc.mode.String(), func(t *testing.T) {
			mn := mocknet.New()
			defer mn.Close()
			h, err := mn.GenPeer()
			require.NoError(t, err)
			d, err := New(context.Background(), h, Mode(tc.mode), RandomWalk(false))
			require.NoError(t, err)
			defer d.Close()
			require.Equal(t, tc.start, d.Mode())
			em, err := h.EventBus().Emitter(new(event.EvtLocalReachabilityChanged), eventbus.Stateful)
			require.NoError(t, err)
			defer em.Close()
			for _, st := range tc.steps {
				require.NoError(t, em.Emit(event.EvtLocalReachabilityChanged{Reachability: st.r}))
				waitFor(t, 5*time.Second, "mode "+st.want.String(), func() bool { return d.Mode() == st.want })
				served := slices.Contains(h.Mux().Protocols(), d.Protocol())
				require.Equal(t, st.want == ModeServer, served, "stream handler registered only in server mode")
			}
		})
	}
}

func TestRestartRejoinsFromSavedTable(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tn := newMemTestNet(t, 20, 10, RandomWalk(false))
		store := dssync.MutexWrap(ds.NewMapDatastore())
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		d, err := tn.mem.addNode(Mode(ModeServer), Datastore(store), BootstrapPeers(memInfo(tn.nodes[0])), RandomWalk(false))
		require.NoError(t, err)
		require.NoError(t, d.Bootstrap(ctx))
		size := d.RoutingTable().Size()
		require.Greater(t, size, 5)

		// Same identity, address and datastore, no bootstrap peers.
		d2, err := tn.mem.restart(d, Mode(ModeServer), Datastore(store), RandomWalk(false))
		require.NoError(t, err)
		require.Equal(t, d.self, d2.self)
		waitFor(t, 10*time.Second, "saved peers re-admitted", func() bool { return d2.RoutingTable().Size() >= size/2 })
		target := tn.nodes[len(tn.nodes)-1].self
		ai, err := d2.FindPeer(ctx, target)
		require.NoError(t, err)
		require.Equal(t, target, ai.ID)
	})
}

func TestPeerEvents(t *testing.T) {
	added := make(chan peer.ID, 64)
	removed := make(chan peer.ID, 64)
	mn := mocknet.New()
	defer mn.Close()
	var nodes []*DHT
	for i := 0; i < 3; i++ {
		h, err := mn.GenPeer()
		require.NoError(t, err)
		opts := []Option{Mode(ModeServer), RandomWalk(false)}
		if i == 0 {
			opts = append(opts, OnPeerAdded(func(p peer.ID) { added <- p }), OnPeerRemoved(func(p peer.ID) { removed <- p }))
		}
		d, err := New(context.Background(), h, opts...)
		require.NoError(t, err)
		defer d.Close()
		nodes = append(nodes, d)
	}
	require.NoError(t, mn.LinkAll())
	require.NoError(t, mn.ConnectAllButSelf())
	got := map[peer.ID]bool{}
	for len(got) < 2 {
		select {
		case p := <-added:
			got[p] = true
		case <-time.After(10 * time.Second):
			t.Fatalf("added events: got %d of 2", len(got))
		}
	}
	nodes[0].rt.remove(nodes[1].self)
	select {
	case p := <-removed:
		require.Equal(t, nodes[1].self, p)
	case <-time.After(5 * time.Second):
		t.Fatal("no removed event")
	}
}
