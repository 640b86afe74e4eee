package kad

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests if any goroutine is left once they
// all ran and cleaned up: every DHT, host and mocknet a test starts must
// be closed by it.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// goleveldb's DB.Close leaves this goroutine draining its memory
		// pool for up to a second; it then ends. The tests close every
		// database they open.
		goleak.IgnoreTopFunction("github.com/syndtr/goleveldb/leveldb.(*DB).mpoolDrain"),
	)
}
