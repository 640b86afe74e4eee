package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/ipfs/go-cid"
	"github.com/stretchr/testify/require"

	"github.com/kadlib/kad"
)

// chromiumPath is where Debian's chromium package puts the browser.
const chromiumPath = "/usr/bin/chromium"

// screenshotPath is the status page as the browser test saw it when run
// with KAD_SCREENSHOT=1, linked from the README; other runs save theirs in
// a temporary directory, so a test run leaves the tree as it was.
const screenshotPath = "testdata/status.png"

// watchedNode is a server node with the status page on loopback, as
// serve --http runs it, for tests that compare the page with the node.
func watchedNode(ctx context.Context, t *testing.T) (*node, string) {
	t.Helper()
	f, _, err := parseArgs(findCommand("serve"), []string{"--listen", "/ip4/127.0.0.1/tcp/0", "--http", "127.0.0.1:0"})
	require.NoError(t, err)
	f.bootstrap = nil
	obs, err := newObserver(f)
	require.NoError(t, err)
	n, err := startNode(ctx, f, kad.ModeServer, "", io.Discard, obs.options()...)
	require.NoError(t, err)
	obs.start(n, &printer{w: io.Discard})
	t.Cleanup(func() { require.NoError(t, errors.Join(obs.Close(), n.Close())) })
	return n, "http://" + obs.httpLn.Addr().String() + "/"
}

