package main

// The processes of the chaos test (chaos_test.go): "kad serve" servers
// that can be killed and restarted, raw requests to one server, and what a
// server's datastore holds.

import (
	"bytes"
	"context"
	"encoding/base32"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/ipfs/go-datastore/query"
	leveldb "github.com/ipfs/go-ds-leveldb"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	ma "github.com/multiformats/go-multiaddr"
	mh "github.com/multiformats/go-multihash"

	"github.com/kadlib/kad/internal/kbucket"
	"github.com/kadlib/kad/internal/pb"
	"github.com/kadlib/kad/internal/providers"
	"github.com/kadlib/kad/internal/records"
	"github.com/kadlib/kad/internal/wire"
)

// chaosServer is one "kad serve" of the chaos test: its data directory and
// port stay the same across restarts, so its identity and address do too.
// Its status page (--http) takes a new free port at each start.
type chaosServer struct {
	i    int
	dir  string
	port int
	cid  cid.Cid // announced with --provide at every start
	id   peer.ID // from the first start
	pos  kbucket.ID

	mu       sync.Mutex
	cmd      *exec.Cmd
	exited   chan struct{} // closed once the process has exited
	up       bool          // ready and not killed since
	closed   bool          // the test is over: start no more processes
	starts   int
	provided time.Time // last "provided" event of its --provide CID
	booted   bool      // printed "bootstrapped" once
	announce [2]int    // --provide announcements: tried, succeeded
	stderr   tailBuffer
	rss      rssFigures
	// statusURL is the current process's status page, from its "http"
	// line; "" until it has printed one.
	statusURL string
	gor       goroutineFigures
	// held is what its datastore held when it was last killed.
	held heldRecords
}

// rssFigures are VmRSS samples, in KiB.
type rssFigures struct {
	first, max int64 // of the current process
	maxAll     int64 // of every process this server ran
	maxThreads int64
}

// goroutineFigures are goroutine counts from /api/status.
type goroutineFigures struct {
	first, max int // of the current process; 0: no sample yet
	last       int // the latest sample: at the end, taken once the test is quiet
	maxAll     int // of every process this server ran
}

func (s *chaosServer) multiaddr() ma.Multiaddr {
	return ma.StringCast(fmt.Sprintf("/ip4/127.0.0.1/tcp/%d", s.port))
}

func (s *chaosServer) p2pAddr() string {
	return fmt.Sprintf("%s/p2p/%s", s.multiaddr(), s.id)
}

func (s *chaosServer) hasBootstrapped() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.booted
}

func (s *chaosServer) isUp() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.up
}

// start runs "kad serve" on the server's directory and port, with boot as
// --bootstrap (none on a restart: the saved routing table must do), and
// waits at most 30 s for its ready line. A restart must keep the peer id.
func (s *chaosServer) start(bin string, boot []string) error {
	args := []string{"serve", "--json", "--data", s.dir,
		"--listen", s.multiaddr().String(), "--http", "127.0.0.1:0", "--prefix", chaosPrefix,
		"--bucket-size", strconv.Itoa(chaosK), "--provide", s.cid.String()}
	for _, b := range boot {
		args = append(args, "--bootstrap", b)
	}
	cmd := exec.Command(bin, args...)
	ready := make(chan string, 1)
	cmd.Stdout = &lineWriter{fn: func(line string) { s.onLine(line, ready) }}
	cmd.Stderr = &s.stderr
	// Before the process can print its page's address.
	s.mu.Lock()
	s.statusURL = ""
	s.mu.Unlock()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("server %d: %w", s.i, err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		_ = cmd.Process.Kill()
		<-exited
		return fmt.Errorf("server %d: the test is over", s.i)
	}
	s.cmd, s.exited = cmd, exited
	s.starts++
	s.rss.first, s.rss.max = 0, 0
	s.gor.first, s.gor.max, s.gor.last = 0, 0, 0
	s.mu.Unlock()

	select {
	case id := <-ready:
		got, err := peer.Decode(id)
		if err != nil {
			return fmt.Errorf("server %d: ready line id %q: %w", s.i, id, err)
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.id == "" {
			s.id, s.pos = got, kbucket.PeerKey(got)
		} else if got != s.id {
			return fmt.Errorf("server %d: restarted as %s, was %s: identity lost", s.i, got, s.id)
		}
		s.up = true
		return nil
	case <-exited:
		return fmt.Errorf("server %d exited before its ready line: %s", s.i, s.stderr.String())
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		<-exited
		return fmt.Errorf("server %d: no ready line within 30 s: %s", s.i, s.stderr.String())
	}
}

func (s *chaosServer) onLine(line string, ready chan<- string) {
	var ev struct{ Event, ID, Message, URL string }
	if json.Unmarshal([]byte(line), &ev) != nil {
		return
	}
	switch ev.Event {
	case "ready":
		select {
		case ready <- ev.ID:
		default:
		}
	case "http":
		s.mu.Lock()
		s.statusURL = ev.URL
		s.mu.Unlock()
	case "bootstrapped":
		s.mu.Lock()
		s.booted = true
		s.mu.Unlock()
	case "provided":
		s.mu.Lock()
		s.provided = time.Now()
		s.announce[0]++
		s.announce[1]++
		s.mu.Unlock()
	case "warning":
		if strings.HasPrefix(ev.Message, "announce ") {
			s.mu.Lock()
			s.announce[0]++
			s.mu.Unlock()
		}
	}
}

// kill ends the server for good: its process, and any start still to come.
func (s *chaosServer) kill() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	_, _ = s.signal(syscall.SIGKILL, 5*time.Second)
}

