package main

import (
	"encoding/json"
	"fmt"
	"image/color"
	"io"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
	"gonum.org/v1/plot/vg/vgsvg"
)

// Report is one invocation's results, written as JSON.
type Report struct {
	Params struct {
		N   int `json:"n"`
		Ops int `json:"ops"`
		Par int `json:"par"`
		// Rate, when set, is operations started per second (open loop).
		Rate    float64 `json:"rate,omitempty"`
		Churn   float64 `json:"churn"`
		Seed    uint64  `json:"seed"`
		Latency string  `json:"latency"`
		Refresh string  `json:"refresh"`
		// Transport is empty for mocknet.
		Transport string `json:"transport,omitempty"`
	} `json:"params"`
	GoVersion string `json:"go_version"`
	// LoadAvg is /proc/loadavg before and after: the machine is shared,
	// and a high load inflates latencies.
	LoadAvg [2]string     `json:"loadavg"`
	CPUs    int           `json:"cpus"`
	Results []*ImplResult `json:"results"`
}

func (r *Report) result(name string) *ImplResult {
	for _, x := range r.Results {
		if x.Impl == name {
			return x
		}
	}
	return nil
}

// row is one line of the comparison table.
type row struct {
	label string
	get   func(*ImplResult) (float64, bool)
	unit  string // printf verb for values
	// target judges kad against go (either may be NaN when missing) and
	// returns the target text and whether it is met.
	target func(k, g float64) (string, bool)
}

func setupOf(r *ImplResult) (float64, bool) { return r.SetupSeconds, r.SetupSeconds > 0 }

func phaseVal(name string, f func(*OpStats) float64) func(*ImplResult) (float64, bool) {
	return func(r *ImplResult) (float64, bool) {
		p := r.phase(name)
		if p == nil || p.Skipped != "" {
			return 0, false
		}
		return f(p), true
	}
}

func extra(name, key string) func(*ImplResult) (float64, bool) {
	return func(r *ImplResult) (float64, bool) {
		p := r.phase(name)
		if p == nil || p.Skipped != "" {
			return 0, false
		}
		v, ok := p.Extra[key]
		return v, ok
	}
}

func p50(name string) func(*ImplResult) (float64, bool) {
	return phaseVal(name, func(p *OpStats) float64 { return p.P50MS })
}
func p95(name string) func(*ImplResult) (float64, bool) {
	return phaseVal(name, func(p *OpStats) float64 { return p.P95MS })
}
func success(name string) func(*ImplResult) (float64, bool) {
	return phaseVal(name, func(p *OpStats) float64 { return p.Success })
}
func rpcs(name string) func(*ImplResult) (float64, bool) {
	return phaseVal(name, func(p *OpStats) float64 { return p.RPCs })
}

// ratioAtMost: kad / go <= x.
func ratioAtMost(x float64) func(k, g float64) (string, bool) {
	return func(k, g float64) (string, bool) { return fmt.Sprintf("<= %.2gx", x), k/g <= x }
}

// atLeastTheirsAnd: kad >= go and kad >= floor.
func atLeastTheirsAnd(floor float64) func(k, g float64) (string, bool) {
	return func(k, g float64) (string, bool) {
		return fmt.Sprintf(">= theirs, >= %.2f", floor), k >= floor && (math.IsNaN(g) || k >= g)
	}
}

func zero(k, _ float64) (string, bool) { return "0", k == 0 }

func atLeast(floor float64) func(k, g float64) (string, bool) {
	return func(k, _ float64) (string, bool) { return fmt.Sprintf(">= %.2f", floor), k >= floor }
}

