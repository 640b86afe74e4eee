package main

import (
	"context"
	"encoding/base32"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ipfs/go-cid"
	ds "github.com/ipfs/go-datastore"
	dsq "github.com/ipfs/go-datastore/query"
	dssync "github.com/ipfs/go-datastore/sync"
	leveldb "github.com/ipfs/go-ds-leveldb"
	ic "github.com/libp2p/go-libp2p/core/crypto"
	mh "github.com/multiformats/go-multihash"
)

// Providing at scale (issue 16): one node is handed CIDs and announces
// them all; kad with ProvideManyReport and then its reprovider's pass,
// go-libp2p-kad-dht with a SweepingProvider (ProvideOnce), on the same
// mocknet with send buffers. Every node gets an in-memory datastore
// passed as a user would pass it; the providing node gets, per run, an
// in-memory one or go-ds-leveldb.

// ProvideParams are the settings of the providing phase.
type ProvideParams struct {
	CIDs      int
	Sample    int      // CIDs whose findability is checked from other nodes
	Stores    []string // "mem", "leveldb": one run each, each on its own provider node
	Reprovide bool     // also measure kad's reprovider pass
}

// ProvideRun is what one providing run measured.
type ProvideRun struct {
	Impl      string  `json:"impl"`
	Store     string  `json:"store"`
	Path      string  `json:"path"` // ProvideMany, reprovider pass, SweepingProvider
	Keys      int     `json:"keys"`
	WallSec   float64 `json:"wall_seconds"`  // until every record was handed over
	ReadySec  float64 `json:"ready_seconds"` // go: waiting for the start-up lookups before keys are accepted
	Requests  int64   `json:"requests"`      // DHT messages received network-wide
	Lookups   int64   `json:"lookups"`       // lookups the provider ran
	Findable  float64 `json:"findable"`      // share of the sample found from another node
	Placement float64 `json:"placement"`     // mean share of each CID's true 20 closest holding its record
	PlaceMin  float64 `json:"placement_min"` // worst CID
	HeapMiB   float64 `json:"heap_peak_mib"` // peak heap in use during the run, above the heap before it
	// HeapRetainedMiB is the heap in use after the run and a collection,
	// above the heap before it.
	HeapRetainedMiB float64 `json:"heap_retained_mib,omitempty"`
	Bytes           float64 `json:"bytes_per_rec"` // datastore key+value bytes per provider record, network-wide
	CPUSec          float64 `json:"cpu_seconds"`   // process CPU time during the run
	Error           string  `json:"error,omitempty"`
}

// ProvideResults is the providing phase's report.
type ProvideResults struct {
	N       int           `json:"n"`
	Latency string        `json:"latency"`
	Seed    uint64        `json:"seed"`
	Params  ProvideParams `json:"params"`
	Setup   map[string]float64
	Runs    []*ProvideRun `json:"runs"`
	Go      string        `json:"go"`
	CPUs    int           `json:"cpus"`
	LoadAvg []string      `json:"loadavg"`
}

// provideCIDs draws count random CIDs for one run.
func provideCIDs(count int, seed uint64, run int) []cid.Cid {
	r := rand.New(rand.NewPCG(seed, 0x9c1d+uint64(run)))
	out := make([]cid.Cid, count)
	buf := make([]byte, 32)
	for i := range out {
		for j := range buf {
			buf[j] = byte(r.Uint32())
		}
		h, _ := mh.Sum(buf, mh.SHA2_256, -1)
		out[i] = cid.NewCidV1(cid.Raw, h)
	}
	return out
}

