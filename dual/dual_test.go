package dual_test

import (
	"bytes"
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/routing"
	mh "github.com/multiformats/go-multihash"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/kadlib/kad"
	"github.com/kadlib/kad/dual"
)

// TestMain fails the package's tests if any goroutine is left once they
// all ran and cleaned up.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// As in the kad package's tests: goleveldb's DB.Close leaves this
		// goroutine draining for up to a second.
		goleak.IgnoreTopFunction("github.com/syndtr/goleveldb/leveldb.(*DB).mpoolDrain"),
	)
}

// seqValidator is the test namespace's validator: values are
// "<seq>:<data>" and the highest seq wins.
type seqValidator struct{}

func parseSeq(v []byte) (uint64, error) {
	s, _, ok := bytes.Cut(v, []byte(":"))
	if !ok {
		return 0, errors.New("no seq")
	}
	return strconv.ParseUint(string(s), 10, 64)
}

func (seqValidator) Validate(_ string, v []byte) error {
	_, err := parseSeq(v)
	return err
}

func (seqValidator) Select(_ string, vals [][]byte) (int, error) {
	best, bestSeq := -1, uint64(0)
	for i, v := range vals {
		n, err := parseSeq(v)
		if err != nil {
			continue
		}
		if best < 0 || n > bestSeq {
			best, bestSeq = i, n
		}
	}
	if best < 0 {
		return 0, errors.New("no valid value")
	}
	return best, nil
}

func newHost(t *testing.T) host.Host {
	t.Helper()
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.DisableRelay())
	require.NoError(t, err)
	t.Cleanup(func() { _ = h.Close() })
	return h
}

func testCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// waitFor polls cond every 20 ms until it holds or d passes: these
// tests run real loopback hosts, so the wait is in real time.
func waitFor(t *testing.T, d time.Duration, msg string, cond func() bool) {
	t.Helper()
	require.Eventually(t, cond, d, 20*time.Millisecond, msg)
}

func info(h host.Host) peer.AddrInfo { return peer.AddrInfo{ID: h.ID(), Addrs: h.Addrs()} }

// newNet starts n dual DHTs on loopback hosts, every one connected to
// node 0, and waits until node 0 and each other node have each other in
// their LAN tables, and in their WAN tables too when wantWAN.
func newNet(t *testing.T, ctx context.Context, n int, wantWAN bool, opts ...dual.Option) []*dual.DHT {
	t.Helper()
	base := []dual.Option{
		dual.DHTOption(kad.NamespacedValidator("test", seqValidator{}), kad.RandomWalk(false)),
		// The WAN side defaults to ModeAuto, a client on loopback.
		dual.WanDHTOption(kad.Mode(kad.ModeServer)),
	}
	// The hosts connect (Connect waits for identify) before the DHTs
	// start: a DHT started just before its host connects can have its
	// protocol announcement overtaken by identify's older snapshot
	// (go-libp2p consumes the two concurrently), and the other side would
	// never learn it speaks kad. Started after, it is announced by a push.
	hosts := make([]host.Host, n)
	for i := range hosts {
		hosts[i] = newHost(t)
		if i > 0 {
			require.NoError(t, hosts[i].Connect(ctx, info(hosts[0])))
		}
	}
	var ds []*dual.DHT
	for _, h := range hosts {
		d, err := dual.New(ctx, h, append(base, opts...)...)
		require.NoError(t, err)
		t.Cleanup(func() { _ = d.Close() })
		ds = append(ds, d)
	}
	hub := ds[0]
	for i, d := range ds[1:] {
		waitFor(t, 10*time.Second, "LAN tables of the hub and node "+strconv.Itoa(i+1), func() bool {
			return d.LAN().RoutingTable().Find(hub.LAN().Host().ID()) && hub.LAN().RoutingTable().Find(d.LAN().Host().ID())
		})
		if wantWAN {
			waitFor(t, 10*time.Second, "WAN tables of the hub and node "+strconv.Itoa(i+1), func() bool {
				return d.WAN().RoutingTable().Find(hub.WAN().Host().ID()) && hub.WAN().RoutingTable().Find(d.WAN().Host().ID())
			})
		}
	}
	return ds
}

func testCID(t *testing.T, s string) cid.Cid {
	t.Helper()
	h, err := mh.Sum([]byte(s), mh.SHA2_256, -1)
	require.NoError(t, err)
	return cid.NewCidV1(cid.Raw, h)
}

