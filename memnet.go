package kad

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/host/peerstore/pstoremem"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/kadlib/kad/internal/pb"
)

// memNetwork runs real kad nodes (newNode, every component as in
// production) over an in-memory network instead of libp2p hosts, so that
// multi-node behaviour can be tested in virtual time (testing/synctest):
// every wait here is a timer, nothing touches a socket, and a node leaves
// no goroutine behind once closed.
//
// What it models: a one-way latency per link (seeded, symmetric); dials
// that cost nothing but need an address of the peer, as a swarm does;
// connections, made by the first exchange between two peers or by
// connect, and dropped when a node stops; identify on every new
// connection (each side learns the other's address and, if the other
// serves, its protocol, and considers it for its table); and a peer that
// is stopped, unknown or not serving, which fails a request after
// failDelay. Messages cross as their wire encoding, so sender and receiver
// never share memory and the receiver's size limit applies.
//
// What it does not: stream limits and idle-stream timeouts (they belong
// to the libp2p carrier, handleStream, and are tested on mocknet),
// connection trimming, protocol changes after identify (a node whose mode
// changes is not re-identified; connect it again), and reachability
// events (a ModeAuto node stays a client).
type memNetwork struct {
	seed uint64
	// failDelay is how long a request to a peer that is stopped, unknown
	// or not serving takes to fail; the latency bound unless set.
	failDelay time.Duration
	// dialDelay is how long opening a new connection takes before the
	// first message leaves: a real transport's handshake (three round
	// trips for TCP with Noise). The node is not connected meanwhile. 0
	// unless set; a dial that fails waits it too.
	dialDelay time.Duration

	mu             sync.Mutex
	latMin, latMax time.Duration // setLatency
	rng            *rand.ChaCha8 // identities, drawn in the order nodes are added
	port           int           // the last fake TCP port handed out
	nodes          map[peer.ID]*memNode
	// conns holds each connection under both its ends, so a node's
	// connections are found without scanning everyone's (a stop at
	// 10,000 nodes).
	conns map[peer.ID]map[peer.ID]struct{}
}

// link records a connection between a and b. Under n.mu.
func (n *memNetwork) link(a, b peer.ID) {
	for _, e := range [2][2]peer.ID{{a, b}, {b, a}} {
		m := n.conns[e[0]]
		if m == nil {
			m = make(map[peer.ID]struct{})
			n.conns[e[0]] = m
		}
		m[e[1]] = struct{}{}
	}
}

// linked reports whether a and b are connected. Under n.mu.
func (n *memNetwork) linked(a, b peer.ID) bool {
	_, ok := n.conns[a][b]
	return ok
}

// memNode is one node of a memNetwork: its identity, its own peerstore
// and the DHT running on it.
type memNode struct {
	id      peer.ID
	key     crypto.PrivKey
	addr    ma.Multiaddr
	ps      peerstore.Peerstore
	d       *DHT
	stopped bool // under memNetwork.mu
}

// newMemNetwork returns an empty network whose links have a one-way
// latency drawn, per link and reproducibly from seed, from
// [latencyMin, latencyMax]; equal bounds give every link the same.
func newMemNetwork(seed uint64, latencyMin, latencyMax time.Duration) *memNetwork {
	latencyMax = max(latencyMax, latencyMin)
	var s [32]byte
	binary.LittleEndian.PutUint64(s[:], seed)
	return &memNetwork{
		seed:      seed,
		latMin:    latencyMin,
		latMax:    latencyMax,
		failDelay: latencyMax,
		rng:       rand.NewChaCha8(s),
		port:      4000,
		nodes:     make(map[peer.ID]*memNode),
		conns:     make(map[peer.ID]map[peer.ID]struct{}),
	}
}

// latency is the one-way latency of the link between a and b: a function
// of the seed and the pair alone, so it does not depend on which of the
// two spoke first.
func (n *memNetwork) latency(a, b peer.ID) time.Duration {
	n.mu.Lock()
	latMin, latMax := n.latMin, n.latMax
	n.mu.Unlock()
	if latMax <= latMin {
		return latMin
	}
	if b < a {
		a, b = b, a
	}
	h := fnv.New64a()
	var s [8]byte
	binary.LittleEndian.PutUint64(s[:], n.seed)
	_, _ = h.Write(s[:])
	_, _ = h.Write([]byte(a))
	_, _ = h.Write([]byte(b))
	return latMin + time.Duration(h.Sum64()%uint64(latMax-latMin+1))
}

