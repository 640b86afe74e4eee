package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/control"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/stretchr/testify/require"

	"github.com/kadlib/kad"
)

// testAgent is the agent version the test network's nodes announce.
const testAgent = "kad-test/1.0"

// netNode is one server node of an in-process loopback network.
type netNode struct {
	h       host.Host
	d       *kad.DHT
	refuser *refuser
}

// refuser is a connection gater that, once on, refuses every new inbound
// connection while the existing ones go on.
type refuser struct{ on atomic.Bool }

func (r *refuser) InterceptPeerDial(peer.ID) bool               { return true }
func (r *refuser) InterceptAddrDial(peer.ID, ma.Multiaddr) bool { return true }
func (r *refuser) InterceptAccept(network.ConnMultiaddrs) bool  { return !r.on.Load() }
func (r *refuser) InterceptSecured(network.Direction, peer.ID, network.ConnMultiaddrs) bool {
	return true
}
func (r *refuser) InterceptUpgraded(network.Conn) (bool, control.DisconnectReason) { return true, 0 }

func (n *netNode) addr() string { return p2pAddrs(peer.AddrInfo{ID: n.h.ID(), Addrs: n.h.Addrs()})[0] }

// startNetwork starts n kad server nodes on 127.0.0.1 over real TCP,
// connects each to a dozen others, and waits until every node is in some
// other node's routing table (so a crawl can find each of them) and has
// at least ten peers in its own.
func startNetwork(ctx context.Context, t *testing.T, n int, opts ...kad.Option) []*netNode {
	t.Helper()
	nodes := make([]*netNode, n)
	for i := range nodes {
		ref := &refuser{}
		h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.UserAgent(testAgent), libp2p.ConnectionGater(ref))
		require.NoError(t, err)
		d, err := kad.New(ctx, h, append([]kad.Option{
			kad.Mode(kad.ModeServer),
			kad.NamespacedValidator(cliNamespace, cliValidator{}),
			kad.Logger(slog.New(slog.DiscardHandler)),
			kad.RandomWalk(false),
		}, opts...)...)
		require.NoError(t, err)
		nodes[i] = &netNode{h: h, d: d, refuser: ref}
		t.Cleanup(func() {
			_ = d.Close()
			_ = h.Close()
		})
	}
	// Each node connects to a dozen others at random; both sides admit
	// each other into their tables. (Lookups from all nodes at once, as a
	// Bootstrap of each would run, take far longer on two cores.)
	start := time.Now()
	rng := rand.New(rand.NewPCG(1, 2))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for i, nd := range nodes {
		for _, j := range rng.Perm(n)[:min(n-1, 12)] {
			if j == i {
				continue
			}
			other := peer.AddrInfo{ID: nodes[j].h.ID(), Addrs: nodes[j].h.Addrs()}
			wg.Add(1)
			go func() {
				defer wg.Done()
				sem <- struct{}{}
				defer func() { <-sem }()
				_ = nd.h.Connect(ctx, other) // the check below tells
			}()
		}
	}
	wg.Wait()
	// Then each looks itself up, which fills its nearest buckets as a
	// Bootstrap's self lookup would (without the bucket refreshes).
	for _, nd := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			_, _ = nd.d.GetClosestPeers(ctx, string(nd.h.ID()))
		}()
	}
	wg.Wait()
	t.Logf("%d nodes connected in %v", n, time.Since(start))
	require.Eventually(t, func() bool {
		listed := make(map[peer.ID]bool)
		for _, nd := range nodes {
			for _, p := range nd.d.RoutingTable().ListPeers() {
				listed[p] = true
			}
		}
		for _, nd := range nodes {
			if !listed[nd.h.ID()] || nd.d.RoutingTable().Size() < min(n-1, 10) {
				return false
			}
		}
		return true
	}, 30*time.Second, 50*time.Millisecond, "every node in some routing table")
	return nodes
}

// runCmd runs a command line in-process with a deadline.
func runCmd(ctx context.Context, t *testing.T, stdin string, args ...string) result {
	t.Helper()
	t.Setenv(bootstrapEnv, "")
	var out, errOut bytes.Buffer
	code := run(ctx, args, strings.NewReader(stdin), &out, &errOut)
	return result{stdout: out.String(), stderr: errOut.String(), code: code}
}

