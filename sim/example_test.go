package sim_test

import (
	"fmt"

	"github.com/kadlib/kad/sim"
)

// A small network, looked up from random nodes: every lookup finds the
// true 20 closest peers.
func ExampleRun() {
	res, err := sim.Run(sim.Config{N: 200, Seed: 1, Lookups: 20})
	if err != nil {
		panic(err)
	}
	fmt.Printf("recall %.2f in %d lookups\n", res.Lookup.Recall, res.Lookup.Lookups)
	// Output: recall 1.00 in 20 lookups
}
