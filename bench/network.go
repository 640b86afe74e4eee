package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	ic "github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	mocknet "github.com/libp2p/go-libp2p/p2p/net/mock"
	ma "github.com/multiformats/go-multiaddr"
	"google.golang.org/protobuf/encoding/protowire"
)

// Latency is the per-link latency model: fixed, or drawn per link from
// [Min, Max] by a hash of the seed and the two nodes, so both
// implementations (and reruns) get the same network.
type Latency struct {
	Min, Max time.Duration
	Seed     uint64
}

func (l Latency) String() string {
	if l.Min == l.Max {
		return l.Min.String()
	}
	return fmt.Sprintf("random %v-%v", l.Min, l.Max)
}

// link is the one-way latency between nodes a and b.
func (l Latency) link(a, b int) time.Duration {
	if l.Max <= l.Min {
		return l.Min
	}
	if a > b {
		a, b = b, a
	}
	x := mix(l.Seed ^ mix(uint64(a)<<32|uint64(b)))
	return l.Min + time.Duration(x%uint64(l.Max-l.Min+1))
}

func mix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ x>>30) * 0xbf58476d1ce4e5b9
	x = (x ^ x>>27) * 0x94d049bb133111eb
	return x ^ x>>31
}

// identities derives n node keys from the seed: the same peer ids, hence
// the same keyspace, in every network built with that seed.
func identities(n int, seed uint64) ([]ic.PrivKey, error) {
	var s [32]byte
	binary.LittleEndian.PutUint64(s[:], seed)
	copy(s[8:], "kad-bench-identities")
	r := rand.NewChaCha8(s)
	keys := make([]ic.PrivKey, n)
	for i := range keys {
		sk, _, err := ic.GenerateEd25519Key(r)
		if err != nil {
			return nil, err
		}
		keys[i] = sk
	}
	return keys, nil
}

// counter counts DHT messages received by every node of a network.
type counter struct {
	msgs atomic.Int64
	// probes counts FIND_NODE requests for the receiver's own id: the
	// check both implementations make before admitting a newly connected
	// peer to their tables (and go-libp2p-kad-dht's liveness pings).
	probes atomic.Int64
}

// countingHost is the host each DHT gets: it wraps every stream handler
// the DHT registers so that inbound messages are counted by their length
// prefixes. Both implementations register their handler through
// SetStreamHandler, so the count is the same measurement for both: every
// request (and fire-and-forget ADD_PROVIDER) any server received.
type countingHost struct {
	host.Host
	c       *counter
	sendBuf bool
}

func (h *countingHost) SetStreamHandler(pid protocol.ID, handler network.StreamHandler) {
	h.Host.SetStreamHandler(pid, h.wrap(handler))
}

func (h *countingHost) SetStreamHandlerMatch(pid protocol.ID, m func(protocol.ID) bool, handler network.StreamHandler) {
	h.Host.SetStreamHandlerMatch(pid, m, h.wrap(handler))
}

func (h *countingHost) wrap(handler network.StreamHandler) network.StreamHandler {
	return func(s network.Stream) {
		var st network.Stream = s
		if h.sendBuf {
			st = newBufStream(s)
		}
		handler(&countingStream{Stream: st, c: h.c, self: []byte(s.Conn().LocalPeer())})
	}
}

// maxClassified bounds the frames buffered to be classified; requests
// are far smaller, and a larger frame is counted without a look inside.
const maxClassified = 4096

// countingStream parses the varint-length-prefixed frames flowing through
// Read, whatever buffer sizes the reader uses, counts each frame and tells
// admission probes from other requests.
type countingStream struct {
	network.Stream
	c     *counter
	self  []byte
	skip  uint64 // payload bytes of the current frame still to come
	vlen  uint64 // varint being read
	shift uint
	frame []byte // the current frame's bytes so far, if small enough
	keep  bool
}

