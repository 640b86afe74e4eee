// Package wire frames DHT messages on a stream: an unsigned varint length,
// then that many bytes of protobuf. It enforces the size limit before
// allocating, so a peer announcing a huge frame costs nothing.
package wire

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/kadlib/kad/internal/pb"
)

// DefaultMaxMessageSize is the largest frame accepted, as in go and js.
const DefaultMaxMessageSize = 4 << 20

// ErrTooLarge is returned for a frame over the size limit.
var ErrTooLarge = errors.New("wire: message too large")

// Reader reads length-prefixed messages from one stream.
type Reader struct {
	// Reserve, when set, is asked for n more bytes before the read buffer
	// grows by n; an error fails the read before anything is allocated.
	// It lets the caller charge the buffer to a resource manager scope.
	Reserve func(n int) error

	br  *bufio.Reader
	max int
	buf []byte
}

// NewReader returns a Reader over r accepting frames of at most max bytes.
func NewReader(r io.Reader, max int) *Reader {
	if max <= 0 {
		max = DefaultMaxMessageSize
	}
	return &Reader{br: bufio.NewReaderSize(r, 4096), max: max}
}

// ReadMsg reads and decodes the next message into m. The decoded byte
// slices alias an internal buffer that the next ReadMsg overwrites. It
// returns io.EOF on a clean end of stream between messages.
func (r *Reader) ReadMsg(m *pb.Message) error {
	n, err := binary.ReadUvarint(r.br)
	if err != nil {
		if errors.Is(err, io.EOF) {
			return io.EOF
		}
		return fmt.Errorf("wire: read length: %w", err)
	}
	if n > uint64(r.max) {
		return fmt.Errorf("%w: %d > %d bytes", ErrTooLarge, n, r.max)
	}
	if cap(r.buf) < int(n) {
		if r.Reserve != nil {
			if err := r.Reserve(int(n) - cap(r.buf)); err != nil {
				return fmt.Errorf("wire: reserve %d bytes: %w", int(n)-cap(r.buf), err)
			}
		}
		r.buf = make([]byte, n)
	}
	buf := r.buf[:n]
	if _, err := io.ReadFull(r.br, buf); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return fmt.Errorf("wire: read body: %w", err)
	}
	if err := m.Unmarshal(buf); err != nil {
		return fmt.Errorf("wire: %w", err)
	}
	return nil
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

// WriteMsg encodes m with its length prefix and writes it in one call, so
// that a frame is never interleaved with another writer's.
func WriteMsg(w io.Writer, m *pb.Message) error {
	bp := bufPool.Get().(*[]byte)
	b := AppendMsg((*bp)[:0], m)
	_, err := w.Write(b)
	if cap(b) <= 64<<10 {
		*bp = b
		bufPool.Put(bp)
	}
	if err != nil {
		return fmt.Errorf("wire: write: %w", err)
	}
	return nil
}

// AppendMsg appends m with its length prefix to b, so a sender of many
// messages can put several frames in one write.
func AppendMsg(b []byte, m *pb.Message) []byte {
	b = binary.AppendUvarint(b, uint64(m.Size()))
	return m.Marshal(b)
}
