package kad

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	ds "github.com/ipfs/go-datastore"
	record "github.com/libp2p/go-libp2p-record"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/core/routing"
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

// Node: the protocol and whether the node serves.

// ProtocolPrefix sets the protocol id prefix: the DHT speaks
// "<prefix>/kad/1.0.0". Default "/ipfs", the public IPFS Amino DHT;
// private networks should pick their own so they never mix with it.
func ProtocolPrefix(p protocol.ID) Option {
	return func(c *config) error { c.node.prefix = p; return nil }
}

// Mode sets client, server or automatic mode. Default ModeAuto.
func Mode(m ModeOpt) Option {
	return func(c *config) error { c.node.mode = m; return nil }
}

// RequestTimeout bounds one request and its response. Default 10 s.
func RequestTimeout(d time.Duration) Option {
	return func(c *config) error { c.node.requestTimeout = d; return nil }
}

// Routing table and its upkeep.

// BucketSize sets k: the size of each routing table bucket, how many peers
// a lookup returns and how many peers store each record. Default 20.
func BucketSize(k int) Option {
	return func(c *config) error { c.table.bucketSize = k; return nil }
}

// BootstrapPeers sets the peers Bootstrap connects to first. Default none.
func BootstrapPeers(peers ...peer.AddrInfo) Option {
	return func(c *config) error {
		c.table.bootstrapPeers = append([]peer.AddrInfo(nil), peers...)
		return nil
	}
}

// RandomWalk turns the table's background upkeep on or off: periodic
// self-lookups, random lookups in stale buckets, liveness checks and
// re-bootstrapping when the table runs low. Off means the node sends no
// request unless the application asks for one. Default on.
func RandomWalk(enabled bool) Option {
	return func(c *config) error { c.table.randomWalk = enabled; return nil }
}

// RefreshInterval sets how often the table is refreshed: buckets not looked
// up for this long get a random lookup, and peers not heard from for this
// long are checked. Default 10 min, as in the IPFS Amino DHT.
func RefreshInterval(d time.Duration) Option {
	return func(c *config) error { c.table.refreshInterval = d; return nil }
}

// PeerDiversity limits how many routing table peers may share an IP
// group (an IPv4 /16 or an IPv6 /48): at most maxPerGroup in the table and
// maxPerGroupPerBucket in any one bucket, so one operator with one address
// block cannot fill the table. Peers with only loopback or private
// addresses are exempt. The IPFS Amino network uses 3 and 2. Default off.
func PeerDiversity(maxPerGroup, maxPerGroupPerBucket int) Option {
	return func(c *config) error {
		c.table.diversity = &diversityLimits{perTable: maxPerGroup, perBucket: maxPerGroupPerBucket}
		return nil
	}
}

// OnPeerAdded calls f for each peer added to the routing table, after the
// fact and outside any lock; f must return quickly (hand work to your own
// goroutine). Default none.
func OnPeerAdded(f func(peer.ID)) Option {
	return func(c *config) error { c.table.onPeerAdded = f; return nil }
}

// OnPeerRemoved calls f for each peer removed from the routing table
// (unresponsive, gone, or no longer speaking the protocol); same rules as
// OnPeerAdded. Default none.
func OnPeerRemoved(f func(peer.ID)) Option {
	return func(c *config) error { c.table.onPeerRemoved = f; return nil }
}

// Lookups.

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
	return func(c *config) error { c.lookup.concurrency = alpha; return nil }
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
	return func(c *config) error { c.lookup.convergeAlpha = n; return nil }
}

// Resiliency sets beta: a lookup never ends before the beta closest peers
// it knows of (and not known to be unreachable) have answered. Default 3.
func Resiliency(beta int) Option {
	return func(c *config) error { c.lookup.resiliency = beta; return nil }
}

// DisjointPaths splits each lookup into d paths that never share a peer
// (S/Kademlia), so one malicious region of the network cannot steer the
// whole result. It costs more requests per lookup. Default 1 (off).
func DisjointPaths(d int) Option {
	return func(c *config) error { c.lookup.disjointPaths = d; return nil }
}

