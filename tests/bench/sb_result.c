/*
 * sb_result.c - the figures of a run: the latency histogram, the table of
 * result fields, their merge across --processes, the raw JSON a child sends
 * its parent, and the final JSON line and stderr summary.
 *
 * One table (FIELDS) names every counter once: its JSON key, how it merges
 * (sum, min, max) and in which modes it is reported.  Children send raw
 * figures and histogram buckets, never percentiles, so the parent's merged
 * percentiles are exact to the bucket.  Derived figures (lost, rates,
 * percentiles) are computed only at the end, from merged values.
 */
#include "sb.h"

#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ histogram */

void sb_hist_init(struct sb_hist *h)
{
    memset(h, 0, sizeof(*h));
}

int sb_hist_index(uint64_t v)
{
    if (v < SB_HIST_SUB)
        return (int)v;
    int e = 63 - __builtin_clzll(v); /* >= 6 */
    int sub = (int)((v >> (e - 6)) & (SB_HIST_SUB - 1));
    int idx = SB_HIST_SUB + (e - 6) * SB_HIST_SUB + sub;
    return idx < SB_HIST_BUCKETS ? idx : SB_HIST_BUCKETS - 1;
}

/* Largest value that lands in bucket idx. */
uint64_t sb_hist_upper(int idx)
{
    if (idx < SB_HIST_SUB)
        return (uint64_t)idx;
    int e = (idx - SB_HIST_SUB) / SB_HIST_SUB + 6;
    uint64_t sub = (uint64_t)((idx - SB_HIST_SUB) % SB_HIST_SUB);
    uint64_t lower = (SB_HIST_SUB + sub) << (e - 6);
    return lower + (1ull << (e - 6)) - 1;
}

void sb_hist_add(struct sb_hist *h, uint64_t v)
{
    if (h->count == 0 || v < h->min)
        h->min = v;
    if (v > h->max)
        h->max = v;
    h->count++;
    h->sum += v;
    h->b[sb_hist_index(v)]++;
}

/* The value at percentile pct (0..100): the upper bound of the bucket that
 * holds it, never above the exact maximum. */
uint64_t sb_hist_percentile(const struct sb_hist *h, double pct)
{
    if (h->count == 0)
        return 0;
    uint64_t rank = (uint64_t)ceil(pct / 100.0 * (double)h->count);
    if (rank < 1)
        rank = 1;
    uint64_t seen = 0;
    for (int i = 0; i < SB_HIST_BUCKETS; i++) {
        seen += h->b[i];
        if (seen >= rank) {
            uint64_t v = sb_hist_upper(i);
            if (v > h->max)
                v = h->max;
            if (v < h->min)
                v = h->min;
            return v;
        }
    }
    return h->max;
}

void sb_hist_merge(struct sb_hist *into, const struct sb_hist *from)
{
    if (from->count == 0)
        return;
    if (into->count == 0 || from->min < into->min)
        into->min = from->min;
    if (from->max > into->max)
        into->max = from->max;
    into->count += from->count;
    into->sum += from->sum;
    for (int i = 0; i < SB_HIST_BUCKETS; i++)
        into->b[i] += from->b[i];
}

/* --------------------------------------------------------------- fields */

enum merge { M_SUM, M_MIN, M_MAX };
enum {
    F_ALL = 15,
    F_FAN = 1 << SB_FANOUT,
    F_ECHO = 1 << SB_ECHO,
    F_CONN = 1 << SB_CONNECT,
    F_RPC = 1 << SB_RPC,
    F_RAW = 0 /* internal: raw JSON only */
};

struct field {
    const char *key;
    size_t off;
    enum merge merge;
    int modes; /* reported in the final JSON for these modes */
};

#define I(k, m, f, modes)                                                                          \
    {                                                                                              \
        k, offsetof(struct sb_result, f), m, modes                                                 \
    }
