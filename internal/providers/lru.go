package providers

import (
	"container/list"

	"github.com/libp2p/go-libp2p/core/peer"
)

// keySet is every stored provider of one key: a complete mirror of the
// datastore's entries under that key's prefix.
type keySet map[peer.ID]*record

// lru keeps the provider sets of the most recently used keys, so a hot
// key is answered without a datastore query. Entries are complete sets:
// a key is either fully cached or not cached at all.
type lru struct {
	cap   int
	order *list.List // of *lruEntry, most recent first
	index map[string]*list.Element
}

type lruEntry struct {
	key string // the encoded key, as in the datastore key
	set keySet
}

func newLRU(capacity int) *lru {
	return &lru{cap: capacity, order: list.New(), index: make(map[string]*list.Element)}
}

// get returns the cached set of key and marks it recently used.
func (c *lru) get(key string) (keySet, bool) {
	el, ok := c.index[key]
	if !ok {
		return nil, false
	}
	c.order.MoveToFront(el)
	return el.Value.(*lruEntry).set, true
}

// peek returns the cached set of key without changing its recency, for
// maintenance that should not keep a cold key cached.
func (c *lru) peek(key string) (keySet, bool) {
	el, ok := c.index[key]
	if !ok {
		return nil, false
	}
	return el.Value.(*lruEntry).set, true
}

// put caches set as key's, evicting the least recently used key when full.
func (c *lru) put(key string, set keySet) {
	if c.cap <= 0 {
		return
	}
	if el, ok := c.index[key]; ok {
		el.Value.(*lruEntry).set = set
		c.order.MoveToFront(el)
		return
	}
	c.index[key] = c.order.PushFront(&lruEntry{key: key, set: set})
	for c.order.Len() > c.cap {
		old := c.order.Back()
		c.order.Remove(old)
		delete(c.index, old.Value.(*lruEntry).key)
	}
}

// len is the number of cached keys.
func (c *lru) len() int { return c.order.Len() }
