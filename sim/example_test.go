package sim_test

import (
	"fmt"

	"github.com/kadlib/kad/sim"
)

// A small network finds every true closest peer, in a few hops.
func ExampleRun() {
	res, err := sim.Run(sim.Config{N: 200, Seed: 1, Lookups: 20})
	if err != nil {
		panic(err)
	}
	fmt.Printf("recall %.2f, at most %d hops\n", res.Lookup.Recall, res.Lookup.HopsMax)
	// Output: recall 1.00, at most 3 hops
}
