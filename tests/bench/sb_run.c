/*
 * sb_run.c - the four modes (fanout, echo, connect, rpc) and the phase
 * machine one process runs them with:
 *
 *   SETUP  open every connection; each is settled when ready (handshake
 *          done, welcome seen if asked, subscription acknowledged).
 *          -> READY <ok-a> <fail-a> <ok-b> <fail-b>
 *   RUN    on GO: send (fanout, echo, rpc) for --duration or --count, or
 *          hold (connect).                         -> STOPPED <sent>
 *   DRAIN  on stop: wait for what is still due, up to --drain (fanout
 *          learns the total published by all processes from TOTAL <n>).
 *                                                  -> DRAINED
 *   DONE   on FINISH (or ABORT after SETUP): close, take figures.
 *
 * The lines go to the parent of --processes over a pipe; a lone process
 * feeds them to its own aggregator (sb_agg, also here) and gets the answer
 * through a deferred callback, so both take exactly the same path.  Roles
 * "a"/"b" of READY: fanout subscribers/publishers, rpc responders/
 * requesters, echo and connect connections/-.
 *
 * Receiving never parses JSON: bench messages carry the fixed-width marker
 * (sb_mark_*) and are found by searching for it; acknowledgements are
 * substrings; RPC replies are told apart by their "type" value.
 */
#include "sb.h"

#include <errno.h>
#include <event2/event.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

enum phase { PH_SETUP, PH_RUN, PH_DRAIN, PH_WAIT, PH_DONE };

/* sb_conn.mflags */
enum { MF_FIRST = 1, MF_ACK = 2, MF_FAILED = 4 };

#define SB_PUB_BACKLOG (4u << 20) /* rate mode: skip a publisher this far behind */
#define SB_DUP_MAX_CELLS (32u << 20)

static struct {
    const struct sb_config *cfg;
    struct sb_result *res;
    struct event_base *base;
    enum phase phase;
    int ctl_in, ctl_out;
    struct event *ctl_ev, *keep_ev, *stop_ev, *drain_ev, *tick_ev, *sig_term, *sig_int;
    char ctl_buf[4096];
    size_t ctl_len;
    struct sb_agg agg; /* lone process only */
    bool lone, drained_sent, have_total, interrupted;
    int exit_code;

    struct sb_conn *conns; /* every connection of this process */
    size_t nconns;
    struct sb_conn *a, *b; /* role a / role b slices of conns */
    long na, nb;
    long a_ok, b_ok;
    struct sb_conn *designated; /* fanout without --pub-ack */

    /* Message template: [pre][marker][padding][suf]; the marker is rewritten
     * for every message. */
    uint8_t *tpl;
    size_t tpl_len, mark_at;
    bool timed_frame; /* the template carries a marker */
    uint64_t sent;    /* messages/requests/round trips started */
    uint64_t total;   /* fanout: published by all processes */
    long limit;       /* this process's --count share, 0 none */
    size_t rr;        /* rate mode: next publisher */
    long inflight;
    uint64_t t_start;
} R;

static void stop_sending(void);
static void check_drained(void);

/* ---------------------------------------------------------- aggregator */

int sb_agg_init(struct sb_agg *a, const struct sb_config *cfg, int n)
{
    memset(a, 0, sizeof(*a));
    a->cfg = cfg;
    a->n = n;
    a->stage = calloc((size_t)n, sizeof(int));
    return a->stage ? 0 : -1;
}

void sb_agg_free(struct sb_agg *a)
{
    free(a->stage);
    a->stage = NULL;
}

static bool agg_fatal(const struct sb_agg *a)
{
    const struct sb_config *cfg = a->cfg;
    if (a->gone_early)
        return true;
    switch (cfg->mode) {
    case SB_FANOUT:
        return a->ok_b == 0 || (cfg->subscribers > 0 && a->ok_a == 0);
    case SB_RPC:
        return a->ok_a == 0 || a->ok_b == 0;
    default:
        return a->ok_a == 0;
    }
}