func collect(ch <-chan peer.AddrInfo) []peer.ID {
	var out []peer.ID
	for ai := range ch {
		out = append(out, ai.ID)
	}
	return out
}

func TestDualOverLoopback(t *testing.T) {
	for _, tc := range []struct {
		name    string
		opts    []dual.Option
		wantWAN bool // the WAN side forms a network too
	}{
		{name: "default WAN filter: LAN only"},
		{name: "WAN filter injected: both sides", opts: []dual.Option{dual.WanDHTOption(kad.AddressFilter(kad.AnyAddrs))}, wantWAN: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testCtx(t, 2*time.Minute)
			ds := newNet(t, ctx, 4, tc.wantWAN, tc.opts...)
			a, b, c := ds[1], ds[2], ds[3]

			t.Run("protocols", func(t *testing.T) {
				require.Equal(t, "/ipfs/kad/1.0.0", string(a.WAN().Protocol()))
				require.Equal(t, "/ipfs/lan/kad/1.0.0", string(a.LAN().Protocol()))
			})

			t.Run("values", func(t *testing.T) {
				require.NoError(t, a.PutValue(ctx, "/test/v", []byte("1:one")))
				v, err := c.GetValue(ctx, "/test/v")
				require.NoError(t, err)
				require.Equal(t, "1:one", string(v))
				lv, err := c.LAN().GetValue(ctx, "/test/v")
				require.NoError(t, err, "the LAN side has it")
				require.Equal(t, "1:one", string(lv))
				_, err = c.WAN().GetValue(ctx, "/test/v")
				if tc.wantWAN {
					require.NoError(t, err, "the WAN side has it")
				} else {
					require.Error(t, err, "the WAN side has no peer")
				}
				var got []string
				ch, err := c.SearchValue(ctx, "/test/v")
				require.NoError(t, err)
				for v := range ch {
					got = append(got, string(v))
				}
				require.Equal(t, []string{"1:one"}, got)
				_, err = c.GetValue(ctx, "/test/missing")
				require.ErrorIs(t, err, routing.ErrNotFound)
			})

			if tc.wantWAN {
				// Each side holds a different value; either way round, the
				// better one wins.
				for _, better := range []string{"WAN", "LAN"} {
					t.Run("best value wins from "+better, func(t *testing.T) {
						key := "/test/best-" + better
						wanVal, lanVal := "1:old", "2:new"
						if better == "WAN" {
							wanVal, lanVal = "2:new", "1:old"
						}
						require.NoError(t, a.WAN().PutValue(ctx, key, []byte(wanVal)))
						require.NoError(t, a.LAN().PutValue(ctx, key, []byte(lanVal)))
						v, err := c.GetValue(ctx, key)
						require.NoError(t, err)
						require.Equal(t, "2:new", string(v))
						ch, err := c.SearchValue(ctx, key)
						require.NoError(t, err)
						var last string
						for v := range ch {
							last = string(v)
						}
						require.Equal(t, "2:new", last)
					})
				}
			}

			t.Run("providers", func(t *testing.T) {
				k := testCID(t, tc.name)
				require.NoError(t, a.Provide(ctx, k, true))
				require.NoError(t, b.Provide(ctx, k, true))
				for _, row := range []struct {
					count int
					want  int
				}{{0, 2}, {1, 1}, {2, 2}, {5, 2}} {
					got := collect(c.FindProvidersAsync(ctx, k, row.count))
					require.Len(t, got, row.want, "count %d", row.count)
					require.Subset(t, []peer.ID{a.WAN().Host().ID(), b.WAN().Host().ID()}, got, "count %d", row.count)
					seen := map[peer.ID]bool{}
					for _, p := range got {
						require.False(t, seen[p], "%s twice", p)
						seen[p] = true
					}
				}
				if tc.wantWAN {
					got := collect(c.WAN().FindProvidersAsync(ctx, k, 0))
					require.Len(t, got, 2, "the WAN side has both records")
				}
			})

			t.Run("find peer", func(t *testing.T) {
				ai, err := c.FindPeer(ctx, b.WAN().Host().ID())
				require.NoError(t, err)
				require.Equal(t, b.WAN().Host().ID(), ai.ID)
				require.NotEmpty(t, ai.Addrs)
				// A newcomer only the hub knows: found by a lookup.
				e, err := dual.New(ctx, newHost(t), dual.WanDHTOption(kad.Mode(kad.ModeServer)))
				require.NoError(t, err)
				t.Cleanup(func() { _ = e.Close() })
				eID := e.WAN().Host().ID()
				require.NoError(t, e.WAN().Host().Connect(ctx, info(ds[0].WAN().Host())))
				waitFor(t, 10*time.Second, "the hub's LAN table has the newcomer", func() bool { return ds[0].LAN().RoutingTable().Find(eID) })
				ai, err = c.FindPeer(ctx, eID)
				require.NoError(t, err)
				require.Equal(t, eID, ai.ID)
				require.NotEmpty(t, ai.Addrs)
				_, err = c.FindPeer(ctx, newHost(t).ID())
				require.ErrorIs(t, err, routing.ErrNotFound)
			})

			if !tc.wantWAN {
				t.Run("WAN admits no loopback peer", func(t *testing.T) {
					for _, d := range ds {
						require.Zero(t, d.WAN().RoutingTable().Size())
						require.Positive(t, d.LAN().RoutingTable().Size())
					}
					// Not even as a bootstrap peer.
					h := newHost(t)
					w, err := kad.New(ctx, h, kad.Mode(kad.ModeServer), kad.AddressFilter(kad.PublicAddrs),
						kad.BootstrapPeers(info(a.WAN().Host())))
					require.NoError(t, err)
					t.Cleanup(func() { _ = w.Close() })
					require.Error(t, w.Bootstrap(ctx))
					require.Zero(t, w.RoutingTable().Size())
				})
			}
		})
	}
}

