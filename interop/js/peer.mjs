// A js-libp2p Kademlia peer that kad's Go interop tests drive as a
// subprocess. It speaks newline-delimited JSON: one event line on start,
//
//   {"event":"ready","id":"<peer id>","addrs":["/ip4/127.0.0.1/tcp/N/p2p/<id>"]}
//
// then one answer per request line:
//
//   -> {"id":N,"cmd":"get","key":"/v/hello","timeoutMs":5000}
//   <- {"id":N,"ok":true,"value":"...","valueBase64":"..."}
//   <- {"id":N,"ok":false,"error":"..."}
//
// Requests run concurrently; every one is bounded by timeoutMs (default
// 20000) because js lookups wait, without limit, for a first routing-table
// peer. stdout carries only protocol lines: console output and libp2p debug
// logs (DEBUG=libp2p:*) go to stderr. The process exits when stdin closes,
// on "stop", or on SIGINT/SIGTERM.
//
// Set KAD_JSPEER_LISTEN to listen on another multiaddr than
// /ip4/127.0.0.1/tcp/0, and KAD_JSPEER_QUIET=1 to keep the DHT from
// starting lookups by itself.

import './polyfill.mjs'
import { createInterface } from 'node:readline'

// Anything a dependency prints with console.log would corrupt the protocol.
console.log = console.error
console.info = console.error
console.debug = console.error

const DEFAULT_TIMEOUT_MS = 20_000
const STOP_TIMEOUT_MS = 5_000

function send (obj) {
  process.stdout.write(JSON.stringify(obj) + '\n')
}

// Error codes let the Go side test outcomes without matching messages.
function codedError (code, name, message) {
  const err = new Error(message)
  err.name = name
  err.code = code
  return err
}
const badRequest = (message) => codedError('BAD_REQUEST', 'BadRequestError', message)
const notFound = () => codedError('NOT_FOUND', 'NotFoundError', 'not found')
const timedOut = (ms) => codedError('TIMEOUT', 'TimeoutError', `timed out after ${ms} ms`)

function errorCode (err) {
  if (['BAD_REQUEST', 'NOT_FOUND', 'TIMEOUT'].includes(err?.code)) return err.code
  if (err?.name === 'NotFoundError') return 'NOT_FOUND'
  if (err?.name === 'TimeoutError' || err?.name === 'AbortError') return 'TIMEOUT'
  return 'ERROR'
}

function errorText (err) {
  if (err == null) return 'unknown error'
  if (typeof err === 'string') return err
  const name = err.name != null && err.name !== 'Error' ? `${err.name}: ` : ''
  return `${name}${err.message ?? String(err)}`
}

process.on('unhandledRejection', (err) => {
  console.error('jspeer: unhandled rejection:', err)
})
process.on('uncaughtException', (err) => {
  console.error('jspeer: uncaught exception:', err)
})

let mods
try {
  const [libp2p, tcp, noise, yamux, identify, ping, kad, peerId, ma, cid] = await Promise.all([
    import('libp2p'),
    import('@libp2p/tcp'),
    import('@chainsafe/libp2p-noise'),
    import('@chainsafe/libp2p-yamux'),
    import('@libp2p/identify'),
    import('@libp2p/ping'),
    import('@libp2p/kad-dht'),
    import('@libp2p/peer-id'),
    import('@multiformats/multiaddr'),
    import('multiformats/cid')
  ])
  mods = { libp2p, tcp, noise, yamux, identify, ping, kad, peerId, ma, cid }
} catch (err) {
  const hint = err?.code === 'ERR_MODULE_NOT_FOUND' ? ' (run `npm ci` in interop/js)' : ''
  send({ event: 'error', error: `loading js-libp2p failed${hint}: ${errorText(err)}` })
  process.exit(3)
}

const { createLibp2p } = mods.libp2p
const { kadDHT, passthroughMapper } = mods.kad
const { multiaddr } = mods.ma
const { peerIdFromString } = mods.peerId
const { CID } = mods.cid

const utf8 = new TextEncoder()
const utf8Decoder = new TextDecoder()

function compareBytes (a, b) {
  const n = Math.min(a.length, b.length)
  for (let i = 0; i < n; i++) {
    if (a[i] !== b[i]) return a[i] - b[i]
  }
  return a.length - b.length
}

// Namespace "v" is the tests' own: any value is valid, and the
// lexicographically greatest value wins, so a test can make a newer record
// beat an older one just by choosing its bytes.
const validators = {
  v: async () => {}
}
const selectors = {
  v: (key, records) => {
    let best = 0
    for (let i = 1; i < records.length; i++) {
      if (compareBytes(records[i], records[best]) > 0) best = i
    }
    return best
  }
}

// KAD_JSPEER_QUIET=1 stops the lookups the DHT starts by itself: the self
// lookup a second after start (and every 5 minutes) and the table refresh
// it holds back. They would reach, through the first peer, whatever peer
// joins next, at a moment no test chooses. Lookups then no longer wait
// for a first routing-table peer either: with none they end at once.
const quietOptions = process.env.KAD_JSPEER_QUIET === '1'
  ? { initialQuerySelfInterval: 2 ** 31 - 1, querySelfInterval: 2 ** 31 - 1, allowQueryWithZeroPeers: true }
  : {}

