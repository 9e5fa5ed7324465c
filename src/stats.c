/*
 * stats.c - /stats and /health from the shared counters.
 *
 * Totals are computed here as sums of the per-worker figures read in one
 * pass, so a document is always self-consistent (active-connections equals
 * the sum of workers[].connections in the same reply) even while counters
 * move underneath.
 */
#include "sl_stats.h"
#include "sl_access.h"
#include "sl_conf.h"
#include "sl_shm.h"
#include "sl_chan.h"
#include "sl_cluster.h"
#include "sl_rpc.h"
#include "sl_pubsub.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <urcu/arch.h>
#include <urcu/system.h>
#include <urcu/uatomic.h>

/* This many RPC requests older than SL_RPC_OLD_MS make the server
 * unhealthy (the seeds' rule).  They are counted by the master's sweep
 * (sl_shm->rpc_old), not by walking the table per request. */
#define SL_RPC_OLD_UNHEALTHY 10

typedef struct {
    uint64_t connections, messages_in, messages_out, slow, tel_emitted, tel_dropped;
    uint64_t published, delivered, overloaded, outbound_bytes, backpressure_pauses, inbound_bytes;
    uint64_t errors[SL_ERR__COUNT];
    uint64_t bytes_in, bytes_out, accepted, tls_handshakes, tls_resumed, tls_heap_bytes;
    uint64_t tls_trims, tls_trim_us;
    uint64_t handshake_failures[SL_HS__COUNT];
    sl_hist_t delivery, rpc;
    int live_workers;
    bool details; /* /stats (not /health): process figures, histograms */
    json_t *stalled; /* ids of stalled workers */
    json_t *stuck;   /* ids of dead workers whose cleanup waits past the kill bound */
} totals_t;

/* A histogram as JSON: cumulative counts keyed by the bucket's upper bound
 * in microseconds ("+Inf" last), the count and the sum. */
static json_t *hist_json(const sl_hist_t *h)
{
    json_t *b = json_object();
    uint64_t cum = 0;
    for (int i = 0; i < SL_HIST_BUCKETS; i++) {
        cum += CMM_LOAD_SHARED(h->buckets[i]);
        char key[24];
        if (i < SL_HIST_BUCKETS - 1)
            snprintf(key, sizeof(key), "%lld", (long long)sl_hist_bounds_us[i]);
        else
            snprintf(key, sizeof(key), "+Inf");
        json_object_set_new(b, key, json_integer((json_int_t)cum));
    }
    /* count is the +Inf bucket, read in the same pass: self-consistent. */
    return json_pack("{s:o, s:I, s:I}", "buckets", b, "count", (json_int_t)cum, "sum-us",
                     (json_int_t)CMM_LOAD_SHARED(h->sum_us));
}

static void hist_add(sl_hist_t *to, const sl_hist_t *h)
{
    for (int i = 0; i < SL_HIST_BUCKETS; i++)
        to->buckets[i] += CMM_LOAD_SHARED(h->buckets[i]);
    to->sum_us += CMM_LOAD_SHARED(h->sum_us);
    to->count += CMM_LOAD_SHARED(h->count);
}

/* A worker process as the kernel sees it: CPU seconds, resident bytes,
 * open descriptors (null when /proc cannot tell). */
static void proc_json(json_t *o, int32_t pid)
{
    json_t *cpu = json_null(), *rss = json_null(), *fds = json_null();
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = pid > 0 ? fopen(path, "r") : NULL;
    if (f) {
        size_t n = fread(buf, 1, sizeof(buf) - 1, f);
        buf[n] = '\0';
        fclose(f);
        /* After "(comm)": state is field 3; utime and stime are 14 and 15. */
        char *p = strrchr(buf, ')');
        unsigned long long ut, st;
        if (p && sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut,
                        &st) == 2)
            cpu = json_real((double)(ut + st) / (double)sysconf(_SC_CLK_TCK));
    }
    snprintf(path, sizeof(path), "/proc/%d/statm", (int)pid);
    f = pid > 0 ? fopen(path, "r") : NULL;
    if (f) {
        unsigned long long size, res;
        if (fscanf(f, "%llu %llu", &size, &res) == 2)
            rss = json_integer((json_int_t)(res * (unsigned long long)sysconf(_SC_PAGESIZE)));
        fclose(f);
    }
    snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
    DIR *d = pid > 0 ? opendir(path) : NULL;
    if (d) {
        json_int_t n = 0;
        struct dirent *e;
        while ((e = readdir(d)) != NULL)
            if (e->d_name[0] != '.')
                n++;
        closedir(d);
        fds = json_integer(n);
    }
    json_object_set_new(o, "cpu-seconds", cpu);
    json_object_set_new(o, "resident-bytes", rss);
    json_object_set_new(o, "open-fds", fds);
}

