package kad

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
)

// ErrInvalidOption is wrapped by every error New returns for a bad option,
// so callers can tell configuration mistakes from runtime failures.
var ErrInvalidOption = errors.New("kad: invalid option")

// ModeOpt says whether the node answers DHT requests (server) or only
// makes them (client).
type ModeOpt int

const (
	// ModeAuto starts as a client and becomes a server while AutoNAT says
	// the host is publicly reachable. Right for nodes on the public network.
	ModeAuto ModeOpt = iota
	// ModeClient never answers requests and never enters other peers'
	// routing tables: for short-lived or unreachable nodes.
	ModeClient
	// ModeServer always answers requests.
	ModeServer
	// ModeAutoServer starts as a server and becomes a client only while
	// AutoNAT says the host is private. Right for private networks, where
	// AutoNAT may never say "public" and ModeAuto would leave every node a
	// client.
	ModeAutoServer
)

// String names the mode.
func (m ModeOpt) String() string {
	switch m {
	case ModeAuto:
		return "auto"
	case ModeClient:
		return "client"
	case ModeServer:
		return "server"
	case ModeAutoServer:
		return "auto-server"
	}
	return fmt.Sprintf("ModeOpt(%d)", int(m))
}

// Option configures a DHT in New.
type Option func(*config) error

// config holds every setting; defaults() gives Amino's values and
// validate() holds every range and cross-field rule.
type config struct {
	bucketSize      int
	concurrency     int
	convergeAlpha   int // 0: concurrency
	resiliency      int
	disjointPaths   int
	prefix          protocol.ID
	mode            ModeOpt
	bootstrapPeers  []peer.AddrInfo
	logger          *slog.Logger
	requestTimeout  time.Duration
	lookupTimeout   time.Duration
	idleStream      time.Duration
	maxMessageSize  int
	maxAddrsPerPeer int
	randomWalk      bool
	onPeerAdded     func(peer.ID)
	onPeerRemoved   func(peer.ID)
	meterProvider   metric.MeterProvider
	diversity       *diversityLimits
	addrFilter      func(peer.AddrInfo) bool // nil: every peer
	addrFilterSet   bool
	tracerProvider  trace.TracerProvider
	ext             extConfig
	limits          limitsConfig
	reprovide       reprovideConfig
}

func defaults() config {
	return config{
		bucketSize:      20,
		concurrency:     10,
		resiliency:      3,
		disjointPaths:   1,
		prefix:          aminoPrefix,
		mode:            ModeAuto,
		requestTimeout:  10 * time.Second,
		lookupTimeout:   time.Minute,
		idleStream:      time.Minute,
		maxMessageSize:  4 << 20,
		maxAddrsPerPeer: 16,
		randomWalk:      true,
		ext:             defaultExt(),
		limits:          defaultLimitsConfig(),
		reprovide:       defaultReprovideConfig(),
	}
}

func (c *config) validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrInvalidOption}, args...)...))
	}
	if c.bucketSize < 1 {
		bad("bucket size %d < 1", c.bucketSize)
	}
	if c.concurrency < 1 {
		bad("concurrency %d < 1", c.concurrency)
	}
	if c.resiliency < 1 {
		bad("resiliency %d < 1", c.resiliency)
	}
	if c.convergeAlpha < 0 || (c.concurrency >= 1 && c.convergeAlpha > c.concurrency) {
		bad("converge concurrency %d not in [0, concurrency %d]", c.convergeAlpha, c.concurrency)
	}
	if c.bucketSize >= 1 && c.resiliency > c.bucketSize {
		bad("resiliency %d > bucket size %d", c.resiliency, c.bucketSize)
	}
	if c.disjointPaths < 1 {
		bad("disjoint paths %d < 1", c.disjointPaths)
	}
	if c.prefix == "" || !strings.HasPrefix(string(c.prefix), "/") || strings.HasSuffix(string(c.prefix), "/") {
		bad("protocol prefix %q must start with / and not end with /", c.prefix)
	}
	switch c.mode {
	case ModeAuto, ModeClient, ModeServer, ModeAutoServer:
	default:
		bad("unknown mode %d", int(c.mode))
	}
	for _, ai := range c.bootstrapPeers {
		if err := ai.ID.Validate(); err != nil {
			bad("bootstrap peer: %v", err)
		}
	}
	if c.requestTimeout <= 0 {
		bad("request timeout %v <= 0", c.requestTimeout)
	}
	if c.lookupTimeout <= 0 {
		bad("lookup timeout %v <= 0", c.lookupTimeout)
	}
	if c.idleStream <= 0 {
		bad("idle stream timeout %v <= 0", c.idleStream)
	}
	if c.maxMessageSize < 1024 {
		bad("max message size %d < 1024", c.maxMessageSize)
	}
	if c.maxAddrsPerPeer < 1 {
		bad("max addresses per peer %d < 1", c.maxAddrsPerPeer)
	}
	errs = append(errs, c.validateAddrFilter()...)
	errs = append(errs, c.ext.validate(c)...)
	errs = append(errs, c.limits.validate()...)
	errs = append(errs, c.reprovide.validate(c)...)
	return errors.Join(errs...)
}

// BucketSize sets k: the size of each routing table bucket, how many peers
// a lookup returns and how many peers store each record. Default 20.
func BucketSize(k int) Option {
	return func(c *config) error { c.bucketSize = k; return nil }
}

