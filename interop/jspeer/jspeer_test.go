package jspeer_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/multiformats/go-multihash"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/kadlib/kad/interop/jspeer"
)

// jsDir is interop/js, seen from this package's folder.
const jsDir = "../js"

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// startPeers starts n js nodes in parallel and closes them when the test
// ends, logging their stderr if it failed.
func startPeers(t *testing.T, n int) []*jspeer.Peer {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	peers, err := jspeer.StartN(ctx, jsDir, n)
	require.NoError(t, err)
	jspeer.CloseAtEnd(t, peers)
	return peers
}

func sha256CID(t *testing.T, data string) cid.Cid {
	t.Helper()
	mh, err := multihash.Sum([]byte(data), multihash.SHA2_256, -1)
	require.NoError(t, err)
	return cid.NewCidV1(cid.Raw, mh)
}

func ids(infos []peer.AddrInfo) []peer.ID {
	out := make([]peer.ID, len(infos))
	for i, info := range infos {
		out[i] = info.ID
	}
	return out
}

func TestJSToJS(t *testing.T) {
	ps := startPeers(t, 3)
	a, b, c := ps[0], ps[1], ps[2]
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	for _, p := range ps {
		require.NotEmpty(t, p.Addrs)
		_, last := peer.SplitAddr(p.Addrs[0])
		require.Equal(t, p.ID, last, "ready addresses end in /p2p/<id>")
		require.NotEmpty(t, p.AddrInfo().Addrs)
	}

	// a - b - c: a and c know each other only through b.
	require.NoError(t, a.Connect(ctx, b.Addrs[0]))
	require.NoError(t, c.ConnectInfo(ctx, b.AddrInfo()))
	require.NoError(t, a.WaitForRoutingTable(ctx, b.ID))
	require.NoError(t, b.WaitForRoutingTable(ctx, a.ID, c.ID))
	require.NoError(t, c.WaitForRoutingTable(ctx, b.ID))

	t.Run("put/get", func(t *testing.T) {
		require.NoError(t, a.Put(ctx, "/v/hello", []byte("world")))
		got, err := b.Get(ctx, "/v/hello")
		require.NoError(t, err)
		require.Equal(t, "world", string(got))
		got, err = c.Get(ctx, "/v/hello")
		require.NoError(t, err)
		require.Equal(t, "world", string(got))
	})

	t.Run("binary value", func(t *testing.T) {
		value := []byte{0, 0xff, 0xfe, '\n', '"'}
		require.NoError(t, b.Put(ctx, "/v/binary", value))
		got, err := a.Get(ctx, "/v/binary")
		require.NoError(t, err)
		require.Equal(t, value, got)
	})

	t.Run("get missing", func(t *testing.T) {
		_, err := b.Get(ctx, "/v/nobody-stored-this")
		require.ErrorIs(t, err, jspeer.ErrNotFound)
	})

	t.Run("provide/findProviders", func(t *testing.T) {
		k := sha256CID(t, "provided by a")
		require.NoError(t, a.Provide(ctx, k))
		for _, p := range []*jspeer.Peer{b, c} {
			provs, err := p.FindProviders(ctx, k, 1)
			require.NoError(t, err)
			require.Equal(t, []peer.ID{a.ID}, ids(provs))
			require.NotEmpty(t, provs[0].Addrs)
		}
	})

	t.Run("findPeer", func(t *testing.T) {
		info, err := b.FindPeer(ctx, a.ID)
		require.NoError(t, err)
		require.Equal(t, a.ID, info.ID)
		require.NotEmpty(t, info.Addrs)

		info, err = c.FindPeerNetwork(ctx, a.ID)
		require.NoError(t, err)
		require.Equal(t, a.ID, info.ID)
		require.NotEmpty(t, info.Addrs)
	})

	t.Run("closest", func(t *testing.T) {
		closest, err := c.Closest(ctx, "/v/hello")
		require.NoError(t, err)
		require.Contains(t, closest, b.ID)
	})
}

