/*
 * sb_conn.c - client connections on one libevent base, on raw fds.
 *
 * Opening: connections are queued by the mode and opened at most
 * --max-handshakes at a time (from connect() until the mode settles them:
 * handshake done and, for subscribers, the subscription acknowledged) and,
 * with --connect-rate, no faster than that many per second.  Each socket is
 * bound to the next --source-addrs address (IP_BIND_ADDRESS_NO_PORT, so
 * the port is picked at connect time per 4-tuple) to get past the
 * ephemeral-port limit of one source address.
 *
 * Reading: one read per readiness into one 256 KiB buffer shared by every
 * connection (level-triggered, so a busy socket is simply called again);
 * the decoder hands out frames in place, so a connection owns no read
 * buffer, only decoder state for a frame split across reads.
 *
 * Writing: frames are appended to the connection's output buffer and the
 * connection is put on the dirty list; every callback ends with
 * sb_net_flush_dirty(), so everything a batch of input produced leaves in
 * one send() per connection.  EV_WRITE is registered only while a socket is
 * full.
 *
 * wss (--tls, sb_tls.c): after connect the connection is in SB_CS_TLS until
 * its TLS handshake is done, then sends the upgrade request; from then on
 * io_recv/io_send go through the connection's SSL.  A read callback takes
 * what OpenSSL can decode now (several records, up to the shared buffer)
 * and hands it to the decoder as one batch; decoded bytes OpenSSL still
 * holds when the buffer is full make the event active again (the socket
 * would not say so).  EV_WRITE is also wanted while OpenSSL waits to write
 * (tls_wants_write).
 *
 * Ownership: the engine owns fd, ev, hs, dec, out, ssl and zctx of every connection;
 * the connection structs themselves belong to the mode (sb_run.c).  A
 * connection is closed only outside the decoder: callbacks set want_close.
 */
#include "sb.h"

#include <errno.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define SB_READ_BUF (256 * 1024)
#define SB_HS_MAX 4096
#define SB_OUT_MAX (256u << 20)

struct sb_hs {
    char accept[29];
    uint16_t len;
    char buf[SB_HS_MAX];
};

struct sb_net sb_net;

static uint8_t *rbuf;
static struct sb_conn **queue;
static size_t q_head, q_tail, q_cap;
static size_t n_inflight, n_done, n_open;
static bool started, setup_reported, pumping, closing_all;
static double tokens;
static uint64_t tokens_at;
static struct event *rate_ev, *close_ev;
static struct sb_conn *dirty_head;
static unsigned src_next;
static char host_header[300];

static void on_event(evutil_socket_t fd, short what, void *arg);
static void pump(void);

int sb_net_init(struct event_base *base, const struct sb_config *cfg, struct sb_result *res,
                size_t nconns)
{
    sb_net.base = base;
    sb_net.cfg = cfg;
    sb_net.res = res;
    rbuf = malloc(SB_READ_BUF);
    queue = calloc(nconns ? nconns : 1, sizeof(*queue));
    if (!rbuf || !queue)
        return -1;
    q_cap = nconns;
    if (sb_tls_init(cfg) != 0)
        return -1;
    src_next = (unsigned)cfg->proc_index;
    if (strchr(cfg->host, ':'))
        snprintf(host_header, sizeof(host_header), "[%s]:%d", cfg->host, cfg->port);
    else
        snprintf(host_header, sizeof(host_header), "%s:%d", cfg->host, cfg->port);
    return 0;
}

void sb_net_free(void)
{
    if (rate_ev)
        event_free(rate_ev);
    if (close_ev)
        event_free(close_ev);
    rate_ev = close_ev = NULL;
    sb_tls_free();
    free(rbuf);
    free(queue);
    rbuf = NULL;
    queue = NULL;
}

/* ------------------------------------------------------------- events */

static struct timeval tv_of(double s)
{
    struct timeval tv = {(time_t)s, (suseconds_t)((s - (double)(time_t)s) * 1e6)};
    return tv;
}

/* (Re-)registers c's event for its state: EV_WRITE while connecting or
 * while output is pending; the connect timeout until the mode settles it. */
