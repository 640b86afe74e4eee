package kad

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	ds "github.com/ipfs/go-datastore"
	record "github.com/libp2p/go-libp2p-record"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/kadlib/kad/internal/lookup"
	"github.com/kadlib/kad/internal/providers"
	"github.com/kadlib/kad/internal/reprovide"
	"github.com/kadlib/kad/internal/wire"
)

// config holds every setting of a DHT, one section per concern. The
// sections are plain data: defaults() gives Amino's values, the Options
// (options.go) change them, and validate() holds every range and
// cross-field rule, so New rejects a bad setting before anything starts.
type config struct {
	node      nodeConfig
	table     tableConfig
	lookup    lookupConfig
	values    valuesConfig
	providers providersConfig
	reprovide reprovideConfig
	limits    limitsConfig
	telemetry telemetryConfig
	datastore ds.Batching  // nil: a fresh in-memory store
	logger    *slog.Logger // nil: slog.Default()
}

// nodeConfig says which protocol the node speaks and whether it serves.
type nodeConfig struct {
	prefix         protocol.ID
	mode           ModeOpt
	requestTimeout time.Duration
}

// tableConfig holds the routing table's settings and its upkeep.
type tableConfig struct {
	bucketSize      int
	bootstrapPeers  []peer.AddrInfo
	randomWalk      bool
	refreshInterval time.Duration
	diversity       *diversityLimits // nil: off
	onPeerAdded     func(peer.ID)
	onPeerRemoved   func(peer.ID)
	addrFilter      func(peer.AddrInfo) bool // nil: every peer (AddressFilter)
	addrFilterSet   bool
	// testManualRefresh is for tests only (no Option sets it): it stops
	// the refresh ticker and the discovery runs, and the owner calls
	// refreshOnce itself, so it knows when no upkeep is in flight.
	testManualRefresh bool
}

// lookupConfig holds the lookups' settings; k is table.bucketSize.
type lookupConfig struct {
	concurrency   int
	convergeAlpha int // 0: concurrency
	resiliency    int
	disjointPaths int
	vouchers      int // GetClosestPeers only; 0: off
	timeout       time.Duration
}

// nsValidator is one NamespacedValidator option.
type nsValidator struct {
	ns string
	v  record.Validator
}

// valuesConfig holds the values side's settings.
type valuesConfig struct {
	disabled      bool
	validator     record.Validator // set by Validator; nil: the default
	validatorSet  bool
	namespaces    []nsValidator
	maxRecordAge  time.Duration
	maxRecordSize int
}

// providersConfig holds the providers side's settings.
type providersConfig struct {
	disabled  bool
	store     ProviderRecordStore // nil: the built-in store on the Datastore
	validity  time.Duration
	addrTTL   time.Duration
	maxPerKey int
}

// reprovideConfig holds the reprovider's settings.
type reprovideConfig struct {
	enabled  bool
	interval time.Duration
	bits     int
	progress func(ReprovideStatus)
}

// limitsConfig holds the bounds on what strangers may cost us: streams
// held open and for how long, requests per second, and the size of what
// they send and what we answer. Record size and providers per key live
// with their side's settings (values, providers).
type limitsConfig struct {
	streamsTotal    int
	streamsPerPeer  int
	idleStream      time.Duration
	peerRate        float64 // requests per second; 0: no limit
	peerBurst       int
	maxMessageSize  int
	maxKeySize      int
	maxAddrsPerPeer int
	provsPerResp    int
}

// telemetryConfig says where metrics and spans go; nil: otel's globals.
type telemetryConfig struct {
	meterProvider  metric.MeterProvider
	tracerProvider trace.TracerProvider
}

// buildConfig applies opts over the defaults and validates the result;
// the logger defaults to slog.Default().
func buildConfig(opts []Option) (config, error) {
	cfg := defaults()
	for _, o := range opts {
		if o == nil {
			continue
		}
		if err := o(&cfg); err != nil {
			return config{}, err
		}
	}
	if err := cfg.validate(); err != nil {
		return config{}, err
	}
	if cfg.logger == nil {
		cfg.logger = slog.Default()
	}
	return cfg, nil
}

