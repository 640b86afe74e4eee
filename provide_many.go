package kad

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/routing"
	ma "github.com/multiformats/go-multiaddr"
	"golang.org/x/sync/errgroup"

	"github.com/kadlib/kad/internal/kbucket"
	"github.com/kadlib/kad/internal/pb"
	"github.com/kadlib/kad/internal/providers"
)

// Providing many keys. One Provide per key pays a whole lookup for each,
// though keys that sit close together in the keyspace share their k
// closest peers. ProvideMany sorts the keys by position and walks them,
// keeping every peer the lookups name. A key's k closest known peers are
// its true k closest once every peer of the smallest subtree (key prefix)
// holding them is known; a lookup whose k-th closest peer shares p
// leading bits with its target has found every peer sharing p+1 bits with
// it. So the walk looks up only where its keys need a subtree it has not
// seen whole yet, about once per subtree of k/2 to k peers, and places
// every other key locally, without a request. Each peer gets its messages
// of the keys placed between two lookups one after the other on one
// stream. Peers see nothing but ordinary ADD_PROVIDER requests.

const (
	// provideManyBatch is how many keys ProvideManyChan gathers before
	// placing them: more keys per batch share more lookups.
	provideManyBatch = 16384
	// provideManySends bounds the per-peer batch sends in flight.
	provideManySends = 64
	// provideManyWalkers is how many runs of keys are placed at once;
	// provideManyMinRun is the fewest keys worth a run of their own.
	provideManyWalkers = 16
	provideManyMinRun  = 64
	// provideManyPerStream bounds the messages written on one stream, so a
	// stream the peer resets loses little and no peer's request budget is
	// spent in one gulp.
	provideManyPerStream = 500
)

// ProvideReport counts the work of a ProvideMany, ProvideManyChan or
// reprovide pass.
type ProvideReport struct {
	Keys       int // distinct keys stored locally and announced
	Lookups    int // lookups run: about one per subtree of k/2 to k peers
	Messages   int // ADD_PROVIDER messages written to peers
	Streams    int // streams opened for them
	KeysMissed int // keys no lookup could place, or placed on no known peer
}

func (r *ProvideReport) add(o ProvideReport) {
	r.Keys += o.Keys
	r.Lookups += o.Lookups
	r.Messages += o.Messages
	r.Streams += o.Streams
	r.KeysMissed += o.KeysMissed
}

// ProvideProgress is how far a ProvideManyReport or ProvideManyChan has
// come, as given to a ProvideManyProgress func.
type ProvideProgress struct {
	// Placed is how many of Report.Keys have their closest peers found
	// and their records queued to them, or were given up on (counted in
	// Report.KeysMissed). When Placed reaches Report.Keys only sends are
	// left; ProvideManyChan takes in more keys batch by batch, so there
	// Report.Keys grows too.
	Placed int
	// Report holds the totals so far.
	Report ProvideReport
}

// provideProgress adds up ProvideProgress and calls f with each change,
// one call at a time. A nil *provideProgress does nothing.
type provideProgress struct {
	f   func(ProvideProgress)
	mu  sync.Mutex
	cur ProvideProgress
}

func newProvideProgress(opts []routing.Option) (*provideProgress, error) {
	var o routing.Options
	if err := o.Apply(opts...); err != nil {
		return nil, fmt.Errorf("kad: provide many: %w", err)
	}
	f, _ := o.Other[provideProgressKey{}].(func(ProvideProgress))
	if f == nil {
		return nil, nil
	}
	return &provideProgress{f: f}, nil
}

func (p *provideProgress) add(placed int, rep ProvideReport) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cur.Placed += placed
	p.cur.Report.add(rep)
	p.f(p.cur)
}

// provKey is a provider key with its keyspace position.
type provKey struct {
	mh  []byte
	pos kbucket.ID
}

// ProvideMany announces that this node has the content of every key, like
// Provide with announce for each, at a fraction of the cost: about one
// lookup per keyspace subtree of k/2 to k peers rather than one per key,
// and one stream per peer for many keys (see ProvideManyReport). Every key is stored locally
// first. It fails only if no announcement reached any peer, or with an
// invalid CID (before anything is sent).
func (d *DHT) ProvideMany(ctx context.Context, keys []cid.Cid) error {
	_, err := d.ProvideManyReport(ctx, keys)
	return err
}

