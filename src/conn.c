/*
 * conn.c - a client connection's life inside a worker: reading, the HTTP
 * phase, the WebSocket phase, the closing handshake, timeouts and writing.
 *
 * Reads go into the worker's read buffer; WebSocket bytes are parsed
 * straight from it (the reader copies only a frame split across reads), so
 * an idle connection holds no input buffer.  Only an unfinished HTTP request
 * is kept in c->in.
 *
 * Closing: whoever starts it, we queue our close frame and then linger:
 * once the output is written we shut our write side and discard input until
 * the peer closes (or a deadline passes), so the peer reads every byte we
 * sent instead of getting a reset.  A connection is never freed inside a
 * callback: it is marked dead and freed at the end of the loop turn.
 */
#include "sl_conn.h"
#include "sl_conf.h"
#include "sl_httpd.h"
#include "sl_proto.h"
#include "sl_session.h"
#include "sl_tel.h"
#include "sl_worker.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <urcu/system.h>
#include <urcu/uatomic.h>

#define SL_CLOSE_GRACE_MS 2000 /* wait for the peer's close frame / FIN */
/* At a stop, a connection open this long with nothing received is taken for
 * a preconnect (closed at once) rather than a request on its way. */
#define SL_CONN_FRESH_MS 1000
#define SL_HTTP_MAX_HEAD 8192

static void conn_io_cb(evutil_socket_t fd, short what, void *arg);
static void conn_lingering(sl_conn_t *c);

/* ---------------------------------------------------------------- frames */

sl_buf_t *sl_frame_new(int opcode, const void *payload, size_t len)
{
    sl_buf_t *b = sl_buf_new(SL_WS_MAX_HEADER + len);
    if (b == NULL)
        return NULL;
    b->len = (uint32_t)sl_ws_encode_header(b->data, opcode, true, len, NULL);
    if (len)
        memcpy(b->data + b->len, payload, len);
    b->len += (uint32_t)len;
    return b;
}

sl_buf_t *sl_frame_json(json_t *j)
{
    /* Encode into the scratch buffer first: one pass in the common case,
     * and the frame buffer is allocated at its exact size.  Server frames
     * have at most a 10-byte header; it is written right before the
     * payload so the frame is contiguous. */
    uint8_t *scratch = sl_worker->ebuf;
    size_t n = json_dumpb(j, (char *)scratch, SL_SCRATCH_SIZE, JSON_COMPACT);
    if (n == 0)
        return NULL;
    sl_buf_t *b = sl_buf_new(10 + n);
    if (b == NULL)
        return NULL;
    if (n <= SL_SCRATCH_SIZE)
        memcpy(b->data + 10, scratch, n);
    else if (json_dumpb(j, (char *)b->data + 10, n, JSON_COMPACT) != n) {
        sl_buf_unref(b);
        return NULL;
    }
    uint8_t hdr[SL_WS_MAX_HEADER];
    size_t h = sl_ws_encode_header(hdr, SL_WS_OP_TEXT, true, n, NULL);
    b->start = (uint32_t)(10 - h);
    memcpy(b->data + b->start, hdr, h);
    b->len = (uint32_t)(10 + n);
    return b;
}

sl_buf_t *sl_frame_close(uint16_t code, const char *reason)
{
    uint8_t p[125];
    size_t rlen = reason ? SL_MIN(strlen(reason), sizeof(p) - 2) : 0;
    p[0] = (uint8_t)(code >> 8);
    p[1] = (uint8_t)(code & 0xff);
    if (rlen)
        memcpy(p + 2, reason, rlen);
    return sl_frame_new(SL_WS_OP_CLOSE, p, 2 + rlen);
}

/* ------------------------------------------------------------ lifecycle */

