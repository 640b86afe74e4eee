// Package jspeer runs a js-libp2p Kademlia DHT node (@libp2p/kad-dht) as a
// subprocess and drives it, so interop tests can put a real js peer next to
// kad and go-libp2p-kad-dht nodes.
//
// The node is interop/js/peer.mjs. Its dependencies are pinned in
// interop/js/package-lock.json and installed with `npm ci` in that folder;
// node_modules is not committed. The subprocess speaks newline-delimited JSON
// on stdin and stdout (one ready event, then one answer per request); see
// peer.mjs for the protocol.
//
// The js node listens on 127.0.0.1, runs the DHT in server mode on
// /ipfs/kad/1.0.0, keeps loopback addresses, and knows one extra record
// namespace, "v" (keys "/v/..."), whose validator accepts any value and whose
// selector prefers the lexicographically greatest one.
//
// Things a peer must do before the js node puts it in its routing table:
// identify must list /ipfs/kad/1.0.0, and the peer must answer a
// /ipfs/ping/1.0.0 ping (the timeout adapts, and is at least 5 s).
package jspeer

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/multiformats/go-multiaddr"
)

const (
	// DefaultStartTimeout bounds Start when its context has no deadline.
	DefaultStartTimeout = 30 * time.Second
	// DefaultCallTimeout bounds a Call whose context has no deadline. The js
	// side is told the same limit, so it gives up on its lookup too.
	DefaultCallTimeout = 20 * time.Second
	// callGrace is how much longer than the js side's own timeout the Go side
	// waits for an answer, so a js timeout arrives as a js error.
	callGrace = 2 * time.Second
	// closeTimeout bounds the wait for the process to exit after "stop"
	// before it is killed.
	closeTimeout = 10 * time.Second
	// stderrKeep is how much of the subprocess's stderr is kept for Stderr.
	stderrKeep = 256 << 10
)

var (
	// ErrNotFound is matched by the error of a command the js node answered
	// with "not found" (get, findPeer).
	ErrNotFound = errors.New("jspeer: not found")
	// ErrTimeout is matched by the error of a command that ran out of time,
	// on the js side or the Go side (where context.DeadlineExceeded matches
	// too).
	ErrTimeout = errors.New("jspeer: timed out")
	// ErrBadRequest is matched by the error of a request the js node could
	// not understand.
	ErrBadRequest = errors.New("jspeer: bad request")
	// ErrClosed is returned by calls made after the process has exited.
	ErrClosed = errors.New("jspeer: process exited")
)

// Error is an error answer from the js node.
type Error struct {
	Cmd     string
	Code    string // NOT_FOUND, TIMEOUT, BAD_REQUEST or ERROR
	Message string
}

func (e *Error) Error() string {
	return fmt.Sprintf("jspeer %s: %s", e.Cmd, e.Message)
}

// Is lets errors.Is match the sentinel errors by code.
func (e *Error) Is(target error) bool {
	switch target {
	case ErrNotFound:
		return e.Code == "NOT_FOUND"
	case ErrTimeout:
		return e.Code == "TIMEOUT"
	case ErrBadRequest:
		return e.Code == "BAD_REQUEST"
	}
	return false
}

// Peer is a running js node.
type Peer struct {
	// ID is the js node's peer id.
	ID peer.ID
	// Addrs are its listen addresses, each ending in /p2p/<ID>.
	Addrs []multiaddr.Multiaddr

	cmd     *exec.Cmd
	stdin   io.WriteCloser
	stderr  *tailBuffer
	writeMu sync.Mutex

	mu      sync.Mutex
	nextID  int64
	pending map[int64]chan reply

	ready  chan readyEvent // the first event line; buffered
	exited chan struct{}   // closed once the process is reaped
	// waitErr is the result of cmd.Wait; read it only after exited is closed.
	waitErr error

	closeOnce sync.Once
	closeErr  error
}

type readyEvent struct {
	Event string   `json:"event"`
	ID    string   `json:"id"`
	Addrs []string `json:"addrs"`
	Error string   `json:"error"`
}

type reply struct {
	raw  []byte
	ok   bool
	code string
	msg  string
}

// StartN starts n peers in parallel, as Start does. If any fails to start,
// the others are closed and the errors are returned together.
func StartN(ctx context.Context, dir string, n int) ([]*Peer, error) {
	peers := make([]*Peer, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { peers[i], errs[i] = Start(ctx, dir) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		for _, p := range peers {
			if p != nil {
				_ = p.Close()
			}
		}
		return nil, err
	}
	return peers, nil
}

// TB is the part of testing.TB that CloseAtEnd uses.
type TB interface {
	Helper()
	Cleanup(func())
	Failed() bool
	Logf(format string, args ...any)
	Errorf(format string, args ...any)
}

// CloseAtEnd closes the peers when the test ends, logging each one's
// stderr first if the test failed.
func CloseAtEnd(t TB, peers []*Peer) {
	t.Helper()
	for i, p := range peers {
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("stderr of js peer %d (%s):\n%s", i, p.ID, p.Stderr())
			}
			if err := p.Close(); err != nil {
				t.Errorf("closing js peer %d: %v", i, err)
			}
		})
	}
}

