// Package lookup is the iterative Kademlia closest-peers lookup as a pure
// state machine: it decides whom to ask next and when to stop, and nothing
// else. It does no I/O, reads no clock, starts no goroutine and takes no lock,
// so every lookup rule can be tested step by step over a simulated network,
// and the one driver goroutine that owns a Lookup stays in charge of sending
// requests, timeouts and cancellation.
//
// The driver loop is:
//
//	l := lookup.New(target, self, seeds, cfg)
//	for {
//		send, done := l.Next()
//		if done {
//			break // requests still in flight are abandoned
//		}
//		// start a request to each peer in send, then wait for one event
//		// and report it with l.OnSuccess or l.OnFailure
//	}
//	closest := l.Result()
package lookup

import (
	"slices"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/kadlib/kad/internal/kbucket"
)

// PeerState is where a peer stands in one lookup, exposed so the driver and
// tests can tell a late answer from an unexpected one.
type PeerState int

// The states a peer moves through: Heard, then Waiting once asked, then
// Succeeded or Failed. A peer never goes back.
const (
	// Unknown: the lookup never heard of the peer (or it is self).
	Unknown PeerState = iota
	// Heard: a candidate not asked yet.
	Heard
	// Waiting: asked, no answer yet.
	Waiting
	// Succeeded: asked and answered; eligible for the result.
	Succeeded
	// Failed: asked and the request failed or timed out; never asked again
	// and never in the result.
	Failed
)

// String makes states readable in test failures and logs.
func (s PeerState) String() string {
	switch s {
	case Unknown:
		return "unknown"
	case Heard:
		return "heard"
	case Waiting:
		return "waiting"
	case Succeeded:
		return "succeeded"
	case Failed:
		return "failed"
	default:
		return "invalid"
	}
}

// Stats summarises a lookup for metrics and for comparing against published
// figures (hops per lookup, requests per lookup).
type Stats struct {
	// Requests is how many peers Next handed out.
	Requests int
	// Succeeded counts the answers accepted by OnSuccess.
	Succeeded int
	// Failed counts the failures accepted by OnFailure.
	Failed int
	// Hops is the longest referral chain behind any peer in Result: a seed
	// that answered is 1 hop, a peer it told us about is 2, and so on.
	Hops int
	// Known is how many distinct peers (self excluded) the lookup heard of.
	Known int
	// Vouched counts the peers in Result that had not answered: asked
	// over a new connection and vouched for by Config.Vouchers answers.
	Vouched int
}

// entry is the lookup's record of one peer. The key is hashed once here so
// sorting never rehashes.
type entry struct {
	id    peer.ID
	key   kbucket.ID
	state PeerState
	hop   int // length of the referral chain that led to this peer
	path  int // index of the disjoint path that owns this peer
	// dialing: asked while unreachable without a new connection
	// (Config.Reachable); vouches: answers on its path that reported a
	// connection to it.
	dialing     bool
	vouches     int
	lastVoucher peer.ID
}

// path is one independent lookup over the peers it owns. With a single path
// it is the whole lookup.
type path struct {
	cands    candidates // non-failed peers owned by this path, closest first
	budget   int        // max requests in flight for this path
	near     int        // max requests in flight, near ones included
	converge int        // max requests in flight while converging
	first    int        // max requests in flight before the first answer
	answered bool       // some peer of this path answered
	inFlight int
}

// Lookup is one iterative closest-peers search. It is not safe for concurrent
// use: exactly one goroutine, the driver, owns it.
type Lookup struct {
	cfg   Config
	self  peer.ID
	peers map[peer.ID]*entry
	paths []*path
	// all holds every non-failed peer of every path, closest first. With a
	// single path it is that path's list, not a copy.
	all   *candidates
	done  bool
	stats Stats
}