static void update_events(struct sb_conn *c)
{
    if (c->state == SB_CS_CLOSED || !c->ev)
        return;
    bool want_write = c->state == SB_CS_CONNECTING || c->olen > c->ooff || c->tls_wants_write;
    bool want_timed = !c->settled;
    if (event_pending(c->ev, EV_READ | EV_WRITE, NULL) && want_write == (c->writing != 0) &&
        want_timed == (c->timed != 0))
        return;
    short flags = c->state == SB_CS_CONNECTING ? EV_WRITE : EV_READ | EV_PERSIST;
    if (want_write)
        flags |= EV_WRITE;
    event_del(c->ev);
    event_assign(c->ev, sb_net.base, c->fd, flags, on_event, c);
    struct timeval tv = tv_of(sb_net.cfg->connect_timeout);
    event_add(c->ev, want_timed ? &tv : NULL);
    c->writing = want_write;
    c->timed = want_timed;
}

static void check_setup_done(void)
{
    if (started && !setup_reported && q_head == q_tail && n_done == q_tail) {
        setup_reported = true;
        if (sb_net.on_setup_done)
            sb_net.on_setup_done();
    }
}

/* Frees what the engine owns of c. */
static void release(struct sb_conn *c)
{
    if (c->state == SB_CS_CLOSED || c->state == SB_CS_IDLE)
        return;
    if (c->state == SB_CS_OPEN)
        n_open--;
    if (c->ev)
        event_free(c->ev);
    c->ev = NULL;
    sb_tls_close(c);
    sb_pmd_release(c);
    c->tls_wants_write = 0;
    c->pmd = 0;
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    free(c->hs);
    c->hs = NULL;
    sb_ws_dec_free(&c->dec);
    free(c->out);
    c->out = NULL;
    c->olen = c->ooff = c->ocap = 0;
    c->state = SB_CS_CLOSED;
    if (!c->settled) {
        c->settled = 1;
        n_inflight--;
        n_done++;
    }
    if (closing_all && n_open == 0)
        event_base_loopbreak(sb_net.base);
}

/* c went down without us asking: count, free, tell the mode. */
static void down(struct sb_conn *c, enum sb_down why)
{
    if (c->state == SB_CS_CLOSED)
        return;
    if (why == SB_DOWN_CONNECT)
        sb_net.res->connect_errors++;
    else if (why == SB_DOWN_HANDSHAKE)
        sb_net.res->handshake_errors++;
    release(c);
    if (!closing_all && sb_net.on_down)
        sb_net.on_down(c, why);
    if (!pumping)
        pump();
}

void sb_conn_close(struct sb_conn *c)
{
    release(c);
}

void sb_conn_settle(struct sb_conn *c)
{
    if (c->settled)
        return;
    c->settled = 1;
    n_inflight--;
    n_done++;
    uint64_t now = sb_now_us();
    if ((int64_t)now > sb_net.res->t_connect_end)
        sb_net.res->t_connect_end = (int64_t)now;
    update_events(c);
    if (!pumping)
        pump();
}

/* ------------------------------------------------------------- output */

size_t sb_conn_pending(const struct sb_conn *c)
{
    return c->olen - c->ooff;
}

static void mark_dirty(struct sb_conn *c)
{
    if (!c->dirty) {
        c->dirty = 1;
        c->next_dirty = dirty_head;
        dirty_head = c;
    }
}

uint8_t *sb_conn_reserve(struct sb_conn *c, size_t n)
{
    if (c->state == SB_CS_CLOSED || c->state == SB_CS_IDLE)
        return NULL;
    if (c->ooff == c->olen)
        c->ooff = c->olen = 0;
    if (c->olen + n > c->ocap) {
        if (c->ooff > 0) {
            memmove(c->out, c->out + c->ooff, c->olen - c->ooff);
            c->olen -= c->ooff;
            c->ooff = 0;
        }
        if (c->olen + n > c->ocap) {
            size_t cap = c->ocap ? c->ocap : 256;
            while (cap < c->olen + n)
                cap *= 2;
            if (cap > SB_OUT_MAX)
                return NULL;
            uint8_t *nb = realloc(c->out, cap);
            if (!nb)
                return NULL;
            c->out = nb;
            c->ocap = cap;
        }
    }
    mark_dirty(c);
    return c->out + c->olen;
}

void sb_conn_commit(struct sb_conn *c, size_t n)
{
    c->olen += n;
}