let node
try {
  node = await createLibp2p({
    addresses: {
      listen: [process.env.KAD_JSPEER_LISTEN ?? '/ip4/127.0.0.1/tcp/0']
    },
    transports: [mods.tcp.tcp()],
    connectionEncrypters: [mods.noise.noise()],
    streamMuxers: [mods.yamux.yamux()],
    connectionManager: {
      // Every test peer dials from loopback: keep the per-host inbound rate
      // limit (5/s) and the connection pruner away from them.
      allow: ['/ip4/127.0.0.0/ipcidr/8', '/ip6/::1/ipcidr/128']
    },
    services: {
      identify: mods.identify.identify(),
      // kad-dht finds this service by the name "ping".
      ping: mods.ping.ping(),
      dht: kadDHT({
        protocol: '/ipfs/kad/1.0.0',
        clientMode: false,
        // The default mapper drops private (loopback) addresses, which would
        // keep every local test peer out of the routing table.
        peerInfoMapper: passthroughMapper,
        validators,
        selectors,
        ...quietOptions
      })
    }
  })
} catch (err) {
  send({ event: 'error', error: `starting libp2p failed: ${errorText(err)}` })
  process.exit(4)
}

const dht = node.services.dht

function withPeerId (addr) {
  const s = addr.toString()
  return s.includes('/p2p/') ? s : `${s}/p2p/${node.peerId.toString()}`
}

function peerInfoJSON (info) {
  return {
    id: info.id.toString(),
    addrs: (info.multiaddrs ?? []).map(a => a.toString())
  }
}

function keyBytes (args) {
  if (typeof args.keyBase64 === 'string') return Buffer.from(args.keyBase64, 'base64')
  if (typeof args.key === 'string') return utf8.encode(args.key)
  if (typeof args.peer === 'string') return argPeer(args).toMultihash().bytes
  throw badRequest('missing "key" (or "keyBase64")')
}

function valueBytes (args) {
  if (typeof args.valueBase64 === 'string') return Buffer.from(args.valueBase64, 'base64')
  if (typeof args.value === 'string') return utf8.encode(args.value)
  throw badRequest('missing "value" (or "valueBase64")')
}

function needString (args, name) {
  if (typeof args[name] !== 'string' || args[name] === '') {
    throw badRequest(`missing "${name}"`)
  }
  return args[name]
}

function parsed (what, text, parse) {
  try {
    return parse(text)
  } catch (err) {
    throw badRequest(`bad ${what} ${JSON.stringify(text)}: ${errorText(err)}`)
  }
}
const argPeer = (args, name = 'peer') => parsed('peer id', needString(args, name), peerIdFromString)
const argCID = (args) => parsed('cid', needString(args, 'cid'), (s) => CID.parse(s))
const argAddr = (args) => parsed('multiaddr', needString(args, 'addr'), multiaddr)

function routingTablePeers () {
  const rt = dht.routingTable
  if (rt?.kb?.toIterable != null) {
    return [...rt.kb.toIterable()].map(p => p.peerId.toString())
  }
  throw new Error('this @libp2p/kad-dht version does not expose routingTable.kb')
}

function queryErrorJSON (ev) {
  return { peer: ev.from?.toString(), error: errorText(ev.error) }
}

