package main

import (
	"context"
	"errors"
	"time"

	"github.com/ipfs/go-cid"
	ds "github.com/ipfs/go-datastore"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
)

// errUnsupported is returned by adapters for operations their DHT does
// not have (yet); the phase is then skipped for that implementation.
var errUnsupported = errors.New("not supported by this implementation")

// Node is one DHT node as the benchmark drives it. Each implementation has
// one adapter; everything else (network, counting, timing, keys) is shared,
// so both run exactly the same operations on the same network.
type Node interface {
	// Join connects to the bootstrap peers given to New (a few earlier
	// nodes) and bootstraps: when it returns the node has looked itself up
	// and refreshed its table.
	Join(ctx context.Context) error
	// GetClosestPeers also reports the lookup's hops: the longest referral
	// chain behind a peer of the result (a seed that answered is 1 hop).
	GetClosestPeers(ctx context.Context, key string) (peers []peer.ID, hops float64, err error)
	FindPeer(ctx context.Context, id peer.ID) (peer.AddrInfo, error)
	PutValue(ctx context.Context, key string, value []byte) error
	GetValue(ctx context.Context, key string) ([]byte, error)
	Provide(ctx context.Context, c cid.Cid) error
	FindProvidersAsync(ctx context.Context, c cid.Cid, count int) <-chan peer.AddrInfo
	// LookupRequests is the implementation's own count of requests its
	// lookups sent, or -1 if it keeps none (a cross-check of the neutral
	// count of messages received).
	LookupRequests() int64
	// LookupsRun is the implementation's own count of lookups run, or -1
	// if it keeps none: more than one per operation means lookups of its
	// own (upkeep) ran during the phase and their requests are counted.
	LookupsRun() int64
	Close() error
}

// Impl creates nodes of one implementation.
type Impl struct {
	Name string
	// New starts a server-mode node on h as nc says, with the test value
	// namespace "v" accepting any value.
	New func(ctx context.Context, h host.Host, nc nodeConfig) (Node, error)
	// Values and Providers say whether the implementation has the value
	// and provider operations.
	Values, Providers func() bool
}

// nodeConfig is what one node is built with.
type nodeConfig struct {
	// Boots are the peers it joins through (a few earlier nodes).
	Boots []peer.AddrInfo
	// Refresh is the periodic table refresh interval (0: the
	// implementation's default).
	Refresh time.Duration
	// Datastore, if set, is passed to the DHT as a user would pass one
	// (kad.Datastore, dht.Datastore); nil leaves the default.
	Datastore ds.Batching
	// Provider, for the node that provides at scale: kad gets the
	// reprovider (one region, this interval), go-libp2p-kad-dht a
	// SweepingProvider as kubo builds it.
	Provider bool
	// ReprovideEvery is kad's reprovide interval on the providing node.
	ReprovideEvery time.Duration
}

// valueNS is the record namespace used by the value phases: keys are
// "/v/...", validated by acceptAll.
const valueNS = "v"

// acceptAll is a record validator for the benchmark namespace: any value
// is valid, and of several the first is kept. Both implementations get it.
type acceptAll struct{}

func (acceptAll) Validate(string, []byte) error        { return nil }
func (acceptAll) Select(string, [][]byte) (int, error) { return 0, nil }