static const struct field FIELDS[] = {
    I("connections", M_SUM, connections, F_ALL),
    I("connected", M_SUM, connected, F_ALL),
    I("connect-errors", M_SUM, connect_errors, F_ALL),
    I("handshake-errors", M_SUM, handshake_errors, F_ALL),
    I("subscribe-errors", M_SUM, subscribe_errors, F_FAN | F_RPC | F_CONN),
    I("protocol-errors", M_SUM, protocol_errors, F_ALL),
    I("closed-by-server", M_SUM, closed_by_server, F_ALL),
    I("subscribers", M_SUM, subscribers, F_FAN),
    I("subscribed", M_SUM, subscribed, F_FAN),
    I("publishers", M_SUM, publishers, F_FAN),
    I("published", M_SUM, published, F_FAN),
    I("acknowledged", M_SUM, acknowledged, F_FAN),
    I("publish-errors", M_SUM, publish_errors, F_FAN),
    I("delivered", M_SUM, delivered, F_FAN),
    I("expected", M_SUM, expected, F_FAN),
    I("duplicates", M_SUM, duplicates, F_FAN),
    I("other-messages", M_SUM, other_messages, F_FAN | F_ECHO | F_RPC),
    I("round-trips", M_SUM, round_trips, F_ECHO),
    I("requests", M_SUM, requests, F_RPC),
    I("responses", M_SUM, responses, F_RPC),
    I("rpc-timeouts", M_SUM, rpc_timeouts, F_RPC),
    I("rpc-errors", M_SUM, rpc_errors, F_RPC),
    I("rpc-served", M_SUM, rpc_served, F_RPC),
    I("rpc-late-responses", M_SUM, rpc_late_responses, F_RPC),
    I("held", M_SUM, held, F_CONN),
    I("tls-handshakes", M_SUM, tls_handshakes, F_ALL),
    I("tls-resumed", M_SUM, tls_resumed, F_ALL),
    I("compressed", M_SUM, compressed, F_ALL),
    I("t-connect-start", M_MIN, t_connect_start, F_RAW),
    I("t-connect-end", M_MAX, t_connect_end, F_RAW),
    I("t-go", M_MIN, t_go, F_RAW),
    I("t-stop", M_MAX, t_stop, F_RAW),
    I("t-last", M_MAX, t_last, F_RAW),
    I("setup-failed", M_MAX, setup_failed, F_RAW),
    I("dup-checked", M_MIN, dup_checked, F_RAW),
};
#undef I
#define NFIELDS (sizeof(FIELDS) / sizeof(FIELDS[0]))

static int64_t *fld(struct sb_result *r, const struct field *f)
{
    return (int64_t *)((char *)r + f->off);
}

static int64_t fldc(const struct sb_result *r, const struct field *f)
{
    return *(const int64_t *)((const char *)r + f->off);
}

void sb_result_init(struct sb_result *r)
{
    memset(r, 0, sizeof(*r));
    r->dup_checked = 1;
    sb_hist_init(&r->hist);
}

/* Times are 0 when a process never reached that point: skip them in min. */
void sb_result_merge(struct sb_result *into, const struct sb_result *from)
{
    for (size_t i = 0; i < NFIELDS; i++) {
        const struct field *f = &FIELDS[i];
        int64_t *a = fld(into, f), b = fldc(from, f);
        switch (f->merge) {
        case M_SUM:
            *a += b;
            break;
        case M_MAX:
            if (b > *a)
                *a = b;
            break;
        case M_MIN:
            if (f->off == offsetof(struct sb_result, dup_checked)) {
                if (b < *a)
                    *a = b;
            } else if (b != 0 && (*a == 0 || b < *a)) {
                *a = b;
            }
            break;
        }
    }
    into->cpu_user += from->cpu_user;
    into->cpu_sys += from->cpu_sys;
    if (from->wall > into->wall)
        into->wall = from->wall;
    sb_hist_merge(&into->hist, &from->hist);
}

/* ------------------------------------------------------- string builder */

struct sbuf {
    char *p;
    size_t len, cap;
};

static void sb_printf(struct sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(struct sbuf *b, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        size_t room = b->cap - b->len;
        int n = vsnprintf(b->p ? b->p + b->len : NULL, room, fmt, ap);
        va_end(ap);
        if (n < 0)
            return;
        if ((size_t)n < room) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = b->cap ? b->cap * 2 : 1024;
        while (cap < b->len + (size_t)n + 1)
            cap *= 2;
        char *np = realloc(b->p, cap);
        if (!np)
            abort(); /* out of memory while reporting: nothing sensible left */
        b->p = np;
        b->cap = cap;
    }
}