/* Add worker i's figures to t; with `doc`, also describe it there. */
static void worker_figures(uint32_t i, totals_t *t, json_t **doc);

static json_t *worker_json(uint32_t i, totals_t *t)
{
    json_t *o = NULL;
    worker_figures(i, t, &o);
    return o;
}

static void worker_figures(uint32_t i, totals_t *t, json_t **doc)
{
    sl_worker_stats_t *w = &sl_shm->workers[i];
    int32_t pid = uatomic_read(&w->pid);
    uint64_t conns = uatomic_read(&w->connections), in = uatomic_read(&w->messages_in),
             out = uatomic_read(&w->messages_out), slow = uatomic_read(&w->slow_consumer_disconnects);
    t->connections += conns;
    t->messages_in += in;
    t->messages_out += out;
    t->slow += slow;
    uint64_t pub = uatomic_read(&w->published), del = uatomic_read(&w->delivered),
             ovl = uatomic_read(&w->overloaded);
    t->published += pub;
    t->delivered += del;
    t->overloaded += ovl;
    t->tel_emitted += uatomic_read(&w->tel_emitted);
    t->tel_dropped += uatomic_read(&w->tel_dropped);
    for (int e = 0; e < SL_ERR__COUNT; e++)
        t->errors[e] += uatomic_read(&w->errors[e]);
    uint64_t obytes = uatomic_read(&w->outbound_bytes), pauses = uatomic_read(&w->backpressure_pauses);
    uint64_t ibytes = uatomic_read(&w->inbound_bytes);
    t->outbound_bytes += obytes;
    t->backpressure_pauses += pauses;
    t->inbound_bytes += ibytes;
    t->tls_handshakes += uatomic_read(&w->tls_handshakes);
    t->tls_resumed += uatomic_read(&w->tls_resumed);
    uint64_t theap = uatomic_read(&w->tls_heap_bytes);
    t->tls_heap_bytes += theap;
    uint64_t trims = uatomic_read(&w->tls_trims), trim_us = uatomic_read(&w->tls_trim_us);
    t->tls_trims += trims;
    t->tls_trim_us += trim_us;
    if (pid > 0)
        t->live_workers++;
    bool stalled = pid > 0 && uatomic_read(&w->stalled);
    if (stalled && t->stalled)
        json_array_append_new(t->stalled, json_integer((json_int_t)i));
    if (doc == NULL)
        return; /* /health: the totals are all it needs */
    json_t *o = json_pack("{s:i, s:i, s:I, s:I, s:I, s:I, s:b, s:I, s:I, s:I, s:I}", "id", (int)i,
                          "pid", (int)pid, "connections", (json_int_t)conns, "messages-in",
                          (json_int_t)in, "messages-out", (json_int_t)out, "restarts",
                          (json_int_t)uatomic_read(&w->restarts), "alive", pid > 0,
                          "echo-connections", (json_int_t)uatomic_read(&w->echo_connections),
                          "http-connections", (json_int_t)uatomic_read(&w->http_connections),
                          "http-requests", (json_int_t)uatomic_read(&w->http_requests),
                          "slow-consumer-disconnects", (json_int_t)slow);
    json_object_set_new(o, "published", json_integer((json_int_t)pub));
    json_object_set_new(o, "delivered", json_integer((json_int_t)del));
    json_object_set_new(o, "overloaded", json_integer((json_int_t)ovl));
    json_object_set_new(o, "rpc-requests", json_integer((json_int_t)uatomic_read(&w->rpc_requests)));
    json_object_set_new(o, "rpc-responses",
                        json_integer((json_int_t)uatomic_read(&w->rpc_responses)));
    json_object_set_new(o, "rpc-expired", json_integer((json_int_t)uatomic_read(&w->rpc_expired)));
    json_object_set_new(o, "outbound-bytes", json_integer((json_int_t)obytes));
    json_object_set_new(o, "backpressure-pauses", json_integer((json_int_t)pauses));
    json_object_set_new(o, "tls-handshakes",
                        json_integer((json_int_t)uatomic_read(&w->tls_handshakes)));
    json_object_set_new(o, "tls-resumed", json_integer((json_int_t)uatomic_read(&w->tls_resumed)));
    json_object_set_new(o, "tls-heap-bytes", json_integer((json_int_t)theap));
    json_object_set_new(o, "tls-trims", json_integer((json_int_t)trims));
    json_object_set_new(o, "tls-trim-ms", json_integer((json_int_t)(trim_us / 1000)));
    json_object_set_new(o, "inbound-bytes", json_integer((json_int_t)ibytes));
    sl_inbox_t *ib = sl_shm->reg.inboxes[i];
    json_object_set_new(o, "inbox-depth", json_integer((json_int_t)sl_inbox_depth(ib)));
    json_object_set_new(o, "inbox-skipped", json_integer((json_int_t)uatomic_read(&ib->refused)));
    json_object_set_new(o, "missed-disconnects",
                        json_integer((json_int_t)uatomic_read(&w->missed_closes)));
    json_object_set_new(o, "presence-resyncs",
                        json_integer((json_int_t)uatomic_read(&w->presence_resyncs)));
    json_object_set_new(o, "presence-resync-failed",
                        json_integer((json_int_t)uatomic_read(&w->presence_resync_failed)));
    json_object_set_new(o, "presence-events",
                        json_integer((json_int_t)uatomic_read(&w->presence_events)));
    json_object_set_new(o, "presence-coalesced",
                        json_integer((json_int_t)uatomic_read(&ib->coalesced)));
    json_object_set_new(o, "presence-overflows",
                        json_integer((json_int_t)uatomic_read(&ib->presence_overflows)));
    json_object_set_new(o, "stalled", json_boolean(stalled));
    json_object_set_new(o, "stalled-ms",
                        json_integer(stalled ? (json_int_t)(sl_now_ms() -
                                                            uatomic_read(&w->stalled_since_ms))
                                             : 0));
    json_object_set_new(o, "stalls", json_integer((json_int_t)uatomic_read(&w->stalls)));
    json_object_set_new(o, "stall-kills",
                        json_integer((json_int_t)uatomic_read(&w->stall_kills)));
    /* Blocked on a registry lock another process holds (the master's
     * stall watch follows the wait to that process, sl_lock.h). */
    uint32_t by = uatomic_read(&w->blocked_by);
    json_object_set_new(o, "blocked-by", pid > 0 && by >= 1 && by <= SL_REG_BROKER_SLOT + 1
                                             ? json_integer((json_int_t)by - 1)
                                             : json_null());
    const sl_lock_holder_t *lh = &sl_shm->reg.qsbr.holders[i];
    bool waits = pid > 0 && CMM_LOAD_SHARED(lh->waiting);
    cmm_smp_rmb(); /* pairs with the wmb of the wait's start: this wait's time */
    json_object_set_new(o, "lock-wait-ms",
                        json_integer(waits ? (json_int_t)(sl_mono_ms() -
                                                          CMM_LOAD_SHARED(lh->wait_since_ms))
                                           : 0));
    /* Dead, and its cleanup waits to take a lock its record names (its
     * reader slot stays online until then: master.c, note_cleanup_wait). */
    int64_t cw = (int64_t)uatomic_read(&w->cleanup_wait_since_ms);
    int64_t cw_ms = pid == 0 && cw > 0 ? SL_MAX(sl_now_ms() - cw, 0) : 0;
    uint32_t cby = uatomic_read(&w->cleanup_blocked_by);
    json_object_set_new(o, "cleanup-wait-ms", json_integer((json_int_t)cw_ms));
    json_object_set_new(o, "cleanup-blocked-by", cw_ms > 0 && cby >= 1 && cby <= SL_REG_BROKER_SLOT + 1
                                                     ? json_integer((json_int_t)cby - 1)
                                                     : json_null());
    json_object_set_new(o, "cleanup-set-aside",
                        json_integer((json_int_t)uatomic_read(&w->cleanup_set_aside)));
    json_object_set_new(o, "cleanup-passes",
                        json_integer((json_int_t)uatomic_read(&w->cleanup_passes)));
    if (cw > 0 && pid == 0 && cw_ms >= sl_conf->worker_stall_kill_ms && t->stuck)
        json_array_append_new(t->stuck, json_integer((json_int_t)i));
    uint64_t bin = CMM_LOAD_SHARED(w->bytes_in), bout = CMM_LOAD_SHARED(w->bytes_out),
             acc = uatomic_read(&w->accepted);
    t->bytes_in += bin;
    t->bytes_out += bout;
    t->accepted += acc;
    json_object_set_new(o, "bytes-in", json_integer((json_int_t)bin));
    json_object_set_new(o, "bytes-out", json_integer((json_int_t)bout));
    json_object_set_new(o, "accepted-connections", json_integer((json_int_t)acc));
    json_t *hs = json_object();
    for (int k = 0; k < SL_HS__COUNT; k++) {
        uint64_t n = CMM_LOAD_SHARED(w->handshake_failures[k]);
        t->handshake_failures[k] += n;
        json_object_set_new(hs, sl_hs_fail_name((sl_hs_fail_t)k), json_integer((json_int_t)n));
    }
    json_object_set_new(o, "handshake-failures", hs);
    json_object_set_new(o, "start-time-ms", json_integer((json_int_t)uatomic_read(&w->started_ms)));
    if (t->details) {
        proc_json(o, pid);
        json_object_set_new(o, "delivery-latency", hist_json(&w->delivery));
        json_object_set_new(o, "rpc-round-trip", hist_json(&w->rpc));
    }
    hist_add(&t->delivery, &w->delivery);
    hist_add(&t->rpc, &w->rpc);
    *doc = o;
}

