package kad

import (
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
)

// When the last connection to a table peer drops, the peer may have
// crashed. Until something tells us, we would keep listing it in FIND_NODE
// answers, and a lookup through us would get a dead peer where a live one
// could have been: right after a wave of crashes, the live peers closest
// to a key are then missing from many answers. So a table peer that
// disconnects is checked at once: asked a FIND_NODE (which dials it), and
// evicted if that fails, its bucket refilled from the replacement cache.
// A peer whose connection was merely trimmed answers and stays. Each peer
// is checked at most once per lostPeerCooldown, so a connection manager
// that trims the same peer again and again does not make us redial it.

const (
	lostPeerWorkers  = 4
	lostPeerCooldown = time.Minute
)

// lostPeers is the queue of table peers to check after a disconnect.
type lostPeers struct {
	mu      sync.Mutex
	queue   []peer.ID
	queued  map[peer.ID]bool
	checked map[peer.ID]time.Time // last check, for the cooldown
	wake    chan struct{}
}

func newLostPeers() *lostPeers {
	return &lostPeers{queued: make(map[peer.ID]bool), checked: make(map[peer.ID]time.Time), wake: make(chan struct{}, 1)}
}

// push queues p unless it is queued already or was checked recently. The
// queue holds table peers only, so it is bounded by the table's size.
func (l *lostPeers) push(p peer.ID, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.queued[p] {
		return
	}
	if at, ok := l.checked[p]; ok && now.Sub(at) < lostPeerCooldown {
		return
	}
	l.queued[p] = true
	l.queue = append(l.queue, p)
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// pop takes the next peer to check, if any, and starts its cooldown.
func (l *lostPeers) pop(now time.Time) (peer.ID, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.queue) == 0 {
		return "", false
	}
	p := l.queue[0]
	l.queue[0] = ""
	l.queue = l.queue[1:]
	delete(l.queued, p)
	l.checked[p] = now
	// Forget cooldowns that ended, so the map stays small.
	if len(l.checked) > 1024 {
		for q, at := range l.checked {
			if now.Sub(at) >= lostPeerCooldown {
				delete(l.checked, q)
			}
		}
	}
	if len(l.queue) > 0 {
		select {
		case l.wake <- struct{}{}:
		default:
		}
	}
	return p, true
}

// peerDisconnected queues a check of p if it is a table peer and no
// connection to it is left. It runs in the swarm's notification path, so
// it must not block.
func (d *DHT) peerDisconnected(n network.Network, p peer.ID) {
	if d.closed.Load() || n.Connectedness(p) == network.Connected || !d.rt.Find(p) {
		return
	}
	d.lost.push(p, time.Now())
}

// checkLostPeers is one of the workers that check disconnected table
// peers, until Close.
func (d *DHT) checkLostPeers() {
	defer d.wg.Done()
	for {
		select {
		case <-d.ctx.Done():
			return
		case <-d.lost.wake:
		}
		for d.ctx.Err() == nil {
			p, ok := d.lost.pop(time.Now())
			if !ok {
				break
			}
			// Reconnected meanwhile, or already gone: nothing to learn.
			if d.h.Network().Connectedness(p) == network.Connected || !d.rt.Find(p) {
				continue
			}
			d.checkPeer(d.ctx, p)
		}
	}
}
