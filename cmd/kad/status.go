package main

import (
	"context"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"runtime"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/kadlib/kad"
)

// statusPage is the whole status page: plain HTML, CSS and JS that polls
// /api/status. Nothing is fetched from elsewhere.
//
//go:embed status.html
var statusPage []byte

const (
	// bucketSize is the DHT's default k, which serve does not change: the
	// page draws each bucket's fill against it.
	bucketSize = 20
	// answeredWithin is how recently a peer must have been heard from,
	// with no failure since, to count as answering: twice the table's
	// 10-minute refresh, which checks every bucket's peers.
	answeredWithin = 20 * time.Minute
	// statusLookups is how many recent lookups the page lists.
	statusLookups = 20
	// statusTimeout bounds one /api/status answer (counting the stores).
	statusTimeout = 5 * time.Second
)

// status is what /api/status returns.
type status struct {
	ID          string         `json:"id"`
	Protocol    string         `json:"protocol"`
	Mode        string         `json:"mode"`
	Addrs       []string       `json:"addrs"`
	Now         time.Time      `json:"now"`
	UptimeS     float64        `json:"uptime_s"`
	K           int            `json:"k"`
	TableSize   int            `json:"table_size"`
	Buckets     []statusBucket `json:"buckets"`
	Values      int            `json:"values"`
	Providers   int            `json:"providers"` // -1: not counted
	NetworkSize float64        `json:"network_size"`
	Lookups     []statusLookup `json:"lookups"`
	Stats       kad.Stats      `json:"stats"`
	// Goroutines is the number of goroutines in the serve process
	// (runtime.NumGoroutine): it rises and falls with the connections
	// and requests in progress; one that only ever grows is a leak.
	Goroutines int `json:"goroutines"`
	// Requests are the counts so far by message type; the page turns
	// them into rates between polls.
	Requests requestCounts `json:"requests"`
}

type statusBucket struct {
	Index        int          `json:"index"`
	Replacements int          `json:"replacements"`
	Peers        []statusPeer `json:"peers"`
}

type statusPeer struct {
	ID string `json:"id"`
	// Distance is the XOR distance to us, as hex, and its bit length
	// (256 - the bucket index for a peer of that bucket).
	Distance     string    `json:"distance"`
	DistanceBits int       `json:"distance_bits"`
	LastSeen     time.Time `json:"last_seen"`
	AgeS         float64   `json:"age_s"`
	Failures     int       `json:"failures"`
	Answering    bool      `json:"answering"`
	Connected    bool      `json:"connected"`
}

type statusLookup struct {
	Target     string    `json:"target"`
	Start      time.Time `json:"start"`
	DurationMS float64   `json:"duration_ms"`
	Hops       int       `json:"hops"`
	Requests   int       `json:"requests"`
	Err        string    `json:"error,omitempty"`
}

type requestCounts struct {
	Inbound        map[string]int64 `json:"inbound"`
	InboundErrors  map[string]int64 `json:"inbound_errors"`
	Outbound       map[string]int64 `json:"outbound"`
	OutboundErrors map[string]int64 `json:"outbound_errors"`
}

// newStatusHandler serves the page at / and its data at /api/status.
func newStatusHandler(n *node, o *observer) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-cache")
		w.Header().Set("Content-Security-Policy", "default-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:")
		_, _ = w.Write(statusPage)
	})
	mux.HandleFunc("GET /api/status", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), statusTimeout)
		defer cancel()
		s, err := collectStatus(ctx, n, o)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		_ = json.NewEncoder(w).Encode(s)
	})
	return mux
}

// collectStatus reads the node's state for the page.
func collectStatus(ctx context.Context, n *node, o *observer) (*status, error) {
	now := time.Now()
	d := n.d
	counts, err := d.StoreCounts(ctx)
	if err != nil {
		return nil, err
	}
	s := &status{
		ID: n.h.ID().String(), Protocol: string(d.Protocol()), Mode: d.Mode().String(), Addrs: n.addrs(),
		Now: now, UptimeS: now.Sub(o.started).Seconds(), K: bucketSize,
		Values: counts.Values, Providers: counts.Providers,
		NetworkSize: d.NetworkSizeEstimate(), Stats: d.Stats(), Goroutines: runtime.NumGoroutine(),
		Buckets: []statusBucket{}, Lookups: []statusLookup{},
	}
	for _, b := range d.RoutingTable().Buckets() {
		sb := statusBucket{Index: b.Index, Replacements: b.Replacements}
		for _, p := range b.Peers {
			age := now.Sub(p.LastSeen)
			sb.Peers = append(sb.Peers, statusPeer{
				ID: p.ID.String(), Distance: hex.EncodeToString(p.Distance[:]), DistanceBits: bitLen(p.Distance),
				LastSeen: p.LastSeen, AgeS: age.Seconds(), Failures: p.Failures,
				Answering: p.Failures == 0 && age < answeredWithin,
				Connected: n.h.Network().Connectedness(p.ID) == network.Connected,
			})
		}
		s.TableSize += len(sb.Peers)
		s.Buckets = append(s.Buckets, sb)
	}
	for _, l := range d.RecentLookups(statusLookups) {
		s.Lookups = append(s.Lookups, statusLookup{
			Target: hex.EncodeToString(l.Target[:]), Start: l.Start, DurationMS: float64(l.Duration.Microseconds()) / 1000,
			Hops: l.Hops, Requests: l.Requests, Err: l.Err,
		})
	}
	if s.Requests, err = o.requestCounts(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// bitLen is the number of significant bits of a big-endian distance.
func bitLen(d [32]byte) int {
	for i, b := range d {
		if b != 0 {
			n := 0
			for ; b != 0; b >>= 1 {
				n++
			}
			return (len(d)-i-1)*8 + n
		}
	}
	return 0
}

// requestCounts sums the DHT's request counters by message type, from
// the status page's reader.
func (o *observer) requestCounts(ctx context.Context) (requestCounts, error) {
	c := requestCounts{Inbound: map[string]int64{}, InboundErrors: map[string]int64{}, Outbound: map[string]int64{}, OutboundErrors: map[string]int64{}}
	var rm metricdata.ResourceMetrics
	if err := o.reader.Collect(ctx, &rm); err != nil {
		return c, err
	}
	into := map[string]map[string]int64{
		"kad.inbound.requests": c.Inbound, "kad.inbound.errors": c.InboundErrors,
		"kad.outbound.requests": c.Outbound, "kad.outbound.errors": c.OutboundErrors,
	}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			dst, ok := into[m.Name]
			if !ok {
				continue
			}
			sum, ok := m.Data.(metricdata.Sum[int64])
			if !ok {
				continue
			}
			for _, dp := range sum.DataPoints {
				typ, _ := dp.Attributes.Value("type")
				dst[typ.AsString()] += dp.Value
			}
		}
	}
	return c, nil
}
