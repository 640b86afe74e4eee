// Package pb is the wire format of the libp2p Kademlia DHT protocol: the
// Message and Record protobufs, encoded and decoded by hand with protowire
// so that the codec has no generated code, no reflection and tolerates the
// unknown fields other implementations add (rust-libp2p's publisher and ttl).
package pb

import (
	"errors"
	"fmt"

	"google.golang.org/protobuf/encoding/protowire"
)

// MessageType is the kind of a DHT request or response.
type MessageType int32

// Message types, with their wire values.
const (
	PutValue     MessageType = 0
	GetValue     MessageType = 1
	AddProvider  MessageType = 2
	GetProviders MessageType = 3
	FindNode     MessageType = 4
	Ping         MessageType = 5
)

// String names the type as the protocol does.
func (t MessageType) String() string {
	switch t {
	case PutValue:
		return "PUT_VALUE"
	case GetValue:
		return "GET_VALUE"
	case AddProvider:
		return "ADD_PROVIDER"
	case GetProviders:
		return "GET_PROVIDERS"
	case FindNode:
		return "FIND_NODE"
	case Ping:
		return "PING"
	}
	return fmt.Sprintf("UNKNOWN(%d)", int32(t))
}

// ConnectionType is the sender's view of its connection to a listed peer.
type ConnectionType int32

// Connection types, with their wire values.
const (
	NotConnected  ConnectionType = 0
	Connected     ConnectionType = 1
	CanConnect    ConnectionType = 2
	CannotConnect ConnectionType = 3
)

// Record is a value stored in the DHT.
type Record struct {
	Key          []byte
	Value        []byte
	TimeReceived string // RFC 3339, stamped by the storing peer
}

// Peer is a peer entry in a response: binary peer id and binary multiaddrs.
type Peer struct {
	ID         []byte
	Addrs      [][]byte
	Connection ConnectionType
}

// Message is every request and response of the protocol.
type Message struct {
	Type            MessageType
	ClusterLevelRaw int32
	Key             []byte
	Record          *Record
	CloserPeers     []Peer
	ProviderPeers   []Peer
}

// ErrMalformed is returned for bytes that are not a valid Message.
var ErrMalformed = errors.New("pb: malformed message")

// Field numbers on the wire.
const (
	fMsgType        = 1
	fMsgKey         = 2
	fMsgRecord      = 3
	fMsgCloser      = 8
	fMsgProviders   = 9
	fMsgCluster     = 10
	fRecKey         = 1
	fRecValue       = 2
	fRecTime        = 5
	fPeerID         = 1
	fPeerAddrs      = 2
	fPeerConnection = 3
)

// Size returns the encoded length of m.
func (m *Message) Size() int {
	n := 0
	if m.Type != 0 {
		n += protowire.SizeTag(fMsgType) + protowire.SizeVarint(uint64(int64(m.Type)))
	}
	if len(m.Key) > 0 {
		n += protowire.SizeTag(fMsgKey) + protowire.SizeBytes(len(m.Key))
	}
	if m.Record != nil {
		n += protowire.SizeTag(fMsgRecord) + protowire.SizeBytes(m.Record.size())
	}
	for i := range m.CloserPeers {
		n += protowire.SizeTag(fMsgCloser) + protowire.SizeBytes(m.CloserPeers[i].size())
	}
	for i := range m.ProviderPeers {
		n += protowire.SizeTag(fMsgProviders) + protowire.SizeBytes(m.ProviderPeers[i].size())
	}
	if m.ClusterLevelRaw != 0 {
		n += protowire.SizeTag(fMsgCluster) + protowire.SizeVarint(uint64(int64(m.ClusterLevelRaw)))
	}
	return n
}

// Marshal appends the encoding of m to b and returns the result. Fields
// are written in field-number order, zero values omitted (proto3).
func (m *Message) Marshal(b []byte) []byte {
	if m.Type != 0 {
		b = protowire.AppendTag(b, fMsgType, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(int64(m.Type)))
	}
	if len(m.Key) > 0 {
		b = protowire.AppendTag(b, fMsgKey, protowire.BytesType)
		b = protowire.AppendBytes(b, m.Key)
	}
	if m.Record != nil {
		b = protowire.AppendTag(b, fMsgRecord, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(m.Record.size()))
		b = m.Record.marshal(b)
	}
	for i := range m.CloserPeers {
		b = appendPeer(b, fMsgCloser, &m.CloserPeers[i])
	}
	for i := range m.ProviderPeers {
		b = appendPeer(b, fMsgProviders, &m.ProviderPeers[i])
	}
	if m.ClusterLevelRaw != 0 {
		b = protowire.AppendTag(b, fMsgCluster, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(int64(m.ClusterLevelRaw)))
	}
	return b
}

