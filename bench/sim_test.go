package main

import (
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/kadlib/kad/sim"
)

// TestSimulate runs kad's simulator at the sizes in KAD_SIM and writes
// results/sim-<latency>-seed<seed>[-settings].{md,json} (simrun.go lists
// the variables). Skipped unless KAD_SIM is set:
//
//	KAD_SIM=300,1000 go test -run TestSimulate -timeout 0 -v
func TestSimulate(t *testing.T) {
	if os.Getenv("KAD_SIM") == "" {
		t.Skip("set KAD_SIM to the network sizes to simulate")
	}
	s, err := simSettingsFromEnv(os.Getenv)
	if err != nil {
		t.Fatal(err)
	}
	runs := simulateAll(t, s)
	md, err := s.write(runs)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %s.{md,json}\n%s", s.base(), md)
}

// TestSimulateSmoke runs the simulator at 60 nodes and writes its report
// to a temporary directory: it proves that the run and the report work.
func TestSimulateSmoke(t *testing.T) {
	env := map[string]string{"KAD_SIM": "60", "KAD_SIM_LOOKUPS": "10", "KAD_SIM_LATENCY": "random", "KAD_SIM_OUT": t.TempDir()}
	s, err := simSettingsFromEnv(func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	runs := simulateAll(t, s)
	if r := runs[0].Result.Lookup.Recall; r < 0.9 {
		t.Errorf("recall %.2f", r)
	}
	if _, err := s.write(runs); err != nil {
		t.Fatal(err)
	}
	for _, ext := range []string{".md", ".json"} {
		if st, err := os.Stat(s.base() + ext); err != nil || st.Size() == 0 {
			t.Errorf("%s not written: %v", filepath.Base(s.base()+ext), err)
		}
	}
	if _, err := simSettingsFromEnv(func(k string) string { return map[string]string{"KAD_SIM": "1"}[k] }); err == nil {
		t.Error("KAD_SIM=1 accepted")
	}
	if _, err := simSettingsFromEnv(func(k string) string { return map[string]string{"KAD_SIM_LATENCY": "soon"}[k] }); err == nil {
		t.Error("KAD_SIM_LATENCY=soon accepted")
	}
}

// simulateAll runs each size in its own subtest (and synctest bubble),
// with its wall time, CPU time and peak heap.
func simulateAll(t *testing.T, s *simSettings) []simRun {
	// Thousands of nodes are GiBs of live heap. Let the heap double
	// between collections (a quarter of the CPU went to GC at 50 %), but
	// never past KAD_SIM_MEMLIMIT GiB (default 16): the soft limit makes
	// the GC work harder instead.
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	limit := int64(16)
	if v := os.Getenv("KAD_SIM_MEMLIMIT"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 1 {
			t.Fatalf("KAD_SIM_MEMLIMIT=%q: want a whole number of GiB", v)
		}
		limit = n
	}
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(limit << 30))
	var runs []simRun
	for _, n := range s.sizes {
		t.Run(strconv.Itoa(n), func(t *testing.T) {
			var peak atomic.Uint64
			stop := make(chan struct{})
			done := make(chan struct{})
			go func() {
				defer close(done)
				tick := time.NewTicker(time.Second)
				defer tick.Stop()
				var ms runtime.MemStats
				for {
					runtime.ReadMemStats(&ms)
					if ms.HeapInuse > peak.Load() {
						if prof := os.Getenv("KAD_SIM_HEAPPROFILE"); prof != "" && ms.HeapInuse > peak.Load()*11/10 {
							if err := writeHeapProfile(prof); err != nil {
								t.Logf("heap profile: %v", err)
							}
						}
						peak.Store(ms.HeapInuse)
					}
					select {
					case <-stop:
						return
					case <-tick.C:
					}
				}
			}()
			start, cpu0 := time.Now(), cpuTime()
			res, err := sim.Run(t, s.config(n))
			wall, cpu := time.Since(start), cpuTime()-cpu0
			close(stop)
			<-done
			if err != nil {
				t.Fatalf("sim %d: %v", n, err)
			}
			res.Config.Logger = nil
			gib := float64(1 << 30)
			runs = append(runs, simRun{Result: res, WallSeconds: wall.Seconds(), CPUSeconds: cpu.Seconds(),
				PeakHeapGiB: float64(peak.Load()) / gib, MaxRSSGiB: float64(maxRSS()) / gib})
			t.Logf("%d nodes: recall %.4f, %.1f RPCs, %.2f hops per lookup; %v wall, %v CPU, peak heap %.2f GiB",
				n, res.Lookup.Recall, res.Lookup.RPCs, res.Lookup.Hops, wall.Round(time.Second), cpu.Round(time.Second), float64(peak.Load())/gib)
			debug.FreeOSMemory()
		})
	}
	if len(runs) != len(s.sizes) {
		t.FailNow()
	}
	return runs
}

// maxRSS is the process's peak resident set, in bytes.
func maxRSS() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Maxrss * 1024
}
