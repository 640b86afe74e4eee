package kad

import (
	"time"
)

const (
	// discoverDelay is how long a discovery run waits after the peer
	// that asked for it entered the table: peers that arrive together
	// (a burst of connections, a node's first answers) share one run.
	discoverDelay = time.Second
	// discoverGap is the least time from the end of one discovery run to
	// the start of the next: a table that keeps growing in small steps
	// (a network that is still forming) costs one self lookup every few
	// seconds, not one per arrival.
	discoverGap = 5 * time.Second
)

// kickDiscovery asks for a discovery run (a self lookup, then the stale
// buckets) because a peer just entered the table, when the table is small
// (below k) or young (no run has finished yet). It never blocks: the runs
// happen one at a time on the upkeep goroutine (maintain), discoverDelay
// after the request and at least discoverGap after the previous run, and
// requests made while one waits or runs are folded into the next. With
// random walk off nothing ever reads the requests.
func (d *DHT) kickDiscovery() {
	if !d.cfg.table.randomWalk || d.cfg.table.testManualRefresh {
		return
	}
	if d.rt.Size() >= d.cfg.table.bucketSize && d.discoverRuns.Load() > 0 {
		return
	}
	select {
	case d.discoverKick <- struct{}{}:
	default: // a run is already asked for
	}
}

// discover is one discovery run: the self lookup fills the buckets near
// us and tells the rest of the network we are here; then each bucket not
// looked up lately gets a random lookup.
func (d *DHT) discover() {
	start := time.Now()
	defer d.discoverRuns.Add(1)
	if _, err := d.GetClosestPeers(d.ctx, string(d.self)); err != nil {
		d.log.Debug("discovery: self lookup failed", "err", err)
		return
	}
	if err := d.refreshBuckets(d.ctx, true); err != nil {
		d.log.Debug("discovery: bucket refresh failed", "err", err)
	}
	d.log.Debug("discovery run done", "table", d.rt.Size(), "took", time.Since(start))
}