// runProvide builds the network of one implementation and runs the
// providing phase for each store kind.
func runProvide(impl Impl, p Params, pp ProvideParams, keys []ic.PrivKey, dir string) (runs []*ProvideRun, setup float64, err error) {
	log := p.Log.With("impl", impl.Name, "phase", "provide")
	settle(10 * time.Second)
	tn, err := newHosts(impl, keys, p.Latency)
	if err != nil {
		return nil, 0, err
	}
	defer func() {
		tn.close()
		settle(20 * time.Second)
	}()
	tn.sendBuf = true
	r := rand.New(rand.NewPCG(p.Seed, 0x9a0))
	provIdx := map[int]string{}
	order := r.Perm(p.N)
	stores := make([]ds.Batching, p.N)
	for i, kind := range pp.Stores {
		provIdx[order[i]] = kind
	}
	for i := range stores {
		kind := provIdx[i]
		if kind == "leveldb" {
			path := filepath.Join(dir, fmt.Sprintf("%s-node%d", impl.Name, i))
			_ = os.RemoveAll(path)
			lds, err := leveldb.NewDatastore(path, nil)
			if err != nil {
				return nil, 0, err
			}
			defer func() { _ = lds.Close(); _ = os.RemoveAll(path) }()
			stores[i] = lds
		} else {
			stores[i] = dssync.MutexWrap(ds.NewMapDatastore())
		}
	}
	tn.nodeCfg = func(i int, nc *nodeConfig) {
		nc.Datastore = stores[i]
		if _, ok := provIdx[i]; ok {
			nc.Provider = true
			nc.ReprovideEvery = time.Minute
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Hour)
	defer cancel()
	start := time.Now()
	if err := tn.startDHTs(ctx, chooseBoots(p.N, p.Seed), p.Refresh); err != nil {
		return nil, 0, err
	}
	setup = time.Since(start).Seconds()
	log.Info("setup done", "seconds", setup)
	for run, kind := range pp.Stores {
		pi := order[run]
		cids := provideCIDs(pp.CIDs, p.Seed, run)
		paths := []string{"SweepingProvider"}
		if impl.Name == kadImpl.Name {
			paths = []string{"ProvideMany"}
			if pp.Reprovide {
				paths = append(paths, "reprovider pass")
			}
		}
		for _, path := range paths {
			res := &ProvideRun{Impl: impl.Name, Store: kind, Path: path, Keys: len(cids)}
			stopProfile := startCPUProfile(profileName(p.CPUProfile, impl.Name, kind, path))
			err := provideOnce(ctx, tn, pi, cids, path, profileName(p.MemProfile, impl.Name, kind, path), res)
			stopProfile()
			if err != nil {
				res.Error = err.Error()
				log.Error("provide run failed", "store", kind, "path", path, "err", err)
			} else {
				measurePlacement(ctx, tn, stores, pi, cids, pp.Sample, p.Seed, res)
			}
			log.Info("provide run", "store", kind, "path", path, "wall_s", res.WallSec, "requests", res.Requests,
				"lookups", res.Lookups, "findable", res.Findable, "placement", res.Placement, "bytes_per_rec", res.Bytes, "heap_mib", res.HeapMiB)
			runs = append(runs, res)
		}
	}
	return runs, setup, nil
}

// heapWatch samples the heap in use until stopped. stop reports the peak
// above the heap before the run, garbage included (so it depends on how
// fast the run allocates, through the collector's pacing), and what is
// left above it after a collection once the run is over: the records the
// network stores and whatever the implementation keeps.
//
// With profile set, it writes heap profiles, both after a collection, to
// profile-start.pprof and profile-end.pprof: `go tool pprof -base` of the
// two shows what the run left on the heap.
func heapWatch(profile string) (stop func() (peak, retained float64)) {
	var ms runtime.MemStats
	runtime.GC()
	writeProfile := func(which string) {
		if profile == "" {
			return
		}
		if err := writeHeapProfile(profile + "-" + which + ".pprof"); err != nil {
			fmt.Fprintf(os.Stderr, "bench: heap profile: %v\n", err)
		}
	}
	writeProfile("start")
	runtime.ReadMemStats(&ms)
	base := ms.HeapInuse
	var peak atomic.Uint64
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				var m runtime.MemStats
				runtime.ReadMemStats(&m)
				if m.HeapInuse > peak.Load() {
					peak.Store(m.HeapInuse)
				}
			}
		}
	}()
	above := func(v uint64) float64 {
		if v < base {
			return 0
		}
		return float64(v-base) / (1 << 20)
	}
	return func() (float64, float64) {
		close(done)
		wg.Wait()
		var m runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&m)
		writeProfile("end")
		return above(peak.Load()), above(m.HeapInuse)
	}
}

// quiet waits until no DHT message has been received for 500 ms (25
// link latencies) and returns when the last one arrived: writes go into
// send buffers, so a sender is done before its records are delivered.
func quiet(tn *testNet) time.Time {
	last, at := tn.c.msgs.Load(), time.Now()
	for time.Since(at) < 500*time.Millisecond {
		time.Sleep(10 * time.Millisecond)
		if n := tn.c.msgs.Load(); n != last {
			last, at = n, time.Now()
		}
	}
	return at
}