void sb_agg_line(struct sb_agg *a, int i, const char *line, char *out, size_t outlen)
{
    out[0] = '\0';
    if (!line) {
        if (a->stage[i] < 1)
            a->gone_early = true;
        a->stage[i] = 4;
    } else if (strncmp(line, "READY ", 6) == 0) {
        long long v[4] = {0, 0, 0, 0};
        sscanf(line + 6, "%lld %lld %lld %lld", &v[0], &v[1], &v[2], &v[3]);
        a->ok_a += v[0];
        a->fail_a += v[1];
        a->ok_b += v[2];
        a->fail_b += v[3];
        if (a->stage[i] < 1)
            a->stage[i] = 1;
    } else if (strncmp(line, "STOPPED ", 8) == 0) {
        a->published += strtoll(line + 8, NULL, 10);
        if (a->stage[i] < 2)
            a->stage[i] = 2;
    } else if (strncmp(line, "DRAINED", 7) == 0) {
        if (a->stage[i] < 3)
            a->stage[i] = 3;
    }
    size_t len = 0;
    for (int k = 1; k <= 3; k++) {
        if (a->sent[k])
            continue;
        bool all = true;
        for (int j = 0; j < a->n; j++)
            all = all && a->stage[j] >= k;
        if (!all)
            break;
        a->sent[k] = true;
        if (k == 1) {
            bool fatal = agg_fatal(a);
            if (!fatal && a->cfg->mode == SB_CONNECT) {
                /* The moment a driver measures the server's memory. */
                fprintf(stderr, "holding %lld connections\n", (long long)a->ok_a);
                fflush(stderr);
            }
            len += (size_t)snprintf(out + len, outlen - len, "%s\n", fatal ? "ABORT" : "GO");
            if (fatal) {
                /* No STOPPED/DRAINED will come: release those barriers. */
                a->sent[2] = a->sent[3] = true;
                break;
            }
        } else if (k == 2) {
            len +=
                (size_t)snprintf(out + len, outlen - len, "TOTAL %lld\n", (long long)a->published);
        } else {
            len += (size_t)snprintf(out + len, outlen - len, "FINISH\n");
        }
        if (len >= outlen)
            break;
    }
}

/* ------------------------------------------------------- control lines */

static void ctl_handle(const char *line);

static void on_deferred(evutil_socket_t fd, short what, void *arg)
{
    char *lines = arg;
    for (char *s = lines, *nl; *s; s = nl + 1) {
        nl = strchr(s, '\n');
        if (!nl)
            break;
        *nl = '\0';
        ctl_handle(s);
    }
    free(lines);
    sb_net_flush_dirty();
}

/* Sends one control line (ending in a newline) to the aggregator. */
static void ctl_send(const char *text)
{
    char line[128];
    snprintf(line, sizeof(line), "%s", text);
    if (!R.lone) {
        size_t n = strlen(line), off = 0;
        while (off < n) {
            ssize_t w = write(R.ctl_out, line + off, n - off);
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0)
                return; /* the parent is gone; FINISH will never come */
            off += (size_t)w;
        }
        return;
    }
    char out[256];
    line[strcspn(line, "\n")] = '\0';
    sb_agg_line(&R.agg, 0, line, out, sizeof(out));
    if (out[0]) {
        struct timeval zero = {0, 0};
        char *copy = strdup(out);
        if (copy)
            event_base_once(R.base, -1, EV_TIMEOUT, on_deferred, copy, &zero);
    }
}

static void on_ctl(evutil_socket_t fd, short what, void *arg)
{
    ssize_t n = read(fd, R.ctl_buf + R.ctl_len, sizeof(R.ctl_buf) - 1 - R.ctl_len);
    if (n <= 0) {
        if (n < 0 && errno == EINTR)
            return;
        /* The parent went away: finish now. */
        event_del(R.ctl_ev);
        R.interrupted = true;
        ctl_handle("FINISH");
        return;
    }
    R.ctl_len += (size_t)n;
    R.ctl_buf[R.ctl_len] = '\0';
    char *s = R.ctl_buf, *nl;
    while ((nl = strchr(s, '\n'))) {
        *nl = '\0';
        ctl_handle(s);
        s = nl + 1;
    }
    R.ctl_len = strlen(s);
    memmove(R.ctl_buf, s, R.ctl_len + 1);
    sb_net_flush_dirty();
}

/* ------------------------------------------------------------ sending */

static bool running(void)
{
    /* limit: 0 none, -1 this process sends nothing (its --count share is 0) */
    return R.phase == PH_RUN && R.limit >= 0 && (R.limit == 0 || R.sent < (uint64_t)R.limit);
}

/* One message from the template, marker stamped now, into c's output. */
static bool send_timed(struct sb_conn *c, uint32_t sender)
{
    uint8_t *p = sb_conn_reserve(c, SB_WS_MAX_HEADER + R.tpl_len);
    if (!p)
        return false;
    uint8_t mask[4];
    size_t h = sb_conn_frame_header(p, SB_OP_TEXT, R.tpl_len, mask);
    memcpy(p + h, R.tpl, R.tpl_len);
    if (R.timed_frame)
        sb_mark_write((char *)p + h + R.mark_at, sb_now_us(), sender, ++c->seq);
    sb_ws_mask(p + h, R.tpl_len, mask, 0);
    sb_conn_commit(c, h + R.tpl_len);
    c->t_sent = sb_now_us();
    c->inflight++;
    R.sent++;
    return true;
}

