// Type declarations for sente-lite.js, the client of the sente-lite
// WebSocket pub/sub server.  The wire protocol: docs/protocol.md.

/** Any JSON value. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** A WebSocket constructor: the browser's, or Node's `ws` package. */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: any) => any) | null;
  onclose: ((ev: any) => any) | null;
  onerror: ((ev: any) => any) | null;
  onmessage: ((ev: any) => any) | null;
}
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

export interface SenteLiteOptions {
  /** Default: globalThis.WebSocket (Node 20: pass the `ws` package). */
  WebSocket?: WebSocketConstructor | null;
  reconnect?: boolean;
  reconnectMinMs?: number;
  reconnectMaxMs?: number;
  reconnectFactor?: number;
  /** Fraction (0..1) of each back-off delay that is random. */
  jitter?: number;
  connectTimeoutMs?: number;
  /** Queue calls made while disconnected (false: reject with 'not-connected'). */
  queue?: boolean;
  maxQueue?: number;
  /** Default `timeout-ms` of rpc(); null: the channel's. */
  rpcTimeoutMs?: number | null;
  rpcGraceMs?: number;
  rpcDefaultClientTimeoutMs?: number;
  /** >0: an application-level ping this often; no pong in time: reconnect. */
  keepaliveMs?: number;
  /** A JWT, sent in an `authenticate` message on every connection. */
  token?: string | null;
  /** Called on every connect and reconnect and before expiry (refresh);
   *  wins over `token`; null/undefined: anonymous. */
  getToken?: (() => string | null | undefined | Promise<string | null | undefined>) | null;
  /** Refresh this long before the token expires (at most a fifth of its lifetime). */
  refreshMarginMs?: number;
}

export type ConnectionState = 'connecting' | 'open' | 'closed';

/** Error codes: the server's `reason` when it gave one, or the client's own. */
export type SenteLiteErrorCode =
  | 'connect-failed' | 'closed' | 'not-connected' | 'queue-full' | 'disconnected'
  | 'client-timeout' | 'rpc-timeout' | 'rpc-error' | 'no-subscribers' | 'channel-not-found'
  | 'channel-deleted' | 'invalid-channel-id' | 'max-subscribers-reached'
  | 'too-many-subscriptions' | 'not-subscribed' | 'overloaded' | 'request-not-found'
  | 'invalid-message' | 'invalid-json' | 'unauthorized' | 'unauthenticated'
  | 'permission-denied' | 'unknown-namespace' | 'rate-limited' | 'unsubscribed'
  | 'invalid-token' | 'token-expired' | 'token-not-yet-valid' | 'wrong-audience'
  | 'wrong-issuer' | 'wrong-algorithm' | 'token-too-large' | 'user-mismatch'
  | 'authentication-not-configured' | 'presence-disabled' | (string & {});

export declare class SenteLiteError extends Error {
  constructor(code: string, message?: string, extra?: Record<string, unknown>);
  code: SenteLiteErrorCode;
  /** The server's reply, when the error came from one. */
  reply?: ServerMessage;
  /** For 'rpc-error': the responder's data. */
  data?: Json;
}

export interface Welcome {
  type: 'welcome';
  'conn-id': string;
  'server-time': number;
  worker: number;
  /** With a token on the upgrade request: the token's `sub`. */
  user?: string;
  /** When that token expires (ms since the epoch), null if never. */
  'expires-at'?: number | null;
}

export interface AuthenticateResult {
  type: 'authenticate-result';
  success: boolean;
  user?: string;
  'expires-at'?: number | null;
  reason?: string;
  message?: string;
}

export interface ChannelMessage<T = Json> {
  type: 'channel-message';
  'channel-id': string;
  'message-id': string;
  seq: number;
  data: T;
  'sender-conn-id': string | null;
  'published-at': number;
}

export interface SubscriptionResult {
  type: 'subscription-result';
  'channel-id': string;
  success: boolean;
  reason?: string;
  'subscriber-count'?: number;
  epoch?: string;
  'retained-messages'?: ChannelMessage[];
  /** Older retained messages left out: a reply is bounded (the newest that fit are sent). */
  'retained-omitted'?: number;
  recovered?: boolean;
}

export interface PublishResult {
  type: 'publish-result';
  'channel-id': string;
  success: boolean;
  reason?: string;
  'message-id'?: string;
  seq?: number;
  'delivered-to'?: number;
}

export interface UnsubscriptionResult {
  type: 'unsubscription-result';
  'channel-id': string;
  success: boolean;
  reason?: string;
}

export interface RpcRequest<T = Json> {
  type: 'rpc-request';
  'request-id': string;
  'channel-id': string;
  data: T;
  'sender-conn-id': string;
  'created-at': number;
  'timeout-ms': number;
}

/** A connection present in a channel: its token's user and info (null
 *  without a token). */
export interface PresenceEntry {
  user: string | null;
  info: Json;
}

/** presence(): conn-id -> who. */
export type Presence = { [connId: string]: PresenceEntry };

export interface PresenceStats {
  numClients: number;
  /** Distinct users (connections without a token are not users); null when
   *  the server did not count them (a channel of over 100,000). */
  numUsers: number | null;
}

export interface Publication<T = Json> {
  seq: number;
  'message-id': string;
  data: T;
  'created-at': number;
}

export interface HistoryPage<T = Json> {
  /** The channel's incarnation: seqs of another epoch mean nothing here. */
  epoch: string;
  /** The channel's last seq (0: none yet). */
  topSeq: number;
  publications: Publication<T>[];
  /** More retained messages match: page on with since = the last seq. */
  more: boolean;
}

