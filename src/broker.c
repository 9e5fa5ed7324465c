/*
 * broker.c - the broker process (--redis): the one process of a node that
 * talks to Redis, so that many nodes share channels with one order.
 *
 * What it owns (process-local): per --redis instance ("shard") a link of
 * two hiredis connections on its own libevent loop - one for commands
 * (Lua scripts by EVALSHA, pipelined, answered in order) and one for
 * pub/sub - and a map of the channels this node cares about (bchan_t).
 * Nothing of it is in shared memory: a respawned broker rebuilds it from
 * the registry (the truth of this node's subscribers and of where its
 * delivery stopped) and from Redis.  Its one piece of shared state with a
 * lock, the channels' delivery (sl_chan_deliver / sl_chan_reset), follows
 * the registry's rules: a recorded intent, repaired by the lock's recovery.
 *
 * Work arrives from the workers through the request queue (sl_brq.h);
 * answers go back as SL_INBOX_BROKER_RESULT entries.  Messages from Redis
 * become channel-message frames encoded once and handed to the workers
 * that have subscribers (sl_chan_deliver), exactly like a local publish.
 *
 * Ordering: Redis assigns each channel's seq in one Lua script that also
 * appends to the channel's history and PUBLISHes; every node's broker gets
 * the channel's messages from its one pub/sub connection, in that order,
 * and hands them to the workers in that order.  Where delivery stands for
 * a channel (`known`: its epoch and last seq) is what a lost link resumes
 * from: a message whose seq does not follow makes the broker fetch the
 * missing ones from the history first (catch-up) and hold newer ones until
 * then; when the history no longer has them, the channel's epoch changed,
 * or Redis is behind what this node delivered, the local subscribers are
 * closed with 1012 so their clients resubscribe with since-seq and are
 * told recovered:false (sl_chan_reset).  Nothing is ever dropped without
 * that: a backlog or hold over its bound resets its channel too.
 *
 * Redis's own continuity: at every connect the broker compares Redis's run
 * id with the one recorded with the data (script EPOCHS); a restarted or
 * failed-over Redis may have lost recent writes, so every channel takes a
 * new epoch and every node resets its subscribers.
 *
 * Failures: a command not answered within --redis-timeout-ms, the pub/sub
 * connection not echoing within it, or any connection error drops the
 * link: every command in flight is answered broker-timeout (it may have
 * run), every request that comes while it is down broker-unavailable (it
 * did not); reconnection follows with exponential back-off and jitter
 * (host names resolved off the loop), then scripts are loaded again, every
 * wanted channel is subscribed again and caught up.  The master watches
 * this process's progress like a worker's and replaces it when it stalls.
 */
#include "sl_broker.h"
#include "sl_brq.h"
#include "sl_brscript.h"
#include "sl_conf.h"
#include "sl_conn.h"
#include "sl_crash.h"
#include "sl_proc.h"
#include "sl_pubsub.h"
#include "sl_rpc.h"
#include "sl_shm.h"
#include "sl_tel.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/event.h>
#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <jansson.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
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
#define BACKLOG_MAX_BYTES (64u << 20) /* messages from Redis waiting for inbox room, all channels */
#define CHAN_BACKLOG_MAX 10000 /* ... one channel's (past it: the channel is reset) */
/* CHAN_BACKLOG_MAX; the test build takes another from SL_TEST_BACKLOG_MAX,
 * so a test brings a channel's backlog to its bound with a few messages. */
static uint32_t chan_backlog_max = CHAN_BACKLOG_MAX;
#define CHAN_PUSHBACK 1000 /* a channel's backlog past which this node's publishes to it are refused */
/* Live messages held per channel while it catches up or waits for its
 * turn (past it: the channel is reset); their bytes are bounded too, node-
 * wide by --redis-max-held-bytes and per channel by a quarter of it (rg17
 * M1: a channel waiting for its turn holds for as long as the queue takes). */
#define HOLD_MAX 10000
#define INFLIGHT_MAX 16384 /* commands in flight on one link (past it: overloaded) */
#define INFLIGHT_BYTES_MAX (64u << 20)
/* INFLIGHT_MAX; the test build (SL_CRASHPOINTS) takes another from
 * SL_TEST_INFLIGHT_MAX, so a test fills a link with a few commands. */
static uint32_t inflight_max = INFLIGHT_MAX;
#define HISTORY_MAX_BYTES (4u << 20) /* history one subscription-result may carry */
/* `history` pages in flight on one link (this node's connection to one
 * Redis), by what each may bring back (review rv17 H1: every connection
 * may have one in flight; many of them must not hold the link, and every
 * node's commands on that Redis, behind pages it copies and this process
 * parses).  A request past it waits, in request order, on the link's wait
 * list (review rb17 M2: back-pressure, not a refusal - its connection
 * reads nothing more meanwhile; and a request whose client has gone is
 * cancelled by its worker, SL_BRQ_CANCEL, taken off the list unsent (rf17
 * H1), so the list holds requests of live connections (a cancel lost to a
 * full queue: until its deadline); HISTORY_WAIT_MAX is the hard cap, past
 * it overloaded, history-refused).  One page is always let through. */
#define HISTORY_INFLIGHT_BYTES (8u << 20)
#define HISTORY_WAIT_MAX 4096
#define HW_BUCKETS 1024 /* a link's wait-list hash (a power of 2) */
/* What one stored message may take in a page, at most: its data (at most
 * --max-message-size) and the envelope around it. */
#define HISTORY_ITEM_OVERHEAD 1024

/* ... and at most what fits the bound on one reply (sl_conn_reply_max,
 * half of --max-outbound-bytes): a subscription-result nearly all of it
 * (the worker cuts what is still over, counted in retained-omitted), the
 * admin API's info half of it, as for a local channel. */
static long long history_bytes(bool info)
{
    size_t max = sl_conn_reply_max(), room = info ? max / 2 : max - 2048;
    return (long long)SL_MIN((size_t)HISTORY_MAX_BYTES, room);
}
/* One catch-up answer (a page: the node asks again for the rest), and
 * admin info's history (the newest that fit). */
#define CATCHUP_PAGE_MSGS 256
#define CATCHUP_PAGE_BYTES (1u << 20)
#define INFO_HISTORY_MSGS 1000
/* Catch-ups in flight on one link; the rest wait their turn (holding what
 * arrives meanwhile, within the hold bounds). */
#define CATCHUPS_MAX 64
/* An epoch's room, the same as the local channel's (sl_chan_t.epoch): the
 * scripts make at most 15 characters; a longer one is malformed. */
#define BR_EPOCH 16
_Static_assert(BR_EPOCH == sizeof(((sl_chan_t *)0)->epoch), "one epoch size");
/* Channels given a new epoch per EPOCHS call after a Redis restart. */
#define EPOCHS_SLICE 1000
#define PURGE_SLICE 1000 /* a previous process's presence entries removed per call */
/* PURGE_SLICE, likewise from SL_TEST_PURGE_SLICE; and SL_TEST_PURGE_KILL
 * names a file: the broker that removes it SIGKILLs itself after its
 * first purge slice (one broker: the respawn finds the file gone). */
static uint32_t purge_slice = PURGE_SLICE;
#ifdef SL_CRASHPOINTS
static const char *purge_kill;
#endif
#define PRES_SYNC_TURN 32 /* channels whose presence is rewritten per loop turn after a connect */
#define PRES_SYNC_MAX 1000 /* local subscribers one PRES_SYNC takes (more: in slices) */
#define PRES_SYNC_BYTES (256u << 10) /* ... and at most about this much entry text */
/* PRES_SYNC / nodepr slices of the rewrite in flight per link: the next is
 * sent when one is answered (review ro17 M2), PRES_SYNC_TURN per loop turn
 * the ceiling. */
#define PRES_SYNC_INFLIGHT 4
#define PRES_FRESH_WAIT_MS 250 /* a drop waits for the other link's answer: scan again then (rm17 L1) */
#define PRES_STATS_WAIT_MAX 1024 /* presence-stats waiting for the one in flight, per channel */
#define PRES_STATS_CACHE_MS 1000 /* a channel's presence-stats answer serves this long */
#define SNAPSHOT_SLICE 256 /* channels read for the cluster snapshot per heartbeat and instance */
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

static char script_sha[SL_BRS__COUNT][41];

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

enum { L_DOWN, L_RESOLVING, L_CONNECTING, L_UP };
enum { SUB_NONE, SUB_PENDING, SUB_ON, SUB_OFF_PENDING };

/* What a command's reply completes. */
enum { C_PUBLISH, C_JOIN, C_SYNC, C_RPC, C_RPC_FWD, C_CATCHUP, C_ADMIN_CREATE, C_ADMIN_DELETE,
       C_ADMIN_INFO, C_ADMIN_PUBLISH, C_ADMIN_FWD, C_SNAPSHOT, C_HEARTBEAT, C_PING, C_SETUP,
       C_INFO, C_EPOCHS, C_PURGE, C_ENSURE, C_PRES, C_PRES_STATS, C_PRES_SYNC,
       C_PRES_SCAN, C_HISTORY };

struct cmd {
    cmd_t *prev, *next; /* the link's in-flight list, oldest first */
    link_t *link;
    int what;
    int worker;
    uint32_t slot;
    uint64_t conn, tag;
    int64_t deadline;   /* the request's (mono ms; 0: none): not sent after it */
    int64_t sent_ms, sent_us;
    uint64_t seq;       /* B.send_seq when sent: which link answered after which INFO (rm17 L1) */
    bool answered;      /* a result went to the worker already */
    int script;
    char *buf;          /* the formatted command */
    int len;
    bchan_t *ch;        /* joins and catch-ups: the channel (referenced) */
    uint64_t gen;       /* catch-ups: the channel's catchup_gen when sent (PRES_SYNC: pres_gen) */
    uint8_t pkind;      /* PRES_SYNC: PK_ALL, PK_SLICE ("first" / "more") or PK_SWEEP */
    bool counted;       /* catch-ups: counted in link->ncatchup until freed */
    uint64_t hist_bytes; /* history: its share of link->history_bytes until freed */
    json_t *ctx;        /* what the reply needs besides (owned) */
    uint64_t sub_no;    /* joins: the subscription (sl_sub_t.sub_no) its answer serves */
};

/* A message from Redis waiting: held during a catch-up, or for inbox room. */
typedef struct bmsg {
    struct bmsg *next;
    bool presence;      /* a join / leave: no seq (seq, epoch: the channel's then) */
    uint64_t seq, exclude;
    int64_t received_us;
    char epoch[BR_EPOCH];
    size_t len;
    char json[];
} bmsg_t;

struct bchan {
    bchan_t *next;      /* hash chain */
    bchan_t *bl_next;   /* the list of channels with work waiting */
    uint32_t idlen;
    uint32_t shard;
    int sub;            /* SUB_* on the shard's pub/sub connection */
    bool want;          /* this node has subscribers: be subscribed */
    bool holding;       /* a catch-up is in flight: hold new messages */
    bool resync_due;    /* a held join/leave was dropped: presence-resync at the release */
    bool lapse_due;     /* a lapse's catch-up not sent yet (link full): each beat tries
                         * again until one is sent (review re17 M1) */
    uint64_t catchup_gen; /* of the catch-up that counts (its cmd's gen): a reply
                           * of an older one (voided by a reset) is ignored */
    bool cu_waiting;    /* on its link's list of catch-ups waiting for a turn */
    bool page_due;      /* holding, its next page waits for its backlog to drain */
    bchan_t *cu_next;
    bool on_backlog;
    bool known;         /* epoch and last say where delivery stands (last may be 0) */
    bool pres_due;      /* its presence entries to rewrite (PRES_SYNC) after a connect */
    /* A rewrite of a channel with more than pres_sync_max subscribers here
     * goes in slices (review ro17 H2): pres_slice 1: the next slice is the
     * registry's subscriptions below sub_no pres_before; 2: the sweep of
     * this node's entries in Redis (from HSCAN cursor pres_sweep_cur) is
     * due; 3: a sweep slice is in flight (its cmd's gen == pres_gen, which
     * a new pass raises so an old answer is ignored); 4: a mode "all" is
     * in flight (its answer may ask for the sweep: more stale entries in
     * Redis than one script removes, review rx17 M2); 0: none. */
    uint8_t pres_slice;
    bool pres_again;    /* a write was lost during the rewrite under way: another after it (rx17 M1) */
    uint64_t pres_before, pres_gen;
    char pres_after[SL_CONN_ID_MAX]; /* the conn-id of sub_no pres_before: the next slice resumes there */
    char pres_sweep_cur[24];
    uint32_t pres_wait;     /* its "first" / "more" / "all" in flight: the sweep waits for their answers (rx17 L3) */
    uint32_t pres_backoff_ms; /* after an error answer: the next rewrite not before pres_retry_ms */
    int64_t pres_retry_ms;
    bool stats_busy;    /* a PRES_STATS of it in flight (at most one) */
    struct stats_wait { int worker; uint64_t tag; } *stats_wait; /* answered with it */
    uint32_t nstats_wait;
    int64_t stats_at_ms; /* mono ms of the last presence-stats answer (0: none) */
    int64_t stats_clients, stats_users; /* ... its figures (users -1: not counted;
                                         * clients -1: Redis had no such channel) */
    bool stats_made;    /* a subscribe / create here since the PRES_STATS in flight was sent */
    bool reset_pending; /* a reset to reset_epoch/reset_last still to make */
    bool delete_pending; /* deleted on another node: the local delete still to make */
    int64_t synced;     /* the count Redis has for this node; -1 unknown */
    char epoch[BR_EPOCH];     /* of the last message delivered */
    uint64_t last;      /* seq of the last message delivered */
    char reset_epoch[BR_EPOCH];
    uint64_t reset_last;
    cmd_t *joins;       /* joins waiting for the subscription (linked by next) */
    bmsg_t *held, *held_tail;
    uint32_t nheld;
    uint64_t held_bytes;
    uint32_t inflight;  /* commands referring to this channel */
    bmsg_t *backlog, *backlog_tail;
    uint32_t nbacklog;
    uint64_t backlog_bytes;
    char id[SL_CHAN_ID_MAX + 1];
};

struct link {
    int shard;
    int state;
    redisAsyncContext *cmd, *sub;
    bool ping_ok, sub_ok; /* the setup's last PING answered, the node channels subscribed */
    bool ever_up;
    /* After a connect: this node's presence entries in Redis are rewritten
     * from the registry, channel by channel (pres_pass: the channels known
     * here, from bucket pres_bucket on; then pres_scan: the node's nodepr
     * set, for channels with entries but no subscriber here any more). */
    bool pres_pass, pres_scan, pres_scan_sent;
    bool pres_restart;    /* a pass began again while a nodepr slice was asked: its cursor is stale */
    bool beat_ok;         /* a heartbeat of this link was answered since it came up */
    uint32_t pres_bucket;
    uint32_t pres_inflight; /* the rewrite's commands in flight (at most PRES_SYNC_INFLIGHT) */
    uint32_t pres_sent;     /* ... sent this loop turn (at most PRES_SYNC_TURN) */
    char pres_cursor[32];
    /* The nodepr scan waits till then (0: no wait): a drop's error answer's
     * backoff (pres_drop_backoff_ms, review rm17 L2), or another link's
     * fresh answer (rm17 L1). */
    int64_t pres_scan_retry_ms;
    uint32_t pres_drop_backoff_ms;
    /* B.send_seq at this connect's INFO answer, and that of the last
     * command of this link answered (rm17 L1: links_differ trusts another
     * link's run_id only if that link answered since this one's INFO). */
    uint64_t info_seq, answered_seq;
    int64_t pres_retry_ms;  /* a due channel waits for its backoff: the pass goes back then ... */
    uint32_t pres_retry_bucket; /* ... to this bucket (BUCKETS: none) */
    cmd_t *head, *tail;   /* in flight on cmd */
    uint32_t ncatchup;    /* catch-ups in flight (at most CATCHUPS_MAX) */
    uint32_t ncu_wait;    /* ... and waiting on cu_wait (shown: cu_shown) */
    bchan_t *cu_wait, *cu_wait_tail; /* channels whose catch-up waits for a turn */
    uint32_t ninflight;
    uint64_t inflight_bytes;
    uint64_t history_bytes; /* max-bytes of the history pages in flight (HISTORY_INFLIGHT_BYTES) */
    struct hist_wait *hw_head, *hw_tail; /* requests waiting for it (FIFO, doubly linked) */
    uint32_t nhw;
    /* The same requests by (from, tag), chained through hnext: a cancel
     * finds its request in O(1), not by a scan (review rg17 L4). */
    struct hist_wait *hw_hash[HW_BUCKETS];
    int64_t backoff_ms;
    int64_t connect_ms;   /* mono ms the connection attempt began */
    int64_t echo_sent_ms; /* mono ms of the echo not yet seen on pub/sub; 0: none */
    struct event *retry_ev;
    struct gaicb gai;     /* the host name being resolved (L_RESOLVING) */
    struct addrinfo hints;
    char addr[INET6_ADDRSTRLEN];
    char run_id[48];
    char reason[96];
};

static struct {
    struct event_base *base;
    struct event *wake_ev, *tick_ev, *beat_ev, *sig_ev;
    struct event *hist_ev; /* made active when a page's budget is given back */
    link_t link[SL_BROKER_SHARDS];
    uint32_t nlinks;
    uint64_t send_seq;      /* raised at each command sent and each INFO answer (rm17 L1) */
    bchan_t *map[BUCKETS];
    bchan_t *backlog; /* channels with messages waiting for inbox room, or a reset or delete */
    uint64_t nbacklog, backlog_bytes;
    uint64_t nheld, held_bytes; /* held by all channels (bchan_t.held) */
    uint64_t wake;    /* workers to wake at the end of this turn */
    char node[32];
    char prefix[64];
    uint64_t pres_gen_seen; /* BSTATS->presence_pass_gen last acted on */

    char instance[48]; /* this node's master (host hash, pid, start time), in the heartbeat: a node id used twice shows */
    bool stopping;
    bool adopting; /* the start-up walk found no memory: links held down, walked again each heartbeat */
    json_t *snap_nodes;               /* from the last heartbeat of shard 0 */
    /* Each shard's channels: those of its last whole pass (done), and
     * those seen so far in the pass under way (cur, which wins). */
    json_t *snap_done[SL_BROKER_SHARDS], *snap_cur[SL_BROKER_SHARDS];
    char snap_cursor[SL_BROKER_SHARDS][24]; /* SSCAN cursor of the pass under way */
    bool snap_dirty;                  /* changed since last published */
} B;

static void link_fail(link_t *l, const char *why);
static void link_connect(link_t *l);
static void reconcile(void);
static void chan_deliver(bchan_t *ch, bmsg_t *m);
/* How a catch-up takes its turn (start_catchup). */
enum { CU_NEW, CU_NEXT_PAGE, CU_RESUME };
static void start_catchup(bchan_t *ch, int turn);
static void catchup_next(link_t *l);
static void publish_snapshot(void);
static void work_add(bchan_t *ch);
static void pres_resync(bchan_t *ch);

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

/* Answer a worker's request (at most once per request).  The worker's
 * inbox keeps room for these (SL_INBOX_RESERVED); an answer too big for
 * shared memory becomes a small "overloaded" one. */
