package kad

import (
	"context"
	"testing"
	"time"

	"github.com/ipfs/boxo/ipns"
	ipnspb "github.com/ipfs/boxo/ipns/pb"
	"github.com/ipfs/boxo/path"
	"github.com/ipfs/go-cid"
	record "github.com/libp2p/go-libp2p-record"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/kadlib/kad/internal/pb"
)

// ipnsKey is the DHT key of the IPNS name of p.
func ipnsKey(p peer.ID) string { return string(ipns.NameFromPeer(p).RoutingKey()) }

// ipnsIdentity returns a fresh ed25519 key, whose public key is inlined in
// its peer id, so IPNS records of it need no peerstore.
func ipnsIdentity(t testing.TB) (crypto.PrivKey, peer.ID) {
	t.Helper()
	sk, _, err := crypto.GenerateEd25519Key(nil)
	require.NoError(t, err)
	id, err := peer.IDFromPrivateKey(sk)
	require.NoError(t, err)
	return sk, id
}

// ipnsRecord returns an IPNS record signed by sk, pointing at a fixed CID
// and valid until eol, in its wire form.
func ipnsRecord(t testing.TB, sk crypto.PrivKey, seq uint64, eol time.Time, opts ...ipns.Option) []byte {
	t.Helper()
	c, err := cid.Decode("bafkqaaa") // the empty identity CID
	require.NoError(t, err)
	rec, err := ipns.NewRecord(sk, path.FromCid(c), seq, eol, time.Minute, opts...)
	require.NoError(t, err)
	b, err := ipns.MarshalRecord(rec)
	require.NoError(t, err)
	return b
}

// flipSignature returns rec with one byte of each of its signatures changed.
func flipSignature(t testing.TB, rec []byte) []byte {
	t.Helper()
	var m ipnspb.IpnsRecord
	require.NoError(t, proto.Unmarshal(rec, &m))
	require.NotEmpty(t, m.SignatureV2)
	m.SignatureV2[0] ^= 0xff
	if len(m.SignatureV1) > 0 {
		m.SignatureV1[0] ^= 0xff
	}
	out, err := proto.Marshal(&m)
	require.NoError(t, err)
	return out
}

// ipnsNet is two servers, a and b, and a client c that holds no record,
// all with the same options, linked and in each other's tables.
type ipnsNet struct{ a, b, c *DHT }

func newIPNSNet(t *testing.T, opts ...Option) *ipnsNet {
	t.Helper()
	_, hs := identifiedHosts(t, 3)
	n := &ipnsNet{}
	for i, x := range []struct {
		d    **DHT
		mode ModeOpt
	}{{&n.a, ModeServer}, {&n.b, ModeServer}, {&n.c, ModeClient}} {
		var err error
		*x.d, err = New(context.Background(), hs[i], append([]Option{Mode(x.mode)}, opts...)...)
		require.NoError(t, err)
		t.Cleanup(func() { _ = (*x.d).Close() })
	}
	waitFor(t, 10*time.Second, "tables filled", func() bool {
		return n.a.rt.Find(n.b.self) && n.b.rt.Find(n.a.self) && n.c.rt.Find(n.a.self) && n.c.rt.Find(n.b.self)
	})
	return n
}

// served is the record server s answers a GET_VALUE for key with, nil if none.
func served(t *testing.T, from, s *DHT, key string) []byte {
	t.Helper()
	resp, err := from.q.request(testCtx(t, 10*time.Second), s.self, &pb.Message{Type: pb.GetValue, Key: []byte(key)})
	require.NoError(t, err)
	if resp.Record == nil {
		return nil
	}
	return resp.Record.Value
}

// rawPut sends PUT_VALUE for key straight to s, skipping the sender's own
// validation.
func rawPut(ctx context.Context, from, s *DHT, key string, value []byte) error {
	_, err := from.q.request(ctx, s.self, &pb.Message{
		Type:   pb.PutValue,
		Key:    []byte(key),
		Record: &pb.Record{Key: []byte(key), Value: value},
	})
	return err
}

