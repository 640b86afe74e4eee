package kad

import (
	"context"
	"errors"
	"fmt"

	ds "github.com/ipfs/go-datastore"
	"github.com/ipfs/go-datastore/query"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/multiformats/go-base32"
	"golang.org/x/sync/errgroup"

	"github.com/kadlib/kad/internal/pb"
)

// rtPrefix is where the routing table is saved in the datastore, apart
// from records and provider records.
var rtPrefix = ds.NewKey("/kad/routing-table")

func rtKey(p peer.ID) ds.Key {
	return rtPrefix.ChildString(base32.RawStdEncoding.EncodeToString([]byte(p)))
}

// saveTable writes the table's peers and their addresses to the datastore,
// replacing what was saved before, so a restarted node can rejoin without
// bootstrap peers. go-libp2p-kad-dht has no equivalent.
func (tk *keeper) saveTable(ctx context.Context) error {
	store := tk.ds
	if store == nil {
		return nil
	}
	peers := tk.rt.ListPeers()
	keep := make(map[ds.Key]bool, len(peers))
	b, err := store.Batch(ctx)
	if err != nil {
		return fmt.Errorf("kad: save table: %w", err)
	}
	for _, p := range peers {
		addrs := tk.ps.Addrs(p)
		if len(addrs) == 0 {
			continue
		}
		e := tk.entries.encode(p, addrs)
		k := rtKey(p)
		keep[k] = true
		if err := b.Put(ctx, k, (&pb.Message{CloserPeers: []pb.Peer{e}}).Marshal(nil)); err != nil {
			return fmt.Errorf("kad: save table: %w", err)
		}
	}
	res, err := store.Query(ctx, query.Query{Prefix: rtPrefix.String(), KeysOnly: true})
	if err != nil {
		return fmt.Errorf("kad: save table: %w", err)
	}
	for r := range res.Next() {
		if r.Error != nil {
			break
		}
		if k := ds.NewKey(r.Key); !keep[k] {
			_ = b.Delete(ctx, k)
		}
	}
	_ = res.Close()
	if err := b.Commit(ctx); err != nil {
		return fmt.Errorf("kad: save table: %w", err)
	}
	return nil
}

// savedPeers reads the peers saved by saveTable. Entries that do not
// decode are skipped.
func (tk *keeper) savedPeers(ctx context.Context) ([]peer.AddrInfo, error) {
	res, err := tk.ds.Query(ctx, query.Query{Prefix: rtPrefix.String()})
	if err != nil {
		return nil, fmt.Errorf("kad: load table: %w", err)
	}
	defer res.Close()
	var out []peer.AddrInfo
	for r := range res.Next() {
		if r.Error != nil {
			return out, fmt.Errorf("kad: load table: %w", r.Error)
		}
		var m pb.Message
		if m.Unmarshal(r.Value) != nil {
			continue
		}
		out = append(out, decodePeers(m.CloserPeers, tk.self, 1)...)
	}
	return out, nil
}

// loadTable reconnects to the peers saved by a previous run, in the
// background: each is admitted only once it answers, as any new peer.
func (tk *keeper) loadTable() {
	peers, err := tk.savedPeers(tk.own.ctx)
	if err != nil {
		tk.log.Debug("load routing table", "err", err)
	}
	if len(peers) == 0 {
		return
	}
	var g errgroup.Group
	g.SetLimit(maintainConcurrency)
	for _, ai := range peers {
		if len(ai.Addrs) == 0 {
			continue
		}
		if tk.own.ctx.Err() != nil {
			break
		}
		tk.ps.AddAddrs(ai.ID, ai.Addrs, peerstore.TempAddrTTL)
		g.Go(func() error {
			// Go may have waited for a slot while the DHT closed.
			if tk.own.ctx.Err() != nil {
				return nil
			}
			ctx, cancel := context.WithTimeout(tk.own.ctx, tk.requestTimeout)
			defer cancel()
			if err := tk.addPeer(ctx, ai); err != nil && !errors.Is(err, context.Canceled) {
				tk.log.Debug("saved peer unreachable", "peer", ai.ID, "err", err)
			}
			return nil
		})
	}
	_ = g.Wait() // no task returns an error
}