func rows() []row {
	const gcp, gcpC = "GetClosestPeers", "GetClosestPeers after churn"
	return []row{
		{"setup: join + refresh, s", setupOf, "%.1f", ratioAtMost(0.5)},
		{"setup CPU, s", func(r *ImplResult) (float64, bool) { return r.SetupCPUSec, r.SetupSeconds > 0 }, "%.1f", nil},
		{"heap per node (DHT share), MiB", func(r *ImplResult) (float64, bool) { return r.HeapPerNodeMiB, r.SetupSeconds > 0 }, "%.2f", ratioAtMost(0.5)},
		{"heap per node (with host), MiB", func(r *ImplResult) (float64, bool) { return r.HeapPerNodeTotalMiB, r.SetupSeconds > 0 }, "%.2f", nil},
		{"goroutines per node (DHT share)", func(r *ImplResult) (float64, bool) { return r.GoroutinesPerNode, r.SetupSeconds > 0 }, "%.1f", ratioAtMost(0.25)},
		{"goroutines per node (with host)", func(r *ImplResult) (float64, bool) { return r.GoroutinesTotalPerNod, r.SetupSeconds > 0 }, "%.1f", nil},
		{"open connections per node after setup", func(r *ImplResult) (float64, bool) { return r.ConnsPerNode, r.ConnsPerNode > 0 }, "%.1f", nil},
		{"connected peers per node after setup", func(r *ImplResult) (float64, bool) { return r.PeersPerNode, r.PeersPerNode > 0 }, "%.1f", nil},
		{"heap per node after idle (DHT share), MiB", func(r *ImplResult) (float64, bool) { return r.HeapIdleMiB, r.HeapIdleMiB != 0 }, "%.2f", ratioAtMost(0.5)},
		{"goroutines per node after idle (DHT share)", func(r *ImplResult) (float64, bool) { return r.GoroutinesIdle, r.HeapIdleMiB != 0 }, "%.1f", ratioAtMost(0.25)},
		{"GetClosestPeers recall of true 20", extra(gcp, "recall"), "%.3f", atLeastTheirsAnd(0.98)},
		{"GetClosestPeers worst recall", extra(gcp, "recall_min"), "%.2f", nil},
		{"GetClosestPeers RPCs per lookup (all messages received)", rpcs(gcp), "%.1f", ratioAtMost(0.7)},
		{"… of which admission probes", extra(gcp, "probes"), "%.1f", nil},
		{"… the rest: lookup requests", phaseVal(gcp, func(p *OpStats) float64 { return p.RPCs - p.Extra["probes"] }), "%.1f", ratioAtMost(0.7)},
		{"GetClosestPeers lookup requests by the implementation's own count", extra(gcp, "own_lookup_requests"), "%.1f", nil},
		{"GetClosestPeers lookups run per operation by the implementation's own count (above 1: its own upkeep ran too)", extra(gcp, "own_lookups"), "%.2f", nil},
		{"GetClosestPeers hops", extra(gcp, "hops"), "%.2f", nil},
		{"GetClosestPeers latency p50, ms", p50(gcp), "ms", ratioAtMost(0.7)},
		{"GetClosestPeers latency p95, ms", p95(gcp), "ms", ratioAtMost(0.6)},
		{"GetClosestPeers new connections per lookup", extra(gcp, "new_conns"), "%.1f", nil},
		{"GetClosestPeers connection setup per lookup (summed over its new connections), ms", extra(gcp, "conn_setup_ms"), "ms", nil},
		{"GetClosestPeers setup of one connection (mean), ms", extra(gcp, "conn_setup_each_ms"), "ms", nil},
		{"GetClosestPeers lookups whose origin dialled", extra(gcp, "ops_dialing"), "%.2f", nil},
		{"… their latency p50, ms", extra(gcp, "dial_p50_ms"), "ms", nil},
		{"… their latency p95, ms", extra(gcp, "dial_p95_ms"), "ms", nil},
		{"… the others' latency p50, ms", extra(gcp, "no_dial_p50_ms"), "ms", nil},
		{"… the others' latency p95, ms", extra(gcp, "no_dial_p95_ms"), "ms", nil},
		{"GetClosestPeers CPU per lookup, ms", phaseVal(gcp, func(p *OpStats) float64 { return p.CPUMS }), "%.1f", nil},
		{"GetClosestPeers CPU cores busy (process CPU time / phase wall time)", extra(gcp, "cores_busy"), "%.2f", nil},
		{"GetClosestPeers garbage collections during the phase (each slows every node at once)", extra(gcp, "gc_cycles"), "%.0f", nil},
		{"FindPeer success", success("FindPeer"), "%.2f", nil},
		{"FindPeer latency p50, ms", p50("FindPeer"), "ms", nil},
		{"FindPeer latency p95, ms", p95("FindPeer"), "ms", nil},
		{"FindPeer answered from a live connection", extra("FindPeer", "already_connected"), "%.2f", nil},
		{"FindPeer RPCs per op", rpcs("FindPeer"), "%.1f", nil},
		{"PutValue success", success("PutValue"), "%.2f", nil},
		{"PutValue latency p50, ms", p50("PutValue"), "ms", nil},
		{"PutValue latency p95, ms", p95("PutValue"), "ms", nil},
		{"PutValue RPCs per op", rpcs("PutValue"), "%.1f", nil},
		{"GetValue success", success("GetValue"), "%.2f", nil},
		{"GetValue latency p50, ms", p50("GetValue"), "ms", nil},
		{"GetValue latency p95, ms", p95("GetValue"), "ms", nil},
		{"GetValue RPCs per op", rpcs("GetValue"), "%.1f", nil},
		{"Provide success", success("Provide"), "%.2f", nil},
		{"Provide latency p50, ms", p50("Provide"), "ms", ratioAtMost(0.3)},
		{"Provide latency p95, ms", p95("Provide"), "ms", nil},
		{"Provide RPCs per op", rpcs("Provide"), "%.1f", nil},
		{"Provide new connections per op", extra("Provide", "new_conns"), "%.1f", nil},
		{"Provide setup of one connection (mean), ms", extra("Provide", "conn_setup_each_ms"), "ms", nil},
		{"Provide operations whose origin dialled", extra("Provide", "ops_dialing"), "%.2f", nil},
		{"… their latency p50, ms", extra("Provide", "dial_p50_ms"), "ms", nil},
		{"… the others' latency p50, ms", extra("Provide", "no_dial_p50_ms"), "ms", nil},
		{"Provide CPU per op, ms", phaseVal("Provide", func(p *OpStats) float64 { return p.CPUMS }), "%.1f", nil},
		{"Provide CPU cores busy (process CPU time / phase wall time)", extra("Provide", "cores_busy"), "%.2f", nil},
		{"Provide garbage collections during the phase", extra("Provide", "gc_cycles"), "%.0f", nil},
		{"FindProviders success", success("FindProviders"), "%.2f", nil},
		{"time to first provider p50, ms", extra("FindProviders", "first_p50_ms"), "ms", nil},
		{"time to first provider p95, ms", extra("FindProviders", "first_p95_ms"), "ms", nil},
		{"FindProviders (k = 20) latency p50, ms", p50("FindProviders"), "ms", nil},
		{"FindProviders RPCs per op", rpcs("FindProviders"), "%.1f", nil},
		{"after churn: GetClosestPeers dead peers returned", extra(gcpC, "dead_returned"), "%.0f", zero},
		{"after churn: lookups returning a dead peer", extra(gcpC, "lookups_with_dead"), "%.2f", zero},
		{"after churn: recall of live 20 closest", extra(gcpC, "recall"), "%.3f", atLeast(0.98)},
		{"after churn: GetClosestPeers latency p50, ms", p50(gcpC), "ms", nil},
		{"after churn: GetClosestPeers RPCs per lookup", rpcs(gcpC), "%.1f", nil},
		{"after churn: GetValue success", success("GetValue after churn"), "%.2f", atLeastTheirsAnd(0.98)},
		{"after churn: GetValue latency p50, ms", p50("GetValue after churn"), "ms", nil},
		{"after churn: FindProviders success", success("FindProviders after churn"), "%.2f", atLeastTheirsAnd(0.98)},
		{"after churn: time to first provider p50, ms", extra("FindProviders after churn", "first_p50_ms"), "ms", nil},
	}
}

