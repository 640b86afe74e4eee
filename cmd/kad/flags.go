package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
)

// errHelp is returned by parseArgs for -h and --help.
var errHelp = errors.New("help requested")

// bootstrapEnv names the environment variable read when no --bootstrap
// flag is given.
const bootstrapEnv = "KAD_BOOTSTRAP"

// commonFlags are the flags of every command, plus the few that only some
// commands register.
type commonFlags struct {
	fs        *flag.FlagSet
	bootstrap stringList
	listen    stringList
	prefix    string
	data      string
	json      bool
	verbose   bool
	timeout   time.Duration
	k         int        // --bucket-size
	provide   stringList // serve
	count     int        // findprovs

	// serve: where to serve Prometheus metrics and the status page.
	metricsAddr, httpAddr string
}

// stringList is a repeatable flag; each use may also hold a
// comma-separated list.
type stringList []string

func (l *stringList) String() string { return strings.Join(*l, ",") }

func (l *stringList) Set(s string) error {
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			*l = append(*l, v)
		}
	}
	return nil
}

func newFlags(c *command) *commonFlags {
	f := &commonFlags{fs: flag.NewFlagSet(c.name, flag.ContinueOnError)}
	f.fs.SetOutput(io.Discard)
	f.fs.Var(&f.bootstrap, "bootstrap", "`multiaddr` of a peer to join through, with its /p2p/ id; repeatable (default $"+bootstrapEnv+")")
	f.fs.StringVar(&f.prefix, "prefix", "/ipfs", "protocol `prefix`: nodes speak <prefix>/kad/1.0.0; use your own for a private network")
	f.fs.StringVar(&f.data, "data", "", "`dir`ectory for the identity key (identity.key) and the datastore")
	f.fs.BoolVar(&f.json, "json", false, "print results as JSON")
	f.fs.BoolVar(&f.verbose, "v", false, "log the DHT's debug messages to stderr")
	f.fs.IntVar(&f.k, "bucket-size", 20, "k: the routing table's bucket size, how many peers a lookup returns and how many store each record; use the same on every node of a network")
	if c.name == "serve" {
		f.fs.Var(&f.listen, "listen", "`multiaddr` to listen on; repeatable (default /ip4/0.0.0.0/tcp/4001)")
	} else {
		f.fs.Var(&f.listen, "listen", "`multiaddr` to listen on; repeatable (default /ip4/0.0.0.0/tcp/0)")
		f.fs.DurationVar(&f.timeout, "timeout", time.Minute, "give up after this long")
	}
	if c.setup != nil {
		c.setup(f)
	}
	return f
}

// parseArgs parses flags placed anywhere among the positional arguments
// ("kad get greeting --json" works); after "--" everything is positional.
func parseArgs(c *command, args []string) (*commonFlags, []string, error) {
	f := newFlags(c)
	var pos []string
	for {
		if err := f.fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, nil, errHelp
			}
			return nil, nil, &usageError{msg: err.Error()}
		}
		rest := f.fs.Args()
		if consumed := len(args) - len(rest); consumed > 0 && args[consumed-1] == "--" {
			pos = append(pos, rest...)
			break
		}
		if len(rest) == 0 {
			break
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
	if len(f.bootstrap) == 0 {
		_ = f.bootstrap.Set(strings.Join(strings.Fields(os.Getenv(bootstrapEnv)), ","))
	}
	return f, pos, nil
}

// bootstrapPeers parses the --bootstrap multiaddrs into one AddrInfo per
// peer.
func (f *commonFlags) bootstrapPeers() ([]peer.AddrInfo, error) {
	var addrs []ma.Multiaddr
	for _, s := range f.bootstrap {
		a, err := ma.NewMultiaddr(s)
		if err != nil {
			return nil, usagef("--bootstrap %q: %v", s, err)
		}
		addrs = append(addrs, a)
	}
	infos, err := peer.AddrInfosFromP2pAddrs(addrs...)
	if err != nil {
		return nil, usagef("--bootstrap: %v (each address must end in /p2p/<peer-id>)", err)
	}
	return infos, nil
}

// printFlags lists the flags of f in the "--name" form the help uses.
func printFlags(w io.Writer, f *commonFlags) {
	f.fs.VisitAll(func(fl *flag.Flag) {
		name, usage := flag.UnquoteUsage(fl)
		dash := "--"
		if len(fl.Name) == 1 {
			dash = "-"
		}
		line := "  " + dash + fl.Name
		if name != "" {
			line += " <" + name + ">"
		}
		def := ""
		if fl.DefValue != "" && fl.DefValue != "false" && fl.DefValue != "[]" && !strings.Contains(usage, "(default") {
			def = fmt.Sprintf(" (default %s)", fl.DefValue)
		}
		fmt.Fprintf(w, "%s\n      %s%s\n", line, usage, def)
	})
}
