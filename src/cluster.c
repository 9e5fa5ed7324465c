/*
 * cluster.c - a worker's side of the cluster (see sl_cluster.h).
 *
 * Records: one per request in flight, in a map by tag and in a list in
 * submission order (every request gets the same timeout, so the list is
 * also in deadline order and the tick only looks at its head).  Tags come
 * from a server-wide counter in shared memory, so an answer meant for a
 * dead incarnation of this worker finds no record here and is dropped.
 *
 * Deadlines: the broker drops, unanswered, a request it pops later than
 * --redis-timeout-ms after submission, and it answers everything it sent
 * to Redis within --redis-timeout-ms (or drops the link and answers
 * broker-unavailable); so a live broker answers within about twice that.
 * The worker's own deadline, a little later, covers a broker that died or
 * hangs: the client is told broker-timeout (the request may have been
 * done: the broker may have sent it before it stopped) and the broker will
 * not start it any more.  Requests stamped with an older broker generation
 * are dropped by a new broker for the same reason.
 *
 * Fair share: a worker keeps at most its share of the broker's queue
 * (SL_INBOX_CAP / workers) in flight, so a few busy workers cannot fill it
 * for everyone; past it its requests are refused overloaded.
 */
#include "sl_cluster.h"
#include "sl_broker.h"
#include "sl_conf.h"
#include "sl_shm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <urcu/uatomic.h>
#include <urcu/urcu-qsbr.h>

#define REG (&sl_shm->reg)
#define BUCKETS 1024
#define GRACE_MS 500

bool sl_cluster;

typedef struct sl_crec {
    struct sl_crec *hnext;        /* map chain */
    struct sl_crec *prev, *next;  /* submission order */
    struct sl_crec *cprev, *cnext; /* its connection's records */
    uint64_t tag;
    uint64_t gen;
    int64_t deadline;
    int kind;       /* SL_BRQ_*: a history's is cancelled when its client goes */
    bool cancelled; /* ... and was (SL_BRQ_CANCEL sent) */
    sl_conn_t *conn;
    sl_cluster_fn fn;
    void *arg;
} rec_t;

static struct {
    rec_t *map[BUCKETS];
    rec_t *head, *tail;
    uint32_t n; /* records in flight */
    uint64_t gen_seen;
} C;

static rec_t **slot_of(uint64_t tag)
{
    return &C.map[tag & (BUCKETS - 1)];
}

static void unlink_rec(rec_t *r)
{
    for (rec_t **p = slot_of(r->tag); *p; p = &(*p)->hnext)
        if (*p == r) {
            *p = r->hnext;
            break;
        }
    if (r->prev)
        r->prev->next = r->next;
    else
        C.head = r->next;
    if (r->next)
        r->next->prev = r->prev;
    else
        C.tail = r->prev;
    C.n--;
    sl_conn_cl_t *cl = r->conn ? sl_conn_cl(r->conn) : NULL; /* made by the submit */
    if (cl) {
        if (r->cprev)
            r->cprev->cnext = r->cnext;
        else
            cl->crecs = r->cnext;
        if (r->cnext)
            r->cnext->cprev = r->cprev;
    }
}

static void finish(rec_t *r, uint32_t status, json_t *result)
{
    unlink_rec(r);
    r->fn(r->conn, r->arg, status, result);
    free(r);
}

static void wake_broker(void)
{
    uint64_t one = 1;
    if (write(sl_broker_wake_fd, &one, sizeof(one)) < 0) {
    }
}

static int push(int kind, sl_conn_t *c, uint32_t flags, uint64_t tag, uint64_t gen,
                int64_t deadline, const void *payload, size_t len)
{
    sl_inbox_entry_t e = {.kind = (uint32_t)kind, .from = sl_conns.id,
                          .target_slot = c ? c->slot : 0, .target_conn = c ? c->conn_no : 0,
                          .tag = tag, .status = flags | (uint32_t)(gen & 0xffff) << 16,
                          .deadline = deadline};
    int rc = sl_brq_submit(REG, sl_shm->broker.queue, &e, payload, len);
    if (rc == SL_OK)
        wake_broker();
    return rc;
}

