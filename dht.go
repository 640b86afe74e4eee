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
// network must run the same validators; only "pk" is built in. Provider
// records need no validator: a peer announces only itself, with its
// addresses, under a CID's multihash.
//
// The protocol id is "<prefix>/kad/1.0.0". The default prefix "/ipfs"
// joins the Amino DHT (give it its bootstrap peers); a private network
// picks its own with ProtocolPrefix and never mixes with it.
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

	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

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

	rt     *RoutingTable
	sender *sender
	stats  stats

	ctx    context.Context // lifetime, cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup // every goroutine the DHT starts (see goOwned)
	// ownMu orders goroutine starts before Close's wait: goOwned and
	// enter add to wg under the read lock, Close sets closed under the
	// write lock, so no goroutine joins wg once Close is waiting.
	ownMu sync.RWMutex

	modeMu    sync.Mutex
	serving   bool
	closeOnce sync.Once
	closeErr  error
	closed    atomic.Bool

	verifying  sync.Map      // peer.ID -> struct{}: admission checks in flight
	verifySem  chan struct{} // bounds admission checks
	lost       *lostPeers    // table peers to check after a disconnect
	handlers   map[int32]handlerFunc
	limiter    *inboundLimiter
	notify     *network.NotifyBundle
	notifyOnce sync.Once
	ext        extState
	tel        telemetry
	rngMu      sync.Mutex
	rng        *rand.Rand

	started      time.Time     // when New ran: the table is young for a while
	discoverKick chan struct{} // asks maintain for a discovery run (kickDiscovery)
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
	lctx, cancel := context.WithCancel(context.Background())
	d := &DHT{
		h:         h,
		cfg:       cfg,
		log:       cfg.logger.With("component", "kad", "self", h.ID()),
		protocol:  protocol.ID(string(cfg.node.prefix) + "/kad/1.0.0"),
		self:      h.ID(),
		ctx:       lctx,
		cancel:    cancel,
		verifySem: make(chan struct{}, 8),
		lost:      newLostPeers(),
		rng:       rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())),

		started:      time.Now(),
		discoverKick: make(chan struct{}, 1),
	}
	d.rt = newRoutingTable(d.self, cfg.table.bucketSize)
	d.rt.onChange = d.peerChanged
	if cfg.table.diversity != nil {
		d.rt.div = newDiversity(*cfg.table.diversity)
		d.rt.groupOf = func(p peer.ID) string { return ipGroup(h.Peerstore().Addrs(p)) }
	}
	d.sender = newSender(h, []protocol.ID{d.protocol}, cfg.node.requestTimeout, cfg.limits.maxMessageSize)
	d.handlers = d.coreHandlers()
	d.limiter = newInboundLimiter(cfg.limits)
	if err := d.initTelemetry(); err != nil {
		cancel()
		return nil, fmt.Errorf("kad: telemetry: %w", err)
	}
	if err := d.initExt(); err != nil {
		cancel()
		return nil, errors.Join(err, d.closeTelemetry())
	}

	sub, err := h.EventBus().Subscribe([]any{
		new(event.EvtPeerIdentificationCompleted),
		new(event.EvtPeerProtocolsUpdated),
		new(event.EvtLocalReachabilityChanged),
	})
	if err != nil {
		cancel()
		return nil, errors.Join(fmt.Errorf("kad: subscribe to host events: %w", err), d.closeExt(), d.closeTelemetry())
	}
	switch cfg.node.mode {
	case ModeServer, ModeAutoServer:
		d.setServing(true)
	}
	h.Network().Notify(d.notifiee())
	d.wg.Add(2)
	go d.eventLoop(sub)
	go d.maintain()
	// Peers already connected and identified are candidates too.
	for _, p := range h.Network().Peers() {
		d.consider(p)
	}
	d.startExt()
	d.wg.Add(1)
	go d.loadTable()
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
		d.ownMu.Lock()
		d.closed.Store(true)
		d.ownMu.Unlock()
		d.setServing(false)
		d.h.Network().StopNotify(d.notifiee())
		d.cancel()
		d.wg.Wait()
		// Save the table for the next run, with a fresh, short context:
		// the lifetime one is already cancelled.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		saveErr := d.saveTable(ctx)
		cancel()
		d.closeErr = errors.Join(saveErr, d.closeExt(), d.closeTelemetry())
	})
	return d.closeErr
}

