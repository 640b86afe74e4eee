package kad

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"testing"
	"testing/synctest"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	mocknet "github.com/libp2p/go-libp2p/p2p/net/mock"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/stretchr/testify/require"

	"github.com/kadlib/kad/internal/pb"
)

func TestLimitsOptionsValidate(t *testing.T) {
	mn := mocknet.New()
	t.Cleanup(func() { _ = mn.Close() })
	h, err := mn.GenPeer()
	require.NoError(t, err)
	bad := map[string][]Option{
		"no streams":          {MaxInboundStreams(0)},
		"no streams per peer": {MaxInboundStreamsPerPeer(0)},
		"per peer over total": {MaxInboundStreams(4), MaxInboundStreamsPerPeer(5)},
		"negative rate":       {PeerRequestRate(-1, 10)},
		"NaN rate":            {PeerRequestRate(math.NaN(), 10)},
		"rate without burst":  {PeerRequestRate(10, 0)},
		"key under 80 bytes":  {MaxKeySize(79)},
		"no providers":        {MaxProvidersPerResponse(0)},
	}
	for name, opts := range bad {
		t.Run(name, func(t *testing.T) {
			_, err := New(context.Background(), h, opts...)
			require.ErrorIs(t, err, ErrInvalidOption)
		})
	}
	d, err := New(context.Background(), h, PeerRequestRate(0, 0), MaxInboundStreams(1), MaxInboundStreamsPerPeer(1), MaxKeySize(80))
	require.NoError(t, err, "rate 0 turns the limit off; the smallest bounds are valid")
	require.NoError(t, d.Close())
}

func TestInboundLimiterStreams(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 1))
	a, b, c := seededPeer(r), seededPeer(r), seededPeer(r)
	l := newInboundLimiter(limitsConfig{streamsTotal: 3, streamsPerPeer: 2})
	now := time.Unix(0, 0)
	require.NoError(t, l.openStream(a, now))
	require.NoError(t, l.openStream(a, now))
	require.ErrorIs(t, l.openStream(a, now), errLimited, "per peer")
	require.NoError(t, l.openStream(b, now))
	require.ErrorIs(t, l.openStream(c, now), errLimited, "in total")
	l.closeStream(a)
	require.NoError(t, l.openStream(c, now), "a released slot is reusable")
	st := l.stats()
	require.Equal(t, 3, st.open)
	require.EqualValues(t, 2, st.rejectedStreams)
	l.closeStream(a)
	l.closeStream(a) // more releases than opens are ignored
	l.closeStream(b)
	l.closeStream(c)
	require.Zero(t, l.stats().open)
}

func TestInboundLimiterRate(t *testing.T) {
	r := rand.New(rand.NewPCG(2, 2))
	a, b := seededPeer(r), seededPeer(r)
	l := newInboundLimiter(limitsConfig{streamsTotal: 100, streamsPerPeer: 10, peerRate: 10, peerBurst: 5})
	now := time.Unix(0, 0)
	for i := range 5 {
		require.NoError(t, l.allow(a, now), "burst request %d", i)
	}
	require.ErrorIs(t, l.allow(a, now), errLimited)
	require.NoError(t, l.allow(b, now), "other peers have their own bucket")
	now = now.Add(100 * time.Millisecond) // one token at 10/s
	require.NoError(t, l.allow(a, now))
	require.ErrorIs(t, l.allow(a, now), errLimited)
	now = now.Add(time.Hour)
	for range 5 {
		require.NoError(t, l.allow(a, now))
	}
	require.ErrorIs(t, l.allow(a, now), errLimited, "the bucket holds at most burst")
}

// Callers read the clock before the limiter's lock, so times can arrive
// out of order: an earlier time counts as the latest one seen, and no
// interval is credited twice.
func TestInboundLimiterTimesOutOfOrder(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 5))
	a := seededPeer(r)
	l := newInboundLimiter(limitsConfig{streamsTotal: 100, streamsPerPeer: 10, peerRate: 1, peerBurst: 2})
	t0 := time.Unix(0, 0)
	require.NoError(t, l.allow(a, t0))                                        // 1 left
	require.NoError(t, l.allow(a, t0.Add(time.Second)))                       // 1+1-1
	require.NoError(t, l.allow(a, t0.Add(500*time.Millisecond)))              // late caller: 0 left at t0+1s
	require.ErrorIs(t, l.allow(a, t0.Add(1500*time.Millisecond)), errLimited) // half a token
	require.NoError(t, l.allow(a, t0.Add(2*time.Second)))
}

