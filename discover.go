package kad

import (
	"time"
)

const (
	// discoverDelay is how long a discovery run waits after the peer
	// that asked for it entered the table: peers that arrive together
	// (a burst of connections, a node's first answers) share one run.
	discoverDelay = time.Second
	// discoverYoung is how long after New the table counts as young: a
	// peer entering it then starts a discovery run whatever the size.
	discoverYoung = time.Minute
)

// kickDiscovery asks for a discovery run (a self lookup, then the stale
// buckets) because p just entered the table, when the table is small
// (below k) or young. It never blocks: the runs themselves happen one at
// a time on the upkeep goroutine (maintain), discoverDelay after the
// request, and requests made while one waits or runs are folded into the
// next. With random walk off nothing ever reads the requests.
func (d *DHT) kickDiscovery() {
	if !d.cfg.table.randomWalk || d.cfg.table.testManualRefresh {
		return
	}
	if d.rt.Size() >= d.cfg.table.bucketSize && time.Since(d.started) >= discoverYoung {
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
	if _, err := d.GetClosestPeers(d.ctx, string(d.self)); err != nil {
		d.log.Debug("discovery: self lookup failed", "err", err)
		return
	}
	if err := d.refreshBuckets(d.ctx, true); err != nil {
		d.log.Debug("discovery: bucket refresh failed", "err", err)
	}
	d.log.Debug("discovery run done", "table", d.rt.Size(), "took", time.Since(start))
}
