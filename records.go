package kad

import (
	"context"
	"errors"
	"time"

	"github.com/ipfs/boxo/ipns"
	record "github.com/libp2p/go-libp2p-record"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/core/routing"
)

// ErrInvalidRecord is wrapped by PutValue's error when the record is
// refused before anything is sent: the validator rejects it, its
// namespace has no validator, or it is over MaxRecordSize.
var ErrInvalidRecord = errors.New("kad: invalid record")

// ErrNotStored is wrapped by PutValue's error when none of the closest
// peers accepted the record (it is still stored locally).
var ErrNotStored = errors.New("kad: no peer accepted the record")

const (
	// recordSweepInterval is how often expired records are swept out; reads
	// drop them anyway, the sweep only reclaims space.
	recordSweepInterval = time.Hour
	// recordSweepBatch bounds the deletions of one sweep step.
	recordSweepBatch = 256
)

// aminoPrefix is the protocol prefix of the public Amino DHT, where every
// peer validates the ipns namespace too.
const aminoPrefix protocol.ID = "/ipfs"

// buildValidator returns the validator to use, never sharing a map with
// the caller's options. The default is pk, plus ipns under the Amino
// prefix: there every go and js peer runs the IPNS validator, while a
// private network decides for itself which namespaces it serves. keys
// gives the IPNS validator the public keys that records do not embed.
func (v *valuesConfig) buildValidator(prefix protocol.ID, keys peerstore.KeyBook) record.Validator {
	var nv record.NamespacedValidator
	switch base := v.validator.(type) {
	case nil:
		nv = record.NamespacedValidator{"pk": record.PublicKeyValidator{}}
		if prefix == aminoPrefix {
			nv["ipns"] = ipns.Validator{KeyBook: keys}
		}
	case record.NamespacedValidator:
		nv = make(record.NamespacedValidator, len(base)+len(v.namespaces))
		for ns, val := range base {
			nv[ns] = val
		}
	default:
		return base
	}
	for _, n := range v.namespaces {
		nv[n.ns] = n.v
	}
	return nv
}

// Validator returns the record validator the DHT checks values with, as
// the Validator and NamespacedValidator options built it, so code that
// reads through several DHTs (package dual) can choose among their
// answers as each DHT would. It is nil when DisableValues is set.
func (d *DHT) Validator() record.Validator { return d.vals.validator }

// PutValue stores value under key on the k peers closest to key, and
// locally. The record is checked first (ErrInvalidRecord: nothing is
// sent), then the lookup runs and every closest peer is sent PUT_VALUE in
// parallel. It succeeds when at least one peer accepted (Accepted reports
// how many) and fails with ErrNotStored when none did. With
// routing.Offline it only stores locally. If the local store holds a
// record the validator prefers, it fails with *record.ErrBetterRecord.
func (d *DHT) PutValue(ctx context.Context, key string, value []byte, opts ...routing.Option) (err error) {
	ctx, span := d.tel.startSpan(ctx, "PutValue")
	defer func() { endSpan(span, err) }()
	return d.vals.put(ctx, key, value, opts)
}

// GetValue returns the best valid value stored under key: its own record
// and those of the peers met on a lookup for key are validated and
// compared with the validator's Select. The lookup runs to the end unless
// a Quorum is reached first. Afterwards the closest peers that answered
// with an older value or none are sent the best one in the background
// (repair). With routing.Offline only the local store is read. A key
// nobody holds gives an error wrapping routing.ErrNotFound.
func (d *DHT) GetValue(ctx context.Context, key string, opts ...routing.Option) (_ []byte, err error) {
	ctx, span := d.tel.startSpan(ctx, "GetValue")
	defer func() { endSpan(span, err) }()
	return d.vals.get(ctx, key, opts)
}

// SearchValue streams each better value for key as it is found: the first
// valid value, then every value the validator prefers to the last one
// sent, so the last value received is GetValue's answer. The channel is
// closed when the lookup ends (as GetValue's, Quorum included) or ctx is
// done; cancel ctx to stop reading early. Repair runs as for GetValue.
func (d *DHT) SearchValue(ctx context.Context, key string, opts ...routing.Option) (<-chan []byte, error) {
	return d.vals.search(ctx, key, opts)
}