// Peers with an empty bucket are remembered after their streams close (or
// a new stream would get around the limit); refilled ones are forgotten,
// so the map stays bounded by the peers of the last few seconds.
func TestInboundLimiterForgetsRefilledPeers(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 3))
	l := newInboundLimiter(limitsConfig{streamsTotal: 1000, streamsPerPeer: 10, peerRate: 10, peerBurst: 2})
	now := time.Unix(0, 0)
	drained := seededPeer(r)
	require.NoError(t, l.openStream(drained, now))
	require.NoError(t, l.allow(drained, now))
	require.NoError(t, l.allow(drained, now))
	l.closeStream(drained)
	churn := func() {
		for range 1000 {
			p := seededPeer(r)
			require.NoError(t, l.openStream(p, now))
			l.closeStream(p)
		}
	}
	churn() // many prunes, all at the same instant
	require.ErrorIs(t, l.allow(drained, now), errLimited, "closing its streams does not refill a bucket")
	now = now.Add(time.Second)
	churn()
	require.LessOrEqual(t, l.stats().tracked, 2*minPrune, "peers whose bucket refilled are forgotten")
}

// Stream limits on real streams: past the per-peer or total bound a new
// stream is reset at once, and a closed stream frees its slot.
func TestInboundStreamLimits(t *testing.T) {
	mn := mocknet.New()
	t.Cleanup(func() { _ = mn.Close() })
	h, err := mn.GenPeer()
	require.NoError(t, err)
	srv, err := New(context.Background(), h, Mode(ModeServer), MaxInboundStreams(3), MaxInboundStreamsPerPeer(2))
	require.NoError(t, err)
	t.Cleanup(func() { _ = srv.Close() })
	a, err := mn.GenPeer()
	require.NoError(t, err)
	b, err := mn.GenPeer()
	require.NoError(t, err)
	require.NoError(t, mn.LinkAll())
	find := &pb.Message{Type: pb.FindNode, Key: []byte(srv.self)}
	held := func(from *rawConn) {
		t.Helper()
		_, err := from.ask(find)
		require.NoError(t, err)
	}
	a1, a2 := openRaw(t, a, srv.self), openRaw(t, a, srv.self)
	held(a1)
	held(a2)
	a3 := openRaw(t, a, srv.self)
	require.NoError(t, a3.writeBytes(frame(find.Marshal(nil))))
	require.NoError(t, a3.resetWithin(5*time.Second), "third stream of one peer")
	b1 := openRaw(t, b, srv.self)
	held(b1)
	b2 := openRaw(t, b, srv.self)
	require.NoError(t, b2.writeBytes(frame(find.Marshal(nil))))
	require.NoError(t, b2.resetWithin(5*time.Second), "fourth stream in total")
	require.NoError(t, a1.s.Close())
	waitFor(t, 5*time.Second, "slot released", func() bool { return srv.srv.limiter.stats().open == 2 })
	held(openRaw(t, b, srv.self))
	require.EqualValues(t, 2, srv.srv.limiter.stats().rejectedStreams)
}

// A peer over its request rate gets resets, on its stream and on fresh
// ones, while other peers are served; once its bucket refills it is
// served again. It runs in a synctest bubble, so the refill takes no real
// time: the handler's time.Now is the bubble's clock.
func TestPeerRequestRate(t *testing.T) {
	synctest.Test(t, testPeerRequestRate)
}

