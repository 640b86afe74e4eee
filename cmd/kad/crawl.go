package main

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	ma "github.com/multiformats/go-multiaddr"
	msmux "github.com/multiformats/go-multistream"
	"golang.org/x/term"

	"github.com/kadlib/kad/internal/kbucket"
	"github.com/kadlib/kad/internal/pb"
	"github.com/kadlib/kad/internal/wire"
)

// A crawl asks every server it finds for the contents of its routing
// table, bucket by bucket, the way network crawlers (nebula, the ProbeLab
// crawler) do: FIND_NODE for a key in bucket i of the server returns the
// server's peers of bucket i first, then those of the deeper buckets. It
// speaks the wire protocol itself over a host that runs no DHT, so it
// never enters anyone's routing table and its own table plays no part.

const (
	// crawlMaxCPL is the deepest bucket asked for: building a key for
	// bucket i takes about 2^(i+1) hashes, and a network needs about
	// 2^(i+1)·k peers before a server's bucket i fills.
	crawlMaxCPL = 15
	// crawlK is the answer size assumed (k of Amino and of kad): an
	// answer with fewer than k peers at or below the asked bucket listed
	// all of them, so deeper buckets need no question.
	crawlK = 20
	// crawlRequestTimeout bounds one dial and one request, as the
	// protocol's 10 s per response.
	crawlRequestTimeout = 10 * time.Second
	// crawlProgressEvery is how often a plain progress line is written
	// when stderr is not a terminal (a terminal gets one line rewritten
	// a few times a second).
	crawlProgressEvery = 10 * time.Second
)

// Crawl outcomes of one peer.
const (
	crawlAnswered  = "answered"
	crawlFailed    = "failed"    // no connection, or no answer in time
	crawlRefused   = "refused"   // connected, but does not speak the protocol
	crawlUnvisited = "unvisited" // found, but the crawl ran out of time first
)

func init() {
	commands = append(commands, &command{
		name: "crawl", args: "", nargs: 0,
		summary: "list every server of a network and summarise them",
		help: `
Walks the network from the --bootstrap peers: it connects to every server
it hears of and asks it FIND_NODE for a key in each of its buckets (0, 1,
2, ... up to 15, stopping once an answer lists the rest of the table), so
each server lists its whole routing table; the peers they list are crawled
in turn until no new one appears or --timeout runs out.

It prints how many servers it found and how many answered, failed (no
connection or no answer within 10 s) or refused (do not speak
<prefix>/kad/1.0.0); their agent versions and protocols, from identify;
the spread of routing table sizes (distinct peers each server listed);
and a network size estimated from how close each server's nearest peers
are, to compare with the count. --json prints one JSON document with
every peer instead.

The crawler runs a libp2p host without a DHT: it answers nothing and
enters no routing table. While it runs, a progress line goes to stderr.`,
		setup: func(f *commonFlags) {
			f.fs.Int("concurrency", 32, "servers crawled at once")
		},
		run: crawl,
	})
}

// crawlPeer is what the crawl learned of one peer.
type crawlPeer struct {
	id        peer.ID
	addrs     []ma.Multiaddr
	state     string
	err       string
	agent     string
	protocols []string
	table     map[peer.ID]bool // distinct peers it listed
	asked     int              // FIND_NODE requests answered
}

// crawlResult is a finished crawl.
type crawlResult struct {
	protocol protocol.ID
	started  time.Time
	took     time.Duration
	peers    []*crawlPeer // in the order found
}

// crawler walks a network over h.
type crawler struct {
	h           host.Host
	proto       protocol.ID
	concurrency int
	progress    func(found, visited, answered int) // may be nil
}