func defaults() config {
	return config{
		node: nodeConfig{
			prefix:         aminoPrefix,
			mode:           ModeAuto,
			requestTimeout: 10 * time.Second,
		},
		table: tableConfig{
			bucketSize:      20,
			randomWalk:      true,
			refreshInterval: 10 * time.Minute,
		},
		lookup: lookupConfig{
			concurrency:   10,
			resiliency:    3,
			disjointPaths: 1,
			vouchers:      2,
			timeout:       time.Minute,
		},
		values: valuesConfig{
			maxRecordAge:  48 * time.Hour,
			maxRecordSize: 64 << 10,
		},
		providers: providersConfig{
			validity:  48 * time.Hour,
			addrTTL:   24 * time.Hour,
			maxPerKey: 100,
		},
		reprovide: reprovideConfig{
			interval: 22 * time.Hour,
			bits:     8,
		},
		limits: limitsConfig{
			streamsTotal:    4096,
			streamsPerPeer:  32,
			idleStream:      time.Minute,
			peerRate:        200,
			peerBurst:       1000,
			maxMessageSize:  4 << 20,
			maxKeySize:      1024,
			maxAddrsPerPeer: 16,
			provsPerResp:    20,
		},
	}
}

// lookupParams is the lookup.Config that lookups run on, before the
// per-lookup Near distance.
func (c *config) lookupParams() lookup.Config {
	return lookup.Config{
		K:             c.table.bucketSize,
		Alpha:         c.lookup.concurrency,
		ConvergeAlpha: c.lookup.convergeAlpha,
		Beta:          c.lookup.resiliency,
		Disjoint:      c.lookup.disjointPaths,
	}
}

// providerStoreParams is the built-in provider store's providers.Config.
func (c *config) providerStoreParams() providers.Config {
	return providers.Config{
		Validity:  c.providers.validity,
		AddrTTL:   c.providers.addrTTL,
		MaxPerKey: c.providers.maxPerKey,
		CacheKeys: providerCacheKeys,
		// The default datastore is our own, fresh and in memory.
		FreshDatastore: c.datastore == nil,
	}
}

