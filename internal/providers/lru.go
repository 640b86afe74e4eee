package providers

import (
	"github.com/hashicorp/golang-lru/v2/simplelru"
	"github.com/libp2p/go-libp2p/core/peer"
)

// keySet is every stored provider of one key: a complete mirror of the
// datastore's entries under that key's prefix.
type keySet map[peer.ID]*record

// lru keeps the provider sets of the most recently used keys, so a hot
// key is answered without a datastore query. Entries are complete sets:
// a key is either fully cached or not cached at all. It is
// hashicorp/golang-lru's simplelru, which does not lock: the Store
// serializes every call.
type lru struct {
	c *simplelru.LRU[string, keySet] // nil: caching is off
}

func newLRU(capacity int) *lru {
	if capacity <= 0 {
		return &lru{}
	}
	c, err := simplelru.NewLRU[string, keySet](capacity, nil)
	if err != nil {
		panic(err) // only for a size <= 0
	}
	return &lru{c: c}
}

// get returns the cached set of key and marks it recently used.
func (c *lru) get(key string) (keySet, bool) {
	if c.c == nil {
		return nil, false
	}
	return c.c.Get(key)
}

// peek returns the cached set of key without changing its recency, for
// maintenance that should not keep a cold key cached.
func (c *lru) peek(key string) (keySet, bool) {
	if c.c == nil {
		return nil, false
	}
	return c.c.Peek(key)
}

// put caches set as key's, evicting the least recently used key when full.
func (c *lru) put(key string, set keySet) {
	if c.c != nil {
		c.c.Add(key, set)
	}
}

// remove drops key from the cache.
func (c *lru) remove(key string) {
	if c.c != nil {
		c.c.Remove(key)
	}
}

// len is the number of cached keys.
func (c *lru) len() int {
	if c.c == nil {
		return 0
	}
	return c.c.Len()
}