static void answer(int worker, uint64_t tag, uint32_t status, json_t *doc)
{
    if (tag == 0)
        return; /* a request nobody waits for */
    char *txt = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
    if (status == SL_BR_UNAVAILABLE)
        uatomic_add(&BSTATS->unavailable, 1);
    else if (status == SL_BR_TIMEOUT)
        uatomic_add(&BSTATS->timeouts, 1);
    int rc = sl_brq_result(REG, worker, tag, status, txt, txt ? strlen(txt) : 0);
    if (rc == SL_CHAN_NO_MEMORY && txt)
        rc = sl_brq_result(REG, worker, tag, SL_BR_OVERLOADED, NULL, 0);
    if (rc == SL_OK)
        wake_worker(worker);
    /* Else (256 answers waiting for it): its own deadline answers the client. */
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

/* A presence-stats answer "no such channel" serves its second too (review
 * rv17 L3) - but not once this node has asked Redis to make the channel (a
 * subscribe or admin create here): its own client must not be told the
 * channel it just joined does not exist. */
static void stats_forget_missing(const char *id, size_t len)
{
    bchan_t *ch = chan_find(id, len);
    if (ch == NULL)
        return;
    if (ch->stats_clients < 0)
        ch->stats_at_ms = 0;
    ch->stats_made = true; /* and an answer in flight is not kept (done_presence) */
}

static void free_msgs(bmsg_t *m)
{
    while (m) {
        bmsg_t *n = m->next;
        free(m);
        m = n;
    }
}

static void held_figures(void)
{
    uatomic_set(&BSTATS->held, B.nheld);
    uatomic_set(&BSTATS->held_bytes, B.held_bytes);
}

/* ch's held list, taken off it and out of the node's count (the caller
 * frees or delivers it). */
static bmsg_t *take_held(bchan_t *ch)
{
    bmsg_t *held = ch->held;
    B.nheld -= ch->nheld;
    B.held_bytes -= ch->held_bytes;
    ch->held = ch->held_tail = NULL;
    ch->nheld = 0;
    ch->held_bytes = 0;
    held_figures();
    return held;
}

static void drop_held(bchan_t *ch)
{
    free_msgs(take_held(ch));
}

/* Forget a channel nobody here wants any more (nothing subscribed, nothing
 * waiting). */
static void chan_maybe_free(bchan_t *c)
{
    if (c->want || c->sub != SUB_NONE || c->joins || c->holding || c->backlog || c->synced > 0 ||
        c->inflight || c->on_backlog || c->reset_pending || c->delete_pending || c->cu_waiting ||
        c->pres_due || (c->stats_at_ms && sl_mono_ms() - c->stats_at_ms < PRES_STATS_CACHE_MS))
        return;
    uint32_t b = sl_broker_shard(c->id, c->idlen, BUCKETS);
    for (bchan_t **p = &B.map[b]; *p; p = &(*p)->next)
        if (*p == c) {
            *p = c->next;
            break;
        }
    drop_held(c);
    free(c->stats_wait);
    free(c);
}

/* ------------------------------------------------------------ commands */

/* /stats: the link's catch-ups in flight and waiting for a turn. */
static void cu_shown(const link_t *l)
{
    uatomic_set(&BSTATS->link[l->shard].catchups_in_flight, l->ncatchup);
    uatomic_set(&BSTATS->link[l->shard].catchups_waiting, l->ncu_wait);
}

static void cmd_free(cmd_t *c)
{
    if (c->counted) {
        c->link->ncatchup--;
        cu_shown(c->link);
    }
    if (c->ch)
        c->ch->inflight--;
    if (c->hist_bytes) {
        c->link->history_bytes -= c->hist_bytes;
        uatomic_set(&BSTATS->link[c->link->shard].history_bytes, c->link->history_bytes);
        /* Waiting requests are sent from the loop, not from here (cmd_free
         * runs inside hiredis callbacks and link_fail). */
        if (c->link->hw_head)
            event_active(B.hist_ev, 0, 0);
    }
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
    l->ninflight--;
    l->inflight_bytes -= (uint64_t)c->len;
    uatomic_add(&BSTATS->link[l->shard].in_flight, -1);
}

static void on_reply(redisAsyncContext *ac, void *r, void *priv);
static void done_presence(cmd_t *c, redisReply *r);
static void done_pres_sync(cmd_t *c, redisReply *r);
static void done_pres_scan(cmd_t *c, redisReply *r);
static void done_history(cmd_t *c, redisReply *r);
static void pres_turn(void);
static bool drain_queue(void);

static int cmd_send(cmd_t *c)
{
    link_t *l = c->link;
    if (l->cmd == NULL ||
        redisAsyncFormattedCommand(l->cmd, on_reply, c, c->buf, (size_t)c->len) != REDIS_OK)
        return SL_ERROR;
    c->sent_us = sl_mono_us();
    c->sent_ms = c->sent_us / 1000;
    c->seq = ++B.send_seq;
    c->prev = l->tail;
    c->next = NULL;
    if (l->tail)
        l->tail->next = c;
    else
        l->head = c;
    l->tail = c;
    l->ninflight++;
    l->inflight_bytes += (uint64_t)c->len;
    uatomic_add(&BSTATS->link[l->shard].in_flight, 1);
    return SL_OK;
}

/* Room for one more command of n bytes on l (what a slow Redis holds in
 * flight is bounded, in count and bytes; setup commands always go). */
static bool room_for(cmd_t *c, size_t n)
{
    link_t *l = c->link;
    if (c->what == C_SETUP || c->what == C_PING || c->what == C_INFO || c->what == C_EPOCHS ||
        c->what == C_PURGE)
        return true;
    if (l->ninflight < inflight_max && l->inflight_bytes + n <= INFLIGHT_BYTES_MAX)
        return true;
    /* The presence rewrite's commands are not requests: one put off for a
     * full link is sent later, not refused (review rx17 L1). */
    if (c->what != C_PRES_SYNC && c->what != C_PRES_SCAN)
        uatomic_add(&BSTATS->link[l->shard].refused, 1);
    return false;
}

/* Room on l for one of the presence rewrite's scripts, however big its
 * text may be: checked before the text is made (review rx17 L1: a full
 * link is not asked to take a rewrite made and thrown away each turn). */
static bool pres_room(const link_t *l)
{
    return l->ninflight < inflight_max &&
           l->inflight_bytes + 2 * (uint64_t)PRES_SYNC_BYTES <= INFLIGHT_BYTES_MAX;
}

/* A command from argv; ownership of c passes to the link (its reply frees
 * it).  When the link is not up (or full), the command is answered and
 * freed here: returns SL_ERROR.  c may be NULL (out of memory). */
static int cmd_issue(cmd_t *c, int argc, const char **argv, const size_t *lens)
{
    if (c == NULL)
        return SL_ERROR;
    char *buf = NULL;
    int n = redisFormatCommandArgv(&buf, argc, argv, lens);
    if (n < 0) {
        cmd_answer(c, SL_BR_BAD, NULL);
        cmd_free(c);
        return SL_ERROR;
    }
    c->buf = buf;
    c->len = n;
    bool setup = c->what == C_SETUP || c->what == C_PING || c->what == C_INFO ||
                 c->what == C_EPOCHS || c->what == C_PURGE;
    if (c->link->state != L_UP && !setup) {
        cmd_answer(c, SL_BR_UNAVAILABLE, NULL);
        cmd_free(c);
        return SL_ERROR;
    }
    if (!room_for(c, (size_t)n)) {
        cmd_answer(c, SL_BR_OVERLOADED, NULL);
        cmd_free(c);
        return SL_ERROR;
    }
    if (cmd_send(c) != SL_OK) {
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
        c->deadline = e->deadline;
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

/* Strings for script arguments (keys formatted into own[]). */
#define ARGS_MAX 36
typedef struct {
    const char *v[ARGS_MAX];
    size_t l[ARGS_MAX];
    char own[ARGS_MAX][SL_CHAN_ID_MAX + 96];
    int n;
} args_t;

static void arg(args_t *a, const char *s, size_t len)
{
    if (a->n >= ARGS_MAX)
        return;
    a->v[a->n] = s;
    a->l[a->n++] = len;
}
static void args(args_t *a, const char *s)
{
    arg(a, s, strlen(s));
}
static void argi(args_t *a, int64_t v)
{
    if (a->n >= ARGS_MAX)
        return;
    snprintf(a->own[a->n], sizeof(a->own[0]), "%" PRId64, v);
    args(a, a->own[a->n]);
}
static void argk(args_t *a, const char *id, size_t len, const char *suffix)
{
    if (a->n >= ARGS_MAX)
        return;
    key(a->own[a->n], sizeof(a->own[0]), id, len, suffix);
    args(a, a->own[a->n]);
}
/* A key of this cluster that is not a channel's: "P:<what>". */
static void argp(args_t *a, const char *what)
{
    if (a->n >= ARGS_MAX)
        return;
    snprintf(a->own[a->n], sizeof(a->own[0]), "%s:%s", B.prefix, what);
    args(a, a->own[a->n]);
}

/* EVALSHA script with KEYS (the first nkeys of a) then ARGV. */
static int cmd_script(cmd_t *c, int script, int nkeys, const args_t *a)
{
    const char *argv[ARGS_MAX + 3];
    size_t alen[ARGS_MAX + 3];
    char nk[8];
    snprintf(nk, sizeof(nk), "%d", nkeys);
    int k = 0;
    argv[k] = "EVALSHA";
    alen[k++] = 7;
    argv[k] = script_sha[script];
    alen[k++] = 40;
    argv[k] = nk;
    alen[k++] = strlen(nk);
    for (int i = 0; i < a->n; i++) {
        argv[k] = a->v[i];
        alen[k++] = a->l[i];
    }
    if (c)
        c->script = script;
    return cmd_issue(c, k, argv, alen);
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

/* No reply (the link failed with the command in flight): it may have run. */
static uint32_t no_reply(redisReply *r)
{
    return r ? SL_BR_BAD : SL_BR_TIMEOUT;
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
        cmd_answer(c, no_reply(r), NULL);
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

/* ch is not subscribed in Redis and no subscriber here has been served
 * from its position: messages after it are not ours, forget where we
 * were (a fresh subscriber is positioned by its join, done_join).  The
 * local ring can no longer be trusted to continue: emptied. */
static void forget_position(bchan_t *ch)
{
    ch->known = false;
    ch->last = 0;
    ch->epoch[0] = '\0';
    sl_chan_t *lc = sl_chan_find(REG, ch->id, ch->idlen);
    uint64_t woken;
    if (lc)
        sl_chan_reset(REG, lc, NULL, 0, SL_CHAN_RESET_QUIET, &woken);
}

typedef struct {
    uint64_t upto; /* sl_chan_t.served_upto (0: none) */
    bool any;
} served_t;

static int served_cb(const sl_sub_t *s, void *arg)
{
    served_t *v = arg;
    if (uatomic_read(&s->join_pending) && (v->upto == 0 || s->sub_no > v->upto))
        return 0;
    v->any = true;
    return 1;
}

/* Whether a subscription of lc here was served from the channel's
 * position: its join answered - confirmed by its worker (join_pending
 * cleared), or answered by a broker (sub_no <= upto, lc->served_upto:
 * served_of) though its worker has not read the answer yet: a slow or
 * stopped worker's subscriber is caught up all the same (review rn17
 * M1).  served_upto is written by the broker only (set before the answer
 * is sent), so no ordering with the worker is needed; sub_no is stored
 * before the subscription is linked and never changes.  Lock-free
 * (caller online). */
static bool has_served(sl_chan_t *lc, uint64_t upto)
{
    served_t v = {.upto = upto, .any = false};
    if (lc)
        sl_chan_members(lc, 0, served_cb, &v);
    return v.any;
}

/* lc's served_upto (0 without lc).  Kept in the shared record, not in
 * this broker's bchan_t, so a respawned broker reads the exact mark the
 * dead one left: taking the channel's sub_seq at the start-up walk
 * instead counted a fresh subscriber whose join no broker had answered
 * as served, kept a stale position for it and reset it (1012) at the
 * catch-up (review rp17 M1). */
static uint64_t served_of(sl_chan_t *lc)
{
    return lc ? CMM_LOAD_SHARED(lc->served_upto) : 0;
}

/* Note c's subscription as served, before its answer is sent (has_served):
 * one store of a value that only grows, by this broker alone - either
 * value is a valid state (a kill before the store: the answer was not
 * sent either; after it, before the answer: counted as served, which only
 * errs to catching it up), so no intent and no recovery.  The channel
 * deleted and made again meanwhile: the new record gets an older sub_no,
 * which serves none of its own (sub_no only grows). */
static void mark_served(const bchan_t *ch, uint64_t sub_no)
{
    sl_chan_t *lc = sl_chan_find(REG, ch->id, ch->idlen);
    if (lc && sub_no > CMM_LOAD_SHARED(lc->served_upto))
        CMM_STORE_SHARED(lc->served_upto, sub_no);
}

/* Where delivery stands for ch, as Redis says (a join, a catch-up): known
 * from now on, and the local channel moves on with it when behind - its
 * ring could not continue, and a respawned broker resumes from it. */
static void chan_position(bchan_t *ch, const char *epoch, uint64_t last)
{
    snprintf(ch->epoch, sizeof(ch->epoch), "%s", epoch);
    ch->last = last;
    ch->known = true;
    sl_chan_t *lc = sl_chan_find(REG, ch->id, ch->idlen);
    uint64_t woken;
    if (lc)
        sl_chan_reset(REG, lc, epoch, last, SL_CHAN_RESET_FORWARD, &woken);
}

static void done_join(cmd_t *c, redisReply *r)
{
    if (r == NULL || r->type != REDIS_REPLY_ARRAY) {
        cmd_answer(c, no_reply(r), NULL);
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
        /* Nothing delivered yet since the subscription: from here on every
         * message after `last` reaches us (the script ran after it). */
        if (!c->ch->known && !c->ch->holding)
            chan_position(c->ch, rstr(el(r, 2)), (uint64_t)rint_(el(r, 3)));
        /* Served from here on, before the answer goes (has_served). */
        mark_served(c->ch, c->sub_no);
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

/* Reset ch here (its subscribers were told nothing of what is lost: they
 * are closed, resubscribe, learn recovered:false); kept as pending work
 * when it cannot be made now, and nothing of the channel is delivered
 * before it. */
static void chan_reset(bchan_t *ch, const char *epoch, uint64_t last)
{
    snprintf(ch->reset_epoch, sizeof(ch->reset_epoch), "%s", epoch);
    ch->reset_last = last;
    ch->reset_pending = true;
    snprintf(ch->epoch, sizeof(ch->epoch), "%s", epoch);
    ch->last = last;
    ch->known = true;
    ch->resync_due = false; /* its subscribers are told (1012): they ask presence anew */
    /* What waits was of the old position: gone with it. */
    free_msgs(ch->backlog);
    B.nbacklog -= ch->nbacklog;
    B.backlog_bytes -= ch->backlog_bytes;
    ch->backlog = ch->backlog_tail = NULL;
    ch->nbacklog = 0;
    ch->backlog_bytes = 0;
    sl_chan_t *lc = sl_chan_find(REG, ch->id, ch->idlen);
    uint64_t woken = 0;
    int rc = lc ? sl_chan_reset(REG, lc, epoch, last, SL_CHAN_RESET_NOTIFY, &woken) : SL_OK;
    if (rc == SL_CHAN_NO_MEMORY) {
        work_add(ch); /* tried again every turn */
        return;
    }
    ch->reset_pending = false;
    if (rc == SL_OK && lc) {
        uatomic_add(&BSTATS->reset_channels, 1);
        B.wake |= woken;
    }
}

/* ch was deleted (on another node, or while our link was down): the
 * local delete tells its subscribers here (channel-deleted), in order
 * after what they got; kept as pending work while inboxes are full. */
static bool local_delete(bchan_t *ch)
{
    ch->stats_at_ms = 0; /* a re-created channel is counted afresh */
    json_t *notice = json_pack("{s:s, s:s%}", "type", "channel-deleted", "channel-id", ch->id,
                               (size_t)ch->idlen);
    char *txt = notice ? json_dumps(notice, JSON_COMPACT) : NULL;
    json_decref(notice);
    int rc = SL_CHAN_NO_MEMORY;
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
            rc = sl_chan_delete(REG, ch->id, ch->idlen, f, h + jl, &un, &woken);
            if (rc == SL_OK) {
                B.wake |= woken;
                uatomic_add(&BSTATS->deleted_channels, 1);
            }
            free(f);
        }
        free(txt);
    }
    ch->known = false;
    ch->epoch[0] = '\0';
    ch->last = 0;
    free_msgs(ch->backlog);
    B.nbacklog -= ch->nbacklog;
    B.backlog_bytes -= ch->backlog_bytes;
    ch->backlog = ch->backlog_tail = NULL;
    ch->nbacklog = 0;
    ch->backlog_bytes = 0;
    drop_held(ch);
    ch->holding = false;
    ch->resync_due = false; /* its subscribers are told (channel-deleted) */
    ch->reset_pending = false;
    ch->delete_pending = rc == SL_CHAN_OVERLOADED || rc == SL_CHAN_NO_MEMORY;
    if (ch->delete_pending)
        work_add(ch);
    return !ch->delete_pending;
}

/* The catch-up is answered and ch's position set: what was held while it
 * ran follows, in order (a repeat of what the position covers dropped by
 * chan_deliver).  One pub/sub connection loses nothing between two of
 * its messages, so what follows the position continues it; should it
 * not (another epoch, a gap), the channel is reset to just before it -
 * never another catch-up from here, which could start the same round
 * again (rm17 H1). */
static void release_held(bchan_t *ch)
{
    bmsg_t *held = take_held(ch);
    while (held) {
        bmsg_t *m = held;
        held = m->next;
        m->next = NULL;
        if (m->presence) {
            chan_deliver(ch, m); /* in its place among the messages */
            continue;
        }
        bool same = strcmp(ch->epoch, m->epoch) == 0;
        if (ch->known && (!same || m->seq > ch->last + 1))
            chan_reset(ch, m->epoch, m->seq - 1);
        chan_deliver(ch, m);
    }
    if (ch->resync_due && !ch->holding) {
        /* A join or leave dropped by the hold bound (rj17 L1): told after
         * what was held, so presence asked then includes it. */
        ch->resync_due = false;
        pres_resync(ch);
    }
}

/* Room for ch's next catch-up page: its workers keep up (less than a
 * page of it waits for inbox room) and the node's backlog has room for a
 * whole page. */
static bool page_room(const bchan_t *ch)
{
    return ch->nbacklog < CATCHUP_PAGE_MSGS &&
           B.backlog_bytes + CATCHUP_PAGE_BYTES <= BACKLOG_MAX_BYTES;
}

static void done_catchup(cmd_t *c, redisReply *r)
{
    bchan_t *ch = c->ch;
    if (ch == NULL || c->gen != ch->catchup_gen)
        return; /* voided: the channel was reset since (hold overflow) */
    ch->holding = false;
    if (r == NULL || r->type != REDIS_REPLY_ARRAY) {
        /* The link went down: the next connection starts another catch-up
         * from the same place. */
        drop_held(ch);
        return;
    }
    int64_t st = rint_(el(r, 0));
    if (st == 3) {
        /* Deleted while we were away: not brought back; told here. */
        local_delete(ch);
        reconcile();
        return;
    }
    const char *epoch = rstr(el(r, 1));
    uint64_t last = (uint64_t)rint_(el(r, 2));
    if (st != 0) {
        /* Lost for good: subscribers here must resubscribe and be told.
         * What was held of the answer's epoch arrived after the script ran
         * (seqs above `last`): not lost - it follows the reset, in order
         * (rm17 H1: dropping it made the next live message a gap, another
         * catch-up, another reset, for as long as publishing went on).
         * What was held of the channel's old epoch, when the answer has
         * another (the epoch changed in Redis before the script ran), is
         * lost with that epoch: dropped, not delivered after a reset back
         * to the dead epoch and another one forward (rg17 L1). */
        char old[BR_EPOCH];
        snprintf(old, sizeof(old), "%s", ch->epoch);
        chan_reset(ch, epoch, last);
        while (strcmp(old, epoch) != 0 && ch->held && strcmp(ch->held->epoch, old) == 0) {
            bmsg_t *m = ch->held;
            ch->held = m->next;
            if (ch->held == NULL)
                ch->held_tail = NULL;
            ch->nheld--;
            ch->held_bytes -= sizeof(*m) + m->len;
            B.nheld--;
            B.held_bytes -= sizeof(*m) + m->len;
            uatomic_add(&BSTATS->dropped, 1);
            free(m);
        }
        release_held(ch);
        return;
    }
    /* Numbered from the first seq the script returned (whatever happened
     * to ch meanwhile). */
    bool more = rint_(el(r, 5)) != 0;
    redisReply *a = el(r, 4);
    uint64_t seq = (uint64_t)rint_(el(r, 3));
    for (size_t i = 0; a && i < a->elements; i++, seq++) {
        bmsg_t *m = malloc(sizeof(*m) + a->element[i]->len + 1);
        if (m == NULL)
            break; /* the next message's gap fetches the rest */
        m->next = NULL;
        m->presence = false;
        m->seq = seq;
        m->exclude = 0;
        m->received_us = sl_mono_us();
        snprintf(m->epoch, sizeof(m->epoch), "%s", epoch);
        m->len = a->element[i]->len;
        memcpy(m->json, a->element[i]->str, m->len + 1);
        uatomic_add(&BSTATS->recovered, 1);
        chan_deliver(ch, m);
    }
    if (more && ch->known) {
        /* One page of it (rm17 M1): the next from what this one ended
         * with, still holding what arrives - in this page's turn (rg17
         * M2: behind every waiting channel, a long catch-up waited a whole
         * queue cycle per page, holding, and ended in a hold reset), and
         * only while the workers keep up: else the page is due once the
         * backlog has drained (back-pressure, not a backlog that grows to
         * its bound and resets the channel). */
        if (page_room(ch)) {
            if (c->counted) { /* this page's turn passes to the next */
                c->counted = false;
                c->link->ncatchup--;
                cu_shown(c->link);
            }
            start_catchup(ch, CU_NEXT_PAGE);
        } else {
            ch->holding = true; /* still: what arrives waits for the rest */
            ch->page_due = true;
            work_add(ch);
        }
        return;
    }
    if (!ch->known)
        chan_position(ch, epoch, last);
    release_held(ch);
}

static void done_rpc(cmd_t *c, redisReply *r)
{
    if (r == NULL || r->type != REDIS_REPLY_ARRAY) {
        cmd_answer(c, no_reply(r), NULL);
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
        cmd_answer(c, SL_BR_TIMEOUT, NULL);
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
        cmd_answer(c, no_reply(r), NULL);
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

static void done_snapshot(cmd_t *c, redisReply *r)
{
    int sh = c->link->shard;
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements < 2)
        return;
    json_t *j = json_loads(rstr(el(r, 1)), 0, NULL);
    if (json_is_array(j) && json_array_size(j) == 0) { /* cjson: {} encodes as [] */
        json_decref(j);
        j = json_object();
    }
    if (!json_is_object(j)) {
        json_decref(j);
        return;
    }
    if (B.snap_cur[sh] == NULL)
        B.snap_cur[sh] = json_object();
    json_object_update(B.snap_cur[sh], j);
    json_decref(j);
    snprintf(B.snap_cursor[sh], sizeof(B.snap_cursor[sh]), "%s", rstr(el(r, 0)));
    if (strcmp(B.snap_cursor[sh], "0") == 0) {
        /* A whole pass: what it did not see is gone. */
        json_decref(B.snap_done[sh]);
        B.snap_done[sh] = B.snap_cur[sh];
        B.snap_cur[sh] = NULL;
    }
    B.snap_dirty = true;
    publish_snapshot();
}

static void pres_pass_start(link_t *l);
static void counts_unknown(link_t *l);
static void reconcile(void);

/* After a lapse of this node's heartbeat key: the channels only this node
 * subscribed to were let linger, and may have expired in Redis if the
 * lapse outlasted --channel-linger-ms (their record gone: every publish
 * refused channel-not-found, nothing would make them again).  Each channel
 * of l is caught up: the catch-up makes a lost one again (a new epoch:
 * its subscribers here are told, 1012, and resubscribe); one that lives
 * answers with what it missed, if anything (issue 17's known gap). */
static void lapse_catchups(link_t *l)
{
    for (uint32_t b = 0; b < BUCKETS; b++)
        for (bchan_t *ch = B.map[b]; ch; ch = ch->next)
            if ((int)ch->shard == l->shard && ch->known && ch->want && ch->sub == SUB_ON &&
                !ch->holding && !ch->reset_pending && !ch->delete_pending) {
                ch->lapse_due = true; /* cleared when its catch-up is sent */
                start_catchup(ch, CU_NEW);
            }
}

static void done_heartbeat(cmd_t *c, redisReply *r)
{
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements < 2)
        return;
    link_t *l = c->link;
    if (rint_(el(r, 2)) && l->beat_ok && l->state == L_UP) {
        /* This node's key had expired (a stalled broker, a busy Redis):
         * the others took it for dead and removed its entries, with
         * leaves.  They are written again (joins) - review rj17 H1. */
        uatomic_add(&BSTATS->presence_reasserts, 1);
        SL_TEL(SL_EV_REDIS_CONNECTED, SL_WARN, SL_TF_I("shard", l->shard),
               SL_TF_S("reason", "this node's heartbeat had lapsed: its presence entries are "
                                 "written again"));
        /* They also removed its counts and let the channels only it
         * subscribes start to expire: the counts are sent again (SYNC
         * PERSISTs the channel), as after a connect - review ro17 H1. */
        counts_unknown(l);
        reconcile();
        pres_pass_start(l);
        lapse_catchups(l);
    }
    l->beat_ok = true;
    if (l->shard != 0)
        return;
    int conflict = (int)rint_(el(r, 0));
    if (conflict && !uatomic_read(&BSTATS->node_conflict))
        SL_TEL(SL_EV_REDIS_DISCONNECTED, SL_ERROR_LEVEL, SL_TF_S("node-id", B.node),
               SL_TF_S("reason", "another running process uses this --node-id"));
    uatomic_set(&BSTATS->node_conflict, conflict);
    redisReply *live = el(r, 1);
    json_t *a = json_array();
    for (size_t i = 0; live && i < live->elements; i++) {
        json_t *n = json_loads(rstr(live->element[i]), 0, NULL);
        if (n) {
            json_object_del(n, "instance");
            json_array_append_new(a, n);
        }
    }
    uatomic_set(&BSTATS->nodes, (uint32_t)json_array_size(a));
    json_decref(B.snap_nodes);
    B.snap_nodes = a;
    B.snap_dirty = true;
}

static void link_up(link_t *l);
static void link_ping(link_t *l, int what);
static void link_epochs(link_t *l);
static void link_purge(link_t *l);

/* Two links reach one Redis instance and db: the run_ids their connects'
 * INFO gave (both known) and their dbs are equal (review rl17 M1). */
static bool same_instance(const link_t *a, const link_t *b)
{
    return a->run_id[0] && strcmp(a->run_id, b->run_id) == 0 &&
           sl_conf->redis[a->shard].db == sl_conf->redis[b->shard].db;
}

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
    if (c->what == C_INFO) {
        /* run_id:<40 hex>: which Redis process this is. */
        const char *p = r->type == REDIS_REPLY_STRING ? strstr(r->str, "run_id:") : NULL;
        l->run_id[0] = '\0';
        l->info_seq = ++B.send_seq; /* after every command sent so far (rm17 L1) */
        if (p)
            snprintf(l->run_id, sizeof(l->run_id), "%.*s", (int)strcspn(p + 7, "\r\n"), p + 7);
        /* Two --redis entries that reach one instance and db share its
         * keys (review rl17 M1): said once at each connect that finds it. */
        for (uint32_t i = 0; l->run_id[0] && i < B.nlinks; i++) {
            const link_t *o = &B.link[i];
            if (o != l && same_instance(l, o)) {
                uatomic_add(&BSTATS->same_instance_links, 1);
                SL_TEL(SL_EV_REDIS_CONNECTED, SL_WARN, SL_TF_I("shard", l->shard),
                       SL_TF_I("same-as-shard", (int64_t)i), SL_TF_S("run-id", l->run_id),
                       SL_TF_S("reason", "two --redis entries reach the same Redis instance and "
                                         "db: they are one shard's keys, not two (channels of "
                                         "one are never dropped from the other's nodepr set)"));
                break;
            }
        }
        link_epochs(l);
    } else if (c->what == C_EPOCHS) {
        int64_t st = rint_(el(r, 0));
        if (st == 3) {
            /* The link makes progress: its connect deadline starts again
             * (rg17 L3: a renewal of many slices is not a failed connect). */
            l->connect_ms = sl_mono_ms();
            link_epochs(l); /* the next slice */
            return;
        }
        if (st == 1) {
            uatomic_add(&BSTATS->link[l->shard].epoch_renewals, 1);
            SL_TEL(SL_EV_REDIS_CONNECTED, SL_WARN, SL_TF_I("shard", l->shard),
                   SL_TF_S("run-id", l->run_id),
                   SL_TF_S("reason", "Redis restarted or failed over: every channel's epoch "
                                     "renewed (subscribers resubscribe, recovered:false)"));
        }
        link_purge(l);
    } else if (c->what == C_PURGE) {
        int64_t st = rint_(el(r, 0)), left = rint_(el(r, 1));
        if (left > 0) {
            uatomic_add(&BSTATS->link[l->shard].presence_purged, (uint64_t)left);
            SL_TEL(SL_EV_REDIS_CONNECTED, SL_WARN, SL_TF_I("shard", l->shard),
                   SL_TF_I("presence-purged", left),
                   SL_TF_S("reason", "this --node-id's previous process left presence entries: "
                                     "removed, a leave published for each"));
        }
        if (st == 3) {
#ifdef SL_CRASHPOINTS
            if (purge_kill && unlink(purge_kill) == 0)
                raise(SIGKILL); /* the test of the purge's "instance last" order */
#endif
            l->connect_ms = sl_mono_ms(); /* progress, as for EPOCHS */
            link_purge(l);
            return;
        }
        link_ping(l, C_PING); /* answered after everything before it */
    } else if (c->what == C_PING) {
        uatomic_set(&BSTATS->link[l->shard].latency_us, (uint64_t)(sl_mono_us() - c->sent_us));
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
    if (r && c->seq > l->answered_seq)
        l->answered_seq = c->seq; /* alive then: the run_id of its connect holds (rm17 L1) */
    if (r && r->type == REDIS_REPLY_ERROR) {
        uatomic_add(&BSTATS->link[l->shard].errors, 1);
        if (is_err(r, "NOSCRIPT") && c->script >= 0) {
            /* Scripts flushed behind our back: this one did not run.  The
             * link starts over (scripts loaded again), so nothing sent
             * after it runs out of order with a retry of it. */
            cmd_answer(c, SL_BR_UNAVAILABLE, NULL);
            cmd_free(c);
            link_fail(l, "NOSCRIPT: the scripts were flushed");
            wake_flush();
            return;
        }
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
    case C_PRES:
    case C_PRES_STATS: done_presence(c, r); break;
    case C_HEARTBEAT: done_heartbeat(c, r); break;
    case C_PRES_SYNC: done_pres_sync(c, r); break;
    case C_PRES_SCAN: done_pres_scan(c, r); break;
    case C_HISTORY: done_history(c, r); break;
    case C_SETUP:
    case C_INFO:
    case C_EPOCHS:
    case C_PURGE:
    case C_PING: done_setup(c, r); break;
    default: break;
    }
    if (r == NULL)
        cmd_answer(c, SL_BR_TIMEOUT, NULL);
    bool catchup = c->what == C_CATCHUP;
    cmd_free(c);
    if (catchup)
        catchup_next(l);
    wake_flush();
}

/* ------------------------------------------------------------ delivery */

/* ch has work waiting (a backlog, a reset or delete to make): retried
 * every loop turn, before anything new of the channel is delivered. */
static void work_add(bchan_t *ch)
{
    if (!ch->on_backlog) {
        ch->on_backlog = true;
        ch->bl_next = B.backlog;
        B.backlog = ch;
    }
}

static void backlog_figures(void)
{
    uatomic_set(&BSTATS->backlog, B.nbacklog);
    uatomic_set(&BSTATS->backlog_bytes, B.backlog_bytes);
}

/* Messages of ch that cannot all wait (the channel's or the node's bound):
 * they are dropped - never silently: the channel is reset at the last of
 * them, so its subscribers here resubscribe and are told. */
static void backlog_overflow(bchan_t *ch, bmsg_t *m)
{
    uint64_t n = ch->nbacklog + 1;
    char epoch[BR_EPOCH];
    /* A join / leave has no position of its own (its seq is the channel's
     * when it arrived, before a catch-up it waited for): the reset is at
     * the channel's newest, never back (rj17 L1). */
    snprintf(epoch, sizeof(epoch), "%s", m->presence ? ch->epoch : m->epoch);
    uint64_t last = m->presence ? ch->last : m->seq;
    free(m);
    uatomic_add(&BSTATS->dropped, n);
    SL_TEL(SL_EV_REDIS_DISCONNECTED, SL_WARN, SL_TF_SN("channel-id", ch->id, ch->idlen),
           SL_TF_I("dropped", n), SL_TF_S("reason", "backlog bound: channel reset"));
    chan_reset(ch, epoch, last);
    backlog_figures();
}

static void backlog_add(bchan_t *ch, bmsg_t *m)
{
    size_t bytes = sizeof(*m) + m->len;
    if (ch->nbacklog >= chan_backlog_max || B.backlog_bytes + bytes > BACKLOG_MAX_BYTES) {
        backlog_overflow(ch, m);
        return;
    }
    m->next = NULL;
    if (ch->backlog_tail)
        ch->backlog_tail->next = m;
    else
        ch->backlog = m;
    ch->backlog_tail = m;
    ch->nbacklog++;
    ch->backlog_bytes += bytes;
    B.nbacklog++;
    B.backlog_bytes += bytes;
    backlog_figures();
    work_add(ch);
}

/* A join / leave from Redis to this node's subscribers of the channel
 * (the origin's connection excluded there): no seq, not retained, ordered
 * with the channel's messages (it waits behind them here).  SL_AGAIN:
 * every inbox full, keep it for later. */
static int deliver_presence(sl_chan_t *lc, const bmsg_t *m)
{
    /* Whether a channel tells of joins and leaves is this node's setting
     * (its namespace's, not in Redis): a leave published for a dead or
     * restarted node's entry, or by a rewrite after a connect, goes out
     * whatever the channel - here it reaches only a join-leave channel's
     * subscribers (review rj17). */
    if (!lc->config.join_leave)
        return SL_OK;
    uint8_t hdr[SL_WS_MAX_HEADER];
    size_t h = sl_ws_encode_header(hdr, SL_WS_OP_TEXT, true, m->len, NULL);
    uint8_t *frame = malloc(h + m->len);
    if (frame == NULL) {
        uatomic_add(&BSTATS->presence_lost, 1);
        return SL_OK; /* lost: as a full inbox's would be */
    }
    memcpy(frame, hdr, h);
    memcpy(frame + h, m->json, m->len);
    uint64_t woken = 0;
    int rc = sl_chan_send_presence(REG, lc, frame, h + m->len, m->exclude, &woken);
    free(frame);
    if (rc == SL_CHAN_OVERLOADED)
        return SL_AGAIN;
    if (rc == SL_CHAN_NO_MEMORY)
        uatomic_add(&BSTATS->presence_lost, 1);
    B.wake |= woken;
    return SL_OK;
}

/* Hand one message to the local workers (it is not freed).  SL_AGAIN:
 * keep it for later. */
static int deliver_now(bchan_t *ch, bmsg_t *m)
{
    sl_chan_t *lc = sl_chan_find(REG, ch->id, ch->idlen);
    if (lc == NULL)
        return SL_OK; /* nobody here (any more) */
    uint64_t woken = 0;
    if (m->presence)
        return deliver_presence(lc, m);
    int rc = sl_chan_deliver(REG, lc, m->epoch, m->seq, m->json, m->len, m->exclude,
                             m->received_us, &woken);
    if (rc == SL_CHAN_OVERLOADED || rc == SL_CHAN_NO_MEMORY)
        return SL_AGAIN;
    if (rc == SL_OK) {
        B.wake |= woken;
        uatomic_add(&BSTATS->delivered, 1);
    }
    return SL_OK;
}

/* In order: behind whatever already waits.  Takes m. */
static void chan_deliver(bchan_t *ch, bmsg_t *m)
{
    if (m->presence) {
        if (ch->backlog || ch->reset_pending || deliver_now(ch, m) == SL_AGAIN)
            backlog_add(ch, m);
        else
            free(m);
        return;
    }
    if (ch->known && m->seq <= ch->last && strcmp(m->epoch, ch->epoch) == 0) {
        free(m); /* had it already (history and live overlap) */
        return;
    }
    snprintf(ch->epoch, sizeof(ch->epoch), "%s", m->epoch);
    ch->last = m->seq;
    ch->known = true;
    if (ch->backlog || ch->reset_pending || deliver_now(ch, m) == SL_AGAIN)
        backlog_add(ch, m);
    else
        free(m);
}

/* Every channel with work waiting, oldest first within each. */
static void backlog_retry(void)
{
    bchan_t **p = &B.backlog;
    while (*p) {
        bchan_t *ch = *p;
        if (ch->delete_pending)
            local_delete(ch);
        if (ch->reset_pending && !ch->delete_pending)
            chan_reset(ch, ch->reset_epoch, ch->reset_last);
        while (ch->backlog && !ch->reset_pending && !ch->delete_pending) {
            bmsg_t *m = ch->backlog;
            if (deliver_now(ch, m) == SL_AGAIN)
                break;
            ch->backlog = m->next;
            if (ch->backlog == NULL)
                ch->backlog_tail = NULL;
            ch->nbacklog--;
            ch->backlog_bytes -= sizeof(*m) + m->len;
            B.nbacklog--;
            B.backlog_bytes -= sizeof(*m) + m->len;
            free(m);
        }
        /* A catch-up page due once the workers caught up: sent now, first
         * in line for a turn (or forgotten: given up meanwhile). */
        if (ch->page_due && (!ch->holding || page_room(ch))) {
            ch->page_due = false;
            if (ch->holding)
                start_catchup(ch, CU_RESUME);
        }
        if (ch->backlog == NULL && !ch->reset_pending && !ch->delete_pending && !ch->page_due) {
            ch->on_backlog = false;
            *p = ch->bl_next;
        } else {
            p = &ch->bl_next;
        }
    }
    backlog_figures();
}

/* Hold m while ch catches up or waits for its turn.  Bounded (HOLD_MAX,
 * a quarter of --redis-max-held-bytes for ch, all of it for the node):
 * past a bound ch - this channel only, the one whose message does not fit
 * - gives up what it held and its catch-up and is reset at m, so its
 * subscribers resubscribe and are told (never more buffering). */
static void hold(bchan_t *ch, bmsg_t *m)
{
    size_t bytes = sizeof(*m) + m->len;
    uint64_t node_max = (uint64_t)sl_conf->redis_max_held_bytes;
    const char *why = ch->nheld >= HOLD_MAX                      ? "hold bound (messages)"
                      : ch->held_bytes + bytes > node_max / 4 ? "hold bound (channel bytes)"
                      : B.held_bytes + bytes > node_max       ? "hold bound (node bytes)"
                                                              : NULL;
    if (why && m->presence) {
        /* A join or leave that does not fit: dropped, counted, and the
         * channel's join-leave subscribers told presence-resync once what
         * is held is released - not a reset at its position, the channel's
         * before the gap, whose next live message would be a gap again and
         * start the same catch-up (rj17 L1).  A join storm costs no reset. */
        free(m);
        uatomic_add(&BSTATS->presence_lost, 1);
        ch->resync_due = true;
        return;
    }
    if (why) {
        uatomic_add(&BSTATS->dropped, ch->nheld + 1);
        uatomic_add(&BSTATS->hold_resets, 1);
        SL_TEL(SL_EV_REDIS_DISCONNECTED, SL_WARN, SL_TF_SN("channel-id", ch->id, ch->idlen),
               SL_TF_I("dropped", ch->nheld + 1), SL_TF_S("reason", why));
        char epoch[BR_EPOCH];
        snprintf(epoch, sizeof(epoch), "%s", m->epoch);
        uint64_t last = m->seq;
        free(m);
        drop_held(ch);
        /* The catch-up in flight is voided: its answer (a position before
         * this reset) would reset the channel again. */
        ch->holding = false;
        ch->catchup_gen++;
        chan_reset(ch, epoch, last);
        return;
    }
    m->next = NULL;
    if (ch->held_tail)
        ch->held_tail->next = m;
    else
        ch->held = m;
    ch->held_tail = m;
    ch->nheld++;
    ch->held_bytes += bytes;
    B.nheld++;
    B.held_bytes += bytes;
    held_figures();
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
    if (elen >= sizeof(((bmsg_t *)0)->epoch)) {
        /* Malformed (not made by our scripts): treated as a gap, so what
         * it carried is fetched - the catch-up gives the channel a proper
         * epoch if its own is the bad one (rm17 L1). */
        uatomic_add(&BSTATS->dropped, 1);
        if (ch->known && !ch->holding)
            start_catchup(ch, CU_NEW);
        return;
    }
    size_t jl = (size_t)(end - q);
    bmsg_t *m = malloc(sizeof(*m) + jl + 1);
    if (m == NULL)
        return; /* the next message's gap fetches it */
    m->next = NULL;
    m->presence = false;
    memcpy(m->epoch, f[0], elen);
    m->epoch[elen] = '\0';
    m->seq = strtoull(f[1], NULL, 10);
    bool origin = (size_t)(f[3] - f[2] - 1) == strlen(B.node) &&
                  memcmp(f[2], B.node, strlen(B.node)) == 0;
    m->exclude = origin ? strtoull(f[3], NULL, 10) : 0;
    m->received_us = sl_mono_us();
    m->len = jl;
    memcpy(m->json, q, jl);
    m->json[jl] = '\0';
    if (ch->holding) {
        hold(ch, m);
        return;
    }
    bool same = ch->known && strcmp(ch->epoch, m->epoch) == 0;
    if (ch->known && !same) {
        /* The channel's epoch changed in Redis (re-created, or Redis lost
         * writes): seqs started over or went back.  Subscribers here are
         * told; the new epoch's messages follow. */
        chan_reset(ch, m->epoch, m->seq - 1);
    } else if (same && m->seq > ch->last + 1) {
        /* Missed some (the link was lost): fetch them first, holding m
         * (under the hold bounds: m alone may pass them - then the
         * channel is reset at m and nothing is fetched). */
        hold(ch, m);
        if (ch->held)
            start_catchup(ch, CU_NEW);
        return;
    }
    chan_deliver(ch, m);
}

/* "J<origin>\n<exclude>\n<json>": a join or leave on the channel (no seq),
 * in order with its messages: held during a catch-up, behind a backlog. */
/* "<kind><origin>\n<exclude>\n<json>" (a join/leave, an rpc-request): the
 * json, and the connection to leave out - only when this node is the
 * origin (0: none).  False when malformed. */
static bool split_origin(const char *p, size_t n, uint64_t *exclude, const char **json)
{
    const char *end = p + n, *o = p + 1;
    const char *x = memchr(o, '\n', (size_t)(end - o));
    if (x == NULL)
        return false;
    x++;
    const char *j = memchr(x, '\n', (size_t)(end - x));
    if (j == NULL)
        return false;
    size_t nl = strlen(B.node);
    bool origin = (size_t)(x - o - 1) == nl && memcmp(o, B.node, nl) == 0;
    *exclude = origin ? strtoull(x, NULL, 10) : 0;
    *json = j + 1;
    return true;
}

static void on_presence_message(bchan_t *ch, const char *p, size_t n)
{
    const char *end = p + n, *j;
    uint64_t exclude;
    if (!split_origin(p, n, &exclude, &j))
        return;
    /* A channel here without join-leave (this node's setting) never shows
     * it (deliver_presence): not held, so never dropped at the hold's
     * bound and counted presence-lost for nothing (review re17 L5).  Nor
     * a channel with no record here (review rl17 L3: the link's
     * subscription outlives it by the linger, or a catch-up for one
     * reaped): nobody to show it to, and a subscriber that comes later is
     * not owed it - its record is made before its JOIN is sent, so its
     * JOIN runs in Redis after this frame was published, and its answer
     * already counts this join / leave. */
    sl_chan_t *lc = sl_chan_find(REG, ch->id, ch->idlen);
    if (lc == NULL || !lc->config.join_leave)
        return;
    size_t jl = (size_t)(end - j);
    bmsg_t *m = malloc(sizeof(*m) + jl + 1);
    if (m == NULL)
        return;
    m->next = NULL;
    m->presence = true;
    m->exclude = exclude;
    m->seq = ch->last;
    snprintf(m->epoch, sizeof(m->epoch), "%s", ch->epoch);
    m->received_us = sl_mono_us();
    m->len = jl;
    memcpy(m->json, j, jl);
    m->json[jl] = '\0';
    if (ch->holding)
        hold(ch, m);
    else
        chan_deliver(ch, m);
}

/* "R<origin>\n<exclude>\n<json>": an rpc-request for the channel's subscribers. */
static void on_rpc_request(bchan_t *ch, const char *p, size_t n)
{
    const char *end = p + n, *j;
    uint64_t exclude;
    if (!split_origin(p, n, &exclude, &j))
        return;
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
    const char *argv[3] = {"PUBLISH", ch, txt};
    size_t lens[3] = {7, strlen(ch), strlen(txt)};
    cmd_issue(c, 3, argv, lens);
    free(txt);
}

/* Another node's rpc-response for one of our requests: claim it here
 * (first response wins, as on one node) and answer the responder's node.
 * The claim records this process (SL_REG_BROKER_SLOT): if it dies before
 * removing the entry, the master's cleanup takes the claim over. */
static void node_rpc_response(json_t *m)
{
    const char *rid = json_string_value(json_object_get(m, "request-id"));
    const char *frame = json_string_value(json_object_get(m, "frame"));
    const char *reply_to = json_string_value(json_object_get(m, "reply-to"));
    uint32_t status = SL_BR_REQUEST_NOT_FOUND;
    sl_rpc_t *q = rid ? sl_rpc_find(REG, rid, strlen(rid)) : NULL;
    if (q && frame && sl_rpc_claim(q, SL_RPC_ANSWERED, SL_REG_BROKER_SLOT)) {
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
            if (!sl_rpc_unclaim(REG, q))
                status = SL_BR_REQUEST_NOT_FOUND; /* its requester left meanwhile: removed */
            else
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

static void on_node_message(link_t *l, const char *p, size_t n)
{
    if (n == 5 && memcmp(p, "!echo", 5) == 0) {
        /* Our own echo: this link's pub/sub connection is alive. */
        if (l)
            l->echo_sent_ms = 0;
        return;
    }
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
        bchan_t *ch = len <= SL_CHAN_ID_MAX ? chan_get(id, len) : NULL;
        if (ch)
            local_delete(ch);
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
        uint64_t reached = 0;
        if (sl_chan_broadcast(REG, workers, f, h + jl, &reached) == SL_OK)
            B.wake |= reached;
        free(f);
    }
}

/* ------------------------------------------------------------ pub/sub */

static void subscribe_chan(bchan_t *ch);

static link_t *link_of_sub(const redisAsyncContext *ac)
{
    for (uint32_t i = 0; i < B.nlinks; i++)
        if (B.link[i].sub == ac)
            return &B.link[i];
    return NULL;
}

/* Joins that waited for the channel's subscription run now: from here on
 * every message published after their script reaches us.  One whose
 * worker has given up on it (past its deadline) is not sent: it would
 * act after the client was told it failed. */
static void send_joins(bchan_t *ch)
{
    cmd_t *j = ch->joins;
    ch->joins = NULL;
    int64_t now = sl_mono_ms();
    while (j) {
        cmd_t *next = j->next;
        j->next = NULL;
        if (j->deadline && now > j->deadline) {
            uatomic_add(&BSTATS->expired, 1);
            j->answered = true;
            cmd_free(j);
        } else if (!room_for(j, (size_t)j->len)) {
            cmd_answer(j, SL_BR_OVERLOADED, NULL);
            cmd_free(j);
        } else if (cmd_send(j) != SL_OK) {
            cmd_answer(j, SL_BR_UNAVAILABLE, NULL);
            cmd_free(j);
        }
        j = next;
    }
}

/* Subscribed again after a lost link (or by a new broker): joins and
 * leaves published meanwhile never reached this node (they have no seq:
 * no catch-up brings them back), so its join-leave subscribers are told
 * presence-resync (ask presence again), in order with the channel's
 * messages, after what the catch-up brings. */
static void pres_resync(bchan_t *ch)
{
    sl_chan_t *lc = sl_chan_find(REG, ch->id, ch->idlen);
    if (lc == NULL || !lc->config.join_leave || uatomic_read(&lc->subscribers) == 0)
        return;
    json_t *f = json_pack("{s:s, s:s%}", "type", "presence-resync", "channel-id", ch->id,
                          (size_t)ch->idlen);
    char *ft = f ? json_dumps(f, JSON_COMPACT) : NULL;
    json_decref(f);
    if (ft == NULL)
        return;
    size_t fl = strlen(ft);
    char *m = malloc(fl + 4);
    if (m) {
        memcpy(m, "J\n0\n", 4); /* no origin: nobody excluded */
        memcpy(m + 4, ft, fl);
        on_presence_message(ch, m, fl + 4);
        uatomic_add(&BSTATS->presence_resyncs, 1);
    }
    free(m);
    free(ft);
}

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
                else if (data->str[0] == 'J')
                    on_presence_message(ch, data->str, data->len);
                else if (data->str[0] == 'R')
                    on_rpc_request(ch, data->str, data->len);
            }
        } else if (name->len == pl + 4 && memcmp(name->str + pl, ":ctl", 4) == 0) {
            on_control(data->str, data->len);
        } else {
            on_node_message(link_of_sub(ac), data->str, data->len);
        }
        wake_flush();
        return;
    }
    if (!chan) {
        /* The node's own channels: the pub/sub connection is ready. */
        link_t *l = link_of_sub(ac);
        if (strcmp(kind, "subscribe") == 0 && l && l->state == L_CONNECTING) {
            l->sub_ok = true;
            if (l->ping_ok)
                link_up(l);
        }
        return;
    }
    bchan_t *ch = chan_find(name->str + pl + 2, name->len - pl - 5);
    if (ch == NULL)
        return;
    if (strcmp(kind, "subscribe") == 0) {
        ch->sub = SUB_ON;
        uatomic_add(&BSTATS->link[ch->shard].subscribed, 1);
        send_joins(ch);
        /* Subscribed again after a lost link (or by a new broker): what was
         * published meanwhile is fetched (even from seq 0). */
        if (ch->known && !ch->holding)
            start_catchup(ch, CU_NEW);
        if (ch->known)
            pres_resync(ch);
        if (!ch->want)
            subscribe_chan(ch); /* unwanted meanwhile: unsubscribe */
    } else if (strcmp(kind, "unsubscribe") == 0) {
        if (ch->sub == SUB_ON || ch->sub == SUB_OFF_PENDING)
            uatomic_add(&BSTATS->link[ch->shard].subscribed, -1);
        ch->sub = SUB_NONE;
        forget_position(ch);
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
    const sl_conf_namespace_t *ns = sl_conf_namespace(sl_conf, id, len, NULL);
    return (sl_chan_config_t){.max_subscribers = ns->max_subscribers,
                              .message_retention = ns->message_retention,
                              .rpc_timeout_ms = ns->rpc_timeout_ms,
                              .telemetry_enabled = true,
                              .lingers = true};
}

/* Fetch what ch missed after ch->last, holding what arrives meanwhile.
 * At most CATCHUPS_MAX per link at a time (rm17 M1: after a reconnect
 * every channel catches up; their answers are not all held at once); the
 * others wait their turn, in order, already holding.  `turn`: CU_NEW
 * and CU_NEXT_PAGE queue at the back (the next page is sent in the turn
 * of the page just answered: done_catchup hands that turn over first, so
 * one is free); CU_RESUME (a page that was due) goes to the front. */
static void start_catchup(bchan_t *ch, int turn)
{
    link_t *l = &B.link[ch->shard];
    ch->holding = true;
    ch->page_due = false;
    ch->catchup_gen++; /* an older answer still in flight no longer counts */
    if (l->ncatchup >= CATCHUPS_MAX) {
        if (!ch->cu_waiting) {
            ch->cu_waiting = true;
            if (turn == CU_RESUME) {
                ch->cu_next = l->cu_wait;
                l->cu_wait = ch;
                if (l->cu_wait_tail == NULL)
                    l->cu_wait_tail = ch;
            } else {
                ch->cu_next = NULL;
                if (l->cu_wait_tail)
                    l->cu_wait_tail->cu_next = ch;
                else
                    l->cu_wait = ch;
                l->cu_wait_tail = ch;
            }
            l->ncu_wait++;
            uatomic_add(&BSTATS->link[l->shard].catchups_waited, 1);
            cu_shown(l);
        }
        return;
    }
    cmd_t *c = cmd_new(l, C_CATCHUP, NULL);
    if (c == NULL) {
        ch->holding = false;
        drop_held(ch); /* the next message's gap starts it again */
        return;
    }
    cmd_chan(c, ch);
    c->gen = ch->catchup_gen;
    sl_chan_config_t cfg = local_config(ch->id, ch->idlen);
    char ep[16];
    new_epoch(ep);
    args_t a = {.n = 0};
    argk(&a, ch->id, ch->idlen, "c");
    argk(&a, ch->id, ch->idlen, "h");
    argp(&a, "channels");
    argk(&a, ch->id, ch->idlen, "x");
    argi(&a, (int64_t)ch->last);
    args(&a, ch->epoch);
    args(&a, ep);
    argi(&a, sl_now_ms());
    argi(&a, cfg.max_subscribers);
    argi(&a, cfg.message_retention);
    argi(&a, cfg.rpc_timeout_ms);
    argi(&a, cfg.telemetry_enabled);
    arg(&a, ch->id, ch->idlen);
    argi(&a, cfg.lingers ? 1 : 0);
    argi(&a, CATCHUP_PAGE_MSGS);
    argi(&a, CATCHUP_PAGE_BYTES);
    if (cmd_script(c, SL_BRS_CATCHUP, 4, &a) != SL_OK) {
        ch->holding = false;
        drop_held(ch);
        return;
    }
    c->counted = true;
    ch->lapse_due = false;
    l->ncatchup++;
    cu_shown(l);
}

/* A catch-up of l finished: the waiting ones take their turns. */
static void catchup_next(link_t *l)
{
    while (l->state == L_UP && l->cu_wait && l->ncatchup < CATCHUPS_MAX) {
        bchan_t *ch = l->cu_wait;
        l->cu_wait = ch->cu_next;
        if (l->cu_wait == NULL)
            l->cu_wait_tail = NULL;
        ch->cu_waiting = false;
        ch->cu_next = NULL;
        l->ncu_wait--;
        cu_shown(l);
        if (ch->holding) /* else given up meanwhile (a reset) */
            start_catchup(ch, CU_NEW);
    }
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
    char nc[96];
    snprintf(nc, sizeof(nc), "nodech:%s", B.node);
    argp(&a, nc);
    argk(&a, ch->id, ch->idlen, "c");
    argk(&a, ch->id, ch->idlen, "h");
    args(&a, B.node);
    argi(&a, count);
    arg(&a, ch->id, ch->idlen);
    args(&a, node_prefix());
    argi(&a, sl_conf->channel_linger_ms);
    if (cmd_script(c, SL_BRS_SYNC, 4, &a) == SL_OK)
        ch->synced = count;
}

static int reconcile_cb(sl_table_node_t *n, void *arg)
{
    sl_chan_t *lc = (sl_chan_t *)n;
    uint32_t subs = uatomic_read(&lc->subscribers);
    bchan_t *ch = subs ? chan_get(lc->id, lc->node.klen) : chan_find(lc->id, lc->node.klen);
    if (ch == NULL)
        return 0;
    ch->want = ch->want || subs > 0; /* marked; cleared below for the rest */
    return 0;
}

/* At this broker's start, before it takes a request from this walk on
 * (the workers submit none before its pid is published, after it): the
 * channels with subscribers here whose delivery a dead broker had started
 * resume where it stopped, so what was published meanwhile is fetched
 * from the history once subscribed (catch-up), even from seq 0.  Where
 * it stopped is in the registry (made exact by the channel lock's
 * recovery) - but only if the cluster ever positioned the channel
 * (sl_chan_t.cluster_pos: a join's answer, a delivery or a reset took its
 * epoch, under the lock, redone by the recovery), or one of its
 * subscriptions was confirmed (its join answered: whatever the local
 * position then, the catch-up tells the truth - a message the dead broker
 * still held for it is lost, and its subscribers are told, 1012).
 * Otherwise the position is the new local channel's own epoch and seq 0,
 * and every subscription is still join_pending: made here, its join not
 * answered - queued, in flight, or not submitted yet (a worker between
 * the local subscribe and the submission: it passes the pid check once
 * this walk is over, and its join is not refused as stale when it read
 * the new gen; review rh17 M1).  Such a join positions the channel
 * (done_join), as every subscription made while this broker runs; taking
 * that own position for it, the catch-up at the subscription found
 * "another epoch" and reset the channel: its fresh subscribers closed
 * with 1012 though nothing was lost (flake7, rh17 M1).  (Adopted, the
 * subscriptions a broker answered count as served: sl_chan_t.served_upto,
 * left by the dead broker as it was - a high-water mark (a waiting
 * subscription numbered below an answered one counts too: the safe
 * side, review rq17 L1), but not every subscription
 * present at the walk, which counted a fresh one as served and kept a
 * stale position for it: review rp17 M1; with none served, the position
 * is forgotten again at the first reconcile, before the subscription:
 * rh17 L3, rn17 M1.)  join_pending and
 * cluster_pos are each one store, either value a valid state: a
 * subscription confirmed (cleared by its worker after this broker's
 * answer) was positioned first.  arg: adopt_t (ok false: no memory for a
 * record, the walk stops; adopt_walk). */
typedef struct {
    bool ok;
    uint64_t n; /* channels adopted */
} adopt_t;

static int adopt_cb(sl_table_node_t *n, void *arg)
{
    adopt_t *a = arg;
    sl_chan_t *lc = (sl_chan_t *)n;
    if (uatomic_read(&lc->subscribers) == 0)
        return 0;
    char ep[16];
    bool cluster = false;
    uint64_t last = sl_chan_position(lc, ep, &cluster);
    if (!cluster && !has_served(lc, 0))
        return 0; /* every subscription waits for its join: positioned by it */
    bchan_t *ch = SL_FAULT("broker.adopt.alloc") ? NULL : chan_get(lc->id, lc->node.klen);
    if (ch == NULL) {
        a->ok = false;
        return 1;
    }
    snprintf(ch->epoch, sizeof(ch->epoch), "%s", ep);
    ch->last = last;
    ch->known = true;
    a->n++;
    return 0;
}

/* The start-up walk, before the links connect (their subscriptions and
 * catch-ups need the adopted positions).  No memory for a record (review
 * rh17 L1): counted (start-no-memory), told once (broker-no-memory), the
 * links' down-reason says so, and they stay down - the workers' requests
 * are refused broker-unavailable meanwhile, as with Redis down - until a
 * heartbeat's walk gets through (adopt_cb is idempotent: the registry
 * position does not move while no link is up).  Exiting instead had the
 * master respawn a broker that failed the same way, saying nothing. */
static bool adopt_walk(void)
{
    adopt_t a = {.ok = true};
    sl_table_foreach(REG->channels, adopt_cb, &a);
    if (a.ok) {
        B.adopting = false;
        uatomic_add(&BSTATS->adopted_channels, a.n);
        return true;
    }
    uatomic_add(&BSTATS->start_no_memory, 1);
    if (!B.adopting)
        SL_TEL(SL_EV_BROKER_NO_MEMORY, SL_ERROR_LEVEL, SL_TF_S("during", "start-up walk"),
               SL_TF_I("adopted", (int64_t)a.n));
    B.adopting = true;
    for (uint32_t i = 0; i < B.nlinks; i++)
        set_reason(&B.link[i], "no memory to resume the channels (retried every heartbeat)");
    return false;
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
            if (c->joins)
                c->want = true; /* a join waits for the subscription */
            if (count != c->synced)
                sync_count(c, count);
            /* A position kept from a subscription that ended (a lost link:
             * link_fail keeps it for the subscribers here, who are caught
             * up from it once subscribed again) with none of those left -
             * only fresh subscribers (none served: has_served, rn17 M1),
             * whose joins position the channel:
             * forgotten before the subscription, as at an UNSUBSCRIBE's
             * confirmation.  Caught up from it, they were reset (1012) when
             * the history no longer had it or the epoch had changed
             * (review rh17 L3).  link_up reconciles before any SUBSCRIBE. */
            if (c->known && c->sub == SUB_NONE && !c->backlog && !c->reset_pending &&
                !has_served(lc, served_of(lc)))
                forget_position(c);
            subscribe_chan(c);
            if (c->lapse_due && (!c->want || c->delete_pending))
                c->lapse_due = false; /* nobody here to tell: nothing to make again */
            else if (c->lapse_due && c->known && c->sub == SUB_ON && !c->holding &&
                     !c->cu_waiting && !c->reset_pending && B.link[c->shard].state == L_UP)
                start_catchup(c, CU_NEW); /* refused when the lapse came (link full) */
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
    bchan_t *ch = l[0] <= SL_CHAN_ID_MAX ? chan_find(s[0], l[0]) : NULL;
    if (ch && ch->nbacklog > CHAN_PUSHBACK) {
        /* Our workers cannot take this channel's messages as fast as they
         * come: push back on this node's publishers of it (as full inboxes
         * do on one node) rather than let the backlog, and the latency,
         * grow.  Other channels are not held up. */
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
    cmd_script(c, SL_BRS_PUBLISH, 4, &a);
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
    if (id == NULL || len > SL_CHAN_ID_MAX)
        return answer(e->from, e->tag, SL_BR_BAD, NULL);
    link_t *lk = link_of(id, len);
    if (lk->state != L_UP)
        return answer(e->from, e->tag, SL_BR_UNAVAILABLE, NULL);
    bchan_t *ch = chan_get(id, len);
    stats_forget_missing(id, len);
    cmd_t *c = ch ? cmd_new(lk, C_JOIN, e) : NULL;
    if (c == NULL)
        return answer(e->from, e->tag, SL_BR_OVERLOADED, NULL);
    cmd_chan(c, ch);
    c->sub_no = (uint64_t)jint(j, "sub-no");
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
    argp(&a, "channels");
    char nc[96];
    snprintf(nc, sizeof(nc), "nodech:%s", B.node);
    argp(&a, nc);
    argk(&a, id, len, "x");
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
    argi(&a, history_bytes(false));
    /* Formatted now; sent once the channel's subscription is confirmed, so
     * no message published after the script can be missed. */
    const char *argv[ARGS_MAX + 3];
    size_t alen[ARGS_MAX + 3];
    int k = 0;
    argv[k] = "EVALSHA";
    alen[k++] = 7;
    argv[k] = script_sha[SL_BRS_JOIN];
    alen[k++] = 40;
    argv[k] = "6";
    alen[k++] = 1;
    for (int i = 0; i < a.n; i++, k++) {
        argv[k] = a.v[i];
        alen[k] = a.l[i];
    }
    char *buf = NULL;
    int n = redisFormatCommandArgv(&buf, k, argv, alen);
    if (n < 0) {
        cmd_answer(c, SL_BR_BAD, NULL);
        cmd_free(c);
        return;
    }
    c->buf = buf;
    c->len = n;
    c->script = SL_BRS_JOIN;
    if (ch->sub == SUB_ON) {
        c->next = NULL;
        ch->joins = c;
        send_joins(ch);
        return;
    }
    /* In request order behind the others waiting. */
    cmd_t **p = &ch->joins;
    while (*p)
        p = &(*p)->next;
    c->next = NULL;
    *p = c;
    subscribe_chan(ch);
}

static void req_rpc(const sl_inbox_entry_t *e, json_t *j)
{
    size_t len;
    const char *id = jstr(j, "channel-id", &len);
    const char *frame = jstr(j, "frame", NULL);
    if (id == NULL || frame == NULL || len > SL_CHAN_ID_MAX)
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
    cmd_script(c, SL_BRS_RPC, 3, &a);
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
    if (id == NULL || len > SL_CHAN_ID_MAX)
        return answer(e->from, e->tag, SL_BR_BAD, NULL);
    link_t *lk = link_of(id, len);
    if (lk->state != L_UP)
        return answer(e->from, e->tag, SL_BR_UNAVAILABLE, NULL);
    args_t a = {.n = 0};
    cmd_t *c;
    if (strcmp(op, "create") == 0) {
        stats_forget_missing(id, len);
        c = cmd_new(lk, C_ADMIN_CREATE, e);
        if (c == NULL)
            return answer(e->from, e->tag, SL_BR_OVERLOADED, NULL);
        char ep[16];
        new_epoch(ep);
        argk(&a, id, len, "c");
        argp(&a, "channels");
        argk(&a, id, len, "h");
        argk(&a, id, len, "n");
        argk(&a, id, len, "x");
        arg(&a, id, len);
        args(&a, ep);
        argi(&a, sl_now_ms());
        argi(&a, jint(j, "max-subscribers"));
        argi(&a, jint(j, "message-retention"));
        argi(&a, jint(j, "rpc-timeout-ms"));
        argi(&a, jint(j, "telemetry-enabled"));
        cmd_script(c, SL_BRS_CREATE, 5, &a);
    } else if (strcmp(op, "delete") == 0) {
        c = cmd_new(lk, C_ADMIN_DELETE, e);
        if (c == NULL)
            return answer(e->from, e->tag, SL_BR_OVERLOADED, NULL);
        argk(&a, id, len, "c");
        argk(&a, id, len, "h");
        argk(&a, id, len, "n");
        argp(&a, "channels");
        argp(&a, "ctl");
        argk(&a, id, len, "x");
        argp(&a, "nodes");
        arg(&a, id, len);
        args(&a, node_prefix());
        /* The deletion is remembered as long as a history could be: a
         * node that missed the notice does not bring it back. */
        argi(&a, sl_conf->redis_history_ttl_s * 1000);
        /* The control message is published on the channel's instance,
         * which every broker also subscribes to (see link_connect). */
        args(&a, B.prefix);
        cmd_script(c, SL_BRS_DELETE, 7, &a);
    } else if (strcmp(op, "info") == 0) {
        c = cmd_new(lk, C_ADMIN_INFO, e);
        if (c == NULL)
            return answer(e->from, e->tag, SL_BR_OVERLOADED, NULL);
        argk(&a, id, len, "c");
        argk(&a, id, len, "h");
        argk(&a, id, len, "n");
        args(&a, node_prefix());
        argi(&a, INFO_HISTORY_MSGS);
        argi(&a, history_bytes(true));
        cmd_script(c, SL_BRS_INFO, 3, &a);
    } else {
        answer(e->from, e->tag, SL_BR_BAD, NULL);
    }
}

/* A channel's local count changed (a leave): bring Redis in line. */
static void req_sync(json_t *j)
{
    size_t len;
    const char *id = jstr(j, "channel-id", &len);
    if (id == NULL || len > SL_CHAN_ID_MAX)
        return;
    sl_chan_t *lc = sl_chan_find(REG, id, len);
    int64_t count = lc ? (int64_t)uatomic_read(&lc->subscribers) : 0;
    bchan_t *ch = count ? chan_get(id, len) : chan_find(id, len);
    if (ch == NULL)
        return;
    ch->want = count > 0 || ch->joins;
    if (count != ch->synced)
        sync_count(ch, count);
    subscribe_chan(ch);
    chan_maybe_free(ch);
}

/* ------------------------------------------------------------ presence */

#ifdef SL_CRASHPOINTS
static const char *pres_lose; /* SL_TEST_PRES_LOSE (req_presence_change) */
#endif

/* The link's pass goes to ch's bucket: started there when none runs,
 * taken back to it when it is past it (ch has something to send). */
static void pres_rewind(bchan_t *ch)
{
    link_t *l = &B.link[ch->shard];
    uint32_t b = sl_broker_shard(ch->id, ch->idlen, BUCKETS);
    if (!l->pres_pass || b < l->pres_bucket) {
        l->pres_pass = true;
        l->pres_bucket = b;
    }
}

/* A presence write of channel id was lost (its link full, or down): the
 * channel's entries are rewritten from the registry (PRES_SYNC) when the
 * link takes commands again, while it stays up - review ro17 M4.  The
 * link's pass goes on from where it is (pres_rewind).  A rewrite of the
 * channel under way is not started again (review rx17 M1: under a
 * sustained overload a big channel's would never end): it finishes, and
 * another follows it (pres_again; the one under way may have listed the
 * entry before the loss).  No memory for the record: the next pass
 * mends it. */
static void pres_mend(const char *id, size_t len)
{
    bchan_t *ch = chan_get(id, len);
    if (ch == NULL)
        return;
    ch->pres_due = true;
    if (ch->pres_slice)
        ch->pres_again = true;
    pres_rewind(ch);
}

/* A subscriber's presence entry on this node (set) or its removal, with
 * its join / leave frame when the channel tells of them: one script, so
 * the entry and the frame published on the channel go together. */
static void req_presence_change(json_t *j, bool set)
{
    size_t len, cl;
    const char *id = jstr(j, "channel-id", &len), *conn = jstr(j, "conn-id", &cl);
    const char *frame = jstr(j, "frame", NULL);
    json_t *entry = json_object_get(j, "entry");
    if (id == NULL || len > SL_CHAN_ID_MAX || conn == NULL || (set && !json_is_object(entry)))
        return;
    link_t *l = link_of(id, len);
    cmd_t *c = cmd_new(l, C_SYNC, NULL);
    if (c == NULL) {
        uatomic_add(&BSTATS->presence_lost, 1);
        pres_mend(id, len);
        return;
    }
    char *etxt = set ? json_dumps(entry, JSON_COMPACT) : NULL;
    char pk[64], npr[64];
    snprintf(pk, sizeof(pk), "p:%s", B.node);
    snprintf(npr, sizeof(npr), "nodepr:%s", B.node);
    char ps[64];
    snprintf(ps, sizeof(ps), "ps:%s", B.node);
    args_t a = {.n = 0};
    argk(&a, id, len, pk);
    argp(&a, npr);
    argk(&a, id, len, "m");
    argk(&a, id, len, ps);
    arg(&a, conn, cl);
    if (set)
        args(&a, etxt ? etxt : "{}");
    arg(&a, id, len);
    args(&a, frame ? frame : "");
    args(&a, B.node);
    argi(&a, jint(j, "conn-no"));
    /* Not sent (the link is down or full): counted, and the channel's
     * entries rewritten once the link takes commands again (pres_mend;
     * down: the pass after the next connect does it anyway). */
    int rc = SL_OK;
#ifdef SL_CRASHPOINTS
    /* Test build: the writes of channels named from SL_TEST_PRES_LOSE on
     * are lost as to a full link (a sustained overload, review rx17 M1). */
    if (pres_lose && len >= strlen(pres_lose) && memcmp(id, pres_lose, strlen(pres_lose)) == 0) {
        cmd_free(c);
        rc = SL_ERROR;
    }
#endif
    if (rc == SL_OK)
        rc = cmd_script(c, set ? SL_BRS_PRES_SET : SL_BRS_PRES_DEL, 4, &a);
    if (rc != SL_OK) {
        uatomic_add(&BSTATS->presence_lost, 1);
        pres_mend(id, len);
    }
    free(etxt);
}

static json_t *stats_doc(int64_t clients, int64_t users)
{
    return json_pack("{s:I, s:o}", "num-clients", (json_int_t)clients, "num-users",
                     users >= 0 ? json_integer(users) : json_null());
}

/* The answer to a PRES_GET / PRES_STATS: its status, and its document
 * (*doc, owned by the caller) when SL_BR_OK. */
static uint32_t presence_result(cmd_t *c, redisReply *r, json_t **doc)
{
    *doc = NULL;
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements < 1)
        return no_reply(r);
    if (rint_(el(r, 0)) < 0)
        return SL_BR_NOT_FOUND; /* no such channel */
    if (c->what == C_PRES_STATS) {
        *doc = stats_doc(rint_(el(r, 0)), rint_(el(r, 1)));
    } else {
        /* The cursor of the next page: node index (from 1) and HSCAN
         * cursor in one number (0: none). */
        int64_t next = rint_(el(r, 0)), nlive = rint_(el(r, 3));
        uint64_t cur = strtoull(rstr(el(r, 1)), NULL, 10);
        redisReply *a = el(r, 2);
        json_t *clients = json_object();
        for (size_t i = 0; a && i + 1 < a->elements; i += 2) {
            json_t *e = json_loadb(a->element[i + 1]->str, a->element[i + 1]->len, 0, NULL);
            if (e)
                json_object_setn_new(clients, a->element[i]->str, a->element[i]->len, e);
        }
        bool more = next >= 1 && next <= nlive && next < (1 << 20) && cur <= 0xffffffffu;
        *doc = json_pack("{s:o, s:I}", "clients", clients, "next-cursor",
                         (json_int_t)(more ? ((uint64_t)next << 32 | cur) : 0));
    }
    return SL_BR_OK;
}

/* A presence-stats answer goes to the requests that waited for it too,
 * and serves those of the next PRES_STATS_CACHE_MS. */
static void done_presence(cmd_t *c, redisReply *r)
{
    json_t *d;
    uint32_t st = presence_result(c, r, &d);
    cmd_answer(c, st, d);
    bchan_t *ch = c->what == C_PRES_STATS ? c->ch : NULL;
    /* A not-found is kept only while this node has no interest in the
     * channel (review rb17 M1): a JOIN waiting in ch->joins for its
     * SUBSCRIBE, or subscribers here (want), may make it any moment, after
     * this answer was read - its own subscriber must not be told "no such
     * channel". */
    if (ch && (st == SL_BR_OK || (st == SL_BR_NOT_FOUND && !ch->stats_made && ch->joins == NULL &&
                                  !ch->want))) {
        ch->stats_at_ms = sl_mono_ms();
        ch->stats_clients = st == SL_BR_OK ? rint_(el(r, 0)) : -1;
        ch->stats_users = st == SL_BR_OK ? rint_(el(r, 1)) : -1;
    }
    if (ch) {
        for (uint32_t i = 0; i < ch->nstats_wait; i++)
            answer(ch->stats_wait[i].worker, ch->stats_wait[i].tag, st, d);
        free(ch->stats_wait);
        ch->stats_wait = NULL;
        ch->nstats_wait = 0;
        ch->stats_busy = false;
    }
    json_decref(d);
}

/* ---------------------------------------------- presence after a connect */

/* PRES_SYNC_MAX; the test build (SL_CRASHPOINTS) takes another from
 * SL_TEST_PRES_SYNC_MAX, so a test can make a channel "big" with a few
 * subscribers. */
static uint32_t pres_sync_max = PRES_SYNC_MAX;

typedef struct {
    char *buf;
    size_t len, cap;
    uint32_t n;
    uint64_t last;      /* the sub_no of the last entry taken */
    const char *last_conn; /* ... its conn-id (valid until the next quiescent state) */
    bool over, oom;
} pres_text_t;

static int pres_entry_cb(const sl_sub_t *s, void *arg)
{
    pres_text_t *t = arg;
    if (uatomic_read(&s->join_pending))
        return 0; /* its JOIN not answered: not a member yet (ro17 L2) */
    /* A slice's bound in entries and in bytes (review ro17 M2: one script
     * a few ms of Redis at most, whatever the infos' size). */
    if (++t->n > pres_sync_max || t->len >= PRES_SYNC_BYTES) {
        t->over = true; /* the rest in the next slice */
        return 1;
    }
    const char *conn = sl_sub_conn_id(s), *user = sl_sub_user(s), *info = sl_sub_info(s);
    json_t *ij = info ? json_loads(info, JSON_DECODE_ANY, NULL) : NULL;
    /* The entry as the worker's PRES_SET writes it (pubsub.c presence_entry). */
    json_t *e = json_pack("{s:s, s:o, s:o}", "conn-id", conn, "user",
                          user ? json_string(user) : json_null(), "info", ij ? ij : json_null());
    char *et = e ? json_dumps(e, JSON_COMPACT) : NULL;
    json_decref(e);
    if (et == NULL)
        return 0;
    size_t cl = strlen(conn), el_ = strlen(et), need = t->len + cl + el_ + 2;
    if (need > t->cap) {
        size_t cap = t->cap ? t->cap : 4096;
        while (cap < need)
            cap *= 2;
        char *nb = realloc(t->buf, cap);
        if (nb == NULL) {
            free(et);
            t->oom = true;
            return 1;
        }
        t->buf = nb;
        t->cap = cap;
    }
    memcpy(t->buf + t->len, conn, cl);
    t->buf[t->len + cl] = '\n';
    memcpy(t->buf + t->len + cl + 1, et, el_);
    t->buf[t->len + cl + 1 + el_] = '\n';
    t->len = need;
    t->last = s->sub_no;
    t->last_conn = conn;
    free(et);
    return 0;
}

/* PS_FULL: the link took nothing (full); PS_DONE: the channel is done;
 * PS_MORE: a slice sent, more to send; PS_WAIT: nothing sent, the answer
 * to its sweep slice first. */
enum { PS_FULL, PS_DONE, PS_MORE, PS_WAIT };
enum { PK_ALL = 1, PK_SLICE, PK_SWEEP, PK_DROP };

/* The arguments every PRES_SYNC call shares (KEYS p nodepr m ps). */
static void pres_sync_args(args_t *a, const char *id, size_t len, bool join_leave,
                           const char *entries, size_t elen, const char *mode, const char *cur)
{
    char pk[64], npr[64], ps[64];
    snprintf(pk, sizeof(pk), "p:%s", B.node);
    snprintf(npr, sizeof(npr), "nodepr:%s", B.node);
    snprintf(ps, sizeof(ps), "ps:%s", B.node);
    argk(a, id, len, pk);
    argp(a, npr);
    argk(a, id, len, "m");
    argk(a, id, len, ps);
    arg(a, id, len);
    args(a, B.node);
    args(a, join_leave ? "1" : "0");
    arg(a, entries, elen);
    args(a, mode);
    args(a, cur);
    argi(a, pres_sync_max); /* "all": more stale entries than this past the wanted: the sweep */
}

/* A big channel's sweep: one HSCAN slice of this node's entries in Redis,
 * those no slice listed removed (with leaves). */
static int pres_sweep(link_t *l, bchan_t *ch)
{
    if (ch->pres_slice == 3 || ch->pres_wait)
        return PS_WAIT; /* its answer first; the slices' answers first (an error: no sweep) */
    if (!pres_room(l)) {
        uatomic_add(&BSTATS->presence_sync_deferred, 1);
        return PS_FULL;
    }
    cmd_t *c = cmd_new(l, C_PRES_SYNC, NULL);
    if (c == NULL)
        return PS_FULL;
    sl_chan_t *lc = sl_chan_find(REG, ch->id, ch->idlen);
    args_t a = {.n = 0};
    pres_sync_args(&a, ch->id, ch->idlen, lc && lc->config.join_leave, "", 0, "sweep",
                   ch->pres_sweep_cur);
    if (cmd_script(c, SL_BRS_PRES_SYNC, 4, &a) != SL_OK)
        return PS_FULL;
    l->pres_inflight++;
    cmd_chan(c, ch);
    c->gen = ch->pres_gen;
    c->pkind = PK_SWEEP;
    ch->pres_slice = 3;
    return PS_MORE;
}

/* Rewrite this node's entries of channel id in Redis from its registry
 * (PRES_SYNC): at once when it has at most pres_sync_max subscribers
 * here, else (ch, the channel's record, needed) one slice per call, then
 * the sweep (ro17 H2).  PS_FULL: the link takes no more now; PS_DONE;
 * PS_MORE: call again (a later turn). */
static int pres_sync(link_t *l, const char *id, size_t len, bchan_t *ch)
{
    if (ch && ch->pres_slice == 4)
        return PS_WAIT; /* the answer to its "all" first */
    if (ch && ch->pres_slice >= 2)
        return pres_sweep(l, ch);
    if (!pres_room(l)) {
        /* Next turn, or on an answer: nothing walked or built meanwhile
         * (rx17 L1), counted so a test sees it (rc17 L1). */
        uatomic_add(&BSTATS->presence_sync_deferred, 1);
        return PS_FULL;
    }
    pres_text_t t = {0};
    uint64_t before = ch && ch->pres_slice == 1 ? ch->pres_before : 0;
    sl_chan_t *lc = sl_chan_find(REG, id, len);
    bool resumed = false;
    /* The broker is an online reader.  A later slice resumes after the
     * last entry of the one before (found in O(1)), not from the list's
     * head: a channel of N costs O(N) over its slices (review rs 6). */
    if (lc && before)
        sl_chan_members_after(REG, lc, ch->pres_after, before, UINT32_MAX, NULL, &resumed,
                              pres_entry_cb, &t);
    else if (lc)
        sl_chan_members(lc, 0, pres_entry_cb, &t);
    if (before && !resumed)
        uatomic_add(&BSTATS->presence_sync_rewalks, 1);
    const char *mode = before ? "more" : t.over ? "first" : "all";
    if (t.oom || (t.over && ch == NULL)) {
        /* No memory for the text (or a big channel without a record here,
         * which the nodepr scan never asks for): left as it is, counted;
         * the next pass tries again. */
        uatomic_add(&BSTATS->presence_sync_skipped, 1);
        free(t.buf);
        if (ch)
            ch->pres_slice = 0;
        return PS_DONE;
    }
    cmd_t *c = cmd_new(l, C_PRES_SYNC, NULL);
    if (c == NULL) {
        free(t.buf);
        return PS_FULL;
    }
    args_t a = {.n = 0};
    pres_sync_args(&a, id, len, lc && lc->config.join_leave, t.buf ? t.buf : "", t.len, mode,
                   "0");
    int rc = cmd_script(c, SL_BRS_PRES_SYNC, 4, &a);
    if (rc != SL_OK) {
        free(t.buf);
        return PS_FULL;
    }
    l->pres_inflight++;
    if (ch) {
        cmd_chan(c, ch);
        c->gen = ch->pres_gen;
        c->pkind = mode[0] == 'a' ? PK_ALL : PK_SLICE;
        ch->pres_wait++;
    }
    if (mode[0] == 'a') {
        free(t.buf);
        if (ch)
            ch->pres_slice = 4; /* its answer may ask for the sweep (rx17 M2) */
        return PS_DONE;
    }
    if (t.over) {
        ch->pres_slice = 1;
        ch->pres_before = t.last;
        snprintf(ch->pres_after, sizeof(ch->pres_after), "%s", t.last_conn ? t.last_conn : "");
        free(t.buf);
    } else {
        free(t.buf);
        ch->pres_slice = 2; /* every slice sent: the sweep next */
        snprintf(ch->pres_sweep_cur, sizeof(ch->pres_sweep_cur), "0");
    }
    return PS_MORE;
}

static void pres_pump(link_t *l);

/* The nodepr scan of l waits ms from now (at least: a longer wait holds). */
static void pres_scan_later(link_t *l, uint32_t ms)
{
    int64_t t = sl_mono_ms() + ms;
    if (t > l->pres_scan_retry_ms)
        l->pres_scan_retry_ms = t;
}

/* A drop, or a nodepr slice, answered with an error (READONLY, BUSY,
 * LOADING, NOPERM...; review rm17 L2: a drop's was not counted, and its
 * stale entries waited for the next pass): counted like a channel
 * rewrite's, and the nodepr set is scanned again from "0" after the same
 * backoff (0.5 s doubling to 30 s; one doubling for the errors of one
 * wait; a new pass resets it).  A slice in flight is void (pres_restart):
 * its cursor may be past the id. */
static void pres_scan_error(link_t *l)
{
    uatomic_add(&BSTATS->presence_sync_errors, 1);
    if (sl_mono_ms() >= l->pres_scan_retry_ms) {
        l->pres_drop_backoff_ms =
            l->pres_drop_backoff_ms ? SL_MIN(l->pres_drop_backoff_ms * 2, 30000u) : 500;
        pres_scan_later(l, l->pres_drop_backoff_ms);
    }
    l->pres_scan = true;
    l->pres_restart = l->pres_scan_sent;
    snprintf(l->pres_cursor, sizeof(l->pres_cursor), "0");
}

/* One of the rewrite's commands answered (or failed: r NULL): the link
 * may send the next (reply-paced, review ro17 M2). */
static void pres_answered(link_t *l)
{
    if (l->pres_inflight)
        l->pres_inflight--;
    if (l->state == L_UP)
        pres_pump(l);
}

/* A channel's rewrite ended (its "all" answered, or its sweep's last
 * slice): presence-synced counts it (channels, not scripts: review rx17
 * L4); another follows when a write of it was lost meanwhile (M1). */
static void pres_ended(bchan_t *ch, bool counted)
{
    ch->pres_slice = 0;
    if (counted) {
        uatomic_add(&BSTATS->presence_synced, 1);
        ch->pres_backoff_ms = 0;
        ch->pres_retry_ms = 0;
    }
    if (ch->pres_again) {
        ch->pres_again = false;
        ch->pres_due = true;
        pres_rewind(ch);
    } else {
        ch->pres_due = false; /* freed with the command if nothing else keeps it */
    }
}

/* An error answer to one of ch's rewrite scripts (Redis at maxmemory,
 * say): its rewrite is abandoned - no sweep, which would remove the
 * entries of live subscribers a failed slice did not list - and done
 * again after a backoff (0.5 s, doubled up to 30 s), so an OOM Redis is
 * not asked every turn (review rx17 L3). */
static void pres_abandon(bchan_t *ch)
{
    uatomic_add(&BSTATS->presence_sync_errors, 1);
    ch->pres_slice = 0;
    ch->pres_gen++; /* answers still to come are ignored */
    ch->pres_again = false;
    ch->pres_due = true;
    ch->pres_backoff_ms = ch->pres_backoff_ms ? SL_MIN(ch->pres_backoff_ms * 2, 30000u) : 500;
    ch->pres_retry_ms = sl_mono_ms() + ch->pres_backoff_ms;
    pres_rewind(ch);
}

static void done_pres_sync(cmd_t *c, redisReply *r)
{
    bchan_t *ch = c->ch;
    link_t *l = c->link;
    bool ok = r && r->type == REDIS_REPLY_ARRAY && r->elements >= 3;
    if (ch && (c->pkind == PK_SLICE || c->pkind == PK_ALL) && ch->pres_wait)
        ch->pres_wait--;
    if (ch && c->gen == ch->pres_gen && r && !ok) {
        pres_abandon(ch); /* an error answer (r NULL: the link is lost, its next pass redoes it) */
        pres_answered(l);
        return;
    }
    if (c->pkind == PK_DROP && r && !ok)
        pres_scan_error(l);
    if (ok) {
        int64_t changes = rint_(el(r, 0)) + rint_(el(r, 1));
        if (changes > 0)
            uatomic_add(&BSTATS->presence_sync_changes, (uint64_t)changes);
        if (c->pkind == PK_DROP)
            uatomic_add(&BSTATS->presence_dropped_foreign, 1); /* not a rewrite (rl17 L2) */
        else if (!ch)
            uatomic_add(&BSTATS->presence_synced, 1);
    }
    if (ch && c->gen == ch->pres_gen && c->pkind == PK_SWEEP && ch->pres_slice == 3) {
        /* A sweep slice: the next from its cursor; at "0" (or no answer:
         * the link is lost, the pass after the connect does it) done. */
        const char *cur = ok ? rstr(el(r, 2)) : "0";
        if (strcmp(cur, "0") == 0 || strlen(cur) >= sizeof(ch->pres_sweep_cur)) {
            pres_ended(ch, ok);
        } else {
            snprintf(ch->pres_sweep_cur, sizeof(ch->pres_sweep_cur), "%s", cur);
            ch->pres_slice = 2;
            pres_rewind(ch); /* the pass may have gone past it (rx17 M1) */
        }
    } else if (ch && c->gen == ch->pres_gen && c->pkind == PK_ALL && ch->pres_slice == 4) {
        if (ok && r->elements >= 4 && rint_(el(r, 3)) == 1) {
            /* Redis held more stale entries than one script removes: the
             * script wrote the wanted ones and listed them in ps; the
             * sweep's slices remove the rest (review rx17 M2). */
            ch->pres_slice = 2;
            snprintf(ch->pres_sweep_cur, sizeof(ch->pres_sweep_cur), "0");
            ch->pres_due = true;
            pres_rewind(ch);
        } else {
            pres_ended(ch, ok);
        }
    }
    if (ch && ch->pres_slice == 2 && !ch->pres_wait)
        pres_rewind(ch); /* every slice answered: its sweep may go (the pass may be past it) */
    pres_answered(l);
}

/* Whether links a and b are known to reach different Redis instances (or
 * dbs of one): both up, with the run_id their INFO gave at this connect.
 * Two --redis entries may reach one instance (a socket and a port, a
 * name and its IP, a DNS failover) and then share one nodepr set: what
 * one lists for the other's shard is the other's live entry (review rl17
 * M1), so anything not known is "the same" (LD_SAME).  A run_id is true
 * of a connection only while it answers (review rm17 L1): b hung on a
 * failed primary still looks up, with the old primary's run_id, while a
 * reconnected to the promoted replica that b will reach too.  So b's is
 * believed only if b answered a command sent after a's INFO answer, or
 * b's own INFO came after a's; else LD_STALE: not yet known (b's
 * heartbeat answers within HEARTBEAT_MS, or b times out and is down). */
enum { LD_SAME, LD_DIFFER, LD_STALE };
static int links_differ(const link_t *a, const link_t *b)
{
    if (a == b || a->state != L_UP || b->state != L_UP || !a->run_id[0] || !b->run_id[0])
        return LD_SAME;
    if (same_instance(a, b))
        return LD_SAME;
    if (b->answered_seq <= a->info_seq && b->info_seq <= a->info_seq)
        return LD_STALE;
    return LD_DIFFER;
}


/* A channel of another instance listed in link l's nodepr set (written
 * under an earlier --redis list): its entries on l are stale whatever its
 * subscribers here (its own link holds theirs), and nodepr on l keeps
 * listing it.  Removed on l itself (review rc17 L5: marked due, it was
 * rewritten on its own link, and l kept it for ever, due every pass) in
 * one O(1) script (PRES_SYNC "drop": UNLINK, SREM; no leave - nobody
 * follows the channel on l), counted in presence-dropped-foreign when
 * answered.  Paced like the rewrite's other scripts (review rl17 L1): the
 * caller checks the room first; false: not sent (no memory, or the link
 * refused it), the caller scans the slice again later. */
static bool pres_drop(link_t *l, const char *id, size_t len)
{
    cmd_t *c = cmd_new(l, C_PRES_SYNC, NULL);
    args_t a = {.n = 0};
    pres_sync_args(&a, id, len, false, "", 0, "drop", "0");
    if (c == NULL)
        return false;
    c->pkind = PK_DROP;
    if (cmd_script(c, SL_BRS_PRES_SYNC, 4, &a) != SL_OK)
        return false;
    l->pres_inflight++;
    l->pres_sent++;
    return true;
}

/* A slice of the node's nodepr set: its channels without a subscriber
 * here lose their entries (PRES_SYNC with none); another instance's
 * channels lose theirs on this link (pres_drop) - only when that other
 * link is known to be another instance (links_differ; else the entry is
 * the other link's own, and its scan looks at it).  Drops keep the
 * rewrite's pacing (review rl17 L1): at most PRES_SYNC_INFLIGHT in flight
 * besides this scan, PRES_SYNC_TURN a turn, and only with room on the
 * link; one that cannot go now stops the slice and keeps the cursor, so
 * the same slice is scanned again (once this turn's budget or a reply
 * allows; what was dropped is gone from it by then: the drops run before
 * the next SSCAN on this connection). */
static void done_pres_scan(cmd_t *c, redisReply *r)
{
    link_t *l = c->link;
    l->pres_scan_sent = false;
    if (r && r->type == REDIS_REPLY_ERROR && l->state == L_UP) {
        /* rm17 L2: scanned again after the backoff - also a slice a drop's
         * error had voided (pres_restart): BUSY and LOADING answer the drop
         * and the SSCAN behind it alike, and the give-up below would wait
         * for the next pass (review ro17 L1).  pres_scan_error sets
         * pres_restart again only if another SSCAN is in flight. */
        l->pres_restart = false;
        pres_scan_error(l);
        pres_answered(l);
        return;
    }
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements < 2 || l->state != L_UP) {
        l->pres_scan = false; /* given up: the next connect starts again */
        pres_answered(l);
        return;
    }
    if (l->pres_restart) {
        l->pres_restart = false; /* a new pass: from cursor 0 */
        pres_answered(l);
        return;
    }
    redisReply *ids = el(r, 1);
    bool again = false;
    for (size_t i = 0; ids && i < ids->elements; i++) {
        redisReply *id = ids->element[i];
        if (id->type != REDIS_REPLY_STRING || id->len > SL_CHAN_ID_MAX)
            continue;
        uint32_t shard = sl_broker_shard(id->str, id->len, B.nlinks);
        if (shard != (uint32_t)l->shard) {
            int ld = links_differ(l, &B.link[shard]);
            if (ld == LD_SAME)
                continue; /* the same instance, or not known: nothing to drop */
            if (ld == LD_STALE) {
                /* The other link has not answered since l's connect: the
                 * slice is scanned again later (rm17 L1), not dropped. */
                pres_scan_later(l, PRES_FRESH_WAIT_MS);
                again = true;
                break;
            }
            if (l->pres_inflight > PRES_SYNC_INFLIGHT || l->pres_sent >= PRES_SYNC_TURN) {
                again = true; /* on a reply, or next turn */
                break;
            }
            if (!pres_room(l)) {
                uatomic_add(&BSTATS->presence_sync_deferred, 1);
                l->pres_sent = PRES_SYNC_TURN; /* the link is full: next turn */
                again = true;
                break;
            }
            if (!pres_drop(l, id->str, id->len)) {
                l->pres_sent = PRES_SYNC_TURN;
                again = true;
                break;
            }
            continue;
        }
        sl_chan_t *lc = sl_chan_find(REG, id->str, id->len);
        /* Marked due, sent by the pump (review rx17 M2: paced like the
         * rest, at most PRES_SYNC_INFLIGHT in flight; with a record, so a
         * mode "all" that finds too many stale entries goes on with the
         * sweep).  Kept due while the link is full (review ro17 M4). */
        if (lc == NULL || uatomic_read(&lc->subscribers) == 0)
            pres_mend(id->str, id->len);
    }
    if (!again) {
        snprintf(l->pres_cursor, sizeof(l->pres_cursor), "%s", rstr(el(r, 0)));
        if (strcmp(l->pres_cursor, "0") == 0)
            l->pres_scan = false;
    }
    pres_answered(l);
}

/* Send what the rewrite on l may send now: channel by channel from
 * bucket pres_bucket on, then the node's nodepr set, while fewer than
 * PRES_SYNC_INFLIGHT of its commands are in flight and fewer than
 * PRES_SYNC_TURN went this loop turn.  Called each turn and on each
 * answer (review ro17 M2: paced by Redis's replies, so a pass over big
 * channels never queues more than a few scripts ahead of the link's other
 * commands). */
static void pres_pump(link_t *l)
{
    while (l->pres_pass) {
        if (l->pres_bucket >= BUCKETS) {
            l->pres_pass = false;
            break;
        }
        bool stay = false;
        for (bchan_t *ch = B.map[l->pres_bucket], *next; ch; ch = next) {
            next = ch->next;
            if (!ch->pres_due || (int)ch->shard != l->shard)
                continue;
            if (ch->pres_retry_ms && sl_mono_ms() < ch->pres_retry_ms) {
                /* Its backoff after an error answer (rx17 L3): the pass
                 * comes back to it then (pres_turn). */
                if (!l->pres_retry_ms || ch->pres_retry_ms < l->pres_retry_ms)
                    l->pres_retry_ms = ch->pres_retry_ms;
                if (l->pres_bucket < l->pres_retry_bucket)
                    l->pres_retry_bucket = l->pres_bucket;
                continue;
            }
            if (l->pres_inflight >= PRES_SYNC_INFLIGHT || l->pres_sent >= PRES_SYNC_TURN)
                return; /* on an answer, or next turn */
            int st = pres_sync(l, ch->id, ch->idlen, ch);
            if (st == PS_FULL)
                return; /* this link is full: next turn */
            if (st == PS_WAIT)
                continue; /* its answer first; the pass goes on, the answer brings it back (rx17 M1) */
            l->pres_sent++;
            if (st == PS_MORE) {
                stay = true; /* a big channel: its next slice (the pass waits at it) */
                break;
            }
            ch->pres_due = false;
            chan_maybe_free(ch); /* a record kept only for its rewrite (pres_mend) */
        }
        if (!stay)
            l->pres_bucket++; /* every due channel of this bucket sent */
    }
    if (l->pres_scan && !l->pres_scan_sent && l->pres_inflight < PRES_SYNC_INFLIGHT &&
        l->pres_sent < PRES_SYNC_TURN && sl_mono_ms() >= l->pres_scan_retry_ms) {
        if (!pres_room(l)) {
            /* No room for the drops a slice may ask for: the slice is not
             * asked (review rm17 L3: it was, every turn, and deferred at
             * its first drop); one deferral a turn, like a channel's. */
            uatomic_add(&BSTATS->presence_sync_deferred, 1);
            l->pres_sent = PRES_SYNC_TURN;
            return;
        }
        char npr[160];
        snprintf(npr, sizeof(npr), "%s:nodepr:%s", B.prefix, B.node);
        const char *argv[5] = {"SSCAN", npr, l->pres_cursor, "COUNT", "32"};
        size_t lens[5] = {5, strlen(npr), strlen(l->pres_cursor), 5, 2};
        if (cmd_issue(cmd_new(l, C_PRES_SCAN, NULL), 5, argv, lens) == SL_OK) {
            l->pres_scan_sent = true;
            l->pres_inflight++;
            l->pres_sent++;
        }
    }
}

/* One loop turn's share of the rewrite after a connect (pres_pump). */
static void pres_turn(void)
{
    uint64_t gen = uatomic_read(&BSTATS->presence_pass_gen);
    cmm_smp_rmb(); /* the gen before the queue's entries */
    /* A dead worker's subscriptions were removed: the pass starts on every
     * link up (review ro17 L1), but only once the broker queue is drained,
     * so a PRES_SET the worker queued before it died is sent before the
     * rewrite, not after it (review ro17 M3); else the next turn. */
    if (gen != B.pres_gen_seen && drain_queue()) {
        B.pres_gen_seen = gen;
        for (uint32_t i = 0; i < B.nlinks; i++)
            if (B.link[i].state == L_UP)
                pres_pass_start(&B.link[i]);
    }
    for (uint32_t i = 0; i < B.nlinks; i++) {
        link_t *l = &B.link[i];
        l->pres_sent = 0;
        if (l->pres_retry_ms && sl_mono_ms() >= l->pres_retry_ms) {
            l->pres_retry_ms = 0; /* a channel's backoff over: the pass goes back to it */
            if (!l->pres_pass || l->pres_retry_bucket < l->pres_bucket) {
                l->pres_pass = true;
                l->pres_bucket = l->pres_retry_bucket;
            }
            l->pres_retry_bucket = BUCKETS;
        }
        if (l->state == L_UP)
            pres_pump(l); /* a full link returns: the next link still gets its turn (ro17 L1) */
    }
}

/* presence / presence-stats over every live node (answered). */
static void req_presence(const sl_inbox_entry_t *e, json_t *j, bool stats)
{
    size_t len;
    const char *id = jstr(j, "channel-id", &len);
    if (id == NULL || len > SL_CHAN_ID_MAX)
        return answer(e->from, e->tag, SL_BR_BAD, NULL);
    link_t *l = link_of(id, len);
    bchan_t *ch = NULL;
    if (stats) {
        /* Each answer walks the channel's entries in Redis (review rj17
         * H2): the last answer serves for PRES_STATS_CACHE_MS (review ro17
         * M5: a client asking again after each answer costs Redis one walk
         * a second per channel and node), and one is in flight per
         * channel: requests that come meanwhile wait for its answer (at
         * most PRES_STATS_WAIT_MAX; past that, refused overloaded). */
        ch = chan_get(id, len);
        if (ch && ch->stats_at_ms && sl_mono_ms() - ch->stats_at_ms < PRES_STATS_CACHE_MS) {
            if (ch->stats_clients < 0)
                return answer(e->from, e->tag, SL_BR_NOT_FOUND, NULL);
            json_t *d = stats_doc(ch->stats_clients, ch->stats_users);
            answer(e->from, e->tag, SL_BR_OK, d);
            json_decref(d);
            return;
        }
        if (ch && ch->stats_busy) {
            if (ch->nstats_wait >= PRES_STATS_WAIT_MAX)
                return answer(e->from, e->tag, SL_BR_OVERLOADED, NULL);
            if ((ch->nstats_wait & (ch->nstats_wait - 1)) == 0) { /* 0, 1, 2, 4 ...: grow */
                void *nw = realloc(ch->stats_wait,
                                   (ch->nstats_wait ? ch->nstats_wait * 2 : 1) * sizeof(*ch->stats_wait));
                if (nw == NULL)
                    return answer(e->from, e->tag, SL_BR_OVERLOADED, NULL);
                ch->stats_wait = nw;
            }
            ch->stats_wait[ch->nstats_wait].worker = e->from;
            ch->stats_wait[ch->nstats_wait++].tag = e->tag;
            return;
        }
    } else {
        uint64_t cursor = (uint64_t)jint(j, "cursor");
        if (cursor && ((cursor >> 32) == 0 || (cursor >> 32) >= (1u << 20)))
            return answer(e->from, e->tag, SL_BR_BAD, NULL); /* the worker checks it first */
    }
    cmd_t *c = cmd_new(l, stats ? C_PRES_STATS : C_PRES, e);
    if (c == NULL)
        return answer(e->from, e->tag, SL_BR_OVERLOADED, NULL);
    if (ch) {
        cmd_chan(c, ch);
        ch->stats_busy = true;
        ch->stats_made = false;
    }
    args_t a = {.n = 0};
    argp(&a, "nodes");
    argk(&a, id, len, "c");
    args(&a, B.prefix);
    arg(&a, id, len);
    if (stats) {
        argi(&a, jint(j, "max-walk"));
    } else {
        uint64_t cursor = (uint64_t)jint(j, "cursor");
        argi(&a, cursor ? (int64_t)(cursor >> 32) : 1);
        argi(&a, (int64_t)(cursor & 0xffffffffu));
        argi(&a, jint(j, "limit"));
    }
    if (cmd_script(c, stats ? SL_BRS_PRES_STATS : SL_BRS_PRES_GET, 2, &a) != SL_OK && ch)
        ch->stats_busy = false; /* answered and freed, never sent */
}

/* ------------------------------------------------------------ history */

/* A page of a channel's history (SL_BRQ_HISTORY): every node answers from
 * the one history in Redis, whatever its own ring holds (a node with no
 * subscriber of the channel has none; one that stopped following it has a
 * stale one).  One read-only script; on the channel's shard's command
 * connection, so it runs after every publish this node sent before it. */
typedef struct hist_wait {
    struct hist_wait *next, *prev; /* the link's FIFO */
    struct hist_wait *hnext;       /* its hw_hash bucket */
    sl_inbox_entry_t e; /* its msg already released (NULL) */
    json_t *j;          /* the request (one reference) */
    uint64_t want;
} hist_wait_t;

/* True when the worker has given up on the request (told its client
 * broker-timeout, or will), or it is from before a broker respawn. */
static bool given_up(const sl_inbox_entry_t *e, int64_t now)
{
    return (e->deadline && now > e->deadline) ||
           (e->status >> 16) != (uatomic_read(&BSTATS->gen) & 0xffff);
}

/* What a page may take: max-bytes, or fewer if limit messages of at most
 * --max-message-size each take less (review rb17 M2: a `limit:1` does not
 * hold a whole max-bytes of the budget).  The first message goes in a page
 * whatever its size, so never less than one message. */
static uint64_t history_want(json_t *j)
{
    int64_t mb = jint(j, "max-bytes"), lim = jint(j, "limit");
    uint64_t item = (uint64_t)sl_conf->max_message_size + SL_CHAN_ID_MAX + HISTORY_ITEM_OVERHEAD;
    uint64_t want = mb > 0 ? (uint64_t)mb : 1;
    if (lim >= 0 && lim <= SL_HISTORY_LIMIT_MAX && (uint64_t)lim * item < want)
        want = (uint64_t)lim * item;
    return SL_MAX(want, 1);
}

static void history_send(link_t *l, const sl_inbox_entry_t *e, json_t *j, uint64_t want);

static bool history_fits(const link_t *l, uint64_t want)
{
    return l->history_bytes == 0 || l->history_bytes + want <= HISTORY_INFLIGHT_BYTES;
}

static struct hist_wait **hw_bucket(link_t *l, int from, uint64_t tag)
{
    uint64_t h = (tag ^ ((uint64_t)(uint32_t)from << 32)) * 0x9E3779B97F4A7C15ull;
    return &l->hw_hash[h >> 54 & (HW_BUCKETS - 1)];
}

/* w joins the tail of l's wait list (and its hash). */
static void hw_link(link_t *l, hist_wait_t *w)
{
    struct hist_wait **b = hw_bucket(l, w->e.from, w->e.tag);
    w->hnext = *b;
    *b = w;
    w->next = NULL;
    w->prev = l->hw_tail;
    if (l->hw_tail)
        l->hw_tail->next = w;
    else
        l->hw_head = w;
    l->hw_tail = w;
    l->nhw++;
}

/* w leaves l's wait list and its hash (the caller answers or sends it). */
static void hw_unlink(link_t *l, hist_wait_t *w)
{
    struct hist_wait **b = hw_bucket(l, w->e.from, w->e.tag);
    while (*b != w)
        b = &(*b)->hnext;
    *b = w->hnext;
    if (w->prev)
        w->prev->next = w->next;
    else
        l->hw_head = w->next;
    if (w->next)
        w->next->prev = w->prev;
    else
        l->hw_tail = w->prev;
    l->nhw--;
}

/* A waiting request taken off the list (hw_unlink), never sent, answered
 * `status` (its record is still there: the worker's deadline is later
 * than the request's), and freed. */
static void history_unwait(link_t *l, hist_wait_t *w, uint32_t status)
{
    if (status == SL_BR_TIMEOUT) /* waited its whole time (rg17 L2: not a Redis timeout) */
        uatomic_add(&BSTATS->link[l->shard].history_expired, 1);
    answer(w->e.from, w->e.tag, status, NULL);
    json_decref(w->j);
    free(w);
}

/* Room on l for one more history command (a few hundred bytes) without a
 * refusal: a full link keeps the rest waiting (review rf17 L2), the next
 * tick tries again.  A link that is not up answers them unavailable. */
static bool history_room(const link_t *l)
{
    return l->state != L_UP ||
           (l->ninflight < inflight_max && l->inflight_bytes + 4096 <= INFLIGHT_BYTES_MAX);
}

/* Sends the waiting requests that now fit, in order; answers those past
 * their deadline broker-timeout at once (review rf17 L1: not at the
 * worker's later deadline; all of them when sweep: from the tick). */
static void history_pump(link_t *l, bool sweep)
{
    int64_t now = sl_mono_ms();
    if (sweep) {
        for (hist_wait_t *w = l->hw_head, *n; w; w = n) {
            n = w->next;
            if (given_up(&w->e, now)) {
                hw_unlink(l, w);
                history_unwait(l, w, SL_BR_TIMEOUT);
            }
        }
    }
    while (l->hw_head) {
        hist_wait_t *w = l->hw_head;
        bool gone = given_up(&w->e, now);
        if (!gone && (!history_fits(l, w->want) || !history_room(l)))
            break;
        hw_unlink(l, w);
        if (gone) {
            history_unwait(l, w, SL_BR_TIMEOUT);
            continue;
        }
        history_send(l, &w->e, w->j, w->want);
        json_decref(w->j);
        free(w);
    }
    uatomic_set(&BSTATS->link[l->shard].history_waiting, l->nhw);
}

/* The worker's SL_BRQ_CANCEL: request (from, tag) is taken off its link's
 * wait list if it still waits (review rf17 H1), and answered
 * broker-unavailable (not done) so the worker's record goes; one already
 * sent (or answered) is not there: nothing to do.  One hash bucket a
 * link (hw_hash: O(1), review rg17 L4), nothing when no link has any
 * waiting. */
static void req_cancel(const sl_inbox_entry_t *e)
{
    for (uint32_t i = 0; i < B.nlinks; i++) {
        link_t *l = &B.link[i];
        if (l->nhw == 0)
            continue;
        for (hist_wait_t *w = *hw_bucket(l, e->from, e->tag); w; w = w->hnext) {
            if (w->e.tag != e->tag || w->e.from != e->from)
                continue;
            hw_unlink(l, w);
            uatomic_add(&BSTATS->link[l->shard].history_cancelled, 1);
            /* (Not counted as unavailable: nobody is told it.) */
            if (sl_brq_result(REG, w->e.from, w->e.tag, SL_BR_UNAVAILABLE, NULL, 0) == SL_OK)
                wake_worker(w->e.from);
            json_decref(w->j);
            free(w);
            uatomic_set(&BSTATS->link[l->shard].history_waiting, l->nhw);
            return;
        }
    }
}

/* The link failed (or the broker stops): its waiting requests were never
 * sent, and are answered broker-unavailable now (review rf17 L3), as the
 * joins waiting for a SUBSCRIBE are. */
static void history_fail_waiting(link_t *l)
{
    while (l->hw_head) {
        hist_wait_t *w = l->hw_head;
        hw_unlink(l, w);
        history_unwait(l, w, SL_BR_UNAVAILABLE);
    }
    uatomic_set(&BSTATS->link[l->shard].history_waiting, l->nhw);
}

static void hist_cb(evutil_socket_t fd, short what, void *arg)
{
    for (uint32_t i = 0; i < B.nlinks; i++)
        history_pump(&B.link[i], false);
    wake_flush(); /* the workers of requests answered there (refused, unavailable, timed out) */
}

static void req_history(const sl_inbox_entry_t *e, json_t *j)
{
    size_t len;
    const char *id = jstr(j, "channel-id", &len);
    if (id == NULL || len > SL_CHAN_ID_MAX)
        return answer(e->from, e->tag, SL_BR_BAD, NULL);
    link_t *l = link_of(id, len);
    uint64_t want = history_want(j);
    if (l->hw_head || !history_fits(l, want) || !history_room(l)) {
        hist_wait_t *w = l->nhw < HISTORY_WAIT_MAX ? malloc(sizeof(*w)) : NULL;
        if (w == NULL) {
            uatomic_add(&BSTATS->link[l->shard].history_refused, 1);
            return answer(e->from, e->tag, SL_BR_OVERLOADED, NULL);
        }
        w->e = *e;
        w->e.msg = NULL; /* released by drain_queue */
        w->j = json_incref(j);
        w->want = want;
        hw_link(l, w);
        uatomic_add(&BSTATS->link[l->shard].history_waited, 1);
        uatomic_set(&BSTATS->link[l->shard].history_waiting, l->nhw);
        return;
    }
    history_send(l, e, j, want);
}

static void history_send(link_t *l, const sl_inbox_entry_t *e, json_t *j, uint64_t want)
{
    size_t len;
    const char *id = jstr(j, "channel-id", &len);
    cmd_t *c = cmd_new(l, C_HISTORY, e);
    if (c == NULL)
        return answer(e->from, e->tag, SL_BR_OVERLOADED, NULL);
    /* Held until the command is freed (answered, failed with the link, or
     * never sent): cmd_free gives it back. */
    c->hist_bytes = want;
    l->history_bytes += want;
    uatomic_set(&BSTATS->link[l->shard].history_bytes, l->history_bytes);
    args_t a = {.n = 0};
    argk(&a, id, len, "c");
    argk(&a, id, len, "h");
    argi(&a, jint(j, "since"));
    argi(&a, json_is_true(json_object_get(j, "reverse")) ? 1 : 0);
    argi(&a, jint(j, "limit"));
    argi(&a, jint(j, "max-bytes"));
    argi(&a, jint(j, "min-at"));
    cmd_script(c, SL_BRS_HISTORY, 2, &a);
}

#ifdef SL_CRASHPOINTS
/* The test build delays every history answer by SL_TEST_HISTORY_DELAY_MS
 * (review rb17 L1): a channel message that arrives meanwhile must wait on
 * the subscriber's connection behind the pending history-result (the
 * worker's per-channel deferred slot), which a test can then see. */
static int64_t history_delay_ms;

typedef struct {
    int worker;
    uint64_t tag;
    uint32_t status;
    json_t *doc;
} late_answer_t;

static void late_answer_cb(evutil_socket_t fd, short what, void *arg)
{
    late_answer_t *la = arg;
    answer(la->worker, la->tag, la->status, la->doc);
    wake_flush();
    json_decref(la->doc);
    free(la);
}
#endif

static void history_answer(cmd_t *c, uint32_t status, json_t *doc)
{
#ifdef SL_CRASHPOINTS
    late_answer_t *la = history_delay_ms > 0 && !c->answered ? malloc(sizeof(*la)) : NULL;
    if (la) {
        *la = (late_answer_t){c->worker, c->tag, status, json_incref(doc)};
        struct timeval tv = {history_delay_ms / 1000, (history_delay_ms % 1000) * 1000};
        if (event_base_once(B.base, -1, EV_TIMEOUT, late_answer_cb, la, &tv) == 0) {
            c->answered = true;
            return;
        }
        json_decref(la->doc);
        free(la);
    }
#endif
    cmd_answer(c, status, doc);
}

static void done_history(cmd_t *c, redisReply *r)
{
    if (r == NULL || r->type != REDIS_REPLY_ARRAY) {
        history_answer(c, no_reply(r), NULL);
        return;
    }
    int64_t st = rint_(el(r, 0));
    if (st != 0) {
        history_answer(c, (uint32_t)st, NULL);
        return;
    }
    /* As publish parsed them (JSON_ALLOW_NUL: a \u0000 in data). */
    char *txt = raw_array(el(r, 4));
    json_t *msgs = txt ? json_loads(txt, JSON_ALLOW_NUL, NULL) : NULL;
    free(txt);
    json_t *d = msgs ? json_pack("{s:s, s:I, s:b, s:o}", "epoch", rstr(el(r, 1)), "top-seq",
                                 (json_int_t)rint_(el(r, 2)), "more", rint_(el(r, 3)) != 0,
                                 "messages", msgs)
                     : NULL;
    history_answer(c, d ? SL_BR_OK : SL_BR_OVERLOADED, d);
    json_decref(d);
}

static void handle(const sl_inbox_entry_t *e)
{
    uatomic_add(&BSTATS->requests, 1);
    if (given_up(e, sl_mono_ms())) {
        /* The worker has given up on it (told its client broker-timeout,
         * or will): doing it now would act behind the client's back. */
        uatomic_add(&BSTATS->expired, 1);
        return;
    }
    if (e->kind == SL_BRQ_PUBLISH) {
        req_publish(e, e->status & SL_BRQ_F_ADMIN);
        return;
    }
    if (e->kind == SL_BRQ_CANCEL) {
        req_cancel(e);
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
    case SL_BRQ_PRESENCE_SET: req_presence_change(j, true); break;
    case SL_BRQ_PRESENCE_DEL: req_presence_change(j, false); break;
    case SL_BRQ_PRESENCE: req_presence(e, j, false); break;
    case SL_BRQ_PRESENCE_STATS: req_presence(e, j, true); break;
    case SL_BRQ_HISTORY: req_history(e, j); break;
    default: answer(e->from, e->tag, SL_BR_BAD, NULL); break;
    }
    json_decref(j);
}

/* Bounded per turn so that Redis replies and pub/sub get their turn. */
/* Handles up to 4096 entries of the broker queue; true when it found the
 * queue empty. */
static bool drain_queue(void)
{
    sl_inbox_t *q = BSTATS->queue;
    sl_inbox_entry_t e;
    bool empty = true;
    for (int n = 0;; n++) {
        if (n == 4096) {
            empty = false;
            break;
        }
        if (!sl_inbox_pop(q, &e, NULL))
            break;
        /* Its payload is freed right after use: killed at any point, we
         * leak at most this one object. */
        handle(&e);
        sl_chan_msg_unref(REG, e.msg);
    }
    wake_flush();
    return empty;
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
    /* Freeing calls every pending callback with a NULL reply: each command
     * in flight is answered broker-timeout (it may have run). */
    redisAsyncContext *c = l->cmd, *s2 = l->sub;
    l->cmd = l->sub = NULL;
    l->ping_ok = l->sub_ok = false;
    l->echo_sent_ms = 0;
    if (c)
        redisAsyncFree(c);
    if (s2)
        redisAsyncFree(s2);
    l->pres_inflight = 0; /* every one answered (NULL) by the free */
    /* Channel subscriptions of this link are gone: joins that waited for
     * one are answered (never sent: not done), the rest is redone when the
     * link is back. */
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
                drop_held(ch);
            }
            ch->resync_due = false; /* told at the resubscribe */
            ch->page_due = false;
            ch->cu_waiting = false;
            ch->cu_next = NULL;
        }
    l->cu_wait = l->cu_wait_tail = NULL;
    l->ncu_wait = 0;
    cu_shown(l);
    history_fail_waiting(l);
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
        if (l->addr[0]) {
            /* TCP: the kernel notices a peer gone silent too. */
            int on = 1, idle = 15, intvl = 5, cnt = 3;
            setsockopt(ac->c.fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof(on));
            setsockopt(ac->c.fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
            setsockopt(ac->c.fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl));
            setsockopt(ac->c.fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
        }
        return;
    }
}

