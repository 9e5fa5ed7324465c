/*
 * pubsub.c - channels on a worker: the subscribe / unsubscribe / publish /
 * list-channels / get-subscriptions / presence / presence-stats / history
 * handlers, and delivery of inbox entries to local subscribers.
 *
 * Who does what: the shared registry (sl_chan.h) owns channels, counts,
 * limits, seq and retention; this file keeps the worker's own view (each
 * connection's list of channels and the local index of subscribers) in
 * step with it.  A published message reaches subscribers only through the
 * inboxes, the publisher's own worker included, so that every worker sees
 * a channel's messages in the order the registry assigned.
 *
 * Delivery: one inbox entry carries one reference to a message encoded once
 * in shared memory; the worker copies it once into a local buffer and
 * queues that same buffer on every local subscriber (no copy and no
 * allocation per subscriber), then drops the shared reference.
 *
 * Missed messages: a publisher skips our inbox when it is full and notes
 * the channel and the message (sl_inbox.h).  Before each entry we take, we
 * look for new notes and close with 1013 ("try again later") our
 * subscribers of that channel incarnation that subscribed before that
 * message (the local index keeps, per subscriber, the channel's serial and
 * last seq at its subscription): they reconnect and recover with
 * since-seq, and a closed connection gets nothing more, so no client ever
 * sees a seq gap.  A subscriber that came after the message - one that
 * reconnected after an earlier note, say - did not miss it and stays.  The
 * same holds when a message cannot be copied out for delivery (local
 * memory exhausted): its channel's subscribers here are closed 1013.
 */
#include "sl_pubsub.h"
#include "sl_chan.h"
#include "sl_cidx.h"
#include "sl_cluster.h"
#include "sl_conf.h"
#include "sl_crash.h"
#include "sl_perm.h"
#include "sl_proto.h"
#include "sl_session.h"
#include "sl_stats.h"
#include "sl_tel.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <urcu/uatomic.h>

int sl_wake_fds[SL_MAX_WORKERS];
static uint64_t pending_wake;
static sl_inbox_reader_t reader = SL_INBOX_READER_INIT; /* our inbox's notes: our place */

/* Delivery latency (publish accepted -> frame written): messages queued to
 * local subscribers this turn, observed once the turn's writes are done
 * (sl_pubsub_latency_flush): one clock read per turn, no syscall and no
 * allocation per delivery.  Weighted by the subscribers it was queued to. */
#define SL_LAT_PENDING 256
static struct {
    int64_t us;
    uint32_t n;
} lat_pending[SL_LAT_PENDING];
static uint32_t nlat;

/* The fan-out trace (sl_pubsub.h): this turn's events, written out with
 * the turn's last clock read (sl_pubsub_latency_flush). */
#define SL_TRACE_PENDING 64
static struct {
    uint64_t seq;
    int64_t a, b; /* pub: arrival, accepted; del: published, queued */
    uint32_t n;
    bool pub;
} trace_ev[SL_TRACE_PENDING];
static uint32_t ntrace;
static int64_t trace_wake_us; /* this turn's eventfd writes (0: none) */
static int64_t trace_drain_us, trace_cpu_us; /* this turn's drain began: wall, CPU */

/* CPU time this thread has run (on a CPU, user + system), in us. */
static int64_t thread_cpu_us(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) != 0)
        return 0;
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

void sl_pubsub_trace_open(int worker)
{
    const char *prefix = getenv("SENTE_FANOUT_TRACE");
    if (prefix == NULL || *prefix == '\0')
        return;
    char path[PATH_MAX];
    if (snprintf(path, sizeof(path), "%s.%d", prefix, worker) >= (int)sizeof(path))
        return;
    /* Only a regular file: no symlink followed (a shared /tmp), no FIFO or
     * device that could block the worker's loop. */
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK,
                  0644);
    struct stat st;
    if (fd >= 0 && (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))) {
        close(fd);
        fd = -1;
        errno = EINVAL;
    }
    if (fd < 0) {
        fprintf(stderr, "sente-lite: worker %d: SENTE_FANOUT_TRACE: cannot open %s as a regular "
                        "file (%s): no trace\n", worker, path, strerror(errno));
        return;
    }
    sl_conns.trace_fd = fd;
}

/* A failed or short write: the trace would silently miss lines (or tear
 * one), so it stops, once, and says so. */
static void trace_fail(const char *why)
{
    fprintf(stderr, "sente-lite: SENTE_FANOUT_TRACE: write failed (%s): trace stopped\n", why);
    close(sl_conns.trace_fd);
    sl_conns.trace_fd = -1;
}

static void trace_write(int64_t done, int64_t cpu_end)
{
    char buf[SL_TRACE_PENDING * 256]; /* a line is at most 220 bytes */
    size_t k = 0;
    int64_t cpu = cpu_end - trace_cpu_us;
    for (uint32_t i = 0; i < ntrace; i++) {
        int m = trace_ev[i].pub
                    ? snprintf(buf + k, sizeof(buf) - k,
                               "pub seq=%" PRIu64 " arrival=%" PRId64 " accepted=%" PRId64
                               " wake=%" PRId64 "\n",
                               trace_ev[i].seq, trace_ev[i].a, trace_ev[i].b, trace_wake_us)
                    : snprintf(buf + k, sizeof(buf) - k,
                               "del seq=%" PRIu64 " published=%" PRId64 " woken=%" PRId64
                               " drain=%" PRId64 " queued=%" PRId64 " done=%" PRId64
                               " cpu=%" PRId64 " n=%" PRIu32 "\n",
                               trace_ev[i].seq, trace_ev[i].a, sl_conns.woken_us,
                               trace_drain_us, trace_ev[i].b, done, cpu, trace_ev[i].n);
        if (m > 0 && (size_t)m < sizeof(buf) - k)
            k += (size_t)m;
    }
    ntrace = 0;
    if (k == 0 || sl_conns.trace_fd < 0)
        return;
    ssize_t w = write(sl_conns.trace_fd, buf, k);
    if (w < 0)
        trace_fail(strerror(errno));
    else if ((size_t)w != k)
        trace_fail("short write");
}

/* Now as "done": the CPU clock read before the wall clock (and after it
 * at the drain), so that the CPU time falls inside the wall interval. */
static void trace_write_now(void)
{
    int64_t cpu_end = thread_cpu_us();
    trace_write(sl_mono_us(), cpu_end);
}

void sl_pubsub_trace_close(void)
{
    if (sl_conns.trace_fd < 0)
        return;
    if (ntrace > 0)
        trace_write_now();
    if (sl_conns.trace_fd >= 0)
        close(sl_conns.trace_fd);
    sl_conns.trace_fd = -1;
}

static void trace_note(bool pub, uint64_t seq, int64_t a, int64_t b, uint32_t n)
{
    if (ntrace == SL_TRACE_PENDING)
        trace_write_now(); /* a very busy turn: "done" is then early */
    trace_ev[ntrace].pub = pub;
    trace_ev[ntrace].seq = seq;
    trace_ev[ntrace].a = a;
    trace_ev[ntrace].b = b;
    trace_ev[ntrace].n = n;
    ntrace++;
}

void sl_pubsub_latency_flush(void)
{
    if (sl_conns.trace_fd >= 0) {
        if (ntrace > 0)
            trace_write_now();
        trace_wake_us = 0;
        sl_conns.woken_us = 0;
    }
    if (nlat == 0)
        return;
    int64_t now = sl_mono_us();
    for (uint32_t i = 0; i < nlat; i++)
        sl_hist_observe(&sl_conns.stats->delivery, now - lat_pending[i].us, lat_pending[i].n);
    nlat = 0;
}

static void latency_note(int64_t published_us, uint64_t n)
{
    if (published_us == 0 || n == 0)
        return;
    if (nlat == SL_LAT_PENDING)
        sl_pubsub_latency_flush(); /* a very busy turn: observe what we have */
    lat_pending[nlat].us = published_us;
    lat_pending[nlat].n = (uint32_t)n;
    nlat++;
}

#define REG (&sl_shm->reg)

/* ------------------------------------------------------------ helpers */

/* The "channel-id" string of a message, or NULL after replying with an
 * invalid-message error. */
static const char *channel_id(sl_conn_t *c, json_t *msg, const char *type, size_t *len)
{
    json_t *id = json_object_get(msg, "channel-id");
    if (!json_is_string(id)) {
        sl_proto_bad_field(c, type, "channel-id", id ? "must be a string" : "is missing");
        return NULL;
    }
    *len = json_string_length(id);
    return json_string_value(id);
}

static json_t *failure(const char *type, const char *id, size_t len, const char *reason)
{
    return json_pack("{s:s, s:s%, s:b, s:s}", "type", type, "channel-id", id, len, "success", 0,
                     "reason", reason);
}

static const char *user_of(const sl_conn_t *c)
{
    const sl_ident_t *me = sl_session_ident(c);
    return me ? me->user : "";
}

/* The connection's subscriptions: held inline while there is at most one
 * (sl_conn.h). */
static sl_cidx_entry_t **subs_of(sl_conn_t *c)
{
    return c->subs_cap == 1 ? &c->sub1 : c->subs;
}

static int find_sub(sl_conn_t *c, const char *id, size_t len)
{
    for (uint32_t i = 0; i < c->nsubs; i++)
        if (subs_of(c)[i]->idlen == len && memcmp(subs_of(c)[i]->id, id, len) == 0)
            return (int)i;
    return -1;
}

bool sl_pubsub_subscribed(sl_conn_t *c, const char *id, size_t len)
{
    return find_sub(c, id, len) >= 0;
}

/* A new channel's settings: its namespace's defaults (which are the
 * server's where the namespace says nothing). */
static sl_chan_config_t default_config(const sl_conf_namespace_t *ns)
{
    return (sl_chan_config_t){.max_subscribers = ns->max_subscribers,
                              .message_retention = ns->message_retention,
                              .rpc_timeout_ms = ns->rpc_timeout_ms,
                              .history_ttl_ms = ns->history_ttl_ms,
                              .telemetry_enabled = true,
                              .lingers = true,
                              /* presence=none: nobody may see who comes
                               * and goes, so none are sent (M2) */
                              .join_leave = ns->join_leave > 0 &&
                                            ns->rules[SL_ACT_PRESENCE] != SL_RULE_NONE};
}

/* The connection's channel-creation quota: --channel-creations-per-minute,
 * refilled continuously, as much at once at most.  Takes one if there is. */
static bool creation_allowed(sl_conn_t *c)
{
    float rate = (float)sl_conf->channel_creations_per_minute;
    int64_t now = sl_mono_ms();
    if (c->chan_tokens_mono == 0)
        c->chan_tokens = rate;
    else
        c->chan_tokens = SL_MIN(rate, c->chan_tokens +
                                          (float)(now - c->chan_tokens_mono) * rate / 60000.0f);
    c->chan_tokens_mono = now;
    if (c->chan_tokens < 1.0f)
        return false;
    c->chan_tokens -= 1.0f;
    return true;
}

json_t *sl_pubsub_config_json(const sl_chan_config_t *cfg)
{
    return json_pack("{s:I, s:I, s:I, s:b, s:b, s:I}", "max-subscribers",
                     (json_int_t)cfg->max_subscribers, "message-retention",
                     (json_int_t)cfg->message_retention, "rpc-timeout-ms",
                     (json_int_t)cfg->rpc_timeout_ms, "telemetry-enabled", cfg->telemetry_enabled,
                     "join-leave", cfg->join_leave, "history-ttl-ms",
                     (json_int_t)cfg->history_ttl_ms);
}

/* ----------------------------------------------------------- subscribe */

/* Copies of the newest retained messages that fit in a budget (taken
 * under the channel lock, parsed after it). */
typedef struct {
    char **text;
    size_t *len;
    size_t first, n, cap; /* text[first..n) are kept */
    size_t bytes, budget;
    uint64_t omitted;
} retained_t;

/* This message cannot be kept (alone larger than the budget, or no
 * memory): it and everything older are left out, so what is kept stays
 * the newest run. */
static void leave_out(retained_t *r)
{
    for (size_t i = r->first; i < r->n; i++)
        free(r->text[i]);
    r->omitted += r->n - r->first + 1;
    r->first = r->n = r->bytes = 0;
}