// signal sends sig and waits at most wait for the process to exit; it
// returns the exit state.
func (s *chaosServer) signal(sig syscall.Signal, wait time.Duration) (*os.ProcessState, error) {
	s.mu.Lock()
	cmd, exited := s.cmd, s.exited
	s.up = false
	s.mu.Unlock()
	if cmd == nil {
		return nil, nil
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-exited:
		return cmd.ProcessState, nil
	case <-time.After(wait):
		_ = cmd.Process.Kill()
		<-exited
		return cmd.ProcessState, fmt.Errorf("server %d did not exit within %v of %v", s.i, wait, sig)
	}
}

// sampleRSS reads the process's VmRSS and thread count from /proc.
func (s *chaosServer) sampleRSS() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.up || s.cmd == nil {
		return
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", s.cmd.Process.Pid))
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		v, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			continue
		}
		switch f[0] {
		case "VmRSS:":
			if s.rss.first == 0 {
				s.rss.first = v
			}
			s.rss.max = max(s.rss.max, v)
			s.rss.maxAll = max(s.rss.maxAll, v)
		case "Threads:":
			s.rss.maxThreads = max(s.rss.maxThreads, v)
		}
	}
}

// statusClient reads the servers' /api/status. A server being killed may
// never answer, so the timeout is short; a new connection each time leaves
// no idle one behind in a server, to count among its goroutines.
var statusClient = &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// sampleGoroutines reads the process's goroutine count from its status
// page. It records nothing and returns false when the server is down, has
// not printed the page's address yet, does not answer within the client's
// timeout (it may be being killed), or was restarted meanwhile.
func (s *chaosServer) sampleGoroutines(ctx context.Context) bool {
	s.mu.Lock()
	url, life, up := s.statusURL, s.starts, s.up
	s.mu.Unlock()
	if !up || url == "" {
		return false
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url+"api/status", nil)
	if err != nil {
		return false
	}
	resp, err := statusClient.Do(req)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	var st status
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&st) != nil || st.Goroutines <= 0 {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.up || s.starts != life {
		return false
	}
	if s.gor.first == 0 {
		s.gor.first = st.Goroutines
	}
	s.gor.max = max(s.gor.max, st.Goroutines)
	s.gor.maxAll = max(s.gor.maxAll, st.Goroutines)
	s.gor.last = st.Goroutines
	return true
}

// lineWriter hands each complete line written to it to fn.
type lineWriter struct {
	fn  func(string)
	buf []byte
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			return len(p), nil
		}
		w.fn(string(w.buf[:i]))
		w.buf = w.buf[i+1:]
	}
}

// tailBuffer keeps the last 4 KiB written to it, for error messages.
type tailBuffer struct {
	mu  sync.Mutex
	buf []byte
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	if len(b.buf) > 4096 {
		b.buf = append([]byte(nil), b.buf[len(b.buf)-4096:]...)
	}
	return len(p), nil
}

func (b *tailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.buf)
}

// freePorts returns n TCP ports free on 127.0.0.1, below the kernel's
// ephemeral range so that no outgoing connection takes one while its
// server is down.
func freePorts(n int, seed int64) ([]int, error) {
	var out []int
	for p := 20000 + int(seed%5000); p < 32000 && len(out) < n; p += 7 {
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			continue
		}
		_ = l.Close()
		out = append(out, p)
	}
	if len(out) < n {
		return nil, fmt.Errorf("found %d free ports of %d", len(out), n)
	}
	return out, nil
}

// rawRequest sends one request to s from h over a new stream and returns
// the response: what the server itself answers, with no lookup around it.
func rawRequest(ctx context.Context, h host.Host, s *chaosServer, m *pb.Message) (*pb.Message, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := h.Connect(ctx, peer.AddrInfo{ID: s.id, Addrs: []ma.Multiaddr{s.multiaddr()}}); err != nil {
		return nil, err
	}
	st, err := h.NewStream(ctx, s.id, protocol.ID(chaosPrefix+"/kad/1.0.0"))
	if err != nil {
		return nil, err
	}
	defer st.Close()
	dl, _ := ctx.Deadline()
	_ = st.SetDeadline(dl)
	if err := wire.WriteMsg(st, m); err != nil {
		_ = st.Reset()
		return nil, err
	}
	var resp pb.Message
	if err := wire.NewReader(st, 0).ReadMsg(&resp); err != nil {
		_ = st.Reset()
		return nil, err
	}
	return resp.Clone(), nil
}

