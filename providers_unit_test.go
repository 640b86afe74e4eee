package kad

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	leveldb "github.com/ipfs/go-ds-leveldb"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	mocknet "github.com/libp2p/go-libp2p/p2p/net/mock"
	ma "github.com/multiformats/go-multiaddr"
	mh "github.com/multiformats/go-multihash"
	"github.com/stretchr/testify/require"

	"github.com/kadlib/kad/internal/pb"
	"github.com/kadlib/kad/internal/wire"
)

func TestProviderOptionsValidate(t *testing.T) {
	custom := newMapProviders()
	cases := []struct {
		name string
		opts []Option
		ok   bool
	}{
		{"defaults", nil, true},
		{"custom store", []Option{ProviderStore(custom)}, true},
		{"tuned", []Option{ProvideValidity(time.Hour), ProviderAddrTTL(time.Minute), MaxProvidersPerKey(1)}, true},
		{"disabled", []Option{DisableProviders()}, true},
		{"nil store", []Option{ProviderStore(nil)}, false},
		{"zero validity", []Option{ProvideValidity(0)}, false},
		{"negative addr ttl", []Option{ProviderAddrTTL(-time.Second)}, false},
		{"addr ttl beyond validity", []Option{ProvideValidity(time.Hour), ProviderAddrTTL(2 * time.Hour)}, false},
		{"zero per key", []Option{MaxProvidersPerKey(0)}, false},
		{"store and disabled", []Option{ProviderStore(custom), DisableProviders()}, false},
	}
	mn := mocknet.New()
	t.Cleanup(func() { _ = mn.Close() })
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h, err := mn.GenPeer()
			require.NoError(t, err)
			d, err := New(context.Background(), h, tc.opts...)
			if tc.ok {
				require.NoError(t, err)
				require.NoError(t, d.Close())
			} else {
				require.ErrorIs(t, err, ErrInvalidOption)
			}
		})
	}
}

// The wire key of a CID is its multihash: CIDv0 and CIDv1 of one content
// share it, and multihashes longer than peers accept are refused.
func TestProviderKey(t *testing.T) {
	sha, err := mh.Sum([]byte("content"), mh.SHA2_256, -1)
	require.NoError(t, err)
	long, err := mh.Sum(make([]byte, 100), mh.IDENTITY, -1)
	require.NoError(t, err)
	cases := []struct {
		name string
		c    cid.Cid
		want []byte
		err  error
	}{
		{"v0", cid.NewCidV0(sha), sha, nil},
		{"v1 dag-pb", cid.NewCidV1(cid.DagProtobuf, sha), sha, nil},
		{"v1 raw", cid.NewCidV1(cid.Raw, sha), sha, nil},
		{"undefined", cid.Undef, nil, ErrInvalidCID},
		{"multihash over 80 bytes", cid.NewCidV1(cid.Raw, long), nil, ErrInvalidCID},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := providerKey(tc.c)
			require.ErrorIs(t, err, tc.err)
			require.Equal(t, tc.want, got)
		})
	}
}

// mapProviders is a custom ProviderRecordStore: a plain map.
type mapProviders struct {
	mu sync.Mutex
	m  map[string][]peer.AddrInfo
}

func newMapProviders() *mapProviders { return &mapProviders{m: make(map[string][]peer.AddrInfo)} }

func (s *mapProviders) AddProvider(_ context.Context, key []byte, prov peer.AddrInfo) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, ai := range s.m[string(key)] {
		if ai.ID == prov.ID {
			return nil
		}
	}
	s.m[string(key)] = append(s.m[string(key)], prov)
	return nil
}

func (s *mapProviders) GetProviders(_ context.Context, key []byte) ([]peer.AddrInfo, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]peer.AddrInfo(nil), s.m[string(key)]...), nil
}

// provPair is two or more linked server nodes on a mocknet, each knowing
// the others.
func provNodes(t *testing.T, mn mocknet.Mocknet, opts ...[]Option) []*DHT {
	t.Helper()
	ctx := context.Background()
	// Hosts connected and identified before the DHTs start (see
	// identifiedHosts).
	hs := addIdentifiedHosts(t, mn, len(opts))
	var out []*DHT
	for i, o := range opts {
		d, err := New(ctx, hs[i], append([]Option{Mode(ModeServer)}, o...)...)
		require.NoError(t, err)
		t.Cleanup(func() { _ = d.Close() })
		out = append(out, d)
	}
	for _, d := range out {
		for _, o := range out {
			if o != d {
				waitFor(t, 10*time.Second, "peers admitted", func() bool { return d.rt.Find(o.self) })
			}
		}
	}
	return out
}