static void keep_retained(const char *json, size_t len, void *arg)
{
    retained_t *r = arg;
    if (r->n == r->cap) {
        /* Compact first: what was dropped from the front is free room. */
        if (r->first > 0) {
            memmove(r->text, r->text + r->first, (r->n - r->first) * sizeof(*r->text));
            memmove(r->len, r->len + r->first, (r->n - r->first) * sizeof(*r->len));
            r->n -= r->first;
            r->first = 0;
        }
        if (r->n == r->cap) {
            size_t cap = r->cap ? r->cap * 2 : 16;
            char **t = realloc(r->text, cap * sizeof(*t));
            if (t)
                r->text = t;
            size_t *l = realloc(r->len, cap * sizeof(*l));
            if (l)
                r->len = l;
            if (t == NULL || l == NULL) {
                leave_out(r);
                return;
            }
            r->cap = cap;
        }
    }
    char *copy = len + 1 <= r->budget ? malloc(len) : NULL;
    if (copy == NULL) {
        leave_out(r);
        return;
    }
    memcpy(copy, json, len);
    r->text[r->n] = copy;
    r->len[r->n++] = len;
    r->bytes += len + 1; /* and its comma */
    while (r->bytes > r->budget) {
        r->bytes -= r->len[r->first] + 1;
        free(r->text[r->first++]);
        r->omitted++;
    }
}

json_t *sl_pubsub_retained(sl_chan_t *ch, uint64_t since, size_t budget, uint64_t *omitted,
                           uint64_t *last, uint64_t *oldest)
{
    retained_t r = {.budget = budget};
    *oldest = sl_chan_retained(REG, ch, since, keep_retained, &r, last, NULL);
    json_t *a = json_array();
    for (size_t i = r.first; i < r.n; i++) {
        json_t *m = json_loadb(r.text[i], r.len[i], 0, NULL);
        if (m)
            json_array_append_new(a, m);
        free(r.text[i]);
    }
    free(r.text);
    free(r.len);
    *omitted = r.omitted;
    return a;
}

/* What a subscription result may spend on retained messages: the reply
 * bound less room for its other fields. */
uint64_t sl_pubsub_cut_history(json_t *a, size_t budget)
{
    size_t n = json_array_size(a), used = 0, keep = 0;
    /* From the newest back: as many as fit, each with its comma. */
    while (keep < n) {
        size_t len = json_dumpb(json_array_get(a, n - 1 - keep), NULL, 0, JSON_COMPACT) + 1;
        if (used + len > budget)
            break;
        used += len;
        keep++;
    }
    if (keep == n)
        return 0;
    /* The kept tail moved to the front in one pass (rg17 L4: removing the
     * first element n - keep times shifted the array each time, 28 ms for
     * 20,000 cut to 4 in one worker turn).  Without memory for the copy:
     * the slow way. */
    json_t *tail = json_array();
    for (size_t i = n - keep; tail && i < n; i++)
        if (json_array_append(tail, json_array_get(a, i)) != 0) {
            json_decref(tail);
            tail = NULL;
        }
    if (tail && json_array_clear(a) == 0 && json_array_extend(a, tail) == 0) {
        json_decref(tail);
        return n - keep;
    }
    json_decref(tail);
    while (json_array_size(a) > keep)
        json_array_remove(a, 0);
    return n - keep;
}

static size_t retained_budget(size_t idlen)
{
    return sl_conn_reply_max() - 512 - 6 * idlen;
}

/* Write the kept copies into w as array elements (they are JSON text
 * already: no parse, no dump) and free them. */
static void write_retained(sl_jw_t *w, retained_t *r)
{
    for (size_t i = r->first; i < r->n; i++) {
        if (i > r->first)
            sl_jw_lit(w, ",");
        sl_jw_raw(w, r->text[i], r->len[i]);
        free(r->text[i]);
    }
    free(r->text);
    free(r->len);
    r->text = NULL;
    r->len = NULL;
    r->first = r->n = r->cap = r->bytes = 0;
}

static void free_retained(retained_t *r)
{
    for (size_t i = r->first; i < r->n; i++)
        free(r->text[i]);
    free(r->text);
    free(r->len);
}

static void reject(sl_conn_t *c, const char *id, size_t len, const char *reason)
{
    SL_TEL(SL_EV_SUBSCRIPTION_REJECTED, SL_INFO, SL_TF_S("conn-id", c->conn_id),
           SL_TF_SN("channel-id", id, len), SL_TF_S("reason", reason));
    sl_proto_reply(c, failure("subscription-result", id, len, reason));
}

static void forget_deleted(sl_conn_t *c, const char *id, size_t len, uint64_t hash,
                           sl_buf_t *frame);
static void cluster_join(sl_conn_t *c, sl_chan_t *ch, const char *id, size_t len,
                         json_t *since_j, json_t *epoch_j, const sl_conf_namespace_t *ns,
                         bool joined_here, uint64_t sub_no);
static void cluster_left(sl_conn_t *c, const char *id, size_t len);
static void cluster_presence(sl_conn_t *c, const char *id, size_t len, bool set, bool tell);
static void leave(sl_conn_t *c, uint32_t i);

/* Undo a subscribe that could not be completed here (its leave is told). */
static void unsubscribe_woken(sl_chan_t *ch, sl_conn_t *c)
{
    uint64_t woken = 0;
    sl_chan_unsubscribe(REG, ch, c->conn_id, c->conn_no, &woken, NULL);
    sl_pubsub_wake_later(woken);
}

void sl_pubsub_subscribe(sl_conn_t *c, json_t *msg)
{
    size_t len;
    const char *id = channel_id(c, msg, "subscribe", &len);
    if (id == NULL)
        return;
    json_t *since_j = json_object_get(msg, "since-seq"), *epoch_j = json_object_get(msg, "epoch");
    if (since_j && !(json_is_integer(since_j) && json_integer_value(since_j) >= 0)) {
        sl_proto_bad_field(c, "subscribe", "since-seq", "must be a non-negative integer");
        return;
    }
    if (epoch_j && !json_is_string(epoch_j)) {
        sl_proto_bad_field(c, "subscribe", "epoch", "must be a string");
        return;
    }
    if (!sl_chan_id_valid(id, len)) {
        reject(c, id, len, "invalid-channel-id");
        return;
    }
    bool already = find_sub(c, id, len) >= 0;
    const char *why = sl_session_permit(c, SL_ACT_SUBSCRIBE, id, len, already);
    if (why) {
        reject(c, id, len, why);
        return;
    }
    if (!already && (int64_t)c->nsubs >= sl_conf->max_subscriptions_per_connection) {
        reject(c, id, len, "too-many-subscriptions");
        return;
    }
    sl_chan_t *ch = NULL;
    const sl_conf_namespace_t *ns = sl_conf_namespace(sl_conf, id, len, NULL);
    uint32_t count = 0;
    uint64_t sub_no = 0;   /* our subscription's number (join / leave horizon) */
    uint64_t last_at = 0;  /* the channel's last seq when we subscribed */
    uint64_t notes_at = 0; /* our inbox's missed notes counted before */
    int rc = SL_CHAN_NOT_SUBSCRIBED;
    /* Found, then deleted before we subscribed (an admin delete, or the
     * reaper removing it as empty): look it up again, a few times. */
    for (int attempt = 0; attempt < 4 && rc == SL_CHAN_NOT_SUBSCRIBED; attempt++) {
        ch = sl_chan_find(REG, id, len);
        if (ch == NULL) {
            /* With --redis the channel may exist on other nodes: Redis
             * decides (the local channel only holds this node's
             * subscribers, and goes again if the join is refused). */
            if (!ns->auto_create && !sl_cluster) {
                reject(c, id, len, "channel-not-found");
                return;
            }
            if (!creation_allowed(c)) {
                sl_conns_count_error(SL_ERR_TOO_MANY_CHANNELS);
                reject(c, id, len, "too-many-channels");
                return;
            }
            sl_chan_config_t cfg = default_config(ns);
            int crc = sl_chan_create(REG, id, len, &cfg, &ch);
            if (crc == SL_CHAN_TOO_MANY) {
                sl_conns_count_error(SL_ERR_TOO_MANY_CHANNELS);
                reject(c, id, len, "too-many-channels");
                return;
            }
            if (crc == SL_CHAN_NO_MEMORY) {
                sl_conns_count_error(SL_ERR_SHM_EXHAUSTED);
                reject(c, id, len, "overloaded");
                return;
            }
            if (crc == SL_CHAN_CREATED)
                SL_TEL(SL_EV_CHANNEL_CREATED, SL_INFO, SL_TF_SN("channel-id", id, len),
                       SL_TF_S("by", c->conn_id), SL_TF_I("max-subscribers", cfg.max_subscribers),
                       SL_TF_I("message-retention", cfg.message_retention));
        }
        if (already && !sl_chan_is_subscriber(REG, ch, c->conn_id)) {
            /* Our list still names a channel that was deleted (its notice is
             * in our inbox, not yet drained): tell the client now, in order,
             * and subscribe it to the channel that exists. */
            forget_deleted(c, id, len, ch->node.hash, NULL);
            already = false;
        }
        /* A join fans out like a publish (one inbox entry per worker, a
         * frame per subscriber): it is counted against
         * --max-publishes-per-second, so a subscribe / unsubscribe loop
         * is throttled like a publisher (review r15 H2) - only when there
         * is someone to tell, and refused as a subscribe (rate-limited,
         * with its channel-id), never a strike that closes the connection:
         * a client resubscribing to many rooms after a reconnect must not
         * be closed for it (review rf15 F2).  Leaves are not counted: each
         * follows a join that was, and one is never refused. */
        if (!already && attempt == 0 && ch->config.join_leave && c->sess &&
            uatomic_read(&ch->subscribers) > 0 && !sl_session_take_join(c)) {
            sl_conns_count_error(SL_ERR_RATE_LIMITED);
            reject(c, id, len, "rate-limited");
            return;
        }
        const sl_ident_t *me = sl_session_ident(c);
        sl_chan_who_t who = {.conn_no = c->conn_no,
                             .user = me ? me->user : NULL,
                             .info = me ? me->info : NULL,
                             .join_pending = sl_cluster};
        uint64_t woken = 0;
        notes_at = uatomic_read(&REG->inboxes[sl_conns.id]->missed_n);
        rc = already ? SL_CHAN_ALREADY
                     : sl_chan_subscribe_at(REG, ch, c->conn_id, sl_conns.id, c->slot, &who,
                                            &woken, &count, &sub_no, &last_at);
        sl_pubsub_wake_later(woken);
    }
    if (rc == SL_CHAN_NOT_SUBSCRIBED) {
        reject(c, id, len, "overloaded"); /* deleted under us every time */
        return;
    }
    if (rc == SL_CHAN_FULL) {
        reject(c, id, len, "max-subscribers-reached");
        return;
    }
    if (rc == SL_CHAN_OVERLOADED) {
        /* Its join could reach no subscriber's worker (every inbox full). */
        uatomic_add(&sl_conns.stats->overloaded, 1);
        reject(c, id, len, "overloaded");
        return;
    }
    if (rc == SL_CHAN_NO_MEMORY || rc == SL_ERROR) {
        sl_conns_count_error(SL_ERR_SHM_EXHAUSTED);
        reject(c, id, len, "overloaded");
        return;
    }
    if (rc == SL_OK) {
        /* Our own view: the connection's list and the local index. */
        if (c->nsubs == c->subs_cap && c->subs_cap == 0) {
            c->sub1 = NULL;
            c->subs_cap = 1; /* the first one: inline */
        } else if (c->nsubs == c->subs_cap) {
            /* Then 3 pointers: malloc's smallest chunk (32 bytes) holds
             * them; doubled after that. */
            uint32_t cap = c->subs_cap == 1 ? 3 : c->subs_cap * 2;
            sl_cidx_entry_t **a = c->subs_cap == 1 ? malloc(sizeof(*a) * cap)
                                                   : realloc(c->subs, sizeof(*a) * cap);
            if (a == NULL) {
                unsubscribe_woken(ch, c);
                reject(c, id, len, "overloaded");
                return;
            }
            if (c->subs_cap == 1)
                a[0] = c->sub1;
            c->subs = a;
            c->subs_cap = cap;
        }
        /* Join / leave show what presence would: only to those it allows. */
        bool no_presence = sl_perm_check(sl_session_ident(c), SL_ACT_PRESENCE, id, len, true) !=
                           SL_PERM_OK;
        sl_cidx_mark_t mark = {ch->serial, last_at, notes_at, sub_no, no_presence,
                               ch->config.join_leave};
        sl_cidx_entry_t *e = sl_cidx_add(ch->node.hash, id, len, c, &mark);
        if (e == NULL) {
            unsubscribe_woken(ch, c);
            reject(c, id, len, "overloaded");
            return;
        }
        subs_of(c)[c->nsubs++] = e;
        SL_TEL(SL_EV_SUBSCRIPTION_ADDED, SL_INFO, SL_TF_S("conn-id", c->conn_id),
               SL_TF_SN("channel-id", id, len), SL_TF_I("subscriber-count", count));
        if (ch->config.join_leave)
            SL_TEL(SL_EV_CHANNEL_JOIN, SL_DEBUG, SL_TF_S("conn-id", c->conn_id),
                   SL_TF_SN("channel-id", id, len), SL_TF_S("user", user_of(c)),
                   SL_TF_I("told", count - 1));
    } else {
        count = uatomic_read(&ch->subscribers);
    }
    if (sl_cluster) {
        cluster_join(c, ch, id, len, since_j, epoch_j, ns, rc == SL_OK, sub_no);
        return;
    }

    /* Formatted directly (sl_jw.h).  Retained history is cut to the bound
     * on one reply: the newest messages that fit, and how many older ones
     * were left out; the copies are JSON text already and go in as they
     * are. */
    uint64_t since = since_j ? (uint64_t)json_integer_value(since_j) : 0, last = 0;
    retained_t rt = {.budget = retained_budget(len)};
    uint64_t oldest = sl_chan_retained(REG, ch, since, keep_retained, &rt, &last, NULL);
    bool recovered = false;
    if (since_j) {
        /* Recovered: same channel incarnation, and every message after
         * since-seq is still retained (or there is none) and fits. */
        bool same = epoch_j && strcmp(json_string_value(epoch_j), ch->epoch) == 0;
        bool all = last <= since || (oldest != 0 && oldest <= since + 1);
        recovered = same && all && rt.omitted == 0;
        if (!recovered) {
            /* Not recoverable: hand over what is retained instead. */
            free_retained(&rt);
            rt = (retained_t){.budget = retained_budget(len)};
            sl_chan_retained(REG, ch, 0, keep_retained, &rt, &last, NULL);
        }
    }
    sl_jw_t w;
    sl_proto_begin(&w);
    sl_jw_lit(&w, "{\"type\":\"subscription-result\",\"channel-id\":");
    sl_jw_str(&w, id, len);
    sl_jw_lit(&w, ",\"success\":true,\"subscriber-count\":");
    sl_jw_int(&w, count);
    sl_jw_lit(&w, ",\"epoch\":");
    sl_jw_str(&w, ch->epoch, strlen(ch->epoch));
    sl_jw_lit(&w, ",\"retained-messages\":[");
    uint64_t omitted = rt.omitted;
    write_retained(&w, &rt);
    sl_jw_lit(&w, "]");
    if (since_j) {
        sl_jw_lit(&w, ",\"recovered\":");
        sl_jw_bool(&w, recovered);
    }
    if (omitted) {
        sl_jw_lit(&w, ",\"retained-omitted\":");
        sl_jw_int(&w, (int64_t)omitted);
    }
    sl_jw_lit(&w, "}");
    sl_proto_send(c, &w);
}