// New starts a lookup for target from the given seeds (usually the closest
// peers in the routing table). Self is never queried nor returned, and
// duplicate seeds count once. New never fails: a Config that Validate would
// reject is clamped into range, so check Config.Validate where options are
// set if a bad value should be an error.
func New(target kbucket.ID, self peer.ID, seeds []peer.ID, cfg Config) *Lookup {
	cfg = cfg.normalized()
	l := &Lookup{
		cfg:   cfg,
		self:  self,
		peers: make(map[peer.ID]*entry, len(seeds)+cfg.K*4),
		paths: make([]*path, cfg.Disjoint),
	}
	for i := range l.paths {
		// Share each cap exactly: the first cap%d paths get one extra slot.
		share := func(total int) int {
			n := total / cfg.Disjoint
			if i < total%cfg.Disjoint {
				n++
			}
			return n
		}
		budget := share(cfg.Alpha)
		l.paths[i] = &path{cands: candidates{target: target}, budget: budget, near: max(share(cfg.NearAlpha), budget),
			converge: max(share(cfg.ConvergeAlpha), 1), first: max(share(cfg.FirstAlpha), 1)}
	}
	if cfg.Disjoint == 1 {
		l.all = &l.paths[0].cands
	} else {
		l.all = &candidates{target: target}
	}

	// Sort the seeds before dealing them out, so every disjoint path starts
	// with a fair share of the close ones rather than whatever order the
	// caller had.
	fresh := make([]*entry, 0, len(seeds))
	for _, p := range seeds {
		if e := l.learn(p, 1); e != nil {
			fresh = append(fresh, e)
		}
	}
	slices.SortFunc(fresh, func(a, b *entry) int {
		return kbucket.CompareDistance(a.key, b.key, target)
	})
	for i, e := range fresh {
		e.path = i % cfg.Disjoint
		l.add(e)
	}
	return l
}

// learn registers a peer the lookup has not seen, or returns nil for self,
// the empty id and known peers. The caller sets the path and calls add.
func (l *Lookup) learn(p peer.ID, hop int) *entry {
	if p == "" || p == l.self {
		return nil
	}
	if _, ok := l.peers[p]; ok {
		return nil
	}
	e := &entry{id: p, key: kbucket.PeerKey(p), state: Heard, hop: hop}
	l.peers[p] = e
	l.stats.Known++
	return e
}

// add puts a learned peer into its path's candidates and the merged view.
func (l *Lookup) add(e *entry) {
	pc := &l.paths[e.path].cands
	pc.insert(e)
	if l.all != pc {
		l.all.insert(e)
	}
}

// Next returns the peers to send a request to now (possibly none), keeping at
// most Alpha requests in flight, and whether the lookup is finished. Call it
// after every event. Each returned peer is marked Waiting; once done is
// true it stays true and the driver may drop whatever is still in flight.
func (l *Lookup) Next() (send []peer.ID, done bool) {
	if l.done {
		return nil, true
	}
	allDone := true
	for _, p := range l.paths {
		// Only the K closest non-failed candidates are eligible: asking a
		// farther peer cannot improve the result and wastes a request.
		settled := true
		window := p.cands.items[:min(l.cfg.K, len(p.cands.items))]
		// Until the Beta closest have answered, the lookup is still
		// converging: only the closest few candidates are worth asking,
		// since any answer may bring closer peers that make farther ones
		// useless. Once they have answered, the rest of the K closest are
		// asked so that every result has answered (no dead peer in it),
		// or been vouched for (Config.Vouchers).
		eligible, budget := len(window), p.budget
		if !l.converged(p) {
			budget = p.converge
			if !p.answered {
				budget = p.first
			}
			eligible = min(eligible, budget+l.cfg.Beta)
		}
		for i, e := range window {
			if e.state == Heard && (i < eligible && p.inFlight < budget || l.near(p, e)) {
				e.state = Waiting
				e.dialing = l.cfg.Vouchers > 0 && l.cfg.Reachable != nil && !l.cfg.Reachable(e.id)
				p.inFlight++
				l.stats.Requests++
				send = append(send, e.id)
			}
			if !l.live(e) {
				settled = false
			}
		}
		// A path ends once its K closest non-failed peers all answered. That
		// also covers starvation: with no Heard peer in the window and
		// nothing in flight, every peer left in the window has answered.
		// The Beta closest are a prefix of that window, so the resiliency
		// rule (never stop before the Beta closest answered) holds too.
		if !settled {
			allDone = false
		}
	}
	l.done = allDone
	return send, allDone
}

// near reports whether e may be asked now, outside the normal budget, as
// a probable member of the result: within Config.Near once the path has an
// answer, within Config.FirstNear before, and within the path's NearAlpha
// share.
func (l *Lookup) near(p *path, e *entry) bool {
	limit := l.cfg.Near
	if !p.answered {
		limit = l.cfg.FirstNear
	}
	return limit > 0 && p.inFlight < p.near && kbucket.Fraction(e.key.Xor(p.cands.target)) <= limit
}

// converged reports whether the beta closest non-failed candidates of the
// path have all answered (or been vouched for).
func (l *Lookup) converged(p *path) bool {
	n := min(l.cfg.Beta, len(p.cands.items))
	for _, e := range p.cands.items[:n] {
		if !l.live(e) {
			return false
		}
	}
	return true
}

