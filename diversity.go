package kad

import (
	"net"

	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
)

// diversityLimits are the PeerDiversity option's bounds.
type diversityLimits struct{ perTable, perBucket int }

// diversity counts table peers per IP group. It is guarded by the
// RoutingTable's lock.
type diversity struct {
	limits   diversityLimits
	group    map[peer.ID]string // group of each peer counted, "" = exempt
	perTable map[string]int
	perBkt   map[int]map[string]int
}

func newDiversity(l diversityLimits) *diversity {
	return &diversity{limits: l, group: map[peer.ID]string{}, perTable: map[string]int{}, perBkt: map[int]map[string]int{}}
}

// ipGroup returns the group of the first public IP address in addrs, or
// "" when there is none (the peer is exempt).
func ipGroup(addrs []ma.Multiaddr) string {
	for _, a := range addrs {
		if !manet.IsPublicAddr(a) {
			continue
		}
		ip, err := manet.ToIP(a)
		if err != nil {
			continue
		}
		if v4 := ip.To4(); v4 != nil {
			return "4:" + v4.Mask(net.CIDRMask(16, 32)).String()
		}
		return "6:" + ip.Mask(net.CIDRMask(48, 128)).String()
	}
	return ""
}

// allows reports whether a peer of group g may join bucket cpl.
func (dv *diversity) allows(g string, cpl int) bool {
	if g == "" {
		return true
	}
	return dv.perTable[g] < dv.limits.perTable && dv.perBkt[cpl][g] < dv.limits.perBucket
}

func (dv *diversity) added(p peer.ID, g string, cpl int) {
	dv.group[p] = g
	if g == "" {
		return
	}
	dv.perTable[g]++
	if dv.perBkt[cpl] == nil {
		dv.perBkt[cpl] = map[string]int{}
	}
	dv.perBkt[cpl][g]++
}

func (dv *diversity) removed(p peer.ID, cpl int) {
	g, ok := dv.group[p]
	if !ok {
		return
	}
	delete(dv.group, p)
	if g == "" {
		return
	}
	dv.perTable[g]--
	dv.perBkt[cpl][g]--
}
