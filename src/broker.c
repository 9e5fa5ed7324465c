/*
 * broker.c - the broker process (--redis): the one process of a node that
 * talks to Redis, so that many nodes share channels with one order.
 *
 * What it owns (process-local): per --redis instance ("shard") a link of
 * two hiredis connections on its own libevent loop - one for commands
 * (Lua scripts by EVALSHA, pipelined, answered in order) and one for
 * pub/sub - and a map of the channels this node cares about (bchan_t).
 * Nothing of it is in shared memory: a respawned broker rebuilds it from
 * the registry (the truth of this node's subscribers) and from Redis.
 *
 * Work arrives from the workers through the request queue (sl_brq.h);
 * answers go back as SL_INBOX_BROKER_RESULT entries.  Messages from Redis
 * become channel-message frames encoded once and handed to the workers
 * that have subscribers (sl_chan_deliver), exactly like a local publish.
 *
 * Ordering: Redis assigns each channel's seq in one Lua script that also
 * appends to the channel's history and PUBLISHes; every node's broker gets
 * the channel's messages from its one pub/sub connection, in that order,
 * and hands them to the workers in that order.  A message whose seq does
 * not follow the last one delivered (a link was lost meanwhile) makes the
 * broker fetch the missing ones from the history first (catch-up) and hold
 * newer ones until then; when the history no longer has them, or the
 * channel's epoch changed (Redis restarted empty), the local subscribers
 * are closed with 1012 so their clients resubscribe with since-seq and are
 * told recovered:false (sl_chan_reset).
 *
 * Failures: a command not answered within --redis-timeout-ms, or any
 * connection error, drops the link: every command in flight and every
 * request that comes while it is down is answered broker-unavailable at
 * once; reconnection follows with exponential back-off and jitter, then
 * scripts are loaded again (also on a NOSCRIPT reply), every wanted
 * channel is subscribed again and caught up.
 *
 * Keys (P = --redis-prefix, C = a channel id; {C} keeps a channel's keys
 * in one Redis Cluster slot):
 *   P:{C}:c  hash: epoch, seq, created, max, ret, rpc, tel
 *   P:{C}:h  list: the retained messages (trimmed to ret, TTL)
 *   P:{C}:n  hash: node -> its subscriber count
 *   P:{C}:m  pub/sub: "M<epoch>\n<seq>\n<origin>\n<exclude>\n<json>" and
 *            "R<origin>\n<exclude>\n<json>" (an rpc-request)
 *   P:channels, P:nodes (sets), P:node:<node> (heartbeat, expires),
 *   P:nodech:<node> (set: channels the node has counts in),
 *   P:ctl (pub/sub: channel deleted, broadcast), P:to:<node> (pub/sub:
 *   RPC responses and admin calls for one node, and their outcomes).
 */
#include "sl_broker.h"
#include "sl_brq.h"
#include "sl_conf.h"
#include "sl_proc.h"
#include "sl_pubsub.h"
#include "sl_rpc.h"
#include "sl_shm.h"
#include "sl_tel.h"

#include <errno.h>
#include <event2/event.h>
#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/signalfd.h>
#include <unistd.h>
#include <urcu/uatomic.h>
#include <urcu/urcu-qsbr.h>

#define REG (&sl_shm->reg)
#define BSTATS (&sl_shm->broker)
#define HEARTBEAT_MS 1000
#define NODE_TTL_MS 5000
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define BACKLOG_MAX 100000 /* messages from Redis waiting for inbox room, all channels */
#define BACKLOG_PUSHBACK 1000 /* past this, this node's publishes are refused (overloaded) */
#define HOLD_MAX 10000     /* messages held per channel during a catch-up */
#define BUCKETS 4096

int sl_broker_wake_fd = -1;

uint32_t sl_broker_shard(const char *id, size_t len, uint32_t nshards)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < len; i++) {
        h ^= (uint8_t)id[i];
        h *= 1099511628211ULL;
    }
    return nshards ? (uint32_t)(h % nshards) : 0;
}

/* ------------------------------------------------------------ scripts */

enum { S_PUBLISH, S_JOIN, S_SYNC, S_RPC, S_CATCHUP, S_CREATE, S_DELETE, S_INFO, S_SNAPSHOT,
       S_HEARTBEAT, S__COUNT };

/* Node liveness: a node's counts count only while P:node:<node> exists. */
#define LUA_LIVE_SUM                                                                        \
    "local function live_sum(n, np, skip)\n"                                                \
    "  local t = 0\n"                                                                       \
    "  local nc = redis.call('HGETALL', n)\n"                                               \
    "  for i = 1, #nc, 2 do\n"                                                              \
    "    if nc[i] ~= skip and redis.call('EXISTS', np .. nc[i]) == 1 then\n"                \
    "      t = t + tonumber(nc[i + 1]) end\n"                                               \
    "  end\n"                                                                               \
    "  return t\n"                                                                          \
    "end\n"

static const char *const scripts[S__COUNT] = {
    /* PUBLISH  KEYS c h n m  ARGV head tail ttl exclude-sub nodeprefix new-epoch origin
     * exclude-conn.  Sets the epoch if absent, takes the next seq, retains
     * and publishes in one step. */
    [S_PUBLISH] = LUA_LIVE_SUM
    "if redis.call('EXISTS', KEYS[1]) == 0 then return {2} end\n"
    "local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)\n"
    "local epoch = redis.call('HGET', KEYS[1], 'epoch')\n"
    "if not epoch then epoch = ARGV[6]; redis.call('HSET', KEYS[1], 'epoch', epoch) end\n"
    "local msg = ARGV[1] .. seq .. ARGV[2]\n"
    "local ret = tonumber(redis.call('HGET', KEYS[1], 'ret') or '0')\n"
    "if ret > 0 then\n"
    "  redis.call('RPUSH', KEYS[2], msg)\n"
    "  redis.call('LTRIM', KEYS[2], -ret, -1)\n"
    "  redis.call('EXPIRE', KEYS[2], ARGV[3])\n"
    "end\n"
    "redis.call('PUBLISH', KEYS[4], 'M' .. epoch .. '\\n' .. seq .. '\\n' .. ARGV[7] .. '\\n' ..\n"
    "  ARGV[8] .. '\\n' .. msg)\n"
    "local subs = live_sum(KEYS[3], ARGV[5], '') - tonumber(ARGV[4])\n"
    "if subs < 0 then subs = 0 end\n"
    "return {0, seq, epoch, subs}\n",

    /* JOIN  KEYS c h n channels nodech  ARGV node count autocreate max ret rpc tel new-epoch
     * now since client-epoch from ring-oldest ring-epoch nodeprefix id.  Creates the
     * channel when allowed, records this node's count and checks max-subscribers
     * across live nodes, and returns what a recovering subscriber needs. */
    [S_JOIN] = LUA_LIVE_SUM
    "local created = 0\n"
    "if redis.call('EXISTS', KEYS[1]) == 0 then\n"
    "  if ARGV[3] == '0' then return {2} end\n"
    "  redis.call('HSET', KEYS[1], 'epoch', ARGV[8], 'seq', 0, 'created', ARGV[9], 'max', ARGV[4],\n"
    "    'ret', ARGV[5], 'rpc', ARGV[6], 'tel', ARGV[7])\n"
    "  redis.call('SADD', KEYS[4], ARGV[16])\n"
    "  created = 1\n"
    "end\n"
    "local cfg = redis.call('HMGET', KEYS[1], 'epoch', 'seq', 'created', 'max', 'ret', 'rpc', 'tel')\n"
    "local epoch = cfg[1]\n"
    "if not epoch then epoch = ARGV[8]; redis.call('HSET', KEYS[1], 'epoch', epoch) end\n"
    "local last = tonumber(cfg[2] or '0')\n"
    "local mine = tonumber(ARGV[2])\n"
    "local total = live_sum(KEYS[3], ARGV[15], ARGV[1]) + mine\n"
    "if total > tonumber(cfg[4] or '1000') then\n"
    "  if mine > 1 then redis.call('HSET', KEYS[3], ARGV[1], mine - 1)\n"
    "  else redis.call('HDEL', KEYS[3], ARGV[1]) end\n"
    "  return {3, total - 1}\n"
    "end\n"
    "redis.call('HSET', KEYS[3], ARGV[1], mine)\n"
    "redis.call('SADD', KEYS[5], ARGV[16])\n"
    "local ret = tonumber(cfg[5] or '0')\n"
    "local len = redis.call('LLEN', KEYS[2])\n"
    "local first = last - len + 1\n"
    "local since = tonumber(ARGV[10])\n"
    "local recovered = 0\n"
    "local from = 1\n"
    "if since >= 0 then\n"
    "  local ro = tonumber(ARGV[13])\n"
    "  local ring = ARGV[14] == epoch and ro > 0 and ro <= since + 1\n"
    "  if ARGV[11] == epoch and (since >= last or (len > 0 and first <= since + 1) or ring) then\n"
    "    recovered = 1\n"
    "    from = tonumber(ARGV[12])\n"
    "  end\n"
    "end\n"
    "local out = {}\n"
    "local lo = 0\n"
    "if len > 0 and ret > 0 then\n"
    "  lo = from - first\n"
    "  if lo < 0 then lo = 0 end\n"
    "  if len - lo > ret then lo = len - ret end\n"
    "  if lo < len then out = redis.call('LRANGE', KEYS[2], lo, -1) end\n"
    "end\n"
    "return {0, total, epoch, last, recovered, cfg[3] or '0', cfg[4] or '0', cfg[5] or '0',\n"
    "  cfg[6] or '0', cfg[7] or '1', created, first + lo, out}\n",

    /* SYNC  KEYS n nodech  ARGV node count id: this node's count, absolute. */
    [S_SYNC] =
    "if tonumber(ARGV[2]) > 0 then\n"
    "  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]); redis.call('SADD', KEYS[2], ARGV[3])\n"
    "else\n"
    "  redis.call('HDEL', KEYS[1], ARGV[1]); redis.call('SREM', KEYS[2], ARGV[3])\n"
    "end\n"
    "return 0\n",

    /* RPC  KEYS c n m  ARGV payload requester-subscribed nodeprefix */
    [S_RPC] = LUA_LIVE_SUM
    "if redis.call('EXISTS', KEYS[1]) == 0 then return {2} end\n"
    "local total = live_sum(KEYS[2], ARGV[3], '') - tonumber(ARGV[2])\n"
    "if total <= 0 then return {6, 0} end\n"
    "redis.call('PUBLISH', KEYS[3], ARGV[1])\n"
    "return {0, total}\n",

    /* CATCHUP  KEYS c h channels  ARGV after epoch new-epoch now max ret rpc tel id
     * The messages after `after` of the known epoch; {1, epoch, last} when they are
     * gone or the epoch changed.  Re-creates a channel Redis lost (restarted empty). */
    [S_CATCHUP] =
    "local created = 0\n"
    "if redis.call('EXISTS', KEYS[1]) == 0 then\n"
    "  redis.call('HSET', KEYS[1], 'epoch', ARGV[3], 'seq', 0, 'created', ARGV[4], 'max', ARGV[5],\n"
    "    'ret', ARGV[6], 'rpc', ARGV[7], 'tel', ARGV[8])\n"
    "  redis.call('SADD', KEYS[3], ARGV[9])\n"
    "end\n"
    "local cfg = redis.call('HMGET', KEYS[1], 'epoch', 'seq')\n"
    "local epoch = cfg[1] or ARGV[3]\n"
    "local last = tonumber(cfg[2] or '0')\n"
    "if epoch ~= ARGV[2] then return {1, epoch, last} end\n"
    "local after = tonumber(ARGV[1])\n"
    "if after >= last then return {0, epoch, last, {}} end\n"
    "local len = redis.call('LLEN', KEYS[2])\n"
    "local first = last - len + 1\n"
    "if len == 0 or first > after + 1 then return {1, epoch, last} end\n"
    "return {0, epoch, last, redis.call('LRANGE', KEYS[2], after + 1 - first, -1)}\n",

    /* CREATE  KEYS c channels  ARGV id epoch now max ret rpc tel */
    [S_CREATE] =
    "if redis.call('EXISTS', KEYS[1]) == 1 then\n"
    "  local c = redis.call('HMGET', KEYS[1], 'created', 'max', 'ret', 'rpc', 'tel', 'seq')\n"
    "  return {5, c[1] or '0', c[2] or '0', c[3] or '0', c[4] or '0', c[5] or '1', c[6] or '0'}\n"
    "end\n"
    "redis.call('HSET', KEYS[1], 'epoch', ARGV[2], 'seq', 0, 'created', ARGV[3], 'max', ARGV[4],\n"
    "  'ret', ARGV[5], 'rpc', ARGV[6], 'tel', ARGV[7])\n"
    "redis.call('SADD', KEYS[2], ARGV[1])\n"
    "return {0, ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], '0'}\n",

    /* DELETE  KEYS c h n channels ctl  ARGV id nodeprefix */
    [S_DELETE] = LUA_LIVE_SUM
    "if redis.call('EXISTS', KEYS[1]) == 0 then return {2} end\n"
    "local subs = live_sum(KEYS[3], ARGV[2], '')\n"
    "redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])\n"
    "redis.call('SREM', KEYS[4], ARGV[1])\n"
    "redis.call('PUBLISH', KEYS[5], 'D' .. ARGV[1])\n"
    "return {0, subs}\n",

    /* INFO  KEYS c h n  ARGV nodeprefix */
    [S_INFO] = LUA_LIVE_SUM
    "if redis.call('EXISTS', KEYS[1]) == 0 then return {2} end\n"
    "local c = redis.call('HMGET', KEYS[1], 'epoch', 'seq', 'created', 'max', 'ret', 'rpc', 'tel')\n"
    "return {0, c[1] or '', c[2] or '0', c[3] or '0', c[4] or '0', c[5] or '0', c[6] or '0',\n"
    "  c[7] or '1', live_sum(KEYS[3], ARGV[1], ''), redis.call('LRANGE', KEYS[2], 0, -1)}\n",

    /* SNAPSHOT  KEYS channels  ARGV prefix nodeprefix limit: every channel of this
     * instance with its figures, as JSON. */
    [S_SNAPSHOT] = LUA_LIVE_SUM
    "local out = {}\n"
    "local n = 0\n"
    "for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do\n"
    "  n = n + 1\n"
    "  if n > tonumber(ARGV[3]) then break end\n"
    "  local k = ARGV[1] .. ':{' .. id .. '}:'\n"
    "  local c = redis.call('HMGET', k .. 'c', 'epoch', 'seq', 'created', 'max', 'ret', 'rpc', 'tel')\n"
    "  if c[1] then\n"
    "    out[id] = {['config'] = {['max-subscribers'] = tonumber(c[4]),\n"
    "      ['message-retention'] = tonumber(c[5]), ['rpc-timeout-ms'] = tonumber(c[6]),\n"
    "      ['telemetry-enabled'] = c[7] ~= '0'}, ['created-at'] = tonumber(c[3]),\n"
    "      ['message-count'] = tonumber(c[2]), ['epoch'] = c[1],\n"
    "      ['subscriber-count'] = live_sum(k .. 'n', ARGV[2], ''),\n"
    "      ['retention-count'] = redis.call('LLEN', k .. 'h')}\n"
    "  else redis.call('SREM', KEYS[1], id) end\n"
    "end\n"
    "if n == 0 then return '{}' end\n"
    "return cjson.encode(out)\n",

    /* HEARTBEAT  KEYS nodes node  ARGV node info ttl-ms prefix: refresh this node,
     * forget dead ones (their counts), return the live nodes' infos. */
    [S_HEARTBEAT] =
    "redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])\n"
    "redis.call('SADD', KEYS[1], ARGV[1])\n"
    "local live = {}\n"
    "for _, nd in ipairs(redis.call('SMEMBERS', KEYS[1])) do\n"
    "  local v = redis.call('GET', ARGV[4] .. ':node:' .. nd)\n"
    "  if v then live[#live + 1] = v else\n"
    "    local chs = ARGV[4] .. ':nodech:' .. nd\n"
    "    for _, id in ipairs(redis.call('SMEMBERS', chs)) do\n"
    "      redis.call('HDEL', ARGV[4] .. ':{' .. id .. '}:n', nd)\n"
    "    end\n"
    "    redis.call('DEL', chs)\n"
    "    redis.call('SREM', KEYS[1], nd)\n"
    "  end\n"
    "end\n"
    "return live\n",
};

