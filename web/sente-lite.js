/*
 * sente-lite.js - the browser (and Node) client of sente-lite.
 *
 * A dependency-free ES module, served by the server itself at /client.js
 * and published as the npm package "sente-lite" (ESM, CommonJS and
 * TypeScript declarations; see web/README.md).  The wire protocol it speaks
 * is described in docs/protocol.md.
 *
 *   import { SenteLite } from '/client.js';
 *   const sl = new SenteLite();               // ws(s)://<this host>/
 *   await sl.connect();
 *   await sl.subscribe('chat', (data, msg) => console.log(msg.seq, data));
 *   await sl.publish('chat', { text: 'hi' });
 *   sl.on('join', ({ channel, connId, user }) => console.log(user || connId, 'joined'));
 *   const here = await sl.presence('chat');   // conn-id -> {user, info}
 *   const page = await sl.history('chat', { limit: 20, reverse: true });
 *
 * How it works:
 *  - One WebSocket.  When it drops (and close() was not called) the client
 *    reconnects with exponential back-off and jitter, then subscribes again
 *    to every channel with `since-seq` (the last seq it delivered) and the
 *    channel's `epoch`, so retained messages published meanwhile arrive, in
 *    order, and nothing is delivered twice (de-duplication by seq).  When the
 *    server answers `recovered:false` some messages are gone for good: a
 *    'gap' event says so.
 *  - The server answers a connection's own requests in request order
 *    (docs/protocol.md, "Ordering"), so a reply is matched to the oldest pending
 *    request of the same kind (and channel): no request ids are needed.
 *  - Calls made while not connected (before connect(), or while
 *    reconnecting) are queued (default; bounded by `maxQueue`) and sent, in
 *    order, right after the next connection has subscribed again; with
 *    `queue: false` they are rejected with code 'not-connected'.  After
 *    close() every call is rejected with code 'closed'.  Requests already
 *    sent when the connection drops are rejected with code 'disconnected'
 *    (the server may or may not have acted on them), except subscriptions,
 *    which are simply made again.
 *  - Presence and history: presence(ch) follows every page of the server's
 *    answer and resolves with the whole map; history(ch, opts) returns one
 *    page (page on with `since` = the last seq you got).  `join` and
 *    `leave` events (channels with join-leave) come in order with the
 *    channel's messages - also while a subscribe is on its way, when they
 *    wait with them.  They are set updates: the join or leave of a
 *    connection that came or went just before our own subscribe took
 *    effect may arrive too.  'presence-resync' ({channel}) says some
 *    joins or leaves could not reach us (the server was overloaded): call
 *    presence(ch) again.
 *  - Access control: with a `token` (a JWT) or `getToken()` (async, called on
 *    every connect and reconnect, and again before the token expires to
 *    refresh it), the first message on each connection is
 *    {"type":"authenticate","token":...} - never the URL, which ends up in
 *    logs - and the connection counts as open (subscriptions made again,
 *    queued calls sent, connect() resolved) only once the server has
 *    accepted it.  A refused token, or a close with 4401 (no valid token in
 *    time, or a third refused token), 4408 (the token expired) or 4429 (too
 *    many connections for the user), emits 'unauthorized'.  A refresh whose
 *    token no longer allows a subscription ends it: 'unsubscribed' with
 *    reason 'permission-revoked'.  A refused token and 4401 stop the client
 *    (provide a token, then connect() again); after 4408 it reconnects only
 *    when it has getToken() to ask for a fresh token.
 */

const DEFAULTS = {
  WebSocket: null,          // constructor; default globalThis.WebSocket (Node: pass `ws`)
  reconnect: true,          // reconnect after an unexpected close
  reconnectMinMs: 250,      // first back-off delay
  reconnectMaxMs: 10000,    // back-off cap
  reconnectFactor: 2,       // back-off growth per failed attempt
  jitter: 0.5,              // fraction of each delay that is random (0..1)
  connectTimeoutMs: 10000,  // give up on one opening handshake after this
  queue: true,              // queue calls made while disconnected (false: reject)
  maxQueue: 1000,           // queued calls beyond this are rejected ('queue-full')
  rpcTimeoutMs: null,       // default `timeout-ms` sent with rpc() (null: the channel's)
  rpcGraceMs: 2000,         // client-side rpc deadline = timeout + grace
  rpcDefaultClientTimeoutMs: 32000, // client-side deadline when no timeout is known
  keepaliveMs: 0,           // >0: app-level ping this often; no pong in time -> reconnect
  token: null,              // a JWT sent in an authenticate message on every connection
  getToken: null,           // async () => JWT (or null: anonymous); wins over `token`
  refreshMarginMs: 30000,   // refresh this long before expiry (at most a fifth of the lifetime)
};

/* Close codes the server uses for access control (README "Access control"). */
const AUTH_CLOSE = { 4401: 'authentication-required', 4408: 'token-expired',
                     4429: 'max-connections-per-user' };

/* Replies that answer one of our requests, and the request they answer. */
const REPLY_OF = {
  'pong': 'ping',
  'subscription-result': 'subscribe',
  'unsubscription-result': 'unsubscribe',
  'publish-result': 'publish',
  'rpc-request-result': 'rpc-request',
  'rpc-response-result': 'rpc-response',
  'channel-list': 'list-channels',
  'subscription-list': 'get-subscriptions',
  'authenticate-result': 'authenticate',
  'presence-result': 'presence',
  'presence-stats-result': 'presence-stats',
  'history-result': 'history',
};

