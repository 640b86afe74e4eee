// Command providers shows content routing with kad: one node holds a few
// files and announces them, the others find it through the DHT and fetch
// the files from it.
//
//	go run ./examples/providers [-n 10] [-files 3] [-k 3] [-seed 1]
//
// It starts n go-libp2p hosts on loopback TCP, each with a kad node on a
// private protocol ("/kad-example/kad/1.0.0"). Node 0 holds the files:
// each is named by its CID (the sha2-256 of its bytes), announced with
// Provide to the k nodes closest to the CID, and served over a small protocol of the example's own,
// /kad-example/fetch/1.0.0. Every other file is then fetched by another
// node that knows nothing but the CID: FindProviders gives the peer and
// its addresses, a stream on the fetch protocol gives the bytes, and the
// fetcher checks them against the CID before trusting them.
package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	mh "github.com/multiformats/go-multihash"

	"github.com/kadlib/kad"
)

// fetchProtocol is the example's own protocol: the client writes a CID and
// a newline; the server answers "<size>\n" and the bytes, or "-\n" when it
// does not have the content.
const fetchProtocol = protocol.ID("/kad-example/fetch/1.0.0")

// maxFile bounds what a fetcher accepts, so a bad peer cannot make it read
// forever.
const maxFile = 1 << 20

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "providers:", err)
		os.Exit(1)
	}
}

type config struct {
	nodes, files, k int
	seed            uint64
}

func parseFlags(args []string, out io.Writer) (config, error) {
	var c config
	fs := flag.NewFlagSet("providers", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.IntVar(&c.nodes, "n", 10, "number of kad nodes to start")
	fs.IntVar(&c.files, "files", 3, "number of files node 0 provides")
	fs.IntVar(&c.k, "k", 3, "replication: each announcement goes to the k nodes closest to the CID")
	fs.Uint64Var(&c.seed, "seed", 1, "seed for the files' contents")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	switch {
	case fs.NArg() > 0:
		return c, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	case c.nodes < 2 || c.nodes > 200:
		return c, fmt.Errorf("-n %d: need 2 to 200 nodes", c.nodes)
	case c.files < 1 || c.files > 100:
		return c, fmt.Errorf("-files %d: need 1 to 100 files", c.files)
	case c.k < 1:
		return c, fmt.Errorf("-k %d: need at least 1", c.k)
	}
	return c, nil
}

type node struct {
	name string
	h    host.Host
	d    *kad.DHT
}

// file is one piece of content node 0 holds.
type file struct {
	cid  cid.Cid
	data []byte
}

func run(ctx context.Context, args []string, stdout io.Writer) error {
	cfg, err := parseFlags(args, stdout)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	files, err := makeFiles(cfg.seed, cfg.files)
	if err != nil {
		return err
	}

	var nodes []*node
	defer func() {
		for _, n := range nodes {
			_ = n.d.Close()
			_ = n.h.Close()
		}
	}()
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	var boot []peer.AddrInfo
	for i := range cfg.nodes {
		h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
		if err != nil {
			return fmt.Errorf("node %d: start host: %w", i, err)
		}
		d, err := kad.New(ctx, h, kad.ProtocolPrefix("/kad-example"), kad.Mode(kad.ModeServer),
			kad.BucketSize(cfg.k), kad.Resiliency(min(3, cfg.k)), kad.BootstrapPeers(boot...), kad.Logger(logger))
		if err != nil {
			_ = h.Close()
			return fmt.Errorf("node %d: %w", i, err)
		}
		nodes = append(nodes, &node{name: "node " + strconv.Itoa(i), h: h, d: d})
		if i == 0 {
			boot = []peer.AddrInfo{{ID: h.ID(), Addrs: h.Addrs()}}
		}
	}
	for _, n := range nodes[1:] {
		if err := n.d.Bootstrap(ctx); err != nil {
			return fmt.Errorf("%s: bootstrap: %w", n.name, err)
		}
	}
	fmt.Fprintf(stdout, "kad providers: %d nodes on 127.0.0.1 joined through node 0\n", len(nodes))

	// Node 0 serves its files and announces each one, once it has taken
	// in the peers that joined through it (it checks they answer first).
	provider := nodes[0]
	if err := waitTable(ctx, provider); err != nil {
		return err
	}
	serveFiles(provider.h, files)
	for _, f := range files {
		start := time.Now()
		if err := provider.d.Provide(ctx, f.cid, true); err != nil {
			return fmt.Errorf("%s: provide %s: %w", provider.name, f.cid, err)
		}
		fmt.Fprintf(stdout, "node 0 provides %s (%d bytes), announced in %.1f ms\n", f.cid, len(f.data), ms(time.Since(start)))
	}

	// Each file is fetched by another node, knowing only its CID.
	names := make(map[peer.ID]string, len(nodes))
	for _, n := range nodes {
		names[n.h.ID()] = n.name
	}
	fmt.Fprintf(stdout, "\nfetching each file by its CID from another node:\n\n")
	tw := tabwriter.NewWriter(stdout, 0, 0, 3, ' ', 0)
	fmt.Fprintln(tw, "CID\tFETCHER\tPROVIDER\tFOUND IN\tFIND\tBYTES\tFETCH\tVERIFIED")
	for i, f := range files {
		fetcher := nodes[1+i%(len(nodes)-1)]
		before := fetcher.d.Stats()
		t0 := time.Now()
		prov, err := findProvider(ctx, fetcher.d, f.cid)
		if err != nil {
			return fmt.Errorf("%s: %w", fetcher.name, err)
		}
		t1 := time.Now()
		// A fetcher among the k closest has the record in its own store
		// and needs no lookup.
		via := "own store"
		if st := fetcher.d.Stats(); st.Lookups > before.Lookups {
			via = plural(int(st.LookupHops-before.LookupHops), "lookup, %d hop")
		}
		data, err := fetch(ctx, fetcher.h, prov, f.cid)
		if err != nil {
			return fmt.Errorf("%s: fetch %s from %s: %w", fetcher.name, f.cid, prov.ID, err)
		}
		t2 := time.Now()
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%.1f ms\t%d\t%.1f ms\tyes\n", short(f.cid), fetcher.name, names[prov.ID],
			via, ms(t1.Sub(t0)), len(data), ms(t2.Sub(t1)))
	}
	_ = tw.Flush()
	fmt.Fprintf(stdout, "\n%d/%d files fetched and verified\n", len(files), len(files))
	return nil
}

