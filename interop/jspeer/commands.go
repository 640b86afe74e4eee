package jspeer

import (
	"context"
	"encoding/base64"
	"fmt"
	"strings"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/multiformats/go-multiaddr"
)

// Keys and values always travel base64-encoded: JSON strings cannot carry
// arbitrary bytes (a /pk/ key holds a binary multihash).
func keyArgs(key string) map[string]any {
	return map[string]any{"keyBase64": base64.StdEncoding.EncodeToString([]byte(key))}
}

// PeerError is one peer's failure inside a js query.
type PeerError struct {
	Peer  string `json:"peer"`
	Error string `json:"error"`
}

func joinPeerErrors(errs []PeerError) string {
	if len(errs) == 0 {
		return "no error reported"
	}
	parts := make([]string, len(errs))
	for i, e := range errs {
		parts[i] = e.Peer + ": " + e.Error
	}
	return strings.Join(parts, "; ")
}

// Connect dials addr, which must end in /p2p/<id>.
func (p *Peer) Connect(ctx context.Context, addr multiaddr.Multiaddr) error {
	return p.Call(ctx, "connect", map[string]any{"addr": addr.String()}, nil)
}

// ConnectInfo dials the first address of info that works.
func (p *Peer) ConnectInfo(ctx context.Context, info peer.AddrInfo) error {
	addrs, err := peer.AddrInfoToP2pAddrs(&info)
	if err != nil {
		return fmt.Errorf("jspeer connect: %w", err)
	}
	var errs []string
	for _, a := range addrs {
		err := p.Connect(ctx, a)
		if err == nil {
			return nil
		}
		errs = append(errs, err.Error())
	}
	return fmt.Errorf("jspeer connect %s: %s", info.ID, strings.Join(errs, "; "))
}

// PutResult says which peers the js node stored a record on.
type PutResult struct {
	// Stored lists the peers that echoed the PUT_VALUE back unchanged.
	Stored []string `json:"stored"`
	// Errors lists the peers that failed during the lookup or the store,
	// including "Value not put correctly" for a bad echo.
	Errors []PeerError `json:"errors"`
}

// PutResult runs dht.put and reports what each peer did with it. The js node
// always keeps the record itself as well.
func (p *Peer) PutResult(ctx context.Context, key string, value []byte) (PutResult, error) {
	args := keyArgs(key)
	args["valueBase64"] = base64.StdEncoding.EncodeToString(value)
	var res PutResult
	err := p.Call(ctx, "put", args, &res)
	return res, err
}

// Put stores value under key through the js node. It fails if no remote peer
// acknowledged the record.
func (p *Peer) Put(ctx context.Context, key string, value []byte) error {
	res, err := p.PutResult(ctx, key, value)
	if err != nil {
		return err
	}
	if len(res.Stored) == 0 {
		return fmt.Errorf("jspeer put %q: no peer stored the record: %s", key, joinPeerErrors(res.Errors))
	}
	return nil
}

// Get returns the best value the js node finds for key (its own copy
// included), after it has sent corrections to peers holding worse ones.
// A key nobody has gives an error matching ErrNotFound.
func (p *Peer) Get(ctx context.Context, key string) ([]byte, error) {
	v, _, err := p.GetFrom(ctx, key)
	return v, err
}

// GetFrom is Get that also says which peer the value came from (the js
// node itself for its own copy): of equal values, the first received.
func (p *Peer) GetFrom(ctx context.Context, key string) ([]byte, peer.ID, error) {
	var res struct {
		ValueBase64 string `json:"valueBase64"`
		From        string `json:"from"`
	}
	if err := p.Call(ctx, "get", keyArgs(key), &res); err != nil {
		return nil, "", err
	}
	v, err := base64.StdEncoding.DecodeString(res.ValueBase64)
	if err != nil {
		return nil, "", fmt.Errorf("jspeer get: bad value: %w", err)
	}
	from, err := peer.Decode(res.From)
	if err != nil {
		return nil, "", fmt.Errorf("jspeer get: bad from %q: %w", res.From, err)
	}
	return v, from, nil
}