static char script_sha[S__COUNT][41];

static void sha1_hex(const char *s, char out[41])
{
    unsigned char d[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    EVP_Digest(s, strlen(s), d, &n, EVP_sha1(), NULL);
    for (unsigned i = 0; i < n && i < 20; i++)
        snprintf(out + 2 * i, 3, "%02x", d[i]);
}

/* ------------------------------------------------------------ types */

typedef struct link link_t;
typedef struct bchan bchan_t;
typedef struct cmd cmd_t;

enum { L_DOWN, L_CONNECTING, L_UP };
enum { SUB_NONE, SUB_PENDING, SUB_ON, SUB_OFF_PENDING };

/* What a command's reply completes. */
enum { C_PUBLISH, C_JOIN, C_SYNC, C_RPC, C_RPC_FWD, C_CATCHUP, C_ADMIN_CREATE, C_ADMIN_DELETE,
       C_ADMIN_INFO, C_ADMIN_PUBLISH, C_ADMIN_FWD, C_SNAPSHOT, C_HEARTBEAT, C_PING, C_SETUP,
       C_ENSURE };

struct cmd {
    cmd_t *prev, *next; /* the link's in-flight list, oldest first */
    link_t *link;
    int what;
    int worker;
    uint32_t slot;
    uint64_t conn, tag;
    int64_t sent_ms, sent_us;
    bool answered; /* a result went to the worker already */
    bool retried;  /* NOSCRIPT: reloaded once */
    int script;
    char *buf; /* the formatted command, kept for a NOSCRIPT retry */
    int len;
    bchan_t *ch; /* joins and catch-ups: the channel (referenced) */
    json_t *ctx; /* what the reply needs besides (owned) */
};

/* A message from Redis waiting: held during a catch-up, or for inbox room. */
typedef struct bmsg {
    struct bmsg *next;
    uint64_t seq, exclude;
    bool origin;
    char epoch[24];
    size_t len;
    char json[];
} bmsg_t;

struct bchan {
    bchan_t *next;      /* hash chain */
    bchan_t *bl_next;   /* the list of channels with a backlog */
    uint32_t idlen;
    uint32_t shard;
    int sub;            /* SUB_* on the shard's pub/sub connection */
    bool want;          /* this node has subscribers: be subscribed */
    bool holding;       /* a catch-up is in flight: hold new messages */
    bool on_backlog;
    int64_t synced;     /* the count Redis has for this node; -1 unknown */
    char epoch[24];     /* of the last message delivered ("" unknown) */
    uint64_t last;      /* seq of the last message delivered (0 unknown) */
    cmd_t *joins;       /* joins waiting for the subscription (linked by next) */
    bmsg_t *held, *held_tail;
    uint32_t nheld;
    uint32_t inflight;  /* commands referring to this channel */
    bmsg_t *backlog, *backlog_tail;
    char id[SL_CHAN_ID_MAX + 1];
};

struct link {
    int shard;
    int state;
    redisAsyncContext *cmd, *sub;
    bool ping_ok, sub_ok; /* the setup PING answered, the node channels subscribed */
    bool ever_up;
    cmd_t *head, *tail; /* in flight on cmd */
    int64_t backoff_ms;
    struct event *retry_ev;
    char reason[96];
};

static struct {
    struct event_base *base;
    struct event *wake_ev, *tick_ev, *beat_ev, *sig_ev;
    link_t link[SL_BROKER_SHARDS];
    uint32_t nlinks;
    bchan_t *map[BUCKETS];
    bchan_t *backlog; /* channels with messages waiting for inbox room */
    uint64_t nbacklog;
    uint64_t wake;    /* workers to wake at the end of this turn */
    char node[32];
    char prefix[64];
    bool stopping;
    json_t *snap_nodes;               /* from the last heartbeat of shard 0 */
    json_t *snap_chans[SL_BROKER_SHARDS]; /* from the last snapshot of each shard */
} B;

static void link_fail(link_t *l, const char *why);
static void link_connect(link_t *l);
static void reconcile(void);
static void chan_deliver(bchan_t *ch, bmsg_t *m);
static void start_catchup(bchan_t *ch);

/* ------------------------------------------------------------ helpers */

static void wake_worker(int w)
{
    if (w >= 0 && w < SL_MAX_WORKERS)
        B.wake |= (uint64_t)1 << w;
}

static void wake_flush(void)
{
    uint64_t w = B.wake;
    B.wake = 0;
    for (int i = 0; w; i++, w >>= 1)
        if (w & 1) {
            uint64_t one = 1;
            if (write(sl_wake_fds[i], &one, sizeof(one)) < 0) {
            }
        }
}

/* Answer a worker's request (at most once per request). */
static void answer(int worker, uint64_t tag, uint32_t status, json_t *doc)
{
    if (tag == 0)
        return; /* a request nobody waits for */
    char *txt = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
    if (status == SL_BR_UNAVAILABLE)
        uatomic_add(&BSTATS->unavailable, 1);
    if (sl_brq_result(REG, worker, tag, status, txt, txt ? strlen(txt) : 0) == SL_OK)
        wake_worker(worker);
    /* Else the worker's inbox is full: its own deadline answers the client. */
    free(txt);
}

static void cmd_answer(cmd_t *c, uint32_t status, json_t *doc)
{
    if (!c->answered) {
        c->answered = true;
        answer(c->worker, c->tag, status, doc);
    }
}

static void new_epoch(char out[16])
{
    static const char abc[] = "0123456789abcdefghijklmnopqrstuvwxyz";
    uint8_t rnd[12];
    if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd))
        for (int i = 0; i < 12; i++)
            rnd[i] = (uint8_t)(sl_mono_us() >> (i % 8));
    for (int i = 0; i < 12; i++)
        out[i] = abc[rnd[i] % 36];
    out[12] = '\0';
}

static int key(char *out, size_t n, const char *id, size_t idlen, const char *suffix)
{
    return snprintf(out, n, "%s:{%.*s}:%s", B.prefix, (int)idlen, id, suffix);
}

static link_t *link_of(const char *id, size_t len)
{
    return &B.link[sl_broker_shard(id, len, B.nlinks)];
}

static void set_reason(link_t *l, const char *why)
{
    snprintf(l->reason, sizeof(l->reason), "%s", why);
    sl_broker_link_t *s = &BSTATS->link[l->shard];
    snprintf(s->down_reason, sizeof(s->down_reason), "%s", why);
}

/* ------------------------------------------------------------ the channel map */

static bchan_t *chan_find(const char *id, size_t len)
{
    uint32_t b = sl_broker_shard(id, len, BUCKETS);
    for (bchan_t *c = B.map[b]; c; c = c->next)
        if (c->idlen == len && memcmp(c->id, id, len) == 0)
            return c;
    return NULL;
}

static bchan_t *chan_get(const char *id, size_t len)
{
    bchan_t *c = chan_find(id, len);
    if (c || len > SL_CHAN_ID_MAX)
        return c;
    c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    memcpy(c->id, id, len);
    c->idlen = (uint32_t)len;
    c->shard = sl_broker_shard(id, len, B.nlinks);
    c->synced = -1;
    uint32_t b = sl_broker_shard(id, len, BUCKETS);
    c->next = B.map[b];
    B.map[b] = c;
    return c;
}

static void free_msgs(bmsg_t *m)
{
    while (m) {
        bmsg_t *n = m->next;
        free(m);
        m = n;
    }
}

/* Forget a channel nobody here wants any more (nothing subscribed, nothing
 * waiting). */
static void chan_maybe_free(bchan_t *c)
{
    if (c->want || c->sub != SUB_NONE || c->joins || c->holding || c->backlog || c->synced > 0 ||
        c->inflight)
        return;
    uint32_t b = sl_broker_shard(c->id, c->idlen, BUCKETS);
    for (bchan_t **p = &B.map[b]; *p; p = &(*p)->next)
        if (*p == c) {
            *p = c->next;
            break;
        }
    free_msgs(c->held);
    free(c);
}