// Vouchers is how many answering peers must report a live connection to
// a peer GetClosestPeers would have to dial before that peer counts as
// answered: the lookup then ends without waiting for a handshake (three
// round trips over TCP) only to hear that the peer is alive. The dial
// still finishes in the background, so the connection is there for what
// the caller does next, but the peer is not asked once the lookup has
// ended. A peer that crashed loses its connections at once and gets no
// vouches, but one whose machine vanished keeps them until its peers'
// keepalives fail (30 to 40 s with Yamux's defaults) and can be returned
// in that time. 0 makes GetClosestPeers wait for every result member to
// answer, as every other lookup does. Default 2, so that no single peer
// can slip an id that answers nothing into a result.
func Vouchers(n int) Option {
	return func(c *config) error { c.lookup.vouchers = n; return nil }
}

// LookupTimeout bounds a whole lookup even when the caller's context has
// no deadline, so a hostile network cannot hold one forever. Default 1 min.
func LookupTimeout(d time.Duration) Option {
	return func(c *config) error { c.lookup.timeout = d; return nil }
}

// Storage, logging and telemetry.

// Datastore sets where records and provider records are kept. Pass a
// persistent one (go-ds-leveldb, go-ds-pebble, ...) to keep them across
// restarts. The DHT does not close it. Default: an in-memory store.
func Datastore(d ds.Batching) Option {
	return func(c *config) error {
		if d == nil {
			return fmt.Errorf("%w: nil datastore", ErrInvalidOption)
		}
		c.datastore = d
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

// MeterProvider sets where OpenTelemetry metrics go: requests in and out
// by type, errors, request latency, lookups (hops, requests, duration),
// and gauges of the table size, the records and provider records stored
// and the network size estimate. Collecting the gauges counts the stored
// records (DHT.StoreCounts), a keys-only pass over the datastore.
// Default otel.GetMeterProvider(), a no-op unless the application
// installs one.
func MeterProvider(mp metric.MeterProvider) Option {
	return func(c *config) error { c.telemetry.meterProvider = mp; return nil }
}

// TracerProvider sets where OpenTelemetry spans go: one per public
// operation. Default otel.GetTracerProvider(), a no-op unless the
// application installs one.
func TracerProvider(tp trace.TracerProvider) Option {
	return func(c *config) error { c.telemetry.tracerProvider = tp; return nil }
}

// Values.

// Validator replaces the whole record validator: v alone decides which
// records are valid and which of two is better, for every key, the pk and
// ipns namespaces included. Use it to plug in a validator you already
// have; to add one namespace next to the default ones use
// NamespacedValidator instead. When v is a record.NamespacedValidator,
// NamespacedValidator options add to (a copy of) it; with any other
// validator they are an error. Default: a record.NamespacedValidator with
// "pk" (record.PublicKeyValidator) and, under the default "/ipfs" prefix
// only, "ipns" (boxo's ipns.Validator, reading keys that records do not
// embed from the host's peerstore), the two namespaces Amino peers serve;
// with another ProtocolPrefix, "pk" alone.
func Validator(v record.Validator) Option {
	return func(c *config) error {
		c.values.validator = v
		c.values.validatorSet = true
		return nil
	}
}

// NamespacedValidator makes keys "/<ns>/..." valid when v accepts them,
// next to the default namespaces; it replaces a default one of the same
// name ("pk", or "ipns" under the "/ipfs" prefix), and a later call for
// the same ns wins. Keys of namespaces without a validator are refused,
// so a node never stores or serves data it cannot check: a private
// network that wants IPNS adds it here. On the public Amino network
// (prefix "/ipfs") other peers accept only "pk" and "ipns", so records of
// any other namespace only reach peers configured like this one.
// Default: none besides pk, and ipns under "/ipfs".
func NamespacedValidator(ns string, v record.Validator) Option {
	return func(c *config) error {
		c.values.namespaces = append(c.values.namespaces, nsValidator{ns: ns, v: v})
		return nil
	}
}

// MaxRecordAge is how long a stored record is served after it was
// received; the writer must put it again before then to keep it alive.
// Expired records are dropped when read and by a background sweep. It
// does not replace validity rules inside a record (an IPNS EOL). Default
// 48 h, as on the Amino network.
func MaxRecordAge(d time.Duration) Option {
	return func(c *config) error { c.values.maxRecordAge = d; return nil }
}

// MaxRecordSize bounds a record (key plus value bytes) that the node
// stores, accepts from a peer or takes from a GET_VALUE answer. Without a
// bound any peer could make each of the k closest peers keep up to a full
// 4 MiB message per key. The default, 64 KiB, is several times the largest
// real records (IPNS records are capped at 10 KiB by their spec; RSA-4096
// pk records are under 1 KiB) while keeping a stranger's cost to us small.
// Note that rust-libp2p peers read messages of at most 16 KiB by default.
// At most 4 MiB, the message limit of go and js peers. Default 64 KiB.
func MaxRecordSize(n int) Option {
	return func(c *config) error { c.values.maxRecordSize = n; return nil }
}

// DisableValues turns the values side off: PUT_VALUE and GET_VALUE
// requests are refused (stream reset) and PutValue, GetValue and
// SearchValue return routing.ErrNotSupported. For nodes that only route
// or only provide. Default: values enabled.
func DisableValues() Option {
	return func(c *config) error { c.values.disabled = true; return nil }
}

// Providers.

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
		c.providers.store = s
		return nil
	}
}

