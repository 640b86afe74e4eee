package main

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/control"
	ic "github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	"github.com/libp2p/go-libp2p/p2p/net/connmgr"
	"github.com/libp2p/go-libp2p/p2p/security/noise"
	libp2pquic "github.com/libp2p/go-libp2p/p2p/transport/quic"
	"github.com/libp2p/go-libp2p/p2p/transport/quicreuse"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
)

// Transports the benchmark can run on.
const (
	transportMock = "mocknet"
	transportTCP  = "tcp"
	transportQUIC = "quic"
)

// realNet is what the real-transport hosts of one network share: which
// node listens on which loopback port (to find a link's latency from an
// address) and the connection setup meter.
type realNet struct {
	lat   Latency
	mu    sync.RWMutex
	ports map[int]int // listening port -> node index
	setup setupMeter
}

func (rn *realNet) nodeAt(port int) (int, bool) {
	rn.mu.RLock()
	defer rn.mu.RUnlock()
	i, ok := rn.ports[port]
	return i, ok
}

// linkTo is the latency from node self to the node listening at addr
// ("host:port"), or 0 for an address of no node.
func (rn *realNet) linkTo(self int, port int) time.Duration {
	j, ok := rn.nodeAt(port)
	if !ok {
		return 0
	}
	return rn.lat.link(self, j)
}

// setupMeter measures connection setup: for every outbound connection,
// the time from the swarm's decision to dial an address
// (ConnectionGater.InterceptAddrDial) to the end of the upgrade
// (InterceptUpgraded): TCP connect (one round trip, see latDialer),
// security negotiation and Noise, muxer selection (inlined in Noise by
// go-libp2p), or the QUIC/TLS handshake. It excludes identify, which
// runs on the new connection afterwards.
type setupMeter struct {
	mu    sync.Mutex
	start map[[2]peer.ID]time.Time
	conns atomic.Int64 // outbound connections upgraded
	nanos atomic.Int64 // their setup times, summed
	// byNode counts each node's outbound connections, to attribute them
	// to the operation the node was running (never two at once).
	byNode []atomic.Int64
}

// gater is one host's ConnectionGater: it allows everything and feeds
// the meter.
type gater struct {
	m    *setupMeter
	self peer.ID
	i    int
}

func (g gater) InterceptPeerDial(peer.ID) bool { return true }

func (g gater) InterceptAddrDial(p peer.ID, _ ma.Multiaddr) bool {
	g.m.mu.Lock()
	if g.m.start == nil {
		g.m.start = map[[2]peer.ID]time.Time{}
	}
	g.m.start[[2]peer.ID{g.self, p}] = time.Now()
	g.m.mu.Unlock()
	return true
}

func (g gater) InterceptAccept(network.ConnMultiaddrs) bool { return true }

func (g gater) InterceptSecured(network.Direction, peer.ID, network.ConnMultiaddrs) bool {
	return true
}

func (g gater) InterceptUpgraded(c network.Conn) (bool, control.DisconnectReason) {
	if c.Stat().Direction != network.DirOutbound {
		return true, 0
	}
	k := [2]peer.ID{g.self, c.RemotePeer()}
	g.m.mu.Lock()
	t, ok := g.m.start[k]
	delete(g.m.start, k)
	g.m.mu.Unlock()
	if ok {
		g.m.byNode[g.i].Add(1)
		g.m.conns.Add(1)
		g.m.nanos.Add(int64(time.Since(t)))
	}
	return true, 0
}

