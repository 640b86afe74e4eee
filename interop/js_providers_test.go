package interop

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	godhtpb "github.com/libp2p/go-libp2p-kad-dht/pb"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-msgio/pbio"
	"github.com/multiformats/go-multihash"
	"github.com/stretchr/testify/require"

	"github.com/kadlib/kad"
)

// kadProtocol is the protocol both implementations speak in these tests.
const kadProtocol = "/ipfs/kad/1.0.0"

// contentCID is a CIDv1 (raw) of data with the given hash function.
func contentCID(t *testing.T, data string, code uint64) cid.Cid {
	t.Helper()
	mh, err := multihash.Sum([]byte(data), code, -1)
	require.NoError(t, err)
	return cid.NewCidV1(cid.Raw, mh)
}

func (n node) provide(t *testing.T, ctx context.Context, c cid.Cid) {
	t.Helper()
	if n.kad != nil {
		require.NoError(t, n.kad.Provide(ctx, c, true), "%v provides %s", n, c)
		return
	}
	require.NoError(t, n.js.Provide(ctx, c), "%v provides %s", n, c)
}

// servedProviders asks server, in one raw GET_PROVIDERS request from the
// prober host, which providers of c it holds: what any peer would be told,
// with no lookup behind it. ADD_PROVIDER has no answer, so this is how a
// test sees that an announcement was kept.
func servedProviders(ctx context.Context, prober host.Host, server node, c cid.Cid, timeout time.Duration) ([]peer.AddrInfo, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := prober.Connect(ctx, server.addrInfo()); err != nil {
		return nil, fmt.Errorf("prober connects to %v: %w", server, err)
	}
	s, err := prober.NewStream(ctx, server.id(), kadProtocol)
	if err != nil {
		return nil, fmt.Errorf("prober opens a stream to %v: %w", server, err)
	}
	defer func() { _ = s.Close() }()
	if dl, ok := ctx.Deadline(); ok {
		_ = s.SetDeadline(dl)
	}
	req := godhtpb.NewMessage(godhtpb.Message_GET_PROVIDERS, c.Hash(), 0)
	if err := pbio.NewDelimitedWriter(s).WriteMsg(req); err != nil {
		return nil, fmt.Errorf("GET_PROVIDERS to %v: %w", server, err)
	}
	var resp godhtpb.Message
	if err := pbio.NewDelimitedReader(s, 4<<20).ReadMsg(&resp); err != nil {
		return nil, fmt.Errorf("GET_PROVIDERS answer from %v: %w", server, err)
	}
	var out []peer.AddrInfo
	for _, ai := range godhtpb.PBPeersToPeerInfos(resp.ProviderPeers) {
		out = append(out, *ai)
	}
	return out, nil
}

// requireServes waits until server answers GET_PROVIDERS for c with
// provider and provider's listen addresses.
func requireServes(t *testing.T, ctx context.Context, prober host.Host, server node, c cid.Cid, provider node) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		served, err := servedProviders(ctx, prober, server, c, 2*time.Second)
		for _, ai := range served {
			if ai.ID == provider.id() {
				requireAddrs(t, ai.Addrs, provider.addrInfo().Addrs, "%v serves the listen addresses of %v", server, provider)
				for _, a := range ai.Addrs {
					// js announces "<addr>/p2p/<id>"; peers serve "<addr>".
					_, id := peer.SplitAddr(a)
					require.Empty(t, id, "%v serves %s with a /p2p/ suffix", server, a)
				}
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%v does not serve %v as a provider of %s after 5s: it serves %v (err %v)", server, provider, c, served, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestJSProviders announces content from each side and finds its
// provider from the other, on a pair of nodes.
func TestJSProviders(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ns := newNodes(t, "kad", "js")
	k, j := ns[0], ns[1]
	link(t, ctx, k, j)
	prober := newHost(t)

	for _, c := range []struct{ from, to node }{{k, j}, {j, k}} {
		t.Run(c.from.kind()+" provides, "+c.to.kind()+" finds", func(t *testing.T) {
			content := contentCID(t, "provided by "+c.from.id().String(), multihash.SHA2_256)
			c.from.provide(t, ctx, content)
			// ADD_PROVIDER has no answer: wait until the other side serves it.
			requireServes(t, ctx, prober, c.to, content, c.from)
			var found []peer.AddrInfo
			var err error
			if c.to.kad != nil {
				found, err = c.to.kad.FindProviders(ctx, content, 0)
			} else {
				found, err = c.to.js.FindProviders(ctx, content, 0)
			}
			require.NoError(t, err)
			require.Len(t, found, 1, "%v finds one provider", c.to)
			require.Equal(t, c.from.id(), found[0].ID)
			requireAddrs(t, found[0].Addrs, c.from.addrInfo().Addrs)
		})
	}
}

// js handles provider keys only for sha2-256 multihashes: kad-dht 15
// drops an ADD_PROVIDER for any other and never answers a GET_PROVIDERS
// for one (the stream stays silent until js's idle timeout). kad must not
// evict the js peer for that one failure.
func TestJSNonSHA256Provider(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	k := node{kad: newKad(t, kad.NamespacedValidator("v", greatestWins{}), kad.RequestTimeout(time.Second))}
	j := node{js: startJS(t, 1)[0]}
	link(t, ctx, k, j)
	prober := newHost(t)

	content := contentCID(t, "hashed with blake2b", multihash.BLAKE2B_MIN+31)
	require.NoError(t, k.kad.Provide(ctx, content, true))
	found, err := k.kad.FindProviders(ctx, content, 0)
	require.NoError(t, err)
	require.Equal(t, []peer.ID{k.id()}, ids(found), "kad finds its own record")
	_, err = servedProviders(ctx, prober, j, content, time.Second)
	var timeout net.Error
	require.ErrorAs(t, err, &timeout, "js answers no GET_PROVIDERS for a blake2b key")
	require.True(t, timeout.Timeout(), "js answers no GET_PROVIDERS for a blake2b key: %v", err)
	t.Logf("js on a blake2b GET_PROVIDERS: %v", err)
	require.True(t, k.kad.RoutingTable().Find(j.id()), "one refused request does not evict js")

	// Requests with sha2-256 keys still work afterwards.
	sha := contentCID(t, "hashed with sha2-256", multihash.SHA2_256)
	k.provide(t, ctx, sha)
	requireServes(t, ctx, prober, j, sha, k)
}

func ids(infos []peer.AddrInfo) []peer.ID {
	out := make([]peer.ID, len(infos))
	for i, ai := range infos {
		out[i] = ai.ID
	}
	return out
}