func crawl(ctx context.Context, e *env, _ []string) (err error) {
	f := e.flags
	boot, err := f.bootstrapPeers()
	if err != nil {
		return err
	}
	if len(boot) == 0 {
		return usagef("no bootstrap peer: give --bootstrap <multiaddr> or set $%s", bootstrapEnv)
	}
	if err := checkPrefix(f.prefix); err != nil {
		return err
	}
	if f.timeout <= 0 {
		return usagef("--timeout %v: must be positive", f.timeout)
	}
	conc := intFlag(f, "concurrency")
	if conc < 1 {
		return usagef("--concurrency %d: must be at least 1", conc)
	}
	h, err := crawlHost(f)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, h.Close()) }()

	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	prog := newProgressLine(e.stderr)
	c := &crawler{h: h, proto: protocol.ID(f.prefix + "/kad/1.0.0"), concurrency: conc, progress: prog.update}
	res := c.run(ctx, boot)
	prog.done()
	if err := parent.Err(); err != nil {
		return err // interrupted: no summary of half a crawl
	}
	sum := res.summary()
	if f.json {
		return e.print(sum, "")
	}
	sum.writeText(e.stdout)
	if sum.Answered == 0 {
		return fmt.Errorf("no server answered on %s (do the --prefix flags match?)", res.protocol)
	}
	return nil
}

// intFlag reads an int flag a command registered in its setup.
func intFlag(f *commonFlags, name string) int {
	return f.fs.Lookup(name).Value.(flag.Getter).Get().(int)
}

// crawlHost is a libp2p host that runs no DHT: it listens only where
// --listen says (nowhere by default) and keeps the --data identity if
// given.
func crawlHost(f *commonFlags) (host.Host, error) {
	var key crypto.PrivKey
	var err error
	if f.data != "" {
		if err := os.MkdirAll(f.data, 0o700); err != nil {
			return nil, fmt.Errorf("data directory: %w", err)
		}
		key, err = loadOrCreateKey(f.data + string(os.PathSeparator) + identityFile)
	} else {
		key, _, err = crypto.GenerateEd25519Key(rand.Reader)
	}
	if err != nil {
		return nil, err
	}
	opts := []libp2p.Option{libp2p.Identity(key)}
	if len(f.listen) == 0 {
		opts = append(opts, libp2p.NoListenAddrs)
	} else {
		for _, l := range f.listen {
			if _, err := ma.NewMultiaddr(l); err != nil {
				return nil, usagef("--listen %q: %v", l, err)
			}
		}
		opts = append(opts, libp2p.ListenAddrStrings(f.listen...))
	}
	h, err := libp2p.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("start libp2p host: %w", err)
	}
	return h, nil
}

// visited is a worker's report on one peer: the peers it listed.
type visited struct {
	p     *crawlPeer
	found []peer.AddrInfo
}

// run crawls from boot until no new peer appears or ctx ends. Only this
// goroutine touches the peer map; a worker fills in the crawlPeer it was
// handed and gives it back through done.
func (c *crawler) run(ctx context.Context, boot []peer.AddrInfo) *crawlResult {
	res := &crawlResult{protocol: c.proto, started: time.Now()}
	byID := make(map[peer.ID]*crawlPeer)
	var queue []*crawlPeer
	add := func(ai peer.AddrInfo) {
		if ai.ID == c.h.ID() || ai.ID == "" {
			return
		}
		if p, ok := byID[ai.ID]; ok {
			for _, a := range ai.Addrs {
				if !slices.ContainsFunc(p.addrs, a.Equal) {
					p.addrs = append(p.addrs, a)
				}
			}
			return
		}
		p := &crawlPeer{id: ai.ID, addrs: slices.Clone(ai.Addrs), state: crawlUnvisited}
		byID[ai.ID] = p
		res.peers = append(res.peers, p)
		queue = append(queue, p)
	}
	for _, ai := range boot {
		add(ai)
	}

	work := make(chan *crawlPeer)
	done := make(chan visited)
	var workers sync.WaitGroup
	defer workers.Wait()
	defer close(work)
	for w := range c.concurrency {
		workers.Add(1)
		go func() {
			defer workers.Done()
			var seed [16]byte
			_, _ = rand.Read(seed[:])
			rng := mrand.New(mrand.NewPCG(binary.LittleEndian.Uint64(seed[:]), uint64(w)))
			for p := range work {
				done <- visited{p: p, found: c.visit(ctx, p, rng)}
			}
		}()
	}
	inFlight, nVisited, nAnswered := 0, 0, 0
	ctxDone := ctx.Done()
	report := func() {
		if c.progress != nil {
			c.progress(len(res.peers), nVisited, nAnswered)
		}
	}
	for {
		var send chan *crawlPeer
		var next *crawlPeer
		if len(queue) > 0 && ctx.Err() == nil {
			send, next = work, queue[0]
		}
		if send == nil && inFlight == 0 {
			break
		}
		select {
		case send <- next:
			queue = queue[1:]
			inFlight++
		case v := <-done:
			inFlight--
			nVisited++
			if v.p.state == crawlAnswered {
				nAnswered++
			}
			for _, ai := range v.found {
				add(ai)
			}
			report()
		case <-ctxDone:
			// Stop handing out work; the workers' requests end with ctx.
			ctxDone = nil
		}
	}
	res.took = time.Since(res.started)
	return res
}

