/*
 * metrics.c - /metrics: the /stats figures in the Prometheus text
 * exposition format (version 0.0.4).
 *
 * Built from the very documents /stats and /health serve, so the two can
 * never disagree: one source of figures, two spellings.  Every metric has
 * HELP and TYPE lines; counters end in _total; per-worker figures carry a
 * worker label, per-channel ones a channel label, capped at
 * SL_METRICS_MAX_CHANNELS series (the busiest by message count are kept,
 * and the number left out is itself a metric).
 */
#include "sl_metrics.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SL_METRICS_MAX_CHANNELS 100

typedef struct {
    char *p;
    size_t len, cap;
    bool oom;
} out_t;

static void put(out_t *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void put(out_t *o, const char *fmt, ...)
{
    for (int attempt = 0; attempt < 2 && !o->oom; attempt++) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(o->p + o->len, o->cap - o->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            o->oom = true;
            return;
        }
        if ((size_t)n < o->cap - o->len) {
            o->len += (size_t)n;
            return;
        }
        size_t cap = (o->cap + (size_t)n + 1) * 2;
        char *q = realloc(o->p, cap);
        if (q == NULL) {
            o->oom = true;
            return;
        }
        o->p = q;
        o->cap = cap;
    }
}

/* A label value: backslash, double quote and newline escaped. */
static void put_label(out_t *o, const char *s)
{
    for (; *s; s++) {
        if (*s == '\\' || *s == '"')
            put(o, "\\%c", *s);
        else if (*s == '\n')
            put(o, "\\n");
        else
            put(o, "%c", *s);
    }
}

static void head(out_t *o, const char *name, const char *type, const char *help)
{
    put(o, "# HELP sente_lite_%s %s\n# TYPE sente_lite_%s %s\n", name, help, name, type);
}

static long long num(json_t *obj, const char *key)
{
    json_t *v = json_object_get(obj, key);
    if (json_is_boolean(v))
        return json_is_true(v);
    return json_is_integer(v) ? (long long)json_integer_value(v) : 0;
}

/* One metric per worker from workers[i][key]. */
static void per_worker(out_t *o, json_t *workers, const char *name, const char *type,
                       const char *key, const char *help)
{
    head(o, name, type, help);
    size_t i;
    json_t *w;
    json_array_foreach(workers, i, w)
        put(o, "sente_lite_%s{worker=\"%lld\"} %lld\n", name, num(w, "id"), num(w, key));
}

/* Like per_worker, for figures that may be fractional or unknown (null:
 * no sample for that worker). `scale` divides the value (ms -> s). */
static void per_worker_real(out_t *o, json_t *workers, const char *name, const char *type,
                            const char *key, double scale, const char *help)
{
    head(o, name, type, help);
    size_t i;
    json_t *w;
    json_array_foreach(workers, i, w) {
        json_t *v = json_object_get(w, key);
        if (json_is_number(v))
            put(o, "sente_lite_%s{worker=\"%lld\"} %.17g\n", name, num(w, "id"),
                json_number_value(v) / scale);
    }
}

/* A histogram per worker from workers[i][key] = {"buckets": {"<us>": cumulative,
 * ..., "+Inf": n}, "count", "sum-us"}, in seconds. */
static void per_worker_hist(out_t *o, json_t *workers, const char *name, const char *key,
                            const char *help)
{
    head(o, name, "histogram", help);
    size_t i;
    json_t *w;
    json_array_foreach(workers, i, w) {
        json_t *h = json_object_get(w, key), *b = json_object_get(h, "buckets");
        if (!json_is_object(b))
            continue;
        long long id = num(w, "id");
        const char *bound;
        json_t *v;
        json_object_foreach(b, bound, v) {
            if (strcmp(bound, "+Inf") == 0)
                put(o, "sente_lite_%s_bucket{worker=\"%lld\",le=\"+Inf\"} %lld\n", name, id,
                    (long long)json_integer_value(v));
            else
                put(o, "sente_lite_%s_bucket{worker=\"%lld\",le=\"%g\"} %lld\n", name, id,
                    atof(bound) / 1e6, (long long)json_integer_value(v));
        }
        put(o, "sente_lite_%s_sum{worker=\"%lld\"} %.6f\n", name, id,
            (double)num(h, "sum-us") / 1e6);
        put(o, "sente_lite_%s_count{worker=\"%lld\"} %lld\n", name, id, num(h, "count"));
    }
}

