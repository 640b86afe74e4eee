package main

import (
	"context"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/routing"

	"github.com/kadlib/kad"
)

// The value and provider methods are found by interface assertion, so the
// benchmark builds against a kad that does not have them yet and measures
// them as soon as it does.
type (
	valueStore interface {
		PutValue(ctx context.Context, key string, value []byte, opts ...routing.Option) error
		GetValue(ctx context.Context, key string, opts ...routing.Option) ([]byte, error)
	}
	providerStore interface {
		Provide(ctx context.Context, c cid.Cid, announce bool) error
		FindProvidersAsync(ctx context.Context, c cid.Cid, count int) <-chan peer.AddrInfo
	}
)

var kadImpl = Impl{
	Name: "kad",
	New: func(ctx context.Context, h host.Host, nc nodeConfig) (Node, error) {
		opts := []kad.Option{
			kad.Mode(kad.ModeServer),
			kad.BootstrapPeers(nc.Boots...),
			kad.NamespacedValidator(valueNS, acceptAll{}),
		}
		if nc.Refresh > 0 {
			opts = append(opts, kad.RefreshInterval(nc.Refresh))
		}
		if nc.Datastore != nil {
			opts = append(opts, kad.Datastore(nc.Datastore))
		}
		n := &kadNode{}
		if nc.Provider {
			// One region, so that a reprovider pass goes over every key.
			n.passes = make(chan kad.ReprovideStatus, 16)
			opts = append(opts, kad.Reprovide(true), kad.ReprovideRegions(0), kad.ReprovideInterval(nc.ReprovideEvery),
				kad.ReprovideProgress(func(st kad.ReprovideStatus) {
					select {
					case n.passes <- st:
					default:
					}
				}))
		}
		d, err := kad.New(ctx, h, opts...)
		if err != nil {
			return nil, err
		}
		n.d = d
		return n, nil
	},
	Values:    func() bool { _, ok := any(&kad.DHT{}).(valueStore); return ok },
	Providers: func() bool { _, ok := any(&kad.DHT{}).(providerStore); return ok },
}

type kadNode struct {
	d *kad.DHT
	// passes receives the reprovider's progress on a providing node.
	passes chan kad.ReprovideStatus
}

// Join runs kad's Bootstrap: connect to the bootstrap peers given to New,
// look ourselves up, refresh every bucket.
func (n *kadNode) Join(ctx context.Context) error { return n.d.Bootstrap(ctx) }

func (n *kadNode) GetClosestPeers(ctx context.Context, key string) ([]peer.ID, float64, error) {
	before := n.d.Stats()
	ps, err := n.d.GetClosestPeers(ctx, key)
	after := n.d.Stats()
	hops := 0.0
	if l := after.Lookups - before.Lookups; l > 0 {
		// One lookup per call; a background lookup on the same node at the
		// same moment would be averaged in.
		hops = float64(after.LookupHops-before.LookupHops) / float64(l)
	}
	return ps, hops, err
}

func (n *kadNode) FindPeer(ctx context.Context, id peer.ID) (peer.AddrInfo, error) {
	return n.d.FindPeer(ctx, id)
}

func (n *kadNode) PutValue(ctx context.Context, key string, value []byte) error {
	if vs, ok := any(n.d).(valueStore); ok {
		return vs.PutValue(ctx, key, value)
	}
	return errUnsupported
}

func (n *kadNode) GetValue(ctx context.Context, key string) ([]byte, error) {
	if vs, ok := any(n.d).(valueStore); ok {
		return vs.GetValue(ctx, key)
	}
	return nil, errUnsupported
}

func (n *kadNode) Provide(ctx context.Context, c cid.Cid) error {
	if ps, ok := any(n.d).(providerStore); ok {
		return ps.Provide(ctx, c, true)
	}
	return errUnsupported
}

func (n *kadNode) FindProvidersAsync(ctx context.Context, c cid.Cid, count int) <-chan peer.AddrInfo {
	if ps, ok := any(n.d).(providerStore); ok {
		return ps.FindProvidersAsync(ctx, c, count)
	}
	ch := make(chan peer.AddrInfo)
	close(ch)
	return ch
}

func (n *kadNode) LookupRequests() int64 { return n.d.Stats().LookupRequests }
func (n *kadNode) LookupsRun() int64     { return n.d.Stats().Lookups }
func (n *kadNode) Close() error          { return n.d.Close() }