int sl_cluster_submit(int kind, sl_conn_t *c, uint32_t flags, const void *payload, size_t len,
                      sl_cluster_fn fn, void *arg)
{
    if (uatomic_read(&sl_shm->broker.pid) <= 0)
        return SL_BR_UNAVAILABLE;
    if (C.n >= SL_INBOX_CAP / SL_MAX(1, sl_shm->nworkers))
        return SL_BR_OVERLOADED; /* our share of the broker's queue */
    /* The connection's --redis state holds its list of requests: made on
     * its first one (out of memory: refused like the record itself). */
    sl_conn_cl_t *cl = c ? sl_conn_cl_get(c) : NULL;
    rec_t *r = c == NULL || cl ? calloc(1, sizeof(*r)) : NULL;
    if (r == NULL)
        return SL_BR_OVERLOADED;
    int64_t now = sl_mono_ms();
    r->tag = uatomic_add_return(&REG->next_rpc, 1) | (uint64_t)1 << 63;
    /* Read once: the generation the request is stamped with is the one a
     * broker's death is judged against. */
    r->gen = uatomic_read(&sl_shm->broker.gen);
    r->deadline = now + 2 * sl_conf->redis_timeout_ms + GRACE_MS;
    /* The broker must not start it after our deadline has become close. */
    int rc = push(kind, c, flags, r->tag, r->gen, now + sl_conf->redis_timeout_ms, payload, len);
    if (rc != SL_OK) {
        free(r);
        if (rc == SL_CHAN_NO_MEMORY)
            sl_conns_count_error(SL_ERR_SHM_EXHAUSTED);
        return SL_BR_OVERLOADED;
    }
    r->conn = c;
    r->kind = kind;
    r->fn = fn;
    r->arg = arg;
    r->hnext = *slot_of(r->tag);
    *slot_of(r->tag) = r;
    r->prev = C.tail;
    if (C.tail)
        C.tail->next = r;
    else
        C.head = r;
    C.tail = r;
    C.n++;
    if (cl) {
        r->cnext = cl->crecs;
        if (cl->crecs)
            cl->crecs->cprev = r;
        cl->crecs = r;
    }
    return SL_OK;
}

void sl_cluster_notify(int kind, const void *payload, size_t len)
{
    if (push(kind, NULL, 0, 0, uatomic_read(&sl_shm->broker.gen),
             sl_mono_ms() + sl_conf->redis_timeout_ms, payload, len) != SL_OK)
        uatomic_add(&sl_conns.stats->overloaded, 1); /* the broker's periodic sync catches up */
}

void sl_cluster_presence_changed(void)
{
    /* One store and a wake-up: the master never waits for the broker's
     * queue lock (review rj17 M3) and tells it once per cleanup, not per
     * subscription attempt (M4). */
    uatomic_add(&sl_shm->broker.presence_pass_gen, 1);
    wake_broker();
}

void sl_cluster_result(const sl_inbox_entry_t *e)
{
    for (rec_t *r = *slot_of(e->tag); r; r = r->hnext)
        if (r->tag == e->tag) {
            json_t *doc = NULL;
            if (e->msg && e->msg->len)
                doc = json_loadb((const char *)e->msg->frame, e->msg->len, 0, NULL);
            finish(r, e->status, doc);
            json_decref(doc);
            return;
        }
    /* Answered already (deadline), or meant for a dead incarnation. */
}

void sl_cluster_tick(void)
{
    if (!sl_cluster)
        return;
    int64_t now = sl_mono_ms();
    uint64_t gen = uatomic_read(&sl_shm->broker.gen);
    if (gen != C.gen_seen) {
        /* A broker died: what it had taken will never be answered (and
         * may have been sent to Redis: the outcome is unknown). */
        C.gen_seen = gen;
        for (rec_t *r = C.head, *next; r; r = next) {
            next = r->next;
            if (r->gen < gen) {
                uatomic_add(&sl_shm->broker.timeouts, 1);
                finish(r, SL_BR_TIMEOUT, NULL);
            }
        }
    }
    /* (Counted with the broker's own broker-timeout answers: every one a
     * client gets is in /stats.) */
    while (C.head && C.head->deadline <= now) {
        uatomic_add(&sl_shm->broker.timeouts, 1);
        finish(C.head, SL_BR_TIMEOUT, NULL);
    }
}

/* Its client has gone: a history request of c that still waits for the
 * link's page budget is taken off the broker's wait list, never sent
 * (review rf17 H1: otherwise a client that connects, asks and closes in a
 * loop fills the list, and Redis copies pages nobody reads).  The broker
 * answers it (the record goes then); a cancel that finds the broker's
 * queue full is not retried: the request then runs as before, within its
 * deadline.  The queue keeps the worker's order, so the cancel comes after
 * its request. */
