package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/routing"

	"github.com/kadlib/kad"
)

// maxValue bounds what put reads: the DHT's default record limit is
// 64 KiB for key and value together.
const maxValue = 60 << 10

const clientHelp = `
It starts a short-lived client node (it asks, never answers), connects to
the --bootstrap peers or those in $KAD_BOOTSTRAP, runs the operation,
prints the result and exits. With --data <dir> the client keeps its
identity and datastore in <dir>, as serve does; it cannot share a
directory with a running serve.`

func init() {
	commands = append(commands,
		&command{
			name: "put", args: "<name> <value|->", nargs: 2,
			summary: "store a value under /kad-cli/<name>",
			help: `
Stores <value> (or standard input, for "-") under the key /kad-cli/<name>
on the k peers closest to the key, and prints how many accepted it.
` + clientHelp + `

Values need a validator on every node that stores them. kad's commands
register one for the /kad-cli/ namespace: any data up to 60 KiB, and the
newest write wins (the value is stored as "<unix nanoseconds>\n<data>").
It checks nothing about who wrote a value: anyone can overwrite it. Other
DHT implementations do not know the namespace and refuse these records,
so on the public IPFS network a put reaches no peer: use kad serve nodes
with your own --prefix.`,
			run: put,
		},
		&command{
			name: "get", args: "<name>", nargs: 1,
			summary: "print the value under /kad-cli/<name>",
			help: `
Looks up /kad-cli/<name> and prints the newest value found (with --json,
also when it was written).
` + clientHelp,
			run: get,
		},
		&command{
			name: "provide", args: "<cid> | --file <f>", nargs: -1,
			summary: "announce this client as a provider of <cid>",
			help: `
Announces to the k peers closest to <cid> that this node provides it.

With --file, announces every CID listed in <file> (or standard input,
for "-"), one per line; blank lines and lines starting with # are
skipped. The keys are announced together (ProvideMany): about one
lookup per keyspace subtree of k/2 to k peers rather than per key. A
progress bar on stderr (on a terminal) shows the keys placed, the
lookups, the rate and the time left; then a summary is printed (--json: the ProvideReport).
` + clientHelp + `

The provider record names this client, which exits right after: finders
get a peer that is gone. That is enough to try content routing out; to
announce content a long-running node holds, give the CIDs to that node:
kad serve --provide <cid>, or Provide in your application. With --data
the record names the identity kept in <dir>, so a kad serve started later
on that directory is the provider (its addresses are found by findpeer).`,
			setup: func(f *commonFlags) {
				f.fs.String("file", "", "announce the CIDs listed in `file`, one per line (\"-\": standard input)")
			},
			run: provide,
		},
		&command{
			name: "findprovs", args: "<cid>", nargs: 1,
			summary: "list the providers of <cid>",
			help: `
Looks up the providers of <cid> and prints one per line: the peer id, then
its addresses.
` + clientHelp,
			setup: func(f *commonFlags) {
				f.fs.IntVar(&f.count, "count", 20, "stop after this many providers (0: all the lookup finds)")
			},
			run: findProvs,
		},
		&command{
			name: "findpeer", args: "<peer-id>", nargs: 1,
			summary: "print a peer's addresses",
			help: `
Finds the addresses of <peer-id> and prints them, one /p2p/ multiaddr per
line.
` + clientHelp,
			run: findPeer,
		},
		&command{
			name: "closest", args: "<key|peer-id>", nargs: 1,
			summary: "list the peers closest to a key",
			help: `
Looks up the k peers closest to a key and prints their ids, closest first.
A peer id stands for that peer's own position in the keyspace; anything
else is taken as the key's bytes (for a value, the whole key:
/kad-cli/<name>).
` + clientHelp,
			run: closest,
		},
	)
}

