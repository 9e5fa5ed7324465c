/*
 * stats.c - /stats and /health from the shared counters.
 *
 * Totals are computed here as sums of the per-worker figures read in one
 * pass, so a document is always self-consistent (active-connections equals
 * the sum of workers[].connections in the same reply) even while counters
 * move underneath.
 */
#include "sl_stats.h"
#include "sl_conf.h"
#include "sl_shm.h"
#include "sl_chan.h"
#include "sl_rpc.h"
#include "sl_pubsub.h"

#include <urcu/uatomic.h>

/* An RPC request older than this is "old"; this many old ones make the
 * server unhealthy (the seeds' rule). */
#define SL_RPC_OLD_MS 60000
#define SL_RPC_OLD_UNHEALTHY 10

typedef struct {
    uint64_t connections, messages_in, messages_out, slow, tel_emitted, tel_dropped;
    uint64_t published, delivered, overloaded, outbound_bytes, backpressure_pauses;
    uint64_t errors[SL_ERR__COUNT];
    int live_workers;
} totals_t;

/* Add worker i's figures to t; with `o`, also describe it there. */
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
    t->outbound_bytes += obytes;
    t->backpressure_pauses += pauses;
    if (pid > 0)
        t->live_workers++;
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
    json_object_set_new(o, "inbox-depth",
                        json_integer((json_int_t)sl_inbox_depth(sl_shm->reg.inboxes[i])));
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

static int chan_stat_cb(sl_table_node_t *n, void *arg)
{
    sl_chan_t *ch = (sl_chan_t *)n;
    /* ring_count is read without the channel lock: a figure, not a
     * decision; it may be one message behind. */
    json_object_setn_new(
        arg, ch->id, ch->node.klen,
        json_pack("{s:I, s:I, s:I, s:I}", "subscriber-count",
                  (json_int_t)uatomic_read(&ch->subscribers), "message-count",
                  (json_int_t)uatomic_read(&ch->message_count), "created-at",
                  (json_int_t)ch->created_at, "retention-count",
                  (json_int_t)uatomic_read(&ch->ring_count)));
    return 0;
}

static json_t *channel_stats_json(void)
{
    json_t *chans = json_object();
    sl_table_foreach(sl_shm->reg.channels, chan_stat_cb, chans);
    sl_chan_totals_t t;
    sl_chan_totals(&sl_shm->reg, &t);
    uint64_t pending, old;
    sl_rpc_counts(&sl_shm->reg, sl_now_ms(), SL_RPC_OLD_MS, &pending, &old);
    return json_pack("{s:o, s:I, s:I, s:I, s:I}", "channels", chans, "total-channels",
                     (json_int_t)t.channels, "total-subscriptions", (json_int_t)t.subscriptions,
                     "pending-rpc-requests", (json_int_t)pending, "old-rpc-requests",
                     (json_int_t)old);
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

json_t *sl_stats_json(void)
{
    totals_t t = {0};
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
    json_object_set_new(doc, "channel-stats", channel_stats_json());
    json_object_set_new(doc, "overloaded", json_integer((json_int_t)t.overloaded));
    json_object_set_new(doc, "published", json_integer((json_int_t)t.published));
    json_object_set_new(doc, "delivered", json_integer((json_int_t)t.delivered));
    json_object_set_new(doc, "outbound-bytes", json_integer((json_int_t)t.outbound_bytes));
    json_object_set_new(doc, "backpressure-pauses",
                        json_integer((json_int_t)t.backpressure_pauses));
    json_object_set_new(doc, "descriptors-exhausted-recently", json_boolean(fd_exhausted_recently()));
    return doc;
}

json_t *sl_health_json(bool *healthy)
{
    totals_t t = {0};
    for (uint32_t i = 0; i < sl_shm->nworkers; i++)
        worker_figures(i, &t, NULL);
    for (int e = 0; e < SL_ERR__COUNT; e++)
        t.errors[e] += uatomic_read(&sl_shm->master_tel.errors[e]);
    sl_reg_figures_t f;
    sl_reg_figures(&sl_shm->reg, &f);
    bool shm_ok = (double)f.used_bytes < SL_SHM_HEALTH_LIMIT * (double)f.total_bytes;
    uint64_t pending, old;
    sl_rpc_counts(&sl_shm->reg, sl_now_ms(), SL_RPC_OLD_MS, &pending, &old);
    bool fd_ok = !fd_exhausted_recently();
    bool ok = t.live_workers == (int)sl_shm->nworkers && shm_ok && old < SL_RPC_OLD_UNHEALTHY &&
              fd_ok;
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
    if (doc) {
        json_object_set_new(doc, "descriptors-ok", json_boolean(fd_ok));
        json_object_set_new(doc, "descriptors-exhausted",
                            json_integer((json_int_t)t.errors[SL_ERR_FD_EXHAUSTED]));
    }
    return doc;
}