// validate holds every range and cross-field rule of the configuration.
// Rules an internal package owns (lookup.Config, providers.Config,
// reprovide.Schedule) are checked by calling it. Every error wraps
// ErrInvalidOption.
func (c *config) validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrInvalidOption}, args...)...))
	}

	// Node.
	n := &c.node
	if n.prefix == "" || !strings.HasPrefix(string(n.prefix), "/") || strings.HasSuffix(string(n.prefix), "/") {
		bad("protocol prefix %q must start with / and not end with /", n.prefix)
	}
	switch n.mode {
	case ModeAuto, ModeClient, ModeServer, ModeAutoServer:
	default:
		bad("unknown mode %d", int(n.mode))
	}
	if c.table.addrFilterSet && c.table.addrFilter == nil {
		bad("nil address filter (AnyAddrs accepts every peer)")
	}
	if n.requestTimeout <= 0 {
		bad("request timeout %v <= 0", n.requestTimeout)
	}

	// Table.
	t := &c.table
	if t.bucketSize < 1 {
		bad("bucket size %d < 1", t.bucketSize)
	}
	for _, ai := range t.bootstrapPeers {
		if err := ai.ID.Validate(); err != nil {
			bad("bootstrap peer: %v", err)
		}
	}
	if t.refreshInterval <= 0 {
		bad("refresh interval %v <= 0", t.refreshInterval)
	}
	if dv := t.diversity; dv != nil && (dv.perTable < 1 || dv.perBucket < 1) {
		bad("peer diversity limits %d, %d must be >= 1", dv.perTable, dv.perBucket)
	}

	// Lookups. A zero lookup.Config field means its default, so the
	// positives are checked here; lookup.Config.Validate owns the rules
	// between the fields (resiliency within k, converge concurrency and
	// disjoint paths within concurrency).
	l := &c.lookup
	if l.concurrency < 1 {
		bad("concurrency %d < 1", l.concurrency)
	}
	if l.resiliency < 1 {
		bad("resiliency %d < 1", l.resiliency)
	}
	if l.disjointPaths < 1 {
		bad("disjoint paths %d < 1", l.disjointPaths)
	}
	if t.bucketSize >= 1 && l.concurrency >= 1 && l.resiliency >= 1 && l.disjointPaths >= 1 {
		if err := c.lookupParams().Validate(); err != nil {
			bad("BucketSize, Concurrency, ConvergeConcurrency, Resiliency or DisjointPaths: %w", err)
		}
	}
	if l.timeout <= 0 {
		bad("lookup timeout %v <= 0", l.timeout)
	}
	if l.vouchers < 0 {
		bad("vouchers %d < 0", l.vouchers)
	}

	// Values.
	v := &c.values
	if v.maxRecordAge <= 0 {
		bad("max record age %v <= 0", v.maxRecordAge)
	}
	if v.maxRecordSize < 1 {
		bad("max record size %d < 1", v.maxRecordSize)
	}
	if v.maxRecordSize > wire.DefaultMaxMessageSize {
		// No go or js peer would read the message carrying it.
		bad("max record size %d > %d, the message limit of go and js peers", v.maxRecordSize, wire.DefaultMaxMessageSize)
	}
	if v.validatorSet && v.validator == nil {
		bad("nil validator")
	}
	for _, nv := range v.namespaces {
		if nv.ns == "" || strings.Contains(nv.ns, "/") {
			bad("validator namespace %q must be non-empty and without /", nv.ns)
		}
		if nv.v == nil {
			bad("nil validator for namespace %q", nv.ns)
		}
	}
	if _, ok := v.validator.(record.NamespacedValidator); v.validator != nil && !ok && len(v.namespaces) > 0 {
		bad("NamespacedValidator needs the Validator option's validator to be a record.NamespacedValidator, not %T", v.validator)
	}

	// Providers. providers.Config.Validate owns the store's rules; they
	// are checked even for a custom store, whose records peers renew on
	// the same schedule.
	p := &c.providers
	if err := c.providerStoreParams().Validate(); err != nil {
		bad("ProvideValidity, ProviderAddrTTL or MaxProvidersPerKey: %w", err)
	}
	if p.disabled && p.store != nil {
		bad("a provider store was given but providers are disabled")
	}

	// Reprovider.
	r := &c.reprovide
	if err := (reprovide.Schedule{Interval: r.interval, Bits: r.bits}).Validate(); err != nil {
		bad("reprovide: %v", err)
	}
	if r.enabled && p.disabled {
		bad("reprovide enabled but providers are disabled")
	}
	if r.enabled && r.interval >= p.validity && p.validity > 0 {
		bad("reprovide interval %v >= provide validity %v: records would expire before they are renewed", r.interval, p.validity)
	}

	// Limits.
	lim := &c.limits
	if lim.streamsTotal < 1 {
		bad("max inbound streams %d < 1", lim.streamsTotal)
	}
	if lim.streamsPerPeer < 1 {
		bad("max inbound streams per peer %d < 1", lim.streamsPerPeer)
	}
	if lim.streamsTotal >= 1 && lim.streamsPerPeer > lim.streamsTotal {
		bad("max inbound streams per peer %d > total %d", lim.streamsPerPeer, lim.streamsTotal)
	}
	if lim.idleStream <= 0 {
		bad("idle stream timeout %v <= 0", lim.idleStream)
	}
	if lim.peerRate < 0 || lim.peerRate != lim.peerRate { // NaN too
		bad("peer request rate %v < 0", lim.peerRate)
	}
	if lim.peerRate > 0 && lim.peerBurst < 1 {
		bad("peer request burst %d < 1", lim.peerBurst)
	}
	if lim.maxMessageSize < 1024 {
		bad("max message size %d < 1024", lim.maxMessageSize)
	}
	if lim.maxKeySize < 80 {
		// Provider keys (multihashes) may be 80 bytes: a smaller bound
		// would refuse requests every peer sends.
		bad("max key size %d < 80", lim.maxKeySize)
	}
	if lim.maxAddrsPerPeer < 1 {
		bad("max addresses per peer %d < 1", lim.maxAddrsPerPeer)
	}
	if lim.provsPerResp < 1 {
		bad("max providers per response %d < 1", lim.provsPerResp)
	}
	return errors.Join(errs...)
}
