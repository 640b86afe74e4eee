// Package kad is a Kademlia distributed hash table for go-libp2p hosts,
// wire-compatible with the libp2p DHTs already running: go-libp2p-kad-dht,
// js-libp2p's kad-dht and so the public IPFS Amino network.
//
// A DHT spreads three things over every server peer of a network: the
// peers themselves (FindPeer, GetClosestPeers), small values (PutValue,
// GetValue, SearchValue) and content-provider records (Provide,
// FindProviders). Every peer and every key has a position in a 256-bit
// keyspace, the sha2-256 of its bytes, and the distance between two
// positions is their XOR. Each node keeps a routing table of k-buckets: a
// few peers at every distance, many near itself. To reach the k peers
// closest to a key, a node asks the closest peers it knows for closer
// ones, alpha requests at a time, until the closest peers it has found
// have all answered. Records are stored on, and read from, those k peers.
//
// Wrap a go-libp2p host with New, give it bootstrap peers, call Bootstrap,
// and use the methods; *DHT implements go-libp2p's routing.Routing. A node
// in server mode answers other peers' requests; a client only asks. Close
// stops every goroutine the DHT started.
//
// Values live in namespaces: a key "/<ns>/..." is stored, served and read
// only by nodes with a validator for <ns> (NamespacedValidator), which
// decides what is valid and which of two values is better. Every node of a
// network must run the same validators. Built in are "pk" (public keys)
// and, under the default "/ipfs" prefix only, "ipns" (IPNS records, as
// every Amino peer validates them); a network with its own prefix starts
// from "pk" alone. Provider records need no validator: a peer announces
// only itself, with its addresses, under a CID's multihash.
//
// The protocol id is "<prefix>/kad/1.0.0". The default prefix "/ipfs"
// joins the Amino DHT: give it AminoBootstrapPeers. A private network
// picks its own prefix with ProtocolPrefix and never mixes with it.
// Package dual runs an Amino DHT and a LAN DHT on one host, as IPFS nodes
// do, kept apart by AddressFilter.
//
// The examples directory has runnable programs: a phone book on a network
// of twenty nodes (examples/phonebook) and content routing with fetching
// (examples/providers); cmd/kad is a command-line node.
package kad

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/connmgr"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/core/protocol"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/kadlib/kad/internal/pb"
)

// ErrClosed is returned by operations on a DHT after Close.
var ErrClosed = errors.New("kad: DHT closed")

// DHT is a Kademlia DHT node on a libp2p host. Its methods are safe for
// concurrent use.
type DHT struct {
	h        host.Host
	cfg      config
	log      *slog.Logger
	protocol protocol.ID
	self     peer.ID

	rt     *RoutingTable
	msgr   messenger           // the network seam: every message goes through it
	filter *addrFilter         // AddressFilter: who may enter the table and lookups
	q      *querier            // lookups and requests
	provs  *providerSide       // provider records, Provide and FindProviders, the reprovider
	ps     peerstore.Peerstore // addresses and protocols of other peers
	// selfAddrs returns the addresses we are reached at.
	selfAddrs func() []ma.Multiaddr
	closeEnv  func() error // nodeEnv.close

	ctx context.Context // lifetime, cancelled by Close (own.ctx)
	own *owner          // every goroutine the DHT starts

	modeMu    sync.Mutex
	serving   bool
	closeOnce sync.Once
	closeErr  error

	keeper     *keeper      // keeps the routing table
	srv        *server      // answers requests
	entries    *peerEntries // peers as wire entries
	notify     *network.NotifyBundle
	notifyOnce sync.Once
	ext        extState
	vals       *values // the values side: records, PUT_VALUE and GET_VALUE
	tel        *telemetry

	discoverKick chan struct{} // asks maintain for a discovery run (kickDiscovery)
	discoverRuns atomic.Int64  // discovery runs finished
}

