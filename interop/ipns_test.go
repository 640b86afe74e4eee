package interop

import (
	"context"
	"testing"
	"time"

	"github.com/ipfs/boxo/ipns"
	ipnspb "github.com/ipfs/boxo/ipns/pb"
	"github.com/ipfs/boxo/path"
	"github.com/ipfs/go-cid"
	godht "github.com/libp2p/go-libp2p-kad-dht"
	dhtpb "github.com/libp2p/go-libp2p-kad-dht/pb"
	record "github.com/libp2p/go-libp2p-record"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/routing"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/kadlib/kad"
)

// ipnsName returns a fresh ed25519 key and the DHT key of its IPNS name.
func ipnsName(t *testing.T) (crypto.PrivKey, string) {
	t.Helper()
	sk, _, err := crypto.GenerateEd25519Key(nil)
	require.NoError(t, err)
	id, err := peer.IDFromPrivateKey(sk)
	require.NoError(t, err)
	return sk, string(ipns.NameFromPeer(id).RoutingKey())
}

// ipnsRecord returns an IPNS record signed by sk, valid until eol, in its
// wire form.
func ipnsRecord(t *testing.T, sk crypto.PrivKey, seq uint64, eol time.Time) []byte {
	t.Helper()
	c, err := cid.Decode("bafkqaaa")
	require.NoError(t, err)
	rec, err := ipns.NewRecord(sk, path.FromCid(c), seq, eol, time.Minute)
	require.NoError(t, err)
	b, err := ipns.MarshalRecord(rec)
	require.NoError(t, err)
	return b
}

// A go-libp2p-kad-dht node puts an IPNS record on a kad node with default
// options, which stores it and serves it to kad and go readers; records
// that go's own validator would refuse, sent raw, kad refuses too.
func TestGoKadIPNS(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	k := newKad(t)
	g := newGoKad(t)
	connect(t, ctx, g.Host(), k.Host())
	eventually(t, 10*time.Second, "go knows kad", func() bool { return g.RoutingTable().Find(k.Host().ID()) != "" })
	eventually(t, 10*time.Second, "kad knows go", func() bool { return k.RoutingTable().Find(g.Host().ID()) })

	sk, key := ipnsName(t)
	rec := ipnsRecord(t, sk, 1, time.Now().Add(time.Hour))
	require.NoError(t, g.PutValue(ctx, key, rec))
	got, err := k.GetValue(ctx, key, routing.Offline)
	require.NoError(t, err, "kad stored go's PUT_VALUE")
	require.Equal(t, rec, got)

	// Raw PUT_VALUEs, past go's own checks.
	pm, err := dhtpb.NewProtocolMessenger(g.MessageSender())
	require.NoError(t, err)
	otherSK, otherKey := ipnsName(t)
	badSig := func() []byte {
		var m ipnspb.IpnsRecord
		require.NoError(t, proto.Unmarshal(ipnsRecord(t, otherSK, 1, time.Now().Add(time.Hour)), &m))
		m.SignatureV2[0] ^= 0xff
		if len(m.SignatureV1) > 0 {
			m.SignatureV1[0] ^= 0xff
		}
		b, err := proto.Marshal(&m)
		require.NoError(t, err)
		return b
	}()
	_, freshKey := ipnsName(t)
	_, expiredKey := ipnsName(t)
	invalid := []struct {
		name, key string
		value     []byte
	}{
		{"bad signature", otherKey, badSig},
		{"signed by another key", freshKey, ipnsRecord(t, otherSK, 1, time.Now().Add(time.Hour))},
		{"expired", expiredKey, ipnsRecord(t, sk, 1, time.Now().Add(-time.Minute))},
		{"older than stored", key, ipnsRecord(t, sk, 0, time.Now().Add(time.Hour))},
	}
	for _, tc := range invalid {
		t.Run(tc.name, func(t *testing.T) {
			require.Error(t, pm.PutValue(ctx, k.Host().ID(), record.MakePutRecord(tc.key, tc.value)), "kad refuses it")
			got, err := k.GetValue(ctx, tc.key, routing.Offline)
			if tc.key == key {
				require.NoError(t, err)
				require.Equal(t, rec, got, "the stored record is kept")
				return
			}
			require.ErrorIs(t, err, routing.ErrNotFound, "nothing stored")
		})
	}

	// With the writer gone, only kad holds the record; fresh readers of
	// both implementations get it from kad over the wire.
	require.NoError(t, g.Close())
	require.NoError(t, g.Host().Close())

	k2 := newKad(t)
	connect(t, ctx, k2.Host(), k.Host())
	eventually(t, 10*time.Second, "kad reader knows kad", func() bool { return k2.RoutingTable().Find(k.Host().ID()) })
	_, err = k2.GetValue(ctx, key, routing.Offline)
	require.ErrorIs(t, err, routing.ErrNotFound, "the kad reader starts empty")
	var from []peer.ID
	got, err = k2.GetValue(ctx, key, kad.OnValue(func(p peer.ID, _ []byte) { from = append(from, p) }))
	require.NoError(t, err)
	require.Equal(t, rec, got)
	require.Contains(t, from, k.Host().ID(), "served by the kad node")

	g2 := newGoKad(t, godht.BootstrapPeers())
	connect(t, ctx, g2.Host(), k.Host())
	eventually(t, 10*time.Second, "go reader knows kad", func() bool { return g2.RoutingTable().Find(k.Host().ID()) != "" })
	got, err = g2.GetValue(ctx, key)
	require.NoError(t, err)
	require.Equal(t, rec, got)
}