/* ------------------------------------------------------------ --redis */

/* A subscribe that waits for the cluster (Redis: the count across nodes,
 * the epoch, the history).  Live messages for the channel that reach this
 * connection meanwhile are held here and released after the
 * subscription-result, without those the result already carried.  After
 * that, the local index's per-subscriber last seq (sl_cidx_seen) keeps
 * any seq it already has from reaching it again, for the subscription's
 * whole life: history and live overlap, a catch-up after a broker restart,
 * a message delivered twice after a link was lost. */
#define JOIN_HOLD_MAX 4096

typedef struct sl_join {
    struct sl_join *next;
    uint64_t hash;
    char *id;
    size_t len;
    sl_reply_t *reply;
    bool joined_here; /* this subscribe made the local subscription: undone if refused */
    uint64_t sub_no;  /* that subscription's number (sl_sub_t): its answer is for it alone */
    bool has_since;
    uint64_t since;
    json_t *ring;     /* messages from the local ring (since+1 .. from-1) */
    uint64_t from;
    sl_buf_t **held;
    uint64_t *seqs;
    uint32_t nheld, cap;
} sl_join_t;

static void join_free(sl_conn_t *c, sl_join_t *j)
{
    sl_conn_cl_t *cl = c ? sl_conn_cl(c) : NULL;
    if (cl) {
        for (sl_join_t **p = &cl->joins; *p; p = &(*p)->next)
            if (*p == j) {
                *p = j->next;
                break;
            }
    }
    for (uint32_t i = 0; i < j->nheld; i++)
        sl_buf_unref(j->held[i]);
    free(j->held);
    free(j->seqs);
    json_decref(j->ring);
    free(j->id);
    free(j);
}

static sl_join_t *join_find(sl_conn_t *c, uint64_t hash, const char *id, size_t len)
{
    const sl_conn_cl_t *cl = sl_conn_cl(c);
    for (sl_join_t *j = cl ? cl->joins : NULL; j; j = j->next)
        if (j->hash == hash && j->len == len && memcmp(j->id, id, len) == 0)
            return j;
    return NULL;
}

/* deliver(): true when the message was held for c. */
static bool join_hold(sl_conn_t *c, const sl_chan_msg_t *m, sl_buf_t *b)
{
    sl_join_t *j = join_find(c, m->chan_hash, m->id, m->idlen);
    if (j == NULL)
        return false;
    if (j->nheld == j->cap) {
        if (j->cap >= JOIN_HOLD_MAX) {
            /* Never a silent gap: the subscriber is closed like one that
             * missed messages (it resubscribes with since-seq). */
            uatomic_add(&sl_conns.stats->overloaded, 1);
            sl_conn_close_ws(c, 1013, "missed messages: resubscribe with since-seq");
            return true;
        }
        uint32_t cap = j->cap ? j->cap * 2 : 16;
        sl_buf_t **h = realloc(j->held, sizeof(*h) * cap);
        if (h)
            j->held = h;
        uint64_t *q = realloc(j->seqs, sizeof(*q) * cap);
        if (q)
            j->seqs = q;
        if (h == NULL || q == NULL) {
            sl_conn_close_ws(c, 1013, "missed messages: resubscribe with since-seq");
            return true;
        }
        j->cap = cap;
    }
    j->held[j->nheld] = sl_buf_ref(b);
    j->seqs[j->nheld++] = m->seq;
    return true;
}

static void collect_json(const char *json, size_t len, void *arg)
{
    json_t *m = json_loadb(json, len, 0, NULL);
    if (m)
        json_array_append_new(arg, m);
}

/* A refused subscribe leaves nothing behind: the local subscription this
 * join made, and the local channel if it was made for it (nobody else
 * here, nothing retained: removed now, not after the linger). */
static void join_undo(sl_conn_t *c, sl_join_t *j, int i)
{
    if (i < 0 || !j->joined_here)
        return; /* an earlier, working subscription stays */
    leave(c, (uint32_t)i);
    sl_chan_t *ch = sl_chan_find(REG, j->id, j->len);
    if (ch && sl_chan_reap(REG, ch, sl_mono_ms(), 0))
        SL_TEL(SL_EV_CHANNEL_DELETED, SL_DEBUG, SL_TF_SN("channel-id", j->id, j->len),
               SL_TF_S("reason", "subscribe refused by the cluster"));
}

/* The number of c's subscription to the channel in the local index (0:
 * none, or unknown). */
static uint64_t sub_no_of(sl_conn_t *c, uint64_t hash, const char *id, size_t len)
{
    sl_cidx_entry_t *e = sl_cidx_find(hash, id, len);
    for (uint32_t k = 0; e && k < e->n; k++)
        if (e->conns[k] == c)
            return e->marks[k].sub_no;
    return 0;
}

/* The last seq subscriber c of the channel was sent (NULL when c is not
 * in the local index). */
static uint64_t *last_of(sl_conn_t *c, uint64_t hash, const char *id, size_t len)
{
    sl_cidx_entry_t *e = sl_cidx_find(hash, id, len);
    for (uint32_t k = 0; e && k < e->n; k++)
        if (e->conns[k] == c)
            return &e->last[k];
    return NULL;
}

static void join_done(sl_conn_t *c, void *arg, uint32_t status, json_t *res)
{
    sl_join_t *j = arg;
    if (c == NULL) {
        join_free(NULL, j); /* the connection closed: its record is ours alone */
        return;
    }
    sl_reply_t *reply = j->reply;
    int i = find_sub(c, j->id, j->len);
    /* The subscription this join was for, not a newer one of the same
     * channel (subscribe, unsubscribe, subscribe: this answer may be the
     * first JOIN's): that one is gone - nothing is confirmed, announced,
     * undone or delivered for it (review re17 L4).  Its PRES_SET was never
     * sent, so Redis holds no entry of it; the count its script wrote is
     * the unsubscribe's SYNC's business (done_join: synced -1). */
    if (i >= 0 && sub_no_of(c, j->hash, j->id, j->len) != j->sub_no)
        i = -1;
    if (status != SL_BR_OK) {
        SL_TEL(SL_EV_SUBSCRIPTION_REJECTED, SL_INFO, SL_TF_S("conn-id", c->conn_id),
               SL_TF_SN("channel-id", j->id, j->len), SL_TF_S("reason", sl_brq_reason(status)));
        json_t *f = failure("subscription-result", j->id, j->len, sl_brq_reason(status));
        join_undo(c, j, i);
        join_free(c, j);
        sl_proto_complete(c, reply, f);
        return;
    }
    sl_chan_t *ch = sl_chan_find(REG, j->id, j->len);
    json_t *cfgj = json_object_get(res, "config");
    if (ch && cfgj) {
        sl_chan_config_t cfg = {
            .max_subscribers = json_integer_value(json_object_get(cfgj, "max-subscribers")),
            .message_retention = json_integer_value(json_object_get(cfgj, "message-retention")),
            .rpc_timeout_ms = json_integer_value(json_object_get(cfgj, "rpc-timeout-ms")),
            .telemetry_enabled = json_is_true(json_object_get(cfgj, "telemetry-enabled")),
            /* Not in Redis: this node's (its namespace's) */
            .history_ttl_ms = ch->config.history_ttl_ms,
            .join_leave = ch->config.join_leave};
        sl_chan_set_config(ch, &cfg);
    }
    if (j->joined_here && i >= 0) {
        /* Confirmed before its PRES_SET is queued: a rewrite that runs
         * after this lists it (the PRES_SET then only repeats it), one
         * before it does not - it is written by the PRES_SET, which comes
         * after the rewrite on the same connection (review ro17 L2). */
        if (ch)
            sl_chan_sub_confirm(REG, ch, c->conn_id);
        cluster_presence(c, j->id, j->len, true, ch && ch->config.join_leave);
    }
    const char *epoch = json_string_value(json_object_get(res, "epoch"));
    bool recovered = json_is_true(json_object_get(res, "recovered"));
    uint64_t last = (uint64_t)json_integer_value(json_object_get(res, "last"));
    json_t *hist = json_object_get(res, "history");
    json_t *retained = json_array();
    if (j->has_since && recovered && j->ring)
        json_array_extend(retained, j->ring);
    if (json_is_array(hist))
        json_array_extend(retained, hist);
    /* The bound on one reply (main's, as for a local history): the
     * newest that fit, the rest counted; not a recovery then. */
    uint64_t omitted = sl_pubsub_cut_history(retained, retained_budget(j->len));
    if (omitted)
        recovered = false;
    size_t n = json_array_size(retained);
    uint64_t top = n ? (uint64_t)json_integer_value(
                           json_object_get(json_array_get(retained, n - 1), "seq"))
                     : 0;
    json_t *r = json_pack("{s:s, s:s%, s:b, s:I, s:s, s:I, s:o}", "type", "subscription-result",
                          "channel-id", j->id, j->len, "success", 1, "subscriber-count",
                          json_integer_value(json_object_get(res, "count")), "epoch",
                          epoch ? epoch : "", "last-seq", (json_int_t)last, "retained-messages",
                          retained);
    if (r && j->has_since)
        json_object_set_new(r, "recovered", json_boolean(recovered));
    if (r && omitted)
        json_object_set_new(r, "retained-omitted", json_integer((json_int_t)omitted));
    sl_proto_complete(c, reply, r);
    /* What arrived meanwhile, without what the result already had (or an
     * earlier result of the same subscription). */
    uint64_t *lp = i >= 0 ? last_of(c, j->hash, j->id, j->len) : NULL;
    uint64_t cutoff = SL_MAX(last, top);
    if (lp && *lp < cutoff)
        *lp = cutoff;
    for (uint32_t k = 0; k < j->nheld; k++) {
        if (lp && j->seqs[k] > *lp && c->state == SL_CONN_WS) {
            sl_conn_send(c, j->held[k]);
            *lp = j->seqs[k];
        }
    }
    join_free(c, j);
}

#ifdef SL_CRASHPOINTS
/* Test build: SL_TEST_JOIN_DELAY="<ms>:<prefix>" - a subscription to a
 * channel named from <prefix> on sleeps <ms> between the local subscribe
 * and its join's submission to the broker (a worker preempted there: the
 * broker's heartbeat turn sees the subscriber before its join).  It says
 * so on stderr before and after, so a test knows the window is open (and
 * fails when the hook no longer fires: review rh17 L2). */
