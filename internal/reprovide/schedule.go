// Package reprovide is the pure schedule of the reprovider: the keyspace
// is cut into 2^bits regions by the leading bits of a key's position, and
// region i is due at offset i/2^bits of every interval, so the work of a
// reprovide cycle is spread evenly over it. The schedule never reads the
// clock: the caller passes the time in.
package reprovide

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// MaxBits is the largest region split supported: 65536 regions.
const MaxBits = 16

// Schedule cuts Interval into 2^Bits slots, one per keyspace region.
type Schedule struct {
	Interval time.Duration
	Bits     int
}

// Validate checks the schedule's ranges.
func (s Schedule) Validate() error {
	if s.Interval <= 0 {
		return fmt.Errorf("interval %v <= 0", s.Interval)
	}
	if s.Bits < 0 || s.Bits > MaxBits {
		return fmt.Errorf("region bits %d not in [0, %d]", s.Bits, MaxBits)
	}
	if s.Slot() <= 0 {
		return fmt.Errorf("interval %v too short for %d regions", s.Interval, s.Regions())
	}
	return nil
}

// Regions is the number of keyspace regions, 2^Bits.
func (s Schedule) Regions() int { return 1 << s.Bits }

// Slot is the time between two regions' due times.
func (s Schedule) Slot() time.Duration { return s.Interval / time.Duration(s.Regions()) }

// RegionOf returns the region of a keyspace position: its leading bits.
func RegionOf(pos [32]byte, bits int) int {
	if bits == 0 {
		return 0
	}
	return int(binary.BigEndian.Uint16(pos[:2]) >> (16 - bits))
}

// FirstBytes returns the range [lo, hi] of leading position bytes that
// region i spans: several bytes when bits < 8, one byte (shared with other
// regions, which the caller filters out with RegionOf) otherwise.
func FirstBytes(i, bits int) (lo, hi byte) {
	if bits <= 8 {
		w := 1 << (8 - bits)
		return byte(i * w), byte(i*w + w - 1)
	}
	b := byte(i >> (bits - 8))
	return b, b
}

// State is where the reprovider stands: the start of the current cycle
// and the next region to reprovide. It is persisted after every region so
// that a restart resumes there.
type State struct {
	CycleStart time.Time
	Next       int
	Bits       int // the split Next counts in
}

// Start is the state of a reprovider that never ran: region 0 is due one
// slot from now, which leaves the node time to join the network.
func (s Schedule) Start(now time.Time) State {
	return State{CycleStart: now.Add(s.Slot()), Bits: s.Bits}
}

// Due is when st.Next is due.
func (s Schedule) Due(st State) time.Time {
	return st.CycleStart.Add(time.Duration(st.Next) * s.Slot())
}

// Advance moves past the region just done, to the next cycle after the
// last region.
func (s Schedule) Advance(st State) State {
	st.Next++
	if st.Next >= s.Regions() {
		st.Next = 0
		st.CycleStart = st.CycleStart.Add(s.Interval)
	}
	return st
}

// Resume adapts a state to the schedule and to now. A state saved with
// another split keeps its place in the keyspace. A region due more than
// one slot ago (the node was down, or reproviding is slower than the
// schedule) would start a burst of overdue regions: instead the schedule
// shifts so the next region is due now and the rest keep their spacing.
// It returns the adapted state and how late the next region was.
func (s Schedule) Resume(st State, now time.Time) (State, time.Duration) {
	if st.Bits != s.Bits {
		st.Next = int(uint64(st.Next) * uint64(s.Regions()) >> uint(max(st.Bits, 0)))
		st.Next = min(max(st.Next, 0), s.Regions()-1)
		st.Bits = s.Bits
	}
	late := now.Sub(s.Due(st))
	if late <= 0 {
		return st, 0
	}
	if late > s.Slot() {
		st.CycleStart = st.CycleStart.Add(late)
	}
	return st, late
}

// stateLen is the encoded length of a State.
const stateLen = 8 + 4 + 1

// ErrBadState is returned by UnmarshalState for bytes it did not write.
var ErrBadState = errors.New("reprovide: bad state encoding")

// Marshal encodes st.
func (st State) Marshal() []byte {
	b := make([]byte, stateLen)
	binary.BigEndian.PutUint64(b, uint64(st.CycleStart.UnixNano()))
	binary.BigEndian.PutUint32(b[8:], uint32(st.Next))
	b[12] = byte(st.Bits)
	return b
}

// UnmarshalState decodes what Marshal wrote.
func UnmarshalState(b []byte) (State, error) {
	if len(b) != stateLen || b[12] > MaxBits {
		return State{}, ErrBadState
	}
	st := State{
		CycleStart: time.Unix(0, int64(binary.BigEndian.Uint64(b))),
		Next:       int(binary.BigEndian.Uint32(b[8:])),
		Bits:       int(b[12]),
	}
	if st.Next >= 1<<st.Bits {
		return State{}, ErrBadState
	}
	return st, nil
}
