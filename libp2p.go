package kad

import (
	"fmt"
	"slices"

	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/network"
)

// attachHost wires the node to its libp2p host: the stream handler (in
// server mode), the host events that bring table candidates and mode
// changes, and the disconnect notifications; and it considers the peers
// already connected.
func (d *DHT) attachHost() error {
	h := d.h
	sub, err := h.EventBus().Subscribe([]any{
		new(event.EvtPeerIdentificationCompleted),
		new(event.EvtPeerProtocolsUpdated),
		new(event.EvtLocalReachabilityChanged),
	})
	if err != nil {
		return fmt.Errorf("kad: subscribe to host events: %w", err)
	}
	if !d.own.spawn(func() { d.eventLoop(sub) }) {
		_ = sub.Close()
		return ErrClosed
	}
	switch d.cfg.node.mode {
	case ModeServer, ModeAutoServer:
		d.setServing(true)
	}
	h.Network().Notify(d.notifiee())
	// Peers already connected and identified are candidates too.
	for _, p := range h.Network().Peers() {
		d.keeper.consider(p)
	}
	return nil
}

// detachHost undoes attachHost's handler and notifications; Close calls
// it once no new goroutine can start.
func (d *DHT) detachHost() {
	if d.h == nil {
		return
	}
	d.setServing(false)
	d.h.Network().StopNotify(d.notifiee())
}

// setServing registers or removes the stream handler; the host tells
// connected peers through identify.
func (d *DHT) setServing(on bool) {
	d.modeMu.Lock()
	defer d.modeMu.Unlock()
	if on == d.serving {
		return
	}
	if on && d.own.isClosed() {
		return
	}
	d.serving = on
	switch {
	case d.h == nil: // a simulated node: its network reads serving
	case on:
		d.h.SetStreamHandler(d.protocol, d.srv.handleStream)
	default:
		d.h.RemoveStreamHandler(d.protocol)
	}
	d.log.Debug("mode changed", "serving", on)
}

func (d *DHT) eventLoop(sub event.Subscription) {
	defer sub.Close()
	for {
		select {
		case <-d.ctx.Done():
			return
		case ev, ok := <-sub.Out():
			if !ok {
				return
			}
			switch e := ev.(type) {
			case event.EvtPeerIdentificationCompleted:
				d.keeper.consider(e.Peer)
			case event.EvtPeerProtocolsUpdated:
				if slices.Contains(e.Removed, d.protocol) {
					d.keeper.protocolRemoved(e.Peer)
				} else {
					d.keeper.consider(e.Peer)
				}
			case event.EvtLocalReachabilityChanged:
				d.onReachability(e.Reachability)
			}
		}
	}
}

func (d *DHT) onReachability(r network.Reachability) {
	switch d.cfg.node.mode {
	case ModeAuto:
		d.setServing(r == network.ReachabilityPublic)
	case ModeAutoServer:
		d.setServing(r != network.ReachabilityPrivate)
	}
}

// notifiee queues a check of the table peers that disconnect and sets a
// table peer's connection-manager tag again when it reconnects.
func (d *DHT) notifiee() network.Notifiee {
	d.notifyOnce.Do(func() {
		d.notify = &network.NotifyBundle{
			// go-libp2p's connection manager forgets a peer's tags when
			// its last connection closes: a table peer's come back with
			// its next connection.
			ConnectedF: func(n network.Network, c network.Conn) {
				if d.keeper.tags != nil {
					d.keeper.tags.connected(c.RemotePeer())
				}
			},
			DisconnectedF: func(n network.Network, c network.Conn) {
				p := c.RemotePeer()
				// Another connection remains, but the manager may
				// have counted this one as the last and dropped the
				// tag (see connTags.repair).
				if d.keeper.tags != nil && n.Connectedness(p) == network.Connected {
					d.keeper.tags.connected(p)
				}
				d.keeper.peerDisconnected(p)
			},
		}
	})
	return d.notify
}