static void join_delay(const char *id, size_t len)
{
    const char *v = getenv("SL_TEST_JOIN_DELAY");
    const char *p = v ? strchr(v, ':') : NULL;
    if (p && len >= strlen(p + 1) && memcmp(id, p + 1, strlen(p + 1)) == 0) {
        fprintf(stderr, "sente-lite: test: join delay %d ms for %.*s\n", atoi(v), (int)len, id);
        usleep((useconds_t)atoi(v) * 1000);
        fprintf(stderr, "sente-lite: test: join delay over for %.*s\n", (int)len, id);
    }
}
#endif

static void cluster_join(sl_conn_t *c, sl_chan_t *ch, const char *id, size_t len,
                         json_t *since_j, json_t *epoch_j, const sl_conf_namespace_t *ns,
                         bool joined_here, uint64_t sub_no)
{
    /* One join per channel at a time is not needed: a second one is queued
     * behind the first (replies keep their order) and holds what comes
     * after it. */
    sl_join_t *j = calloc(1, sizeof(*j));
    sl_reply_t *reply = j ? sl_proto_defer_chan(c, ch->node.hash) : NULL;
    if (reply == NULL) {
        free(j);
        uatomic_add(&sl_conns.stats->overloaded, 1);
        if (joined_here) {
            int i = find_sub(c, id, len);
            if (i >= 0)
                leave(c, (uint32_t)i);
        }
        reject(c, id, len, "overloaded");
        return;
    }
    j->hash = ch->node.hash;
    j->id = strndup(id, len);
    j->len = len;
    j->reply = reply;
    j->joined_here = joined_here;
    /* Already subscribed: the subscription that is there. */
    j->sub_no = joined_here ? sub_no : sub_no_of(c, ch->node.hash, id, len);
    j->has_since = since_j != NULL;
    j->since = since_j ? (uint64_t)json_integer_value(since_j) : 0;
    j->from = 1;
    /* Recovery from the local ring when it holds since+1 onwards (the
     * ring is one run of one epoch; the epoch is read with it, under the
     * channel lock). */
    uint64_t ring_oldest = 0, ring_last = 0;
    char ep[16] = "";
    const char *cep = epoch_j ? json_string_value(epoch_j) : NULL;
    if (since_j && cep) {
        json_t *ring = json_array();
        ring_oldest = sl_chan_retained(REG, ch, j->since, collect_json, ring, &ring_last, ep);
        if (strcmp(cep, ep) == 0 && ring_oldest && ring_oldest <= j->since + 1) {
            j->ring = ring;
            j->from = SL_MAX(ring_last, j->since) + 1;
        } else {
            json_decref(ring);
            ring_oldest = 0;
        }
    }
    if (since_j && j->ring == NULL)
        j->from = j->since + 1;
    sl_conn_cl_t *cl = sl_conn_cl(c); /* made by the deferral above */
    j->next = cl->joins;
    cl->joins = j;
    /* sub-no: the broker notes the subscriptions its answers served
     * (sl_chan_t.served_upto; reviews rn17 M1, rp17 M1). */
    json_t *req = json_pack("{s:s%, s:b, s:I, s:I, s:I, s:I, s:I, s:s, s:I}", "channel-id", id,
                            len, "auto-create", ns->auto_create > 0, "max-subscribers",
                            (json_int_t)ns->max_subscribers, "message-retention",
                            (json_int_t)ns->message_retention, "rpc-timeout-ms",
                            (json_int_t)ns->rpc_timeout_ms, "from", (json_int_t)j->from,
                            "ring-oldest", (json_int_t)ring_oldest, "ring-epoch",
                            j->ring ? ep : "", "sub-no", (json_int_t)j->sub_no);
    if (since_j)
        json_object_set(req, "since-seq", since_j);
    if (cep)
        json_object_set_new(req, "epoch", json_string(cep));
    char *txt = req ? json_dumps(req, JSON_COMPACT) : NULL;
    json_decref(req);
#ifdef SL_CRASHPOINTS
    join_delay(id, len);
#endif
    int rc = txt ? sl_cluster_submit(SL_BRQ_JOIN, c, 0, txt, strlen(txt), join_done, j)
                 : SL_BR_OVERLOADED;
    free(txt);
    if (rc != SL_OK)
        join_done(c, j, (uint32_t)rc, NULL);
}

/* --redis presence: this connection's entry {"conn-id","user","info"}
 * (user and info null when it has none), as a join / leave carries it. */
static json_t *presence_entry(const sl_conn_t *c)
{
    const sl_ident_t *me = sl_session_ident(c);
    json_t *info = me && me->info ? json_loads(me->info, JSON_DECODE_ANY, NULL) : NULL;
    return json_pack("{s:s, s:o, s:o}", "conn-id", c->conn_id, "user",
                     me && me->user ? json_string(me->user) : json_null(), "info",
                     info ? info : json_null());
}

/* The broker keeps this node's presence entries in Redis and publishes the
 * joins and leaves on the channel's Redis channel, so every node's
 * subscribers get them in the same order among the messages (the local
 * hand-off does not: sl_reg_t.presence_remote).  set: the subscription is
 * confirmed (a join); else it went (a leave, published only if its entry
 * was there). */
static void cluster_presence(sl_conn_t *c, const char *id, size_t len, bool set, bool tell)
{
    json_t *entry = presence_entry(c);
    json_t *n = entry ? json_pack("{s:s%, s:s, s:I}", "channel-id", id, len, "conn-id",
                                  c->conn_id, "conn-no", (json_int_t)c->conn_no)
                      : NULL;
    if (n && tell) {
        json_t *f = json_pack("{s:s, s:s%, s:O}", "type", set ? "join" : "leave", "channel-id",
                              id, len, "info", entry);
        char *ft = f ? json_dumps(f, JSON_COMPACT) : NULL;
        json_decref(f);
        if (ft)
            json_object_set_new(n, "frame", json_string(ft));
        free(ft);
    }
    if (n && set)
        json_object_set(n, "entry", entry);
    json_decref(entry);
    char *txt = n ? json_dumps(n, JSON_COMPACT) : NULL;
    json_decref(n);
    if (txt)
        sl_cluster_notify(set ? SL_BRQ_PRESENCE_SET : SL_BRQ_PRESENCE_DEL, txt, strlen(txt));
    free(txt);
}

/* A local subscription went away: the broker brings Redis in line. */
static void cluster_left(sl_conn_t *c, const char *id, size_t len)
{
    json_t *n = json_pack("{s:s%}", "channel-id", id, len);
    char *txt = n ? json_dumps(n, JSON_COMPACT) : NULL;
    json_decref(n);
    if (txt)
        sl_cluster_notify(SL_BRQ_SYNC, txt, strlen(txt));
    free(txt);
}

/* A channel whose messages this node cannot recover for its subscribers
 * (sl_chan_reset): close them so they resubscribe with since-seq. */
static void channel_reset(const sl_chan_msg_t *m)
{
    sl_cidx_entry_t *e = sl_cidx_find(m->chan_hash, m->id, m->idlen);
    for (uint32_t k = 0; e && k < e->n; k++)
        sl_conn_close_ws(e->conns[k], 1012, "messages lost: resubscribe with since-seq");
}

/* --------------------------------------------------------- unsubscribe */

static void leave(sl_conn_t *c, uint32_t i)
{
    /* id belongs to the local index's entry, which may go with our removal
     * from it: everything that reads id comes first. */
    sl_cidx_entry_t *e = subs_of(c)[i];
    const char *id = e->id;
    size_t len = e->idlen;
    sl_chan_t *ch = sl_chan_find(REG, id, len);
    uint32_t count = 0;
    if (ch) {
        uint64_t woken = 0;
        sl_chan_unsubscribe(REG, ch, c->conn_id, c->conn_no, &woken, &count);
        sl_pubsub_wake_later(woken);
        if (ch->config.join_leave)
            SL_TEL(SL_EV_CHANNEL_LEAVE, SL_DEBUG, SL_TF_S("conn-id", c->conn_id),
                   SL_TF_SN("channel-id", id, len), SL_TF_S("user", user_of(c)),
                   SL_TF_I("told", count));
    }
    if (sl_cluster) {
        cluster_presence(c, id, len, false, ch && ch->config.join_leave);
        cluster_left(c, id, len);
    }
    SL_TEL(SL_EV_SUBSCRIPTION_REMOVED, SL_INFO, SL_TF_S("conn-id", c->conn_id),
           SL_TF_SN("channel-id", id, len), SL_TF_I("subscriber-count", count));
    subs_of(c)[i] = subs_of(c)[--c->nsubs];
    sl_cidx_remove(e->hash, id, len, c); /* last use of id */
}

void sl_pubsub_unsubscribe(sl_conn_t *c, json_t *msg)
{
    size_t len;
    const char *id = channel_id(c, msg, "unsubscribe", &len);
    if (id == NULL)
        return;
    int i = find_sub(c, id, len);
    if (i < 0) {
        sl_proto_reply(c, failure("unsubscription-result", id, len, "not-subscribed"));
        return;
    }
    leave(c, (uint32_t)i);
    sl_jw_t w;
    sl_proto_begin(&w);
    sl_jw_lit(&w, "{\"type\":\"unsubscription-result\",\"channel-id\":");
    sl_jw_str(&w, id, len);
    sl_jw_lit(&w, ",\"success\":true}");
    sl_proto_send(c, &w);
}

void sl_pubsub_recheck(sl_conn_t *c)
{
    const sl_ident_t *who = sl_session_ident(c);
    /* From the end: leave() moves the last entry into the freed place,
     * and that one has been checked already. */
    for (uint32_t i = c->nsubs; i-- > 0;) {
        /* id is the local index's: the notice copies it before leave(). */
        sl_cidx_entry_t *e = subs_of(c)[i];
        const char *id = e->id;
        size_t len = e->idlen;
        if (sl_perm_check(who, SL_ACT_SUBSCRIBE, id, len, true) == SL_PERM_OK) {
            /* Kept: whether it may see join / leave (the presence rule)
             * is decided again with the new token too (review rf15 F6). */
            bool no_presence = sl_perm_check(who, SL_ACT_PRESENCE, id, len, true) != SL_PERM_OK;
            bool granted = false;
            uint64_t serial = 0;
            for (uint32_t k = 0; k < e->n; k++)
                if (e->conns[k] == c) {
                    granted = e->marks[k].no_presence && !no_presence;
                    e->marks[k].no_presence = no_presence;
                    serial = e->marks[k].serial;
                }
            /* Newly allowed: join / leave deltas start now, with no
             * baseline - one presence-resync makes it ask for one (review
             * rg15 G4). */
            sl_chan_t *ch = granted ? sl_chan_find(REG, id, len) : NULL;
            /* The incarnation it subscribed to, not a newer one (review rh15 L2). */
            if (ch && ch->config.join_leave && (serial == 0 || ch->serial == serial)) {
                sl_jw_t w;
                sl_proto_begin(&w);
                sl_jw_lit(&w, "{\"type\":\"presence-resync\",\"channel-id\":");
                sl_jw_str(&w, id, len);
                sl_jw_lit(&w, "}");
                if (sl_proto_send(c, &w) == SL_OK) /* counted when sent (rh15 L2) */
                    uatomic_add(&sl_conns.stats->presence_resyncs, 1);
            }
            continue;
        }
        sl_conns_count_error(SL_ERR_PERMISSION_REVOKED);
        SL_TEL(SL_EV_PERMISSION_DENIED, SL_INFO, SL_TF_S("conn-id", c->conn_id),
               SL_TF_S("user", who ? who->user : ""), SL_TF_S("channel-id", id),
               SL_TF_S("action", "subscribe"), SL_TF_S("reason", "permission-revoked"));
        json_t *notice = json_pack("{s:s, s:s, s:s, s:s}", "type", "unsubscribed", "channel-id",
                                   id, "reason", "permission-revoked", "message",
                                   "the refreshed token no longer allows this channel");
        leave(c, i);
        sl_proto_reply(c, notice);
    }
}

void sl_pubsub_closed(sl_conn_t *c)
{
    /* --redis: its joins still waiting belong to their broker requests now
     * (whose answers, told the connection is gone, free them): nothing is
     * held for a closed connection (review rn19 L5). */
    sl_conn_cl_t *cl = sl_conn_cl(c);
    if (cl)
        cl->joins = NULL;
    while (c->nsubs > 0)
        leave(c, c->nsubs - 1);
    if (c->subs_cap > 1)
        free(c->subs);
    c->subs = NULL;
    c->subs_cap = 0;
}

/* ------------------------------------------------------------- publish */