func testPeerRequestRate(t *testing.T) {
	mn := mocknet.New()
	t.Cleanup(func() { _ = mn.Close() })
	h, err := mn.GenPeer()
	require.NoError(t, err)
	srv, err := New(context.Background(), h, Mode(ModeServer), PeerRequestRate(5, 5))
	require.NoError(t, err)
	t.Cleanup(func() { _ = srv.Close() })
	greedy, err := mn.GenPeer()
	require.NoError(t, err)
	other, err := mn.GenPeer()
	require.NoError(t, err)
	require.NoError(t, mn.LinkAll())
	find := &pb.Message{Type: pb.FindNode, Key: []byte("k")}
	c := openRaw(t, greedy, srv.self)
	for i := range 5 {
		_, err := c.ask(find)
		require.NoError(t, err, "request %d within the burst", i)
	}
	require.NoError(t, c.writeBytes(frame(find.Marshal(nil))))
	require.NoError(t, c.resetWithin(5*time.Second))
	fresh := openRaw(t, greedy, srv.self)
	require.NoError(t, fresh.writeBytes(frame(find.Marshal(nil))))
	require.NoError(t, fresh.resetWithin(5*time.Second), "a fresh stream gets no fresh bucket")
	_, err = openRaw(t, other, srv.self).ask(find)
	require.NoError(t, err, "other peers are served")
	time.Sleep(300 * time.Millisecond) // at 5/s, at least one token back (virtual time)
	_, err = openRaw(t, greedy, srv.self).ask(find)
	require.NoError(t, err)
	require.GreaterOrEqual(t, srv.srv.limiter.stats().rejectedRequests, int64(2))
}

// An inbound stream that carries no request for IdleStreamTimeout is
// reset, whether it never sent one or went quiet after some.
func TestIdleInboundStreamReset(t *testing.T) {
	mn := mocknet.New()
	t.Cleanup(func() { _ = mn.Close() })
	h, err := mn.GenPeer()
	require.NoError(t, err)
	const idle = 300 * time.Millisecond
	srv, err := New(context.Background(), h, Mode(ModeServer), IdleStreamTimeout(idle))
	require.NoError(t, err)
	t.Cleanup(func() { _ = srv.Close() })
	a, err := mn.GenPeer()
	require.NoError(t, err)
	require.NoError(t, mn.LinkAll())

	silent := openRaw(t, a, srv.self)
	// The handler starts when the protocol is negotiated, with the first
	// bytes: an empty write would not do, so send half a length prefix.
	start := time.Now()
	require.NoError(t, silent.writeBytes([]byte{0x80}))
	require.NoError(t, silent.resetWithin(10*time.Second))
	require.GreaterOrEqual(t, time.Since(start), idle-50*time.Millisecond)

	quiet := openRaw(t, a, srv.self)
	_, err = quiet.ask(&pb.Message{Type: pb.FindNode, Key: []byte("k")})
	require.NoError(t, err)
	start = time.Now()
	require.NoError(t, quiet.resetWithin(10*time.Second))
	elapsed := time.Since(start)
	require.GreaterOrEqual(t, elapsed, idle-50*time.Millisecond)
	t.Logf("idle stream reset after %v (timeout %v)", elapsed.Round(time.Millisecond), idle)
	waitFor(t, 5*time.Second, "handlers returned", func() bool { return srv.srv.limiter.stats().open == 0 })
}

// A lookup whose caller set no deadline still ends at LookupTimeout when
// every peer it asks hangs, and takes its requests with it.
func TestLookupTimeoutWithoutDeadline(t *testing.T) {
	mn := mocknet.New()
	t.Cleanup(func() { _ = mn.Close() })
	h, err := mn.GenPeer()
	require.NoError(t, err)
	const timeout = 500 * time.Millisecond
	d, err := New(context.Background(), h, Mode(ModeServer), RandomWalk(false), LookupTimeout(timeout), RequestTimeout(time.Minute))
	require.NoError(t, err)
	t.Cleanup(func() { _ = d.Close() })
	var hangs []*fakeServer
	for range 3 {
		fh, err := mn.GenPeer()
		require.NoError(t, err)
		hangs = append(hangs, serveFake(fh, func(peer.ID, *pb.Message) *pb.Message { return nil }))
	}
	require.NoError(t, mn.LinkAll())
	for _, f := range hangs {
		_, err := mn.ConnectPeers(d.self, f.h.ID())
		require.NoError(t, err)
		d.keeper.admit(f.h.ID()) // a table of peers that hang
	}
	start := time.Now()
	_, err = d.GetClosestPeers(context.Background(), "anything")
	elapsed := time.Since(start)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Less(t, elapsed, timeout+2*time.Second)
	t.Logf("lookup against hanging peers ended after %v (LookupTimeout %v)", elapsed.Round(time.Millisecond), timeout)
	for _, f := range hangs {
		require.Positive(t, f.requests.Load(), "every peer was asked")
	}
}

