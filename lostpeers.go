package kad

import (
	"sync"
	"time"

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
// that trims the same peer again and again does not make us redial it;
// and none is checked while the host's connection manager is at its low
// watermark or above (connRoom), where a disconnect is most likely a trim
// and a redial would only get another connection trimmed.

const (
	lostPeerWorkers  = 4
	lostPeerCooldown = time.Minute
)

// lostPeers is the queue of table peers to check after a disconnect, and
// the count of workers draining it: up to lostPeerWorkers, started by push
// when the queue has work, gone when they find it empty, so an idle node
// runs none.
type lostPeers struct {
	mu      sync.Mutex
	queue   []peer.ID
	queued  map[peer.ID]bool
	checked map[peer.ID]time.Time // last check, for the cooldown
	workers int
}

func newLostPeers() *lostPeers {
	return &lostPeers{queued: make(map[peer.ID]bool), checked: make(map[peer.ID]time.Time)}
}

// push queues p unless it is queued already or was checked recently. The
// queue holds table peers only, so it is bounded by the table's size. It
// reports whether the caller must start a worker (which then calls pop
// until it reports false), or call workerGone if it cannot.
func (l *lostPeers) push(p peer.ID, now time.Time) (startWorker bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.queued[p] {
		return false
	}
	if at, ok := l.checked[p]; ok && now.Sub(at) < lostPeerCooldown {
		return false
	}
	l.queued[p] = true
	l.queue = append(l.queue, p)
	if l.workers < lostPeerWorkers {
		l.workers++
		return true
	}
	return false
}

// workerGone records that a worker push asked for will not run, or
// stopped early.
func (l *lostPeers) workerGone() {
	l.mu.Lock()
	l.workers--
	l.mu.Unlock()
}

// pop takes the next peer to check, if any, and starts its cooldown. On
// an empty queue it reports false and counts the calling worker gone: the
// check and the count change under one lock, so a push either sees the
// worker still running or finds one slot free to start another.
func (l *lostPeers) pop(now time.Time) (peer.ID, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.queue) == 0 {
		l.workers--
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
	return p, true
}

// peerDisconnected queues a check of p if it is a table peer and no
// connection to it is left. It runs in the swarm's notification path, so
// it must not block.
func (tk *keeper) peerDisconnected(p peer.ID) {
	if tk.own.isClosed() || tk.msgr.connected(p) || !tk.rt.Find(p) {
		return
	}
	if tk.connRoom != nil && !tk.connRoom() {
		return
	}
	if tk.lost.push(p, time.Now()) && !tk.own.spawn(tk.checkLostPeers) {
		tk.lost.workerGone()
	}
}

// checkLostPeers is a worker that checks disconnected table peers until
// the queue is empty or the DHT closes.
func (tk *keeper) checkLostPeers() {
	for {
		if tk.own.ctx.Err() != nil {
			tk.lost.workerGone()
			return
		}
		p, ok := tk.lost.pop(time.Now())
		if !ok {
			return
		}
		// Reconnected meanwhile, or already gone: nothing to learn; and
		// no redial once the host is short of connections.
		if tk.msgr.connected(p) || !tk.rt.Find(p) || (tk.connRoom != nil && !tk.connRoom()) {
			continue
		}
		tk.checkPeer(tk.own.ctx, p)
	}
}
