package kad

import (
	"fmt"

	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
)

// aminoBootstrapAddrs are the well-known entry points of the public IPFS
// Amino DHT, as go-libp2p-kad-dht and kubo ship them: four peers behind
// the bootstrap.libp2p.io dnsaddr, plus one long-lived peer at a fixed IP
// address (over TCP and QUIC).
var aminoBootstrapAddrs = []string{
	"/dnsaddr/bootstrap.libp2p.io/p2p/QmNnooDu7bfjPFoTZYxMNLWUQJyrVwtbZg5gBMjTezGAJN",
	"/dnsaddr/bootstrap.libp2p.io/p2p/QmQCU2EcMqAqQPR2i9bChDtGNJchTbq5TbXJJ16u19uLTa",
	"/dnsaddr/bootstrap.libp2p.io/p2p/QmbLHAnMoJPWSCR5Zhtx6BHJX9KiKNN6tpvbUcqanj75Nb",
	"/dnsaddr/bootstrap.libp2p.io/p2p/QmcZf59bWwK5XFi76CZX8cbJ4BhTzzA3gU1ZjYZcYW3dwt",
	"/ip4/104.131.131.82/tcp/4001/p2p/QmaCpDMGvV2BGHeYERUEnRQAwe3N8SzbUtfsmvsqQLuvuJ",
	"/ip4/104.131.131.82/udp/4001/quic-v1/p2p/QmaCpDMGvV2BGHeYERUEnRQAwe3N8SzbUtfsmvsqQLuvuJ",
}

// AminoBootstrapPeers returns the public bootstrap peers of the IPFS Amino
// DHT, the network the default "/ipfs" protocol prefix joins. A node needs
// at least one peer it can reach to find any other, and these are the
// ones every IPFS implementation starts from. Pass them to New:
//
//	kad.New(ctx, h, kad.BootstrapPeers(kad.AminoBootstrapPeers()...))
//
// Most of them are /dnsaddr addresses, which the host resolves when it
// dials: use a host with a DNS resolver, as libp2p.New builds by default
// (a mocknet host cannot reach them). A private network with its own
// ProtocolPrefix has no use for them: they do not speak its protocol.
// Each call returns a new slice the caller may modify.
func AminoBootstrapPeers() []peer.AddrInfo {
	infos, err := parseP2pAddrs(aminoBootstrapAddrs)
	if err != nil {
		// The list is a constant that the tests parse.
		panic(err)
	}
	return infos
}

// parseP2pAddrs parses multiaddrs ending in /p2p/<id> into one AddrInfo
// per peer.
func parseP2pAddrs(ss []string) ([]peer.AddrInfo, error) {
	addrs := make([]ma.Multiaddr, 0, len(ss))
	for _, s := range ss {
		a, err := ma.NewMultiaddr(s)
		if err != nil {
			return nil, fmt.Errorf("kad: parse %q: %w", s, err)
		}
		addrs = append(addrs, a)
	}
	infos, err := peer.AddrInfosFromP2pAddrs(addrs...)
	if err != nil {
		return nil, fmt.Errorf("kad: peer addresses: %w", err)
	}
	return infos, nil
}
