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
}

func (d *DHT) initTelemetry() error {
	mp := d.cfg.telemetry.meterProvider
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	tp := d.cfg.telemetry.tracerProvider
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	m := mp.Meter(instrumentationName)
	t := &d.tel
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
		return err
	}
	t.reg, err = m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		o.ObserveInt64(t.tableSize, int64(d.rt.Size()))
		return nil
	}, t.tableSize)
	return err
}

func (d *DHT) closeTelemetry() error {
	if d.tel.reg != nil {
		return d.tel.reg.Unregister()
	}
	return nil
}

func typeAttr(t pb.MessageType) metric.MeasurementOption {
	return metric.WithAttributes(attribute.String("type", t.String()))
}

// observeInbound records one request received.
func (d *DHT) observeInbound(t pb.MessageType, err error) {
	ctx := context.Background()
	d.tel.inbound.Add(ctx, 1, typeAttr(t))
	if err != nil {
		d.tel.inboundErrors.Add(ctx, 1, typeAttr(t))
	}
}

// observeOutbound records one request sent.
func (d *DHT) observeOutbound(t pb.MessageType, start time.Time, err error) {
	ctx := context.Background()
	d.tel.outbound.Add(ctx, 1, typeAttr(t))
	if err != nil {
		d.tel.outboundErrors.Add(ctx, 1, typeAttr(t))
		return
	}
	d.tel.outboundLatency.Record(ctx, float64(time.Since(start).Microseconds())/1000, typeAttr(t))
}

// observeLookup records one finished lookup.
func (d *DHT) observeLookup(hops, requests int) {
	ctx := context.Background()
	d.tel.lookups.Add(ctx, 1)
	d.tel.lookupHops.Record(ctx, int64(hops))
	d.tel.lookupRequests.Record(ctx, int64(requests))
}

// startSpan starts the span of a public operation.
func (d *DHT) startSpan(ctx context.Context, name string, attrs ...attribute.KeyValue) (context.Context, trace.Span) {
	return d.tel.tracer.Start(ctx, "kad."+name, trace.WithAttributes(attrs...))
}

// endSpan ends a span, recording err.
func endSpan(span trace.Span, err error) {
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}