/* ------------------------------------------------------------ commands */

static void cmd_free(cmd_t *c)
{
    if (c->ch)
        c->ch->inflight--;
    free(c->buf);
    json_decref(c->ctx);
    free(c);
}

static void cmd_unlink(cmd_t *c)
{
    link_t *l = c->link;
    if (c->prev)
        c->prev->next = c->next;
    else if (l->head == c)
        l->head = c->next;
    if (c->next)
        c->next->prev = c->prev;
    else if (l->tail == c)
        l->tail = c->prev;
    c->prev = c->next = NULL;
    uatomic_add(&BSTATS->link[l->shard].in_flight, -1);
}

static void on_reply(redisAsyncContext *ac, void *r, void *priv);

static int cmd_send(cmd_t *c)
{
    link_t *l = c->link;
    if (l->cmd == NULL ||
        redisAsyncFormattedCommand(l->cmd, on_reply, c, c->buf, (size_t)c->len) != REDIS_OK)
        return SL_ERROR;
    c->sent_us = sl_mono_us();
    c->sent_ms = c->sent_us / 1000;
    c->prev = l->tail;
    c->next = NULL;
    if (l->tail)
        l->tail->next = c;
    else
        l->head = c;
    l->tail = c;
    uatomic_add(&BSTATS->link[l->shard].in_flight, 1);
    return SL_OK;
}

/* A command from argv; ownership of c passes to the link (its reply frees
 * it).  When the link is not up, the command is answered unavailable and
 * freed here: returns SL_ERROR. */
static int cmd_issue(cmd_t *c, int argc, const char **argv, const size_t *lens)
{
    char *buf = NULL;
    int n = redisFormatCommandArgv(&buf, argc, argv, lens);
    if (n < 0) {
        cmd_answer(c, SL_BR_BAD, NULL);
        cmd_free(c);
        return SL_ERROR;
    }
    c->buf = buf;
    c->len = n;
    bool setup = c->what == C_SETUP || c->what == C_PING;
    if ((c->link->state != L_UP && !setup) || cmd_send(c) != SL_OK) {
        cmd_answer(c, SL_BR_UNAVAILABLE, NULL);
        cmd_free(c);
        return SL_ERROR;
    }
    return SL_OK;
}

static cmd_t *cmd_new(link_t *l, int what, const sl_inbox_entry_t *e)
{
    cmd_t *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->link = l;
    c->what = what;
    c->script = -1;
    if (e) {
        c->worker = e->from;
        c->slot = e->target_slot;
        c->conn = e->target_conn;
        c->tag = e->tag;
    } else {
        c->worker = -1;
    }
    return c;
}

static void cmd_chan(cmd_t *c, bchan_t *ch)
{
    c->ch = ch;
    ch->inflight++;
}

/* EVALSHA script with KEYS (nkeys) then ARGV. */
static int cmd_script(cmd_t *c, int script, int nkeys, int nargs, const char **args,
                      const size_t *lens)
{
    const char *argv[40];
    size_t alen[40];
    char nk[8];
    snprintf(nk, sizeof(nk), "%d", nkeys);
    int k = 0;
    argv[k] = "EVALSHA";
    alen[k++] = 7;
    argv[k] = script_sha[script];
    alen[k++] = 40;
    argv[k] = nk;
    alen[k++] = strlen(nk);
    for (int i = 0; i < nargs && k < 40; i++) {
        argv[k] = args[i];
        alen[k++] = lens ? lens[i] : strlen(args[i]);
    }
    c->script = script;
    return cmd_issue(c, k, argv, alen);
}

/* Strings for script arguments. */
typedef struct {
    const char *v[36];
    size_t l[36];
    char own[36][64];
    int n;
} args_t;

static void arg(args_t *a, const char *s, size_t len)
{
    a->v[a->n] = s;
    a->l[a->n++] = len;
}
static void args(args_t *a, const char *s)
{
    arg(a, s, strlen(s));
}
static void argi(args_t *a, int64_t v)
{
    snprintf(a->own[a->n], sizeof(a->own[0]), "%" PRId64, v);
    args(a, a->own[a->n]);
}
static void argk(args_t *a, const char *id, size_t len, const char *suffix)
{
    char *o = malloc(SL_CHAN_ID_MAX + 80);
    key(o, SL_CHAN_ID_MAX + 80, id, len, suffix);
    args(a, o); /* freed by args_free */
}
static void args_free(args_t *a, int nkeys_malloced_from, int to)
{
    for (int i = nkeys_malloced_from; i < to; i++)
        free((void *)a->v[i]);
}

static char node_prefix_buf[96];
static const char *node_prefix(void)
{
    return node_prefix_buf; /* "P:node:" */
}

/* ------------------------------------------------------------ replies */

static bool is_err(redisReply *r, const char *prefix)
{
    return r && r->type == REDIS_REPLY_ERROR && strncmp(r->str, prefix, strlen(prefix)) == 0;
}

static int64_t rint_(redisReply *r)
{
    if (r == NULL)
        return 0;
    if (r->type == REDIS_REPLY_INTEGER)
        return r->integer;
    if (r->type == REDIS_REPLY_STRING)
        return strtoll(r->str, NULL, 10);
    return 0;
}

static const char *rstr(redisReply *r)
{
    return r && r->type == REDIS_REPLY_STRING ? r->str : "";
}

static redisReply *el(redisReply *r, size_t i)
{
    return r && r->type == REDIS_REPLY_ARRAY && i < r->elements ? r->element[i] : NULL;
}

static json_t *config_json(redisReply *r, size_t at)
{
    return json_pack("{s:I, s:I, s:I, s:b}", "max-subscribers", (json_int_t)rint_(el(r, at)),
                     "message-retention", (json_int_t)rint_(el(r, at + 1)), "rpc-timeout-ms",
                     (json_int_t)rint_(el(r, at + 2)), "telemetry-enabled",
                     rint_(el(r, at + 3)) != 0);
}

/* An array of message texts (each valid JSON) as a JSON array, without
 * parsing them: "[m1,m2,...]". */
static char *raw_array(redisReply *a)
{
    size_t n = 2;
    for (size_t i = 0; a && i < a->elements; i++)
        n += a->element[i]->len + 1;
    char *s = malloc(n + 1), *p = s;
    if (s == NULL)
        return NULL;
    *p++ = '[';
    for (size_t i = 0; a && i < a->elements; i++) {
        if (i)
            *p++ = ',';
        memcpy(p, a->element[i]->str, a->element[i]->len);
        p += a->element[i]->len;
    }
    *p++ = ']';
    *p = '\0';
    return s;
}

static void done_publish(cmd_t *c, redisReply *r)
{
    int64_t st = rint_(el(r, 0));
    if (r == NULL || r->type != REDIS_REPLY_ARRAY) {
        cmd_answer(c, r ? SL_BR_BAD : SL_BR_UNAVAILABLE, NULL);
        return;
    }
    if (st != 0) {
        cmd_answer(c, (uint32_t)st, NULL);
        return;
    }
    json_t *d = json_pack("{s:I, s:s, s:I}", "seq", (json_int_t)rint_(el(r, 1)), "epoch",
                          rstr(el(r, 2)), "delivered-to", (json_int_t)rint_(el(r, 3)));
    cmd_answer(c, SL_BR_OK, d);
    json_decref(d);
}

static void done_join(cmd_t *c, redisReply *r)
{
    if (r == NULL || r->type != REDIS_REPLY_ARRAY) {
        cmd_answer(c, r ? SL_BR_BAD : SL_BR_UNAVAILABLE, NULL);
        return;
    }
    int64_t st = rint_(el(r, 0));
    if (st == SL_BR_FULL) {
        json_t *d = json_pack("{s:I}", "count", (json_int_t)rint_(el(r, 1)));
        cmd_answer(c, SL_BR_FULL, d);
        json_decref(d);
        /* The worker undoes its local subscription; the next sync fixes
         * our count in Redis. */
        if (c->ch)
            c->ch->synced = -1;
        return;
    }
    if (st != 0) {
        cmd_answer(c, (uint32_t)st, NULL);
        return;
    }
    if (c->ch) {
        /* Redis has this node's count as the worker saw it. */
        c->ch->synced = -1;
        if (c->ch->epoch[0] == '\0') {
            snprintf(c->ch->epoch, sizeof(c->ch->epoch), "%s", rstr(el(r, 2)));
            if (c->ch->last == 0)
                c->ch->last = (uint64_t)rint_(el(r, 3));
        }
    }
    char *hist = raw_array(el(r, 12));
    json_t *h = hist ? json_loads(hist, 0, NULL) : json_array();
    free(hist);
    json_t *d = json_pack("{s:I, s:s, s:I, s:b, s:I, s:o, s:b, s:I, s:o}", "count",
                          (json_int_t)rint_(el(r, 1)), "epoch", rstr(el(r, 2)), "last",
                          (json_int_t)rint_(el(r, 3)), "recovered", rint_(el(r, 4)) != 0,
                          "created-at", (json_int_t)rint_(el(r, 5)), "config", config_json(r, 6),
                          "created", rint_(el(r, 10)) != 0, "first", (json_int_t)rint_(el(r, 11)),
                          "history", h ? h : json_array());
    cmd_answer(c, SL_BR_OK, d);
    json_decref(d);
}

static void done_catchup(cmd_t *c, redisReply *r)
{
    bchan_t *ch = c->ch;
    if (ch == NULL)
        return;
    if (r == NULL || r->type != REDIS_REPLY_ARRAY) {
        /* The link went down: the next connection starts another catch-up. */
        ch->holding = false;
        free_msgs(ch->held);
        ch->held = ch->held_tail = NULL;
        ch->nheld = 0;
        return;
    }
    int64_t st = rint_(el(r, 0));
    const char *epoch = rstr(el(r, 1));
    uint64_t last = (uint64_t)rint_(el(r, 2));
    sl_chan_t *lc = sl_chan_find(REG, ch->id, ch->idlen);
    if (st != 0) {
        /* Lost for good: subscribers here must resubscribe and be told. */
        uint64_t woken = 0;
        if (lc && sl_chan_reset(REG, lc, epoch, &woken) == SL_OK) {
            uatomic_add(&BSTATS->reset_channels, 1);
            B.wake |= woken;
        }
        snprintf(ch->epoch, sizeof(ch->epoch), "%s", epoch);
        ch->last = last;
    } else {
        redisReply *a = el(r, 3);
        uint64_t seq = ch->last;
        for (size_t i = 0; a && i < a->elements; i++) {
            seq++;
            bmsg_t *m = malloc(sizeof(*m) + a->element[i]->len + 1);
            if (m == NULL)
                break;
            m->next = NULL;
            m->seq = seq;
            m->exclude = 0;
            m->origin = false;
            snprintf(m->epoch, sizeof(m->epoch), "%s", epoch);
            m->len = a->element[i]->len;
            memcpy(m->json, a->element[i]->str, m->len + 1);
            uatomic_add(&BSTATS->recovered, 1);
            chan_deliver(ch, m);
        }
    }
    ch->holding = false;
    bmsg_t *held = ch->held;
    ch->held = ch->held_tail = NULL;
    ch->nheld = 0;
    while (held) {
        bmsg_t *n = held->next;
        held->next = NULL;
        chan_deliver(ch, held);
        held = n;
    }
}

static void done_rpc(cmd_t *c, redisReply *r)
{
    if (r == NULL || r->type != REDIS_REPLY_ARRAY) {
        cmd_answer(c, r ? SL_BR_BAD : SL_BR_UNAVAILABLE, NULL);
        return;
    }
    int64_t st = rint_(el(r, 0));
    json_t *d = json_pack("{s:I}", "delivered-to", (json_int_t)rint_(el(r, 1)));
    cmd_answer(c, (uint32_t)st, d);
    json_decref(d);
}

/* A PUBLISH to another node's channel: nobody listening means that node is
 * gone - the request it was for cannot be found. */