/* --redis: Redis assigns the seq.  The channel-message is encoded here up
 * to the seq (head) and from it on (tail); the script joins them around
 * the seq it takes, retains and publishes the text, and every node's
 * broker hands the same bytes to its workers. */
typedef struct {
    sl_reply_t *reply;
    char mid[48];
    size_t len;
    bool exclude_sub;
    char id[];
} pub_t;

static void pub_done(sl_conn_t *c, void *arg, uint32_t status, json_t *res)
{
    pub_t *p = arg;
    if (c) {
        json_t *r;
        if (status == SL_BR_OK) {
            uatomic_add(&sl_conns.stats->published, 1);
            r = json_pack("{s:s, s:s%, s:b, s:s, s:I, s:I}", "type", "publish-result",
                          "channel-id", p->id, p->len, "success", 1, "message-id", p->mid, "seq",
                          json_integer_value(json_object_get(res, "seq")), "delivered-to",
                          json_integer_value(json_object_get(res, "delivered-to")));
        } else {
            uatomic_add(&sl_conns.stats->overloaded, 1);
            SL_TEL(SL_EV_MESSAGE_PUBLISH_FAILED, SL_WARN, SL_TF_S("conn-id", c->conn_id),
                   SL_TF_SN("channel-id", p->id, p->len), SL_TF_S("reason", sl_brq_reason(status)));
            r = failure("publish-result", p->id, p->len, sl_brq_reason(status));
        }
        sl_proto_complete(c, p->reply, r);
    }
    free(p);
}

/* The channel id as a JSON string (quote and backslash escaped; a valid
 * id has no control characters). */
static size_t json_id(char *out, const char *id, size_t len)
{
    size_t o = 0;
    out[o++] = '"';
    for (size_t i = 0; i < len; i++) {
        if (id[i] == '"' || id[i] == '\\')
            out[o++] = '\\';
        out[o++] = id[i];
    }
    out[o++] = '"';
    return o;
}

static void put_part(char **w, const void *p, uint32_t n)
{
    memcpy(*w, &n, 4);
    memcpy(*w + 4, p, n);
    *w += 4 + n;
}

int sl_pubsub_cluster_publish(sl_conn_t *c, const char *id, size_t len, const char *data_txt,
                              size_t dl, bool exclude, sl_cluster_fn fn, void *arg,
                              char mid[48])
{
    /* Unique across the cluster: the node's message-id counter (shared by
     * its workers and kept across their restarts), then the node. */
    snprintf(mid, 48, "msg-%" PRIu64 "%s", uatomic_add_return(&REG->next_msg_id, 1),
             REG->id_suffix);
    char idj[2 * SL_CHAN_ID_MAX + 3], head[512], tail[160], sender[64] = "null";
    size_t il = json_id(idj, id, len);
    int hl = snprintf(head, sizeof(head),
                      "{\"type\":\"channel-message\",\"channel-id\":%.*s,\"message-id\":\"%s\","
                      "\"seq\":", (int)il, idj, mid);
    if (c && c->kind == SL_KIND_PROTOCOL)
        snprintf(sender, sizeof(sender), "\"%s\"", c->conn_id);
    int tl = snprintf(tail, sizeof(tail), ",\"sender-conn-id\":%s,\"published-at\":%" PRId64 "}",
                      sender, sl_now_ms());
    size_t total = 12 + len + (size_t)hl + 8 + dl + (size_t)tl;
    char *buf = malloc(total), *w = buf;
    if (buf == NULL)
        return SL_BR_OVERLOADED;
    put_part(&w, id, (uint32_t)len);
    put_part(&w, head, (uint32_t)hl);
    /* tail = ',"data":' data rest */
    uint32_t tlen = (uint32_t)(8 + dl + (size_t)tl);
    memcpy(w, &tlen, 4);
    memcpy(w + 4, ",\"data\":", 8);
    memcpy(w + 12, data_txt, dl);
    memcpy(w + 12 + dl, tail, (size_t)tl);
    w += 4 + tlen;
    bool protocol = c && c->kind == SL_KIND_PROTOCOL;
    bool subscribed = protocol && exclude && find_sub(c, id, len) >= 0;
    uint32_t flags = (exclude ? SL_BRQ_F_EXCLUDE : 0) | (subscribed ? SL_BRQ_F_SENDER_SUB : 0) |
                     (protocol ? 0 : SL_BRQ_F_ADMIN);
    int rc = sl_cluster_submit(SL_BRQ_PUBLISH, c, flags, buf, (size_t)(w - buf), fn, arg);
    free(buf);
    return rc;
}

static void cluster_publish(sl_conn_t *c, const char *id, size_t len, json_t *data, bool exclude)
{
    pub_t *p = malloc(sizeof(*p) + len + 1);
    sl_reply_t *reply = p ? sl_proto_defer_chan(c, sl_table_hash(id, len)) : NULL;
    if (reply == NULL) {
        free(p);
        uatomic_add(&sl_conns.stats->overloaded, 1);
        sl_proto_reply(c, failure("publish-result", id, len, "overloaded"));
        return;
    }
    p->reply = reply;
    p->len = len;
    memcpy(p->id, id, len);
    p->id[len] = '\0';
    char *data_txt = json_dumps(data, JSON_COMPACT | JSON_ENCODE_ANY);
    int rc = data_txt ? sl_pubsub_cluster_publish(c, id, len, data_txt, strlen(data_txt), exclude,
                                                  pub_done, p, p->mid)
                      : SL_BR_OVERLOADED;
    free(data_txt);
    if (rc != SL_OK)
        pub_done(c, p, (uint32_t)rc, NULL);
}

void sl_pubsub_publish(sl_conn_t *c, json_t *msg)
{
    size_t len;
    const char *id = channel_id(c, msg, "publish", &len);
    if (id == NULL)
        return;
    json_t *data = json_object_get(msg, "data"), *ex = json_object_get(msg, "exclude-sender");
    if (data == NULL) {
        sl_proto_bad_field(c, "publish", "data", "is missing");
        return;
    }
    if (ex && !json_is_boolean(ex)) {
        sl_proto_bad_field(c, "publish", "exclude-sender", "must be a boolean");
        return;
    }
    bool exclude = json_is_true(ex);
    if (!sl_chan_id_valid(id, len)) {
        sl_proto_reply(c, failure("publish-result", id, len, "invalid-channel-id"));
        return;
    }
    const char *why = sl_session_permit(c, SL_ACT_PUBLISH, id, len, find_sub(c, id, len) >= 0);
    if (why) {
        sl_proto_reply(c, failure("publish-result", id, len, why));
        return;
    }
    if (sl_cluster) {
        cluster_publish(c, id, len, data, exclude);
        return;
    }
    sl_chan_t *ch = sl_chan_find(REG, id, len);
    if (ch == NULL) {
        SL_TEL(SL_EV_MESSAGE_PUBLISH_FAILED, SL_INFO, SL_TF_S("conn-id", c->conn_id),
               SL_TF_SN("channel-id", id, len), SL_TF_S("reason", "channel-not-found"));
        sl_proto_reply(c, failure("publish-result", id, len, "channel-not-found"));
        return;
    }
    /* Encode the data once, here; the registry wraps it in the frame. */
    char *enc = (char *)sl_conns.ebuf;
    size_t n = json_dumpb(data, enc, SL_SCRATCH_SIZE, JSON_COMPACT | JSON_ENCODE_ANY);
    char *big = NULL;
    if (n > SL_SCRATCH_SIZE) {
        big = malloc(n);
        if (big == NULL || json_dumpb(data, big, n, JSON_COMPACT | JSON_ENCODE_ANY) != n) {
            free(big);
            sl_proto_reply(c, failure("publish-result", id, len, "overloaded"));
            return;
        }
        enc = big;
    }
    sl_chan_pub_t p = {.data_json = enc,
                       .data_len = n,
                       .sender_conn_id = c->conn_id,
                       .exclude_sender = exclude,
                       .sender_conn_no = c->conn_no,
                       .published_at = sl_now_ms(),
                       .published_us = sl_mono_us()};
    sl_chan_pub_result_t res;
    int rc = sl_chan_publish(REG, ch, &p, &res);
    free(big);
    if (rc == SL_CHAN_NOT_SUBSCRIBED) {
        /* Deleted since we found it. */
        sl_proto_reply(c, failure("publish-result", id, len, "channel-not-found"));
        return;
    }
    if (rc != SL_OK) {
        uatomic_add(&sl_conns.stats->overloaded, 1);
        if (rc == SL_CHAN_NO_MEMORY)
            sl_conns_count_error(SL_ERR_SHM_EXHAUSTED);
        SL_TEL(SL_EV_MESSAGE_PUBLISH_FAILED, SL_WARN, SL_TF_S("conn-id", c->conn_id),
               SL_TF_SN("channel-id", id, len), SL_TF_S("reason", "overloaded"));
        sl_proto_reply(c, failure("publish-result", id, len, "overloaded"));
        return;
    }
    uatomic_add(&sl_conns.stats->published, 1);
    sl_pubsub_wake_later(res.woken);
    if (sl_conns.trace_fd >= 0)
        trace_note(true, res.seq, sl_conns.read_us, p.published_us, 0);
    uint32_t delivered = res.delivered_to;
    if (exclude && find_sub(c, id, len) >= 0 && delivered > 0)
        delivered--; /* the sender is among the subscribers but skipped */
    char mid[32];
    snprintf(mid, sizeof(mid), "msg-%" PRIu64, res.message_id);
    SL_TEL(SL_EV_MESSAGE_PUBLISHED, SL_DEBUG, SL_TF_SN("channel-id", id, len),
           SL_TF_S("message-id", mid), SL_TF_I("seq", res.seq), SL_TF_I("delivered-to", delivered),
           SL_TF_S("sender-conn-id", c->conn_id));
    sl_jw_t w;
    sl_proto_begin(&w);
    sl_jw_lit(&w, "{\"type\":\"publish-result\",\"channel-id\":");
    sl_jw_str(&w, id, len);
    sl_jw_lit(&w, ",\"success\":true,\"message-id\":");
    sl_jw_str(&w, mid, strlen(mid));
    sl_jw_lit(&w, ",\"seq\":");
    sl_jw_int(&w, (int64_t)res.seq);
    sl_jw_lit(&w, ",\"delivered-to\":");
    sl_jw_int(&w, delivered);
    sl_jw_lit(&w, "}");
    sl_proto_send(c, &w);
}

/* ------------------------------------------------------------ listings */

typedef struct {
    json_t *all;
    bool filter;            /* only the channels `who` may subscribe to */
    const sl_ident_t *who;
    bool hide_users;        /* leave out the user-limited channels */
} listing_t;

static void channel_page_cb(sl_chan_t *ch, void *arg)
{
    listing_t *l = arg;
    if (l->filter && sl_perm_check(l->who, SL_ACT_SUBSCRIBE, ch->id, ch->node.klen, false) !=
                         SL_PERM_OK)
        return;
    if (l->hide_users && sl_stats_names_users(ch->id, ch->node.klen))
        return;
    json_t *o = json_pack("{s:o, s:I, s:I, s:I}", "config", sl_pubsub_config_json(&ch->config), "created-at",
                          (json_int_t)ch->created_at, "message-count",
                          (json_int_t)sl_chan_message_count(ch), "subscriber-count",
                          (json_int_t)uatomic_read(&ch->subscribers));
    json_object_setn_new(l->all, ch->id, ch->node.klen, o);
}

static bool may_list(const char *id, size_t len, void *arg)
{
    const listing_t *l = arg;
    if (l->hide_users && sl_stats_names_users(id, len))
        return false;
    return !l->filter || sl_perm_check(l->who, SL_ACT_SUBSCRIBE, id, len, false) == SL_PERM_OK;
}

json_t *sl_pubsub_channels_page(uint32_t cursor, uint32_t limit, uint32_t *next,
                                bool identities)
{
    listing_t l = {json_object(), false, NULL, !identities};
    if (sl_cluster) { /* every node's, from the broker's snapshot */
        json_decref(l.all);
        return sl_cluster_channels_page(cursor, SL_MIN(limit, SL_CHANNELS_PAGE_MAX),
                                        l.hide_users ? may_list : NULL, &l, next);
    }
    *next = sl_chan_page(REG, cursor, SL_MIN(limit, SL_CHANNELS_PAGE_MAX), channel_page_cb, &l);
    return l.all;
}

/* A client sees only the channels it may subscribe to (not a refusal:
 * nothing is counted). */
