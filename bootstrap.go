package kad

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/core/routing"
	"golang.org/x/sync/errgroup"

	"github.com/kadlib/kad/internal/kbucket"
)

// routingErrNotFound is go-libp2p's not-found error, which callers of
// routing.Routing test for.
var routingErrNotFound = routing.ErrNotFound

// maxRefreshCPL is the deepest bucket refreshed: deeper buckets are almost
// always empty in any network smaller than billions of peers.
const maxRefreshCPL = 15

// Bootstrap connects to the bootstrap peers, looks up our own id to fill
// the buckets near us, and looks up a random key in each farther bucket,
// up to 8 lookups at once. It is safe to call again at any time.
func (d *DHT) Bootstrap(ctx context.Context) (err error) {
	ctx, span := d.tel.startSpan(ctx, "Bootstrap")
	defer func() { endSpan(span, err) }()
	if d.own.isClosed() {
		return ErrClosed
	}
	return d.keeper.bootstrap(ctx)
}

// bootstrap is Bootstrap's work.
func (tk *keeper) bootstrap(ctx context.Context) error {
	if err := tk.connectBootstrapPeers(ctx); err != nil && tk.rt.Size() == 0 {
		return err
	}
	// The self lookup fills the buckets near us and shows how deep the
	// table goes. The buckets the table already reaches are refreshed at
	// the same time; those the self lookup revealed, after it.
	var refreshErr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		refreshErr = tk.refreshBuckets(ctx, false)
	}()
	_, selfErr := tk.q.closestPeers(ctx, []byte(tk.self))
	<-done
	if selfErr != nil {
		return fmt.Errorf("kad: bootstrap: self lookup: %w", selfErr)
	}
	if err := tk.refreshBuckets(ctx, true); err != nil {
		return err
	}
	return refreshErr
}

// bootstrapDials bounds the bootstrap peers dialled at once: more than
// any usual bootstrap list holds, so those are all dialled together, while
// a long list does not start a probe per entry at once.
const bootstrapDials = 16

// refreshLookups is how many bucket refresh lookups run at once: a joining
// node's buckets fill in the time of a few lookups rather than one per
// bucket, while the load it puts on the network stays bounded.
const refreshLookups = 8

// connectBootstrapPeers dials the bootstrap peers in parallel and admits
// those that answer. It fails only if none answered: the tasks report no
// error to the group, which would not cancel the others anyway, and each
// peer's error is kept for the report.
func (tk *keeper) connectBootstrapPeers(ctx context.Context) error {
	peers := tk.cfg.bootstrapPeers
	if len(peers) == 0 {
		return nil
	}
	var g errgroup.Group
	g.SetLimit(bootstrapDials)
	errs := make([]error, len(peers))
	for i, ai := range peers {
		if ai.ID == tk.self {
			continue
		}
		g.Go(func() error {
			errs[i] = tk.addPeer(ctx, ai)
			return nil
		})
	}
	_ = g.Wait() // errors are in errs
	ok := 0
	for _, e := range errs {
		if e == nil {
			ok++
		}
	}
	if ok == 0 {
		return fmt.Errorf("kad: bootstrap: no bootstrap peer reachable: %w", errors.Join(errs...))
	}
	return nil
}

// addPeer connects to ai and admits it once it answers a FIND_NODE. The
// probe dials ai itself: host.Connect would also wait for identify.
func (tk *keeper) addPeer(ctx context.Context, ai peer.AddrInfo) error {
	if !tk.filter.queryable(ai) {
		return fmt.Errorf("peer %s: %w", ai.ID, errFiltered)
	}
	if len(ai.Addrs) > 0 {
		tk.ps.AddAddrs(ai.ID, ai.Addrs, peerstore.TempAddrTTL)
	}
	if err := tk.probe(ctx, ai.ID); err != nil {
		return fmt.Errorf("probe %s: %w", ai.ID, err)
	}
	tk.admit(ai.ID)
	if !tk.rt.Find(ai.ID) && !tk.filter.admissible(ai.ID) {
		return fmt.Errorf("peer %s: %w", ai.ID, errFiltered)
	}
	return nil
}

// refreshBuckets looks up a random key in each bucket up to the deepest
// non-empty one (bounded), refreshLookups lookups at a time. With
// onlyStale it skips buckets looked up within the refresh interval.
func (tk *keeper) refreshBuckets(ctx context.Context, onlyStale bool) error {
	var maxCPL int
	selfKey := kbucket.PeerKey(tk.self)
	tk.rt.withTable(func(t *kbucket.Table) { maxCPL = t.MaxCPL() })
	maxCPL = min(maxCPL, maxRefreshCPL)
	var (
		mu     sync.Mutex
		errs   []error
		failed int
	)
	// A plain group: one failed lookup must not cancel the others, and the
	// errors are collected here, since the refresh fails only if every
	// bucket's lookup did.
	var g errgroup.Group
	g.SetLimit(refreshLookups)
	for cpl := 0; cpl <= maxCPL; cpl++ {
		if onlyStale && !tk.bucketStale(cpl) {
			continue
		}
		if ctx.Err() != nil {
			break
		}
		target := tk.randomKeyInBucket(selfKey, cpl)
		g.Go(func() error {
			// Go may have waited for a slot while ctx ended: the ctx
			// error below covers this bucket.
			if ctx.Err() != nil {
				return nil
			}
			_, err := tk.q.closestPeers(ctx, []byte(target))
			if err != nil && !errors.Is(err, ErrNoPeers) {
				mu.Lock()
				errs = append(errs, err)
				failed++
				mu.Unlock()
			}
			return nil
		})
	}
	_ = g.Wait() // errors are in errs
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("kad: refresh: %w", err)
	}
	if failed > 0 && failed == maxCPL+1 {
		return fmt.Errorf("kad: refresh: %w", errors.Join(errs...))
	}
	return nil
}

// randomKeyInBucket returns a FIND_NODE key whose position falls in
// bucket cpl. Servers hash the key, so it must be a preimage: a random
// peer id found by a search of about 2^(cpl+1) hashes, bounded; past the
// bound a random key anywhere is used, which still explores the network.
func (tk *keeper) randomKeyInBucket(self kbucket.ID, cpl int) string {
	tk.rngMu.Lock()
	defer tk.rngMu.Unlock()
	if p, ok := kbucket.RandomPeerIDWithCPL(self, cpl, tk.rng, 1<<(maxRefreshCPL+4)); ok {
		return string(p)
	}
	var b [32]byte
	for i := range b {
		b[i] = byte(tk.rng.Uint32())
	}
	return string(b[:])
}

// bucketStale reports whether bucket cpl was not looked up within the
// refresh interval.
func (tk *keeper) bucketStale(cpl int) bool {
	var last time.Time
	tk.rt.withTable(func(t *kbucket.Table) { last = t.LastRefreshed(cpl) })
	return time.Since(last) >= tk.refreshInterval()
}