// New starts a DHT on h. The context is used only during construction;
// the DHT lives until Close.
//
// With random walk on (the default) the node reaches out by itself: when
// a peer enters a small or young routing table, whether the host dialled
// it, it dialled the host, or it was there before New, the node looks
// itself up and refreshes its buckets, one run at a time, within seconds.
// An application that connects its host to a few peers by any means needs
// nothing more. Bootstrap is the explicit, awaitable way to join through
// the BootstrapPeers, and the only one with random walk off.
func New(ctx context.Context, h host.Host, opts ...Option) (*DHT, error) {
	if h == nil {
		return nil, fmt.Errorf("%w: nil host", ErrInvalidOption)
	}
	cfg, err := buildConfig(opts)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("kad: new: %w", err)
	}
	env := nodeEnv{
		self:      h.ID(),
		msgr:      newLibp2pMessenger(h, []protocol.ID{protocolID(cfg.node.prefix)}, cfg.node.requestTimeout, cfg.limits.maxMessageSize),
		ps:        h.Peerstore(),
		selfAddrs: h.Addrs,
		connMgr:   h.ConnManager(),
		connRoom:  connRoom(h.ConnManager()),
	}
	d, err := newNode(cfg, env)
	if err != nil {
		return nil, err
	}
	d.h = h
	if err := d.attachHost(); err != nil {
		return nil, errors.Join(err, d.Close())
	}
	return d, nil
}

// protocolID is the protocol spoken under prefix.
func protocolID(prefix protocol.ID) protocol.ID { return prefix + "/kad/1.0.0" }

// nodeEnv is what a node runs on: the network seam and what it knows of
// other peers. New makes one from a libp2p host; a simulated network
// makes its own.
type nodeEnv struct {
	self      peer.ID
	msgr      messenger
	ps        peerstore.Peerstore
	selfAddrs func() []ma.Multiaddr
	// connMgr, if not nil, is the host's connection manager, where the
	// node tags its table peers (connTags).
	connMgr connmgr.ConnManager
	// connRoom, if not nil, reports whether the host can open another
	// connection without trimming one; if it cannot, a table peer that
	// disconnects is not redialled to check it.
	connRoom func() bool
	// close, if not nil, runs last in Close: it releases what the
	// environment keeps for the node alone (a simulated node's own
	// peerstore). newNode does not run it when it fails.
	close func() error
}