static void done_fwd(cmd_t *c, redisReply *r)
{
    if (r == NULL) {
        cmd_answer(c, SL_BR_UNAVAILABLE, NULL);
        return;
    }
    if (r->type != REDIS_REPLY_INTEGER) {
        cmd_answer(c, SL_BR_BAD, NULL);
        return;
    }
    if (r->integer == 0) {
        const char *op = json_string_value(json_object_get(c->ctx, "op"));
        cmd_answer(c, op && strcmp(op, "rpc-response") == 0 ? SL_BR_REQUEST_NOT_FOUND
                                                            : SL_BR_NOT_FOUND, NULL);
    }
    /* Else the outcome comes back through our node channel. */
}

static void done_admin(cmd_t *c, redisReply *r)
{
    if (r == NULL || r->type != REDIS_REPLY_ARRAY) {
        cmd_answer(c, r ? SL_BR_BAD : SL_BR_UNAVAILABLE, NULL);
        return;
    }
    int64_t st = rint_(el(r, 0));
    json_t *d = NULL;
    if (c->what == C_ADMIN_CREATE && (st == 0 || st == SL_BR_EXISTS))
        d = json_pack("{s:I, s:o, s:I}", "created-at", (json_int_t)rint_(el(r, 1)), "config",
                      config_json(r, 2), "message-count", (json_int_t)rint_(el(r, 6)));
    else if (c->what == C_ADMIN_DELETE && st == 0)
        d = json_pack("{s:I}", "unsubscribed", (json_int_t)rint_(el(r, 1)));
    else if (c->what == C_ADMIN_INFO && st == 0) {
        char *hist = raw_array(el(r, 9));
        json_t *h = hist ? json_loads(hist, 0, NULL) : NULL;
        free(hist);
        d = json_pack("{s:s, s:I, s:I, s:o, s:I, s:o}", "epoch", rstr(el(r, 1)), "message-count",
                      (json_int_t)rint_(el(r, 2)), "created-at", (json_int_t)rint_(el(r, 3)),
                      "config", config_json(r, 4), "subscriber-count",
                      (json_int_t)rint_(el(r, 8)), "retained-messages", h ? h : json_array());
    }
    cmd_answer(c, (uint32_t)st, d);
    json_decref(d);
}

static void publish_snapshot(void);

static void done_snapshot(cmd_t *c, redisReply *r)
{
    if (r == NULL || r->type != REDIS_REPLY_STRING)
        return;
    json_t *j = json_loads(r->str, 0, NULL);
    if (json_is_array(j) && json_array_size(j) == 0) { /* cjson: {} encodes as [] */
        json_decref(j);
        j = json_object();
    }
    if (!json_is_object(j)) {
        json_decref(j);
        return;
    }
    json_decref(B.snap_chans[c->link->shard]);
    B.snap_chans[c->link->shard] = j;
    publish_snapshot();
}

static void done_heartbeat(cmd_t *c, redisReply *r)
{
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || c->link->shard != 0)
        return;
    json_t *a = json_array();
    for (size_t i = 0; i < r->elements; i++) {
        json_t *n = json_loads(rstr(r->element[i]), 0, NULL);
        if (n)
            json_array_append_new(a, n);
    }
    uatomic_set(&BSTATS->nodes, (uint32_t)json_array_size(a));
    json_decref(B.snap_nodes);
    B.snap_nodes = a;
}

static void link_up(link_t *l);

static void done_setup(cmd_t *c, redisReply *r)
{
    link_t *l = c->link;
    if (r == NULL)
        return;
    if (r->type == REDIS_REPLY_ERROR) {
        char why[96];
        snprintf(why, sizeof(why), "%s", r->str);
        link_fail(l, why); /* e.g. AUTH refused: try again later */
        return;
    }
    if (c->what == C_PING) {
        uatomic_set(&BSTATS->link[l->shard].latency_us,
                    (uint64_t)(sl_mono_us() - c->sent_us));
        if (l->state == L_CONNECTING) {
            l->ping_ok = true;
            if (l->sub_ok)
                link_up(l);
        }
    }
}

static void on_reply(redisAsyncContext *ac, void *reply, void *priv)
{
    cmd_t *c = priv;
    redisReply *r = reply;
    link_t *l = c->link;
    cmd_unlink(c);
    if (r && r->type == REDIS_REPLY_ERROR) {
        if (is_err(r, "NOSCRIPT") && !c->retried && c->script >= 0 && l->cmd) {
            /* Scripts flushed behind our back: load it again, then retry. */
            c->retried = true;
            redisAsyncCommand(l->cmd, NULL, NULL, "SCRIPT LOAD %s", scripts[c->script]);
            if (cmd_send(c) == SL_OK)
                return;
        }
        uatomic_add(&BSTATS->link[l->shard].errors, 1);
        if (c->what != C_SETUP && c->what != C_PING)
            SL_TEL(SL_EV_REDIS_DISCONNECTED, SL_WARN, SL_TF_I("shard", l->shard),
                   SL_TF_S("error-reply", r->str));
    }
    switch (c->what) {
    case C_PUBLISH:
    case C_ADMIN_PUBLISH: done_publish(c, r); break;
    case C_JOIN: done_join(c, r); break;
    case C_CATCHUP: done_catchup(c, r); break;
    case C_RPC: done_rpc(c, r); break;
    case C_RPC_FWD:
    case C_ADMIN_FWD: done_fwd(c, r); break;
    case C_ADMIN_CREATE:
    case C_ADMIN_DELETE:
    case C_ADMIN_INFO: done_admin(c, r); break;
    case C_SNAPSHOT: done_snapshot(c, r); break;
    case C_HEARTBEAT: done_heartbeat(c, r); break;
    case C_SETUP:
    case C_PING: done_setup(c, r); break;
    default: break;
    }
    if (r == NULL)
        cmd_answer(c, SL_BR_UNAVAILABLE, NULL);
    cmd_free(c);
    wake_flush();
}

/* ------------------------------------------------------------ delivery */

static void backlog_add(bchan_t *ch, bmsg_t *m)
{
    if (B.nbacklog >= BACKLOG_MAX) {
        uatomic_add(&BSTATS->dropped, 1);
        free(m);
        return;
    }
    m->next = NULL;
    if (ch->backlog_tail)
        ch->backlog_tail->next = m;
    else
        ch->backlog = m;
    ch->backlog_tail = m;
    B.nbacklog++;
    uatomic_set(&BSTATS->backlog, B.nbacklog);
    if (!ch->on_backlog) {
        ch->on_backlog = true;
        ch->bl_next = B.backlog;
        B.backlog = ch;
    }
}

/* Hand one message to the local workers; keep it when an inbox is full.
 * Takes m. */
static int deliver_now(bchan_t *ch, bmsg_t *m)
{
    sl_chan_t *lc = sl_chan_find(REG, ch->id, ch->idlen);
    if (lc == NULL) {
        free(m);
        return SL_OK; /* nobody here (any more) */
    }
    uint64_t woken = 0;
    int rc = sl_chan_deliver(REG, lc, m->epoch, m->seq, m->json, m->len,
                             m->origin ? m->exclude : 0, &woken);
    if (rc == SL_CHAN_OVERLOADED || rc == SL_CHAN_NO_MEMORY)
        return SL_AGAIN;
    if (rc == SL_OK) {
        B.wake |= woken;
        uatomic_add(&BSTATS->delivered, 1);
    }
    free(m);
    return SL_OK;
}

/* In order: behind whatever already waits for room. */
static void chan_deliver(bchan_t *ch, bmsg_t *m)
{
    if (ch->last && m->seq <= ch->last && strcmp(m->epoch, ch->epoch) == 0) {
        free(m); /* had it already (history and live overlap) */
        return;
    }
    snprintf(ch->epoch, sizeof(ch->epoch), "%s", m->epoch);
    ch->last = m->seq;
    if (ch->backlog || deliver_now(ch, m) == SL_AGAIN)
        backlog_add(ch, m);
}

static void backlog_retry(void)
{
    bchan_t **p = &B.backlog;
    while (*p) {
        bchan_t *ch = *p;
        while (ch->backlog) {
            bmsg_t *m = ch->backlog;
            bmsg_t *next = m->next;
            if (deliver_now(ch, m) == SL_AGAIN)
                break;
            ch->backlog = next;
            if (next == NULL)
                ch->backlog_tail = NULL;
            B.nbacklog--;
        }
        if (ch->backlog == NULL) {
            ch->on_backlog = false;
            *p = ch->bl_next;
        } else {
            p = &ch->bl_next;
        }
    }
    uatomic_set(&BSTATS->backlog, B.nbacklog);
}

/* "M<epoch>\n<seq>\n<origin>\n<exclude>\n<json>" on a channel's Redis channel. */
static void on_channel_message(bchan_t *ch, const char *p, size_t n)
{
    const char *end = p + n, *f[4];
    const char *q = p + 1;
    for (int i = 0; i < 4; i++) {
        f[i] = q;
        q = memchr(q, '\n', (size_t)(end - q));
        if (q == NULL)
            return;
        q++;
    }
    size_t elen = (size_t)(f[1] - f[0] - 1);
    if (elen >= sizeof(((bmsg_t *)0)->epoch))
        return;
    size_t jl = (size_t)(end - q);
    bmsg_t *m = malloc(sizeof(*m) + jl + 1);
    if (m == NULL)
        return;
    m->next = NULL;
    memcpy(m->epoch, f[0], elen);
    m->epoch[elen] = '\0';
    m->seq = strtoull(f[1], NULL, 10);
    m->origin = (size_t)(f[3] - f[2] - 1) == strlen(B.node) &&
                memcmp(f[2], B.node, strlen(B.node)) == 0;
    m->exclude = strtoull(f[3], NULL, 10);
    m->len = jl;
    memcpy(m->json, q, jl);
    m->json[jl] = '\0';
    if (ch->holding) {
        if (ch->nheld >= HOLD_MAX) {
            uatomic_add(&BSTATS->dropped, 1);
            free(m);
            return;
        }
        if (ch->held_tail)
            ch->held_tail->next = m;
        else
            ch->held = m;
        ch->held_tail = m;
        ch->nheld++;
        return;
    }
    bool same = ch->epoch[0] && strcmp(ch->epoch, m->epoch) == 0;
    if (ch->epoch[0] && !same) {
        /* The channel was re-created in Redis (restarted empty, or deleted
         * and created again): seqs started over. */
        sl_chan_t *lc = sl_chan_find(REG, ch->id, ch->idlen);
        uint64_t woken = 0;
        if (lc && sl_chan_reset(REG, lc, m->epoch, &woken) == SL_OK) {
            uatomic_add(&BSTATS->reset_channels, 1);
            B.wake |= woken;
        }
        ch->last = 0;
    } else if (same && ch->last && m->seq > ch->last + 1) {
        /* Missed some (the link was lost): fetch them first. */
        ch->held = ch->held_tail = m;
        ch->nheld = 1;
        start_catchup(ch);
        return;
    }
    chan_deliver(ch, m);
}

/* "R<origin>\n<exclude>\n<json>": an rpc-request for the channel's subscribers. */
static void on_rpc_request(bchan_t *ch, const char *p, size_t n)
{
    const char *end = p + n, *o = p + 1, *x, *j;
    x = memchr(o, '\n', (size_t)(end - o));
    if (x == NULL)
        return;
    x++;
    j = memchr(x, '\n', (size_t)(end - x));
    if (j == NULL)
        return;
    j++;
    bool origin = (size_t)(x - o - 1) == strlen(B.node) && memcmp(o, B.node, strlen(B.node)) == 0;
    uint64_t exclude = origin ? strtoull(x, NULL, 10) : 0;
    sl_chan_t *lc = sl_chan_find(REG, ch->id, ch->idlen);
    if (lc == NULL)
        return;
    uint8_t hdr[SL_WS_MAX_HEADER];
    size_t jl = (size_t)(end - j);
    size_t h = sl_ws_encode_header(hdr, SL_WS_OP_TEXT, true, jl, NULL);
    uint8_t *frame = malloc(h + jl);
    if (frame == NULL)
        return;
    memcpy(frame, hdr, h);
    memcpy(frame + h, j, jl);
    uint32_t recipients = 0;
    uint64_t woken = 0;
    if (sl_chan_send(REG, lc, frame, h + jl, NULL, exclude, NULL, NULL, &recipients, &woken) ==
        SL_OK)
        B.wake |= woken;
    free(frame);
}