/* A connection to the link's instance: its Unix socket, or the address
 * resolved (off the loop) from its host. */
static redisAsyncContext *open_conn(link_t *l)
{
    const sl_conf_redis_t *r = &sl_conf->redis[l->shard];
    redisAsyncContext *ac = r->path[0] ? redisAsyncConnectUnix(r->path)
                                       : redisAsyncConnect(l->addr, r->port);
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

static void link_ping(link_t *l, int what)
{
    cmd_t *p = cmd_new(l, what, NULL);
    const char *argv[1] = {"PING"};
    size_t lens[1] = {4};
    cmd_issue(p, 1, argv, lens);
}

/* At every connect: is this the Redis whose data we know (its run id)? */
static void link_epochs(link_t *l)
{
    if (l->run_id[0] == '\0') {
        link_ping(l, C_PING); /* INFO without a run id: nothing to compare */
        return;
    }
    char base[16];
    new_epoch(base);
    base[8] = '\0';
    args_t a = {.n = 0};
    argp(&a, "runid");
    argp(&a, "channels");
    argp(&a, "renew");
    args(&a, l->run_id);
    args(&a, base);
    args(&a, B.prefix);
    argi(&a, EPOCHS_SLICE);
    cmd_script(cmd_new(l, C_EPOCHS, NULL), SL_BRS_EPOCHS, 3, &a);
}

/* At every connect, after the epochs: this node's entries and counts of
 * a previous master under the same --node-id go (PRES_PURGE), before
 * anything of this process is written on the link. */
static void link_purge(link_t *l)
{
    char inst[96], npr[96], nch[96];
    snprintf(inst, sizeof(inst), "nodeinst:%s", B.node);
    snprintf(npr, sizeof(npr), "nodepr:%s", B.node);
    snprintf(nch, sizeof(nch), "nodech:%s", B.node);
    args_t a = {.n = 0};
    argp(&a, inst);
    argp(&a, npr);
    argp(&a, nch);
    args(&a, B.node);
    args(&a, B.instance);
    args(&a, B.prefix);
    argi(&a, purge_slice);
    argi(&a, sl_conf->channel_linger_ms);
    cmd_script(cmd_new(l, C_PURGE, NULL), SL_BRS_PRES_PURGE, 3, &a);
}

/* The connections are made; set them up: AUTH, SELECT, the scripts, the
 * run id check, the node channels, then a PING whose answer says both
 * connections are usable. */
static void link_open(link_t *l)
{
    l->state = L_CONNECTING;
    l->cmd = open_conn(l);
    l->sub = l->cmd ? open_conn(l) : NULL;
    if (l->cmd == NULL || l->sub == NULL) {
        link_fail(l, "cannot create a connection");
        return;
    }
    const sl_conf_redis_t *r = &sl_conf->redis[l->shard];
    /* Setup commands on the command connection go through the in-flight
     * list, so they are bounded by the timeout like everything else. */
    if (r->password[0]) {
        const char *argv[3] = {"AUTH", r->user[0] ? r->user : r->password, r->password};
        size_t lens[3] = {4, strlen(argv[1]), strlen(r->password)};
        if (cmd_issue(cmd_new(l, C_SETUP, NULL), r->user[0] ? 3 : 2, argv, lens) != SL_OK ||
            l->state == L_DOWN)
            return;
        if (r->user[0])
            redisAsyncCommand(l->sub, NULL, NULL, "AUTH %s %s", r->user, r->password);
        else
            redisAsyncCommand(l->sub, NULL, NULL, "AUTH %s", r->password);
    }
    if (r->db) {
        char db[16];
        snprintf(db, sizeof(db), "%d", r->db);
        const char *argv[2] = {"SELECT", db};
        size_t lens[2] = {6, strlen(db)};
        if (cmd_issue(cmd_new(l, C_SETUP, NULL), 2, argv, lens) != SL_OK)
            return;
    }
    for (int s = 0; s < SL_BRS__COUNT; s++) {
        const char *argv[3] = {"SCRIPT", "LOAD", sl_brscript[s]};
        size_t lens[3] = {6, 4, strlen(sl_brscript[s])};
        if (cmd_issue(cmd_new(l, C_SETUP, NULL), 3, argv, lens) != SL_OK)
            return;
    }
    const char *info[2] = {"INFO", "server"};
    size_t ilens[2] = {4, 6};
    if (cmd_issue(cmd_new(l, C_INFO, NULL), 2, info, ilens) != SL_OK)
        return;
    /* The node's channels: on every shard's pub/sub (a delete is published
     * on the channel's shard, node messages on shard 0, echoes on each). */
    l->ping_ok = l->sub_ok = false;
    redisAsyncCommand(l->sub, on_sub, NULL, "SUBSCRIBE %s:ctl %s:to:%s", B.prefix, B.prefix,
                      B.node);
}

static void link_connect(link_t *l)
{
    if (l->state != L_DOWN || B.stopping)
        return;
    l->connect_ms = sl_mono_ms();
    const sl_conf_redis_t *r = &sl_conf->redis[l->shard];
    l->addr[0] = '\0';
    if (r->path[0]) {
        link_open(l);
        return;
    }
    struct in6_addr a6;
    if (inet_pton(AF_INET, r->host, &a6) == 1 || inet_pton(AF_INET6, r->host, &a6) == 1) {
        snprintf(l->addr, sizeof(l->addr), "%s", r->host);
        link_open(l);
        return;
    }
    /* A host name: resolved by glibc's resolver thread, never in this loop
     * (the tick looks for the answer). */
    l->state = L_RESOLVING;
    if (l->gai.ar_name == NULL) {
        memset(&l->gai, 0, sizeof(l->gai));
        memset(&l->hints, 0, sizeof(l->hints));
        l->hints.ai_family = AF_UNSPEC;
        l->hints.ai_socktype = SOCK_STREAM;
        l->gai.ar_name = r->host;
        l->gai.ar_request = &l->hints;
        struct gaicb *list[1] = {&l->gai};
        if (getaddrinfo_a(GAI_NOWAIT, list, 1, NULL) != 0) {
            l->gai.ar_name = NULL;
            link_fail(l, "cannot start resolving the host name");
        }
    }
}

/* The tick: a resolution that finished, while the link waits for it. */
static void link_resolved(link_t *l)
{
    if (l->gai.ar_name == NULL)
        return;
    int rc = gai_error(&l->gai);
    if (rc == EAI_INPROGRESS)
        return;
    struct addrinfo *res = l->gai.ar_result;
    char addr[INET6_ADDRSTRLEN] = "";
    if (rc == 0 && res)
        getnameinfo(res->ai_addr, res->ai_addrlen, addr, sizeof(addr), NULL, 0, NI_NUMERICHOST);
    if (res)
        freeaddrinfo(res);
    l->gai.ar_name = NULL; /* free for the next attempt */
    l->gai.ar_result = NULL;
    if (l->state != L_RESOLVING)
        return; /* given up meanwhile */
    if (addr[0] == '\0') {
        char why[96];
        snprintf(why, sizeof(why), "cannot resolve %s: %s", sl_conf->redis[l->shard].host,
                 rc ? gai_strerror(rc) : "no address");
        link_fail(l, why);
        return;
    }
    snprintf(l->addr, sizeof(l->addr), "%s", addr);
    link_open(l);
}

static void beat_link(link_t *l);

/* Rewrite this node's presence entries on l from the registry: every
 * channel known here, then those only Redis lists (pres_turn).  After a
 * connect, a lapsed heartbeat, or a dead worker's cleanup. */
static void pres_pass_start(link_t *l)
{
    for (uint32_t b = 0; b < BUCKETS; b++)
        for (bchan_t *ch = B.map[b]; ch; ch = ch->next)
            if ((int)ch->shard == l->shard) {
                ch->pres_due = true;
                ch->pres_slice = 0; /* a sliced rewrite starts again */
                ch->pres_again = false;
                ch->pres_gen++;
                /* A new pass (a connect, a lapse) tries at once: an
                 * error's backoff belonged to the old one (review rc17 L4). */
                ch->pres_backoff_ms = 0;
                ch->pres_retry_ms = 0;
            }
    l->pres_retry_ms = 0;
    l->pres_retry_bucket = BUCKETS;
    l->pres_scan_retry_ms = 0; /* a new pass scans at once (as rc17 L4) */
    l->pres_drop_backoff_ms = 0;
    l->pres_pass = l->pres_scan = true;
    l->pres_restart = l->pres_scan_sent;
    l->pres_bucket = 0;
    snprintf(l->pres_cursor, sizeof(l->pres_cursor), "0");
}

/* The counts Redis has from this node on l are not known any more: the
 * next reconcile() sends them all. */
static void counts_unknown(link_t *l)
{
    for (uint32_t b = 0; b < BUCKETS; b++)
        for (bchan_t *ch = B.map[b]; ch; ch = ch->next)
            if ((int)ch->shard == l->shard)
                ch->synced = -1;
}

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
    counts_unknown(l);
    /* --channel channels exist on every node: each node re-creates them if
     * Redis lost them. */
    for (int i = 0; i < sl_conf->nchannels; i++) {
        const sl_conf_channel_t *cc = &sl_conf->channels[i];
        size_t len = strlen(cc->name);
        if (link_of(cc->name, len) != l)
            continue;
        stats_forget_missing(cc->name, len); /* re-created here (rb17 M1) */
        cmd_t *c = cmd_new(l, C_ENSURE, NULL);
        char ep[16];
        new_epoch(ep);
        args_t a = {.n = 0};
        argk(&a, cc->name, len, "c");
        argp(&a, "channels");
        argk(&a, cc->name, len, "h");
        argk(&a, cc->name, len, "n");
        argk(&a, cc->name, len, "x");
        arg(&a, cc->name, len);
        args(&a, ep);
        argi(&a, sl_now_ms());
        argi(&a, cc->max_subscribers);
        argi(&a, cc->message_retention);
        argi(&a, cc->rpc_timeout_ms);
        argi(&a, 1);
        cmd_script(c, SL_BRS_CREATE, 5, &a);
    }
    reconcile();
    /* What this node's entries in Redis missed while the link was down
     * (or a broker was dead) is mended from the registry. */
    l->beat_ok = false;
    l->pres_scan_sent = false;
    pres_pass_start(l);
}

