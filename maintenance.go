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
// lowWaterCheck it re-bootstraps if the table has shrunk below the low
// water mark; and it runs the discovery runs asked for by kickDiscovery.
// It does nothing at all when random walk is off.
func (d *DHT) maintain() {
	if !d.cfg.table.randomWalk {
		return
	}
	refresh := time.NewTicker(d.cfg.table.refreshInterval)
	defer refresh.Stop()
	ticks := refresh.C
	if d.cfg.table.testManualRefresh {
		ticks = nil
	}
	low := time.NewTicker(d.lowWaterCheck())
	defer low.Stop()
	// discoverAt fires discoverDelay after a discovery request; nil
	// while none waits.
	var discoverAt <-chan time.Time
	var lastRun time.Time // end of the last discovery run
	kicks := d.discoverKick
	for {
		select {
		case <-d.ctx.Done():
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
			d.discover()
			lastRun = time.Now()
			kicks = d.discoverKick
		case <-ticks:
			d.refreshAndSave(d.ctx)
		case <-low.C:
			if d.rt.Size() < d.lowWater() && len(d.cfg.table.bootstrapPeers) > 0 {
				d.log.Debug("routing table below low water mark: bootstrapping", "size", d.rt.Size())
				if err := d.Bootstrap(d.ctx); err != nil {
					d.log.Debug("re-bootstrap failed", "err", err)
				}
			}
		}
	}
}

// refreshInterval is how long a looked-up bucket counts as fresh.
func (d *DHT) refreshInterval() time.Duration { return d.cfg.table.refreshInterval }

// lowWater is the table size under which the node bootstraps by itself.
func (d *DHT) lowWater() int { return max(1, d.cfg.table.bucketSize/4) }

// lowWaterCheck is how often the table size is checked against lowWater.
func (d *DHT) lowWaterCheck() time.Duration {
	return min(time.Minute, d.cfg.table.refreshInterval)
}

// refreshAndSave is what each refresh tick does: a round of upkeep, then
// the table is saved for the next run.
func (d *DHT) refreshAndSave(ctx context.Context) {
	d.refreshOnce(ctx)
	if err := d.saveTable(ctx); err != nil && ctx.Err() == nil {
		d.log.Warn("saving the routing table failed", "err", err)
	}
}

// refreshOnce is one round of upkeep: liveness checks, a self-lookup,
// then stale buckets.
func (d *DHT) refreshOnce(ctx context.Context) {
	d.checkLiveness(ctx, time.Now().Add(-d.cfg.table.refreshInterval))
	if d.rt.Size() == 0 {
		if err := d.Bootstrap(ctx); err != nil {
			d.log.Debug("refresh: bootstrap failed", "err", err)
		}
		return
	}
	if _, err := d.GetClosestPeers(ctx, string(d.self)); err != nil {
		d.log.Debug("refresh: self lookup failed", "err", err)
	}
	if err := d.refreshBuckets(ctx, true); err != nil {
		d.log.Debug("refresh failed", "err", err)
	}
}

// checkLiveness probes every table peer last seen before cutoff; those
// that do not answer are evicted, and a cached candidate takes their place.
func (d *DHT) checkLiveness(ctx context.Context, cutoff time.Time) {
	var stale []peer.ID
	d.rt.withTable(func(t *kbucket.Table) {
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
				d.checkPeer(ctx, p)
			}
			return nil
		})
	}
	_ = g.Wait() // no task returns an error
}

// checkPeer probes p: an answer refreshes it, silence evicts it.
func (d *DHT) checkPeer(ctx context.Context, p peer.ID) {
	if err := d.probe(ctx, p); err != nil {
		if ctx.Err() == nil {
			d.log.Debug("evicting unresponsive peer", "peer", p, "err", err)
			d.rt.remove(p)
		}
		return
	}
	d.rt.seen(p, time.Now())
}

// onBucketFull runs when a verified peer finds its bucket full and waits in
// the replacement cache: the bucket's least recently seen peer is checked,
// and if it is dead the candidate takes its place.
func (d *DHT) onBucketFull(candidate peer.ID) {
	var oldest peer.ID
	var ok bool
	d.rt.withTable(func(t *kbucket.Table) {
		oldest, ok = t.Oldest(t.BucketFor(kbucket.PeerKey(candidate)))
	})
	if !ok {
		return
	}
	d.verify(oldest, func() { d.checkPeer(d.ctx, oldest) })
}