/* ------------------------------------------------------------ node channel */

static void publish_to(const char *node, json_t *msg, cmd_t *c)
{
    char ch[160];
    snprintf(ch, sizeof(ch), "%s:to:%s", B.prefix, node);
    char *txt = json_dumps(msg, JSON_COMPACT);
    if (txt == NULL) {
        if (c) {
            cmd_answer(c, SL_BR_BAD, NULL);
            cmd_free(c);
        }
        return;
    }
    if (c == NULL)
        c = cmd_new(&B.link[0], C_SYNC, NULL); /* an outcome: nobody waits for the reply */
    if (c) {
        const char *argv[3] = {"PUBLISH", ch, txt};
        size_t lens[3] = {7, strlen(ch), strlen(txt)};
        cmd_issue(c, 3, argv, lens);
    }
    free(txt);
}

/* Another node's rpc-response for one of our requests: claim it here
 * (first response wins, as on one node) and answer the responder's node. */
static void node_rpc_response(json_t *m)
{
    const char *rid = json_string_value(json_object_get(m, "request-id"));
    const char *frame = json_string_value(json_object_get(m, "frame"));
    const char *reply_to = json_string_value(json_object_get(m, "reply-to"));
    uint32_t status = SL_BR_REQUEST_NOT_FOUND;
    sl_rpc_t *q = rid ? sl_rpc_find(REG, rid, strlen(rid)) : NULL;
    if (q && frame && sl_rpc_claim(q, SL_RPC_ANSWERED)) {
        size_t jl = strlen(frame);
        uint8_t hdr[SL_WS_MAX_HEADER];
        size_t h = sl_ws_encode_header(hdr, SL_WS_OP_TEXT, true, jl, NULL);
        uint8_t *f = malloc(h + jl);
        int rc = SL_CHAN_NO_MEMORY;
        if (f) {
            memcpy(f, hdr, h);
            memcpy(f + h, frame, jl);
            rc = sl_chan_send_direct(REG, q->worker, q->slot, q->conn_no, q->no, f, h + jl);
            free(f);
        }
        if (rc == SL_OK) {
            wake_worker(q->worker);
            sl_rpc_remove(REG, q);
            status = SL_BR_OK;
        } else {
            sl_rpc_unclaim(q);
            status = SL_BR_OVERLOADED;
        }
    }
    if (reply_to) {
        json_t *o = json_pack("{s:s, s:O, s:O, s:i}", "op", "outcome", "tag",
                              json_object_get(m, "tag"), "worker", json_object_get(m, "worker"),
                              "status", (int)status);
        publish_to(reply_to, o, NULL);
        json_decref(o);
    }
}

/* An admin call for one of our connections: send to it, or close it. */
static void node_conn_call(json_t *m, bool close_it)
{
    const char *cid = json_string_value(json_object_get(m, "conn-id"));
    const char *frame = json_string_value(json_object_get(m, "frame"));
    const char *reply_to = json_string_value(json_object_get(m, "reply-to"));
    uint32_t status = SL_BR_NOT_FOUND;
    sl_reg_conn_t *rc = cid ? sl_reg_conn_find(REG, cid, strlen(cid)) : NULL;
    if (rc) {
        int r = SL_CHAN_NO_MEMORY;
        if (close_it) {
            r = sl_chan_send_kind(REG, SL_INBOX_CLOSE, rc->worker, rc->slot, rc->conn_no, NULL, 0);
        } else if (frame) {
            size_t jl = strlen(frame);
            uint8_t hdr[SL_WS_MAX_HEADER];
            size_t h = sl_ws_encode_header(hdr, SL_WS_OP_TEXT, true, jl, NULL);
            uint8_t *f = malloc(h + jl);
            if (f) {
                memcpy(f, hdr, h);
                memcpy(f + h, frame, jl);
                r = sl_chan_send_kind(REG, SL_INBOX_DIRECT, rc->worker, rc->slot, rc->conn_no, f,
                                      h + jl);
                free(f);
            }
        }
        status = r == SL_OK ? SL_BR_OK : SL_BR_OVERLOADED;
        if (r == SL_OK)
            wake_worker(rc->worker);
    }
    if (reply_to) {
        json_t *o = json_pack("{s:s, s:O, s:O, s:i}", "op", "outcome", "tag",
                              json_object_get(m, "tag"), "worker", json_object_get(m, "worker"),
                              "status", (int)status);
        publish_to(reply_to, o, NULL);
        json_decref(o);
    }
}

static void on_node_message(const char *p, size_t n)
{
    json_t *m = json_loadb(p, n, 0, NULL);
    const char *op = json_string_value(json_object_get(m, "op"));
    if (op == NULL) {
        json_decref(m);
        return;
    }
    if (strcmp(op, "rpc-response") == 0) {
        node_rpc_response(m);
    } else if (strcmp(op, "send") == 0 || strcmp(op, "close") == 0) {
        node_conn_call(m, op[0] == 'c');
    } else if (strcmp(op, "outcome") == 0) {
        json_int_t tag = json_integer_value(json_object_get(m, "tag"));
        int worker = (int)json_integer_value(json_object_get(m, "worker"));
        int status = (int)json_integer_value(json_object_get(m, "status"));
        answer(worker, (uint64_t)tag, (uint32_t)status, NULL);
    }
    json_decref(m);
}

/* "D<id>": a channel was deleted (on any node); "B<json>": a broadcast. */
static void on_control(const char *p, size_t n)
{
    if (n < 1)
        return;
    if (p[0] == 'D') {
        const char *id = p + 1;
        size_t len = n - 1;
        json_t *notice = json_pack("{s:s, s:s%}", "type", "channel-deleted", "channel-id", id, len);
        char *txt = notice ? json_dumps(notice, JSON_COMPACT) : NULL;
        json_decref(notice);
        if (txt) {
            size_t jl = strlen(txt);
            uint8_t hdr[SL_WS_MAX_HEADER];
            size_t h = sl_ws_encode_header(hdr, SL_WS_OP_TEXT, true, jl, NULL);
            uint8_t *f = malloc(h + jl);
            if (f) {
                memcpy(f, hdr, h);
                memcpy(f + h, txt, jl);
                uint32_t un = 0;
                uint64_t woken = 0;
                if (sl_chan_delete(REG, id, len, f, h + jl, &un, &woken) == SL_OK)
                    B.wake |= woken;
                free(f);
            }
            free(txt);
        }
        bchan_t *ch = chan_find(id, len);
        if (ch) {
            ch->epoch[0] = '\0';
            ch->last = 0;
        }
        reconcile();
    } else if (p[0] == 'B') {
        size_t jl = n - 1;
        uint8_t hdr[SL_WS_MAX_HEADER];
        size_t h = sl_ws_encode_header(hdr, SL_WS_OP_TEXT, true, jl, NULL);
        uint8_t *f = malloc(h + jl);
        if (f == NULL)
            return;
        memcpy(f, hdr, h);
        memcpy(f + h, p + 1, jl);
        uint64_t workers = 0;
        for (uint32_t w = 0; w < sl_shm->nworkers; w++)
            if (uatomic_read(&sl_shm->workers[w].connections) &&
                uatomic_read(&sl_shm->workers[w].pid) > 0)
                workers |= (uint64_t)1 << w;
        if (sl_chan_broadcast(REG, workers, f, h + jl) == SL_OK)
            B.wake |= workers;
        free(f);
    }
}

/* ------------------------------------------------------------ pub/sub */

static void subscribe_chan(bchan_t *ch);
static void link_up(link_t *l);

static void on_sub(redisAsyncContext *ac, void *reply, void *priv)
{
    redisReply *r = reply;
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements < 3)
        return;
    const char *kind = rstr(r->element[0]);
    redisReply *name = r->element[1], *data = r->element[2];
    if (name->type != REDIS_REPLY_STRING)
        return;
    size_t pl = strlen(B.prefix);
    bool chan = name->len > pl + 5 && memcmp(name->str, B.prefix, pl) == 0 &&
                name->str[pl] == ':' && name->str[pl + 1] == '{' &&
                memcmp(name->str + name->len - 3, "}:m", 3) == 0;
    if (strcmp(kind, "message") == 0) {
        if (data->type != REDIS_REPLY_STRING || data->len == 0)
            return;
        if (chan) {
            bchan_t *ch = chan_find(name->str + pl + 2, name->len - pl - 5);
            if (ch && ch->sub == SUB_ON) {
                if (data->str[0] == 'M')
                    on_channel_message(ch, data->str, data->len);
                else if (data->str[0] == 'R')
                    on_rpc_request(ch, data->str, data->len);
            }
        } else if (name->len >= pl + 4 && memcmp(name->str + pl, ":ctl", 4) == 0 &&
                   name->len == pl + 4) {
            on_control(data->str, data->len);
        } else {
            on_node_message(data->str, data->len);
        }
        wake_flush();
        return;
    }
    if (!chan) {
        /* The node's own channels: the pub/sub connection is ready. */
        if (strcmp(kind, "subscribe") == 0)
            for (uint32_t i = 0; i < B.nlinks; i++) {
                link_t *l = &B.link[i];
                if (l->sub == ac && l->state == L_CONNECTING) {
                    l->sub_ok = true;
                    if (l->ping_ok)
                        link_up(l);
                }
            }
        return;
    }
    bchan_t *ch = chan_find(name->str + pl + 2, name->len - pl - 5);
    if (ch == NULL)
        return;
    if (strcmp(kind, "subscribe") == 0) {
        ch->sub = SUB_ON;
        uatomic_add(&BSTATS->link[ch->shard].subscribed, 1);
        /* Joins that waited for the subscription run now: from here on
         * every message published after their script reaches us. */
        cmd_t *j = ch->joins;
        ch->joins = NULL;
        while (j) {
            cmd_t *next = j->next;
            j->next = NULL;
            if (cmd_send(j) != SL_OK) {
                cmd_answer(j, SL_BR_UNAVAILABLE, NULL);
                cmd_free(j);
            }
            j = next;
        }
        if (ch->last && !ch->holding)
            start_catchup(ch); /* subscribed again after a lost link */
        if (!ch->want)
            subscribe_chan(ch); /* unwanted meanwhile: unsubscribe */
    } else if (strcmp(kind, "unsubscribe") == 0) {
        if (ch->sub == SUB_ON || ch->sub == SUB_OFF_PENDING)
            uatomic_add(&BSTATS->link[ch->shard].subscribed, -1);
        ch->sub = SUB_NONE;
        /* Messages after this are not ours: forget where we were. */
        ch->last = 0;
        ch->epoch[0] = '\0';
        if (ch->want)
            subscribe_chan(ch);
        else
            chan_maybe_free(ch);
    }
    wake_flush();
}

/* Make the Redis subscription follow ch->want. */
static void subscribe_chan(bchan_t *ch)
{
    link_t *l = &B.link[ch->shard];
    if (l->state != L_UP || l->sub == NULL)
        return;
    char name[SL_CHAN_ID_MAX + 80];
    int n = key(name, sizeof(name), ch->id, ch->idlen, "m");
    if (ch->want && ch->sub == SUB_NONE) {
        ch->sub = SUB_PENDING;
        redisAsyncCommand(l->sub, on_sub, NULL, "SUBSCRIBE %b", name, (size_t)n);
    } else if (!ch->want && ch->sub == SUB_ON) {
        ch->sub = SUB_OFF_PENDING;
        redisAsyncCommand(l->sub, on_sub, NULL, "UNSUBSCRIBE %b", name, (size_t)n);
    }
}

/* ------------------------------------------------------------ catch-up */

static sl_chan_config_t local_config(const char *id, size_t len)
{
    sl_chan_t *lc = sl_chan_find(REG, id, len);
    if (lc)
        return lc->config;
    return (sl_chan_config_t){.max_subscribers = sl_conf->max_subscribers,
                              .message_retention = sl_conf->message_retention,
                              .rpc_timeout_ms = sl_conf->rpc_timeout_ms,
                              .telemetry_enabled = true};
}

