package main

import (
	"cmp"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/kadlib/kad/sim"
)

// The simulator runs from a test (sim_test.go), since its virtual time
// needs testing/synctest; this file holds its settings and its report.

// simSettings are a simulator run's settings, read from the environment:
//
//	KAD_SIM                    network sizes, comma-separated (required)
//	KAD_SIM_LOOKUPS            lookups per phase (500)
//	KAD_SIM_LATENCY            one-way link latency, or "random" for 5-100 ms per link (20ms)
//	KAD_SIM_SEED               seed (1)
//	KAD_SIM_CHURN              fraction of nodes stopped (0.3)
//	KAD_SIM_ALPHA              kad's Concurrency (0: kad's default)
//	KAD_SIM_CONVERGE           kad's ConvergeConcurrency (0: unset)
//	KAD_SIM_DISCONNECT_CHECKS  stopped nodes' peers are told (true)
//	KAD_SIM_ATTACK             run the attack scenarios (sim.Attack, defaults) too (false)
//	KAD_SIM_PROGRESS           log the run's progress to stderr (false)
//	KAD_SIM_OUT                output directory (results)
//	KAD_SIM_MEMLIMIT           GiB the GC keeps the heap under (16; sim_test.go)
//	KAD_SIM_HEAPPROFILE        write the live heap's profile at each new peak to this file (sim_test.go)
type simSettings struct {
	sizes   []int
	lookups int
	latency Latency
	seed    uint64
	churn   float64
	alpha   int
	conv    int
	dc      bool
	attack  bool
	verbose bool
	out     string
}

func simSettingsFromEnv(getenv func(string) string) (*simSettings, error) {
	s := &simSettings{lookups: 500, seed: 1, churn: 0.3, dc: true, out: "results"}
	for _, f := range strings.Split(getenv("KAD_SIM"), ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		v, err := strconv.Atoi(f)
		if err != nil || v < 2 {
			return nil, fmt.Errorf("bad KAD_SIM size %q", f)
		}
		s.sizes = append(s.sizes, v)
	}
	var errs []string
	num := func(name string, set func(string) error) {
		if v := getenv(name); v != "" {
			if err := set(v); err != nil {
				errs = append(errs, fmt.Sprintf("%s=%q: %v", name, v, err))
			}
		}
	}
	atoi := func(p *int) func(string) error {
		return func(v string) (err error) { *p, err = strconv.Atoi(v); return err }
	}
	num("KAD_SIM_LOOKUPS", atoi(&s.lookups))
	num("KAD_SIM_ALPHA", atoi(&s.alpha))
	num("KAD_SIM_CONVERGE", atoi(&s.conv))
	num("KAD_SIM_SEED", func(v string) (err error) { s.seed, err = strconv.ParseUint(v, 10, 64); return err })
	num("KAD_SIM_CHURN", func(v string) (err error) { s.churn, err = strconv.ParseFloat(v, 64); return err })
	num("KAD_SIM_DISCONNECT_CHECKS", func(v string) (err error) { s.dc, err = strconv.ParseBool(v); return err })
	num("KAD_SIM_ATTACK", func(v string) (err error) { s.attack, err = strconv.ParseBool(v); return err })
	num("KAD_SIM_PROGRESS", func(v string) (err error) { s.verbose, err = strconv.ParseBool(v); return err })
	s.latency = Latency{Min: 20 * time.Millisecond, Max: 20 * time.Millisecond, Seed: s.seed}
	num("KAD_SIM_LATENCY", func(v string) error {
		if v == "random" {
			s.latency.Min, s.latency.Max = 5*time.Millisecond, 100*time.Millisecond
			return nil
		}
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			return fmt.Errorf("want a duration or random")
		}
		s.latency.Min, s.latency.Max = d, d
		return nil
	})
	if v := getenv("KAD_SIM_OUT"); v != "" {
		s.out = v
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return s, nil
}

