/*
 * tel.c - emitting telemetry records (every process) and decoding them
 * into lines (the logger, the tests).
 *
 * Emitting is a few memcpy into a static batch: no malloc, no formatting,
 * no syscall.  sl_tel_flush writes the batch (up to 64 KiB of whole
 * records) once per loop turn or when the batch is full, in writes of
 * whole records of at most PIPE_BUF bytes each.  Every process has a pipe
 * of its own to the logger (the master creates one per worker slot), so no
 * other process's records can interleave with ours; and a non-blocking
 * pipe takes a write of at most PIPE_BUF bytes whole or not at all, so the
 * pipe only ever holds whole records.  That matters across a worker's
 * death: the slot's pipe outlives the worker, and a half record left by a
 * killed worker would be joined with its successor's first bytes, tearing
 * the logger's stream for good.  What the full pipe does not take now is
 * written by the next flush (the pipe's room cannot be known exactly:
 * capacity is counted in partly filled pages).
 * Nothing is ever waited for: a record that finds the batch still full
 * of unwritten bytes is dropped and counted (tel_dropped), and a record
 * counts as emitted when its last byte has been written, so the logger's
 * "queued" (emitted - processed) is exact.
 *
 * The batch is per process and each process is single-threaded, so it
 * needs no lock.  The counters it updates live in the process's own slot in
 * shared memory (uatomic_add: readers on other processes only need
 * atomicity).
 */
#include "sl_tel.h"

#include "sl_ws.h"

#include <errno.h>
#include <fcntl.h>
#include <strings.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>
#include <urcu/uatomic.h>

#define SL_TEL_MAX_RECORD 1024
#define SL_TEL_HDR 16 /* u16 len, u8 level, u8 event, i32 worker, i64 ts */

static struct {
    int fd;
    int worker;
    sl_worker_stats_t *stats;
    bool enabled;
    sl_level_t min_level;
    size_t used;    /* bytes of records in the batch */
    size_t sent;    /* of which written already (a partial write) */
    size_t counted; /* records before this offset are counted as emitted */
    uint8_t batch[64 * 1024];
} T = {.fd = -1};

static const char *const event_names[SL_EV__COUNT] = {
    "server-starting", "server-started", "server-stopping", "server-stopped",
    "connection-added", "connection-removed", "websocket-opened", "websocket-closed",
    "websocket-error", "websocket-message-received", "message-routing", "message-processed",
    "message-sent", "channel-created", "channel-deleted", "subscription-added",
    "subscription-removed", "subscription-rejected", "message-published",
    "message-publish-failed", "channel-broadcast-start", "channel-broadcast-complete",
    "broadcast-failed", "rpc-request-sent", "rpc-response-sent", "rpc-request-expired",
    "rpc-cleanup-completed", "http-request", "slow-consumer-disconnected", "worker-exited",
    "worker-started", "server-upgrading", "server-upgrade-failed", "worker-stalled",
    "authenticated", "authentication-failed", "session-expired", "permission-denied",
    "rate-limited", "connection-limit-reached", "keys-reloaded", "keys-reload-failed",
    "open-access", "worker-recovered",
    "redis-connected", "redis-disconnected", "broker-exited", "tls-reloaded",
    "tls-reload-failed", "worker-cleanup-waiting", "channel-join", "channel-leave",
    "broker-no-memory",
};

static const char *const level_names[] = {"trace", "debug", "info", "warn", "error"};

const char *sl_tel_event_name(sl_event_t ev)
{
    return (unsigned)ev < SL_EV__COUNT ? event_names[ev] : "unknown";
}

const char *sl_level_name(sl_level_t lvl)
{
    return (unsigned)lvl < SL_ARRAY_LEN(level_names) ? level_names[lvl] : "unknown";
}

int sl_level_parse(const char *s, sl_level_t *out)
{
    for (size_t i = 0; i < SL_ARRAY_LEN(level_names); i++)
        if (strcasecmp(s, level_names[i]) == 0) {
            *out = (sl_level_t)i;
            return SL_OK;
        }
    return SL_ERROR;
}