// Start runs `node peer.mjs` in dir (the interop/js folder) and waits for the
// node to report its id and addresses. ctx bounds only the start; the process
// lives until Close. Without a deadline on ctx, DefaultStartTimeout applies.
func Start(ctx context.Context, dir string) (*Peer, error) {
	nodeBin, err := exec.LookPath("node")
	if err != nil {
		return nil, fmt.Errorf("jspeer: node (Node.js 20 or later) is not installed: %w", err)
	}
	script := filepath.Join(dir, "peer.mjs")
	if _, err := os.Stat(script); err != nil {
		return nil, fmt.Errorf("jspeer: no peer script: %w", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "@libp2p", "kad-dht", "package.json")); err != nil {
		return nil, fmt.Errorf("jspeer: js dependencies are missing: run `npm ci` in %s (%w)", dir, err)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultStartTimeout)
		defer cancel()
	}

	cmd := exec.Command(nodeBin, "peer.mjs")
	cmd.Dir = dir
	cmd.WaitDelay = 2 * time.Second
	p := &Peer{
		cmd:     cmd,
		stderr:  &tailBuffer{max: stderrKeep},
		pending: make(map[int64]chan reply),
		ready:   make(chan readyEvent, 1),
		exited:  make(chan struct{}),
	}
	cmd.Stderr = p.stderr
	if p.stdin, err = cmd.StdinPipe(); err != nil {
		return nil, fmt.Errorf("jspeer: %w", err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("jspeer: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("jspeer: starting node: %w", err)
	}
	go p.readLoop(stdout)

	fail := func(err error) (*Peer, error) {
		p.kill()
		return nil, fmt.Errorf("%w\nstderr:\n%s", err, p.Stderr())
	}
	select {
	case ev := <-p.ready:
		if ev.Event != "ready" {
			return fail(fmt.Errorf("jspeer: node did not start: %s", ev.Error))
		}
		if err := p.setIdentity(ev); err != nil {
			return fail(err)
		}
		return p, nil
	case <-p.exited:
		return fail(fmt.Errorf("jspeer: node exited before it was ready: %v", p.waitErr))
	case <-ctx.Done():
		return fail(fmt.Errorf("jspeer: waiting for the node to start: %w", ctx.Err()))
	}
}

func (p *Peer) setIdentity(ev readyEvent) error {
	id, err := peer.Decode(ev.ID)
	if err != nil {
		return fmt.Errorf("jspeer: ready event has a bad peer id %q: %w", ev.ID, err)
	}
	p.ID = id
	for _, s := range ev.Addrs {
		a, err := multiaddr.NewMultiaddr(s)
		if err != nil {
			return fmt.Errorf("jspeer: ready event has a bad address %q: %w", s, err)
		}
		p.Addrs = append(p.Addrs, a)
	}
	if len(p.Addrs) == 0 {
		return errors.New("jspeer: ready event lists no address")
	}
	return nil
}

// readLoop owns stdout: it routes answers to their callers until EOF, then
// reaps the process and fails whatever is still waiting.
func (p *Peer) readLoop(stdout io.Reader) {
	r := bufio.NewReader(stdout)
	first := true
	for {
		line, err := r.ReadBytes('\n')
		if len(bytes.TrimSpace(line)) > 0 {
			p.dispatch(line, &first)
		}
		if err != nil {
			break
		}
	}
	p.waitErr = p.cmd.Wait()
	close(p.exited)
	p.mu.Lock()
	for id, ch := range p.pending {
		delete(p.pending, id)
		close(ch)
	}
	p.mu.Unlock()
}

func (p *Peer) dispatch(line []byte, first *bool) {
	var head struct {
		Event string          `json:"event"`
		ID    json.RawMessage `json:"id"`
		OK    bool            `json:"ok"`
		Code  string          `json:"code"`
		Error string          `json:"error"`
	}
	if err := json.Unmarshal(line, &head); err != nil {
		fmt.Fprintf(p.stderr, "jspeer: unparsable stdout line: %s", line)
		return
	}
	if head.Event != "" {
		if *first {
			*first = false
			var ev readyEvent
			_ = json.Unmarshal(line, &ev)
			p.ready <- ev
		}
		return
	}
	var id int64
	if err := json.Unmarshal(head.ID, &id); err != nil {
		// An answer to no request (id null): nothing waits for it.
		fmt.Fprintf(p.stderr, "jspeer: answer without id: %s", line)
		return
	}
	p.mu.Lock()
	ch := p.pending[id]
	delete(p.pending, id)
	p.mu.Unlock()
	if ch != nil {
		ch <- reply{raw: line, ok: head.OK, code: head.Code, msg: head.Error}
	}
}

// AddrInfo returns the node's id and addresses, without the /p2p suffix.
func (p *Peer) AddrInfo() peer.AddrInfo {
	info := peer.AddrInfo{ID: p.ID}
	for _, a := range p.Addrs {
		transport, _ := peer.SplitAddr(a)
		if transport != nil {
			info.Addrs = append(info.Addrs, transport)
		}
	}
	return info
}

// Stderr returns the last part of what the node wrote to stderr: its own
// diagnostics, and libp2p debug logs when DEBUG (e.g. DEBUG='libp2p:kad-dht*')
// is set in the environment of the test.
func (p *Peer) Stderr() string {
	return p.stderr.String()
}

// Call sends one request and decodes the answer into out (which may be nil).
// Unless args sets "timeoutMs", the js side is told to give up when ctx
// expires, or after DefaultCallTimeout if ctx has no deadline; the Go side
// waits a little longer than that, so Call always returns.
func (p *Peer) Call(ctx context.Context, cmd string, args map[string]any, out any) error {
	req := make(map[string]any, len(args)+3)
	for k, v := range args {
		req[k] = v
	}
	jsTimeout := DefaultCallTimeout
	if ms, ok := timeoutArg(args); ok {
		jsTimeout = ms
	} else if deadline, ok := ctx.Deadline(); ok {
		jsTimeout = max(time.Until(deadline), time.Millisecond)
	}
	if _, ok := args["timeoutMs"]; !ok {
		req["timeoutMs"] = jsTimeout.Milliseconds()
	}

	ch := make(chan reply, 1)
	p.mu.Lock()
	p.nextID++
	id := p.nextID
	p.pending[id] = ch
	p.mu.Unlock()
	req["id"] = id
	req["cmd"] = cmd
	forget := func() {
		p.mu.Lock()
		delete(p.pending, id)
		p.mu.Unlock()
	}

	line, err := json.Marshal(req)
	if err != nil {
		forget()
		return fmt.Errorf("jspeer %s: encoding request: %w", cmd, err)
	}
	if err := p.write(append(line, '\n')); err != nil {
		forget()
		return fmt.Errorf("jspeer %s: %w", cmd, err)
	}

	timer := time.NewTimer(jsTimeout + callGrace)
	defer timer.Stop()
	select {
	case r, ok := <-ch:
		if !ok {
			return fmt.Errorf("jspeer %s: %w: %v", cmd, ErrClosed, p.waitErr)
		}
		if !r.ok {
			return &Error{Cmd: cmd, Code: r.code, Message: r.msg}
		}
		if out == nil {
			return nil
		}
		if err := json.Unmarshal(r.raw, out); err != nil {
			return fmt.Errorf("jspeer %s: decoding answer: %w", cmd, err)
		}
		return nil
	case <-ctx.Done():
		forget()
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return fmt.Errorf("jspeer %s: %w: %w", cmd, ErrTimeout, ctx.Err())
		}
		return fmt.Errorf("jspeer %s: %w", cmd, ctx.Err())
	case <-timer.C:
		forget()
		return fmt.Errorf("jspeer %s: no answer in %v: %w", cmd, jsTimeout+callGrace, ErrTimeout)
	}
}