func appendPeer(b []byte, field protowire.Number, p *Peer) []byte {
	b = protowire.AppendTag(b, field, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(p.size()))
	return p.marshal(b)
}

func (r *Record) size() int {
	n := 0
	if len(r.Key) > 0 {
		n += protowire.SizeTag(fRecKey) + protowire.SizeBytes(len(r.Key))
	}
	if len(r.Value) > 0 {
		n += protowire.SizeTag(fRecValue) + protowire.SizeBytes(len(r.Value))
	}
	if len(r.TimeReceived) > 0 {
		n += protowire.SizeTag(fRecTime) + protowire.SizeBytes(len(r.TimeReceived))
	}
	return n
}

func (r *Record) marshal(b []byte) []byte {
	if len(r.Key) > 0 {
		b = protowire.AppendTag(b, fRecKey, protowire.BytesType)
		b = protowire.AppendBytes(b, r.Key)
	}
	if len(r.Value) > 0 {
		b = protowire.AppendTag(b, fRecValue, protowire.BytesType)
		b = protowire.AppendBytes(b, r.Value)
	}
	if len(r.TimeReceived) > 0 {
		b = protowire.AppendTag(b, fRecTime, protowire.BytesType)
		b = protowire.AppendString(b, r.TimeReceived)
	}
	return b
}

func (p *Peer) size() int {
	n := 0
	if len(p.ID) > 0 {
		n += protowire.SizeTag(fPeerID) + protowire.SizeBytes(len(p.ID))
	}
	for _, a := range p.Addrs {
		n += protowire.SizeTag(fPeerAddrs) + protowire.SizeBytes(len(a))
	}
	if p.Connection != 0 {
		n += protowire.SizeTag(fPeerConnection) + protowire.SizeVarint(uint64(int64(p.Connection)))
	}
	return n
}

func (p *Peer) marshal(b []byte) []byte {
	if len(p.ID) > 0 {
		b = protowire.AppendTag(b, fPeerID, protowire.BytesType)
		b = protowire.AppendBytes(b, p.ID)
	}
	for _, a := range p.Addrs {
		b = protowire.AppendTag(b, fPeerAddrs, protowire.BytesType)
		b = protowire.AppendBytes(b, a)
	}
	if p.Connection != 0 {
		b = protowire.AppendTag(b, fPeerConnection, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(int64(p.Connection)))
	}
	return b
}

// Unmarshal decodes b into m, replacing its contents. Unknown fields are
// skipped; a known field with the wrong wire type is an error. Byte slices
// in m alias b: callers must not reuse b while m is in use.
func (m *Message) Unmarshal(b []byte) error {
	*m = Message{}
	// Size the peer lists first, and give their addresses one shared
	// backing array: a 20-peer answer then costs two allocations (three
	// with providers), not one per peer and address.
	closer, providers := countPeers(b)
	if closer > 0 {
		m.CloserPeers = make([]Peer, 0, closer)
	}
	if providers > 0 {
		m.ProviderPeers = make([]Peer, 0, providers)
	}
	var addrs [][]byte
	if closer+providers > 0 {
		addrs = make([][]byte, 0, 2*(closer+providers))
	}
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return fmt.Errorf("%w: bad tag", ErrMalformed)
		}
		b = b[n:]
		switch {
		case num == fMsgType && typ == protowire.VarintType:
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return fmt.Errorf("%w: bad type", ErrMalformed)
			}
			m.Type = MessageType(int32(v))
			b = b[n:]
		case num == fMsgCluster && typ == protowire.VarintType:
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return fmt.Errorf("%w: bad cluster level", ErrMalformed)
			}
			m.ClusterLevelRaw = int32(v)
			b = b[n:]
		case num == fMsgKey && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return fmt.Errorf("%w: bad key", ErrMalformed)
			}
			m.Key = v
			b = b[n:]
		case num == fMsgRecord && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return fmt.Errorf("%w: bad record", ErrMalformed)
			}
			r := &Record{}
			if err := r.unmarshal(v); err != nil {
				return err
			}
			m.Record = r
			b = b[n:]
		case (num == fMsgCloser || num == fMsgProviders) && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return fmt.Errorf("%w: bad peer", ErrMalformed)
			}
			var p Peer
			if err := p.unmarshal(v, &addrs); err != nil {
				return err
			}
			if num == fMsgCloser {
				m.CloserPeers = append(m.CloserPeers, p)
			} else {
				m.ProviderPeers = append(m.ProviderPeers, p)
			}
			b = b[n:]
		case num == fMsgType || num == fMsgCluster || num == fMsgKey || num == fMsgRecord || num == fMsgCloser || num == fMsgProviders:
			return fmt.Errorf("%w: field %d has wire type %d", ErrMalformed, num, typ)
		default:
			n := protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return fmt.Errorf("%w: bad unknown field %d", ErrMalformed, num)
			}
			b = b[n:]
		}
	}
	return nil
}