// visit connects to p and asks it for each of its buckets. It returns
// the peers p listed, with their addresses.
func (c *crawler) visit(ctx context.Context, p *crawlPeer, rng *mrand.Rand) []peer.AddrInfo {
	defer func() {
		// Identify ran during the dial; keep what it said, then let the
		// connection go so that a large crawl does not hold thousands.
		if v, err := c.h.Peerstore().Get(p.id, "AgentVersion"); err == nil {
			p.agent, _ = v.(string)
		}
		if protos, err := c.h.Peerstore().GetProtocols(p.id); err == nil {
			for _, pr := range protos {
				p.protocols = append(p.protocols, string(pr))
			}
			slices.Sort(p.protocols)
		}
		_ = c.h.Network().ClosePeer(p.id)
	}()
	fail := func(state string, err error) []peer.AddrInfo {
		p.state, p.err = state, oneLine(err)
		return nil
	}
	if len(p.addrs) == 0 {
		return fail(crawlFailed, errors.New("no address known"))
	}
	dctx, cancel := context.WithTimeout(ctx, crawlRequestTimeout)
	err := c.h.Connect(dctx, peer.AddrInfo{ID: p.id, Addrs: p.addrs})
	cancel()
	if err != nil {
		return fail(crawlFailed, err)
	}
	if protos, err := c.h.Peerstore().SupportsProtocols(p.id, c.proto); err == nil && len(protos) == 0 {
		if known, _ := c.h.Peerstore().GetProtocols(p.id); len(known) > 0 {
			return fail(crawlRefused, fmt.Errorf("does not speak %s", c.proto))
		}
	}
	sctx, cancel := context.WithTimeout(ctx, crawlRequestTimeout)
	s, err := c.h.NewStream(network.WithNoDial(sctx, "crawl"), p.id, c.proto)
	cancel()
	if err != nil {
		var ns msmux.ErrNotSupported[protocol.ID]
		if errors.As(err, &ns) {
			return fail(crawlRefused, fmt.Errorf("does not speak %s", c.proto))
		}
		return fail(crawlFailed, err)
	}
	defer func() { _ = s.Close() }()
	stop := context.AfterFunc(ctx, func() { _ = s.Reset() })
	defer stop()

	self := kbucket.PeerKey(p.id)
	p.table = make(map[peer.ID]bool)
	var found []peer.AddrInfo
	r := wire.NewReader(s, wire.DefaultMaxMessageSize)
	for cpl := 0; cpl <= crawlMaxCPL; cpl++ {
		key, ok := kbucket.RandomPeerIDWithCPL(self, cpl, rng, 1<<(cpl+6))
		if !ok {
			continue // a 2^-64 event; the next bucket still says something
		}
		_ = s.SetDeadline(time.Now().Add(crawlRequestTimeout))
		var resp pb.Message
		err := wire.WriteMsg(s, &pb.Message{Type: pb.FindNode, Key: []byte(key)})
		if err == nil {
			err = r.ReadMsg(&resp)
		}
		if err == nil && resp.Type != pb.FindNode {
			err = fmt.Errorf("answered FIND_NODE with %s", resp.Type)
		}
		if err != nil {
			if p.asked == 0 {
				return fail(crawlFailed, err)
			}
			p.err = oneLine(err) // answered before: keep what it listed
			break
		}
		p.asked++
		deep := 0
		for _, e := range resp.CloserPeers {
			id, err := peer.IDFromBytes(e.ID)
			if err != nil || id == c.h.ID() {
				continue
			}
			ai := peer.AddrInfo{ID: id}
			for _, b := range e.Addrs {
				if a, err := ma.NewMultiaddrBytes(b); err == nil {
					ai.Addrs = append(ai.Addrs, a)
				}
			}
			p.table[id] = true
			found = append(found, ai)
			if kbucket.CommonPrefixLen(self, kbucket.PeerKey(id)) >= cpl {
				deep++
			}
		}
		// The answer lists bucket cpl first, then the deeper buckets:
		// short of k, it listed all of them.
		if deep < crawlK {
			break
		}
	}
	p.state = crawlAnswered
	return found
}

