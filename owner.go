package kad

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// owner owns every goroutine a node starts: spawn, every and enter are
// the only ways to start or join one, and shutdown cancels the lifetime
// context and waits for all of them. Once shutdown has begun nothing new
// joins, so the wait cannot miss a late start.
type owner struct {
	ctx    context.Context // the node's lifetime: cancelled by shutdown
	cancel context.CancelFunc
	wg     sync.WaitGroup
	// mu orders joins before shutdown's wait: enter adds to wg under
	// the read lock, shutdown marks closed under the write lock.
	mu     sync.RWMutex
	closed atomic.Bool
}

func newOwner() *owner {
	ctx, cancel := context.WithCancel(context.Background())
	return &owner{ctx: ctx, cancel: cancel}
}

// isClosed reports whether shutdown has begun.
func (o *owner) isClosed() bool { return o.closed.Load() }

// enter counts the calling goroutine as owned, so shutdown waits for it,
// unless shutdown has begun: it then reports false and the caller must
// not go on. A caller that got true calls leave when it returns.
func (o *owner) enter() bool {
	o.mu.RLock()
	defer o.mu.RUnlock()
	if o.closed.Load() {
		return false
	}
	o.wg.Add(1)
	return true
}

// leave ends what enter began.
func (o *owner) leave() { o.wg.Done() }

// spawn runs f on an owned goroutine and reports true, or reports false
// without running f if shutdown has begun.
func (o *owner) spawn(f func()) bool {
	if !o.enter() {
		return false
	}
	go func() {
		defer o.wg.Done()
		f()
	}()
	return true
}

// every runs f every interval on an owned goroutine until shutdown; runs
// never overlap.
func (o *owner) every(interval time.Duration, f func()) {
	o.spawn(func() {
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-o.ctx.Done():
				return
			case <-t.C:
				f()
			}
		}
	})
}

// shutdown stops new goroutines from joining, calls stopInputs (which
// cuts off whatever starts work from outside: handlers, notifications),
// cancels the lifetime context and waits for every owned goroutine.
func (o *owner) shutdown(stopInputs func()) {
	o.mu.Lock()
	o.closed.Store(true)
	o.mu.Unlock()
	stopInputs()
	o.cancel()
	o.wg.Wait()
}