static void json_str(struct sbuf *b, const char *key, const char *v)
{
    sb_printf(b, ",\"%s\":\"", key);
    for (const unsigned char *s = (const unsigned char *)(v ? v : ""); *s; s++) {
        if (*s == '"' || *s == '\\')
            sb_printf(b, "\\%c", *s);
        else if (*s < 0x20)
            sb_printf(b, "\\u%04x", *s);
        else
            sb_printf(b, "%c", *s);
    }
    sb_printf(b, "\"");
}

/* --------------------------------------------------------------- raw JSON */

char *sb_result_raw_json(const struct sb_result *r)
{
    struct sbuf b = {0};
    sb_printf(&b, "{\"raw\":1");
    for (size_t i = 0; i < NFIELDS; i++)
        sb_printf(&b, ",\"%s\":%lld", FIELDS[i].key, (long long)fldc(r, &FIELDS[i]));
    sb_printf(&b, ",\"cpu-user-s\":%.6f,\"cpu-sys-s\":%.6f,\"wall-s\":%.6f", r->cpu_user,
              r->cpu_sys, r->wall);
    sb_printf(&b, ",\"hist-count\":%llu,\"hist-min\":%llu,\"hist-max\":%llu,\"hist-sum\":%llu",
              (unsigned long long)r->hist.count, (unsigned long long)r->hist.min,
              (unsigned long long)r->hist.max, (unsigned long long)r->hist.sum);
    sb_printf(&b, ",\"latency-histogram\":[");
    bool first = true;
    for (int i = 0; i < SB_HIST_BUCKETS; i++) {
        if (!r->hist.b[i])
            continue;
        sb_printf(&b, "%s[%d,%llu]", first ? "" : ",", i, (unsigned long long)r->hist.b[i]);
        first = false;
    }
    sb_printf(&b, "]}");
    return b.p;
}

static const char *skip_ws(const char *s)
{
    while (*s && isspace((unsigned char)*s))
        s++;
    return s;
}

/* Parses what sb_result_raw_json wrote: a flat object of numbers plus the
 * bucket array.  Unknown keys are skipped.  Returns 0 or -1. */
int sb_result_parse_raw(const char *json, struct sb_result *r)
{
    sb_result_init(r);
    r->dup_checked = 0;
    const char *s = skip_ws(json);
    if (*s++ != '{')
        return -1;
    for (;;) {
        s = skip_ws(s);
        if (*s == '}')
            return 0;
        if (*s == ',') {
            s++;
            continue;
        }
        if (*s++ != '"')
            return -1;
        const char *k = s;
        while (*s && *s != '"')
            s++;
        if (*s != '"')
            return -1;
        size_t kl = (size_t)(s - k);
        s = skip_ws(s + 1);
        if (*s++ != ':')
            return -1;
        s = skip_ws(s);
        if (kl == 17 && strncmp(k, "latency-histogram", 17) == 0) {
            if (*s++ != '[')
                return -1;
            for (;;) {
                s = skip_ws(s);
                if (*s == ']') {
                    s++;
                    break;
                }
                if (*s == ',') {
                    s++;
                    continue;
                }
                char *e;
                if (*s++ != '[')
                    return -1;
                long idx = strtol(s, &e, 10);
                s = skip_ws(e);
                if (*s++ != ',')
                    return -1;
                unsigned long long c = strtoull(s, &e, 10);
                s = skip_ws(e);
                if (*s++ != ']' || idx < 0 || idx >= SB_HIST_BUCKETS)
                    return -1;
                r->hist.b[idx] += c;
            }
            continue;
        }
        char *e;
        double v = strtod(s, &e);
        if (e == s)
            return -1;
        s = e;
        bool known = false;
        for (size_t i = 0; i < NFIELDS && !known; i++) {
            if (strlen(FIELDS[i].key) == kl && strncmp(FIELDS[i].key, k, kl) == 0) {
                *fld(r, &FIELDS[i]) = (int64_t)llround(v);
                known = true;
            }
        }
        if (known)
            continue;
#define KEY(str) (kl == sizeof(str) - 1 && strncmp(k, str, kl) == 0)
        if (KEY("cpu-user-s"))
            r->cpu_user = v;
        else if (KEY("cpu-sys-s"))
            r->cpu_sys = v;
        else if (KEY("wall-s"))
            r->wall = v;
        else if (KEY("hist-count"))
            r->hist.count = (uint64_t)llround(v);
        else if (KEY("hist-min"))
            r->hist.min = (uint64_t)llround(v);
        else if (KEY("hist-max"))
            r->hist.max = (uint64_t)llround(v);
        else if (KEY("hist-sum"))
            r->hist.sum = (uint64_t)llround(v);
#undef KEY
    }
}