// ProvideManyReport is ProvideMany, returning what it did: how many
// lookups it needed and how many messages it sent.
// Option: ProvideManyProgress.
func (d *DHT) ProvideManyReport(ctx context.Context, keys []cid.Cid, opts ...routing.Option) (ProvideReport, error) {
	prog, err := newProvideProgress(opts)
	if err != nil {
		return ProvideReport{}, err
	}
	return d.provs.provideMany(ctx, keys, prog)
}

// provideMany is ProvideManyReport.
func (s *providerSide) provideMany(ctx context.Context, keys []cid.Cid, prog *provideProgress) (ProvideReport, error) {
	pks := make([]provKey, 0, len(keys))
	for _, c := range keys {
		mh, err := providerKey(c)
		if err != nil {
			return ProvideReport{}, fmt.Errorf("kad: provide many: %w", err)
		}
		pks = append(pks, provKey{mh: mh, pos: kbucket.KeyForBytes(mh)})
	}
	return s.provideKeys(ctx, pks, prog)
}

// ProvideManyChan is ProvideMany for sets too large to hold at once: it
// reads keys until the channel closes, in batches of up to 16384, each
// placed as by ProvideMany. An invalid CID is skipped and logged. It fails
// if ctx ends or the DHT closes before the channel does (the keys of the
// unfinished batch are dropped), or if no announcement of any batch
// reached a peer; the report covers the batches done. Option:
// ProvideManyProgress.
func (d *DHT) ProvideManyChan(ctx context.Context, keys <-chan cid.Cid, opts ...routing.Option) (ProvideReport, error) {
	prog, err := newProvideProgress(opts)
	if err != nil {
		return ProvideReport{}, err
	}
	return d.provs.provideManyChan(ctx, keys, prog)
}

// provideManyChan is ProvideManyChan.
func (s *providerSide) provideManyChan(ctx context.Context, keys <-chan cid.Cid, prog *provideProgress) (ProvideReport, error) {
	var total ProvideReport
	var lastErr error
	batch := make([]provKey, 0, 1024)
	flush := func() {
		if len(batch) == 0 {
			return
		}
		rep, err := s.provideKeys(ctx, batch, prog)
		total.add(rep)
		if err != nil {
			lastErr = err
		}
		batch = batch[:0]
	}
	for {
		select {
		case <-ctx.Done():
			return total, fmt.Errorf("kad: provide many: %w", ctx.Err())
		case <-s.own.ctx.Done():
			return total, ErrClosed
		case c, ok := <-keys:
			if !ok {
				flush()
				if total.Messages == 0 && lastErr != nil {
					return total, lastErr
				}
				return total, nil
			}
			mh, err := providerKey(c)
			if err != nil {
				s.log.Debug("provide many: key skipped", "err", err)
				continue
			}
			batch = append(batch, provKey{mh: mh, pos: kbucket.KeyForBytes(mh)})
			if len(batch) == provideManyBatch {
				flush()
			}
		}
	}
}

