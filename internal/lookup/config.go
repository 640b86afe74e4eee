package lookup

import (
	"errors"
	"fmt"

	"github.com/libp2p/go-libp2p/core/peer"
)

// Defaults used when a Config field is zero. They are the Amino (public IPFS
// DHT) values, so a lookup behaves like the peers we interoperate with.
const (
	DefaultK     = 20
	DefaultAlpha = 10
	DefaultBeta  = 3
	// DefaultFirstAlpha is the default of Config.FirstAlpha.
	DefaultFirstAlpha = 4
	// NearFactor scales a network's estimated distance to the K-th closest
	// peer of a key (kbucket.KthDistance) into the Near distance drivers
	// pass: a margin for the estimate's error, found on the simulator.
	NearFactor = 1.5
	// FirstNearFactor scales the same estimate into the FirstNear distance:
	// seeds within half the distance of the K-th closest are result
	// members even when the estimate is off by half, so asking them
	// before any answer wastes almost nothing. On the TCP benchmark at
	// 100 nodes 0.5 asked 0.7-1.0 more requests per lookup than none and
	// cut p50 by 7-16 ms and p95 by 16-28 ms, about as much as 1.0,
	// which asked 1.2-2.8 more (single runs under varying load).
	FirstNearFactor = 0.5
)

// ErrInvalidConfig is wrapped by every error Validate returns, so the option
// layer can report a bad lookup setting with errors.Is without string checks.
var ErrInvalidConfig = errors.New("lookup: invalid config")

// Config tunes a lookup. The zero value is usable: every zero field takes its
// default.
type Config struct {
	// K is how many results the lookup wants, and also how wide the window of
	// candidates it will query is: a peer outside the K closest non-failed
	// candidates is never asked. Default 20 (DefaultK).
	K int
	// Alpha caps the requests in flight, bounding the load one lookup puts on
	// the network and on the driver. Default 10 (DefaultAlpha).
	Alpha int
	// Beta is the resiliency: the lookup never ends while any of the Beta
	// closest non-failed candidates has not answered. Default 3
	// (DefaultBeta), lowered to K when K is smaller. Because a lookup also
	// waits for all of the K closest, Beta only matters as a floor today.
	Beta int
	// ConvergeAlpha caps the requests in flight while the lookup is still
	// converging, before the Beta closest candidates have answered; Alpha
	// applies after. Fewer requests while every answer may still bring
	// closer peers waste fewer of them on peers that turn out too far, at
	// the cost of more round trips. 0 means Alpha; at most Alpha.
	ConvergeAlpha int
	// FirstAlpha caps the requests in flight until the first answer
	// arrives. Until then the lookup knows only the seeds, which in a large
	// network are far from the target: the first answer usually brings
	// closer peers that make the rest of the seeds useless, so asking all
	// of them at once spends requests for nothing (on the simulator, 15 %
	// of a lookup's requests at 1000 nodes, for no gain in latency). A
	// failed request frees its slot for the next seed. 0 means
	// min(DefaultFirstAlpha, ConvergeAlpha); at most ConvergeAlpha.
	FirstAlpha int
	// Near is a distance to the target, as a kbucket.Fraction of the
	// keyspace, within which a candidate is probably one of the K closest
	// (see NearFactor): the lookup will have to hear from it before it ends
	// anyway. Once any peer answered, such a candidate is asked at once,
	// even while the lookup converges and beyond Alpha, up to NearAlpha
	// requests in flight: the lookup then ends a round trip sooner, for a
	// few more requests when the estimate was generous. 0 turns it off.
	Near float64
	// FirstNear is Near before the path's first answer: seeds within it
	// are asked at once, beside the FirstAlpha closest. Until an answer
	// comes the lookup knows nothing closer than its seeds, so a seed
	// sure to be among the K closest would be asked one round trip later
	// for nothing, and the peers it names heard of one round trip later
	// too. Drivers pass a fraction of Near's estimate (FirstNearFactor):
	// a seed that may or may not make the result waits for the first
	// answers, which tell. 0 (the default) turns it off.
	FirstNear float64
	// NearAlpha caps the requests in flight, near ones included. 0 means
	// max(Alpha, K); at least Alpha.
	NearAlpha int
	// Vouchers lets a lookup end without waiting for the answers of
	// candidates it must open a new connection to (Reachable reports
	// false when they are asked): such a candidate counts as answered
	// once this many distinct peers that answered the lookup (on its
	// path) reported a live connection to it. On a real transport a
	// handshake costs several round trips, so one unconnected peer among
	// the K closest would otherwise decide the lookup's latency; a peer
	// that other peers are connected to is alive. Answers still count
	// from any peer: this only ends the wait. 0 (the default) turns it
	// off: every peer of the result answered.
	Vouchers int
	// Reachable reports whether the driver can ask p without opening a
	// new connection. It is read when p is asked and only with Vouchers
	// set; nil means every peer is reachable (nothing is vouched for).
	Reachable func(p peer.ID) bool
	// Disjoint is the number of disjoint paths (S/Kademlia). With d > 1 the
	// seeds are dealt to d independent paths that never query a peer learned
	// on another path, so one malicious answer cannot steer every path.
	// Each path gets its share of Alpha. 0 or 1 means a single path.
	Disjoint int
}