static uint32_t sender_id(const struct sb_conn *c)
{
    return (uint32_t)(R.cfg->pub_base + c->idx);
}

/* Flat out: keep c's in-flight window full. */
static void top_up(struct sb_conn *c)
{
    if (c->state != SB_CS_OPEN || !c->ready)
        return;
    while (running() && c->inflight < (uint32_t)R.inflight)
        if (!send_timed(c, sender_id(c)))
            break;
    if (R.phase == PH_RUN && R.limit > 0 && R.sent >= (uint64_t)R.limit)
        stop_sending();
}

static void count_sent(void)
{
    if (R.cfg->mode == SB_FANOUT)
        R.res->published = (int64_t)R.sent;
    else if (R.cfg->mode == SB_RPC)
        R.res->requests = (int64_t)R.sent;
}

/* Rate mode: send what is owed by now, round robin over the publishers. */
static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    if (R.phase != PH_RUN)
        return;
    uint64_t now = sb_now_us();
    uint64_t target = (uint64_t)(R.cfg->my_rate * (double)(now - (uint64_t)R.res->t_go) / 1e6);
    if (R.limit > 0 && target > (uint64_t)R.limit)
        target = (uint64_t)R.limit;
    while (R.sent < target) {
        struct sb_conn *c = NULL;
        for (long k = 0; k < R.nb && !c; k++) {
            struct sb_conn *x = &R.b[R.rr++ % (size_t)R.nb];
            if (x->state == SB_CS_OPEN && x->ready && sb_conn_pending(x) < SB_PUB_BACKLOG)
                c = x;
        }
        if (!c || !send_timed(c, sender_id(c)))
            break;
    }
    count_sent();
    if (R.limit > 0 && R.sent >= (uint64_t)R.limit)
        stop_sending();
    sb_net_flush_dirty();
}

/* A message the role did not expect.  Before GO these are welcomes and
 * the like, which do not count. */
static void other_message(void)
{
    if (R.phase != PH_SETUP)
        R.res->other_messages++;
}

/* The subscriber whose deliveries acknowledge this process's publishers
 * when there is no --pub-ack: the first ready one still open.  When it is
 * lost, what was in flight towards it is forgotten. */
static void pick_designated(void)
{
    R.designated = NULL;
    for (long i = 0; i < R.na && !R.designated; i++)
        if (R.a[i].role == SB_R_SUB && R.a[i].ready && R.a[i].state == SB_CS_OPEN)
            R.designated = &R.a[i];
    for (long i = 0; i < R.nb; i++)
        R.b[i].inflight = 0;
}

/* ---------------------------------------------------------- JSON bits */

/* The string value of "key" in a flat JSON text, without parsing it. */
static size_t json_value(const uint8_t *p, size_t n, const char *key, char *out, size_t cap)
{
    char pat[64];
    int pl = snprintf(pat, sizeof(pat), "\"%s\"", key);
    const uint8_t *s = memmem(p, n, pat, (size_t)pl), *end = p + n;
    if (!s)
        return 0;
    s += pl;
    while (s < end && (*s == ' ' || *s == '\t' || *s == ':'))
        s++;
    if (s >= end || *s != '"')
        return 0;
    s++;
    size_t k = 0;
    while (s < end && *s != '"' && k + 1 < cap)
        out[k++] = (char)*s++;
    if (s >= end || *s != '"')
        return 0;
    out[k] = '\0';
    return k;
}

static bool has(const uint8_t *p, size_t n, const char *needle)
{
    return memmem(p, n, needle, strlen(needle)) != NULL;
}

static bool failed_reply(const uint8_t *p, size_t n)
{
    return has(p, n, "\"success\":false") || has(p, n, "\"success\": false");
}

/* ----------------------------------------------------------- readiness */

static bool need_welcome(const struct sb_conn *c)
{
    return R.cfg->wait_welcome > 0;
}

static bool need_ack(const struct sb_conn *c)
{
    if (c->role == SB_R_SUB || (c->role == SB_R_CONN && R.cfg->connect_sub))
        return R.cfg->sub_ack && R.cfg->sub_ack[0];
    return c->role == SB_R_RESP;
}

