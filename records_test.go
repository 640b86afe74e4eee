package kad

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"errors"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ipfs/boxo/ipns"
	record "github.com/libp2p/go-libp2p-record"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/core/routing"
	"github.com/libp2p/go-libp2p/p2p/host/peerstore/pstoremem"
	mocknet "github.com/libp2p/go-libp2p/p2p/net/mock"
	"github.com/stretchr/testify/require"

	"github.com/kadlib/kad/internal/pb"
)

// seqValidator is the test namespace's validator: values are
// "<seq>:<data>", valid unless data starts with "bad", and the highest
// seq wins.
type seqValidator struct{}

func parseSeq(v []byte) (uint64, []byte, error) {
	s, data, ok := bytes.Cut(v, []byte(":"))
	if !ok {
		return 0, nil, errors.New("no seq")
	}
	n, err := strconv.ParseUint(string(s), 10, 64)
	return n, data, err
}

func (seqValidator) Validate(_ string, v []byte) error {
	_, data, err := parseSeq(v)
	if err != nil {
		return err
	}
	if bytes.HasPrefix(data, []byte("bad")) {
		return errors.New("bad value")
	}
	return nil
}

func (seqValidator) Select(_ string, vals [][]byte) (int, error) {
	best, bestSeq := -1, uint64(0)
	for i, v := range vals {
		n, _, err := parseSeq(v)
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

// valueOpts are the options every values test network uses.
func valueOpts(extra ...Option) []Option {
	return append([]Option{NamespacedValidator("test", seqValidator{})}, extra...)
}

func testCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// stored returns the value node d holds for key, nil if none.
func stored(t testing.TB, d *DHT, key string) []byte {
	t.Helper()
	r, ok, err := d.vals.store.Get(context.Background(), []byte(key))
	require.NoError(t, err)
	if !ok {
		return nil
	}
	return r.Value
}

func TestValuesOptionsValidate(t *testing.T) {
	mn := mocknet.New()
	t.Cleanup(func() { _ = mn.Close() })
	h, err := mn.GenPeer()
	require.NoError(t, err)
	custom := seqValidator{}
	tests := []struct {
		name string
		opts []Option
		ok   bool
	}{
		{"defaults", nil, true},
		{"zero max age", []Option{MaxRecordAge(0)}, false},
		{"zero max size", []Option{MaxRecordSize(0)}, false},
		{"size over the peers' message limit", []Option{MaxRecordSize(4<<20 + 1)}, false},
		{"size over own message limit", []Option{MaxMessageSize(64 << 10), MaxRecordSize(1 << 20)}, true},
		{"size at message limit", []Option{MaxRecordSize(4 << 20)}, true},
		{"empty namespace", []Option{NamespacedValidator("", custom)}, false},
		{"namespace with slash", []Option{NamespacedValidator("a/b", custom)}, false},
		{"nil namespace validator", []Option{NamespacedValidator("x", nil)}, false},
		{"nil validator", []Option{Validator(nil)}, false},
		{"custom validator", []Option{Validator(custom)}, true},
		{"custom plus namespace", []Option{Validator(custom), NamespacedValidator("x", custom)}, false},
		{"namespaced plus namespace", []Option{Validator(record.NamespacedValidator{"a": custom}), NamespacedValidator("x", custom)}, true},
		{"disabled", []Option{DisableValues()}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d, err := New(context.Background(), h, tc.opts...)
			if tc.ok {
				require.NoError(t, err)
				require.NoError(t, d.Close())
				return
			}
			require.ErrorIs(t, err, ErrInvalidOption)
		})
	}
}

func TestBuildValidator(t *testing.T) {
	sk, _, err := crypto.GenerateEd25519Key(nil)
	require.NoError(t, err)
	id, err := peer.IDFromPrivateKey(sk)
	require.NoError(t, err)
	pkBytes, err := crypto.MarshalPublicKey(sk.GetPublic())
	require.NoError(t, err)
	pkKey := "/pk/" + string(id)

	soon := time.Now().Add(time.Hour)
	ipnsName := ipnsKey(id)
	ipnsRec := ipnsRecord(t, sk, 1, soon)
	oldSK, oldID := ipnsIdentity(t)
	expired := ipnsRecord(t, oldSK, 1, time.Now().Add(-time.Minute))
	// An ECDSA key is not inlined in its peer id: a record that does not
	// embed it validates only with the key from the peerstore.
	ecSK, ecPub, err := crypto.GenerateECDSAKeyPair(crand.Reader)
	require.NoError(t, err)
	ecID, err := peer.IDFromPublicKey(ecPub)
	require.NoError(t, err)
	ecRec := ipnsRecord(t, ecSK, 1, soon, ipns.WithPublicKey(false))
	withKey, err := pstoremem.NewPeerstore()
	require.NoError(t, err)
	t.Cleanup(func() { _ = withKey.Close() })
	require.NoError(t, withKey.AddPubKey(ecID, ecPub))
	noKey, err := pstoremem.NewPeerstore()
	require.NoError(t, err)
	t.Cleanup(func() { _ = noKey.Close() })

	mine := record.NamespacedValidator{"a": seqValidator{}}
	tests := []struct {
		name    string
		prefix  protocol.ID
		keys    peerstore.KeyBook
		vc      valuesConfig
		valid   map[string][]byte // key -> value that must validate
		invalid map[string][]byte
	}{
		{
			name:    "default on /ipfs: pk and ipns",
			prefix:  "/ipfs",
			vc:      defaults().values,
			valid:   map[string][]byte{pkKey: pkBytes, ipnsName: ipnsRec},
			invalid: map[string][]byte{ipnsKey(oldID): expired, "/ipns/x": ipnsRec, "/test/x": []byte("1:x"), pkKey: []byte("junk"), "nokey": nil},
		},
		{
			name:    "default on another prefix: pk only",
			prefix:  "/myapp",
			vc:      defaults().values,
			valid:   map[string][]byte{pkKey: pkBytes},
			invalid: map[string][]byte{ipnsName: ipnsRec, "/test/x": []byte("1:x"), pkKey: []byte("junk"), "nokey": nil},
		},
		{
			name:   "ipns key from the peerstore",
			prefix: "/ipfs",
			keys:   withKey,
			vc:     defaults().values,
			valid:  map[string][]byte{ipnsKey(ecID): ecRec},
		},
		{
			name:    "ipns key not in the peerstore",
			prefix:  "/ipfs",
			keys:    noKey,
			vc:      defaults().values,
			invalid: map[string][]byte{ipnsKey(ecID): ecRec},
		},
		{
			name:    "namespace added next to pk and ipns",
			prefix:  "/ipfs",
			vc:      valuesConfig{namespaces: []nsValidator{{"test", seqValidator{}}}},
			valid:   map[string][]byte{pkKey: pkBytes, ipnsName: ipnsRec, "/test/x": []byte("1:x")},
			invalid: map[string][]byte{"/test/x": []byte("1:bad"), "/ipns/x": []byte("1:x")},
		},
		{
			name:    "namespace replaces ipns",
			prefix:  "/ipfs",
			vc:      valuesConfig{namespaces: []nsValidator{{"ipns", seqValidator{}}}},
			valid:   map[string][]byte{pkKey: pkBytes, ipnsName: []byte("1:x")},
			invalid: map[string][]byte{ipnsKey(oldID): ipnsRec},
		},
		{
			name:    "custom validator replaces all",
			prefix:  "/ipfs",
			vc:      valuesConfig{validator: seqValidator{}},
			valid:   map[string][]byte{"/anything/x": []byte("1:x")},
			invalid: map[string][]byte{pkKey: pkBytes, ipnsName: ipnsRec},
		},
		{
			name:    "namespaced validator merged",
			prefix:  "/ipfs",
			vc:      valuesConfig{validator: mine, namespaces: []nsValidator{{"b", seqValidator{}}}},
			valid:   map[string][]byte{"/a/x": []byte("1:x"), "/b/x": []byte("1:x")},
			invalid: map[string][]byte{pkKey: pkBytes, ipnsName: ipnsRec},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v := tc.vc.buildValidator(tc.prefix, tc.keys)
			for k, val := range tc.valid {
				require.NoError(t, v.Validate(k, val), k)
			}
			for k, val := range tc.invalid {
				require.Error(t, v.Validate(k, val), k)
			}
		})
	}
	require.Len(t, mine, 1, "the caller's validator map is never modified")
}