// client starts a one-shot client node, joined to the network. The
// returned context carries --timeout.
func client(ctx context.Context, e *env) (*node, context.Context, context.CancelFunc, error) {
	f := e.flags
	boot, err := f.bootstrapPeers()
	if err != nil {
		return nil, nil, nil, err
	}
	if len(boot) == 0 {
		return nil, nil, nil, usagef("no bootstrap peer: give --bootstrap <multiaddr> (an address kad serve printed) or set $%s", bootstrapEnv)
	}
	if f.timeout <= 0 {
		return nil, nil, nil, usagef("--timeout %v: must be positive", f.timeout)
	}
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	n, err := startNode(ctx, f, kad.ModeClient, "/ip4/0.0.0.0/tcp/0", e.stderr, kad.RandomWalk(false))
	if err != nil {
		cancel()
		return nil, nil, nil, timeoutErr(ctx, err, f.timeout)
	}
	if err := n.join(ctx, boot); err != nil {
		cancel()
		return nil, nil, nil, errors.Join(timeoutErr(ctx, err, f.timeout), n.Close())
	}
	return n, ctx, cancel, nil
}

// withClient runs op on a one-shot client and closes it.
func withClient(ctx context.Context, e *env, op func(ctx context.Context, n *node) error) (err error) {
	n, ctx, cancel, err := client(ctx, e)
	if err != nil {
		return err
	}
	defer cancel()
	defer func() { err = errors.Join(err, n.Close()) }()
	return timeoutErr(ctx, op(ctx, n), e.flags.timeout)
}

// timeoutErr says "timed out" rather than a deadline buried in a chain.
func timeoutErr(ctx context.Context, err error, d time.Duration) error {
	if err != nil && errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("timed out after %v (--timeout)", d)
	}
	return err
}

func put(ctx context.Context, e *env, args []string) error {
	key, err := cliKey(args[0])
	if err != nil {
		return err
	}
	data := []byte(args[1])
	if args[1] == "-" {
		if data, err = io.ReadAll(io.LimitReader(e.stdin, maxValue+1)); err != nil {
			return fmt.Errorf("read standard input: %w", err)
		}
	}
	if len(data) > maxValue {
		return usagef("value over %d bytes", maxValue)
	}
	return withClient(ctx, e, func(ctx context.Context, n *node) error {
		var accepted int
		err := n.d.PutValue(ctx, key, encodeValue(data, time.Now()), kad.Accepted(&accepted))
		if errors.Is(err, kad.ErrNotStored) {
			return fmt.Errorf("put %s: no peer accepted it (only kad nodes know the %s namespace)", key, cliNamespace)
		}
		if err != nil {
			return err
		}
		return e.print(map[string]any{"key": key, "accepted": accepted},
			"stored %s on %d %s", key, accepted, plural(accepted, "peer"))
	})
}

func get(ctx context.Context, e *env, args []string) error {
	key, err := cliKey(args[0])
	if err != nil {
		return err
	}
	return withClient(ctx, e, func(ctx context.Context, n *node) error {
		v, err := n.d.GetValue(ctx, key)
		if errors.Is(err, routing.ErrNotFound) && ctx.Err() == nil {
			return fmt.Errorf("%s: not found", key)
		}
		if err != nil {
			return err
		}
		t, data, err := decodeValue(v)
		if err != nil {
			return err
		}
		if e.flags.json {
			return e.print(map[string]any{"key": key, "value": string(data), "written": t.UTC().Format(time.RFC3339Nano)}, "")
		}
		if len(data) > 0 && data[len(data)-1] != '\n' {
			data = append(data, '\n')
		}
		_, err = e.stdout.Write(data)
		return err
	})
}

