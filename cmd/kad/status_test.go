package main

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// kad serve --http: the page and its JSON, through the real flag.
func TestServeHTTP(t *testing.T) {
	srv := serveIn(t, []string{"http"}, "--http", "127.0.0.1:0")
	url := srv.url("http")
	require.True(t, strings.HasPrefix(url, "http://127.0.0.1:"), url)

	resp, err := http.Get(url)
	require.NoError(t, err)
	page, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.NoError(t, resp.Body.Close())
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "text/html; charset=utf-8", resp.Header.Get("Content-Type"))
	require.Contains(t, string(page), "<title>kad node status</title>")
	// No CDN, no external fetch: every URL in the page is relative.
	require.NotContains(t, string(page), "http://")
	require.NotContains(t, string(page), "https://")

	resp, err = http.Get(url + "api/status")
	require.NoError(t, err)
	defer resp.Body.Close()
	var s status
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&s))
	require.Equal(t, srv.ready.ID, s.ID)
	require.Equal(t, "server", s.Mode)
	require.Equal(t, "/ipfs/kad/1.0.0", s.Protocol)
	require.Equal(t, srv.ready.Addrs, s.Addrs)
	require.Zero(t, s.TableSize)
	require.Equal(t, 1.0, s.NetworkSize)
	require.Positive(t, s.Goroutines, "the process's goroutine count")

	resp, err = http.Get(url + "nope")
	require.NoError(t, err)
	require.NoError(t, resp.Body.Close())
	require.Equal(t, http.StatusNotFound, resp.StatusCode)
}