// PUT_VALUE and GET_VALUE as the protocol says, driven with raw requests.
func TestValueHandlers(t *testing.T) {
	vp := newValuePair(t, valueOpts(MaxRecordSize(1024))...)
	a, b := vp.a, vp.b
	ctx := testCtx(t, 30*time.Second)
	put := func(key, recKey string, value []byte) (*pb.Message, error) {
		req := &pb.Message{Type: pb.PutValue, Key: []byte(key)}
		if recKey != "" {
			req.Record = &pb.Record{Key: []byte(recKey), Value: value}
		}
		return a.q.request(ctx, b.self, req)
	}
	before := time.Now()
	resp, err := put("/test/k", "/test/k", []byte("2:x"))
	require.NoError(t, err)
	require.Equal(t, pb.PutValue, resp.Type)
	require.Equal(t, []byte("/test/k"), resp.Key)
	require.Equal(t, []byte("2:x"), resp.Record.Value, "request echoed")
	require.Equal(t, []byte("2:x"), stored(t, b, "/test/k"))

	rejects := []struct {
		name, key, recKey string
		value             []byte
	}{
		{"no key", "", "/test/k", []byte("3:x")},
		{"no record", "/test/k", "", nil},
		{"key mismatch", "/test/k", "/test/other", []byte("3:x")},
		{"invalid value", "/test/k", "/test/k", []byte("3:bad")},
		{"unknown namespace", "/nons/k", "/nons/k", []byte("3:x")},
		{"too large", "/test/k", "/test/k", append([]byte("3:"), make([]byte, 1024)...)},
		{"older than stored", "/test/k", "/test/k", []byte("1:x")},
	}
	for _, tc := range rejects {
		t.Run(tc.name, func(t *testing.T) {
			_, err := put(tc.key, tc.recKey, tc.value)
			require.Error(t, err, "stream reset, no answer")
			require.Equal(t, []byte("2:x"), stored(t, b, "/test/k"), "nothing changed")
			require.Nil(t, stored(t, b, "/test/other"))
			require.Nil(t, stored(t, b, "/nons/k"))
		})
	}

	got, err := a.q.request(ctx, b.self, &pb.Message{Type: pb.GetValue, Key: []byte("/test/k")})
	require.NoError(t, err)
	require.NotNil(t, got.Record)
	require.Equal(t, []byte("/test/k"), got.Record.Key)
	require.Equal(t, []byte("2:x"), got.Record.Value)
	ts, err := time.Parse(time.RFC3339, got.Record.TimeReceived)
	require.NoError(t, err, "timeReceived is RFC 3339")
	require.WithinDuration(t, before, ts, 5*time.Second)

	got, err = a.q.request(ctx, b.self, &pb.Message{Type: pb.GetValue, Key: []byte("/test/absent")})
	require.NoError(t, err)
	require.Nil(t, got.Record)
	_, err = a.q.request(ctx, b.self, &pb.Message{Type: pb.GetValue})
	require.Error(t, err, "GET_VALUE without key is refused")
}