sl_conn_t *sl_conn_new(int fd, bool ops)
{
    sl_conn_t *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        close(fd);
        return NULL;
    }
    /* No fcntl / setsockopt here (three syscalls per connection, a few µs
     * on this kind of machine): the master accepts with SOCK_NONBLOCK and
     * O_NONBLOCK belongs to the open file the hand-off shares; TCP_NODELAY
     * is inherited from the listener, where the master sets it. */
    c->fd = fd;
    c->ops = ops;
    c->state = SL_CONN_HTTP;
    c->kind = SL_KIND_HTTP;
    int64_t now = sl_mono_ms();
    c->accepted_mono = c->last_rx_mono = c->busy_since_mono = now;
    event_assign(&c->ev, sl_worker->base, fd, EV_READ | EV_PERSIST, conn_io_cb, c);
    if (sl_worker_attach(c) != SL_OK || event_add(&c->ev, NULL) != 0) {
        close(fd);
        free(c);
        return NULL;
    }
    uatomic_add(&sl_worker->stats->http_connections, 1);
    return c;
}

void sl_conn_destroy(sl_conn_t *c)
{
    sl_worker_stats_t *st = sl_worker->stats;
    event_del(&c->ev);
    if (c->fd >= 0)
        close(c->fd);
    sl_outq_clear(&c->out);
    sl_ws_reader_free(&c->reader);
    free(c->in);
    if (c->kind == SL_KIND_PROTOCOL) {
        uatomic_add(&st->connections, -1);
        sl_proto_closed(c);
    } else if (c->kind == SL_KIND_ECHO) {
        uatomic_add(&st->echo_connections, -1);
    } else {
        uatomic_add(&st->http_connections, -1);
    }
    free(c);
}

void sl_conn_abort(sl_conn_t *c, const char *why)
{
    if (c->state == SL_CONN_DEAD)
        return;
    if (c->kind != SL_KIND_HTTP && c->state == SL_CONN_WS)
        SL_TEL(SL_EV_WEBSOCKET_ERROR, SL_DEBUG, SL_TF_S("conn-id", c->conn_id),
               SL_TF_S("reason", why));
    c->state = SL_CONN_DEAD;
    sl_worker_mark_dead(c);
}

/* ---------------------------------------------------------------- output */

int sl_conn_send(sl_conn_t *c, sl_buf_t *b)
{
    if (c->state == SL_CONN_DEAD || c->shut_wr)
        return SL_ERROR;
    size_t len = b->len - b->start;
    if (c->out.bytes + len > (uint64_t)sl_conf->max_outbound_bytes &&
        c->state == SL_CONN_WS) {
        /* Slow consumer: drop what it has not taken and tell it why.  If a
         * frame is half written the stream cannot carry a close frame any
         * more, so the socket is simply closed. */
        uatomic_add(&sl_worker->stats->slow_consumer_disconnects, 1);
        SL_TEL(SL_EV_SLOW_CONSUMER_DISCONNECTED, SL_WARN, SL_TF_S("conn-id", c->conn_id),
               SL_TF_I("queued-bytes", c->out.bytes + len),
               SL_TF_I("limit", sl_conf->max_outbound_bytes));
        if (sl_outq_partial(&c->out)) {
            sl_conn_abort(c, "slow-consumer");
            return SL_ERROR;
        }
        sl_outq_clear(&c->out);
        sl_conn_close_ws(c, SL_WS_CLOSE_POLICY, "slow consumer");
        return SL_ERROR;
    }
    if (sl_outq_push(&c->out, b, b->start, len) != SL_OK) {
        sl_conn_abort(c, "out-of-memory");
        return SL_ERROR;
    }
    if (c->kind == SL_KIND_PROTOCOL)
        uatomic_add(&sl_worker->stats->messages_out, 1);
    sl_worker_mark_dirty(c);
    return SL_OK;
}

int sl_conn_send_json(sl_conn_t *c, json_t *j)
{
    sl_buf_t *b = sl_frame_json(j);
    if (b == NULL) {
        sl_conn_abort(c, "encode-failed");
        return SL_ERROR;
    }
    int rc = sl_conn_send(c, b);
    sl_buf_unref(b);
    return rc;
}

