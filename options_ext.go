package kad

import (
	"errors"
	"fmt"
	"time"

	ds "github.com/ipfs/go-datastore"
	dssync "github.com/ipfs/go-datastore/sync"
)

// extConfig holds the settings shared by the values and providers sides,
// and each side's own, kept apart so each can grow on its own.
type extConfig struct {
	datastore       ds.Batching // nil: a fresh in-memory store
	refreshInterval time.Duration
	// manualRefresh stops the refresh ticker: the owner (a test) calls
	// refreshOnce itself, so it knows when no upkeep is in flight.
	manualRefresh bool
	values        valuesConfig
	providers     providersConfig
}

func defaultExt() extConfig {
	return extConfig{
		refreshInterval: 10 * time.Minute,
		values:          defaultValuesConfig(),
		providers:       defaultProvidersConfig(),
	}
}

func (e *extConfig) validate(c *config) []error {
	var errs []error
	if e.refreshInterval <= 0 {
		errs = append(errs, fmt.Errorf("%w: refresh interval %v <= 0", ErrInvalidOption, e.refreshInterval))
	}
	if c.disjointPaths > c.concurrency && c.concurrency >= 1 {
		errs = append(errs, fmt.Errorf("%w: disjoint paths %d > concurrency %d", ErrInvalidOption, c.disjointPaths, c.concurrency))
	}
	errs = append(errs, e.values.validate(c)...)
	errs = append(errs, e.providers.validate(c)...)
	return errs
}

// Datastore sets where records and provider records are kept. Pass a
// persistent one (go-ds-leveldb, go-ds-pebble, ...) to keep them across
// restarts. The DHT does not close it. Default: an in-memory store.
func Datastore(d ds.Batching) Option {
	return func(c *config) error {
		if d == nil {
			return fmt.Errorf("%w: nil datastore", ErrInvalidOption)
		}
		c.ext.datastore = d
		return nil
	}
}

// extState is the runtime state of the values and providers sides.
type extState struct {
	ds        ds.Batching
	values    valuesState
	providers providersState
}

func (d *DHT) initExt() error {
	d.ext.ds = d.cfg.ext.datastore
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

// refreshInterval is how long a looked-up bucket counts as fresh.
func (d *DHT) refreshInterval() time.Duration { return d.cfg.ext.refreshInterval }
