package pb

import (
	"testing"

	recpb "github.com/libp2p/go-libp2p-record/pb"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

func TestRoundTrip(t *testing.T) {
	cases := []struct {
		name string
		msg  Message
	}{
		{"empty is put value", Message{}},
		{"find node", Message{Type: FindNode, Key: []byte("k")}},
		{"ping", Message{Type: Ping}},
		{"record", Message{Type: PutValue, Key: []byte("/v/a"), Record: &Record{Key: []byte("/v/a"), Value: []byte("x"), TimeReceived: "2026-01-01T00:00:00Z"}}},
		{"peers", Message{Type: GetProviders, Key: []byte{1, 2}, ClusterLevelRaw: 3,
			CloserPeers:   []Peer{{ID: []byte("a"), Addrs: [][]byte{{1}, {2, 3}}, Connection: Connected}},
			ProviderPeers: []Peer{{ID: []byte("b")}}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b := tc.msg.Marshal(nil)
			require.Len(t, b, tc.msg.Size())
			var got Message
			require.NoError(t, got.Unmarshal(b))
			require.Equal(t, tc.msg.Type, got.Type)
			require.Equal(t, tc.msg.Marshal(nil), got.Marshal(nil))
		})
	}
}

// The Record encoding must match go-libp2p-record's generated protobuf,
// which go-libp2p-kad-dht and IPNS use.
func TestRecordMatchesGeneratedCode(t *testing.T) {
	gen := &recpb.Record{Key: []byte("/pk/abc"), Value: []byte("value"), TimeReceived: "2026-11-25T00:00:00Z"}
	want, err := proto.Marshal(gen)
	require.NoError(t, err)
	r := Record{Key: gen.Key, Value: gen.Value, TimeReceived: gen.TimeReceived}
	require.Equal(t, want, r.marshal(nil))
	var back Record
	require.NoError(t, back.unmarshal(want))
	require.Equal(t, r, back)
}

func TestUnknownFieldsTolerated(t *testing.T) {
	// A record as rust-libp2p sends it, with publisher (666) and ttl (777).
	var rec []byte
	rec = protowire.AppendTag(rec, 1, protowire.BytesType)
	rec = protowire.AppendBytes(rec, []byte("k"))
	rec = protowire.AppendTag(rec, 666, protowire.BytesType)
	rec = protowire.AppendBytes(rec, []byte("publisher"))
	rec = protowire.AppendTag(rec, 777, protowire.VarintType)
	rec = protowire.AppendVarint(rec, 3600)
	var b []byte
	b = protowire.AppendTag(b, 3, protowire.BytesType)
	b = protowire.AppendBytes(b, rec)
	b = protowire.AppendTag(b, 99, protowire.Fixed64Type)
	b = protowire.AppendFixed64(b, 7)
	var m Message
	require.NoError(t, m.Unmarshal(b))
	require.Equal(t, PutValue, m.Type, "a message without a type field is PUT_VALUE")
	require.Equal(t, []byte("k"), m.Record.Key)
}

func TestMalformed(t *testing.T) {
	wrongType := protowire.AppendTag(nil, 2, protowire.VarintType)
	wrongType = protowire.AppendVarint(wrongType, 1)
	cases := map[string][]byte{
		"truncated tag":        {0x80},
		"truncated bytes":      {0x12, 0x05, 'a'},
		"key as varint":        wrongType,
		"bad nested peer":      {0x42, 0x02, 0x0a, 0x05},
		"truncated unknown":    {0xf8, 0x06},
		"invalid wire type 7":  {0x0f},
		"group never finished": {0x0b},
	}
	for name, b := range cases {
		t.Run(name, func(t *testing.T) {
			var m Message
			require.ErrorIs(t, m.Unmarshal(b), ErrMalformed)
		})
	}
}

func FuzzUnmarshal(f *testing.F) {
	f.Add([]byte{})
	f.Add((&Message{Type: FindNode, Key: []byte("abc"), CloserPeers: []Peer{{ID: []byte("x"), Addrs: [][]byte{{4, 127, 0, 0, 1}}}}}).Marshal(nil))
	f.Add((&Message{Type: PutValue, Record: &Record{Key: []byte("/v/x"), Value: []byte("1")}}).Marshal(nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		var m Message
		if err := m.Unmarshal(b); err != nil {
			return
		}
		// Whatever decodes must re-encode to something that decodes to the same thing.
		enc := m.Marshal(nil)
		require.Len(t, enc, m.Size())
		var again Message
		require.NoError(t, again.Unmarshal(enc))
		require.Equal(t, enc, again.Marshal(nil))
	})
}

// Decoded peers share one backing array for their addresses, each slice
// capped at its own: appending to one peer's addresses leaves the next
// peer's intact, and a peer without addresses has none.
func TestUnmarshalAddrsIsolated(t *testing.T) {
	in := &Message{Type: FindNode, CloserPeers: []Peer{
		{ID: []byte("a"), Addrs: [][]byte{[]byte("a1"), []byte("a2")}},
		{ID: []byte("b")},
		{ID: []byte("c"), Addrs: [][]byte{[]byte("c1")}},
	}, ProviderPeers: []Peer{{ID: []byte("p"), Addrs: [][]byte{[]byte("p1")}}}}
	var m Message
	require.NoError(t, m.Unmarshal(in.Marshal(nil)))
	require.Equal(t, in, &m)
	require.Nil(t, m.CloserPeers[1].Addrs)
	for i := range m.CloserPeers {
		p := &m.CloserPeers[i]
		require.Equal(t, len(p.Addrs), cap(p.Addrs), "peer %d", i)
		p.Addrs = append(p.Addrs, []byte("extra"))
	}
	require.Equal(t, [][]byte{[]byte("c1")}, in.CloserPeers[2].Addrs)
	require.Equal(t, [][]byte{[]byte("c1"), []byte("extra")}, m.CloserPeers[2].Addrs)
	require.Equal(t, [][]byte{[]byte("p1")}, m.ProviderPeers[0].Addrs, "the provider's address is untouched")
}
