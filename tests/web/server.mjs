// server.mjs - start the real sente-lite binary for the web tests: on a
// free loopback port, wait until /health says healthy, and stop it with
// SIGTERM (SIGKILL only if it does not stop, which fails the test).
//
// The binary is $SENTE_LITE_BIN (make check-web sets it to $(BIN), so
// `make SAN=1 check-web` tests the ASan build), else build/sente-lite.
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, openSync, closeSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const BIN = process.env.SENTE_LITE_BIN || path.join(ROOT, 'build', 'sente-lite');
/** Sanitizer builds are slower: scale waits. */
export const SLOW = BIN.includes('asan') ? 3 : 1;

const require = createRequire(import.meta.url);
/** The `ws` package's WebSocket (Node 20 has no stable global one). */
export const WebSocket = require('ws');

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Poll pred() until it returns something truthy. */
export async function waitFor(pred, { timeoutMs = 5000, intervalMs = 20, what = 'condition' } = {}) {
  const deadline = Date.now() + timeoutMs * SLOW;
  for (;;) {
    const v = await pred();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(intervalMs);
  }
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.unref();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

export class Server {
  constructor(port, proc, dir) {
    this.port = port;
    this.proc = proc;
    this.dir = dir;
    this.http = `http://127.0.0.1:${port}`;
    this.url = `ws://127.0.0.1:${port}/`;
    this.exited = new Promise((r) => proc.once('exit', (code, signal) => r({ code, signal })));
  }

  /**
   * One HTTP request on a connection of its own (no keep-alive: a pooled
   * connection may live on a worker a test has just killed).  Resolves
   * with {status, headers, text(), json()}.
   */
  request(method, p, headers = {}) {
    return new Promise((resolve, reject) => {
      const req = http.request({ host: '127.0.0.1', port: this.port, path: p, method, headers,
        agent: false }, (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => {
          const body = Buffer.concat(chunks).toString('utf8');
          resolve({ status: res.statusCode, headers: res.headers,
            text: async () => body, json: async () => JSON.parse(body) });
        });
        res.on('error', reject);
      });
      req.on('error', reject);
      req.end();
    });
  }

  async get(p, headers = {}) {
    return this.request('GET', p, headers);
  }

  async stats() {
    return (await this.get('/stats')).json();
  }

  /** pid of worker `id` (from /stats). */
  async workerPid(id) {
    const st = await this.stats();
    return st.workers.find((w) => w.id === id).pid;
  }

  /** SIGKILL worker `id`; resolves once the master has a new live one. */
  async killWorker(id) {
    const pid = await this.workerPid(id);
    process.kill(pid, 'SIGKILL');
    await waitFor(async () => {
      const w = (await this.stats()).workers.find((x) => x.id === id);
      return w.pid > 0 && w.pid !== pid && w.alive !== false;
    }, { timeoutMs: 10000, what: `worker ${id} to be replaced` });
    return pid;
  }

  stderr() {
    try {
      return readFileSync(path.join(this.dir, 'stderr.log'), 'utf8');
    } catch {
      return '';
    }
  }

  async stop() {
    if (this.proc.exitCode !== null || this.proc.signalCode !== null) return this.exited;
    this.proc.kill('SIGTERM');
    const t = setTimeout(() => this.proc.kill('SIGKILL'), 10000 * SLOW);
    const r = await this.exited;
    clearTimeout(t);
    const err = this.stderr();
    rmSync(this.dir, { recursive: true, force: true });
    if (r.code !== 0) throw new Error(`server exited with ${r.code ?? r.signal}: ${err}`);
    // A worker that hit a sanitizer report was replaced and the master may
    // still exit 0: the report in stderr fails the test all the same.
    if (/AddressSanitizer|LeakSanitizer|runtime error:/.test(err)) throw new Error(`sanitizer report:\n${err}`);
    return r;
  }
}

/**
 * Throw-away certificates for the TLS tests, made with openssl in `dir`: a
 * test CA and an ECDSA P-256 leaf it signed for localhost and 127.0.0.1.
 * Returns {dir, ca, cert, key} (paths).
 */
export function makeCerts(dir) {
  const run = (...a) => execFileSync('openssl', a, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];
  run('req', '-x509', ...ec, '-keyout', 'ca.key', '-out', 'ca.crt', '-days', '30',
    '-subj', '/CN=sente-lite web test CA');
  run('req', ...ec, '-keyout', 'leaf.key', '-out', 'leaf.csr', '-subj', '/CN=localhost');
  writeFileSync(path.join(dir, 'leaf.ext'), 'subjectAltName=DNS:localhost,IP:127.0.0.1\n');
  run('x509', '-req', '-in', 'leaf.csr', '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial',
    '-out', 'leaf.crt', '-days', '30', '-extfile', 'leaf.ext');
  return { dir, ca: path.join(dir, 'ca.crt'), cert: path.join(dir, 'leaf.crt'),
    key: path.join(dir, 'leaf.key') };
}

/** Start the server with extra flags; resolves when it is healthy.  With
 * tls (from makeCerts) it also serves TLS on s.tlsPort (s.https, s.wss:
 * the URLs by the certificate's name, localhost). */
export async function startServer(args = [], { workers = 2, tls = null } = {}) {
  const port = await freePort();
  if (tls) {
    const tlsPort = await freePort();
    args = ['--tls-port', String(tlsPort), '--tls-cert', tls.cert, '--tls-key', tls.key, ...args];
  }
  const dir = mkdtempSync(path.join(os.tmpdir(), 'sente-web-'));
  const err = openSync(path.join(dir, 'stderr.log'), 'w');
  const proc = spawn(BIN, ['--host', '127.0.0.1', '--port', String(port), '--workers', String(workers),
    '--log-file', path.join(dir, 'sente.log'), ...args], { stdio: ['ignore', err, err] });
  closeSync(err);
  // Never leave a server behind, even when the test process dies early.
  const reap = () => { try { proc.kill('SIGKILL'); } catch { /* gone */ } };
  process.once('exit', reap);
  proc.once('exit', () => process.removeListener('exit', reap));
  const s = new Server(port, proc, dir);
  if (tls) {
    s.tlsPort = Number(args[1]);
    s.https = `https://localhost:${s.tlsPort}`;
    s.wss = `wss://localhost:${s.tlsPort}/`;
  }
  let exited = false;
  s.exited.then(() => { exited = true; });
  await waitFor(async () => {
    if (exited) throw new Error(`server exited early: ${s.stderr()}`);
    try {
      const r = await s.get('/health');
      return r.status === 200 && (await r.json()).status === 'healthy';
    } catch {
      return false;
    }
  }, { timeoutMs: 10000, what: 'server ready' });
  return s;
}