static json_t *workers_json(totals_t *t)
{
    json_t *a = json_array();
    for (uint32_t i = 0; i < sl_shm->nworkers; i++)
        json_array_append_new(a, worker_json(i, t));
    /* The master emits too; its figures count in the telemetry totals. */
    t->tel_emitted += uatomic_read(&sl_shm->master_tel.tel_emitted);
    t->tel_dropped += uatomic_read(&sl_shm->master_tel.tel_dropped);
    /* ...and counts what accept() refused (accept-failed,
     * descriptors-exhausted) in its slot. */
    for (int e = 0; e < SL_ERR__COUNT; e++)
        t->errors[e] += uatomic_read(&sl_shm->master_tel.errors[e]);
    return a;
}

/* The mapping: the fixed header plus what the registry's arena hands out;
 * total is the whole mapping. */
static json_t *shm_json(void)
{
    sl_reg_figures_t f;
    sl_reg_figures(&sl_shm->reg, &f);
    uint64_t header = sl_shm->size - f.total_bytes;
    sl_arena_stats_t as;
    sl_arena_stats(sl_shm->reg.arena, &as);
    json_t *classes = json_array();
    for (int c = 0; c < SL_ARENA_CLASSES; c++)
        json_array_append_new(classes, json_pack("{s:i, s:I, s:I}", "size", (int)as.cls[c].size,
                                                 "used", (json_int_t)as.cls[c].used, "total",
                                                 (json_int_t)as.cls[c].total));
    json_t *o = json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "used-bytes",
                     (json_int_t)(header + f.used_bytes), "total-bytes", (json_int_t)sl_shm->size,
                     "allocation-failures", (json_int_t)f.failures, "registered-connections",
                     (json_int_t)f.registered_connections, "rcu-pending", (json_int_t)f.qsbr_pending,
                     "rcu-retired", (json_int_t)f.qsbr_retired, "rcu-reclaimed",
                     (json_int_t)f.qsbr_reclaimed);
    json_object_set_new(o, "classes", classes);
    json_object_set_new(o, "page-run-bytes", json_integer((json_int_t)as.run_pages * 4096));
    json_object_set_new(o, "free-pages", json_integer((json_int_t)as.free_pages));
    json_object_set_new(o, "lock-recoveries", json_integer((json_int_t)as.recoveries));
    return o;
}

