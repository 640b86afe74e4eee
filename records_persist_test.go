package kad

import (
	"fmt"
	"testing"
	"time"

	leveldb "github.com/ipfs/go-ds-leveldb"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/routing"
	"github.com/stretchr/testify/require"

	"github.com/kadlib/kad/internal/pb"
)

// A node on a LevelDB datastore, restarted on the same directory, still
// serves the records it stored, with their original time received.
func TestValuesPersistAcrossRestart(t *testing.T) {
	ctx := testCtx(t, time.Minute)
	tn := newTestNet(t, 8, 41, valueOpts()...)
	dir := t.TempDir()
	open := func() *leveldb.Datastore {
		store, err := leveldb.NewDatastore(dir, nil)
		require.NoError(t, err)
		return store
	}

	// The persistent node joins the network; the network is smaller than
	// k, so every put reaches it.
	h, err := tn.mn.GenPeer()
	require.NoError(t, err)
	require.NoError(t, tn.mn.LinkAll())
	store := open()
	start := func(store *leveldb.Datastore) *DHT {
		d, err := New(ctx, h, append(valueOpts(), Mode(ModeServer), Datastore(store))...)
		require.NoError(t, err)
		return d
	}
	d := start(store)
	d.keeper.cfg.bootstrapPeers = []peer.AddrInfo{{ID: tn.nodes[0].self, Addrs: tn.nodes[0].h.Addrs()}}
	require.NoError(t, d.Bootstrap(ctx))
	for _, o := range tn.nodes {
		waitFor(t, 10*time.Second, "persistent node in every table", func() bool { return o.rt.Find(d.self) })
	}

	const keys = 10
	timeReceived := make(map[string]string)
	for i := 0; i < keys; i++ {
		key := fmt.Sprintf("/test/persist-%d", i)
		require.NoError(t, tn.nodes[i%len(tn.nodes)].PutValue(ctx, key, []byte(fmt.Sprintf("1:%d", i))))
		resp, err := tn.nodes[0].q.request(ctx, d.self, &pb.Message{Type: pb.GetValue, Key: []byte(key)})
		require.NoError(t, err)
		require.NotNil(t, resp.Record, "persistent node stored %s", key)
		timeReceived[key] = resp.Record.TimeReceived
	}
	require.NoError(t, d.PutValue(ctx, "/test/own", []byte("1:own")))

	// Restart: stop the DHT, close the database, reopen it, start again.
	require.NoError(t, d.Close())
	require.NoError(t, store.Close())
	store = open()
	t.Cleanup(func() { _ = store.Close() })
	d = start(store)
	t.Cleanup(func() { _ = d.Close() })

	for i := 0; i < keys; i++ {
		key := fmt.Sprintf("/test/persist-%d", i)
		resp, err := tn.nodes[1].q.request(ctx, d.self, &pb.Message{Type: pb.GetValue, Key: []byte(key)})
		require.NoError(t, err)
		require.NotNil(t, resp.Record, "served after restart: %s", key)
		require.Equal(t, fmt.Sprintf("1:%d", i), string(resp.Record.Value))
		require.Equal(t, timeReceived[key], resp.Record.TimeReceived, "time received survives")
	}
	v, err := d.GetValue(ctx, "/test/own", routing.Offline)
	require.NoError(t, err)
	require.Equal(t, []byte("1:own"), v)
}
