package main

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// runIn runs the command line in-process.
func runIn(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	t.Setenv(bootstrapEnv, "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out, errOut bytes.Buffer
	code = run(ctx, args, strings.NewReader(""), &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestUsage(t *testing.T) {
	code, _, stderr := runIn(t)
	require.Equal(t, exitUsage, code)
	require.Contains(t, stderr, "kad serve --data <dir>")

	code, stdout, _ := runIn(t, "help")
	require.Equal(t, exitOK, code)
	for _, c := range commands {
		require.Contains(t, stdout, "kad "+c.name, "usage lists %s", c.name)
	}
	for _, c := range commands {
		code, stdout, _ = runIn(t, "help", c.name)
		require.Equal(t, exitOK, code)
		require.Contains(t, stdout, "Usage: kad "+c.name)
		require.Contains(t, stdout, "--bootstrap <multiaddr>")
		code, stdout2, _ := runIn(t, c.name, "-h")
		require.Equal(t, exitOK, code)
		require.Equal(t, stdout, stdout2)
	}

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"frob"}, `kad: unknown command "frob"`},
		{[]string{"help", "frob"}, `unknown command "frob"`},
		{[]string{"get"}, "kad get: want <name>, got 0 argument(s) (see kad help get)"},
		{[]string{"get", "a", "b"}, "got 2 argument(s)"},
		{[]string{"get", "--nope", "a"}, "flag provided but not defined: -nope"},
		{[]string{"serve"}, "--data <dir> is required"},
		{[]string{"serve", "--data", t.TempDir(), "--provide", "nope"}, "not a CID"},
		{[]string{"get", "--bootstrap", "/ip4/127.0.0.1/tcp/1", "a"}, "must end in /p2p/<peer-id>"},
		{[]string{"get", "--bootstrap", "nonsense", "a"}, `--bootstrap "nonsense"`},
		{[]string{"findpeer", "--bootstrap", "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWBTfHsM2hi9tqFALLSpAskM1dGb8g66tdh41rxThe1ag9", "nope"}, "not a peer id"},
		{[]string{"get", "--prefix", "ipfs/", "--bootstrap", "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWBTfHsM2hi9tqFALLSpAskM1dGb8g66tdh41rxThe1ag9", "a"}, "--prefix"},
	} {
		code, _, stderr := runIn(t, tc.args...)
		require.Equal(t, exitUsage, code, "%v: %s", tc.args, stderr)
		require.Contains(t, stderr, tc.want, "%v", tc.args)
		require.Equal(t, 1, strings.Count(stderr, "\n"), "%v: one line: %q", tc.args, stderr)
	}
}

func TestParseArgs(t *testing.T) {
	c := findCommand("put")
	f, pos, err := parseArgs(c, []string{"--json", "key", "--bootstrap", "/a,/b", "value", "--bootstrap=/c"})
	require.NoError(t, err)
	require.Equal(t, []string{"key", "value"}, pos)
	require.True(t, f.json)
	require.Equal(t, stringList{"/a", "/b", "/c"}, f.bootstrap)

	// After "--" everything is an argument, even what looks like a flag.
	_, pos, err = parseArgs(c, []string{"key", "--", "--json", "-5"})
	require.NoError(t, err)
	require.Equal(t, []string{"key", "--json", "-5"}, pos)

	// $KAD_BOOTSTRAP fills in for --bootstrap, split on spaces and commas.
	t.Setenv(bootstrapEnv, "/x /y,/z")
	f, _, err = parseArgs(c, []string{"key", "value"})
	require.NoError(t, err)
	require.Equal(t, stringList{"/x", "/y", "/z"}, f.bootstrap)
	f, _, err = parseArgs(c, []string{"--bootstrap", "/a", "key", "value"})
	require.NoError(t, err)
	require.Equal(t, stringList{"/a"}, f.bootstrap)

	_, _, err = parseArgs(c, []string{"--help"})
	require.ErrorIs(t, err, errHelp)
}

func TestValues(t *testing.T) {
	at := time.Unix(1700000000, 123)
	v := encodeValue([]byte("hi\nthere"), at)
	got, data, err := decodeValue(v)
	require.NoError(t, err)
	require.True(t, got.Equal(at))
	require.Equal(t, "hi\nthere", string(data))

	val := cliValidator{}
	require.NoError(t, val.Validate("/kad-cli/x", v))
	require.NoError(t, val.Validate("/kad-cli/x", encodeValue(nil, at)))
	require.Error(t, val.Validate("/kad-cli/", v))
	require.Error(t, val.Validate("/other/x", v))
	require.Error(t, val.Validate("/kad-cli/x", []byte("no time line")))
	require.Error(t, val.Validate("/kad-cli/x", []byte("-5\nx")))

	older, newer := encodeValue([]byte("b"), at), encodeValue([]byte("a"), at.Add(time.Second))
	i, err := val.Select("/kad-cli/x", [][]byte{older, []byte("junk"), newer})
	require.NoError(t, err)
	require.Equal(t, 2, i)
	// Same instant: the same choice whatever the order.
	x, y := encodeValue([]byte("x"), at), encodeValue([]byte("y"), at)
	i, _ = val.Select("/kad-cli/x", [][]byte{x, y})
	j, _ := val.Select("/kad-cli/x", [][]byte{y, x})
	require.Equal(t, 1, i)
	require.Equal(t, 0, j)
	_, err = val.Select("/kad-cli/x", [][]byte{[]byte("junk")})
	require.Error(t, err)

	for in, want := range map[string]string{"greeting": "/kad-cli/greeting", "/kad-cli/a/b": "/kad-cli/a/b"} {
		k, err := cliKey(in)
		require.NoError(t, err)
		require.Equal(t, want, k)
	}
	for _, bad := range []string{"", "/kad-cli/", "/pk/x", "/ipns/x"} {
		_, err := cliKey(bad)
		var ue *usageError
		require.ErrorAs(t, err, &ue, "%q", bad)
	}
}

func TestIdentityPersists(t *testing.T) {
	path := filepath.Join(t.TempDir(), identityFile)
	k1, err := loadOrCreateKey(path)
	require.NoError(t, err)
	k2, err := loadOrCreateKey(path)
	require.NoError(t, err)
	require.True(t, k1.Equals(k2))
}

func TestOneLine(t *testing.T) {
	err := errors.Join(errors.New("kad: first\nsecond"), errors.New("kad: third"))
	require.Equal(t, "first; second; third", oneLine(err))
}
