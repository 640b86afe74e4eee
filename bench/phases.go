package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"runtime"
	"runtime/metrics"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ipfs/go-cid"
	ic "github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	mh "github.com/multiformats/go-multihash"
)

// Params are what both implementations are run with.
type Params struct {
	N       int
	Ops     int
	Par     int     // operations in flight at once
	Rate    float64 // if > 0: operations started per second, whatever is in flight (Par ignored)
	Churn   float64 // fraction of nodes stopped before the churn phases
	Seed    uint64
	Latency Latency
	// Transport is mocknet (default), tcp or quic.
	Transport string
	// ConnLow and ConnHigh, if ConnHigh is positive, are the connection
	// manager's watermarks on real transports (go-libp2p's default is
	// 160/192): a network too large for the process's file descriptors
	// when every node is connected to every other runs trimmed.
	ConnLow, ConnHigh int
	OpTime            time.Duration // deadline of one operation
	// Idle, if positive, is how long the network sits unused after setup
	// before heap and goroutines are measured again.
	Idle time.Duration
	// Refresh is the periodic table refresh interval given to both
	// implementations (0: their default, 10 min).
	Refresh time.Duration
	Log     *slog.Logger
	// MemProfile, if set, is the path prefix of a heap profile written
	// after each implementation's setup ("<prefix>-<impl>.pprof").
	MemProfile string
	// CPUProfile, if set, is the path prefix of a CPU profile of each
	// phase ("<prefix>-<impl>-<phase>.pprof") or of each providing run
	// (-provide).
	CPUProfile string
}

// OpStats summarises one phase: a kind of operation run Ops times.
type OpStats struct {
	Name    string  `json:"name"`
	Ops     int     `json:"ops"`
	OK      int     `json:"ok"`
	Success float64 `json:"success"`
	// Latencies of every operation, in ms, in plan order (for the charts);
	// percentiles are over all operations, failed ones included.
	LatencyMS []float64 `json:"latency_ms"`
	P50MS     float64   `json:"p50_ms"`
	P95MS     float64   `json:"p95_ms"`
	// RPCs is the number of DHT messages all nodes received during the
	// phase, per operation.
	RPCs float64 `json:"rpcs_per_op"`
	// CPUMS is the process CPU time (user + system) per operation, over
	// the phase (the collection forced before it not included).
	CPUMS float64 `json:"cpu_ms_per_op"`
	// Extra holds per-phase figures: recall, hops, dead peers returned,
	// time to the first provider...
	Extra map[string]float64 `json:"extra,omitempty"`
	// NewConns is, per operation, how many connections its origin node
	// opened while it ran (real transports only).
	NewConns []int `json:"new_conns,omitempty"`
	// FirstMS are times to the first provider (FindProviders phases).
	FirstMS []float64 `json:"first_ms,omitempty"`
	Skipped string    `json:"skipped,omitempty"`
}

// ImplResult is everything measured for one implementation.
type ImplResult struct {
	Impl         string  `json:"impl"`
	N            int     `json:"n"`
	SetupSeconds float64 `json:"setup_seconds"`
	SetupCPUSec  float64 `json:"setup_cpu_seconds"`
	// Heap and goroutines per node after setup, for the DHT (after minus
	// the same hosts and links without DHTs) and for the whole node
	// (mocknet host included).
	HeapPerNodeMiB        float64 `json:"heap_per_node_mib"`
	HeapPerNodeTotalMiB   float64 `json:"heap_per_node_total_mib"`
	GoroutinesPerNode     float64 `json:"goroutines_per_node"`
	GoroutinesTotalPerNod float64 `json:"goroutines_per_node_total"`
	// The same per-node figures (DHT share) after Params.Idle without
	// any operation, when idle streams have been closed.
	// ConnsPerNode is the open connections per node right after setup
	// (each connection counted at both ends).
	ConnsPerNode float64 `json:"conns_per_node,omitempty"`
	// PeersPerNode is the distinct peers each node is connected to.
	PeersPerNode   float64   `json:"connected_peers_per_node,omitempty"`
	HeapIdleMiB    float64   `json:"heap_per_node_idle_mib,omitempty"`
	GoroutinesIdle float64   `json:"goroutines_per_node_idle,omitempty"`
	LoadAvg        [2]string `json:"loadavg"` // before and after this implementation ran
	// UDPDrops is how many datagrams the kernel dropped for a full socket
	// receive buffer while this implementation ran over QUIC (RcvbufErrors
	// in /proc/net/snmp, machine-wide); -1 where unknown, 0 over other
	// transports. Over QUIC each one is a lost packet.
	UDPDrops int64      `json:"udp_rcvbuf_drops,omitempty"`
	Phases   []*OpStats `json:"phases"`
	Error    string     `json:"error,omitempty"`
}

