// Command bench measures kad against go-libp2p-kad-dht v0.42.2 on the same
// simulated networks in one process. kad's simulator (real kad nodes over
// an in-memory network, in virtual time) runs from a test instead, since
// virtual time needs testing/synctest: see sim_test.go and README.md.
//
//	go run . -impl kad,go-kad-dht -n 300 -latency 20ms -ops 100 -seed 1
//	go run . -impl kad,go-kad-dht -n 300 -latency random -ops 100 -seed 1
//	KAD_SIM=10000 go test -run TestSimulate -timeout 0 -v
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// options are the command line.
type options struct {
	impls   []Impl
	p       Params
	out     string
	tag     string
	quiet   bool
	replot  string
	merge   bool
	written []string // files written, for the smoke test
	// providing at scale (-provide)
	pp             ProvideParams
	latTag         string
	tagSet         bool
	provideResults *ProvideResults
}

func parse(args []string) (*options, error) {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	impl := fs.String("impl", "kad,go-kad-dht", "implementations to run, comma-separated: kad, go-kad-dht; empty for none")
	n := fs.Int("n", 100, "nodes in the mocknet")
	conns := fs.String("conns", "", "with -transport tcp or quic: connection manager watermarks LOW:HIGH (default go-libp2p's 160:192); for networks whose full mesh would exceed the file descriptor limit")
	transport := fs.String("transport", transportMock, "network: mocknet (simulated, no handshakes), tcp (go-libp2p hosts on 127.0.0.1, TCP + Noise + Yamux) or quic (QUIC + TLS); links carry -latency on every transport")
	lat := fs.String("latency", "20ms", `one-way latency of every link, or "random" for 5-100 ms per link from the seed`)
	ops := fs.Int("ops", 100, "operations per phase")
	par := fs.Int("par", 4, "operations in flight at once (never two on one node)")
	rate := fs.Float64("rate", 0, "if > 0, start operations at this many per second whatever is in flight (open loop; -par is then ignored): both implementations get the same offered load, where with -par the faster one starts more operations per second")
	churn := fs.Float64("churn", 0.3, "fraction of nodes stopped abruptly before the churn phases; 0 to skip")
	seed := fs.Uint64("seed", 1, "seed of identities, latencies, joins and operations")
	idle := fs.Duration("idle", 0, "also measure heap and goroutines after the network sat unused this long (e.g. 65s, past kad's idle stream timeouts)")
	refresh := fs.Duration("refresh", time.Hour, "periodic routing table refresh interval for both implementations (0: their default, 10 min); setup refreshes explicitly, and a longer period keeps background upkeep out of the measured phases")
	opTime := fs.Duration("op-timeout", time.Minute, "deadline of one operation")
	out := fs.String("out", "results", "directory for the .md, .json, .svg and .png files")
	tag := fs.String("tag", "", "base name of the output files (default from the parameters)")
	quiet := fs.Bool("q", false, "log only warnings")
	merge := fs.Bool("merge", false, "keep the other implementations' results found in an existing <tag>.json of the same parameters (run each implementation in its own process)")
	replot := fs.String("replot", "", "rewrite the .md and charts of a saved .json report instead of running")
	memProfile := fs.String("memprofile", "", "write a heap profile after each setup to <prefix>-<impl>.pprof; with -provide, one before and one after each providing run (<prefix>-<impl>-<store>-<path>-start.pprof and -end.pprof)")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of each phase to <prefix>-<impl>-<phase>.pprof; with -provide, of each providing run to <prefix>-<impl>-<store>-<path>.pprof")
	provide := fs.Int("provide", 0, "run only the providing-at-scale phase: this many random CIDs handed to one node (e.g. 10000)")
	provStores := fs.String("provide-stores", "mem,leveldb", "datastores of the providing node, one run each: mem, leveldb")
	provSample := fs.Int("provide-sample", 200, "CIDs whose findability from other nodes is checked")
	provRepro := fs.Bool("provide-reprovide", true, "also measure kad's reprovider pass over the same keys (waits for its 1-minute schedule)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	o := &options{tagSet: *tag != "", latTag: *lat, out: *out, tag: *tag, quiet: *quiet, replot: *replot, merge: *merge}
	for _, name := range strings.Split(*impl, ",") {
		switch strings.TrimSpace(name) {
		case "":
		case kadImpl.Name:
			o.impls = append(o.impls, kadImpl)
		case goImpl.Name, "go", "go-libp2p-kad-dht":
			o.impls = append(o.impls, goImpl)
		default:
			return nil, fmt.Errorf("unknown implementation %q", name)
		}
	}
	l := Latency{Seed: *seed}
	if *lat == "random" {
		l.Min, l.Max = 5*time.Millisecond, 100*time.Millisecond
	} else {
		d, err := time.ParseDuration(*lat)
		if err != nil || d < 0 {
			return nil, fmt.Errorf("bad -latency %q", *lat)
		}
		l.Min, l.Max = d, d
	}
	switch *transport {
	case transportMock, transportTCP, transportQUIC:
	default:
		return nil, fmt.Errorf("bad -transport %q", *transport)
	}
	var connLow, connHigh int
	if *conns != "" {
		if _, err := fmt.Sscanf(*conns, "%d:%d", &connLow, &connHigh); err != nil || connLow < 1 || connHigh < connLow {
			return nil, fmt.Errorf("bad -conns %q: want LOW:HIGH with 1 <= LOW <= HIGH", *conns)
		}
	}
	if *n < 2 || *ops < 1 || *churn < 0 || *churn >= 1 {
		return nil, fmt.Errorf("need -n >= 2, -ops >= 1, 0 <= -churn < 1")
	}
	if *provide > 0 {
		o.pp = ProvideParams{CIDs: *provide, Sample: *provSample, Reprovide: *provRepro}
		for _, st := range strings.Split(*provStores, ",") {
			switch st = strings.TrimSpace(st); st {
			case "mem", "leveldb":
				o.pp.Stores = append(o.pp.Stores, st)
			case "":
			default:
				return nil, fmt.Errorf("bad -provide-stores %q", st)
			}
		}
		if len(o.pp.Stores) == 0 || *provSample < 1 {
			return nil, fmt.Errorf("-provide needs a store and -provide-sample >= 1")
		}
	}
	level := slog.LevelInfo
	if *quiet {
		level = slog.LevelWarn
	}
	o.p = Params{Transport: *transport, ConnLow: connLow, ConnHigh: connHigh, N: *n, Ops: *ops, Par: *par, Rate: *rate, Churn: *churn, Seed: *seed, Latency: l, OpTime: *opTime, MemProfile: *memProfile, CPUProfile: *cpuProfile, Refresh: *refresh, Idle: *idle,
		Log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))}
	if o.tag == "" {
		ln := "lat" + *lat
		o.tag = fmt.Sprintf("n%d-%s-seed%d", *n, ln, *seed)
		if *transport != transportMock {
			o.tag = *transport + "-" + o.tag
		}
	}
	return o, nil
}