/* ------------------------------------------------------------ timers */

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
    int64_t now = sl_mono_ms(), bound = sl_conf->redis_timeout_ms;
    for (uint32_t i = 0; i < B.nlinks; i++) {
        link_t *l = &B.link[i];
        link_resolved(l);
        history_pump(l, true);
        char why[128];
        /* Every command counts, the presence rewrite's too: paced (at
         * most PRES_SYNC_INFLIGHT on the link) and each bounded (about
         * pres_sync_max entries written or removed, review rx17 M2), they
         * need no exemption, and a silent Redis is found within the
         * timeout whatever is in flight (review rx17 L2). */
        const cmd_t *oldest = l->head;
        if (oldest && now - oldest->sent_ms > bound) {
            uatomic_add(&BSTATS->link[i].timeouts, 1);
            snprintf(why, sizeof(why), "no reply within %" PRId64 " ms (--redis-timeout-ms)",
                     bound);
            link_fail(l, why);
        } else if (l->echo_sent_ms && now - l->echo_sent_ms > bound) {
            uatomic_add(&BSTATS->link[i].timeouts, 1);
            snprintf(why, sizeof(why),
                     "the pub/sub connection did not echo within %" PRId64 " ms", bound);
            link_fail(l, why);
        } else if ((l->state == L_RESOLVING || l->state == L_CONNECTING) &&
                   now - l->connect_ms > 2 * bound + 1000) {
            snprintf(why, sizeof(why), "%s not done within %" PRId64 " ms",
                     l->state == L_RESOLVING ? "resolving the host" : "connecting",
                     2 * bound + 1000);
            link_fail(l, why);
        }
    }
    if (B.backlog)
        backlog_retry();
    pres_turn();
    drain_queue(); /* in case a wake-up was lost */
    wake_flush();
}