// valuePair is two linked nodes, b counting the value requests it serves.
type valuePair struct {
	a, b       *DHT
	puts, gets atomic.Int64 // PUT_VALUE and GET_VALUE requests b served
}

// newValuePair starts a and b, b's handlers wrapped before any traffic, and
// waits until each has the other in its table. b starts first and is
// wrapped before a exists: its host is already connected to a's, but
// only a DHT would send it requests.
func newValuePair(t *testing.T, opts ...Option) *valuePair {
	t.Helper()
	_, hs := identifiedHosts(t, 2)
	vp := &valuePair{}
	start := func(h host.Host) *DHT {
		d, err := New(context.Background(), h, append([]Option{Mode(ModeServer)}, opts...)...)
		require.NoError(t, err)
		t.Cleanup(func() { _ = d.Close() })
		return d
	}
	vp.b = start(hs[1])
	for typ, n := range map[pb.MessageType]*atomic.Int64{pb.PutValue: &vp.puts, pb.GetValue: &vp.gets} {
		onRequest(vp.b, typ, func(peer.ID, *pb.Message) { n.Add(1) })
	}
	vp.a = start(hs[0])
	waitFor(t, 10*time.Second, "tables filled", func() bool {
		return vp.a.rt.Find(vp.b.self) && vp.b.rt.Find(vp.a.self)
	})
	return vp
}