/* /stats lists at most this many channels, the busiest by message count
 * (a registry can hold --max-channels of them; the listing with all of
 * them, page by page, is /channels). */
#define SL_STATS_MAX_CHANNELS 100

typedef struct {
    sl_chan_t *top[SL_STATS_MAX_CHANNELS];
    uint64_t count[SL_STATS_MAX_CHANNELS];
    size_t n;
    uint64_t seen;
    bool hide_users; /* leave out (count as omitted) the user-limited ones */
} top_t;

bool sl_stats_names_users(const char *id, size_t len)
{
    return sl_conf_auth_enabled(sl_conf) && memchr(id, '#', len) != NULL;
}

static void top_swap(top_t *t, size_t a, size_t b)
{
    sl_chan_t *c = t->top[a];
    uint64_t k = t->count[a];
    t->top[a] = t->top[b], t->count[a] = t->count[b];
    t->top[b] = c, t->count[b] = k;
}

/* Restore the min-heap order of top[0 .. n) from its root down. */
static void top_sift(top_t *t, size_t n)
{
    for (size_t i = 0;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && t->count[l] < t->count[m])
            m = l;
        if (r < n && t->count[r] < t->count[m])
            m = r;
        if (m == i)
            return;
        top_swap(t, i, m);
        i = m;
    }
}