typedef struct {
    const char *id;
    json_t *v;
} snap_ent_t;

static int snap_cmp(const void *a, const void *b)
{
    return strcmp(((const snap_ent_t *)a)->id, ((const snap_ent_t *)b)->id);
}

/* The snapshot for the workers (sl_brq_snap_t): the live nodes and every
 * shard's channels (each pass's, overlaid by the one under way), sorted
 * by id, each channel's figures as its own JSON text. */
static void publish_snapshot(void)
{
    if (!B.snap_dirty)
        return;
    B.snap_dirty = false;
    json_t *all = json_object();
    for (uint32_t i = 0; i < B.nlinks; i++) {
        if (B.snap_done[i])
            json_object_update(all, B.snap_done[i]);
        if (B.snap_cur[i])
            json_object_update(all, B.snap_cur[i]);
    }
    size_t n = json_object_size(all), k = 0;
    snap_ent_t *ents = calloc(n ? n : 1, sizeof(*ents));
    char **texts = calloc(n ? n : 1, sizeof(*texts));
    char *nodes = json_dumps(B.snap_nodes ? B.snap_nodes : json_array(), JSON_COMPACT);
    if (ents == NULL || texts == NULL || nodes == NULL) {
        free(ents);
        free(texts);
        free(nodes);
        json_decref(all);
        B.snap_dirty = true;
        return;
    }
    const char *id;
    json_t *v;
    json_object_foreach(all, id, v) {
        ents[k].id = id;
        ents[k++].v = v;
    }
    qsort(ents, n, sizeof(*ents), snap_cmp);
    size_t nl = strlen(nodes), text = nl;
    for (size_t i = 0; i < n; i++) {
        texts[i] = json_dumps(ents[i].v, JSON_COMPACT);
        text += strlen(ents[i].id) + (texts[i] ? strlen(texts[i]) : 2);
    }
    size_t size = sizeof(sl_brq_snap_t) + n * sizeof(sl_brq_snap_chan_t) + text;
    sl_brq_snap_t *s = size < UINT32_MAX ? sl_arena_alloc(REG->arena, size) : NULL;
    if (s) {
        s->head.next = NULL;
        s->head.epoch = 0;
        s->at_ms = sl_now_ms();
        s->nchan = (uint32_t)n;
        char *t = (char *)sl_brq_snap_text(s);
        memcpy(t, nodes, nl);
        s->nodes_off = 0;
        s->nodes_len = (uint32_t)nl;
        uint32_t off = (uint32_t)nl;
        for (size_t i = 0; i < n; i++) {
            sl_brq_snap_chan_t *e = &s->chan[i];
            size_t il = strlen(ents[i].id), fl = texts[i] ? strlen(texts[i]) : 2;
            e->idoff = off;
            e->idlen = (uint32_t)il;
            memcpy(t + off, ents[i].id, il);
            off += (uint32_t)il;
            e->off = off;
            e->len = (uint32_t)fl;
            memcpy(t + off, texts[i] ? texts[i] : "{}", fl);
            off += (uint32_t)fl;
            e->messages = (uint64_t)json_integer_value(json_object_get(ents[i].v, "message-count"));
        }
        s->text_len = off;
        sl_brq_snap_t *old = BSTATS->snapshot;
        /* Written whole before the pointer that publishes it; the old one
         * goes after a grace period (a worker may be reading it). */
        rcu_assign_pointer(BSTATS->snapshot, s);
        uatomic_set(&BSTATS->snapshot_ms, s->at_ms);
        if (old)
            sl_qsbr_retire(&REG->qsbr, &old->head);
    } else {
        B.snap_dirty = true; /* shared memory full: try again next beat */
    }
    for (size_t i = 0; i < n; i++)
        free(texts[i]);
    free(texts);
    free(ents);
    free(nodes);
    json_decref(all);
}

