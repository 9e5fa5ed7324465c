// package.test.mjs - the client library as an npm package (web/): `npm pack`
// builds the tarball (prepack generates the CommonJS flavour), a scratch
// project installs it, imports it both ways from Node and talks to the real
// server; `tsc --noEmit` checks the declarations against small ESM and
// CommonJS examples; /client.js answers CORS so a page on another origin can
// import it.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, writeFileSync, readFileSync, rmSync, existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';
import { ROOT, startServer } from './server.mjs';

const require = createRequire(import.meta.url);
const WS_PATH = require.resolve('ws');
const TSC = path.join(ROOT, 'tests', 'web', 'node_modules', 'typescript', 'bin', 'tsc');

let server, dir, tarball;

before(async () => {
  server = await startServer(['--message-retention', '5']);
  dir = mkdtempSync(path.join(os.tmpdir(), 'sente-npm-'));
  const out = execFileSync('npm', ['pack', '--pack-destination', dir, '--json', '--loglevel=error'],
    { cwd: path.join(ROOT, 'web'), encoding: 'utf8', timeout: 120000 });
  tarball = path.join(dir, JSON.parse(out)[0].filename);
  const proj = path.join(dir, 'app');
  execFileSync('mkdir', ['-p', proj]);
  writeFileSync(path.join(proj, 'package.json'), JSON.stringify({ name: 'app', private: true, version: '1.0.0' }));
  // A local tarball without dependencies: npm needs no registry for it.
  execFileSync('npm', ['install', '--no-audit', '--no-fund', '--offline', '--loglevel=error', tarball],
    { cwd: proj, encoding: 'utf8', timeout: 120000 });
});

after(async () => {
  await server.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
  for (const f of ['sente-lite.cjs', 'sente-lite.d.cts', 'LICENSE'])
    rmSync(path.join(ROOT, 'web', f), { force: true });
});

test('npm pack: the tarball has the ESM, CommonJS and declaration files, README and LICENSE', () => {
  const listing = execFileSync('tar', ['-tzf', tarball], { encoding: 'utf8' }).split('\n');
  for (const f of ['package/package.json', 'package/sente-lite.js', 'package/sente-lite.cjs',
    'package/sente-lite.d.ts', 'package/sente-lite.d.cts', 'package/README.md', 'package/LICENSE'])
    assert.ok(listing.includes(f), `${f} in ${listing.join(' ')}`);
  const pkg = JSON.parse(readFileSync(path.join(dir, 'app', 'node_modules', 'sente-lite', 'package.json'), 'utf8'));
  assert.equal(pkg.license, 'MIT');
  assert.equal(pkg.exports['.'].import.default, './sente-lite.js');
  assert.equal(pkg.exports['.'].require.default, './sente-lite.cjs');
  // The packaged ES module is the very file the server serves at /client.js.
  assert.equal(readFileSync(path.join(dir, 'app', 'node_modules', 'sente-lite', 'sente-lite.js'), 'utf8'),
    readFileSync(path.join(ROOT, 'web', 'sente-lite.js'), 'utf8'));
});

function runInApp(file, source) {
  const proj = path.join(dir, 'app');
  writeFileSync(path.join(proj, file), source);
  const out = execFileSync('node', [file, server.url, WS_PATH], { cwd: proj, encoding: 'utf8', timeout: 60000 });
  return JSON.parse(out.trim().split('\n').pop());
}

const SCENARIO = `
  const [url, wsPath] = process.argv.slice(2);
  const a = new SenteLite(url, { WebSocket: WS });
  const b = new SenteLite(url, { WebSocket: WS });
  await a.connect(); await b.connect();
  const got = [];
  await a.subscribe('npm-room-' + KIND, (data, msg) => got.push([msg.seq, data.text]));
  const r = await b.publish('npm-room-' + KIND, { user: 'b', text: 'hi from ' + KIND });
  await b.serve('npm-math-' + KIND, ({ x }) => ({ double: 2 * x }));
  const { double } = await a.rpc('npm-math-' + KIND, { x: 21 });
  for (let i = 0; i < 200 && got.length < 1; i++) await new Promise((res) => setTimeout(res, 10));
  let code = null;
  try { await a.publish('no-such-channel', 1); } catch (e) { code = e instanceof SenteLiteError && e.code; }
  a.close(); b.close();
  console.log(JSON.stringify({ seq: r.seq, got, double, code }));
`;

test('ESM: import from the installed package talks to the server', () => {
  const res = runInApp('esm.mjs', `
    import { SenteLite, SenteLiteError } from 'sente-lite';
    import Default from 'sente-lite';
    import { createRequire } from 'node:module';
    const WS = createRequire(import.meta.url)(process.argv[3]);
    const KIND = 'esm';
    if (Default !== SenteLite) throw new Error('default export');
    ${SCENARIO}`);
  assert.deepEqual(res, { seq: res.seq, got: [[res.seq, 'hi from esm']], double: 42, code: 'channel-not-found' });
});

