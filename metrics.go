package kad

import (
	"context"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/kadlib/kad/internal/kbucket"
	"github.com/kadlib/kad/internal/pb"
)

// instrumentationName names kad's meter and tracer.
const instrumentationName = "github.com/kadlib/kad"

// telemetry holds the DHT's instruments. Every instrument is safe to use
// when the providers are no-ops.
type telemetry struct {
	tracer          trace.Tracer
	inbound         metric.Int64Counter
	inboundErrors   metric.Int64Counter
	outbound        metric.Int64Counter
	outboundErrors  metric.Int64Counter
	outboundLatency metric.Float64Histogram
	lookups         metric.Int64Counter
	lookupHops      metric.Int64Histogram
	lookupRequests  metric.Int64Histogram
	lookupDuration  metric.Float64Histogram
	tableSize       metric.Int64ObservableGauge
	storedValues    metric.Int64ObservableGauge
	storedProviders metric.Int64ObservableGauge
	networkSize     metric.Float64ObservableGauge
	meter           metric.Meter
	reg             metric.Registration
	stats           stats       // the counters behind DHT.Stats
	recent          *lookupRing // the lookups behind DHT.RecentLookups
}

// gaugeSources are read each time the gauges are collected.
type gaugeSources struct {
	tableSize   func() int
	storeCounts func(ctx context.Context) (StoreCounts, error)
	networkSize func() float64
}

// newTelemetry makes the node's instruments on mp and tp (the global
// providers when nil). The gauges report nothing until watch.
func newTelemetry(mp metric.MeterProvider, tp trace.TracerProvider) (*telemetry, error) {
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	m := mp.Meter(instrumentationName)
	t := &telemetry{meter: m, recent: newLookupRing(recentLookups)}
	t.tracer = tp.Tracer(instrumentationName)
	var err error
	must := func(e error) {
		if err == nil && e != nil {
			err = e
		}
	}
	var e error
	t.inbound, e = m.Int64Counter("kad.inbound.requests", metric.WithDescription("Requests received, by type."))
	must(e)
	t.inboundErrors, e = m.Int64Counter("kad.inbound.errors", metric.WithDescription("Requests received and rejected, by type."))
	must(e)
	t.outbound, e = m.Int64Counter("kad.outbound.requests", metric.WithDescription("Requests sent, by type."))
	must(e)
	t.outboundErrors, e = m.Int64Counter("kad.outbound.errors", metric.WithDescription("Requests sent that failed, by type."))
	must(e)
	t.outboundLatency, e = m.Float64Histogram("kad.outbound.latency", metric.WithUnit("ms"), metric.WithDescription("Time from request to response, by type."))
	must(e)
	t.lookups, e = m.Int64Counter("kad.lookups", metric.WithDescription("Lookups run."))
	must(e)
	t.lookupHops, e = m.Int64Histogram("kad.lookup.hops", metric.WithDescription("Hops of each lookup."),
		metric.WithExplicitBucketBoundaries(1, 2, 3, 4, 5, 6, 8, 10, 15, 20))
	must(e)
	t.lookupRequests, e = m.Int64Histogram("kad.lookup.requests", metric.WithDescription("Requests sent by each lookup."),
		metric.WithExplicitBucketBoundaries(1, 3, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500))
	must(e)
	t.lookupDuration, e = m.Float64Histogram("kad.lookup.duration", metric.WithUnit("ms"), metric.WithDescription("Time each lookup took."),
		metric.WithExplicitBucketBoundaries(10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000))
	must(e)
	t.tableSize, e = m.Int64ObservableGauge("kad.routing_table.size", metric.WithDescription("Peers in the routing table."))
	must(e)
	t.storedValues, e = m.Int64ObservableGauge("kad.records.stored", metric.WithDescription("Value records this node stores for the network."))
	must(e)
	t.storedProviders, e = m.Int64ObservableGauge("kad.provider_records.stored", metric.WithDescription("Provider records this node stores for the network (built-in store only)."))
	must(e)
	t.networkSize, e = m.Float64ObservableGauge("kad.network.size_estimate", metric.WithDescription("Estimated DHT servers in the network, this node included."))
	must(e)
	if err != nil {
		return nil, err
	}
	return t, nil
}

// watch registers the gauges' callback on src. It runs once the node is
// built, so a collection never sees a half-made node.
func (t *telemetry) watch(src gaugeSources) error {
	var err error
	t.reg, err = t.meter.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
		o.ObserveInt64(t.tableSize, int64(src.tableSize()))
		o.ObserveFloat64(t.networkSize, src.networkSize())
		c, err := src.storeCounts(ctx)
		if err != nil {
			return err
		}
		o.ObserveInt64(t.storedValues, int64(c.Values))
		if c.Providers >= 0 {
			o.ObserveInt64(t.storedProviders, int64(c.Providers))
		}
		return nil
	}, t.tableSize, t.networkSize, t.storedValues, t.storedProviders)
	return err
}

// close unregisters the gauges' callback.
func (t *telemetry) close() error {
	if t.reg != nil {
		return t.reg.Unregister()
	}
	return nil
}

func typeAttr(t pb.MessageType) metric.MeasurementOption {
	if o, ok := typeAttrs[t]; ok {
		return o
	}
	return metric.WithAttributes(attribute.String("type", t.String()))
}

// typeAttrs holds typeAttr's option for each known message type, built
// once: building an attribute set per message was 4 % of a simulation's
// CPU.
var typeAttrs = func() map[pb.MessageType]metric.MeasurementOption {
	m := make(map[pb.MessageType]metric.MeasurementOption)
	for _, t := range []pb.MessageType{pb.PutValue, pb.GetValue, pb.AddProvider, pb.GetProviders, pb.FindNode, pb.Ping} {
		m[t] = metric.WithAttributes(attribute.String("type", t.String()))
	}
	return m
}()

// observeInbound records one request received.
func (t *telemetry) observeInbound(typ pb.MessageType, err error) {
	ctx := context.Background()
	t.inbound.Add(ctx, 1, typeAttr(typ))
	if err != nil {
		t.inboundErrors.Add(ctx, 1, typeAttr(typ))
	}
}

// observeOutbound records one request sent.
func (t *telemetry) observeOutbound(typ pb.MessageType, start time.Time, err error) {
	ctx := context.Background()
	t.outbound.Add(ctx, 1, typeAttr(typ))
	if err != nil {
		t.outboundErrors.Add(ctx, 1, typeAttr(typ))
		return
	}
	t.outboundLatency.Record(ctx, float64(time.Since(start).Microseconds())/1000, typeAttr(typ))
}

// observeLookup records one finished lookup, for target, started at
// start; err is how it ended.
func (t *telemetry) observeLookup(target kbucket.ID, start time.Time, hops, requests int, err error) {
	ctx := context.Background()
	took := time.Since(start)
	t.lookups.Add(ctx, 1)
	t.lookupHops.Record(ctx, int64(hops))
	t.lookupRequests.Record(ctx, int64(requests))
	t.lookupDuration.Record(ctx, float64(took.Microseconds())/1000)
	li := LookupInfo{Target: target, Start: start, Duration: took, Hops: hops, Requests: requests}
	if err != nil {
		li.Err = err.Error()
	}
	t.recent.add(li)
}

// startSpan starts the span of a public operation.
func (t *telemetry) startSpan(ctx context.Context, name string, attrs ...attribute.KeyValue) (context.Context, trace.Span) {
	return t.tracer.Start(ctx, "kad."+name, trace.WithAttributes(attrs...))
}

// endSpan ends a span, recording err.
func endSpan(span trace.Span, err error) {
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}