static void single(out_t *o, const char *name, const char *type, long long v, const char *help)
{
    head(o, name, type, help);
    put(o, "sente_lite_%s %lld\n", name, v);
}

typedef struct {
    const char *id;
    long long messages, subscribers, retained, clients, users; /* users -1: not counted */
} chan_t;

static int by_messages(const void *a, const void *b)
{
    const chan_t *x = a, *y = b;
    return (x->messages < y->messages) - (x->messages > y->messages);
}

/* --redis: the broker and one series per Redis instance (label redis). */
static void cluster_metrics(out_t *o, json_t *cl)
{
    if (cl == NULL)
        return;
    json_t *b = json_object_get(cl, "broker");
    single(o, "broker_up", "gauge", num(b, "alive"), "1 while the broker process runs.");
    single(o, "broker_restarts_total", "counter", num(b, "restarts"),
           "Times the master respawned the broker.");
    single(o, "broker_queue_depth", "gauge", num(b, "queue-depth"),
           "Requests waiting in the broker's queue.");
    single(o, "broker_queue_refused_total", "counter", num(b, "queue-refused"),
           "Requests refused because the broker's queue was full (overloaded).");
    single(o, "broker_unavailable_total", "counter", num(b, "unavailable"),
           "Requests answered broker-unavailable (not sent to Redis: not done).");
    single(o, "broker_timeouts_total", "counter", num(b, "timeouts"),
           "Requests answered broker-timeout (sent, no answer in time: may have been done).");
    single(o, "broker_expired_total", "counter", num(b, "expired"),
           "Requests dropped unanswered past their deadline.");
    single(o, "broker_delivered_total", "counter", num(b, "delivered"),
           "Messages from Redis handed to this node's workers.");
    single(o, "broker_dropped_total", "counter", num(b, "dropped"),
           "Messages from Redis dropped (backlog or hold bound): their channel reset (1012).");
    single(o, "broker_backlog", "gauge", num(b, "backlog"),
           "Messages from Redis waiting for room in a worker's inbox.");
    single(o, "broker_held", "gauge", num(b, "held"),
           "Live messages held while their channel catches up.");
    single(o, "broker_held_bytes", "gauge", num(b, "held-bytes"),
           "Bytes of those (bound: --redis-max-held-bytes).");
    single(o, "broker_hold_resets_total", "counter", num(b, "hold-resets"),
           "Channels reset (1012) because what they held passed a bound.");
    single(o, "broker_pushback_total", "counter", num(b, "pushback"),
           "Publishes refused (overloaded) while their channel had a backlog.");
    single(o, "broker_recovered_total", "counter", num(b, "recovered"),
           "Messages fetched from a channel's history after a lost link.");
    single(o, "broker_reset_channels_total", "counter", num(b, "reset-channels"),
           "Channels whose subscribers were closed (1012) to resubscribe.");
    single(o, "broker_adopted_channels_total", "counter", num(b, "adopted-channels"),
           "Channels a broker resumed at its start from where the last one stopped.");
    single(o, "broker_start_no_memory_total", "counter", num(b, "start-no-memory"),
           "Start-up walks of a broker that found no memory (links held down, retried).");
    single(o, "broker_deleted_channels_total", "counter", num(b, "deleted-channels"),
           "Channels deleted on another node and removed here.");
    single(o, "broker_presence_synced_total", "counter", num(b, "presence-synced"),
           "Channel rewrites of presence entries in Redis completed (one per channel, not per slice).");
    single(o, "broker_presence_sync_changes_total", "counter", num(b, "presence-sync-changes"),
           "Entries that rewrite added or removed (a join or leave published each).");
    single(o, "broker_presence_sync_rewalks_total", "counter", num(b, "presence-sync-rewalks"),
           "Slices of a big channel's rewrite walked from the list head (their checkpoint had left).");
    single(o, "broker_presence_sync_skipped_total", "counter", num(b, "presence-sync-skipped"),
           "Channels not rewritten: more local subscribers than one script takes (1000).");
    single(o, "broker_presence_sync_errors_total", "counter", num(b, "presence-sync-errors"),
           "Presence rewrites abandoned for an error answer from Redis (retried after a backoff).");
    single(o, "broker_presence_sync_deferred_total", "counter", num(b, "presence-sync-deferred"),
           "Times a presence rewrite script was put off, not built (once per loop turn or answer "
           "while its link had no room; tried again).");
    single(o, "broker_presence_dropped_foreign_total", "counter",
           num(b, "presence-dropped-foreign"),
           "Channels of another Redis instance removed from a link's nodepr set (stale entries).");
    single(o, "broker_same_instance_links_total", "counter", num(b, "same-instance-links"),
           "Connects that found two --redis entries reaching the same Redis instance and db.");
    single(o, "broker_presence_lost_total", "counter", num(b, "presence-lost"),
           "Presence writes not sent (link down or full) or joins / leaves not delivered (no memory).");
    single(o, "broker_presence_reasserts_total", "counter", num(b, "presence-reasserts"),
           "Presence rewrites because this node's heartbeat key had lapsed (others took it for dead).");
    single(o, "broker_presence_resyncs_total", "counter", num(b, "presence-resyncs"),
           "presence-resync notices queued for a channel's join-leave subscribers after a re-subscribe.");
    single(o, "broker_stalled", "gauge", num(b, "stalled"),
           "1 while the broker makes no progress (--worker-stall-ms).");
    single(o, "broker_stalls_total", "counter", num(b, "stalls"), "Times the broker stalled.");
    single(o, "broker_stall_kills_total", "counter", num(b, "stall-kills"),
           "Times the master killed a stalled broker (--worker-stall-kill-ms).");
    single(o, "node_id_conflict", "gauge", num(b, "node-id-conflict"),
           "1 while another running process heart-beats with this --node-id.");
    single(o, "cluster_nodes", "gauge", num(cl, "live-nodes"), "Live nodes in the cluster.");
    static const struct {
        const char *name, *key, *type, *help;
    } rm[] = {
        {"redis_connected", "connected", "gauge", "1 while the link to this Redis is up."},
        {"redis_latency_microseconds", "latency-us", "gauge", "Last PING round trip."},
        {"redis_reconnects_total", "reconnects", "counter", "Links established after the first."},
        {"redis_errors_total", "errors", "counter", "Error replies and failed connections."},
        {"redis_timeouts_total", "timeouts", "counter", "Commands past --redis-timeout-ms."},
        {"redis_in_flight", "in-flight", "gauge", "Commands sent, not yet answered."},
        {"redis_refused_total", "refused", "counter",
         "Requests refused (overloaded): too many commands in flight."},
        {"redis_epoch_renewals_total", "epoch-renewals", "counter",
         "Times a restarted or failed-over Redis made every channel take a new epoch."},
        {"redis_presence_purged_total", "presence-purged", "counter",
         "Presence entries of this node id's previous process removed at connect (a leave each)."},
        {"redis_catchups_in_flight", "catchups-in-flight", "gauge",
         "Catch-ups (missed messages fetched from the history) sent on this link."},
        {"redis_catchups_waiting", "catchups-waiting", "gauge",
         "Catch-ups waiting for a turn (at most 64 in flight per link), holding."},
        {"redis_catchups_waited_total", "catchups-waited", "counter",
         "Catch-ups that had to wait for a turn."},
        {"redis_history_bytes", "history-bytes", "gauge",
         "Page bytes (max-bytes) of the history requests in flight (budget 8 MiB)."},
        {"redis_history_refused_total", "history-refused", "counter",
         "history requests refused (overloaded): the page budget and its 4096 waiting were full."},
        {"redis_history_waiting", "history-waiting", "gauge",
         "history requests waiting for the link's 8 MiB page budget."},
        {"redis_history_waited_total", "history-waited", "counter",
         "history requests that had to wait for the link's page budget."},
        {"redis_history_cancelled_total", "history-cancelled", "counter",
         "Waiting history requests taken off the wait list unsent: their client had gone."},
        {"redis_history_expired_total", "history-expired", "counter",
         "Waiting history requests answered broker-timeout unsent: they waited --redis-timeout-ms for the page budget."},
    };
    json_t *links = json_object_get(cl, "redis");
    for (size_t m = 0; m < SL_ARRAY_LEN(rm); m++) {
        head(o, rm[m].name, rm[m].type, rm[m].help);
        size_t i;
        json_t *l;
        json_array_foreach(links, i, l)
            put(o, "sente_lite_%s{redis=\"%zu\"} %lld\n", rm[m].name, i, num(l, rm[m].key));
    }
}

