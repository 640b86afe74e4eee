package kad

import (
	"fmt"
	"time"

	record "github.com/libp2p/go-libp2p-record"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/routing"
)

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
		c.ext.values.validator = v
		c.ext.values.validatorSet = true
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
		c.ext.values.namespaces = append(c.ext.values.namespaces, nsValidator{ns: ns, v: v})
		return nil
	}
}

// MaxRecordAge is how long a stored record is served after it was
// received; the writer must put it again before then to keep it alive.
// Expired records are dropped when read and by a background sweep. It
// does not replace validity rules inside a record (an IPNS EOL). Default
// 48 h, as on the Amino network.
func MaxRecordAge(d time.Duration) Option {
	return func(c *config) error { c.ext.values.maxRecordAge = d; return nil }
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
	return func(c *config) error { c.ext.values.maxRecordSize = n; return nil }
}

// DisableValues turns the values side off: PUT_VALUE and GET_VALUE
// requests are refused (stream reset) and PutValue, GetValue and
// SearchValue return routing.ErrNotSupported. For nodes that only route
// or only provide. Default: values enabled.
func DisableValues() Option {
	return func(c *config) error { c.ext.values.disabled = true; return nil }
}

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