// newRealHosts builds n go-libp2p hosts on 127.0.0.1 in this process:
// TCP with Noise and Yamux, or QUIC (TLS inside), each connection
// carrying its link's latency (latConn for TCP, latPacketConn for QUIC).
// Resource limits are off (every peer shares one IP); the connection
// manager is go-libp2p's default (160/192), which 100 nodes never reach,
// unless connHigh > 0 sets its watermarks (trimming 5 s after a
// connection opened, about once a second); see newConnManager.
func newRealHosts(impl Impl, keys []ic.PrivKey, lat Latency, tr string, connLow, connHigh int) (*testNet, error) {
	// The tcp transport sets keepalives through a type assertion that the
	// wrapped connection does not pass, and logs an error per connection;
	// latDialer sets them on the socket instead. go-libp2p's loggers read
	// GOLOG_LOG_LEVEL at their first message.
	quiet := "tcp-tpt=ERROR+4"
	if v := os.Getenv("GOLOG_LOG_LEVEL"); !strings.Contains(v, quiet) {
		if v != "" {
			quiet = v + "," + quiet
		}
		_ = os.Setenv("GOLOG_LOG_LEVEL", quiet)
	}
	rn := &realNet{lat: lat, ports: map[int]int{}}
	rn.setup.byNode = make([]atomic.Int64, len(keys))
	tn := &testNet{impl: impl, real: rn, transport: tr, dead: make([]bool, len(keys)), index: make(map[peer.ID]int)}
	for i, sk := range keys {
		id, err := peer.IDFromPrivateKey(sk)
		if err != nil {
			return nil, err
		}
		opts := []libp2p.Option{
			libp2p.Identity(sk),
			libp2p.NoTransports,
			libp2p.ResourceManager(&network.NullResourceManager{}),
			libp2p.ConnectionGater(gater{m: &rn.setup, self: id, i: i}),
			libp2p.DisableRelay(),
			libp2p.DisableMetrics(),
			libp2p.DisableIdentifyAddressDiscovery(),
		}
		cm, err := newConnManager(lat.Seed, i, connLow, connHigh)
		if err != nil {
			return nil, fmt.Errorf("host %d: connection manager: %w", i, err)
		}
		opts = append(opts, libp2p.ConnectionManager(cm))
		switch tr {
		case transportTCP:
			opts = append(opts,
				libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"),
				libp2p.Transport(tcp.NewTCPTransport, tcp.DisableReuseport(), tcp.WithDialerForAddr(func(raddr ma.Multiaddr) (tcp.ContextDialer, error) {
					port, err := raddr.ValueForProtocol(ma.P_TCP)
					if err != nil {
						return nil, err
					}
					p, _ := strconv.Atoi(port)
					return latDialer{d: rn.linkTo(i, p)}, nil
				})),
				libp2p.Security(noise.ID, noise.New),
				libp2p.Muxer(yamux.ID, yamux.DefaultTransport),
			)
		case transportQUIC:
			opts = append(opts,
				libp2p.ListenAddrStrings("/ip4/127.0.0.1/udp/0/quic-v1"),
				libp2p.Transport(libp2pquic.NewTransport),
				libp2p.QUICReuse(quicreuse.NewConnManager, quicreuse.OverrideListenUDP(func(network string, laddr *net.UDPAddr) (net.PacketConn, error) {
					c, err := net.ListenUDP(network, laddr)
					if err != nil {
						return nil, err
					}
					return &latPacketConn{PacketConn: c, delay: func(to net.Addr) time.Duration {
						if ua, ok := to.(*net.UDPAddr); ok {
							return rn.linkTo(i, ua.Port)
						}
						return 0
					}}, nil
				})),
			)
		default:
			return nil, fmt.Errorf("unknown transport %q", tr)
		}
		h, err := libp2p.New(opts...)
		if err != nil {
			tn.close()
			return nil, fmt.Errorf("host %d: %w", i, err)
		}
		for _, a := range h.Addrs() {
			if _, s, err := manet.DialArgs(a); err == nil {
				if _, port, err := net.SplitHostPort(s); err == nil {
					p, _ := strconv.Atoi(port)
					rn.mu.Lock()
					rn.ports[p] = i
					rn.mu.Unlock()
				}
			}
		}
		tn.hosts = append(tn.hosts, h)
		tn.index[h.ID()] = len(tn.ids)
		tn.ids = append(tn.ids, h.ID())
	}
	return tn, nil
}

