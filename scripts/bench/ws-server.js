#!/usr/bin/env node
// A single-process Node.js pub/sub server on the `ws` package that speaks the
// sente-lite JSON protocol (PROTOCOL.md sections 2-3, the subset a benchmark
// and a typical chat/pubsub app need): a benchmark peer written the way people
// write such servers with ws, with the obvious efficiency measures (each
// published message serialized once, into one Buffer that every subscriber's
// frame shares; no permessage-deflate; bufferutil for masking).
//
//   node scripts/bench/ws-server.js [--port PORT] [--host HOST]
//        [--max-message-size BYTES] [--max-outbound-bytes BYTES]
//        [--rpc-timeout-ms MS]
//
// PORT / HOST from the environment are used when the flags are absent
// (defaults 3000 / 127.0.0.1). Prints `listening` on stdout when ready.
// WebSocket on ws://HOST:PORT/ ; GET /health -> 200 {"status":"healthy"}.
//
// Not implemented (not needed by the benchmarks): retention and since-seq
// recovery (retained-messages is always []), admin API, /stats, heartbeat
// pings, max-subscribers and max-connections limits, --no-auto-create.
'use strict';

const path = require('path');
const http = require('http');
const crypto = require('crypto');
const { WebSocketServer } = require(path.join(__dirname, 'node', 'node_modules', 'ws'));

function parseArgs(argv) {
  const opts = {
    port: +(process.env.PORT || 3000),
    host: process.env.HOST || '127.0.0.1',
    maxMessageSize: 1024 * 1024,
    maxOutboundBytes: 4 * 1024 * 1024,
    rpcTimeoutMs: 30000,
  };
  const num = (flag, v) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 0) { console.error(`ws-server: bad value for ${flag}: ${v}`); process.exit(2); }
    return n;
  };
  for (let i = 2; i < argv.length; i++) {
    const a = argv[i];
    const [flag, inline] = a.includes('=') ? [a.slice(0, a.indexOf('=')), a.slice(a.indexOf('=') + 1)] : [a, undefined];
    const val = () => (inline !== undefined ? inline : argv[++i]);
    switch (flag) {
      case '--port': opts.port = num(flag, val()); break;
      case '--host': opts.host = val(); break;
      case '--max-message-size': opts.maxMessageSize = num(flag, val()); break;
      case '--max-outbound-bytes': opts.maxOutboundBytes = num(flag, val()); break;
      case '--rpc-timeout-ms': opts.rpcTimeoutMs = num(flag, val()); break;
      case '--help': case '-h':
        console.log('usage: node ws-server.js [--port PORT] [--host HOST] [--max-message-size N] [--max-outbound-bytes N] [--rpc-timeout-ms MS]');
        process.exit(0);
        break;
      default: console.error(`ws-server: unknown argument ${a}`); process.exit(2);
    }
  }
  if (!(opts.port >= 0 && opts.port < 65536)) { console.error('ws-server: bad --port'); process.exit(2); }
  return opts;
}

const opts = parseArgs(process.argv);

// ---- state -----------------------------------------------------------------
let connCounter = 0;
let msgCounter = 0;
let reqCounter = 0;
const channels = new Map();   // channel-id -> {subs:Set<ws>, seq, epoch, createdAt, messageCount}
const pending = new Map();    // request-id -> {requester:ws, timer}
const conns = new Set();

const now = () => Date.now();
const TEXT = { binary: false };

function sendObj(ws, obj) {
  if (ws.readyState === 1) ws.send(JSON.stringify(obj));
}

function errorObj(reason, message, extra) {
  return Object.assign({ type: 'error', message, reason, timestamp: now() }, extra);
}

// 1-128 bytes of UTF-8 without C0, DEL or C1 control characters.
function validChannelId(id) {
  if (typeof id !== 'string' || id.length === 0) return false;
  if (Buffer.byteLength(id, 'utf8') > 128) return false;
  // eslint-disable-next-line no-control-regex
  return !/[\u0000-\u001f\u007f-\u009f]/.test(id);
}

function newEpoch() {
  return crypto.randomBytes(6).toString('base64url');
}

// Hands one serialized frame payload to a subscriber; a subscriber whose
// outbound queue is over the bound is disconnected (1008) instead of letting
// the server's memory grow without limit.
function deliver(ws, buf) {
  if (ws.readyState !== 1) return false;
  if (ws.bufferedAmount > opts.maxOutboundBytes) {
    ws.close(1008, 'slow consumer');
    return false;
  }
  ws.send(buf, TEXT);
  return true;
}

// ---- handlers ----------------------------------------------------------------
function needString(ws, msg, field) {
  if (typeof msg[field] !== 'string') {
    sendObj(ws, errorObj('invalid-message', `field ${field} is missing or not a string`));
    return false;
  }
  return true;
}

