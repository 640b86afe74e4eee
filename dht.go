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

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/core/protocol"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/kadlib/kad/internal/kbucket"
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

	rt   *RoutingTable
	msgr messenger           // the network seam: every message goes through it
	ps   peerstore.Peerstore // addresses and protocols of other peers
	// selfAddrs returns the addresses we are reached at.
	selfAddrs func() []ma.Multiaddr
	closeEnv  func() error // nodeEnv.close

	ctx context.Context // lifetime, cancelled by Close (own.ctx)
	own *owner          // every goroutine the DHT starts

	modeMu    sync.Mutex
	serving   bool
	closeOnce sync.Once
	closeErr  error

	verifying  sync.Map      // peer.ID -> struct{}: admission checks in flight
	verifySem  chan struct{} // bounds admission checks
	lost       *lostPeers    // table peers to check after a disconnect
	handlers   map[int32]handlerFunc
	limiter    *inboundLimiter
	notify     *network.NotifyBundle
	notifyOnce sync.Once
	ext        extState
	tel        *telemetry
	rngMu      sync.Mutex
	rng        *rand.Rand

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
	cfg := defaults()
	for _, o := range opts {
		if o == nil {
			continue
		}
		if err := o(&cfg); err != nil {
			return nil, err
		}
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if cfg.logger == nil {
		cfg.logger = slog.Default()
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("kad: new: %w", err)
	}
	env := nodeEnv{
		self:      h.ID(),
		msgr:      newLibp2pMessenger(h, []protocol.ID{protocolID(cfg.prefix)}, cfg.requestTimeout, cfg.maxMessageSize),
		ps:        h.Peerstore(),
		selfAddrs: h.Addrs,
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
		protocol:  protocolID(cfg.prefix),
		self:      env.self,
		msgr:      env.msgr,
		ps:        env.ps,
		selfAddrs: env.selfAddrs,
		closeEnv:  env.close,
		ctx:       own.ctx,
		own:       own,
		verifySem: make(chan struct{}, 8),
		lost:      newLostPeers(),
		rng:       rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())),

		discoverKick: make(chan struct{}, 1),
	}
	d.rt = newRoutingTable(d.self, cfg.bucketSize)
	d.rt.onChange = d.peerChanged
	if cfg.diversity != nil {
		d.rt.div = newDiversity(*cfg.diversity)
		d.rt.groupOf = func(p peer.ID) string { return ipGroup(env.ps.Addrs(p)) }
	}
	d.handlers = d.coreHandlers()
	d.limiter = newInboundLimiter(cfg.limits)
	tel, err := newTelemetry(cfg.meterProvider, cfg.tracerProvider, d.rt.Size)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("kad: telemetry: %w", err)
	}
	d.tel = tel
	if err := d.initExt(); err != nil {
		cancel()
		return nil, errors.Join(err, d.tel.close())
	}
	own.spawn(d.maintain)
	d.startExt()
	own.spawn(d.loadTable)
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
		// Save the table for the next run, with a fresh, short context:
		// the lifetime one is already cancelled.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		saveErr := d.saveTable(ctx)
		cancel()
		var envErr error
		if d.closeEnv != nil {
			envErr = d.closeEnv()
		}
		d.closeErr = errors.Join(saveErr, d.closeExt(), d.tel.close(), envErr)
	})
	return d.closeErr
}

// supportsDHT reports whether identify says p speaks our protocol.
func (d *DHT) supportsDHT(p peer.ID) bool {
	protos, err := d.ps.SupportsProtocols(p, d.protocol)
	return err == nil && len(protos) > 0
}

// consider starts an admission check for p if it advertises the protocol
// and is not in the table: p is admitted only once it answers a FIND_NODE
// for its own id, so unresponsive servers cannot poison the table.
func (d *DHT) consider(p peer.ID) {
	if p == d.self || d.own.isClosed() || d.rt.Find(p) || !d.supportsDHT(p) || !d.admissible(p) {
		return
	}
	// A probe costs the peer a request: spend it only when the peer could
	// take a bucket slot. Peers of full buckets still enter the table when
	// they answer one of our lookups, and full buckets are kept live by
	// the liveness checks.
	if !d.rt.hasRoom(p) {
		return
	}
	d.verify(p, func() {
		if d.probe(d.ctx, p) == nil {
			d.admit(p)
		}
	})
}

// verify runs check, a check of p, on a goroutine owned by the DHT, unless
// p is being checked already or verifySem's checks are all running: the
// peer will come up again.
func (d *DHT) verify(p peer.ID, check func()) {
	if _, busy := d.verifying.LoadOrStore(p, struct{}{}); busy {
		return
	}
	select {
	case d.verifySem <- struct{}{}:
	default:
		d.verifying.Delete(p)
		return
	}
	release := func() { <-d.verifySem; d.verifying.Delete(p) }
	if !d.own.spawn(func() {
		defer release()
		check()
	}) {
		release()
	}
}

// probe asks p a FIND_NODE for its own id and checks it answers.
func (d *DHT) probe(ctx context.Context, p peer.ID) error {
	_, err := d.findNode(ctx, p, []byte(p))
	return err
}

// peerChanged reports table changes to the application and metrics.
func (d *DHT) peerChanged(p peer.ID, added bool) {
	if added {
		d.log.Debug("peer added", "peer", p)
		if f := d.cfg.onPeerAdded; f != nil {
			f(p)
		}
		d.kickDiscovery()
		return
	}
	d.log.Debug("peer removed", "peer", p)
	if f := d.cfg.onPeerRemoved; f != nil {
		f(p)
	}
}

// admit adds a peer that has proven to be a live server, if the address
// filter lets it in.
func (d *DHT) admit(p peer.ID) {
	if p == d.self || d.own.isClosed() || !d.admissible(p) {
		return
	}
	if d.rt.add(p, time.Now()) == kbucket.Pending {
		d.onBucketFull(p)
	}
}
