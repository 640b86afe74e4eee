package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/stretchr/testify/require"

	"github.com/kadlib/kad/internal/kbucket"
	"github.com/kadlib/kad/internal/pb"
)

// The process chaos test (issue 18, part 1).
const (
	chaosServers     = 20
	chaosK           = 5 // well below the network size: a kill takes copies away
	chaosMaxDown     = 5 // servers down at once, at most
	chaosDuration    = 60 * time.Second
	chaosSeed        = 18
	chaosPrefix      = "/chaos"
	chaosMinAccepted = 3  // a put is "confirmed" when this many peers took it
	chaosKeys        = 10 // keys per load worker
	// chaosRSSBound bounds every server process's resident memory, KiB.
	chaosRSSBound = 256 << 10
	// A server's goroutine count at the end, once the test is quiet, may
	// be at most chaosGoroutineFactor times the first count its current
	// process showed, or that first count plus chaosGoroutineSlack if
	// more: a count that kept growing through the chaos exceeds both. In
	// eleven runs on a busy 2-core machine the servers' first counts were
	// 59-145 and their counts at the end 91-127, at most 60 above their
	// first: a server sampled right after a restart starts low, and every
	// server settles near 90-130 whatever its first count, so the slack
	// is what keeps the bound from flaking. With one goroutine leaked per
	// inbound stream (injected once to check this) the servers ended at
	// 221-1695, and 16 of the 20 broke this bound.
	chaosGoroutineFactor = 2
	chaosGoroutineSlack  = 200
	// shortLivedProvideLoses: "kad provide" returns once 3 peers took
	// its record and exits, cancelling the sends to the k closest; with
	// fewer than k peers in its fresh table it takes any peer for one of
	// the closest, so its record can end up on none of them (README,
	// Reliability). Its losses are checked and reported, and fail the
	// test only once this is set to false, when that is fixed.
	shortLivedProvideLoses = false
)

func TestBucketSizeFlag(t *testing.T) {
	code, _, stderr := runIn(t, "serve", "--data", t.TempDir(), "--bucket-size", "0")
	require.Equal(t, exitUsage, code)
	require.Contains(t, stderr, "--bucket-size 0: must be at least 1")
	f, _, err := parseArgs(findCommand("get"), []string{"--bucket-size", "5", "x"})
	require.NoError(t, err)
	require.Equal(t, 5, f.k)
}

// TestChaos runs 20 "kad serve" processes on loopback with k = 5 and, for
// a minute, a client load from in-process client nodes and short-lived kad
// processes while servers are killed with SIGKILL (at most 5 down at once)
// and restarted from their data directories. Then, with every server back,
// no confirmed value or announced provider record may be lost, every
// restarted server must have kept its identity, answered FIND_NODE from
// its saved routing table (it is restarted without --bootstrap) and still
// serve what its datastore held, no server may exceed chaosRSSBound, no
// server's goroutine count may have kept growing (see
// chaosGoroutineFactor), and every datastore must open and read back
// cleanly, after each SIGKILL and at the end.
//
// "kad serve" saves its routing table when it stops and on each refresh
// (every 10 minutes); a server killed before either comes back with none.
// So the network is first restarted gracefully, five servers at a time,
// as an upgrade would: that saves every table and checks a cold start from
// it.
//
// Every server runs its status page on a free loopback port (--http
// 127.0.0.1:0): the test reads each one's goroutine count from
// /api/status every two seconds through the chaos, skipping servers that
// are down or do not answer in time, and once more from every server at
// the end, after the load and the checks, when the network is quiet.
func TestChaos(t *testing.T) {
	if testing.Short() {
		t.Skip("runs 20 processes for about two minutes; skipped with -short")
	}
	if runtime.GOOS != "linux" {
		t.Skip("reads /proc")
	}
	began := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 170*time.Second)
	defer cancel()
	r := &chaosRun{t: t, bin: buildKad(ctx, t), ops: map[string]*[2]int{}, keys: map[string]*keyState{}}
	t.Logf("built in %v", time.Since(began).Round(time.Millisecond))
	r.startNetwork(ctx)
	r.rollingRestart(ctx)
	r.chaos(ctx)
	r.verify(ctx)
	r.sampleAll(ctx, "at the end")
	r.stopAll(ctx)
	r.report(time.Since(began))
	r.explainLost()
	require.Empty(t, r.lost, "records lost")
	if len(r.known) > 0 {
		t.Logf("KNOWN ISSUE: %d provider records announced by short-lived kad provide processes were not found (see shortLivedProvideLoses)", len(r.known))
	}
}