static void cancel_histories(sl_conn_cl_t *cl)
{
    for (rec_t *r = cl->crecs; r; r = r->cnext)
        if (r->kind == SL_BRQ_HISTORY && !r->cancelled) {
            r->cancelled = true;
            if (push(SL_BRQ_CANCEL, NULL, 0, r->tag, r->gen, sl_mono_ms() + sl_conf->redis_timeout_ms,
                     NULL, 0) != SL_OK)
                uatomic_add(&sl_conns.stats->overloaded, 1);
        }
}

void sl_cluster_peer_gone(sl_conn_t *c)
{
    sl_conn_cl_t *cl = sl_conn_cl(c);
    if (cl)
        cancel_histories(cl);
}

void sl_cluster_conn_closed(sl_conn_t *c)
{
    sl_conn_cl_t *cl = sl_conn_cl(c);
    if (cl == NULL)
        return; /* it never asked the broker */
    cancel_histories(cl);
    for (rec_t *r = cl->crecs; r; r = r->cnext)
        r->conn = NULL; /* out of its list with it */
    cl->crecs = NULL;
}

const char *sl_cluster_remote_node(const char *id, size_t len)
{
    const char *dot = memchr(id, '.', len);
    if (dot == NULL || !sl_cluster)
        return NULL;
    size_t nl = len - (size_t)(dot + 1 - id);
    const char *me = sl_shm->broker.node_id;
    if (nl == strlen(me) && memcmp(dot + 1, me, nl) == 0)
        return NULL;
    return dot + 1;
}

/* Read side: the caller is inside its loop turn (online). */
static const sl_brq_snap_t *snap(void)
{
    return rcu_dereference(sl_shm->broker.snapshot);
}

static json_t *snap_figures(const sl_brq_snap_t *s, uint32_t i)
{
    const char *t = sl_brq_snap_text(s);
    json_t *o = json_loadb(t + s->chan[i].off, s->chan[i].len, 0, NULL);
    return o ? o : json_object();
}

json_t *sl_cluster_channels_page(uint32_t cursor, uint32_t limit,
                                 bool (*keep)(const char *id, size_t len, void *arg), void *arg,
                                 uint32_t *next)
{
    json_t *out = json_object();
    const sl_brq_snap_t *s = snap();
    uint32_t i = cursor, listed = 0;
    for (; s && i < s->nchan && listed < limit; i++) {
        const char *id = sl_brq_snap_text(s) + s->chan[i].idoff;
        size_t len = s->chan[i].idlen;
        if (keep && !keep(id, len, arg))
            continue;
        json_object_setn_new(out, id, len, snap_figures(s, i));
        listed++;
    }
    if (next)
        *next = s && i < s->nchan ? i : 0;
    return out;
}

uint64_t sl_cluster_top_channels(json_t *out, uint32_t max)
{
    const sl_brq_snap_t *s = snap();
    if (s == NULL || s->nchan == 0 || max == 0)
        return 0;
    /* The busiest `max` by message count: a small array, least busy last. */
    uint32_t *top = malloc(sizeof(*top) * max), n = 0;
    if (top == NULL)
        return s->nchan;
    for (uint32_t i = 0; i < s->nchan; i++) {
        uint64_t k = s->chan[i].messages;
        uint32_t at = n < max ? n++ : max;
        if (at == max) {
            if (k <= s->chan[top[max - 1]].messages)
                continue;
            at--;
        }
        for (; at > 0 && s->chan[top[at - 1]].messages < k; at--)
            top[at] = top[at - 1];
        top[at] = i;
    }
    const char *t = sl_brq_snap_text(s);
    for (uint32_t k = 0; k < n; k++) {
        json_t *f = snap_figures(s, top[k]);
        json_object_setn_new(out, t + s->chan[top[k]].idoff, s->chan[top[k]].idlen,
                             json_pack("{s:O, s:O, s:O, s:O}", "subscriber-count",
                                       json_object_get(f, "subscriber-count"), "message-count",
                                       json_object_get(f, "message-count"), "created-at",
                                       json_object_get(f, "created-at"), "retention-count",
                                       json_object_get(f, "retention-count")));
        json_decref(f);
    }
    free(top);
    return s->nchan - n;
}

json_t *sl_cluster_nodes(void)
{
    const sl_brq_snap_t *s = snap();
    json_t *n = s ? json_loadb(sl_brq_snap_text(s) + s->nodes_off, s->nodes_len, 0, NULL) : NULL;
    if (!json_is_array(n)) {
        json_decref(n);
        n = json_array();
    }
    return n;
}

