// Package dual runs two kad DHTs on one libp2p host, as IPFS nodes do: a
// WAN DHT of the public internet (the Amino DHT, /ipfs/kad/1.0.0) and a
// LAN DHT of the local network (/ipfs/lan/kad/1.0.0), and routes through
// both.
//
// The two are kept apart by their protocol ids and by address filters
// (kad.AddressFilter): the WAN side uses only peers with a public address
// (kad.PublicAddrs), the LAN side only peers reached at a private or
// loopback address (kad.PrivateAddrs). So the nodes of one home or office
// find each other and their content even with no internet access, while
// the public network never learns private addresses from this node's
// table. The layout and protocol ids match go-libp2p-kad-dht's dual
// package, so a kad dual DHT and a go one share both networks.
//
// A DHT implements go-libp2p's routing.Routing: reads ask both sides and
// keep the best answer, writes go to both and succeed when either does.
// Each side is a full *kad.DHT, reachable with WAN and LAN for anything
// the combined methods do not cover.
package dual

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/ipfs/go-cid"
	record "github.com/libp2p/go-libp2p-record"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/core/routing"

	"github.com/kadlib/kad"
)

// The protocol prefixes of the two sides: each speaks "<prefix>/kad/1.0.0".
const (
	// WANPrefix is the WAN side's prefix, the public Amino DHT's.
	WANPrefix protocol.ID = "/ipfs"
	// LANPrefix is the LAN side's prefix, as go-libp2p-kad-dht's dual
	// DHT uses for its LAN side.
	LANPrefix protocol.ID = "/ipfs/lan"
)

// ErrClosed is returned by the operations of a DHT after Close.
var ErrClosed = errors.New("dual: DHT closed")

var _ routing.Routing = (*DHT)(nil)

// Option configures a DHT in New.
type Option func(*config) error

type config struct {
	wan, lan []kad.Option
}

// DHTOption applies opts to both sides, after the side's defaults and in
// order with the other options, so a later option wins. Do not give both
// sides the same kad.Datastore this way: each side keeps its records and
// its saved routing table under the same keys; wrap one side's in a
// namespace (go-datastore's namespace package) with LanDHTOption.
func DHTOption(opts ...kad.Option) Option {
	return func(c *config) error {
		c.wan = append(c.wan, opts...)
		c.lan = append(c.lan, opts...)
		return nil
	}
}

// WanDHTOption applies opts to the WAN side only, after its defaults
// (prefix /ipfs, kad.ModeAuto, kad.AddressFilter(kad.PublicAddrs)), which
// it may override: kad.AddressFilter(kad.AnyAddrs) makes the WAN side use
// every peer, loopback ones included, which is how tests on one machine
// run it.
func WanDHTOption(opts ...kad.Option) Option {
	return func(c *config) error {
		c.wan = append(c.wan, opts...)
		return nil
	}
}

// LanDHTOption applies opts to the LAN side only, after its defaults
// (prefix /ipfs/lan, kad.ModeServer, kad.AddressFilter(kad.PrivateAddrs)),
// which it may override.
func LanDHTOption(opts ...kad.Option) Option {
	return func(c *config) error {
		c.lan = append(c.lan, opts...)
		return nil
	}
}

// DHT is a WAN and a LAN kad DHT on one host, used together. Its methods
// are safe for concurrent use.
type DHT struct {
	wan, lan *kad.DHT

	ctx    context.Context // lifetime, cancelled by Close
	cancel context.CancelFunc
	mu     sync.Mutex // orders goroutine starts before Close's wait
	closed bool
	wg     sync.WaitGroup // the merging goroutines of streaming reads

	closeOnce sync.Once
	closeErr  error
}

// New starts both DHTs on h. The WAN side speaks /ipfs/kad/1.0.0, starts
// in kad.ModeAuto (a server while AutoNAT finds the host publicly
// reachable) and uses only peers with public addresses; the LAN side
// speaks /ipfs/lan/kad/1.0.0, is a server (kad.ModeServer: on a LAN,
// AutoNAT's verdict on the internet says nothing) and uses only peers
// reached at private or loopback addresses. opts apply after these
// defaults. Both sides have kad's other defaults, the pk validator among
// them. ctx is used only during construction; the DHT lives until Close.
// Neither side contacts any peer: call Bootstrap.
func New(ctx context.Context, h host.Host, opts ...Option) (*DHT, error) {
	cfg := config{
		wan: []kad.Option{kad.ProtocolPrefix(WANPrefix), kad.Mode(kad.ModeAuto), kad.AddressFilter(kad.PublicAddrs)},
		lan: []kad.Option{kad.ProtocolPrefix(LANPrefix), kad.Mode(kad.ModeServer), kad.AddressFilter(kad.PrivateAddrs)},
	}
	for i, o := range opts {
		if o == nil {
			continue
		}
		if err := o(&cfg); err != nil {
			return nil, fmt.Errorf("dual: option %d: %w", i, err)
		}
	}
	wan, err := kad.New(ctx, h, cfg.wan...)
	if err != nil {
		return nil, fmt.Errorf("dual: WAN DHT: %w", err)
	}
	lan, err := kad.New(ctx, h, cfg.lan...)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("dual: LAN DHT: %w", err), wan.Close())
	}
	lctx, cancel := context.WithCancel(context.Background())
	return &DHT{wan: wan, lan: lan, ctx: lctx, cancel: cancel}, nil
}

