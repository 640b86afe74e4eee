package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/require"

	"github.com/kadlib/kad"
)

// inproc is a "kad serve --json" run in-process.
type inproc struct {
	ready struct {
		ID    string   `json:"id"`
		Addrs []string `json:"addrs"`
	}
	events map[string]map[string]any // the first line of each event kind
	lines  chan map[string]any
	cancel context.CancelFunc
	exit   chan int
}

// serveIn starts "kad serve --json --listen <loopback>" with args and
// waits for its ready line and for each of the events in waitFor.
func serveIn(t *testing.T, waitFor []string, args ...string) *inproc {
	t.Helper()
	t.Setenv(bootstrapEnv, "")
	ctx, cancel := context.WithCancel(context.Background())
	s := &inproc{events: map[string]map[string]any{}, lines: make(chan map[string]any, 100), cancel: cancel, exit: make(chan int, 1)}
	pr, pw := io.Pipe()
	args = append([]string{"serve", "--json", "--listen", "/ip4/127.0.0.1/tcp/0", "--data", t.TempDir()}, args...)
	go func() {
		code := run(ctx, args, strings.NewReader(""), pw, io.Discard)
		_ = pw.Close()
		s.exit <- code
	}()
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) == nil {
				s.lines <- m
			}
		}
		_, _ = io.Copy(io.Discard, pr)
		close(s.lines)
	}()
	t.Cleanup(s.stop(t))
	want := append([]string{"ready"}, waitFor...)
	deadline := time.After(30 * time.Second)
	for len(want) > 0 {
		select {
		case m, ok := <-s.lines:
			require.True(t, ok, "kad serve exited early")
			ev, _ := m["event"].(string)
			if _, seen := s.events[ev]; !seen {
				s.events[ev] = m
			}
			if ev == "ready" {
				b, _ := json.Marshal(m)
				require.NoError(t, json.Unmarshal(b, &s.ready))
			}
			want = slices.DeleteFunc(want, func(w string) bool { return w == ev })
		case <-deadline:
			t.Fatalf("kad serve: no %v line", want)
		}
	}
	go func() { // keep draining so the printer never blocks
		for range s.lines {
		}
	}()
	return s
}

// stop returns a cleanup that interrupts the server and checks it exits 0.
func (s *inproc) stop(t *testing.T) func() {
	return func() {
		s.cancel()
		select {
		case code := <-s.exit:
			require.Equal(t, exitOK, code, "kad serve exit status")
		case <-time.After(30 * time.Second):
			t.Error("kad serve did not stop within 30 s")
		}
	}
}

// url is the "url" field of the server's first event of kind.
func (s *inproc) url(kind string) string {
	u, _ := s.events[kind]["url"].(string)
	return u
}

// startPeer starts an in-process node in mode m on loopback, joined to
// boot, with extra DHT options.
func startPeer(ctx context.Context, t *testing.T, m kad.ModeOpt, boot string, extra ...kad.Option) *node {
	t.Helper()
	f, _, err := parseArgs(findCommand("serve"), []string{"--listen", "/ip4/127.0.0.1/tcp/0", "--bootstrap", boot})
	require.NoError(t, err)
	n, err := startNode(ctx, f, m, "/ip4/127.0.0.1/tcp/0", io.Discard, extra...)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, n.Close()) })
	infos, err := f.bootstrapPeers()
	require.NoError(t, err)
	require.NoError(t, n.join(ctx, infos))
	return n
}

// anyValidator accepts every value of its namespace, which the servers do
// not know: their PUT_VALUE handler refuses the records.
type anyValidator struct{}

func (anyValidator) Validate(string, []byte) error        { return nil }
func (anyValidator) Select(string, [][]byte) (int, error) { return 0, nil }

// scrape reads and parses /metrics.
func scrape(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	require.NoError(t, err)
	return fams
}