func (r *ImplResult) phase(name string) *OpStats {
	for _, p := range r.Phases {
		if p.Name == name {
			return p
		}
	}
	return nil
}

// plan is the operations both implementations run: same origins, targets
// and keys, drawn from the seed.
type plan struct {
	gcpFrom  []int
	gcpKey   []string
	fpFrom   []int
	fpTarget []int
	putFrom  []int
	getFrom  []int
	valKey   []string
	value    [][]byte
	provFrom []int
	findFrom []int
	cids     []cid.Cid
	dead     []int
	// after the churn, from live nodes only
	cGcpFrom  []int
	cGcpKey   []string
	cGetFrom  []int
	cFindFrom []int
}

func makePlan(p Params) *plan {
	r := rand.New(rand.NewPCG(p.Seed, 0x0b5))
	pl := &plan{}
	other := func(x int) int {
		for {
			if y := r.IntN(p.N); y != x {
				return y
			}
		}
	}
	for i := range p.Ops {
		pl.gcpFrom = append(pl.gcpFrom, r.IntN(p.N))
		pl.gcpKey = append(pl.gcpKey, fmt.Sprintf("gcp-%d-%d", p.Seed, i))
		from := r.IntN(p.N)
		pl.fpFrom = append(pl.fpFrom, from)
		pl.fpTarget = append(pl.fpTarget, other(from))
		from = r.IntN(p.N)
		pl.putFrom = append(pl.putFrom, from)
		pl.getFrom = append(pl.getFrom, other(from))
		pl.valKey = append(pl.valKey, fmt.Sprintf("/%s/bench-%d-%d", valueNS, p.Seed, i))
		v := make([]byte, 64)
		for j := range v {
			v[j] = byte(r.Uint32())
		}
		pl.value = append(pl.value, v)
		from = r.IntN(p.N)
		pl.provFrom = append(pl.provFrom, from)
		pl.findFrom = append(pl.findFrom, other(from))
		h, _ := mh.Sum(fmt.Appendf(nil, "block-%d-%d", p.Seed, i), mh.SHA2_256, -1)
		pl.cids = append(pl.cids, cid.NewCidV1(cid.Raw, h))
	}
	stop := int(p.Churn * float64(p.N))
	pl.dead = r.Perm(p.N)[:stop]
	dead := make([]bool, p.N)
	for _, i := range pl.dead {
		dead[i] = true
	}
	live := func() int {
		for {
			if x := r.IntN(p.N); !dead[x] {
				return x
			}
		}
	}
	for i := range p.Ops {
		pl.cGcpFrom = append(pl.cGcpFrom, live())
		pl.cGcpKey = append(pl.cGcpKey, fmt.Sprintf("churn-gcp-%d-%d", p.Seed, i))
		pl.cGetFrom = append(pl.cGetFrom, live())
		pl.cFindFrom = append(pl.cFindFrom, live())
	}
	return pl
}

// cpuTime is the process's user plus system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// gcCycles is how many collection cycles the process has completed.
func gcCycles() uint64 {
	sample := []metrics.Sample{{Name: "/gc/cycles/total:gc-cycles"}}
	metrics.Read(sample)
	if sample[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return sample[0].Value.Uint64()
}

// memSnapshot is the live heap and goroutine count after two GCs.
func memSnapshot() (heap uint64, goroutines int) {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc, runtime.NumGoroutine()
}

// settle waits (at most limit) for the goroutine count to stop falling,
// so a torn-down network does not count against the next one.
func settle(limit time.Duration) {
	deadline := time.Now().Add(limit)
	last := runtime.NumGoroutine()
	for time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
		n := runtime.NumGoroutine()
		if n >= last {
			return
		}
		last = n
	}
}

// runner runs the operations of phases with at most Par in flight (or
// started at Rate per second) and never two at once on the same origin
// node.
type runner struct {
	impl  string
	p     Params
	tn    *testNet
	locks []sync.Mutex
}

