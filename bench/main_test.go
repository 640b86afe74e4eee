package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

// TestSmoke runs the whole benchmark at a tiny size, both implementations,
// and checks that it works: every phase ran and
// succeeded, and every output file exists. It asserts nothing about speed.
func TestSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("builds two 20-node networks")
	}
	out := t.TempDir()
	// Each implementation in its own call, the second merging into the
	// first one's report.
	args := []string{"-n", "20", "-ops", "5", "-q", "-out", out, "-tag", "smoke", "-latency", "random"}
	if err := run(append(args, "-impl", "kad")); err != nil {
		t.Fatal(err)
	}
	if err := run(append(args, "-impl", "go-kad-dht", "-merge")); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"smoke.md", "smoke.json", "smoke-latency.svg", "smoke-latency.png"} {
		if st, err := os.Stat(filepath.Join(out, f)); err != nil || st.Size() == 0 {
			t.Errorf("%s not written: %v", f, err)
		}
	}
	if err := run([]string{"-replot", filepath.Join(out, "smoke.json")}); err != nil {
		t.Errorf("replot: %v", err)
	}
	data, err := os.ReadFile(filepath.Join(out, "smoke.json"))
	if err != nil {
		t.Fatal(err)
	}
	var rep Report
	if err := json.Unmarshal(data, &rep); err != nil {
		t.Fatal(err)
	}
	if len(rep.Results) != 2 {
		t.Fatalf("got %d implementations, want 2", len(rep.Results))
	}
	for _, res := range rep.Results {
		if res.Error != "" {
			t.Errorf("%s: %s", res.Impl, res.Error)
		}
		if len(res.Phases) == 0 {
			t.Errorf("%s: no phase ran", res.Impl)
		}
		for _, ph := range res.Phases {
			if ph.Skipped != "" {
				t.Logf("%s: %s skipped: %s", res.Impl, ph.Name, ph.Skipped)
				continue
			}
			// Twenty nodes and five operations: everything must work.
			if ph.Success < 1 {
				t.Errorf("%s: %s succeeded %d of %d", res.Impl, ph.Name, ph.OK, ph.Ops)
			}
		}
		if r := res.phase("GetClosestPeers").Extra["recall"]; r < 0.9 {
			t.Errorf("%s: recall %.2f", res.Impl, r)
		}
	}
}

// TestSmokeTCP runs both implementations on 10 go-libp2p hosts over
// loopback TCP (Noise, Yamux, 20 ms injected per link), a few operations
// per phase, and checks that everything succeeded and that connection
// setup was measured.
func TestSmokeTCP(t *testing.T) {
	if testing.Short() {
		t.Skip("builds two 10-node TCP networks")
	}
	out := t.TempDir()
	o, err := parse([]string{"-transport", "tcp", "-n", "10", "-ops", "3", "-q", "-out", out, "-tag", "tcp"})
	if err != nil {
		t.Fatal(err)
	}
	if err := o.run(); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(out, "tcp.json"))
	if err != nil {
		t.Fatal(err)
	}
	var rep Report
	if err := json.Unmarshal(data, &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Params.Transport != "tcp" || len(rep.Results) != 2 {
		t.Fatalf("transport %q, %d implementations", rep.Params.Transport, len(rep.Results))
	}
	for _, res := range rep.Results {
		for _, ph := range res.Phases {
			if ph.Skipped == "" && ph.Success < 1 {
				t.Errorf("%s: %s succeeded %d of %d", res.Impl, ph.Name, ph.OK, ph.Ops)
			}
		}
		if _, ok := res.phase("GetClosestPeers").Extra["new_conns"]; !ok {
			t.Errorf("%s: connection setup not measured", res.Impl)
		}
	}
}

func TestParseRejectsBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"-impl", "nope"},
		{"-latency", "soon"},
		{"-transport", "udp"},
		{"-n", "1"},
		{"-churn", "1"},
	} {
		if _, err := parse(args); err == nil {
			t.Errorf("%v accepted", args)
		}
	}
}

func TestLatencyIsSymmetricAndInRange(t *testing.T) {
	l := Latency{Min: 5e6, Max: 100e6, Seed: 3}
	for a := range 30 {
		for b := range 30 {
			d := l.link(a, b)
			if d != l.link(b, a) || d < l.Min || d > l.Max {
				t.Fatalf("link(%d, %d) = %v", a, b, d)
			}
		}
	}
}

// TestProvideAtScale runs the providing phase at CI size (100 nodes,
// 1,000 CIDs, in-memory datastores) for both implementations and checks
// only that both finish and that every sampled CID is findable from
// another node. It asserts nothing about speed.
func TestProvideAtScale(t *testing.T) {
	if testing.Short() {
		t.Skip("builds two 100-node networks")
	}
	o, err := parse([]string{"-n", "100", "-provide", "1000", "-provide-stores", "mem", "-provide-reprovide=false", "-provide-sample", "100", "-q", "-out", t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if err := o.run(); err != nil {
		t.Fatal(err)
	}
	if got := len(o.provideResults.Runs); got != 2 {
		t.Fatalf("%d runs, want 2", got)
	}
	for _, r := range o.provideResults.Runs {
		if r.Findable < 1 {
			t.Errorf("%s %s: findable %.3f", r.Impl, r.Path, r.Findable)
		}
		// 20,000 stored records take room: the measure must see them.
		if r.HeapRetainedMiB <= 0 {
			t.Errorf("%s %s: heap kept after the run %.1f MiB", r.Impl, r.Path, r.HeapRetainedMiB)
		}
	}
}