/* This node's heartbeat (it counts only while its key lives), the link's
 * latency, the pub/sub connection's echo, and a slice of the cluster
 * snapshot from this instance. */
static void beat_link(link_t *l)
{
    if (l->state != L_UP)
        return;
    uint64_t conns = 0;
    for (uint32_t w = 0; w < sl_shm->nworkers; w++)
        conns += uatomic_read(&sl_shm->workers[w].connections);
    json_t *info = json_pack("{s:s, s:I, s:I, s:i, s:s}", "node", B.node, "connections",
                             (json_int_t)conns, "started-at", (json_int_t)sl_shm->start_ms,
                             "workers", (int)sl_shm->nworkers, "instance", B.instance);
    char *itxt = json_dumps(info, JSON_COMPACT);
    json_decref(info);
    char nodek[96];
    snprintf(nodek, sizeof(nodek), "node:%s", B.node);
    args_t a = {.n = 0};
    argp(&a, "nodes");
    argp(&a, nodek);
    args(&a, B.node);
    args(&a, itxt ? itxt : "{}");
    argi(&a, NODE_TTL_MS);
    args(&a, B.prefix);
    args(&a, B.instance);
    argi(&a, sl_conf->channel_linger_ms);
    cmd_script(cmd_new(l, C_HEARTBEAT, NULL), SL_BRS_HEARTBEAT, 2, &a);
    free(itxt);
    link_ping(l, C_PING);
    if (l->echo_sent_ms == 0) {
        /* Sent on the command connection, expected on the pub/sub one: a
         * silent pub/sub connection (a half-open TCP connection) shows. */
        char to[160];
        snprintf(to, sizeof(to), "%s:to:%s", B.prefix, B.node);
        const char *argv[3] = {"PUBLISH", to, "!echo"};
        size_t lens[3] = {7, strlen(to), 5};
        if (cmd_issue(cmd_new(l, C_SYNC, NULL), 3, argv, lens) == SL_OK)
            l->echo_sent_ms = sl_mono_ms();
    }
    /* One slice of the channels a beat (SNAPSHOT_SLICE): a node costs
     * Redis about the same every second however many channels there are;
     * a whole pass takes channels / slice beats. */
    args_t s = {.n = 0};
    argp(&s, "channels");
    argp(&s, "nodes");
    args(&s, B.prefix);
    args(&s, B.snap_cursor[l->shard][0] ? B.snap_cursor[l->shard] : "0");
    argi(&s, SNAPSHOT_SLICE);
    cmd_script(cmd_new(l, C_SNAPSHOT, NULL), SL_BRS_SNAPSHOT, 2, &s);
}