func (s *countingStream) Read(p []byte) (int, error) {
	n, err := s.Stream.Read(p)
	b := p[:n]
	for len(b) > 0 {
		if s.skip > 0 {
			k := min(uint64(len(b)), s.skip)
			if s.keep {
				s.frame = append(s.frame, b[:k]...)
			}
			s.skip -= k
			b = b[k:]
			if s.skip == 0 && s.keep {
				s.classify()
			}
			continue
		}
		c := b[0]
		b = b[1:]
		s.vlen |= uint64(c&0x7f) << s.shift
		s.shift += 7
		if c&0x80 == 0 || s.shift > 63 {
			s.c.msgs.Add(1)
			s.skip, s.vlen, s.shift = s.vlen, 0, 0
			s.keep = s.skip > 0 && s.skip <= maxClassified
			s.frame = s.frame[:0]
		}
	}
	return n, err
}

// classify looks at a complete frame: a FIND_NODE (type 4) whose key is
// the receiver's own id is an admission or liveness probe.
func (s *countingStream) classify() {
	b := s.frame
	var typ uint64
	var key []byte
	for len(b) > 0 {
		num, wt, n := protowire.ConsumeTag(b)
		if n < 0 {
			return
		}
		b = b[n:]
		switch {
		case num == 1 && wt == protowire.VarintType:
			v, m := protowire.ConsumeVarint(b)
			if m < 0 {
				return
			}
			typ, b = v, b[m:]
		case num == 2 && wt == protowire.BytesType:
			v, m := protowire.ConsumeBytes(b)
			if m < 0 {
				return
			}
			key, b = v, b[m:]
		default:
			m := protowire.ConsumeFieldValue(num, wt, b)
			if m < 0 {
				return
			}
			b = b[m:]
		}
	}
	if typ == 4 && bytes.Equal(key, s.self) {
		s.c.probes.Add(1)
	}
}

// testNet is a mocknet of N nodes of one implementation.
type testNet struct {
	impl  Impl
	mn    mocknet.Mocknet
	hosts []host.Host
	nodes []Node
	ids   []peer.ID
	index map[peer.ID]int
	boots [][]peer.AddrInfo
	c     counter
	dead  []bool
	// sendBuf gives every DHT stream a send buffer (see bufStream).
	sendBuf bool
	// nodeCfg, if set, adjusts node i's configuration before it starts.
	nodeCfg func(i int, nc *nodeConfig)
	// transport is mocknet (mn set) or tcp / quic (real set).
	transport string
	real      *realNet
}

// newHosts builds the mocknet: n hosts with seeded identities, every pair
// linked with its latency. No DHT yet.
func newHosts(impl Impl, keys []ic.PrivKey, lat Latency) (*testNet, error) {
	tn := &testNet{impl: impl, mn: mocknet.New(), transport: transportMock, dead: make([]bool, len(keys)), index: make(map[peer.ID]int)}
	for i, sk := range keys {
		ip := make(net.IP, net.IPv6len)
		copy(ip, net.ParseIP("100::"))
		binary.BigEndian.PutUint32(ip[12:], uint32(i+1))
		addr, err := ma.NewMultiaddr(fmt.Sprintf("/ip6/%s/tcp/4242", ip))
		if err != nil {
			return nil, err
		}
		h, err := tn.mn.AddPeer(sk, addr)
		if err != nil {
			return nil, err
		}
		tn.hosts = append(tn.hosts, h)
		tn.index[h.ID()] = len(tn.ids)
		tn.ids = append(tn.ids, h.ID())
	}
	for i := range tn.hosts {
		for j := i + 1; j < len(tn.hosts); j++ {
			l, err := tn.mn.LinkPeers(tn.ids[i], tn.ids[j])
			if err != nil {
				return nil, err
			}
			l.SetOptions(mocknet.LinkOptions{Latency: lat.link(i, j)})
		}
	}
	return tn, nil
}