// run executes op(i) for i in [0, count) and fills the common figures.
// op returns whether it succeeded; it records its own extras.
func (rn *runner) run(name string, count int, origin func(int) int, op func(ctx context.Context, i int) bool) *OpStats {
	st := &OpStats{Name: name, Ops: count, LatencyMS: make([]float64, count), Extra: map[string]float64{}}
	ok := make([]bool, count)
	if rn.tn.real != nil {
		st.NewConns = make([]int, count)
	}
	// Collect the previous phases' garbage first, outside the measured
	// window. Every node of the network shares this process's heap (about
	// 2 GiB at 300 nodes), so one collection marks all of it at once and,
	// on two cores, slows every node for seconds: whichever phase a cycle
	// lands in shows connection setups of several seconds and a p95 that
	// says nothing about the implementation. A real node collects its own
	// small heap, a little at a time.
	runtime.GC()
	msgs0, probes0, own0, cpu0 := rn.tn.c.msgs.Load(), rn.tn.c.probes.Load(), rn.tn.ownRequests(), cpuTime()
	gc0 := gcCycles()
	lookups0 := rn.tn.ownSum(Node.LookupsRun)
	conns0, setup0 := rn.tn.connSetup()
	var profile string
	if rn.p.CPUProfile != "" {
		profile = fmt.Sprintf("%s-%s-%s", rn.p.CPUProfile, rn.impl, strings.ReplaceAll(name, " ", "-"))
	}
	stopProfile := startCPUProfile(profile)
	phaseStart := time.Now()
	do := func(i int) {
		o := origin(i)
		rn.locks[o].Lock()
		ctx, cancel := context.WithTimeout(context.Background(), rn.p.OpTime)
		c0 := rn.tn.nodeConns(o)
		start := time.Now()
		ok[i] = op(ctx, i)
		st.LatencyMS[i] = ms(time.Since(start))
		if rn.tn.real != nil {
			st.NewConns[i] = int(rn.tn.nodeConns(o) - c0)
		}
		cancel()
		rn.locks[o].Unlock()
	}
	var wg sync.WaitGroup
	if rn.p.Rate > 0 {
		// Open loop: operation i starts at i/Rate seconds, whatever is
		// still running, so both implementations get the same offered
		// load and the machine's CPU per second follows each one's CPU per
		// operation. (With -par the faster implementation starts more
		// operations per second, and on two shared cores pays for it in
		// every handshake.)
		interval := time.Duration(float64(time.Second) / rn.p.Rate)
		for i := range count {
			time.Sleep(time.Until(phaseStart.Add(time.Duration(i) * interval)))
			wg.Add(1)
			go func() {
				defer wg.Done()
				do(i)
			}()
		}
	} else {
		next := make(chan int)
		for range max(rn.p.Par, 1) {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range next {
					do(i)
				}
			}()
		}
		for i := range count {
			next <- i
		}
		close(next)
	}
	wg.Wait()
	wall := time.Since(phaseStart)
	stopProfile()
	st.RPCs = float64(rn.tn.c.msgs.Load()-msgs0) / float64(count)
	st.Extra["probes"] = float64(rn.tn.c.probes.Load()-probes0) / float64(count)
	if own0 >= 0 {
		// The implementation's own count of lookup requests, all nodes.
		st.Extra["own_lookup_requests"] = float64(rn.tn.ownRequests()-own0) / float64(count)
	}
	if lookups0 >= 0 {
		st.Extra["own_lookups"] = float64(rn.tn.ownSum(Node.LookupsRun)-lookups0) / float64(count)
	}
	cpu := cpuTime() - cpu0
	// Collections that ran inside the phase: each marks the whole
	// network's heap at once (see the runtime.GC above) and can stall
	// every node for a moment.
	st.Extra["gc_cycles"] = float64(gcCycles() - gc0)
	st.CPUMS = ms(cpu) / float64(count)
	// Cores busy over the phase: the process's CPU time over its wall
	// time. Near runtime.NumCPU() the machine, not the implementation,
	// sets the pace: every node's handshakes queue on the same cores.
	if wall > 0 {
		st.Extra["cores_busy"] = float64(cpu) / float64(wall)
	}
	if rn.tn.real != nil {
		// Connection setup over the phase (see setupMeter): new outbound
		// connections per operation, their setup time summed per
		// operation, and the mean setup of one connection.
		conns1, setup1 := rn.tn.connSetup()
		// Open connections per node when the phase ended (both ends
		// counted): shows when a connection manager trimmed.
		st.Extra["conns_per_node_end"] = rn.tn.connsPerNode()
		st.Extra["new_conns"] = float64(conns1-conns0) / float64(count)
		st.Extra["conn_setup_ms"] = ms(setup1-setup0) / float64(count)
		if conns1 > conns0 {
			st.Extra["conn_setup_each_ms"] = ms(setup1-setup0) / float64(conns1-conns0)
		}
		// Latency of the operations whose origin opened no connection,
		// and of those that opened one or more.
		var none, some []float64
		for i, c := range st.NewConns {
			if c == 0 {
				none = append(none, st.LatencyMS[i])
			} else {
				some = append(some, st.LatencyMS[i])
			}
		}
		st.Extra["ops_dialing"] = float64(len(some)) / float64(count)
		if len(none) > 0 {
			st.Extra["no_dial_p50_ms"], st.Extra["no_dial_p95_ms"] = percentile(none, 0.5), percentile(none, 0.95)
		}
		if len(some) > 0 {
			st.Extra["dial_p50_ms"], st.Extra["dial_p95_ms"] = percentile(some, 0.5), percentile(some, 0.95)
		}
	}
	for _, v := range ok {
		if v {
			st.OK++
		}
	}
	st.Success = float64(st.OK) / float64(count)
	st.P50MS, st.P95MS = percentile(st.LatencyMS, 0.5), percentile(st.LatencyMS, 0.95)
	return st
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// percentile is the p-quantile of xs (nearest rank), 0 for none.
func percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	i := int(p*float64(len(s))+0.5) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// ownRequests sums the implementation's own lookup request counters over
// every node, or -1 when it keeps none.
func (tn *testNet) ownRequests() int64 {
	return tn.ownSum(Node.LookupRequests)
}