// crawlSummary is what crawl prints; with --json, as one document.
type crawlSummary struct {
	Protocol  string         `json:"protocol"`
	Seconds   float64        `json:"seconds"`
	Found     int            `json:"found"`
	Answered  int            `json:"answered"`
	Failed    int            `json:"failed"`
	Refused   int            `json:"refused"`
	Unvisited int            `json:"unvisited"`
	Agents    map[string]int `json:"agents"`
	Protocols map[string]int `json:"protocols"`
	// Tables is the spread of routing table sizes: the distinct peers each
	// answering server listed.
	Tables struct {
		Min    int `json:"min"`
		Median int `json:"median"`
		Max    int `json:"max"`
	} `json:"table_sizes"`
	// Estimate is the network size the answering servers' nearest peers
	// suggest (the median of their estimates; 0 when no server listed k
	// peers), EstimateFrom how many servers gave one.
	Estimate     int             `json:"size_estimate"`
	EstimateFrom int             `json:"size_estimate_servers"`
	Peers        []crawlPeerJSON `json:"peers"`
}

type crawlPeerJSON struct {
	ID        string   `json:"id"`
	Addrs     []string `json:"addrs"`
	State     string   `json:"state"`
	Error     string   `json:"error,omitempty"`
	Agent     string   `json:"agent,omitempty"`
	Protocols []string `json:"protocols,omitempty"`
	TableSize int      `json:"table_size"`
}

func (r *crawlResult) summary() *crawlSummary {
	s := &crawlSummary{
		Protocol: string(r.protocol), Seconds: r.took.Round(time.Millisecond).Seconds(), Found: len(r.peers),
		Agents: map[string]int{}, Protocols: map[string]int{}, Peers: []crawlPeerJSON{},
	}
	var sizes, estimates []int
	for _, p := range r.peers {
		switch p.state {
		case crawlAnswered:
			s.Answered++
			sizes = append(sizes, len(p.table))
			if n, ok := sizeEstimate(p); ok {
				estimates = append(estimates, n)
			}
		case crawlFailed:
			s.Failed++
		case crawlRefused:
			s.Refused++
		default:
			s.Unvisited++
		}
		if p.state == crawlAnswered || p.state == crawlRefused {
			s.Agents[cmp.Or(p.agent, "(none)")]++
			for _, pr := range p.protocols {
				s.Protocols[pr]++
			}
		}
		j := crawlPeerJSON{ID: p.id.String(), Addrs: []string{}, State: p.state, Error: p.err,
			Agent: p.agent, Protocols: p.protocols, TableSize: len(p.table)}
		for _, a := range p.addrs {
			j.Addrs = append(j.Addrs, a.String())
		}
		s.Peers = append(s.Peers, j)
	}
	if len(sizes) > 0 {
		slices.Sort(sizes)
		s.Tables.Min, s.Tables.Median, s.Tables.Max = sizes[0], sizes[len(sizes)/2], sizes[len(sizes)-1]
	}
	if len(estimates) > 0 {
		slices.Sort(estimates)
		s.Estimate, s.EstimateFrom = estimates[len(estimates)/2], len(estimates)
	}
	return s
}