func TestProvideLocalAndNoPeers(t *testing.T) {
	mn := mocknet.New()
	t.Cleanup(func() { _ = mn.Close() })
	h, err := mn.GenPeer()
	require.NoError(t, err)
	d, err := New(context.Background(), h, Mode(ModeServer))
	require.NoError(t, err)
	t.Cleanup(func() { _ = d.Close() })
	ctx := context.Background()
	c := provCID(t, rand.New(rand.NewPCG(1, 1)))

	require.NoError(t, d.Provide(ctx, c, false), "announce=false stores locally only")
	err = d.Provide(ctx, c, true)
	require.ErrorIs(t, err, ErrNoPeerReached)
	require.ErrorIs(t, err, ErrNoPeers)
	got, err := d.FindProviders(ctx, c, 0)
	require.NoError(t, err, "local providers are an answer even with no peer")
	require.Equal(t, []peer.ID{d.self}, provIDs(got))
	require.Equal(t, h.Addrs(), got[0].Addrs)

	require.ErrorIs(t, d.Provide(ctx, cid.Undef, false), ErrInvalidCID)
	_, err = d.FindProviders(ctx, cid.Undef, 0)
	require.ErrorIs(t, err, ErrInvalidCID)
	_, err = d.FindProviders(ctx, c, -1)
	require.Error(t, err)
	_, ok := <-d.FindProvidersAsync(ctx, cid.Undef, 0)
	require.False(t, ok, "a bad request closes the channel at once")

	require.NoError(t, d.Close())
	require.ErrorIs(t, d.Provide(ctx, c, false), ErrClosed)
	_, ok = <-d.FindProvidersAsync(ctx, c, 0)
	require.False(t, ok)
}

func TestDisableProvidersAndCustomStore(t *testing.T) {
	mn := mocknet.New()
	t.Cleanup(func() { _ = mn.Close() })
	custom := newMapProviders()
	nodes := provNodes(t, mn, []Option{DisableProviders()}, []Option{ProviderStore(custom)}, nil)
	off, cust, plain := nodes[0], nodes[1], nodes[2]
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := provCID(t, rand.New(rand.NewPCG(2, 2)))

	require.ErrorIs(t, off.Provide(ctx, c, true), ErrProvidersDisabled)
	_, err := off.FindProviders(ctx, c, 0)
	require.ErrorIs(t, err, ErrProvidersDisabled)

	// plain's announcement reaches cust (the disabled node resets it).
	require.NoError(t, plain.Provide(ctx, c, true))
	waitFor(t, 5*time.Second, "the custom store got the record", func() bool {
		got, _ := custom.GetProviders(ctx, c.Hash())
		return len(got) == 1 && got[0].ID == plain.self && len(got[0].Addrs) > 0
	})
	got, err := cust.FindProviders(ctx, c, 0)
	require.NoError(t, err)
	require.Equal(t, []peer.ID{plain.self}, provIDs(got))
}

// rawStream opens a kad stream from a to b outside any DHT, to send what a
// misbehaving peer would.
func rawStream(t *testing.T, a host.Host, b *DHT) (write func(*pb.Message), waitReset func()) {
	t.Helper()
	s, err := a.NewStream(context.Background(), b.self, b.protocol)
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Reset() })
	write = func(m *pb.Message) { require.NoError(t, wire.WriteMsg(s, m)) }
	waitReset = func() {
		_ = s.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err := io.ReadFull(s, make([]byte, 1))
		require.Error(t, err)
		require.NotErrorIs(t, err, io.EOF, "the request is rejected with a reset")
		var ne interface{ Timeout() bool }
		if errors.As(err, &ne) {
			require.False(t, ne.Timeout(), "the server resets instead of waiting")
		}
	}
	return write, waitReset
}

