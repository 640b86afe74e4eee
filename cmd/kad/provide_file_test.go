package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/stretchr/testify/require"
)

// provide --file announces a list of CIDs in one ProvideMany: every key
// is announced and findable from another node; from stdin too.
func TestProvideFile(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	nodes := startNetwork(ctx, t, 8)
	boot := "--bootstrap=" + nodes[0].addr()

	const count = 200
	var lines []string
	cids := make([]cid.Cid, count)
	for i := range cids {
		s := testCID(t, fmt.Sprintf("provide --file %d", i))
		cids[i] = cid.MustParse(s)
		lines = append(lines, s)
	}
	file := filepath.Join(t.TempDir(), "cids.txt")
	content := "# CIDs to announce\n\n" + strings.Join(lines, "\n") + "\n"
	require.NoError(t, os.WriteFile(file, []byte(content), 0o600))

	r := runCmd(ctx, t, "", "provide", boot, "--file", file, "--json")
	require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
	var rep provideReportJSON
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &rep), "provide --json output: %s", r.stdout)
	require.Equal(t, count, rep.Keys)
	require.Zero(t, rep.KeysMissed)
	require.Positive(t, rep.Lookups)
	require.GreaterOrEqual(t, rep.Messages, count, "each key to at least one peer")
	require.NotEmpty(t, rep.Provider)
	for _, c := range cids {
		provs, err := nodes[len(nodes)-1].d.FindProviders(ctx, c, 1)
		require.NoError(t, err)
		require.Len(t, provs, 1, "providers of %s", c)
		require.Equal(t, rep.Provider, provs[0].ID.String())
	}

	// From standard input, as text.
	r = runCmd(ctx, t, strings.Join(lines, "\n"), "provide", boot, "--file", "-")
	require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
	t.Logf("kad provide --file output: %s", r.stdout)
	require.True(t, strings.HasPrefix(r.stdout, "announced 200 keys in "), "output %q", r.stdout)
	require.Contains(t, r.stderr, "note: the records name this short-lived client")

	// Mistakes are caught before the network is touched.
	bad := filepath.Join(t.TempDir(), "bad.txt")
	require.NoError(t, os.WriteFile(bad, []byte(lines[0]+"\nnot-a-cid\n"), 0o600))
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"provide", boot, "--file", bad}, "line 2: \"not-a-cid\" is not a CID"},
		{[]string{"provide", boot, "--file", filepath.Join(t.TempDir(), "missing")}, "--file: open"},
		{[]string{"provide", boot, "--file", file, lines[0]}, "either <cid> or --file"},
		{[]string{"provide", boot}, "want <cid> or --file <file>"},
		{[]string{"provide", boot, "--file", "-"}, "standard input holds no CID"},
	} {
		r := runCmd(ctx, t, "", tc.args...)
		require.Equal(t, exitUsage, r.code, "%v: stderr %s", tc.args, r.stderr)
		require.Contains(t, r.stderr, tc.want, "%v", tc.args)
	}
}