// value is the value of the family's sample whose labels include want
// (counter, gauge, or a histogram's count); ok false if none.
func value(fams map[string]*dto.MetricFamily, name string, want map[string]string) (float64, bool) {
	f := fams[name]
	if f == nil {
		return 0, false
	}
next:
	for _, m := range f.GetMetric() {
		for k, v := range want {
			found := false
			for _, l := range m.GetLabel() {
				if l.GetName() == k && l.GetValue() == v {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.GetCounter().GetValue(), true
		case m.Gauge != nil:
			return m.GetGauge().GetValue(), true
		case m.Histogram != nil:
			return float64(m.GetHistogram().GetSampleCount()), true
		}
	}
	return 0, false
}

// kad serve --metrics on a three-server loopback network, with a client
// that puts, provides and fails once: every family the issue asks for is
// there, with the values the traffic implies.
func TestServeMetrics(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	srv := serveIn(t, []string{"metrics"}, "--metrics", "127.0.0.1:0")
	url := srv.url("metrics")
	require.True(t, strings.HasPrefix(url, "http://127.0.0.1:"), url)
	boot := srv.ready.Addrs[0]
	for range 2 {
		startPeer(ctx, t, kad.ModeServer, boot)
	}
	cl := startPeer(ctx, t, kad.ModeClient, boot, kad.NamespacedValidator("other", anyValidator{}))
	require.NoError(t, cl.d.PutValue(ctx, "/kad-cli/metrics", encodeValue([]byte("hi"), time.Now())))
	c, err := cid.Decode(testCID(t, "metrics"))
	require.NoError(t, err)
	require.NoError(t, cl.d.Provide(ctx, c, true))
	// Refused by every server: an inbound error there.
	require.Error(t, cl.d.PutValue(ctx, "/other/x", []byte("y")))

	// The server's own lookups (it looks itself up as peers join) and the
	// provider records sent after Provide returned come in their own time.
	var fams map[string]*dto.MetricFamily
	require.Eventually(t, func() bool {
		fams = scrape(t, url)
		size, _ := value(fams, "kad_routing_table_size", nil)
		provs, _ := value(fams, "kad_provider_records_stored", nil)
		lookups, _ := value(fams, "kad_lookups_total", nil)
		return size == 2 && provs == 1 && lookups >= 1
	}, 20*time.Second, 100*time.Millisecond, "table of 2, one provider record, a lookup")

	for _, tc := range []struct {
		name   string
		labels map[string]string
		min    float64
		max    float64
	}{
		{"kad_inbound_requests_total", map[string]string{"type": "PUT_VALUE"}, 2, 2},
		{"kad_inbound_requests_total", map[string]string{"type": "FIND_NODE"}, 1, 1e6},
		{"kad_inbound_requests_total", map[string]string{"type": "ADD_PROVIDER"}, 1, 1},
		{"kad_inbound_errors_total", map[string]string{"type": "PUT_VALUE"}, 1, 1},
		{"kad_outbound_requests_total", map[string]string{"type": "FIND_NODE"}, 1, 1e6},
		{"kad_outbound_latency_milliseconds", map[string]string{"type": "FIND_NODE"}, 1, 1e6},
		{"kad_lookups_total", nil, 1, 1e6},
		{"kad_lookup_hops", nil, 1, 1e6},
		{"kad_lookup_requests", nil, 1, 1e6},
		{"kad_lookup_duration_milliseconds", nil, 1, 1e6},
		{"kad_routing_table_size", nil, 2, 2},
		{"kad_records_stored", nil, 1, 1},
		{"kad_provider_records_stored", nil, 1, 1},
		{"kad_network_size_estimate", nil, 3, 3},
	} {
		v, ok := value(fams, tc.name, tc.labels)
		require.True(t, ok, "%s%v missing; have %v", tc.name, tc.labels, familyNames(fams))
		require.GreaterOrEqual(t, v, tc.min, "%s%v", tc.name, tc.labels)
		require.LessOrEqual(t, v, tc.max, "%s%v", tc.name, tc.labels)
	}
	require.Equal(t, dto.MetricType_HISTOGRAM, fams["kad_outbound_latency_milliseconds"].GetType())
	require.Equal(t, dto.MetricType_HISTOGRAM, fams["kad_lookup_hops"].GetType())
	// Every lookup took at least one hop.
	h := fams["kad_lookup_hops"].GetMetric()[0].GetHistogram()
	require.Positive(t, h.GetSampleSum())
}

func familyNames(fams map[string]*dto.MetricFamily) []string {
	var out []string
	for n := range fams {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

// A busy --metrics port fails serve before the node starts.
func TestServeMetricsBusyPort(t *testing.T) {
	srv := serveIn(t, []string{"metrics"}, "--metrics", "127.0.0.1:0")
	addr := strings.TrimSuffix(strings.TrimPrefix(srv.url("metrics"), "http://"), "/metrics")
	code, _, stderr := runIn(t, "serve", "--data", t.TempDir(), "--listen", "/ip4/127.0.0.1/tcp/0", "--metrics", addr)
	require.Equal(t, exitFail, code)
	require.Contains(t, stderr, "--metrics")
	require.Contains(t, stderr, "address already in use")
}