void sl_pubsub_list_channels(sl_conn_t *c, json_t *msg)
{
    json_t *cur = json_object_get(msg, "cursor"), *lim = json_object_get(msg, "limit");
    if (cur && !(json_is_integer(cur) && json_integer_value(cur) >= 0 &&
                 json_integer_value(cur) <= UINT32_MAX)) {
        sl_proto_bad_field(c, "list-channels", "cursor", "must be a next-cursor value");
        return;
    }
    if (lim && !(json_is_integer(lim) && json_integer_value(lim) >= 1)) {
        sl_proto_bad_field(c, "list-channels", "limit", "must be a positive integer");
        return;
    }
    uint32_t limit =
        lim ? (uint32_t)SL_MIN(json_integer_value(lim), SL_CHANNELS_PAGE_MAX) : SL_CHANNELS_PAGE_MAX;
    listing_t l = {NULL, sl_perm_active(), sl_session_ident(c), false};
    uint32_t next, from = cur ? (uint32_t)json_integer_value(cur) : 0;
    json_t *page;
    if (sl_cluster) {
        /* Every node's channels, from the broker's snapshot. */
        page = sl_cluster_channels_page(from, limit, l.filter ? may_list : NULL, &l, &next);
    } else {
        l.all = json_object();
        next = sl_chan_page(REG, from, limit, channel_page_cb, &l);
        page = l.all;
    }
    sl_proto_reply(c, json_pack("{s:s, s:o, s:o}", "type", "channel-list", "channels", page,
                                "next-cursor", next ? json_integer(next) : json_null()));
}

/* Paged like list-channels (the list grows with
 * --max-subscriptions-per-connection): cursor = index of the first. */
void sl_pubsub_get_subscriptions(sl_conn_t *c, json_t *msg)
{
    json_t *cur = json_object_get(msg, "cursor"), *lim = json_object_get(msg, "limit");
    if (cur && !(json_is_integer(cur) && json_integer_value(cur) >= 0)) {
        sl_proto_bad_field(c, "get-subscriptions", "cursor", "must be a next-cursor value");
        return;
    }
    if (lim && !(json_is_integer(lim) && json_integer_value(lim) >= 1)) {
        sl_proto_bad_field(c, "get-subscriptions", "limit", "must be a positive integer");
        return;
    }
    uint64_t from = cur ? (uint64_t)json_integer_value(cur) : 0;
    uint64_t limit = lim ? (uint64_t)SL_MIN(json_integer_value(lim), SL_CHANNELS_PAGE_MAX)
                         : SL_CHANNELS_PAGE_MAX;
    json_t *a = json_array();
    uint64_t i = from;
    for (; i < c->nsubs && i < from + limit; i++)
        json_array_append_new(a, json_stringn(subs_of(c)[i]->id, subs_of(c)[i]->idlen));
    sl_proto_reply(c, json_pack("{s:s, s:o, s:o}", "type", "subscription-list", "subscriptions", a,
                                "next-cursor", i < c->nsubs ? json_integer((json_int_t)i)
                                                            : json_null()));
}

/* ------------------------------------------------------------ presence */

/* The channel a presence / presence-stats / history request names, when
 * the connection may ask (reply sent otherwise: NULL).  Read side: the
 * channel is used only in this turn. */
static sl_chan_t *readable(sl_conn_t *c, sl_action_t act, const char *type, const char *id,
                           size_t len)
{
    const char *why = sl_session_permit(c, act, id, len, find_sub(c, id, len) >= 0);
    sl_chan_t *ch = why ? NULL : sl_chan_find(REG, id, len);
    if (why == NULL && ch == NULL) {
        sl_conns_count_error(SL_ERR_CHANNEL_NOT_FOUND);
        why = "channel-not-found";
    }
    if (why)
        sl_proto_reply(c, failure(type, id, len, why));
    return ch;
}

/* An optional non-negative integer field; false after replying. */
static bool opt_uint(sl_conn_t *c, json_t *msg, const char *type, const char *field,
                     uint64_t *out, bool *given)
{
    json_t *v = json_object_get(msg, field);
    *given = v != NULL;
    if (v == NULL)
        return true;
    if (!json_is_integer(v) || json_integer_value(v) < 0) {
        sl_proto_bad_field(c, type, field, "must be a non-negative integer");
        return false;
    }
    *out = (uint64_t)json_integer_value(v);
    return true;
}

typedef struct {
    json_t *clients;
    uint32_t n, limit;
    size_t bytes, max_bytes; /* about what the reply will take; its bound */
    uint64_t last;           /* sub_no of the last one listed */
    bool more;
} presence_t;

static int presence_cb(const sl_sub_t *s, void *arg)
{
    presence_t *p = arg;
    /* Each entry costs about its strings and 40 bytes of JSON around them
     * (user and info escaped: up to 6 bytes per byte, counted as 2). */
    size_t cost = strlen(sl_sub_conn_id(s)) + 2u * (s->user_len + s->info_len) + 40;
    if (p->n == p->limit || (p->n > 0 && p->bytes + cost > p->max_bytes)) {
        p->more = true;
        return 1;
    }
    p->bytes += cost;
    const char *user = sl_sub_user(s), *info = sl_sub_info(s);
    json_t *e = json_pack("{s:o, s:o}", "user", user ? json_string(user) : json_null(), "info",
                          info ? json_loadb(info, s->info_len, JSON_DECODE_ANY, NULL)
                               : json_null());
    json_object_set_new(p->clients, sl_sub_conn_id(s), e);
    p->last = s->sub_no;
    p->n++;
    return 0;
}

/* --redis: presence and its counts are every live node's, from Redis
 * (each node's broker keeps its subscribers' entries there: the
 * connection's user and info, as here).  A page's cursor is the broker's
 * (node and scan position, an integer); the entries of one node come in
 * no particular order. */
typedef struct {
    sl_reply_t *reply;
    bool stats;
    size_t len;
    char id[];
} presence_ask_t;

#ifdef SL_CRASHPOINTS
uint32_t sl_presence_walk_unit(void)
{
    static uint32_t unit;
    if (unit == 0) {
        const char *v = getenv("SL_PRESENCE_WALK_UNIT");
        unit = v && atoi(v) > 0 ? (uint32_t)atoi(v) : 1024;
    }
    return unit;
}

uint32_t sl_presence_page_walk(void)
{
    static uint32_t walk;
    if (walk == 0) {
        const char *v = getenv("SL_PRESENCE_PAGE_WALK");
        walk = v && atoi(v) > 0 ? (uint32_t)atoi(v) : SL_PRESENCE_WALK_MAX;
    }
    return walk;
}
#endif

static void presence_answered(sl_conn_t *c, void *arg, uint32_t status, json_t *res)
{
    presence_ask_t *p = arg;
    if (c) {
        const char *type = p->stats ? "presence-stats-result" : "presence-result";
        json_t *r;
        if (status == SL_BR_OK && p->stats) {
            /* Charged as a local walk is (the entries Redis counted). */
            json_int_t n = json_integer_value(json_object_get(res, "num-clients"));
            sl_conn_charge(c, (uint64_t)SL_MIN(n, (json_int_t)SL_PRESENCE_CLUSTER_WALK_MAX) /
                                  SL_PRESENCE_WALK_UNIT);
            r = json_pack("{s:s, s:s%, s:b, s:O, s:O}", "type", type, "channel-id", p->id, p->len,
                          "success", 1, "num-clients", json_object_get(res, "num-clients"),
                          "num-users", json_object_get(res, "num-users"));
        } else if (status == SL_BR_OK) {
            json_t *clients = json_object(), *v;
            const char *k;
            json_object_foreach(json_object_get(res, "clients"), k, v) {
                json_t *e = json_pack("{s:O, s:O}", "user", json_object_get(v, "user"), "info",
                                      json_object_get(v, "info"));
                if (e)
                    json_object_set_new(clients, k, e);
            }
            json_int_t next = json_integer_value(json_object_get(res, "next-cursor"));
            r = json_pack("{s:s, s:s%, s:b, s:o, s:o}", "type", type, "channel-id", p->id, p->len,
                          "success", 1, "clients", clients, "next-cursor",
                          next ? json_integer(next) : json_null());
        } else {
            if (status == SL_BR_NOT_FOUND)
                sl_conns_count_error(SL_ERR_CHANNEL_NOT_FOUND);
            r = failure(type, p->id, p->len, sl_brq_reason(status));
        }
        sl_proto_complete(c, p->reply, r);
    }
    free(p);
}

static void cluster_presence_ask(sl_conn_t *c, const char *id, size_t len, bool stats,
                                 uint64_t cursor, uint64_t limit)
{
    const char *type = stats ? "presence-stats-result" : "presence-result";
    const char *why = sl_session_permit(c, SL_ACT_PRESENCE, id, len, find_sub(c, id, len) >= 0);
    if (why) {
        sl_proto_reply(c, failure(type, id, len, why));
        return;
    }
    presence_ask_t *p = malloc(sizeof(*p) + len + 1);
    sl_reply_t *reply = p ? sl_proto_defer_chan(c, sl_table_hash(id, len)) : NULL;
    json_t *q = reply ? json_pack("{s:s%}", "channel-id", id, len) : NULL;
    char *txt = NULL;
    if (q) {
        if (stats) {
            json_object_set_new(q, "max-walk", json_integer(SL_PRESENCE_CLUSTER_WALK_MAX));
        } else {
            /* A page within the bound on one reply whatever the entries
             * hold (a user of 128 bytes, an info of 1 KiB, escaped): a
             * quarter of it, as Redis may give a little more than asked. */
            uint64_t entry = 6 * SL_CHAN_USER_MAX + SL_CHAN_INFO_MAX + 128;
            uint64_t fit = SL_MAX(SL_MIN(limit, sl_conn_reply_max() / 4 / entry), 1);
            json_object_set_new(q, "cursor", json_integer((json_int_t)cursor));
            json_object_set_new(q, "limit", json_integer((json_int_t)fit));
        }
        txt = json_dumps(q, JSON_COMPACT);
        json_decref(q);
    }
    if (txt == NULL) {
        if (reply)
            sl_proto_complete(c, reply, failure(type, id, len, "overloaded"));
        else
            sl_proto_reply(c, failure(type, id, len, "overloaded"));
        free(p);
        return;
    }
    p->reply = reply;
    p->stats = stats;
    p->len = len;
    memcpy(p->id, id, len);
    p->id[len] = '\0';
    int rc = sl_cluster_submit(stats ? SL_BRQ_PRESENCE_STATS : SL_BRQ_PRESENCE, c, 0, txt,
                               strlen(txt), presence_answered, p);
    free(txt);
    if (rc != SL_OK)
        presence_answered(c, p, (uint32_t)rc, NULL);
}

void sl_pubsub_presence(sl_conn_t *c, json_t *msg)
{
    size_t len;
    const char *id = channel_id(c, msg, "presence", &len);
    uint64_t cursor = 0, limit = SL_PRESENCE_PAGE_MAX;
    bool has_cursor, has_limit;
    if (id == NULL || !opt_uint(c, msg, "presence", "cursor", &cursor, &has_cursor) ||
        !opt_uint(c, msg, "presence", "limit", &limit, &has_limit))
        return;
    if (has_limit && limit == 0) {
        sl_proto_bad_field(c, "presence", "limit", "must be a positive integer");
        return;
    }
    if (sl_cluster) {
        /* A cluster cursor is (node index from 1) << 32 | scan position
         * (review rj17 L2: a node index of 0 made the script fail). */
        if (cursor && ((cursor >> 32) == 0 || (cursor >> 32) >= (1u << 20))) {
            sl_proto_bad_field(c, "presence", "cursor", "not a cursor this server gave");
            return;
        }
        cluster_presence_ask(c, id, len, false, cursor, SL_MIN(limit, SL_PRESENCE_PAGE_MAX));
        return;
    }
    sl_chan_t *ch = readable(c, SL_ACT_PRESENCE, "presence-result", id, len);
    if (ch == NULL)
        return;
    /* Newest first, a page at a time: the list is lock-free to read, but
     * encoding a 10,000-entry reply would hold this worker's loop (and
     * the client's send queue) for long, and a page of large token infos
     * must stay under the bound on one reply (docs/protocol.md). */
    presence_t p = {json_object(), 0, (uint32_t)SL_MIN(limit, SL_PRESENCE_PAGE_MAX), 0,
                    sl_conn_reply_max() / 2, 0, false};
    /* One request walks at most SL_PRESENCE_PAGE_WALK nodes, those skipped
     * to reach its cursor included (review rf15 F5): the list is walked
     * from its head, so no later cursor could reach past that depth -
     * the page so far, truncated, and no next-cursor. */
    bool cut;
    sl_conn_charge(c, sl_chan_members_max(ch, cursor, SL_PRESENCE_PAGE_WALK, &cut, presence_cb,
                                          &p) / SL_PRESENCE_WALK_UNIT);
    json_t *r = json_pack("{s:s, s:s%, s:b, s:o, s:o}", "type", "presence-result", "channel-id",
                          id, len, "success", 1, "clients", p.clients, "next-cursor",
                          p.more ? json_integer((json_int_t)p.last) : json_null());
    if (r && cut)
        json_object_set_new(r, "truncated", json_true());
    sl_proto_reply(c, r);
}