/* Replies that reject their call when they say success:false. */
const FAILS = new Set(['publish-result', 'unsubscription-result', 'presence-result',
  'presence-stats-result', 'history-result']);

/** An error with a machine-readable `code` (the server's `reason` when it
 *  gave one) and, where there is one, the server's `reply`. */
export class SenteLiteError extends Error {
  constructor(code, message, extra = {}) {
    super(message || code);
    this.name = 'SenteLiteError';
    this.code = code;
    Object.assign(this, extra);
  }
}

function now() {
  return typeof performance !== 'undefined' ? performance.now() : Date.now();
}

function defaultUrl() {
  const loc = typeof location !== 'undefined' ? location : null;
  if (!loc || !/^https?:$/.test(loc.protocol)) return 'ws://localhost:3000/';
  return (loc.protocol === 'https:' ? 'wss://' : 'ws://') + loc.host + '/';
}

function isChannel(ch) {
  return typeof ch === 'string' && ch.length > 0;
}

export class SenteLite {
  /**
   * @param {string} [url] ws:// or wss:// URL; default: the page's own host.
   * @param {object} [opts] see DEFAULTS above.
   */
  constructor(url, opts = {}) {
    this.url = url || defaultUrl();
    this.opts = { ...DEFAULTS, ...opts };
    this.WebSocket = this.opts.WebSocket || globalThis.WebSocket;
    if (typeof this.WebSocket !== 'function')
      throw new TypeError('no WebSocket implementation: pass opts.WebSocket');
    this.state = 'closed';    // 'connecting' | 'open' | 'closed'
    this.connId = null;       // from the welcome message
    this.worker = null;       // which worker process holds the connection
    this.attempt = 0;         // failed attempts since the last open
    this._ws = null;
    this._wanted = false;     // keep a connection open (connect() called)
    this._closed = false;     // close() called and connect() not since
    this._listeners = new Map();
    this._subs = new Map();   // channel -> subscription record
    this._servers = new Map();// channel -> rpc handler (serve())
    this._inflight = [];      // sent requests awaiting their reply, in order
    this._queue = [];         // requests waiting for a connection
    this._rpcs = new Map();   // request-id -> pending rpc() call
    this._early = new Map();  // rpc outcomes that beat their rpc-request-result
    this._timer = null;       // reconnect or connect-timeout timer
    this._keepalive = null;
    this._openWaiters = [];
    this.user = null;         // the authenticated user (the token's sub), if any
    this.expiresAt = null;    // when the token expires (ms), if it does
    this._refreshTimer = null;
  }

  /* ------------------------------------------------------------ events */

