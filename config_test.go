package kad

import (
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/stretchr/testify/require"
)

// validate holds every rule, those it delegates to internal packages
// (lookup, providers, reprovide) included; all errors wrap
// ErrInvalidOption.
func TestConfigValidate(t *testing.T) {
	cases := []struct {
		name string
		opts []Option
		ok   bool
	}{
		{"defaults", nil, true},
		{"small table", []Option{BucketSize(2), Resiliency(2), Concurrency(2), ConvergeConcurrency(1), DisjointPaths(2)}, true},
		{"diversity", []Option{PeerDiversity(3, 2)}, true},
		{"zero bucket size", []Option{BucketSize(0)}, false},
		{"zero concurrency", []Option{Concurrency(0)}, false},
		{"zero resiliency", []Option{Resiliency(0)}, false},
		{"zero disjoint paths", []Option{DisjointPaths(0)}, false},
		{"resiliency over bucket size", []Option{BucketSize(2), Resiliency(3)}, false},
		{"converge over concurrency", []Option{Concurrency(2), ConvergeConcurrency(3)}, false},
		{"negative converge", []Option{ConvergeConcurrency(-1)}, false},
		{"disjoint over concurrency", []Option{Concurrency(2), DisjointPaths(3)}, false},
		{"zero lookup timeout", []Option{LookupTimeout(0)}, false},
		{"vouchers off", []Option{Vouchers(0)}, true},
		{"negative vouchers", []Option{Vouchers(-1)}, false},
		{"bad prefix", []Option{ProtocolPrefix("ipfs/")}, false},
		{"unknown mode", []Option{Mode(ModeOpt(9))}, false},
		{"bad bootstrap peer", []Option{BootstrapPeers(peer.AddrInfo{})}, false},
		{"zero request timeout", []Option{RequestTimeout(0)}, false},
		{"zero refresh interval", []Option{RefreshInterval(0)}, false},
		{"zero diversity", []Option{PeerDiversity(0, 1)}, false},
		{"zero idle stream", []Option{IdleStreamTimeout(0)}, false},
		{"small messages", []Option{MaxMessageSize(1023)}, false},
		{"zero addrs per peer", []Option{MaxAddrsPerPeer(0)}, false},
		{"zero record age", []Option{MaxRecordAge(0)}, false},
		{"addr ttl beyond validity", []Option{ProvideValidity(time.Hour), ProviderAddrTTL(2 * time.Hour)}, false},
		{"reprovide after expiry", []Option{Reprovide(true), ReprovideInterval(48 * time.Hour)}, false},
		{"reprovide regions", []Option{ReprovideRegions(17)}, false},
		{"per peer over total", []Option{MaxInboundStreams(2), MaxInboundStreamsPerPeer(3)}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := defaults()
			for _, o := range tc.opts {
				require.NoError(t, o(&c))
			}
			err := c.validate()
			if tc.ok {
				require.NoError(t, err)
			} else {
				require.ErrorIs(t, err, ErrInvalidOption)
			}
		})
	}
}

// A rule an internal package owns is reported once, naming the options.
func TestConfigValidateDelegated(t *testing.T) {
	c := defaults()
	c.table.bucketSize = 2
	err := c.validate()
	require.ErrorIs(t, err, ErrInvalidOption)
	require.ErrorContains(t, err, "Resiliency")
	require.ErrorContains(t, err, "Beta = 3")

	// A non-positive value is reported by kad alone, not again by lookup.
	c = defaults()
	c.lookup.concurrency = 0
	err = c.validate()
	require.EqualError(t, err, "kad: invalid option: concurrency 0 < 1")
}