// sizeEstimate is the network size p's own nearest peers suggest, with
// the estimator the DHT uses for itself: with N peers spread uniformly,
// the i-th nearest to a server lies at about i/(N+1) of the keyspace.
// The server's table holds its nearest peers (its deepest buckets are
// never full), and the crawl asked for every one of them.
func sizeEstimate(p *crawlPeer) (int, bool) {
	self := kbucket.PeerKey(p.id)
	near := make([]peer.ID, 0, len(p.table))
	for id := range p.table {
		near = append(near, id)
	}
	if len(near) < crawlK {
		return 0, false
	}
	slices.SortFunc(near, func(a, b peer.ID) int {
		return kbucket.CompareDistance(kbucket.PeerKey(a), kbucket.PeerKey(b), self)
	})
	d := kbucket.KthDistance(self, near, crawlK)
	if !(d > 0) || d > 1 {
		return 0, false
	}
	// k/(N+1) counts the N peers besides the server; the network has N+1.
	return int(float64(crawlK)/d + 0.5), true
}

func (s *crawlSummary) writeText(w io.Writer) {
	fmt.Fprintf(w, "crawled %s in %.1fs\n", s.Protocol, s.Seconds)
	fmt.Fprintf(w, "servers found: %d\n", s.Found)
	fmt.Fprintf(w, "  answered:  %d\n", s.Answered)
	fmt.Fprintf(w, "  failed:    %d (no connection or no answer)\n", s.Failed)
	fmt.Fprintf(w, "  refused:   %d (do not speak %s)\n", s.Refused, s.Protocol)
	if s.Unvisited > 0 {
		fmt.Fprintf(w, "  not tried: %d (--timeout ran out)\n", s.Unvisited)
	}
	writeCounts(w, "agent versions", s.Agents)
	writeCounts(w, "protocols", s.Protocols)
	if s.Answered > 0 {
		fmt.Fprintf(w, "routing table sizes: min %d, median %d, max %d\n", s.Tables.Min, s.Tables.Median, s.Tables.Max)
	}
	if s.EstimateFrom > 0 {
		fmt.Fprintf(w, "network size: %d found, about %d estimated (median over %d %s of how close their %d nearest peers are)\n",
			s.Found, s.Estimate, s.EstimateFrom, plural(s.EstimateFrom, "server"), crawlK)
	} else {
		fmt.Fprintf(w, "network size: %d found; no server listed %d peers, too few to estimate\n", s.Found, crawlK)
	}
}

// writeCounts lists counts, most common first.
func writeCounts(w io.Writer, title string, counts map[string]int) {
	if len(counts) == 0 {
		return
	}
	fmt.Fprintf(w, "%s:\n", title)
	keys := make([]string, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b string) int { return cmp.Or(counts[b]-counts[a], strings.Compare(a, b)) })
	for _, k := range keys {
		fmt.Fprintf(w, "  %6d  %s\n", counts[k], k)
	}
}

// progressLine shows a crawl's progress on stderr: one line rewritten in
// place on a terminal, a plain line every crawlProgressEvery otherwise.
type progressLine struct {
	w     io.Writer
	tty   bool
	every time.Duration
	last  time.Time
	shown bool
}

func newProgressLine(w io.Writer) *progressLine {
	pl := &progressLine{w: w, every: crawlProgressEvery, last: time.Now()}
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		pl.tty, pl.every = true, 200*time.Millisecond
	}
	return pl
}

func (pl *progressLine) update(found, visited, answered int) {
	if time.Since(pl.last) < pl.every {
		return
	}
	pl.last = time.Now()
	line := fmt.Sprintf("crawl: %d found, %d crawled, %d answered, %d to go", found, visited, answered, found-visited)
	if pl.tty {
		fmt.Fprintf(pl.w, "\r\033[K%s", line)
		pl.shown = true
		return
	}
	fmt.Fprintln(pl.w, line)
}

// done clears a terminal's progress line.
func (pl *progressLine) done() {
	if pl.tty && pl.shown {
		fmt.Fprint(pl.w, "\r\033[K")
	}
}