/* Keep the busiest: a min-heap on the message count, so each channel costs
 * O(log 100) - the walk of a registry of --max-channels stays short. */
static int chan_top_cb(sl_table_node_t *n, void *arg)
{
    top_t *t = arg;
    sl_chan_t *ch = (sl_chan_t *)n;
    uint64_t k = sl_chan_message_count(ch);
    t->seen++;
    if (t->hide_users && sl_stats_names_users(ch->id, ch->node.klen))
        return 0;
    size_t i;
    if (t->n < SL_STATS_MAX_CHANNELS) {
        i = t->n++;
        t->top[i] = ch, t->count[i] = k;
        for (; i > 0 && t->count[(i - 1) / 2] > t->count[i]; i = (i - 1) / 2)
            top_swap(t, i, (i - 1) / 2);
        return 0;
    }
    if (k <= t->count[0])
        return 0;
    t->top[0] = ch, t->count[0] = k;
    top_sift(t, t->n);
    return 0;
}

/* Presence counts of the listed channels walk their subscriber lists
 * (lock-free): at most this many entries per /stats in all; the channels
 * beyond get "num-users": null (num-clients is then the subscriber count). */
#define SL_STATS_PRESENCE_WALK 200000

static json_t *channel_stats_json(bool identities)
{
    json_t *chans = json_object();
    top_t *top = NULL;
    uint64_t omitted = 0;
    if (sl_cluster) {
        /* Every node's channels (the broker's snapshot, refreshed a slice
         * at a time): subscriber-count is the sum over live nodes. */
        omitted = sl_cluster_top_channels(chans, SL_STATS_MAX_CHANNELS);
        if (!identities) {
            /* Without identities, no channel that names users (counted
             * as omitted). */
            const char *k;
            json_t *v;
            void *tmp;
            json_object_foreach_safe(chans, tmp, k, v) {
                if (sl_stats_names_users(k, strlen(k))) {
                    json_object_del(chans, k);
                    omitted++;
                }
            }
        }
    } else if ((top = calloc(1, sizeof(*top))) != NULL) {
        top->hide_users = !identities;
        sl_table_foreach(sl_shm->reg.channels, chan_top_cb, top);
        /* Busiest first: pop the heap's least busy to the end. */
        for (size_t n = top->n; n > 1; n--) {
            top_swap(top, 0, n - 1);
            top_sift(top, n - 1);
        }
        uint32_t budget = SL_STATS_PRESENCE_WALK;
        for (size_t i = 0; i < top->n; i++) {
            sl_chan_t *ch = top->top[i];
            /* Figures read without the channel lock: they may be one
             * message behind. */
            uint32_t subs = uatomic_read(&ch->subscribers), clients = subs, users = 0;
            /* num-users walks the subscriber list: for operators only (a
             * public /stats in a loop must not make every worker walk up to
             * the budget each time: review r15 M3), and the budget is
             * charged what was walked, counted or not (a list that grew,
             * or no memory, still cost its walk). */
            bool counted = false;
            if (identities && subs <= budget) {
                counted = sl_chan_presence_counts(ch, budget, &clients, &users);
                budget -= SL_MIN(clients, budget);
            }
            if (!counted)
                clients = subs;
            json_object_setn_new(
                chans, ch->id, ch->node.klen,
                json_pack("{s:I, s:I, s:I, s:I, s:I, s:o}", "subscriber-count",
                          (json_int_t)subs, "message-count",
                          (json_int_t)top->count[i], "created-at", (json_int_t)ch->created_at,
                          "retention-count", (json_int_t)sl_chan_retained_count(ch),
                          "num-clients", (json_int_t)clients, "num-users",
                          counted ? json_integer(users) : json_null()));
        }
        omitted = top->seen > top->n ? top->seen - top->n : 0;
    }
    sl_chan_totals_t t;
    sl_chan_totals(&sl_shm->reg, &t);
    uint64_t pending = sl_table_count(sl_shm->reg.rpcs), old = uatomic_read(&sl_shm->rpc_old);
    json_t *o = json_pack("{s:o, s:I, s:I, s:I, s:I}", "channels", chans, "total-channels",
                          (json_int_t)t.channels, "total-subscriptions",
                          (json_int_t)t.subscriptions, "pending-rpc-requests",
                          (json_int_t)pending, "old-rpc-requests", (json_int_t)old);
    json_object_set_new(o, "reaped-channels",
                        json_integer((json_int_t)uatomic_read(&sl_shm->channels_reaped)));
    json_object_set_new(o, "expired-messages",
                        json_integer((json_int_t)uatomic_read(&sl_shm->reg.expired)));
    json_object_set_new(o, "channels-omitted", json_integer((json_int_t)omitted));
    free(top);
    return o;
}

