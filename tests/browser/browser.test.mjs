// browser.test.mjs - the pages in a real browser: Debian's chromium, headless,
// driven by playwright-core (node --test).  Loopback only.
//
// Screenshots go to build/artifacts/screenshots/ (landing, demo, dashboard,
// demo-recovered, demo-presence).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { SenteLite } from '../../web/sente-lite.js';
import { startServer, waitFor, sleep, WebSocket, ROOT, SLOW } from '../web/server.mjs';

// playwright-core lives in tests/web/node_modules (scripts/deps-web.sh).
const require = createRequire(path.join(ROOT, 'tests', 'web', 'package.json'));
const { chromium } = require('playwright-core');

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const SHOTS = process.env.SCREENSHOT_DIR || path.join(ROOT, 'build', 'artifacts', 'screenshots');
const T = 15000 * SLOW; // playwright waits

let server, browser;
const nodeClients = [];

before(async () => {
  mkdirSync(SHOTS, { recursive: true });
  server = await startServer(['--message-retention', '50']);
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
  });
  console.log(`chromium ${browser.version()}, server on ${server.http}`);
});

after(async () => {
  for (const c of nodeClients.splice(0)) c.close();
  if (browser) await browser.close();
  if (server) await server.stop();
});

async function newPage() {
  // A context of its own per page: no shared localStorage or connections.
  const ctx = await browser.newContext({ viewport: { width: 1100, height: 800 } });
  const page = await ctx.newPage();
  page.setDefaultTimeout(T);
  page.on('pageerror', (e) => console.log(`page error: ${e.message}`));
  return page;
}

async function nodeClient() {
  const c = new SenteLite(server.url, { WebSocket });
  nodeClients.push(c);
  await c.connect();
  return c;
}

/** Open /demo as `name`, join `channel`; returns {page, worker}. */
async function joinDemo(name, channel) {
  const page = await newPage();
  await page.goto(`${server.http}/demo`);
  await page.waitForSelector('#status[data-state="open"]');
  await page.fill('#name', name);
  await page.fill('#channel', channel);
  await page.click('#join');
  await page.waitForSelector('#text:not([disabled])');
  const worker = await page.evaluate(() => window.senteDemo.client.worker);
  return { page, worker };
}

async function say(page, text) {
  await page.fill('#text', text);
  await page.press('#text', 'Enter');
}

/** The chat messages a demo page shows: [{seq, who, text, history}]. */
function shown(page) {
  return page.$$eval('#messages li.message', (lis) => lis.map((li) => ({
    seq: Number(li.dataset.seq),
    who: li.querySelector('.who').textContent,
    text: li.querySelector('.text').textContent,
    history: li.classList.contains('history'),
  })));
}

test('the landing page shows live counts and links to every page', async () => {
  const page = await newPage();
  const resp = await page.goto(`${server.http}/`);
  assert.equal(resp.status(), 200);
  assert.equal(resp.headers()['cache-control'], 'no-cache');
  assert.ok(resp.headers().etag);
  await page.waitForFunction(() => /^\d+$/.test(document.getElementById('live-connections').textContent));
  const health = await (await server.get('/health')).json();
  assert.equal(await page.textContent('#live-channels'), String(health.channels));
  const links = await page.$$eval('nav a', (as) => as.map((a) => a.getAttribute('href')));
  for (const l of ['/demo', '/dashboard', '/stats', '/metrics', '/channels', '/client.js'])
    assert.ok(links.includes(l), `link to ${l}`);
  await page.screenshot({ path: path.join(SHOTS, 'landing.png'), fullPage: true });
  await page.context().close();
});

