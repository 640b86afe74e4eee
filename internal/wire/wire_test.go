package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/kadlib/kad/internal/pb"
)

func framed(msgs ...*pb.Message) []byte {
	var buf bytes.Buffer
	for _, m := range msgs {
		if err := WriteMsg(&buf, m); err != nil {
			panic(err)
		}
	}
	return buf.Bytes()
}

func TestReaderFrames(t *testing.T) {
	a := &pb.Message{Type: pb.FindNode, Key: []byte("a")}
	b := &pb.Message{Type: pb.GetValue, Key: []byte("bb")}
	r := NewReader(bytes.NewReader(framed(a, b)), 1024)
	var m pb.Message
	require.NoError(t, r.ReadMsg(&m))
	require.Equal(t, a.Key, m.Key)
	require.NoError(t, r.ReadMsg(&m))
	require.Equal(t, b.Key, m.Key)
	require.ErrorIs(t, r.ReadMsg(&m), io.EOF, "a clean end between frames")
}

func TestReaderRejects(t *testing.T) {
	body := (&pb.Message{Type: pb.FindNode, Key: []byte("key")}).Marshal(nil)
	cases := map[string]struct {
		in   []byte
		want error
	}{
		"over the limit":     {binary.AppendUvarint(nil, 65), ErrTooLarge},
		"huge length":        {binary.AppendUvarint(nil, 1<<62), ErrTooLarge},
		"varint overflow":    {bytes.Repeat([]byte{0xff}, 11), nil},
		"truncated length":   {[]byte{0x80}, io.ErrUnexpectedEOF},
		"truncated body":     {append(binary.AppendUvarint(nil, uint64(len(body))), body[:2]...), io.ErrUnexpectedEOF},
		"garbage body":       {[]byte{3, 0xff, 0xff, 0xff}, pb.ErrMalformed},
		"wrong type for key": {[]byte{2, 0x10, 0x01}, pb.ErrMalformed},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			var m pb.Message
			err := NewReader(bytes.NewReader(tc.in), 64).ReadMsg(&m)
			require.Error(t, err)
			require.NotErrorIs(t, err, io.EOF, "never mistaken for a clean end")
			if tc.want != nil {
				require.ErrorIs(t, err, tc.want)
			}
		})
	}
}

// The buffer only grows after Reserve agreed, and by what it agreed to.
func TestReaderReserve(t *testing.T) {
	small := &pb.Message{Type: pb.FindNode, Key: bytes.Repeat([]byte("k"), 10)}
	big := &pb.Message{Type: pb.FindNode, Key: bytes.Repeat([]byte("k"), 100)}
	var reserved []int
	r := NewReader(bytes.NewReader(framed(small, small, big)), 1024)
	r.Reserve = func(n int) error { reserved = append(reserved, n); return nil }
	var m pb.Message
	for range 3 {
		require.NoError(t, r.ReadMsg(&m))
	}
	require.Equal(t, []int{small.Size(), big.Size() - small.Size()}, reserved, "charged once per growth")

	refuse := errors.New("no memory")
	r = NewReader(bytes.NewReader(framed(big)), 1024)
	r.Reserve = func(int) error { return refuse }
	require.ErrorIs(t, r.ReadMsg(&m), refuse)
	require.Zero(t, cap(r.buf), "nothing allocated")
}

// FuzzReader feeds arbitrary bytes to the framing: it must never panic,
// never allocate past its limit, and every message it returns must
// re-encode within the limit.
func FuzzReader(f *testing.F) {
	f.Add(framed(&pb.Message{Type: pb.FindNode, Key: []byte("abc")}))
	f.Add(framed(&pb.Message{Type: pb.Ping}, &pb.Message{Type: pb.GetProviders, Key: []byte{0x12, 0x20, 1}}))
	f.Add([]byte{0x80})
	f.Add(binary.AppendUvarint(nil, 1<<40))
	const limit = 4096
	f.Fuzz(func(t *testing.T, in []byte) {
		r := NewReader(bytes.NewReader(in), limit)
		grown := 0
		r.Reserve = func(n int) error { grown += n; return nil }
		for range 64 {
			var m pb.Message
			if err := r.ReadMsg(&m); err != nil {
				break
			}
			require.LessOrEqual(t, m.Size(), limit)
		}
		require.LessOrEqual(t, grown, limit)
		require.LessOrEqual(t, cap(r.buf), limit)
	})
}