// setLatency changes the bounds of every link's latency from now on, as
// newMemNetwork's do.
func (n *memNetwork) setLatency(latencyMin, latencyMax time.Duration) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.latMin, n.latMax = latencyMin, max(latencyMax, latencyMin)
}

// addNode builds a node with opts on a fresh identity (drawn from the
// network's seed) and address, as New would on a host; ModeServer and
// ModeAutoServer nodes serve at once. It is connected to nobody: use
// connect, or give it BootstrapPeers (memInfo) and call Bootstrap.
func (n *memNetwork) addNode(opts ...Option) (*DHT, error) {
	n.mu.Lock()
	key, _, err := crypto.GenerateEd25519Key(n.rng)
	n.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("kad: memnet: identity: %w", err)
	}
	return n.addNodeWithKey(key, opts...)
}

// addNodeWithKey is addNode with the identity given (ids ground for a
// position, in the simulator's Sybil scenario) and a fresh address.
func (n *memNetwork) addNodeWithKey(key crypto.PrivKey, opts ...Option) (*DHT, error) {
	n.mu.Lock()
	n.port++
	port := n.port
	n.mu.Unlock()
	addr, err := ma.NewMultiaddr(fmt.Sprintf("/ip4/127.0.0.1/tcp/%d", port))
	if err != nil {
		return nil, fmt.Errorf("kad: memnet: address: %w", err)
	}
	return n.start(key, addr, opts)
}

// start runs a node with identity key at addr.
func (n *memNetwork) start(key crypto.PrivKey, addr ma.Multiaddr, opts []Option) (*DHT, error) {
	cfg, err := buildConfig(opts)
	if err != nil {
		return nil, err
	}
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("kad: memnet: identity: %w", err)
	}
	n.mu.Lock()
	if old, ok := n.nodes[id]; ok && !old.stopped {
		n.mu.Unlock()
		return nil, fmt.Errorf("kad: memnet: %s is running already", id)
	}
	n.mu.Unlock()
	ps, err := pstoremem.NewPeerstore()
	if err != nil {
		return nil, fmt.Errorf("kad: memnet: peerstore: %w", err)
	}
	mps := &memPeerstore{Peerstore: ps, net: n, serving: make(map[peer.ID]protocol.ID)}
	node := &memNode{id: id, key: key, addr: addr, ps: mps}
	env := nodeEnv{
		self:      id,
		msgr:      &memMessenger{net: n, node: node, self: id, timeout: cfg.node.requestTimeout, maxMsg: cfg.limits.maxMessageSize},
		ps:        mps,
		selfAddrs: func() []ma.Multiaddr { return []ma.Multiaddr{addr} },
		close:     ps.Close,
	}
	d, err := newNode(cfg, env)
	if err != nil {
		return nil, errors.Join(err, ps.Close())
	}
	node.d = d
	n.mu.Lock()
	n.nodes[id] = node
	n.mu.Unlock()
	switch cfg.node.mode {
	case ModeServer, ModeAutoServer:
		d.setServing(true)
	}
	return d, nil
}

// memPeerstore is a node's peerstore on a memNetwork: pstoremem's, but
// for the protocols identify reports, which a node here only needs to
// know of one (whether a peer serves the DHT): a set instead of
// pstoremem's map per peer, which was a fifth of a 1,000-node
// simulation's heap.
//
// It also stores a peer's own address as the network's one copy rather
// than the copy each message decoded: thousands of nodes each keeping the
// same addresses of the same peers were another fifth.
type memPeerstore struct {
	peerstore.Peerstore
	net     *memNetwork
	mu      sync.Mutex
	serving map[peer.ID]protocol.ID
}

func (m *memPeerstore) AddAddrs(p peer.ID, addrs []ma.Multiaddr, ttl time.Duration) {
	if own := m.net.addrOf(p); own != nil {
		for i, a := range addrs {
			if a.Equal(own) {
				addrs = slices.Clone(addrs)
				addrs[i] = own
				break
			}
		}
	}
	m.Peerstore.AddAddrs(p, addrs, ttl)
}

func (m *memPeerstore) AddAddr(p peer.ID, addr ma.Multiaddr, ttl time.Duration) {
	m.AddAddrs(p, []ma.Multiaddr{addr}, ttl)
}

