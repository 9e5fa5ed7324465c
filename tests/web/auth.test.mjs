// auth.test.mjs - the client library's access control against the real
// server: the token and getToken() options (authenticate message on every
// connection and reconnection), refresh before expiry, and the
// 'unauthorized' event for a refused token, the authentication deadline
// (4401) and an expired token (4408).
//
// Tokens are HS256, signed here with node:crypto (a secret written to a
// file the server reads with --jwt-secret-file).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac, randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { SenteLite } from '../../web/sente-lite.js';
import { startServer, waitFor, sleep, WebSocket, SLOW } from './server.mjs';

const dir = mkdtempSync(path.join(os.tmpdir(), 'sente-auth-'));
const secret = randomBytes(32).toString('hex');
const secretFile = path.join(dir, 'secret');
writeFileSync(secretFile, secret);

const b64u = (s) => Buffer.from(s).toString('base64url');

/** An HS256 token for `sub`, valid for `ttl` seconds. */
export function token(sub = 'alice', ttl = 600, extra = {}) {
  const head = b64u(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const body = b64u(JSON.stringify({ sub, exp: Math.floor(Date.now() / 1000) + ttl, ...extra }));
  const sig = createHmac('sha256', secret).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${sig}`;
}

let server;
const clients = [];

function client(opts = {}) {
  const c = new SenteLite(server.url, { WebSocket, reconnectMinMs: 50, reconnectMaxMs: 300, ...opts });
  clients.push(c);
  return c;
}

function next(c, event) {
  return new Promise((resolve) => {
    const off = c.on(event, (arg) => { off(); resolve(arg); });
  });
}

before(async () => {
  server = await startServer(['--jwt-secret-file', secretFile, '--auth-timeout-ms', '400',
    '--jwt-leeway-ms', '0', '--namespace', 'team:subscribe=token,publish=token']);
});

after(async () => {
  for (const c of clients.splice(0)) c.close();
  await server.stop();
  rmSync(dir, { recursive: true, force: true });
});

test.afterEach(() => {
  for (const c of clients.splice(0)) c.close();
});

test('a static token: authenticated before anything else, the namespace lets it in', async () => {
  const c = client({ token: token('alice', 600, { channels: ['team:*'], publish: ['team:*'] }) });
  const authed = next(c, 'authenticated');
  await c.connect();
  assert.equal(c.user, 'alice');
  assert.ok(c.expiresAt > Date.now());
  assert.deepEqual(await authed, { user: 'alice', expiresAt: c.expiresAt, refresh: false });
  const got = [];
  await c.subscribe('team:room', (d) => got.push(d));
  await c.publish('team:room', { hi: 1 });
  await waitFor(() => got.length === 1, { what: 'own message' });
  // Calls made before connect() completes wait for the authentication.
  const d = client({ token: token('dora', 600, { publish: ['team:*'] }) });
  const p = d.publish('team:room', 'queued');
  d.connect();
  assert.equal((await p).success, true);
  await waitFor(() => got.length === 2, { what: 'queued message' });
});

test('getToken() is asked on every connection, and to refresh before expiry', async () => {
  let calls = 0;
  const c = client({ getToken: async () => { calls++; return token('bob', 2, { channels: ['team:*'] }); } });
  await c.connect();
  assert.equal(calls, 1);
  const refreshed = next(c, 'authenticated');
  // The first token lives 2 s; the refresh comes before (a fifth of the
  // lifetime early) and keeps the connection: no 4408.
  const r = await refreshed;
  assert.equal(r.refresh, true);
  assert.ok(calls >= 2);
  await sleep(2500 * SLOW);
  assert.equal(c.state, 'open');
  await c.subscribe('team:x');
  // A reconnect asks again.
  const before = calls;
  c.reconnect();
  await waitFor(() => c.state === 'open' && calls > before, { what: 'reconnected with a new token' });
  assert.equal(c.user, 'bob');
});

test('a refused token: unauthorized, connect() rejects, no reconnect', async () => {
  const c = client({ token: token('eve') + 'x' });
  const ev = next(c, 'unauthorized');
  await assert.rejects(c.connect(), (e) => e.code === 'unauthorized');
  assert.equal((await ev).reason, 'invalid-token');
  assert.equal(c.state, 'closed');
  await sleep(300);
  assert.equal(c.state, 'closed');
});

test('no token where one is required: 4401, unauthorized, and no futile reconnect', async () => {
  const c = client();
  const ev = next(c, 'unauthorized');
  await c.connect(); // the server welcomes, then waits for a token
  const e = await ev;
  assert.equal(e.code, 4401);
  assert.equal(e.reason, 'authentication-required');
  await sleep(500);
  assert.equal(c.state, 'closed');
});

test('a static token that expires: 4408 and unauthorized', async () => {
  const c = client({ token: token('fay', 1) });
  const ev = next(c, 'unauthorized');
  await c.connect();
  const e = await ev;
  assert.equal(e.code, 4408);
  assert.equal(e.reason, 'token-expired');
  await sleep(300);
  assert.equal(c.state, 'closed');
});

test('an expired token with getToken(): the reconnection asks for a fresh one', async () => {
  let n = 0;
  // 1: a token that expires in a second; 2: the refresh fails (the
  // 'unauthorized' event says so); the server closes with 4408; 3: the
  // reconnection gets a long-lived token.
  const c = client({
    getToken: async () => {
      n++;
      if (n === 2) throw new Error('identity provider down');
      return token('gus', n === 1 ? 1 : 600);
    },
  });
  const events = [];
  c.on('unauthorized', (e) => events.push(e));
  const reconnected = new Promise((resolve) => c.on('open', (o) => { if (o.reconnected) resolve(); }));
  await c.connect();
  await reconnected;
  assert.equal(c.user, 'gus');
  assert.equal(n, 3);
  assert.deepEqual(events.map((e) => e.reason), ['token-unavailable', 'token-expired']);
  assert.equal(events[0].refresh, true);
  assert.equal(events[1].code, 4408);
});

test('a refresh that narrows the token ends the subscriptions it no longer allows', async () => {
  const c = client({ token: token('hal', 600, { channels: ['team:*'] }) });
  await c.connect();
  await c.subscribe('team:a');
  await c.subscribe('team:b');
  const ev = next(c, 'unsubscribed');
  const r = await c.authenticate(token('hal', 600, { channels: ['team:a'] }));
  assert.equal(r.success, true);
  assert.deepEqual(await ev, { channel: 'team:b', reason: 'permission-revoked' });
  assert.deepEqual(c.subscriptions(), ['team:a']);
  assert.deepEqual(await c.getSubscriptions(), ['team:a']);
  // A reconnection (with the narrower token) does not ask for it again.
  const before = c.connId;
  c.reconnect();
  await waitFor(() => c.state === 'open' && c.connId && c.connId !== before, { what: 'reconnected' });
  assert.deepEqual(await c.getSubscriptions(), ['team:a']);
});
