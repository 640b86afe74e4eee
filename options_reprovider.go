package kad

import (
	"fmt"
	"time"

	"github.com/kadlib/kad/internal/reprovide"
)

// reprovideConfig holds the reprovider's settings.
type reprovideConfig struct {
	enabled  bool
	interval time.Duration
	bits     int
	progress func(ReprovideStatus)
}

func defaultReprovideConfig() reprovideConfig {
	return reprovideConfig{interval: 22 * time.Hour, bits: 8}
}

func (r *reprovideConfig) validate(c *config) []error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrInvalidOption}, args...)...))
	}
	if err := (reprovide.Schedule{Interval: r.interval, Bits: r.bits}).Validate(); err != nil {
		bad("reprovide: %v", err)
	}
	if r.enabled && c.ext.providers.disabled {
		bad("reprovide enabled but providers are disabled")
	}
	if r.enabled && r.interval >= c.ext.providers.validity && c.ext.providers.validity > 0 {
		bad("reprovide interval %v >= provide validity %v: records would expire before they are renewed", r.interval, c.ext.providers.validity)
	}
	return errs
}

// Reprovide turns the reprovider on or off. When on, the keys given to
// StartProviding are kept in the Datastore (under "/kad/reprovide/") and
// announced again every ReprovideInterval, spread evenly over the
// interval by keyspace region, each region with one ProvideMany; where it
// stands is saved after each region, so a restart resumes there. Use a
// persistent Datastore for the set to outlive the process. Default off.
func Reprovide(enabled bool) Option {
	return func(c *config) error { c.reprovide.enabled = enabled; return nil }
}

// ReprovideInterval is how often each key is announced again. It must be
// shorter than ProvideValidity, with room for a late cycle. Default 22 h,
// as on Amino, where records live 48 h.
func ReprovideInterval(d time.Duration) Option {
	return func(c *config) error { c.reprovide.interval = d; return nil }
}

// ReprovideRegions cuts the keyspace into 2^bits regions for the
// reprovider: one region is reprovided every interval/2^bits. More
// regions make smaller, more frequent batches; fewer share more lookups
// between keys. bits is in [0, 16]. Default 8: 256 regions, one about
// every 5 minutes with the default interval.
func ReprovideRegions(bits int) Option {
	return func(c *config) error { c.reprovide.bits = bits; return nil }
}

// ReprovideProgress sets a function called after each region is
// reprovided, with what was done and how late it ran: a growing
// ReprovideStatus.Behind means the node is falling behind its schedule.
// It is called on the reprovider's goroutine and must not block. Default
// none (progress is logged at debug level, falling behind at warn).
func ReprovideProgress(f func(ReprovideStatus)) Option {
	return func(c *config) error { c.reprovide.progress = f; return nil }
}