function onSubscribe(ws, msg) {
  if (!needString(ws, msg, 'channel-id')) return;
  const id = msg['channel-id'];
  if (!validChannelId(id)) {
    sendObj(ws, { type: 'subscription-result', 'channel-id': id, success: false, reason: 'invalid-channel-id' });
    return;
  }
  let ch = channels.get(id);
  if (!ch) {
    ch = { subs: new Set(), seq: 0, epoch: newEpoch(), createdAt: now(), messageCount: 0 };
    channels.set(id, ch);
  }
  ch.subs.add(ws);
  ws.subs.add(id);
  const reply = {
    type: 'subscription-result', 'channel-id': id, success: true,
    'subscriber-count': ch.subs.size, epoch: ch.epoch, 'retained-messages': [],
  };
  if (msg['since-seq'] !== undefined) reply.recovered = msg.epoch === ch.epoch && msg['since-seq'] === ch.seq;
  sendObj(ws, reply);
}

function onUnsubscribe(ws, msg) {
  if (!needString(ws, msg, 'channel-id')) return;
  const id = msg['channel-id'];
  const ch = channels.get(id);
  if (!ch || !ws.subs.has(id)) {
    sendObj(ws, { type: 'unsubscription-result', 'channel-id': id, success: false, reason: 'not-subscribed' });
    return;
  }
  ch.subs.delete(ws);
  ws.subs.delete(id);
  sendObj(ws, { type: 'unsubscription-result', 'channel-id': id, success: true });
}

function onPublish(ws, msg) {
  if (!needString(ws, msg, 'channel-id')) return;
  if (!('data' in msg)) { sendObj(ws, errorObj('invalid-message', 'field data is missing')); return; }
  const ex = msg['exclude-sender'];
  if (ex !== undefined && typeof ex !== 'boolean') {
    sendObj(ws, errorObj('invalid-message', 'field exclude-sender is not a boolean'));
    return;
  }
  const id = msg['channel-id'];
  const ch = channels.get(id);
  if (!ch) {
    sendObj(ws, { type: 'publish-result', 'channel-id': id, success: false, reason: 'channel-not-found' });
    return;
  }
  const seq = ++ch.seq;
  ch.messageCount++;
  const messageId = `msg-${++msgCounter}`;
  // Serialized once; every subscriber's frame shares this one Buffer.
  const buf = Buffer.from(JSON.stringify({
    type: 'channel-message', 'channel-id': id, 'message-id': messageId, seq,
    data: msg.data, 'sender-conn-id': ws.connId, 'published-at': now(),
  }));
  let delivered = 0;
  for (const sub of ch.subs) {
    if (ex === true && sub === ws) continue;
    if (deliver(sub, buf)) delivered++;
  }
  sendObj(ws, {
    type: 'publish-result', 'channel-id': id, success: true,
    'message-id': messageId, seq, 'delivered-to': delivered,
  });
}

function onRpcRequest(ws, msg) {
  if (!needString(ws, msg, 'channel-id')) return;
  if (!('data' in msg)) { sendObj(ws, errorObj('invalid-message', 'field data is missing')); return; }
  const t = msg['timeout-ms'];
  if (t !== undefined && !(Number.isInteger(t) && t > 0)) {
    sendObj(ws, errorObj('invalid-message', 'field timeout-ms is not a positive integer'));
    return;
  }
  const id = msg['channel-id'];
  const ch = channels.get(id);
  const requestId = `req-${now()}-${++reqCounter}`;
  const fail = (reason) => sendObj(ws, {
    type: 'rpc-request-result', 'request-id': requestId, 'channel-id': id,
    delivery: { success: false, reason },
  });
  if (!ch) { fail('channel-not-found'); return; }
  const targets = [];
  for (const sub of ch.subs) if (sub !== ws && sub.readyState === 1) targets.push(sub);
  if (targets.length === 0) { fail('no-subscribers'); return; }
  const timeoutMs = t !== undefined ? t : opts.rpcTimeoutMs;
  const buf = Buffer.from(JSON.stringify({
    type: 'rpc-request', 'request-id': requestId, 'channel-id': id, data: msg.data,
    'sender-conn-id': ws.connId, 'created-at': now(), 'timeout-ms': timeoutMs,
  }));
  const subscribers = [];
  for (const sub of targets) if (deliver(sub, buf)) subscribers.push(sub.connId);
  if (subscribers.length === 0) { fail('no-subscribers'); return; }
  const timer = setTimeout(() => {
    pending.delete(requestId);
    ws.pendingRpc.delete(requestId);
    sendObj(ws, errorObj('rpc-timeout', `no response within ${timeoutMs} ms`, { 'request-id': requestId }));
  }, timeoutMs);
  pending.set(requestId, { requester: ws, timer });
  ws.pendingRpc.add(requestId);
  sendObj(ws, {
    type: 'rpc-request-result', 'request-id': requestId, 'channel-id': id,
    delivery: { success: true, 'delivered-to': subscribers.length, subscribers },
  });
}

