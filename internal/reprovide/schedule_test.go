package reprovide

import (
	"testing"
	"time"
)

func TestScheduleSpacing(t *testing.T) {
	s := Schedule{Interval: 22 * time.Hour, Bits: 4}
	t0 := time.Unix(1000, 0)
	st := s.Start(t0)
	if got := s.Due(st); !got.Equal(t0.Add(s.Slot())) {
		t.Fatalf("first region due %v, want one slot after start", got)
	}
	first := s.Due(st)
	for i := 0; i < 3*s.Regions(); i++ {
		want := first.Add(time.Duration(i) * s.Slot())
		if got := s.Due(st); !got.Equal(want) || st.Next != i%s.Regions() {
			t.Fatalf("step %d: region %d due %v, want region %d at %v", i, st.Next, got, i%s.Regions(), want)
		}
		st = s.Advance(st)
	}
}

func TestResume(t *testing.T) {
	s := Schedule{Interval: 16 * time.Hour, Bits: 4} // one slot per hour
	t0 := time.Unix(0, 0)
	st := State{CycleStart: t0, Next: 5, Bits: 4}
	// Before or within a slot of its due time: unchanged.
	for _, now := range []time.Time{t0, t0.Add(5 * time.Hour), t0.Add(6 * time.Hour)} {
		got, _ := s.Resume(st, now)
		if got != st {
			t.Fatalf("at %v: state changed to %+v", now, got)
		}
	}
	// Down for ten hours: region 5 is due at once and the rest keep
	// their spacing, with no burst of overdue regions.
	now := t0.Add(15 * time.Hour)
	got, late := s.Resume(st, now)
	if late != 10*time.Hour || got.Next != 5 || !s.Due(got).Equal(now) {
		t.Fatalf("resume: %+v late %v", got, late)
	}
	if next := s.Advance(got); !s.Due(next).Equal(now.Add(time.Hour)) {
		t.Fatalf("next region due %v", s.Due(next))
	}
	// A new split keeps the place in the keyspace.
	s8 := Schedule{Interval: 16 * time.Hour, Bits: 8}
	got, _ = s8.Resume(st, t0)
	if got.Next != 5*16 || got.Bits != 8 {
		t.Fatalf("resplit: %+v", got)
	}
}

func TestRegions(t *testing.T) {
	var pos [32]byte
	pos[0], pos[1] = 0xab, 0xcd
	for bits, want := range map[int]int{0: 0, 1: 1, 4: 0xa, 8: 0xab, 12: 0xabc, 16: 0xabcd} {
		if got := RegionOf(pos, bits); got != want {
			t.Errorf("bits %d: region %x, want %x", bits, got, want)
		}
		lo, hi := FirstBytes(RegionOf(pos, bits), bits)
		if pos[0] < lo || pos[0] > hi {
			t.Errorf("bits %d: first byte %x outside [%x, %x]", bits, pos[0], lo, hi)
		}
	}
	if lo, hi := FirstBytes(3, 2); lo != 0xc0 || hi != 0xff {
		t.Errorf("FirstBytes(3, 2) = %x, %x", lo, hi)
	}
}

func TestStateEncoding(t *testing.T) {
	st := State{CycleStart: time.Unix(12345, 678), Next: 200, Bits: 8}
	got, err := UnmarshalState(st.Marshal())
	if err != nil || !got.CycleStart.Equal(st.CycleStart) || got.Next != st.Next || got.Bits != st.Bits {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
	bad := st.Marshal()
	bad[12] = 4 // Next 200 does not fit 16 regions
	if _, err := UnmarshalState(bad); err == nil {
		t.Fatal("accepted a region outside the split")
	}
	if _, err := UnmarshalState([]byte{1, 2}); err == nil {
		t.Fatal("accepted short input")
	}
}

func TestValidate(t *testing.T) {
	for _, s := range []Schedule{{0, 4}, {time.Hour, -1}, {time.Hour, 17}, {time.Nanosecond, 8}} {
		if s.Validate() == nil {
			t.Errorf("%+v accepted", s)
		}
	}
	if err := (Schedule{22 * time.Hour, 8}).Validate(); err != nil {
		t.Error(err)
	}
}