// live reports whether e counts as answered: it did, or it is being asked
// over a new connection and enough answers vouched for it
// (Config.Vouchers).
func (l *Lookup) live(e *entry) bool {
	return e.state == Succeeded || l.vouched(e)
}

// vouched reports whether e counts as answered only on the word of others.
func (l *Lookup) vouched(e *entry) bool {
	return e.state == Waiting && e.dialing && l.cfg.Vouchers > 0 && e.vouches >= l.cfg.Vouchers
}

// waiting returns the entry for an answer the lookup is expecting, or nil
// for an answer it should ignore: unknown or unasked peers, repeats, and
// anything arriving after the lookup finished (so Result stays stable).
func (l *Lookup) waiting(from peer.ID) *entry {
	if l.done {
		return nil
	}
	e := l.peers[from]
	if e == nil || e.state != Waiting {
		return nil
	}
	return e
}

// OnSuccess records that from answered with the given closer peers. Self,
// duplicates and already known peers in closer are ignored; so is an answer
// from a peer that was not asked, or one arriving after the lookup finished.
// New peers join from's path, which is what keeps disjoint paths disjoint.
func (l *Lookup) OnSuccess(from peer.ID, closer []peer.ID) {
	l.OnAnswer(from, closer, nil)
}

// OnAnswer is OnSuccess for an answer that also says which peers from is
// connected to (the wire's CONNECTED), each of which then has from's vouch
// (Config.Vouchers) if it is a candidate of from's path. An answer counts
// once, so the vouches a peer collects come from distinct peers.
func (l *Lookup) OnAnswer(from peer.ID, closer, connected []peer.ID) {
	e := l.waiting(from)
	if e == nil {
		return
	}
	e.state = Succeeded
	l.paths[e.path].inFlight--
	l.paths[e.path].answered = true
	l.stats.Succeeded++
	for _, p := range closer {
		if n := l.learn(p, e.hop+1); n != nil {
			n.path = e.path
			l.add(n)
		}
	}
	for _, c := range connected {
		// lastVoucher drops a peer listed twice in one answer.
		if v := l.peers[c]; v != nil && v.path == e.path && v.lastVoucher != from {
			v.lastVoucher = from
			v.vouches++
		}
	}
}

// OnFailure records that the request to from failed or timed out: from is
// never asked again and never returned. It is ignored for a peer that was
// not asked, and after the lookup finished.
func (l *Lookup) OnFailure(from peer.ID) {
	e := l.waiting(from)
	if e == nil {
		return
	}
	e.state = Failed
	p := l.paths[e.path]
	p.inFlight--
	p.cands.remove(e)
	if l.all != &p.cands {
		l.all.remove(e)
	}
	l.stats.Failed++
}

// Result returns the K closest peers that answered (or were vouched for,
// Config.Vouchers), closest first. Called
// before the lookup is done it gives the best answer so far.
func (l *Lookup) Result() []peer.ID {
	out := make([]peer.ID, 0, l.cfg.K)
	l.eachResult(func(e *entry) { out = append(out, e.id) })
	return out
}

// eachResult calls f on the peers Result returns, closest first.
func (l *Lookup) eachResult(f func(*entry)) {
	n := 0
	for _, e := range l.all.items {
		if n == l.cfg.K {
			return
		}
		if l.live(e) {
			f(e)
			n++
		}
	}
}

// Closest returns up to n of the closest known peers that have not failed,
// whatever their state, closest first. It serves callers that act before the
// lookup ends, such as optimistic provide.
func (l *Lookup) Closest(n int) []peer.ID {
	n = min(max(n, 0), len(l.all.items))
	out := make([]peer.ID, n)
	for i, e := range l.all.items[:n] {
		out[i] = e.id
	}
	return out
}

// Stats returns the lookup's counters. Like Result, it is final once Next
// reported done.
func (l *Lookup) Stats() Stats {
	s := l.stats
	l.eachResult(func(e *entry) {
		s.Hops = max(s.Hops, e.hop)
		if e.state != Succeeded {
			s.Vouched++
		}
	})
	return s
}

// InFlight returns how many requests the lookup is waiting for, so the driver
// can check its own bookkeeping and size its buffers. After done it keeps
// counting the abandoned requests, since late answers are ignored.
func (l *Lookup) InFlight() int {
	n := 0
	for _, p := range l.paths {
		n += p.inFlight
	}
	return n
}

// State returns where p stands in this lookup; Unknown for self and for peers
// never heard of.
func (l *Lookup) State(p peer.ID) PeerState {
	if e := l.peers[p]; e != nil {
		return e.state
	}
	return Unknown
}