// WAN returns the WAN side, the DHT of the public network.
func (d *DHT) WAN() *kad.DHT { return d.wan }

// LAN returns the LAN side, the DHT of the local network.
func (d *DHT) LAN() *kad.DHT { return d.lan }

// Close stops both sides and the reads in flight, and waits for all their
// goroutines. It does not close the host. It is safe to call more than
// once; it returns both sides' errors, joined.
func (d *DHT) Close() error {
	d.closeOnce.Do(func() {
		d.mu.Lock()
		d.closed = true
		d.mu.Unlock()
		d.cancel()
		d.wg.Wait()
		d.closeErr = errors.Join(wrapSide("WAN", d.wan.Close()), wrapSide("LAN", d.lan.Close()))
	})
	return d.closeErr
}

// goOwned runs f on a goroutine Close waits for, and reports false,
// without running f, once Close has begun.
func (d *DHT) goOwned(f func()) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return false
	}
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		f()
	}()
	return true
}

// both runs f on each side at once, waits for both, and returns their
// errors, WAN first.
func both(wan, lan *kad.DHT, f func(*kad.DHT) error) (wanErr, lanErr error) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		lanErr = f(lan)
	}()
	wanErr = f(wan)
	wg.Wait()
	return wanErr, lanErr
}

// eitherOK is nil when one side succeeded, otherwise both errors joined
// under op.
func eitherOK(op string, wanErr, lanErr error) error {
	if wanErr == nil || lanErr == nil {
		return nil
	}
	return fmt.Errorf("dual: %s: %w", op, errors.Join(wrapSide("WAN", wanErr), wrapSide("LAN", lanErr)))
}

func wrapSide(side string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s: %w", side, err)
}

// Bootstrap bootstraps both sides at once (kad.DHT.Bootstrap). It
// succeeds when either side does: a LAN with no other node, or a machine
// offline, is normal. To tell which side joined, look at each side's
// routing table or bootstrap them one by one.
func (d *DHT) Bootstrap(ctx context.Context) error {
	wanErr, lanErr := both(d.wan, d.lan, func(s *kad.DHT) error { return s.Bootstrap(ctx) })
	return eitherOK("bootstrap", wanErr, lanErr)
}

// Provide announces on both sides that this host provides c
// (kad.DHT.Provide). It succeeds when either side does.
func (d *DHT) Provide(ctx context.Context, c cid.Cid, announce bool) error {
	wanErr, lanErr := both(d.wan, d.lan, func(s *kad.DHT) error { return s.Provide(ctx, c, announce) })
	return eitherOK("provide", wanErr, lanErr)
}

// PutValue stores the value on both sides at once (kad.DHT.PutValue). It
// succeeds when either side does. opts go to both sides: do not pass
// kad.Accepted, which both would write at the same time; call each side's
// PutValue (WAN, LAN) to count acceptances.
func (d *DHT) PutValue(ctx context.Context, key string, value []byte, opts ...routing.Option) error {
	wanErr, lanErr := both(d.wan, d.lan, func(s *kad.DHT) error { return s.PutValue(ctx, key, value, opts...) })
	return eitherOK("put value", wanErr, lanErr)
}

// validator is what chooses between the sides' values: the WAN side's,
// or the LAN side's when the WAN side has values disabled.
func (d *DHT) validator() record.Validator {
	if v := d.wan.Validator(); v != nil {
		return v
	}
	return d.lan.Validator()
}

// better reports whether v is better than best for key, by the
// validator's Select; a value that does not compare loses.
func (d *DHT) better(key string, best, v []byte) bool {
	if best == nil {
		return true
	}
	if bytes.Equal(best, v) {
		return false
	}
	val := d.validator()
	if val == nil {
		return false
	}
	i, err := val.Select(key, [][]byte{best, v})
	return err == nil && i == 1
}

// GetValue reads key on both sides at once (kad.DHT.GetValue) and returns
// the better value, by the WAN side's validator, of those found; an error
// only when neither side found one. opts go to both sides, so a
// kad.OnValue function is called from both at once and must be safe for
// concurrent use.
func (d *DHT) GetValue(ctx context.Context, key string, opts ...routing.Option) ([]byte, error) {
	var wanVal, lanVal []byte
	wanErr, lanErr := both(d.wan, d.lan, func(s *kad.DHT) error {
		v, err := s.GetValue(ctx, key, opts...)
		if s == d.wan {
			wanVal = v
		} else {
			lanVal = v
		}
		return err
	})
	switch {
	case wanErr != nil && lanErr != nil:
		return nil, eitherOK("get value", wanErr, lanErr)
	case wanErr != nil:
		return lanVal, nil
	case lanErr != nil:
		return wanVal, nil
	}
	if d.better(key, wanVal, lanVal) {
		return lanVal, nil
	}
	return wanVal, nil
}

