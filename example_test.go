package kad_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"
	mocknet "github.com/libp2p/go-libp2p/p2p/net/mock"
	mh "github.com/multiformats/go-multihash"

	"github.com/kadlib/kad"
)

// A DHT wraps a libp2p host. Here two hosts on an in-memory network (a
// real program would use libp2p.New) run a private DHT: the second joins
// through the first.
func ExampleNew() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	mn := mocknet.New()
	defer mn.Close()
	h1, _ := mn.GenPeer()
	h2, _ := mn.GenPeer()
	_ = mn.LinkAll()

	first, err := kad.New(ctx, h1, kad.ProtocolPrefix("/myapp"), kad.Mode(kad.ModeServer))
	if err != nil {
		panic(err)
	}
	defer first.Close()
	second, err := kad.New(ctx, h2, kad.ProtocolPrefix("/myapp"), kad.Mode(kad.ModeServer),
		kad.BootstrapPeers(peer.AddrInfo{ID: h1.ID(), Addrs: h1.Addrs()}))
	if err != nil {
		panic(err)
	}
	defer second.Close()
	if err := second.Bootstrap(ctx); err != nil {
		panic(err)
	}

	fmt.Println(second.Protocol(), second.Mode())
	fmt.Println("second knows first:", second.RoutingTable().Find(h1.ID()))
	found, err := second.FindPeer(ctx, h1.ID())
	fmt.Println("first found:", err == nil && found.ID == h1.ID())
	// Output:
	// /myapp/kad/1.0.0 server
	// second knows first: true
	// first found: true
}

// greetings validates the "greeting" namespace: values are lower-case
// text, and of two values the longer one wins.
type greetings struct{}

func (greetings) Validate(key string, value []byte) error {
	if string(value) != strings.ToLower(string(value)) {
		return errors.New("greetings are lower-case")
	}
	return nil
}

func (greetings) Select(key string, values [][]byte) (int, error) {
	best := 0
	for i, v := range values {
		if len(v) > len(values[best]) {
			best = i
		}
	}
	return best, nil
}

// Values live in namespaces, each with a validator that every node of the
// network runs: it decides what may be stored and which of two values is
// better. A value is written to the k peers closest to its key and read
// back from any node.
func ExampleDHT_PutValue() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	nodes, done := network(ctx, 3, kad.NamespacedValidator("greeting", greetings{}))
	defer done()
	writer, reader := nodes[0], nodes[2]

	if err := writer.PutValue(ctx, "/greeting/world", []byte("hello")); err != nil {
		panic(err)
	}
	err := writer.PutValue(ctx, "/greeting/world", []byte("HELLO"))
	fmt.Println("refused:", errors.Is(err, kad.ErrInvalidRecord))
	err = writer.PutValue(ctx, "/other/world", []byte("hello"))
	fmt.Println("no validator for /other:", errors.Is(err, kad.ErrInvalidRecord))

	v, err := reader.GetValue(ctx, "/greeting/world")
	if err != nil {
		panic(err)
	}
	fmt.Println(string(v))
	// Output:
	// refused: true
	// no validator for /other: true
	// hello
}

// A provider record says which peer has the content of a CID. The holder
// announces it with Provide; anyone finds the holder by the CID alone, then
// fetches the content from it over a protocol of its own.
func ExampleDHT_Provide() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	nodes, done := network(ctx, 3)
	defer done()
	holder, finder := nodes[0], nodes[2]

	hash, _ := mh.Sum([]byte("some content"), mh.SHA2_256, -1)
	c := cid.NewCidV1(cid.Raw, hash)
	if err := holder.Provide(ctx, c, true); err != nil {
		panic(err)
	}
	for p := range finder.FindProvidersAsync(ctx, c, 1) {
		fmt.Println("provider is the holder:", p.ID == holder.Host().ID())
	}
	// Output:
	// provider is the holder: true
}

// network starts n server nodes on an in-memory network, each joined
// through the first, and returns them with a function that stops them.
func network(ctx context.Context, n int, opts ...kad.Option) ([]*kad.DHT, func()) {
	// Every peer added to a table wakes waitTables.
	added := make(chan struct{}, 1)
	onAdded := func(peer.ID) {
		select {
		case added <- struct{}{}:
		default: // a wake-up is pending already
		}
	}
	mn := mocknet.New()
	var nodes []*kad.DHT
	done := func() {
		for _, d := range nodes {
			_ = d.Close()
		}
		_ = mn.Close()
	}
	for i := 0; i < n; i++ {
		h, err := mn.GenPeer()
		if err != nil {
			panic(err)
		}
		o := append([]kad.Option{kad.Mode(kad.ModeServer), kad.OnPeerAdded(onAdded)}, opts...)
		if i > 0 {
			first := nodes[0].Host()
			o = append(o, kad.BootstrapPeers(peer.AddrInfo{ID: first.ID(), Addrs: first.Addrs()}))
		}
		d, err := kad.New(ctx, h, o...)
		if err != nil {
			panic(err)
		}
		nodes = append(nodes, d)
	}
	if err := mn.LinkAll(); err != nil {
		panic(err)
	}
	for _, d := range nodes[1:] {
		if err := d.Bootstrap(ctx); err != nil {
			panic(err)
		}
	}
	// A node admits a peer that contacted it once it has checked that the
	// peer answers. When the first node knows everyone, one more lookup
	// of itself lets every node meet every other.
	waitTables(ctx, added, nodes[:1], n-1)
	for _, d := range nodes[1:] {
		if _, err := d.GetClosestPeers(ctx, string(d.Host().ID())); err != nil {
			panic(err)
		}
	}
	waitTables(ctx, added, nodes, n-1)
	return nodes, done
}

// waitTables waits until every node has size peers in its routing table,
// checking again each time added says a table gained a peer.
func waitTables(ctx context.Context, added <-chan struct{}, nodes []*kad.DHT, size int) {
	for {
		ready := true
		for _, d := range nodes {
			if d.RoutingTable().Size() < size {
				ready = false
				break
			}
		}
		if ready {
			return
		}
		select {
		case <-added:
		case <-ctx.Done():
			panic("the network never formed")
		}
	}
}
