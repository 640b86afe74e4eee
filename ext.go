package kad

import (
	"errors"

	ds "github.com/ipfs/go-datastore"
	dssync "github.com/ipfs/go-datastore/sync"
)

// extState is the runtime state of the values and providers sides.
type extState struct {
	ds        ds.Batching
	values    valuesState
	providers providersState
}

func (d *DHT) initExt() error {
	d.ext.ds = d.cfg.datastore
	if d.ext.ds == nil {
		d.ext.ds = dssync.MutexWrap(ds.NewMapDatastore())
	}
	if err := d.initValues(); err != nil {
		return err
	}
	if err := d.initProviders(); err != nil {
		return errors.Join(err, d.closeValues())
	}
	return nil
}

// startExt starts the background tasks of both sides, owned by d.wg.
func (d *DHT) startExt() {
	d.startValues()
	d.startProviders()
	d.startReprovider()
}

func (d *DHT) closeExt() error {
	return errors.Join(d.closeValues(), d.closeProviders())
}