func run(args []string) error {
	o, err := parse(args)
	if err != nil {
		return err
	}
	return o.run()
}

func (o *options) run() error {
	if o.replot != "" {
		return replot(o.replot)
	}
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	if o.pp.CIDs > 0 {
		return o.provideCompare()
	}
	if len(o.impls) > 0 {
		if err := o.compare(); err != nil {
			return err
		}
	}
	return nil
}

// mergeFrom loads the results of a previous run with the same parameters.
func (r *Report) mergeFrom(path string) error {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var old Report
	if err := json.Unmarshal(data, &old); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if old.Params != r.Params {
		return fmt.Errorf("-merge: %s was run with other parameters (%+v)", path, old.Params)
	}
	r.Results = old.Results
	r.LoadAvg[0] = old.LoadAvg[0]
	return nil
}

// put adds or replaces an implementation's results, keeping kad first.
func (r *Report) put(res *ImplResult) {
	for i, x := range r.Results {
		if x.Impl == res.Impl {
			r.Results[i] = res
			return
		}
	}
	r.Results = append(r.Results, res)
	slices.SortStableFunc(r.Results, func(a, b *ImplResult) int {
		return strings.Compare(orderOf(a.Impl), orderOf(b.Impl))
	})
}

func orderOf(impl string) string {
	if impl == kadImpl.Name {
		return "0"
	}
	return "1" + impl
}

// write saves the table, the JSON and the charts under base.
func (r *Report) write(base string) (string, error) {
	md := r.markdown()
	if err := os.WriteFile(base+".md", []byte(md), 0o644); err != nil {
		return "", err
	}
	if err := writeJSON(base+".json", r); err != nil {
		return "", err
	}
	return md, r.charts(base + "-latency")
}

// replot rewrites the table and charts of a saved report.
func replot(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	rep := new(Report)
	if err := json.Unmarshal(data, rep); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	md, err := rep.write(strings.TrimSuffix(path, ".json"))
	fmt.Print(md)
	return err
}

// compare runs each implementation on the same network, one after the
// other, and writes the table, the JSON and the charts.
func (o *options) compare() error {
	keys, err := identities(o.p.N, o.p.Seed)
	if err != nil {
		return err
	}
	pl := makePlan(o.p)
	rep := &Report{GoVersion: runtime.Version(), CPUs: runtime.NumCPU()}
	rep.LoadAvg[0] = loadAvg()
	rep.Params.N, rep.Params.Ops, rep.Params.Par, rep.Params.Rate = o.p.N, o.p.Ops, o.p.Par, o.p.Rate
	rep.Params.Churn, rep.Params.Seed, rep.Params.Latency = o.p.Churn, o.p.Seed, o.p.Latency.String()
	if o.p.Transport != transportMock {
		rep.Params.Transport = o.p.Transport
	}
	rep.Params.Refresh = "default (10m)"
	if o.p.Refresh > 0 {
		rep.Params.Refresh = o.p.Refresh.String()
	}
	base := filepath.Join(o.out, o.tag)
	if o.merge {
		if err := rep.mergeFrom(base + ".json"); err != nil {
			return err
		}
	}
	var md string
	for _, impl := range o.impls {
		res := runImpl(impl, o.p, keys, pl)
		if res.Error != "" {
			o.p.Log.Error("implementation failed", "impl", impl.Name, "err", res.Error)
		}
		rep.put(res)
		// Written after each implementation, so a run cut short keeps
		// what it measured.
		rep.LoadAvg[1] = loadAvg()
		if md, err = rep.write(base); err != nil {
			return err
		}
	}
	o.written = append(o.written, base+".md", base+".json", base+"-latency.svg", base+"-latency.png")
	fmt.Print(md)
	for _, res := range rep.Results {
		if res.Error != "" {
			return fmt.Errorf("%s: %s", res.Impl, res.Error)
		}
	}
	return nil
}
