package kad

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	ds "github.com/ipfs/go-datastore"
	dsq "github.com/ipfs/go-datastore/query"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	mocknet "github.com/libp2p/go-libp2p/p2p/net/mock"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/stretchr/testify/require"

	"github.com/kadlib/kad/internal/pb"
	"github.com/kadlib/kad/internal/wire"
)

// Test peers that speak the kad wire protocol but are not kad nodes: they
// answer however the test says, or not at all. They serve the hostile,
// adversarial and disjoint-path tests.

// amino is the protocol id of a DHT built with the default prefix.
const amino = protocol.ID("/ipfs/kad/1.0.0")

// answerFunc makes a fake server's answer to req; nil means never answer
// (the request is read and the stream left open until the asker gives up).
type answerFunc func(from peer.ID, req *pb.Message) *pb.Message

// fakeServer is a raw stream handler on a host, counting requests.
type fakeServer struct {
	h        host.Host
	answer   answerFunc
	requests atomic.Int64
}

// serveFake makes h answer kad requests with answer.
func serveFake(h host.Host, answer answerFunc) *fakeServer {
	f := &fakeServer{h: h, answer: answer}
	h.SetStreamHandler(amino, f.handle)
	return f
}

// handle serves one stream until the asker closes or resets it; a hanging
// fake keeps reading, so it never outlives the stream.
func (f *fakeServer) handle(s network.Stream) {
	from := s.Conn().RemotePeer()
	r := wire.NewReader(s, wire.DefaultMaxMessageSize)
	for {
		var req pb.Message
		if err := r.ReadMsg(&req); err != nil {
			_ = s.Reset()
			return
		}
		f.requests.Add(1)
		resp := f.answer(from, req.Clone())
		if resp == nil {
			continue
		}
		if err := wire.WriteMsg(s, resp); err != nil {
			_ = s.Reset()
			return
		}
	}
}

// entryOf is the wire entry of a host: its id and addresses.
func entryOf(h host.Host) pb.Peer {
	e := pb.Peer{ID: []byte(h.ID())}
	for _, a := range h.Addrs() {
		e.Addrs = append(e.Addrs, a.Bytes())
	}
	return e
}

// fakeEntry is a wire entry for a peer that does not exist, with a
// well-formed id and address.
func fakeEntry(r *rand.Rand) pb.Peer {
	id := seededPeer(r)
	a := ma.StringCast(fmt.Sprintf("/ip4/10.%d.%d.%d/tcp/4001", r.IntN(256), r.IntN(256), 1+r.IntN(254)))
	return pb.Peer{ID: []byte(id), Addrs: [][]byte{a.Bytes()}}
}

// seededPeer is a valid ed25519 peer id drawn from r.
func seededPeer(r *rand.Rand) peer.ID {
	var seed [32]byte
	for i := range seed {
		seed[i] = byte(r.Uint32())
	}
	sk, _, err := crypto.GenerateEd25519Key(&byteReader{b: seed[:]})
	if err != nil {
		panic(err)
	}
	id, err := peer.IDFromPrivateKey(sk)
	if err != nil {
		panic(err)
	}
	return id
}

// byteReader yields b, then zeros: a deterministic key source.
type byteReader struct{ b []byte }

func (r *byteReader) Read(p []byte) (int, error) {
	n := copy(p, r.b)
	r.b = r.b[n:]
	clear(p[n:])
	return len(p), nil
}

// reply is the answer a server gives to req with the given closer peers:
// the request's type and key echoed, as every implementation does.
func reply(req *pb.Message, closer []pb.Peer) *pb.Message {
	return &pb.Message{Type: req.Type, Key: req.Key, CloserPeers: closer}
}

// rawConn is a raw kad stream from an attacker host to a node.
type rawConn struct {
	t *testing.T
	s network.Stream
	r *wire.Reader
}

func openRaw(t *testing.T, from host.Host, to peer.ID) *rawConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := from.NewStream(ctx, to, amino)
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Reset() })
	return &rawConn{t: t, s: s, r: wire.NewReader(s, wire.DefaultMaxMessageSize)}
}

// writeBytes sends raw bytes: a frame, part of one, or garbage.
func (c *rawConn) writeBytes(b []byte) error {
	_, err := c.s.Write(b)
	return err
}

// ask sends a request and reads one answer, giving up after 10 s.
func (c *rawConn) ask(m *pb.Message) (*pb.Message, error) {
	if err := wire.WriteMsg(c.s, m); err != nil {
		return nil, err
	}
	// Mocknet streams ignore deadlines: a timer resets ours instead.
	var late atomic.Bool
	timer := time.AfterFunc(10*time.Second, func() { late.Store(true); _ = c.s.Reset() })
	defer timer.Stop()
	var resp pb.Message
	if err := c.r.ReadMsg(&resp); err != nil {
		if late.Load() {
			return nil, fmt.Errorf("no answer within 10s: %w", err)
		}
		return nil, err
	}
	return resp.Clone(), nil
}