// chooseBoots picks, for node i, up to 3 distinct random earlier nodes.
func chooseBoots(n int, seed uint64) [][]int {
	r := rand.New(rand.NewPCG(seed, 0xb007))
	out := make([][]int, n)
	for i := 1; i < n; i++ {
		for j := 0; j < 3 && j < i; j++ {
			b := r.IntN(i)
			dup := false
			for _, x := range out[i] {
				dup = dup || x == b
			}
			if !dup {
				out[i] = append(out[i], b)
			}
		}
	}
	return out
}

// startDHTs creates one DHT per host and joins them, as newTestNet in the
// library's tests does: node i joins through its boots, a few joins at a
// time in waves of 16, then every node looks itself up once more so early
// nodes learn of late ones.
func (tn *testNet) startDHTs(ctx context.Context, bootIdx [][]int, refresh time.Duration) error {
	for i, h := range tn.hosts {
		var boots []peer.AddrInfo
		for _, b := range bootIdx[i] {
			boots = append(boots, peer.AddrInfo{ID: tn.ids[b], Addrs: tn.hosts[b].Addrs()})
		}
		nc := nodeConfig{Boots: boots, Refresh: refresh}
		if tn.nodeCfg != nil {
			tn.nodeCfg(i, &nc)
		}
		d, err := tn.impl.New(ctx, &countingHost{Host: h, c: &tn.c, sendBuf: tn.sendBuf}, nc)
		if err != nil {
			return fmt.Errorf("%s: new node %d: %w", tn.impl.Name, i, err)
		}
		tn.nodes = append(tn.nodes, d)
		tn.boots = append(tn.boots, boots)
	}
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	fail := func(err error) {
		mu.Lock()
		defer mu.Unlock()
		if firstErr == nil {
			firstErr = err
		}
	}
	for i, d := range tn.nodes {
		if i == 0 {
			continue
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			err := d.Join(ctx)
			if err != nil && ctx.Err() == nil {
				// Once more: on a loaded machine a join's lookup can run
				// out of time (a 1,000-node kad run lost 25 minutes to
				// one). Said on stderr, so a retried setup is seen.
				fmt.Fprintf(os.Stderr, "bench: %s: join node %d failed, retrying once: %v\n", tn.impl.Name, i, err)
				err = d.Join(ctx)
			}
			if err != nil {
				fail(fmt.Errorf("%s: join node %d: %w", tn.impl.Name, i, err))
			}
		}()
		if i%16 == 0 {
			wg.Wait()
		}
	}
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	for i, d := range tn.nodes {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			_, _, _ = d.GetClosestPeers(ctx, string(tn.ids[i]))
		}()
	}
	wg.Wait()
	return nil
}

// stop makes node i vanish at once: every link to it is cut, so dials
// fail, and its connections are closed under its peers, as a crashed
// process's are. Its DHT gets no chance to say goodbye; cut off from
// everyone, it runs on unseen until the network is torn down.
//
// On a real transport the node's host is closed: its connections go down
// under its peers and dials to its port are refused, as when a process
// crashes on a machine that stays up. Its DHT is left running on the
// closed host.
func (tn *testNet) stop(i int) {
	tn.dead[i] = true
	if tn.mn == nil {
		_ = tn.hosts[i].Close()
		return
	}
	for j := range tn.ids {
		if j != i {
			_ = tn.mn.UnlinkPeers(tn.ids[i], tn.ids[j])
		}
	}
	for _, p := range tn.hosts[i].Network().Peers() {
		_ = tn.hosts[i].Network().ClosePeer(p)
	}
}

// close stops every DHT and the mocknet.
func (tn *testNet) close() {
	var wg sync.WaitGroup
	for _, d := range tn.nodes {
		wg.Add(1)
		go func() { defer wg.Done(); _ = d.Close() }()
	}
	wg.Wait()
	if tn.mn != nil {
		_ = tn.mn.Close()
		return
	}
	for _, h := range tn.hosts {
		wg.Add(1)
		go func() { defer wg.Done(); _ = h.Close() }()
	}
	wg.Wait()
}
