package kad

import (
	"context"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"golang.org/x/sync/errgroup"

	"github.com/kadlib/kad/internal/kbucket"
)

// maintainConcurrency bounds the liveness checks run at once.
const maintainConcurrency = 8

// maintain is the table's background upkeep, an owned goroutine: every refresh
// interval it checks peers not heard from lately, runs a self-lookup and
// looks up a random key in each bucket not looked up recently; every
// lowWaterCheck it sets again the connection-manager tags the manager
// lost (connTags.repair) and re-bootstraps if the table has shrunk below
// the low water mark; and it runs the discovery runs asked for by
// kickDiscovery.
// It does nothing at all when random walk is off.
func (tk *keeper) maintain() {
	if !tk.cfg.randomWalk {
		return
	}
	refresh := time.NewTicker(tk.cfg.refreshInterval)
	defer refresh.Stop()
	ticks := refresh.C
	if tk.cfg.testManualRefresh {
		ticks = nil
	}
	low := time.NewTicker(tk.lowWaterCheck())
	defer low.Stop()
	// discoverAt fires discoverDelay after a discovery request; nil
	// while none waits.
	var discoverAt <-chan time.Time
	var lastRun time.Time // end of the last discovery run
	kicks := tk.discoverKick
	for {
		select {
		case <-tk.own.ctx.Done():
			return
		case <-kicks:
			// Stop listening until the run: requests made meanwhile
			// stay in the channel and ask for the next one.
			kicks = nil
			wait := discoverDelay
			if !lastRun.IsZero() {
				wait = max(wait, discoverGap-time.Since(lastRun))
			}
			discoverAt = time.After(wait)
		case <-discoverAt:
			discoverAt = nil
			kicks = tk.discoverKick
			if tk.rt.Size() >= tk.cfg.bucketSize && tk.discoverRuns.Load() > 0 {
				// Asked for while the table was small or young: it is
				// neither any more, so the run would only repeat the last.
				continue
			}
			tk.discover()
			lastRun = time.Now()
		case <-ticks:
			tk.refreshAndSave(tk.own.ctx)
		case <-low.C:
			if tk.tags != nil {
				if n := tk.tags.repair(tk.msgr.connected); n > 0 {
					tk.log.Debug("connection-manager tags set again", "peers", n)
				}
			}
			if tk.rt.Size() < tk.lowWater() && len(tk.cfg.bootstrapPeers) > 0 {
				tk.log.Debug("routing table below low water mark: bootstrapping", "size", tk.rt.Size())
				if err := tk.bootstrap(tk.own.ctx); err != nil {
					tk.log.Debug("re-bootstrap failed", "err", err)
				}
			}
		}
	}
}

// refreshInterval is how long a looked-up bucket counts as fresh.
func (tk *keeper) refreshInterval() time.Duration { return tk.cfg.refreshInterval }

// lowWater is the table size under which the node bootstraps by itself.
func (tk *keeper) lowWater() int { return max(1, tk.cfg.bucketSize/4) }

// lowWaterCheck is how often the table size is checked against lowWater.
func (tk *keeper) lowWaterCheck() time.Duration {
	return min(time.Minute, tk.cfg.refreshInterval)
}

// refreshAndSave is what each refresh tick does: a round of upkeep, then
// the table is saved for the next run.
func (tk *keeper) refreshAndSave(ctx context.Context) {
	tk.refreshOnce(ctx)
	if err := tk.saveTable(ctx); err != nil && ctx.Err() == nil {
		tk.log.Warn("saving the routing table failed", "err", err)
	}
}

// refreshOnce is one round of upkeep: liveness checks, a self-lookup,
// then stale buckets.
func (tk *keeper) refreshOnce(ctx context.Context) {
	tk.checkLiveness(ctx, time.Now().Add(-tk.cfg.refreshInterval))
	if tk.rt.Size() == 0 {
		if err := tk.bootstrap(ctx); err != nil {
			tk.log.Debug("refresh: bootstrap failed", "err", err)
		}
		return
	}
	if _, err := tk.q.closestPeers(ctx, []byte(tk.self)); err != nil {
		tk.log.Debug("refresh: self lookup failed", "err", err)
	}
	if err := tk.refreshBuckets(ctx, true); err != nil {
		tk.log.Debug("refresh failed", "err", err)
	}
}

// checkLiveness probes every table peer last seen before cutoff; those
// that do not answer are evicted, and a cached candidate takes their place.
func (tk *keeper) checkLiveness(ctx context.Context, cutoff time.Time) {
	var stale []peer.ID
	tk.rt.withTable(func(t *kbucket.Table) {
		for _, p := range t.Peers() {
			if seen, ok := t.LastSeen(p); ok && seen.Before(cutoff) {
				stale = append(stale, p)
			}
		}
	})
	var g errgroup.Group
	g.SetLimit(maintainConcurrency)
	for _, p := range stale {
		if ctx.Err() != nil {
			break
		}
		g.Go(func() error {
			// Go may have waited for a slot while ctx ended.
			if ctx.Err() == nil {
				tk.checkPeer(ctx, p)
			}
			return nil
		})
	}
	_ = g.Wait() // no task returns an error
}

// checkPeer probes p: an answer refreshes it, silence evicts it (unless
// ctx ended first: that is no evidence). It reports whether p answered.
func (tk *keeper) checkPeer(ctx context.Context, p peer.ID) bool {
	if err := tk.probe(ctx, p); err != nil {
		if ctx.Err() == nil {
			tk.log.Debug("evicting unresponsive peer", "peer", p, "err", err)
			tk.rt.remove(p)
		}
		return false
	}
	tk.rt.seen(p, time.Now())
	return true
}

// onBucketFull runs when a verified peer finds its bucket full and waits in
// the replacement cache: the bucket's least recently seen peer is checked,
// and if it is dead the candidate takes its place. A peer seen within the
// refresh interval is not checked: it answered us lately, so a probe would
// most likely only confirm it, at the cost of a request and, for a peer we
// are no longer connected to, a handshake on both sides; in a network much
// larger than the table that happened on nearly every lookup answer. Such
// a peer is checked once it is stale, by the next candidate for its bucket
// or by the refresh (checkLiveness); a crash before that is caught by the
// disconnect check (lostPeers) or by the first request that fails.
func (tk *keeper) onBucketFull(candidate peer.ID) {
	var oldest peer.ID
	var seen time.Time
	var ok bool
	tk.rt.withTable(func(t *kbucket.Table) {
		oldest, ok = t.Oldest(t.BucketFor(kbucket.PeerKey(candidate)))
		if ok {
			seen, ok = t.LastSeen(oldest)
		}
	})
	if !ok || time.Since(seen) < tk.cfg.refreshInterval {
		return
	}
	tk.verify(oldest, func() { tk.checkPeer(tk.own.ctx, oldest) })
}