// markdown renders the comparison table of kad against go-libp2p-kad-dht
// (or a single column when only one ran).
func (r *Report) markdown() string {
	var b strings.Builder
	p := r.Params
	if p.Transport != "" {
		fmt.Fprintf(&b, "transport %s, ", p.Transport)
	}
	load := fmt.Sprintf("%d in flight", p.Par)
	if p.Rate > 0 {
		load = fmt.Sprintf("started at %g per second", p.Rate)
	}
	fmt.Fprintf(&b, "N = %d, latency %s, %d ops per phase (%s), churn %.0f%%, seed %d, periodic refresh %s, %s, %d CPUs; load average",
		p.N, p.Latency, p.Ops, load, p.Churn*100, p.Seed, p.Refresh, r.GoVersion, r.CPUs)
	for _, res := range r.Results {
		fmt.Fprintf(&b, " %s %s -> %s", res.Impl, res.LoadAvg[0], res.LoadAvg[1])
		if p.Transport == transportQUIC && res.UDPDrops > 0 {
			fmt.Fprintf(&b, " (UDP datagrams dropped for full receive buffers: %d)", res.UDPDrops)
		}
		b.WriteString(";")
	}
	b.WriteString("\n\n")
	k, g := r.result(kadImpl.Name), r.result(goImpl.Name)
	fmt.Fprintf(&b, "| metric | kad | go-libp2p-kad-dht | kad / go | target | met |\n|---|---:|---:|---:|---|---|\n")
	cell := func(res *ImplResult, rw row) (string, float64) {
		if res == nil || res.Error != "" {
			return "–", math.NaN()
		}
		v, ok := rw.get(res)
		if !ok {
			return "–", math.NaN()
		}
		if rw.unit == "ms" {
			if v < 10 {
				return fmt.Sprintf("%.1f", v), v
			}
			return fmt.Sprintf("%.0f", v), v
		}
		return fmt.Sprintf(rw.unit, v), v
	}
	for _, rw := range rows() {
		ks, kv := cell(k, rw)
		gs, gv := cell(g, rw)
		if math.IsNaN(kv) && math.IsNaN(gv) {
			continue // not measured in this run
		}
		ratio := "–"
		// Sub-millisecond latencies are answers from a live connection:
		// their ratio means nothing.
		tiny := rw.unit == "ms" && (kv < 1 || gv < 1)
		if !math.IsNaN(kv) && !math.IsNaN(gv) && gv != 0 && !tiny {
			ratio = fmt.Sprintf("%.2fx", kv/gv)
		}
		tgt, met := "", ""
		if rw.target != nil && !math.IsNaN(kv) {
			var ok bool
			tgt, ok = rw.target(kv, gv)
			needsGo := strings.Contains(tgt, "x") || strings.Contains(tgt, "theirs")
			switch {
			case needsGo && math.IsNaN(gv):
				met = "–"
			case ok:
				met = "yes"
			default:
				met = "**no**"
			}
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s |\n", rw.label, ks, gs, ratio, tgt, met)
	}
	for _, res := range r.Results {
		if res.Error != "" {
			fmt.Fprintf(&b, "\n%s failed: %s\n", res.Impl, res.Error)
		}
	}
	return b.String()
}

// loadAvg is the 1-minute load average, "?" where unknown.
func loadAvg() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return strings.Fields(string(data) + " ?")[0]
}