void sl_pubsub_presence_stats(sl_conn_t *c, json_t *msg)
{
    size_t len;
    const char *id = channel_id(c, msg, "presence-stats", &len);
    if (id == NULL)
        return;
    if (sl_cluster) {
        cluster_presence_ask(c, id, len, true, 0, 0);
        return;
    }
    sl_chan_t *ch = readable(c, SL_ACT_PRESENCE, "presence-stats-result", id, len);
    if (ch == NULL)
        return;
    uint32_t clients, users;
    bool all = sl_chan_presence_counts(ch, SL_PRESENCE_WALK_MAX, &clients, &users);
    sl_conn_charge(c, clients / SL_PRESENCE_WALK_UNIT);
    if (!all)
        clients = uatomic_read(&ch->subscribers);
    sl_proto_reply(c, json_pack("{s:s, s:s%, s:b, s:I, s:o}", "type", "presence-stats-result",
                                "channel-id", id, len, "success", 1, "num-clients",
                                (json_int_t)clients, "num-users",
                                all ? json_integer(users) : json_null()));
}

/* ------------------------------------------------------------- history */

/* The retained messages of a page, copied out under the channel lock and
 * parsed after it. */
typedef struct {
    char *buf;
    size_t len, cap;
    size_t off[SL_HISTORY_LIMIT_MAX + 1];
    uint32_t n;
    bool oom;
} hist_copy_t;

static void history_cb(const sl_chan_msg_t *m, void *arg)
{
    hist_copy_t *h = arg;
    size_t n = m->len - m->payload_off;
    if (h->oom || h->n >= SL_HISTORY_LIMIT_MAX)
        return;
    if (h->len + n > h->cap) {
        size_t cap = SL_MAX(h->cap * 2, h->len + n);
        char *b = realloc(h->buf, cap);
        if (b == NULL) {
            h->oom = true;
            return;
        }
        h->buf = b;
        h->cap = cap;
    }
    memcpy(h->buf + h->len, m->frame + m->payload_off, n);
    h->off[h->n++] = h->len;
    h->len += n;
    h->off[h->n] = h->len;
}

/* A page's entry for a retained channel-message. */
static json_t *publication(json_t *m)
{
    return json_pack("{s:O, s:O, s:O, s:O}", "seq", json_object_get(m, "seq"), "message-id",
                     json_object_get(m, "message-id"), "data", json_object_get(m, "data"),
                     "created-at", json_object_get(m, "published-at"));
}

/* --redis: the page comes from the channel's history in Redis (every
 * node's the same, whatever this node's ring holds), answered in the
 * connection's order of replies. */
typedef struct {
    sl_reply_t *reply;
    size_t len;
    char id[];
} history_ask_t;

static void history_answered(sl_conn_t *c, void *arg, uint32_t status, json_t *res)
{
    history_ask_t *h = arg;
    if (c) {
        json_t *r;
        json_t *msgs = json_object_get(res, "messages");
        if (status == SL_BR_OK && json_is_array(msgs)) {
            json_t *pubs = json_array(), *m;
            size_t i;
            json_array_foreach(msgs, i, m) json_array_append_new(pubs, publication(m));
            r = json_pack("{s:s, s:s%, s:b, s:O, s:O, s:o, s:O}", "type", "history-result",
                          "channel-id", h->id, h->len, "success", 1, "epoch",
                          json_object_get(res, "epoch"), "top-seq",
                          json_object_get(res, "top-seq"), "publications", pubs, "more",
                          json_object_get(res, "more"));
        } else {
            if (status == SL_BR_OK)
                status = SL_BR_BAD;
            if (status == SL_BR_NOT_FOUND)
                sl_conns_count_error(SL_ERR_CHANNEL_NOT_FOUND);
            r = failure("history-result", h->id, h->len, sl_brq_reason(status));
        }
        sl_proto_complete(c, h->reply, r);
        sl_conn_history_busy(c, false); /* reading resumes */
    }
    free(h);
}

static void cluster_history(sl_conn_t *c, const char *id, size_t len,
                            const sl_chan_history_q_t *q)
{
    const char *why = sl_session_permit(c, SL_ACT_HISTORY, id, len, find_sub(c, id, len) >= 0);
    if (why) {
        sl_proto_reply(c, failure("history-result", id, len, why));
        return;
    }
    /* history-ttl-ms is this node's (its namespace's, or the channel's
     * here), applied to the messages' published-at. */
    sl_chan_t *ch = sl_chan_find(REG, id, len);
    int64_t ttl = ch ? ch->config.history_ttl_ms
                     : sl_conf_namespace(sl_conf, id, len, NULL)->history_ttl_ms;
    history_ask_t *h = malloc(sizeof(*h) + len + 1);
    sl_reply_t *reply = h ? sl_proto_defer_chan(c, sl_table_hash(id, len)) : NULL;
    json_t *qj = reply ? json_pack("{s:s%, s:I, s:b, s:I, s:I, s:I}", "channel-id", id, len,
                                   "since", q->has_since ? (json_int_t)q->since : -1,
                                   "reverse", q->reverse, "limit", (json_int_t)q->limit,
                                   "max-bytes", (json_int_t)q->max_bytes, "min-at",
                                   ttl > 0 ? (json_int_t)(sl_now_ms() - ttl) : 0)
                       : NULL;
    char *txt = qj ? json_dumps(qj, JSON_COMPACT) : NULL;
    json_decref(qj);
    if (txt == NULL) {
        if (reply)
            sl_proto_complete(c, reply, failure("history-result", id, len, "overloaded"));
        else
            sl_proto_reply(c, failure("history-result", id, len, "overloaded"));
        free(h);
        return;
    }
    h->reply = reply;
    h->len = len;
    memcpy(h->id, id, len);
    h->id[len] = '\0';
    /* Charged when sent, by what it may copy (protocol.md 4.9); while it
     * waits the connection is not read: one in flight (rv17 H1). */
    sl_conn_charge(c, (uint32_t)SL_MIN(q->limit, (uint64_t)UINT32_MAX) / SL_HISTORY_CHARGE_UNIT);
    int rc = sl_cluster_submit(SL_BRQ_HISTORY, c, 0, txt, strlen(txt), history_answered, h);
    free(txt);
    if (rc != SL_OK)
        history_answered(c, h, (uint32_t)rc, NULL);
    else
        sl_conn_history_busy(c, true);
}

void sl_pubsub_history(sl_conn_t *c, json_t *msg)
{
    size_t len;
    const char *id = channel_id(c, msg, "history", &len);
    uint64_t since = 0, limit = SL_HISTORY_LIMIT_MAX;
    bool has_since, has_limit;
    json_t *rev = json_object_get(msg, "reverse");
    if (id == NULL || !opt_uint(c, msg, "history", "since-seq", &since, &has_since) ||
        !opt_uint(c, msg, "history", "limit", &limit, &has_limit))
        return;
    if (rev && !json_is_boolean(rev)) {
        sl_proto_bad_field(c, "history", "reverse", "must be a boolean");
        return;
    }
    sl_chan_history_q_t q = {.since = since,
                             .has_since = has_since,
                             .reverse = json_is_true(rev),
                             .limit = (uint32_t)SL_MIN(limit, SL_HISTORY_LIMIT_MAX),
                             .max_bytes = (size_t)sl_conf->max_outbound_bytes / 4};
    if (sl_cluster) {
        cluster_history(c, id, len, &q);
        return;
    }
    sl_chan_t *ch = readable(c, SL_ACT_HISTORY, "history-result", id, len);
    if (ch == NULL)
        return;
    hist_copy_t *h = calloc(1, sizeof(*h));
    if (h == NULL) {
        sl_proto_reply(c, failure("history-result", id, len, "overloaded"));
        return;
    }
    sl_chan_history_t res;
    sl_chan_history(REG, ch, &q, history_cb, h, &res);
    sl_conn_charge(c, res.count / SL_HISTORY_CHARGE_UNIT);
    json_t *pubs = json_array();
    for (uint32_t i = 0; i < h->n && !h->oom; i++) {
        /* As publish parsed it (JSON_ALLOW_NUL): a \u0000 in data must not
         * drop the message from the page (review r15 L5). */
        json_t *m = json_loadb(h->buf + h->off[i], h->off[i + 1] - h->off[i], JSON_ALLOW_NUL,
                               NULL);
        if (m)
            json_array_append_new(pubs, publication(m));
        json_decref(m);
    }
    bool oom = h->oom;
    free(h->buf);
    free(h);
    if (oom) {
        json_decref(pubs);
        sl_proto_reply(c, failure("history-result", id, len, "overloaded"));
        return;
    }
    sl_proto_reply(c, json_pack("{s:s, s:s%, s:b, s:s, s:I, s:o, s:b}", "type", "history-result",
                                "channel-id", id, len, "success", 1, "epoch", ch->epoch,
                                "top-seq", (json_int_t)res.top_seq, "publications", pubs, "more",
                                res.more));
}

/* ------------------------------------------------------------ delivery */

static void close_missed(sl_conn_t *c);

void (*sl_pubsub_rpc_seen)(const char *json, size_t len, const char *chan, size_t chan_len);

/* Returns the frames it queued (what the drain's turn bound counts). */
static uint64_t deliver(sl_chan_msg_t *m, uint64_t exclude_conn)
{
    sl_cidx_entry_t *e = sl_cidx_find(m->chan_hash, m->id, m->idlen);
    if (e == NULL || e->n == 0)
        return 0; /* everyone here left since the publish */
    if (sl_cluster && sl_pubsub_rpc_seen && m->seq == 0 && m->horizon == 0 && m->len > 2) {
        /* An rpc-request (of any node): remember its channel, for the
         * responses.  Its frame's text follows a server frame header. */
        uint32_t l7 = m->frame[1] & 0x7f, h = l7 == 126 ? 4 : l7 == 127 ? 10 : 2;
        if (m->len > h)
            sl_pubsub_rpc_seen((const char *)m->frame + h, m->len - h, m->id, m->idlen);
    }
    sl_buf_t *b = SL_FAULT("pubsub.deliver.alloc") ? NULL : sl_buf_new(m->len);
    if (b == NULL) {
        /* Out of local memory: they cannot have it, so they must not see
         * the next one either - a seq gap.  Closed 1013, they come back
         * and recover it with since-seq. */
        uatomic_add(&sl_conns.stats->overloaded, 1);
        for (uint32_t i = 0; i < e->n; i++)
            if (e->conns[i]->conn_no != exclude_conn)
                close_missed(e->conns[i]);
        return e->n;
    }
    memcpy(b->data, m->frame, m->len);
    b->len = m->len;
    uint64_t n = 0;
    for (uint32_t i = 0; i < e->n; i++) {
        sl_conn_t *c = e->conns[i];
        if (c->conn_no == exclude_conn || c->state != SL_CONN_WS)
            continue; /* the sender, or closing (nothing may follow a close frame) */
        if (m->horizon && (e->marks[i].sub_no > m->horizon || e->marks[i].no_presence))
            continue; /* a join / leave from before this subscription, or one
                         the presence rule does not let it see */
        if (sl_cluster && m->seq) {
            /* --redis: a subscribe still being joined holds what comes;
             * after it, a seq this subscriber already has (history and
             * live overlap, a catch-up after a broker restart) is
             * dropped: seqs only grow within one subscription (a new
             * epoch closes it first, 1012). */
            const sl_conn_cl_t *cl = sl_conn_cl(c);
            if (cl && cl->joins && join_hold(c, m, b))
                continue;
            if (m->seq <= e->last[i])
                continue;
            e->last[i] = m->seq;
        }
        if (sl_cluster && sl_proto_waits_on(c, m->chan_hash)) {
            /* Its publish-result (or subscription- / rpc-request-result)
             * on this channel comes first, as on one node. */
            sl_proto_send_ordered(c, b);
            n++;
        } else if (sl_conn_send(c, b) == SL_OK) {
            n++;
        }
    }
    sl_buf_unref(b);
    /* A join / leave (horizon set) is not a channel message: counted
     * apart (review r15 L6).  Both are in messages-out (every frame). */
    uatomic_add(m->horizon ? &sl_conns.stats->presence_events : &sl_conns.stats->delivered, n);
    latency_note(m->published_us, n);
    if (sl_conns.trace_fd >= 0)
        trace_note(false, m->seq, m->published_us, sl_mono_us(), (uint32_t)n);
    return e->n;
}

/* One message for one local connection (an RPC response, later admin
 * sends).  The conn number guards against a slot reused since. */