static void check_ready(struct sb_conn *c)
{
    if (c->ready || (c->mflags & MF_FAILED))
        return;
    if (need_welcome(c) && !(c->mflags & MF_FIRST))
        return;
    if (need_ack(c) && !(c->mflags & MF_ACK))
        return;
    c->ready = 1;
    const struct sb_config *cfg = R.cfg;
    switch (c->role) {
    case SB_R_SUB:
        R.res->subscribed++;
        if (!R.designated)
            R.designated = c;
        if ((uint64_t)cfg->my_subscribers * (uint64_t)cfg->publishers <= SB_DUP_MAX_CELLS &&
            cfg->publishers > 0)
            c->last_seq = calloc((size_t)cfg->publishers, sizeof(uint32_t));
        if (!c->last_seq)
            R.res->dup_checked = 0;
        R.a_ok++;
        break;
    case SB_R_PUB:
    case SB_R_REQ:
        R.b_ok++;
        break;
    case SB_R_CONN:
        sb_hist_add(&R.res->hist, sb_now_us() - c->t_start);
        R.a_ok++;
        break;
    default:
        R.a_ok++;
        break;
    }
    sb_conn_settle(c);
}

static void on_open(struct sb_conn *c)
{
    const struct sb_config *cfg = R.cfg;
    if ((c->role == SB_R_SUB || (c->role == SB_R_CONN && cfg->connect_sub)) && cfg->sub_frame &&
        cfg->sub_frame[0])
        sb_conn_send(c, SB_OP_TEXT, cfg->sub_frame, strlen(cfg->sub_frame));
    if (c->role == SB_R_RESP) {
        char f[300];
        int n =
            snprintf(f, sizeof(f), "{\"type\":\"subscribe\",\"channel-id\":\"%s\"}", cfg->channel);
        sb_conn_send(c, SB_OP_TEXT, f, (size_t)n);
    }
    check_ready(c);
}

/* A message before the connection is ready: welcome and acknowledgement. */
static void setup_message(struct sb_conn *c, const uint8_t *p, size_t n)
{
    c->mflags |= MF_FIRST;
    if (need_ack(c) && !(c->mflags & MF_ACK)) {
        const char *ack = c->role == SB_R_RESP ? "subscription-result" : R.cfg->sub_ack;
        if (has(p, n, ack)) {
            if (failed_reply(p, n)) {
                R.res->subscribe_errors++;
                c->mflags |= MF_FAILED;
                c->want_close = 1;
                return;
            }
            c->mflags |= MF_ACK;
        }
    }
    check_ready(c);
}

/* ------------------------------------------------------------- fanout */

static void fanout_deliver(struct sb_conn *c, const uint8_t *p, size_t n)
{
    struct sb_mark m;
    if (sb_mark_find(p, n, &m, NULL) < 0) {
        other_message();
        return;
    }
    uint64_t now = sb_net.now;
    R.res->delivered++;
    sb_hist_add(&R.res->hist, now > m.t_us ? now - m.t_us : 0);
    R.res->t_last = (int64_t)now;
    if (c->last_seq && m.sender < (uint32_t)R.cfg->publishers) {
        if (m.seq <= c->last_seq[m.sender])
            R.res->duplicates++;
        else
            c->last_seq[m.sender] = (uint32_t)m.seq;
    }
    if (c == R.designated && !(R.cfg->pub_ack && R.cfg->pub_ack[0])) {
        long li = (long)m.sender - R.cfg->pub_base;
        if (li >= 0 && li < R.nb) {
            R.res->acknowledged++;
            if (R.b[li].inflight)
                R.b[li].inflight--;
        }
    }
    if (R.phase >= PH_DRAIN)
        check_drained();
}

static void fanout_ack(struct sb_conn *c, const uint8_t *p, size_t n)
{
    const char *ack = R.cfg->pub_ack;
    if (!(ack && ack[0] && has(p, n, ack))) {
        other_message();
        return;
    }
    R.res->acknowledged++;
    if (failed_reply(p, n))
        R.res->publish_errors++;
    if (c->inflight)
        c->inflight--;
    if (R.phase >= PH_DRAIN)
        check_drained();
}

/* --------------------------------------------------------------- echo */

static void echo_reply(struct sb_conn *c, const uint8_t *p, size_t n)
{
    uint64_t now = sb_net.now, t;
    if (R.timed_frame) {
        struct sb_mark m;
        if (sb_mark_find(p, n, &m, NULL) < 0) {
            other_message();
            return;
        }
        t = m.t_us;
    } else {
        t = c->t_sent;
    }
    if (!c->inflight) {
        other_message();
        return;
    }
    c->inflight--;
    R.res->round_trips++;
    R.res->t_last = (int64_t)now;
    sb_hist_add(&R.res->hist, now > t ? now - t : 0);
    if (running()) {
        send_timed(c, (uint32_t)(R.cfg->pub_base + c->idx));
        if (R.limit > 0 && R.sent >= (uint64_t)R.limit)
            stop_sending();
    }
    if (R.phase >= PH_DRAIN)
        check_drained();
}

/* ---------------------------------------------------------------- rpc */

