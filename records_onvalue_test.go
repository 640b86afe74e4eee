package kad

import (
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/routing"
	"github.com/stretchr/testify/require"
)

// OnValue reports each valid value with the peer that sent it: the peer's
// copy for a remote record, our own id for the local one.
func TestOnValue(t *testing.T) {
	vp := newValuePair(t, valueOpts()...)
	a, b := vp.a, vp.b
	ctx := testCtx(t, 30*time.Second)
	// b holds 2:new, a holds nothing: the value comes from b.
	require.NoError(t, b.PutValue(ctx, "/test/k", []byte("2:new"), routing.Offline))
	type seen struct {
		from peer.ID
		v    string
	}
	var got []seen
	record := OnValue(func(from peer.ID, v []byte) { got = append(got, seen{from, string(v)}) })
	v, err := a.GetValue(ctx, "/test/k", record)
	require.NoError(t, err)
	require.Equal(t, "2:new", string(v))
	require.Equal(t, []seen{{b.self, "2:new"}}, got)

	// With an older local copy both are reported, ours first.
	require.NoError(t, a.PutValue(ctx, "/test/k2", []byte("1:old"), routing.Offline))
	require.NoError(t, b.PutValue(ctx, "/test/k2", []byte("2:new"), routing.Offline))
	got = nil
	v, err = a.GetValue(ctx, "/test/k2", record)
	require.NoError(t, err)
	require.Equal(t, "2:new", string(v))
	require.Equal(t, []seen{{a.self, "1:old"}, {b.self, "2:new"}}, got)

	_, err = a.GetValue(ctx, "/test/k", OnValue(nil))
	require.ErrorIs(t, err, ErrInvalidOption)
}
