// Command phonebook runs a small kad network on loopback TCP, in one
// process, and uses it as a phone book.
//
//	go run ./examples/phonebook [-n 20] [-entries 30] [-k 5] [-seed 1]
//
// It starts n real go-libp2p hosts, each with a kad node in server mode on
// a private protocol ("/phonebook/kad/1.0.0"), joins them through the
// first one, and has each node write part of the phone book as values
// under the "phone" namespace: key "/phone/<name>", value
// "<revision>:<number>", checked by a validator of its own. Each entry
// lands on the k nodes closest to its key. Then every name is looked up
// from a node that holds no copy, and the program prints who answered,
// in how many hops and how fast.
//
// The identities (and so who stores what) and the phone book come from
// -seed, so a run can be repeated; timings and which copy arrives first
// vary.
package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/routing"

	"github.com/kadlib/kad"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "phonebook:", err)
		os.Exit(1)
	}
}

// config is what the flags set.
type config struct {
	nodes, entries, k int
	seed              uint64
}

func parseFlags(args []string, out io.Writer) (config, error) {
	var c config
	fs := flag.NewFlagSet("phonebook", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.IntVar(&c.nodes, "n", 20, "number of kad nodes to start")
	fs.IntVar(&c.entries, "entries", 30, "number of phone book entries")
	fs.IntVar(&c.k, "k", 5, "replication: each entry is stored on the k nodes closest to its key")
	fs.Uint64Var(&c.seed, "seed", 1, "seed for node identities and the phone book")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	switch {
	case fs.NArg() > 0:
		return c, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	case c.nodes < 2:
		return c, fmt.Errorf("-n %d: need at least 2 nodes", c.nodes)
	case c.nodes > 200:
		return c, fmt.Errorf("-n %d: at most 200 nodes in one process", c.nodes)
	case c.entries < 1:
		return c, fmt.Errorf("-entries %d: need at least 1", c.entries)
	case c.k < 1:
		return c, fmt.Errorf("-k %d: need at least 1", c.k)
	}
	return c, nil
}

// node is one member of the network.
type node struct {
	name string // "node 7"
	h    host.Host
	d    *kad.DHT
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
	rng := rand.New(rand.NewChaCha8(seedBytes(cfg.seed)))
	book := makeBook(rng, cfg.entries)

	fmt.Fprintf(stdout, "kad phonebook: %d nodes on 127.0.0.1, k=%d, %d entries, seed %d\n",
		cfg.nodes, cfg.k, cfg.entries, cfg.seed)

	// Start the nodes. Node 0 is the network's bootstrap peer.
	nodes := make([]*node, 0, cfg.nodes)
	defer func() {
		for _, n := range nodes {
			_ = n.d.Close()
			_ = n.h.Close()
		}
	}()
	// Keep the library's own logging to real trouble: the table is the
	// output here.
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	var first peer.AddrInfo
	for i := range cfg.nodes {
		n, err := startNode(ctx, i, identity(rng), cfg.k, logger, first)
		if err != nil {
			return err
		}
		nodes = append(nodes, n)
		if i == 0 {
			first = peer.AddrInfo{ID: n.h.ID(), Addrs: n.h.Addrs()}
		}
	}
	fmt.Fprintf(stdout, "started %d nodes; node 0 is %s\n", len(nodes), first.ID)

	if err := join(ctx, nodes, stdout); err != nil {
		return err
	}
	if err := store(ctx, nodes, book, stdout); err != nil {
		return err
	}
	rows, err := lookUp(ctx, nodes, book, rng)
	if err != nil {
		return err
	}
	printTable(stdout, rows)
	if missing := len(book) - found(rows); missing > 0 {
		return fmt.Errorf("%d of %d names not found", missing, len(book))
	}
	return nil
}

// startNode starts host i and its kad node, which bootstraps from boot
// (none for node 0).
func startNode(ctx context.Context, i int, id crypto.PrivKey, k int, logger *slog.Logger, boot peer.AddrInfo) (*node, error) {
	h, err := libp2p.New(libp2p.Identity(id), libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
	if err != nil {
		return nil, fmt.Errorf("node %d: start host: %w", i, err)
	}
	opts := []kad.Option{
		// A private network: its own protocol id, every node a server.
		kad.ProtocolPrefix("/phonebook"),
		kad.Mode(kad.ModeServer),
		kad.BucketSize(k),
		kad.Resiliency(min(3, k)),
		// Values under /phone/ are stored, served and read only if
		// phoneValidator accepts them.
		kad.NamespacedValidator("phone", phoneValidator{}),
		kad.Logger(logger),
	}
	if boot.ID != "" {
		opts = append(opts, kad.BootstrapPeers(boot))
	}
	d, err := kad.New(ctx, h, opts...)
	if err != nil {
		_ = h.Close()
		return nil, fmt.Errorf("node %d: %w", i, err)
	}
	return &node{name: "node " + strconv.Itoa(i), h: h, d: d}, nil
}

// join bootstraps every node but the first through node 0, one after
// another as if they arrived over time, then lets each look itself up
// once more so the early nodes learn of the late ones (the periodic
// refresh would do it on a long-running network).
func join(ctx context.Context, nodes []*node, out io.Writer) error {
	fmt.Fprintf(out, "joining through node 0:\n")
	step := max(1, len(nodes)/4)
	for i, n := range nodes[1:] {
		if err := n.d.Bootstrap(ctx); err != nil {
			return fmt.Errorf("%s: bootstrap: %w", n.name, err)
		}
		if joined := i + 2; joined%step == 0 || joined == len(nodes) {
			fmt.Fprintf(out, "  %3d/%d joined   %s\n", joined, len(nodes), tableSizes(nodes[:joined]))
		}
	}
	// Node 0 learns of the others as they contact it, once it has checked
	// that they answer: wait for that before it looks itself up.
	if err := waitTable(ctx, nodes[0]); err != nil {
		return err
	}
	for _, n := range nodes {
		if _, err := n.d.GetClosestPeers(ctx, string(n.h.ID())); err != nil {
			return fmt.Errorf("%s: self lookup: %w", n.name, err)
		}
	}
	fmt.Fprintf(out, "  network formed %s\n", tableSizes(nodes))
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

// tableSizes summarises the routing tables of nodes.
func tableSizes(nodes []*node) string {
	lo, hi, sum := -1, 0, 0
	for _, n := range nodes {
		s := n.d.RoutingTable().Size()
		if lo < 0 || s < lo {
			lo = s
		}
		hi, sum = max(hi, s), sum+s
	}
	return fmt.Sprintf("(routing tables: min %d, avg %.1f, max %d peers)", lo, float64(sum)/float64(len(nodes)), hi)
}

// store has entry i written by node i mod n.
func store(ctx context.Context, nodes []*node, book []entry, out io.Writer) error {
	total := 0
	for i, e := range book {
		w := nodes[i%len(nodes)]
		var accepted int
		if err := w.d.PutValue(ctx, e.key(), e.value(), kad.Accepted(&accepted)); err != nil {
			return fmt.Errorf("%s: put %s: %w", w.name, e.name, err)
		}
		total += accepted
	}
	fmt.Fprintf(out, "stored %d entries, each written by one node and accepted by %.1f others on average\n",
		len(book), float64(total)/float64(len(book)))
	return nil
}

// row is one line of the result table.
type row struct {
	name, number string
	asked        string // the node that looked the name up
	answered     string // the first node whose copy reached it
	hops         int64
	took         time.Duration
}

// lookUp looks every name up from a node other than its writer, and one
// without a copy of its own when there is such a node, so that the answer
// has to travel.
func lookUp(ctx context.Context, nodes []*node, book []entry, rng *rand.Rand) ([]row, error) {
	byID := make(map[peer.ID]string, len(nodes))
	for _, n := range nodes {
		byID[n.h.ID()] = n.name
	}
	var rows []row
	for i, e := range book {
		writer := nodes[i%len(nodes)]
		reader := pickReader(ctx, nodes, writer, e.key(), rng)

		// OnValue shows each copy as it arrives; the first one from
		// another node is "who answered".
		answered := ""
		seen := kad.OnValue(func(from peer.ID, _ []byte) {
			if answered == "" && from != reader.h.ID() {
				answered = byID[from]
			}
		})
		before := reader.d.Stats()
		start := time.Now()
		v, err := reader.d.GetValue(ctx, e.key(), seen)
		took := time.Since(start)
		if err != nil {
			return nil, fmt.Errorf("%s: get %s: %w", reader.name, e.name, err)
		}
		_, number, err := parseValue(v)
		if err != nil {
			return nil, fmt.Errorf("%s: get %s: %w", reader.name, e.name, err)
		}
		after := reader.d.Stats()
		if answered == "" {
			answered = "itself"
		}
		rows = append(rows, row{
			name: e.name, number: number, asked: reader.name, answered: answered,
			hops: after.LookupHops - before.LookupHops, took: took,
		})
	}
	return rows, nil
}

// pickReader returns a random node other than writer, holding no copy of
// key if there is such a node.
func pickReader(ctx context.Context, nodes []*node, writer *node, key string, rng *rand.Rand) *node {
	var without, others []*node
	for _, n := range nodes {
		if n == writer {
			continue
		}
		others = append(others, n)
		if _, err := n.d.GetValue(ctx, key, routing.Offline); err != nil {
			without = append(without, n)
		}
	}
	if len(without) > 0 {
		return without[rng.IntN(len(without))]
	}
	return others[rng.IntN(len(others))]
}

func found(rows []row) int {
	n := 0
	for _, r := range rows {
		if r.number != "" {
			n++
		}
	}
	return n
}

func printTable(out io.Writer, rows []row) {
	fmt.Fprintf(out, "\nlooking up every name from a node without a copy:\n\n")
	tw := tabwriter.NewWriter(out, 0, 0, 3, ' ', 0)
	fmt.Fprintln(tw, "NAME\tNUMBER\tASKED\tANSWERED BY\tHOPS\tTIME")
	var times []time.Duration
	var hops int64
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%.1f ms\n", r.name, r.number, r.asked, r.answered, r.hops, ms(r.took))
		times = append(times, r.took)
		hops += r.hops
	}
	_ = tw.Flush()
	slices.Sort(times)
	fmt.Fprintf(out, "\n%d/%d names found; median %.1f ms, %.1f hops on average\n",
		found(rows), len(rows), ms(times[len(times)/2]), float64(hops)/float64(len(rows)))
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// seedBytes stretches a flag seed into a ChaCha8 seed.
func seedBytes(seed uint64) [32]byte {
	var b [32]byte
	copy(b[:], strconv.FormatUint(seed, 10))
	return b
}

// identity derives a node key from rng, so -seed fixes the peer ids and
// with them which nodes are closest to which names.
func identity(rng *rand.Rand) crypto.PrivKey {
	var seed [ed25519.SeedSize]byte
	for i := range seed {
		seed[i] = byte(rng.Uint32())
	}
	k, err := crypto.UnmarshalEd25519PrivateKey(ed25519.NewKeyFromSeed(seed[:]))
	if err != nil {
		panic(err) // a 64-byte ed25519 key always unmarshals
	}
	return k
}

// The phone book.

// entry is one name and number, at revision 1.
type entry struct{ name, number string }

func (e entry) key() string   { return "/phone/" + e.name }
func (e entry) value() []byte { return []byte("1:" + e.number) }

var givenNames = strings.Fields(`
ada alan barbara brian carla chen dana diego edsger elena farah felix
grace hamid ines ivan jun katherine leslie lin maria mohamed nadia niklaus
olga omar priya radia ravi rosa sofia tarek ursula vera wei xavier yusuf
zoe anita bjarne claude donald frances gordon hedy ingrid joan ken linus
margaret noor paul quentin rob sasha tim uma vint yara`)

// makeBook returns n entries with distinct names and fictional numbers
// (the 555-01xx block is reserved for fiction).
func makeBook(rng *rand.Rand, n int) []entry {
	names := slices.Clone(givenNames)
	rng.Shuffle(len(names), func(i, j int) { names[i], names[j] = names[j], names[i] })
	book := make([]entry, n)
	for i := range book {
		name := names[i%len(names)]
		if i >= len(names) {
			name += strconv.Itoa(i/len(names) + 1)
		}
		book[i] = entry{name: name, number: fmt.Sprintf("+1 %d 555 01%02d", 200+rng.IntN(800), rng.IntN(100))}
	}
	return book
}

// phoneValidator guards the "phone" namespace. A key is /phone/<name>,
// with a name of lower-case letters and digits; a value is
// "<revision>:<number>", the number made of digits, spaces, "+" and "-".
// Of two valid values the higher revision wins, so an
// owner changes a number by putting revision 2. Every node runs the same
// validator, so none stores or serves anything else under /phone/.
type phoneValidator struct{}

// Validate implements record.Validator.
func (phoneValidator) Validate(key string, value []byte) error {
	name, ok := strings.CutPrefix(key, "/phone/")
	if !ok || name == "" || len(name) > 32 || strings.Trim(name, "abcdefghijklmnopqrstuvwxyz0123456789") != "" {
		return fmt.Errorf("phone: bad key %q", key)
	}
	_, _, err := parseValue(value)
	return err
}

// Select implements record.Validator: the highest revision, and of equal
// revisions the greatest value, so every node picks the same one.
func (phoneValidator) Select(_ string, values [][]byte) (int, error) {
	best, bestRev := -1, uint64(0)
	for i, v := range values {
		rev, _, err := parseValue(v)
		if err != nil {
			continue
		}
		if best < 0 || rev > bestRev || (rev == bestRev && bytes.Compare(v, values[best]) > 0) {
			best, bestRev = i, rev
		}
	}
	if best < 0 {
		return 0, errors.New("phone: no valid value")
	}
	return best, nil
}

// parseValue splits "<revision>:<number>".
func parseValue(v []byte) (rev uint64, number string, err error) {
	r, num, ok := strings.Cut(string(v), ":")
	if !ok {
		return 0, "", errors.New("phone: value is not <revision>:<number>")
	}
	rev, err = strconv.ParseUint(r, 10, 64)
	if err != nil || rev == 0 {
		return 0, "", fmt.Errorf("phone: bad revision %q", r)
	}
	if len(num) < 3 || len(num) > 32 || strings.Trim(num, "0123456789 +-") != "" || !strings.ContainsAny(num, "0123456789") {
		return 0, "", fmt.Errorf("phone: bad number %q", num)
	}
	return rev, num, nil
}
