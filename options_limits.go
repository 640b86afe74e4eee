package kad

import "fmt"

// limitsConfig holds the server side's bounds on what strangers may cost
// us: streams held open, requests per second and the size of what they
// send and what we answer. Message size, record size, providers per key
// and addresses per peer entry live with the rest of their side's options
// (MaxMessageSize, MaxRecordSize, MaxProvidersPerKey, MaxAddrsPerPeer).
type limitsConfig struct {
	streamsTotal   int
	streamsPerPeer int
	peerRate       float64 // requests per second; 0: no limit
	peerBurst      int
	maxKeySize     int
	provsPerResp   int
}

func defaultLimitsConfig() limitsConfig {
	return limitsConfig{
		streamsTotal:   4096,
		streamsPerPeer: 32,
		peerRate:       200,
		peerBurst:      1000,
		maxKeySize:     1024,
		provsPerResp:   20,
	}
}

func (l *limitsConfig) validate() []error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrInvalidOption}, args...)...))
	}
	if l.streamsTotal < 1 {
		bad("max inbound streams %d < 1", l.streamsTotal)
	}
	if l.streamsPerPeer < 1 {
		bad("max inbound streams per peer %d < 1", l.streamsPerPeer)
	}
	if l.streamsTotal >= 1 && l.streamsPerPeer > l.streamsTotal {
		bad("max inbound streams per peer %d > total %d", l.streamsPerPeer, l.streamsTotal)
	}
	if l.peerRate < 0 || l.peerRate != l.peerRate { // NaN too
		bad("peer request rate %v < 0", l.peerRate)
	}
	if l.peerRate > 0 && l.peerBurst < 1 {
		bad("peer request burst %d < 1", l.peerBurst)
	}
	if l.maxKeySize < 80 {
		// Provider keys (multihashes) may be 80 bytes: a smaller bound
		// would refuse requests every peer sends.
		bad("max key size %d < 80", l.maxKeySize)
	}
	if l.provsPerResp < 1 {
		bad("max providers per response %d < 1", l.provsPerResp)
	}
	return errs
}

// MaxInboundStreams bounds the inbound streams served at once, over all
// peers. Each costs a goroutine and a read buffer until it goes idle for
// IdleStreamTimeout; past the bound new streams are reset at once. go
// and js peers keep one idle stream per peer they talk to, so a busy
// server holds about one per active requester. Default 4096.
func MaxInboundStreams(n int) Option {
	return func(c *config) error { c.limits.streamsTotal = n; return nil }
}

// MaxInboundStreamsPerPeer bounds the inbound streams one peer may hold
// open at once, so a single peer cannot use up MaxInboundStreams. Honest
// peers need one per request they have in flight to us; a lookup asks
// each peer once. Default 32.
func MaxInboundStreamsPerPeer(n int) Option {
	return func(c *config) error { c.limits.streamsPerPeer = n; return nil }
}

// PeerRequestRate bounds the requests each peer may make: a token bucket
// per peer refilled at rate per second and holding up to burst. A request
// over the limit gets its stream reset, unanswered. The bucket outlives
// the peer's streams until it is full again, so opening a fresh stream
// per request does not get around it. rate 0 turns the limit off.
// Default 200 per second, bursts of 1000: a lookup asks a peer once, but a
// reprovide sweep sends one peer hundreds of ADD_PROVIDERs at once; one
// peer flooding still gets at most a few hundred answers a second.
func PeerRequestRate(rate float64, burst int) Option {
	return func(c *config) error {
		c.limits.peerRate = rate
		c.limits.peerBurst = burst
		return nil
	}
}

// MaxKeySize bounds the key of any inbound request; longer keys get the
// stream reset. Real keys are short: peer ids and multihashes are under
// 80 bytes, "/pk/" and "/ipns/" keys under 100. The bound stops a peer
// from making us hash and echo megabyte keys. At least 80. Default 1 KiB.
func MaxKeySize(n int) Option {
	return func(c *config) error { c.limits.maxKeySize = n; return nil }
}

// MaxProvidersPerResponse bounds the providers sent in one GET_PROVIDERS
// answer, keeping answers small for peers with strict message limits
// (rust-libp2p reads at most 16 KiB by default); the most recently
// announced are sent. The store keeps up to MaxProvidersPerKey; finders
// ask each of the k closest peers, so a few per answer is enough. The
// handler never sends more than k (BucketSize) whatever this says.
// Default 20.
func MaxProvidersPerResponse(n int) Option {
	return func(c *config) error { c.limits.provsPerResp = n; return nil }
}
