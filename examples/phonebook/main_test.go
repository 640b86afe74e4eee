package main

import (
	"bytes"
	"context"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// The example, run small: every name is found with its number, by a node
// other than its writer.
func TestPhonebook(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out bytes.Buffer
	err := run(ctx, []string{"-n", "8", "-entries", "10", "-k", "3", "-seed", "7"}, &out)
	t.Log("\n" + out.String())
	require.NoError(t, err)

	book := makeBook(rand.New(rand.NewChaCha8(seedBytes(7))), 10)
	rows := tableRows(t, out.String())
	require.Len(t, rows, len(book))
	for i, e := range book {
		f := rows[i]
		require.Equal(t, e.name, f[0], "row %d", i)
		require.Equal(t, e.number, strings.Join(f[1:5], " "), "number of %s", e.name)
		asked, answered := f[5]+" "+f[6], f[7]+" "+f[8]
		require.NotEqual(t, writerOf(i, 8), asked, "%s looked up by its writer", e.name)
		require.NotEqual(t, asked, answered, "%s answered by the node that asked", e.name)
	}
	require.Contains(t, out.String(), "10/10 names found")
	require.Contains(t, out.String(), "8/8 joined")
}

// writerOf names the node that wrote entry i of n nodes.
func writerOf(i, n int) string { return "node " + strconv.Itoa(i%n) }

// tableRows returns the fields of the result table's rows.
func tableRows(t *testing.T, out string) [][]string {
	t.Helper()
	_, table, ok := strings.Cut(out, "NAME ")
	require.True(t, ok, "no table in the output")
	var rows [][]string
	for _, line := range strings.Split(table, "\n")[1:] {
		if strings.TrimSpace(line) == "" {
			break
		}
		// name, "+1 AAA 555 01NN", "node N", "node M", hops, "T ms"
		f := strings.Fields(line)
		require.Len(t, f, 12, "row %q", line)
		rows = append(rows, f)
	}
	return rows
}

func TestFlags(t *testing.T) {
	for _, args := range [][]string{{"-n", "1"}, {"-entries", "0"}, {"-k", "0"}, {"extra"}} {
		err := run(context.Background(), args, &bytes.Buffer{})
		require.Error(t, err, "%v", args)
	}
	var out bytes.Buffer
	require.NoError(t, run(context.Background(), []string{"-h"}, &out))
	require.Contains(t, out.String(), "-entries")
}

func TestValidator(t *testing.T) {
	v := phoneValidator{}
	require.NoError(t, v.Validate("/phone/ada", []byte("1:+1 212 555 0100")))
	for _, bad := range []struct{ key, value string }{
		{"/phone/Ada", "1:+1 555"},
		{"/phone/", "1:+1 555"},
		{"/other/ada", "1:+1 555"},
		{"/phone/ada", "+1 555 0100"},
		{"/phone/ada", "0:+1 555 0100"},
		{"/phone/ada", "1:call me"},
	} {
		require.Error(t, v.Validate(bad.key, []byte(bad.value)), "%q=%q", bad.key, bad.value)
	}
	i, err := v.Select("/phone/ada", [][]byte{[]byte("1:555 0100"), []byte("2:555 0101"), []byte("junk")})
	require.NoError(t, err)
	require.Equal(t, 1, i)
}

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