test('CommonJS: require the installed package talks to the server', () => {
  const res = runInApp('cjs.cjs', `
    const { SenteLite, SenteLiteError } = require('sente-lite');
    const WS = require(process.argv[3]);
    const KIND = 'cjs';
    if (require('sente-lite').default !== SenteLite) throw new Error('default export');
    (async () => { ${SCENARIO} })().catch((e) => { console.error(e); process.exit(1); });`);
  assert.deepEqual(res, { seq: res.seq, got: [[res.seq, 'hi from cjs']], double: 42, code: 'channel-not-found' });
});

test('TypeScript: the declarations check against ESM and CommonJS examples (tsc --noEmit)', () => {
  assert.ok(existsSync(TSC), 'typescript is installed by scripts/deps-web.sh');
  const proj = path.join(dir, 'app');
  writeFileSync(path.join(proj, 'tsconfig.json'), JSON.stringify({
    compilerOptions: { module: 'nodenext', moduleResolution: 'nodenext', target: 'es2022', strict: true,
      noEmit: true, types: [], skipLibCheck: false },
    files: ['example.mts', 'example.cts'],
  }));
  const body = `
    async function main(): Promise<number> {
      const sl = new SenteLite('ws://127.0.0.1:1/', { reconnect: false, jitter: 0.2, queue: true });
      sl.on('gap', (g) => console.log(g.channel, g.recovered));
      sl.on('close', (c) => console.log(c.code, c.willReconnect));
      const w = await sl.connect();
      const id: string = w['conn-id'];
      await sl.subscribe<{ user: string; text: string }>('chat', (data, msg) => console.log(msg.seq, data.user.toUpperCase()));
      const r = await sl.publish('chat', { user: 'ann', text: 'hi' }, { excludeSender: true });
      const seq: number | undefined = r.seq;
      await sl.serve<{ a: number; b: number }, { sum: number }>('math', ({ a, b }) => ({ sum: a + b }));
      const { sum } = await sl.rpc<{ sum: number }>('math', { a: 1, b: 2 }, { timeoutMs: 1000 });
      const chans = await sl.listChannels();
      const n: number = chans['chat']['subscriber-count'];
      const jl: boolean = chans['chat'].config['join-leave'];
      const here = await sl.presence('chat');
      for (const [connId, who] of Object.entries(here)) console.log(connId, who.user ?? 'anonymous', who.info);
      const ps = await sl.presenceStats('chat');
      const users: number = ps.numUsers ?? ps.numClients;
      const page = await sl.history<{ text: string }>('chat', { since: 3, limit: 10, reverse: true });
      const texts: string[] = page.publications.map((p) => p.data.text + p.seq + p['created-at']);
      sl.on('join', (j) => console.log(j.channel, j.connId, j.user, j.info));
      sl.on('leave', (l) => console.log(l.connId));
      console.log(jl, users, texts, page.epoch, page.topSeq, page.more);
      try { await sl.ping(); } catch (e) { if (e instanceof SenteLiteError) console.log(e.code); }
      const authed = new SenteLite('ws://127.0.0.1:1/', { token: 'a.b.c', refreshMarginMs: 1000,
        getToken: async () => 'x.y.z' });
      authed.on('unauthorized', (u) => console.log(u.reason, u.code));
      authed.on('authenticated', (a) => console.log(a.user, a.expiresAt, a.refresh));
      authed.on('unsubscribed', (u) => console.log(u.channel));
      const ar = await authed.authenticate('p.q.r');
      const user: string | null = authed.user ?? ar?.user ?? w.user ?? null;
      sl.close();
      return sum + (seq ?? 0) + n + id.length + (user ?? '').length + (authed.expiresAt ?? 0);
    }
    void main;`;
  writeFileSync(path.join(proj, 'example.mts'), `import { SenteLite, SenteLiteError } from 'sente-lite';\n${body}\n`);
  writeFileSync(path.join(proj, 'example.cts'), `import { SenteLite, SenteLiteError } = require('sente-lite');\n`.replace(
    'import { SenteLite, SenteLiteError } = require', 'import sl = require') +
    `const SenteLite = sl.SenteLite, SenteLiteError = sl.SenteLiteError;\n${body}\n`);
  execFileSync('node', [TSC, '-p', proj], { encoding: 'utf8', timeout: 120000 });
  // And it fails on a wrong use (the check is real).
  writeFileSync(path.join(proj, 'example.mts'), `import { SenteLite } from 'sente-lite';\n` +
    `const sl = new SenteLite(); const x: string = sl.publish('c', 1);\n`);
  assert.throws(() => execFileSync('node', [TSC, '-p', proj], { encoding: 'utf8', timeout: 120000, stdio: 'pipe' }));
});

test('/client.js answers CORS (Access-Control-Allow-Origin: * without --allowed-origin)', async () => {
  const r = await fetch(`http://127.0.0.1:${server.port}/client.js`, { headers: { Origin: 'https://elsewhere.example' } });
  assert.equal(r.status, 200);
  assert.equal(r.headers.get('access-control-allow-origin'), '*');
  assert.match(r.headers.get('content-type'), /^text\/javascript/);
  await r.text();
});