// Answers stay within the response limits whatever the store holds.
func TestResponseLimits(t *testing.T) {
	mn := mocknet.New()
	t.Cleanup(func() { _ = mn.Close() })
	h, err := mn.GenPeer()
	require.NoError(t, err)
	srv, err := New(context.Background(), h, Mode(ModeServer), RandomWalk(false), MaxProvidersPerResponse(3), MaxAddrsPerPeer(2))
	require.NoError(t, err)
	t.Cleanup(func() { _ = srv.Close() })
	a, err := mn.GenPeer()
	require.NoError(t, err)
	require.NoError(t, mn.LinkAll())
	ctx := context.Background()
	r := rand.New(rand.NewPCG(4, 4))
	key := provCID(t, r).Hash()
	var many []ma.Multiaddr
	for i := range 10 {
		many = append(many, ma.StringCast(fmt.Sprintf("/ip4/10.0.0.%d/tcp/4001", i+1)))
	}
	for range 10 {
		require.NoError(t, srv.provs.store.AddProvider(ctx, key, peer.AddrInfo{ID: seededPeer(r), Addrs: many}))
	}
	resp, err := openRaw(t, a, srv.self).ask(&pb.Message{Type: pb.GetProviders, Key: key})
	require.NoError(t, err)
	require.Len(t, resp.ProviderPeers, 3)
	for _, e := range resp.ProviderPeers {
		require.Len(t, e.Addrs, 2)
	}
}

// With a real resource manager, inbound kad streams are charged to the
// "libp2p.kad" service, and a request whose read buffer the manager
// refuses is reset while small ones are served.
func TestResourceManagerScopes(t *testing.T) {
	limits := rcmgr.DefaultLimits
	limits.ServiceLimits = maps.Clone(limits.ServiceLimits) // never the package's map
	limits.AddServiceLimit(ServiceName, rcmgr.BaseLimit{Streams: 64, StreamsInbound: 64, StreamsOutbound: 64, Memory: 256 << 10}, rcmgr.BaseLimitIncrease{})
	mgr, err := rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(limits.AutoScale()))
	require.NoError(t, err)
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.ResourceManager(mgr))
	require.NoError(t, err)
	t.Cleanup(func() { _ = h.Close() })
	srv, err := New(context.Background(), h, valueOpts(Mode(ModeServer), RandomWalk(false), MaxRecordSize(1<<20))...)
	require.NoError(t, err)
	t.Cleanup(func() { _ = srv.Close() })
	cli, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
	require.NoError(t, err)
	t.Cleanup(func() { _ = cli.Close() })
	ctx := testCtx(t, 30*time.Second)
	require.NoError(t, cli.Connect(ctx, peer.AddrInfo{ID: h.ID(), Addrs: h.Addrs()}))

	c := openRaw(t, cli, srv.self)
	_, err = c.ask(&pb.Message{Type: pb.FindNode, Key: []byte("k")})
	require.NoError(t, err)
	var inbound int
	require.NoError(t, mgr.ViewService(ServiceName, func(s network.ServiceScope) error {
		inbound = s.Stat().NumStreamsInbound
		return nil
	}))
	require.Equal(t, 1, inbound, "the stream is charged to the kad service")

	big := bytes.Repeat([]byte("x"), 512<<10)
	key := []byte("/test/big")
	// The write itself may fail: the node resets as soon as it has read
	// the length.
	_ = c.writeBytes(frame((&pb.Message{Type: pb.PutValue, Key: key, Record: &pb.Record{Key: key, Value: append([]byte("1:"), big...)}}).Marshal(nil)))
	err = c.resetWithin(10 * time.Second)
	require.NoError(t, err, "a read buffer over the service's memory is refused")
	require.Nil(t, stored(t, srv, "/test/big"))
	_, err = openRaw(t, cli, srv.self).ask(&pb.Message{Type: pb.FindNode, Key: []byte("k")})
	require.NoError(t, err, "small requests are still served")
	require.NoError(t, srv.Close())
	require.NoError(t, h.Close())
	require.NoError(t, mgr.Close())
}
