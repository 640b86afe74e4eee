package kad

import (
	"context"

	ds "github.com/ipfs/go-datastore"
	dssync "github.com/ipfs/go-datastore/sync"
	"github.com/libp2p/go-libp2p/core/peer"
)

// extState is the datastore both sides keep records in.
type extState struct {
	ds ds.Batching
}

// initExt opens the datastore (the configured one, or a fresh in-memory
// one) and builds the values side on it.
func (d *DHT) initExt() error {
	d.ext.ds = d.cfg.datastore
	if d.ext.ds == nil {
		d.ext.ds = dssync.MutexWrap(ds.NewMapDatastore())
	}
	d.vals = newValues(d.cfg.values, d.cfg.table.bucketSize, d.self, d.cfg.node.prefix, d.ps, d.ext.ds, valuesDeps{
		own: d.own, q: d.q, log: d.log, closer: d.srv.closerPeers,
		closest: func(ctx context.Context, key string) ([]peer.ID, error) { return d.q.closestPeers(ctx, []byte(key)) },
	})
	return nil
}

// startExt starts the background tasks of both sides, owned by the owner.
func (d *DHT) startExt() {
	d.vals.start()
	d.provs.start()
}

func (d *DHT) closeExt() error {
	return d.vals.close()
}
