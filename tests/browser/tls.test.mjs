// tls.test.mjs - the pages over https:// in headless chromium (issue 16),
// the server's certificate signed by a test CA made here.  Chromium on
// Linux takes its trust anchors from the NSS database under $HOME, so the
// browser runs with a HOME of its own whose database trusts that CA
// (certutil, Debian's libnss3-tools); no certificate errors are ignored.
// A second browser without the CA must refuse the same page.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';
import { startServer, makeCerts, waitFor, ROOT, SLOW } from '../web/server.mjs';

const require = createRequire(path.join(ROOT, 'tests', 'web', 'package.json'));
const { chromium } = require('playwright-core');

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const SHOTS = process.env.SCREENSHOT_DIR || path.join(ROOT, 'build', 'artifacts', 'screenshots');
const T = 15000 * SLOW;
const ARGS = ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'];

let server, certs, home, browser;

/** A HOME whose NSS database trusts the test CA (or none when ca is null). */
function nssHome(ca) {
  const h = mkdtempSync(path.join(os.tmpdir(), 'sente-web-home-'));
  const db = path.join(h, '.pki', 'nssdb');
  mkdirSync(db, { recursive: true });
  try {
    execFileSync('certutil', ['-N', '-d', `sql:${db}`, '--empty-password']);
  } catch (e) {
    if (e.code === 'ENOENT') throw new Error('certutil is missing: scripts/deps.sh --web installs libnss3-tools');
    throw e;
  }
  if (ca) execFileSync('certutil', ['-A', '-d', `sql:${db}`, '-t', 'C,,', '-n', 'sente-lite test CA', '-i', ca]);
  return h;
}

function launch(h) {
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: ARGS,
    env: { ...process.env, HOME: h } });
}

before(async () => {
  mkdirSync(SHOTS, { recursive: true });
  certs = makeCerts(mkdtempSync(path.join(os.tmpdir(), 'sente-web-tls-')));
  server = await startServer(['--message-retention', '20'], { tls: certs });
  home = nssHome(certs.ca);
  browser = await launch(home);
});

after(async () => {
  if (browser) await browser.close();
  if (server) await server.stop();
  for (const d of [home, certs?.dir]) if (d) rmSync(d, { recursive: true, force: true });
});

async function newPage() {
  const ctx = await browser.newContext({ viewport: { width: 1100, height: 800 } });
  const page = await ctx.newPage();
  page.setDefaultTimeout(T);
  page.on('pageerror', (e) => console.log(`page error: ${e.message}`));
  return page;
}

async function joinDemo(name, channel) {
  const page = await newPage();
  const resp = await page.goto(`${server.https}/demo`);
  assert.equal(resp.status(), 200);
  await page.waitForSelector('#status[data-state="open"]');
  await page.fill('#name', name);
  await page.fill('#channel', channel);
  await page.click('#join');
  await page.waitForSelector('#text:not([disabled])');
  return page;
}

const shown = (page) => page.$$eval('#messages li.message', (lis) =>
  lis.map((li) => `${li.querySelector('.who').textContent}: ${li.querySelector('.text').textContent}`));

test('the demo over https: the page connects with wss:// and two pages chat', async () => {
  const before = (await server.stats())['tls-handshakes'];
  const alice = await joinDemo('alice', 'secure');
  const bob = await joinDemo('bob', 'secure');
  for (const p of [alice, bob]) {
    // The page is a secure context and its library picked wss:// itself.
    assert.equal(await p.evaluate(() => location.protocol), 'https:');
    assert.equal(await p.evaluate(() => window.isSecureContext), true);
    assert.equal(await p.evaluate(() => window.senteDemo.client.url), `${server.wss}`);
    // Chromium offers permessage-deflate; the server's answer is what the
    // browser reports as negotiated.
    assert.equal(await p.evaluate(() => window.senteDemo.client._ws.extensions),
      'permessage-deflate; server_no_context_takeover; client_no_context_takeover');
  }
  // Long and compressible (sent compressed by the browser, inflated by the
  // server, and sent back compressed to both pages).
  const long = 'all work and no play makes jack a dull boy. '.repeat(40).trim();
  await alice.fill('#text', long);
  await alice.press('#text', 'Enter');
  // Bob answers once alice's message is back on her page: the two pages
  // may sit on different workers, so only that fixes the order.
  await waitFor(async () => (await shown(alice)).length === 1, { timeoutMs: 10000, what: "alice's message" });
  await bob.fill('#text', 'hi alice');
  await bob.press('#text', 'Enter');
  const want = [`alice: ${long}`, 'bob: hi alice'];
  for (const p of [alice, bob])
    await waitFor(async () => JSON.stringify(await shown(p)) === JSON.stringify(want),
      { timeoutMs: 10000, what: 'both messages on both pages' });
  // Every page load, script and WebSocket came over TLS.
  assert.ok((await server.stats())['tls-handshakes'] > before);
  await alice.screenshot({ path: path.join(SHOTS, 'demo-https.png'), fullPage: true });
  for (const p of [alice, bob]) await p.context().close();
});

test('the dashboard over https shows the TLS figures of /stats', async () => {
  const page = await newPage();
  const resp = await page.goto(`${server.https}/dashboard`);
  assert.equal(resp.status(), 200);
  const sd = await resp.securityDetails();
  assert.match(sd.protocol, /^TLS 1\.[23]$/);
  assert.equal(sd.subjectName, 'localhost');
  assert.equal(sd.issuer, 'sente-lite web test CA');
  const st = await page.evaluate(async () => (await fetch('/stats')).json());
  assert.ok(st['tls-handshakes'] >= 1);
  await page.context().close();
});

test('a browser without the test CA refuses the page', async () => {
  const bare = nssHome(null);
  const other = await launch(bare);
  try {
    const page = await other.newPage();
    await assert.rejects(page.goto(`${server.https}/`, { timeout: T }), /ERR_CERT_AUTHORITY_INVALID/);
  } finally {
    await other.close();
    rmSync(bare, { recursive: true, force: true });
  }
});
