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
func (tk *keeper) kickDiscovery() {
	if !tk.cfg.randomWalk || tk.cfg.testManualRefresh {
		return
	}
	if tk.rt.Size() >= tk.cfg.bucketSize && tk.discoverRuns.Load() > 0 {
		return
	}
	select {
	case tk.discoverKick <- struct{}{}:
	default: // a run is already asked for
	}
}

// discover is one discovery run: the self lookup fills the buckets near
// us and tells the rest of the network we are here; then each bucket not
// looked up lately gets a random lookup.
func (tk *keeper) discover() {
	start := time.Now()
	defer tk.discoverRuns.Add(1)
	if _, err := tk.q.closestPeers(tk.own.ctx, []byte(tk.self)); err != nil {
		tk.log.Debug("discovery: self lookup failed", "err", err)
		return
	}
	if err := tk.refreshBuckets(tk.own.ctx, true); err != nil {
		tk.log.Debug("discovery: bucket refresh failed", "err", err)
	}
	tk.log.Debug("discovery run done", "table", tk.rt.Size(), "took", time.Since(start))
}
