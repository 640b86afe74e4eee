package sim

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestSimValidator(t *testing.T) {
	v := Validator{}
	require.NoError(t, v.Validate("/sim/a", Sign("/sim/a", 2)))
	require.ErrorIs(t, v.Validate("/sim/a", Forge("/sim/a", 2)), ErrForged)
	require.ErrorIs(t, v.Validate("/sim/b", Sign("/sim/a", 2)), ErrForged, "a value signed for another key")
	require.ErrorIs(t, v.Validate("/sim/a", []byte("short")), ErrForged)
	i, err := v.Select("/sim/a", [][]byte{Sign("/sim/a", 1), Sign("/sim/a", 3), Sign("/sim/a", 2)})
	require.NoError(t, err)
	require.Equal(t, 1, i)
}