// provideKeys stores keys locally and announces them subtree by subtree,
// telling prog (which may be nil) how it goes.
func (s *providerSide) provideKeys(ctx context.Context, keys []provKey, prog *provideProgress) (ProvideReport, error) {
	var rep ProvideReport
	if s.own.isClosed() {
		return rep, ErrClosed
	}
	store := s.store
	if store == nil {
		return rep, ErrProvidersDisabled
	}
	slices.SortFunc(keys, func(a, b provKey) int { return bytes.Compare(a.pos[:], b.pos[:]) })
	keys = slices.CompactFunc(keys, func(a, b provKey) bool { return a.pos == b.pos })
	rep.Keys = len(keys)
	if len(keys) == 0 {
		return rep, nil
	}
	prog.add(0, ProvideReport{Keys: len(keys)})
	addrs := s.selfAddrs()
	self := peer.AddrInfo{ID: s.self, Addrs: addrs}
	if s.builtin != nil {
		// One datastore batch for all of them: a datastore that syncs each
		// write (go-ds-leveldb by default) took 4.5 s for 10,000 single
		// adds.
		mhs := make([][]byte, len(keys))
		for i, k := range keys {
			mhs[i] = k.mh
		}
		if _, err := s.builtin.AddMany(ctx, mhs, s.self, addrs, time.Now()); err != nil {
			return rep, fmt.Errorf("kad: provide many: store locally: %w", err)
		}
	} else {
		for _, k := range keys {
			if err := store.AddProvider(ctx, k.mh, self); err != nil && !errors.Is(err, providers.ErrKeyFull) {
				return rep, fmt.Errorf("kad: provide many: store locally: %w", err)
			}
		}
	}
	if len(addrs) == 0 {
		return rep, errors.New("kad: provide many: the host has no addresses to announce")
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stopLife := context.AfterFunc(s.own.ctx, cancel)
	defer stopLife()

	w := &provideWalk{
		s:     s,
		prog:  prog,
		addrs: addrs,
		known: newKnownPeers(s.tablePeers()),
	}
	w.sends.SetLimit(provideManySends)
	// The sorted keys are cut into contiguous runs walked at once, sharing
	// what they learn: a run boundary may split a subtree (one extra
	// lookup per run at most), but the lookups overlap instead of queueing.
	runs := provideManyRuns(len(keys), s.k, s.q.kthDistance(s.k), len(w.known.pos))
	var walkers sync.WaitGroup
	for r := range runs {
		lo, hi := r*len(keys)/runs, (r+1)*len(keys)/runs
		walkers.Add(1)
		if !s.own.spawn(func() {
			defer walkers.Done()
			w.walk(ctx, keys[lo:hi])
		}) {
			// Closing: this run's keys reach no one.
			walkers.Done()
			w.mu.Lock()
			w.rep.KeysMissed += hi - lo
			w.mu.Unlock()
			prog.add(hi-lo, ProvideReport{KeysMissed: hi - lo})
		}
	}
	walkers.Wait()
	_ = w.sends.Wait() // no send returns an error
	rep.add(w.rep)
	reached, lookupErr := w.reached, w.lookupErr
	s.log.Debug("provide many", "keys", rep.Keys, "lookups", rep.Lookups, "messages", rep.Messages, "streams", rep.Streams, "missed", rep.KeysMissed)
	if reached > 0 {
		return rep, nil
	}
	if s.own.isClosed() {
		return rep, ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return rep, fmt.Errorf("kad: provide many: %w", err)
	}
	if lookupErr != nil {
		return rep, fmt.Errorf("kad: provide many: %w: %w", ErrNoPeerReached, lookupErr)
	}
	return rep, fmt.Errorf("kad: provide many: %w", ErrNoPeerReached)
}

// provideManyRuns is how many runs n sorted keys are cut into: enough to
// overlap the lookups, but no more than a quarter of the regions of k
// peers the network holds (estimated from kth, the table's k-th closest
// normalised distance, or from the peers known when that is not
// known yet), since each run boundary can cost a lookup of its own.
func provideManyRuns(n, k int, kth float64, known int) int {
	size := float64(known + 1)
	if !math.IsInf(kth, 0) && kth > 0 {
		size = float64(k) / kth
	}
	regions := int(math.Ceil(size / float64(max(k, 1))))
	return max(1, min(provideManyWalkers, (n+provideManyMinRun-1)/provideManyMinRun, (regions+3)/4))
}

// provideWalk is the state the runs of one provideKeys share.
type provideWalk struct {
	s     *providerSide
	prog  *provideProgress // nil: nobody asked
	addrs []ma.Multiaddr
	known *knownPeers
	// sends runs the batch sends, provideManySends at a time. A plain
	// group: a failed send cancels nothing; each is counted in rep.
	sends errgroup.Group

	mu        sync.Mutex
	cover     kbucket.Cover // subtrees whose every peer is known
	rep       ProvideReport // Lookups, Messages, Streams, KeysMissed
	reached   int           // messages on streams the peer accepted
	lookupErr error
}

// walk places a sorted run of keys. A key goes, with no request, to its k
// closest known peers once those are its true k closest: once every peer
// of the smallest subtree holding them is known (w.cover). Until then the
// walk looks into the uncovered parts of that subtree, at the key itself
// first; a lookup whose k-th closest peer shares p leading bits with its
// target has found every peer sharing p+1 bits with it, which covers that
// subtree for the keys that follow too. Records placed between two
// lookups go out in the background, one stream per peer, while the walk
// goes on.
func (w *provideWalk) walk(ctx context.Context, keys []provKey) {
	s := w.s
	rng := rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	b := provideBatch{dest: map[peer.ID][]*pb.Message{}}
	defer func() { w.flush(ctx, &b) }()
	tries := 0
	for i := 0; i < len(keys) && ctx.Err() == nil; {
		y := keys[i]
		own, last := w.known.closest(y.pos, s.k)
		depth := 0
		if len(own) == s.k {
			depth = kbucket.CommonPrefixLen(y.pos, last)
		}
		w.mu.Lock()
		at, prefix, open := w.cover.Uncovered(y.pos, depth)
		w.mu.Unlock()
		if !open || tries >= provideManyTries {
			// Placed: on its true closest, or (lookups failing) on the
			// closest we know.
			tries = 0
			i++
			if len(own) == 0 {
				w.miss(1, nil)
				continue
			}
			b.add(s.addProviderMsg(y.mh, w.addrs), own)
			if b.keys >= provideManyPerStream {
				w.flush(ctx, &b)
			}
			continue
		}
		// Send what is placed while the lookup runs.
		w.flush(ctx, &b)
		tries++
		target, ok := lookupKey(keys, at, prefix, rng)
		if !ok {
			tries = provideManyTries // too deep to aim at: place as known
			continue
		}
		res, err := s.q.run(ctx, target.pos, func(ctx context.Context, p peer.ID) (queryAnswer, error) {
			closer, err := s.q.findNode(ctx, p, target.mh)
			if err != nil {
				w.known.remove(p)
				return queryAnswer{}, err
			}
			w.known.addInfos(closer, s.filter.queryable)
			return queryAnswer{closer: closer}, nil
		})
		w.mu.Lock()
		w.rep.Lookups++
		w.mu.Unlock()
		w.prog.add(0, ProvideReport{Lookups: 1})
		if err != nil || len(res.closest) == 0 {
			if err == nil {
				err = ErrNoPeerReached
			}
			if errors.Is(err, ErrNoPeers) || errors.Is(err, ErrClosed) {
				w.miss(len(keys)-i, err)
				return
			}
			w.miss(0, err)
			continue
		}
		s.touch(target.pos)
		w.known.add(res.closest...)
		depth = 0
		if len(res.closest) >= s.k {
			// Every peer closer than the k-th is among the closest.
			depth = kbucket.CommonPrefixLen(target.pos, kbucket.PeerKey(res.closest[s.k-1])) + 1
		}
		w.mu.Lock()
		w.cover.Mark(target.pos, depth)
		w.mu.Unlock()
	}
}

// provideManyTries bounds the lookups one key waits for before it is
// placed on the closest peers known: lookups that keep failing must not
// hold the walk.
const provideManyTries = 8

// lookupKey is a key to look up in the subtree of the positions sharing
// the first prefix bits of at: one of keys (sorted by position) if one
// lies there, else bytes found by hashing.
func lookupKey(keys []provKey, at kbucket.ID, prefix int, rng *rand.Rand) (provKey, bool) {
	low := at
	for i := prefix; i < len(low)*8; i++ {
		low[i/8] &^= 0x80 >> uint(i%8)
	}
	j, _ := slices.BinarySearchFunc(keys, low, func(k provKey, t kbucket.ID) int { return bytes.Compare(k.pos[:], t[:]) })
	if j < len(keys) && kbucket.CommonPrefixLen(keys[j].pos, at) >= prefix {
		return keys[j], true
	}
	mh, ok := kbucket.KeyWithPrefix(at, prefix, rng, 1<<20)
	if !ok {
		return provKey{}, false
	}
	return provKey{mh: mh, pos: kbucket.KeyForBytes(mh)}, true
}

// miss counts n keys given up on and, if err is not nil, a failed lookup.
func (w *provideWalk) miss(n int, err error) {
	w.mu.Lock()
	w.rep.KeysMissed += n
	if err != nil {
		w.lookupErr = err
	}
	w.mu.Unlock()
	if n > 0 {
		w.prog.add(n, ProvideReport{KeysMissed: n})
	}
}

// provideBatch gathers the records of consecutive placed keys by peer.
type provideBatch struct {
	dest  map[peer.ID][]*pb.Message
	order []peer.ID
	keys  int
}

func (b *provideBatch) add(m *pb.Message, to []peer.ID) {
	for _, p := range to {
		if _, ok := b.dest[p]; !ok {
			b.order = append(b.order, p)
		}
		b.dest[p] = append(b.dest[p], m)
	}
	b.keys++
}

// flush queues the batch's sends, one stream per peer (and per
// provideManyPerStream messages), and empties it.
func (w *provideWalk) flush(ctx context.Context, b *provideBatch) {
	s := w.s
	if b.keys > 0 {
		w.prog.add(b.keys, ProvideReport{})
	}
	for _, p := range b.order {
		msgs := b.dest[p]
		for start := 0; start < len(msgs); start += provideManyPerStream {
			chunk := msgs[start:min(start+provideManyPerStream, len(msgs))]
			if ctx.Err() != nil {
				break
			}
			w.sends.Go(func() error {
				// Close waits for the send too; Go may have waited
				// for a slot while ctx ended or Close began.
				if ctx.Err() != nil || !s.own.enter() {
					return nil
				}
				defer s.own.leave()
				w.mu.Lock()
				w.rep.Streams++
				w.mu.Unlock()
				n, err := s.q.sendOneWay(ctx, p, chunk, nil)
				w.mu.Lock()
				w.rep.Messages += n
				if err == nil {
					w.reached += n
				}
				w.mu.Unlock()
				w.prog.add(0, ProvideReport{Messages: n, Streams: 1})
				if err != nil {
					s.log.Debug("provide many: batch not delivered", "peer", p, "messages", len(chunk), "err", err)
				}
				return nil
			})
		}
	}
	*b = provideBatch{dest: map[peer.ID][]*pb.Message{}}
}

// knownPeers are the peers a ProvideMany has learned of, with their
// positions: the table's, and those lookups named, less those that failed.
// Lookup queries add to it concurrently.
type knownPeers struct {
	mu   sync.Mutex
	pos  map[peer.ID]kbucket.ID
	gone map[peer.ID]bool
}

func newKnownPeers(ps []peer.ID) *knownPeers {
	k := &knownPeers{pos: make(map[peer.ID]kbucket.ID, len(ps)), gone: make(map[peer.ID]bool)}
	k.add(ps...)
	return k
}

func (k *knownPeers) add(ps ...peer.ID) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, p := range ps {
		if _, ok := k.pos[p]; !ok && !k.gone[p] {
			k.pos[p] = kbucket.PeerKey(p)
		}
	}
}

