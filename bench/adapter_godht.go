package main

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ipfs/go-cid"
	ds "github.com/ipfs/go-datastore"
	"github.com/ipfs/go-datastore/namespace"
	dssync "github.com/ipfs/go-datastore/sync"
	godht "github.com/libp2p/go-libp2p-kad-dht"
	"github.com/libp2p/go-libp2p-kad-dht/provider"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/routing"
	mh "github.com/multiformats/go-multihash"
)

var goImpl = Impl{
	Name: "go-kad-dht",
	New: func(ctx context.Context, h host.Host, nc nodeConfig) (Node, error) {
		boots, refresh := nc.Boots, nc.Refresh
		// A prefix other than /ipfs lifts the Amino rule of only pk and ipns
		// records; V1ProtocolOverride keeps the protocol id kad speaks.
		opts := []godht.Option{
			godht.Mode(godht.ModeServer),
			godht.BootstrapPeers(boots...),
			godht.ProtocolPrefix("/x"),
			godht.V1ProtocolOverride("/ipfs/kad/1.0.0"),
			godht.NamespacedValidator(valueNS, acceptAll{}),
		}
		if refresh > 0 {
			opts = append(opts, godht.RoutingTableRefreshPeriod(refresh))
		}
		if nc.Datastore != nil {
			opts = append(opts, godht.Datastore(nc.Datastore))
		}
		d, err := godht.New(h, opts...)
		if err != nil {
			return nil, err
		}
		n := &goNode{d: d, boots: boots}
		if nc.Provider {
			if err := n.startSweeping(h, nc); err != nil {
				_ = d.Close()
				return nil, err
			}
		}
		return n, nil
	},
	Values:    func() bool { return true },
	Providers: func() bool { return true },
}

type goNode struct {
	d     *godht.IpfsDHT
	boots []peer.AddrInfo
	// sweep is the SweepingProvider of a providing node; lookups counts
	// the lookups it asked the DHT for.
	sweep   *provider.SweepingProvider
	lookups atomic.Int64
}

// startSweeping builds a SweepingProvider on the node's DHT the way kubo
// builds it: the DHT as router and message sender, the host's addresses
// in the records, every key also stored locally, its state in the node's
// datastore (an in-memory one when the node has none).
func (n *goNode) startSweeping(h host.Host, nc nodeConfig) error {
	store := nc.Datastore
	if store == nil {
		store = dssync.MutexWrap(ds.NewMapDatastore())
	}
	sp, err := provider.New(
		provider.WithHost(h),
		provider.WithPeerID(h.ID()),
		provider.WithRouter(countingRouter{n}),
		provider.WithMessageSender(n.d.MessageSender()),
		provider.WithSelfAddrs(h.Addrs),
		provider.WithAddLocalRecord(func(ctx context.Context, k mh.Multihash) error {
			return n.d.ProviderStore().AddProvider(ctx, k, peer.AddrInfo{ID: h.ID()})
		}),
		provider.WithDatastore(namespace.Wrap(store, ds.NewKey("/provider"))),
		provider.WithReplicationFactor(20),
		provider.WithReprovideInterval(22*time.Hour),
	)
	if err != nil {
		return err
	}
	n.sweep = sp
	return nil
}

// countingRouter is the DHT as the SweepingProvider's router, counting
// the lookups it runs.
type countingRouter struct{ n *goNode }

func (r countingRouter) GetClosestPeers(ctx context.Context, key string) ([]peer.ID, error) {
	r.n.lookups.Add(1)
	return r.n.d.GetClosestPeers(ctx, key)
}

// Join does what kad's Bootstrap does, with go-libp2p-kad-dht's own
// calls: connect to the bootstrap peers, wait until one is admitted to the
// table (after its FIND_NODE check), then run a routing table refresh (a
// self lookup and a lookup per bucket) and wait for it to finish.
// Bootstrap alone would only start the refresh.
func (n *goNode) Join(ctx context.Context) error {
	h := n.d.Host()
	var wg sync.WaitGroup
	errs := make([]error, len(n.boots))
	for i, b := range n.boots {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = h.Connect(ctx, b)
		}()
	}
	wg.Wait()
	for n.d.RoutingTable().Size() == 0 {
		if ctx.Err() != nil {
			return fmt.Errorf("no peer admitted: %w (connect errors: %v)", ctx.Err(), errs)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return <-n.d.RefreshRoutingTable()
}

// GetClosestPeers counts hops from the query events: a peer learned from
// a response is one hop further than the peer that gave it; a peer never
// learned that way was a seed from the routing table (1 hop).
func (n *goNode) GetClosestPeers(ctx context.Context, key string) ([]peer.ID, float64, error) {
	ectx, cancel := context.WithCancel(ctx)
	ectx, events := routing.RegisterForQueryEvents(ectx)
	hop := make(map[peer.ID]int)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ev := range events {
			if ev.Type != routing.PeerResponse {
				continue
			}
			h, ok := hop[ev.ID]
			if !ok {
				h = 1
				hop[ev.ID] = 1
			}
			for _, ai := range ev.Responses {
				if _, known := hop[ai.ID]; !known {
					hop[ai.ID] = h + 1
				}
			}
		}
	}()
	ps, err := n.d.GetClosestPeers(ectx, key)
	cancel()
	<-done
	hops := 0
	for _, p := range ps {
		h, ok := hop[p]
		if !ok {
			h = 1
		}
		hops = max(hops, h)
	}
	return ps, float64(hops), err
}

func (n *goNode) FindPeer(ctx context.Context, id peer.ID) (peer.AddrInfo, error) {
	return n.d.FindPeer(ctx, id)
}

func (n *goNode) PutValue(ctx context.Context, key string, value []byte) error {
	return n.d.PutValue(ctx, key, value)
}

func (n *goNode) GetValue(ctx context.Context, key string) ([]byte, error) {
	return n.d.GetValue(ctx, key)
}

func (n *goNode) Provide(ctx context.Context, c cid.Cid) error { return n.d.Provide(ctx, c, true) }

func (n *goNode) FindProvidersAsync(ctx context.Context, c cid.Cid, count int) <-chan peer.AddrInfo {
	return n.d.FindProvidersAsync(ctx, c, count)
}

func (n *goNode) LookupRequests() int64 { return -1 }
func (n *goNode) LookupsRun() int64     { return -1 }
func (n *goNode) Close() error {
	if n.sweep != nil {
		_ = n.sweep.Close()
	}
	return n.d.Close()
}