// A stored record past MaxRecordAge is neither served nor returned.
func TestValueMaxAge(t *testing.T) {
	vp := newValuePair(t, valueOpts(MaxRecordAge(300*time.Millisecond))...)
	a, b := vp.a, vp.b
	ctx := testCtx(t, 30*time.Second)
	require.NoError(t, a.PutValue(ctx, "/test/old", []byte("1:x")))
	require.Equal(t, []byte("1:x"), stored(t, b, "/test/old"))
	waitFor(t, 5*time.Second, "record expired", func() bool {
		resp, err := a.q.request(ctx, b.self, &pb.Message{Type: pb.GetValue, Key: []byte("/test/old")})
		return err == nil && resp.Record == nil
	})
	_, err := b.GetValue(ctx, "/test/old", routing.Offline)
	require.ErrorIs(t, err, routing.ErrNotFound)
}

// Offline reads and writes touch only the local store: no lookup, no
// value request reaches the peer.
func TestValueOffline(t *testing.T) {
	vp := newValuePair(t, valueOpts()...)
	a, b := vp.a, vp.b
	ctx := testCtx(t, 30*time.Second)
	before := a.Stats()
	require.NoError(t, a.PutValue(ctx, "/test/off", []byte("1:x"), routing.Offline))
	v, err := a.GetValue(ctx, "/test/off", routing.Offline)
	require.NoError(t, err)
	require.Equal(t, []byte("1:x"), v)
	_, err = a.GetValue(ctx, "/test/none", routing.Offline)
	require.ErrorIs(t, err, routing.ErrNotFound)
	ch, err := a.SearchValue(ctx, "/test/off", routing.Offline)
	require.NoError(t, err)
	var got [][]byte
	for v := range ch {
		got = append(got, v)
	}
	require.Equal(t, [][]byte{[]byte("1:x")}, got)
	after := a.Stats()
	require.Equal(t, before.Lookups, after.Lookups)
	require.Equal(t, before.LookupRequests, after.LookupRequests)
	require.Zero(t, vp.puts.Load()+vp.gets.Load(), "no value request reached the peer")
	require.Nil(t, stored(t, b, "/test/off"))

	// The same calls online do reach it.
	require.NoError(t, a.PutValue(ctx, "/test/on", []byte("1:x")))
	_, err = a.GetValue(ctx, "/test/none")
	require.ErrorIs(t, err, routing.ErrNotFound)
	require.Equal(t, int64(1), vp.puts.Load())
	require.Equal(t, int64(1), vp.gets.Load())
}