func (m *memPeerstore) AddProtocols(p peer.ID, protos ...protocol.ID) error {
	if len(protos) != 1 {
		return fmt.Errorf("kad: memnet: %d protocols: the in-memory peerstore keeps one", len(protos))
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.serving[p] = protos[0]
	return nil
}

func (m *memPeerstore) SetProtocols(p peer.ID, protos ...protocol.ID) error {
	m.mu.Lock()
	delete(m.serving, p)
	m.mu.Unlock()
	if len(protos) == 0 {
		return nil
	}
	return m.AddProtocols(p, protos...)
}

func (m *memPeerstore) RemoveProtocols(p peer.ID, protos ...protocol.ID) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if slices.Contains(protos, m.serving[p]) {
		delete(m.serving, p)
	}
	return nil
}

func (m *memPeerstore) GetProtocols(p peer.ID) ([]protocol.ID, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if proto, ok := m.serving[p]; ok {
		return []protocol.ID{proto}, nil
	}
	return nil, nil
}

func (m *memPeerstore) SupportsProtocols(p peer.ID, protos ...protocol.ID) ([]protocol.ID, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if proto, ok := m.serving[p]; ok && slices.Contains(protos, proto) {
		return []protocol.ID{proto}, nil
	}
	return nil, nil
}

func (m *memPeerstore) FirstSupportedProtocol(p peer.ID, protos ...protocol.ID) (protocol.ID, error) {
	got, err := m.SupportsProtocols(p, protos...)
	if len(got) == 0 {
		return "", err
	}
	return got[0], err
}

func (m *memPeerstore) RemovePeer(p peer.ID) {
	m.mu.Lock()
	delete(m.serving, p)
	m.mu.Unlock()
	m.Peerstore.RemovePeer(p)
}

// memInfo is d's identity and address, for BootstrapPeers or addPeer.
func memInfo(d *DHT) peer.AddrInfo { return peer.AddrInfo{ID: d.self, Addrs: d.selfAddrs()} }

// running reports whether node takes messages. Under n.mu.
func (n *memNetwork) running(node *memNode) bool {
	return node != nil && node.d != nil && !node.stopped && !node.d.own.isClosed()
}

// connect connects a and b, as two hosts dialling each other would, and
// runs identify both ways: each learns the other's address and, if the
// other serves, its protocol, and considers it for its table.
func (n *memNetwork) connect(a, b *DHT) error {
	n.mu.Lock()
	na, nb := n.nodes[a.self], n.nodes[b.self]
	if !n.running(na) || !n.running(nb) {
		n.mu.Unlock()
		return fmt.Errorf("kad: memnet: connect %s and %s: not both running", a.self, b.self)
	}
	n.link(a.self, b.self)
	n.mu.Unlock()
	n.identify(na, nb)
	return nil
}

// identify tells each of a and b what identify would on a new connection.
func (n *memNetwork) identify(a, b *memNode) {
	learn := func(x, y *memNode) {
		x.ps.AddAddrs(y.id, []ma.Multiaddr{y.addr}, peerstore.ConnectedAddrTTL)
		if y.d.Mode() == ModeServer {
			_ = x.ps.AddProtocols(y.id, y.d.protocol)
		} else {
			_ = x.ps.RemoveProtocols(y.id, y.d.protocol)
		}
		x.d.keeper.consider(y.id)
	}
	learn(a, b)
	learn(b, a)
}

// stop stops d abruptly, as a crash would: messages to it fail from now
// on, its connections drop (each peer is told, as a swarm would tell it
// of a disconnect), and it is closed.
func (n *memNetwork) stop(d *DHT) error { return n.halt(d, true) }

// vanish stops d as stop does, but its peers are not told that their
// connections dropped, as behind a partition before any keepalive
// notices: only requests that fail to reach d show them it is gone.
func (n *memNetwork) vanish(d *DHT) error { return n.halt(d, false) }

