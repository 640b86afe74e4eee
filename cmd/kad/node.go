package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	leveldb "github.com/ipfs/go-ds-leveldb"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/kadlib/kad"
)

const (
	// identityFile holds the node's private key, in libp2p's protobuf
	// encoding, inside the --data directory.
	identityFile = "identity.key"
	// datastoreDir holds the leveldb datastore inside the --data
	// directory: records, provider records and the routing table.
	datastoreDir = "datastore"
	// joinTimeout bounds the wait for a bootstrap peer to enter the
	// routing table of a one-shot client.
	joinTimeout = 15 * time.Second
)

// node is a libp2p host with a kad DHT and, with --data, its datastore.
type node struct {
	h     host.Host
	d     *kad.DHT
	store *leveldb.Datastore // nil without --data
}

// startNode starts a host and a DHT as the flags say, in mode m.
func startNode(ctx context.Context, f *commonFlags, m kad.ModeOpt, defaultListen string, stderr io.Writer, extra ...kad.Option) (*node, error) {
	boot, err := f.bootstrapPeers()
	if err != nil {
		return nil, err
	}
	if err := checkPrefix(f.prefix); err != nil {
		return nil, err
	}
	if f.k < 1 {
		return nil, usagef("--bucket-size %d: must be at least 1", f.k)
	}
	listen := []string(f.listen)
	if len(listen) == 0 {
		listen = []string{defaultListen}
	}
	for _, l := range listen {
		if _, err := ma.NewMultiaddr(l); err != nil {
			return nil, usagef("--listen %q: %v", l, err)
		}
	}

	var key crypto.PrivKey
	n := &node{}
	if f.data != "" {
		if err := os.MkdirAll(f.data, 0o700); err != nil {
			return nil, fmt.Errorf("data directory: %w", err)
		}
		if key, err = loadOrCreateKey(filepath.Join(f.data, identityFile)); err != nil {
			return nil, err
		}
		n.store, err = leveldb.NewDatastore(filepath.Join(f.data, datastoreDir), nil)
		if err != nil {
			return nil, fmt.Errorf("open datastore in %s (is another kad using this directory?): %w", f.data, err)
		}
	} else {
		if key, _, err = crypto.GenerateEd25519Key(rand.Reader); err != nil {
			return nil, fmt.Errorf("generate identity: %w", err)
		}
	}

	n.h, err = libp2p.New(libp2p.Identity(key), libp2p.ListenAddrStrings(listen...))
	if err != nil {
		return nil, errors.Join(fmt.Errorf("start libp2p host: %w", err), n.closeStore())
	}
	level := slog.LevelWarn
	if f.verbose {
		level = slog.LevelDebug
	}
	opts := []kad.Option{
		kad.ProtocolPrefix(protocol.ID(f.prefix)),
		kad.Mode(m),
		kad.BucketSize(f.k),
		kad.BootstrapPeers(boot...),
		kad.NamespacedValidator(cliNamespace, cliValidator{}),
		kad.Logger(slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))),
	}
	if n.store != nil {
		opts = append(opts, kad.Datastore(n.store))
	}
	n.d, err = kad.New(ctx, n.h, append(opts, extra...)...)
	if err != nil {
		return nil, errors.Join(err, n.h.Close(), n.closeStore())
	}
	return n, nil
}

func checkPrefix(p string) error {
	if p == "" || p[0] != '/' || p[len(p)-1] == '/' {
		return usagef("--prefix %q: must start with / and not end with /", p)
	}
	return nil
}

// Close stops the DHT, the host and the datastore, in that order.
func (n *node) Close() error {
	return errors.Join(n.d.Close(), n.h.Close(), n.closeStore())
}

func (n *node) closeStore() error {
	if n.store == nil {
		return nil
	}
	return n.store.Close()
}

// addrs returns the host's addresses with its /p2p/ id: what other nodes
// pass to --bootstrap.
func (n *node) addrs() []string {
	return p2pAddrs(peer.AddrInfo{ID: n.h.ID(), Addrs: n.h.Addrs()})
}