  /** Listen to 'open', 'close', 'reconnecting', 'state', 'welcome',
   *  'error', 'message', 'recovery', 'gap', 'channel-deleted',
   *  'unsubscribed', 'broadcast', 'authenticated', 'unauthorized', 'join',
   *  'leave', 'presence-resync'.
   *  Returns a function that removes the listener. */
  on(event, fn) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(fn);
    return () => this.off(event, fn);
  }

  off(event, fn) {
    const set = this._listeners.get(event);
    if (set) set.delete(fn);
  }

  _emit(event, arg) {
    const set = this._listeners.get(event);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(arg);
      } catch (e) {
        // A listener's bug must not break the connection; report it once.
        if (event !== 'error') this._emit('error', { reason: 'listener-threw', event, error: e });
        else setTimeout(() => { throw e; });
      }
    }
  }

  _setState(s) {
    if (this.state === s) return;
    this.state = s;
    this._emit('state', s);
  }

  /* -------------------------------------------------------- connection */

  /** Open the connection (and keep it open).  Resolves with the welcome
   *  message once connected.  With `reconnect` on, failed attempts are
   *  retried with back-off and the promise waits for the first success;
   *  with it off, a failed attempt rejects.  Rejects when close() is called
   *  first. */
  connect() {
    this._wanted = true;
    this._closed = false;
    if (this.state === 'open') return Promise.resolve(this._welcome);
    const p = new Promise((resolve, reject) => this._openWaiters.push({ resolve, reject }));
    if (!this._ws && !this._timer) this._open();
    return p;
  }

  /** Close for good: no reconnect; queued and pending calls are rejected
   *  with code 'closed'. */
  close(code = 1000, reason = '') {
    this._wanted = false;
    this._closed = true;
    clearTimeout(this._timer);
    this._timer = null;
    clearTimeout(this._refreshTimer);
    this._refreshTimer = null;
    clearInterval(this._keepalive);
    this._keepalive = null;
    const err = new SenteLiteError('closed', 'the client was closed');
    for (const w of this._openWaiters.splice(0)) w.reject(err);
    this._failPending(err, true);
    const ws = this._ws;
    if (ws) {
      this._detach(ws);
      try { ws.close(code, reason); } catch { /* already closing */ }
      this._ws = null;
      this._emit('close', { code, reason, wasClean: true, willReconnect: false });
    }
    this._setState('closed');
  }

  /** Drop the current connection (if any) and connect again now, as after
   *  a network change; subscriptions are recovered as after any reconnect. */
  reconnect() {
    this._wanted = true;
    this._closed = false;
    if (this._ws) this._drop(this._ws, { code: 4002, reason: 'reconnect', wasClean: true }, true);
    clearTimeout(this._timer);
    this._timer = null;
    this.attempt = 0;
    this._open();
  }

  _open() {
    this._timer = null;
    this._setState('connecting');
    let ws;
    try {
      ws = new this.WebSocket(this.url);
    } catch (e) {
      this._emit('error', { reason: 'connect-failed', error: e });
      this._scheduleReconnect({ code: 1006, reason: String(e && e.message), wasClean: false });
      return;
    }
    this._ws = ws;
    this._timer = setTimeout(() => {
      // The opening handshake (or the welcome) took too long.
      this._emit('error', { reason: 'connect-timeout' });
      this._drop(ws, { code: 4000, reason: 'connect-timeout', wasClean: false });
    }, this.opts.connectTimeoutMs);
    ws.onmessage = (ev) => this._onFrame(ev.data);
    ws.onerror = (ev) => this._emit('error', { reason: 'socket-error', error: ev && ev.error });
    ws.onclose = (ev) => this._drop(ws, { code: ev.code, reason: ev.reason, wasClean: ev.wasClean });
  }

  _detach(ws) {
    ws.onmessage = ws.onerror = ws.onclose = null;
  }

  /* The socket is gone (closed by the peer, or by us after a timeout);
   * `immediate`: the caller opens the next one itself (reconnect()). */
  _drop(ws, info, immediate = false) {
    if (ws !== this._ws) return;
    this._detach(ws);
    try { ws.close(); } catch { /* ignore */ }
    this._ws = null;
    clearTimeout(this._timer);
    this._timer = null;
    clearInterval(this._keepalive);
    this._keepalive = null;
    clearTimeout(this._refreshTimer);
    this._refreshTimer = null;
    const wasOpen = this.state === 'open';
    this.connId = null;
    this._failPending(new SenteLiteError('disconnected', 'the connection closed'), false);
    this._setState('closed');
    const auth = AUTH_CLOSE[info.code];
    if (auth) this._emit('unauthorized', { reason: auth, code: info.code, message: info.reason });
    // 4401: no valid token arrived in time - a new connection would be
    // the same until someone provides one (connect() again then).  4408: the
    // token expired; only getToken() can bring a fresh one.
    const futile = info.code === 4401 || (info.code === 4408 && !this.opts.getToken);
    const willReconnect = immediate || (this._wanted && this.opts.reconnect && !futile);
    this._emit('close', { ...info, willReconnect });
    if (immediate) return;
    if (willReconnect) {
      this._scheduleReconnect(info);
    } else {
      // No reconnect: what waits for a connection fails now; later calls
      // queue again until connect() is called.
      this._wanted = false;
      const err = new SenteLiteError(auth ? 'unauthorized' : wasOpen ? 'disconnected' : 'connect-failed',
        `connection closed (${info.code})`);
      for (const w of this._openWaiters.splice(0)) w.reject(err);
      this._failQueue(err);
    }
  }

  _scheduleReconnect(info) {
    const o = this.opts;
    const base = Math.min(o.reconnectMaxMs, o.reconnectMinMs * Math.pow(o.reconnectFactor, this.attempt));
    // "Equal jitter": part of the delay is fixed, the rest random, so many
    // clients dropped at once do not come back in one burst.
    const j = Math.min(Math.max(o.jitter, 0), 1);
    const delayMs = Math.round(base * (1 - j) + Math.random() * base * j);
    this.attempt++;
    this._emit('reconnecting', { attempt: this.attempt, delayMs, code: info.code, reason: info.reason });
    this._timer = setTimeout(() => this._open(), delayMs);
  }

  /* Requests already on the wire cannot be matched to a reply any more. */
  _failPending(err, includeQueue) {
    const inflight = this._inflight.splice(0);
    for (const e of inflight) {
      if (e.kind === 'subscribe' && !includeQueue && this._subs.get(e.channel) === e.sub) {
        // Made again on the next connection; its caller waits for that.
        if (e.handler) e.sub.handlers.add(e.handler);
        e.sub.waiters.push({ resolve: e.resolve, reject: e.reject });
        e.sub.active = false;
        continue;
      }
      e.reject(err);
    }
    for (const [id, r] of this._rpcs) {
      this._rpcs.delete(id);
      clearTimeout(r.timer);
      r.reject(err);
    }
    this._early.clear();
    for (const sub of this._subs.values()) {
      sub.active = false;
      if (includeQueue) {
        for (const w of sub.waiters.splice(0)) w.reject(err);
      }
    }
    if (includeQueue) {
      this._subs.clear();
      this._servers.clear();
      this._failQueue(err);
    }
  }

  _failQueue(err) {
    for (const q of this._queue.splice(0)) q.entry.reject(err);
    for (const [ch, sub] of this._subs) {
      if (!sub.active && sub.waiters.length && sub.lastSeq === null && !sub.everActive) {
        for (const w of sub.waiters.splice(0)) w.reject(err);
        this._subs.delete(ch);
      }
    }
  }

  _onWelcome(msg) {
    clearTimeout(this._timer);
    this._timer = null;
    this.user = msg.user || null;
    this.expiresAt = msg['expires-at'] || null;
    if (this.opts.getToken || this.opts.token) {
      this._authenticate(msg);
      return;
    }
    this._opened(msg);
  }

  /* The token to send: getToken() wins over the token option. */
  async _currentToken() {
    return this.opts.getToken ? this.opts.getToken() : this.opts.token;
  }

  /* First message of the connection: authenticate; the connection is open
   * for everything else once the server accepts the token. */
  async _authenticate(welcome) {
    const ws = this._ws;
    let token;
    try {
      token = await this._currentToken();
    } catch (e) {
      if (ws !== this._ws) return;
      this._unauthorized({ reason: 'token-unavailable', message: String(e && e.message) });
      return;
    }
    if (ws !== this._ws) return; // dropped while we waited
    if (!token) return this._opened(welcome); // anonymous, if the server allows it
    const p = new Promise((resolve, reject) =>
      this._transmit({ type: 'authenticate', token }, { kind: 'authenticate', resolve, reject }));
    let r;
    try {
      r = await p;
    } catch {
      return; // the connection dropped: the reconnect authenticates again
    }
    if (ws !== this._ws) return;
    if (!r.success) {
      this._unauthorized({ reason: r.reason, message: r.message });
      return;
    }
    this._authenticated(r, false);
    this._opened({ ...welcome, user: r.user, 'expires-at': r['expires-at'] });
  }

  _authenticated(r, refresh) {
    this.user = r.user;
    this.expiresAt = r['expires-at'] || null;
    this._emit('authenticated', { user: r.user, expiresAt: this.expiresAt, refresh });
    clearTimeout(this._refreshTimer);
    this._refreshTimer = null;
    if (!this.expiresAt || !this.opts.getToken) return;
    const left = this.expiresAt - Date.now();
    const margin = Math.min(this.opts.refreshMarginMs, left / 5);
    this._refreshTimer = setTimeout(() => this._refresh(), Math.max(0, left - margin));
  }

  /* Before the token expires: a fresh one from getToken(), sent on the
   * live connection. */
  async _refresh() {
    this._refreshTimer = null;
    const ws = this._ws;
    try {
      const token = await this.opts.getToken();
      if (ws !== this._ws || this.state !== 'open' || !token) return;
      const r = await this._request({ type: 'authenticate', token });
      if (r.success) this._authenticated(r, true);
      else this._emit('unauthorized', { reason: r.reason, message: r.message, refresh: true });
    } catch (e) {
      if (ws === this._ws)
        this._emit('unauthorized', { reason: e.code || 'token-unavailable', message: e.message, refresh: true });
    }
  }

  /* The token was refused: say so and stop (a new token needs a new
   * connect()). */
  _unauthorized(info) {
    this._emit('unauthorized', info);
    const err = new SenteLiteError('unauthorized', info.message || info.reason, { reason: info.reason });
    for (const w of this._openWaiters.splice(0)) w.reject(err);
    this.close(1000, 'unauthorized');
  }

  /** Send a new token on the open connection (or keep it for the next
   *  one).  Resolves with the authenticate-result; rejects on
   *  success:false (err.code: its reason). */
  authenticate(token) {
    this.opts.token = token;
    if (this.state !== 'open') return Promise.resolve(null);
    return this._request({ type: 'authenticate', token }).then((r) => {
      if (!r.success) throw new SenteLiteError(r.reason, r.message, { reply: r });
      this._authenticated(r, true);
      return r;
    });
  }

  _opened(msg) {
    const reconnected = this._welcome !== undefined;
    this._welcome = msg;
    this.connId = msg['conn-id'];
    this.worker = msg.worker !== undefined ? msg.worker : null;
    this.attempt = 0;
    this._setState('open');
    // Subscriptions first, then whatever was queued, so a queued publish
    // to a channel we listen to comes back to us.
    for (const sub of this._subs.values()) this._sendSubscribe(sub, null, null, null);
    for (const q of this._queue.splice(0)) this._transmit(q.msg, q.entry);
    if (this.opts.keepaliveMs > 0) this._startKeepalive();
    this._emit('welcome', msg);
    this._emit('open', { connId: this.connId, worker: this.worker, reconnected });
    for (const w of this._openWaiters.splice(0)) w.resolve(msg);
  }

  _startKeepalive() {
    const ws = this._ws;
    this._keepalive = setInterval(() => {
      const t = setTimeout(() => {
        this._emit('error', { reason: 'keepalive-timeout' });
        this._drop(ws, { code: 4001, reason: 'keepalive-timeout', wasClean: false });
      }, this.opts.keepaliveMs);
      this.ping().then(() => clearTimeout(t), () => clearTimeout(t));
    }, this.opts.keepaliveMs);
  }

  /* ---------------------------------------------------------- requests */

  /* Send a request whose reply is matched in order, or queue it. */
  _request(msg, entry = {}) {
    return new Promise((resolve, reject) => {
      const e = { kind: msg.type, channel: msg['channel-id'], ...entry, resolve, reject };
      if (this.state === 'open') return this._transmit(msg, e);
      if (this._closed) return reject(new SenteLiteError('closed', 'the client was closed'));
      if (!this.opts.queue) return reject(new SenteLiteError('not-connected', 'not connected'));
      if (this._queue.length >= this.opts.maxQueue)
        return reject(new SenteLiteError('queue-full', `more than ${this.opts.maxQueue} calls queued`));
      this._queue.push({ msg, entry: e });
    });
  }

  _transmit(msg, entry) {
    let text;
    try {
      text = JSON.stringify(msg);
    } catch (err) {
      entry.reject(err);
      return;
    }
    this._inflight.push(entry);
    this._ws.send(text);
  }

  /* The pending request a reply answers: the oldest one of that kind (and
   * of that channel or request id, when the reply names one). */
  _takeEntry(msg) {
    const kind = REPLY_OF[msg.type];
    const i = this._inflight.findIndex((e) =>
      e.kind === kind &&
      (msg['channel-id'] === undefined || e.channel === undefined || e.channel === msg['channel-id']) &&
      (kind !== 'rpc-response' || e.requestId === msg['request-id']));
    return i < 0 ? null : this._inflight.splice(i, 1)[0];
  }

  /** Round trip in milliseconds. */
  ping() {
    const t0 = now();
    return this._request({ type: 'ping', timestamp: Date.now() }).then(() => now() - t0);
  }

  /** Publish; resolves with the publish-result ({seq, 'message-id',
   *  'delivered-to', ...}); rejects when the server says success:false
   *  (err.code is its reason, e.g. 'channel-not-found'). */
  publish(channel, data, { excludeSender = false } = {}) {
    if (!isChannel(channel)) return Promise.reject(new TypeError('channel must be a non-empty string'));
    const msg = { type: 'publish', 'channel-id': channel, data: data === undefined ? null : data };
    if (excludeSender) msg['exclude-sender'] = true;
    return this._request(msg);
  }

  /** Subscribe; onMessage(data, message) gets every channel-message, the
   *  retained ones first, in seq order, each once.  Resolves with the
   *  subscription-result; rejects on success:false. */
  subscribe(channel, onMessage) {
    if (!isChannel(channel)) return Promise.reject(new TypeError('channel must be a non-empty string'));
    if (onMessage !== undefined && typeof onMessage !== 'function')
      return Promise.reject(new TypeError('onMessage must be a function'));
    let sub = this._subs.get(channel);
    const fresh = !sub;
    if (fresh) {
      sub = { channel, handlers: new Set(), lastSeq: null, epoch: null, active: false,
              everActive: false, waiters: [], buffer: [] };
      this._subs.set(channel, sub);
    }
    return new Promise((resolve, reject) => {
      if (this.state === 'open') {
        this._sendSubscribe(sub, onMessage || null, resolve, reject);
        return;
      }
      if (this._closed || !this.opts.queue) {
        if (fresh) this._subs.delete(channel);
        reject(this._closed ? new SenteLiteError('closed', 'the client was closed')
                            : new SenteLiteError('not-connected', 'not connected'));
        return;
      }
      // Made when the connection opens (every subscription is, then).
      if (onMessage) sub.handlers.add(onMessage);
      sub.waiters.push({ resolve, reject });
    });
  }

  _sendSubscribe(sub, handler, resolve, reject) {
    const msg = { type: 'subscribe', 'channel-id': sub.channel };
    const resumed = sub.lastSeq !== null && sub.epoch !== null && !handler;
    if (resumed) {
      msg['since-seq'] = sub.lastSeq;
      msg.epoch = sub.epoch;
    }
    const entry = {
      kind: 'subscribe', channel: sub.channel, sub, handler, resumed, internal: !resolve,
      resolve: resolve || (() => {}), reject: reject || (() => {}),
    };
    this._transmit(msg, entry);
  }

  _onSubscriptionResult(msg, entry) {
    const sub = entry.sub;
    const waiters = sub.waiters.splice(0);
    if (this._subs.get(sub.channel) !== sub) {
      // Unsubscribed meanwhile: the unsubscribe that follows cleans up.
      entry.reject(new SenteLiteError('unsubscribed', 'unsubscribed before the subscription completed'));
      for (const w of waiters) w.reject(new SenteLiteError('unsubscribed', 'unsubscribed'));
      return;
    }
    if (!msg.success && entry.internal && !sub.active && !this._closed &&
        (msg.reason === 'overloaded' || msg.reason === 'rate-limited')) {
      // Made again after a reconnect, refused for now (the server is
      // busy): try again later, with back-off, rather than drop it.
      sub.waiters.push(...waiters);
      sub.retries = (sub.retries || 0) + 1;
      const delay = Math.min(5000, 100 * 2 ** Math.min(sub.retries, 6)) * (0.5 + Math.random());
      const ws = this._ws;
      this._emit('error', { reason: msg.reason, channel: sub.channel, reply: msg, retrying: true });
      setTimeout(() => {
        if (!this._closed && this._ws === ws && this.state === 'open' &&
            this._subs.get(sub.channel) === sub && !sub.active)
          this._sendSubscribe(sub, null, null, null);
      }, delay);
      return;
    }
    if (!msg.success) {
      const err = new SenteLiteError(msg.reason || 'subscribe-failed',
        `subscribe to ${sub.channel} failed: ${msg.reason}`, { reply: msg });
      if (!sub.active) {
        this._subs.delete(sub.channel);
        this._servers.delete(sub.channel);
        if (entry.internal) this._emit('error', { reason: msg.reason, channel: sub.channel, reply: msg });
      }
      entry.reject(err);
      for (const w of waiters) w.reject(err);
      return;
    }
    if (sub.epoch !== null && msg.epoch !== sub.epoch) {
      // The channel was deleted and created again: its seqs started over.
      sub.lastSeq = null;
    }
    const epochChanged = sub.epoch !== null && msg.epoch !== sub.epoch;
    sub.epoch = msg.epoch;
    sub.retries = 0;
    const retained = msg['retained-messages'] || [];
    const handler = entry.handler;
    const before = sub.lastSeq;
    let delivered = 0;
    for (const m of retained) {
      if (sub.lastSeq === null || m.seq > sub.lastSeq) {
        if (handler) sub.handlers.add(handler);
        this._deliver(sub, m, false); // a jump here is reported below
        delivered++;
      } else if (handler && !sub.handlers.has(handler)) {
        // History the others already have, for a newly added handler only.
        this._call(handler, m);
      }
    }
    if (handler) sub.handlers.add(handler);
    sub.active = true;
    sub.everActive = true;
    for (const m of sub.buffer.splice(0)) this._onChannelEvent(m);
    if (entry.resumed || epochChanged) {
      const info = {
        channel: sub.channel, recovered: msg.recovered === true && !epochChanged,
        sinceSeq: before, epoch: msg.epoch, epochChanged, delivered,
        retainedOmitted: msg['retained-omitted'] || 0,
      };
      this._emit('recovery', info);
      if (!info.recovered) this._emit('gap', info);
    }
    entry.resolve(msg);
    for (const w of waiters) w.resolve(msg);
  }

  _call(fn, m) {
    try {
      fn(m.data, m);
    } catch (e) {
      this._emit('error', { reason: 'handler-threw', channel: m['channel-id'], error: e });
    }
  }

  _deliver(sub, m, checkGap = true) {
    if (typeof m.seq === 'number') {
      if (checkGap && sub.lastSeq !== null && m.seq > sub.lastSeq + 1)
        this._emit('gap', { channel: sub.channel, recovered: false, expectedSeq: sub.lastSeq + 1, seq: m.seq });
      sub.lastSeq = m.seq;
    }
    for (const fn of [...sub.handlers]) this._call(fn, m);
  }

  /* A channel-message, join or leave, in the order the server sent them. */
  _onChannelEvent(m) {
    const sub = this._subs.get(m['channel-id']);
    if (!sub) return;
    if (!sub.active) {
      // Our subscribe is on its way: its retained messages come first.
      sub.buffer.push(m);
      return;
    }
    if (m.type === 'presence-resync') {
      // A join or leave could not reach us (our worker was overloaded):
      // ask presence again.
      this._emit('presence-resync', { channel: m['channel-id'] });
      return;
    }
    if (m.type === 'join' || m.type === 'leave') {
      const i = m.info || {};
      this._emit(m.type, { channel: m['channel-id'], connId: i['conn-id'],
                           user: i.user === undefined ? null : i.user,
                           info: i.info === undefined ? null : i.info });
      return;
    }
    if (typeof m.seq === 'number' && sub.lastSeq !== null && m.seq <= sub.lastSeq) return; // seen
    this._deliver(sub, m);
  }

  /** Unsubscribe.  With a handler, remove only that one (and unsubscribe
   *  when it was the last).  Resolves with the unsubscription-result;
   *  rejects on success:false ('not-subscribed'). */
  unsubscribe(channel, handler) {
    if (!isChannel(channel)) return Promise.reject(new TypeError('channel must be a non-empty string'));
    const sub = this._subs.get(channel);
    if (sub && handler) {
      sub.handlers.delete(handler);
      if (sub.handlers.size > 0 || this._servers.has(channel))
        return Promise.resolve({ type: 'unsubscription-result', 'channel-id': channel, success: true, local: true });
    }
    this._subs.delete(channel);
    this._servers.delete(channel);
    if (sub) for (const w of sub.waiters.splice(0)) w.reject(new SenteLiteError('unsubscribed', 'unsubscribed'));
    if (this.state !== 'open' && sub) {
      // The server forgot the subscription with the connection.
      return Promise.resolve({ type: 'unsubscription-result', 'channel-id': channel, success: true, local: true });
    }
    return this._request({ type: 'unsubscribe', 'channel-id': channel });
  }

  /** Ask the channel's subscribers; resolves with the first response's
   *  data.  Rejects with err.code: 'rpc-error' (the responder said error:
   *  true; err.data is its data), the delivery reason ('no-subscribers',
   *  'channel-not-found'), 'rpc-timeout' (the server's timer),
   *  'client-timeout' (ours: timeout + rpcGraceMs), or 'disconnected'.
   *  data must be a JSON object (docs/protocol.md, "rpc-request"). */
  rpc(channel, data = {}, { timeoutMs = this.opts.rpcTimeoutMs, clientTimeoutMs } = {}) {
    if (!isChannel(channel)) return Promise.reject(new TypeError('channel must be a non-empty string'));
    if (data === null || typeof data !== 'object' || Array.isArray(data))
      return Promise.reject(new TypeError('rpc data must be an object'));
    const msg = { type: 'rpc-request', 'channel-id': channel, data };
    if (timeoutMs != null) msg['timeout-ms'] = timeoutMs;
    const limit = clientTimeoutMs != null ? clientTimeoutMs
      : timeoutMs != null ? timeoutMs + this.opts.rpcGraceMs : this.opts.rpcDefaultClientTimeoutMs;
    return new Promise((resolve, reject) => {
      let done = false;
      const call = {
        channel,
        timer: null,
        resolve: (v) => { if (!done) { done = true; clearTimeout(call.timer); resolve(v); } },
        reject: (e) => { if (!done) { done = true; clearTimeout(call.timer); reject(e); } },
      };
      call.timer = setTimeout(() => {
        if (call.requestId) this._rpcs.delete(call.requestId);
        call.reject(new SenteLiteError('client-timeout', `no rpc response within ${limit} ms`));
      }, limit);
      // The delivery result is handled synchronously, as it is read: the
      // response may be in the very next frame.
      const onResult = (result) => {
        const d = result.delivery || {};
        if (!d.success) {
          call.reject(new SenteLiteError(d.reason || 'delivery-failed',
            `rpc to ${channel} not delivered: ${d.reason}`, { reply: result }));
          return;
        }
        const id = result['request-id'];
        call.requestId = id;
        const early = this._early.get(id);
        this._early.delete(id);
        if (!this._inflight.some((e) => e.kind === 'rpc-request')) this._early.clear();
        if (done) return; // our own deadline already passed
        if (early) this._settleRpc(call, early);
        else this._rpcs.set(id, call);
      };
      this._request(msg, { onResult }).catch(call.reject);
    });
  }

  _settleRpc(call, msg) {
    if (msg.type === 'rpc-response') {
      if (msg.error) {
        const d = msg.data;
        const text = d && typeof d === 'object' && typeof d.message === 'string' ? d.message : 'rpc error';
        call.reject(new SenteLiteError('rpc-error', text, { data: d, reply: msg }));
      } else {
        call.resolve(msg.data);
      }
    } else {
      call.reject(new SenteLiteError(msg.reason || 'rpc-failed', msg.message || msg.reason, { reply: msg }));
    }
  }

  _onRpcOutcome(msg) {
    const id = msg['request-id'];
    const call = this._rpcs.get(id);
    if (call) {
      this._rpcs.delete(id);
      this._settleRpc(call, msg);
    } else if (this._inflight.some((e) => e.kind === 'rpc-request')) {
      this._early.set(id, msg); // beat its rpc-request-result (kept until that arrives)
    }
  }

  /** Answer rpc() calls made to `channel`: handler(data, request) returns
   *  the response data (or a promise of it); a throw (or rejection) is sent
   *  back with error:true and data {message, name}.  Subscribes to the
   *  channel; resolves with the subscription-result. */
  serve(channel, handler) {
    if (typeof handler !== 'function') return Promise.reject(new TypeError('handler must be a function'));
    this._servers.set(channel, handler);
    return this.subscribe(channel);
  }

  async _onRpcRequest(msg) {
    const handler = this._servers.get(msg['channel-id']);
    if (!handler) return; // a plain subscriber: not ours to answer
    let data, error = false;
    try {
      data = await handler(msg.data, msg);
    } catch (e) {
      error = true;
      data = { message: e && e.message !== undefined ? String(e.message) : String(e),
               name: e && e.name ? String(e.name) : 'Error' };
    }
    if (data === undefined) data = null;
    try {
      JSON.stringify(data);
    } catch (e) {
      // Answer anyway, so the requester does not wait for its timeout.
      error = true;
      data = { message: `response not serializable: ${e.message}`, name: 'TypeError' };
    }
    const reply = { type: 'rpc-response', 'request-id': msg['request-id'], data, error };
    this._request(reply, { requestId: msg['request-id'] }).then((r) => {
      if (!r.success)
        this._emit('error', { reason: r.reason, requestId: msg['request-id'], reply: r });
    }, (e) => this._emit('error', { reason: e.code || 'rpc-response-failed', requestId: msg['request-id'], error: e }));
  }

  /** The server's channels: the `channels` of every channel-list page
   *  (the server sends at most 1,000 a page; `pageSize` asks for fewer),
   *  merged into one object. */
  listChannels({ pageSize } = {}) {
    const all = {};
    const page = (cursor) => {
      const msg = { type: 'list-channels' };
      if (cursor != null) msg.cursor = cursor;
      if (pageSize) msg.limit = pageSize;
      return this._request(msg).then((r) => {
        Object.assign(all, r.channels);
        return r['next-cursor'] == null ? all : page(r['next-cursor']);
      });
    };
    return page(null);
  }

  /** Who is subscribed to `channel`, on every worker: resolves with
   *  { "<conn-id>": { user, info } } (user and info from the connection's
   *  token, null without one), every page of the server's answer merged.
   *  Rejects on success:false (err.code: 'permission-denied',
   *  'presence-disabled', 'channel-not-found', ...).  By default only a
   *  subscriber of the channel may ask. */
  presence(channel) {
    if (!isChannel(channel)) return Promise.reject(new TypeError('channel must be a non-empty string'));
    const clients = {};
    const page = (cursor) => {
      const msg = { type: 'presence', 'channel-id': channel };
      if (cursor != null) msg.cursor = cursor;
      return this._request(msg).then((r) => {
        Object.assign(clients, r.clients);
        return r['next-cursor'] == null ? clients : page(r['next-cursor']);
      });
    };
    return page(null);
  }

  /** Resolves with { numClients, numUsers } (numUsers null when the
   *  server did not count them: a very large channel). */
  presenceStats(channel) {
    if (!isChannel(channel)) return Promise.reject(new TypeError('channel must be a non-empty string'));
    return this._request({ type: 'presence-stats', 'channel-id': channel })
      .then((r) => ({ numClients: r['num-clients'], numUsers: r['num-users'] }));
  }

  /** One page of the channel's retained messages: resolves with
   *  { epoch, topSeq, publications: [{seq, 'message-id', data,
   *  'created-at'}], more }.  Forwards from after `since` (oldest first), or
   *  with `reverse` backwards from before it (newest first); `limit` up to
   *  1000.  Page on with `since` = the last seq of the page while `more`. */
  history(channel, { since, limit, reverse } = {}) {
    if (!isChannel(channel)) return Promise.reject(new TypeError('channel must be a non-empty string'));
    const msg = { type: 'history', 'channel-id': channel };
    if (since != null) msg['since-seq'] = since;
    if (limit != null) msg.limit = limit;
    if (reverse) msg.reverse = true;
    return this._request(msg).then((r) => ({
      epoch: r.epoch, topSeq: r['top-seq'], publications: r.publications, more: r.more,
    }));
  }

  /** Channels this connection is subscribed to, as the server sees it
   *  (every subscription-list page, at most 1,000 a page, in order). */
  getSubscriptions() {
    const all = [];
    const page = (cursor) => {
      const msg = { type: 'get-subscriptions' };
      if (cursor != null) msg.cursor = cursor;
      return this._request(msg).then((r) => {
        all.push(...r.subscriptions);
        return r['next-cursor'] == null ? all : page(r['next-cursor']);
      });
    };
    return page(null);
  }

  /** Channels subscribed to on this client (also while reconnecting). */
  subscriptions() {
    return [...this._subs.keys()];
  }

  /* ----------------------------------------------------------- inbound */

  _onFrame(text) {
    let msg;
    try {
      msg = JSON.parse(typeof text === 'string' ? text : String(text));
    } catch {
      this._emit('error', { reason: 'bad-frame', data: text });
      return;
    }
    if (!msg || typeof msg !== 'object') return;
    this._emit('message', msg);
    const type = msg.type;
    if (type === 'welcome') return this._onWelcome(msg);
    if (type === 'channel-message' || type === 'join' || type === 'leave' ||
        type === 'presence-resync')
      return this._onChannelEvent(msg);
    if (type === 'rpc-request') return void this._onRpcRequest(msg);
    if (type === 'rpc-response') return this._onRpcOutcome(msg);
    if (type === 'error' && msg['request-id'] !== undefined) return this._onRpcOutcome(msg);
    if (type === 'channel-deleted') {
      const ch = msg['channel-id'];
      const sub = this._subs.get(ch);
      this._subs.delete(ch);
      this._servers.delete(ch);
      if (sub) for (const w of sub.waiters.splice(0)) w.reject(new SenteLiteError('channel-deleted', 'channel deleted'));
      return this._emit('channel-deleted', { channel: ch });
    }
    if (type === 'unsubscribed') {
      // The server took this subscription away: its administrator, or a
      // refreshed token that no longer allows it ('permission-revoked').
      // Not made again on reconnect.
      const ch = msg['channel-id'];
      this._subs.delete(ch);
      this._servers.delete(ch);
      return this._emit('unsubscribed', { channel: ch, reason: msg.reason });
    }
    if (msg.broadcast === true) return this._emit('broadcast', msg);
    if (type === 'error') {
      // An error without a request id answers our oldest pending request
      // (replies come in request order); if there is none, it is news.
      const e = this._inflight.shift();
      const err = new SenteLiteError(msg.reason || 'error', msg.message || msg.reason, { reply: msg });
      if (e && e.kind === 'subscribe' && !e.sub.active && this._subs.get(e.channel) === e.sub) {
        this._subs.delete(e.channel); // refused: do not wait for it forever
        for (const w of e.sub.waiters.splice(0)) w.reject(err);
      }
      if (e) e.reject(err);
      this._emit('error', { reason: msg.reason, message: msg.message, reply: msg });
      return;
    }
    if (REPLY_OF[type]) {
      const e = this._takeEntry(msg);
      if (!e) return;
      if (type === 'subscription-result') return this._onSubscriptionResult(msg, e);
      if (FAILS.has(type) && !msg.success) {
        e.reject(new SenteLiteError(msg.reason || 'failed', `${e.kind} ${e.channel}: ${msg.reason}`, { reply: msg }));
        return;
      }
      if (e.onResult) e.onResult(msg);
      e.resolve(msg);
    }
  }
}

export default SenteLite;
