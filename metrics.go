package kad

import (
	"context"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

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
	tableSize       metric.Int64ObservableGauge
	reg             metric.Registration
	stats           stats // the counters behind DHT.Stats
}

// newTelemetry makes the node's instruments on mp and tp (the global
// providers when nil); tableSize is read when the table gauge is
// collected.
func newTelemetry(mp metric.MeterProvider, tp trace.TracerProvider, tableSize func() int) (*telemetry, error) {
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	m := mp.Meter(instrumentationName)
	t := &telemetry{}
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
	t.lookupHops, e = m.Int64Histogram("kad.lookup.hops", metric.WithDescription("Hops of each lookup."))
	must(e)
	t.lookupRequests, e = m.Int64Histogram("kad.lookup.requests", metric.WithDescription("Requests sent by each lookup."))
	must(e)
	t.tableSize, e = m.Int64ObservableGauge("kad.routing_table.size", metric.WithDescription("Peers in the routing table."))
	must(e)
	if err != nil {
		return nil, err
	}
	t.reg, err = m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		o.ObserveInt64(t.tableSize, int64(tableSize()))
		return nil
	}, t.tableSize)
	if err != nil {
		return nil, err
	}
	return t, nil
}

// close unregisters the table gauge's callback.
func (t *telemetry) close() error {
	if t.reg != nil {
		return t.reg.Unregister()
	}
	return nil
}

func typeAttr(t pb.MessageType) metric.MeasurementOption {
	return metric.WithAttributes(attribute.String("type", t.String()))
}

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

// observeLookup records one finished lookup.
func (t *telemetry) observeLookup(hops, requests int) {
	ctx := context.Background()
	t.lookups.Add(ctx, 1)
	t.lookupHops.Record(ctx, int64(hops))
	t.lookupRequests.Record(ctx, int64(requests))
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