const commands = {
  async ping () {
    return {}
  },

  async info () {
    return {
      peer: { id: node.peerId.toString(), addrs: node.getMultiaddrs().map(withPeerId) },
      mode: dht.getMode()
    }
  },

  async connect (args, signal) {
    const addr = argAddr(args)
    const conn = await node.dial(addr, { signal })
    return { remotePeer: conn.remotePeer.toString() }
  },

  async disconnect (args, signal) {
    await node.hangUp(argPeer(args), { signal })
    return {}
  },

  async peers () {
    return {
      peers: node.getConnections().map(c => ({
        id: c.remotePeer.toString(),
        addr: c.remoteAddr.toString()
      }))
    }
  },

  async put (args, signal) {
    const stored = new Set()
    const errors = []
    for await (const ev of dht.put(keyBytes(args), valueBytes(args), { signal })) {
      if (ev.name === 'PEER_RESPONSE' && ev.messageName === 'PUT_VALUE') {
        stored.add(ev.from.toString())
      } else if (ev.name === 'QUERY_ERROR') {
        // "Value not put correctly" follows the response it judges.
        stored.delete(ev.from?.toString())
        errors.push(queryErrorJSON(ev))
      }
    }
    return { stored: [...stored], errors }
  },

  async get (args, signal) {
    let best
    for await (const ev of dht.get(keyBytes(args), { signal })) {
      if (ev.name === 'VALUE') best = ev
    }
    if (best == null) throw notFound()
    return {
      value: utf8Decoder.decode(best.value),
      valueBase64: Buffer.from(best.value).toString('base64'),
      from: best.from.toString()
    }
  },

  // getLocal reads the node's own record store only, with no lookup: it is
  // how a test proves a peer stored a record (a PUT_VALUE echo does not:
  // this kad-dht echoes records it refused).
  async getLocal (args, signal) {
    let rec
    try {
      rec = await dht.contentFetching.getLocal(keyBytes(args), { signal })
    } catch (err) {
      if (err?.name === 'NotFoundError') throw notFound()
      throw err
    }
    return {
      value: utf8Decoder.decode(rec.value),
      valueBase64: Buffer.from(rec.value).toString('base64')
    }
  },

  async provide (args, signal) {
    const cid = argCID(args)
    const sent = new Set()
    const errors = []
    for await (const ev of dht.provide(cid, { signal })) {
      if (ev.name === 'PEER_RESPONSE' && ev.messageName === 'ADD_PROVIDER') {
        sent.add(ev.from.toString())
      } else if (ev.name === 'QUERY_ERROR') {
        errors.push(queryErrorJSON(ev))
      }
    }
    return { sent: [...sent], errors }
  },

  async findProviders (args, signal) {
    const cid = argCID(args)
    const count = Number.isInteger(args.count) && args.count > 0 ? args.count : Infinity
    const seen = new Map()
    outer: for await (const ev of dht.findProviders(cid, { signal })) {
      if (ev.name !== 'PROVIDER') continue
      for (const p of ev.providers) {
        const id = p.id.toString()
        // from: the peer whose answer listed it first (ourselves for our
        // own records), so a test can tell which node served a record.
        if (!seen.has(id)) seen.set(id, { ...peerInfoJSON(p), from: ev.from.toString() })
        if (seen.size >= count) break outer
      }
    }
    return { providers: [...seen.values()] }
  },

  async findPeer (args, signal) {
    const id = argPeer(args)
    const options = { signal }
    if (typeof args.useCache === 'boolean') options.useCache = args.useCache
    for await (const ev of dht.findPeer(id, options)) {
      if (ev.name === 'FINAL_PEER' && ev.peer.id.equals(id)) {
        return { peer: peerInfoJSON(ev.peer) }
      }
    }
    throw notFound()
  },

  async closest (args, signal) {
    const peers = []
    for await (const ev of dht.getClosestPeers(keyBytes(args), { signal })) {
      if (ev.name === 'FINAL_PEER') peers.push(ev.peer.id.toString())
    }
    return { peers }
  },

  async routingTable () {
    return { peers: routingTablePeers() }
  }
}

async function runWithTimeout (fn, args, timeoutMs) {
  const controller = new AbortController()
  let timer
  const expiry = new Promise((resolve, reject) => {
    timer = setTimeout(() => {
      const err = timedOut(timeoutMs)
      controller.abort(err)
      reject(err)
    }, timeoutMs)
  })
  try {
    // The race covers code paths that do not watch the signal.
    return await Promise.race([fn(args, controller.signal), expiry])
  } finally {
    clearTimeout(timer)
  }
}

let stopping = false

async function shutdown (code) {
  if (stopping) return
  stopping = true
  const timer = setTimeout(() => {
    console.error('jspeer: node.stop() timed out')
    process.exit(code)
  }, STOP_TIMEOUT_MS)
  try {
    await node.stop()
  } catch (err) {
    console.error('jspeer: node.stop() failed:', err)
  }
  clearTimeout(timer)
  process.exit(code)
}

async function handleLine (line) {
  if (line.trim() === '') return
  let req
  try {
    req = JSON.parse(line)
  } catch (err) {
    send({ id: null, ok: false, code: 'BAD_REQUEST', error: `bad request: ${errorText(err)}` })
    return
  }
  if (req == null || typeof req !== 'object' || Array.isArray(req)) {
    send({ id: null, ok: false, code: 'BAD_REQUEST', error: 'bad request: not a JSON object' })
    return
  }
  const id = req.id ?? null
  const cmd = req.cmd
  if (cmd === 'stop') {
    send({ id, ok: true })
    await shutdown(0)
    return
  }
  const fn = typeof cmd === 'string' && Object.hasOwn(commands, cmd) ? commands[cmd] : undefined
  if (fn == null) {
    send({ id, ok: false, code: 'BAD_REQUEST', error: `unknown command ${JSON.stringify(cmd)}` })
    return
  }
  const timeoutMs = Number.isFinite(req.timeoutMs) && req.timeoutMs > 0 ? req.timeoutMs : DEFAULT_TIMEOUT_MS
  try {
    const result = await runWithTimeout(fn, req, timeoutMs)
    if (!stopping) send({ ...result, id, ok: true })
  } catch (err) {
    if (!stopping) send({ id, ok: false, code: errorCode(err), error: `${cmd}: ${errorText(err)}` })
  }
}

process.on('SIGINT', () => { void shutdown(0) })
process.on('SIGTERM', () => { void shutdown(0) })

const rl = createInterface({ input: process.stdin, crlfDelay: Infinity })
rl.on('line', (line) => {
  handleLine(line).catch(err => {
    console.error('jspeer: request failed:', err)
  })
})
rl.on('close', () => { void shutdown(0) })

send({
  event: 'ready',
  id: node.peerId.toString(),
  addrs: node.getMultiaddrs().map(withPeerId)
})