func p2pAddrs(ai peer.AddrInfo) []string {
	full, err := peer.AddrInfoToP2pAddrs(&ai)
	if err != nil {
		return nil
	}
	out := make([]string, len(full))
	for i, a := range full {
		out[i] = a.String()
	}
	return out
}

// join connects a one-shot client to its bootstrap peers and waits until
// one of them is in the routing table: enough to start a lookup, which
// finds the rest of the network by itself. (Bootstrap would also fill the
// table's far buckets, which a single operation does not need.)
func (n *node) join(ctx context.Context, boot []peer.AddrInfo) error {
	if len(boot) == 0 {
		return usagef("no bootstrap peer: give --bootstrap <multiaddr> (an address kad serve printed) or set $%s", bootstrapEnv)
	}
	ctx, cancel := context.WithTimeout(ctx, joinTimeout)
	defer cancel()
	errs := make(chan error, len(boot))
	for _, ai := range boot {
		go func() { errs <- n.h.Connect(ctx, ai) }()
	}
	var firstErr error
	connected := 0
	for range boot {
		if err := <-errs; err != nil {
			firstErr = cmpOr(firstErr, err)
		} else {
			connected++
		}
	}
	if connected == 0 {
		return fmt.Errorf("cannot reach any bootstrap peer: %w", firstErr)
	}
	// Wait for identify to tell which peers speak our protocol, and for the
	// DHT to check one of them and take it into its table.
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for n.d.RoutingTable().Size() == 0 {
		if other := n.otherProtocol(boot); other != "" {
			return fmt.Errorf("the bootstrap peers do not speak %s (%s): do the --prefix flags match?", n.d.Protocol(), other)
		}
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return fmt.Errorf("no bootstrap peer answered on %s within %v (do the --prefix flags match?)", n.d.Protocol(), joinTimeout)
			}
			return ctx.Err()
		case <-tick.C:
		}
	}
	return nil
}

// otherProtocol returns, once identify has run with every connected
// bootstrap peer and none of them speaks our DHT protocol, the DHT
// protocols they speak instead (or "none"); otherwise "".
func (n *node) otherProtocol(boot []peer.AddrInfo) string {
	var others []string
	identified := 0
	for _, ai := range boot {
		if n.h.Network().Connectedness(ai.ID) != network.Connected {
			continue
		}
		protos, err := n.h.Peerstore().GetProtocols(ai.ID)
		if err != nil || len(protos) == 0 {
			return "" // not identified yet
		}
		identified++
		for _, p := range protos {
			if p == n.d.Protocol() {
				return ""
			}
			if strings.HasSuffix(string(p), "/kad/1.0.0") {
				others = append(others, string(p))
			}
		}
	}
	if identified == 0 {
		return ""
	}
	if len(others) == 0 {
		return "they speak no kad protocol"
	}
	return "they speak " + strings.Join(others, ", ")
}

func cmpOr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// loadOrCreateKey reads the identity key at path, creating it (ed25519,
// readable by its owner only) on first use.
func loadOrCreateKey(path string) (crypto.PrivKey, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		k, err := crypto.UnmarshalPrivateKey(b)
		if err != nil {
			return nil, fmt.Errorf("identity key %s: %w", path, err)
		}
		return k, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("identity key: %w", err)
	}
	k, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate identity: %w", err)
	}
	b, err = crypto.MarshalPrivateKey(k)
	if err != nil {
		return nil, fmt.Errorf("encode identity: %w", err)
	}
	// O_EXCL: two processes creating the key at once must not end up
	// with different identities.
	fh, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return loadOrCreateKey(path)
	}
	if err != nil {
		return nil, fmt.Errorf("identity key: %w", err)
	}
	if _, err := fh.Write(b); err != nil {
		_ = fh.Close()
		return nil, fmt.Errorf("write identity key: %w", err)
	}
	if err := fh.Close(); err != nil {
		return nil, fmt.Errorf("write identity key: %w", err)
	}
	return k, nil
}
