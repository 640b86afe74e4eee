package kad

import (
	"context"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// ProviderRecordStore keeps provider records: which peers announced that
// they have the content of a key. Keys are CID multihash bytes. Its method set
// is go-libp2p-kad-dht's providers.ProviderStore, so a store written for
// that library (its ProviderManager included) plugs in unchanged.
//
// A custom store owns its own expiry: the DHT sweeps only the built-in
// one. It must be safe for concurrent use.
type ProviderRecordStore interface {
	// AddProvider records that prov provides key. prov.Addrs may be empty
	// when the provider announced none.
	AddProvider(ctx context.Context, key []byte, prov peer.AddrInfo) error
	// GetProviders returns the live providers of key.
	GetProviders(ctx context.Context, key []byte) ([]peer.AddrInfo, error)
}

// providersConfig holds the providers side's settings.
type providersConfig struct {
	disabled  bool
	store     ProviderRecordStore // nil: the built-in store on the Datastore
	validity  time.Duration
	addrTTL   time.Duration
	maxPerKey int
}

func defaultProvidersConfig() providersConfig {
	return providersConfig{
		validity:  48 * time.Hour,
		addrTTL:   24 * time.Hour,
		maxPerKey: 100,
	}
}

func (p *providersConfig) validate(_ *config) []error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrInvalidOption}, args...)...))
	}
	if p.validity <= 0 {
		bad("provide validity %v <= 0", p.validity)
	}
	if p.addrTTL <= 0 {
		bad("provider address TTL %v <= 0", p.addrTTL)
	}
	if p.validity > 0 && p.addrTTL > p.validity {
		bad("provider address TTL %v > provide validity %v: addresses would outlive their record", p.addrTTL, p.validity)
	}
	if p.maxPerKey < 1 {
		bad("max providers per key %d < 1", p.maxPerKey)
	}
	if p.disabled && p.store != nil {
		bad("a provider store was given but providers are disabled")
	}
	return errs
}

// ProviderStore replaces the built-in provider store, for applications
// that keep provider records elsewhere (a shared database, or
// go-libp2p-kad-dht's ProviderManager). The DHT neither sweeps nor closes
// it. Default: the built-in store on the Datastore, records under
// "/providers/", with a hot-key cache and an hourly bounded expiry sweep.
func ProviderStore(s ProviderRecordStore) Option {
	return func(c *config) error {
		if s == nil {
			return fmt.Errorf("%w: nil provider store", ErrInvalidOption)
		}
		c.ext.providers.store = s
		return nil
	}
}

// ProvideValidity is how long a provider record stays valid after the
// provider's last announcement, in the built-in store; providers must
// announce again before it runs out. Default 48 h, as on Amino, where
// providers republish every 22 h.
func ProvideValidity(d time.Duration) Option {
	return func(c *config) error { c.ext.providers.validity = d; return nil }
}

// ProviderAddrTTL is how long the built-in store keeps a provider's
// addresses. They go stale sooner than the record (peers move), so after
// this the record is served without addresses and finders look the peer
// up. Must not exceed ProvideValidity. Default 24 h, as on Amino.
func ProviderAddrTTL(d time.Duration) Option {
	return func(c *config) error { c.ext.providers.addrTTL = d; return nil }
}

// MaxProvidersPerKey bounds the providers the built-in store keeps for one
// key, so announcements for one key cannot fill memory or the disk; once
// full, new providers are refused until records expire (renewals are
// always accepted). Default 100.
func MaxProvidersPerKey(n int) Option {
	return func(c *config) error { c.ext.providers.maxPerKey = n; return nil }
}

// DisableProviders turns the providers side off: the node neither stores
// nor serves provider records (ADD_PROVIDER and GET_PROVIDERS requests get
// their stream reset), and Provide and FindProviders fail with
// ErrProvidersDisabled. For nodes that only route peers or values.
// Default: enabled.
func DisableProviders() Option {
	return func(c *config) error { c.ext.providers.disabled = true; return nil }
}