// udpRcvbufErrors is the kernel's count of UDP datagrams dropped for a
// full socket receive buffer (RcvbufErrors in /proc/net/snmp), -1 where
// unknown.
func udpRcvbufErrors() int64 {
	data, err := os.ReadFile("/proc/net/snmp")
	if err != nil {
		return -1
	}
	var names []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "Udp:" {
			continue
		}
		if names == nil {
			names = f
			continue
		}
		for i, n := range names {
			if n == "RcvbufErrors" && i < len(f) {
				v, err := strconv.ParseInt(f[i], 10, 64)
				if err != nil {
					return -1
				}
				return v
			}
		}
	}
	return -1
}

func writeJSON(path string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(data, '\n'), 0o644)
}

// chartPhases are the latency distributions drawn, with the sample used.
var chartPhases = []struct {
	title, phase string
	first        bool // time to first provider rather than the whole op
}{
	{"GetClosestPeers", "GetClosestPeers", false},
	{"FindPeer", "FindPeer", false},
	{"PutValue", "PutValue", false},
	{"GetValue", "GetValue", false},
	{"Provide", "Provide", false},
	{"first provider", "FindProviders", true},
	{"GetClosestPeers after churn", "GetClosestPeers after churn", false},
	{"GetValue after churn", "GetValue after churn", false},
}

