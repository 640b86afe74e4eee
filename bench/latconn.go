package main

import (
	"context"
	"net"
	"os"
	"sync"
	"time"
)

// latConn injects a link's one-way latency into a real connection, on the
// dialing side only but in both directions: every Write is handed to the
// socket d after it was made, and every byte read from the socket is given
// to the reader d after it arrived. Order is kept, and neither side's
// writer is held for the latency (the bytes wait in a queue, as they would
// in flight). Dialling through latDialer also takes one round trip (2d),
// as a TCP connect does, so a connection costs its handshakes' round trips
// on top. Loopback itself adds microseconds.
type latConn struct {
	net.Conn
	d time.Duration

	// writes
	wmu     sync.Mutex
	wcond   *sync.Cond
	wq      []chunk
	wbytes  int
	writing bool
	werr    error

	// reads: filled by the reader goroutine, delivered by Read
	rch    chan chunk
	rmu    sync.Mutex
	cur    *chunk
	dlmu   sync.Mutex
	rdl    time.Time
	dlCh   chan struct{} // closed when the read deadline changes
	closed chan struct{}
	once   sync.Once
}

type chunk struct {
	at  time.Time
	b   []byte
	err error
}

// maxInFlight bounds the bytes waiting to be written on one connection:
// past it Write blocks, as on a socket with a full send buffer.
const maxInFlight = 4 << 20

func newLatConn(c net.Conn, d time.Duration) *latConn {
	l := &latConn{Conn: c, d: d, rch: make(chan chunk, 256), dlCh: make(chan struct{}), closed: make(chan struct{})}
	l.wcond = sync.NewCond(&l.wmu)
	go l.readLoop()
	return l
}

func (c *latConn) readLoop() {
	for {
		buf := make([]byte, 16<<10)
		n, err := c.Conn.Read(buf)
		at := time.Now().Add(c.d)
		if n > 0 {
			select {
			case c.rch <- chunk{at: at, b: buf[:n]}:
			case <-c.closed:
				return
			}
		}
		if err != nil {
			select {
			case c.rch <- chunk{at: at, err: err}:
			case <-c.closed:
			}
			return
		}
	}
}

func (c *latConn) Read(p []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	for {
		c.dlmu.Lock()
		dl, dlCh := c.rdl, c.dlCh
		c.dlmu.Unlock()
		var timeout <-chan time.Time
		if !dl.IsZero() {
			if time.Until(dl) <= 0 {
				return 0, os.ErrDeadlineExceeded
			}
			t := time.NewTimer(time.Until(dl))
			defer t.Stop()
			timeout = t.C
		}
		if c.cur == nil {
			select {
			case ch := <-c.rch:
				c.cur = &ch
			case <-timeout:
				return 0, os.ErrDeadlineExceeded
			case <-dlCh:
				continue
			case <-c.closed:
				return 0, net.ErrClosed
			}
		}
		if wait := time.Until(c.cur.at); wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-timeout:
				t.Stop()
				return 0, os.ErrDeadlineExceeded
			case <-dlCh:
				t.Stop()
				continue
			case <-c.closed:
				t.Stop()
				return 0, net.ErrClosed
			}
		}
		if len(c.cur.b) == 0 {
			if c.cur.err != nil {
				return 0, c.cur.err
			}
			c.cur = nil
			continue
		}
		n := copy(p, c.cur.b)
		c.cur.b = c.cur.b[n:]
		if len(c.cur.b) == 0 && c.cur.err == nil {
			c.cur = nil
		}
		return n, nil
	}
}

func (c *latConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	for c.wbytes >= maxInFlight && c.werr == nil {
		c.wcond.Wait()
	}
	if c.werr != nil {
		return 0, c.werr
	}
	c.wq = append(c.wq, chunk{at: time.Now().Add(c.d), b: append([]byte(nil), p...)})
	c.wbytes += len(p)
	if !c.writing {
		c.writing = true
		go c.flush()
	}
	return len(p), nil
}

// flush hands queued writes to the socket when their time has come,
// everything due in one write; it exits when the queue is empty, so an
// idle connection holds no writer goroutine.
func (c *latConn) flush() {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	for len(c.wq) > 0 && c.werr == nil {
		at := c.wq[0].at
		c.wmu.Unlock()
		time.Sleep(time.Until(at))
		c.wmu.Lock()
		now := time.Now()
		var buf []byte
		i := 0
		for ; i < len(c.wq) && !c.wq[i].at.After(now); i++ {
			buf = append(buf, c.wq[i].b...)
		}
		c.wq = c.wq[i:]
		c.wmu.Unlock()
		_, err := c.Conn.Write(buf)
		c.wmu.Lock()
		if err != nil && c.werr == nil {
			c.werr = err
		}
		c.wbytes -= len(buf)
		c.wcond.Broadcast()
	}
	c.writing = false
	c.wcond.Broadcast()
}

// Close lets the bytes already written leave (for at most a second past
// the latency), then closes the socket; it does not wait for that.
func (c *latConn) Close() error {
	c.once.Do(func() {
		close(c.closed)
		go func() {
			deadline := time.Now().Add(c.d + time.Second)
			c.wmu.Lock()
			for c.writing && c.werr == nil && time.Now().Before(deadline) {
				c.wmu.Unlock()
				time.Sleep(5 * time.Millisecond)
				c.wmu.Lock()
			}
			if c.werr == nil {
				c.werr = net.ErrClosed
			}
			c.wcond.Broadcast()
			c.wmu.Unlock()
			_ = c.Conn.Close()
		}()
	})
	return nil
}

func (c *latConn) SetReadDeadline(t time.Time) error {
	c.dlmu.Lock()
	c.rdl = t
	close(c.dlCh)
	c.dlCh = make(chan struct{})
	c.dlmu.Unlock()
	return nil
}

// SetWriteDeadline is accepted and ignored: writes return at once unless
// more than maxInFlight bytes are queued.
func (c *latConn) SetWriteDeadline(time.Time) error { return nil }

func (c *latConn) SetDeadline(t time.Time) error { return c.SetReadDeadline(t) }

// latDialer dials TCP and wraps the connection in a latConn of the link's
// latency; the connect itself takes one round trip.
type latDialer struct {
	d time.Duration
}

func (l latDialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	var nd net.Dialer
	c, err := nd.DialContext(ctx, network, address)
	// SYN and SYN-ACK (or RST) cross the link before connect returns.
	t := time.NewTimer(2 * l.d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
		if c != nil {
			_ = c.Close()
		}
		return nil, ctx.Err()
	}
	if err != nil {
		return nil, err
	}
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetKeepAlive(true)
		_ = tc.SetKeepAlivePeriod(30 * time.Second)
	}
	return newLatConn(c, l.d), nil
}
