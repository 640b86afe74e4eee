package kbucket

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// idBits is the key whose leading bits are given as a string of 0s and
// 1s, the rest zero.
func idBits(s string) ID {
	var id ID
	for i, c := range s {
		if c == '1' {
			id = flipBit(id, i)
		}
	}
	return id
}

func TestCover(t *testing.T) {
	type mark struct {
		bits  string
		depth int
	}
	type check struct {
		bits    string
		depth   int
		covered bool
		// uncovered: the prefix Uncovered reports, "" when covered.
		uncovered string
	}
	tests := []struct {
		name   string
		marks  []mark
		checks []check
	}{
		{
			name: "empty",
			checks: []check{
				{bits: "", depth: 0, uncovered: ""},
				{bits: "101", depth: 3, uncovered: ""},
			},
		},
		{
			name:  "one subtree",
			marks: []mark{{"101", 3}},
			checks: []check{
				{bits: "101", depth: 3, covered: true},
				{bits: "1011", depth: 4, covered: true},
				{bits: "10", depth: 2, uncovered: "100"},
				{bits: "100", depth: 3, uncovered: "100"},
				{bits: "", depth: 0, uncovered: "0"},
			},
		},
		{
			name:  "siblings merge into their parent",
			marks: []mark{{"100", 3}, {"101", 3}},
			checks: []check{
				{bits: "10", depth: 2, covered: true},
				{bits: "1", depth: 1, uncovered: "11"},
				{bits: "", depth: 0, uncovered: "0"},
			},
		},
		{
			name:  "merging climbs several levels",
			marks: []mark{{"0", 1}, {"10", 2}, {"111", 3}, {"110", 3}},
			checks: []check{
				{bits: "", depth: 0, covered: true},
				{bits: "0110", depth: 4, covered: true},
			},
		},
		{
			name:  "a mark inside a covered subtree changes nothing",
			marks: []mark{{"1", 1}, {"1101", 4}},
			checks: []check{
				{bits: "1", depth: 1, covered: true},
				{bits: "", depth: 0, uncovered: "0"},
			},
		},
		{
			name:  "a wider mark swallows narrower ones",
			marks: []mark{{"0101", 4}, {"01", 2}},
			checks: []check{
				{bits: "01", depth: 2, covered: true},
				{bits: "0", depth: 1, uncovered: "00"},
			},
		},
		{
			name:  "uncovered prefers the key's own side",
			marks: []mark{{"000", 3}},
			checks: []check{
				{bits: "0011", depth: 1, uncovered: "001"},
				{bits: "0000", depth: 1, uncovered: "001"},
			},
		},
		{
			name:  "depth 0 mark covers everything",
			marks: []mark{{"", 0}},
			checks: []check{
				{bits: "", depth: 0, covered: true},
				{bits: "1111", depth: 200, covered: true},
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var c Cover
			for _, m := range tc.marks {
				c.Mark(idBits(m.bits), m.depth)
			}
			for _, ch := range tc.checks {
				id := idBits(ch.bits)
				require.Equal(t, ch.covered, c.Covered(id, ch.depth), "Covered(%q, %d)", ch.bits, ch.depth)
				key, prefix, ok := c.Uncovered(id, ch.depth)
				if ch.covered {
					require.False(t, ok, "Uncovered(%q, %d)", ch.bits, ch.depth)
					continue
				}
				require.True(t, ok, "Uncovered(%q, %d)", ch.bits, ch.depth)
				if ch.uncovered == "" {
					// Nothing is marked on the way: the key itself.
					require.Equal(t, id, key)
					continue
				}
				require.Equal(t, len(ch.uncovered), prefix, "Uncovered(%q, %d) prefix", ch.bits, ch.depth)
				require.GreaterOrEqual(t, CommonPrefixLen(key, idBits(ch.uncovered)), len(ch.uncovered), "Uncovered(%q, %d) key", ch.bits, ch.depth)
				require.False(t, c.Covered(key, prefix))
				require.GreaterOrEqual(t, CommonPrefixLen(key, id), ch.depth, "inside the asked subtree")
			}
		})
	}
}

// TestCoverUncoveredTerminates marks what Uncovered reports until the
// subtree is covered: each answer is new ground. Marks go at most 10 bits
// deep, as a lookup's do in a network of finitely many peers (a subtree
// with fewer than k peers is covered by a mark above it).
func TestCoverUncoveredTerminates(t *testing.T) {
	r := newRand(7)
	for range 50 {
		var c Cover
		var start ID
		for i := range start {
			start[i] = byte(r.Uint32())
		}
		depth := r.IntN(4)
		steps := 0
		for {
			key, prefix, ok := c.Uncovered(start, depth)
			if !ok {
				break
			}
			require.False(t, c.Covered(key, prefix))
			c.Mark(key, min(prefix+r.IntN(3), 10))
			steps++
			require.LessOrEqual(t, steps, 1<<10)
		}
		require.True(t, c.Covered(start, depth))
	}
}

func TestKeyWithPrefix(t *testing.T) {
	r := newRand(3)
	target := idBits("1011001110")
	for _, prefix := range []int{0, 1, 5, 10} {
		b, ok := KeyWithPrefix(target, prefix, r, 1<<16)
		require.True(t, ok)
		require.GreaterOrEqual(t, CommonPrefixLen(target, KeyForBytes(b)), prefix)
	}
	_, ok := KeyWithPrefix(target, 64, r, 10)
	require.False(t, ok)
}