// resetWithin reports whether the node reset the stream within d: a read
// ends in an error that is not a clean EOF, before our own timer fires.
func (c *rawConn) resetWithin(d time.Duration) error {
	var late atomic.Bool
	timer := time.AfterFunc(d, func() { late.Store(true); _ = c.s.Reset() })
	defer timer.Stop()
	_, err := io.ReadFull(c.s, make([]byte, 1))
	switch {
	case err == nil:
		return errors.New("the node answered")
	case errors.Is(err, io.EOF):
		return errors.New("the node closed the stream cleanly instead of resetting it")
	case late.Load():
		return fmt.Errorf("no reset within %v", d)
	}
	return nil
}

// frame is b with its length prefix.
func frame(b []byte) []byte {
	return append(binary.AppendUvarint(nil, uint64(len(b))), b...)
}

// snapshot is every key and value of a datastore, to prove nothing changed.
func snapshot(t testing.TB, d ds.Datastore) map[string]string {
	t.Helper()
	res, err := d.Query(context.Background(), dsq.Query{})
	require.NoError(t, err)
	all, err := res.Rest()
	require.NoError(t, err)
	out := make(map[string]string, len(all))
	for _, e := range all {
		out[e.Key] = string(e.Value)
	}
	return out
}

// mixedNet is a mocknet of honest kad servers and fake servers, the fakes
// spread among them, every node joined through a few earlier ones.
type mixedNet struct {
	mn     mocknet.Mocknet
	honest []*DHT
	fakes  []*fakeServer
	isFake map[peer.ID]bool
}

// mixedAnswer is a fake's answer in a mixedNet: it sees the network, so
// it can list other peers.
type mixedAnswer func(mx *mixedNet, self host.Host, from peer.ID, req *pb.Message) *pb.Message

// newMixedNet builds nHonest kad servers and nFake fake ones answering
// with answer. Honest nodes bootstrap, then look themselves up again so
// early nodes learn of late ones.
func newMixedNet(t testing.TB, nHonest, nFake int, seed uint64, answer mixedAnswer, opts ...Option) *mixedNet {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	r := rand.New(rand.NewPCG(seed, 1))
	mx := &mixedNet{mn: mocknet.New(), isFake: make(map[peer.ID]bool)}
	t.Cleanup(func() { _ = mx.mn.Close() })
	kinds := make([]bool, nHonest+nFake) // true: fake
	for i := range nFake {
		kinds[i] = true
	}
	// The first node is honest, so every join has an honest way in.
	r.Shuffle(len(kinds)-1, func(i, j int) { kinds[i+1], kinds[j+1] = kinds[j+1], kinds[i+1] })
	var infos []peer.AddrInfo
	for _, fake := range kinds {
		h, err := mx.mn.GenPeer()
		require.NoError(t, err)
		var boots []peer.AddrInfo
		for j := 0; j < 3 && j < len(infos); j++ {
			boots = append(boots, infos[r.IntN(len(infos))])
		}
		infos = append(infos, peer.AddrInfo{ID: h.ID(), Addrs: h.Addrs()})
		if fake {
			mx.isFake[h.ID()] = true
			mx.fakes = append(mx.fakes, serveFake(h, func(from peer.ID, req *pb.Message) *pb.Message {
				return answer(mx, h, from, req)
			}))
			continue
		}
		d, err := New(ctx, h, append([]Option{Mode(ModeServer), BootstrapPeers(boots...)}, opts...)...)
		require.NoError(t, err)
		t.Cleanup(func() { _ = d.Close() })
		mx.honest = append(mx.honest, d)
	}
	require.NoError(t, mx.mn.LinkAll())
	runAll(mx.honest[1:], 8, func(d *DHT) { _ = d.Bootstrap(ctx) })
	runAll(mx.honest, 8, func(d *DHT) { _, _ = d.GetClosestPeers(ctx, string(d.self)) })
	return mx
}

// runAll runs f on every node, at most par at a time, and waits.
func runAll(nodes []*DHT, par int, f func(d *DHT)) {
	sem := make(chan struct{}, par)
	var wg sync.WaitGroup
	for _, d := range nodes {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			f(d)
		}()
	}
	wg.Wait()
}

// fakeHosts returns the hosts of the fake servers.
func (mx *mixedNet) fakeHosts() []host.Host {
	out := make([]host.Host, len(mx.fakes))
	for i, f := range mx.fakes {
		out[i] = f.h
	}
	return out
}