json_t *sl_cluster_stats(void)
{
    sl_broker_stats_t *b = &sl_shm->broker;
    json_t *links = json_array();
    for (uint32_t i = 0; i < (uint32_t)sl_conf->nredis && i < SL_BROKER_SHARDS; i++) {
        sl_broker_link_t *l = &b->link[i];
        json_t *o = json_pack("{s:s, s:b, s:I, s:I, s:I, s:I, s:I, s:I}", "url",
                              sl_conf->redis[i].url, "connected", uatomic_read(&l->connected) != 0,
                              "latency-us", (json_int_t)uatomic_read(&l->latency_us),
                              "reconnects", (json_int_t)uatomic_read(&l->reconnects), "errors",
                              (json_int_t)uatomic_read(&l->errors), "timeouts",
                              (json_int_t)uatomic_read(&l->timeouts), "in-flight",
                              (json_int_t)uatomic_read(&l->in_flight), "subscribed-channels",
                              (json_int_t)uatomic_read(&l->subscribed));
        json_object_set_new(o, "refused", json_integer((json_int_t)uatomic_read(&l->refused)));
        json_object_set_new(o, "epoch-renewals",
                            json_integer((json_int_t)uatomic_read(&l->epoch_renewals)));
        json_object_set_new(o, "presence-purged",
                            json_integer((json_int_t)uatomic_read(&l->presence_purged)));
        json_object_set_new(o, "catchups-in-flight",
                            json_integer((json_int_t)uatomic_read(&l->catchups_in_flight)));
        json_object_set_new(o, "catchups-waiting",
                            json_integer((json_int_t)uatomic_read(&l->catchups_waiting)));
        json_object_set_new(o, "catchups-waited",
                            json_integer((json_int_t)uatomic_read(&l->catchups_waited)));
        json_object_set_new(o, "history-bytes",
                            json_integer((json_int_t)uatomic_read(&l->history_bytes)));
        json_object_set_new(o, "history-refused",
                            json_integer((json_int_t)uatomic_read(&l->history_refused)));
        json_object_set_new(o, "history-waiting",
                            json_integer((json_int_t)uatomic_read(&l->history_waiting)));
        json_object_set_new(o, "history-waited",
                            json_integer((json_int_t)uatomic_read(&l->history_waited)));
        json_object_set_new(o, "history-cancelled",
                            json_integer((json_int_t)uatomic_read(&l->history_cancelled)));
        json_object_set_new(o, "history-expired",
                            json_integer((json_int_t)uatomic_read(&l->history_expired)));
        int64_t since = uatomic_read(&l->down_since_ms);
        json_object_set_new(o, "down-since", since ? json_integer(since) : json_null());
        json_object_set_new(o, "down-reason",
                            since ? json_string(l->down_reason) : json_null());
        json_array_append_new(links, o);
    }
    sl_inbox_t *q = b->queue;
    json_t *broker = json_pack(
        "{s:i, s:b, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "pid",
        (int)uatomic_read(&b->pid), "alive", uatomic_read(&b->pid) > 0, "restarts",
        (json_int_t)uatomic_read(&b->restarts), "queue-depth",
        (json_int_t)(q ? sl_inbox_depth(q) : 0), "queue-refused",
        (json_int_t)(q ? uatomic_read(&q->refused) : 0), "requests",
        (json_int_t)uatomic_read(&b->requests), "expired", (json_int_t)uatomic_read(&b->expired),
        "unavailable", (json_int_t)uatomic_read(&b->unavailable), "delivered",
        (json_int_t)uatomic_read(&b->delivered), "backlog", (json_int_t)uatomic_read(&b->backlog),
        "dropped", (json_int_t)uatomic_read(&b->dropped), "pushback",
        (json_int_t)uatomic_read(&b->pushback), "recovered",
        (json_int_t)uatomic_read(&b->recovered), "reset-channels",
        (json_int_t)uatomic_read(&b->reset_channels));
    json_object_set_new(broker, "timeouts", json_integer((json_int_t)uatomic_read(&b->timeouts)));
    json_object_set_new(broker, "backlog-bytes",
                        json_integer((json_int_t)uatomic_read(&b->backlog_bytes)));
    json_object_set_new(broker, "held", json_integer((json_int_t)uatomic_read(&b->held)));
    json_object_set_new(broker, "presence-synced",
                        json_integer((json_int_t)uatomic_read(&b->presence_synced)));
    json_object_set_new(broker, "presence-sync-changes",
                        json_integer((json_int_t)uatomic_read(&b->presence_sync_changes)));
    json_object_set_new(broker, "presence-sync-rewalks",
                        json_integer((json_int_t)uatomic_read(&b->presence_sync_rewalks)));
    json_object_set_new(broker, "presence-sync-skipped",
                        json_integer((json_int_t)uatomic_read(&b->presence_sync_skipped)));
    json_object_set_new(broker, "presence-sync-errors",
                        json_integer((json_int_t)uatomic_read(&b->presence_sync_errors)));
    json_object_set_new(broker, "presence-sync-deferred",
                        json_integer((json_int_t)uatomic_read(&b->presence_sync_deferred)));
    json_object_set_new(broker, "presence-dropped-foreign",
                        json_integer((json_int_t)uatomic_read(&b->presence_dropped_foreign)));
    json_object_set_new(broker, "same-instance-links",
                        json_integer((json_int_t)uatomic_read(&b->same_instance_links)));
    json_object_set_new(broker, "presence-resyncs",
                        json_integer((json_int_t)uatomic_read(&b->presence_resyncs)));
    json_object_set_new(broker, "presence-lost",
                        json_integer((json_int_t)uatomic_read(&b->presence_lost)));
    json_object_set_new(broker, "presence-reasserts",
                        json_integer((json_int_t)uatomic_read(&b->presence_reasserts)));
    json_object_set_new(broker, "held-bytes",
                        json_integer((json_int_t)uatomic_read(&b->held_bytes)));
    json_object_set_new(broker, "hold-resets",
                        json_integer((json_int_t)uatomic_read(&b->hold_resets)));
    json_object_set_new(broker, "adopted-channels",
                        json_integer((json_int_t)uatomic_read(&b->adopted_channels)));
    json_object_set_new(broker, "start-no-memory",
                        json_integer((json_int_t)uatomic_read(&b->start_no_memory)));
    json_object_set_new(broker, "deleted-channels",
                        json_integer((json_int_t)uatomic_read(&b->deleted_channels)));
    json_object_set_new(broker, "stalled", json_boolean(uatomic_read(&b->stalled)));
    uint32_t by = uatomic_read(&b->blocked_by);
    json_object_set_new(broker, "blocked-by", by >= 1 && by <= SL_REG_MASTER_SLOT + 1
                                                  ? json_integer((json_int_t)by - 1)
                                                  : json_null());
    json_object_set_new(broker, "stalls", json_integer((json_int_t)uatomic_read(&b->stalls)));
    json_object_set_new(broker, "stall-kills",
                        json_integer((json_int_t)uatomic_read(&b->stall_kills)));
    json_object_set_new(broker, "node-id-conflict", json_boolean(uatomic_read(&b->node_conflict)));
    int64_t at = uatomic_read(&b->snapshot_ms);
    return json_pack("{s:s, s:o, s:o, s:o, s:o, s:i}", "node-id", b->node_id, "broker", broker,
                     "redis", links, "nodes", sl_cluster_nodes(), "snapshot-at",
                     at ? json_integer(at) : json_null(), "live-nodes",
                     (int)uatomic_read(&b->nodes));
}

bool sl_cluster_healthy(char *why, size_t n)
{
    sl_broker_stats_t *b = &sl_shm->broker;
    if (uatomic_read(&b->pid) <= 0) {
        snprintf(why, n, "the broker process is not running");
        return false;
    }
    if (uatomic_read(&b->stalled)) {
        snprintf(why, n, "the broker process is stalled (no progress since %lld; killed after "
                         "--worker-stall-kill-ms)", (long long)uatomic_read(&b->stalled_since_ms));
        return false;
    }
    if (uatomic_read(&b->node_conflict)) {
        snprintf(why, n, "another running node uses --node-id %s", b->node_id);
        return false;
    }
    for (uint32_t i = 0; i < (uint32_t)sl_conf->nredis && i < SL_BROKER_SHARDS; i++)
        if (!uatomic_read(&b->link[i].connected)) {
            snprintf(why, n, "redis %s: %s", sl_conf->redis[i].url,
                     b->link[i].down_reason[0] ? b->link[i].down_reason : "not connected");
            return false;
        }
    why[0] = '\0';
    return true;
}