// Bad options are reported; a failed LAN side closes the WAN side.
func TestNewOptions(t *testing.T) {
	ctx := testCtx(t, 30*time.Second)
	h := newHost(t)
	_, err := dual.New(ctx, h, dual.LanDHTOption(kad.BucketSize(0)))
	require.ErrorIs(t, err, kad.ErrInvalidOption)
	_, err = dual.New(ctx, h, dual.WanDHTOption(kad.AddressFilter(nil)))
	require.ErrorIs(t, err, kad.ErrInvalidOption)
	d, err := dual.New(ctx, h)
	require.NoError(t, err)
	require.Equal(t, kad.ModeServer, d.LAN().Mode())
	require.Equal(t, kad.ModeClient, d.WAN().Mode(), "ModeAuto starts as a client")
	require.NoError(t, d.Close())
	require.NoError(t, d.Close(), "Close twice")
	_, err = d.SearchValue(ctx, "/pk/x")
	require.Error(t, err)
	require.Empty(t, collect(d.FindProvidersAsync(ctx, testCID(t, "closed"), 0)))
}

// Close stops every goroutine, abandoned streaming reads included.
func TestCloseLeavesNoGoroutine(t *testing.T) {
	before := goleak.IgnoreCurrent()
	func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		var hosts []host.Host
		var ds []*dual.DHT
		for i := 0; i < 3; i++ {
			h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.DisableRelay())
			require.NoError(t, err)
			hosts = append(hosts, h)
			d, err := dual.New(ctx, h,
				dual.DHTOption(kad.NamespacedValidator("test", seqValidator{})),
				dual.WanDHTOption(kad.Mode(kad.ModeServer), kad.AddressFilter(kad.AnyAddrs)))
			require.NoError(t, err)
			ds = append(ds, d)
		}
		for _, h := range hosts[1:] {
			require.NoError(t, h.Connect(ctx, info(hosts[0])))
		}
		waitFor(t, 10*time.Second, "tables", func() bool {
			return ds[1].LAN().RoutingTable().Size() > 0 && ds[1].WAN().RoutingTable().Size() > 0
		})
		require.NoError(t, ds[1].PutValue(ctx, "/test/x", []byte("1:x")))
		require.NoError(t, ds[1].Provide(ctx, testCID(t, "leak"), true))
		// Reads nobody reads from, with a context nobody cancels.
		_, err := ds[2].SearchValue(context.Background(), "/test/x")
		require.NoError(t, err)
		_ = ds[2].FindProvidersAsync(context.Background(), testCID(t, "leak"), 0)
		_, _ = ds[2].FindPeer(ctx, hosts[1].ID())
		for _, d := range ds {
			require.NoError(t, d.Close())
		}
		for _, h := range hosts {
			require.NoError(t, h.Close())
		}
	}()
	goleak.VerifyNone(t, before)
}
