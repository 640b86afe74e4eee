package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	mh "github.com/multiformats/go-multihash"
	"github.com/stretchr/testify/require"
)

// buildKad builds the command into a temporary directory.
func buildKad(ctx context.Context, t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "kad")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, ".")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "go build: %s", out)
	return bin
}

// server is a running "kad serve".
type server struct {
	cmd   *exec.Cmd
	lines chan string // its stdout, line by line
	ready struct {
		ID    string   `json:"id"`
		Addrs []string `json:"addrs"`
	}
	stderr *bytes.Buffer
}

// startServe runs "kad serve --json" with args and waits for its ready
// line.
func startServe(ctx context.Context, t *testing.T, bin string, args ...string) *server {
	t.Helper()
	s := &server{lines: make(chan string, 100), stderr: &bytes.Buffer{}}
	s.cmd = exec.Command(bin, append([]string{"serve", "--json"}, args...)...)
	s.cmd.Stderr = s.stderr
	stdout, err := s.cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, s.cmd.Start())
	t.Cleanup(func() {
		// Normally stopped by the test; this is for failures.
		if s.cmd.ProcessState == nil {
			_ = s.cmd.Process.Kill()
			_ = s.cmd.Wait()
		}
	})
	go func() {
		defer close(s.lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			s.lines <- sc.Text()
		}
	}()
	line := s.next(ctx, t, "ready")
	require.NoError(t, json.Unmarshal([]byte(line), &s.ready), "ready line %q", line)
	require.NotEmpty(t, s.ready.Addrs)
	return s
}

// next returns the next stdout line whose event is one of kinds, waiting
// at most 30 s.
func (s *server) next(ctx context.Context, t *testing.T, kinds ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		select {
		case line, ok := <-s.lines:
			if !ok {
				t.Fatalf("kad serve exited before a %q line; stderr: %s", kinds, s.stderr)
			}
			var ev struct{ Event string }
			if json.Unmarshal([]byte(line), &ev) == nil && slices.Contains(kinds, ev.Event) {
				return line
			}
		case <-ctx.Done():
			t.Fatalf("no %q line from kad serve: %v", kinds, ctx.Err())
		}
	}
}

// stop interrupts the server and checks it exits cleanly.
func (s *server) stop(t *testing.T) {
	t.Helper()
	require.NoError(t, s.cmd.Process.Signal(syscall.SIGINT))
	done := make(chan error, 1)
	go func() { done <- s.cmd.Wait() }()
	select {
	case err := <-done:
		require.NoError(t, err, "kad serve exit; stderr: %s", s.stderr)
	case <-time.After(30 * time.Second):
		_ = s.cmd.Process.Kill()
		t.Fatal("kad serve did not stop within 30 s of SIGINT")
	}
}

// result is what one kad process did.
type result struct {
	stdout, stderr string
	code           int
}

// runKad runs the binary once, with a deadline, no $KAD_BOOTSTRAP and stdin.
func runKad(ctx context.Context, t *testing.T, bin, stdin string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 45*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), bootstrapEnv+"=")
	cmd.Stdin = strings.NewReader(stdin)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	require.NoError(t, ctx.Err(), "kad %v timed out", args)
	r := result{stdout: out.String(), stderr: errOut.String()}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		r.code = ee.ExitCode()
	} else {
		require.NoError(t, err)
	}
	return r
}

// ok checks a command succeeded quietly.
func (r result) ok(t *testing.T, what string) result {
	t.Helper()
	require.Equal(t, 0, r.code, "%s: exit %d, stderr: %s", what, r.code, r.stderr)
	return r
}

// failed checks a command failed with one line on stderr and no trace.
func (r result) failed(t *testing.T, code int, contains string) {
	t.Helper()
	require.Equal(t, code, r.code, "exit status; stderr: %s", r.stderr)
	require.Equal(t, 1, strings.Count(r.stderr, "\n"), "one line on stderr: %q", r.stderr)
	require.Contains(t, r.stderr, contains)
	require.NotContains(t, r.stderr, "goroutine")
	require.NotContains(t, r.stderr, "panic")
}

func testCID(t *testing.T, data string) string {
	h, err := mh.Sum([]byte(data), mh.SHA2_256, -1)
	require.NoError(t, err)
	return cid.NewCidV1(cid.Raw, h).String()
}