static void rpc_serve(struct sb_conn *c, const uint8_t *p, size_t n)
{
    char type[40], rid[160];
    if (!json_value(p, n, "type", type, sizeof(type))) {
        other_message();
        return;
    }
    if (strcmp(type, "rpc-request") == 0) {
        if (!json_value(p, n, "request-id", rid, sizeof(rid))) {
            R.res->rpc_errors++;
            return;
        }
        char mark[SB_MARK_LEN + 1] = "";
        size_t at;
        struct sb_mark m;
        if (sb_mark_find(p, n, &m, &at) == 0) {
            memcpy(mark, p + at, SB_MARK_LEN);
            mark[SB_MARK_LEN] = '\0';
        }
        char f[400];
        int fl = snprintf(
            f, sizeof(f),
            "{\"type\":\"rpc-response\",\"request-id\":\"%s\",\"data\":{\"t\":\"%s\"}}", rid, mark);
        sb_conn_send(c, SB_OP_TEXT, f, (size_t)fl);
        R.res->rpc_served++;
    } else if (strcmp(type, "rpc-response-result") == 0) {
        if (failed_reply(p, n))
            R.res->rpc_late_responses++;
    } else {
        other_message();
    }
}

static void rpc_reply(struct sb_conn *c, const uint8_t *p, size_t n)
{
    char type[40];
    uint64_t now = sb_net.now;
    if (!json_value(p, n, "type", type, sizeof(type))) {
        other_message();
        return;
    }
    bool done = false;
    if (strcmp(type, "rpc-response") == 0) {
        struct sb_mark m;
        R.res->responses++;
        R.res->t_last = (int64_t)now;
        if (has(p, n, "\"error\":true"))
            R.res->rpc_errors++;
        if (sb_mark_find(p, n, &m, NULL) == 0)
            sb_hist_add(&R.res->hist, now > m.t_us ? now - m.t_us : 0);
        done = true;
    } else if (strcmp(type, "rpc-request-result") == 0) {
        if (failed_reply(p, n)) {
            R.res->rpc_errors++;
            done = true;
        }
    } else if (strcmp(type, "error") == 0) {
        if (has(p, n, "rpc-timeout"))
            R.res->rpc_timeouts++;
        else
            R.res->rpc_errors++;
        done = true;
    } else {
        other_message();
    }
    if (done && c->inflight)
        c->inflight--;
    if (R.phase >= PH_DRAIN)
        check_drained();
}

/* ----------------------------------------------------------- dispatch */

static void on_message(struct sb_conn *c, unsigned op, uint8_t *p, size_t n)
{
    if (!c->ready) {
        setup_message(c, p, n);
        return;
    }
    /* No phase check: with --processes another process may start sending
     * a moment before this one sees GO, and those messages count. */
    switch (c->role) {
    case SB_R_SUB:
        fanout_deliver(c, p, n);
        break;
    case SB_R_PUB:
        fanout_ack(c, p, n);
        break;
    case SB_R_ECHO:
        echo_reply(c, p, n);
        break;
    case SB_R_RESP:
        rpc_serve(c, p, n);
        break;
    case SB_R_REQ:
        rpc_reply(c, p, n);
        break;
    default:
        break; /* connect mode: idle connections ignore messages */
    }
}

static void after_read(struct sb_conn *c)
{
    if (R.phase != PH_RUN)
        return;
    const struct sb_config *cfg = R.cfg;
    if (c->role == SB_R_PUB && cfg->rate == 0) {
        top_up(c);
    } else if (c->role == SB_R_SUB && c == R.designated && cfg->rate == 0 &&
               !(cfg->pub_ack && cfg->pub_ack[0])) {
        for (long i = 0; i < R.nb; i++)
            top_up(&R.b[i]);
    } else if (c->role == SB_R_REQ) {
        top_up(c);
    }
    count_sent();
}

static void on_down(struct sb_conn *c, enum sb_down why)
{
    if (why == SB_DOWN_TIMEOUT && !c->ready) {
        if (c->role == SB_R_SUB || c->role == SB_R_RESP ||
            (c->role == SB_R_CONN && R.cfg->connect_sub && (c->mflags & MF_FIRST)))
            R.res->subscribe_errors++;
        else
            R.res->handshake_errors++; /* no welcome in time */
    } else if ((why == SB_DOWN_CLOSED || why == SB_DOWN_PROTOCOL) && !(c->mflags & MF_FAILED)) {
        R.res->closed_by_server++;
    }
    if (c == R.designated) {
        pick_designated();
        if (R.phase == PH_RUN && R.cfg->rate == 0)
            for (long i = 0; i < R.nb; i++)
                top_up(&R.b[i]);
    }
    if (R.phase >= PH_DRAIN)
        check_drained();
}