test('two pages chat through /demo on different workers; each sees both, in order', async () => {
  // The master weighs a WebSocket four times an (idle keep-alive) HTTP
  // connection, so two pages' WebSockets land on different workers.  Should
  // other connections have tipped the balance, shift it with one more
  // connection from here and let bob's library reconnect (its public
  // reconnect()) until it is on the other worker.
  const alice = await joinDemo('alice', 'chat');
  const bob = await joinDemo('bob', 'chat');
  for (let i = 0; bob.worker === alice.worker && i < 12; i++) {
    await nodeClient(); // ballast, closed at the end
    const before = await bob.page.evaluate(() => window.senteDemo.client.connId);
    await bob.page.evaluate(() => window.senteDemo.client.reconnect());
    await bob.page.waitForFunction((b) => {
      const c = window.senteDemo.client;
      return c.state === 'open' && c.connId !== b;
    }, before);
    bob.worker = await bob.page.evaluate(() => window.senteDemo.client.worker);
  }
  // Let bob's subscription be made again before anyone talks.
  await waitFor(() => bob.page.evaluate(async () => (await window.senteDemo.client.getSubscriptions()).includes('chat')),
    { what: 'bob subscribed again' });
  console.log(`alice on worker ${alice.worker}, bob on worker ${bob.worker}`);
  assert.notEqual(alice.worker, bob.worker, 'the two pages should be on different workers');

  for (let i = 1; i <= 4; i++) {
    await say(alice.page, `hello from alice ${i}`);
    await say(bob.page, `hi from bob ${i}`);
  }
  const both = async () => {
    const [a, b] = [await shown(alice.page), await shown(bob.page)];
    return a.length === 8 && b.length === 8 ? [a, b] : null;
  };
  const [a, b] = await waitFor(both, { timeoutMs: 10000, what: '8 messages on both pages' });
  assert.deepEqual(a, b, 'both pages show the same messages in the same order');
  const seqs = a.map((m) => m.seq);
  assert.deepEqual(seqs, [...seqs].sort((x, y) => x - y), 'in seq order');
  assert.equal(new Set(seqs).size, 8, 'no duplicates');
  for (let i = 1; i <= 4; i++) {
    assert.ok(a.some((m) => m.who === 'alice' && m.text === `hello from alice ${i}`));
    assert.ok(a.some((m) => m.who === 'bob' && m.text === `hi from bob ${i}`));
  }
  // Each author's own messages keep their order.
  const order = (who) => a.filter((m) => m.who === who).map((m) => m.text);
  assert.deepEqual(order('alice'), [1, 2, 3, 4].map((i) => `hello from alice ${i}`));
  assert.ok(await alice.page.$$eval('#messages li.mine', (l) => l.length) === 4);
  assert.ok(await alice.page.$$eval('#messages time.when', (l) => l.every((t) => t.dateTime)));

  // Someone joining later sees the history (the server retains 50).
  const carol = await joinDemo('carol', 'chat');
  const h = await waitFor(async () => { const s = await shown(carol.page); return s.length === 8 && s; },
    { what: 'history on join' });
  assert.ok(h.every((m) => m.history), 'marked as history');
  assert.deepEqual(h.map((m) => m.seq), seqs);
  assert.equal(await carol.page.isHidden('#retention-note'), true);
  await alice.page.screenshot({ path: path.join(SHOTS, 'demo.png'), fullPage: true });
  for (const p of [alice.page, bob.page, carol.page]) await p.context().close();
});

test('the demo says so when the channel retains nothing', async () => {
  const srv = await startServer([]); // retention 0
  try {
    const page = await newPage();
    await page.goto(`${srv.http}/demo?name=dora&channel=quiet`);
    await page.waitForSelector('#status[data-state="open"]');
    await page.click('#join');
    await page.waitForSelector('#retention-note:not([hidden])');
    assert.match(await page.textContent('#retention-note'), /retains no messages/);
    await page.context().close();
  } finally {
    await srv.stop();
  }
});

