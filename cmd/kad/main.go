// Command kad is a small command-line node of the kad Kademlia DHT.
//
//	kad serve --data <dir> [--listen <multiaddr>]... [--bootstrap <multiaddr>]... [--prefix /myapp] [--provide <cid>]...
//	kad put <name> <value|->
//	kad get <name>
//	kad provide <cid> | --file <file|->
//	kad crawl
//	kad findprovs <cid>
//	kad findpeer <peer-id>
//	kad closest <key|peer-id>
//
// "kad serve" runs a long-lived server node with a persistent identity and
// datastore in <dir> and prints its multiaddrs. Every other command starts
// a short-lived client node, connects to the --bootstrap peers (or those
// in $KAD_BOOTSTRAP), runs one operation, prints the result (as JSON with
// --json) and exits. "kad help <command>" tells more.
//
// Values live under the /kad-cli/ namespace, which every kad command
// validates the same way (see "kad help put"). Errors are one line on
// stderr and a non-zero exit status: 1 when the operation failed, 2 for a
// usage mistake.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// Exit statuses.
const (
	exitOK    = 0
	exitFail  = 1 // the operation failed
	exitUsage = 2 // the command line is wrong
)

// usageError is a mistake on the command line.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// env is what a command runs with.
type env struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	flags          *commonFlags
}

// command is one subcommand.
type command struct {
	name    string
	args    string // positional arguments, for usage
	nargs   int    // exact number of positional arguments; -1: run checks them
	summary string
	help    string               // the long help, after the usage line
	setup   func(f *commonFlags) // registers command-specific flags
	run     func(ctx context.Context, e *env, args []string) error
}

var commands []*command

func findCommand(name string) *command {
	for _, c := range commands {
		if c.name == name {
			return c
		}
	}
	return nil
}

// run runs the command line args and returns the exit status.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		printUsage(stderr)
		return exitUsage
	}
	name := args[0]
	switch name {
	case "help", "-h", "-help", "--help":
		if len(args) > 1 {
			c := findCommand(args[1])
			if c == nil {
				fmt.Fprintf(stderr, "kad help: unknown command %q\n", args[1])
				return exitUsage
			}
			printCommandUsage(stdout, c)
			return exitOK
		}
		printUsage(stdout)
		return exitOK
	}
	c := findCommand(name)
	if c == nil {
		fmt.Fprintf(stderr, "kad: unknown command %q (run kad help)\n", name)
		return exitUsage
	}
	f, pos, err := parseArgs(c, args[1:])
	if errors.Is(err, errHelp) {
		printCommandUsage(stdout, c)
		return exitOK
	}
	if err == nil && c.nargs >= 0 && len(pos) != c.nargs {
		err = usagef("want %s, got %d argument(s)", argsOrNone(c.args), len(pos))
	}
	if err != nil {
		fmt.Fprintf(stderr, "kad %s: %s (see kad help %s)\n", c.name, oneLine(err), c.name)
		return exitUsage
	}
	err = c.run(ctx, &env{stdin: stdin, stdout: stdout, stderr: stderr, flags: f}, pos)
	if err == nil {
		return exitOK
	}
	var ue *usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(stderr, "kad %s: %s (see kad help %s)\n", c.name, oneLine(err), c.name)
		return exitUsage
	}
	if ctx.Err() != nil && errors.Is(err, context.Canceled) {
		fmt.Fprintf(stderr, "kad %s: interrupted\n", c.name)
		return exitFail
	}
	fmt.Fprintf(stderr, "kad %s: %s\n", c.name, oneLine(err))
	return exitFail
}

func argsOrNone(a string) string {
	if a == "" {
		return "no arguments"
	}
	return a
}

// oneLine renders err on one line, without the library's "kad: " prefixes
// that the command name already says.
func oneLine(err error) string {
	s := strings.ReplaceAll(err.Error(), "kad: ", "")
	s = strings.ReplaceAll(s, "\r", "")
	return strings.Join(strings.Fields(strings.ReplaceAll(s, "\n", "; ")), " ")
}

func printUsage(w io.Writer) {
	fmt.Fprint(w, `kad is a command-line node of the kad Kademlia DHT: libp2p, wire-compatible
with the IPFS Amino DHT and the go and js libp2p DHTs.

Usage:
  kad serve --data <dir> [--listen <multiaddr>]... [--bootstrap <multiaddr>]...
            [--prefix /myapp] [--provide <cid>]...
`)
	for _, c := range commands {
		if c.name == "serve" {
			continue
		}
		fmt.Fprintf(w, "  kad %-26s %s\n", c.name+" "+c.args, c.summary)
	}
	fmt.Fprint(w, `  kad help [command]

"kad serve" runs a server node until interrupted. The other commands start
a short-lived client node, connect to the --bootstrap peers (or those in
$KAD_BOOTSTRAP, separated by spaces or commas), run one operation, print
the result (JSON with --json) and exit.

Try it: in one terminal
  kad serve --data ./node1 --listen /ip4/127.0.0.1/tcp/4001
and in another, with one of the /p2p/ addresses it printed:
  export KAD_BOOTSTRAP=/ip4/127.0.0.1/tcp/4001/p2p/12D3KooW...
  kad put greeting "hello, world"
  kad get greeting

Every node of one network must use the same --prefix (default /ipfs: the
protocol id /ipfs/kad/1.0.0 of the public IPFS Amino DHT).
`)
}

func printCommandUsage(w io.Writer, c *command) {
	fmt.Fprintf(w, "Usage: kad %s [flags] %s\n\n%s\n\nFlags:\n", c.name, c.args, strings.TrimSpace(c.help))
	f := newFlags(c)
	f.fs.SetOutput(w)
	printFlags(w, f)
}