// waitTable waits, up to 30 s, until n has a peer in its routing table.
func waitTable(ctx context.Context, n *node) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for n.d.RoutingTable().Size() == 0 {
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: no peer in the routing table: %w", n.name, ctx.Err())
		case <-tick.C:
		}
	}
	return nil
}

// findProvider returns the first provider of c. An announcement is sent
// without an acknowledgement, so a lookup that starts the moment Provide
// returns can reach a peer that has not stored it yet: try a few times.
func findProvider(ctx context.Context, d *kad.DHT, c cid.Cid) (peer.AddrInfo, error) {
	var err error
	for try := 0; try < 5; try++ {
		var provs []peer.AddrInfo
		provs, err = d.FindProviders(ctx, c, 1)
		if err == nil && len(provs) > 0 {
			return provs[0], nil
		}
		if err == nil {
			err = fmt.Errorf("no provider of %s found", c)
		}
		select {
		case <-time.After(100 * time.Millisecond):
		case <-ctx.Done():
			return peer.AddrInfo{}, ctx.Err()
		}
	}
	return peer.AddrInfo{}, err
}

// serveFiles answers the fetch protocol on h from files.
func serveFiles(h host.Host, files []file) {
	byHash := make(map[string][]byte, len(files))
	for _, f := range files {
		byHash[string(f.cid.Hash())] = f.data
	}
	h.SetStreamHandler(fetchProtocol, func(s network.Stream) {
		defer s.Close()
		_ = s.SetDeadline(time.Now().Add(10 * time.Second))
		line, err := bufio.NewReader(io.LimitReader(s, 256)).ReadString('\n')
		if err != nil {
			_ = s.Reset()
			return
		}
		c, err := cid.Decode(strings.TrimSpace(line))
		if err != nil {
			_ = s.Reset()
			return
		}
		// By multihash: a CIDv0 and a CIDv1 of the same bytes are one file.
		data, ok := byHash[string(c.Hash())]
		if !ok {
			_, _ = io.WriteString(s, "-\n")
			return
		}
		_, _ = fmt.Fprintf(s, "%d\n", len(data))
		_, _ = s.Write(data)
	})
}

// fetch gets c from prov over the fetch protocol and checks it hashes to c.
func fetch(ctx context.Context, h host.Host, prov peer.AddrInfo, c cid.Cid) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := h.Connect(ctx, prov); err != nil {
		return nil, err
	}
	s, err := h.NewStream(ctx, prov.ID, fetchProtocol)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = s.SetDeadline(dl)
	}
	if _, err := fmt.Fprintf(s, "%s\n", c); err != nil {
		return nil, err
	}
	_ = s.CloseWrite()
	r := bufio.NewReader(s)
	head, err := r.ReadString('\n')
	if err != nil {
		return nil, fmt.Errorf("read header: %w", err)
	}
	if head == "-\n" {
		return nil, errors.New("the provider does not have it")
	}
	size, err := strconv.Atoi(strings.TrimSpace(head))
	if err != nil || size < 0 || size > maxFile {
		return nil, fmt.Errorf("bad header %q", strings.TrimSpace(head))
	}
	data := make([]byte, size)
	if _, err := io.ReadFull(r, data); err != nil {
		return nil, fmt.Errorf("read content: %w", err)
	}
	// Never trust a peer's bytes: they must hash to the CID asked for.
	got, err := c.Prefix().Sum(data)
	if err != nil {
		return nil, err
	}
	if !got.Equals(c) {
		return nil, errors.New("content does not match its CID")
	}
	return data, nil
}

// makeFiles returns n small files of seeded text, each named by a CIDv1
// (raw codec, sha2-256) of its bytes.
func makeFiles(seed uint64, n int) ([]file, error) {
	rng := rand.New(rand.NewPCG(seed, 0))
	words := strings.Fields("kademlia routes by xor distance every peer keeps buckets of peers near and far " +
		"a lookup asks the closest peers it knows for closer ones until the closest have answered")
	files := make([]file, n)
	for i := range files {
		var b bytes.Buffer
		fmt.Fprintf(&b, "file %d:", i+1)
		size := 200 + rng.IntN(2000)
		for b.Len() < size {
			b.WriteString(" " + words[rng.IntN(len(words))])
		}
		b.WriteString("\n")
		c, err := cid.V1Builder{Codec: cid.Raw, MhType: mh.SHA2_256}.Sum(b.Bytes())
		if err != nil {
			return nil, err
		}
		files[i] = file{cid: c, data: b.Bytes()}
	}
	return files, nil
}

// short abbreviates a CID for the table.
func short(c cid.Cid) string {
	s := c.String()
	return s[:8] + "…" + s[len(s)-6:]
}

// plural formats n into format, adding an "s" unless n is 1.
func plural(n int, format string) string {
	if n == 1 {
		return fmt.Sprintf(format, n)
	}
	return fmt.Sprintf(format+"s", n)
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