// newNode builds a node on env from a validated config and starts its
// background work. Nothing in it knows of a libp2p host: attachHost
// wires one in.
func newNode(cfg config, env nodeEnv) (*DHT, error) {
	own := newOwner()
	cancel := func() { own.shutdown(func() {}) }
	d := &DHT{
		cfg:       cfg,
		log:       cfg.logger.With("component", "kad", "self", env.self),
		protocol:  protocolID(cfg.node.prefix),
		self:      env.self,
		msgr:      env.msgr,
		ps:        env.ps,
		selfAddrs: env.selfAddrs,
		closeEnv:  env.close,
		ctx:       own.ctx,
		own:       own,
	}
	d.filter = &addrFilter{accept: cfg.table.addrFilter, msgr: env.msgr, ps: env.ps}
	d.entries = &peerEntries{self: d.self, maxAddrs: cfg.limits.maxAddrsPerPeer, ps: env.ps, selfAddrs: env.selfAddrs, msgr: env.msgr}
	d.rt = newRoutingTable(d.self, cfg.table.bucketSize)
	tk := &keeper{
		self: d.self, protocol: d.protocol, cfg: cfg.table, requestTimeout: cfg.node.requestTimeout,
		rt: d.rt, own: own, log: d.log, msgr: env.msgr, ps: env.ps, filter: d.filter, entries: d.entries,
		verifySem:    make(chan struct{}, 8),
		lost:         newLostPeers(),
		discoverKick: make(chan struct{}, 1),
		rng:          rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())),
	}
	d.keeper = tk
	tk.connRoom = env.connRoom
	tk.tags = newConnTags(env.connMgr, "kad:"+string(d.protocol), d.self, cfg.table.bucketSize, d.rt.nearest)
	d.rt.onChange = tk.peerChanged
	if cfg.table.diversity != nil {
		d.rt.div = newDiversity(*cfg.table.diversity)
		d.rt.groupOf = func(p peer.ID) string { return ipGroup(env.ps.Addrs(p)) }
	}
	d.q = &querier{
		self: d.self, k: cfg.table.bucketSize, cfg: cfg.lookup, maxAddrs: cfg.limits.maxAddrsPerPeer,
		own: own, msgr: env.msgr, ps: env.ps, filter: d.filter,
		nearest: d.rt.nearest, onAnswer: tk.admit, onFailure: tk.noteFailure, touch: tk.touchBucket,
	}
	tk.q = d.q
	tel, err := newTelemetry(cfg.telemetry.meterProvider, cfg.telemetry.tracerProvider)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("kad: telemetry: %w", err)
	}
	d.tel = tel
	d.q.tel = tel
	tk.tel = tel
	d.srv = newServer(d.self, &cfg, own, d.log, tel, d.entries, d.rt.nearest, d.rt.seen)
	if err := d.initExt(); err != nil {
		cancel()
		return nil, errors.Join(err, d.tel.close())
	}
	tk.ds = d.ext.ds
	if d.vals.on {
		d.srv.handle(pb.PutValue, d.vals.handlePutValue)
		d.srv.handle(pb.GetValue, d.vals.handleGetValue)
	}
	d.provs, err = newProviderSide(providerSide{
		self: d.self, k: cfg.table.bucketSize, beta: cfg.lookup.resiliency, maxAddrs: cfg.limits.maxAddrsPerPeer,
		cfg: cfg.providers, rcfg: cfg.reprovide,
		own: own, q: d.q, log: d.log, tel: tel, ds: d.ext.ds, ps: env.ps, filter: d.filter,
		selfAddrs: env.selfAddrs, closer: d.srv.closerPeers, encode: d.entries.encode,
		nearest: d.rt.nearest, tablePeers: d.rt.ListPeers, touch: tk.touchBucket,
	}, cfg.providerStoreParams())
	if err != nil {
		cancel()
		return nil, errors.Join(err, d.closeExt(), d.tel.close())
	}
	if d.provs.enabled() {
		d.srv.handle(pb.AddProvider, d.provs.handleAddProvider)
		d.srv.handle(pb.GetProviders, d.provs.handleGetProviders)
	}
	if err := tel.watch(gaugeSources{tableSize: d.rt.Size, storeCounts: d.StoreCounts, networkSize: d.NetworkSizeEstimate}); err != nil {
		cancel()
		return nil, errors.Join(fmt.Errorf("kad: telemetry: %w", err), d.closeExt(), d.tel.close())
	}
	own.spawn(tk.maintain)
	d.startExt()
	own.spawn(d.keeper.loadTable)
	return d, nil
}

// Host returns the libp2p host the DHT runs on.
func (d *DHT) Host() host.Host { return d.h }

// RoutingTable returns a view of the routing table.
func (d *DHT) RoutingTable() *RoutingTable { return d.rt }

// Protocol returns the protocol id spoken, "<prefix>/kad/1.0.0".
func (d *DHT) Protocol() protocol.ID { return d.protocol }

// Mode returns the current mode: ModeServer while the node answers
// requests, ModeClient otherwise.
func (d *DHT) Mode() ModeOpt {
	d.modeMu.Lock()
	defer d.modeMu.Unlock()
	if d.serving {
		return ModeServer
	}
	return ModeClient
}

// Close stops the DHT: it unregisters the protocol handler, cancels every
// lookup and background task, and waits for all of them. It does not
// close the host. It is safe to call more than once.
func (d *DHT) Close() error {
	d.closeOnce.Do(func() {
		d.own.shutdown(d.detachHost)
		if d.keeper.tags != nil {
			d.keeper.tags.close()
		}
		// Save the table for the next run, with a fresh, short context:
		// the lifetime one is already cancelled.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		saveErr := d.keeper.saveTable(ctx)
		cancel()
		var envErr error
		if d.closeEnv != nil {
			envErr = d.closeEnv()
		}
		d.closeErr = errors.Join(saveErr, d.closeExt(), d.tel.close(), envErr)
	})
	return d.closeErr
}