func provide(ctx context.Context, e *env, args []string) error {
	if file := e.flags.fs.Lookup("file").Value.String(); file != "" {
		if len(args) != 0 {
			return usagef("give either <cid> or --file, not both")
		}
		return provideFile(ctx, e, file)
	}
	if len(args) != 1 {
		return usagef("want <cid> or --file <file>, got %d argument(s)", len(args))
	}
	c, err := cid.Decode(args[0])
	if err != nil {
		return usagef("%q is not a CID: %v", args[0], err)
	}
	return withClient(ctx, e, func(ctx context.Context, n *node) error {
		// Provide returns once most of the k closest peers have the
		// record and finishes the rest in the background, which a client
		// about to exit would cut off: ProvideMany returns only when
		// every send is done.
		if err := n.d.ProvideMany(ctx, []cid.Cid{c}); err != nil {
			return err
		}
		if e.flags.data == "" && !e.flags.json {
			fmt.Fprintln(e.stderr, "note: the record names this short-lived client, which is now exiting; see kad help provide")
		}
		return e.print(map[string]any{"cid": c.String(), "provider": n.h.ID().String(), "addrs": n.addrs()},
			"announced %s: provider %s", c, n.h.ID())
	})
}

// peerJSON is how peers are printed with --json.
type peerJSON struct {
	ID    string   `json:"id"`
	Addrs []string `json:"addrs"`
}

func findProvs(ctx context.Context, e *env, args []string) error {
	c, err := cid.Decode(args[0])
	if err != nil {
		return usagef("%q is not a CID: %v", args[0], err)
	}
	if e.flags.count < 0 {
		return usagef("--count %d: must not be negative", e.flags.count)
	}
	return withClient(ctx, e, func(ctx context.Context, n *node) error {
		provs, err := n.d.FindProviders(ctx, c, e.flags.count)
		if err != nil {
			return err
		}
		if len(provs) == 0 {
			return fmt.Errorf("no providers of %s found", c)
		}
		if e.flags.json {
			out := make([]peerJSON, len(provs))
			for i, p := range provs {
				out[i] = peerJSON{ID: p.ID.String(), Addrs: multiaddrs(p)}
			}
			return e.print(out, "")
		}
		for _, p := range provs {
			fmt.Fprintln(e.stdout, p.ID)
			for _, a := range multiaddrs(p) {
				fmt.Fprintf(e.stdout, "  %s\n", a)
			}
		}
		return nil
	})
}

func findPeer(ctx context.Context, e *env, args []string) error {
	id, err := peer.Decode(args[0])
	if err != nil {
		return usagef("%q is not a peer id: %v", args[0], err)
	}
	return withClient(ctx, e, func(ctx context.Context, n *node) error {
		ai, err := n.d.FindPeer(ctx, id)
		if errors.Is(err, routing.ErrNotFound) && ctx.Err() == nil {
			return fmt.Errorf("peer %s: not found", id)
		}
		if err != nil {
			return err
		}
		addrs := p2pAddrs(ai)
		if e.flags.json {
			return e.print(peerJSON{ID: id.String(), Addrs: addrs}, "")
		}
		for _, a := range addrs {
			fmt.Fprintln(e.stdout, a)
		}
		return nil
	})
}

func closest(ctx context.Context, e *env, args []string) error {
	key := args[0]
	if id, err := peer.Decode(key); err == nil {
		key = string(id)
	}
	return withClient(ctx, e, func(ctx context.Context, n *node) error {
		ids, err := n.d.GetClosestPeers(ctx, key)
		if err != nil {
			return err
		}
		if e.flags.json {
			out := make([]string, len(ids))
			for i, id := range ids {
				out[i] = id.String()
			}
			return e.print(map[string]any{"key": args[0], "peers": out}, "")
		}
		for _, id := range ids {
			fmt.Fprintln(e.stdout, id)
		}
		return nil
	})
}

// multiaddrs returns a provider's addresses as strings, without /p2p/.
func multiaddrs(ai peer.AddrInfo) []string {
	out := make([]string, len(ai.Addrs))
	for i, a := range ai.Addrs {
		out[i] = a.String()
	}
	return out
}

// print writes v as JSON with --json, else the formatted text line.
func (e *env) print(v any, format string, args ...any) error {
	if e.flags.json {
		return json.NewEncoder(e.stdout).Encode(v)
	}
	_, err := fmt.Fprintf(e.stdout, format+"\n", args...)
	return err
}

func plural(n int, word string) string {
	if n == 1 {
		return word
	}
	return word + "s"
}