// GetLocal returns the record the js node itself stores under key, without
// a lookup: proof that a PUT_VALUE was kept, which the echo is not
// (kad-dht 15 echoes records it refused). No record gives an error
// matching ErrNotFound.
func (p *Peer) GetLocal(ctx context.Context, key string) ([]byte, error) {
	var res struct {
		ValueBase64 string `json:"valueBase64"`
	}
	if err := p.Call(ctx, "getLocal", keyArgs(key), &res); err != nil {
		return nil, err
	}
	v, err := base64.StdEncoding.DecodeString(res.ValueBase64)
	if err != nil {
		return nil, fmt.Errorf("jspeer getLocal: bad value: %w", err)
	}
	return v, nil
}

// ProvideResult says which peers the js node sent ADD_PROVIDER to.
type ProvideResult struct {
	// Sent lists the peers the ADD_PROVIDER message was written to (it has
	// no answer, so this says nothing about whether they kept it).
	Sent   []string    `json:"sent"`
	Errors []PeerError `json:"errors"`
}

// ProvideResult runs dht.provide and reports where the record went. The js
// node records itself as a provider too. js handles provider keys only for
// sha2-256 multihashes.
func (p *Peer) ProvideResult(ctx context.Context, c cid.Cid) (ProvideResult, error) {
	var res ProvideResult
	err := p.Call(ctx, "provide", map[string]any{"cid": c.String()}, &res)
	return res, err
}

// Provide announces the js node as a provider of c. It fails if the record
// was sent to no remote peer.
func (p *Peer) Provide(ctx context.Context, c cid.Cid) error {
	res, err := p.ProvideResult(ctx, c)
	if err != nil {
		return err
	}
	if len(res.Sent) == 0 {
		return fmt.Errorf("jspeer provide %s: sent to no peer: %s", c, joinPeerErrors(res.Errors))
	}
	return nil
}

type peerJSON struct {
	ID    string   `json:"id"`
	Addrs []string `json:"addrs"`
}

func (pj peerJSON) addrInfo() (peer.AddrInfo, error) {
	id, err := peer.Decode(pj.ID)
	if err != nil {
		return peer.AddrInfo{}, fmt.Errorf("bad peer id %q: %w", pj.ID, err)
	}
	info := peer.AddrInfo{ID: id}
	for _, s := range pj.Addrs {
		a, err := multiaddr.NewMultiaddr(s)
		if err != nil {
			return peer.AddrInfo{}, fmt.Errorf("bad address %q of %s: %w", s, id, err)
		}
		if transport, _ := peer.SplitAddr(a); transport != nil {
			a = transport
		}
		info.Addrs = append(info.Addrs, a)
	}
	return info, nil
}

// FindProviders looks for providers of c, stopping after count of them if
// count > 0 (else when the lookup ends). The js node lists its own provider
// records first.
func (p *Peer) FindProviders(ctx context.Context, c cid.Cid, count int) ([]peer.AddrInfo, error) {
	found, err := p.FindProvidersFrom(ctx, c, count)
	if err != nil {
		return nil, err
	}
	infos := make([]peer.AddrInfo, len(found))
	for i, f := range found {
		infos[i] = f.AddrInfo
	}
	return infos, nil
}

// FoundProvider is a provider a lookup found, with the peer that served it.
type FoundProvider struct {
	peer.AddrInfo
	// From is the peer whose GET_PROVIDERS answer listed the provider
	// first; the js node itself for its own records.
	From peer.ID
}