// kad serve on loopback, and one-shot commands against it from separate
// processes: put/get, provide/findprovs, findpeer, closest, errors, and a
// restart that keeps the identity and the stored records.
func TestCLI(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	bin := buildKad(ctx, t)
	data := t.TempDir()
	served := testCID(t, "content the server announces")
	srv := startServe(ctx, t, bin, "--listen", "/ip4/127.0.0.1/tcp/0", "--data", data, "--provide", served)
	boot := "--bootstrap=" + srv.ready.Addrs[0]
	require.Contains(t, boot, "/p2p/"+srv.ready.ID)

	// Values, with flags before and after the arguments, and from stdin.
	r := runKad(ctx, t, bin, "", "put", boot, "greeting", "hello, kad").ok(t, "put")
	require.Equal(t, "stored /kad-cli/greeting on 1 peer\n", r.stdout)
	r = runKad(ctx, t, bin, "", "get", "greeting", boot).ok(t, "get")
	require.Equal(t, "hello, kad\n", r.stdout)
	runKad(ctx, t, bin, "line one\nline two\n", "put", boot, "/kad-cli/note", "-").ok(t, "put from stdin")
	r = runKad(ctx, t, bin, "", "get", boot, "--json", "note").ok(t, "get --json")
	var got struct{ Key, Value, Written string }
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &got))
	require.Equal(t, "/kad-cli/note", got.Key)
	require.Equal(t, "line one\nline two\n", got.Value)
	runKad(ctx, t, bin, "", "get", boot, "missing").failed(t, exitFail, "kad get: /kad-cli/missing: not found")

	// Providers: one announced by the server, one by a short-lived client.
	// Alone in its network, the server cannot announce to anyone, but it
	// holds its own record, which is where a finder's lookup ends.
	line := srv.next(ctx, t, "provided", "warning")
	require.Contains(t, line, served)
	r = runKad(ctx, t, bin, "", "findprovs", boot, "--json", served).ok(t, "findprovs")
	var provs []peerJSON
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &provs))
	require.Len(t, provs, 1)
	require.Equal(t, srv.ready.ID, provs[0].ID)
	announced := testCID(t, "content a client announces")
	r = runKad(ctx, t, bin, "", "provide", boot, "--json", announced).ok(t, "provide")
	var prov struct{ CID, Provider string }
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &prov))
	require.Equal(t, announced, prov.CID)
	r = runKad(ctx, t, bin, "", "findprovs", boot, announced).ok(t, "findprovs")
	require.True(t, strings.HasPrefix(r.stdout, prov.Provider+"\n  /ip4/127.0.0.1/tcp/"), "findprovs output %q", r.stdout)

	// Peers.
	r = runKad(ctx, t, bin, "", "findpeer", boot, srv.ready.ID).ok(t, "findpeer")
	require.Contains(t, strings.Fields(r.stdout), srv.ready.Addrs[0])
	r = runKad(ctx, t, bin, "", "closest", boot, "/kad-cli/greeting").ok(t, "closest")
	require.Equal(t, srv.ready.ID+"\n", r.stdout)
	r = runKad(ctx, t, bin, "", "closest", boot, "--json", srv.ready.ID).ok(t, "closest --json")
	require.Contains(t, r.stdout, `"peers":["`+srv.ready.ID+`"]`)

	// Errors: one line, the right status.
	runKad(ctx, t, bin, "", "get", "greeting").failed(t, exitUsage, "no bootstrap peer")
	runKad(ctx, t, bin, "", "get", boot, "--prefix", "/other", "greeting").failed(t, exitFail, "do not speak /other/kad/1.0.0")
	runKad(ctx, t, bin, "", "put", boot, "/pk/x", "y").failed(t, exitUsage, "only keys under /kad-cli/")
	runKad(ctx, t, bin, "", "findprovs", boot, "not-a-cid").failed(t, exitUsage, "not a CID")
	runKad(ctx, t, bin, "", "get", "--data", data, boot, "greeting").failed(t, exitFail, "is another kad using this directory?")
	runKad(ctx, t, bin, "", "serve", "--data", t.TempDir(), "--listen", srv.ready.Addrs[0][:strings.Index(srv.ready.Addrs[0], "/p2p/")]).
		failed(t, exitFail, "address already in use")

	// A restart keeps the identity and what the server stored.
	srv.stop(t)
	srv2 := startServe(ctx, t, bin, "--listen", "/ip4/127.0.0.1/tcp/0", "--data", data)
	require.Equal(t, srv.ready.ID, srv2.ready.ID, "same identity after a restart")
	r = runKad(ctx, t, bin, "", "get", "--bootstrap", srv2.ready.Addrs[0], "greeting").ok(t, "get after restart")
	require.Equal(t, "hello, kad\n", r.stdout)
	srv2.stop(t)
}

func TestNextProvideWait(t *testing.T) {
	retry := provideRetryFirst
	var waits []time.Duration
	for range 6 {
		var w time.Duration
		w, retry = nextProvideWait(true, retry)
		waits = append(waits, w)
	}
	require.Equal(t, []time.Duration{5 * time.Second, 10 * time.Second, 20 * time.Second, 40 * time.Second, time.Minute, time.Minute}, waits)
	w, retry := nextProvideWait(false, retry)
	require.Equal(t, reprovideInterval, w)
	require.Equal(t, provideRetryFirst, retry, "a success resets the backoff")
}
