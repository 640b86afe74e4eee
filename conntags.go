package kad

import (
	"sync"

	"github.com/libp2p/go-libp2p/core/connmgr"
	"github.com/libp2p/go-libp2p/core/peer"
	basicconnmgr "github.com/libp2p/go-libp2p/p2p/net/connmgr"

	"github.com/kadlib/kad/internal/kbucket"
)

// Connections to routing-table peers are worth more than others: lookups
// start from table peers, and a node's closest neighbours answer for one
// another (the CONNECTED flag that lets a lookup count a peer it has not
// dialled yet). A host whose connection manager trims connections above a
// watermark closes those it values least, so the node tags its table
// peers there: tableTagValue for each, nearTagValue for the k closest to
// itself. Apps tag their own peers higher to keep them first.
const (
	tableTagValue = 5
	nearTagValue  = 20
)

// connTags keeps the tags of the node's table peers in sync with the
// table. changed runs on every table change (the table's onChange, outside
// its lock); close removes every tag when the node closes, since the host
// outlives it.
type connTags struct {
	set     func(p peer.ID, value int) // value 0 removes the tag
	get     func(p peer.ID) int        // the value the manager holds now
	self    kbucket.ID
	k       int
	nearest func(target kbucket.ID, n int) []peer.ID

	mu     sync.Mutex
	value  map[peer.ID]int // every tagged peer and its value
	closed bool
}

// newConnTags returns tags kept through cm under name, or nil for a host
// without a connection manager that keeps tags.
func newConnTags(cm connmgr.ConnManager, name string, self peer.ID, k int, nearest func(kbucket.ID, int) []peer.ID) *connTags {
	if cm == nil {
		return nil
	}
	switch cm.(type) {
	case *connmgr.NullConnMgr, connmgr.NullConnMgr:
		return nil
	}
	set := func(p peer.ID, v int) {
		if v == 0 {
			cm.UntagPeer(p, name)
			return
		}
		cm.TagPeer(p, name, v)
	}
	get := func(p peer.ID) int {
		if ti := cm.GetTagInfo(p); ti != nil {
			return ti.Tags[name]
		}
		return 0
	}
	return newTags(set, get, self, k, nearest)
}

func newTags(set func(peer.ID, int), get func(peer.ID) int, self peer.ID, k int, nearest func(kbucket.ID, int) []peer.ID) *connTags {
	return &connTags{set: set, get: get, self: kbucket.PeerKey(self), k: k, nearest: nearest, value: make(map[peer.ID]int)}
}

// changed records that p entered (added) or left the table, and moves the
// near tag to whichever peers are now the k closest to the node.
func (c *connTags) changed(p peer.ID, added bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	if added {
		if _, ok := c.value[p]; !ok {
			c.value[p] = 0 // set below
		}
	} else if _, ok := c.value[p]; ok {
		delete(c.value, p)
		c.set(p, 0)
	}
	near := make(map[peer.ID]bool, c.k)
	for _, q := range c.nearest(c.self, c.k) {
		near[q] = true
	}
	for q, v := range c.value {
		want := tableTagValue
		if near[q] {
			want = nearTagValue
		}
		if v != want {
			c.value[q] = want
			c.set(q, want)
		}
	}
}

// connected sets p's tag again if p is a table peer: a connection
// manager may have dropped it with p's last connection (go-libp2p's
// does).
func (c *connTags) connected(p peer.ID) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if v := c.value[p]; v > 0 {
		c.set(p, v)
	}
}

// repair sets again the tag of each connected table peer whose tag the
// manager no longer holds, and returns how many it set. Connected and
// Disconnected notifications reach the manager and the node in no fixed
// order when a peer reconnects: go-libp2p's manager can handle the old
// connection's Disconnected after the node's re-tag on the new one, and
// drop the tag with what it takes for the peer's last connection. The
// keeper runs repair periodically to catch those. Peers that are not
// connected are left alone: a tag would only make the manager keep an
// entry for them.
func (c *connTags) repair(connected func(peer.ID) bool) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	fixed := 0
	for p, v := range c.value {
		if v > 0 && c.get(p) != v && connected(p) {
			c.set(p, v)
			fixed++
		}
	}
	return fixed
}

// close removes every tag; later changes are ignored.
func (c *connTags) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	for p := range c.value {
		c.set(p, 0)
	}
	c.value = nil
}

// connRoom returns a function that reports whether cm has room for one
// more connection without trimming: fewer connections than its low
// watermark. A connection manager that does not tell its watermarks
// (anything but go-libp2p's basic one) always has room.
//
// The node checks a table peer that disconnects by dialling it (see
// lostPeers), but at or above the low watermark a disconnect is most
// likely a trim, and a redial would push the count over the watermark
// again and get another table peer trimmed, which would be checked in
// turn. There the check is left to the next request that needs the peer,
// which evicts it if it is gone.
func connRoom(cm connmgr.ConnManager) func() bool {
	info, ok := cm.(interface{ GetInfo() basicconnmgr.CMInfo })
	if !ok {
		return nil
	}
	return func() bool {
		i := info.GetInfo()
		return i.ConnCount < i.LowWater
	}
}
