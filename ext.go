package kad

import (
	"context"
	"errors"

	ds "github.com/ipfs/go-datastore"
	dssync "github.com/ipfs/go-datastore/sync"
	"github.com/libp2p/go-libp2p/core/peer"
)

// extState is the datastore and the runtime state of the providers side.
type extState struct {
	ds        ds.Batching
	providers providersState
}

func (d *DHT) initExt() error {
	d.ext.ds = d.cfg.datastore
	if d.ext.ds == nil {
		d.ext.ds = dssync.MutexWrap(ds.NewMapDatastore())
	}
	d.vals = newValues(d.cfg.values, d.cfg.table.bucketSize, d.self, d.cfg.node.prefix, d.ps, d.ext.ds, valuesDeps{
		own: d.own, q: d.q, log: d.log, closer: d.srv.closerPeers,
		closest: func(ctx context.Context, key string) ([]peer.ID, error) { return d.q.closestPeers(ctx, []byte(key)) },
	})
	if err := d.initProviders(); err != nil {
		return errors.Join(err, d.vals.close())
	}
	return nil
}

// startExt starts the background tasks of both sides, owned by d.wg.
func (d *DHT) startExt() {
	d.vals.start()
	d.startProviders()
	d.startReprovider()
}

func (d *DHT) closeExt() error {
	return errors.Join(d.vals.close(), d.closeProviders())
}