function onRpcResponse(ws, msg) {
  if (!needString(ws, msg, 'request-id')) return;
  if (!('data' in msg)) { sendObj(ws, errorObj('invalid-message', 'field data is missing')); return; }
  const isErr = msg.error;
  if (isErr !== undefined && typeof isErr !== 'boolean') {
    sendObj(ws, errorObj('invalid-message', 'field error is not a boolean'));
    return;
  }
  const rid = msg['request-id'];
  const p = pending.get(rid);
  if (!p) {
    sendObj(ws, { type: 'rpc-response-result', 'request-id': rid, success: false, reason: 'request-not-found' });
    return;
  }
  clearTimeout(p.timer);
  pending.delete(rid);
  p.requester.pendingRpc.delete(rid);
  sendObj(p.requester, {
    type: 'rpc-response', 'request-id': rid, data: msg.data,
    error: isErr === true, 'responder-conn-id': ws.connId,
  });
  sendObj(ws, { type: 'rpc-response-result', 'request-id': rid, success: true });
}

function onListChannels(ws) {
  const out = {};
  for (const [id, ch] of channels) {
    out[id] = {
      config: { 'max-subscribers': 1000, 'message-retention': 0, 'rpc-timeout-ms': opts.rpcTimeoutMs },
      'created-at': ch.createdAt, 'message-count': ch.messageCount, 'subscriber-count': ch.subs.size,
    };
  }
  sendObj(ws, { type: 'channel-list', channels: out });
}

function onMessage(ws, data, isBinary) {
  if (isBinary) { ws.close(1003, 'binary frames are not supported'); return; }
  let msg;
  try {
    msg = JSON.parse(data);
  } catch (e) {
    sendObj(ws, errorObj('invalid-json', 'message is not valid JSON'));
    return;
  }
  if (msg === null || typeof msg !== 'object' || Array.isArray(msg)) {
    sendObj(ws, errorObj('invalid-message', 'message is not a JSON object'));
    return;
  }
  if (typeof msg.type !== 'string') {
    sendObj(ws, errorObj('invalid-message', 'field type is missing or not a string'));
    return;
  }
  switch (msg.type) {
    case 'publish': onPublish(ws, msg); break;
    case 'subscribe': onSubscribe(ws, msg); break;
    case 'unsubscribe': onUnsubscribe(ws, msg); break;
    case 'ping':
      sendObj(ws, { type: 'pong', timestamp: now(), 'original-timestamp': msg.timestamp === undefined ? null : msg.timestamp });
      break;
    case 'rpc-request': onRpcRequest(ws, msg); break;
    case 'rpc-response': onRpcResponse(ws, msg); break;
    case 'list-channels': onListChannels(ws); break;
    case 'get-subscriptions': sendObj(ws, { type: 'subscription-list', subscriptions: [...ws.subs] }); break;
    default:
      sendObj(ws, { type: 'echo', original: msg, 'conn-id': ws.connId, timestamp: now() });
  }
}

function onClose(ws) {
  conns.delete(ws);
  for (const id of ws.subs) {
    const ch = channels.get(id);
    if (ch) ch.subs.delete(ws);
  }
  ws.subs.clear();
  for (const rid of ws.pendingRpc) {
    const p = pending.get(rid);
    if (p) { clearTimeout(p.timer); pending.delete(rid); }
  }
  ws.pendingRpc.clear();
}

// ---- servers -------------------------------------------------------------------
const HEALTH = JSON.stringify({ status: 'healthy' });
const server = http.createServer((req, res) => {
  const url = req.url.split('?')[0];
  if (req.method === 'GET' && url === '/health') {
    res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(HEALTH) });
    res.end(HEALTH);
    return;
  }
  const body = JSON.stringify({ error: 'not-found', message: `no such path: ${url}` });
  res.writeHead(404, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
  res.end(body);
});

const wss = new WebSocketServer({
  server,
  path: '/',
  perMessageDeflate: false,
  maxPayload: opts.maxMessageSize,
  clientTracking: false,
});

wss.on('connection', (ws) => {
  const t = now();
  ws.connId = `conn-${t}-${++connCounter}`;
  ws.subs = new Set();
  ws.pendingRpc = new Set();
  conns.add(ws);
  ws.on('message', (data, isBinary) => onMessage(ws, data, isBinary));
  ws.on('close', () => onClose(ws));
  ws.on('error', () => {});   // e.g. 1009 over maxPayload: ws closes the connection itself
  sendObj(ws, { type: 'welcome', 'conn-id': ws.connId, 'server-time': t });
});
wss.on('error', (e) => { console.error('ws-server:', e.message); });

server.on('error', (e) => {
  console.error(`ws-server: ${e.message}`);
  process.exit(1);
});
server.listen({ port: opts.port, host: opts.host, backlog: 4096 }, () => {
  const a = server.address();
  process.stdout.write(`listening ${a.address}:${a.port}\n`);
});

function shutdown() {
  for (const ws of conns) ws.close(1001, 'server stopping');
  server.close();
  setTimeout(() => process.exit(0), 500).unref();
  // Exit as soon as every connection is gone.
  const check = setInterval(() => { if (conns.size === 0) process.exit(0); }, 20);
  check.unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
