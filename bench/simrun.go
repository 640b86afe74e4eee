package main

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"time"

	"github.com/kadlib/kad/sim"
)

// simRun is one simulation with its cost on this machine.
type simRun struct {
	Result      *sim.Result `json:"result"`
	WallSeconds float64     `json:"wall_seconds"`
	PeakHeapGiB float64     `json:"heap_after_setup_gib"`
}

// simulate runs kad's simulator at each size and writes a table and JSON.
func (o *options) simulate() error {
	var runs []simRun
	// A hundred thousand routing tables are several GiB of live heap:
	// collect more often rather than let the heap double before a GC.
	defer debug.SetGCPercent(debug.SetGCPercent(25))
	for _, n := range o.sims {
		cfg := sim.Config{N: n, Seed: o.p.Seed, Lookups: o.simOps, Churn: o.p.Churn, Alpha: o.simA, ConvergeAlpha: o.simConv, NearFactor: o.simNear, DisconnectChecks: o.simDC,
			LatencyMin: o.p.Latency.Min, LatencyMax: o.p.Latency.Max, Logger: o.p.Log.With("sim", n)}
		start := time.Now()
		res, err := sim.Run(cfg)
		if err != nil {
			return fmt.Errorf("sim %d: %w", n, err)
		}
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		res.Config.Logger = nil
		runs = append(runs, simRun{Result: res, WallSeconds: time.Since(start).Seconds(),
			PeakHeapGiB: float64(ms.HeapSys) / (1 << 30)})
		debug.FreeOSMemory()
	}
	base := filepath.Join(o.out, fmt.Sprintf("sim-%s-seed%d", latName(o.p.Latency), o.p.Seed))
	if o.simA != 0 {
		base += fmt.Sprintf("-alpha%d", o.simA)
	}
	if o.simConv != 0 {
		base += fmt.Sprintf("-converge%d", o.simConv)
	}
	if o.simNear != 0 {
		base += fmt.Sprintf("-near%g", o.simNear)
	}
	if o.simDC {
		base += "-disconnect-checks"
	}
	md := simMarkdown(runs)
	if err := os.WriteFile(base+".md", []byte(md), 0o644); err != nil {
		return err
	}
	if err := writeJSON(base+".json", runs); err != nil {
		return err
	}
	o.written = append(o.written, base+".md", base+".json")
	fmt.Print(md)
	return nil
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
	fmt.Fprintf(&b, "kad simulator: k = %d, alpha = %d (%d while converging), beta = %d, near factor %g, link latency %v-%v one way, %d lookups per phase, churn %.0f%%, disconnect checks %v, seed %d\n\n",
		c.K, c.Alpha, c.ConvergeAlpha, c.Beta, c.NearFactor, c.LatencyMin, c.LatencyMax, c.Lookups, c.Churn*100, c.DisconnectChecks, c.Seed)
	b.WriteString("| nodes | table size | recall | all 20 found | RPCs / lookup | hops mean (p50 / p95 / max) | latency p50 / p95 | after churn: recall of live | dead returned | RPCs (failed) | records found | wall | heap |\n")
	b.WriteString("|---:|---:|---:|---:|---:|---|---|---:|---:|---|---:|---:|---:|\n")
	for _, r := range runs {
		res, l := r.Result, r.Result.Lookup
		fmt.Fprintf(&b, "| %d | %.0f | %.4f | %.2f | %.1f | %.2f (%d / %d / %d) | %v / %v |",
			res.Config.N, res.TableSize, l.Recall, l.Perfect, l.RPCs, l.Hops, l.HopsP50, l.HopsP95, l.HopsMax,
			l.LatencyP50.Round(time.Millisecond), l.LatencyP95.Round(time.Millisecond))
		if ch := res.Churn; ch != nil {
			fmt.Fprintf(&b, " %.4f | %d | %.1f (%.1f) | %.3f |", ch.Recall, ch.DeadInResults, ch.RPCs, ch.Failed, ch.RecordsFound)
		} else {
			b.WriteString(" – | – | – | – |")
		}
		fmt.Fprintf(&b, " %.0f s | %.1f GiB |\n", r.WallSeconds, r.PeakHeapGiB)
	}
	return b.String()
}
