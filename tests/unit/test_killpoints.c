/*
 * test_killpoints.c - a process killed at every crash point of the shared
 * registry, one at a time, and everything checked afterwards.
 *
 * Built against the library compiled with -DSL_CRASHPOINTS (sl_crash.h).
 * For every scenario (one registry operation or a short sequence of them,
 * played by a child as worker 1) a first child run records which crash
 * points it passes.  Then, for every crash point a scenario passes (the
 * first time, and the last time when it passes it several times), a fresh
 * registry is built, a child runs the scenario and _exits at that point,
 * and the parent does what the master does - repairs the locks the dead
 * process held, releases its reader slot, cleans up after it - and checks:
 *  - every intent is cleared; each channel's list and the subscriptions
 *    table agree, prev pointers and per-worker counts match, nothing of the
 *    dead worker is left; every table stripe's count is right; limbo is
 *    well formed; no reference count is off (inbox entries and retention
 *    rings against each message's refs); freed memory is poisoned, so a
 *    dangling node shows;
 *  - the RPC request is pending, or gone with at most one response on its
 *    way (never claimed by the dead worker forever);
 *  - the channel is usable: subscribe, publish, receive, delete, re-create;
 *  - after everything is torn down, the arena balances exactly, except
 *    that the crash points documented as able to leak one object (one
 *    allocated but not yet recorded, or one whose reference was taken but
 *    not yet dropped) leak at most that one object; no double free.
 * It prints how many crash points exist and how many were covered: all.
 *
 * Then the recoveries themselves (review of issue 12, findings 1 and 5c).
 * For every case above, a second process - a "recoverer", as a worker
 * that was blocked on one of the dead child's locks - takes every lock the
 * child's record names, so it runs their recoveries; a first run records
 * the crash points those recoveries pass.  For each of them (first and
 * last pass):
 *  - killed: the recoverer _exits there; the parent repairs both dead
 *    processes' locks and cleans up; every check above, the leak allowed
 *    being one object for each of the two points that may leak one;
 *  - concurrent: the recoverer stops there, in the middle of a recovery;
 *    the parent does what the master does meanwhile - sl_reg_dead for the
 *    child must not release its reader slot (the recoverer may still read
 *    what the child was working on) - and reclaims; then the recoverer
 *    goes on, the cleanup runs, every check.
 *
 * Some interleavings are forced with a stop point instead (the child stops
 * itself at the point, the parent acts, then continues it): a reader that
 * comes online while a reclaimer scans the slots (the grace-period
 * snapshot); a publisher that must not look at a message after its
 * subscribers' workers consumed it (finding 1 of issue 12); a note made
 * after the last push; a consumer reading the missed-note ring while a
 * producer overwrites the slot of the oldest note (the lap check); and the
 * master's cleanup stepping while a live worker is still inside the
 * recovery of a dead worker's channel lock (a ghost subscription).
 */
#include "sl_access.h"
#include "sl_brq.h"
#include "sl_chan.h"
#include "sl_crash.h"
#include "sl_rpc.h"
#include "sl_regcheck.h"
#include "sl_test.h"
#include "sl_tickets.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
#include <urcu/uatomic.h>

#ifndef SL_CRASHPOINTS
#error "test_killpoints needs -DSL_CRASHPOINTS (make builds it so)"
#endif

#define REGION (16u << 20)
#define CHECKER 70 /* the parent's reader slot */
#define CHILD 1    /* the child plays worker 1 */
#define RECOVERER 5 /* the second process's reader slot (not a worker) */
#define NWORKERS 3
#define TRACE_MAX (1 << 18)

typedef struct {
    sl_reg_t reg;
    sl_tickets_t tickets; /* TLS session-ticket keys (the master's rotation) */
    sl_ticket_key_t tickets_before; /* the current key when the scenario starts */
    int nvisited;
    char visited[8][SL_CONN_ID_MAX]; /* the presence walk's conn-ids */
    sl_table_t *small; /* one bucket, for the table scenario */
    void *held[8];     /* the arena scenario's live objects */
    uint64_t rpc_no;
    char rpc_id[SL_RPC_ID_MAX];
    uint64_t notes_base; /* inbox 2's missed_n before the scenario */
    void *filler;        /* prep_no_memory's objects, a list (first word: the next) */
    size_t ntrace;
    const sl_crashpoint_t *trace[TRACE_MAX];
    uint8_t mem[] __attribute__((aligned(4096)));
} region_t;

static region_t *G;
#define R (&G->reg)
static uint64_t base_used;
static char failure[512]; /* first failed check of the current case */
static bool cleaned;       /* the dead worker's cleanup ran */
static char current[160];  /* the case in progress, for the watchdog */

static void on_alarm(int sig)
{
    static const char msg[] = "  hung (20 s) after a kill at ";
    if (write(2, msg, sizeof(msg) - 1) < 0 || write(2, current, strlen(current)) < 0 ||
        write(2, "\n", 1) < 0) {
    }
    _exit(1);
}

#define EXPECT(cond, ...)                                                                 \
    do {                                                                                  \
        if (!(cond) && failure[0] == '\0')                                                \
            snprintf(failure, sizeof(failure), __VA_ARGS__);                              \
    } while (0)

static const sl_chan_config_t CFG_A = {.max_subscribers = 100, .message_retention = 3,
                                       .rpc_timeout_ms = 1000};
static const sl_chan_config_t CFG_B = {.max_subscribers = 100, .message_retention = 0,
                                       .rpc_timeout_ms = 1000};
static const sl_chan_config_t CFG_C = {.max_subscribers = 100, .lingers = true};
/* Join / leave events; retention with a TTL. */
static const sl_chan_config_t CFG_J = {.max_subscribers = 100, .rpc_timeout_ms = 1000,
                                       .join_leave = true};
static const sl_chan_config_t CFG_E = {.max_subscribers = 100, .message_retention = 3,
                                       .rpc_timeout_ms = 1000, .history_ttl_ms = 1};
static uint64_t missed0; /* worker 0's missed notes before the scenario */
static uint64_t presence0; /* worker 0's presence losses noted before the scenario */

/* ------------------------------------------------------------ helpers */

static void arena_stats(sl_arena_stats_t *s)
{
    sl_arena_stats(R->arena, s);
}

static sl_reg_conn_t *small_item(const char *key)
{
    sl_reg_conn_t *c = sl_arena_calloc(R->arena, sizeof(*c));
    snprintf(c->conn_id, sizeof(c->conn_id), "%s", key);
    c->node.key = c->conn_id;
    c->node.klen = (uint32_t)strlen(key);
    c->node.hash = sl_table_hash(key, strlen(key));
    return c;
}

/* Fill worker w's inbox with entries sharing one message (so that 8,192
 * of them cost one object): a worker that is stopped or slow. */
static void fill_inbox(int w)
{
    static const uint8_t F[] = {0x81, 0x02, '{', '}'};
    sl_inbox_t *in = R->inboxes[w];
    sl_chan_msg_t *m = sl_arena_calloc(R->arena, sizeof(*m) + sizeof(F));
    memcpy(m->frame, F, sizeof(F));
    m->len = sizeof(F);
    sl_inbox_lock(in);
    uint32_t room = (uint32_t)(SL_INBOX_CAP - (in->tail - in->head));
    m->refs = room;
    for (uint32_t i = 0; i < room; i++) {
        sl_inbox_entry_t e = {.kind = SL_INBOX_DIRECT, .target_slot = 99, .msg = m};
        sl_inbox_prepare(in, &e, NULL);
        sl_inbox_push_prepared(in);
    }
    sl_inbox_unlock(in);
}

static void pub(sl_chan_t *c, const char *data)
{
    sl_chan_pub_t p = {.data_json = data, .data_len = strlen(data), .sender_conn_id = "conn-0a",
                       .published_at = 1};
    sl_chan_pub_result_t res;
    sl_chan_publish(R, c, &p, &res);
}

static size_t drain(int w)
{
    sl_inbox_entry_t e;
    size_t n = 0;
    while (sl_inbox_pop(R->inboxes[w], &e, NULL)) {
        sl_chan_msg_unref(R, e.msg);
        n++;
    }
    return n;
}

/* A fresh registry in a fresh mapping, with the base state every scenario
 * starts from. */