static void start_catchup(bchan_t *ch)
{
    link_t *l = &B.link[ch->shard];
    cmd_t *c = cmd_new(l, C_CATCHUP, NULL);
    if (c == NULL)
        return;
    cmd_chan(c, ch);
    ch->holding = true;
    sl_chan_config_t cfg = local_config(ch->id, ch->idlen);
    char ep[16];
    new_epoch(ep);
    args_t a = {.n = 0};
    argk(&a, ch->id, ch->idlen, "c");
    argk(&a, ch->id, ch->idlen, "h");
    char chans[96];
    snprintf(chans, sizeof(chans), "%s:channels", B.prefix);
    args(&a, chans);
    argi(&a, (int64_t)ch->last);
    args(&a, ch->epoch);
    args(&a, ep);
    argi(&a, sl_now_ms());
    argi(&a, cfg.max_subscribers);
    argi(&a, cfg.message_retention);
    argi(&a, cfg.rpc_timeout_ms);
    argi(&a, cfg.telemetry_enabled);
    arg(&a, ch->id, ch->idlen);
    if (cmd_script(c, S_CATCHUP, 3, a.n, a.v, a.l) != SL_OK) {
        ch->holding = false;
        free_msgs(ch->held);
        ch->held = ch->held_tail = NULL;
        ch->nheld = 0;
    }
    args_free(&a, 0, 2);
}

/* ------------------------------------------------------------ reconcile */

static void sync_count(bchan_t *ch, int64_t count)
{
    link_t *l = &B.link[ch->shard];
    if (l->state != L_UP)
        return;
    cmd_t *c = cmd_new(l, C_SYNC, NULL);
    if (c == NULL)
        return;
    args_t a = {.n = 0};
    argk(&a, ch->id, ch->idlen, "n");
    char nc[160];
    snprintf(nc, sizeof(nc), "%s:nodech:%s", B.prefix, B.node);
    args(&a, nc);
    args(&a, B.node);
    argi(&a, count);
    arg(&a, ch->id, ch->idlen);
    if (cmd_script(c, S_SYNC, 2, a.n, a.v, a.l) == SL_OK)
        ch->synced = count;
    args_free(&a, 0, 1);
}

static int reconcile_cb(sl_table_node_t *n, void *arg)
{
    sl_chan_t *lc = (sl_chan_t *)n;
    uint32_t subs = uatomic_read(&lc->subscribers);
    bchan_t *ch = subs ? chan_get(lc->id, lc->node.klen) : chan_find(lc->id, lc->node.klen);
    if (ch == NULL)
        return 0;
    ch->want = ch->want || subs > 0; /* marked; cleared below for the rest */
    if (ch->last == 0 && ch->epoch[0] == '\0' && ch->sub == SUB_NONE) {
        /* A new broker (the last one died): where this node's delivery
         * stopped is in the registry, so what was published meanwhile is
         * fetched from the history once subscribed (catch-up). */
        uint64_t last = sl_chan_last_seq(lc);
        if (last > 0) {
            ch->last = last;
            snprintf(ch->epoch, sizeof(ch->epoch), "%.*s", (int)sizeof(lc->epoch) - 1, lc->epoch);
        }
    }
    return 0;
}

/* Bring Redis in line with this node's registry: subscriptions for the
 * channels with local subscribers, and this node's counts. */
static void reconcile(void)
{
    for (uint32_t b = 0; b < BUCKETS; b++)
        for (bchan_t *c = B.map[b]; c; c = c->next)
            c->want = false;
    sl_table_foreach(REG->channels, reconcile_cb, NULL);
    for (uint32_t b = 0; b < BUCKETS; b++) {
        for (bchan_t *c = B.map[b], *next; c; c = next) {
            next = c->next;
            sl_chan_t *lc = sl_chan_find(REG, c->id, c->idlen);
            int64_t count = lc ? (int64_t)uatomic_read(&lc->subscribers) : 0;
            if (count != c->synced)
                sync_count(c, count);
            subscribe_chan(c);
            chan_maybe_free(c);
        }
    }
}

/* ------------------------------------------------------------ requests */

static void req_publish(const sl_inbox_entry_t *e, bool admin)
{
    const uint8_t *p = e->msg->frame;
    size_t n = e->msg->len, off = 0;
    uint32_t l[3];
    const char *s[3];
    for (int i = 0; i < 3; i++) {
        if (off + 4 > n)
            return answer(e->from, e->tag, SL_BR_BAD, NULL);
        memcpy(&l[i], p + off, 4);
        off += 4;
        if (off + l[i] > n)
            return answer(e->from, e->tag, SL_BR_BAD, NULL);
        s[i] = (const char *)p + off;
        off += l[i];
    }
    link_t *lk = link_of(s[0], l[0]);
    if (lk->state != L_UP)
        return answer(e->from, e->tag, SL_BR_UNAVAILABLE, NULL);
    if (B.nbacklog > BACKLOG_PUSHBACK) {
        /* Our workers cannot take what Redis sends as fast as it comes:
         * push back on this node's publishers (as a full inbox does on one
         * node) rather than let the backlog, and the latency, grow. */
        uatomic_add(&BSTATS->pushback, 1);
        return answer(e->from, e->tag, SL_BR_OVERLOADED, NULL);
    }
    cmd_t *c = cmd_new(lk, admin ? C_ADMIN_PUBLISH : C_PUBLISH, e);
    if (c == NULL)
        return answer(e->from, e->tag, SL_BR_OVERLOADED, NULL);
    char ep[16];
    new_epoch(ep);
    args_t a = {.n = 0};
    argk(&a, s[0], l[0], "c");
    argk(&a, s[0], l[0], "h");
    argk(&a, s[0], l[0], "n");
    argk(&a, s[0], l[0], "m");
    arg(&a, s[1], l[1]);
    arg(&a, s[2], l[2]);
    argi(&a, sl_conf->redis_history_ttl_s);
    argi(&a, (e->status & SL_BRQ_F_SENDER_SUB) ? 1 : 0); /* the excluded sender subscribes */
    args(&a, node_prefix());
    args(&a, ep);
    args(&a, B.node);
    argi(&a, (e->status & SL_BRQ_F_EXCLUDE) ? (int64_t)e->target_conn : 0);
    cmd_script(c, S_PUBLISH, 4, a.n, a.v, a.l);
    args_free(&a, 0, 4);
}

static const char *jstr(json_t *o, const char *k, size_t *len)
{
    json_t *v = json_object_get(o, k);
    if (len)
        *len = json_string_length(v);
    return json_string_value(v);
}

static int64_t jint(json_t *o, const char *k)
{
    return json_integer_value(json_object_get(o, k));
}

static void req_join(const sl_inbox_entry_t *e, json_t *j)
{
    size_t len;
    const char *id = jstr(j, "channel-id", &len);
    if (id == NULL)
        return answer(e->from, e->tag, SL_BR_BAD, NULL);
    link_t *lk = link_of(id, len);
    if (lk->state != L_UP)
        return answer(e->from, e->tag, SL_BR_UNAVAILABLE, NULL);
    bchan_t *ch = chan_get(id, len);
    cmd_t *c = ch ? cmd_new(lk, C_JOIN, e) : NULL;
    if (c == NULL)
        return answer(e->from, e->tag, SL_BR_OVERLOADED, NULL);
    cmd_chan(c, ch);
    ch->want = true;
    sl_chan_t *lc = sl_chan_find(REG, id, len);
    int64_t count = lc ? (int64_t)uatomic_read(&lc->subscribers) : 1;
    if (count < 1)
        count = 1;
    char ep[16];
    new_epoch(ep);
    args_t a = {.n = 0};
    argk(&a, id, len, "c");
    argk(&a, id, len, "h");
    argk(&a, id, len, "n");
    char chans[96], nc[160];
    snprintf(chans, sizeof(chans), "%s:channels", B.prefix);
    snprintf(nc, sizeof(nc), "%s:nodech:%s", B.prefix, B.node);
    args(&a, chans);
    args(&a, nc);
    args(&a, B.node);
    argi(&a, count);
    argi(&a, json_is_true(json_object_get(j, "auto-create")) ? 1 : 0);
    argi(&a, jint(j, "max-subscribers"));
    argi(&a, jint(j, "message-retention"));
    argi(&a, jint(j, "rpc-timeout-ms"));
    argi(&a, 1);
    args(&a, ep);
    argi(&a, sl_now_ms());
    argi(&a, json_object_get(j, "since-seq") ? jint(j, "since-seq") : -1);
    const char *cep = jstr(j, "epoch", NULL);
    args(&a, cep ? cep : "");
    argi(&a, jint(j, "from"));
    argi(&a, jint(j, "ring-oldest"));
    const char *rep = jstr(j, "ring-epoch", NULL);
    args(&a, rep ? rep : "");
    args(&a, node_prefix());
    arg(&a, id, len);
    /* Format now; send once the channel's subscription is confirmed, so no
     * message published after the script can be missed. */
    char *buf = NULL;
    const char *argv[40];
    size_t alen[40];
    char nk[] = "5";
    int k = 0;
    argv[k] = "EVALSHA";
    alen[k++] = 7;
    argv[k] = script_sha[S_JOIN];
    alen[k++] = 40;
    argv[k] = nk;
    alen[k++] = 1;
    for (int i = 0; i < a.n; i++, k++) {
        argv[k] = a.v[i];
        alen[k] = a.l[i];
    }
    int n = redisFormatCommandArgv(&buf, k, argv, alen);
    args_free(&a, 0, 3);
    if (n < 0) {
        cmd_answer(c, SL_BR_BAD, NULL);
        cmd_free(c);
        return;
    }
    c->buf = buf;
    c->len = n;
    c->script = S_JOIN;
    if (ch->sub == SUB_ON) {
        if (cmd_send(c) != SL_OK) {
            cmd_answer(c, SL_BR_UNAVAILABLE, NULL);
            cmd_free(c);
        }
        return;
    }
    c->next = ch->joins;
    ch->joins = c;
    subscribe_chan(ch);
}

static void req_rpc(const sl_inbox_entry_t *e, json_t *j)
{
    size_t len;
    const char *id = jstr(j, "channel-id", &len);
    const char *frame = jstr(j, "frame", NULL);
    if (id == NULL || frame == NULL)
        return answer(e->from, e->tag, SL_BR_BAD, NULL);
    link_t *lk = link_of(id, len);
    if (lk->state != L_UP)
        return answer(e->from, e->tag, SL_BR_UNAVAILABLE, NULL);
    cmd_t *c = cmd_new(lk, C_RPC, e);
    if (c == NULL)
        return answer(e->from, e->tag, SL_BR_OVERLOADED, NULL);
    size_t fl = strlen(frame);
    char *payload = malloc(fl + 64 + strlen(B.node));
    if (payload == NULL) {
        cmd_free(c);
        return answer(e->from, e->tag, SL_BR_OVERLOADED, NULL);
    }
    int pl = sprintf(payload, "R%s\n%" PRIu64 "\n", B.node, e->target_conn);
    memcpy(payload + pl, frame, fl);
    args_t a = {.n = 0};
    argk(&a, id, len, "c");
    argk(&a, id, len, "n");
    argk(&a, id, len, "m");
    arg(&a, payload, (size_t)pl + fl);
    argi(&a, json_is_true(json_object_get(j, "subscribed")) ? 1 : 0);
    args(&a, node_prefix());
    cmd_script(c, S_RPC, 3, a.n, a.v, a.l);
    args_free(&a, 0, 3);
    free(payload);
}

/* rpc-response for another node, or an admin send/close for a connection
 * on another node: forwarded on that node's channel; the outcome comes
 * back on ours. */
static void req_forward(const sl_inbox_entry_t *e, json_t *j, int what)
{
    const char *node = jstr(j, "node", NULL);
    if (node == NULL)
        return answer(e->from, e->tag, SL_BR_BAD, NULL);
    if (B.link[0].state != L_UP)
        return answer(e->from, e->tag, SL_BR_UNAVAILABLE, NULL);
    cmd_t *c = cmd_new(&B.link[0], what, e);
    if (c == NULL)
        return answer(e->from, e->tag, SL_BR_OVERLOADED, NULL);
    json_object_set_new(j, "reply-to", json_string(B.node));
    json_object_set_new(j, "tag", json_integer((json_int_t)e->tag));
    json_object_set_new(j, "worker", json_integer(e->from));
    c->ctx = json_incref(j);
    publish_to(node, j, c);
}