bool (*sl_pubsub_settle)(uint64_t tag);

static void deliver_direct(const sl_inbox_entry_t *e)
{
    if (e->tag && sl_pubsub_settle != NULL && !sl_pubsub_settle(e->tag))
        return; /* settled already: the requester had its rpc-timeout */
    sl_conn_t *c = sl_conns_at(e->target_slot);
    if (c == NULL || c->conn_no != e->target_conn || c->state != SL_CONN_WS)
        return; /* gone meanwhile */
    sl_buf_t *b = sl_buf_new(e->msg->len);
    if (b == NULL)
        return;
    memcpy(b->data, e->msg->frame, e->msg->len);
    b->len = e->msg->len;
    /* An RPC response goes after the rpc-request-result it answers. */
    sl_proto_send_ordered(c, b);
    sl_buf_unref(b);
}

static sl_buf_t *local_copy(const sl_chan_msg_t *m)
{
    sl_buf_t *b = sl_buf_new(m->len);
    if (b) {
        memcpy(b->data, m->frame, m->len);
        b->len = m->len;
    }
    return b;
}

/* Admin broadcast: every protocol connection here (echo ones excluded),
 * except those that may only authenticate (a token key, no
 * --allow-anonymous, no token yet): they hear nothing until they have one. */
static void deliver_broadcast(const sl_chan_msg_t *m)
{
    sl_buf_t *b = local_copy(m);
    if (b == NULL)
        return;
    SL_CONNS_EACH(c)
        if (c->kind == SL_KIND_PROTOCOL && c->state == SL_CONN_WS &&
            !sl_session_may_only_authenticate(c))
            sl_conn_send(c, b);
    sl_buf_unref(b);
}

/* Admin: unsubscribe one local connection from a channel (the entry's
 * message carries the channel id, not a frame) and tell it. */
static void unsubscribe_direct(const sl_inbox_entry_t *e)
{
    sl_conn_t *c = sl_conns_at(e->target_slot);
    const char *id = (const char *)e->msg->frame;
    size_t len = e->msg->len;
    if (c == NULL || c->conn_no != e->target_conn || c->state != SL_CONN_WS)
        return;
    int i = find_sub(c, id, len);
    if (i < 0)
        return;
    leave(c, (uint32_t)i);
    sl_proto_reply(c, json_pack("{s:s, s:s%, s:s}", "type", "unsubscribed", "channel-id", id, len,
                                "reason", "removed by the administrator"));
}

/* Admin close: the connection is closed with 1008. */
static void close_direct(const sl_inbox_entry_t *e)
{
    sl_conn_t *c = sl_conns_at(e->target_slot);
    if (c && c->conn_no == e->target_conn)
        sl_conn_close_ws(c, SL_WS_CLOSE_POLICY, "closed by the administrator");
}

/* Forget conn c's local subscription to a deleted channel and tell it
 * (frame: the notice to send, or NULL to build one). */
static void forget_deleted(sl_conn_t *c, const char *id, size_t len, uint64_t hash,
                           sl_buf_t *frame)
{
    int i = find_sub(c, id, len);
    if (i >= 0)
        subs_of(c)[i] = subs_of(c)[--c->nsubs];
    sl_cidx_remove(hash, id, len, c); /* id is the caller's, not the entry's */
    if (frame)
        sl_conn_send(c, frame);
    else
        sl_proto_reply(c, json_pack("{s:s, s:s%}", "type", "channel-deleted", "channel-id", id,
                                    len));
}

/* The channel was deleted: the registry already dropped the subscriptions;
 * forget them here and tell each local subscriber.  A connection that has
 * meanwhile subscribed to a new channel of the same name (see
 * sl_pubsub_subscribe) is subscribed to that one in the registry and is
 * left alone: it was told when it re-subscribed. */
static void channel_gone(const sl_chan_msg_t *m)
{
    sl_cidx_entry_t *e = sl_cidx_find(m->chan_hash, m->id, m->idlen);
    if (e == NULL)
        return;
    sl_chan_t *live = sl_chan_find(REG, m->id, m->idlen);
    sl_buf_t *b = local_copy(m);
    /* Walk from the end: forgetting one shifts only those after it. */
    for (uint32_t k = e->n; k-- > 0;) {
        e = sl_cidx_find(m->chan_hash, m->id, m->idlen);
        if (e == NULL)
            break;
        if (k >= e->n)
            continue;
        sl_conn_t *c = e->conns[k];
        if (live && sl_chan_is_subscriber(REG, live, c->conn_id))
            continue;
        forget_deleted(c, m->id, m->idlen, m->chan_hash, b);
    }
    sl_buf_unref(b);
}

static void close_missed(sl_conn_t *c)
{
    if (c->state != SL_CONN_WS)
        return;
    uatomic_add(&sl_conns.stats->missed_closes, 1);
    SL_TEL(SL_EV_WEBSOCKET_ERROR, SL_WARN, SL_TF_S("conn-id", c->conn_id),
           SL_TF_S("reason", "missed-messages"));
    sl_conn_close_ws(c, SL_WS_CLOSE_TRY_AGAIN, "missed messages: resubscribe with since-seq");
}

typedef struct {
    const sl_inbox_note_t *note; /* NULL: notes numbered below `index` lost */
    uint64_t index;
} missed_t;

/* Whether a subscriber with mark k must be closed for what `x` says was
 * missed: a message of the incarnation it subscribed to, published after
 * it subscribed; or notes lost that may have been counted after it
 * subscribed.  (Unknown mark: always.) */
static bool missed_by(const sl_cidx_mark_t *k, const missed_t *x)
{
    if (k->serial == 0)
        return true;
    if (x->note == NULL)
        return k->notes < x->index;
    return k->serial == x->note->serial && x->note->seq > k->seq;
}

static void close_entry(sl_cidx_entry_t *e, void *arg)
{
    for (uint32_t i = 0; i < e->n; i++)
        if (missed_by(&e->marks[i], arg))
            close_missed(e->conns[i]);
}

/* A join / leave of the channel skipped our full inbox: there is no seq
 * to recover it by, so each subscriber it was for (the incarnation, up to
 * the horizon, one the presence rule lets see it) is told once that its
 * view of presence may be stale - never closed (reviews r15 H2, rg15 G1).
 * It is told only after the join / leave entries queued before the loss
 * (sl_inbox_presence: review rh15 H1), so the presence it then asks for
 * is newer than every delta that follows.  p NULL: the presence set
 * overflowed, every subscriber of a join-leave channel that sees presence
 * is told, once (review rh15 M1).  A notice that cannot be built (out of
 * local memory) closes them 1013 instead, as deliver does: their
 * resubscribe asks presence again (review rg15 G3).  Counts the frames
 * queued in *(presence_walk_t).frames: the drain's turn bound. */
typedef struct {
    const sl_inbox_presence_t *p;
    uint64_t frames;
} presence_walk_t;

static void resync_entry(sl_cidx_entry_t *e, void *arg)
{
    presence_walk_t *w = arg;
    const sl_inbox_presence_t *p = w->p;
    sl_buf_t *b = NULL;
    for (uint32_t i = 0; i < e->n; i++) {
        const sl_cidx_mark_t *k = &e->marks[i];
        sl_conn_t *c = e->conns[i];
        if (c->state != SL_CONN_WS || k->no_presence || (p == NULL && !k->join_leave) ||
            (p && k->serial != 0 && (k->serial != p->serial || k->sub_no > p->horizon)))
            continue; /* another incarnation, or came after it (unknown mark:
                         told); or no join / leave there to miss */
        if (b == NULL) {
            json_t *j = SL_FAULT("presence-resync") ? NULL
                        : json_pack("{s:s, s:s%}", "type", "presence-resync", "channel-id",
                                    e->id, (size_t)e->idlen);
            b = j ? sl_frame_json(j) : NULL;
            json_decref(j);
        }
        w->frames++;
        if (b == NULL) {
            uatomic_add(&sl_conns.stats->presence_resync_failed, 1);
            close_missed(c);
        } else if (sl_conn_send(c, b) == SL_OK) {
            uatomic_add(&sl_conns.stats->presence_resyncs, 1);
        }
    }
    sl_buf_unref(b);
}

static void on_presence(const sl_inbox_presence_t *p, void *arg)
{
    presence_walk_t *w = arg;
    w->p = p;
    if (p == NULL)
        sl_cidx_foreach(resync_entry, w);
    else
        sl_cidx_foreach_hash(p->chan_hash, resync_entry, w);
}

static void on_missed(const sl_inbox_note_t *note, uint64_t index, void *arg)
{
    (void)arg; /* (the presence walk's counter) */
    missed_t x = {note, index};
    if (note == NULL || note->chan_hash == 0)
        sl_cidx_foreach(close_entry, &x); /* lost: which channel is not known */
    else
        sl_cidx_foreach_hash(note->chan_hash, close_entry, &x);
}

/* Act on the skips noted before the entry at `upto` was pushed.  Returns
 * the frames it queued (counted in the drain's turn bound). */
static uint64_t check_missed(sl_inbox_t *in, uint64_t upto)
{
    /* Presence losses in their place: after the join / leave entries
     * queued before them (review rh15 H1).  The start policy (what a
     * predecessor left) is sl_inbox_look's (reviews ri15 R4, rm15 N1). */
    presence_walk_t w = {NULL, 0};
    sl_inbox_look(in, &reader, upto, &(sl_inbox_look_fns_t){on_presence, on_missed, &w});
    return w.frames;
}

size_t sl_pubsub_drain(void)
{
    sl_inbox_t *in = REG->inboxes[sl_conns.id];
    sl_inbox_entry_t e;
    uint64_t pos;
    size_t n = 0;
    uint64_t frames = 0;
    if (sl_conns.trace_fd >= 0) {
        trace_drain_us = sl_mono_us();
        trace_cpu_us = thread_cpu_us();
    }
    /* Bounded per turn so one busy channel cannot starve the loop: in
     * entries, and in frames queued (8,192 entries of a 10,000-subscriber
     * channel would be 8e7 sends in one turn, past the stall kill: review
     * r15 H2).  What is left is taken up in the next turn (woken below). */
    while (n < SL_INBOX_CAP && frames < SL_DRAIN_FRAMES_MAX && sl_inbox_pop(in, &e, &pos)) {
        /* Everything pushed before a skip was delivered; a skip noted
         * before this entry was pushed closes its channel's subscribers
         * now, before they could get a message from after the gap. */
        frames += check_missed(in, pos);
        if (e.kind == SL_INBOX_CHANNEL_MSG)
            frames += deliver(e.msg, e.exclude_conn);
        else if (e.kind == SL_INBOX_DIRECT)
            deliver_direct(&e);
        else if (e.kind == SL_INBOX_BROADCAST)
            deliver_broadcast(e.msg);
        else if (e.kind == SL_INBOX_CLOSE)
            close_direct(&e);
        else if (e.kind == SL_INBOX_CHANNEL_GONE)
            channel_gone(e.msg);
        else if (e.kind == SL_INBOX_UNSUBSCRIBE)
            unsubscribe_direct(&e);
        else if (e.kind == SL_INBOX_BROKER_RESULT)
            sl_cluster_result(&e);
        else if (e.kind == SL_INBOX_CHANNEL_RESET)
            channel_reset(e.msg);
        sl_chan_msg_unref(REG, e.msg);
        n++;
    }
    /* Skips after everything we have, up to the tail seen empty (reviews
     * ri15 R1, rm15 N2: the decision is the inbox's, where a test runs it). */
    presence_walk_t w = {NULL, 0};
    if (!sl_inbox_look_drained(in, &reader, &(sl_inbox_look_fns_t){on_presence, on_missed, &w})) {
        /* Stopped at a bound: another turn soon, after this one's writes. */
        uint64_t one = 1;
        if (write(sl_wake_fds[sl_conns.id], &one, sizeof(one)) < 0) {
        } /* a full eventfd counter still means "woken" */
    }
    return n;
}

void sl_pubsub_wake_later(uint64_t workers)
{
    /* Our own inbox is drained at the end of this turn anyway. */
    pending_wake |= workers & ~((uint64_t)1 << sl_conns.id);
}

void sl_pubsub_wake(void)
{
    uint64_t w = pending_wake;
    pending_wake = 0;
    for (uint32_t i = 0; w; i++, w >>= 1) {
        if (!(w & 1))
            continue;
        uint64_t one = 1;
        if (sl_conns.trace_fd >= 0 && trace_wake_us == 0)
            trace_wake_us = sl_mono_us(); /* the turn's first, as it begins */
        /* A full eventfd counter still means "woken": ignore EAGAIN. */
        if (write(sl_wake_fds[i], &one, sizeof(one)) < 0) {
        }
    }
}