// A default node, on the Amino prefix, stores and serves valid IPNS records
// and refuses invalid ones.
func TestIPNSDefault(t *testing.T) {
	n := newIPNSNet(t)
	require.Equal(t, "/ipfs/kad/1.0.0", string(n.b.Protocol()))
	ctx := testCtx(t, time.Minute)

	sk, id := ipnsIdentity(t)
	key := ipnsKey(id)
	rec := ipnsRecord(t, sk, 1, time.Now().Add(time.Hour))
	require.NoError(t, n.a.PutValue(ctx, key, rec))
	require.Equal(t, rec, stored(t, n.b, key), "b accepted a's PUT_VALUE")
	require.Equal(t, rec, served(t, n.c, n.b, key), "b serves it")
	require.Nil(t, stored(t, n.c, key), "the client never held it")
	got, err := n.c.GetValue(ctx, key)
	require.NoError(t, err)
	require.Equal(t, rec, got)

	// A newer record replaces it, an older one is refused.
	newer := ipnsRecord(t, sk, 2, time.Now().Add(time.Hour))
	require.NoError(t, n.a.PutValue(ctx, key, newer))
	require.Equal(t, newer, stored(t, n.b, key))
	require.Error(t, rawPut(ctx, n.a, n.b, key, rec), "older sequence refused")
	require.Equal(t, newer, stored(t, n.b, key))

	otherSK, _ := ipnsIdentity(t)
	invalid := []struct {
		name  string
		value func(t testing.TB, sk crypto.PrivKey) []byte
		key   func(t testing.TB, id peer.ID) string
	}{
		{
			name: "bad signature",
			value: func(t testing.TB, sk crypto.PrivKey) []byte {
				return flipSignature(t, ipnsRecord(t, sk, 1, time.Now().Add(time.Hour)))
			},
		},
		{
			name: "signed by another key",
			value: func(t testing.TB, _ crypto.PrivKey) []byte {
				return ipnsRecord(t, otherSK, 1, time.Now().Add(time.Hour))
			},
		},
		{
			name: "expired",
			value: func(t testing.TB, sk crypto.PrivKey) []byte {
				return ipnsRecord(t, sk, 1, time.Now().Add(-time.Minute))
			},
		},
		{
			name:  "not a record",
			value: func(t testing.TB, _ crypto.PrivKey) []byte { return []byte("junk") },
		},
		{
			name:  "another peer's name",
			value: func(t testing.TB, sk crypto.PrivKey) []byte { return ipnsRecord(t, sk, 1, time.Now().Add(time.Hour)) },
			key:   func(t testing.TB, _ peer.ID) string { _, y := ipnsIdentity(t); return ipnsKey(y) },
		},
		{
			name:  "malformed name",
			value: func(t testing.TB, sk crypto.PrivKey) []byte { return ipnsRecord(t, sk, 1, time.Now().Add(time.Hour)) },
			key:   func(t testing.TB, _ peer.ID) string { return "/ipns/not-a-peer" },
		},
	}
	for _, tc := range invalid {
		t.Run(tc.name, func(t *testing.T) {
			sk, id := ipnsIdentity(t)
			key := ipnsKey(id)
			if tc.key != nil {
				key = tc.key(t, id)
			}
			value := tc.value(t, sk)
			require.ErrorIs(t, n.a.PutValue(ctx, key, value), ErrInvalidRecord, "the sender checks first")
			require.Error(t, rawPut(ctx, n.a, n.b, key, value), "the server resets the stream")
			require.Nil(t, stored(t, n.b, key), "nothing stored")
			require.Nil(t, served(t, n.c, n.b, key), "nothing served")
		})
	}
}

// The ipns namespace is built in under "/ipfs" only; the options still
// replace or add it.
func TestIPNSNamespaceOptions(t *testing.T) {
	custom := "1:x" // valid for seqValidator, not an IPNS record
	tests := []struct {
		name     string
		opts     []Option
		ipnsOK   bool // a valid IPNS record is accepted
		customOK bool // the seqValidator value is accepted
	}{
		{"default", nil, true, false},
		{"private prefix", []Option{ProtocolPrefix("/myapp")}, false, false},
		{"private prefix adding ipns", []Option{ProtocolPrefix("/myapp"), NamespacedValidator("ipns", ipns.Validator{})}, true, false},
		{"ipns replaced", []Option{NamespacedValidator("ipns", seqValidator{})}, false, true},
		{"base replaced", []Option{Validator(record.NamespacedValidator{"pk": record.PublicKeyValidator{}})}, false, false},
		{"base replaced then ipns added", []Option{Validator(record.NamespacedValidator{}), NamespacedValidator("ipns", seqValidator{})}, false, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			vp := newValuePair(t, tc.opts...)
			ctx := testCtx(t, 30*time.Second)
			sk, id := ipnsIdentity(t)
			key := ipnsKey(id)
			for _, v := range []struct {
				value []byte
				ok    bool
			}{
				{ipnsRecord(t, sk, 1, time.Now().Add(time.Hour)), tc.ipnsOK},
				{[]byte(custom), tc.customOK},
			} {
				err := rawPut(ctx, vp.a, vp.b, key, v.value)
				if v.ok {
					require.NoError(t, err)
					require.Equal(t, v.value, stored(t, vp.b, key))
					continue
				}
				require.Error(t, err)
				require.ErrorIs(t, vp.a.PutValue(ctx, key, v.value), ErrInvalidRecord)
				require.NotEqual(t, v.value, stored(t, vp.b, key), "refused value not stored")
			}
		})
	}
}