/* ---------------------------------------------------------- final output */

const char *sb_mode_name(enum sb_mode m)
{
    switch (m) {
    case SB_FANOUT:
        return "fanout";
    case SB_ECHO:
        return "echo";
    case SB_CONNECT:
        return "connect";
    case SB_RPC:
        return "rpc";
    }
    return "?";
}

static double span_s(int64_t from, int64_t to)
{
    return (from > 0 && to > from) ? (double)(to - from) / 1e6 : 0.0;
}

static double per_s(int64_t n, double s)
{
    return s > 0 ? (double)n / s : 0.0;
}

/* Figures derived from merged counts, shared by the JSON line and the
 * summary so the two always agree. */
struct derived {
    int64_t lost;
    double connect_s, run_s, window_s, connects_per_s, msgs_per_s, send_per_s;
    uint64_t p50, p90, p99, p999, max, min;
    double mean;
};

static void derive(const struct sb_config *cfg, const struct sb_result *r, struct derived *d)
{
    memset(d, 0, sizeof(*d));
    d->lost = r->expected - r->delivered;
    d->connect_s = span_s(r->t_connect_start, r->t_connect_end);
    d->connects_per_s = per_s(r->connected, d->connect_s);
    d->run_s = span_s(r->t_go, r->t_stop);
    /* Delivery rates run from the start of sending to the last delivery
     * (or to the stop, if nothing came after it). */
    int64_t last = r->t_last > r->t_stop ? r->t_last : r->t_stop;
    d->window_s = span_s(r->t_go, last);
    switch (cfg->mode) {
    case SB_FANOUT:
        d->msgs_per_s = per_s(r->delivered, d->window_s);
        d->send_per_s = per_s(r->published, d->run_s);
        break;
    case SB_ECHO:
        d->msgs_per_s = per_s(r->round_trips, d->window_s);
        break;
    case SB_RPC:
        d->msgs_per_s = per_s(r->responses, d->window_s);
        d->send_per_s = per_s(r->requests, d->run_s);
        break;
    case SB_CONNECT:
        break;
    }
    const struct sb_hist *h = &r->hist;
    d->p50 = sb_hist_percentile(h, 50);
    d->p90 = sb_hist_percentile(h, 90);
    d->p99 = sb_hist_percentile(h, 99);
    d->p999 = sb_hist_percentile(h, 99.9);
    d->max = h->max;
    d->min = h->count ? h->min : 0;
    d->mean = h->count ? (double)h->sum / (double)h->count : 0;
}

