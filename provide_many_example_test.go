package kad_test

import (
	"context"
	"fmt"
	"time"

	"github.com/ipfs/go-cid"
	mh "github.com/multiformats/go-multihash"
)

// A node that holds many CIDs announces them with ProvideMany: the keys
// are sorted by keyspace position and each region of k peers costs one
// lookup, not one per CID. The report says what it cost.
func ExampleDHT_ProvideManyReport() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	nodes, done := network(ctx, 5)
	defer done()
	holder, finder := nodes[0], nodes[4]

	var cids []cid.Cid
	for i := range 200 {
		hash, _ := mh.Sum(fmt.Appendf(nil, "block %d", i), mh.SHA2_256, -1)
		cids = append(cids, cid.NewCidV1(cid.Raw, hash))
	}
	rep, err := holder.ProvideManyReport(ctx, cids)
	if err != nil {
		panic(err)
	}
	fmt.Println("keys:", rep.Keys, "fewer lookups than keys:", rep.Lookups < rep.Keys/10)

	found := 0
	for _, c := range cids[:20] {
		for p := range finder.FindProvidersAsync(ctx, c, 1) {
			if p.ID == holder.Host().ID() {
				found++
			}
		}
	}
	fmt.Println("found:", found, "of 20")
	// Output:
	// keys: 200 fewer lookups than keys: true
	// found: 20 of 20
}