// addInfos adds the peers of a response that have addresses and that
// usable accepts (the address filter).
func (k *knownPeers) addInfos(ais []peer.AddrInfo, usable func(peer.AddrInfo) bool) {
	ais = slices.DeleteFunc(slices.Clone(ais), func(ai peer.AddrInfo) bool { return len(ai.Addrs) == 0 || !usable(ai) })
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, ai := range ais {
		if _, ok := k.pos[ai.ID]; !ok && !k.gone[ai.ID] {
			k.pos[ai.ID] = kbucket.PeerKey(ai.ID)
		}
	}
}

func (k *knownPeers) remove(p peer.ID) {
	k.mu.Lock()
	defer k.mu.Unlock()
	delete(k.pos, p)
	k.gone[p] = true
}

// closest returns the n known peers closest to target, closest first,
// and the position of the last of them.
func (k *knownPeers) closest(target kbucket.ID, n int) ([]peer.ID, kbucket.ID) {
	k.mu.Lock()
	defer k.mu.Unlock()
	type cand struct {
		p peer.ID
		d kbucket.ID
	}
	best := make([]cand, 0, n+1)
	for p, pos := range k.pos {
		c := cand{p, pos.Xor(target)}
		if len(best) == n && bytes.Compare(c.d[:], best[n-1].d[:]) >= 0 {
			continue
		}
		i, _ := slices.BinarySearchFunc(best, c, func(a, b cand) int { return bytes.Compare(a.d[:], b.d[:]) })
		best = slices.Insert(best, i, c)
		if len(best) > n {
			best = best[:n]
		}
	}
	out := make([]peer.ID, len(best))
	for i, c := range best {
		out[i] = c.p
	}
	var last kbucket.ID
	if len(best) > 0 {
		last = best[len(best)-1].d.Xor(target)
	}
	return out, last
}