// enter counts the calling goroutine in wg, so Close waits for it, unless
// Close has begun; the caller then must not go on, and must call wg.Done
// when it returns true. Goroutines the DHT starts outside New go through
// here (or goOwned), because they may start while Close is waiting. One
// already counted may start others with a plain wg.Add: the count cannot
// drop to zero under it.
func (d *DHT) enter() bool {
	d.ownMu.RLock()
	defer d.ownMu.RUnlock()
	if d.closed.Load() {
		return false
	}
	d.wg.Add(1)
	return true
}

// goOwned runs f on a goroutine owned by the DHT, and reports false,
// without running f, if Close has begun.
func (d *DHT) goOwned(f func()) bool {
	if !d.enter() {
		return false
	}
	go func() {
		defer d.wg.Done()
		f()
	}()
	return true
}

// setServing registers or removes the stream handler; the host tells
// connected peers through identify.
func (d *DHT) setServing(on bool) {
	d.modeMu.Lock()
	defer d.modeMu.Unlock()
	if on == d.serving {
		return
	}
	if on && d.closed.Load() {
		return
	}
	d.serving = on
	if on {
		d.h.SetStreamHandler(d.protocol, d.handleStream)
	} else {
		d.h.RemoveStreamHandler(d.protocol)
	}
	d.log.Debug("mode changed", "serving", on)
}

func (d *DHT) eventLoop(sub event.Subscription) {
	defer d.wg.Done()
	defer sub.Close()
	for {
		select {
		case <-d.ctx.Done():
			return
		case ev, ok := <-sub.Out():
			if !ok {
				return
			}
			switch e := ev.(type) {
			case event.EvtPeerIdentificationCompleted:
				d.consider(e.Peer)
			case event.EvtPeerProtocolsUpdated:
				for _, p := range e.Removed {
					if p == d.protocol {
						d.rt.remove(e.Peer)
					}
				}
				d.consider(e.Peer)
			case event.EvtLocalReachabilityChanged:
				d.onReachability(e.Reachability)
			}
		}
	}
}

func (d *DHT) onReachability(r network.Reachability) {
	switch d.cfg.node.mode {
	case ModeAuto:
		d.setServing(r == network.ReachabilityPublic)
	case ModeAutoServer:
		d.setServing(r != network.ReachabilityPrivate)
	}
}

// every runs f every interval on a goroutine owned by the DHT, until
// Close. f runs on that goroutine, so runs never overlap.
func (d *DHT) every(interval time.Duration, f func()) {
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-d.ctx.Done():
				return
			case <-t.C:
				f()
			}
		}
	}()
}

// supportsDHT reports whether identify says p speaks our protocol.
func (d *DHT) supportsDHT(p peer.ID) bool {
	protos, err := d.h.Peerstore().SupportsProtocols(p, d.protocol)
	return err == nil && len(protos) > 0
}

// consider starts an admission check for p if it advertises the protocol
// and is not in the table: p is admitted only once it answers a FIND_NODE
// for its own id, so unresponsive servers cannot poison the table.
func (d *DHT) consider(p peer.ID) {
	if p == d.self || d.closed.Load() || d.rt.Find(p) || !d.supportsDHT(p) {
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
	if !d.goOwned(func() {
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
		if f := d.cfg.table.onPeerAdded; f != nil {
			f(p)
		}
		d.kickDiscovery()
		return
	}
	d.log.Debug("peer removed", "peer", p)
	if f := d.cfg.table.onPeerRemoved; f != nil {
		f(p)
	}
}

// admit adds a peer that has proven to be a live server.
func (d *DHT) admit(p peer.ID) {
	if p == d.self || d.closed.Load() {
		return
	}
	if d.rt.add(p, time.Now()) == kbucket.Pending {
		d.onBucketFull(p)
	}
}

// notifiee queues a check of the table peers that disconnect.
func (d *DHT) notifiee() network.Notifiee {
	d.notifyOnce.Do(func() {
		d.notify = &network.NotifyBundle{DisconnectedF: func(n network.Network, c network.Conn) {
			p := c.RemotePeer()
			d.peerDisconnected(n, p)
		}}
	})
	return d.notify
}