/* Connections listed by user in "access" (the rest are counted). */
#define SL_STATS_MAX_USER_CONNS 1000

typedef struct {
    json_t *users;
    uint64_t listed, omitted;
} users_t;

static void user_cb(const sl_access_user_t *u, void *arg)
{
    users_t *x = arg;
    if (x->listed >= SL_STATS_MAX_USER_CONNS) {
        x->omitted++;
        return;
    }
    json_t *list = json_object_get(x->users, u->user);
    if (list == NULL) {
        list = json_array();
        json_object_set_new(x->users, u->user, list);
    }
    json_array_append_new(list, json_string(u->conn_id));
    x->listed++;
}

static void ip_cb(const char *name, size_t len, uint64_t total, void *arg)
{
    if (json_object_size(arg) < SL_STATS_MAX_USER_CONNS)
        json_object_setn_new(arg, name, len, json_integer((json_int_t)total));
}

/* Who is connected: each authenticated connection under its user (up to
 * SL_STATS_MAX_USER_CONNS), and with --max-connections-per-ip the
 * connections per address (up to as many addresses).  Without identities
 * only the two counts, read from the users table's size: nothing is
 * walked, and no user id or address is shown. */
static json_t *access_json(uint64_t active, bool identities)
{
    if (!identities) {
        uint64_t authed = sl_table_count(sl_shm->reg.access->users);
        return json_pack("{s:I, s:I, s:b}", "authenticated-connections", (json_int_t)authed,
                         "anonymous-connections",
                         (json_int_t)(active > authed ? active - authed : 0), "identities-hidden",
                         1);
    }
    users_t x = {json_object(), 0, 0};
    sl_access_user_conns(&sl_shm->reg, NULL, 0, user_cb, &x);
    uint64_t authed = x.listed + x.omitted;
    json_t *o = json_pack("{s:I, s:I, s:o, s:I}", "authenticated-connections", (json_int_t)authed,
                          "anonymous-connections",
                          (json_int_t)(active > authed ? active - authed : 0), "users", x.users,
                          "connections-omitted", (json_int_t)x.omitted);
    if (sl_conf->max_connections_per_ip > 0) {
        json_t *ips = json_object();
        sl_access_foreach(&sl_shm->reg, SL_ACCESS_IP, ip_cb, ips);
        json_object_set_new(o, "connections-per-ip", ips);
    }
    return o;
}