// ownSum sums one of the implementation's own counters over every node,
// or -1 when it keeps none.
func (tn *testNet) ownSum(counter func(Node) int64) int64 {
	var sum int64
	for _, d := range tn.nodes {
		v := counter(d)
		if v < 0 {
			return -1
		}
		sum += v
	}
	return sum
}

// trueClosest returns the k live peers closest to key, other than self.
func (tn *testNet) trueClosest(key string, k int, self int) []peer.ID {
	target := sha256.Sum256([]byte(key))
	type cand struct {
		d  [32]byte
		id peer.ID
	}
	var cs []cand
	for j, id := range tn.ids {
		if j == self || tn.dead[j] {
			continue
		}
		pos := sha256.Sum256([]byte(id))
		var d [32]byte
		for x := range d {
			d[x] = pos[x] ^ target[x]
		}
		cs = append(cs, cand{d, id})
	}
	slices.SortFunc(cs, func(a, b cand) int { return bytes.Compare(a.d[:], b.d[:]) })
	out := make([]peer.ID, 0, k)
	for _, c := range cs[:min(k, len(cs))] {
		out = append(out, c.id)
	}
	return out
}

func recall(got, want []peer.ID) float64 {
	if len(want) == 0 {
		return 1
	}
	hit := 0
	for _, p := range want {
		if slices.Contains(got, p) {
			hit++
		}
	}
	return float64(hit) / float64(len(want))
}

