package kad

import (
	"context"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	leveldb "github.com/ipfs/go-ds-leveldb"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/routing"
	"github.com/stretchr/testify/require"

	"github.com/kadlib/kad/internal/pb"
)

// copyDir copies the files of src into dst. Copying a LevelDB directory
// while the database writes to it gives what a crash would leave on disk:
// everything written so far, the journal perhaps cut mid-record. The test
// writes far less than LevelDB's 4 MiB write buffer, so no compaction
// rewrites files under the copy; only the journal grows.
func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	entries, err := os.ReadDir(src)
	require.NoError(t, err)
	for _, e := range entries {
		in, err := os.Open(filepath.Join(src, e.Name()))
		require.NoError(t, err)
		out, err := os.Create(filepath.Join(dst, e.Name()))
		require.NoError(t, err)
		_, err = io.Copy(out, in)
		require.NoError(t, err)
		require.NoError(t, in.Close())
		require.NoError(t, out.Close())
	}
}

// A node on LevelDB killed while peers are writing to it (its host closed,
// its DHT abandoned without Close, the disk copied as the crash left it)
// restarts with every record and provider record it acknowledged: a
// PUT_VALUE it echoed, an ADD_PROVIDER followed by an answer on the same
// stream (requests on a stream are served in order), a local PutValue or
// Provide that returned.
func TestKilledMidWriteKeepsAcknowledged(t *testing.T) {
	tn := newTestNet(t, 4, 150, valueOpts(RandomWalk(false))...)
	dir, crashDir := t.TempDir(), t.TempDir()
	store, err := leveldb.NewDatastore(dir, nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = store.Close() })
	h, err := tn.mn.GenPeer()
	require.NoError(t, err)
	victim, err := New(context.Background(), h, valueOpts(Mode(ModeServer), RandomWalk(false), Datastore(store))...)
	require.NoError(t, err)
	t.Cleanup(func() { _ = victim.Close() }) // only after the checks: it was abandoned

	const writers, perWriter = 3, 400
	r := rand.New(rand.NewPCG(151, 0))
	var (
		mu        sync.Mutex
		values    = map[string]string{}       // acknowledged PUT_VALUEs
		providers = map[string]peer.ID{}      // acknowledged ADD_PROVIDERs: key -> provider
		local     = map[string]string{}       // acknowledged local PutValues
		localProv = map[string]bool{}         // acknowledged local Provides (multihash keys)
		provKeys  = make([][][]byte, writers) // drawn here: provCID needs the test goroutine
		conns     []*rawConn
	)
	for w := range writers {
		for range perWriter {
			provKeys[w] = append(provKeys[w], provCID(t, r).Hash())
		}
	}
	localCIDs := make([]cid.Cid, 0, perWriter)
	for range perWriter {
		localCIDs = append(localCIDs, provCID(t, r))
	}
	for range 2 * writers {
		wh, err := tn.mn.GenPeer()
		require.NoError(t, err)
		require.NoError(t, tn.mn.LinkAll())
		conns = append(conns, openRaw(t, wh, victim.self))
	}

	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(2)
		go func(c *rawConn) { // PUT_VALUE
			defer wg.Done()
			for i := 0; i < perWriter; i++ {
				select {
				case <-stop:
					return
				default:
				}
				key, value := fmt.Sprintf("/test/crash-%d-%d", w, i), fmt.Sprintf("1:%d", i)
				resp, err := c.ask(&pb.Message{Type: pb.PutValue, Key: []byte(key), Record: &pb.Record{Key: []byte(key), Value: []byte(value)}})
				if err != nil {
					return
				}
				if resp.Record != nil && string(resp.Record.Value) == value {
					mu.Lock()
					values[key] = value
					mu.Unlock()
				}
			}
		}(conns[2*w])
		go func(c *rawConn) { // ADD_PROVIDER, then FIND_NODE as the acknowledgement
			defer wg.Done()
			self := c.s.Conn().LocalPeer()
			addr := c.s.Conn().LocalMultiaddr().Bytes()
			for _, key := range provKeys[w] {
				select {
				case <-stop:
					return
				default:
				}
				add := &pb.Message{Type: pb.AddProvider, Key: key, ProviderPeers: []pb.Peer{{ID: []byte(self), Addrs: [][]byte{addr}}}}
				if err := c.writeBytes(msgFrame(add)); err != nil {
					return
				}
				if _, err := c.ask(&pb.Message{Type: pb.FindNode, Key: []byte("ack")}); err != nil {
					return
				}
				mu.Lock()
				providers[string(key)] = self
				mu.Unlock()
			}
		}(conns[2*w+1])
	}
	wg.Add(1)
	go func() { // the node's own writes
		defer wg.Done()
		ctx := context.Background()
		for i, c := range localCIDs {
			select {
			case <-stop:
				return
			default:
			}
			k, v := fmt.Sprintf("/test/own-%d", i), fmt.Sprintf("1:%d", i)
			if victim.PutValue(ctx, k, []byte(v), routing.Offline) == nil {
				mu.Lock()
				local[k] = v
				mu.Unlock()
			}
			if victim.Provide(ctx, c, false) == nil {
				mu.Lock()
				localProv[string(c.Hash())] = true
				mu.Unlock()
			}
		}
	}()

	// Crash in the middle: what was acknowledged so far must survive.
	waitFor(t, 30*time.Second, "writes under way", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(values) >= 50 && len(providers) >= 50 && len(local) >= 50
	})
	mu.Lock()
	ackedValues, ackedLocal := maps.Clone(values), maps.Clone(local)
	ackedProv, ackedLocalProv := maps.Clone(providers), maps.Clone(localProv)
	mu.Unlock()
	copyDir(t, dir, crashDir)
	require.NoError(t, h.Close()) // the process dies: no Close, no flush
	close(stop)
	wg.Wait()
	t.Logf("killed after %d PUT_VALUEs, %d ADD_PROVIDERs, %d local puts and %d local provides were acknowledged",
		len(ackedValues), len(ackedProv), len(ackedLocal), len(ackedLocalProv))

	reopened, err := leveldb.NewDatastore(crashDir, nil)
	require.NoError(t, err, "the crashed database opens")
	t.Cleanup(func() { _ = reopened.Close() })
	h2, err := tn.mn.GenPeer()
	require.NoError(t, err)
	require.NoError(t, tn.mn.LinkAll())
	restarted, err := New(context.Background(), h2, valueOpts(Mode(ModeServer), RandomWalk(false), Datastore(reopened))...)
	require.NoError(t, err)
	t.Cleanup(func() { _ = restarted.Close() })
	ctx := testCtx(t, time.Minute)
	for k, v := range ackedValues {
		require.Equal(t, v, string(stored(t, restarted, k)), "acknowledged record %s", k)
	}
	for k, v := range ackedLocal {
		require.Equal(t, v, string(stored(t, restarted, k)), "local record %s", k)
	}
	for k, p := range ackedProv {
		got, err := restarted.provs.store.GetProviders(ctx, []byte(k))
		require.NoError(t, err)
		require.Contains(t, provIDs(got), p, "acknowledged provider record")
	}
	for k := range ackedLocalProv {
		got, err := restarted.provs.store.GetProviders(ctx, []byte(k))
		require.NoError(t, err)
		require.Contains(t, provIDs(got), victim.self, "local provider record")
	}
	// And it serves them to the network.
	for k, v := range ackedValues {
		resp, err := tn.nodes[0].q.request(ctx, restarted.self, &pb.Message{Type: pb.GetValue, Key: []byte(k)})
		require.NoError(t, err)
		require.NotNil(t, resp.Record)
		require.Equal(t, v, string(resp.Record.Value))
		break
	}
}
