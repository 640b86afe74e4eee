package kad

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"time"

	ds "github.com/ipfs/go-datastore"
	dsq "github.com/ipfs/go-datastore/query"
	dssync "github.com/ipfs/go-datastore/sync"
	"github.com/libp2p/go-libp2p/core/peer"
	mocknet "github.com/libp2p/go-libp2p/p2p/net/mock"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/stretchr/testify/require"

	"github.com/kadlib/kad/internal/pb"
)

// Fuzz targets for the request handlers: the fuzzer's bytes are decoded
// as a request (the codec has its own target in internal/pb, the framing
// in internal/wire), given the target's message type, and served exactly
// as an inbound stream would serve them. A rejected request must change
// nothing in the datastore; an answer must stay within the response
// limits and re-encode. Seeds are in testdata/fuzz/<target>/.
//
//	go test -run='^$' -fuzz='^FuzzHandlePutValue$' -fuzztime=30s .

// countingDS counts the writes made to a datastore, so a fuzz run can
// check "nothing changed" without comparing whole stores, and the queries.
type countingDS struct {
	ds.Batching
	writes  atomic.Int64
	queries atomic.Int64
}

func (c *countingDS) Put(ctx context.Context, k ds.Key, v []byte) error {
	c.writes.Add(1)
	return c.Batching.Put(ctx, k, v)
}

func (c *countingDS) Delete(ctx context.Context, k ds.Key) error {
	c.writes.Add(1)
	return c.Batching.Delete(ctx, k)
}

func (c *countingDS) Batch(ctx context.Context) (ds.Batch, error) {
	b, err := c.Batching.Batch(ctx)
	if err != nil {
		return nil, err
	}
	return &countingBatch{Batch: b, c: c}, nil
}

type countingBatch struct {
	ds.Batch
	c *countingDS
}

func (b *countingBatch) Put(ctx context.Context, k ds.Key, v []byte) error {
	b.c.writes.Add(1)
	return b.Batch.Put(ctx, k, v)
}

func (b *countingBatch) Delete(ctx context.Context, k ds.Key) error {
	b.c.writes.Add(1)
	return b.Batch.Delete(ctx, k)
}

// fuzzNode is a server with a routing table of peers with addresses and a
// counted store, and the peer its requests come from.
type fuzzNode struct {
	d    *DHT
	ds   *countingDS
	from peer.ID
}

// fuzzFrom is the requester of every fuzzed request, fixed so that seeds
// can announce it as a provider.
var fuzzFrom = seededPeer(rand.New(rand.NewPCG(90, 90)))

func newFuzzNode(f *testing.F) *fuzzNode {
	f.Helper()
	mn := mocknet.New()
	f.Cleanup(func() { _ = mn.Close() })
	h, err := mn.GenPeer()
	require.NoError(f, err)
	store := &countingDS{Batching: dssync.MutexWrap(ds.NewMapDatastore())}
	d, err := New(context.Background(), h, valueOpts(Mode(ModeServer), RandomWalk(false), Datastore(store), MaxRecordSize(4096), MaxAddrsPerPeer(4), MaxProvidersPerResponse(5))...)
	require.NoError(f, err)
	f.Cleanup(func() { _ = d.Close() })
	r := rand.New(rand.NewPCG(91, 91))
	for i := range 30 {
		p := seededPeer(r)
		var addrs []ma.Multiaddr
		for j := range 6 {
			addrs = append(addrs, ma.StringCast(fmt.Sprintf("/ip4/10.%d.0.%d/tcp/4001", i, j+1)))
		}
		h.Peerstore().AddAddrs(p, addrs, time.Hour)
		d.keeper.admit(p)
	}
	return &fuzzNode{d: d, ds: store, from: fuzzFrom}
}