// runImpl builds the network for one implementation, measures setup and
// every phase, and tears it down.
func runImpl(impl Impl, p Params, keys []ic.PrivKey, pl *plan) (res *ImplResult) {
	res = &ImplResult{Impl: impl.Name, N: p.N}
	res.LoadAvg[0] = loadAvg()
	drops0 := udpRcvbufErrors()
	defer func() {
		res.LoadAvg[1] = loadAvg()
		if p.Transport != transportQUIC {
			return
		}
		if drops1 := udpRcvbufErrors(); drops0 >= 0 && drops1 >= 0 {
			res.UDPDrops = drops1 - drops0
		} else {
			res.UDPDrops = -1
		}
		p.Log.Info("UDP datagrams dropped for full receive buffers", "impl", impl.Name, "drops", res.UDPDrops)
	}()
	log := p.Log.With("impl", impl.Name)
	settle(10 * time.Second)
	heap0, gr0 := memSnapshot()
	var tn *testNet
	var err error
	if p.Transport == "" || p.Transport == transportMock {
		tn, err = newHosts(impl, keys, p.Latency)
	} else {
		tn, err = newRealHosts(impl, keys, p.Latency, p.Transport, p.ConnLow, p.ConnHigh)
	}
	if err != nil {
		res.Error = err.Error()
		return res
	}
	defer func() {
		tn.close()
		settle(20 * time.Second)
	}()
	heap1, gr1 := memSnapshot()
	log.Info("hosts ready", "n", p.N)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Hour)
	defer cancel()
	start, cpu0 := time.Now(), cpuTime()
	if err := tn.startDHTs(ctx, chooseBoots(p.N, p.Seed), p.Refresh); err != nil {
		res.Error = err.Error()
		return res
	}
	res.SetupSeconds = time.Since(start).Seconds()
	res.SetupCPUSec = (cpuTime() - cpu0).Seconds()
	heap2, gr2 := memSnapshot()
	if p.MemProfile != "" {
		if err := writeHeapProfile(p.MemProfile + "-" + impl.Name + ".pprof"); err != nil {
			log.Warn("heap profile", "err", err)
		}
	}
	mib := float64(1 << 20)
	n := float64(p.N)
	peers := 0
	for _, h := range tn.hosts {
		peers += len(h.Network().Peers())
	}
	res.ConnsPerNode = tn.connsPerNode()
	res.PeersPerNode = float64(peers) / n
	res.HeapPerNodeMiB = (float64(heap2) - float64(heap1)) / n / mib
	res.HeapPerNodeTotalMiB = (float64(heap2) - float64(heap0)) / n / mib
	res.GoroutinesPerNode = float64(gr2-gr1) / n
	res.GoroutinesTotalPerNod = float64(gr2-gr0) / n
	log.Info("setup done", "seconds", res.SetupSeconds, "heap_mib_per_node", res.HeapPerNodeMiB,
		"goroutines_per_node", res.GoroutinesPerNode)

	if p.Idle > 0 {
		time.Sleep(p.Idle)
		heap3, gr3 := memSnapshot()
		res.HeapIdleMiB = (float64(heap3) - float64(heap1)) / n / mib
		res.GoroutinesIdle = float64(gr3-gr1) / n
		log.Info("after idle", "heap_mib_per_node", res.HeapIdleMiB, "goroutines_per_node", res.GoroutinesIdle)
	}
	rn := &runner{impl: impl.Name, p: p, tn: tn, locks: make([]sync.Mutex, p.N)}
	dropsAt := udpRcvbufErrors()
	add := func(sts ...*OpStats) {
		if p.Transport == transportQUIC {
			d := udpRcvbufErrors()
			log.Info("UDP datagrams dropped for full receive buffers", "phases", len(sts), "first", sts[0].Name, "drops", d-dropsAt)
			dropsAt = d
		}
		for _, st := range sts {
			res.Phases = append(res.Phases, st)
			if st.Skipped == "" {
				log.Info("phase done", "phase", st.Name, "success", st.Success, "p50_ms", int(st.P50MS),
					"p95_ms", int(st.P95MS), "rpcs", st.RPCs, "extra", st.Extra)
			}
		}
	}
	add(phaseGCP(rn, "GetClosestPeers", pl.gcpFrom, pl.gcpKey))
	add(phaseFindPeer(rn, pl))
	if impl.Values() {
		add(phasePut(rn, pl), phaseGet(rn, "GetValue", pl.getFrom, pl))
	} else {
		add(skipped("PutValue"), skipped("GetValue"))
	}
	if impl.Providers() {
		add(phaseProvide(rn, pl), phaseFind(rn, "FindProviders", pl.findFrom, pl))
	} else {
		add(skipped("Provide"), skipped("FindProviders"))
	}
	if p.Churn > 0 {
		for _, i := range pl.dead {
			tn.stop(i)
		}
		log.Info("churn", "stopped", len(pl.dead))
		add(phaseGCP(rn, "GetClosestPeers after churn", pl.cGcpFrom, pl.cGcpKey))
		if impl.Values() {
			add(phaseGet(rn, "GetValue after churn", pl.cGetFrom, pl))
		}
		if impl.Providers() {
			add(phaseFind(rn, "FindProviders after churn", pl.cFindFrom, pl))
		}
	}
	return res
}

// connsPerNode is the mean number of open connections per host.
func (tn *testNet) connsPerNode() float64 {
	conns := 0
	for _, h := range tn.hosts {
		conns += len(h.Network().Conns())
	}
	return float64(conns) / float64(len(tn.hosts))
}