// halt is stop, telling d's peers of the dropped connections or not.
func (n *memNetwork) halt(d *DHT, tell bool) error {
	n.mu.Lock()
	node := n.nodes[d.self]
	if node == nil || node.d != d {
		n.mu.Unlock()
		return fmt.Errorf("kad: memnet: stop %s: not on this network", d.self)
	}
	node.stopped = true
	var peers []*memNode
	for other := range n.conns[d.self] {
		delete(n.conns[other], d.self)
		if o := n.nodes[other]; tell && n.running(o) {
			peers = append(peers, o)
		}
	}
	delete(n.conns, d.self)
	n.mu.Unlock()
	for _, o := range peers {
		o.ps.UpdateAddrs(d.self, peerstore.ConnectedAddrTTL, peerstore.RecentlyConnectedAddrTTL)
		o.d.keeper.peerDisconnected(d.self)
	}
	return d.Close()
}

// restart stops d if it runs and starts a node with its identity and
// address and opts: a process restarting, with a fresh peerstore and
// whatever it persisted (Datastore).
func (n *memNetwork) restart(d *DHT, opts ...Option) (*DHT, error) {
	n.mu.Lock()
	node := n.nodes[d.self]
	n.mu.Unlock()
	if node == nil || node.d != d {
		return nil, fmt.Errorf("kad: memnet: restart %s: not on this network", d.self)
	}
	if err := n.stop(d); err != nil {
		return nil, err
	}
	return n.start(node.key, node.addr, opts)
}

// close stops every node still running.
func (n *memNetwork) close() error {
	n.mu.Lock()
	var ds []*DHT
	for _, node := range n.nodes {
		if !node.stopped {
			ds = append(ds, node.d)
		}
	}
	n.mu.Unlock()
	var errs []error
	for _, d := range ds {
		errs = append(errs, n.stop(d))
	}
	return errors.Join(errs...)
}

// connected reports whether a and b have a connection.
func (n *memNetwork) connected(a, b peer.ID) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.linked(a, b)
}

// addrOf returns p's address if p is on the network.
func (n *memNetwork) addrOf(p peer.ID) ma.Multiaddr {
	n.mu.Lock()
	defer n.mu.Unlock()
	if node := n.nodes[p]; node != nil {
		return node.addr
	}
	return nil
}

// errMemUnreachable is a dial that fails: the peer is stopped, unknown,
// or we know no address of it.
var errMemUnreachable = errors.New("kad: memnet: peer unreachable")

// errMemNotServing is a peer that refuses the protocol.
var errMemNotServing = errors.New("kad: memnet: protocols not supported")

// open reaches to from src as a swarm would: over the connection if
// there is one, otherwise by dialling an address from's peerstore knows,
// which makes a connection (newConn). The target is returned even when it
// does not serve: the connection is made all the same.
func (n *memNetwork) open(src *memNode, to peer.ID) (target *memNode, newConn bool, err error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	from, dst := src.id, n.nodes[to]
	if !n.running(src) {
		return nil, false, ErrClosed
	}
	if !n.running(dst) {
		return nil, false, errMemUnreachable
	}
	if !n.linked(from, to) {
		known := false
		for _, a := range src.ps.Addrs(to) {
			if a.Equal(dst.addr) {
				known = true
				break
			}
		}
		if !known {
			return nil, false, errMemUnreachable
		}
		n.link(from, to)
		newConn = true
	}
	if dst.d.Mode() != ModeServer {
		return dst, newConn, errMemNotServing
	}
	return dst, newConn, nil
}

