package kad

import (
	"errors"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
)

// errFiltered refuses a bootstrap peer the address filter rejects.
var errFiltered = errors.New("refused by the address filter")

// AddressFilter restricts the peers the DHT uses to those whose addresses
// f accepts: only they enter the routing table, and only they are asked
// during lookups. It is how one host runs a DHT of the public internet
// and one of the local network side by side (package dual) without
// either leaking into the other.
//
// f sees, for a routing table candidate, the remote addresses of the
// host's live connections to it (so a LAN filter admits peers reached
// over the LAN, not public peers that merely list a private address), or
// the peer's addresses in the peerstore when it is not connected; for a
// peer a response lists, the addresses the response gave (the peerstore's
// when it gave none). Bootstrap peers are checked too, before they are
// dialled. f must be cheap and must not call the DHT.
//
// Answers to other peers are not filtered apart from that: their closer
// peers come from the routing table, so they pass f, while the exact
// target of a FIND_NODE is still listed whenever its addresses are known,
// as peers checking each other expect. go-libp2p-kad-dht's dual DHT also
// filters only what it admits and asks.
//
// Presets: PublicAddrs, PrivateAddrs and AnyAddrs. A nil f is an error.
// Default AnyAddrs: every peer is used.
func AddressFilter(f func(peer.AddrInfo) bool) Option {
	return func(c *config) error {
		c.table.addrFilter = f
		c.table.addrFilterSet = true
		return nil
	}
}

// PublicAddrs accepts a peer with at least one address reachable over
// the public internet (manet.IsPublicAddr). Relay addresses do not count:
// a relayed peer says nothing about its own reachability. It is the
// filter of the WAN side of a dual DHT.
func PublicAddrs(ai peer.AddrInfo) bool {
	for _, a := range ai.Addrs {
		if !isRelayAddr(a) && manet.IsPublicAddr(a) {
			return true
		}
	}
	return false
}

// PrivateAddrs accepts a peer with at least one private-range
// (manet.IsPrivateAddr) or loopback (manet.IsIPLoopback) address, not
// relayed. It is the filter of the LAN side of a dual DHT.
func PrivateAddrs(ai peer.AddrInfo) bool {
	for _, a := range ai.Addrs {
		if !isRelayAddr(a) && (manet.IsPrivateAddr(a) || manet.IsIPLoopback(a)) {
			return true
		}
	}
	return false
}

// AnyAddrs accepts every peer, whatever its addresses: the default.
func AnyAddrs(peer.AddrInfo) bool { return true }

func isRelayAddr(a ma.Multiaddr) bool {
	_, err := a.ValueForProtocol(ma.P_CIRCUIT)
	return err == nil
}

// addrFilter applies the AddressFilter setting: which peers may enter
// the table and which a lookup may ask.
type addrFilter struct {
	accept func(peer.AddrInfo) bool // nil: every peer
	msgr   messenger                // the addresses of live connections
	ps     peerstore.AddrBook       // the addresses of the others
}

// admissionAddrs returns what the address filter judges a table
// candidate by: the remote addresses of the live connections to p, or
// its peerstore addresses when there are none.
func (f *addrFilter) admissionAddrs(p peer.ID) peer.AddrInfo {
	ai := peer.AddrInfo{ID: p, Addrs: f.msgr.connAddrs(p)}
	if len(ai.Addrs) == 0 {
		ai.Addrs = f.ps.Addrs(p)
	}
	return ai
}

// admissible reports whether the address filter lets p into the table
// and into lookups as a seed.
func (f *addrFilter) admissible(p peer.ID) bool {
	return f.accept == nil || f.accept(f.admissionAddrs(p))
}

// queryable reports whether the address filter lets a lookup ask ai, a
// peer a response listed.
func (f *addrFilter) queryable(ai peer.AddrInfo) bool {
	if f.accept == nil {
		return true
	}
	if len(ai.Addrs) == 0 {
		ai.Addrs = f.ps.Addrs(ai.ID)
	}
	return f.accept(ai)
}

// candidates returns the ids of the peers of a response that a lookup
// may ask.
func (f *addrFilter) candidates(closer []peer.AddrInfo) []peer.ID {
	ids := make([]peer.ID, 0, len(closer))
	for _, ai := range closer {
		if f.queryable(ai) {
			ids = append(ids, ai.ID)
		}
	}
	return ids
}

// seedsFor filters a lookup's seeds, table peers, through the address
// filter: their addresses may have changed since they were admitted.
func (f *addrFilter) seeds(seeds []peer.ID) []peer.ID {
	if f.accept == nil {
		return seeds
	}
	out := seeds[:0:0]
	for _, p := range seeds {
		if f.admissible(p) {
			out = append(out, p)
		}
	}
	return out
}