static void req_admin(const sl_inbox_entry_t *e, json_t *j)
{
    const char *op = jstr(j, "op", NULL);
    size_t len = 0;
    const char *id = jstr(j, "channel-id", &len);
    if (op == NULL)
        return answer(e->from, e->tag, SL_BR_BAD, NULL);
    if (strcmp(op, "send") == 0 || strcmp(op, "close") == 0)
        return req_forward(e, j, C_ADMIN_FWD);
    if (strcmp(op, "broadcast") == 0) {
        const char *frame = jstr(j, "frame", NULL);
        if (frame == NULL || B.link[0].state != L_UP)
            return answer(e->from, e->tag, frame ? SL_BR_UNAVAILABLE : SL_BR_BAD, NULL);
        cmd_t *c = cmd_new(&B.link[0], C_ADMIN_FWD, e);
        if (c == NULL)
            return answer(e->from, e->tag, SL_BR_OVERLOADED, NULL);
        char ch[96];
        snprintf(ch, sizeof(ch), "%s:ctl", B.prefix);
        size_t fl = strlen(frame);
        char *p = malloc(fl + 2);
        if (p == NULL) {
            cmd_free(c);
            return answer(e->from, e->tag, SL_BR_OVERLOADED, NULL);
        }
        p[0] = 'B';
        memcpy(p + 1, frame, fl + 1);
        const char *argv[3] = {"PUBLISH", ch, p};
        size_t lens[3] = {7, strlen(ch), fl + 1};
        c->ctx = json_pack("{s:s}", "op", "broadcast");
        /* Every node's broker (ours too) hands it to its workers; the
         * answer is immediate: nobody reports back. */
        c->what = C_SYNC;
        if (cmd_issue(c, 3, argv, lens) == SL_OK)
            cmd_answer(c, SL_BR_OK, NULL);
        free(p);
        return;
    }
    if (id == NULL)
        return answer(e->from, e->tag, SL_BR_BAD, NULL);
    link_t *lk = link_of(id, len);
    if (lk->state != L_UP)
        return answer(e->from, e->tag, SL_BR_UNAVAILABLE, NULL);
    char chans[96];
    snprintf(chans, sizeof(chans), "%s:channels", B.prefix);
    args_t a = {.n = 0};
    cmd_t *c;
    if (strcmp(op, "create") == 0) {
        c = cmd_new(lk, C_ADMIN_CREATE, e);
        if (c == NULL)
            return answer(e->from, e->tag, SL_BR_OVERLOADED, NULL);
        char ep[16];
        new_epoch(ep);
        argk(&a, id, len, "c");
        args(&a, chans);
        arg(&a, id, len);
        args(&a, ep);
        argi(&a, sl_now_ms());
        argi(&a, jint(j, "max-subscribers"));
        argi(&a, jint(j, "message-retention"));
        argi(&a, jint(j, "rpc-timeout-ms"));
        argi(&a, jint(j, "telemetry-enabled"));
        cmd_script(c, S_CREATE, 2, a.n, a.v, a.l);
        args_free(&a, 0, 1);
    } else if (strcmp(op, "delete") == 0) {
        c = cmd_new(lk, C_ADMIN_DELETE, e);
        if (c == NULL)
            return answer(e->from, e->tag, SL_BR_OVERLOADED, NULL);
        char ctl[96];
        snprintf(ctl, sizeof(ctl), "%s:ctl", B.prefix);
        argk(&a, id, len, "c");
        argk(&a, id, len, "h");
        argk(&a, id, len, "n");
        args(&a, chans);
        args(&a, ctl);
        arg(&a, id, len);
        args(&a, node_prefix());
        /* The control message goes out on shard 0 (every node listens
         * there), the keys live on the channel's shard: with one shard this
         * is one script; with several the delete notice is published by
         * the script on the channel's instance, which every broker also
         * subscribes to (see link_up). */
        cmd_script(c, S_DELETE, 5, a.n, a.v, a.l);
        args_free(&a, 0, 3);
    } else if (strcmp(op, "info") == 0) {
        c = cmd_new(lk, C_ADMIN_INFO, e);
        if (c == NULL)
            return answer(e->from, e->tag, SL_BR_OVERLOADED, NULL);
        argk(&a, id, len, "c");
        argk(&a, id, len, "h");
        argk(&a, id, len, "n");
        args(&a, node_prefix());
        cmd_script(c, S_INFO, 3, a.n, a.v, a.l);
        args_free(&a, 0, 3);
    } else {
        answer(e->from, e->tag, SL_BR_BAD, NULL);
    }
}

/* A channel's local count changed (a leave): bring Redis in line. */
static void req_sync(json_t *j)
{
    size_t len;
    const char *id = jstr(j, "channel-id", &len);
    if (id == NULL)
        return;
    sl_chan_t *lc = sl_chan_find(REG, id, len);
    int64_t count = lc ? (int64_t)uatomic_read(&lc->subscribers) : 0;
    bchan_t *ch = count ? chan_get(id, len) : chan_find(id, len);
    if (ch == NULL)
        return;
    ch->want = count > 0;
    if (count != ch->synced)
        sync_count(ch, count);
    subscribe_chan(ch);
    chan_maybe_free(ch);
}

static void handle(const sl_inbox_entry_t *e)
{
    uatomic_add(&BSTATS->requests, 1);
    if ((e->deadline && sl_mono_ms() > e->deadline) ||
        (e->status >> 16) != (uatomic_read(&BSTATS->gen) & 0xffff)) {
        /* The worker has told its client "broker-unavailable" already:
         * doing it now would make that a lie. */
        uatomic_add(&BSTATS->expired, 1);
        return;
    }
    if (e->kind == SL_BRQ_PUBLISH) {
        req_publish(e, e->status & SL_BRQ_F_ADMIN);
        return;
    }
    if (e->msg == NULL)
        return;
    json_t *j = json_loadb((const char *)e->msg->frame, e->msg->len, 0, NULL);
    if (j == NULL) {
        answer(e->from, e->tag, SL_BR_BAD, NULL);
        return;
    }
    switch (e->kind) {
    case SL_BRQ_JOIN: req_join(e, j); break;
    case SL_BRQ_SYNC: req_sync(j); break;
    case SL_BRQ_RPC: req_rpc(e, j); break;
    case SL_BRQ_RPC_RESPONSE: req_forward(e, j, C_RPC_FWD); break;
    case SL_BRQ_ADMIN: req_admin(e, j); break;
    default: answer(e->from, e->tag, SL_BR_BAD, NULL); break;
    }
    json_decref(j);
}

/* Bounded per turn so that Redis replies and pub/sub get their turn. */
static void drain_queue(void)
{
    sl_inbox_t *q = BSTATS->queue;
    sl_inbox_entry_t e;
    for (int n = 0; n < 4096 && sl_inbox_pop(q, &e); n++) {
        /* Its payload is freed right after use: killed at any point, we
         * leak at most this one object. */
        handle(&e);
        sl_chan_msg_unref(REG, e.msg);
    }
    wake_flush();
}

static void wake_cb(evutil_socket_t fd, short what, void *arg)
{
    uint64_t n;
    if (read(fd, &n, sizeof(n)) < 0) {
    }
    drain_queue();
}

/* ------------------------------------------------------------ links */

static void link_retry_cb(evutil_socket_t fd, short what, void *arg)
{
    link_connect(arg);
}

static void link_schedule(link_t *l)
{
    /* Exponential back-off with jitter: the nodes of a cluster do not all
     * come back at the same instant. */
    l->backoff_ms = l->backoff_ms ? SL_MIN(l->backoff_ms * 2, BACKOFF_MAX_MS) : BACKOFF_MIN_MS;
    uint32_t rnd = 0;
    if (getrandom(&rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd))
        rnd = (uint32_t)sl_mono_us();
    int64_t ms = l->backoff_ms / 2 + (int64_t)(rnd % (uint32_t)(l->backoff_ms / 2 + 1));
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    if (!B.stopping)
        event_add(l->retry_ev, &tv);
}

static void link_fail(link_t *l, const char *why)
{
    if (l->state == L_DOWN)
        return;
    bool was_up = l->state == L_UP;
    l->state = L_DOWN;
    set_reason(l, why);
    sl_broker_link_t *s = &BSTATS->link[l->shard];
    uatomic_set(&s->connected, 0);
    uatomic_set(&s->down_since_ms, sl_now_ms());
    uatomic_set(&s->subscribed, 0);
    uatomic_add(&s->errors, 1);
    SL_TEL(SL_EV_REDIS_DISCONNECTED, was_up ? SL_ERROR_LEVEL : SL_WARN, SL_TF_I("shard", l->shard),
           SL_TF_S("reason", why));
    /* Freeing calls every pending callback with a NULL reply: each request
     * in flight is answered broker-unavailable. */
    redisAsyncContext *c = l->cmd, *s2 = l->sub;
    l->cmd = l->sub = NULL;
    l->ping_ok = l->sub_ok = false;
    if (c)
        redisAsyncFree(c);
    if (s2)
        redisAsyncFree(s2);
    /* Channel subscriptions of this link are gone: joins that waited for
     * one are answered, the rest is redone when the link is back. */
    for (uint32_t b = 0; b < BUCKETS; b++)
        for (bchan_t *ch = B.map[b]; ch; ch = ch->next) {
            if ((int)ch->shard != l->shard)
                continue;
            ch->sub = SUB_NONE;
            cmd_t *j = ch->joins;
            ch->joins = NULL;
            while (j) {
                cmd_t *next = j->next;
                cmd_answer(j, SL_BR_UNAVAILABLE, NULL);
                cmd_free(j);
                j = next;
            }
            if (ch->holding) {
                ch->holding = false;
                free_msgs(ch->held);
                ch->held = ch->held_tail = NULL;
                ch->nheld = 0;
            }
        }
    wake_flush();
    link_schedule(l);
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    for (uint32_t i = 0; i < B.nlinks; i++) {
        link_t *l = &B.link[i];
        if (l->cmd == ac || l->sub == ac) {
            /* hiredis frees ac after this callback. */
            if (l->cmd == ac)
                l->cmd = NULL;
            else
                l->sub = NULL;
            link_fail(l, ac->errstr[0] ? ac->errstr : "connection closed");
            return;
        }
    }
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    for (uint32_t i = 0; i < B.nlinks; i++) {
        link_t *l = &B.link[i];
        if (l->cmd != ac && l->sub != ac)
            continue;
        if (status != REDIS_OK) {
            if (l->cmd == ac)
                l->cmd = NULL;
            else
                l->sub = NULL;
            link_fail(l, ac->errstr[0] ? ac->errstr : "connect failed");
            return;
        }
        return;
    }
}

static redisAsyncContext *open_conn(const sl_conf_redis_t *r)
{
    redisAsyncContext *ac = r->path[0] ? redisAsyncConnectUnix(r->path)
                                       : redisAsyncConnect(r->host, r->port);
    if (ac == NULL)
        return NULL;
    if (ac->err) {
        redisAsyncFree(ac);
        return NULL;
    }
    redisLibeventAttach(ac, B.base);
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    return ac;
}