void sl_tel_init(int fd, int worker, sl_worker_stats_t *stats, bool enabled, sl_level_t min_level)
{
    T.fd = fd;
    T.worker = worker;
    T.stats = stats;
    T.enabled = enabled && fd >= 0;
    T.min_level = min_level;
    T.used = T.sent = T.counted = 0;
    if (fd >= 0) {
        int fl = fcntl(fd, F_GETFL);
        if (fl >= 0)
            fcntl(fd, F_SETFL, fl | O_NONBLOCK);
    }
}

bool sl_tel_on(sl_level_t lvl)
{
    return T.enabled && lvl >= T.min_level;
}

/* Count the records whose last byte is now written. */
static void count_written(void)
{
    uint64_t n = 0;
    while (T.sent - T.counted >= 2) {
        uint16_t len;
        memcpy(&len, T.batch + T.counted, 2);
        if (T.counted + len > T.sent)
            break;
        T.counted += len;
        n++;
    }
    if (n && T.stats)
        uatomic_add(&T.stats->tel_emitted, n);
}

/* The end of the next write: whole records from T.sent, at most PIPE_BUF
 * bytes (at least the rest of the record T.sent is in; a record is at most
 * SL_TEL_MAX_RECORD < PIPE_BUF). */
static size_t chunk_end(void)
{
    size_t end = T.counted;
    while (end + 2 <= T.used) {
        uint16_t len;
        memcpy(&len, T.batch + end, 2);
        if (end + len - T.sent > PIPE_BUF && end > T.sent)
            break;
        end += len;
    }
    return end;
}

void sl_tel_flush(void)
{
    while (T.sent < T.used) {
        size_t want = chunk_end() - T.sent;
        ssize_t n;
        do
            n = write(T.fd, T.batch + T.sent, want);
        while (n < 0 && errno == EINTR);
        if (n > 0) {
            T.sent += (size_t)n;
            count_written();
            if ((size_t)n < want)
                break; /* not a pipe (a file): the rest next time */
        } else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
            /* Broken beyond repair (no reader at all): what is unsent is
             * dropped; a record already begun would tear the stream, but
             * nobody can read it any more either. */
            uint64_t lost = 0;
            for (size_t p = T.counted; p + 2 <= T.used;) {
                uint16_t len;
                memcpy(&len, T.batch + p, 2);
                p += len;
                lost++;
            }
            if (T.stats)
                uatomic_add(&T.stats->tel_dropped, lost);
            T.sent = T.counted = T.used;
        } else {
            break; /* the pipe is full: the rest next time, never waited for */
        }
    }
    if (T.sent == T.used)
        T.used = T.sent = T.counted = 0;
}

void sl_tel_finish(int timeout_ms)
{
    for (int waited = 0; T.sent < T.used && waited < timeout_ms; waited += 10) {
        sl_tel_flush();
        if (T.sent < T.used) {
            struct pollfd p = {.fd = T.fd, .events = POLLOUT};
            poll(&p, 1, 10);
        }
    }
    sl_tel_flush();
}

