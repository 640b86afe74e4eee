package kad

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

func TestMetricsExported(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(context.Background())
	tn := newTestNet(t, 10, 11, RandomWalk(false))
	// One more node, instrumented, joins and looks up.
	h, err := tn.mn.GenPeer()
	require.NoError(t, err)
	require.NoError(t, tn.mn.LinkAll())
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	d, err := New(ctx, h, Mode(ModeServer), MeterProvider(mp), RandomWalk(false),
		BootstrapPeers(tn.nodes[0].h.Peerstore().PeerInfo(tn.nodes[0].self)))
	require.NoError(t, err)
	defer d.Close()
	require.NoError(t, d.Bootstrap(ctx))
	_, err = d.GetClosestPeers(ctx, "metrics")
	require.NoError(t, err)

	var rm metricdata.ResourceMetrics
	require.NoError(t, reader.Collect(ctx, &rm))
	got := map[string]bool{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			got[m.Name] = true
			if m.Name == "kad.routing_table.size" {
				g := m.Data.(metricdata.Gauge[int64])
				require.Equal(t, int64(d.RoutingTable().Size()), g.DataPoints[0].Value)
			}
			if m.Name == "kad.lookups" {
				s := m.Data.(metricdata.Sum[int64])
				require.GreaterOrEqual(t, s.DataPoints[0].Value, int64(2))
			}
		}
	}
	for _, name := range []string{"kad.outbound.requests", "kad.outbound.latency", "kad.lookups", "kad.lookup.hops", "kad.lookup.requests", "kad.lookup.duration",
		"kad.routing_table.size", "kad.records.stored", "kad.provider_records.stored", "kad.network.size_estimate"} {
		require.True(t, got[name], "metric %s exported", name)
	}
}