/* Wait for writability too, or no longer.  libevent cannot change the
 * events of a pending event, so it is deleted, re-assigned and added
 * (also from inside its own callback, which libevent allows once it is
 * deleted). */
static void conn_watch(sl_conn_t *c, bool write)
{
    short what = EV_READ | EV_PERSIST | (write ? EV_WRITE : 0);
    event_del(&c->ev);
    event_assign(&c->ev, sl_worker->base, c->fd, what, conn_io_cb, c);
    if (event_add(&c->ev, NULL) != 0) {
        sl_conn_abort(c, "event-add-failed");
        return;
    }
    c->write_armed = write;
}

void sl_conn_flush(sl_conn_t *c)
{
    if (c->state == SL_CONN_DEAD)
        return;
    uint64_t queued = c->out.bytes;
    int rc = sl_outq_flush(&c->out, c->fd);
    if (c->out.bytes < queued) {
        /* Our own slot, one writer: a plain store of the new value. */
        uint64_t *bo = &sl_worker->stats->bytes_out;
        CMM_STORE_SHARED(*bo, *bo + (queued - c->out.bytes));
    }
    if (rc == SL_ERROR) {
        sl_conn_abort(c, "write-failed");
        return;
    }
    if (rc == SL_AGAIN) {
        if (!c->write_armed)
            conn_watch(c, true);
        return;
    }
    if (c->write_armed)
        conn_watch(c, false);
    if (c->state == SL_CONN_LINGER && !c->shut_wr) {
        /* Everything we had to say is out: half-close, then wait for the
         * peer's FIN so it is not answered with a reset. */
        shutdown(c->fd, SHUT_WR);
        c->shut_wr = true;
    }
}


/* --------------------------------------------------------------- closing */

/* Remember the first close code and reason (for telemetry). */
static void conn_note_close(sl_conn_t *c, uint16_t code, const char *reason)
{
    if (c->close_code == 0) {
        c->close_code = code;
        c->close_reason = reason;
    }
}

static void conn_lingering(sl_conn_t *c)
{
    c->state = SL_CONN_LINGER;
    c->deadline_mono = sl_mono_ms() + SL_CLOSE_GRACE_MS;
    sl_worker_mark_dirty(c); /* the flush performs the shutdown */
}

void sl_conn_close_ws(sl_conn_t *c, uint16_t code, const char *reason)
{
    if (c->state != SL_CONN_WS)
        return;
    sl_buf_t *b = sl_frame_close(code, reason);
    if (b == NULL) {
        sl_conn_abort(c, "out-of-memory");
        return;
    }
    /* The close frame may exceed the outbound bound; it is sent anyway. */
    int rc = sl_outq_push(&c->out, b, b->start, b->len - b->start);
    sl_buf_unref(b);
    if (rc != SL_OK) {
        sl_conn_abort(c, "out-of-memory");
        return;
    }
    conn_note_close(c, code, reason);
    if (code == SL_WS_CLOSE_NORMAL || code == SL_WS_CLOSE_GOING_AWAY) {
        /* A clean close: keep reading for the peer's close frame. */
        c->state = SL_CONN_CLOSING;
        c->deadline_mono = sl_mono_ms() + SL_CLOSE_GRACE_MS;
        sl_worker_mark_dirty(c);
    } else {
        /* Failing the connection: nothing it sends matters any more. */
        conn_lingering(c);
    }
}

/* Finish an HTTP exchange that must not continue (errors, Connection:
 * close): the response is queued; linger once it is out. */
static void conn_http_finish(sl_conn_t *c)
{
    free(c->in);
    c->in = NULL;
    c->in_len = c->in_cap = 0;
    conn_lingering(c);
}

/* ------------------------------------------------------------ WebSocket */

