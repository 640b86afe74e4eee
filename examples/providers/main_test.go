package main

import (
	"bytes"
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The example, run small: every file is found, fetched from node 0 and
// verified against its CID.
func TestProviders(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out bytes.Buffer
	err := run(ctx, []string{"-n", "6", "-files", "4", "-k", "2", "-seed", "3"}, &out)
	t.Log("\n" + out.String())
	require.NoError(t, err)

	files, err := makeFiles(3, 4)
	require.NoError(t, err)
	_, table, ok := strings.Cut(out.String(), "\nCID ")
	require.True(t, ok, "no table in the output")
	lines := strings.Split(table, "\n")[1:]
	for i, f := range files {
		require.Contains(t, out.String(), "node 0 provides "+f.cid.String())
		row := lines[i]
		require.True(t, strings.HasPrefix(row, short(f.cid)), "row %d: %q", i, row)
		require.Contains(t, row, "node 0", "provider of %s", f.cid)
		require.Contains(t, row, " "+strconv.Itoa(len(f.data))+" ", "size of %s", f.cid)
		require.True(t, strings.HasSuffix(strings.TrimSpace(row), "yes"), "verified: %q", row)
	}
	require.Contains(t, out.String(), "4/4 files fetched and verified")
}

// The fetch protocol refuses what the provider lacks and bytes that do
// not match the CID.
func TestFetchChecks(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var hosts []host.Host
	for range 2 {
		h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
		require.NoError(t, err)
		t.Cleanup(func() { _ = h.Close() })
		hosts = append(hosts, h)
	}
	files, err := makeFiles(1, 3)
	require.NoError(t, err)
	good, missing := files[0], files[1]
	tampered := file{cid: files[2].cid, data: []byte("not what the CID names")}
	serveFiles(hosts[0], []file{good, tampered})
	prov := peer.AddrInfo{ID: hosts[0].ID(), Addrs: hosts[0].Addrs()}

	data, err := fetch(ctx, hosts[1], prov, good.cid)
	require.NoError(t, err)
	require.Equal(t, good.data, data)
	_, err = fetch(ctx, hosts[1], prov, missing.cid)
	require.ErrorContains(t, err, "does not have it")
	_, err = fetch(ctx, hosts[1], prov, tampered.cid)
	require.ErrorContains(t, err, "does not match")
}