/* Unhealthy above this share of the arena in use. */
#define SL_SHM_HEALTH_LIMIT 0.9

/* accept() hit EMFILE/ENFILE within this long: /health says unhealthy
 * (the server cannot take new connections) until it has passed. */
#define SL_FD_EXHAUSTED_UNHEALTHY_MS 10000

static bool fd_exhausted_recently(void)
{
    int64_t t = uatomic_read(&sl_shm->fd_exhausted_mono);
    return t != 0 && sl_mono_ms() - t < SL_FD_EXHAUSTED_UNHEALTHY_MS;
}

static int64_t uptime_ms(void)
{
    return sl_now_ms() - sl_shm->start_ms;
}

json_t *sl_stats_json(bool identities)
{
    totals_t t = {.details = true};
    json_t *workers = workers_json(&t);
    uint64_t processed = uatomic_read(&sl_shm->tel_processed);
    uint64_t written = t.tel_emitted;
    json_t *errors = json_object();
    for (int e = 0; e < SL_ERR__COUNT; e++)
        json_object_set_new(errors, sl_err_name((sl_err_t)e), json_integer((json_int_t)t.errors[e]));
    json_t *tel = json_pack("{s:{s:I, s:I, s:I, s:I, s:b}}", sl_conf->app_name, "processed",
                            (json_int_t)processed, "queued",
                            (json_int_t)(written > processed ? written - processed : 0), "dropped",
                            (json_int_t)t.tel_dropped, "errors",
                            (json_int_t)uatomic_read(&sl_shm->tel_errors), "enabled",
                            sl_conf->telemetry);
    json_t *cfg = sl_conf_to_json(sl_conf);
    json_t *doc = json_pack("{s:I, s:I, s:I, s:I, s:o, s:o, s:o, s:o, s:I, s:o}",
                     "active-connections", (json_int_t)t.connections, "total-messages",
                     (json_int_t)t.messages_in, "total-messages-out", (json_int_t)t.messages_out,
                     "uptime-ms", (json_int_t)uptime_ms(), "server-config", cfg, "workers",
                     workers, "telemetry-stats", tel, "shared-memory", shm_json(),
                     "slow-consumer-disconnects", (json_int_t)t.slow, "errors", errors);
    json_object_set_new(doc, "channel-stats", channel_stats_json(identities));
    json_object_set_new(doc, "overloaded", json_integer((json_int_t)t.overloaded));
    json_object_set_new(doc, "published", json_integer((json_int_t)t.published));
    json_object_set_new(doc, "delivered", json_integer((json_int_t)t.delivered));
    json_object_set_new(doc, "version", json_string(SL_VERSION));
    json_object_set_new(doc, "bytes-in", json_integer((json_int_t)t.bytes_in));
    json_object_set_new(doc, "bytes-out", json_integer((json_int_t)t.bytes_out));
    json_object_set_new(doc, "accepted-connections", json_integer((json_int_t)t.accepted));
    json_t *hs = json_object();
    for (int k = 0; k < SL_HS__COUNT; k++)
        json_object_set_new(hs, sl_hs_fail_name((sl_hs_fail_t)k),
                            json_integer((json_int_t)t.handshake_failures[k]));
    json_object_set_new(doc, "handshake-failures", hs);
    json_object_set_new(doc, "delivery-latency", hist_json(&t.delivery));
    json_object_set_new(doc, "rpc-round-trip", hist_json(&t.rpc));
    json_object_set_new(doc, "access", access_json(t.connections, identities));
    if (sl_cluster)
        json_object_set_new(doc, "cluster", sl_cluster_stats());
    json_object_set_new(doc, "outbound-bytes", json_integer((json_int_t)t.outbound_bytes));
    json_object_set_new(doc, "backpressure-pauses",
                        json_integer((json_int_t)t.backpressure_pauses));
    json_object_set_new(doc, "inbound-bytes", json_integer((json_int_t)t.inbound_bytes));
    json_object_set_new(doc, "tls-handshakes", json_integer((json_int_t)t.tls_handshakes));
    json_object_set_new(doc, "tls-resumed", json_integer((json_int_t)t.tls_resumed));
    json_object_set_new(doc, "tls-heap-bytes", json_integer((json_int_t)t.tls_heap_bytes));
    json_object_set_new(doc, "tls-trims", json_integer((json_int_t)t.tls_trims));
    json_object_set_new(doc, "tls-trim-ms", json_integer((json_int_t)(t.tls_trim_us / 1000)));
    json_object_set_new(doc, "descriptors-exhausted-recently", json_boolean(fd_exhausted_recently()));
    return doc;
}