// handle delivers msgs, in order, to node's receive on a goroutine node
// owns (as its stream handler would run) and returns the answer to the
// last, or the first refusal. It gives up waiting when ctx ends; the
// handler finishes regardless, as a remote one would.
func (node *memNode) handle(ctx context.Context, from peer.ID, msgs []*pb.Message) (*pb.Message, error) {
	type result struct {
		resp *pb.Message
		err  error
	}
	d := node.d
	done := make(chan result, 1)
	if !d.own.spawn(func() {
		var r result
		for _, m := range msgs {
			in, err := memCopy(m, d.cfg.limits.maxMessageSize)
			if err != nil {
				r = result{nil, err}
				break
			}
			if r.resp, r.err = d.srv.receive(d.ctx, from, in); r.err != nil {
				break
			}
		}
		done <- r
	}) {
		return nil, network.ErrReset
	}
	select {
	case r := <-done:
		if r.err != nil {
			// The peer resets the stream; why is its business.
			return nil, network.ErrReset
		}
		return r.resp, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// memCopy is m as a receiver with a max-byte message limit reads it: its
// wire encoding decoded anew, so nothing is shared with the sender.
func memCopy(m *pb.Message, max int) (*pb.Message, error) {
	b := m.Marshal(nil)
	if len(b) > max {
		return nil, fmt.Errorf("kad: memnet: message of %d bytes over the limit of %d", len(b), max)
	}
	out := new(pb.Message)
	if err := out.Unmarshal(b); err != nil {
		return nil, err
	}
	return out, nil
}

// memSleep waits d or until ctx ends.
func memSleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// memMessenger is a node's messenger on a memNetwork.
type memMessenger struct {
	net     *memNetwork
	node    *memNode // the node it sends for
	self    peer.ID
	timeout time.Duration // the node's request timeout
	maxMsg  int           // the node's message size limit, for answers
}

func (m *memMessenger) connect(ctx context.Context, p peer.ID) error {
	ctx, cancel := context.WithTimeout(ctx, m.timeout)
	defer cancel()
	_, err := m.dial(ctx, p)
	return err
}

func (m *memMessenger) connected(p peer.ID) bool { return m.net.connected(m.self, p) }

func (m *memMessenger) connAddrs(p peer.ID) []ma.Multiaddr {
	if !m.connected(p) {
		return nil
	}
	if a := m.net.addrOf(p); a != nil {
		return []ma.Multiaddr{a}
	}
	return nil
}

// dial reaches p, or fails after the network's fail delay. A new
// connection runs identify first.
func (m *memMessenger) dial(ctx context.Context, p peer.ID) (*memNode, error) {
	if d := m.net.dialDelay; d > 0 && !m.connected(p) {
		if err := memSleep(ctx, d); err != nil {
			return nil, fmt.Errorf("open stream to %s: %w", p, err)
		}
	}
	target, newConn, err := m.net.open(m.node, p)
	if newConn {
		m.net.identify(m.node, target)
	}
	if err != nil {
		if werr := memSleep(ctx, m.net.failDelay); werr != nil {
			return nil, fmt.Errorf("open stream to %s: %w (%v)", p, werr, err)
		}
		return nil, fmt.Errorf("open stream to %s: %w", p, err)
	}
	return target, nil
}

// request sends req to p and returns its answer: one latency there, the
// handler, one latency back, all within the request timeout.
func (m *memMessenger) request(ctx context.Context, p peer.ID, req *pb.Message) (*pb.Message, error) {
	ctx, cancel := context.WithTimeout(ctx, m.timeout)
	defer cancel()
	target, err := m.dial(ctx, p)
	if err != nil {
		return nil, err
	}
	lat := m.net.latency(m.self, p)
	if err := memSleep(ctx, lat); err != nil {
		return nil, fmt.Errorf("request to %s: %w", p, err)
	}
	resp, err := target.handle(ctx, m.self, []*pb.Message{req})
	if err == nil && resp == nil {
		// The handler owes no answer: the asker waits for one in vain.
		<-ctx.Done()
		err = ctx.Err()
	}
	if ctx.Err() != nil {
		return nil, fmt.Errorf("request to %s: %w", p, ctx.Err())
	}
	// The answer, or the reset, travels back.
	if werr := memSleep(ctx, lat); werr != nil {
		return nil, fmt.Errorf("request to %s: %w", p, werr)
	}
	if err != nil {
		return nil, fmt.Errorf("request to %s: %w", p, err)
	}
	return memCopy(resp, m.maxMsg)
}

// sendOneWay delivers msgs to p as libp2pMessenger.sendOneWay does: all
// count as written once p is reached, and the call returns when p has
// handled them, a latency later, or when the request timeout passes (p
// counts as reached then). A refusal resets the stream, which counts as
// delivered, as it does on libp2p (a js peer resets either way).
func (m *memMessenger) sendOneWay(ctx context.Context, p peer.ID, msgs []*pb.Message, written func()) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, m.timeout)
	defer cancel()
	target, err := m.dial(ctx, p)
	if err != nil {
		return 0, err
	}
	n := len(msgs)
	if written != nil {
		written()
	}
	lat := m.net.latency(m.self, p)
	err = memSleep(ctx, lat)
	if err == nil {
		_, err = target.handle(ctx, m.self, msgs)
		if ctx.Err() == nil {
			err = memSleep(ctx, lat)
		}
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) || (err != nil && ctx.Err() == nil) {
		return n, nil
	}
	if err != nil {
		return n, fmt.Errorf("%s refused the messages: %w", p, err)
	}
	return n, nil
}