// heldRecords is what a server's datastore holds: the records of the
// test's keys with the sequence number of their value, the providers of
// the test's CIDs, and how many peers its saved routing table lists.
type heldRecords struct {
	values     map[string]int       // record key -> sequence number
	providers  map[string][]peer.ID // multihash bytes -> providers
	tablePeers int
	entries    int // every entry, read back with its checksums checked
}

var b32 = base32.StdEncoding.WithPadding(base32.NoPadding)

// inspectStore opens the leveldb datastore in dir (a kad serve --data
// directory) and reads every entry, which checks every block's checksum;
// with copyFirst it opens a copy, leaving the store as the process left it
// for its own next start.
func inspectStore(ctx context.Context, dir string, copyFirst bool) (heldRecords, error) {
	path := filepath.Join(dir, datastoreDir)
	if copyFirst {
		tmp, err := os.MkdirTemp("", "kad-chaos-store-")
		if err != nil {
			return heldRecords{}, err
		}
		defer os.RemoveAll(tmp)
		if err := copyDir(path, tmp); err != nil {
			return heldRecords{}, err
		}
		path = tmp
	}
	st, err := leveldb.NewDatastore(path, nil)
	if err != nil {
		return heldRecords{}, fmt.Errorf("open %s: %w", path, err)
	}
	defer st.Close()
	h := heldRecords{values: map[string]int{}, providers: map[string][]peer.ID{}}
	res, err := st.Query(ctx, query.Query{})
	if err != nil {
		return h, err
	}
	defer res.Close()
	recs := records.New(st, 48*time.Hour, nil)
	provs, err := providers.New(st, providers.Config{Validity: 48 * time.Hour, AddrTTL: 24 * time.Hour, MaxPerKey: 1000})
	if err != nil {
		return h, err
	}
	for r := range res.Next() {
		if r.Error != nil {
			return h, fmt.Errorf("read %s: %w", path, r.Error)
		}
		h.entries++
		parts := strings.Split(strings.TrimPrefix(r.Key, "/"), "/")
		switch {
		case len(parts) == 3 && parts[0] == "kad" && parts[1] == "routing-table":
			h.tablePeers++
		case len(parts) == 2 && parts[0] == "records":
			key, err := b32.DecodeString(parts[1])
			if err != nil || !strings.HasPrefix(string(key), "/"+cliNamespace+"/chaos-") {
				continue
			}
			rec, ok, err := recs.Get(ctx, key)
			if err != nil || !ok {
				return h, fmt.Errorf("record %q listed but not readable: %v", key, err)
			}
			_, data, err := decodeValue(rec.Value)
			if err != nil {
				return h, fmt.Errorf("record %q: %w", key, err)
			}
			h.values[string(key)] = valueSeq(data)
		case len(parts) == 2 && parts[0] == "providers":
			// One entry per key holding all its providers.
			key, err := b32.DecodeString(parts[1])
			if err != nil {
				return h, fmt.Errorf("provider entry %q does not decode", r.Key)
			}
			infos, err := provs.Get(ctx, key, time.Now(), 1000)
			if err != nil {
				return h, fmt.Errorf("provider entry %q: %w", r.Key, err)
			}
			for _, ai := range infos {
				h.providers[string(key)] = append(h.providers[string(key)], ai.ID)
			}
		case len(parts) == 3 && parts[0] == "providers":
			return h, fmt.Errorf("provider entry %q in the old layout (one entry per provider)", r.Key)
		}
	}
	return h, nil
}

func copyDir(from, to string) error {
	return filepath.WalkDir(from, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, path)
		dst := filepath.Join(to, rel)
		if d.IsDir() {
			return os.MkdirAll(dst, 0o700)
		}
		if d.Name() == "LOCK" {
			return nil
		}
		in, err := os.Open(path)
		if err != nil {
			return err
		}
		defer in.Close()
		out, err := os.Create(dst)
		if err != nil {
			return err
		}
		if _, err := io.Copy(out, in); err != nil {
			_ = out.Close()
			return err
		}
		return out.Close()
	})
}

// chaosCID is the CID of the raw bytes of name.
func chaosCID(name string) cid.Cid {
	h, err := mh.Sum([]byte(name), mh.SHA2_256, -1)
	if err != nil {
		panic(err) // sha2-256 of any input cannot fail
	}
	return cid.NewCidV1(cid.Raw, h)
}

// valueSeq is the sequence number in a test value's data, "<key>#<seq>";
// -1 if it has none.
func valueSeq(data []byte) int {
	_, s, ok := strings.Cut(string(data), "#")
	if !ok {
		return -1
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return -1
	}
	return n
}