char *sl_metrics_text(json_t *stats, json_t *health, bool healthy)
{
    out_t o = {malloc(16384), 0, 16384, false};
    if (o.p == NULL)
        return NULL;
    json_t *workers = json_object_get(stats, "workers");

    single(&o, "up", "gauge", healthy ? 1 : 0, "1 when /health is healthy, else 0.");
    head(&o, "build_info", "gauge", "Always 1; the version is in the label.");
    put(&o, "sente_lite_build_info{version=\"");
    put_label(&o, json_string_value(json_object_get(stats, "version")) ?: "unknown");
    put(&o, "\"} 1\n");
    single(&o, "uptime_seconds", "gauge", num(stats, "uptime-ms") / 1000,
           "Seconds since the master started.");
    per_worker(&o, workers, "worker_up", "gauge", "alive", "1 while the worker process runs.");
    per_worker(&o, workers, "worker_restarts_total", "counter", "restarts",
               "Times the master replaced the worker.");
    per_worker(&o, workers, "connections", "gauge", "connections",
               "Open WebSocket protocol connections.");
    per_worker(&o, workers, "messages_received_total", "counter", "messages-in",
               "Protocol messages received from clients.");
    per_worker(&o, workers, "messages_sent_total", "counter", "messages-out",
               "Protocol messages queued to clients.");
    per_worker(&o, workers, "published_total", "counter", "published",
               "Publishes accepted from this worker's clients.");
    per_worker(&o, workers, "delivered_total", "counter", "delivered",
               "Channel messages queued to this worker's subscribers.");
    per_worker(&o, workers, "overloaded_total", "counter", "overloaded",
               "Publishes and sends refused because an inbox or shared memory was full.");
    per_worker(&o, workers, "slow_consumer_disconnects_total", "counter",
               "slow-consumer-disconnects", "Connections closed for exceeding the send queue bound.");
    per_worker(&o, workers, "rpc_requests_total", "counter", "rpc-requests",
               "RPC requests accepted from this worker's clients.");
    per_worker(&o, workers, "rpc_responses_total", "counter", "rpc-responses",
               "RPC responses accepted from this worker's clients.");
    per_worker(&o, workers, "rpc_expired_total", "counter", "rpc-expired",
               "RPC requests of this worker's clients that timed out.");
    per_worker(&o, workers, "inbox_depth", "gauge", "inbox-depth",
               "Entries waiting in the worker's inbox.");
    per_worker(&o, workers, "inbox_skipped_total", "counter", "inbox-skipped",
               "Publishes that skipped the worker's full inbox (its subscribers closed 1013).");
    per_worker(&o, workers, "missed_disconnects_total", "counter", "missed-disconnects",
               "Subscribers closed 1013 because the worker's inbox missed their messages.");
    per_worker(&o, workers, "presence_resyncs_total", "counter", "presence-resyncs",
               "presence-resync notices: a join or leave skipped the worker's full inbox.");
    per_worker(&o, workers, "presence_resync_failed_total", "counter", "presence-resync-failed",
               "presence-resync notices that could not be built (subscriber closed 1013).");
    per_worker(&o, workers, "presence_events_total", "counter", "presence-events",
               "join / leave frames queued to the worker's subscribers (not in delivered_total).");
    per_worker(&o, workers, "presence_coalesced_total", "counter", "presence-coalesced",
               "Joins / leaves skipping the worker's inbox folded into a pending resync.");
    per_worker(&o, workers, "presence_overflows_total", "counter", "presence-overflows",
               "Joins / leaves skipping the worker's inbox with its presence set full "
               "(every presence subscriber resynced).");
    per_worker(&o, workers, "worker_stalled", "gauge", "stalled",
               "1 while the worker makes no progress (--worker-stall-ms).");
    per_worker(&o, workers, "worker_stalls_total", "counter", "stalls",
               "Times the worker was found stalled.");
    per_worker(&o, workers, "worker_stall_kills_total", "counter", "stall-kills",
               "Times the worker was killed for staying stalled (--worker-stall-kill-ms).");
    per_worker(&o, workers, "worker_cleanup_wait_ms", "gauge", "cleanup-wait-ms",
               "Dead worker: ms its cleanup has waited for a lock its record names "
               "(its reader slot holds reclamation back meanwhile), 0 when none.");
    per_worker(&o, workers, "worker_cleanup_set_aside", "gauge", "cleanup-set-aside",
               "Dead worker: subscriptions its cleanup set aside (a live process held "
               "their lock) in its last pass, still to remove.");
    per_worker(&o, workers, "http_requests_total", "counter", "http-requests",
               "HTTP requests handled.");
    per_worker(&o, workers, "connections_accepted_total", "counter", "accepted-connections",
               "TCP connections the worker took from the master.");
    per_worker(&o, workers, "bytes_received_total", "counter", "bytes-in",
               "Bytes read from client sockets.");
    per_worker(&o, workers, "bytes_sent_total", "counter", "bytes-out",
               "Bytes written to client sockets.");
    per_worker_real(&o, workers, "process_cpu_seconds_total", "counter", "cpu-seconds", 1,
                    "CPU time of the worker process (user + system), seconds.");
    per_worker_real(&o, workers, "process_resident_memory_bytes", "gauge", "resident-bytes", 1,
                    "Resident memory of the worker process, bytes.");
    per_worker_real(&o, workers, "process_open_fds", "gauge", "open-fds",
                    1, "Open descriptors of the worker process.");
    per_worker_real(&o, workers, "process_start_time_seconds", "gauge", "start-time-ms", 1000,
                    "Start of the worker process, seconds since the Unix epoch.");
    per_worker_hist(&o, workers, "delivery_latency_seconds", "delivery-latency",
                    "Publish accepted to channel message written by this worker, per subscriber.");
    per_worker_hist(&o, workers, "rpc_round_trip_seconds", "rpc-round-trip",
                    "RPC request accepted to response handed to its requester.");
    json_t *hs = json_object_get(stats, "handshake-failures");
    head(&o, "handshake_failures_total", "counter", "WebSocket upgrades refused, by reason.");
    const char *hsr;
    json_t *hv;
    json_object_foreach(hs, hsr, hv)
        put(&o, "sente_lite_handshake_failures_total{reason=\"%s\"} %lld\n", hsr,
            (long long)json_integer_value(hv));
    per_worker(&o, workers, "outbound_bytes", "gauge", "outbound-bytes",
               "Bytes held in output buffers (each shared buffer counted once).");
    per_worker(&o, workers, "backpressure_pauses_total", "counter", "backpressure-pauses",
               "Times a connection's reading paused because its output was over its bound.");
    per_worker(&o, workers, "inbound_bytes", "gauge", "inbound-bytes",
               "Unfinished input held: messages being assembled, request bodies, stashed reads.");
    per_worker(&o, workers, "tls_handshakes_total", "counter", "tls-handshakes",
               "TLS handshakes completed.");
    per_worker(&o, workers, "tls_resumed_total", "counter", "tls-resumed",
               "TLS handshakes that resumed a session (a ticket), any worker's.");
    per_worker(&o, workers, "tls_heap_bytes", "gauge", "tls-heap-bytes",
               "Heap held by OpenSSL in the worker: TLS connections' state and record buffers.");
    per_worker(&o, workers, "tls_trims_total", "counter", "tls-trims",
               "Heap trims (malloc_trim) after TLS handshakes paused: at most one per 10 s.");
    per_worker(&o, workers, "tls_trim_milliseconds_total", "counter", "tls-trim-ms",
               "Time the worker spent in those trims.");

    json_t *errors = json_object_get(stats, "errors");
    head(&o, "errors_total", "counter", "Errors and refusals, by reason.");
    const char *reason;
    json_t *v;
    json_object_foreach(errors, reason, v)
        put(&o, "sente_lite_errors_total{reason=\"%s\"} %lld\n", reason,
            (long long)json_integer_value(v));

    json_t *cs = json_object_get(stats, "channel-stats");
    json_t *ac = json_object_get(stats, "access");
    single(&o, "authenticated_connections", "gauge", num(ac, "authenticated-connections"),
           "Protocol connections with a verified token.");
    single(&o, "anonymous_connections", "gauge", num(ac, "anonymous-connections"),
           "Protocol connections without a token.");
    single(&o, "channels", "gauge", num(cs, "total-channels"), "Channels that exist.");
    single(&o, "subscriptions", "gauge", num(cs, "total-subscriptions"),
           "Subscriptions across all channels.");
    single(&o, "rpc_pending", "gauge", num(cs, "pending-rpc-requests"),
           "RPC requests waiting for a response.");
    single(&o, "rpc_old", "gauge", num(cs, "old-rpc-requests"),
           "RPC requests pending for more than a minute.");
    single(&o, "channels_reaped_total", "counter", num(cs, "reaped-channels"),
           "Empty auto-created channels removed after --channel-linger-ms.");
    single(&o, "history_expired_total", "counter", num(cs, "expired-messages"),
           "Retained messages dropped for their age (history-ttl-ms).");

    json_t *chans = json_object_get(cs, "channels");
    size_t nch = json_object_size(chans), k = 0;
    chan_t *list = calloc(nch ? nch : 1, sizeof(*list));
    const char *id;
    json_object_foreach(chans, id, v)
    {
        if (list == NULL)
            break;
        json_t *u = json_object_get(v, "num-users");
        list[k++] = (chan_t){id, num(v, "message-count"), num(v, "subscriber-count"),
                             num(v, "retention-count"), num(v, "num-clients"),
                             json_is_integer(u) ? (long long)json_integer_value(u) : -1};
    }
    if (list)
        qsort(list, k, sizeof(*list), by_messages);
    size_t shown = k < SL_METRICS_MAX_CHANNELS ? k : SL_METRICS_MAX_CHANNELS;
    static const struct {
        const char *name, *type, *help;
        size_t off;
    } cm[] = {
        {"channel_messages_total", "counter", "Messages published to the channel.",
         offsetof(chan_t, messages)},
        {"channel_subscribers", "gauge", "Subscribers of the channel.",
         offsetof(chan_t, subscribers)},
        {"channel_retained", "gauge", "Messages the channel retains now.",
         offsetof(chan_t, retained)},
        {"channel_presence_clients", "gauge", "Connections present in the channel (presence).",
         offsetof(chan_t, clients)},
        {"channel_presence_users", "gauge",
         "Distinct users present in the channel (presence; absent when not counted).",
         offsetof(chan_t, users)},
    };
    for (size_t m = 0; m < SL_ARRAY_LEN(cm); m++) {
        head(&o, cm[m].name, cm[m].type, cm[m].help);
        for (size_t i = 0; i < shown; i++) {
            if (*(long long *)((char *)&list[i] + cm[m].off) < 0)
                continue; /* not counted (the walk budget of /stats) */
            put(&o, "sente_lite_%s{channel=\"", cm[m].name);
            put_label(&o, list[i].id);
            put(&o, "\"} %lld\n", *(long long *)((char *)&list[i] + cm[m].off));
        }
    }
    /* /stats itself lists only its busiest channels (channels-omitted). */
    single(&o, "channel_series_omitted", "gauge", (long long)(k - shown) + num(cs, "channels-omitted"),
           "Channels left out of the per-channel series (cap 100, busiest kept).");
    free(list);

    json_t *shm = json_object_get(stats, "shared-memory");
    single(&o, "shm_used_bytes", "gauge", num(shm, "used-bytes"), "Shared memory in use.");
    single(&o, "shm_total_bytes", "gauge", num(shm, "total-bytes"), "Size of the shared mapping.");
    single(&o, "shm_allocation_failures_total", "counter", num(shm, "allocation-failures"),
           "Shared-memory allocations refused.");
    single(&o, "rcu_pending", "gauge", num(shm, "rcu-pending"),
           "Objects waiting for a grace period.");

    json_t *tel = json_object_get(stats, "telemetry-stats");
    json_t *t = NULL;
    const char *app;
    json_object_foreach(tel, app, v) t = v;
    single(&o, "telemetry_processed_total", "counter", num(t, "processed"),
           "Telemetry events the logger processed.");
    single(&o, "telemetry_dropped_total", "counter", num(t, "dropped"),
           "Telemetry events dropped because the pipe was full.");
    single(&o, "telemetry_errors_total", "counter", num(t, "errors"),
           "Telemetry events the logger could not write.");
    single(&o, "telemetry_queued", "gauge", num(t, "queued"),
           "Telemetry events written but not yet processed.");
    cluster_metrics(&o, json_object_get(stats, "cluster"));
    (void)health;
    if (o.oom) {
        free(o.p);
        return NULL;
    }
    return o.p;
}
