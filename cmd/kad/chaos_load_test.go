package main

// The client load of the chaos test (chaos_test.go): workers running
// random operations through in-process client nodes or kad processes.

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/kadlib/kad"
)

// work runs random operations through a until ctx is done.
func (r *chaosRun) work(ctx context.Context, w int, a actor, rng *rand.Rand) {
	provided := 0
	for ctx.Err() == nil {
		// A pause keeps the load modest on a shared machine.
		if sleepCtx(ctx, 50*time.Millisecond) != nil {
			return
		}
		opCtx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		switch p := rng.IntN(100); {
		case p < 25:
			key := fmt.Sprintf("/%s/chaos-w%d-%d", cliNamespace, w, rng.IntN(chaosKeys))
			r.mu.Lock()
			ks := r.keys[key]
			ks.attempted++
			seq := ks.attempted
			r.mu.Unlock()
			accepted, err := a.put(opCtx, key, []byte(fmt.Sprintf("%s#%d", key, seq)))
			r.count("PutValue", a, err == nil)
			r.count("PutValue, >= 3 accepted", a, err == nil && accepted >= chaosMinAccepted)
			if err == nil && accepted >= chaosMinAccepted {
				r.mu.Lock()
				ks.confirmed = max(ks.confirmed, seq)
				r.mu.Unlock()
			}
		case p < 55:
			key, want, down := r.pickKey(rng)
			if key == "" {
				break
			}
			data, err := a.get(opCtx, key)
			ok := err == nil && valueSeq(data) >= want
			r.count("GetValue", a, ok)
			if down > 0 {
				r.mu.Lock()
				r.avail[0]++
				if ok {
					r.avail[1]++
				}
				r.mu.Unlock()
			}
		case p < 70:
			c := chaosCID(fmt.Sprintf("chaos-prov-w%d-%d", w, provided))
			provided++
			prov, err := a.provide(opCtx, c)
			r.count("Provide", a, err == nil)
			if err == nil {
				r.mu.Lock()
				r.provs = append(r.provs, provRecord{c: c, provider: prov, source: a.name()})
				r.mu.Unlock()
			}
		case p < 85:
			pr, found := r.pickProvider(rng)
			if !found {
				break
			}
			got, err := a.findProvs(opCtx, pr.c)
			ok := err == nil && slices.Contains(got, pr.provider)
			r.count("FindProviders", a, ok)
			if pr.source == procName {
				r.tally("FindProviders of kad provide's records", ok)
			}
		default:
			s := r.randomUp(rng)
			if s == nil {
				break
			}
			ok, err := a.findPeer(opCtx, s.id)
			r.count("FindPeer", a, err == nil && ok)
		}
		cancel()
	}
}

// pickKey returns a key with a confirmed value, the sequence number a
// read must reach, and how many of its k closest servers are down.
// randomUp returns a random server that is up, or nil if none is.
func (r *chaosRun) randomUp(rng *rand.Rand) *chaosServer {
	var up []*chaosServer
	for _, s := range r.servers {
		if s.isUp() {
			up = append(up, s)
		}
	}
	if len(up) == 0 {
		return nil
	}
	return up[rng.IntN(len(up))]
}