func TestValueAPIErrors(t *testing.T) {
	a := newValuePair(t, valueOpts()...).a
	ctx := testCtx(t, 30*time.Second)

	_, err := a.GetValue(ctx, "/test/k", Quorum(-1))
	require.ErrorIs(t, err, ErrInvalidOption)
	var n int
	err = a.PutValue(ctx, "/test/k", []byte("1:x"), Accepted(&n))
	require.NoError(t, err)
	require.Equal(t, 1, n, "the one other node accepted")
	require.ErrorIs(t, a.PutValue(ctx, "", []byte("1:x")), ErrInvalidRecord)
	require.ErrorIs(t, a.PutValue(ctx, "/test/k", []byte("1:bad")), ErrInvalidRecord)
	require.ErrorIs(t, a.PutValue(ctx, "/nons/k", []byte("1:x")), ErrInvalidRecord)

	require.NoError(t, a.PutValue(ctx, "/test/k", []byte("5:x")))
	err = a.PutValue(ctx, "/test/k", []byte("4:x"))
	var better *record.ErrBetterRecord
	require.ErrorAs(t, err, &better, "a stored newer value wins")
	require.Equal(t, []byte("5:x"), better.Value)

	_, err = a.GetValue(ctx, "/test/nobody")
	require.ErrorIs(t, err, routing.ErrNotFound)

	// A cancelled search closes its channel without anyone reading.
	sctx, cancel := context.WithCancel(ctx)
	ch, err := a.SearchValue(sctx, "/test/k")
	require.NoError(t, err)
	cancel()
	select {
	case <-drained(ch):
	case <-time.After(10 * time.Second):
		t.Fatal("search channel not closed after cancel")
	}

	// A search nobody reads is ended by Close, which waits for it.
	abandoned, err := a.SearchValue(context.Background(), "/test/k")
	require.NoError(t, err)
	closed := make(chan error, 1)
	go func() { closed <- a.Close() }()
	select {
	case err := <-closed:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("Close blocked by an abandoned search")
	}
	select {
	case <-drained(abandoned):
	case <-time.After(time.Second):
		t.Fatal("abandoned search channel not closed")
	}
	_, err = a.GetValue(ctx, "/test/k")
	require.ErrorIs(t, err, ErrClosed)
}

func drained(ch <-chan []byte) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range ch {
		}
	}()
	return done
}

// With values disabled the API says so and the node refuses the requests.
func TestDisableValues(t *testing.T) {
	vp := newValuePair(t, DisableValues())
	a, b := vp.a, vp.b
	ctx := testCtx(t, 30*time.Second)
	require.ErrorIs(t, a.PutValue(ctx, "/pk/x", []byte("x")), routing.ErrNotSupported)
	_, err := a.GetValue(ctx, "/pk/x")
	require.ErrorIs(t, err, routing.ErrNotSupported)
	_, err = a.SearchValue(ctx, "/pk/x")
	require.ErrorIs(t, err, routing.ErrNotSupported)
	_, err = a.q.request(ctx, b.self, &pb.Message{Type: pb.GetValue, Key: []byte("/pk/x")})
	require.Error(t, err)
	_, err = a.q.findNode(ctx, b.self, []byte("still routes"))
	require.NoError(t, err)
}

// The pk namespace works out of the box: a node's public key is put under
// /pk/<id> and read back by another node.
func TestPublicKeyRecord(t *testing.T) {
	tn := newTestNet(t, 5, 16)
	ctx := testCtx(t, 30*time.Second)
	a := tn.nodes[0]
	pub := a.h.Peerstore().PubKey(a.self)
	require.NotNil(t, pub)
	pkBytes, err := crypto.MarshalPublicKey(pub)
	require.NoError(t, err)
	key := "/pk/" + string(a.self)
	require.NoError(t, a.PutValue(ctx, key, pkBytes))
	got, err := tn.nodes[4].GetValue(ctx, key)
	require.NoError(t, err)
	require.Equal(t, pkBytes, got)
	other := "/pk/" + string(tn.nodes[1].self)
	require.ErrorIs(t, a.PutValue(ctx, other, pkBytes), ErrInvalidRecord, "a key that does not hash to the id")
	require.Nil(t, stored(t, a, other))
}
