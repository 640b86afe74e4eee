package kad

import (
	ds "github.com/ipfs/go-datastore"
	dssync "github.com/ipfs/go-datastore/sync"
)

// extState is the runtime state of the values side, and the datastore
// both sides keep records in.
type extState struct {
	ds     ds.Batching
	values valuesState
}

func (d *DHT) initExt() error {
	d.ext.ds = d.cfg.datastore
	if d.ext.ds == nil {
		d.ext.ds = dssync.MutexWrap(ds.NewMapDatastore())
	}
	return d.initValues()
}

// startExt starts the background tasks of both sides, owned by d.own.
func (d *DHT) startExt() {
	d.startValues()
	d.provs.start()
}

func (d *DHT) closeExt() error {
	return d.closeValues()
}
