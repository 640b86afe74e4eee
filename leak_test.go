package kad

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/kadlib/kad/internal/pb"
)

// ourGoroutines returns the stacks of the goroutines, other than the
// caller's, running code of this module outside test files.
func ourGoroutines() []string {
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Dir(file) + string(filepath.Separator)
	self := make([]byte, 64)
	self = self[:runtime.Stack(self, false)]
	selfHeader := string(self[:bytes.IndexByte(self, '[')])
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var ours []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.HasPrefix(g, selfHeader) {
			continue
		}
		for _, line := range strings.Split(g, "\n") {
			f := strings.TrimSpace(line)
			if strings.HasPrefix(f, root) && !strings.Contains(f, "_test.go:") {
				ours = append(ours, g)
				break
			}
		}
	}
	return ours
}

// After Close no goroutine of the DHT is left, even when lookups were
// cancelled mid-flight, requests hung, dials failed and background sends
// were still running; once the hosts are closed too, nothing at all is.
// It runs on mocknet, in real time, on purpose: what it checks is the
// libp2p carrier too (stream handlers, streams reset on hung requests,
// failed dials, one-way sends waiting on a stream), which memNetwork
// does not run.
func TestCloseLeavesNoGoroutine(t *testing.T) {
	before := goleak.IgnoreCurrent()
	tn := newTestNet(t, 12, 160, valueOpts(RequestTimeout(30*time.Second))...)
	r := rand.New(rand.NewPCG(161, 0))
	ctx := testCtx(t, time.Minute)

	// A peer in every table that never answers, one that is dead, and one
	// whose only address leads nowhere.
	hangHost, err := tn.mn.GenPeer()
	require.NoError(t, err)
	hang := serveFake(hangHost, func(_ peer.ID, req *pb.Message) *pb.Message {
		if req.Type == pb.FindNode && string(req.Key) == string(hangHost.ID()) {
			return reply(req, nil) // pass the admission check only
		}
		return nil
	})
	require.NoError(t, tn.mn.LinkAll())
	unreachable := seededPeer(r)
	for _, d := range tn.nodes[1:] {
		require.NoError(t, d.keeper.addPeer(ctx, peer.AddrInfo{ID: hangHost.ID(), Addrs: hangHost.Addrs()}))
		d.h.Peerstore().AddAddrs(unreachable, []ma.Multiaddr{ma.StringCast("/ip4/10.0.0.1/tcp/1")}, peerstore.PermanentAddrTTL)
		d.keeper.admit(unreachable)
	}
	tn.kill(t, 0)

	// Cancelled lookups, with requests to the hanging peer in flight.
	for i, d := range tn.nodes[1:] {
		lctx, cancel := context.WithTimeout(ctx, time.Duration(5+i*5)*time.Millisecond)
		_, _ = d.GetClosestPeers(lctx, "leak-key")
		_, _ = d.GetValue(lctx, "/test/leak")
		_, _ = d.FindPeer(lctx, seededPeer(r))
		cancel()
		sctx, scancel := context.WithCancel(ctx)
		ch, err := d.SearchValue(sctx, "/test/leak")
		require.NoError(t, err)
		pch := d.FindProvidersAsync(sctx, provCID(t, r), 0)
		scancel()
		for range ch {
		}
		for range pch {
		}
	}
	// Failed dials, and writes whose sends to the hanging peer outlive
	// the call.
	d := tn.nodes[1]
	require.Error(t, d.keeper.addPeer(ctx, peer.AddrInfo{ID: unreachable, Addrs: []ma.Multiaddr{ma.StringCast("/ip4/10.0.0.2/tcp/2")}}))
	pctx, pcancel := context.WithTimeout(ctx, 200*time.Millisecond)
	_ = d.PutValue(pctx, "/test/leak", []byte("1:x"))
	_ = d.Provide(pctx, provCID(t, r), true)
	pcancel()
	require.Positive(t, hang.requests.Load(), "requests were left hanging")

	require.NotEmpty(t, ourGoroutines(), "the check sees the DHTs' goroutines")
	for _, d := range tn.nodes {
		require.NoError(t, d.Close())
	}
	// Stream handlers and resets may still be unwinding on the hosts.
	var left []string
	defer func() {
		if t.Failed() {
			t.Logf("goroutines of ours left after Close:\n%s", strings.Join(left, "\n\n"))
		}
	}()
	waitFor(t, 5*time.Second, "no goroutine of ours left after Close, with the hosts still up", func() bool {
		left = ourGoroutines()
		return len(left) == 0
	})

	for _, h := range tn.mn.Hosts() {
		require.NoError(t, h.Close())
	}
	require.NoError(t, tn.mn.Close())
	goleak.VerifyNone(t, before)
}

// Close while every kind of call is running on the node, and while its
// peers keep sending it requests: each call returns, and no goroutine of
// the node outlives Close. Goroutines started by calls that lose the race
// with Close are either counted before Close waits or never started. It
// runs in virtual time on memNetwork; synctest.Test fails too if any
// goroutine is left.
func TestCloseDuringCalls(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tn := newMemTestNet(t, 10, 170, valueOpts()...)
		r := rand.New(rand.NewPCG(171, 0))
		ctx := testCtx(t, time.Minute)
		cids := make([]cid.Cid, 8)
		for i := range cids {
			cids[i] = provCID(t, r)
		}
		calls := []func(d *DHT, i int) error{
			func(d *DHT, i int) error { _, err := d.GetClosestPeers(ctx, fmt.Sprintf("k%d", i)); return err },
			func(d *DHT, i int) error { return d.PutValue(ctx, "/test/close", []byte(fmt.Sprintf("%d:v", i))) },
			func(d *DHT, i int) error { _, err := d.GetValue(ctx, "/test/close"); return err },
			func(d *DHT, i int) error {
				ch, err := d.SearchValue(ctx, "/test/close")
				if err != nil {
					return err
				}
				for range ch {
				}
				return nil
			},
			func(d *DHT, i int) error { return d.Provide(ctx, cids[i%len(cids)], true) },
			func(d *DHT, i int) error {
				for range d.FindProvidersAsync(ctx, cids[i%len(cids)], 0) {
				}
				if d.own.isClosed() {
					return ErrClosed // the channel only closes
				}
				return nil
			},
			func(d *DHT, i int) error { _, err := d.FindPeer(ctx, tn.nodes[i%len(tn.nodes)].self); return err },
		}
		victims := tn.nodes[:4]
		var wg sync.WaitGroup
		for _, d := range tn.nodes {
			for ci, call := range calls {
				wg.Go(func() {
					// Until the node closes (bounded all the same).
					for i := 0; i < 10_000 && !d.own.isClosed(); i++ {
						_ = call(d, ci*100+i)
					}
					if d.own.isClosed() {
						require.ErrorIs(t, call(d, 0), ErrClosed, "call %d after Close", ci)
					}
				})
			}
		}
		time.Sleep(300 * time.Millisecond)
		for _, d := range victims {
			require.NoError(t, d.Close())
		}
		for _, d := range tn.nodes[len(victims):] {
			require.NoError(t, d.Close())
		}
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			buf := make([]byte, 1<<22)
			t.Fatalf("calls still running 30 s after Close:\n%s", buf[:runtime.Stack(buf, true)])
		}
		synctest.Wait()
		require.Empty(t, ourGoroutines(), "goroutines of ours left after Close")
	})
}