func (r *chaosRun) pickKey(rng *rand.Rand) (string, int, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var keys []string
	for k, ks := range r.keys {
		if ks.confirmed >= 0 {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return "", 0, 0
	}
	sort.Strings(keys)
	k := keys[rng.IntN(len(keys))]
	down := 0
	for _, s := range r.keys[k].holders {
		if !s.isUp() {
			down++
		}
	}
	return k, r.keys[k].confirmed, down
}

// pickProvider returns a provider record announced so far: by a client,
// or by a server at its last start.
func (r *chaosRun) pickProvider(rng *rand.Rand) (provRecord, bool) {
	all := r.allProviders()
	if len(all) == 0 {
		return provRecord{}, false
	}
	return all[rng.IntN(len(all))], true
}

func (r *chaosRun) allProviders() []provRecord {
	r.mu.Lock()
	all := slices.Clone(r.provs)
	r.mu.Unlock()
	for _, s := range r.servers {
		s.mu.Lock()
		if !s.provided.IsZero() {
			all = append(all, provRecord{c: s.cid, provider: s.id, source: fmt.Sprintf("server %d at %s", s.i, s.provided.Format("15:04:05.000"))})
		}
		s.mu.Unlock()
	}
	return all
}

// newChaosClient starts an in-process client node on loopback and
// bootstraps it through the servers that are up.
func newChaosClient(ctx context.Context, servers []*chaosServer) (*kad.DHT, host.Host, error) {
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
	if err != nil {
		return nil, nil, err
	}
	var boot []peer.AddrInfo
	for _, s := range servers {
		if s.isUp() {
			boot = append(boot, peer.AddrInfo{ID: s.id, Addrs: []ma.Multiaddr{s.multiaddr()}})
		}
	}
	d, err := kad.New(ctx, h, kad.ProtocolPrefix(chaosPrefix), kad.Mode(kad.ModeClient), kad.BucketSize(chaosK),
		kad.BootstrapPeers(boot...), kad.NamespacedValidator(cliNamespace, cliValidator{}),
		kad.Logger(slog.New(slog.DiscardHandler)))
	if err != nil {
		_ = h.Close()
		return nil, nil, err
	}
	bctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := d.Bootstrap(bctx); err != nil {
		_ = d.Close()
		_ = h.Close()
		return nil, nil, fmt.Errorf("bootstrap a client: %w", err)
	}
	return d, h, nil
}

// actor runs the load's operations: through an in-process client node or
// through short-lived kad processes.
type actor interface {
	put(ctx context.Context, key string, data []byte) (accepted int, err error)
	get(ctx context.Context, key string) ([]byte, error)
	provide(ctx context.Context, c cid.Cid) (peer.ID, error)
	findProvs(ctx context.Context, c cid.Cid) ([]peer.ID, error)
	findPeer(ctx context.Context, id peer.ID) (bool, error)
	name() string
}

type inProcActor struct{ d *kad.DHT }

func (a *inProcActor) name() string { return "in-process client" }

func (a *inProcActor) put(ctx context.Context, key string, data []byte) (int, error) {
	var n int
	err := a.d.PutValue(ctx, key, encodeValue(data, time.Now()), kad.Accepted(&n))
	return n, err
}

func (a *inProcActor) get(ctx context.Context, key string) ([]byte, error) {
	v, err := a.d.GetValue(ctx, key)
	if err != nil {
		return nil, err
	}
	_, data, err := decodeValue(v)
	return data, err
}

func (a *inProcActor) provide(ctx context.Context, c cid.Cid) (peer.ID, error) {
	return a.d.Host().ID(), a.d.Provide(ctx, c, true)
}

func (a *inProcActor) findProvs(ctx context.Context, c cid.Cid) ([]peer.ID, error) {
	ais, err := a.d.FindProviders(ctx, c, 0)
	ids := make([]peer.ID, len(ais))
	for i, ai := range ais {
		ids[i] = ai.ID
	}
	return ids, err
}

func (a *inProcActor) findPeer(ctx context.Context, id peer.ID) (bool, error) {
	ai, err := a.d.FindPeer(ctx, id)
	return len(ai.Addrs) > 0, err
}

// procActor runs each operation as one "kad" process, bootstrapping
// through three servers that are up.
type procActor struct {
	r   *chaosRun
	mu  sync.Mutex
	rng *rand.Rand
}

// procName names the kad processes in the figures.
const procName = "kad process"

func (a *procActor) name() string { return procName }

func (a *procActor) run(ctx context.Context, out any, args ...string) error {
	var up []string
	for _, s := range a.r.servers {
		if s.isUp() {
			up = append(up, s.p2pAddr())
		}
	}
	a.mu.Lock()
	a.rng.Shuffle(len(up), func(i, j int) { up[i], up[j] = up[j], up[i] })
	a.mu.Unlock()
	up = up[:min(3, len(up))]
	args = append(args, "--json", "--prefix", chaosPrefix, "--bucket-size", strconv.Itoa(chaosK),
		"--timeout", "15s", "--bootstrap", strings.Join(up, ","))
	cmd := exec.CommandContext(ctx, a.r.bin, args...)
	cmd.Env = append(os.Environ(), bootstrapEnv+"=")
	b, err := cmd.Output()
	if err != nil {
		return err
	}
	return json.Unmarshal(b, out)
}

func (a *procActor) put(ctx context.Context, key string, data []byte) (int, error) {
	var out struct{ Accepted int }
	err := a.run(ctx, &out, "put", key, string(data))
	return out.Accepted, err
}

func (a *procActor) get(ctx context.Context, key string) ([]byte, error) {
	var out struct{ Value string }
	err := a.run(ctx, &out, "get", key)
	return []byte(out.Value), err
}

func (a *procActor) provide(ctx context.Context, c cid.Cid) (peer.ID, error) {
	var out struct{ Provider string }
	if err := a.run(ctx, &out, "provide", c.String()); err != nil {
		return "", err
	}
	return peer.Decode(out.Provider)
}

func (a *procActor) findProvs(ctx context.Context, c cid.Cid) ([]peer.ID, error) {
	var out []peerJSON
	err := a.run(ctx, &out, "findprovs", "--count", "0", c.String())
	var ids []peer.ID
	for _, p := range out {
		if id, err := peer.Decode(p.ID); err == nil {
			ids = append(ids, id)
		}
	}
	return ids, err
}

func (a *procActor) findPeer(ctx context.Context, id peer.ID) (bool, error) {
	var out peerJSON
	err := a.run(ctx, &out, "findpeer", id.String())
	return len(out.Addrs) > 0, err
}