// The status page in headless Chromium, on a loopback network of four
// servers and a client: the page draws the table, and the numbers it
// shows are the node's. It saves the screenshot the README shows.
func TestStatusPageBrowser(t *testing.T) {
	if _, err := os.Stat(chromiumPath); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s: %v; CI must install Debian's chromium package (.ci/run does)", chromiumPath, err)
		}
		t.Skipf("%s not found (apt-get install chromium); with CI=true this fails", chromiumPath)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	n, url := watchedNode(ctx, t)
	boot := n.addrs()[0]
	for range 3 {
		startPeer(ctx, t, kad.ModeServer, boot)
	}
	cl := startPeer(ctx, t, kad.ModeClient, boot)
	for _, name := range []string{"greeting", "motd"} {
		require.NoError(t, cl.d.PutValue(ctx, "/kad-cli/"+name, encodeValue([]byte("hello"), time.Now())))
		c, err := cid.Decode(testCID(t, name))
		require.NoError(t, err)
		require.NoError(t, cl.d.Provide(ctx, c, true))
	}
	_, err := cl.d.GetValue(ctx, "/kad-cli/greeting")
	require.NoError(t, err)
	// Wait for the node to settle: every server in its table, and the
	// provider records Provide sends after returning.
	require.Eventually(t, func() bool {
		c, err := n.d.StoreCounts(ctx)
		require.NoError(t, err)
		return n.d.RoutingTable().Size() == 3 && c.Values == 2 && c.Providers == 2
	}, 20*time.Second, 50*time.Millisecond, "3 peers, 2 values and 2 provider records on the watched node")

	var chromeOut bytes.Buffer
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromiumPath),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-quic", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900),
		chromedp.CombinedOutput(&chromeOut),
	)
	actx, acancel := chromedp.NewExecAllocator(ctx, opts...)
	defer acancel()
	bctx, bcancel := chromedp.NewContext(actx)
	defer bcancel()
	defer func() {
		if t.Failed() {
			t.Logf("chromium output:\n%s", chromeOut.String())
		}
	}()

	// Loaded, the table drawn, and a second poll in, so the rates show.
	require.NoError(t, chromedp.Do(bctx,
		chromedp.Navigate(url),
		chromedp.WaitVisible(chromedp.CSS(`body[data-loaded="true"] #table .peer`)),
	))
	// Traffic while the page watches, both ways, so rates are not zero.
	for i := range 6 {
		_, err := cl.d.GetValue(ctx, "/kad-cli/greeting")
		require.NoError(t, err)
		_, err = n.d.GetClosestPeers(ctx, "key "+strconv.Itoa(i))
		require.NoError(t, err)
		// Real hosts and a real browser: the requests are spread over the
		// page's polling period so its rates see traffic; this paces the
		// load, it waits for nothing.
		time.Sleep(300 * time.Millisecond)
	}
	_, err = chromedp.Run(bctx, chromedp.Poll[bool](
		`document.querySelectorAll(".peer[data-peer]").length === 3 &&
		 [...document.querySelectorAll("#rates tr[data-type] td:nth-child(2)")].some((td) => parseFloat(td.textContent) > 0) &&
		 [...document.querySelectorAll("#rates tr[data-type] td:nth-child(3)")].some((td) => parseFloat(td.textContent) > 0)`,
		chromedp.WithPollingInterval(100*time.Millisecond), chromedp.WithPollingTimeout(20*time.Second)))
	require.NoError(t, err, "the page shows 3 peers and request rates")

	type shown struct {
		ID, Mode, Protocol, Peers, Values, Providers, Network string
		Goroutines                                            string
		PeerIDs, PeerBuckets                                  []string
		Buckets, LookupRows, RateTypes                        []string
		Addrs                                                 []string
	}
	got, err := chromedp.Run(bctx, chromedp.Evaluate[shown](`(() => {
		const text = (id) => document.getElementById(id).textContent;
		const all = (sel, f) => [...document.querySelectorAll(sel)].map(f);
		return {
			ID: text("node-id"), Mode: text("mode"), Protocol: text("protocol"),
			Peers: text("peer-count"), Values: text("values-count"), Providers: text("providers-count"),
			Network: text("network-size"), Goroutines: text("goroutines"),
			PeerIDs: all(".peer[data-peer]", (e) => e.dataset.peer),
			PeerBuckets: all(".peer[data-peer]", (e) => e.dataset.bucket),
			Buckets: all(".bucket[data-index]", (e) => e.dataset.index),
			LookupRows: all("#lookups tr", (e) => e.textContent),
			RateTypes: all("#rates tr[data-type]", (e) => e.dataset.type),
			Addrs: all("#addrs li", (e) => e.textContent),
		};
	})()`))
	require.NoError(t, err)

	// What the node itself says.
	counts, err := n.d.StoreCounts(ctx)
	require.NoError(t, err)
	require.Equal(t, n.h.ID().String(), got.ID)
	require.Equal(t, "server", got.Mode)
	require.Equal(t, string(n.d.Protocol()), got.Protocol)
	require.Equal(t, strconv.Itoa(n.d.RoutingTable().Size()), got.Peers)
	require.Equal(t, strconv.Itoa(counts.Values), got.Values)
	require.Equal(t, strconv.Itoa(counts.Providers), got.Providers)
	require.Equal(t, "4", got.Network, "3 peers and us, below k")
	require.Equal(t, n.addrs(), got.Addrs)
	// The node runs in the test process, whose goroutine count moves all
	// the time: the page shows a number, and a positive one.
	gs, err := strconv.Atoi(got.Goroutines)
	require.NoError(t, err, "goroutines shown: %q", got.Goroutines)
	require.Positive(t, gs)

	var want, wantBuckets []string
	bucketOf := map[string]string{}
	for _, b := range n.d.RoutingTable().Buckets() {
		wantBuckets = append(wantBuckets, strconv.Itoa(b.Index))
		for _, p := range b.Peers {
			want = append(want, p.ID.String())
			bucketOf[p.ID.String()] = strconv.Itoa(b.Index)
		}
	}
	require.ElementsMatch(t, want, got.PeerIDs, "the page lists the table's peers")
	for i, id := range got.PeerIDs {
		require.Equal(t, bucketOf[id], got.PeerBuckets[i], "bucket of %s", id)
	}
	slices.Reverse(wantBuckets) // the page draws the closest bucket first
	require.Equal(t, wantBuckets, got.Buckets)
	require.NotEmpty(t, got.LookupRows)
	require.NotContains(t, got.LookupRows[0], "no lookups yet")
	require.Contains(t, got.RateTypes, "FIND_NODE")
	require.Contains(t, got.RateTypes, "PUT_VALUE")

	png, err := chromedp.Run(bctx, chromedp.FullScreenshot(100))
	require.NoError(t, err)
	require.True(t, bytes.HasPrefix(png, []byte("\x89PNG")), "a PNG screenshot")
	path := filepath.Join(t.TempDir(), "status.png")
	if os.Getenv("KAD_SCREENSHOT") == "1" {
		path = screenshotPath
	}
	require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
	require.NoError(t, os.WriteFile(path, png, fs.FileMode(0o644)))
	t.Logf("screenshot saved to %s", path)
}