// An ADD_PROVIDER naming another peer, or naming the sender without an
// address, stores nothing; a valid one is stored with its addresses.
func TestAddProviderValidation(t *testing.T) {
	mn := mocknet.New()
	t.Cleanup(func() { _ = mn.Close() })
	nodes := provNodes(t, mn, nil, nil)
	srv, victim := nodes[0], nodes[1]
	attacker, err := mn.GenPeer()
	require.NoError(t, err)
	require.NoError(t, mn.LinkAll())
	ctx := context.Background()
	key := provCID(t, rand.New(rand.NewPCG(3, 3))).Hash()
	addr := ma.StringCast("/ip4/10.9.9.9/tcp/4001")
	entry := func(p peer.ID, addrs ...ma.Multiaddr) pb.Peer {
		e := pb.Peer{ID: []byte(p)}
		for _, a := range addrs {
			e.Addrs = append(e.Addrs, a.Bytes())
		}
		return e
	}
	cases := []struct {
		name string
		msg  *pb.Message
	}{
		{"provider is not the sender", &pb.Message{Type: pb.AddProvider, Key: key, ProviderPeers: []pb.Peer{entry(victim.self, addr)}}},
		{"sender without address", &pb.Message{Type: pb.AddProvider, Key: key, ProviderPeers: []pb.Peer{entry(attacker.ID())}}},
		{"garbage id", &pb.Message{Type: pb.AddProvider, Key: key, ProviderPeers: []pb.Peer{{ID: []byte("junk"), Addrs: [][]byte{addr.Bytes()}}}}},
		{"no entry", &pb.Message{Type: pb.AddProvider, Key: key}},
		{"key too long", &pb.Message{Type: pb.AddProvider, Key: make([]byte, 81), ProviderPeers: []pb.Peer{entry(attacker.ID(), addr)}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			write, waitReset := rawStream(t, attacker, srv)
			write(tc.msg)
			waitReset()
			got, err := srv.provs.store.GetProviders(ctx, key)
			require.NoError(t, err)
			require.Empty(t, got)
		})
	}

	t.Run("valid", func(t *testing.T) {
		write, _ := rawStream(t, attacker, srv)
		// A spoofed entry next to a valid one: only the valid one counts.
		write(&pb.Message{Type: pb.AddProvider, Key: key, ProviderPeers: []pb.Peer{entry(victim.self, addr), entry(attacker.ID(), addr)}})
		waitFor(t, 5*time.Second, "the valid entry is stored", func() bool {
			got, _ := srv.provs.store.GetProviders(ctx, key)
			return len(got) > 0
		})
		got, err := srv.provs.store.GetProviders(ctx, key)
		require.NoError(t, err)
		require.Equal(t, []peer.AddrInfo{{ID: attacker.ID(), Addrs: []ma.Multiaddr{addr}}}, got)
		require.Contains(t, srv.h.Peerstore().Addrs(attacker.ID()), addr, "provider addresses go to the peerstore")
	})
}

// Provider records written to a persistent datastore survive a restart of
// the node and are served to other peers afterwards.
func TestProvidersPersistAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	mn := mocknet.New()
	t.Cleanup(func() { _ = mn.Close() })
	c := provCID(t, rand.New(rand.NewPCG(4, 4)))

	store, err := leveldb.NewDatastore(dir, nil)
	require.NoError(t, err)
	nodes := provNodes(t, mn, []Option{Datastore(store)}, nil)
	holder, provider := nodes[0], nodes[1]
	require.NoError(t, provider.Provide(ctx, c, true))
	waitFor(t, 5*time.Second, "the holder stored the record", func() bool {
		got, _ := holder.provs.store.GetProviders(ctx, c.Hash())
		return len(got) == 1
	})
	holderHost := holder.h
	require.NoError(t, holder.Close())
	require.NoError(t, store.Close())

	// Restart: same identity, same directory, a fresh process state.
	store, err = leveldb.NewDatastore(dir, nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = store.Close() })
	restarted, err := New(ctx, holderHost, Mode(ModeServer), Datastore(store))
	require.NoError(t, err)
	t.Cleanup(func() { _ = restarted.Close() })
	got, err := restarted.provs.store.GetProviders(ctx, c.Hash())
	require.NoError(t, err)
	require.Equal(t, []peer.ID{provider.self}, provIDs(got))
	require.NotEmpty(t, got[0].Addrs)

	// A third node that never saw the provide finds it through the
	// restarted holder.
	h, err := mn.GenPeer()
	require.NoError(t, err)
	finder, err := New(ctx, h, Mode(ModeServer))
	require.NoError(t, err)
	t.Cleanup(func() { _ = finder.Close() })
	require.NoError(t, mn.LinkAll())
	_, err = mn.ConnectPeers(finder.self, restarted.self)
	require.NoError(t, err)
	waitFor(t, 10*time.Second, "finder admits the holder", func() bool { return finder.rt.Find(restarted.self) })
	got, err = finder.FindProviders(ctx, c, 0)
	require.NoError(t, err)
	require.Contains(t, provIDs(got), provider.self)
}