// chaosRun is the state of one chaos test.
type chaosRun struct {
	t       *testing.T
	bin     string
	servers []*chaosServer
	prober  host.Host // sends raw requests to one server

	down            atomic.Int32
	kills, restarts atomic.Int32
	restartWG       sync.WaitGroup
	// Goroutine counts asked of the servers that were up during the
	// chaos, and answered.
	gorAsked, gorAnswered atomic.Int32

	mu     sync.Mutex
	ops    map[string]*[2]int // tried, succeeded
	keys   map[string]*keyState
	provs  []provRecord
	avail  [2]int // reads with some of the key's k closest servers down: tried, answered
	probes []time.Duration
	tables []int // saved routing table peers found in each store at a restart
	stores struct{ crash, entries int }
	final  struct{ values, valuesLost, provs, provsLost, held, heldLost int }
	lost   []lostRecord
	known  []lostRecord  // lost by "kad provide", see shortLivedProvideLoses
	atEnd  []heldRecords // each server's datastore at the end
}

// keyState is what the test knows of one key's writes. One worker writes a
// key, one write at a time, so sequence numbers order its versions.
type keyState struct {
	attempted, confirmed int // highest sequence numbers; -1: none
	holders              []*chaosServer
}

type provRecord struct {
	c        cid.Cid
	provider peer.ID
	source   string
}

// lostRecord is a record the end of the test did not find.
type lostRecord struct {
	key      string  // record key, or provider multihash
	provider peer.ID // for a provider record
	held     bool    // asked of one server that held it
	source   string  // who announced it
	what     string
}

// count tallies one operation, in all and by the kad processes.
func (r *chaosRun) count(op string, a actor, ok bool) {
	r.tally(op, ok)
	if a.name() == procName {
		r.tally(op+" by "+procName, ok)
	}
}

func (r *chaosRun) tally(name string, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.ops[name]
	if c == nil {
		c = new([2]int)
		r.ops[name] = c
	}
	c[0]++
	if ok {
		c[1]++
	}
}

// startNetwork starts the servers: the first alone, the others
// bootstrapping through it, and waits until all have bootstrapped.
func (r *chaosRun) startNetwork(ctx context.Context) {
	t := r.t
	ports, err := freePorts(chaosServers, int64(os.Getpid()))
	require.NoError(t, err)
	r.servers = make([]*chaosServer, chaosServers)
	for i := range r.servers {
		r.servers[i] = &chaosServer{i: i, dir: t.TempDir(), port: ports[i], cid: chaosCID(fmt.Sprintf("chaos-served-%d", i))}
	}
	t.Cleanup(func() {
		for _, s := range r.servers {
			s.kill()
		}
		// Restarts still pending find their server closed.
		if !r.restartsDone(60 * time.Second) {
			t.Error("restarts still pending 60 s after the test")
		}
	})
	r.prober, err = libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
	require.NoError(t, err)
	t.Cleanup(func() { _ = r.prober.Close() })

	require.NoError(t, r.servers[0].start(r.bin, nil))
	boot := []string{r.servers[0].p2pAddr()}
	r.parallel(r.servers[1:], func(s *chaosServer) error { return s.start(r.bin, boot) })
	require.False(t, t.Failed())
	// Wait until each has looked itself up: its table then holds its
	// neighbourhood, which the graceful restart below saves.
	require.NoError(t, poll(ctx, 60*time.Second, func() bool {
		n := 0
		for _, s := range r.servers[1:] {
			if s.hasBootstrapped() {
				n++
			}
		}
		return n == chaosServers-1
	}), "every server bootstraps within 60 s")
}

