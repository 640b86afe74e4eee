package kad_test

import (
	"context"
	"fmt"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"
	mocknet "github.com/libp2p/go-libp2p/p2p/net/mock"
	mh "github.com/multiformats/go-multihash"

	"github.com/kadlib/kad"
)

// Two nodes on an in-memory network: one announces that it has some
// content, the other finds it by the content's CID.
func ExampleDHT_FindProviders() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	mn := mocknet.New()
	defer mn.Close()
	// Each peer added to a table wakes the wait below.
	added := make(chan struct{}, 1)
	onAdded := func(peer.ID) {
		select {
		case added <- struct{}{}:
		default: // a wake-up is pending already
		}
	}
	var nodes []*kad.DHT
	for i := 0; i < 2; i++ {
		h, _ := mn.GenPeer()
		d, err := kad.New(ctx, h, kad.Mode(kad.ModeServer), kad.OnPeerAdded(onAdded))
		if err != nil {
			panic(err)
		}
		defer d.Close()
		nodes = append(nodes, d)
	}
	_ = mn.LinkAll()
	_ = mn.ConnectAllButSelf()
	provider, finder := nodes[0], nodes[1]
	// Each admits the other once it has answered a check.
	for finder.RoutingTable().Size() == 0 || provider.RoutingTable().Size() == 0 {
		select {
		case <-added:
		case <-ctx.Done():
			panic("the nodes never met")
		}
	}

	h, _ := mh.Sum([]byte("hello, world"), mh.SHA2_256, -1)
	c := cid.NewCidV1(cid.Raw, h)
	if err := provider.Provide(ctx, c, true); err != nil {
		panic(err)
	}
	found, err := finder.FindProviders(ctx, c, 1)
	if err != nil {
		panic(err)
	}
	fmt.Println(len(found), found[0].ID == provider.Host().ID())
	// Output: 1 true
}