// FindProvidersFrom is FindProviders that also says which peer served each
// provider, so a test can check a record came through a given node.
func (p *Peer) FindProvidersFrom(ctx context.Context, c cid.Cid, count int) ([]FoundProvider, error) {
	args := map[string]any{"cid": c.String()}
	if count > 0 {
		args["count"] = count
	}
	var res struct {
		Providers []struct {
			peerJSON
			From string `json:"from"`
		} `json:"providers"`
	}
	if err := p.Call(ctx, "findProviders", args, &res); err != nil {
		return nil, err
	}
	out := make([]FoundProvider, 0, len(res.Providers))
	for _, pj := range res.Providers {
		info, err := pj.addrInfo()
		if err != nil {
			return nil, fmt.Errorf("jspeer findProviders: %w", err)
		}
		from, err := peer.Decode(pj.From)
		if err != nil {
			return nil, fmt.Errorf("jspeer findProviders: bad from %q: %w", pj.From, err)
		}
		out = append(out, FoundProvider{AddrInfo: info, From: from})
	}
	return out, nil
}

// FindPeer looks id up through the DHT. Like js's own findPeer it first
// answers from the js peer store when that already has addresses for id; use
// FindPeerNetwork to force a network lookup.
func (p *Peer) FindPeer(ctx context.Context, id peer.ID) (peer.AddrInfo, error) {
	return p.findPeer(ctx, id, true)
}

// FindPeerNetwork looks id up through the DHT without consulting the js
// peer store first.
func (p *Peer) FindPeerNetwork(ctx context.Context, id peer.ID) (peer.AddrInfo, error) {
	return p.findPeer(ctx, id, false)
}

func (p *Peer) findPeer(ctx context.Context, id peer.ID, useCache bool) (peer.AddrInfo, error) {
	var res struct {
		Peer peerJSON `json:"peer"`
	}
	args := map[string]any{"peer": id.String(), "useCache": useCache}
	if err := p.Call(ctx, "findPeer", args, &res); err != nil {
		return peer.AddrInfo{}, err
	}
	info, err := res.Peer.addrInfo()
	if err != nil {
		return peer.AddrInfo{}, fmt.Errorf("jspeer findPeer: %w", err)
	}
	return info, nil
}

func decodeIDs(cmd string, ss []string) ([]peer.ID, error) {
	ids := make([]peer.ID, 0, len(ss))
	for _, s := range ss {
		id, err := peer.Decode(s)
		if err != nil {
			return nil, fmt.Errorf("jspeer %s: bad peer id %q: %w", cmd, s, err)
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// Closest runs a getClosestPeers lookup for the raw bytes of key and returns
// the peers it ends with, closest first.
func (p *Peer) Closest(ctx context.Context, key string) ([]peer.ID, error) {
	var res struct {
		Peers []string `json:"peers"`
	}
	if err := p.Call(ctx, "closest", keyArgs(key), &res); err != nil {
		return nil, err
	}
	return decodeIDs("closest", res.Peers)
}

// RoutingTable lists the peers in the js node's routing table.
func (p *Peer) RoutingTable(ctx context.Context) ([]peer.ID, error) {
	var res struct {
		Peers []string `json:"peers"`
	}
	if err := p.Call(ctx, "routingTable", nil, &res); err != nil {
		return nil, err
	}
	return decodeIDs("routingTable", res.Peers)
}

// WaitForRoutingTable polls the js routing table until it holds every one of
// ids. Without a deadline on ctx it gives up after DefaultCallTimeout.
func (p *Peer) WaitForRoutingTable(ctx context.Context, ids ...peer.ID) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultCallTimeout)
		defer cancel()
	}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		table, err := p.RoutingTable(ctx)
		if err != nil {
			return err
		}
		missing := missingIDs(table, ids)
		if len(missing) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("jspeer: %v still missing from the routing table of %s (it has %v): %w",
				missing, p.ID, table, ctx.Err())
		case <-tick.C:
		}
	}
}

func missingIDs(have, want []peer.ID) []peer.ID {
	set := make(map[peer.ID]bool, len(have))
	for _, id := range have {
		set[id] = true
	}
	var missing []peer.ID
	for _, id := range want {
		if !set[id] {
			missing = append(missing, id)
		}
	}
	return missing
}