/* -------------------------------------------------------------- phases */

static void on_setup_done(void)
{
    if (R.phase != PH_SETUP)
        return;
    if (!R.res->t_connect_end)
        R.res->t_connect_end = (int64_t)sb_now_us();
    char line[128];
    snprintf(line, sizeof(line), "READY %ld %ld %ld %ld\n", R.a_ok, R.na - R.a_ok, R.b_ok,
             R.nb - R.b_ok);
    ctl_send(line);
}

static void on_stop_timer(evutil_socket_t fd, short what, void *arg)
{
    if (R.phase == PH_RUN)
        stop_sending();
    sb_net_flush_dirty();
}

static void send_drained(void)
{
    if (R.drained_sent)
        return;
    R.drained_sent = true;
    R.phase = PH_WAIT;
    if (R.drain_ev)
        event_del(R.drain_ev);
    ctl_send("DRAINED\n");
}

static void on_drain_timer(evutil_socket_t fd, short what, void *arg)
{
    if (R.phase == PH_DRAIN)
        send_drained();
}

static void check_drained(void)
{
    if (R.phase != PH_DRAIN)
        return;
    switch (R.cfg->mode) {
    case SB_FANOUT: {
        if (!R.have_total)
            return;
        if (R.res->delivered < (int64_t)R.total * R.res->subscribed)
            return;
        if (R.cfg->pub_ack && R.cfg->pub_ack[0])
            for (long i = 0; i < R.nb; i++)
                if (R.b[i].state == SB_CS_OPEN && R.b[i].inflight)
                    return;
        break;
    }
    case SB_ECHO:
    case SB_RPC: {
        struct sb_conn *set = R.cfg->mode == SB_ECHO ? R.a : R.b;
        long n = R.cfg->mode == SB_ECHO ? R.na : R.nb;
        for (long i = 0; i < n; i++)
            if (set[i].state == SB_CS_OPEN && set[i].inflight)
                return;
        break;
    }
    case SB_CONNECT:
        break;
    }
    send_drained();
}

static void stop_sending(void)
{
    if (R.phase != PH_RUN)
        return;
    R.phase = PH_DRAIN;
    R.res->t_stop = (int64_t)sb_now_us();
    count_sent();
    if (R.tick_ev)
        event_del(R.tick_ev);
    if (R.stop_ev)
        event_del(R.stop_ev);
    if (R.cfg->mode == SB_CONNECT) {
        for (long i = 0; i < R.na; i++)
            if (R.a[i].state == SB_CS_OPEN)
                R.res->held++;
    }
    char line[64];
    snprintf(line, sizeof(line), "STOPPED %llu\n", (unsigned long long)R.sent);
    ctl_send(line);
    if (R.cfg->mode == SB_CONNECT) {
        send_drained();
        return;
    }
    struct timeval tv = {(time_t)R.cfg->drain,
                         (suseconds_t)((R.cfg->drain - (double)(time_t)R.cfg->drain) * 1e6)};
    R.drain_ev = evtimer_new(R.base, on_drain_timer, NULL);
    if (R.drain_ev)
        evtimer_add(R.drain_ev, &tv);
    check_drained();
}

static void start_running(void)
{
    const struct sb_config *cfg = R.cfg;
    R.phase = PH_RUN;
    R.res->t_go = (int64_t)sb_now_us();
    double secs = cfg->mode == SB_CONNECT ? cfg->hold : cfg->duration;
    if (cfg->mode == SB_CONNECT && cfg->hold_until_signal)
        secs = -1;
    if (secs >= 0) {
        struct timeval tv = {(time_t)secs, (suseconds_t)((secs - (double)(time_t)secs) * 1e6)};
        R.stop_ev = evtimer_new(R.base, on_stop_timer, NULL);
        if (R.stop_ev)
            evtimer_add(R.stop_ev, &tv);
    }
    switch (cfg->mode) {
    case SB_FANOUT:
        if (R.nb == 0 || R.limit < 0)
            break; /* this process only subscribes: it waits out the duration */
        if (cfg->rate > 0 && cfg->my_rate > 0) {
            double iv = 1.0 / cfg->my_rate;
            if (iv < 0.001)
                iv = 0.001;
            struct timeval tv = {(time_t)iv, (suseconds_t)((iv - (double)(time_t)iv) * 1e6)};
            R.tick_ev = event_new(R.base, -1, EV_PERSIST, on_tick, NULL);
            if (R.tick_ev)
                event_add(R.tick_ev, &tv);
        } else {
            for (long i = 0; i < R.nb; i++)
                top_up(&R.b[i]);
        }
        break;
    case SB_ECHO:
        for (long i = 0; i < R.na; i++)
            top_up(&R.a[i]);
        break;
    case SB_RPC:
        for (long i = 0; i < R.nb; i++)
            top_up(&R.b[i]);
        break;
    case SB_CONNECT:
        break;
    }
    count_sent();
}