var implColors = map[string]color.Color{
	"kad":        color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff},
	"go-kad-dht": color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff},
}

// charts draws the latency CDF of each phase, one panel per phase and one
// line per implementation, as SVG and PNG.
func (r *Report) charts(base string) error {
	const cols = 4
	rowsN := (len(chartPhases) + cols - 1) / cols
	plots := make([][]*plot.Plot, rowsN)
	for i := range plots {
		plots[i] = make([]*plot.Plot, cols)
	}
	for i, cp := range chartPhases {
		pl := plot.New()
		pl.Title.Text = cp.title
		pl.X.Label.Text = "latency, ms (log)"
		pl.Y.Label.Text = "fraction done"
		pl.Y.Min, pl.Y.Max = 0, 1
		lines := 0
		pl.Legend.Top = false
		pl.Legend.Left = false
		pl.Add(plotter.NewGrid())
		for _, res := range r.Results {
			ph := res.phase(cp.phase)
			if ph == nil || ph.Skipped != "" {
				continue
			}
			xs := ph.LatencyMS
			if cp.first {
				xs = ph.FirstMS
			}
			if len(xs) == 0 {
				continue
			}
			s := slices.Clone(xs)
			slices.Sort(s)
			// A step CDF: each sample lifts the line by 1/len at its value.
			pts := make(plotter.XYs, 0, 2*len(s))
			for j, x := range s {
				x = math.Max(x, 1)
				pts = append(pts, plotter.XY{X: x, Y: float64(j) / float64(len(s))},
					plotter.XY{X: x, Y: float64(j+1) / float64(len(s))})
			}
			line, err := plotter.NewLine(pts)
			if err != nil {
				return err
			}
			line.Color = implColors[res.Impl]
			line.Width = vg.Points(1.5)
			pl.Add(line)
			pl.Legend.Add(res.Impl, line)
			lines++
		}
		if lines > 0 {
			// Explicit bounds: with every sample equal, plot would widen
			// the range down to 0, which a log scale cannot show.
			pl.X.Min, pl.X.Max = math.Max(pl.X.Min/1.2, 0.5), math.Max(pl.X.Max*1.2, 2)
			pl.X.Scale = plot.LogScale{}
			pl.X.Tick.Marker = plot.TickerFunc(ticks125)
		} else {
			pl.Title.Text += " (not measured)"
		}
		plots[i/cols][i%cols] = pl
	}
	w, h := vg.Points(float64(cols)*260), vg.Points(float64(rowsN)*230)
	tiles := draw.Tiles{Rows: rowsN, Cols: cols, PadX: vg.Millimeter * 4, PadY: vg.Millimeter * 4,
		PadTop: vg.Millimeter * 2, PadBottom: vg.Millimeter * 2, PadLeft: vg.Millimeter * 2, PadRight: vg.Millimeter * 2}
	draw1 := func(dc draw.Canvas) {
		canvases := plot.Align(plots, tiles, dc)
		for j := range plots {
			for i := range plots[j] {
				if plots[j][i] != nil {
					plots[j][i].Draw(canvases[j][i])
				}
			}
		}
	}
	svg := vgsvg.New(w, h)
	draw1(draw.New(svg))
	if err := writeTo(base+".svg", svg.WriteTo); err != nil {
		return err
	}
	img := vgimg.New(w, h)
	dc := draw.New(img)
	dc.SetColor(color.White)
	dc.Fill(dc.Rectangle.Path())
	draw1(dc)
	return writeTo(base+".png", vgimg.PngCanvas{Canvas: img}.WriteTo)
}

// ticks125 labels a log axis at 1, 2, 5, 10, 20, 50... within [lo, hi].
func ticks125(lo, hi float64) []plot.Tick {
	var ts []plot.Tick
	for d := math.Pow(10, math.Floor(math.Log10(lo))); d <= hi; d *= 10 {
		for _, m := range []float64{1, 2, 5} {
			if v := d * m; v >= lo && v <= hi {
				ts = append(ts, plot.Tick{Value: v, Label: strconv.FormatFloat(v, 'f', -1, 64)})
			}
		}
	}
	return ts
}

func writeTo(path string, write func(w io.Writer) (int64, error)) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := write(f); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}