test('the demo shows who is in the room and announces arrivals and departures', async () => {
  const srv = await startServer(['--join-leave', '--message-retention', '10']);
  const people = (page) => page.$$eval('#people-list li', (l) => l.map((x) => x.textContent));
  const notes = (page) => page.$$eval('#messages li.system', (l) => l.map((x) => x.textContent));
  try {
    const open = async (name) => {
      const page = await newPage();
      await page.goto(`${srv.http}/demo?name=${name}&channel=room&autojoin=1`);
      await page.waitForSelector('#text:not([disabled])');
      await page.waitForSelector('#people:not([hidden])');
      return page;
    };
    const amy = await open('amy');
    assert.deepEqual(await people(amy), ['amy (you)']);
    await say(amy, 'hello, anyone?');
    const ben = await open('ben');
    // ben sees who was there (presence), amy sees ben arrive (a join event).
    await ben.waitForFunction(() => document.querySelectorAll('#people-list li').length === 2);
    await amy.waitForFunction(() => document.querySelectorAll('#people-list li').length === 2);
    assert.ok((await notes(amy)).some((n) => /^guest \S+ joined\.$/.test(n)), (await notes(amy)).join(' | '));
    // Anonymous people are named as they talk.
    await waitFor(async () => (await people(ben)).includes('amy'), { what: 'amy named on ben\'s page' });
    await say(ben, 'hi amy');
    await waitFor(async () => (await people(amy)).includes('ben'), { what: 'ben named on amy\'s page' });
    assert.deepEqual(await people(amy), ['amy (you)', 'ben']);
    assert.equal(await amy.textContent('#people-count'), '2');
    await amy.screenshot({ path: path.join(SHOTS, 'demo-presence.png'), fullPage: true });
    // ben goes away: amy is told, the list shrinks.
    await ben.context().close();
    await waitFor(async () => (await notes(amy)).includes('ben left.'), { what: 'ben left' });
    assert.deepEqual(await people(amy), ['amy (you)']);
    await amy.context().close();
  } finally {
    await srv.stop();
  }
});

test('the library in a page reconnects after its worker is killed and recovers missed messages', async () => {
  const { page, worker } = await joinDemo('erin', 'recover');
  let pub = await nodeClient();
  for (let i = 0; pub.worker === worker && i < 10; i++) {
    pub.close();
    pub = await nodeClient();
  }
  for (let i = 1; i <= 3; i++) await pub.publish('recover', { name: 'feed', text: `before ${i}` });
  await waitFor(async () => (await shown(page)).length === 3, { what: 'first three' });
  const connBefore = await page.evaluate(() => window.senteDemo.client.connId);

  const pid = await server.workerPid(worker);
  process.kill(pid, 'SIGKILL');
  console.log(`killed worker ${worker} (pid ${pid}) holding the page's connection`);
  // Published right away, while the page waits out its back-off.
  for (let i = 1; i <= 5; i++) {
    await waitFor(() => pub.publish('recover', { name: 'feed', text: `during ${i}` }).catch((e) => {
      if (e.code === 'overloaded') return null;
      throw e;
    }), { what: 'publish' });
  }
  await page.waitForFunction((before) => {
    const c = window.senteDemo.client;
    return c.state === 'open' && c.connId !== before;
  }, connBefore);
  const all = await waitFor(async () => { const s = await shown(page); return s.length === 8 && s; },
    { timeoutMs: 10000, what: '8 messages after the reconnect' });
  assert.deepEqual(all.map((m) => m.seq), [1, 2, 3, 4, 5, 6, 7, 8]);
  assert.deepEqual(all.slice(3).map((m) => m.text), [1, 2, 3, 4, 5].map((i) => `during ${i}`));
  const notes = await page.$$eval('#messages li.system', (l) => l.map((x) => x.textContent));
  assert.ok(notes.some((n) => /Reconnected to recover: 5 missed message\(s\) recovered/.test(n)), notes.join(' | '));
  await pub.publish('recover', { name: 'feed', text: 'after' });
  await waitFor(async () => (await shown(page)).length === 9, { what: 'live message after recovery' });
  await page.screenshot({ path: path.join(SHOTS, 'demo-recovered.png'), fullPage: true });
  await page.context().close();
});

