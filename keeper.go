package kad

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	ds "github.com/ipfs/go-datastore"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/kadlib/kad/internal/kbucket"
)

// keeper keeps the routing table: it admits peers that prove to be live
// servers, checks and evicts those that stop answering, lets waiting
// candidates replace the dead, refreshes the buckets, bootstraps, runs
// the discovery that starts by itself, checks peers that disconnect, and
// saves the table for the next run. It owns the table; everything else
// reads it through the functions it was given (nearest, seen).
type keeper struct {
	self           peer.ID
	protocol       protocol.ID
	cfg            tableConfig
	requestTimeout time.Duration
	rt             *RoutingTable
	own            *owner
	log            *slog.Logger
	tel            *telemetry
	q              *querier
	msgr           messenger
	ps             peerstore.Peerstore
	filter         *addrFilter
	entries        *peerEntries
	ds             ds.Batching // where the table is saved

	verifying    sync.Map      // peer.ID -> struct{}: admission checks in flight
	verifySem    chan struct{} // bounds admission checks
	lost         *lostPeers    // table peers to check after a disconnect
	tags         *connTags     // table peers' tags in the host's connection manager, or nil
	connRoom     func() bool   // nil, or whether a redial would not make the host trim (connRoom)
	discoverKick chan struct{} // asks maintain for a discovery run (kickDiscovery)
	discoverRuns atomic.Int64  // discovery runs finished
	rngMu        sync.Mutex
	rng          *rand.Rand
}

// supportsDHT reports whether identify says p speaks our protocol.
func (tk *keeper) supportsDHT(p peer.ID) bool {
	protos, err := tk.ps.SupportsProtocols(p, tk.protocol)
	return err == nil && len(protos) > 0
}

// consider starts an admission check for p if it advertises the protocol
// and is not in the table: p is admitted only once it answers a FIND_NODE
// for its own id, so unresponsive servers cannot poison the table.
func (tk *keeper) consider(p peer.ID) {
	if p == tk.self || tk.own.isClosed() || tk.rt.Find(p) || !tk.supportsDHT(p) || !tk.filter.admissible(p) {
		return
	}
	// A probe costs the peer a request: spend it only when the peer could
	// take a bucket slot. Peers of full buckets still enter the table when
	// they answer one of our lookups, and full buckets are kept live by
	// the liveness checks.
	if !tk.rt.hasRoom(p) {
		return
	}
	tk.verify(p, func() {
		if tk.probe(tk.own.ctx, p) == nil {
			tk.admit(p)
		}
	})
}

// protocolRemoved handles identify reporting that p stopped speaking our
// protocol. go-libp2p can report that wrongly, for good: a node that
// registers its handler as a peer connects updates its identify snapshot
// asynchronously, and the peer can handle the push carrying the new
// snapshot before the identify response carrying the old one, which then
// overwrites the protocols just learned; nothing announces them again, so
// the peer would never admit the node. A connected p is therefore asked
// once: if it answers on our protocol it still serves, the peerstore gets
// the protocol back (so that a later real removal is reported again), and
// p stays (or is admitted); if not, or when no check can start, it leaves
// the table.
func (tk *keeper) protocolRemoved(p peer.ID) {
	if p == tk.self || tk.own.isClosed() {
		return
	}
	if tk.msgr.connected(p) && tk.verify(p, func() {
		if !tk.checkPeer(tk.own.ctx, p) {
			return
		}
		if err := tk.ps.AddProtocols(p, tk.protocol); err != nil {
			tk.log.Debug("restore protocol", "peer", p, "err", err)
		}
		tk.admit(p)
	}) {
		return
	}
	// A check already running is an admission check (from the protocol
	// announcement), which admits p if it answers.
	tk.rt.remove(p)
}

// verify runs check, a check of p, on a goroutine owned by the DHT, unless
// p is being checked already or verifySem's checks are all running: the
// peer will come up again. It reports whether check was started.
func (tk *keeper) verify(p peer.ID, check func()) bool {
	if _, busy := tk.verifying.LoadOrStore(p, struct{}{}); busy {
		return false
	}
	select {
	case tk.verifySem <- struct{}{}:
	default:
		tk.verifying.Delete(p)
		return false
	}
	release := func() { <-tk.verifySem; tk.verifying.Delete(p) }
	if !tk.own.spawn(func() {
		defer release()
		check()
	}) {
		release()
		return false
	}
	return true
}

// probe asks p a FIND_NODE for its own id and checks it answers.
func (tk *keeper) probe(ctx context.Context, p peer.ID) error {
	_, err := tk.q.findNode(ctx, p, []byte(p))
	return err
}

// peerChanged reports table changes to the application and metrics.
func (tk *keeper) peerChanged(p peer.ID, added bool) {
	if tk.tags != nil {
		tk.tags.changed(p, added)
	}
	if added {
		tk.log.Debug("peer added", "peer", p)
		if f := tk.cfg.onPeerAdded; f != nil {
			f(p)
		}
		tk.kickDiscovery()
		return
	}
	tk.log.Debug("peer removed", "peer", p)
	if f := tk.cfg.onPeerRemoved; f != nil {
		f(p)
	}
}

// admit adds a peer that has proven to be a live server, if the address
// filter lets it in.
func (tk *keeper) admit(p peer.ID) {
	if p == tk.self || tk.own.isClosed() || !tk.filter.admissible(p) {
		return
	}
	if tk.rt.add(p, time.Now()) == kbucket.Pending {
		tk.onBucketFull(p)
		return
	}
	// p answered, but its connection may have closed since, with the
	// Disconnected already handled while p was not in the table: check it
	// as any table peer that lost its connection (peerDisconnected does
	// nothing while p is connected), or a crashed peer would stay in the
	// table until a request needs it.
	tk.peerDisconnected(p)
}

// touchBucket records that the bucket holding target was just looked up,
// so refresh can skip it.
func (tk *keeper) touchBucket(target kbucket.ID) {
	now := time.Now()
	tk.rt.withTable(func(t *kbucket.Table) { t.Touch(t.BucketFor(target), now) })
}

// noteFailure evicts a table peer we could not reach at all, and one that
// failed several requests in a row: one slow answer is not death, and some
// peers refuse single requests (js rejects providers of non-sha256 keys).
func (tk *keeper) noteFailure(p peer.ID, err error) {
	if !tk.msgr.connected(p) {
		tk.rt.remove(p)
		return
	}
	tk.rt.failed(p, 3)
}