size_t sb_conn_frame_header(uint8_t *hdr, unsigned op, uint64_t len, uint8_t mask[4])
{
    uint32_t m = (uint32_t)sb_rand();
    memcpy(mask, &m, 4);
    return sb_ws_header(hdr, op, true, len, mask);
}

int sb_conn_send(struct sb_conn *c, unsigned op, const void *payload, size_t len)
{
    uint8_t *p = sb_conn_reserve(c, SB_WS_MAX_HEADER + len);
    if (!p)
        return -1;
    uint8_t mask[4];
    size_t h = sb_conn_frame_header(p, op, len, mask);
    if (len)
        memcpy(p + h, payload, len);
    sb_ws_mask(p + h, len, mask, 0);
    sb_conn_commit(c, h + len);
    return 0;
}

/* The socket, or the connection's TLS. */
static ssize_t io_send(struct sb_conn *c, const void *p, size_t n)
{
    if (c->ssl)
        return sb_tls_send(c, p, n);
    return send(c->fd, p, n, MSG_NOSIGNAL);
}

static ssize_t io_recv(struct sb_conn *c, void *p, size_t n)
{
    if (c->ssl)
        return sb_tls_recv(c, p, n);
    return recv(c->fd, p, n, 0);
}

/* Writes what c has queued; EV_WRITE while the socket is full. */
static void flush(struct sb_conn *c)
{
    while (c->ooff < c->olen) {
        ssize_t w = io_send(c, c->out + c->ooff, c->olen - c->ooff);
        if (w > 0) {
            c->ooff += (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        down(c, c->state == SB_CS_OPEN ? SB_DOWN_CLOSED : SB_DOWN_CONNECT);
        return;
    }
    if (c->ooff == c->olen) {
        c->ooff = c->olen = 0;
        /* Receivers write rarely (subscribe, pongs): give the memory back. */
        if (c->ocap <= 4096) {
            free(c->out);
            c->out = NULL;
            c->ocap = 0;
        }
    }
    update_events(c);
}

void sb_net_flush_dirty(void)
{
    while (dirty_head) {
        struct sb_conn *c = dirty_head;
        dirty_head = c->next_dirty;
        c->dirty = 0;
        c->next_dirty = NULL;
        if (c->state != SB_CS_CLOSED && c->state != SB_CS_IDLE && c->state != SB_CS_CONNECTING &&
            c->state != SB_CS_TLS)
            flush(c);
    }
}

/* ------------------------------------------------------------ opening */

static void start_connect(struct sb_conn *c)
{
    const struct sb_config *cfg = sb_net.cfg;
    c->t_start = sb_now_us();
    if (!sb_net.res->t_connect_start)
        sb_net.res->t_connect_start = (int64_t)c->t_start;
    sb_net.res->connections++;
    c->state = SB_CS_CONNECTING;
    c->settled = 0;
    n_inflight++;
    c->fd = socket(cfg->target.sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        goto fail;
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (cfg->n_sources > 0) {
        const struct sb_addr *src = &cfg->sources[src_next++ % (unsigned)cfg->n_sources];
        if (src->sa.ss_family == AF_INET)
            setsockopt(c->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
        if (bind(c->fd, (const struct sockaddr *)&src->sa, src->len) < 0)
            goto fail;
    }
    const struct sb_addr *to = &cfg->target;
    if (c->role == SB_R_PUB)
        to = &cfg->pub_target;
    else if (c->role == SB_R_SUB && cfg->n_sub_ports > 0)
        to = &cfg->sub_targets[c->idx % (uint32_t)cfg->n_sub_ports];
    if (connect(c->fd, (const struct sockaddr *)&to->sa, to->len) < 0 && errno != EINPROGRESS)
        goto fail;
    c->ev = event_new(sb_net.base, c->fd, EV_WRITE, on_event, c);
    if (!c->ev)
        goto fail;
    c->writing = 0;
    c->timed = 0;
    update_events(c);
    return;
fail:
    down(c, SB_DOWN_CONNECT);
}

static void pump(void)
{
    const struct sb_config *cfg = sb_net.cfg;
    if (!started || pumping)
        return;
    pumping = true;
    if (cfg->connect_rate > 0) {
        uint64_t now = sb_now_us();
        double burst = cfg->connect_rate * 0.02 > 1 ? cfg->connect_rate * 0.02 : 1;
        tokens += cfg->connect_rate * (double)(now - tokens_at) / 1e6;
        if (tokens > burst)
            tokens = burst;
        tokens_at = now;
    }
    /* --tls-resume: the first handshake alone, so that every later one has
     * a session to offer (its ticket arrives with the server's first bytes,
     * before the connection is settled). */
    size_t limit = (size_t)cfg->max_handshakes;
    if (cfg->tls && cfg->tls_resume && n_done == 0)
        limit = 1;
    while (q_head < q_tail && n_inflight < limit) {
        if (cfg->connect_rate > 0) {
            if (tokens < 1)
                break;
            tokens -= 1;
        }
        start_connect(queue[q_head++]);
    }
    pumping = false;
    if (q_head < q_tail && cfg->connect_rate > 0 && rate_ev &&
        !event_pending(rate_ev, EV_TIMEOUT, NULL)) {
        struct timeval tv = {0, 5000};
        event_add(rate_ev, &tv);
    }
    check_setup_done();
}

static void on_rate_tick(evutil_socket_t fd, short what, void *arg)
{
    pump();
    sb_net_flush_dirty();
}

void sb_net_queue(struct sb_conn *c, enum sb_role role, uint32_t idx)
{
    memset(c, 0, sizeof(*c));
    c->fd = -1;
    c->role = (uint8_t)role;
    c->idx = idx;
    c->settled = 1; /* not in flight until opened */
    if (q_tail < q_cap)
        queue[q_tail++] = c;
}

void sb_net_start(void)
{
    started = true;
    tokens = 1;
    tokens_at = sb_now_us();
    if (sb_net.cfg->connect_rate > 0)
        rate_ev = evtimer_new(sb_net.base, on_rate_tick, NULL);
    pump();
    sb_net_flush_dirty();
}

static void send_request(struct sb_conn *c)
{
    const struct sb_config *cfg = sb_net.cfg;
    const char *path = c->role == SB_R_SUB   ? cfg->sub_path
                       : c->role == SB_R_PUB ? cfg->pub_path
                                             : cfg->path;
    char key[25];
    sb_ws_make_key(key, sb_rand);
    c->hs = malloc(sizeof(*c->hs));
    if (!c->hs) {
        down(c, SB_DOWN_CONNECT);
        return;
    }
    c->hs->len = 0;
    sb_ws_accept_for(key, c->hs->accept);
    char req[10240];
    int n = snprintf(req, sizeof(req),
                     "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                     "Sec-WebSocket-Version: 13\r\nUser-Agent: sente-bench/" SB_VERSION "\r\n"
                     "%s%s%s\r\n",
                     path, host_header, key,
                     cfg->deflate ? "Sec-WebSocket-Extensions: permessage-deflate; "
                                    "server_no_context_takeover; client_no_context_takeover\r\n"
                                  : "",
                     cfg->header ? cfg->header : "", cfg->header ? "\r\n" : "");
    if (n <= 0 || (size_t)n >= sizeof(req)) {
        down(c, SB_DOWN_CONNECT);
        return;
    }
    c->state = SB_CS_HANDSHAKE;
    uint8_t *p = sb_conn_reserve(c, (size_t)n);
    if (!p) {
        down(c, SB_DOWN_CONNECT);
        return;
    }
    memcpy(p, req, (size_t)n);
    sb_conn_commit(c, (size_t)n);
    flush(c);
}

/* ----------------------------------------------------------- reading */

static int on_frame(void *ctx, unsigned op, uint8_t *data, size_t len)
{
    struct sb_conn *c = ctx;
    if (c->want_close)
        return 1;
    switch (op) {
    case SB_OP_PING:
        sb_conn_send(c, SB_OP_PONG, data, len);
        return 0;
    case SB_OP_PONG:
        return 0;
    case SB_OP_CLOSE:
        /* Answer with the same status code (or none), then close. */
        if (!c->close_sent) {
            sb_conn_send(c, SB_OP_CLOSE, data, len >= 2 ? 2 : 0);
            c->close_sent = 1;
        }
        c->want_close = 1;
        return 1;
    default:
        if (op & SB_WS_COMPRESSED) {
            sb_net.res->compressed++;
            if (sb_pmd_inflate(c, data, len, &data, &len) != 0) {
                sb_net.res->protocol_errors++;
                uint8_t code[2] = {1007 >> 8, 1007 & 0xFF};
                if (!c->close_sent) {
                    sb_conn_send(c, SB_OP_CLOSE, code, 2);
                    c->close_sent = 1;
                }
                c->want_close = 2;
                return 1;
            }
            op &= 0x0F;
        }
        if (!closing_all && sb_net.on_message)
            sb_net.on_message(c, op, data, len);
        return c->want_close ? 1 : 0;
    }
}

/* Feeds bytes to the decoder; a protocol error closes with 1002. */
static void feed(struct sb_conn *c, uint8_t *p, size_t n)
{
    if (c->want_close || n == 0)
        return;
    int rc = sb_ws_feed(&c->dec, p, n, on_frame, c);
    if (rc == SB_WS_PROTOCOL_ERROR) {
        sb_net.res->protocol_errors++;
        uint8_t code[2] = {1002 >> 8, 1002 & 0xFF};
        if (!c->close_sent) {
            sb_conn_send(c, SB_OP_CLOSE, code, 2);
            c->close_sent = 1;
        }
        c->want_close = 2;
    }
}

static void handshake_read(struct sb_conn *c, uint8_t *p, size_t n)
{
    struct sb_hs *hs = c->hs;
    size_t room = SB_HS_MAX - 1 - hs->len;
    size_t take = n < room ? n : room;
    size_t from = hs->len > 3 ? hs->len - 3 : 0;
    memcpy(hs->buf + hs->len, p, take);
    hs->len = (uint16_t)(hs->len + take);
    hs->buf[hs->len] = '\0';
    char *end = memmem(hs->buf + from, hs->len - from, "\r\n\r\n", 4);
    if (!end) {
        if (hs->len >= SB_HS_MAX - 1)
            down(c, SB_DOWN_HANDSHAKE);
        return;
    }
    size_t head = (size_t)(end - hs->buf) + 4;
    if (sb_ws_check_response(hs->buf, head, hs->accept) != 0) {
        down(c, SB_DOWN_HANDSHAKE);
        return;
    }
    if (sb_net.cfg->deflate) {
        c->pmd = (uint8_t)sb_ws_response_pmd(hs->buf, head);
        c->dec.allow_rsv1 = c->pmd != 0;
    }
    c->state = SB_CS_OPEN;
    n_open++;
    sb_net.res->connected++;
    if (sb_net.on_open)
        sb_net.on_open(c);
    /* Frames that came with the response head: first those copied into
     * hs->buf, then the rest of this read. */
    feed(c, (uint8_t *)hs->buf + head, hs->len - head);
    free(c->hs);
    c->hs = NULL;
    feed(c, p + take, n - take);
}

/* Reads what is there now: one recv, or with TLS as many records as
 * OpenSSL decodes without waiting (up to the buffer).  Returns the bytes
 * read, 0 at the end of the stream, -1 on an error (errno; EAGAIN: none). */
static ssize_t read_batch(struct sb_conn *c)
{
    if (!c->ssl)
        return recv(c->fd, rbuf, SB_READ_BUF, 0);
    size_t got = 0;
    while (got < SB_READ_BUF) {
        ssize_t r = io_recv(c, rbuf + got, SB_READ_BUF - got);
        if (r > 0) {
            got += (size_t)r;
            continue;
        }
        if (got > 0)
            break; /* the end or the error shows again on the next read */
        return r;
    }
    if (got == SB_READ_BUF && sb_tls_pending(c))
        event_active(c->ev, EV_READ, 1);
    return (ssize_t)got;
}

static void do_read(struct sb_conn *c)
{
    ssize_t n = read_batch(c);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
            if (c->tls_wants_write)
                update_events(c);
            return;
        }
        down(c, c->state == SB_CS_OPEN ? SB_DOWN_CLOSED : SB_DOWN_CONNECT);
        return;
    }
    if (n == 0) {
        if (closing_all && c->close_sent) {
            release(c);
            return;
        }
        down(c, c->state == SB_CS_OPEN ? SB_DOWN_CLOSED : SB_DOWN_HANDSHAKE);
        return;
    }
    sb_net.now = sb_now_us();
    if (c->state == SB_CS_HANDSHAKE)
        handshake_read(c, rbuf, (size_t)n);
    else
        feed(c, rbuf, (size_t)n);
    if (c->state == SB_CS_CLOSED)
        return;
    if (c->want_close) {
        /* Peer's close answered, or a protocol error: send what is queued
         * (the close frame) and go. */
        bool proto = c->want_close == 2;
        if (c->olen > c->ooff)
            (void)!io_send(c, c->out + c->ooff, c->olen - c->ooff);
        if (closing_all)
            release(c);
        else
            down(c, proto ? SB_DOWN_PROTOCOL : SB_DOWN_CLOSED);
        return;
    }
    if (sb_net.after_read)
        sb_net.after_read(c);
}

/* One step of the TLS handshake; the upgrade request once it is done. */
static void tls_handshake(struct sb_conn *c)
{
    int r = sb_tls_step(c);
    if (r < 0) {
        down(c, SB_DOWN_HANDSHAKE);
        return;
    }
    if (r == 0) {
        update_events(c);
        return;
    }
    sb_net.res->tls_handshakes++;
    if (sb_tls_resumed(c))
        sb_net.res->tls_resumed++;
    send_request(c);
    if (c->state != SB_CS_CLOSED)
        update_events(c);
}

static void on_event(evutil_socket_t fd, short what, void *arg)
{
    struct sb_conn *c = arg;
    if (what & EV_TIMEOUT) {
        down(c, c->state == SB_CS_OPEN ? SB_DOWN_TIMEOUT : SB_DOWN_CONNECT);
        sb_net_flush_dirty();
        return;
    }
    if (c->state == SB_CS_CONNECTING) {
        int err = 0;
        socklen_t el = sizeof(err);
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0 || err != 0) {
            down(c, SB_DOWN_CONNECT);
        } else if (sb_net.cfg->tls) {
            if (sb_tls_start(c) != 0) {
                down(c, SB_DOWN_CONNECT);
            } else {
                c->state = SB_CS_TLS;
                tls_handshake(c);
            }
        } else {
            send_request(c);
            if (c->state != SB_CS_CLOSED)
                update_events(c);
        }
        sb_net_flush_dirty();
        return;
    }
    if (c->state == SB_CS_TLS) {
        tls_handshake(c);
        sb_net_flush_dirty();
        return;
    }
    bool tls_write = c->tls_wants_write;
    if ((what & EV_WRITE) && c->state != SB_CS_CLOSED)
        flush(c);
    if (((what & EV_READ) || (tls_write && (what & EV_WRITE))) && c->state != SB_CS_CLOSED)
        do_read(c);
    /* A TLS read may have made OpenSSL want to write (a key update): what
     * is queued goes out now rather than at the next dirty mark. */
    if (c->ssl && c->state != SB_CS_CLOSED && c->olen > c->ooff && !c->dirty)
        mark_dirty(c);
    sb_net_flush_dirty();
}

/* ------------------------------------------------------------ closing */

static void on_close_timeout(evutil_socket_t fd, short what, void *arg)
{
    event_base_loopbreak(sb_net.base);
}

void sb_net_close_all(struct sb_conn *conns, size_t n, double wait_s)
{
    closing_all = true;
    /* Stop opening new ones; abandon those still connecting. */
    q_head = q_tail;
    uint8_t code[2] = {1000 >> 8, 1000 & 0xFF};
    for (size_t i = 0; i < n; i++) {
        struct sb_conn *c = &conns[i];
        if (c->state == SB_CS_OPEN && !c->close_sent) {
            sb_conn_send(c, SB_OP_CLOSE, code, 2);
            c->close_sent = 1;
        } else if (c->state != SB_CS_OPEN) {
            release(c);
        }
    }
    sb_net_flush_dirty();
    if (n_open > 0 && wait_s > 0) {
        close_ev = evtimer_new(sb_net.base, on_close_timeout, NULL);
        struct timeval tv = tv_of(wait_s);
        evtimer_add(close_ev, &tv);
        event_base_dispatch(sb_net.base);
    }
    for (size_t i = 0; i < n; i++)
        release(&conns[i]);
}
