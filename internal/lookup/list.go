package lookup

import (
	"slices"

	"github.com/kadlib/kad/internal/kbucket"
)

// candidates is a slice of peers kept sorted by distance to one target.
// Lookups see a few hundred peers at most, so a sorted slice with binary
// search beats a tree or heap on both speed and allocations.
type candidates struct {
	target kbucket.ID
	items  []*entry
}

// search returns where key sits (or would sit) in the order, and whether an
// entry with that exact key is there.
func (c *candidates) search(key kbucket.ID) (int, bool) {
	return slices.BinarySearchFunc(c.items, key, func(e *entry, k kbucket.ID) int {
		return kbucket.CompareDistance(e.key, k, c.target)
	})
}

func (c *candidates) insert(e *entry) {
	i, _ := c.search(e.key)
	c.items = slices.Insert(c.items, i, e)
}

func (c *candidates) remove(e *entry) {
	if i, ok := c.search(e.key); ok {
		c.items = slices.Delete(c.items, i, i+1)
	}
}
