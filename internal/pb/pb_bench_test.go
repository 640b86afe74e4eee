package pb

import (
	"fmt"
	"testing"
)

// benchMessages are the shapes that dominate traffic: a FIND_NODE request,
// its answer with k = 20 peers of two addresses each, a GET_VALUE answer
// carrying a record, and a GET_PROVIDERS answer.
func benchMessages() map[string]*Message {
	peers := func(n int) []Peer {
		out := make([]Peer, n)
		for i := range out {
			id := make([]byte, 38) // identity multihash of an ed25519 key
			for j := range id {
				id[j] = byte(i*7 + j)
			}
			out[i] = Peer{ID: id, Addrs: [][]byte{
				{0x04, 10, 0, byte(i), 1, 0x06, 0x10, 0x01}, // /ip4/10.0.i.1/tcp/4097
				append([]byte{0x29}, make([]byte, 16)...),   // /ip6/::
			}, Connection: Connected}
		}
		return out
	}
	key := []byte("\x00\x24\x08\x01\x12\x20abcdefghijklmnopqrstuvwxyz012345")
	return map[string]*Message{
		"find-node-request": {Type: FindNode, Key: key},
		"find-node-answer":  {Type: FindNode, Key: key, CloserPeers: peers(20)},
		"get-value-answer": {Type: GetValue, Key: []byte("/v/key"), CloserPeers: peers(20),
			Record: &Record{Key: []byte("/v/key"), Value: make([]byte, 300), TimeReceived: "2026-01-01T00:00:00Z"}},
		"get-providers-answer": {Type: GetProviders, Key: key[:34], CloserPeers: peers(20), ProviderPeers: peers(3)},
	}
}

func BenchmarkMarshal(b *testing.B) {
	for _, name := range []string{"find-node-request", "find-node-answer", "get-value-answer", "get-providers-answer"} {
		m := benchMessages()[name]
		b.Run(name, func(b *testing.B) {
			buf := make([]byte, 0, m.Size())
			b.SetBytes(int64(m.Size()))
			b.ReportAllocs()
			for b.Loop() {
				buf = m.Marshal(buf[:0])
			}
		})
	}
}

func BenchmarkUnmarshal(b *testing.B) {
	for _, name := range []string{"find-node-request", "find-node-answer", "get-value-answer", "get-providers-answer"} {
		data := benchMessages()[name].Marshal(nil)
		b.Run(name, func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			var m Message
			for b.Loop() {
				if err := m.Unmarshal(data); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkRoundTrip is what a server does per request and a client per
// answer: decode, then encode (or clone to keep) the message.
func BenchmarkRoundTripClone(b *testing.B) {
	data := benchMessages()["find-node-answer"].Marshal(nil)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		var m Message
		if err := m.Unmarshal(data); err != nil {
			b.Fatal(err)
		}
		if c := m.Clone(); len(c.CloserPeers) != 20 {
			b.Fatal(fmt.Sprint("lost peers: ", len(c.CloserPeers)))
		}
	}
}