char *sb_result_final_json(const struct sb_config *cfg, const struct sb_result *r)
{
    struct derived d;
    derive(cfg, r, &d);
    struct sbuf b = {0};
    int mbit = 1 << cfg->mode;
    sb_printf(&b, "{\"tool\":\"sente-bench\"");
    json_str(&b, "mode", sb_mode_name(cfg->mode));
    json_str(&b, "host", cfg->host);
    sb_printf(&b, ",\"port\":%d", cfg->port);
    sb_printf(&b, ",\"tls\":%s,\"tls-resume\":%s,\"tls-verify\":%s,\"deflate\":%s",
              cfg->tls ? "true" : "false", cfg->tls_resume ? "true" : "false",
              cfg->tls_ca ? "true" : "false", cfg->deflate ? "true" : "false");
    if (cfg->mode == SB_FANOUT) {
        json_str(&b, "sub-path", cfg->sub_path);
        json_str(&b, "pub-path", cfg->pub_path);
    } else {
        json_str(&b, "path", cfg->path);
    }
    sb_printf(&b, ",\"processes\":%d,\"duration-s\":%g,\"drain-s\":%g", cfg->processes,
              cfg->duration, cfg->drain);
    sb_printf(&b, ",\"max-handshakes\":%d,\"connect-rate\":%g", cfg->max_handshakes,
              cfg->connect_rate);
    json_str(&b, "source-addrs", cfg->source_list ? cfg->source_list : "");
    switch (cfg->mode) {
    case SB_FANOUT:
        sb_printf(&b, ",\"rate\":%g,\"inflight\":%ld,\"count\":%ld,\"payload-size\":%ld", cfg->rate,
                  cfg->inflight, cfg->count, cfg->payload_size);
        json_str(&b, "sub-frame", cfg->sub_frame);
        json_str(&b, "sub-ack", cfg->sub_ack);
        json_str(&b, "pub-frame", cfg->pub_frame);
        json_str(&b, "pub-ack", cfg->pub_ack);
        break;
    case SB_ECHO:
        sb_printf(&b, ",\"inflight\":%ld,\"count\":%ld,\"payload-size\":%ld", cfg->inflight,
                  cfg->count, cfg->payload_size);
        json_str(&b, "echo-frame", cfg->echo_frame ? cfg->echo_frame : "");
        sb_printf(&b, ",\"wait-welcome\":%s", cfg->wait_welcome > 0 ? "true" : "false");
        break;
    case SB_CONNECT:
        sb_printf(&b, ",\"hold-s\":%g,\"hold-until-signal\":%s,\"wait-welcome\":%s", cfg->hold,
                  cfg->hold_until_signal ? "true" : "false",
                  cfg->wait_welcome > 0 ? "true" : "false");
        break;
    case SB_RPC:
        sb_printf(&b, ",\"requesters\":%ld,\"responders\":%ld,\"inflight\":%ld,\"count\":%ld",
                  cfg->requesters, cfg->responders, cfg->inflight, cfg->count);
        sb_printf(&b, ",\"payload-size\":%ld,\"rpc-timeout-ms\":%ld", cfg->payload_size,
                  cfg->rpc_timeout_ms);
        json_str(&b, "channel", cfg->channel);
        break;
    }
    for (size_t i = 0; i < NFIELDS; i++)
        if (FIELDS[i].modes & mbit)
            sb_printf(&b, ",\"%s\":%lld", FIELDS[i].key, (long long)fldc(r, &FIELDS[i]));
    if (cfg->mode == SB_FANOUT) {
        sb_printf(&b, ",\"lost\":%lld", (long long)d.lost);
        if (!r->dup_checked)
            sb_printf(&b, ",\"duplicates-checked\":false");
        sb_printf(&b, ",\"published-per-s\":%.1f,\"delivered-per-s\":%.1f", d.send_per_s,
                  d.msgs_per_s);
    } else if (cfg->mode == SB_ECHO) {
        sb_printf(&b, ",\"round-trips-per-s\":%.1f", d.msgs_per_s);
    } else if (cfg->mode == SB_RPC) {
        sb_printf(&b, ",\"requests-per-s\":%.1f,\"responses-per-s\":%.1f", d.send_per_s,
                  d.msgs_per_s);
    }
    sb_printf(&b, ",\"connect-s\":%.6f,\"handshakes-per-s\":%.1f", d.connect_s, d.connects_per_s);
    if (cfg->mode != SB_CONNECT)
        sb_printf(&b, ",\"run-s\":%.6f,\"window-s\":%.6f", d.run_s, d.window_s);
    const char *what = cfg->mode == SB_CONNECT ? "handshake" : "latency";
    sb_printf(&b, ",\"latency-of\":\"%s\",\"latency-count\":%llu", what,
              (unsigned long long)r->hist.count);
    sb_printf(&b, ",\"latency-min-us\":%llu,\"latency-mean-us\":%.1f,\"latency-p50-us\":%llu",
              (unsigned long long)d.min, d.mean, (unsigned long long)d.p50);
    sb_printf(&b, ",\"latency-p90-us\":%llu,\"latency-p99-us\":%llu,\"latency-p999-us\":%llu",
              (unsigned long long)d.p90, (unsigned long long)d.p99, (unsigned long long)d.p999);
    sb_printf(&b, ",\"latency-max-us\":%llu", (unsigned long long)d.max);
    int64_t errors = r->connect_errors + r->handshake_errors + r->subscribe_errors +
                     r->protocol_errors + r->publish_errors + r->rpc_errors + r->rpc_timeouts;
    sb_printf(&b, ",\"errors\":%lld", (long long)errors);
    sb_printf(&b, ",\"cpu-user-s\":%.3f,\"cpu-sys-s\":%.3f,\"wall-s\":%.3f", r->cpu_user,
              r->cpu_sys, r->wall);
    sb_printf(&b, ",\"setup-failed\":%s}", r->setup_failed ? "true" : "false");
    return b.p;
}

