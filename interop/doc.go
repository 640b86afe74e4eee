// Package interop holds kad's wire-compatibility tests against other DHT
// implementations: go-libp2p-kad-dht as a Go peer, and js-libp2p's kad-dht
// as a Node.js subprocess (see jspeer). It is a separate module so those
// implementations never enter the library's go.mod.
package interop