static void setup(bool poison)
{
    G = mmap(NULL, REGION, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (G == MAP_FAILED) {
        perror("mmap");
        exit(2);
    }
    sl_reg_limits_t lim = {.max_connections = 64, .max_channels = 16, .nworkers = NWORKERS};
    if (sl_reg_init(R, G->mem, REGION - sizeof(region_t), &lim) != SL_OK) {
        fprintf(stderr, "sl_reg_init failed\n");
        exit(2);
    }
    sl_arena_set_poison(R->arena, poison);
    sl_tickets_rotate(&G->tickets);
    sl_tickets_rotate(&G->tickets); /* a current and a previous key */
    sl_tickets_current(&G->tickets, &G->tickets_before);
    sl_arena_set_owner(SL_ARENA_OWNERS - 1);
    sl_qsbr_register(&R->qsbr, CHECKER);
    G->small = sl_table_create(R->arena, &R->qsbr, 1, 1);
    sl_arena_stats_t s;
    arena_stats(&s);
    base_used = s.used_bytes;

    sl_chan_t *a, *b, *c, *j, *e;
    sl_chan_create(R, "a", 1, &CFG_A, &a);
    sl_chan_create(R, "b", 1, &CFG_B, &b);
    sl_chan_create(R, "c", 1, &CFG_C, &c);
    sl_chan_create(R, "j", 1, &CFG_J, &j);
    sl_chan_create(R, "e", 1, &CFG_E, &e);
    const char *conns[] = {"conn-0a", "conn-1a", "conn-2a"};
    for (int w = 0; w < NWORKERS; w++)
        sl_reg_conn_add(R, conns[w], w, (uint32_t)w, (uint64_t)w + 1, 1);
    uint32_t n;
    for (int w = 0; w < NWORKERS; w++)
        sl_chan_subscribe(R, a, conns[w], w, (uint32_t)w, NULL, NULL, &n, NULL);
    for (int w = 0; w < 2; w++)
        sl_chan_subscribe(R, b, conns[w], w, (uint32_t)w, NULL, NULL, &n, NULL);
    static const char *const who_user[] = {"bob", NULL, "carol"};
    for (int w = 0; w < NWORKERS; w++) {
        sl_chan_who_t who = {.conn_no = (uint64_t)w + 1, .user = who_user[w],
                             .info = w == 2 ? "{\"role\":\"admin\"}" : NULL};
        sl_chan_subscribe(R, j, conns[w], w, (uint32_t)w, &who, NULL, &n, NULL);
    }
    for (int i = 0; i < 4; i++)
        pub(a, "{\"n\":1}");
    pub(b, "\"x\"");
    for (int i = 0; i < 3; i++)
        pub(e, "{\"old\":1}");
    for (int w = 0; w < NWORKERS; w++)
        drain(w);
    sl_rpc_t *q = sl_rpc_create(R, 0, 0, 1, "a", 1, 100000);
    G->rpc_no = q->no;
    memcpy(G->rpc_id, q->request_id, sizeof(G->rpc_id));
    const char *keys[] = {"s1", "s2", "s3"};
    for (int i = 0; i < 3; i++)
        sl_table_insert(G->small, &small_item(keys[i])->node);
    /* Access control (shm/access.c): places per IP and user, and users. */
    static const char *const users[] = {"bob", "alice", "carol"};
    for (int w = 0; w < NWORKERS; w++) {
        sl_access_acquire(R, SL_ACCESS_IP, w == 2 ? "198.51.100.2" : "198.51.100.1", 12, w, 0);
        sl_access_acquire(R, SL_ACCESS_USER, users[w], strlen(users[w]), w, 0);
        sl_access_user_add(R, conns[w], w, (uint32_t)w, (uint64_t)w + 1, users[w]);
    }
    sl_qsbr_offline(&R->qsbr, CHECKER); /* so the child's reclaim can free */
}

/* --------------------------------------------------------- scenarios */

static const uint8_t FRAME[] = {0x81, 0x02, '{', '}'};

static void sc_arena(void)
{
    for (int i = 0; i < 3; i++)
        G->held[i] = sl_arena_alloc(R->arena, 2048);
    G->held[3] = sl_arena_alloc(R->arena, 3 * 4096);
    for (int i = 0; i < 4; i++) {
        void *p = G->held[i];
        G->held[i] = NULL; /* forgotten first: a free cut short is never freed twice */
        sl_arena_free(R->arena, p);
    }
}

static void sc_table(void)
{
    sl_table_insert(G->small, &small_item("s4")->node);
    sl_table_remove(G->small, sl_table_hash("s2", 2), "s2", 2);
    sl_table_replace(G->small, &small_item("s1")->node);
}

static void sc_subscribe(void)
{
    uint32_t n;
    sl_chan_subscribe(R, sl_chan_find(R, "a", 1), "conn-1x", CHILD, 9, NULL, NULL, &n, NULL);
}

static void sc_unsubscribe(void)
{
    uint32_t n;
    sl_chan_unsubscribe(R, sl_chan_find(R, "a", 1), "conn-1a", 0, NULL, &n);
}

static void sc_publish_ring(void)
{
    pub(sl_chan_find(R, "a", 1), "{\"n\":2}");
}

static void sc_publish_plain(void)
{
    pub(sl_chan_find(R, "b", 1), "{\"n\":3}");
}

static void sc_send(void)
{
    uint32_t n;
    uint64_t woken;
    sl_chan_send(R, sl_chan_find(R, "b", 1), FRAME, sizeof(FRAME), NULL, 0, NULL, NULL, &n,
                 &woken);
}

/* --redis: a join / leave that came through Redis, handed to the local
 * subscribers (sl_chan_send_presence: the send's intent and recovery). */
static void sc_send_presence(void)
{
    uint64_t woken;
    sl_chan_send_presence(R, sl_chan_find(R, "b", 1), FRAME, sizeof(FRAME), 0, &woken);
}

static void sc_delete(void)
{
    uint32_t n;
    uint64_t woken;
    sl_chan_delete(R, "a", 1, FRAME, sizeof(FRAME), &n, &woken);
}

static void sc_reap(void)
{
    sl_chan_reap(R, sl_chan_find(R, "c", 1), sl_mono_ms() + 1000000, 0);
}

static void sc_create(void)
{
    sl_chan_t *c;
    sl_chan_create(R, "new", 3, &CFG_A, &c);
}

static void sc_conn(void)
{
    sl_reg_conn_add(R, "conn-1z", CHILD, 7, 77, 1);
    sl_reg_conn_remove(R, sl_reg_conn_find(R, "conn-1a", 7));
}

static void sc_rpc_create(void)
{
    sl_rpc_create(R, CHILD, 1, 2, "a", 1, 100000);
}

static void sc_rpc_respond(void)
{
    sl_rpc_t *q = sl_rpc_find(R, G->rpc_id, strlen(G->rpc_id));
    if (q && sl_rpc_claim(q, SL_RPC_ANSWERED, CHILD) &&
        sl_chan_send_direct(R, 0, 0, 1, q->no, FRAME, sizeof(FRAME)) == SL_OK)
        sl_rpc_remove(R, q);
}

static void sc_rpc_unclaim(void)
{
    sl_rpc_t *q = sl_rpc_find(R, G->rpc_id, strlen(G->rpc_id));
    if (q && sl_rpc_claim(q, SL_RPC_ANSWERED, CHILD))
        sl_rpc_unclaim(R, q);
}

static void sc_broadcast(void)
{
    uint64_t reached;
    sl_chan_broadcast(R, 5, FRAME, sizeof(FRAME), &reached);
}

static void sc_consume(void)
{
    sl_chan_send_direct(R, CHILD, 0, 1, 0, FRAME, sizeof(FRAME));
    sl_inbox_entry_t e;
    if (sl_inbox_pop(R->inboxes[CHILD], &e, NULL))
        sl_chan_msg_unref(R, e.msg);
}

static void sc_access_acquire(void)
{
    sl_access_acquire(R, SL_ACCESS_IP, "198.51.100.9", 12, CHILD, 2); /* a new key */
    sl_access_acquire(R, SL_ACCESS_IP, "198.51.100.1", 12, CHILD, 0);
}

static void sc_access_release(void)
{
    sl_access_release(R, SL_ACCESS_IP, "198.51.100.1", 12, CHILD); /* others hold some */
    sl_access_release(R, SL_ACCESS_USER, "alice", 5, CHILD);       /* the last place */
}

static void sc_access_user(void)
{
    sl_access_user_add(R, "conn-1z", CHILD, 8, 88, "alice");
    sl_access_user_remove(R, sl_access_user_find(R, "conn-1a", 7));
}

/* The master's part of a dead worker's cleanup that is access control's
 * (here for worker 2, as sl_reg_cleanup_step does it entry by entry). */
static int access_cleanup_cb(sl_table_node_t *n, void *arg)
{
    if (arg == NULL) {
        if (sl_access_count_held_by((sl_access_count_t *)n, 2))
            sl_access_cleanup_count(R, (sl_access_count_t *)n, 2);
    } else if (((sl_access_user_t *)n)->worker == 2) {
        sl_access_cleanup_user(R, (sl_access_user_t *)n);
    }
    return 0;
}

static void sc_access_cleanup(void)
{
    sl_table_foreach(R->access->counts, access_cleanup_cb, NULL);
    sl_table_foreach(R->access->users, access_cleanup_cb, R);
}

/* The master rotating the ticket keys, three times over (each slot is
 * written once). */
static void sc_tickets(void)
{
    for (int i = 0; i < 3; i++)
        sl_tickets_rotate(&G->tickets);
}

static void sc_subscribe_join(void)
{
    uint32_t n;
    sl_chan_who_t who = {.conn_no = 19, .user = "dave", .info = "{\"k\":[1,2]}"};
    sl_chan_subscribe(R, sl_chan_find(R, "j", 1), "conn-1j", CHILD, 9, &who, NULL, &n, NULL);
}

static void sc_unsubscribe_leave(void)
{
    uint32_t n;
    sl_chan_unsubscribe(R, sl_chan_find(R, "j", 1), "conn-1a", 2, NULL, &n);
}

/* Workers 0 and 2's inboxes full (one message, referenced by every
 * entry): a leave nobody can take. */
static void prep_full(void)
{
    sl_chan_msg_t *m = sl_arena_calloc(R->arena, sizeof(*m) + sizeof(FRAME));
    m->len = sizeof(FRAME);
    memcpy(m->frame, FRAME, sizeof(FRAME));
    m->refs = 2 * SL_INBOX_CAP;
    for (int w = 0; w < NWORKERS; w += 2)
        for (int i = 0; i < SL_INBOX_CAP; i++) {
            sl_inbox_entry_t e = {.kind = SL_INBOX_DIRECT, .target_slot = 99, .msg = m};
            sl_inbox_lock(R->inboxes[w]);
            sl_inbox_prepare(R->inboxes[w], &e, NULL);
            sl_inbox_push_prepared(R->inboxes[w]);
            sl_inbox_unlock(R->inboxes[w]);
        }
}

/* The master's cleanup after worker 2 (here in the child): its
 * subscriptions go, each one's leave told to the others.  In a fixed
 * order ("a", then join-leave "j"; the table's order depends on its hash
 * key), so that every run passes the same crash points. */
static void sc_cleanup_leave(void)
{
    static const char *const keys[] = {"a\nconn-2a", "j\nconn-2a"};
    for (size_t i = 0; i < SL_ARRAY_LEN(keys); i++) {
        size_t len = strlen(keys[i]);
        sl_sub_t *s = (sl_sub_t *)sl_table_lookup(R->subs, sl_table_hash(keys[i], len), keys[i],
                                                  len);
        uint64_t woken = 0;
        if (s)
            sl_chan_cleanup_sub(R, s, &woken);
    }
}

static void sc_expire(void)
{
    uint32_t dropped;
    sl_chan_expire(R, sl_chan_find(R, "e", 1), sl_mono_us() + 10 * 1000000, &dropped);
}

static void sc_reclaim(void)
{
    sl_reg_conn_remove(R, sl_reg_conn_find(R, "conn-1a", 7));
    sl_qsbr_quiescent(&R->qsbr, CHILD);
    sl_qsbr_reclaim(&R->qsbr);
}

/* --redis: the broker's delivery of messages Redis numbered, and resets. */
static void deliver_seq(const char *id, const char *epoch, uint64_t seq)
{
    char json[96];
    int n = snprintf(json, sizeof(json), "{\"type\":\"channel-message\",\"seq\":%llu}",
                     (unsigned long long)seq);
    uint64_t woken;
    sl_chan_deliver(R, sl_chan_find(R, id, strlen(id)), epoch, seq, json, (size_t)n, 0, 1,
                    &woken);
}

static void sc_deliver(void)
{
    /* The next seq of the channel's own epoch: handed off, retained (the
     * full ring drops its oldest). */
    sl_chan_t *a = sl_chan_find(R, "a", 1);
    deliver_seq("a", a->epoch, a->next_seq);
}

static void sc_deliver_epoch(void)
{
    /* Another epoch: the ring is emptied first, the channel takes it. */
    deliver_seq("a", "zzzzzz", 40);
}

static void sc_deliver_gap(void)
{
    /* A seq that does not follow the ring: emptied first. */
    sl_chan_t *a = sl_chan_find(R, "a", 1);
    deliver_seq("a", a->epoch, a->next_seq + 5);
}

static void sc_deliver_position(void)
{
    deliver_seq("c", "yyyyyy", 7); /* nobody, nothing kept: only the position */
}

static void sc_reset(void)
{
    uint64_t woken;
    sl_chan_reset(R, sl_chan_find(R, "a", 1), "rrrrrr", 30, SL_CHAN_RESET_NOTIFY, &woken);
    sl_chan_reset(R, sl_chan_find(R, "a", 1), NULL, 0, SL_CHAN_RESET_QUIET, &woken);
    sl_chan_reset(R, sl_chan_find(R, "a", 1), "ssssss", 3, SL_CHAN_RESET_FORWARD, &woken);
}

static void sc_reset_full(void)
{
    /* Every target inbox full: the reset still happens (all noted as
     * missed), its notice goes to nobody. */
    for (int w = 0; w < 2; w++)
        while (sl_chan_send_direct(R, w, 0, 99, 0, FRAME, sizeof(FRAME)) == SL_OK) {
        }
    uint64_t woken;
    sl_chan_reset(R, sl_chan_find(R, "b", 1), "rrrrrr", 30, SL_CHAN_RESET_NOTIFY, &woken);
}

static void sc_brq(void)
{
    /* A request into a queue (an inbox), answers with and without payload. */
    sl_inbox_entry_t e = {.kind = SL_BRQ_JOIN, .from = CHILD, .tag = 5, .deadline = 1};
    sl_brq_submit(R, R->inboxes[2], &e, "{}", 2);
    sl_brq_result(R, 0, 6, SL_BR_OK, "{\"seq\":1}", 9);
    sl_brq_result(R, 0, 7, SL_BR_UNAVAILABLE, NULL, 0);
}

/* Worker 2 is stopped (its inbox full): a publish to a reaches 0 and 1 and
 * notes the message as missed in 2's inbox. */
static void prep_full_2(void)
{
    fill_inbox(2);
}

static void sc_publish_skip(void)
{
    pub(sl_chan_find(R, "a", 1), "{\"n\":4}");
}

/* Whether the publish happened (seq 5), it is noted in inbox 2 - at least
 * once: a recovery notes it again when it cannot tell whether the dead
 * publisher did (a second note of one message is harmless) - and if not,
 * it is not. */
static void chk_publish_skip(void)
{
    sl_chan_t *a = sl_chan_find(R, "a", 1), *j = sl_chan_find(R, "j", 1);
    sl_inbox_t *in = R->inboxes[2];
    unsigned notes = 0;
    for (uint64_t i = G->notes_base; i < in->missed_n; i++) {
        const sl_inbox_note_t *x = &in->missed[i & (SL_INBOX_MISSED - 1)];
        if (j && x->chan_hash == j->node.hash)
            continue; /* the cleanup's leave of the dead worker's conn-1a, on join-leave "j" */
        if (a && x->chan_hash == a->node.hash && x->serial == a->serial && x->seq == 5)
            notes++;
        else
            EXPECT(false, "inbox 2: a note of something else (seq %llu)",
                   (unsigned long long)x->seq);
    }
    if (a && sl_chan_message_count(a) >= 5)
        EXPECT(notes >= 1, "the publish skipped inbox 2 without a missed note");
    else
        EXPECT(notes == 0, "a missed note of a publish that did not happen");
}

/* The arena full (review r15 L1): a leave finds no memory for its message
 * and commits with notes alone. */
static void prep_no_memory(void)
{
    G->filler = NULL;
    for (size_t n = 1u << 20; n >= 16; n /= 2) {
        void **x;
        while ((x = sl_arena_alloc(R->arena, n)) != NULL) {
            *x = G->filler;
            G->filler = x;
        }
    }
}

/* A join / leave loss of c is in the inbox's presence set (not the
 * missed ring: review rg15 G1), for every subscription there is: in a
 * slot of its own, or in the overflow still untold (its `first`; the
 * presence_overflows figure never goes down, review rm15 N4). */
static bool noted(sl_inbox_t *in, const sl_chan_t *c)
{
    for (uint32_t i = 0; i < SL_INBOX_PRESENCE; i++) {
        const sl_inbox_presence_t *x = &in->presence[i];
        if (x->chan_hash == c->node.hash && x->serial == c->serial && x->horizon >= c->sub_seq)
            return true;
    }
    return in->presence_overflow_first != SL_INBOX_NO_OVERFLOW;
}

/* Every presence slot of inboxes 0 and 2 busy with another channel's
 * loss, as well as the inboxes full: a leave to them goes to the
 * overflow, under kill points (review rm15 N4).  The filler slots are
 * recognised by check_presence_set (FILL_HASH, FILL_SERIAL). */
#define FILL_HASH 0x5e7f111000ull
#define FILL_SERIAL 77
static void prep_full_overflow(void)
{
    prep_full();
    for (int w = 0; w < NWORKERS; w += 2) {
        sl_inbox_lock(R->inboxes[w]);
        for (uint64_t i = 0; i < SL_INBOX_PRESENCE; i++)
            sl_inbox_note_missed(R->inboxes[w],
                                 &(sl_inbox_note_t){.chan_hash = FILL_HASH + i,
                                                    .serial = FILL_SERIAL,
                                                    .seq = SL_INBOX_SEQ_PRESENCE, .horizon = 1});
        sl_inbox_unlock(R->inboxes[w]);
        EXPECT(R->inboxes[w]->presence_overflow_first == SL_INBOX_NO_OVERFLOW,
               "inbox %d: the filler overflowed", w);
    }
}

/* After the recovery: a leave that committed is in both overflows. */
static void rec_overflow(void)
{
    sl_chan_t *j = sl_chan_find(R, "j", 1);
    if (j && !sl_chan_is_subscriber(R, j, "conn-1a")) {
        EXPECT(noted(R->inboxes[0], j), "the leave committed, inbox 0's overflow not noted");
        EXPECT(noted(R->inboxes[2], j), "the leave committed, inbox 2's overflow not noted");
    }
}

/* Right after the recovery (before the cleanup, whose own leaves would
 * note the same inboxes): a leave with no message that committed noted
 * both targets - also when its process died between the commit and the
 * notes (UNSUB recovery settles by the targets, not by the message). */
static void rec_no_memory(void)
{
    sl_chan_t *j = sl_chan_find(R, "j", 1);
    if (j && !sl_chan_is_subscriber(R, j, "conn-1a")) {
        EXPECT(noted(R->inboxes[0], j), "the leave committed, inbox 0 not noted");
        EXPECT(noted(R->inboxes[2], j), "the leave committed, inbox 2 not noted");
    }
    while (G->filler) {
        void *next = *(void **)G->filler;
        sl_arena_free(R->arena, G->filler);
        G->filler = next;
    }
}

/* Right after the recovery of a position taken (DLV after its commit,
 * RESET: take_position, review rn17 L2): a channel that has an intent's
 * epoch has that intent's next_seq and cluster_pos - a kill between the
 * stores (chan.pos.epoch, chan.pos.seq) is finished by the recovery, the
 * flag with the epoch.  An epoch no intent gave is the channel's own,
 * not taken: the flag unset.  (QUIET keeps rrrrrr's position.) */
typedef struct {
    const char *id, *epoch;
    uint64_t next_seq;
} pos_t;

static void check_positions(const pos_t *p, size_t n, const char *id)
{
    sl_chan_t *c = sl_chan_find(R, id, strlen(id));
    if (c == NULL)
        return;
    for (size_t i = 0; i < n; i++)
        if (strcmp(p[i].id, id) == 0 && strncmp(c->epoch, p[i].epoch, sizeof(c->epoch)) == 0) {
            EXPECT(c->next_seq == p[i].next_seq, "%s at epoch %s: next_seq %llu, not %llu", id,
                   p[i].epoch, (unsigned long long)c->next_seq,
                   (unsigned long long)p[i].next_seq);
            EXPECT(c->cluster_pos, "%s at epoch %s: cluster_pos not set", id, p[i].epoch);
            return;
        }
    EXPECT(!c->cluster_pos, "%s at its own epoch %.8s: cluster_pos set", id, c->epoch);
}

static void rec_deliver_epoch(void)
{
    static const pos_t P[] = {{"a", "zzzzzz", 41}};
    check_positions(P, 1, "a");
}

static void rec_deliver_position(void)
{
    static const pos_t P[] = {{"c", "yyyyyy", 8}};
    check_positions(P, 1, "c");
}

static void rec_reset(void)
{
    static const pos_t P[] = {{"a", "rrrrrr", 31}, {"a", "ssssss", 4}};
    check_positions(P, 2, "a");
}

/* Every inbox full: everything that hands off is refused. */
static void prep_full_all(void)
{
    for (int w = 0; w < NWORKERS; w++)
        fill_inbox(w);
}

static void sc_refused(void)
{
    uint32_t n;
    uint64_t woken, reached;
    sl_chan_t *b = sl_chan_find(R, "b", 1);
    pub(b, "1");
    sl_chan_send(R, b, FRAME, sizeof(FRAME), NULL, 0, NULL, NULL, &n, &woken);
    sl_chan_delete(R, "b", 1, FRAME, sizeof(FRAME), &n, &woken);
    sl_chan_broadcast(R, 5, FRAME, sizeof(FRAME), &reached);
    sl_chan_send_direct(R, 0, 0, 1, 0, FRAME, sizeof(FRAME));
}

typedef struct {
    const char *name;
    void (*fn)(void);
    void (*prep)(void);  /* the parent, after setup (NULL: nothing) */
    void (*check)(void); /* the parent, after the cleanup (NULL: nothing) */
    void (*recovered)(void); /* the parent, after the recovery, before the cleanup */
} scenario_t;

static const scenario_t SCENARIOS[] = {
    {"arena", sc_arena, NULL, NULL, NULL},
    {"table", sc_table, NULL, NULL, NULL},
    {"subscribe", sc_subscribe, NULL, NULL, NULL},
    {"unsubscribe", sc_unsubscribe, NULL, NULL, NULL},
    {"publish-retained", sc_publish_ring, NULL, NULL, NULL},
    {"publish", sc_publish_plain, NULL, NULL, NULL},
    {"send", sc_send, NULL, NULL, NULL},
    {"delete", sc_delete, NULL, NULL, NULL},
    {"reap", sc_reap, NULL, NULL, NULL},
    {"create", sc_create, NULL, NULL, NULL},
    {"connection", sc_conn, NULL, NULL, NULL},
    {"rpc-create", sc_rpc_create, NULL, NULL, NULL},
    {"rpc-respond", sc_rpc_respond, NULL, NULL, NULL},
    {"rpc-unclaim", sc_rpc_unclaim, NULL, NULL, NULL},
    {"broadcast", sc_broadcast, NULL, NULL, NULL},
    {"consume", sc_consume, NULL, NULL, NULL},
    {"reclaim", sc_reclaim, NULL, NULL, NULL},
    {"access-acquire", sc_access_acquire, NULL, NULL, NULL},
    {"access-release", sc_access_release, NULL, NULL, NULL},
    {"access-user", sc_access_user, NULL, NULL, NULL},
    {"access-cleanup", sc_access_cleanup, NULL, NULL, NULL},
    {"publish-skip", sc_publish_skip, prep_full_2, chk_publish_skip, NULL},
    {"refused", sc_refused, prep_full_all, NULL, NULL},
    {"subscribe-join", sc_subscribe_join, NULL, NULL, NULL},
    {"unsubscribe-leave", sc_unsubscribe_leave, NULL, NULL, NULL},
    {"leave-to-full-inboxes", sc_unsubscribe_leave, prep_full, NULL, NULL},
    {"cleanup-leave", sc_cleanup_leave, NULL, NULL, NULL},
    {"expire", sc_expire, NULL, NULL, NULL},
    {"leave-without-memory", sc_unsubscribe_leave, prep_no_memory, NULL, rec_no_memory},
    {"leave-to-full-overflow", sc_unsubscribe_leave, prep_full_overflow, NULL, rec_overflow},
    {"deliver", sc_deliver, NULL, NULL, NULL},
    {"deliver-epoch", sc_deliver_epoch, NULL, NULL, rec_deliver_epoch},
    {"deliver-gap", sc_deliver_gap, NULL, NULL, NULL},
    {"deliver-position", sc_deliver_position, NULL, NULL, rec_deliver_position},
    {"reset", sc_reset, NULL, NULL, rec_reset},
    {"reset-full", sc_reset_full, NULL, NULL, NULL},
    {"broker-queue", sc_brq, NULL, NULL, NULL},
    {"tickets", sc_tickets, NULL, NULL, NULL},
    {"send-presence", sc_send_presence, NULL, NULL, NULL},
    {"send-presence-full", sc_send_presence, prep_full, NULL, NULL},
};
#define NSC SL_ARRAY_LEN(SCENARIOS)

/* Crash points where the dead process may leak one object (shm/README.md). */
static const char *const MAY_LEAK[] = {
    "arena.alloc.bit",       "arena.alloc.counted",    "arena.alloc.page-full",
    "arena.run.committed",   "arena.run.counted",      "limbo.pop.head",
    "limbo.pop.counted",     "inbox.pop.head",         "chan.create.allocated",
    "chan.sub.allocated",    "chan.pub.encoded",       "chan.send.allocated",
    "chan.direct.allocated", "chan.del.allocated",     "chan.ring.drop-cleared",
    "reg.conn.allocated",    "rpc.create.allocated",   "access.user.allocated",
    "chan.dlv.allocated",    "chan.reset.allocated",   "chan.reset.unused",
    "brq.allocated",
    "chan.join.allocated",   "chan.leave.allocated",   "chan.leave.unsent",
    "chan.pub.refused",      "chan.send.refused",      "chan.del.refused",
    "chan.bcast.allocated",  "chan.bcast.refused",     "chan.direct.refused",
    "chan.msg.last-ref",
};

static bool may_leak(const char *point)
{
    for (size_t i = 0; i < SL_ARRAY_LEN(MAY_LEAK); i++)
        if (strcmp(MAY_LEAK[i], point) == 0)
            return true;
    return false;
}

/* ----------------------------------------------------------- checking */

/* Every structural invariant of the registry (sl_regcheck.h). */
static void check_registry(void)
{
    if (failure[0])
        return;
    regcheck_t k = {.r = R, .lo = G->mem, .hi = (const uint8_t *)G + REGION,
                    .nworkers = NWORKERS, .dead = cleaned ? CHILD : -1};
    rc_check(&k, G->small);
    if (k.failure[0])
        snprintf(failure, sizeof(failure), "%s", k.failure);
}

/* The RPC request: pending, or gone with at most one response (a DIRECT
 * entry tagged with its number) in the requester's inbox. */
static void check_rpc(void)
{
    sl_rpc_t *q = sl_rpc_find(R, G->rpc_id, strlen(G->rpc_id));
    sl_inbox_t *in = R->inboxes[0];
    int responses = 0;
    for (uint64_t i = in->head; i < in->tail; i++) {
        sl_inbox_entry_t *e = &in->ring[i & (SL_INBOX_CAP - 1)];
        if (e->kind == SL_INBOX_DIRECT && e->tag == G->rpc_no)
            responses++;
    }
    EXPECT(responses <= 1, "RPC: %d responses", responses);
    if (q) {
        EXPECT(SL_RPC_KIND(q->state) == SL_RPC_PENDING, "RPC: still claimed");
        /* The requester's timer would win it now. */
        EXPECT(sl_rpc_claim(q, SL_RPC_EXPIRED, 0), "RPC: the requester cannot expire it");
        sl_rpc_remove(R, q);
    }
}

/* Join / leave: worker 0 (whose conn-0a stays subscribed to "j" in every
 * scenario) must have been told of every other connection's subscribe and
 * unsubscribe exactly once, in order: its inbox alternates join and leave
 * per connection and ends where the registry is.  Unless the inbox was
 * full (its subscribers would be closed 1013, or told presence-resync, instead). */
static void check_join_leave(void)
{
    sl_inbox_t *in = R->inboxes[0];
    sl_chan_t *j = sl_chan_find(R, "j", 1);
    if (in->missed_n != missed0 || in->presence_n != presence0 || j == NULL)
        return;
    static const char *const conns[] = {"conn-1a", "conn-2a", "conn-1j"};
    static const bool initially[] = {true, true, false};
    for (int k = 0; k < 3; k++) {
        char pat[64];
        snprintf(pat, sizeof(pat), "\"conn-id\":\"%s\"", conns[k]);
        bool sub = initially[k];
        for (uint64_t i = in->head; i < in->tail; i++) {
            const sl_inbox_entry_t *e = &in->ring[i & (SL_INBOX_CAP - 1)];
            const sl_chan_msg_t *m = e->msg;
            if (e->kind != SL_INBOX_CHANNEL_MSG || m->seq != 0 || m->chan_hash != j->node.hash)
                continue;
            char text[512];
            size_t n = SL_MIN(sizeof(text) - 1, (size_t)(m->len - m->payload_off));
            memcpy(text, m->frame + m->payload_off, n);
            text[n] = '\0';
            if (strstr(text, pat) == NULL)
                continue;
            bool join = strstr(text, "\"type\":\"join\"") != NULL;
            EXPECT(join != sub, "worker 0 told %s of %s twice", join ? "a join" : "a leave",
                   conns[k]);
            sub = join;
        }
        bool now = sl_chan_is_subscriber(R, j, conns[k]);
        EXPECT(sub == now, "worker 0 was told %s is %ssubscribed, but it is %s", conns[k],
               sub ? "" : "not ", now ? "subscribed" : "not");
    }
}

/* Every slot of a presence set is whole (review rg15 G1): a slot in use
 * names a channel that has join / leave - "j", or "b" which the cluster's
 * presence scenario (sl_chan_send_presence) sends to - of its incarnation,
 * within its subscriptions; a slot made valid before it was written is
 * not. */
static void check_presence_set(void)
{
    static const char *const names[] = {"j", "b"};
    for (uint32_t w = 0; w < R->nworkers; w++)
        for (uint32_t i = 0; i < SL_INBOX_PRESENCE; i++) {
            const sl_inbox_presence_t *x = &R->inboxes[w]->presence[i];
            if (x->chan_hash == 0)
                continue;
            if (x->chan_hash - FILL_HASH < SL_INBOX_PRESENCE && x->serial == FILL_SERIAL)
                continue; /* prep_full_overflow's */
            const sl_chan_t *c = NULL;
            for (size_t k = 0; k < SL_ARRAY_LEN(names) && c == NULL; k++) {
                sl_chan_t *n = sl_chan_find(R, names[k], 1);
                if (n && n->node.hash == x->chan_hash)
                    c = n;
            }
            /* Its positions: first <= pos <= tail (review ri15 R2 added
             * first, the oldest untold loss's). */
            uint64_t tail = R->inboxes[w]->tail;
            EXPECT(c && x->serial == c->serial && x->horizon >= 1 && x->horizon <= c->sub_seq &&
                       x->first <= x->pos && x->pos <= tail,
                   "inbox %u: a torn presence slot (serial %llu, horizon %llu, first %llu, "
                   "pos %llu)",
                   w, (unsigned long long)x->serial, (unsigned long long)x->horizon,
                   (unsigned long long)x->first, (unsigned long long)x->pos);
        }
    for (uint32_t w = 0; w < R->nworkers; w++) {
        const sl_inbox_t *in = R->inboxes[w];
        uint64_t f = in->presence_overflow_first;
        EXPECT(f == SL_INBOX_NO_OVERFLOW || f <= in->tail,
               "inbox %u: overflow position %llu", w, (unsigned long long)f);
        /* (pos < first is valid: a cut between the two stores, review
         * rm15 N4; it is told at first and cleared.) */
        EXPECT(in->presence_overflow_pos <= in->tail, "inbox %u: overflow latest position %llu",
               w, (unsigned long long)in->presence_overflow_pos);
    }
}

/* Places per IP are taken exactly to the limit, and given back. */
static void check_access_usable(void)
{
    uint64_t t = sl_access_total(R, SL_ACCESS_IP, "198.51.100.1", 12);
    EXPECT(sl_access_acquire(R, SL_ACCESS_IP, "198.51.100.1", 12, 2, t + 1) == SL_OK,
           "access: a place under the limit refused");
    EXPECT(sl_access_acquire(R, SL_ACCESS_IP, "198.51.100.1", 12, 2, t + 1) == SL_ACCESS_FULL,
           "access: a place over the limit taken");
    sl_access_release(R, SL_ACCESS_IP, "198.51.100.1", 12, 2);
    EXPECT(sl_access_total(R, SL_ACCESS_IP, "198.51.100.1", 12) == t, "access: total %llu, not %llu",
           (unsigned long long)sl_access_total(R, SL_ACCESS_IP, "198.51.100.1", 12),
           (unsigned long long)t);
    EXPECT(sl_access_user_add(R, "conn-2v", 2, 9, 99, "dave") != NULL, "access: user add failed");
}

/* The channel works: subscribe, publish, receive; delete, re-create. */
static void check_usable(void)
{
    sl_chan_t *a = sl_chan_find(R, "a", 1);
    if (a == NULL)
        EXPECT(sl_chan_create(R, "a", 1, &CFG_A, &a) == SL_CHAN_CREATED, "re-create failed");
    for (int round = 0; round < 2 && a; round++) {
        uint32_t n;
        drain(2);
        EXPECT(sl_chan_subscribe(R, a, "conn-2u", 2, 5, NULL, NULL, &n, NULL) == SL_OK, "subscribe failed");
        sl_chan_pub_t p = {.data_json = "7", .data_len = 1, .published_at = 1};
        sl_chan_pub_result_t res;
        EXPECT(sl_chan_publish(R, a, &p, &res) == SL_OK, "publish failed");
        sl_inbox_entry_t e;
        bool got = false;
        while (sl_inbox_pop(R->inboxes[2], &e, NULL)) {
            if (e.kind == SL_INBOX_CHANNEL_MSG && e.msg->seq == res.seq)
                got = true;
            sl_chan_msg_unref(R, e.msg);
        }
        EXPECT(got, "the published message did not arrive");
        uint64_t woken;
        EXPECT(sl_chan_delete(R, "a", 1, FRAME, sizeof(FRAME), &n, &woken) == SL_OK,
               "delete failed");
        drain(0), drain(1), drain(2);
        EXPECT(sl_chan_find(R, "a", 1) == NULL, "deleted but still found");
        EXPECT(sl_chan_create(R, "a", 1, &CFG_A, &a) == SL_CHAN_CREATED, "re-create failed");
    }
}

typedef struct {
    char id[SL_CHAN_ID_MAX + 1];
} name_t;

static int collect_chan(sl_table_node_t *n, void *arg)
{
    name_t *names = arg;
    for (int i = 0; i < 32; i++)
        if (names[i].id[0] == '\0') {
            memcpy(names[i].id, ((sl_chan_t *)n)->id, n->klen + 1);
            break;
        }
    return 0;
}

static int remove_all(sl_table_node_t *n, void *arg)
{
    sl_table_remove_node(arg, n->hash, n);
    return 0;
}

/* Remove everything and see the arena back where it started. */
/* Ticket keys after a writer died anywhere in a rotation: the current key
 * is complete and findable (new tickets can be sealed, the ones sealed
 * before the rotation began still open, as current or previous), a slot
 * being written is neither current nor previous, and the next rotation
 * (all the recovery there is) works and keeps the key before it. */
static void check_tickets(void)
{
    sl_tickets_t *t = &G->tickets;
    sl_ticket_key_t cur, k;
    EXPECT(sl_tickets_current(t, &cur) == SL_OK, "tickets: no complete current key");
    if (failure[0])
        return;
    EXPECT(sl_tickets_find(t, cur.name, &k) == 1, "tickets: the current key is not found");
    EXPECT(sl_tickets_find(t, G->tickets_before.name, &k) != 0 ||
               t->rotations >= 3, /* the scenario's second rotation pushed it out */
           "tickets: the key before the rotation is lost");
    uint32_t c = t->current % SL_TICKET_SLOTS, p = (c + SL_TICKET_SLOTS - 1) % SL_TICKET_SLOTS;
    for (uint32_t i = 0; i < SL_TICKET_SLOTS; i++)
        if (t->key[i].seq & 1u)
            EXPECT(i != c && i != p, "tickets: slot %u is being written but in use", i);
    EXPECT(sl_tickets_rotate(t) == SL_OK, "tickets: rotation after the kill failed");
    EXPECT(sl_tickets_current(t, &k) == SL_OK && memcmp(k.name, cur.name, 16) != 0,
           "tickets: no new key after the kill");
    EXPECT(sl_tickets_find(t, cur.name, &k) == 2, "tickets: the key before is not previous");
}

/* Whether `bytes` is what at most k objects take (class sizes, or runs of
 * up to 4 pages). */
static bool objects(uint64_t bytes, int k, const sl_arena_stats_t *s)
{
    if (bytes == 0)
        return true;
    if (k == 0)
        return false;
    for (int c = 0; c < SL_ARENA_CLASSES; c++)
        if (bytes >= s->cls[c].size && objects(bytes - s->cls[c].size, k - 1, s))
            return true;
    for (uint64_t run = 4096; run <= 4 * 4096; run += 4096)
        if (bytes >= run && objects(bytes - run, k - 1, s))
            return true;
    return false;
}

/* Remove everything and see the arena back where it started, within one
 * object for each of the points (point2 may be NULL) documented to leak
 * one. */
static void teardown(const char *point, const char *point2)
{
    name_t names[32];
    memset(names, 0, sizeof(names));
    sl_table_foreach(R->channels, collect_chan, names);
    for (int i = 0; i < 32 && names[i].id[0]; i++) {
        uint32_t n;
        uint64_t woken;
        sl_chan_delete(R, names[i].id, strlen(names[i].id), FRAME, sizeof(FRAME), &n, &woken);
    }
    for (int w = 0; w < NWORKERS; w++)
        drain(w);
    sl_table_foreach(R->conns, remove_all, R->conns);
    sl_table_foreach(R->rpcs, remove_all, R->rpcs);
    sl_table_foreach(G->small, remove_all, G->small);
    sl_table_foreach(R->access->counts, remove_all, R->access->counts);
    sl_table_foreach(R->access->users, remove_all, R->access->users);
    for (int i = 0; i < 8; i++)
        if (G->held[i])
            sl_arena_free(R->arena, G->held[i]);
    sl_qsbr_offline(&R->qsbr, CHECKER);
    EXPECT(sl_qsbr_synchronize(&R->qsbr, 2000) == SL_OK, "no grace period");
    while (sl_qsbr_reclaim(&R->qsbr) > 0) {
    }
    EXPECT(R->qsbr.pending == 0, "limbo not empty at the end");
    sl_arena_stats_t s;
    arena_stats(&s);
    EXPECT(s.bad_frees == 0, "%llu bad frees (double or foreign)", (unsigned long long)s.bad_frees);
    uint64_t leaked = s.used_bytes - base_used;
    int allowed = may_leak(point) + (point2 && may_leak(point2));
    if (allowed)
        EXPECT(objects(leaked, allowed, &s), "leaked %llu bytes: more than %d object(s)",
               (unsigned long long)leaked, allowed);
    else
        EXPECT(leaked == 0, "leaked %llu bytes", (unsigned long long)leaked);
    /* The derived figures agree with the truth. */
    sl_lock_acquire(sl_arena_lock(R->arena));
    sl_arena_rebuild(R->arena);
    sl_lock_release(sl_arena_lock(R->arena));
    sl_arena_stats_t s2;
    arena_stats(&s2);
    EXPECT(s2.used_bytes == s.used_bytes && s2.free_pages == s.free_pages &&
               s2.run_pages == s.run_pages,
           "the arena's figures disagree with its page descriptors");
}

/* --------------------------------------------------------------- runs */

/* Fork the child: worker 1 running scenario sc.  Returns its exit code
 * (SL_CRASH_EXIT_CODE when it died at the armed point), -1 on a signal. */
static int run_child(const scenario_t *sc, const char *point, unsigned nth, bool trace)
{
    pid_t pid = fork();
    if (pid == 0) {
        sl_arena_set_owner(CHILD);
        sl_qsbr_register(&R->qsbr, CHILD);
        if (trace)
            sl_crash_trace(G->trace, TRACE_MAX, &G->ntrace);
        else
            sl_crash_arm(point, nth, SL_CRASH_EXIT);
        sc->fn();
        sl_qsbr_offline(&R->qsbr, CHILD);
        _exit(0);
    }
    int st;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Probes: objects of the sizes registry objects have, with a pattern. */
#define NPROBES 48
static const size_t PROBE_SIZES[] = {64, 128, 256, 512, 1024, 2048};

static void probes_take(void **probe)
{
    for (int i = 0; i < NPROBES; i++) {
        size_t sz = PROBE_SIZES[i % SL_ARRAY_LEN(PROBE_SIZES)];
        probe[i] = sl_arena_alloc(R->arena, sz);
        if (probe[i])
            memset(probe[i], 0xA5, sz);
    }
}

static void probes_check(void **probe)
{
    for (int i = 0; i < NPROBES; i++) {
        size_t sz = PROBE_SIZES[i % SL_ARRAY_LEN(PROBE_SIZES)];
        const uint8_t *p = probe[i];
        for (size_t k = 0; p && k < sz; k++)
            if (p[k] != 0xA5) {
                EXPECT(false, "recovery wrote into memory the dead process had freed "
                              "(a probe of %zu bytes changed at %zu)", sz, k);
                break;
            }
        sl_arena_free(R->arena, probe[i]);
    }
}

/* Fork the recoverer: as a worker blocked on the dead child's locks, it
 * takes each lock the child's record names (running its recovery), then
 * releases it.  Tracing the crash points it passes, or armed at `point`. */
static pid_t fork_recoverer(const char *point, unsigned nth, sl_crash_action_t act)
{
    pid_t pid = fork();
    if (pid == 0) {
        sl_arena_set_owner(RECOVERER);
        sl_qsbr_register(&R->qsbr, RECOVERER);
        const sl_lock_holder_t *h = &R->qsbr.holders[CHILD];
        uint32_t n = SL_MIN(h->n, SL_LOCK_HELD_MAX);
        sl_lock_t *locks[SL_LOCK_HELD_MAX];
        memcpy(locks, h->held, sizeof(*locks) * n);
        if (point == NULL)
            sl_crash_trace(G->trace, TRACE_MAX, &G->ntrace);
        else
            sl_crash_arm(point, nth, act);
        for (uint32_t i = 0; i < n; i++)
            if (locks[i]) {
                sl_lock_acquire(locks[i]);
                sl_lock_release(locks[i]);
            }
        sl_qsbr_offline(&R->qsbr, RECOVERER);
        _exit(0);
    }
    return pid;
}

/* A fresh registry, the scenario's preparation, and the child killed at
 * the nth pass of `point`; false (and a message) when it did not die
 * there. */
static bool killed_child(const scenario_t *sc, const char *point, unsigned nth, bool poison)
{
    failure[0] = '\0';
    cleaned = false;
    setup(poison);
    if (sc->prep)
        sc->prep();
    missed0 = R->inboxes[0]->missed_n;
    presence0 = R->inboxes[0]->presence_n;
    G->notes_base = R->inboxes[2]->missed_n;
    int rc = run_child(sc, point, nth, false);
    if (rc != SL_CRASH_EXIT_CODE) {
        munmap(G, REGION);
        fprintf(stderr, "  %s #%u in %s: the child did not die there (exit %d)\n", point, nth,
                sc->name, rc);
        return false;
    }
    return true;
}

typedef enum { REC_NONE, REC_KILLED, REC_CONCURRENT } rec_t;

/* One case: the scenario killed at the nth pass of `point`; then, with
 * rec, a recoverer killed at (REC_KILLED) or stopped at (REC_CONCURRENT)
 * the rnth pass of rpoint.  Returns true when every check passed. */
static bool run_case(const scenario_t *sc, const char *point, unsigned nth, bool poison,
                     rec_t rec, const char *rpoint, unsigned rnth)
{
    if (!killed_child(sc, point, nth, poison))
        return false;
    if (rec == REC_NONE)
        snprintf(current, sizeof(current), "%s #%u in %s", point, nth, sc->name);
    else
        snprintf(current, sizeof(current), "%s #%u in %s, then the recoverer %s at %s #%u",
                 point, nth, sc->name, rec == REC_KILLED ? "killed" : "stopped", rpoint, rnth);
    alarm(20);
    if (rec != REC_NONE) {
        int st;
        pid_t pid = fork_recoverer(rpoint, rnth, rec == REC_KILLED ? SL_CRASH_EXIT : SL_CRASH_STOP);
        waitpid(pid, &st, rec == REC_CONCURRENT ? WUNTRACED : 0);
        if (rec == REC_KILLED) {
            EXPECT(WIFEXITED(st) && WEXITSTATUS(st) == SL_CRASH_EXIT_CODE,
                   "the recoverer did not die there");
        } else if (!WIFSTOPPED(st)) {
            EXPECT(false, "the recoverer did not stop there");
        } else {
            /* The master, while a live process is inside the recovery of
             * one of the dead child's locks: the child's reader slot must
             * stay online (what the recovery reads must not be freed), so
             * nothing of the cleanup may start. */
            sl_qsbr_register(&R->qsbr, CHECKER);
            EXPECT(sl_reg_dead(R, CHILD, NULL) == SL_AGAIN && R->qsbr.slots[CHILD].ctr != 0,
                   "the dead worker's reader slot was released while a live process was "
                   "inside the recovery of one of its locks");
            /* Reclaim meanwhile (unless the recoverer stopped holding the
             * limbo or the arena lock, which this would wait for). */
            if (strncmp(rpoint, "limbo.", 6) != 0 && strncmp(rpoint, "arena.", 6) != 0) {
                sl_qsbr_quiescent(&R->qsbr, CHECKER);
                sl_qsbr_reclaim(&R->qsbr);
            }
            kill(pid, SIGCONT);
            waitpid(pid, &st, 0);
            EXPECT(WIFEXITED(st) && WEXITSTATUS(st) == 0,
                   "the recoverer failed once it went on (status %d)", st);
        }
    }
    /* What the master does on SIGCHLD.  Each step only while all is well:
     * a registry found broken is not used further (it could hang). */
    sl_qsbr_register(&R->qsbr, CHECKER);
    /* Memory the dead process freed may be handed out again before its
     * locks are repaired: probes take it now, and a recovery that writes
     * into freed memory (a reference dropped twice) spoils one.  (Only
     * when the checker itself runs the recovery: a recoverer killed or
     * stopped has run it, or part of it, already.) */
    void *probe[NPROBES] = {0};
    if (rec == REC_NONE)
        probes_take(probe);
    if (rec == REC_KILLED)
        EXPECT(sl_reg_dead(R, RECOVERER, NULL) == SL_OK, "the recoverer's locks still held");
    EXPECT(sl_reg_dead(R, CHILD, NULL) == SL_OK, "the dead child's locks still held");
    sl_qsbr_quiescent(&R->qsbr, CHECKER);
    sl_qsbr_reclaim(&R->qsbr); /* a retired node still listed would be freed now */
    if (sc->recovered)
        sc->recovered();
    check_registry();
    if (!failure[0]) {
        sl_reg_worker_cleanup(R, CHILD);
        cleaned = true;
        sl_qsbr_online(&R->qsbr, CHECKER);
        check_registry();
    }
    if (rec == REC_NONE)
        probes_check(probe);
    if (!failure[0] && sc->check)
        sc->check();
    if (!failure[0])
        check_join_leave();
    if (!failure[0])
        check_presence_set();
    if (!failure[0])
        check_rpc();
    if (!failure[0])
        check_usable();
    if (!failure[0])
        check_access_usable();
    if (!failure[0])
        check_tickets();
    if (!failure[0])
        check_registry();
    if (!failure[0])
        teardown(point, rec == REC_KILLED ? rpoint : NULL);
    alarm(0);
    munmap(G, REGION);
    if (failure[0]) {
        fprintf(stderr, "  %s: %s\n", current, failure);
        return false;
    }
    return true;
}

/* The crash points a trace passed, each with how many times. */
typedef struct {
    const char *name;
    unsigned hits;
} passed_t;

static size_t passes(const sl_crashpoint_t *const *trace, size_t nt, passed_t *out, size_t cap)
{
    size_t n = 0;
    for (size_t i = 0; i < nt; i++) {
        size_t k = 0;
        while (k < n && strcmp(out[k].name, trace[i]->name) != 0)
            k++;
        if (k == n) {
            if (n == cap)
                continue;
            out[n++] = (passed_t){trace[i]->name, 0};
        }
        out[k].hits++;
    }
    return n;
}

typedef struct {
    size_t sc;
    const char *point;
    unsigned nth;
} case_t;

static case_t *cases;
static size_t ncases;

static void test_every_crash_point(void)
{
    const sl_crashpoint_t **all;
    size_t nall = sl_crash_points(&all);
    SL_CHECK(nall > 50);
    bool *covered = calloc(nall, sizeof(bool));
    unsigned ran = 0, passed = 0;
    cases = calloc(4096, sizeof(*cases));
    for (size_t s = 0; s < NSC; s++) {
        /* Which points does this scenario pass, and how often? */
        setup(true);
        if (SCENARIOS[s].prep)
            SCENARIOS[s].prep();
        SL_CHECK_INT(run_child(&SCENARIOS[s], NULL, 0, true), 0);
        size_t nt = SL_MIN(G->ntrace, (size_t)TRACE_MAX);
        passed_t seen[256];
        size_t np = passes(G->trace, nt, seen, SL_ARRAY_LEN(seen));
        munmap(G, REGION);
        for (size_t p = 0; p < nall; p++) {
            unsigned hits = 0;
            for (size_t i = 0; i < np; i++)
                if (strcmp(seen[i].name, all[p]->name) == 0)
                    hits = seen[i].hits;
            if (hits == 0)
                continue;
            unsigned nths[2] = {1, hits};
            for (int k = 0; k < (hits > 1 ? 2 : 1); k++) {
                ran++;
                /* Alternate poisoning: both ways over the whole run. */
                if (run_case(&SCENARIOS[s], all[p]->name, nths[k], (ran & 1) != 0, REC_NONE,
                             NULL, 0)) {
                    passed++;
                    covered[p] = true;
                    if (ncases < 4096)
                        cases[ncases++] = (case_t){s, all[p]->name, nths[k]};
                }
            }
        }
    }
    size_t ncovered = 0;
    for (size_t p = 0; p < nall; p++) {
        if (covered[p])
            ncovered++;
        else
            fprintf(stderr, "  crash point %s (%s:%d) not covered\n", all[p]->name, all[p]->file,
                    all[p]->line);
    }
    printf("killpoints: %zu crash points, %zu covered, %u cases (%u passed) over %zu "
           "scenarios\n",
           nall, ncovered, ran, passed, NSC);
    SL_CHECK_INT(ncovered, nall);
    SL_CHECK_INT(passed, ran);
    free(covered);
    free(all);
}

/* Review of issue 12, findings 1 and 5c: for every case above, the crash
 * points the dead child's recoveries pass - run by a second process, as a
 * worker blocked on one of its locks does - and at each of them (first and
 * last pass) that process killed, then stopped while the master's cleanup
 * starts. */
static void test_every_recovery_point(void)
{
    unsigned with = 0, killed = 0, killed_ok = 0, conc = 0, conc_ok = 0;
    const char *names[256];
    size_t nnames = 0;
    for (size_t i = 0; i < ncases; i++) {
        const case_t *c = &cases[i];
        const scenario_t *sc = &SCENARIOS[c->sc];
        if (!killed_child(sc, c->point, c->nth, true))
            continue;
        int st;
        pid_t pid = fork_recoverer(NULL, 0, 0);
        waitpid(pid, &st, 0);
        SL_CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
        passed_t seen[128];
        size_t np = passes(G->trace, SL_MIN(G->ntrace, (size_t)TRACE_MAX), seen,
                           SL_ARRAY_LEN(seen));
        munmap(G, REGION);
        if (np)
            with++;
        for (size_t p = 0; p < np; p++) {
            size_t k = 0;
            while (k < nnames && strcmp(names[k], seen[p].name) != 0)
                k++;
            if (k == nnames && nnames < SL_ARRAY_LEN(names))
                names[nnames++] = seen[p].name;
            unsigned nths[2] = {1, seen[p].hits};
            for (int j = 0; j < (seen[p].hits > 1 ? 2 : 1); j++) {
                bool poison = ((killed + conc) & 1) != 0;
                killed++;
                killed_ok += run_case(sc, c->point, c->nth, poison, REC_KILLED, seen[p].name,
                                      nths[j]);
                conc++;
                conc_ok += run_case(sc, c->point, c->nth, !poison, REC_CONCURRENT, seen[p].name,
                                    nths[j]);
            }
        }
    }
    printf("recoveries: %u of %zu kills leave a recovery that passes crash points (%zu distinct "
           "ones); recoverer killed there: %u cases (%u passed); recoverer stopped there while "
           "the master cleans up: %u cases (%u passed)\n",
           with, ncases, nnames, killed, killed_ok, conc, conc_ok);
    SL_CHECK(killed > 100);
    SL_CHECK_INT(killed_ok, killed);
    SL_CHECK_INT(conc_ok, conc);
}

/* ------------------------------------------------------ interleavings */

static pid_t stop_child_at(const char *point, void (*fn)(void))
{
    pid_t pid = fork();
    if (pid == 0) {
        sl_arena_set_owner(CHILD);
        sl_qsbr_register(&R->qsbr, CHILD);
        sl_crash_arm(point, 1, SL_CRASH_STOP);
        fn();
        sl_qsbr_offline(&R->qsbr, CHILD);
        _exit(0);
    }
    int st;
    waitpid(pid, &st, WUNTRACED);
    SL_CHECK(WIFSTOPPED(st));
    return pid;
}

static void finish_child(pid_t pid)
{
    int st;
    kill(pid, SIGCONT);
    waitpid(pid, &st, 0);
    SL_CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

static void reclaim_offline(void)
{
    sl_qsbr_offline(&R->qsbr, CHILD); /* scans while it holds nothing */
    sl_qsbr_reclaim(&R->qsbr);
}

/* A reclaimer scans the slots while all are offline; then a reader comes
 * online and takes a node, which a writer removes; the reclaimer goes on.
 * It must not free the node: the grace-period counter was read before the
 * scan, and the node's epoch is newer. */
static void test_gp_snapshot(void)
{
    setup(true);
    sl_qsbr_register(&R->qsbr, CHECKER);
    /* Something in limbo, so that reclaim gets to its scan. */
    sl_reg_conn_remove(R, sl_reg_conn_find(R, "conn-2a", 7));
    sl_qsbr_offline(&R->qsbr, CHECKER);
    pid_t pid = stop_child_at("qsbr.reclaim.scanned", reclaim_offline);
    /* Now the reader. */
    sl_qsbr_online(&R->qsbr, CHECKER);
    sl_reg_conn_t *x = sl_reg_conn_find(R, "conn-0a", 7);
    SL_CHECK(x != NULL);
    sl_reg_conn_remove(R, x); /* retired, but we still hold it */
    finish_child(pid);
    SL_CHECK_STR(x->conn_id, "conn-0a");
    SL_CHECK_INT(x->worker, 0);
    sl_qsbr_offline(&R->qsbr, CHECKER);
    munmap(G, REGION);
}

static void publish_b(void)
{
    sl_chan_t *b = sl_chan_find(R, "b", 1);
    sl_chan_pub_t p = {.data_json = "1", .data_len = 1, .published_at = 1};
    sl_chan_pub_result_t res;
    sl_chan_publish(R, b, &p, &res);
}

/* The publisher is stopped right after its hand-off; both workers consume
 * and drop the last references; then it goes on.  Without poisoning a
 * freed message still reads refs == 0: a publisher that looked would free
 * it a second time. */
static void test_no_read_after_handoff(void)
{
    setup(false);
    sl_qsbr_register(&R->qsbr, CHECKER);
    sl_arena_stats_t before, after;
    arena_stats(&before);
    sl_qsbr_offline(&R->qsbr, CHECKER);
    pid_t pid = stop_child_at("chan.pub.handed", publish_b);
    SL_CHECK_INT(drain(0), 1);
    SL_CHECK_INT(drain(1), 1);
    finish_child(pid);
    arena_stats(&after);
    SL_CHECK_INT(after.bad_frees, 0);
    SL_CHECK_INT(after.used_bytes, before.used_bytes);
    munmap(G, REGION);
}

/* Worker 1's inbox is full, so a publish reaches worker 0 only and notes
 * the channel as missed in worker 1's inbox - after its one push, when the
 * message may already be consumed and freed.  The publisher is stopped
 * right after that push while worker 0 frees the message (poisoned): the
 * note must still name the channel. */
static void test_missed_note_after_the_last_push(void)
{
    setup(true);
    sl_qsbr_register(&R->qsbr, CHECKER);
    int fill = 0;
    while (sl_chan_send_direct(R, 1, 0, 1, 0, FRAME, sizeof(FRAME)) == SL_OK)
        fill++;
    SL_CHECK_INT(fill, SL_INBOX_CAP);
    uint64_t hash = sl_chan_find(R, "b", 1)->node.hash;
    uint64_t notes = R->inboxes[1]->missed_n;
    sl_qsbr_offline(&R->qsbr, CHECKER);
    pid_t pid = stop_child_at("handoff.pushed", publish_b);
    SL_CHECK_INT(drain(0), 1); /* the last reference: freed and poisoned */
    finish_child(pid);
    SL_CHECK_INT(R->inboxes[1]->missed_n, notes + 1);
    SL_CHECK(R->inboxes[1]->missed[notes & (SL_INBOX_MISSED - 1)].chan_hash == hash);
    drain(1);
    munmap(G, REGION);
}

/* Presence never shows a subscription that is not committed: a subscribe
 * with a join is stopped in its hand-off, before the commit (the join not
 * yet handed out); a lock-free walk of "j" then must see only connections
 * that are in the subscriptions table - conn-1j not among them. */
static int only_committed_cb(const sl_sub_t *s, void *arg)
{
    int *bad = arg;
    if (!sl_chan_is_subscriber(R, sl_chan_find(R, "j", 1), sl_sub_conn_id(s))) {
        fprintf(stderr, "  presence shows %s, not (yet) subscribed\n", sl_sub_conn_id(s));
        (*bad)++;
    }
    return 0;
}

static void test_presence_sees_only_committed(void)
{
    setup(true);
    pid_t pid = stop_child_at("handoff.locked", sc_subscribe_join);
    sl_qsbr_register(&R->qsbr, CHECKER);
    int bad = 0;
    uint32_t n = sl_chan_members(sl_chan_find(R, "j", 1), 0, only_committed_cb, &bad);
    sl_qsbr_offline(&R->qsbr, CHECKER);
    SL_CHECK_INT(bad, 0);
    SL_CHECK_INT(n, 3);
    finish_child(pid);
    sl_chan_t *j = sl_chan_find(R, "j", 1);
    SL_CHECK(j && sl_chan_is_subscriber(R, j, "conn-1j")); /* and then it is */
    munmap(G, REGION);
}

/* A presence reader walks "j" without the lock and is stopped on its first
 * node (conn-2a); meanwhile that node and the next (conn-1a) unsubscribe
 * and a reclaim runs; the reader goes on.  It must reach conn-0a, which
 * stayed for the whole walk, over the two unlinked nodes - still readable,
 * its grace period not over - and nothing else. */
static int stop_on_first(const sl_sub_t *s, void *arg)
{
    if (G->nvisited < 8)
        snprintf(G->visited[G->nvisited++], SL_CONN_ID_MAX, "%s", sl_sub_conn_id(s));
    if (G->nvisited == 1)
        raise(SIGSTOP);
    return 0;
}

static void walk_j(void)
{
    sl_chan_members(sl_chan_find(R, "j", 1), 0, stop_on_first, NULL);
}

static void test_presence_walk_during_unsubscribes(void)
{
    setup(true);
    pid_t pid = fork();
    if (pid == 0) {
        sl_arena_set_owner(CHILD);
        sl_qsbr_register(&R->qsbr, CHILD);
        walk_j();
        sl_qsbr_offline(&R->qsbr, CHILD);
        _exit(0);
    }
    int st;
    waitpid(pid, &st, WUNTRACED);
    SL_CHECK(WIFSTOPPED(st));
    SL_CHECK_STR(G->visited[0], "conn-2a");
    sl_qsbr_register(&R->qsbr, CHECKER);
    uint32_t n;
    sl_chan_t *j = sl_chan_find(R, "j", 1);
    SL_CHECK_INT(sl_chan_unsubscribe(R, j, "conn-2a", 3, NULL, &n), SL_OK);
    SL_CHECK_INT(sl_chan_unsubscribe(R, j, "conn-1a", 2, NULL, &n), SL_OK);
    sl_qsbr_quiescent(&R->qsbr, CHECKER);
    sl_qsbr_reclaim(&R->qsbr); /* the reader is online: nothing it may hold is freed */
    sl_qsbr_offline(&R->qsbr, CHECKER);
    finish_child(pid);
    SL_CHECK_INT(G->nvisited, 3);
    SL_CHECK_STR(G->visited[1], "conn-1a");
    SL_CHECK_STR(G->visited[2], "conn-0a");
    munmap(G, REGION);
}

/* Review of issue 12, finding 3: 256 notes fill the ring; a producer is
 * stopped in the middle of the 257th, which reuses the slot of the first;
 * the consumer reads meanwhile, then again once it is done.  The first
 * note's channel must not be lost (reported, or "anything may have been
 * missed"), nor the new one reported twice. */
static void note_500(void)
{
    sl_inbox_t *in = R->inboxes[2];
    sl_inbox_lock(in);
    sl_inbox_note_missed(in, &(sl_inbox_note_t){.chan_hash = 500, .serial = 1, .seq = 1});
    sl_inbox_unlock(in);
}

typedef struct {
    unsigned all, count[600];
} lap_t;

static void lap_cb(const sl_inbox_note_t *note, uint64_t index, void *arg)
{
    lap_t *x = arg;
    if (note == NULL)
        x->all++;
    else if (note->chan_hash < 600)
        x->count[note->chan_hash]++;
}

static void test_missed_ring_lap(void)
{
    setup(true);
    sl_inbox_t *in = R->inboxes[2];
    uint64_t seen = in->missed_n;
    sl_inbox_lock(in);
    for (uint64_t c = 1; c <= SL_INBOX_MISSED; c++)
        sl_inbox_note_missed(in, &(sl_inbox_note_t){.chan_hash = c, .serial = 1, .seq = 1});
    sl_inbox_unlock(in);
    pid_t pid = stop_child_at("inbox.missed.noted", note_500);
    lap_t x;
    memset(&x, 0, sizeof(x));
    sl_inbox_missed(in, &seen, UINT64_MAX, lap_cb, &x);
    finish_child(pid);
    sl_inbox_missed(in, &seen, UINT64_MAX, lap_cb, &x);
    SL_CHECK(x.count[1] == 1 || x.all > 0); /* channel 1's skip not lost */
    SL_CHECK_INT(x.count[500], 1);         /* the new note once */
    for (unsigned c = 2; c <= SL_INBOX_MISSED; c++)
        SL_CHECK(x.count[c] <= 1);
    munmap(G, REGION);
}

/* Review of issue 12, finding 1, as the review ran it: worker 1 dies
 * subscribing, its subscription on channel a's list but not yet in the
 * table; worker 2, subscribing to a too, gets the lock with EOWNERDEAD and
 * is stopped inside the recovery that completes the dead subscription (at
 * its table insert); meanwhile the master's cleanup steps.  It must not
 * release worker 1's reader slot nor walk the tables before worker 2's
 * recovery is done: walked before, it would miss the subscription the
 * recovery then inserts - a ghost that counts against max-subscribers,
 * keeps the channel from being reaped and makes every publish target the
 * respawned worker 1. */
static void subscribe_as_2(void)
{
    uint32_t n;
    sl_chan_subscribe(R, sl_chan_find(R, "a", 1), "conn-2x", 2, 8, NULL, NULL, &n, NULL);
}

static void test_cleanup_waits_for_a_live_recovery(void)
{
    setup(true);
    const scenario_t sub = {"subscribe", sc_subscribe, NULL, NULL, NULL};
    SL_CHECK_INT(run_child(&sub, "chan.sub.listed", 1, false), SL_CRASH_EXIT_CODE);
    pid_t pid = fork();
    if (pid == 0) {
        sl_arena_set_owner(2);
        sl_qsbr_register(&R->qsbr, 2);
        sl_crash_arm("table.insert.intent", 1, SL_CRASH_STOP);
        subscribe_as_2();
        sl_qsbr_offline(&R->qsbr, 2);
        _exit(0);
    }
    int st;
    waitpid(pid, &st, WUNTRACED);
    SL_CHECK(WIFSTOPPED(st));
    sl_qsbr_register(&R->qsbr, CHECKER);
    sl_reg_cleanup_t job;
    sl_reg_cleanup_start(&job, CHILD);
    for (int i = 0; i < 5 && job.phase == 0; i++) {
        SL_CHECK_INT(sl_reg_cleanup_step(R, &job, 256), SL_AGAIN);
        sl_qsbr_quiescent(&R->qsbr, CHECKER);
        sl_qsbr_reclaim(&R->qsbr);
    }
    SL_CHECK_INT(job.phase, 0);                     /* nothing walked yet */
    SL_CHECK(R->qsbr.slots[CHILD].ctr != 0);        /* its slot still online */
    SL_CHECK(job.removed_conns == 0 && job.removed_subs == 0);
    finish_child(pid);
    while (sl_reg_cleanup_step(R, &job, 256) == SL_AGAIN)
        sl_qsbr_quiescent(&R->qsbr, CHECKER);
    regcheck_t k = {.r = R, .lo = G->mem, .hi = (const uint8_t *)G + REGION,
                    .nworkers = NWORKERS, .dead = CHILD};
    rc_check(&k, G->small);
    if (k.failure[0])
        fprintf(stderr, "  %s\n", k.failure);
    SL_CHECK(k.failure[0] == '\0');
    sl_chan_t *a = sl_chan_find(R, "a", 1);
    SL_CHECK(a && a->worker_subs[CHILD] == 0);
    SL_CHECK(a && !sl_chan_is_subscriber(R, a, "conn-1x"));
    SL_CHECK(a && sl_chan_is_subscriber(R, a, "conn-2x"));
    sl_qsbr_offline(&R->qsbr, CHECKER);
    munmap(G, REGION);
}

/* Review r19, finding 1: sl_chan_retained on a channel with a ring must
 * never answer from a publisher's half-done update.  A publisher is killed
 * (a) between its next_seq and its ring store on a fresh retention channel
 * and (b) between the pop and the store of a full retention-1 ring; the
 * reader must see the repaired channel: the message retained, oldest ==
 * last.  (The old lock-free "ring empty" shortcut answered oldest 0 with
 * nothing retained in both: a subscriber with since = last-1 got
 * recovered: false.) */
static const sl_chan_config_t CFG_R1 = {.max_subscribers = 100, .message_retention = 1,
                                        .rpc_timeout_ms = 1000};

static void publish_r(void)
{
    pub(sl_chan_find(R, "r", 1), "{\"n\":9}");
}

static void count_retained(const char *json, size_t len, void *arg)
{
    (void)json;
    (void)len;
    (*(int *)arg)++;
}

static void retained_after_kill(const char *point, int before)
{
    setup(true);
    sl_chan_t *c;
    SL_CHECK_INT(sl_chan_create(R, "r", 1, &CFG_R1, &c), SL_OK);
    for (int i = 0; i < before; i++)
        pub(c, "{\"n\":1}");
    const scenario_t sc = {"publish-r", publish_r, NULL, NULL, NULL};
    SL_CHECK_INT(run_child(&sc, point, 1, false), SL_CRASH_EXIT_CODE);
    sl_qsbr_register(&R->qsbr, CHECKER);
    sl_qsbr_online(&R->qsbr, CHECKER);
    int n = 0;
    uint64_t last = 0;
    uint64_t oldest = sl_chan_retained(R, c, 0, count_retained, &n, &last, NULL);
    SL_CHECK_INT(last, (uint64_t)before + 1);
    SL_CHECK_INT(oldest, last);
    SL_CHECK_INT(n, 1);
    sl_qsbr_offline(&R->qsbr, CHECKER);
    munmap(G, REGION);
}

static void test_retained_never_torn(void)
{
    retained_after_kill("chan.pub.seq", 0);      /* (a) seq taken, ring still empty */
    retained_after_kill("chan.ring.dropped", 1); /* (b) full ring popped, not stored */
}

int main(void)
{
    signal(SIGALRM, on_alarm);
    setvbuf(stdout, NULL, _IOLBF, 0);
    SL_TEST_RUN(test_every_crash_point);
    SL_TEST_RUN(test_every_recovery_point);
    SL_TEST_RUN(test_gp_snapshot);
    SL_TEST_RUN(test_no_read_after_handoff);
    SL_TEST_RUN(test_missed_note_after_the_last_push);
    SL_TEST_RUN(test_presence_walk_during_unsubscribes);
    SL_TEST_RUN(test_presence_sees_only_committed);
    SL_TEST_RUN(test_missed_ring_lap);
    SL_TEST_RUN(test_cleanup_waits_for_a_live_recovery);
    SL_TEST_RUN(test_retained_never_torn);
    return sl_test_summary();
}