// ProvideValidity is how long a provider record stays valid after the
// provider's last announcement, in the built-in store; providers must
// announce again before it runs out. Default 48 h, as on Amino, where
// providers republish every 22 h.
func ProvideValidity(d time.Duration) Option {
	return func(c *config) error { c.providers.validity = d; return nil }
}

// ProviderAddrTTL is how long the built-in store keeps a provider's
// addresses. They go stale sooner than the record (peers move), so after
// this the record is served without addresses and finders look the peer
// up. Must not exceed ProvideValidity. Default 24 h, as on Amino.
func ProviderAddrTTL(d time.Duration) Option {
	return func(c *config) error { c.providers.addrTTL = d; return nil }
}

// MaxProvidersPerKey bounds the providers the built-in store keeps for one
// key, so announcements for one key cannot fill memory or the disk; once
// full, new providers are refused until records expire (renewals are
// always accepted). Default 100.
func MaxProvidersPerKey(n int) Option {
	return func(c *config) error { c.providers.maxPerKey = n; return nil }
}

// DisableProviders turns the providers side off: the node neither stores
// nor serves provider records (ADD_PROVIDER and GET_PROVIDERS requests get
// their stream reset), and Provide and FindProviders fail with
// ErrProvidersDisabled. For nodes that only route peers or values.
// Default: enabled.
func DisableProviders() Option {
	return func(c *config) error { c.providers.disabled = true; return nil }
}

// Reprovider.

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

// Limits on what strangers may cost us.

// MaxInboundStreams bounds the inbound streams served at once, over all
// peers. Each costs a goroutine and a read buffer until it goes idle for
// IdleStreamTimeout; past the bound new streams are reset at once. go
// and js peers keep one idle stream per peer they talk to, so a busy
// server holds about one per active requester. Default 4096.
func MaxInboundStreams(n int) Option {
	return func(c *config) error { c.limits.streamsTotal = n; return nil }
}

// MaxInboundStreamsPerPeer bounds the inbound streams one peer may hold
// open at once, so a single peer cannot use up MaxInboundStreams. Honest
// peers need one per request they have in flight to us; a lookup asks
// each peer once. Default 32.
func MaxInboundStreamsPerPeer(n int) Option {
	return func(c *config) error { c.limits.streamsPerPeer = n; return nil }
}

// IdleStreamTimeout closes inbound streams that carry no request for this
// long, so idle peers do not pin memory. Default 1 min.
func IdleStreamTimeout(d time.Duration) Option {
	return func(c *config) error { c.limits.idleStream = d; return nil }
}

// PeerRequestRate bounds the requests each peer may make: a token bucket
// per peer refilled at rate per second and holding up to burst. A request
// over the limit gets its stream reset, unanswered. The bucket outlives
// the peer's streams until it is full again, so opening a fresh stream
// per request does not get around it. rate 0 turns the limit off.
// Default 200 per second, bursts of 1000: a lookup asks a peer once, but a
// reprovide sweep sends one peer hundreds of ADD_PROVIDERs at once; one
// peer flooding still gets at most a few hundred answers a second.
func PeerRequestRate(rate float64, burst int) Option {
	return func(c *config) error {
		c.limits.peerRate = rate
		c.limits.peerBurst = burst
		return nil
	}
}

// MaxMessageSize bounds inbound messages, checked before allocating.
// Default 4 MiB, the limit of go and js peers.
func MaxMessageSize(n int) Option {
	return func(c *config) error { c.limits.maxMessageSize = n; return nil }
}

