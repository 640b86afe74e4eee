package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/kadlib/kad"
)

// observer is what serve runs for --metrics and --http: one OpenTelemetry
// MeterProvider the DHT records into, read by a Prometheus exporter
// (/metrics) and by the status page (request counts by type), and the
// HTTP servers.
type observer struct {
	mp      *sdkmetric.MeterProvider
	reader  *sdkmetric.ManualReader // for the status page; nil without --http
	reg     *prometheus.Registry    // for /metrics; nil without --metrics
	started time.Time

	metricsLn, httpLn net.Listener
	servers           []*http.Server
	done              chan error // one result per server
}

// newObserver binds the --metrics and --http addresses (so a busy port
// fails serve before the node starts) and makes the MeterProvider. It
// returns nil when neither flag is set.
func newObserver(f *commonFlags) (_ *observer, err error) {
	if f.metricsAddr == "" && f.httpAddr == "" {
		return nil, nil
	}
	o := &observer{started: time.Now()}
	defer func() {
		if err != nil {
			o.closeListeners()
		}
	}()
	var readers []sdkmetric.Option
	if f.metricsAddr != "" {
		if o.metricsLn, err = net.Listen("tcp", f.metricsAddr); err != nil {
			return nil, fmt.Errorf("--metrics: %w", err)
		}
		o.reg = prometheus.NewRegistry()
		exp, err := otelprom.New(otelprom.WithRegisterer(o.reg))
		if err != nil {
			return nil, fmt.Errorf("prometheus exporter: %w", err)
		}
		readers = append(readers, sdkmetric.WithReader(exp))
	}
	if f.httpAddr != "" {
		if o.httpLn, err = net.Listen("tcp", f.httpAddr); err != nil {
			return nil, fmt.Errorf("--http: %w", err)
		}
		o.reader = sdkmetric.NewManualReader()
		readers = append(readers, sdkmetric.WithReader(o.reader))
	}
	o.mp = sdkmetric.NewMeterProvider(readers...)
	return o, nil
}

func (o *observer) closeListeners() {
	for _, l := range []net.Listener{o.metricsLn, o.httpLn} {
		if l != nil {
			_ = l.Close()
		}
	}
}

// options are the DHT options that record into the observer.
func (o *observer) options() []kad.Option {
	if o == nil {
		return nil
	}
	return []kad.Option{kad.MeterProvider(o.mp)}
}

// start serves /metrics and the status page of n, and prints where.
func (o *observer) start(n *node, out *printer) {
	if o == nil {
		return
	}
	o.done = make(chan error, 2)
	serveOn := func(l net.Listener, h http.Handler) {
		s := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
		o.servers = append(o.servers, s)
		go func() {
			err := s.Serve(l)
			if errors.Is(err, http.ErrServerClosed) {
				err = nil
			}
			o.done <- err
		}()
	}
	if o.metricsLn != nil {
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", promhttp.HandlerFor(o.reg, promhttp.HandlerOpts{}))
		serveOn(o.metricsLn, mux)
		url := "http://" + o.metricsLn.Addr().String() + "/metrics"
		out.event("metrics", "metrics: "+url, map[string]any{"url": url})
	}
	if o.httpLn != nil {
		serveOn(o.httpLn, newStatusHandler(n, o))
		url := "http://" + o.httpLn.Addr().String() + "/"
		out.event("http", "status page: "+url, map[string]any{"url": url})
	}
}

// Close stops the HTTP servers, waiting up to a few seconds for requests
// in progress, and the MeterProvider. Call it before closing the node.
func (o *observer) Close() error {
	if o == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var errs []error
	for _, s := range o.servers {
		errs = append(errs, s.Shutdown(ctx))
	}
	for range o.servers {
		errs = append(errs, <-o.done)
	}
	if len(o.servers) == 0 {
		o.closeListeners()
	}
	errs = append(errs, o.mp.Shutdown(ctx))
	return errors.Join(errs...)
}