json_t *sl_health_json(bool *healthy)
{
    totals_t t = {0};
    t.stalled = json_array();
    t.stuck = json_array();
    json_decref(workers_json(&t));
    /* Figures read without a lock or a walk: the probe a load balancer
     * sends every second must stay cheap, and must not wait for a process
     * that holds the arena lock. */
    uint64_t total, used = sl_arena_used(sl_shm->reg.arena, &total);
    bool shm_ok = (double)used < SL_SHM_HEALTH_LIMIT * (double)total;
    uint64_t pending = sl_table_count(sl_shm->reg.rpcs), old = uatomic_read(&sl_shm->rpc_old);
    char why[160] = "";
    bool cluster_ok = !sl_cluster || sl_cluster_healthy(why, sizeof(why));
    bool fd_ok = !fd_exhausted_recently();
    bool ok = t.live_workers == (int)sl_shm->nworkers && shm_ok && old < SL_RPC_OLD_UNHEALTHY &&
              json_array_size(t.stalled) == 0 && json_array_size(t.stuck) == 0 && fd_ok &&
              cluster_ok;
    *healthy = ok;
    sl_chan_totals_t ct;
    sl_chan_totals(&sl_shm->reg, &ct);
    json_t *doc = json_pack("{s:s, s:I, s:I, s:{s:b, s:I, s:I, s:I, s:I, s:i, s:i, s:b}, s:I}", "status",
                     ok ? "healthy" : "unhealthy", "connections", (json_int_t)t.connections,
                     "channels", (json_int_t)ct.channels, "system-health", "healthy", ok,
                     "total-channels", (json_int_t)ct.channels, "total-subscriptions",
                     (json_int_t)ct.subscriptions, "pending-rpc-requests", (json_int_t)pending,
                     "old-rpc-requests", (json_int_t)old, "workers-alive", t.live_workers,
                     "workers-expected", (int)sl_shm->nworkers, "shared-memory-ok", shm_ok,
                     "uptime-ms", (json_int_t)uptime_ms());
    json_object_set_new(json_object_get(doc, "system-health"), "stalled-workers", t.stalled);
    if (sl_cluster) {
        /* Says why when the node cannot reach the cluster. */
        json_object_set_new(json_object_get(doc, "system-health"), "cluster-ok",
                            json_boolean(cluster_ok));
        if (!cluster_ok)
            json_object_set_new(doc, "reason", json_string(why));
    }
    json_object_set_new(json_object_get(doc, "system-health"), "stuck-cleanups", t.stuck);
    json_object_set_new(doc, "descriptors-ok", json_boolean(fd_ok));
    json_object_set_new(doc, "descriptors-exhausted",
                        json_integer((json_int_t)t.errors[SL_ERR_FD_EXHAUSTED]));
    return doc;
}