// countPeers counts the closer and provider peer fields of an encoded
// Message, stopping quietly at the first malformed field: Unmarshal
// reports it.
func countPeers(b []byte) (closer, providers int) {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return
		}
		b = b[n:]
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return
		}
		b = b[n:]
		if typ == protowire.BytesType {
			switch num {
			case fMsgCloser:
				closer++
			case fMsgProviders:
				providers++
			}
		}
	}
	return
}

func (r *Record) unmarshal(b []byte) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return fmt.Errorf("%w: bad record tag", ErrMalformed)
		}
		b = b[n:]
		if (num == fRecKey || num == fRecValue || num == fRecTime) && typ != protowire.BytesType {
			return fmt.Errorf("%w: record field %d has wire type %d", ErrMalformed, num, typ)
		}
		if typ == protowire.BytesType && (num == fRecKey || num == fRecValue || num == fRecTime) {
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return fmt.Errorf("%w: bad record field", ErrMalformed)
			}
			switch num {
			case fRecKey:
				r.Key = v
			case fRecValue:
				r.Value = v
			case fRecTime:
				r.TimeReceived = string(v)
			}
			b = b[n:]
			continue
		}
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return fmt.Errorf("%w: bad record field %d", ErrMalformed, num)
		}
		b = b[n:]
	}
	return nil
}

// unmarshal decodes b into p. Its addresses are appended to *arena, and
// p.Addrs is the part of the arena they take, capped so that appending to
// it cannot overwrite the next peer's.
func (p *Peer) unmarshal(b []byte, arena *[][]byte) error {
	start := len(*arena)
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return fmt.Errorf("%w: bad peer tag", ErrMalformed)
		}
		b = b[n:]
		switch {
		case (num == fPeerID || num == fPeerAddrs) && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return fmt.Errorf("%w: bad peer field", ErrMalformed)
			}
			if num == fPeerID {
				p.ID = v
			} else {
				*arena = append(*arena, v)
			}
			b = b[n:]
		case num == fPeerConnection && typ == protowire.VarintType:
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return fmt.Errorf("%w: bad connection", ErrMalformed)
			}
			p.Connection = ConnectionType(int32(v))
			b = b[n:]
		case num == fPeerID || num == fPeerAddrs || num == fPeerConnection:
			return fmt.Errorf("%w: peer field %d has wire type %d", ErrMalformed, num, typ)
		default:
			n := protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return fmt.Errorf("%w: bad peer field %d", ErrMalformed, num)
			}
			b = b[n:]
		}
	}
	if end := len(*arena); end > start {
		p.Addrs = (*arena)[start:end:end]
	}
	return nil
}

// Clone returns a deep copy of m that shares no memory with it, for
// messages decoded from a reused buffer.
func (m *Message) Clone() *Message {
	out := &Message{Type: m.Type, ClusterLevelRaw: m.ClusterLevelRaw, Key: cloneBytes(m.Key)}
	if m.Record != nil {
		out.Record = &Record{Key: cloneBytes(m.Record.Key), Value: cloneBytes(m.Record.Value), TimeReceived: m.Record.TimeReceived}
	}
	out.CloserPeers = clonePeers(m.CloserPeers)
	out.ProviderPeers = clonePeers(m.ProviderPeers)
	return out
}

func cloneBytes(b []byte) []byte {
	if b == nil {
		return nil
	}
	return append([]byte(nil), b...)
}

func clonePeers(ps []Peer) []Peer {
	if ps == nil {
		return nil
	}
	out := make([]Peer, len(ps))
	for i, p := range ps {
		out[i] = Peer{ID: cloneBytes(p.ID), Connection: p.Connection}
		if p.Addrs != nil {
			out[i].Addrs = make([][]byte, len(p.Addrs))
			for j, a := range p.Addrs {
				out[i].Addrs[j] = cloneBytes(a)
			}
		}
	}
	return out
}