test('an RPC between two pages resolves (and a thrown error rejects)', async () => {
  const serverPage = await newPage(), callerPage = await newPage();
  for (const p of [serverPage, callerPage]) await p.goto(`${server.http}/`);
  await serverPage.evaluate(async () => {
    const { SenteLite } = await import('/client.js');
    const sl = new SenteLite();
    window.sl = sl;
    await sl.connect();
    await sl.serve('calc', async ({ op, a, b }) => {
      if (op === 'div' && b === 0) throw new Error('division by zero');
      return { result: op === 'add' ? a + b : a / b, by: sl.connId };
    });
  });
  const out = await callerPage.evaluate(async () => {
    const { SenteLite } = await import('/client.js');
    const sl = new SenteLite();
    await sl.connect();
    const ok = await sl.rpc('calc', { op: 'add', a: 2, b: 40 }, { timeoutMs: 5000 });
    let err = null;
    try {
      await sl.rpc('calc', { op: 'div', a: 1, b: 0 }, { timeoutMs: 5000 });
    } catch (e) {
      err = { code: e.code, message: e.message };
    }
    const rtt = await sl.ping();
    sl.close();
    return { ok, err, rtt };
  });
  const responderId = await serverPage.evaluate(() => window.sl.connId);
  assert.deepEqual(out.ok, { result: 42, by: responderId });
  assert.deepEqual(out.err, { code: 'rpc-error', message: 'division by zero' });
  assert.equal(typeof out.rtt, 'number');
  await serverPage.context().close();
  await callerPage.context().close();
});

test('/dashboard renders charts and its numbers match /stats', async () => {
  // Some state to show: connections, channels, subscriptions, traffic.
  const a = await nodeClient(), b = await nodeClient();
  await a.subscribe('dash-a');
  await b.subscribe('dash-b');
  const page = await newPage();
  await page.goto(`${server.http}/dashboard`);
  await page.waitForFunction(() => Number(document.body.dataset.samples) >= 1);
  for (let k = 0; k < 3; k++) {            // three seconds of traffic for the charts
    for (let i = 0; i < 40; i++) a.publish('dash-b', { i });
    await sleep(1000);
  }
  await waitFor(async () => (await a.ping()) >= 0, { what: 'quiet' });
  await sleep(300);
  // Compare a snapshot the page shows after the traffic with /stats.
  const samples = Number(await page.evaluate(() => document.body.dataset.samples));
  await page.waitForFunction((n) => Number(document.body.dataset.samples) >= n + 2, samples);
  const ids = ['stat-active-connections', 'stat-total-messages', 'stat-total-messages-out', 'stat-total-channels',
    'stat-total-subscriptions', 'stat-pending-rpc', 'stat-telemetry-dropped', 'stat-slow-consumer-disconnects',
    'stat-overloaded', 'stat-msgs-in-rate', 'stat-msgs-out-rate'];
  const shownFigures = await page.evaluate((list) => Object.fromEntries(list.map((id) =>
    [id, document.getElementById(id).textContent])), ids);
  const workersShown = await page.$$eval('#workers tr', (trs) => trs.map((tr) => ({
    id: Number(tr.querySelector('[id$="-id"]').textContent),
    pid: Number(tr.querySelector('[id$="-pid"]').textContent),
    connections: Number(tr.querySelector('[id$="-connections"]').textContent),
  })));
  const st = await server.stats();
  const num = (id) => Number(shownFigures[id]);
  console.log(`dashboard shows ${JSON.stringify(shownFigures)}`);
  // Nothing moves now except message counters (ping/pong of this test).
  assert.equal(num('stat-active-connections'), st['active-connections']);
  assert.equal(num('stat-total-channels'), st['channel-stats']['total-channels']);
  assert.equal(num('stat-total-subscriptions'), st['channel-stats']['total-subscriptions']);
  assert.equal(num('stat-pending-rpc'), st['channel-stats']['pending-rpc-requests']);
  assert.equal(num('stat-telemetry-dropped'), st['telemetry-stats']['sente-lite'].dropped);
  assert.equal(num('stat-slow-consumer-disconnects'), st['slow-consumer-disconnects']);
  assert.equal(num('stat-overloaded'), st.overloaded);
  for (const k of ['total-messages', 'total-messages-out']) {
    const v = num(`stat-${k}`);
    assert.ok(v <= st[k] && v >= st[k] - 5, `${k}: page ${v}, /stats ${st[k]}`);
  }
  assert.ok(num('stat-total-messages') >= 120, 'the traffic was counted');
  assert.ok(Number.isFinite(num('stat-msgs-in-rate')) && num('stat-msgs-in-rate') >= 0);
  assert.deepEqual(workersShown, st.workers.map((w) => ({ id: w.id, pid: w.pid, connections: w.connections })));
  // The charts were drawn: each canvas has non-blank pixels.
  const drawn = await page.$$eval('canvas', (cs) => cs.map((c) => {
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let n = 0;
    for (let i = 3; i < d.length; i += 4) if (d[i]) n++;
    return { id: c.id, painted: n };
  }));
  assert.equal(drawn.length, 6);
  for (const c of drawn) assert.ok(c.painted > 100, `${c.id} is drawn`);
  assert.match(await page.getAttribute('#chart-connections', 'aria-label'), /now \d+/);
  await page.screenshot({ path: path.join(SHOTS, 'dashboard.png'), fullPage: true });
  await page.context().close();
});

