package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/ipfs/go-cid"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/kadlib/kad"
)

const (
	// defaultServeListen is where serve listens without --listen.
	defaultServeListen = "/ip4/0.0.0.0/tcp/4001"
	// reprovideInterval is how often serve announces its --provide CIDs
	// again: before the records' 48 h validity runs out, as on Amino.
	reprovideInterval = 22 * time.Hour
	// provideRetryFirst is how soon a failed announcement is first tried
	// again; each further failure doubles the wait, up to provideRetry. A
	// restarted server's first announcement often fails while the peers of
	// its saved table are still being re-checked, seconds, not minutes.
	provideRetryFirst = 5 * time.Second
	provideRetry      = time.Minute
)

func init() {
	commands = append(commands, &command{
		name:    "serve",
		args:    "",
		summary: "run a server node until interrupted",
		help: `
Runs a DHT server node: it answers other peers' requests, stores their
values and provider records, and keeps its routing table fresh. It prints
its peer id and multiaddrs (give one to other nodes' --bootstrap), then
runs until interrupted (Ctrl-C or SIGTERM).

--data <dir> is required. The node's identity key is kept in
<dir>/identity.key (created on first run, mode 0600), so its peer id and
addresses stay the same across restarts; records, provider records and the
routing table are kept in a leveldb datastore in <dir>/datastore, so a
restarted node still holds what it stored and rejoins through the peers
it knew. Only one process can use a directory at a time.

--provide <cid> announces that this node provides the content <cid>
(repeatable), now and every 22 hours, so provider records keep pointing at
a node that stays up. The node does not hold or serve the content itself:
run your application on the same host, or use kad as a library.

--metrics <host:port> serves the node's metrics in the Prometheus text
format at http://<host:port>/metrics: requests in and out by type, errors,
latency, lookups, the table size, the records stored and the estimated
network size. --http <host:port> serves a status page at
http://<host:port>/ that shows the routing table by bucket, the stored
records, the recent lookups, the request rates and the process's
goroutine count, refreshed every two seconds (its data is at
/api/status, as JSON). Neither has
authentication: bind them to 127.0.0.1 or a private address. Port 0
picks a free port; serve prints the address.`,
		setup: func(f *commonFlags) {
			f.fs.Var(&f.provide, "provide", "`cid` to announce as provided by this node, now and every 22 h; repeatable")
			f.fs.StringVar(&f.metricsAddr, "metrics", "", "serve Prometheus metrics at http://`host:port`/metrics (e.g. 127.0.0.1:9464)")
			f.fs.StringVar(&f.httpAddr, "http", "", "serve a status page at http://`host:port`/ (e.g. 127.0.0.1:8080)")
		},
		run: serve,
	})
}

func serve(ctx context.Context, e *env, _ []string) (err error) {
	f := e.flags
	if f.data == "" {
		return usagef("--data <dir> is required: the identity key and the datastore live there")
	}
	var cids []cid.Cid
	for _, s := range f.provide {
		c, err := cid.Decode(s)
		if err != nil {
			return usagef("--provide %q: not a CID: %v", s, err)
		}
		cids = append(cids, c)
	}
	if err := checkPorts(f.listen, defaultServeListen); err != nil {
		return err
	}
	obs, err := newObserver(f)
	if err != nil {
		return err
	}
	n, err := startNode(ctx, f, kad.ModeServer, defaultServeListen, e.stderr, obs.options()...)
	if err != nil {
		return errors.Join(err, obs.Close())
	}
	defer func() { err = errors.Join(err, n.Close()) }()
	out := &printer{w: e.stdout, json: f.json}
	out.ready(n, f.data)
	obs.start(n, out)
	defer func() { err = errors.Join(err, obs.Close()) }()

	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wg.Add(1)
	go func() {
		defer wg.Done()
		if len(f.bootstrap) > 0 {
			if err := n.d.Bootstrap(ctx); err != nil && ctx.Err() == nil {
				// The DHT retries by itself while its table is nearly empty.
				out.event("warning", fmt.Sprintf("%s (retrying every minute)", oneLine(err)), nil)
			} else if ctx.Err() == nil {
				size := n.d.RoutingTable().Size()
				out.event("bootstrapped", fmt.Sprintf("bootstrapped: %d %s in the routing table", size, plural(size, "peer")),
					map[string]any{"peers": size})
			}
		}
		reprovide(ctx, n.d, f.k, cids, out)
	}()
	<-ctx.Done()
	out.event("stopping", "stopping", nil)
	return nil
}