// MaxKeySize bounds the key of any inbound request; longer keys get the
// stream reset. Real keys are short: peer ids and multihashes are under
// 80 bytes, "/pk/" and "/ipns/" keys under 100. The bound stops a peer
// from making us hash and echo megabyte keys. At least 80. Default 1 KiB.
func MaxKeySize(n int) Option {
	return func(c *config) error { c.limits.maxKeySize = n; return nil }
}

// MaxAddrsPerPeer bounds the addresses sent per peer in responses, keeping
// responses small for peers with strict size limits (rust-libp2p accepts
// 16 KiB by default). Default 16.
func MaxAddrsPerPeer(n int) Option {
	return func(c *config) error { c.limits.maxAddrsPerPeer = n; return nil }
}

// MaxProvidersPerResponse bounds the providers sent in one GET_PROVIDERS
// answer, keeping answers small for peers with strict message limits
// (rust-libp2p reads at most 16 KiB by default); the most recently
// announced are sent. The store keeps up to MaxProvidersPerKey; finders
// ask each of the k closest peers, so a few per answer is enough. The
// handler never sends more than k (BucketSize) whatever this says.
// Default 20.
func MaxProvidersPerResponse(n int) Option {
	return func(c *config) error { c.limits.provsPerResp = n; return nil }
}

// Per-call options of GetValue, SearchValue and PutValue (routing.Option).

type quorumKey struct{}

// Quorum makes GetValue and SearchValue stop the lookup once n valid
// values were received (the node's own stored record counts as one), then
// return the best of them. It trades certainty of having the newest value
// for speed: IPNS reads use 16. n = 0 means a full lookup. Default: 0.
func Quorum(n int) routing.Option {
	return func(o *routing.Options) error {
		if n < 0 {
			return fmt.Errorf("%w: quorum %d < 0", ErrInvalidOption, n)
		}
		if o.Other == nil {
			o.Other = make(map[any]any)
		}
		o.Other[quorumKey{}] = n
		return nil
	}
}

type acceptedKey struct{}

// Accepted makes PutValue store in *n how many peers accepted the record,
// for callers that want to judge replication themselves (PutValue itself
// succeeds when at least one did). Default: not reported.
func Accepted(n *int) routing.Option {
	return func(o *routing.Options) error {
		if n == nil {
			return fmt.Errorf("%w: nil Accepted counter", ErrInvalidOption)
		}
		if o.Other == nil {
			o.Other = make(map[any]any)
		}
		o.Other[acceptedKey{}] = n
		return nil
	}
}

type onValueKey struct{}

// OnValue makes GetValue and SearchValue call f with each valid value the
// search receives and the peer it came from (the node's own id for its
// stored record), in the order they arrive, one call at a time, from the
// lookup's goroutines: f must return quickly and must not call the DHT.
// It shows where a key's copies live and which peers answer with stale
// ones; the chosen value is still GetValue's result. Default: none.
func OnValue(f func(from peer.ID, value []byte)) routing.Option {
	return func(o *routing.Options) error {
		if f == nil {
			return fmt.Errorf("%w: nil OnValue func", ErrInvalidOption)
		}
		if o.Other == nil {
			o.Other = make(map[any]any)
		}
		o.Other[onValueKey{}] = f
		return nil
	}
}

// Per-call option of ProvideManyReport and ProvideManyChan.

type provideProgressKey struct{}

// ProvideManyProgress makes ProvideManyReport and ProvideManyChan call f
// as the work advances: when keys are taken in, when a region's keys are
// placed (its lookup done, their records queued to its peers) or given
// up on, and when a batch of records has been written to a peer. Each
// call carries the totals so far; calls come one at a time, from the
// call's goroutines, so f must return quickly and must not call the DHT.
// It is what a progress bar needs (keys placed out of keys taken, regions,
// rate). Default: none.
func ProvideManyProgress(f func(ProvideProgress)) routing.Option {
	return func(o *routing.Options) error {
		if f == nil {
			return fmt.Errorf("%w: nil ProvideManyProgress func", ErrInvalidOption)
		}
		if o.Other == nil {
			o.Other = make(map[any]any)
		}
		o.Other[provideProgressKey{}] = f
		return nil
	}
}