// config is the simulator's Config for n nodes.
func (s *simSettings) config(n int) sim.Config {
	c := sim.Config{N: n, Seed: s.seed, Lookups: s.lookups, Churn: s.churn, Alpha: s.alpha, ConvergeAlpha: s.conv,
		DisconnectChecks: s.dc, LatencyMin: s.latency.Min, LatencyMax: s.latency.Max}
	if s.attack {
		c.Attack = &sim.Attack{}
	}
	if s.verbose {
		c.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	return c
}

// simRun is one simulation with its cost on this machine.
type simRun struct {
	Result      *sim.Result `json:"result"`
	WallSeconds float64     `json:"wall_seconds"`
	CPUSeconds  float64     `json:"cpu_seconds"`
	PeakHeapGiB float64     `json:"peak_heap_gib"` // largest heap in use seen, sampled every second
	MaxRSSGiB   float64     `json:"max_rss_gib"`   // the process's, so far
}

// base is the output path of a run, without extension.
func (s *simSettings) base() string {
	b := filepath.Join(s.out, fmt.Sprintf("sim-%s-seed%d", latName(s.latency), s.seed))
	if s.alpha != 0 {
		b += fmt.Sprintf("-alpha%d", s.alpha)
	}
	if s.conv != 0 {
		b += fmt.Sprintf("-converge%d", s.conv)
	}
	if !s.dc {
		b += "-no-disconnect-checks"
	}
	if s.attack {
		b += "-attack"
	}
	return b
}

// write saves the table and the JSON of runs and returns the table.
func (s *simSettings) write(runs []simRun) (string, error) {
	if err := os.MkdirAll(s.out, 0o755); err != nil {
		return "", err
	}
	md := simMarkdown(runs)
	if err := os.WriteFile(s.base()+".md", []byte(md), 0o644); err != nil {
		return "", err
	}
	return md, writeJSON(s.base()+".json", runs)
}

func latName(l Latency) string {
	if l.Min == l.Max {
		return "lat" + l.Min.String()
	}
	return "latrandom"
}

func simMarkdown(runs []simRun) string {
	var b strings.Builder
	if len(runs) == 0 {
		return ""
	}
	c := runs[0].Result.Config
	conv := "unset"
	if c.ConvergeAlpha > 0 {
		conv = strconv.Itoa(c.ConvergeAlpha)
	}
	fmt.Fprintf(&b, "kad simulator (real kad nodes, in-memory network, virtual time): k = %d, alpha = %d, converge concurrency %s, beta = %d, link latency %v-%v one way, fail delay %v, %d lookups per phase, churn %.0f%%, disconnect checks %v, seed %d\n\n",
		c.K, c.Alpha, conv, c.Beta, c.LatencyMin, c.LatencyMax, c.FailDelay, c.Lookups, c.Churn*100, c.DisconnectChecks, c.Seed)
	b.WriteString("| nodes | table size | recall | all 20 found | RPCs / lookup | messages received / lookup | hops mean (p50 / p95 / max) | latency p50 / p95 | after churn: recall of live | dead returned | RPCs (failed) | records found | wall | CPU | peak heap | max RSS |\n")
	b.WriteString("|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---|---:|---:|---:|---:|---:|\n")
	for _, r := range runs {
		res, l := r.Result, r.Result.Lookup
		fmt.Fprintf(&b, "| %d | %.0f | %.4f | %.2f | %.1f | %.1f | %.2f (%d / %d / %d) | %v / %v |",
			res.Config.N, res.TableSize, l.Recall, l.Perfect, l.RPCs, l.Messages, l.Hops, l.HopsP50, l.HopsP95, l.HopsMax,
			l.LatencyP50.Round(time.Millisecond), l.LatencyP95.Round(time.Millisecond))
		if ch := res.Churn; ch != nil {
			fmt.Fprintf(&b, " %.4f | %d | %.1f (%.1f) | %.3f |", ch.Recall, ch.DeadInResults, ch.RPCs, ch.Failed, ch.RecordsFound)
		} else {
			b.WriteString(" – | – | – | – |")
		}
		fmt.Fprintf(&b, " %.0f s | %.0f s | %.2f GiB | %.2f GiB |\n", r.WallSeconds, r.CPUSeconds, r.PeakHeapGiB, r.MaxRSSGiB)
	}
	for _, r := range runs {
		if len(r.Result.Attacks) == 0 {
			continue
		}
		a := r.Result.Config.Attack
		fmt.Fprintf(&b, "\nAttacks on %d nodes (sim.Attack: %d records per scenario and path setting; collusion: eclipse, stale or forged values, dropped provider records; sybil: %d nodes around each of 4 targets):\n\n",
			r.Result.Config.N, a.Records, cmp.Or(max(a.Sybils, 0), r.Result.Config.K))
		b.WriteString("| attack | adversaries | disjoint paths | honest recall (min) | RPCs / lookup | latest value read | honest provider found | put / provide errors | lies |\n")
		b.WriteString("|---|---:|---:|---|---:|---:|---:|---|---:|\n")
		for _, ph := range r.Result.Attacks {
			fmt.Fprintf(&b, "| %s | %.1f %% | %d | %.3f (%.2f) | %.1f | %.3f | %.3f | %d / %d | %d |\n",
				ph.Kind, ph.Fraction*100, ph.Disjoint, ph.Recall, ph.RecallMin, ph.RPCs, ph.ValueOK, ph.ProviderOK, ph.PutErrors, ph.ProvideErrors, ph.Lies)
		}
	}
	return b.String()
}