void sb_result_print_summary(const struct sb_config *cfg, const struct sb_result *r)
{
    struct derived d;
    derive(cfg, r, &d);
    FILE *o = stderr;
    fprintf(o, "sente-bench %s against %s:%d (%d process%s)\n", sb_mode_name(cfg->mode), cfg->host,
            cfg->port, cfg->processes, cfg->processes == 1 ? "" : "es");
    fprintf(o,
            "  connections  %lld connected of %lld in %.3f s (%.0f/s); errors: connect %lld,"
            " handshake %lld, protocol %lld; closed by server %lld\n",
            (long long)r->connected, (long long)r->connections, d.connect_s, d.connects_per_s,
            (long long)r->connect_errors, (long long)r->handshake_errors,
            (long long)r->protocol_errors, (long long)r->closed_by_server);
    switch (cfg->mode) {
    case SB_FANOUT:
        fprintf(o,
                "  subscribers  %lld subscribed of %lld (%lld subscribe errors); %lld"
                " publishers\n",
                (long long)r->subscribed, (long long)r->subscribers, (long long)r->subscribe_errors,
                (long long)r->publishers);
        fprintf(o,
                "  published    %lld in %.3f s (%.0f/s), acknowledged %lld, publish errors"
                " %lld\n",
                (long long)r->published, d.run_s, d.send_per_s, (long long)r->acknowledged,
                (long long)r->publish_errors);
        fprintf(o,
                "  delivered    %lld of %lld expected, lost %lld, duplicates %lld%s;"
                " %.0f/s over %.3f s\n",
                (long long)r->delivered, (long long)r->expected, (long long)d.lost,
                (long long)r->duplicates, r->dup_checked ? "" : " (not checked)", d.msgs_per_s,
                d.window_s);
        break;
    case SB_ECHO:
        fprintf(o, "  round trips  %lld in %.3f s (%.0f/s)\n", (long long)r->round_trips,
                d.window_s, d.msgs_per_s);
        break;
    case SB_CONNECT:
        fprintf(o, "  held         %lld connections\n", (long long)r->held);
        break;
    case SB_RPC:
        fprintf(o,
                "  requests     %lld sent (%.0f/s), %lld responses (%.0f/s), %lld timeouts,"
                " %lld errors; served %lld, late %lld\n",
                (long long)r->requests, d.send_per_s, (long long)r->responses, d.msgs_per_s,
                (long long)r->rpc_timeouts, (long long)r->rpc_errors, (long long)r->rpc_served,
                (long long)r->rpc_late_responses);
        break;
    }
    fprintf(o, "  %s us   p50 %llu  p90 %llu  p99 %llu  p99.9 %llu  max %llu  (n=%llu)\n",
            cfg->mode == SB_CONNECT ? "handshake" : "latency  ", (unsigned long long)d.p50,
            (unsigned long long)d.p90, (unsigned long long)d.p99, (unsigned long long)d.p999,
            (unsigned long long)d.max, (unsigned long long)r->hist.count);
    fprintf(o, "  generator    cpu user %.2f s, sys %.2f s; wall %.2f s\n", r->cpu_user, r->cpu_sys,
            r->wall);
}