static void ctl_handle(const char *line)
{
    if (strcmp(line, "GO") == 0) {
        if (R.phase == PH_SETUP)
            start_running();
    } else if (strcmp(line, "ABORT") == 0) {
        R.res->setup_failed = 1;
        R.phase = PH_DONE;
        event_base_loopbreak(R.base);
    } else if (strncmp(line, "TOTAL ", 6) == 0) {
        R.total = strtoull(line + 6, NULL, 10);
        R.have_total = true;
        check_drained();
    } else if (strcmp(line, "FINISH") == 0) {
        R.phase = PH_DONE;
        event_base_loopbreak(R.base);
    }
}

/* SIGTERM (and SIGINT when alone): end the current phase early; twice:
 * finish now. */
static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    R.interrupted = true;
    switch (R.phase) {
    case PH_SETUP:
        R.exit_code = SB_EXIT_SETUP;
        R.phase = PH_DONE;
        event_base_loopbreak(R.base);
        break;
    case PH_RUN:
        stop_sending();
        break;
    case PH_DRAIN:
        send_drained();
        break;
    default:
        if (R.lone) {
            R.phase = PH_DONE;
            event_base_loopbreak(R.base);
        }
        break;
    }
    sb_net_flush_dirty();
}

static void on_keepalive(evutil_socket_t fd, short what, void *arg)
{
}

/* ----------------------------------------------------------- templates */

/* [pre][marker + padding to payload-size][suf] from a template with %s
 * (or the payload alone when tpl is NULL, or the template verbatim when it
 * has no %s). */
static int build_template(const char *tpl, long payload)
{
    const char *pct = tpl ? strstr(tpl, "%s") : NULL;
    size_t pre = tpl ? (pct ? (size_t)(pct - tpl) : strlen(tpl)) : 0;
    size_t suf = pct ? strlen(pct + 2) : 0;
    R.timed_frame = !tpl || pct;
    size_t pl = R.timed_frame ? (size_t)payload : 0;
    R.tpl_len = pre + pl + suf;
    R.tpl = malloc(R.tpl_len ? R.tpl_len : 1);
    if (!R.tpl)
        return -1;
    memcpy(R.tpl, tpl ? tpl : "", pre);
    memset(R.tpl + pre, 'x', pl);
    if (pl >= SB_MARK_LEN)
        sb_mark_write((char *)R.tpl + pre, 0, 0, 0);
    if (suf)
        memcpy(R.tpl + pre + pl, pct + 2, suf);
    R.mark_at = pre;
    return 0;
}

/* ---------------------------------------------------------------- run */