func TestCallErrors(t *testing.T) {
	p := startPeers(t, 1)[0]
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	err := p.Call(ctx, "noSuchCommand", nil, nil)
	require.ErrorIs(t, err, jspeer.ErrBadRequest)

	err = p.Call(ctx, "connect", map[string]any{"addr": "not a multiaddr"}, nil)
	require.ErrorIs(t, err, jspeer.ErrBadRequest)

	// With an empty routing table a js lookup waits for a first peer: the
	// js side must give up when told to, and say it timed out.
	var jsErr *jspeer.Error
	err = p.Call(ctx, "get", map[string]any{"key": "/v/x", "timeoutMs": 300}, nil)
	require.ErrorAs(t, err, &jsErr)
	require.Equal(t, "TIMEOUT", jsErr.Code)
	require.ErrorIs(t, err, jspeer.ErrTimeout)

	// Without timeoutMs the js side is given the context's deadline.
	shortCtx, shortCancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer shortCancel()
	_, err = p.Get(shortCtx, "/v/x")
	require.ErrorIs(t, err, jspeer.ErrTimeout)

	// The node still answers after all that, also to many requests at once.
	var wg sync.WaitGroup
	errs := make([]error, 20)
	for i := range errs {
		wg.Go(func() {
			var table []peer.ID
			table, errs[i] = p.RoutingTable(ctx)
			if errs[i] == nil && len(table) != 0 {
				errs[i] = fmt.Errorf("routing table of a lone peer: %v", table)
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		require.NoError(t, err)
	}

	require.NoError(t, p.Close())
	require.NoError(t, p.Close(), "Close is idempotent")
	_, err = p.RoutingTable(ctx)
	require.ErrorIs(t, err, jspeer.ErrClosed)
}

func TestStartWithoutDependencies(t *testing.T) {
	dir := t.TempDir()
	script, err := os.ReadFile(filepath.Join(jsDir, "peer.mjs"))
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "peer.mjs"), script, 0o644))
	_, err = jspeer.Start(context.Background(), dir)
	require.ErrorContains(t, err, "npm ci")
}

// goHost starts a go-libp2p host on loopback TCP (noise, yamux, identify)
// that answers ping only if withPing, and advertises kad only if withKad.
// Its kad handler just resets streams: admission needs none of the DHT.
func goHost(t *testing.T, withPing, withKad bool) host.Host {
	t.Helper()
	h, err := libp2p.New(
		libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"),
		libp2p.Ping(withPing),
	)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, h.Close()) })
	if withKad {
		h.SetStreamHandler(protocol.ID("/ipfs/kad/1.0.0"), func(s network.Stream) { _ = s.Reset() })
	}
	return h
}

// TestRoutingTableAdmission pins down what the js node asks of a peer before
// it enters its routing table: identify listing /ipfs/kad/1.0.0, and an
// answer to /ipfs/ping/1.0.0. Nothing is asked over the DHT protocol itself.
func TestRoutingTableAdmission(t *testing.T) {
	p := startPeers(t, 1)[0]
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	admitted := goHost(t, true, true)
	noPing := goHost(t, false, true)
	noKad := goHost(t, true, false)
	for _, h := range []host.Host{admitted, noPing, noKad} {
		require.NoError(t, p.ConnectInfo(ctx, peer.AddrInfo{ID: h.ID(), Addrs: h.Addrs()}))
	}

	waitCtx, waitCancel := context.WithTimeout(ctx, 15*time.Second)
	defer waitCancel()
	require.NoError(t, p.WaitForRoutingTable(waitCtx, admitted.ID()))

	// A refused ping or an unknown protocol fails at once (a ping left
	// unanswered would take the adaptive timeout, at least 5 s). Give the
	// others a few seconds to show up wrongly.
	deadline := time.Now().Add(4 * time.Second)
	for time.Now().Before(deadline) {
		table, err := p.RoutingTable(ctx)
		require.NoError(t, err)
		require.NotContains(t, table, noPing.ID(), "a peer that does not answer ping was admitted")
		require.NotContains(t, table, noKad.ID(), "a peer that does not advertise kad was admitted")
		time.Sleep(200 * time.Millisecond)
	}
}

func TestStartWithoutNode(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	_, err := jspeer.Start(context.Background(), jsDir)
	require.ErrorContains(t, err, "node")
	require.ErrorContains(t, err, "not installed")
}
