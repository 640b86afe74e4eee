package kad

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/routing"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/kadlib/kad/internal/pb"
)

// hostileCase is one bad input: bytes sent on a fresh stream, after an
// optional valid request, with the write side closed afterwards or not.
type hostileCase struct {
	name       string
	first      *pb.Message // a valid request answered before the bad input
	send       []byte
	closeWrite bool
}

func msgFrame(m *pb.Message) []byte { return frame(m.Marshal(nil)) }

// field encodes one protobuf field with the given wire type and payload.
func field(num protowire.Number, typ protowire.Type, payload []byte) []byte {
	b := protowire.AppendTag(nil, num, typ)
	switch typ {
	case protowire.VarintType:
		return protowire.AppendVarint(b, 1)
	case protowire.Fixed32Type:
		return protowire.AppendFixed32(b, 1)
	case protowire.Fixed64Type:
		return protowire.AppendFixed64(b, 1)
	}
	return protowire.AppendBytes(b, payload)
}

func hostileCases(t *testing.T, attacker, victim peer.ID, provKey []byte) []hostileCase {
	r := rand.New(rand.NewPCG(80, 80))
	find := &pb.Message{Type: pb.FindNode, Key: []byte("k")}
	garbage := make([]byte, 64)
	for {
		for i := range garbage {
			garbage[i] = byte(r.Uint32())
		}
		if new(pb.Message).Unmarshal(garbage) != nil {
			break
		}
	}
	addr := ma.StringCast("/ip4/10.1.2.3/tcp/4001").Bytes()
	put := func(key, recKey, value string) []byte {
		return msgFrame(&pb.Message{Type: pb.PutValue, Key: []byte(key), Record: &pb.Record{Key: []byte(recKey), Value: []byte(value)}})
	}
	addProv := func(key []byte, entries ...pb.Peer) []byte {
		return msgFrame(&pb.Message{Type: pb.AddProvider, Key: key, ProviderPeers: entries})
	}
	findFrame := msgFrame(find)
	return []hostileCase{
		{name: "truncated length prefix", send: []byte{0x80}, closeWrite: true},
		{name: "truncated frame", send: findFrame[:len(findFrame)-2], closeWrite: true},
		{name: "oversized frame (4 MiB + 1)", send: binary.AppendUvarint(nil, 4<<20+1)},
		{name: "length past 64 bits", send: append(bytes.Repeat([]byte{0xff}, 10), 0x01)},
		{name: "garbage protobuf", send: frame(garbage)},
		{name: "key as varint", send: frame(field(2, protowire.VarintType, nil))},
		{name: "type as bytes", send: frame(field(1, protowire.BytesType, []byte("x")))},
		{name: "record as fixed64", send: frame(field(3, protowire.Fixed64Type, nil))},
		{name: "peer entry as fixed32", send: frame(field(8, protowire.Fixed32Type, nil))},
		{name: "record key as varint", send: frame(field(3, protowire.BytesType, field(1, protowire.VarintType, nil)))},
		{name: "start group wire type", send: frame([]byte{0x0b})},
		{name: "valid request, then garbage", first: find, send: frame(garbage)},
		{name: "unknown message type 99", send: msgFrame(&pb.Message{Type: 99, Key: []byte("k")})},
		{name: "negative message type", send: msgFrame(&pb.Message{Type: -1, Key: []byte("k")})},
		{name: "FIND_NODE without key", send: msgFrame(&pb.Message{Type: pb.FindNode})},
		{name: "GET_VALUE without key", send: msgFrame(&pb.Message{Type: pb.GetValue})},
		{name: "key over MaxKeySize (2 KiB)", send: msgFrame(&pb.Message{Type: pb.FindNode, Key: make([]byte, 2048)})},
		{name: "PUT_VALUE key != record.key", send: put("/test/k", "/test/other", "9:x")},
		{name: "PUT_VALUE invalid record", send: put("/test/k", "/test/k", "9:bad")},
		{name: "PUT_VALUE without record", send: msgFrame(&pb.Message{Type: pb.PutValue, Key: []byte("/test/k")})},
		{name: "PUT_VALUE namespace without validator", send: put("/nons/k", "/nons/k", "9:x")},
		{name: "PUT_VALUE record over MaxRecordSize", send: put("/test/k", "/test/k", "9:"+string(make([]byte, 2048)))},
		{name: "PUT_VALUE older than stored", send: put("/test/k", "/test/k", "1:x")},
		{name: "ADD_PROVIDER for another peer", send: addProv(provKey, pb.Peer{ID: []byte(victim), Addrs: [][]byte{addr}})},
		{name: "ADD_PROVIDER without addresses", send: addProv(provKey, pb.Peer{ID: []byte(attacker)})},
		{name: "ADD_PROVIDER garbage addresses only", send: addProv(provKey, pb.Peer{ID: []byte(attacker), Addrs: [][]byte{{0xff, 0xff}, garbage}})},
		{name: "ADD_PROVIDER garbage id", send: addProv(provKey, pb.Peer{ID: garbage[:20], Addrs: [][]byte{addr}})},
		{name: "ADD_PROVIDER no entry", send: addProv(provKey)},
		{name: "ADD_PROVIDER key over 80 bytes", send: addProv(make([]byte, 81), pb.Peer{ID: []byte(attacker), Addrs: [][]byte{addr}})},
		{name: "GET_PROVIDERS key over 80 bytes", send: msgFrame(&pb.Message{Type: pb.GetProviders, Key: make([]byte, 81)})},
	}
}