test('with a token key: the demo with a token chats, a page without one is refused', async () => {
  // A server of its own: HS256 secret, no anonymous connections, a short
  // deadline to authenticate.  The token is made here (node:crypto).
  const { createHmac, randomBytes } = await import('node:crypto');
  const { mkdtempSync, writeFileSync, rmSync } = await import('node:fs');
  const os = await import('node:os');
  const dir = mkdtempSync(path.join(os.tmpdir(), 'sente-browser-auth-'));
  const secret = randomBytes(32).toString('hex');
  writeFileSync(path.join(dir, 'secret'), secret);
  const b64u = (s) => Buffer.from(s).toString('base64url');
  const token = (sub) => {
    const h = b64u(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
    const b = b64u(JSON.stringify({ sub, exp: Math.floor(Date.now() / 1000) + 600 }));
    return `${h}.${b}.${createHmac('sha256', secret).update(`${h}.${b}`).digest('base64url')}`;
  };
  const srv = await startServer(['--jwt-secret-file', path.join(dir, 'secret'),
    '--auth-timeout-ms', '1000', '--message-retention', '5', '--admin-token', 'adm']);
  try {
    const page = await newPage();
    await page.goto(`${srv.http}/demo?name=amy&channel=secure&autojoin=1&token=${token('amy')}`);
    await page.waitForSelector('#text:not([disabled])');
    assert.equal(await page.evaluate(() => window.senteDemo.client.user), 'amy');
    await say(page, 'signed in');
    await page.waitForFunction(() => document.querySelectorAll('#messages li.message').length === 1);
    assert.deepEqual((await shown(page)).map((m) => m.text), ['signed in']);
    assert.match(await page.textContent('#messages'), /Signed in as amy/);

    // No token: the server welcomes, waits a second for one, closes 4401;
    // the page says it is not authorized and asks for a token.
    const anon = await newPage();
    await anon.goto(`${srv.http}/demo?name=zed&channel=secure`);
    await anon.waitForSelector('#status[data-auth="refused"]');
    assert.match(await anon.textContent('#status-text'), /Not authorized \(authentication-required\)/);
    assert.equal(await anon.isVisible('#token-help'), true);
    assert.equal(await anon.evaluate(() => window.senteDemo.client.state), 'closed');
    // It stays refused: no reconnect loop without a token.
    await sleep(1500 * SLOW);
    assert.equal(await anon.evaluate(() => window.senteDemo.client.state), 'closed');
    await anon.screenshot({ path: path.join(SHOTS, 'demo-unauthorized.png'), fullPage: true });
    // With a token typed in, joining works (and sees the history).
    await anon.fill('#token', token('zed'));
    await anon.click('#join');
    await anon.waitForSelector('#text:not([disabled])');
    await anon.waitForFunction(() => document.querySelectorAll('#messages li.message').length === 1);
    // Who is connected: for the admin token's bearer (or the ops listener).
    const st = await (await srv.get('/stats', { Authorization: 'Bearer adm' })).json();
    assert.deepEqual(Object.keys(st.access.users).sort(), ['amy', 'zed']);
    const pub = await (await srv.get('/stats')).json();
    assert.equal(pub.access['identities-hidden'], true);
    assert.equal(pub.access['authenticated-connections'], 2);
    assert.equal(st.errors['authentication-timeout'], 1);
    await page.context().close();
    await anon.context().close();
  } finally {
    await srv.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});