static int ws_on_message(void *ctx, int opcode, uint8_t *data, size_t len)
{
    sl_conn_t *c = ctx;
    if (c->state != SL_CONN_WS)
        return 0; /* closing: data is ignored */
    if (c->kind == SL_KIND_ECHO) {
        sl_buf_t *b = sl_frame_new(opcode, data, len);
        if (b == NULL) {
            sl_conn_abort(c, "out-of-memory");
            return 1;
        }
        sl_conn_send(c, b);
        sl_buf_unref(b);
        return c->state == SL_CONN_WS ? 0 : 1;
    }
    if (opcode == SL_WS_OP_BINARY) {
        sl_worker_count_error(SL_ERR_UNSUPPORTED_DATA);
        sl_conn_close_ws(c, SL_WS_CLOSE_UNSUPPORTED, "binary messages are not supported");
        return 1;
    }
    sl_proto_message(c, (char *)data, len);
    return c->state == SL_CONN_WS ? 0 : 1;
}

static int ws_on_control(void *ctx, int opcode, uint8_t *data, size_t len)
{
    sl_conn_t *c = ctx;
    if (opcode == SL_WS_OP_PING) {
        if (c->state != SL_CONN_WS)
            return 0;
        sl_buf_t *b = sl_frame_new(SL_WS_OP_PONG, data, len);
        if (b == NULL) {
            sl_conn_abort(c, "out-of-memory");
            return 1;
        }
        /* Control replies bypass the outbound bound like close frames. */
        if (sl_outq_push(&c->out, b, b->start, b->len - b->start) == SL_OK)
            sl_worker_mark_dirty(c);
        sl_buf_unref(b);
        return 0;
    }
    if (opcode == SL_WS_OP_PONG)
        return 0;
    /* CLOSE */
    if (c->state == SL_CONN_WS) {
        /* The peer starts the handshake: echo its code (1000 when it sent
         * none), then linger until it closes the TCP connection. */
        uint16_t code = len >= 2 ? (uint16_t)(data[0] << 8 | data[1]) : SL_WS_CLOSE_NORMAL;
        sl_buf_t *b = sl_frame_close(code, NULL);
        if (b != NULL) {
            sl_outq_push(&c->out, b, b->start, b->len - b->start);
            sl_buf_unref(b);
        }
        conn_note_close(c, code, "closed by peer");
    }
    conn_lingering(c);
    return 1;
}

static const sl_ws_handlers_t ws_handlers = {ws_on_message, ws_on_control};

static void conn_ws_input(sl_conn_t *c, uint8_t *data, size_t n)
{
    int rc = sl_ws_reader_feed(&c->reader, data, n, &ws_handlers, c);
    if (rc > 1) {
        sl_err_t e = rc == SL_WS_CLOSE_INVALID_DATA ? SL_ERR_INVALID_UTF8
                     : rc == SL_WS_CLOSE_TOO_BIG    ? SL_ERR_MESSAGE_TOO_BIG
                                                    : SL_ERR_PROTOCOL_ERROR;
        sl_worker_count_error(e);
        sl_conn_close_ws(c, (uint16_t)rc, sl_err_name(e));
        return;
    }
    if (c->state == SL_CONN_WS || c->state == SL_CONN_CLOSING) {
        if (sl_ws_reader_busy(&c->reader)) {
            if (c->busy_since_mono == 0)
                c->busy_since_mono = sl_mono_ms();
        } else {
            c->busy_since_mono = 0;
        }
    }
}

/* Called by httpd once the 101 response is queued. */
void sl_conn_upgraded(sl_conn_t *c, sl_conn_kind_t kind)
{
    c->state = SL_CONN_WS;
    c->kind = (uint8_t)kind;
    c->busy_since_mono = 0;
    c->last_rx_mono = c->last_ping_mono = sl_mono_ms();
    sl_ws_reader_init(&c->reader, true, (uint64_t)sl_conf->max_message_size);
    uatomic_add(&sl_worker->stats->http_connections, -1);
}

/* ----------------------------------------------------------------- HTTP */

