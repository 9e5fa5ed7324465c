// tls.test.mjs - Node's `ws` and web/sente-lite.js over wss:// against the
// real server (issue 16): the server's certificate is checked against a
// test CA made here (openssl), permessage-deflate is negotiated (ws offers
// it by default) and used both ways: the server's compressed frames are
// inflated by ws, ws's compressed publishes are inflated by the server.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import { SenteLite } from '../../web/sente-lite.js';
import { startServer, makeCerts, waitFor, WebSocket } from './server.mjs';

let server, certs, ca;
const open = []; // closed after each test

before(async () => {
  certs = makeCerts(mkdtempSync(path.join(os.tmpdir(), 'sente-web-tls-')));
  ca = readFileSync(certs.ca);
  server = await startServer([], { tls: certs });
});

after(async () => {
  for (const w of open.splice(0)) w.terminate();
  await server.stop();
  rmSync(certs.dir, { recursive: true, force: true });
});

test.afterEach(() => {
  for (const w of open.splice(0)) w.terminate();
});

/** A ws client on the TLS port; resolves once open, with its messages queued. */
function connect(opts = {}) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(server.wss, { ca, ...opts });
    open.push(ws);
    ws.queue = [];
    ws.waiters = [];
    ws.on('message', (data, binary) => {
      const m = binary ? data : JSON.parse(data.toString());
      const w = ws.waiters.shift();
      if (w) w(m);
      else ws.queue.push(m);
    });
    ws.once('open', () => resolve(ws));
    ws.once('error', reject);
  });
}

/** The next message of ws (JSON decoded). */
function nextMessage(ws) {
  if (ws.queue.length) return Promise.resolve(ws.queue.shift());
  return new Promise((resolve) => ws.waiters.push(resolve));
}

/** Messages of ws until one of type `type`. */
async function until(ws, type) {
  for (;;) {
    const m = await nextMessage(ws);
    if (m.type === type) return m;
  }
}

/** A compressible JSON value of about n bytes. */
function bigDoc(n) {
  const items = [];
  for (let i = 0; JSON.stringify(items).length < n; i++)
    items.push({ sku: `SKU-${10000 + i}`, name: `widget ${i % 7}`, qty: 1 + (i % 4), tags: ['in-stock'] });
  return { items };
}

test('wss with the test CA: permessage-deflate negotiated, compressed both ways', async () => {
  const sub = await connect();
  const pub = await connect();
  assert.equal(sub.extensions, 'permessage-deflate');
  assert.equal((await nextMessage(sub)).type, 'welcome');
  assert.equal((await nextMessage(pub)).type, 'welcome');

  // The socket under ws is TLS, verified against our CA.
  assert.equal(sub._socket.encrypted, true);
  assert.equal(sub._socket.authorized, true);

  sub.send(JSON.stringify({ type: 'subscribe', 'channel-id': 'tls-room' }));
  assert.equal((await until(sub, 'subscription-result')).success, true);

  // 200 KB of JSON: ws compresses it (over its 1 KiB threshold), the server
  // inflates it within --max-message-size, publishes it, and sends it to
  // the subscriber compressed once more; ws inflates it.
  const data = bigDoc(200000);
  const before = (await server.stats())['bytes-out'];
  pub.send(JSON.stringify({ type: 'publish', 'channel-id': 'tls-room', data }));
  const r = await until(pub, 'publish-result');
  assert.equal(r['delivered-to'], 1);
  const m = await until(sub, 'channel-message');
  assert.deepEqual(m.data, data);
  // What went out (to the subscriber, plus the two small replies) is far
  // less than the 200 KB it carried: it was compressed.
  const sent = await waitFor(async () => {
    const d = (await server.stats())['bytes-out'] - before;
    return d > 0 && d;
  }, { what: 'bytes-out to move' });
  assert.ok(sent < 60000, `bytes-out grew by ${sent}`);

  const st = await server.stats();
  assert.ok(st['tls-handshakes'] >= 2);
});

test('without the CA the certificate is refused; with perMessageDeflate off nothing is negotiated', async () => {
  await assert.rejects(new Promise((resolve, reject) => {
    const ws = new WebSocket(server.wss); // the system's CAs only
    open.push(ws);
    ws.once('open', resolve);
    ws.once('error', reject);
  }), /self[- ]signed|unable to verify|local issuer/i);

  const plain = await connect({ perMessageDeflate: false });
  assert.equal(plain.extensions, '');
  assert.equal((await nextMessage(plain)).type, 'welcome');
});

test('https endpoints on the TLS port answer as on the plain one', async () => {
  const get = (p) => new Promise((resolve, reject) => {
    https.get(`${server.https}${p}`, { ca, agent: false }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, body: Buffer.concat(chunks).toString() }));
    }).on('error', reject);
  });
  const h = await get('/health');
  assert.equal(h.status, 200);
  assert.equal(JSON.parse(h.body).status, 'healthy');
  const js = await get('/client.js');
  assert.equal(js.status, 200);
  assert.match(js.body, /SenteLite/);
});

test('web/sente-lite.js over wss: subscribe, publish, RPC', async () => {
  // The library takes a WebSocket class; this one carries the CA.
  class WithCA extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols, { ca });
    }
  }
  const a = new SenteLite(server.wss, { WebSocket: WithCA });
  const b = new SenteLite(server.wss, { WebSocket: WithCA });
  try {
    await a.connect();
    await b.connect();
    const got = [];
    await a.subscribe('lib-room', (d) => got.push(d));
    const data = bigDoc(5000);
    await b.publish('lib-room', data);
    assert.deepEqual(await waitFor(() => got[0], { what: 'the published message' }), data);
    await a.serve('double', (x) => ({ n: x.n * 2 }));
    assert.deepEqual(await b.rpc('double', { n: 21 }), { n: 42 });
  } finally {
    a.close();
    b.close();
  }
});
