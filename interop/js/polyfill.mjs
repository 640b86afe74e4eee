// Promise.withResolvers arrived in Node 22; some js-libp2p dependencies call
// it unconditionally. This module must be evaluated before any of them, so
// peer.mjs installs it first and loads libp2p with dynamic import() after.
// On a runtime that already has it, nothing is touched.
if (typeof Promise.withResolvers !== 'function') {
  Object.defineProperty(Promise, 'withResolvers', {
    configurable: true,
    writable: true,
    enumerable: false,
    value: function withResolvers () {
      let resolve
      let reject
      const promise = new this((res, rej) => {
        resolve = res
        reject = rej
      })
      return { promise, resolve, reject }
    }
  })
}