static void conn_http_input(sl_conn_t *c, const uint8_t *data, size_t n)
{
    size_t limit = SL_HTTP_MAX_HEAD + (size_t)sl_conf->max_message_size;
    if (c->in_len + n > c->in_cap) {
        size_t want = c->in_len + n;
        if (want > limit)
            want = limit;
        size_t cap = c->in_cap ? c->in_cap : 1024;
        while (cap < want)
            cap *= 2;
        if (cap > limit)
            cap = limit;
        if (cap > c->in_cap) {
            char *p = realloc(c->in, cap);
            if (p == NULL) {
                sl_conn_abort(c, "out-of-memory");
                return;
            }
            c->in = p;
            c->in_cap = (uint32_t)cap;
        }
    }
    size_t take = SL_MIN(n, (size_t)(c->in_cap - c->in_len));
    memcpy(c->in + c->in_len, data, take);
    c->in_len += (uint32_t)take;
    if (c->busy_since_mono == 0)
        c->busy_since_mono = sl_mono_ms();

    while (c->state == SL_CONN_HTTP && c->in_len > 0) {
        sl_http_request_t req;
        int rc = sl_http_parse_request(c->in, c->in_len, SL_HTTP_MAX_HEAD, &req);
        if (rc == SL_AGAIN)
            break;
        if (rc != SL_OK) {
            sl_worker_count_error(SL_ERR_BAD_HTTP_REQUEST);
            sl_httpd_error(c, rc, "bad-request", "malformed or oversized HTTP request", false);
            conn_http_finish(c);
            return;
        }
        if (req.content_length > sl_conf->max_message_size) {
            sl_worker_count_error(SL_ERR_BAD_HTTP_REQUEST);
            sl_httpd_error(c, 413, "payload-too-large", "request body exceeds --max-message-size",
                           false);
            conn_http_finish(c);
            return;
        }
        size_t body_len = req.content_length > 0 ? (size_t)req.content_length : 0;
        if (c->in_len < req.head_len + body_len)
            break; /* body still arriving */
        size_t used = req.head_len + body_len;
        bool keep = sl_httpd_request(c, &req, c->in + req.head_len, body_len);
        if (c->state == SL_CONN_DEAD)
            return;
        if (sl_worker->stopping) {
            /* Draining: the request was answered; nothing more here.  An
             * upgrade completed now is told to go elsewhere (1001). */
            if (c->state == SL_CONN_WS) {
                free(c->in);
                c->in = NULL;
                c->in_len = c->in_cap = 0;
                sl_conn_shutdown(c);
                return;
            }
            keep = false;
        }
        if (c->state == SL_CONN_WS) {
            /* Bytes after the upgrade request are WebSocket frames. */
            size_t rest = c->in_len - used;
            char *in = c->in;
            c->in = NULL;
            c->in_len = c->in_cap = 0;
            if (rest)
                conn_ws_input(c, (uint8_t *)in + used, rest);
            free(in);
            return;
        }
        if (!keep) {
            conn_http_finish(c);
            return;
        }
        memmove(c->in, c->in + used, c->in_len - used);
        c->in_len -= (uint32_t)used;
        c->busy_since_mono = c->in_len ? sl_mono_ms() : 0;
        c->accepted_mono = sl_mono_ms(); /* idle keep-alive timer restarts */
    }
    if (c->state == SL_CONN_HTTP && c->in_len == 0) {
        free(c->in);
        c->in = NULL;
        c->in_cap = 0;
    }
}

/* ----------------------------------------------------------------- input */