func timeoutArg(args map[string]any) (time.Duration, bool) {
	switch v := args["timeoutMs"].(type) {
	case int:
		return time.Duration(v) * time.Millisecond, v > 0
	case int64:
		return time.Duration(v) * time.Millisecond, v > 0
	case float64:
		return time.Duration(v * float64(time.Millisecond)), v > 0
	}
	return 0, false
}

func (p *Peer) write(line []byte) error {
	select {
	case <-p.exited:
		return ErrClosed
	default:
	}
	p.writeMu.Lock()
	defer p.writeMu.Unlock()
	if _, err := p.stdin.Write(line); err != nil {
		return fmt.Errorf("writing request: %w", err)
	}
	return nil
}

// Close stops the node: it asks it to stop, closes its stdin, and kills it
// if it has not exited after a few seconds. It returns once the process is
// reaped; later calls return the same result.
func (p *Peer) Close() error {
	p.closeOnce.Do(func() {
		_ = p.write([]byte(`{"id":0,"cmd":"stop"}` + "\n"))
		p.writeMu.Lock()
		_ = p.stdin.Close()
		p.writeMu.Unlock()
		select {
		case <-p.exited:
			if p.waitErr != nil {
				p.closeErr = fmt.Errorf("jspeer: node exited: %w", p.waitErr)
			}
		case <-time.After(closeTimeout):
			p.kill()
			p.closeErr = fmt.Errorf("jspeer: node did not stop within %v and was killed", closeTimeout)
		}
	})
	return p.closeErr
}

// kill ends the process and waits until readLoop has reaped it.
func (p *Peer) kill() {
	_ = p.cmd.Process.Kill()
	<-p.exited
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (b *tailBuffer) Write(data []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, data...)
	if over := len(b.buf) - b.max; over > 0 {
		b.buf = append(b.buf[:0], b.buf[over:]...)
	}
	return len(data), nil
}

func (b *tailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.buf)
}
