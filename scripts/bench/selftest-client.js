#!/usr/bin/env node
// Correctness check of one benchmark peer, used by peers-selftest.sh:
// SUBS websocket subscribers join one channel, a publisher sends COUNT
// messages one at a time, and every subscriber must receive all of them,
// exactly once, in order.
//
//   node selftest-client.js nchan|ws PORT [SUBS] [COUNT]
//
// nchan: subscribers on ws://127.0.0.1:PORT/sub/CH; the messages go to
//        ws://127.0.0.1:PORT/pub/CH as websocket frames (nchan answers each
//        with the channel status), the last two by HTTP POST to /pub/CH;
//        payloads must arrive verbatim.
// ws:    the sente-lite protocol on ws://127.0.0.1:PORT/ (subscribe, publish,
//        publish-result with seq and delivered-to, channel-message).
// Exits 0 when everything arrived, 1 otherwise (with the reason on stderr).
'use strict';

const path = require('path');
const http = require('http');
const WebSocket = require(path.join(__dirname, 'node', 'node_modules', 'ws'));

const [kind, portArg, subsArg, countArg] = process.argv.slice(2);
const port = +portArg;
const SUBS = +(subsArg || 3);
const COUNT = +(countArg || 10);
if (!['nchan', 'ws'].includes(kind) || !port) {
  console.error('usage: node selftest-client.js nchan|ws PORT [SUBS] [COUNT]');
  process.exit(2);
}
const base = `ws://127.0.0.1:${port}`;
const channel = `selftest-${process.pid}-${Date.now()}`;

const fail = (msg) => { console.error(`selftest-client(${kind}): FAIL: ${msg}`); process.exit(1); };
setTimeout(() => fail('timed out after 15 s'), 15000).unref();

// Payload of message i (1-based): small JSON, and one of ~100 kB.
// (Connections never offer permessage-deflate: see README, nchan 1.3.6
// crashes on some compressed publishes.)
function payload(i) {
  const o = { i, text: `message ${i}` };
  if (i === 5) o.pad = 'p'.repeat(100000);
  return o;
}

// A websocket whose incoming text messages can be awaited in order.
function connect(url) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { perMessageDeflate: false });
    ws.inbox = [];
    ws.waiters = [];
    ws.on('message', (d, isBinary) => {
      const s = isBinary ? null : d.toString();
      if (ws.waiters.length) ws.waiters.shift()(s); else ws.inbox.push(s);
    });
    ws.on('open', () => resolve(ws));
    ws.on('error', (e) => reject(new Error(`${url}: ${e.message}`)));
    ws.on('unexpected-response', (req, res) => reject(new Error(`${url}: HTTP ${res.statusCode}`)));
  });
}
function next(ws, what, ms = 5000) {
  if (ws.inbox.length) return Promise.resolve(ws.inbox.shift());
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`no ${what} within ${ms} ms`)), ms);
    ws.waiters.push((s) => { clearTimeout(t); resolve(s); });
  });
}
function post(urlPath, body) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path: urlPath, method: 'POST',
      headers: { 'Content-Type': 'text/plain', 'Content-Length': Buffer.byteLength(body) } }, (res) => {
      let data = '';
      res.on('data', (c) => { data += c; });
      res.on('end', () => resolve({ status: res.statusCode, body: data }));
    });
    req.on('error', reject);
    req.end(body);
  });
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function runNchan() {
  const subs = [];
  for (let k = 0; k < SUBS; k++) subs.push(await connect(`${base}/sub/${channel}`));
  // A short pause before publishing (200 rounds of subscribe-then-publish
  // with none never lost a message; this is only a margin).
  await sleep(50);
  const pub = await connect(`${base}/pub/${channel}`);
  const sent = [];
  for (let i = 1; i <= COUNT; i++) {
    const body = JSON.stringify(payload(i));
    sent.push(body);
    if (i <= COUNT - 2) {
      pub.send(body);
      const ack = await next(pub, `websocket publish ack for message ${i}`);
      const m = /active subscribers: (\d+)/.exec(ack || '');
      if (!m) fail(`unexpected websocket publish ack: ${JSON.stringify(ack)}`);
      if (+m[1] !== SUBS) fail(`ack of message ${i} says ${m[1]} subscribers, expected ${SUBS}`);
    } else {
      const r = await post(`/pub/${channel}`, body);
      if (r.status !== 201 && r.status !== 202) fail(`HTTP POST publish answered ${r.status}: ${r.body}`);
    }
  }
  for (let k = 0; k < SUBS; k++) {
    for (let i = 1; i <= COUNT; i++) {
      const got = await next(subs[k], `message ${i} at subscriber ${k}`);
      if (got !== sent[i - 1]) {
        fail(`subscriber ${k}: message ${i} differs: got ${JSON.stringify((got || '').slice(0, 80))}`);
      }
    }
  }
  await sleep(100);
  subs.forEach((s, k) => { if (s.inbox.length) fail(`subscriber ${k} got ${s.inbox.length} extra message(s)`); });
  pub.close();
  subs.forEach((s) => s.close());
}

async function runWs() {
  const subs = [];
  for (let k = 0; k < SUBS; k++) {
    const ws = await connect(`${base}/`);
    const welcome = JSON.parse(await next(ws, 'welcome'));
    if (welcome.type !== 'welcome' || !/^conn-\d+-\d+$/.test(welcome['conn-id'])) fail(`bad welcome: ${JSON.stringify(welcome)}`);
    ws.send(JSON.stringify({ type: 'subscribe', 'channel-id': channel }));
    const r = JSON.parse(await next(ws, 'subscription-result'));
    if (r.type !== 'subscription-result' || r.success !== true || r['subscriber-count'] !== k + 1) {
      fail(`bad subscription-result: ${JSON.stringify(r)}`);
    }
    subs.push(ws);
  }
  const pub = await connect(`${base}/`);
  const pubWelcome = JSON.parse(await next(pub, 'welcome'));
  for (let i = 1; i <= COUNT; i++) {
    pub.send(JSON.stringify({ type: 'publish', 'channel-id': channel, data: payload(i) }));
    const r = JSON.parse(await next(pub, `publish-result ${i}`));
    if (r.type !== 'publish-result' || r.success !== true || r.seq !== i || r['delivered-to'] !== SUBS) {
      fail(`bad publish-result for message ${i}: ${JSON.stringify(r)}`);
    }
  }
  for (let k = 0; k < SUBS; k++) {
    for (let i = 1; i <= COUNT; i++) {
      const m = JSON.parse(await next(subs[k], `message ${i} at subscriber ${k}`));
      if (m.type !== 'channel-message' || m['channel-id'] !== channel || m.seq !== i ||
          JSON.stringify(m.data) !== JSON.stringify(payload(i)) ||
          m['sender-conn-id'] !== pubWelcome['conn-id'] || !/^msg-/.test(m['message-id'])) {
        fail(`subscriber ${k}: bad message ${i}: ${JSON.stringify(m).slice(0, 200)}`);
      }
    }
  }
  await sleep(100);
  subs.forEach((s, k) => { if (s.inbox.length) fail(`subscriber ${k} got ${s.inbox.length} extra message(s)`); });
  pub.close();
  subs.forEach((s) => s.close());
}

(kind === 'nchan' ? runNchan() : runWs())
  .then(() => { console.log(`selftest-client(${kind}): ${SUBS} subscribers got ${COUNT} messages in order`); process.exit(0); })
  .catch((e) => fail(e.message));