// A crawl of a 60-node loopback network (12 with -short) finds every
// node: all but one answer, and one that can no longer be dialled is
// counted as failed. That node
// is "stopped" by refusing every new connection: its peers keep theirs
// and so keep it in their tables, as they keep a node that just crashed
// until they notice, or one behind a NAT whose mapping expired; a crawl
// must report it rather than miss it.
func TestCrawl(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	n := 60
	if testing.Short() {
		n = 12 // the race detector makes TLS handshakes slow
	}
	nodes := startNetwork(ctx, t, n)
	gone := nodes[n/2]
	gone.refuser.on.Store(true)

	start := time.Now()
	r := runCmd(ctx, t, "", "crawl", "--bootstrap", nodes[0].addr(), "--json", "--timeout", "45s")
	require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
	t.Logf("crawl took %v", time.Since(start))
	var sum crawlSummary
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &sum), "crawl --json output: %s", r.stdout)
	require.Equal(t, n, sum.Found, "servers found")
	require.Equal(t, n-1, sum.Answered)
	require.Equal(t, 1, sum.Failed)
	require.Zero(t, sum.Refused)
	require.Zero(t, sum.Unvisited)
	require.Len(t, sum.Peers, n)
	for _, p := range sum.Peers {
		if p.ID == gone.h.ID().String() {
			require.Equal(t, crawlFailed, p.State)
			require.NotEmpty(t, p.Error)
		} else {
			require.Equal(t, crawlAnswered, p.State, "peer %s: %s", p.ID, p.Error)
			require.Positive(t, p.TableSize)
		}
	}
	require.Equal(t, n-1, sum.Agents[testAgent])
	require.Equal(t, n-1, sum.Protocols["/ipfs/kad/1.0.0"])
	require.Positive(t, sum.Tables.Min)
	require.LessOrEqual(t, sum.Tables.Min, sum.Tables.Median)
	require.LessOrEqual(t, sum.Tables.Median, sum.Tables.Max)
	require.Less(t, sum.Tables.Max, n)
	if n > crawlK {
		require.Positive(t, sum.EstimateFrom)
		require.InDelta(t, n, sum.Estimate, float64(n)*0.6, "size estimate")
	}

	// The text form, as the README shows it.
	r = runCmd(ctx, t, "", "crawl", "--bootstrap", nodes[0].addr(), "--concurrency", "4")
	require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
	t.Logf("kad crawl output:\n%s", r.stdout)
	require.Contains(t, r.stdout, fmt.Sprintf("servers found: %d\n", n))
	require.Contains(t, r.stdout, fmt.Sprintf("  answered:  %d\n", n-1))
	require.Contains(t, r.stdout, "  failed:    1 ")
	require.Contains(t, r.stdout, testAgent)
	require.Empty(t, r.stderr, "no progress lines for a short crawl to a non-terminal")

	// Usage mistakes.
	r = runCmd(ctx, t, "", "crawl", "--bootstrap", nodes[0].addr(), "--concurrency", "0")
	require.Equal(t, exitUsage, r.code)
	require.Contains(t, r.stderr, "--concurrency 0")
	r = runCmd(ctx, t, "", "crawl")
	require.Equal(t, exitUsage, r.code)
	require.Contains(t, r.stderr, "no bootstrap peer")
}

// A crawl whose servers speak another protocol counts them as refused.
func TestCrawlOtherPrefix(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	nodes := startNetwork(ctx, t, 2)
	r := runCmd(ctx, t, "", "crawl", "--bootstrap", nodes[0].addr(), "--prefix", "/other", "--json")
	require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr) // --json prints the document whatever it holds
	var sum crawlSummary
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &sum))
	require.Equal(t, 1, sum.Found)
	require.Equal(t, 1, sum.Refused)
	r = runCmd(ctx, t, "", "crawl", "--bootstrap", nodes[0].addr(), "--prefix", "/other")
	require.Equal(t, exitFail, r.code)
	require.Contains(t, r.stdout, "refused:   1")
	require.Contains(t, r.stderr, "no server answered on /other/kad/1.0.0")
}