// Every class of bad input gets the stream reset and changes nothing, and
// the node keeps answering, the attacker included.
func TestHostileInputs(t *testing.T) {
	mn, hs := identifiedHosts(t, 2)
	var nodes []*DHT
	for _, h := range hs {
		d, err := New(context.Background(), h, valueOpts(Mode(ModeServer), RandomWalk(false), MaxRecordSize(1024))...)
		require.NoError(t, err)
		t.Cleanup(func() { _ = d.Close() })
		nodes = append(nodes, d)
	}
	srv, cli := nodes[0], nodes[1]
	attacker, err := mn.GenPeer()
	require.NoError(t, err)
	require.NoError(t, mn.LinkAll())
	ctx := testCtx(t, 2*time.Minute)
	waitFor(t, 10*time.Second, "tables filled", func() bool { return cli.rt.Find(srv.self) && srv.rt.Find(cli.self) })

	// Something to lose: a record and a provider record.
	require.NoError(t, cli.PutValue(ctx, "/test/k", []byte("5:x")))
	c := provCID(t, rand.New(rand.NewPCG(81, 81)))
	require.NoError(t, cli.Provide(ctx, c, true))
	waitFor(t, 10*time.Second, "provider stored", func() bool {
		got, err := srv.provs.store.GetProviders(ctx, c.Hash())
		return err == nil && len(got) == 1
	})
	require.Equal(t, []byte("5:x"), stored(t, srv, "/test/k"))
	before := snapshot(t, srv.ext.ds)

	for _, tc := range hostileCases(t, attacker.ID(), cli.self, c.Hash()) {
		t.Run(tc.name, func(t *testing.T) {
			conn := openRaw(t, attacker, srv.self)
			if tc.first != nil {
				_, err := conn.ask(tc.first)
				require.NoError(t, err)
			}
			_ = conn.writeBytes(tc.send) // the node may reset before all is written
			if tc.closeWrite {
				_ = conn.s.CloseWrite()
			}
			require.NoError(t, conn.resetWithin(5*time.Second))
			require.Equal(t, before, snapshot(t, srv.ext.ds), "nothing stored or changed")
			_, err := cli.q.request(ctx, srv.self, &pb.Message{Type: pb.FindNode, Key: []byte("after")})
			require.NoError(t, err, "the node still answers its peers")
			_, err = openRaw(t, attacker, srv.self).ask(&pb.Message{Type: pb.FindNode, Key: []byte("after")})
			require.NoError(t, err, "and the attacker's next valid request")
			t.Logf("%-40s stream reset; datastore unchanged (%d entries); FIND_NODE answered", tc.name, len(before))
		})
	}
	require.False(t, srv.rt.Find(attacker.ID()), "the attacker never entered the table")
	got, err := srv.provs.store.GetProviders(ctx, c.Hash())
	require.NoError(t, err)
	require.Equal(t, []peer.ID{cli.self}, provIDs(got))
}

// hostileQuerier starts a fresh node on tn's mocknet that knows only the
// given peers, so every step of its lookups depends on their answers.
func hostileQuerier(t *testing.T, tn *testNet, know []host.Host, opts ...Option) *DHT {
	t.Helper()
	h, err := tn.mn.GenPeer()
	require.NoError(t, err)
	require.NoError(t, tn.mn.LinkAll())
	q, err := New(context.Background(), h, append([]Option{Mode(ModeClient), RandomWalk(false)}, opts...)...)
	require.NoError(t, err)
	t.Cleanup(func() { _ = q.Close() })
	ctx := testCtx(t, 10*time.Second)
	for _, k := range know {
		require.NoError(t, q.keeper.addPeer(ctx, peer.AddrInfo{ID: k.ID(), Addrs: k.Addrs()}))
	}
	return q
}

