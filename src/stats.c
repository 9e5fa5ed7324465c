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

#include <urcu/uatomic.h>

typedef struct {
    uint64_t connections, messages_in, messages_out, slow, tel_emitted, tel_dropped;
    uint64_t errors[SL_ERR__COUNT];
    int live_workers;
} totals_t;

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
    t->tel_emitted += uatomic_read(&w->tel_emitted);
    t->tel_dropped += uatomic_read(&w->tel_dropped);
    for (int e = 0; e < SL_ERR__COUNT; e++)
        t->errors[e] += uatomic_read(&w->errors[e]);
    if (pid > 0)
        t->live_workers++;
    return json_pack("{s:i, s:i, s:I, s:I, s:I, s:I, s:i, s:I, s:I, s:I, s:I}", "id", (int)i,
                     "pid", (int)pid, "connections", (json_int_t)conns, "messages-in",
                     (json_int_t)in, "messages-out", (json_int_t)out, "restarts",
                     (json_int_t)uatomic_read(&w->restarts), "alive", pid > 0,
                     "echo-connections", (json_int_t)uatomic_read(&w->echo_connections),
                     "http-connections", (json_int_t)uatomic_read(&w->http_connections),
                     "http-requests", (json_int_t)uatomic_read(&w->http_requests),
                     "slow-consumer-disconnects", (json_int_t)slow);
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
    return json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "used-bytes",
                     (json_int_t)(header + f.used_bytes), "total-bytes", (json_int_t)sl_shm->size,
                     "allocation-failures", (json_int_t)f.failures, "registered-connections",
                     (json_int_t)f.registered_connections, "rcu-pending", (json_int_t)f.qsbr_pending,
                     "rcu-retired", (json_int_t)f.qsbr_retired, "rcu-reclaimed",
                     (json_int_t)f.qsbr_reclaimed);
}

/* Unhealthy above this share of the arena in use. */
#define SL_SHM_HEALTH_LIMIT 0.9

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
    return json_pack("{s:I, s:I, s:I, s:I, s:o, s:o, s:o, s:o, s:I, s:o}",
                     "active-connections", (json_int_t)t.connections, "total-messages",
                     (json_int_t)t.messages_in, "total-messages-out", (json_int_t)t.messages_out,
                     "uptime-ms", (json_int_t)uptime_ms(), "server-config", cfg, "workers",
                     workers, "telemetry-stats", tel, "shared-memory", shm_json(),
                     "slow-consumer-disconnects", (json_int_t)t.slow, "errors", errors);
}

json_t *sl_health_json(bool *healthy)
{
    totals_t t = {0};
    json_decref(workers_json(&t));
    sl_reg_figures_t f;
    sl_reg_figures(&sl_shm->reg, &f);
    bool shm_ok = (double)f.used_bytes < SL_SHM_HEALTH_LIMIT * (double)f.total_bytes;
    bool ok = t.live_workers == (int)sl_shm->nworkers && shm_ok;
    *healthy = ok;
    return json_pack("{s:s, s:I, s:{s:b, s:i, s:i, s:b}, s:I}", "status",
                     ok ? "healthy" : "unhealthy", "connections", (json_int_t)t.connections,
                     "system-health", "healthy", ok, "workers-alive", t.live_workers,
                     "workers-expected", (int)sl_shm->nworkers, "shared-memory-ok", shm_ok,
                     "uptime-ms", (json_int_t)uptime_ms());
}