// reprovide announces cids now and every reprovideInterval, retrying
// failures sooner, until ctx is done. An announcement made while the
// routing table held fewer than k peers, more than at the previous one (a
// node joining a network still forming), counts, but is made again as a
// failure would be: its records went to the closest of the few peers
// known, which may be far from the closest of the network. A table that
// stopped growing below k is a small network, and its announcement
// stands.
func reprovide(ctx context.Context, d *kad.DHT, k int, cids []cid.Cid, out *printer) {
	if len(cids) == 0 {
		return
	}
	retry := provideRetryFirst
	last := -1 // the table's size at the previous announcement
	for {
		size := d.RoutingTable().Size()
		failed := size < k && size > last
		last = size
		for _, c := range cids {
			// ProvideMany returns once every send is done (Provide
			// returns earlier and finishes in the background): only then
			// is the announcement reported, so a node stopped right after
			// never reports one its peers did not get.
			if err := d.ProvideMany(ctx, []cid.Cid{c}); err != nil {
				if ctx.Err() != nil {
					return
				}
				failed = true
				out.event("warning", fmt.Sprintf("announce %s: %s (stored locally; retrying in %v)", c, oneLine(err), retry),
					map[string]any{"cid": c.String()})
				continue
			}
			out.event("provided", "announced "+c.String(), map[string]any{"cid": c.String()})
		}
		var wait time.Duration
		wait, retry = nextProvideWait(failed, retry)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// nextProvideWait returns how long reprovide waits after a round (retry
// after a failure, reprovideInterval after a success) and the retry delay
// for the round after.
func nextProvideWait(failed bool, retry time.Duration) (wait, next time.Duration) {
	if !failed {
		return reprovideInterval, provideRetryFirst
	}
	return retry, min(2*retry, provideRetry)
}

// printer writes serve's status lines, as text or one JSON object each.
type printer struct {
	mu   sync.Mutex
	w    io.Writer
	json bool
}

func (p *printer) ready(n *node, dir string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.json {
		_ = json.NewEncoder(p.w).Encode(map[string]any{
			"event": "ready", "id": n.h.ID().String(), "addrs": n.addrs(), "protocol": string(n.d.Protocol()), "data": dir,
		})
		return
	}
	fmt.Fprintf(p.w, "peer id: %s\nprotocol: %s\ndata: %s\nlistening on:\n", n.h.ID(), n.d.Protocol(), dir)
	for _, a := range n.addrs() {
		fmt.Fprintf(p.w, "  %s\n", a)
	}
	fmt.Fprintln(p.w, "ready; Ctrl-C to stop")
}

// event prints one status line: text, or a JSON object of fields with
// "event" and "message" added.
func (p *printer) event(kind, text string, fields map[string]any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.json {
		fmt.Fprintln(p.w, text)
		return
	}
	obj := map[string]any{"event": kind, "message": text}
	for k, v := range fields {
		obj[k] = v
	}
	_ = json.NewEncoder(p.w).Encode(obj)
}

// checkPorts fails when a TCP port to listen on is taken. go-libp2p binds
// its TCP ports with SO_REUSEPORT, so without this check a second server
// on a busy port would start and silently share the first one's incoming
// connections.
func checkPorts(listen []string, def string) error {
	if len(listen) == 0 {
		listen = []string{def}
	}
	for _, s := range listen {
		a, err := ma.NewMultiaddr(s)
		if err != nil {
			continue // startNode reports it
		}
		port, err := a.ValueForProtocol(ma.P_TCP)
		if err != nil || port == "0" {
			continue
		}
		ip, err := a.ValueForProtocol(ma.P_IP4)
		if err != nil {
			if ip, err = a.ValueForProtocol(ma.P_IP6); err != nil {
				continue
			}
		}
		l, err := net.Listen("tcp", net.JoinHostPort(ip, port))
		if err != nil {
			return fmt.Errorf("listen on %s: %w", s, errors.Unwrap(err))
		}
		_ = l.Close()
	}
	return nil
}