// provideOnce hands cids to node pi by path and waits until every record
// was handed over.
// With heapProf set, heap profiles before and after the measured part
// go to heapProf-start.pprof and heapProf-end.pprof.
func provideOnce(ctx context.Context, tn *testNet, pi int, cids []cid.Cid, path, heapProf string, res *ProvideRun) error {
	cpu0 := cpuTime()
	defer func() { res.CPUSec = (cpuTime() - cpu0).Seconds() }()
	switch n := tn.nodes[pi].(type) {
	case *kadNode:
		if path == "ProvideMany" {
			stop := heapWatch(heapProf)
			msgs0, start := tn.c.msgs.Load(), time.Now()
			rep, err := n.d.ProvideManyReport(ctx, cids)
			res.WallSec = quiet(tn).Sub(start).Seconds()
			res.Requests = tn.c.msgs.Load() - msgs0
			res.HeapMiB, res.HeapRetainedMiB = stop()
			res.Lookups = int64(rep.Lookups)
			if err == nil && rep.KeysMissed > 0 {
				err = fmt.Errorf("%d keys reached no peer", rep.KeysMissed)
			}
			return err
		}
		// The reprovider's pass: StartProviding puts the keys in its set
		// (and announces them, not measured here), then the scheduled pass
		// over the one region is measured from the progress it reports.
		for len(n.passes) > 0 {
			<-n.passes
		}
		if err := n.d.StartProviding(ctx, cids...); err != nil {
			return err
		}
		stop := heapWatch(heapProf)
		msgs0 := tn.c.msgs.Load()
		cpu0 = cpuTime()
		for {
			select {
			case <-ctx.Done():
				stop()
				return ctx.Err()
			case st := <-n.passes:
				if st.Keys < len(cids) {
					continue
				}
				// The pass ended st.Took after it started; its last records
				// arrive a little later.
				passEnd := time.Now()
				res.WallSec = st.Took.Seconds() + max(0, quiet(tn).Sub(passEnd).Seconds())
				res.Requests = tn.c.msgs.Load() - msgs0
				res.HeapMiB, res.HeapRetainedMiB = stop()
				res.Lookups = int64(st.Report.Lookups)
				_ = n.d.StopProviding(ctx, cids...)
				return st.Err
			}
		}
	case *goNode:
		// The SweepingProvider drops keys handed over before its start-up
		// lookups (it is "offline" until then): wait for them.
		ready := time.Now()
		for {
			st, err := n.sweep.Stats(ctx)
			if err != nil {
				return err
			}
			if st.Connectivity.Status == "online" && st.Schedule.AvgPrefixLength >= 0 {
				break
			}
			if time.Since(ready) > 5*time.Minute {
				return fmt.Errorf("SweepingProvider not ready after %v: %+v", time.Since(ready), st.Connectivity)
			}
			time.Sleep(50 * time.Millisecond)
		}
		res.ReadySec = time.Since(ready).Seconds()
		st0, err := n.sweep.Stats(ctx)
		if err != nil {
			return err
		}
		mhs := make([]mh.Multihash, len(cids))
		for i, c := range cids {
			mhs[i] = c.Hash()
		}
		stop := heapWatch(heapProf)
		msgs0, lk0, start := tn.c.msgs.Load(), n.lookups.Load(), time.Now()
		if err := n.sweep.ProvideOnce(mhs...); err != nil {
			stop()
			return err
		}
		for {
			st, err := n.sweep.Stats(ctx)
			if err != nil {
				stop()
				return err
			}
			done := st.Operations.Past.KeysProvided + st.Operations.Past.KeysFailed - st0.Operations.Past.KeysProvided - st0.Operations.Past.KeysFailed
			on := st.Operations.Ongoing
			if done >= int64(len(cids)) && st.Queues.PendingKeyProvides == 0 && on.KeyProvides == 0 && on.RegionProvides == 0 {
				res.WallSec = quiet(tn).Sub(start).Seconds()
				res.Requests = tn.c.msgs.Load() - msgs0
				res.HeapMiB, res.HeapRetainedMiB = stop()
				res.Lookups = n.lookups.Load() - lk0
				if f := st.Operations.Past.KeysFailed - st0.Operations.Past.KeysFailed; f > 0 {
					return fmt.Errorf("%d keys failed", f)
				}
				return nil
			}
			if ctx.Err() != nil {
				stop()
				return ctx.Err()
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return fmt.Errorf("%T cannot provide at scale", tn.nodes[pi])
}

// measurePlacement checks findability of a sample from other nodes, the
// share of each CID's true 20 closest that store its record, and the
// bytes stored per record, by reading every node's datastore.
func measurePlacement(ctx context.Context, tn *testNet, stores []ds.Batching, pi int, cids []cid.Cid, sample int, seed uint64, res *ProvideRun) {
	want := tn.ids[pi]
	// Which keys each node stores, and the bytes of provider entries.
	held := make([]map[string]bool, len(stores))
	var bytes, entries int64
	for i, st := range stores {
		held[i] = map[string]bool{}
		q, err := st.Query(ctx, dsq.Query{Prefix: "/providers/"})
		if err != nil {
			continue
		}
		for e := range q.Next() {
			if e.Error != nil {
				break
			}
			bytes += int64(len(e.Key) + len(e.Value))
			entries++
			seg, _, _ := strings.Cut(strings.TrimPrefix(e.Key, "/providers/"), "/")
			held[i][seg] = true
		}
		_ = q.Close()
	}
	// Every CID has one provider in these runs, so an entry (kad: one per
	// key, go: one per key and provider) is one record.
	if entries > 0 {
		res.Bytes = float64(bytes) / float64(entries)
	}
	var sum float64
	res.PlaceMin = 1
	for _, c := range cids {
		k := c.Hash()
		enc := b32enc(k)
		closest := tn.trueClosest(string(k), 20, pi)
		hit := 0
		for _, id := range closest {
			j := tn.index[id]
			if g, ok := tn.nodes[j].(*goNode); ok {
				// go-libp2p-kad-dht buffers up to 256 writes before they
				// reach the datastore: ask its store.
				if ps, err := g.d.ProviderStore().GetProviders(ctx, k); err == nil && len(ps) > 0 {
					hit++
				}
				continue
			}
			if held[j][enc] {
				hit++
			}
		}
		f := float64(hit) / float64(len(closest))
		sum += f
		res.PlaceMin = min(res.PlaceMin, f)
	}
	res.Placement = sum / float64(len(cids))

	r := rand.New(rand.NewPCG(seed, 0xf1d))
	sample = min(sample, len(cids))
	var found atomic.Int64
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	for _, ci := range r.Perm(len(cids))[:sample] {
		from := r.IntN(len(tn.nodes) - 1)
		if from >= pi {
			from++
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			fctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			for ai := range tn.nodes[from].FindProvidersAsync(fctx, cids[ci], 1) {
				if ai.ID == want {
					found.Add(1)
					cancel()
				}
			}
		}()
	}
	wg.Wait()
	res.Findable = float64(found.Load()) / float64(sample)
}

// b32enc is how both implementations name a key in their datastores.
func b32enc(k []byte) string {
	return base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(k)
}

// provideCompare runs the providing phase for each implementation and
// writes results/<tag>.{md,json}.
func (o *options) provideCompare() error {
	keys, err := identities(o.p.N, o.p.Seed)
	if err != nil {
		return err
	}
	rep := &ProvideResults{N: o.p.N, Latency: o.p.Latency.String(), Seed: o.p.Seed, Params: o.pp,
		Setup: map[string]float64{}, Go: runtime.Version(), CPUs: runtime.NumCPU(), LoadAvg: []string{loadAvg()}}
	dir, err := os.MkdirTemp("", "kad-bench-leveldb")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	base := filepath.Join(o.out, fmt.Sprintf("provide-n%d-c%d-lat%s-seed%d", o.p.N, o.pp.CIDs, o.latTag, o.p.Seed))
	if o.tag != "" && o.tagSet {
		base = filepath.Join(o.out, o.tag)
	}
	var failed []string
	for _, impl := range o.impls {
		runs, setup, err := runProvide(impl, o.p, o.pp, keys, dir)
		if err != nil {
			failed = append(failed, fmt.Sprintf("%s: %v", impl.Name, err))
			continue
		}
		rep.Setup[impl.Name] = setup
		rep.Runs = append(rep.Runs, runs...)
		for _, r := range runs {
			if r.Error != "" {
				failed = append(failed, fmt.Sprintf("%s %s %s: %s", r.Impl, r.Store, r.Path, r.Error))
			}
		}
	}
	rep.LoadAvg = append(rep.LoadAvg, loadAvg())
	o.provideResults = rep
	md := rep.markdown()
	if err := os.WriteFile(base+".md", []byte(md), 0o644); err != nil {
		return err
	}
	if err := writeJSON(base+".json", rep); err != nil {
		return err
	}
	o.written = append(o.written, base+".md", base+".json")
	fmt.Print(md)
	if len(failed) > 0 {
		return fmt.Errorf("providing: %s", strings.Join(failed, "; "))
	}
	return nil
}

// markdown is the table: one column per implementation, store and path,
// and kad / go ratios of ProvideMany against the SweepingProvider on the
// same store.
func (r *ProvideResults) markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "| metric |")
	for _, x := range r.Runs {
		fmt.Fprintf(&b, " %s %s, %s |", x.Impl, x.Path, x.Store)
	}
	var pairs [][2]*ProvideRun
	for _, k := range r.Runs {
		if k.Impl != kadImpl.Name || k.Path != "ProvideMany" {
			continue
		}
		for _, g := range r.Runs {
			if g.Impl == goImpl.Name && g.Store == k.Store {
				pairs = append(pairs, [2]*ProvideRun{k, g})
				fmt.Fprintf(&b, " kad / go, %s |", k.Store)
			}
		}
	}
	b.WriteString("\n|---|")
	for range len(r.Runs) + len(pairs) {
		b.WriteString("---:|")
	}
	b.WriteString("\n")
	row := func(name, f string, get func(*ProvideRun) float64) {
		fmt.Fprintf(&b, "| %s |", name)
		for _, x := range r.Runs {
			fmt.Fprintf(&b, " "+f+" |", get(x))
		}
		for _, p := range pairs {
			if g := get(p[1]); g != 0 {
				fmt.Fprintf(&b, " %.2fx |", get(p[0])/g)
			} else {
				b.WriteString(" – |")
			}
		}
		b.WriteString("\n")
	}
	row("wall time until every record is handed over, s", "%.2f", func(x *ProvideRun) float64 { return x.WallSec })
	row("… go: waiting for the start-up lookups first, s", "%.2f", func(x *ProvideRun) float64 { return x.ReadySec })
	row("requests received network-wide", "%.0f", func(x *ProvideRun) float64 { return float64(x.Requests) })
	row("lookups run", "%.0f", func(x *ProvideRun) float64 { return float64(x.Lookups) })
	row(fmt.Sprintf("findable from another node (sample of %d)", r.Params.Sample), "%.3f", func(x *ProvideRun) float64 { return x.Findable })
	row("placement: share of true 20 closest holding the record", "%.3f", func(x *ProvideRun) float64 { return x.Placement })
	row("placement, worst CID", "%.2f", func(x *ProvideRun) float64 { return x.PlaceMin })
	row("peak heap above start, MiB", "%.0f", func(x *ProvideRun) float64 { return x.HeapMiB })
	row("heap kept after the run and a collection, above start, MiB", "%.0f", func(x *ProvideRun) float64 { return x.HeapRetainedMiB })
	row("datastore bytes per provider record", "%.0f", func(x *ProvideRun) float64 { return x.Bytes })
	row("CPU, s", "%.1f", func(x *ProvideRun) float64 { return x.CPUSec })
	fmt.Fprintf(&b, "\n(N = %d, latency %s, %d CIDs handed to one node, send buffers on, seed %d; setup", r.N, r.Latency, r.Params.CIDs, r.Seed)
	for _, impl := range []string{kadImpl.Name, goImpl.Name} {
		if s, ok := r.Setup[impl]; ok {
			fmt.Fprintf(&b, " %s %.0f s", impl, s)
		}
	}
	fmt.Fprintf(&b, "; %s, %d CPUs; load average %s)\n", r.Go, r.CPUs, strings.Join(r.LoadAvg, " -> "))
	for _, x := range r.Runs {
		if x.Error != "" {
			fmt.Fprintf(&b, "\n%s %s %s failed: %s\n", x.Impl, x.Path, x.Store, x.Error)
		}
	}
	return b.String()
}

// profileName is <prefix>-<impl>-<store>-<path>, or "" with no prefix.
func profileName(prefix, impl, store, path string) string {
	if prefix == "" {
		return ""
	}
	return fmt.Sprintf("%s-%s-%s-%s", prefix, impl, store, strings.ReplaceAll(path, " ", "-"))
}

// startCPUProfile profiles the CPU until the returned func is called, into
// <name>.pprof; with no name it does nothing.
func startCPUProfile(name string) (stop func()) {
	if name == "" {
		return func() {}
	}
	f, err := os.Create(name + ".pprof")
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: cpu profile: %v\n", err)
		return func() {}
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		fmt.Fprintf(os.Stderr, "bench: cpu profile: %v\n", err)
		_ = f.Close()
		return func() {}
	}
	return func() {
		pprof.StopCPUProfile()
		_ = f.Close()
	}
}