func writeHeapProfile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := pprof.WriteHeapProfile(f); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}

func skipped(name string) *OpStats {
	return &OpStats{Name: name, Skipped: "not implemented"}
}

func phaseGCP(rn *runner, name string, from []int, keys []string) *OpStats {
	tn := rn.tn
	rec := make([]float64, len(keys))
	hops := make([]float64, len(keys))
	dead := make([]int, len(keys))
	st := rn.run(name, len(keys), func(i int) int { return from[i] }, func(ctx context.Context, i int) bool {
		got, h, err := tn.nodes[from[i]].GetClosestPeers(ctx, keys[i])
		hops[i] = h
		for _, p := range got {
			if j, ok := tn.index[p]; !ok || tn.dead[j] {
				dead[i]++
			}
		}
		rec[i] = recall(got, tn.trueClosest(keys[i], 20, from[i]))
		return err == nil && len(got) > 0
	})
	var sr, sh float64
	withDead, deadTotal := 0, 0
	for i := range keys {
		sr += rec[i]
		sh += hops[i]
		deadTotal += dead[i]
		if dead[i] > 0 {
			withDead++
		}
	}
	c := float64(len(keys))
	st.Extra["recall"] = sr / c
	st.Extra["recall_min"] = slices.Min(rec)
	st.Extra["hops"] = sh / c
	st.Extra["dead_returned"] = float64(deadTotal)
	st.Extra["lookups_with_dead"] = float64(withDead) / c
	return st
}

func phaseFindPeer(rn *runner, pl *plan) *OpStats {
	tn := rn.tn
	local := make([]bool, len(pl.fpFrom))
	st := rn.run("FindPeer", len(pl.fpFrom), func(i int) int { return pl.fpFrom[i] }, func(ctx context.Context, i int) bool {
		target := tn.ids[pl.fpTarget[i]]
		local[i] = tn.hosts[pl.fpFrom[i]].Network().Connectedness(target) == network.Connected
		ai, err := tn.nodes[pl.fpFrom[i]].FindPeer(ctx, target)
		return err == nil && ai.ID == target && len(ai.Addrs) > 0
	})
	nl := 0
	for _, l := range local {
		if l {
			nl++
		}
	}
	st.Extra["already_connected"] = float64(nl) / float64(len(local))
	return st
}

func phasePut(rn *runner, pl *plan) *OpStats {
	tn := rn.tn
	return rn.run("PutValue", len(pl.valKey), func(i int) int { return pl.putFrom[i] }, func(ctx context.Context, i int) bool {
		return tn.nodes[pl.putFrom[i]].PutValue(ctx, pl.valKey[i], pl.value[i]) == nil
	})
}

func phaseGet(rn *runner, name string, from []int, pl *plan) *OpStats {
	tn := rn.tn
	return rn.run(name, len(pl.valKey), func(i int) int { return from[i] }, func(ctx context.Context, i int) bool {
		v, err := tn.nodes[from[i]].GetValue(ctx, pl.valKey[i])
		return err == nil && bytes.Equal(v, pl.value[i])
	})
}

func phaseProvide(rn *runner, pl *plan) *OpStats {
	tn := rn.tn
	return rn.run("Provide", len(pl.cids), func(i int) int { return pl.provFrom[i] }, func(ctx context.Context, i int) bool {
		return tn.nodes[pl.provFrom[i]].Provide(ctx, pl.cids[i]) == nil
	})
}

// phaseFind runs FindProvidersAsync with go's FindProviders count (k = 20)
// and records when the expected provider first arrived; the operation's
// latency is the whole search.
func phaseFind(rn *runner, name string, from []int, pl *plan) *OpStats {
	tn := rn.tn
	first := make([]float64, len(pl.cids))
	st := rn.run(name, len(pl.cids), func(i int) int { return from[i] }, func(ctx context.Context, i int) bool {
		want := tn.ids[pl.provFrom[i]]
		start := time.Now()
		found := false
		first[i] = ms(rn.p.OpTime)
		for ai := range tn.nodes[from[i]].FindProvidersAsync(ctx, pl.cids[i], 20) {
			if ai.ID == want && !found {
				found = true
				first[i] = ms(time.Since(start))
			}
		}
		return found
	})
	st.FirstMS = first
	st.Extra["first_p50_ms"] = percentile(first, 0.5)
	st.Extra["first_p95_ms"] = percentile(first, 0.95)
	return st
}