static void take_figures(void)
{
    const struct sb_config *cfg = R.cfg;
    struct sb_result *r = R.res;
    count_sent();
    if (cfg->mode == SB_FANOUT) {
        r->subscribers = cfg->my_subscribers;
        r->publishers = cfg->my_publishers;
        uint64_t total = R.have_total ? R.total : R.sent;
        r->expected = (int64_t)total * r->subscribed;
    }
    if (cfg->mode == SB_CONNECT && r->t_stop == 0 && r->t_go)
        for (long i = 0; i < R.na; i++)
            if (R.a[i].state == SB_CS_OPEN)
                r->held++;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    r->cpu_user = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6;
    r->cpu_sys = (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

int sb_run(const struct sb_config *cfg, int ctl_in, int ctl_out, struct sb_result *res)
{
    memset(&R, 0, sizeof(R));
    R.cfg = cfg;
    R.res = res;
    R.ctl_in = ctl_in;
    R.ctl_out = ctl_out;
    R.lone = ctl_out < 0;
    R.t_start = sb_now_us();
    R.limit = cfg->my_count;
    R.inflight = cfg->inflight;
    sb_result_init(res);
    if (cfg->mode == SB_FANOUT && cfg->publishers == 0)
        res->dup_checked = 0;

    struct event_config *ec = event_config_new();
    if (ec) {
        /* One thread: no locking; clock reads are ours. */
        event_config_set_flag(ec, EVENT_BASE_FLAG_NOLOCK);
        R.base = event_base_new_with_config(ec);
        event_config_free(ec);
    }
    if (!R.base) {
        fprintf(stderr, "sente-bench: cannot create the event base\n");
        return SB_EXIT_SETUP;
    }

    switch (cfg->mode) {
    case SB_FANOUT:
        R.na = cfg->my_subscribers;
        R.nb = cfg->my_publishers;
        build_template(cfg->pub_frame, cfg->payload_size);
        break;
    case SB_ECHO:
        R.na = cfg->my_connections;
        build_template(cfg->echo_frame, cfg->payload_size);
        if (!R.timed_frame)
            R.inflight = 1;
        break;
    case SB_CONNECT:
        R.na = cfg->my_connections;
        break;
    case SB_RPC: {
        R.na = cfg->my_responders;
        R.nb = cfg->my_requesters;
        char t[512];
        snprintf(t, sizeof(t),
                 "{\"type\":\"rpc-request\",\"channel-id\":\"%s\",\"timeout-ms\":%ld,"
                 "\"data\":{\"t\":\"%%s\"}}",
                 cfg->channel, cfg->rpc_timeout_ms);
        build_template(t, cfg->payload_size);
        break;
    }
    }
    R.nconns = (size_t)(R.na + R.nb);
    R.conns = calloc(R.nconns ? R.nconns : 1, sizeof(*R.conns));
    if (!R.conns || (cfg->mode != SB_CONNECT && !R.tpl) ||
        sb_net_init(R.base, cfg, res, R.nconns) < 0) {
        fprintf(stderr, "sente-bench: out of memory\n");
        return SB_EXIT_SETUP;
    }
    R.a = R.conns;
    R.b = R.conns + R.na;
    static const enum sb_role role_a[] = {[SB_FANOUT] = SB_R_SUB,
                                          [SB_ECHO] = SB_R_ECHO,
                                          [SB_CONNECT] = SB_R_CONN,
                                          [SB_RPC] = SB_R_RESP};
    static const enum sb_role role_b[] = {[SB_FANOUT] = SB_R_PUB,
                                          [SB_ECHO] = SB_R_ECHO,
                                          [SB_CONNECT] = SB_R_CONN,
                                          [SB_RPC] = SB_R_REQ};
    for (long i = 0; i < R.na; i++)
        sb_net_queue(&R.a[i], role_a[cfg->mode], (uint32_t)i);
    for (long i = 0; i < R.nb; i++)
        sb_net_queue(&R.b[i], role_b[cfg->mode], (uint32_t)i);
    sb_net.on_open = on_open;
    sb_net.on_message = on_message;
    sb_net.on_down = on_down;
    sb_net.after_read = after_read;
    sb_net.on_setup_done = on_setup_done;

    if (R.lone) {
        sb_agg_init(&R.agg, cfg, 1);
    } else {
        R.ctl_ev = event_new(R.base, ctl_in, EV_READ | EV_PERSIST, on_ctl, NULL);
        event_add(R.ctl_ev, NULL);
    }
    R.sig_term = evsignal_new(R.base, SIGTERM, on_signal, NULL);
    event_add(R.sig_term, NULL);
    if (R.lone) {
        R.sig_int = evsignal_new(R.base, SIGINT, on_signal, NULL);
        event_add(R.sig_int, NULL);
    }
    struct timeval day = {86400, 0};
    R.keep_ev = event_new(R.base, -1, EV_PERSIST, on_keepalive, NULL);
    event_add(R.keep_ev, &day);

    sb_net_start(); /* READY goes out from on_setup_done, maybe right away */
    while (R.phase != PH_DONE) {
        if (event_base_dispatch(R.base) != 0)
            break;
    }

    /* Figures are taken before closing: the close handshake is not part of
     * the measurement. */
    take_figures();
    if (R.res->setup_failed && !R.exit_code)
        R.exit_code = SB_EXIT_SETUP;
    R.phase = PH_DONE;
    event_del(R.keep_ev);
    event_del(R.sig_term);
    if (R.sig_int)
        event_del(R.sig_int);
    if (R.ctl_ev)
        event_del(R.ctl_ev);
    if (R.tick_ev)
        event_del(R.tick_ev);
    if (R.stop_ev)
        event_del(R.stop_ev);
    if (R.drain_ev)
        event_del(R.drain_ev);
    sb_net_close_all(R.conns, R.nconns, R.interrupted ? 0.2 : 1.0);
    res->wall = (double)(sb_now_us() - R.t_start) / 1e6;

    for (size_t i = 0; i < R.nconns; i++)
        free(R.conns[i].last_seq);
    free(R.conns);
    free(R.tpl);
    sb_net_free();
    struct event *evs[] = {R.ctl_ev,  R.keep_ev,  R.stop_ev, R.drain_ev,
                           R.tick_ev, R.sig_term, R.sig_int};
    for (size_t i = 0; i < sizeof(evs) / sizeof(evs[0]); i++)
        if (evs[i])
            event_free(evs[i]);
    if (R.lone)
        sb_agg_free(&R.agg);
    event_base_free(R.base);
    return R.exit_code;
}