// rollingRestart stops the servers with SIGINT five at a time, which saves
// their routing tables, and starts them again without --bootstrap: each
// must come back with its identity and answer FIND_NODE with peers from
// its saved table.
// restartsDone waits up to d for the restarts in flight to finish and
// reports whether they did.
func (r *chaosRun) restartsDone(d time.Duration) bool {
	done := make(chan struct{})
	go func() { r.restartWG.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}

func (r *chaosRun) rollingRestart(ctx context.Context) {
	for b := 0; b < chaosServers; b += chaosMaxDown {
		r.parallel(r.servers[b:b+chaosMaxDown], func(s *chaosServer) error {
			st, err := s.signal(syscall.SIGINT, 30*time.Second)
			if err != nil {
				return err
			}
			if st.ExitCode() != 0 {
				return fmt.Errorf("server %d: exit %d after SIGINT: %s", s.i, st.ExitCode(), s.stderr.String())
			}
			return r.restart(ctx, s)
		})
	}
	require.False(r.t, r.t.Failed())
}

// restart checks the stopped server's datastore (a copy of it, opened and
// read in full), starts it again without --bootstrap and checks that it
// answers FIND_NODE with peers.
func (r *chaosRun) restart(ctx context.Context, s *chaosServer) error {
	held, err := inspectStore(ctx, s.dir, true)
	if err != nil {
		return fmt.Errorf("server %d: datastore after exit: %w", s.i, err)
	}
	s.mu.Lock()
	s.held = held
	s.mu.Unlock()
	r.mu.Lock()
	r.stores.crash++
	r.stores.entries += held.entries
	r.tables = append(r.tables, held.tablePeers)
	r.mu.Unlock()
	if err := s.start(r.bin, nil); err != nil {
		return err
	}
	began := time.Now()
	var closer int
	err = poll(ctx, 10*time.Second, func() bool {
		resp, err := rawRequest(ctx, r.prober, s, &pb.Message{Type: pb.FindNode, Key: []byte(s.id)})
		if err == nil {
			closer = len(resp.CloserPeers)
		}
		return closer > 0
	})
	if err != nil {
		return fmt.Errorf("server %d: no FIND_NODE answer with peers within 10 s of its restart (saved table: %d peers)", s.i, held.tablePeers)
	}
	r.mu.Lock()
	r.probes = append(r.probes, time.Since(began))
	r.mu.Unlock()
	return nil
}

// chaos runs the client load and the kills for chaosDuration, then waits
// for every server to be back.
func (r *chaosRun) chaos(ctx context.Context) {
	t := r.t
	holdersOf := func(key []byte) []*chaosServer {
		pos := kbucket.KeyForBytes(key)
		hs := slices.Clone(r.servers)
		sort.Slice(hs, func(a, b int) bool { return kbucket.CompareDistance(hs[a].pos, hs[b].pos, pos) < 0 })
		return hs[:chaosK]
	}
	loadCtx, stopLoad := context.WithTimeout(ctx, chaosDuration)
	defer stopLoad()
	var wg sync.WaitGroup
	// On a failure, stop the load and wait for it: every operation is
	// bounded, so this is too.
	defer wg.Wait()
	defer stopLoad()
	sampler := make(chan struct{})
	go func() {
		defer close(sampler)
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for i := 0; ; i++ {
			for _, s := range r.servers {
				s.sampleRSS()
			}
			// An /api/status answer counts the server's stores: ask
			// every other tick, as often as the status page polls.
			if i%2 == 0 {
				r.sampleGoroutines(loadCtx)
			}
			select {
			case <-loadCtx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	// Two in-process client nodes and one worker of short-lived kad
	// processes.
	for w := range 3 {
		var a actor
		if w < 2 {
			d, h, err := newChaosClient(ctx, r.servers)
			require.NoError(t, err)
			t.Cleanup(func() { _ = d.Close(); _ = h.Close() })
			a = &inProcActor{d: d}
		} else {
			a = &procActor{r: r, rng: rand.New(rand.NewPCG(chaosSeed, 99))}
		}
		r.mu.Lock()
		for j := range chaosKeys {
			key := fmt.Sprintf("/%s/chaos-w%d-%d", cliNamespace, w, j)
			r.keys[key] = &keyState{attempted: -1, confirmed: -1, holders: holdersOf([]byte(key))}
		}
		r.mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.work(loadCtx, w, a, rand.New(rand.NewPCG(chaosSeed, uint64(w))))
		}()
	}
	// Server-originated load: every server announces its --provide CID
	// at each start.

	rng := rand.New(rand.NewPCG(chaosSeed, 7))
	for loadCtx.Err() == nil {
		if sleepCtx(loadCtx, time.Duration(1000+rng.IntN(2000))*time.Millisecond) != nil {
			break
		}
		if r.down.Load() >= chaosMaxDown {
			continue
		}
		s := r.randomUp(rng)
		if s == nil {
			continue
		}
		r.down.Add(1)
		if _, err := s.signal(syscall.SIGKILL, 10*time.Second); err != nil {
			t.Error(err)
		}
		r.kills.Add(1)
		pause := time.Duration(2000+rng.IntN(6000)) * time.Millisecond
		r.restartWG.Add(1)
		go func() {
			defer r.restartWG.Done()
			if sleepCtx(ctx, pause) != nil {
				return
			}
			if err := r.restart(ctx, s); err != nil {
				if ctx.Err() == nil {
					t.Error(err)
				}
				return
			}
			r.restarts.Add(1)
			r.down.Add(-1)
		}()
	}
	wg.Wait()
	<-sampler
	if !r.restartsDone(60 * time.Second) {
		t.Fatal("restarts did not finish within 60 s of the end of the chaos")
	}
	require.False(t, t.Failed())
	for _, s := range r.servers {
		require.True(t, s.isUp(), "server %d is back", s.i)
		s.sampleRSS()
	}
	// The first goroutine count of a server restarted too late for the
	// sampler above.
	r.sampleAll(ctx, "after the chaos")
}

// sampleGoroutines asks every server that is up for its goroutine count,
// all at once; those down or being killed are skipped.
func (r *chaosRun) sampleGoroutines(ctx context.Context) {
	var wg sync.WaitGroup
	for _, s := range r.servers {
		if !s.isUp() {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.gorAsked.Add(1)
			if s.sampleGoroutines(ctx) {
				r.gorAnswered.Add(1)
			}
		}()
	}
	wg.Wait()
}

// sampleAll takes a goroutine count from every server, every one being
// up: a server that does not answer within 10 s fails the test.
func (r *chaosRun) sampleAll(ctx context.Context, when string) {
	r.parallel(r.servers, func(s *chaosServer) error {
		if poll(ctx, 10*time.Second, func() bool { return s.sampleGoroutines(ctx) }) != nil {
			return fmt.Errorf("server %d: no goroutine count from its status page %s", s.i, when)
		}
		return nil
	})
	require.False(r.t, r.t.Failed())
}

// verify reads back, from a fresh client that never held anything, every
// confirmed value and every provider record, and asks every server
// directly for what its datastore held when it was last stopped.
func (r *chaosRun) verify(ctx context.Context) {
	t := r.t
	d, h, err := newChaosClient(ctx, r.servers)
	require.NoError(t, err)
	defer func() { _ = d.Close(); _ = h.Close() }()
	var mu sync.Mutex
	lose := func(l lostRecord, format string, args ...any) {
		l.what = fmt.Sprintf(format, args...)
		mu.Lock()
		r.lost = append(r.lost, l)
		mu.Unlock()
	}
	var jobs []func()
	for key, ks := range r.keys {
		if ks.confirmed < 0 {
			continue
		}
		r.final.values++
		jobs = append(jobs, func() {
			opCtx, cancel := context.WithTimeout(ctx, 20*time.Second)
			defer cancel()
			v, err := d.GetValue(opCtx, key)
			seq := -1
			if err == nil {
				if _, data, derr := decodeValue(v); derr == nil {
					seq = valueSeq(data)
				}
			}
			if seq < ks.confirmed || seq > ks.attempted {
				lose(lostRecord{key: key}, "value %s: got version %d (err %v), confirmed %d", key, seq, err, ks.confirmed)
			}
		})
	}
	for _, pr := range r.allProviders() {
		r.final.provs++
		jobs = append(jobs, func() {
			opCtx, cancel := context.WithTimeout(ctx, 20*time.Second)
			defer cancel()
			got, err := d.FindProviders(opCtx, pr.c, 0)
			if !slices.ContainsFunc(got, func(ai peer.AddrInfo) bool { return ai.ID == pr.provider }) {
				lose(lostRecord{key: string(pr.c.Hash()), provider: pr.provider, source: pr.source}, "provider %s (%s) of %s: not found (err %v, %d others)", pr.provider, pr.source, pr.c, err, len(got))
			}
		})
	}
	// What each restarted server held, asked of that server alone.
	for _, s := range r.servers {
		s.mu.Lock()
		held := s.held
		s.mu.Unlock()
		for key, seq := range held.values {
			r.final.held++
			jobs = append(jobs, func() {
				resp, err := rawRequest(ctx, r.prober, s, &pb.Message{Type: pb.GetValue, Key: []byte(key)})
				got := -1
				if err == nil && resp.Record != nil {
					if _, data, derr := decodeValue(resp.Record.Value); derr == nil {
						got = valueSeq(data)
					}
				}
				if got < seq {
					lose(lostRecord{key: key, held: true}, "server %d held %s version %d, now serves %d (err %v)", s.i, key, seq, got, err)
				}
			})
		}
		for key, provs := range held.providers {
			r.final.held += len(provs)
			jobs = append(jobs, func() {
				resp, err := rawRequest(ctx, r.prober, s, &pb.Message{Type: pb.GetProviders, Key: []byte(key)})
				for _, p := range provs {
					if err != nil || !slices.ContainsFunc(resp.ProviderPeers, func(e pb.Peer) bool { return peer.ID(e.ID) == p }) {
						lose(lostRecord{key: key, provider: p, held: true}, "server %d held provider %s of a key, no longer serves it (err %v)", s.i, p, err)
					}
				}
			})
		}
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, 4)
	for _, job := range jobs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			job()
		}()
	}
	wg.Wait()
	var lost []lostRecord
	for _, l := range r.lost {
		if l.source == procName && l.provider != "" && !l.held && shortLivedProvideLoses {
			r.known = append(r.known, l)
			continue
		}
		lost = append(lost, l)
		switch {
		case l.held:
			r.final.heldLost++
		case l.provider == "":
			r.final.valuesLost++
		default:
			r.final.provsLost++
		}
	}
	r.lost = lost
}

// stopAll stops every server with SIGINT, checks each exits cleanly and
// then that each datastore opens and reads back in full.
func (r *chaosRun) stopAll(ctx context.Context) {
	r.atEnd = make([]heldRecords, len(r.servers))
	r.parallel(r.servers, func(s *chaosServer) error {
		st, err := s.signal(syscall.SIGINT, 30*time.Second)
		if err != nil {
			return err
		}
		if st.ExitCode() != 0 {
			return fmt.Errorf("server %d: exit %d after SIGINT: %s", s.i, st.ExitCode(), s.stderr.String())
		}
		held, err := inspectStore(ctx, s.dir, false)
		if err != nil {
			return fmt.Errorf("server %d: datastore at the end: %w", s.i, err)
		}
		r.mu.Lock()
		r.atEnd[s.i] = held
		r.mu.Unlock()
		return nil
	})
}

// explainLost logs, for each lost record, which servers hold it at the
// end and where they rank by distance to its key.
func (r *chaosRun) explainLost() {
	for _, l := range slices.Concat(r.lost, r.known) {
		pos := kbucket.KeyForBytes([]byte(l.key))
		ranked := slices.Clone(r.servers)
		sort.Slice(ranked, func(a, b int) bool { return kbucket.CompareDistance(ranked[a].pos, ranked[b].pos, pos) < 0 })
		var where []string
		for rank, s := range ranked {
			h := r.atEnd[s.i]
			if l.provider == "" {
				if seq, ok := h.values[l.key]; ok {
					where = append(where, fmt.Sprintf("server %d (rank %d, version %d)", s.i, rank+1, seq))
				}
			} else if slices.Contains(h.providers[l.key], l.provider) {
				where = append(where, fmt.Sprintf("server %d (rank %d)", s.i, rank+1))
			}
		}
		r.t.Logf("lost: %s; held at the end by %v", l.what, where)
	}
}

func (r *chaosRun) report(took time.Duration) {
	t := r.t
	var names []string
	for op := range r.ops {
		names = append(names, op)
	}
	sort.Strings(names)
	t.Logf("chaos: %d servers, k=%d, %v of load with SIGKILLs (at most %d down), seed %d", chaosServers, chaosK, chaosDuration, chaosMaxDown, chaosSeed)
	for _, op := range names {
		c := r.ops[op]
		t.Logf("  %-26s %4d tried, %4d succeeded (%.1f%%)", op, c[0], c[1], pct(c[1], c[0]))
	}
	t.Logf("  availability: %d of %d reads of a confirmed value answered with it or newer while 1-%d of its %d closest servers were down (%.1f%%)",
		r.avail[1], r.avail[0], chaosK, chaosK, pct(r.avail[1], r.avail[0]))
	t.Logf("  kills %d (SIGKILL), restarts %d (+%d graceful before the chaos); identity kept on every restart",
		r.kills.Load(), r.restarts.Load(), chaosServers)
	var ann [2]int
	for _, s := range r.servers {
		ann[0] += s.announce[0]
		ann[1] += s.announce[1]
	}
	t.Logf("  %-26s %4d tried, %4d succeeded (%.1f%%)", "Provide by servers", ann[0], ann[1], pct(ann[1], ann[0]))
	slices.Sort(r.probes)
	slices.Sort(r.tables)
	t.Logf("  restarts without --bootstrap: saved table %d-%d peers; first FIND_NODE answer with peers after p50 %v, max %v",
		r.tables[0], r.tables[len(r.tables)-1], r.probes[len(r.probes)/2].Round(time.Millisecond), r.probes[len(r.probes)-1].Round(time.Millisecond))
	t.Logf("  records checked: %d confirmed values and %d provider records from a fresh client, %d held records asked of their restarted holder; lost %d, %d, %d",
		r.final.values, r.final.provs, r.final.held, r.final.valuesLost, r.final.provsLost, r.final.heldLost)
	var byProc int
	for _, pr := range r.allProviders() {
		if pr.source == procName {
			byProc++
		}
	}
	t.Logf("  provider records announced by short-lived kad provide processes: %d checked, %d not found (known issue, not counted above)", byProc, len(r.known))
	var rss, threads int64
	for _, s := range r.servers {
		rss = max(rss, s.rss.maxAll)
		threads = max(threads, s.rss.maxThreads)
	}
	t.Logf("  max RSS of a server %d MiB (bound %d MiB), max OS threads %d", rss>>10, chaosRSSBound>>10, threads)
	// Goroutines: the first count of each server's current process, the
	// largest it showed, and the one at the end against its bound.
	var first, most, last, bound []int
	var each, over []string
	var maxAll int
	for _, s := range r.servers {
		g := s.gor
		maxAll = max(maxAll, g.maxAll)
		b := max(chaosGoroutineFactor*g.first, g.first+chaosGoroutineSlack)
		first, most, last, bound = append(first, g.first), append(most, g.max), append(last, g.last), append(bound, b)
		each = append(each, fmt.Sprintf("%d:%d/%d/%d", s.i, g.first, g.max, g.last))
		if g.last > b {
			over = append(over, fmt.Sprintf("server %d: %d goroutines at the end, first %d in its current process (bound %d), max %d", s.i, g.last, g.first, b, g.max))
		}
	}
	t.Logf("  goroutines of a server: first %d-%d, max %d-%d, at the end %d-%d (bound max(%dx first, first+%d): %d-%d); max of any process %d; %d of %d samples during the chaos answered",
		slices.Min(first), slices.Max(first), slices.Min(most), slices.Max(most), slices.Min(last), slices.Max(last),
		chaosGoroutineFactor, chaosGoroutineSlack, slices.Min(bound), slices.Max(bound), maxAll, r.gorAnswered.Load(), r.gorAsked.Load())
	t.Logf("  goroutines by server (first/max/end of its current process): %s", strings.Join(each, " "))
	t.Logf("  datastores: %d copies taken after a stop opened and read in full (%d entries), %d opened at the end; took %v",
		r.stores.crash, r.stores.entries, chaosServers, took.Round(time.Second))
	// Not fatal, so that lost records are still explained.
	for _, o := range over {
		t.Errorf("goroutine count kept growing: %s", o)
	}
	require.LessOrEqual(t, rss, int64(chaosRSSBound), "server RSS bound")
}

func pct(a, b int) float64 {
	if b == 0 {
		return 0
	}
	return 100 * float64(a) / float64(b)
}

// parallel runs f on each server at once and reports every error.
func (r *chaosRun) parallel(ss []*chaosServer, f func(*chaosServer) error) {
	var wg sync.WaitGroup
	for _, s := range ss {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(s); err != nil {
				r.t.Error(err)
			}
		}()
	}
	wg.Wait()
}

// poll checks cond every 50 ms until it holds, for at most d.
func poll(ctx context.Context, d time.Duration, cond func() bool) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
	return nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-tm.C:
		return nil
	}
}
