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
#include "sl_cluster.h"
#include "sl_rpc.h"
#include "sl_pubsub.h"

#include <dirent.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <urcu/system.h>
#include <urcu/uatomic.h>

/* An RPC request older than this is "old"; this many old ones make the
 * server unhealthy (the seeds' rule). */
#define SL_RPC_OLD_MS 60000
#define SL_RPC_OLD_UNHEALTHY 10

typedef struct {
    uint64_t connections, messages_in, messages_out, slow, tel_emitted, tel_dropped;
    uint64_t published, delivered, overloaded;
    uint64_t errors[SL_ERR__COUNT];
    uint64_t bytes_in, bytes_out, accepted;
    uint64_t handshake_failures[SL_HS__COUNT];
    sl_hist_t delivery, rpc;
    int live_workers;
    bool details; /* /stats (not /health): process figures, histograms */
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

static json_t *worker_json(uint32_t i, totals_t *t)
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
    if (pid > 0)
        t->live_workers++;
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
    json_object_set_new(o, "inbox-depth",
                        json_integer((json_int_t)sl_inbox_depth(sl_shm->reg.inboxes[i])));
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
    return o;
}

static json_t *workers_json(totals_t *t)
{
    json_t *a = json_array();
    for (uint32_t i = 0; i < sl_shm->nworkers; i++)
        json_array_append_new(a, worker_json(i, t));
    /* The master emits too; its figures count in the telemetry totals. */
    t->tel_emitted += uatomic_read(&sl_shm->master_tel.tel_emitted);
    t->tel_dropped += uatomic_read(&sl_shm->master_tel.tel_dropped);
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
    if (sl_cluster) {
        /* Every node's channels (the broker's last snapshot, about a
         * second old): subscriber-count is the sum over live nodes. */
        json_t *all = sl_cluster_channels();
        const char *k;
        json_t *v;
        json_object_foreach(all, k, v)
            json_object_set_new(chans, k,
                                json_pack("{s:O, s:O, s:O, s:O}", "subscriber-count",
                                          json_object_get(v, "subscriber-count"), "message-count",
                                          json_object_get(v, "message-count"), "created-at",
                                          json_object_get(v, "created-at"), "retention-count",
                                          json_object_get(v, "retention-count")));
        json_decref(all);
    } else {
        sl_table_foreach(sl_shm->reg.channels, chan_stat_cb, chans);
    }
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

static int64_t uptime_ms(void)
{
    return sl_now_ms() - sl_shm->start_ms;
}

json_t *sl_stats_json(void)
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
    json_object_set_new(doc, "channel-stats", channel_stats_json());
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
    if (sl_cluster)
        json_object_set_new(doc, "cluster", sl_cluster_stats());
    return doc;
}

json_t *sl_health_json(bool *healthy)
{
    totals_t t = {0};
    json_decref(workers_json(&t));
    sl_reg_figures_t f;
    sl_reg_figures(&sl_shm->reg, &f);
    bool shm_ok = (double)f.used_bytes < SL_SHM_HEALTH_LIMIT * (double)f.total_bytes;
    uint64_t pending, old;
    sl_rpc_counts(&sl_shm->reg, sl_now_ms(), SL_RPC_OLD_MS, &pending, &old);
    char why[160] = "";
    bool cluster_ok = !sl_cluster || sl_cluster_healthy(why, sizeof(why));
    bool ok = t.live_workers == (int)sl_shm->nworkers && shm_ok && old < SL_RPC_OLD_UNHEALTHY &&
              cluster_ok;
    *healthy = ok;
    sl_chan_totals_t ct;
    sl_chan_totals(&sl_shm->reg, &ct);
    json_t *h = json_pack("{s:s, s:I, s:I, s:{s:b, s:I, s:I, s:I, s:I, s:i, s:i, s:b}, s:I}", "status",
                     ok ? "healthy" : "unhealthy", "connections", (json_int_t)t.connections,
                     "channels", (json_int_t)ct.channels, "system-health", "healthy", ok,
                     "total-channels", (json_int_t)ct.channels, "total-subscriptions",
                     (json_int_t)ct.subscriptions, "pending-rpc-requests", (json_int_t)pending,
                     "old-rpc-requests", (json_int_t)old, "workers-alive", t.live_workers,
                     "workers-expected", (int)sl_shm->nworkers, "shared-memory-ok", shm_ok,
                     "uptime-ms", (json_int_t)uptime_ms());
    if (sl_cluster) {
        /* Says why when the node cannot reach the cluster. */
        json_object_set_new(json_object_get(h, "system-health"), "cluster-ok",
                            json_boolean(cluster_ok));
        if (!cluster_ok)
            json_object_set_new(h, "reason", json_string(why));
    }
    return h;
}
