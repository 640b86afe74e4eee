package kad

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"testing/synctest"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/stretchr/testify/require"
)

// A table peer whose connection drops is checked at once: a crashed one is
// evicted from every table that held it, so nobody lists it in answers,
// while a live one whose connection was merely closed stays.
func TestDisconnectedPeersChecked(t *testing.T) {
	const n, dead = 30, 9
	tn := newTestNet(t, n, 301, RandomWalk(false))
	r := rand.New(rand.NewPCG(302, 0))
	killed := map[peer.ID]bool{}
	for len(killed) < dead {
		i := 1 + r.IntN(n-1)
		if d := tn.nodes[i]; !killed[d.self] {
			killed[d.self] = true
			tn.kill(t, i)
		}
	}
	var live []*DHT
	for _, d := range tn.nodes {
		if !killed[d.self] {
			live = append(live, d)
		}
	}
	// Node 0 is alive: cut every connection to it without killing it.
	survivor := tn.nodes[0]
	var holders []*DHT
	for _, d := range live[1:] {
		if d.rt.Find(survivor.self) {
			holders = append(holders, d)
			require.NoError(t, tn.mn.DisconnectPeers(d.self, survivor.self))
		}
	}
	require.NotEmpty(t, holders)

	deadEntries := func() int {
		c := 0
		for _, d := range live {
			for _, p := range d.rt.ListPeers() {
				if killed[p] {
					c++
				}
			}
		}
		return c
	}
	waitFor(t, 10*time.Second, "every dead peer evicted", func() bool { return deadEntries() == 0 })
	waitFor(t, 10*time.Second, "the survivor checked by every holder", func() bool {
		for _, d := range holders {
			if d.h.Network().Connectedness(survivor.self) != network.Connected {
				return false
			}
		}
		return true
	})
	for _, d := range holders {
		require.True(t, d.rt.Find(survivor.self), "a live peer whose connection closed stays in the table")
		require.Equal(t, network.Connected, d.h.Network().Connectedness(survivor.self), "the check reconnected")
	}
}

// A peer admitted after its connection closed (its answer arrived, then
// it crashed before admit ran, so its Disconnected found it outside the
// table) is checked like any lost table peer and evicted (memnet,
// virtual time).
func TestAdmittedAfterDisconnectChecked(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		mn := newMemNetwork(11, 10*time.Millisecond, 10*time.Millisecond)
		nodes := memNodes(t, mn, 3, RandomWalk(false))
		memJoin(t, nodes)
		a, gone := nodes[1], nodes[2]
		// Out of a's table when it stops, as when its answer is still on
		// the way to admit: the Disconnected finds nothing to check.
		a.rt.remove(gone.self)
		require.NoError(t, mn.stop(gone))
		settle()
		require.False(t, a.msgr.connected(gone.self))
		a.keeper.admit(gone.self)
		require.True(t, a.rt.Find(gone.self), "admitted")
		waitFor(t, time.Minute, "the dead peer checked and evicted", func() bool { return !a.rt.Find(gone.self) })
	})
}

// The queue of peers to check holds each peer once and honours the
// cooldown.
func TestLostPeersQueue(t *testing.T) {
	l := newLostPeers()
	now := time.Unix(1_700_000_000, 0)
	a, b := peer.ID("a"), peer.ID("b")
	require.True(t, l.push(a, now), "first work: start a worker")
	require.False(t, l.push(a, now), "queued already")
	require.True(t, l.push(b, now), "a second worker, up to lostPeerWorkers")
	p, ok := l.pop(now)
	require.True(t, ok)
	require.Equal(t, a, p)
	l.push(a, now.Add(time.Second))
	p, ok = l.pop(now)
	require.True(t, ok)
	require.Equal(t, b, p, "a was checked a second ago: not queued again")
	_, ok = l.pop(now)
	require.False(t, ok)
	_, ok = l.pop(now)
	require.False(t, ok, "both workers found the queue empty and are gone")
	require.Zero(t, l.workers)
	require.True(t, l.push(a, now.Add(lostPeerCooldown)), "no worker left: start one")
	p, ok = l.pop(now.Add(lostPeerCooldown))
	require.True(t, ok)
	require.Equal(t, a, p, "after the cooldown a is checked again")

	// Workers are capped: with lostPeerWorkers running, more work only
	// queues, and a worker that finds the queue empty frees its slot.
	l = newLostPeers()
	var started int
	for i := range 3 * lostPeerWorkers {
		if l.push(peer.ID(fmt.Sprint(i)), now) {
			started++
		}
	}
	require.Equal(t, lostPeerWorkers, started)
	for range 3 * lostPeerWorkers {
		_, ok := l.pop(now)
		require.True(t, ok)
	}
	_, ok = l.pop(now)
	require.False(t, ok)
	require.Equal(t, lostPeerWorkers-1, l.workers)
	require.True(t, l.push("late", now), "a slot is free again")
}