// SearchValue searches key on both sides at once (kad.DHT.SearchValue)
// and sends the first value found, then each value better than the last
// one sent, by the WAN side's validator. The channel closes when both
// searches end, ctx is done or the DHT closes; cancel ctx to stop early.
// It fails only when neither side can search. opts go to both sides, as
// for GetValue.
func (d *DHT) SearchValue(ctx context.Context, key string, opts ...routing.Option) (<-chan []byte, error) {
	ctx, cancel := context.WithCancel(ctx)
	wanCh, wanErr := d.wan.SearchValue(ctx, key, opts...)
	lanCh, lanErr := d.lan.SearchValue(ctx, key, opts...)
	if err := eitherOK("search value", wanErr, lanErr); err != nil {
		cancel()
		return nil, err
	}
	out := make(chan []byte)
	run := func() {
		defer close(out)
		defer drain(wanCh, lanCh)
		defer cancel()
		stop := context.AfterFunc(d.ctx, cancel)
		defer stop()
		var best []byte
		merge(ctx, wanCh, lanCh, func(v []byte) bool {
			if !d.better(key, best, v) {
				return true
			}
			select {
			case out <- v:
				best = v
				return true
			case <-ctx.Done():
				return false
			}
		})
	}
	if !d.goOwned(run) {
		cancel()
		drain(wanCh, lanCh)
		return nil, fmt.Errorf("dual: search value: %w", ErrClosed)
	}
	return out, nil
}

// FindProvidersAsync streams the providers of c that either side finds
// (kad.DHT.FindProvidersAsync), each peer once, as they arrive. The
// channel closes after count providers (count 0: no limit), when both
// searches end, when ctx is done or when the DHT closes. The caller need
// not drain it: the searches stop with ctx.
func (d *DHT) FindProvidersAsync(ctx context.Context, c cid.Cid, count int) <-chan peer.AddrInfo {
	out := make(chan peer.AddrInfo)
	ctx, cancel := context.WithCancel(ctx)
	wanCh := d.wan.FindProvidersAsync(ctx, c, count)
	lanCh := d.lan.FindProvidersAsync(ctx, c, count)
	run := func() {
		defer close(out)
		defer drain(wanCh, lanCh)
		defer cancel()
		stop := context.AfterFunc(d.ctx, cancel)
		defer stop()
		seen := make(map[peer.ID]bool)
		merge(ctx, wanCh, lanCh, func(ai peer.AddrInfo) bool {
			if seen[ai.ID] {
				return true
			}
			select {
			case out <- ai:
				seen[ai.ID] = true
				return count == 0 || len(seen) < count
			case <-ctx.Done():
				return false
			}
		})
	}
	if !d.goOwned(run) {
		cancel()
		drain(wanCh, lanCh)
		close(out)
	}
	return out
}

// merge passes what arrives on a and b to f until both are closed, f
// returns false, or ctx is done.
func merge[T any](ctx context.Context, a, b <-chan T, f func(T) bool) {
	for a != nil || b != nil {
		var v T
		var ok bool
		select {
		case v, ok = <-a:
			if !ok {
				a = nil
				continue
			}
		case v, ok = <-b:
			if !ok {
				b = nil
				continue
			}
		case <-ctx.Done():
			return
		}
		if !f(v) {
			return
		}
	}
}

// drain reads a and b until both are closed; their senders stop soon
// once their context is cancelled.
func drain[T any](a, b <-chan T) {
	if a != nil {
		for range a {
		}
	}
	if b != nil {
		for range b {
		}
	}
}

// FindPeer asks both sides for id's addresses at once
// (kad.DHT.FindPeer) and returns the first answer found; the other search
// is cancelled. It fails only when both do.
func (d *DHT) FindPeer(ctx context.Context, id peer.ID) (peer.AddrInfo, error) {
	ctx, cancel := context.WithCancel(ctx)
	type result struct {
		ai  peer.AddrInfo
		err error
	}
	wanRes, lanRes := make(chan result, 1), make(chan result, 1)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	for _, s := range []struct {
		dht *kad.DHT
		res chan result
	}{{d.wan, wanRes}, {d.lan, lanRes}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ai, err := s.dht.FindPeer(ctx, id)
			s.res <- result{ai, err}
		}()
	}
	var wanErr, lanErr error
	for wanRes != nil || lanRes != nil {
		var r result
		select {
		case r = <-wanRes:
			wanRes, wanErr = nil, r.err
		case r = <-lanRes:
			lanRes, lanErr = nil, r.err
		}
		if r.err == nil {
			return r.ai, nil
		}
	}
	return peer.AddrInfo{}, eitherOK("find peer "+id.String(), wanErr, lanErr)
}