static void conn_io_cb(evutil_socket_t fd, short what, void *arg)
{
    sl_conn_t *c = arg;
    if ((what & EV_WRITE) && c->state != SL_CONN_DEAD)
        sl_conn_flush(c);
    if (!(what & EV_READ) || c->state == SL_CONN_DEAD)
        return;
    ssize_t n = read(fd, sl_worker->rbuf, SL_SCRATCH_SIZE);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return;
        sl_conn_abort(c, "read-failed");
        return;
    }
    if (n == 0) {
        /* EOF.  In LINGER or CLOSING this is the normal end. */
        if (c->state == SL_CONN_WS)
            conn_note_close(c, SL_WS_CLOSE_ABNORMAL, "connection lost");
        sl_conn_abort(c, c->state == SL_CONN_WS ? "eof" : "closed");
        return;
    }
    c->last_rx_mono = sl_mono_ms();
    uint64_t *bi = &sl_worker->stats->bytes_in;
    CMM_STORE_SHARED(*bi, *bi + (uint64_t)n);
    switch (c->state) {
    case SL_CONN_HTTP:
        conn_http_input(c, sl_worker->rbuf, (size_t)n);
        break;
    case SL_CONN_WS:
    case SL_CONN_CLOSING:
        conn_ws_input(c, sl_worker->rbuf, (size_t)n);
        break;
    default:
        break; /* LINGER: discard */
    }
}

/* ---------------------------------------------------------------- timers */

void sl_conn_tick(sl_conn_t *c, int64_t now)
{
    const sl_conf_t *cf = sl_conf;
    switch (c->state) {
    case SL_CONN_HTTP:
        if (c->busy_since_mono && now - c->busy_since_mono >= cf->message_timeout_ms) {
            sl_worker_count_error(SL_ERR_HANDSHAKE_TIMEOUT);
            sl_httpd_error(c, 408, "request-timeout", "request not completed in time", false);
            conn_http_finish(c);
        } else if (!c->busy_since_mono && now - c->accepted_mono >= 2 * cf->heartbeat_interval_ms) {
            sl_conn_abort(c, "keep-alive idle");
        }
        break;
    case SL_CONN_WS:
        sl_outq_trim(&c->out);
        if (c->sess) {
            sl_session_tick(c, now); /* authentication deadline, token expiry */
            if (c->state != SL_CONN_WS)
                break;
        }
        if (c->busy_since_mono && now - c->busy_since_mono >= cf->message_timeout_ms) {
            sl_worker_count_error(SL_ERR_MESSAGE_TIMEOUT);
            sl_conn_close_ws(c, SL_WS_CLOSE_POLICY, "message not completed in time");
        } else if (now - c->last_rx_mono >= 2 * cf->heartbeat_interval_ms) {
            sl_worker_count_error(SL_ERR_HEARTBEAT_TIMEOUT);
            sl_conn_close_ws(c, SL_WS_CLOSE_GOING_AWAY, "heartbeat timeout");
        } else if (now - c->last_ping_mono >= cf->heartbeat_interval_ms) {
            static sl_buf_t *ping;
            if (ping == NULL)
                ping = sl_frame_new(SL_WS_OP_PING, NULL, 0); /* kept for the worker's life */
            if (ping != NULL && sl_outq_push(&c->out, ping, ping->start, ping->len) == SL_OK)
                sl_worker_mark_dirty(c);
            c->last_ping_mono = now;
        }
        break;
    case SL_CONN_CLOSING:
    case SL_CONN_LINGER:
        if (now >= c->deadline_mono)
            sl_conn_abort(c, "close timeout");
        break;
    default:
        break;
    }
}

void sl_conn_shutdown(sl_conn_t *c)
{
    if (c->state == SL_CONN_WS) {
        sl_conn_close_ws(c, SL_WS_CLOSE_GOING_AWAY, "server shutting down");
    } else if (c->state == SL_CONN_HTTP) {
        if (c->out.count)
            conn_http_finish(c);
        else if (c->busy_since_mono == 0)
            sl_conn_abort(c, "shutdown"); /* idle keep-alive */
        else if (c->in_len == 0 && sl_mono_ms() - c->accepted_mono >= SL_CONN_FRESH_MS)
            sl_conn_abort(c, "shutdown"); /* opened long ago, nothing sent: a preconnect */
        /* else a request is under way, or a just-opened connection's first
         * one may be on its way: it is answered (Connection: close), then
         * closed (see conn_http_input), or the drain deadline ends it. */
    }
}