void sl_tel_emit(sl_event_t ev, sl_level_t lvl, const sl_tel_field_t *f, size_t nf)
{
    if (!sl_tel_on(lvl))
        return;
    if (T.used + SL_TEL_MAX_RECORD > sizeof(T.batch)) {
        sl_tel_flush();
        if (T.used + SL_TEL_MAX_RECORD > sizeof(T.batch) && T.counted > 0) {
            /* Part of the batch is written: keep only the rest (a record
             * begun stays with the offset of its unsent part). */
            memmove(T.batch, T.batch + T.counted, T.used - T.counted);
            T.used -= T.counted;
            T.sent -= T.counted;
            T.counted = 0;
        }
        if (T.used + SL_TEL_MAX_RECORD > sizeof(T.batch)) {
            if (T.stats)
                uatomic_add(&T.stats->tel_dropped, 1);
            return; /* the pipe is still full: never waited for */
        }
    }

    uint8_t *start = T.batch + T.used, *p = start + SL_TEL_HDR;
    uint8_t *end = start + SL_TEL_MAX_RECORD;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME_COARSE, &ts);
    int64_t ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;

    for (size_t i = 0; i < nf; i++) {
        size_t klen = f[i].klen;
        /* type + key length + key + the largest fixed value (8 bytes) */
        if ((size_t)(end - p) < 2 + klen + 8 + 2)
            break;
        p[0] = f[i].type;
        p[1] = (uint8_t)klen;
        memcpy(p + 2, f[i].key, klen);
        p += 2 + klen;
        switch (f[i].type) {
        case SL_TF_INT:
            memcpy(p, &f[i].i, 8);
            p += 8;
            break;
        case SL_TF_BOOL:
            *p++ = f[i].i ? 1 : 0;
            break;
        case SL_TF_STR: {
            /* Strings are cut to what is left of the record. */
            size_t room = (size_t)(end - p) - 2, n = f[i].slen;
            if (n > room)
                n = room;
            uint16_t n16 = (uint16_t)n;
            memcpy(p, &n16, 2);
            memcpy(p + 2, f[i].s, n);
            p += 2 + n;
            break;
        }
        default:
            break; /* SL_TF_NULL: no value */
        }
    }
    uint16_t len = (uint16_t)(p - start);
    int32_t w = T.worker;
    memcpy(start, &len, 2);
    start[2] = (uint8_t)lvl;
    start[3] = (uint8_t)ev;
    memcpy(start + 4, &w, 4);
    memcpy(start + 8, &ms, 8);
    T.used += len;
}

/* ------------------------------------------------------------ decoding */

typedef struct {
    char *p, *end;
    bool overflow;
} out_t;

static void out_raw(out_t *o, const char *s, size_t n)
{
    if ((size_t)(o->end - o->p) <= n) {
        o->overflow = true;
        return;
    }
    memcpy(o->p, s, n);
    o->p += n;
}

static void out_str(out_t *o, const char *s)
{
    out_raw(o, s, strlen(s));
}

/* A JSON string: escapes quotes, backslashes and control characters, and
 * replaces bytes that are not valid UTF-8 with U+FFFD so the line is always
 * valid JSON. */
static void out_json_string(out_t *o, const uint8_t *s, size_t n)
{
    out_raw(o, "\"", 1);
    size_t i = 0;
    while (i < n) {
        uint8_t b = s[i];
        if (b == '"' || b == '\\') {
            char e[2] = {'\\', (char)b};
            out_raw(o, e, 2);
            i++;
        } else if (b < 0x20 || b == 0x7F) {
            char e[8];
            snprintf(e, sizeof(e), "\\u%04x", b);
            out_raw(o, e, 6);
            i++;
        } else if (b < 0x80) {
            out_raw(o, (const char *)&b, 1);
            i++;
        } else {
            /* Find the length of a valid sequence starting here. */
            size_t k = 1;
            sl_utf8_t u;
            sl_utf8_init(&u);
            bool ok = false;
            while (i + k <= n && k <= 4) {
                if (!sl_utf8_feed(&u, s + i + k - 1, 1))
                    break;
                if (sl_utf8_complete(&u)) {
                    ok = true;
                    break;
                }
                k++;
            }
            if (ok) {
                out_raw(o, (const char *)s + i, k);
                i += k;
            } else {
                out_str(o, "\\ufffd");
                i++;
            }
        }
    }
    out_raw(o, "\"", 1);
}

static void out_int(out_t *o, int64_t v)
{
    char b[24];
    int n = snprintf(b, sizeof(b), "%lld", (long long)v);
    out_raw(o, b, (size_t)n);
}