// newConnManager is host i's connection manager: go-libp2p's default
// (160/192 connections, a minute's grace for new ones, a trim check every
// 10 s), or with connHigh > 0 the watermarks given, a 5 s grace and a
// check every second. The check period is spread by up to 10 % either way
// per host (from seed): each manager ticks from its host's creation, and
// hundreds of hosts built within a second would otherwise trim in step,
// every node that is over its high watermark closing dozens of
// connections at the same moment, network-wide, every period (a burst of
// slow connection setups that lands in whichever phase is running). On
// a real network the nodes' tickers are unrelated; here they drift apart
// during setup.
func newConnManager(seed uint64, i, connLow, connHigh int) (*connmgr.BasicConnMgr, error) {
	low, high, grace, period := 160, 192, time.Minute, 10*time.Second
	if connHigh > 0 {
		low, high, grace, period = connLow, connHigh, 5*time.Second, time.Second
	}
	spread := time.Duration(mix(seed^mix(uint64(i)|1<<40)) % uint64(period/5))
	return connmgr.NewConnManager(low, high, connmgr.WithGracePeriod(grace), connmgr.WithSilencePeriod(period*9/10+spread))
}

// latPacketConn delays every outgoing datagram by the one-way latency to
// its destination. Both ends of a QUIC connection send from their
// listening sockets (quicreuse), so each direction gets its link's
// latency once. Datagrams to one destination leave in order.
//
// It embeds only net.PacketConn, so quic-go sees a plain packet conn and
// sends through WriteTo (no GSO or ECN through WriteMsgUDP). It passes on
// the socket's buffer sizing, which quic-go uses to raise the receive
// buffer, capped at udpBuffer.
type latPacketConn struct {
	net.PacketConn
	delay func(net.Addr) time.Duration
}

// udpBuffer caps the socket buffers quic-go asks for (7 MiB). With the
// kernel's default here (208 KiB) a few hundred hosts on two cores
// overflow their receive buffers and the kernel drops datagrams: about
// one in six in a 300-node run (RcvbufErrors in /proc/net/snmp, which the
// report gives per implementation). With quic-go's full size nothing is
// dropped but a socket can queue seconds of traffic behind a busy reader,
// and a joining node's requests time out. 1 MiB (the kernel doubles it)
// is a few hundred milliseconds of queue at most.
const udpBuffer = 1 << 20

// SetReadBuffer sets the socket's receive buffer, at most udpBuffer.
func (c *latPacketConn) SetReadBuffer(n int) error {
	u, ok := c.PacketConn.(*net.UDPConn)
	if !ok {
		return fmt.Errorf("not a UDP socket: %T", c.PacketConn)
	}
	return u.SetReadBuffer(min(n, udpBuffer))
}

// SetWriteBuffer sets the socket's send buffer, at most udpBuffer.
func (c *latPacketConn) SetWriteBuffer(n int) error {
	u, ok := c.PacketConn.(*net.UDPConn)
	if !ok {
		return fmt.Errorf("not a UDP socket: %T", c.PacketConn)
	}
	return u.SetWriteBuffer(min(n, udpBuffer))
}

func (c *latPacketConn) WriteTo(p []byte, addr net.Addr) (int, error) {
	d := c.delay(addr)
	if d <= 0 {
		return c.PacketConn.WriteTo(p, addr)
	}
	b := append([]byte(nil), p...)
	time.AfterFunc(d, func() { _, _ = c.PacketConn.WriteTo(b, addr) })
	return len(p), nil
}

// nodeConns is how many outbound connections node i has opened so far.
func (tn *testNet) nodeConns(i int) int64 {
	if tn.real == nil {
		return 0
	}
	return tn.real.setup.byNode[i].Load()
}

// connSetup is the meter's totals, to take differences over a phase.
func (tn *testNet) connSetup() (conns int64, total time.Duration) {
	if tn.real == nil {
		return 0, 0
	}
	return tn.real.setup.conns.Load(), time.Duration(tn.real.setup.nanos.Load())
}