export interface HistoryOptions {
  /** Forwards: seqs above it; with reverse: below it. */
  since?: number;
  /** 0..1000 (the server's cap). */
  limit?: number;
  /** Newest first, backwards from `since` (or from the newest). */
  reverse?: boolean;
}

/** A join or leave event (channels with join-leave). */
export interface PresenceEvent {
  channel: string;
  connId: string;
  user: string | null;
  info: Json;
}

export interface ChannelInfo {
  config: { 'max-subscribers': number; 'message-retention': number; 'rpc-timeout-ms': number;
    'telemetry-enabled': boolean; 'join-leave': boolean; 'history-ttl-ms': number };
  'created-at': number;
  'message-count': number;
  'subscriber-count': number;
}

/** Every message the server sends has a string `type`. */
export interface ServerMessage {
  type: string;
  [key: string]: unknown;
}

export interface CloseInfo { code: number; reason: string; wasClean: boolean; willReconnect: boolean }
export interface RecoveryInfo {
  channel: string;
  recovered: boolean;
  sinceSeq?: number;
  epoch?: string;
  epochChanged?: boolean;
  delivered?: number;
  /** Older retained messages the server left out (its reply is bounded). */
  retainedOmitted?: number;
  expectedSeq?: number;
  seq?: number;
}

export interface SenteLiteEvents {
  state: ConnectionState;
  open: { connId: string; worker: number; reconnected: boolean };
  close: CloseInfo;
  reconnecting: { attempt: number; delayMs: number; code?: number; reason?: string };
  welcome: Welcome;
  message: ServerMessage;
  recovery: RecoveryInfo;
  gap: RecoveryInfo;
  'channel-deleted': { channel: string };
  broadcast: ServerMessage & { broadcast: true };
  /** The server took a subscription away: `reason` is 'removed by the
   *  administrator', or 'permission-revoked' when a refreshed token no longer
   *  allows the channel (the client does not subscribe to it again). */
  unsubscribed: { channel: string; reason?: string };
  authenticated: { user: string; expiresAt: number | null; refresh: boolean };
  /** A token refused, or closed with 4401 (no valid token in time, or the
   *  third refused token: `message` says which), 4408 or 4429. */
  unauthorized: { reason: string; code?: number; message?: string; refresh?: boolean };
  /** Another connection subscribed to one of our channels (join-leave). */
  join: PresenceEvent;
  /** One left it: unsubscribed, closed, or went away with its worker. */
  leave: PresenceEvent;
  /** Some joins or leaves of the channel could not reach us (the server
   *  was overloaded): our view of presence may be stale, ask presence()
   *  again. */
  'presence-resync': { channel: string };
  error: { reason: string; [key: string]: unknown };
}

export type MessageHandler<T = Json> = (data: T, message: ChannelMessage<T>) => void;
export type RpcHandler<Req = any, Res = Json> = (data: Req, request: RpcRequest<Req>) => Res | Promise<Res>;

export declare class SenteLite {
  /** url: ws:// or wss://; default: the page's own host. */
  constructor(url?: string, opts?: SenteLiteOptions);
  readonly url: string;
  state: ConnectionState;
  connId: string | null;
  worker: number | null;
  /** The authenticated user (the token's sub), if any. */
  user: string | null;
  /** When the token expires (ms since the epoch), if it does. */
  expiresAt: number | null;

  on<E extends keyof SenteLiteEvents>(event: E, fn: (arg: SenteLiteEvents[E]) => void): () => void;
  off<E extends keyof SenteLiteEvents>(event: E, fn: (arg: SenteLiteEvents[E]) => void): void;

  /** Resolves with the welcome message. */
  connect(): Promise<Welcome>;
  close(code?: number, reason?: string): void;
  reconnect(): void;
  /** Send a new token on the open connection (or keep it for the next
   *  one: resolves with null then); rejects when the server refuses it. */
  authenticate(token: string): Promise<AuthenticateResult | null>;

  /** Round trip in milliseconds. */
  ping(): Promise<number>;
  publish<T extends Json = Json>(channel: string, data: T, opts?: { excludeSender?: boolean }): Promise<PublishResult>;
  subscribe<T = Json>(channel: string, onMessage?: MessageHandler<T>): Promise<SubscriptionResult>;
  unsubscribe<T = Json>(channel: string, handler?: MessageHandler<T>): Promise<UnsubscriptionResult>;
  /** Resolves with the first responder's data; data must be an object. */
  rpc<Res = Json>(channel: string, data?: { [key: string]: Json },
    opts?: { timeoutMs?: number | null; clientTimeoutMs?: number }): Promise<Res>;
  /** Answer every rpc-request on the channel with handler's value. */
  serve<Req = any, Res = Json>(channel: string, handler: RpcHandler<Req, Res>): Promise<SubscriptionResult>;
  listChannels(opts?: { pageSize?: number }): Promise<{ [channel: string]: ChannelInfo }>;
  /** Who is subscribed, every page merged; by default only subscribers may ask. */
  presence(channel: string): Promise<Presence>;
  presenceStats(channel: string): Promise<PresenceStats>;
  /** One page of the channel's retained messages. */
  history<T = Json>(channel: string, opts?: HistoryOptions): Promise<HistoryPage<T>>;
  getSubscriptions(): Promise<string[]>;
  /** Channels subscribed to on this client (also while reconnecting). */
  subscriptions(): string[];
}

export default SenteLite;