/* The data map of a record as a JSON object, its source last. */
static int out_fields(out_t *o, const uint8_t *rec, size_t len, int32_t worker)
{
    const uint8_t *p = rec + SL_TEL_HDR, *end = rec + len;
    out_raw(o, "{", 1);
    bool first = true;
    while (p < end) {
        if (end - p < 2)
            return -1;
        uint8_t type = p[0], klen = p[1];
        p += 2;
        if ((size_t)(end - p) < klen)
            return -1;
        if (!first)
            out_raw(o, ",", 1);
        first = false;
        out_json_string(o, p, klen);
        out_raw(o, ":", 1);
        p += klen;
        switch (type) {
        case SL_TF_INT: {
            int64_t v;
            if (end - p < 8)
                return -1;
            memcpy(&v, p, 8);
            p += 8;
            out_int(o, v);
            break;
        }
        case SL_TF_BOOL:
            if (end - p < 1)
                return -1;
            out_str(o, *p++ ? "true" : "false");
            break;
        case SL_TF_STR: {
            uint16_t n;
            if (end - p < 2)
                return -1;
            memcpy(&n, p, 2);
            p += 2;
            if ((size_t)(end - p) < n)
                return -1;
            out_json_string(o, p, n);
            p += n;
            break;
        }
        case SL_TF_NULL:
            out_str(o, "null");
            break;
        default:
            return -1;
        }
    }
    /* Which process emitted it: "master", "worker-N", "logger" or "broker". */
    if (!first)
        out_raw(o, ",", 1);
    out_str(o, "\"source\":\"");
    if (worker >= 0) {
        out_str(o, "worker-");
        out_int(o, worker);
    } else {
        out_str(o, worker == -1 ? "master" : worker == -3 ? "broker" : "logger");
    }
    out_raw(o, "\"}", 2);
    return 0;
}

int sl_tel_format(const uint8_t *rec, size_t len, const sl_logger_opts_t *opts, char *outbuf,
                  size_t outsz)
{
    if (len < SL_TEL_HDR)
        return -1;
    uint16_t rlen;
    int32_t worker;
    int64_t ms;
    memcpy(&rlen, rec, 2);
    memcpy(&worker, rec + 4, 4);
    memcpy(&ms, rec + 8, 8);
    uint8_t lvl = rec[2], ev = rec[3];
    if (rlen != len || lvl > SL_ERROR_LEVEL || ev >= SL_EV__COUNT)
        return -1;

    time_t secs = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    char when[80];
    snprintf(when, sizeof(when), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(ms % 1000));

    out_t o = {outbuf, outbuf + outsz, false};
    const char *app = opts->app_name ? opts->app_name : "sente-lite";
    if (opts->json) {
        out_str(&o, "{\"timestamp\":\"");
        out_str(&o, when);
        out_str(&o, "\",\"level\":\"");
        out_str(&o, sl_level_name((sl_level_t)lvl));
        out_str(&o, "\",\"event\":\"");
        out_str(&o, sl_tel_event_name((sl_event_t)ev));
        out_str(&o, "\",\"ns\":\"");
        out_str(&o, app);
        out_str(&o, ".server\",\"app\":\"");
        out_str(&o, app);
        out_str(&o, "\",\"data\":");
        if (out_fields(&o, rec, len, worker) != 0)
            return -1;
        out_str(&o, "}\n");
    } else {
        char lv[8];
        const char *ln = sl_level_name((sl_level_t)lvl);
        size_t k = 0;
        for (; ln[k] && k < sizeof(lv) - 1; k++)
            lv[k] = (char)(ln[k] - 'a' + 'A');
        lv[k] = '\0';
        out_str(&o, when);
        out_str(&o, " ");
        out_str(&o, lv);
        out_str(&o, " [");
        out_str(&o, app);
        out_str(&o, ".server/");
        out_str(&o, sl_tel_event_name((sl_event_t)ev));
        out_str(&o, "] ");
        if (out_fields(&o, rec, len, worker) != 0)
            return -1;
        out_str(&o, "\n");
    }
    if (o.overflow)
        return -1;
    return (int)(o.p - outbuf);
}