// Concurrency sets alpha: how many requests a lookup keeps in flight
// while it searches. Default 10, as in go-libp2p-kad-dht. A lookup that
// runs to the end (GetClosestPeers, PutValue, Provide, a GetValue without
// Quorum) also asks, as soon as it hears of them, the peers that are
// probably among the k closest (within the distance to the k-th closest
// peer that the node's own neighbourhood suggests, with a margin): it
// must hear from them before it ends anyway. Those requests may take the
// total in flight up to max(alpha, k); they save a round trip on most
// lookups for a few more requests (2-7 % in the benchmarks).
func Concurrency(alpha int) Option {
	return func(c *config) error { c.concurrency = alpha; return nil }
}

// ConvergeConcurrency caps the requests a lookup keeps in flight while it
// is still converging, that is until the Resiliency closest peers it knows
// have answered; Concurrency applies after that, to ask the rest of the k
// closest. Lower values spend fewer requests on peers that later turn out
// too far, at the cost of more round trips (bench/README.md has the
// simulator's figures). Setting it also turns off the requests sent ahead
// to probable result members (see Concurrency). n is in [0, Concurrency];
// 0 (the default) means Concurrency.
func ConvergeConcurrency(n int) Option {
	return func(c *config) error { c.convergeAlpha = n; return nil }
}

// Resiliency sets beta: a lookup never ends before the beta closest peers
// it knows of (and not known to be unreachable) have answered. Default 3.
func Resiliency(beta int) Option {
	return func(c *config) error { c.resiliency = beta; return nil }
}

// DisjointPaths splits each lookup into d paths that never share a peer
// (S/Kademlia), so one malicious region of the network cannot steer the
// whole result. It costs more requests per lookup. Default 1 (off).
func DisjointPaths(d int) Option {
	return func(c *config) error { c.disjointPaths = d; return nil }
}

// ProtocolPrefix sets the protocol id prefix: the DHT speaks
// "<prefix>/kad/1.0.0". Default "/ipfs", the public IPFS Amino DHT;
// private networks should pick their own so they never mix with it.
func ProtocolPrefix(p protocol.ID) Option {
	return func(c *config) error { c.prefix = p; return nil }
}

// Mode sets client, server or automatic mode. Default ModeAuto.
func Mode(m ModeOpt) Option {
	return func(c *config) error { c.mode = m; return nil }
}

// BootstrapPeers sets the peers Bootstrap connects to first. Default none.
func BootstrapPeers(peers ...peer.AddrInfo) Option {
	return func(c *config) error {
		c.bootstrapPeers = append([]peer.AddrInfo(nil), peers...)
		return nil
	}
}

// Logger sets the structured logger. Default slog.Default().
func Logger(l *slog.Logger) Option {
	return func(c *config) error {
		if l == nil {
			return fmt.Errorf("%w: nil logger", ErrInvalidOption)
		}
		c.logger = l
		return nil
	}
}

// RequestTimeout bounds one request and its response. Default 10 s.
func RequestTimeout(d time.Duration) Option {
	return func(c *config) error { c.requestTimeout = d; return nil }
}

// LookupTimeout bounds a whole lookup even when the caller's context has
// no deadline, so a hostile network cannot hold one forever. Default 1 min.
func LookupTimeout(d time.Duration) Option {
	return func(c *config) error { c.lookupTimeout = d; return nil }
}

// IdleStreamTimeout closes inbound streams that carry no request for this
// long, so idle peers do not pin memory. Default 1 min.
func IdleStreamTimeout(d time.Duration) Option {
	return func(c *config) error { c.idleStream = d; return nil }
}

// MaxMessageSize bounds inbound messages, checked before allocating.
// Default 4 MiB, the limit of go and js peers.
func MaxMessageSize(n int) Option {
	return func(c *config) error { c.maxMessageSize = n; return nil }
}

// MaxAddrsPerPeer bounds the addresses sent per peer in responses, keeping
// responses small for peers with strict size limits (rust-libp2p accepts
// 16 KiB by default). Default 16.
func MaxAddrsPerPeer(n int) Option {
	return func(c *config) error { c.maxAddrsPerPeer = n; return nil }
}

// RandomWalk turns the table's background upkeep on or off: periodic
// self-lookups, random lookups in stale buckets, liveness checks and
// re-bootstrapping when the table runs low. Off means the node sends no
// request unless the application asks for one. Default on.
func RandomWalk(enabled bool) Option {
	return func(c *config) error { c.randomWalk = enabled; return nil }
}

// RefreshInterval sets how often the table is refreshed: buckets not looked
// up for this long get a random lookup, and peers not heard from for this
// long are checked. Default 10 min, as in the IPFS Amino DHT.
func RefreshInterval(d time.Duration) Option {
	return func(c *config) error { c.ext.refreshInterval = d; return nil }
}

// OnPeerAdded calls f for each peer added to the routing table, after the
// fact and outside any lock; f must return quickly (hand work to your own
// goroutine). Default none.
func OnPeerAdded(f func(peer.ID)) Option {
	return func(c *config) error { c.onPeerAdded = f; return nil }
}

// OnPeerRemoved calls f for each peer removed from the routing table
// (unresponsive, gone, or no longer speaking the protocol); same rules as
// OnPeerAdded. Default none.
func OnPeerRemoved(f func(peer.ID)) Option {
	return func(c *config) error { c.onPeerRemoved = f; return nil }
}