// fuzzSeeds are valid requests of each type, for the targets' code seeds.
func fuzzSeeds() []*pb.Message {
	addr := ma.StringCast("/ip4/10.1.1.1/tcp/4001").Bytes()
	mh := []byte{0x12, 0x20, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32}
	return []*pb.Message{
		{Type: pb.FindNode, Key: []byte(fuzzFrom)},
		{Type: pb.FindNode, Key: []byte("some key")},
		{Type: pb.PutValue, Key: []byte("/test/a"), Record: &pb.Record{Key: []byte("/test/a"), Value: []byte("1:x")}},
		{Type: pb.GetValue, Key: []byte("/test/a")},
		{Type: pb.AddProvider, Key: mh, ProviderPeers: []pb.Peer{{ID: []byte(fuzzFrom), Addrs: [][]byte{addr}}}},
		{Type: pb.GetProviders, Key: mh},
		{Type: pb.Ping},
	}
}

// fuzzServe is the body of every handler target; typ < 0 keeps the type
// the bytes carry.
func fuzzServe(f *testing.F, typ pb.MessageType) {
	for _, m := range fuzzSeeds() {
		if typ < 0 || m.Type == typ {
			f.Add(m.Marshal(nil))
		}
	}
	n := newFuzzNode(f)
	d := n.d
	f.Fuzz(func(t *testing.T, b []byte) {
		var req pb.Message
		if err := req.Unmarshal(b); err != nil {
			return
		}
		if typ >= 0 {
			req.Type = typ
		}
		sent := req.Clone()
		writes := n.ds.writes.Load()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		resp, err := d.srv.serve(ctx, n.from, &req)
		if err != nil {
			require.Nil(t, resp)
			require.Equal(t, writes, n.ds.writes.Load(), "a rejected request changed the store: %v", err)
			return
		}
		switch sent.Type {
		case pb.AddProvider:
			require.Nil(t, resp, "ADD_PROVIDER is never answered")
			return
		case pb.PutValue:
			require.Equal(t, sent.Record.Value, stored(t, d, string(sent.Key)), "an accepted record is stored")
		}
		require.NotNil(t, resp)
		require.Equal(t, sent.Type, resp.Type)
		if sent.Type != pb.Ping {
			require.Equal(t, sent.Key, resp.Key)
		}
		require.LessOrEqual(t, len(resp.CloserPeers), d.cfg.table.bucketSize+1)
		require.LessOrEqual(t, len(resp.ProviderPeers), d.cfg.limits.provsPerResp)
		for _, e := range append(resp.CloserPeers, resp.ProviderPeers...) {
			require.LessOrEqual(t, len(e.Addrs), d.cfg.limits.maxAddrsPerPeer)
			_, err := peer.IDFromBytes(e.ID)
			require.NoError(t, err, "only valid peer ids are sent")
		}
		enc := resp.Marshal(nil)
		require.LessOrEqual(t, len(enc), d.cfg.limits.maxMessageSize)
		var back pb.Message
		require.NoError(t, back.Unmarshal(enc))
	})
}

func FuzzHandleFindNode(f *testing.F)     { fuzzServe(f, pb.FindNode) }
func FuzzHandlePutValue(f *testing.F)     { fuzzServe(f, pb.PutValue) }
func FuzzHandleGetValue(f *testing.F)     { fuzzServe(f, pb.GetValue) }
func FuzzHandleAddProvider(f *testing.F)  { fuzzServe(f, pb.AddProvider) }
func FuzzHandleGetProviders(f *testing.F) { fuzzServe(f, pb.GetProviders) }

// FuzzServeAnyType lets the bytes choose the type too: unknown types,
// PING, and the types' handlers fed each other's requests.
func FuzzServeAnyType(f *testing.F) { fuzzServe(f, -1) }

// Query counts queries too, for tests that bound how often a store is read.
func (c *countingDS) Query(ctx context.Context, q dsq.Query) (dsq.Results, error) {
	c.queries.Add(1)
	return c.Batching.Query(ctx, q)
}