// Answers carrying garbage ids and addresses, ourselves, oversized address
// lists or thousands of peers cost nothing: the bad parts are dropped, the
// rest is used, and the lookup still finds the honest closest peers.
func TestHostileResponses(t *testing.T) {
	const n = 16
	tn := newTestNet(t, n, 82, valueOpts(RandomWalk(false))...)
	r := rand.New(rand.NewPCG(83, 83))
	fh, err := tn.mn.GenPeer()
	require.NoError(t, err)
	var querier atomic.Value // peer.ID of the current querier
	querier.Store(peer.ID(""))
	var mode atomic.Int32
	const (
		garbageMode = iota
		floodMode
	)
	thousands := make([]pb.Peer, 5000)
	for i := range thousands {
		thousands[i] = fakeEntry(r)
	}
	bad := pb.Peer{ID: []byte("not a peer id")}
	answer := func(_ peer.ID, req *pb.Message) *pb.Message {
		var closer []pb.Peer
		switch mode.Load() {
		case garbageMode:
			q := querier.Load().(peer.ID)
			closer = append(closer, bad, pb.Peer{ID: []byte{0x12, 0x20, 0x01}}, pb.Peer{})
			closer = append(closer, pb.Peer{ID: []byte(q), Addrs: [][]byte{ma.StringCast("/ip4/10.0.0.1/tcp/1").Bytes()}})
			for i, d := range tn.nodes {
				e := entryOf(d.h)
				switch i % 3 {
				case 0: // garbage addresses around the real one
					e.Addrs = append([][]byte{{0xff}, {}}, append(e.Addrs, []byte("junk"))...)
				case 1: // fifty fake addresses before the real one
					var many [][]byte
					for j := range 50 {
						many = append(many, ma.StringCast(fmt.Sprintf("/ip4/10.9.0.%d/tcp/4001", j+1)).Bytes())
					}
					e.Addrs = append(many, e.Addrs...)
				}
				closer = append(closer, e)
			}
		case floodMode:
			closer = append(closer, thousands...)
			for _, d := range tn.nodes {
				closer = append(closer, entryOf(d.h))
			}
		}
		resp := reply(req, closer)
		if req.Type == pb.GetValue {
			// A record for another key and an invalid one: both ignored.
			resp.Record = &pb.Record{Key: []byte("/test/other"), Value: []byte("99:x")}
		}
		return resp
	}
	fake := serveFake(fh, answer)
	ctx := testCtx(t, 2*time.Minute)
	honest := make([]peer.ID, 0, n)
	for _, d := range tn.nodes {
		honest = append(honest, d.self)
	}

	t.Run("garbage ids, addresses and ourselves", func(t *testing.T) {
		mode.Store(garbageMode)
		const maxAddrs = 4
		q := hostileQuerier(t, tn, []host.Host{fh}, MaxAddrsPerPeer(maxAddrs))
		querier.Store(q.self)
		got, err := q.GetClosestPeers(ctx, "hostile-key")
		require.NoError(t, err)
		require.NotContains(t, got, q.self)
		require.Equal(t, 1.0, recall(got, honest), "every honest peer was learned from the valid entries")
		for _, d := range tn.nodes {
			require.LessOrEqual(t, len(q.h.Peerstore().Addrs(d.self)), maxAddrs+1, "at most MaxAddrsPerPeer learned per entry")
		}
		require.Positive(t, fake.requests.Load())
	})
	t.Run("thousands of peers", func(t *testing.T) {
		mode.Store(floodMode)
		q := hostileQuerier(t, tn, []host.Host{fh, tn.nodes[0].h})
		start := time.Now()
		got, err := q.GetClosestPeers(ctx, "flood-key")
		require.NoError(t, err)
		require.GreaterOrEqual(t, recall(got, honest), 0.9)
		known := len(q.h.Peerstore().Peers())
		require.Less(t, known, n+2+2*q.cfg.table.bucketSize+5, "at most 2k peers taken from one answer")
		t.Logf("answer of %d peers: lookup took %v, querier knows %d peers", len(thousands)+n, time.Since(start).Round(time.Millisecond), known)
	})
	t.Run("records for another key", func(t *testing.T) {
		mode.Store(floodMode)
		require.NoError(t, tn.nodes[3].PutValue(ctx, "/test/v", []byte("1:good")))
		q := hostileQuerier(t, tn, []host.Host{fh, tn.nodes[0].h}, valueOpts()...)
		v, err := q.GetValue(ctx, "/test/v")
		require.NoError(t, err)
		require.Equal(t, []byte("1:good"), v)
		_, err = q.GetValue(ctx, "/test/other", routing.Offline)
		require.Error(t, err, "nothing stored from the fake's answers")
	})
}