static void link_connect(link_t *l)
{
    if (l->state != L_DOWN || B.stopping)
        return;
    l->state = L_CONNECTING;
    l->cmd = open_conn(&sl_conf->redis[l->shard]);
    l->sub = l->cmd ? open_conn(&sl_conf->redis[l->shard]) : NULL;
    if (l->cmd == NULL || l->sub == NULL) {
        link_fail(l, "cannot create a connection");
        return;
    }
    const sl_conf_redis_t *r = &sl_conf->redis[l->shard];
    /* AUTH on the command connection goes through the in-flight list, so
     * it is bounded by the timeout like everything else. */
    if (r->password[0]) {
        cmd_t *c = cmd_new(l, C_SETUP, NULL);
        const char *argv[3] = {"AUTH", r->user[0] ? r->user : r->password, r->password};
        size_t lens[3] = {4, strlen(argv[1]), strlen(r->password)};
        cmd_issue(c, r->user[0] ? 3 : 2, argv, lens);
        if (l->state == L_DOWN)
            return;
        if (r->user[0])
            redisAsyncCommand(l->sub, NULL, NULL, "AUTH %s %s", r->user, r->password);
        else
            redisAsyncCommand(l->sub, NULL, NULL, "AUTH %s", r->password);
    }
    if (r->db) {
        cmd_t *c = cmd_new(l, C_SETUP, NULL);
        char db[16];
        snprintf(db, sizeof(db), "%d", r->db);
        const char *argv[2] = {"SELECT", db};
        size_t lens[2] = {6, strlen(db)};
        if (cmd_issue(c, 2, argv, lens) != SL_OK)
            return;
    }
    for (int s = 0; s < S__COUNT; s++) {
        cmd_t *c = cmd_new(l, C_SETUP, NULL);
        const char *argv[3] = {"SCRIPT", "LOAD", scripts[s]};
        size_t lens[3] = {6, 4, strlen(scripts[s])};
        if (cmd_issue(c, 3, argv, lens) != SL_OK)
            return;
    }
    /* The node's channels: on every shard's pub/sub (a delete is published
     * on the channel's shard, node messages on shard 0). */
    l->ping_ok = l->sub_ok = false;
    redisAsyncCommand(l->sub, on_sub, NULL, "SUBSCRIBE %s:ctl %s:to:%s", B.prefix, B.prefix,
                      B.node);
    /* The first PING reply after the subscription is sent says both are
     * usable (the pub/sub connection answers in order too: its subscribe
     * confirmation precedes anything we could miss). */
    cmd_t *p = cmd_new(l, C_PING, NULL);
    const char *argv[1] = {"PING"};
    size_t lens[1] = {4};
    cmd_issue(p, 1, argv, lens);
}

static void beat_link(link_t *l);

static void link_up(link_t *l)
{
    l->state = L_UP;
    l->backoff_ms = 0;
    sl_broker_link_t *s = &BSTATS->link[l->shard];
    if (l->ever_up)
        uatomic_add(&s->reconnects, 1);
    l->ever_up = true;
    uatomic_set(&s->connected, 1);
    uatomic_set(&s->down_since_ms, 0);
    s->down_reason[0] = '\0';
    SL_TEL(SL_EV_REDIS_CONNECTED, SL_INFO, SL_TF_I("shard", l->shard),
           SL_TF_S("url", sl_conf->redis[l->shard].url));
    beat_link(l); /* counted by the others from now on */
    /* Redis may have lost everything (restarted without persistence):
     * counts are re-asserted, channels re-subscribed (and caught up). */
    for (uint32_t b = 0; b < BUCKETS; b++)
        for (bchan_t *ch = B.map[b]; ch; ch = ch->next)
            if ((int)ch->shard == l->shard)
                ch->synced = -1;
    /* --channel channels exist on every node: each node re-creates them if
     * Redis lost them. */
    for (int i = 0; i < sl_conf->nchannels; i++) {
        const sl_conf_channel_t *cc = &sl_conf->channels[i];
        size_t len = strlen(cc->name);
        if (link_of(cc->name, len) != l)
            continue;
        cmd_t *c = cmd_new(l, C_ENSURE, NULL);
        if (c == NULL)
            continue;
        char ep[16], chans[96];
        new_epoch(ep);
        snprintf(chans, sizeof(chans), "%s:channels", B.prefix);
        args_t a = {.n = 0};
        argk(&a, cc->name, len, "c");
        args(&a, chans);
        arg(&a, cc->name, len);
        args(&a, ep);
        argi(&a, sl_now_ms());
        argi(&a, cc->max_subscribers);
        argi(&a, cc->message_retention);
        argi(&a, cc->rpc_timeout_ms);
        argi(&a, 1);
        cmd_script(c, S_CREATE, 2, a.n, a.v, a.l);
        args_free(&a, 0, 1);
    }
    reconcile();
}

/* ------------------------------------------------------------ timers */

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
    int64_t now = sl_mono_ms();
    for (uint32_t i = 0; i < B.nlinks; i++) {
        link_t *l = &B.link[i];
        if (l->head && now - l->head->sent_ms > sl_conf->redis_timeout_ms) {
            uatomic_add(&BSTATS->link[i].timeouts, 1);
            char why[96];
            snprintf(why, sizeof(why), "no reply within %" PRId64 " ms (--redis-timeout-ms)",
                     sl_conf->redis_timeout_ms);
            link_fail(l, why);
        }
    }
    if (B.backlog)
        backlog_retry();
    drain_queue(); /* in case a wake-up was lost */
    wake_flush();
}

static void publish_snapshot(void)
{
    json_t *chans = json_object();
    for (uint32_t i = 0; i < B.nlinks; i++)
        if (B.snap_chans[i])
            json_object_update(chans, B.snap_chans[i]);
    json_t *doc = json_pack("{s:I, s:s, s:O, s:o}", "at", (json_int_t)sl_now_ms(), "node", B.node,
                            "nodes", B.snap_nodes ? B.snap_nodes : json_null(), "channels", chans);
    char *txt = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
    json_decref(doc);
    if (txt == NULL)
        return;
    size_t len = strlen(txt);
    sl_brq_snap_t *s = sl_arena_alloc(REG->arena, sizeof(*s) + len + 1);
    if (s) {
        s->at_ms = sl_now_ms();
        s->len = (uint32_t)len;
        memcpy(s->json, txt, len + 1);
        sl_brq_snap_t *old = BSTATS->snapshot;
        /* Written whole before the pointer that publishes it; the old one
         * goes after a grace period (a worker may be reading it). */
        rcu_assign_pointer(BSTATS->snapshot, s);
        uatomic_set(&BSTATS->snapshot_ms, s->at_ms);
        if (old)
            sl_qsbr_retire(&REG->qsbr, &old->head);
    }
    free(txt);
}

/* This node's heartbeat (it counts only while its key lives), the link's
 * latency, and the cluster snapshot from this instance. */
static void beat_link(link_t *l)
{
    if (l->state != L_UP)
        return;
    uint64_t conns = 0;
    for (uint32_t w = 0; w < sl_shm->nworkers; w++)
        conns += uatomic_read(&sl_shm->workers[w].connections);
    json_t *info = json_pack("{s:s, s:I, s:I, s:i}", "node", B.node, "connections",
                             (json_int_t)conns, "started-at", (json_int_t)sl_shm->start_ms,
                             "workers", (int)sl_shm->nworkers);
    char *itxt = json_dumps(info, JSON_COMPACT);
    json_decref(info);
    char nodes[96], nodek[160], ttl[16], lim[16], chans[96];
    snprintf(nodes, sizeof(nodes), "%s:nodes", B.prefix);
    snprintf(nodek, sizeof(nodek), "%s:node:%s", B.prefix, B.node);
    snprintf(ttl, sizeof(ttl), "%d", NODE_TTL_MS);
    snprintf(lim, sizeof(lim), "%d", 10000);
    snprintf(chans, sizeof(chans), "%s:channels", B.prefix);
    cmd_t *c = cmd_new(l, C_HEARTBEAT, NULL);
    const char *hb[6] = {nodes, nodek, B.node, itxt ? itxt : "{}", ttl, B.prefix};
    if (c)
        cmd_script(c, S_HEARTBEAT, 2, 6, hb, NULL);
    free(itxt);
    cmd_t *p = cmd_new(l, C_PING, NULL);
    const char *argv[1] = {"PING"};
    size_t lens[1] = {4};
    if (p)
        cmd_issue(p, 1, argv, lens);
    cmd_t *sn = cmd_new(l, C_SNAPSHOT, NULL);
    const char *sa[4] = {chans, B.prefix, node_prefix(), lim};
    if (sn)
        cmd_script(sn, S_SNAPSHOT, 1, 4, sa, NULL);
}

static void beat_cb(evutil_socket_t fd, short what, void *arg)
{
    for (uint32_t i = 0; i < B.nlinks; i++)
        beat_link(&B.link[i]);
    reconcile();
    wake_flush();
}

static void signal_cb(evutil_socket_t fd, short what, void *arg)
{
    struct signalfd_siginfo si;
    while (read(fd, &si, sizeof(si)) == (ssize_t)sizeof(si))
        if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT) {
            B.stopping = true;
            event_base_loopbreak(B.base);
        }
}

/* ------------------------------------------------------------ main */

int sl_broker_main(int tel_fd)
{
    memset(&B, 0, sizeof(B));
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != sl_shm->master_pid)
        return 1;
    signal(SIGPIPE, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    sl_proc_title("sente-lite: broker");
    sl_arena_set_owner(SL_MAX_WORKERS + 1);
    sl_tel_init(tel_fd, -3, &sl_shm->master_tel, sl_conf->telemetry, sl_conf->log_level);
    snprintf(B.node, sizeof(B.node), "%s", sl_shm->broker.node_id);
    snprintf(B.prefix, sizeof(B.prefix), "%s", sl_conf->redis_prefix);
    snprintf(node_prefix_buf, sizeof(node_prefix_buf), "%s:node:", B.prefix);
    B.nlinks = (uint32_t)SL_MIN(sl_conf->nredis, SL_BROKER_SHARDS);
    for (int s = 0; s < S__COUNT; s++)
        sha1_hex(scripts[s], script_sha[s]);

    B.base = event_base_new();
    if (B.base == NULL)
        return 1;
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    sigprocmask(SIG_BLOCK, &stop, NULL);
    int sfd = signalfd(-1, &stop, SFD_NONBLOCK | SFD_CLOEXEC);
    B.sig_ev = event_new(B.base, sfd, EV_READ | EV_PERSIST, signal_cb, NULL);
    B.wake_ev = event_new(B.base, sl_broker_wake_fd, EV_READ | EV_PERSIST, wake_cb, NULL);
    B.tick_ev = event_new(B.base, -1, EV_PERSIST, tick_cb, NULL);
    B.beat_ev = event_new(B.base, -1, EV_PERSIST, beat_cb, NULL);
    struct timeval tick = {0, 20 * 1000}, beat = {HEARTBEAT_MS / 1000, (HEARTBEAT_MS % 1000) * 1000};
    if (!B.sig_ev || !B.wake_ev || !B.tick_ev || !B.beat_ev || event_add(B.sig_ev, NULL) ||
        event_add(B.wake_ev, NULL) || event_add(B.tick_ev, &tick) || event_add(B.beat_ev, &beat))
        return 1;
    for (uint32_t i = 0; i < B.nlinks; i++) {
        B.link[i].shard = (int)i;
        B.link[i].state = L_DOWN;
        B.link[i].retry_ev = evtimer_new(B.base, link_retry_cb, &B.link[i]);
        set_reason(&B.link[i], "connecting");
        uatomic_set(&BSTATS->link[i].down_since_ms, sl_now_ms());
    }
    uatomic_set(&BSTATS->nshards, B.nlinks);

    sl_qsbr_register(&REG->qsbr, SL_REG_BROKER_SLOT);
    uatomic_set(&BSTATS->pid, (int32_t)getpid());
    for (uint32_t i = 0; i < B.nlinks; i++)
        link_connect(&B.link[i]);
    sl_tel_flush();
    while (!B.stopping) {
        event_base_loop(B.base, EVLOOP_ONCE);
        if (B.backlog)
            backlog_retry(); /* the workers may have made room this turn */
        wake_flush();
        sl_tel_flush();
        /* Between turns we hold no pointer into the registry. */
        sl_qsbr_quiescent(&REG->qsbr, SL_REG_BROKER_SLOT);
        sl_qsbr_reclaim(&REG->qsbr);
    }
    for (uint32_t i = 0; i < B.nlinks; i++) {
        B.link[i].state = L_UP; /* so link_fail tears down */
        link_fail(&B.link[i], "stopping");
    }
    sl_qsbr_offline(&REG->qsbr, SL_REG_BROKER_SLOT);
    uatomic_set(&BSTATS->pid, 0);
    sl_tel_flush();
    return 0;
}