static void beat_cb(evutil_socket_t fd, short what, void *arg)
{
    if (B.adopting) {
        if (!adopt_walk())
            return;
        for (uint32_t i = 0; i < B.nlinks; i++)
            link_connect(&B.link[i]);
    }
    publish_snapshot(); /* if a heartbeat changed the nodes since */
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
#ifdef SL_CRASHPOINTS
    {
        const char *m = getenv("SL_TEST_PRES_SYNC_MAX");
        if (m && atoi(m) > 0)
            pres_sync_max = (uint32_t)atoi(m);
        m = getenv("SL_TEST_INFLIGHT_MAX");
        if (m && atoi(m) > 0)
            inflight_max = (uint32_t)atoi(m);
        m = getenv("SL_TEST_BACKLOG_MAX");
        if (m && atoi(m) > 0)
            chan_backlog_max = (uint32_t)atoi(m);
        m = getenv("SL_TEST_PURGE_SLICE");
        if (m && atoi(m) > 0)
            purge_slice = (uint32_t)atoi(m);
        purge_kill = getenv("SL_TEST_PURGE_KILL");
        m = getenv("SL_TEST_HISTORY_DELAY_MS");
        if (m && atoi(m) > 0)
            history_delay_ms = atoi(m);
        pres_lose = getenv("SL_TEST_PRES_LOSE");
    }
#endif
    snprintf(B.prefix, sizeof(B.prefix), "%s", sl_conf->redis_prefix);
    snprintf(node_prefix_buf, sizeof(node_prefix_buf), "%s:node:", B.prefix);
    /* This node's running master (not this broker: a respawned broker
     * must not take its predecessor's heartbeat for another process's),
     * on this host: the heartbeat shows a node id used by two masters. */
    {
        char host[256] = "";
        gethostname(host, sizeof(host) - 1);
        uint32_t h = 2166136261u;
        for (const char *p = host; *p; p++)
            h = (h ^ (uint8_t)*p) * 16777619u;
        /* The master's start time too: a master restarted with the same
         * pid (pid 1 in a container) is another instance (PRES_PURGE). */
        snprintf(B.instance, sizeof(B.instance), "%08x-%d-%" PRId64, h, (int)getppid(),
                 (int64_t)sl_shm->start_ms);
    }
    B.nlinks = (uint32_t)SL_MIN(sl_conf->nredis, SL_BROKER_SHARDS);
    B.pres_gen_seen = uatomic_read(&BSTATS->presence_pass_gen); /* each link_up makes a pass */
    for (int s = 0; s < SL_BRS__COUNT; s++)
        sha1_hex(sl_brscript[s], script_sha[s]);

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
    B.hist_ev = event_new(B.base, -1, 0, hist_cb, NULL);
    B.beat_ev = event_new(B.base, -1, EV_PERSIST, beat_cb, NULL);
    /* The tick also makes this process's progress visible to the master
     * (a quiescent state every turn, at least every 20 ms). */
    struct timeval tick = {0, 20 * 1000}, beat = {HEARTBEAT_MS / 1000, (HEARTBEAT_MS % 1000) * 1000};
    if (!B.sig_ev || !B.wake_ev || !B.tick_ev || !B.beat_ev || !B.hist_ev || event_add(B.sig_ev, NULL) ||
        event_add(B.wake_ev, NULL) || event_add(B.tick_ev, &tick) || event_add(B.beat_ev, &beat))
        return 1;
    for (uint32_t i = 0; i < B.nlinks; i++) {
        B.link[i].shard = (int)i;
        B.link[i].pres_retry_bucket = BUCKETS;
        B.link[i].state = L_DOWN;
        B.link[i].retry_ev = evtimer_new(B.base, link_retry_cb, &B.link[i]);
        set_reason(&B.link[i], "connecting");
        uatomic_set(&BSTATS->link[i].down_since_ms, sl_now_ms());
        uatomic_set(&BSTATS->link[i].history_bytes, 0); /* a dead broker's pages are gone */
        uatomic_set(&BSTATS->link[i].history_waiting, 0);
    }
    uatomic_set(&BSTATS->nshards, B.nlinks);

    sl_qsbr_register(&REG->qsbr, SL_REG_BROKER_SLOT);
#ifdef SL_CRASHPOINTS
    sl_crash_arm_env(SL_CRASH_BROKER); /* a test build: a fault point for the broker */
#endif
    bool adopted = adopt_walk();
    uatomic_set(&BSTATS->pid, (int32_t)getpid());
    for (uint32_t i = 0; adopted && i < B.nlinks; i++)
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
        if (B.link[i].state == L_DOWN)
            B.link[i].state = L_CONNECTING; /* so link_fail tears down */
        link_fail(&B.link[i], "stopping");
    }
    sl_qsbr_offline(&REG->qsbr, SL_REG_BROKER_SLOT);
    uatomic_set(&BSTATS->pid, 0);
    sl_tel_flush();
    return 0;
}