// withDefaults returns a copy with zero fields set to their defaults; it never
// mutates the caller's Config.
func (c Config) withDefaults() Config {
	if c.K == 0 {
		c.K = DefaultK
	}
	if c.Alpha == 0 {
		c.Alpha = DefaultAlpha
	}
	if c.Beta == 0 {
		c.Beta = min(DefaultBeta, c.K)
	}
	if c.Disjoint == 0 {
		c.Disjoint = 1
	}
	if c.ConvergeAlpha == 0 {
		c.ConvergeAlpha = c.Alpha
	}
	if c.FirstAlpha == 0 {
		c.FirstAlpha = min(DefaultFirstAlpha, c.ConvergeAlpha)
	}
	if c.NearAlpha == 0 {
		c.NearAlpha = max(c.Alpha, c.K)
	}
	return c
}

// Validate lets the option layer reject a bad setting up front with a clear
// error, instead of New silently repairing it. Zero fields are valid (they
// mean "default"); the checks apply to the values after defaults.
func (c Config) Validate() error {
	d := c.withDefaults()
	switch {
	case d.K < 0:
		return fmt.Errorf("%w: K = %d, want > 0", ErrInvalidConfig, c.K)
	case d.Alpha < 0:
		return fmt.Errorf("%w: Alpha = %d, want > 0", ErrInvalidConfig, c.Alpha)
	case d.Beta < 0 || d.Beta > d.K:
		return fmt.Errorf("%w: Beta = %d, want 1..K (%d)", ErrInvalidConfig, c.Beta, d.K)
	case d.ConvergeAlpha < 0 || d.ConvergeAlpha > d.Alpha:
		return fmt.Errorf("%w: ConvergeAlpha = %d, want 0..Alpha (%d)", ErrInvalidConfig, c.ConvergeAlpha, d.Alpha)
	case d.Near < 0 || d.Near != d.Near:
		return fmt.Errorf("%w: Near = %v, want >= 0", ErrInvalidConfig, c.Near)
	case d.FirstNear < 0 || d.FirstNear != d.FirstNear:
		return fmt.Errorf("%w: FirstNear = %v, want >= 0", ErrInvalidConfig, c.FirstNear)
	case d.NearAlpha < d.Alpha:
		return fmt.Errorf("%w: NearAlpha = %d, want 0 or >= Alpha (%d)", ErrInvalidConfig, c.NearAlpha, d.Alpha)
	case d.FirstAlpha < 0 || d.FirstAlpha > d.ConvergeAlpha:
		return fmt.Errorf("%w: FirstAlpha = %d, want 0..ConvergeAlpha (%d)", ErrInvalidConfig, c.FirstAlpha, d.ConvergeAlpha)
	case d.Vouchers < 0:
		return fmt.Errorf("%w: Vouchers = %d, want >= 0", ErrInvalidConfig, c.Vouchers)
	case d.Disjoint < 0 || d.Disjoint > d.Alpha:
		return fmt.Errorf("%w: Disjoint = %d, want 0..Alpha (%d): each path needs at least one request in flight",
			ErrInvalidConfig, c.Disjoint, d.Alpha)
	}
	return nil
}

// normalized is what New runs on: defaults applied and every out-of-range
// value clamped, so New has no error path.
func (c Config) normalized() Config {
	if c.K < 0 {
		c.K = 0
	}
	if c.Alpha < 0 {
		c.Alpha = 0
	}
	if c.Beta < 0 {
		c.Beta = 0
	}
	if c.Disjoint < 0 {
		c.Disjoint = 0
	}
	if c.ConvergeAlpha < 0 {
		c.ConvergeAlpha = 0
	}
	if c.FirstAlpha < 0 {
		c.FirstAlpha = 0
	}
	if c.Near < 0 || c.Near != c.Near {
		c.Near = 0
	}
	if c.FirstNear < 0 || c.FirstNear != c.FirstNear {
		c.FirstNear = 0
	}
	if c.NearAlpha < 0 {
		c.NearAlpha = 0
	}
	if c.Vouchers < 0 {
		c.Vouchers = 0
	}
	c = c.withDefaults()
	c.NearAlpha = max(c.NearAlpha, c.Alpha)
	c.ConvergeAlpha = min(c.ConvergeAlpha, c.Alpha)
	c.FirstAlpha = min(c.FirstAlpha, c.ConvergeAlpha)
	c.Beta = min(c.Beta, c.K)
	c.Disjoint = min(c.Disjoint, c.Alpha)
	return c
}
