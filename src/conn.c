/*
 * conn.c - a client connection's life inside a worker: reading, the HTTP
 * phase, the WebSocket phase, the closing handshake, timeouts and writing.
 *
 * Reads go into the worker's read buffer; WebSocket bytes are parsed
 * straight from it (the reader copies only a frame split across reads), so
 * an idle connection holds no input buffer.  Only an unfinished HTTP request
 * is kept in c->in.
 *
 * Resources a peer can make us hold are bounded here (sl_conn_send in
 * sl_conn.h): output it causes itself back-pressures its input (reading
 * stops, the rest of the last read waits in c->in, and reading resumes
 * once the output has drained to a quarter of the bound - for HTTP, the
 * next pipelined request is answered only once the previous responses are
 * under 64 KiB); output others cause is bounded by closing it as a slow
 * consumer; pongs are coalesced (one pending at most) and ping/pong floods
 * closed with 1008; idle keep-alive HTTP connections are limited in number
 * (--max-http-connections) and time (--keepalive-timeout-ms).
 *
 * Closing: whoever starts it, we queue our close frame and then linger:
 * once the output is written we shut our write side and discard input until
 * the peer closes (or a deadline passes), so the peer reads every byte we
 * sent instead of getting a reset.  A connection is never freed inside a
 * callback: it is marked dead and freed at the end of the loop turn.
 *
 * Layering: below, the transport (conn_xp: read, flush of the output queue,
 * half-close); above, whatever the worker installed in sl_conns.on, the
 * only way this file reaches HTTP routing and the JSON protocol.  The set
 * of the process's connections (sl_conns) is kept here too: the lists the
 * end of a turn walks, the slot table, the scratch buffers.
 */
#include "sl_conn.h"
#include "sl_conf.h"
#include "sl_crash.h"
#include "sl_pmd.h"
#include "sl_tel.h"

#include <errno.h>
#include <stddef.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>
#include <urcu/system.h>
#include <urcu/uatomic.h>

#define SL_CLOSE_GRACE_MS 2000 /* wait for the peer's close frame / FIN */
/* At a stop, a connection open this long with nothing received is taken for
 * a preconnect (closed at once) rather than a request on its way. */
#define SL_CONN_FRESH_MS 1000
#define SL_HTTP_MAX_HEAD 8192
/* HTTP: the next pipelined request is answered only while less than this
 * is waiting to be written.  Also the backlog above which a connection
 * counts against the worker's share of --max-outbound-total. */
#define SL_CONN_SMALL_BACKLOG (64 * 1024)
/* How many of the oldest idle connections one newcomer past
 * --max-http-connections may look at (FIONREAD) for one that is truly
 * silent before it evicts the next regardless (conn_http_admit). */
#define SL_CONN_EVICT_LOOKS 8
/* Work one connection may do per loop turn before the others get theirs:
 * WebSocket messages, HTTP requests (the rest of its input waits in c->in
 * and is taken up in the next turn). */
#define SL_CONN_TURN_READ (16 * 1024) /* bytes read per turn (<= SL_SCRATCH_SIZE) */
#define SL_CONN_TURN_MESSAGES 64
/* Message payload delivered per turn: a compressed message inflates up to
 * ~1000 times its size, so the bytes read no longer bound the work (review
 * r16 M1: 16 KiB read, 16 MiB inflated, validated and parsed).  Checked
 * after each message: one message of any size still goes through. */
#define SL_CONN_TURN_MESSAGE_BYTES (256 * 1024)
#define SL_CONN_TURN_FRAMES 256 /* fragments and control frames included */
#define SL_CONN_TURN_REQUESTS 16
/* A connection that has held 64 KiB or more of output for this long
 * (through every write of that time) does not keep up: when its worker is
 * over its share of --max-outbound-total it is the one to close. */
#define SL_CONN_STUCK_MS 1000
/* The smallest bound on one reply (sl_conn_reply_max), whatever
 * --max-outbound-bytes says: /stats and a page of a listing fit in it. */
#define SL_CONN_REPLY_MIN (256 * 1024)

static void conn_io_cb(evutil_socket_t fd, short what, void *arg);
static void conn_lingering(sl_conn_t *c);

/* Its transport: named by the transport's state (no pointer of its own in
 * every connection: plain TCP has no state). */
static inline const sl_xport_t *conn_xp(const sl_conn_t *c)
{
    return sl_xport_of(c->xctx);
}

/* ----------------------------------------------------------------- lists */

/* Every list of connections the process keeps - the live ones, the ready
 * ones, the idle HTTP ones and the unfinished heads, the holders of
 * unfinished input - is this one kind: doubly linked through one of the
 * connection's links (named by its offset, CONN_AT), appended at the end,
 * removed from anywhere in O(1), walked from the first (the oldest).
 * Whether a connection is on a list is its own flag (c->ready, c->idle,
 * c->held): these do not check.  (The flush list stays singly linked: it
 * is only ever emptied whole.) */
#define CONN_AT(link) offsetof(sl_conn_t, link)

static inline sl_conn_link_t *conn_link(sl_conn_t *c, size_t at)
{
    return (sl_conn_link_t *)((char *)c + at);
}

static void conn_list_append(sl_conn_list_t *l, size_t at, sl_conn_t *c)
{
    sl_conn_link_t *k = conn_link(c, at);
    k->prev = l->last;
    k->next = NULL;
    if (l->last)
        conn_link(l->last, at)->next = c;
    else
        l->first = c;
    l->last = c;
}

static void conn_list_remove(sl_conn_list_t *l, size_t at, sl_conn_t *c)
{
    sl_conn_link_t *k = conn_link(c, at);
    if (k->prev)
        conn_link(k->prev, at)->next = k->next;
    else
        l->first = k->next;
    if (k->next)
        conn_link(k->next, at)->prev = k->prev;
    else
        l->last = k->prev;
    k->prev = k->next = NULL;
}

/* Message payload delivered in the connection's current processing (one
 * connection's input is processed at a time; conn_process keeps the outer
 * count if it were ever nested): what SL_CONN_TURN_MESSAGE_BYTES bounds,
 * kept here rather than in every connection. */
static uint32_t conn_turn_msg_bytes;

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
    uint8_t *scratch = sl_conns.ebuf;
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

/* ------------------------------------------------- the process's set */

sl_conns_t sl_conns = {.trace_fd = -1}; /* the fan-out trace off until opened */

void sl_conns_count_error(sl_err_t e)
{
    uatomic_add(&sl_conns.stats->errors[e], 1);
}

/* Is this worker holding more output than its share of
 * --max-outbound-total (sl_buf_live_bytes)? */
static bool conns_over_budget(void)
{
    return sl_buf_live_bytes > (uint64_t)(sl_conf->max_outbound_total / sl_conf->workers);
}

sl_conn_t *sl_conns_at(uint32_t slot)
{
    return slot < sl_conns.nslots ? sl_conns.slots[slot] : NULL;
}

static int conns_attach(sl_conn_t *c)
{
    sl_conns_t *w = &sl_conns;
    if (w->nslots == w->slot_cap) {
        /* Slots are looked up by index (and, later, by other workers
         * through the registry), so the table only grows. */
        for (uint32_t k = 0; k < w->nslots; k++) {
            uint32_t i = (w->free_hint + k) % w->nslots;
            if (w->slots[i] == NULL) {
                w->free_hint = i + 1;
                c->slot = i;
                goto found;
            }
        }
        uint32_t ncap = w->slot_cap ? w->slot_cap * 2 : 256;
        sl_conn_t **n = realloc(w->slots, sizeof(*n) * ncap);
        if (n == NULL)
            return SL_ERROR;
        memset(n + w->slot_cap, 0, sizeof(*n) * (ncap - w->slot_cap));
        w->slots = n;
        w->slot_cap = ncap;
    }
    c->slot = w->nslots++;
found:
    w->slots[c->slot] = c;
    conn_list_append(&w->conns, CONN_AT(link_all), c);
    w->nconns++;
    return SL_OK;
}

/* --redis: an HTTP response waits for the broker (httpd): parse no further. */
static bool conn_http_deferred(const sl_conn_t *c)
{
    const sl_conn_cl_t *cl = sl_conn_cl(c);
    return cl && cl->http_deferred;
}

sl_conn_cl_t *sl_conn_cl_get(sl_conn_t *c)
{
    sl_conns_t *w = &sl_conns;
    if (c->slot >= w->cl_cap) {
        /* Grown to the slot table's size: once per doubling of it. */
        uint32_t ncap = SL_MAX(w->slot_cap, c->slot + 1);
        sl_conn_cl_t **n = realloc(w->cl, sizeof(*n) * ncap);
        if (n == NULL)
            return NULL;
        memset(n + w->cl_cap, 0, sizeof(*n) * (ncap - w->cl_cap));
        w->cl = n;
        w->cl_cap = ncap;
    }
    if (w->cl[c->slot] == NULL && !SL_FAULT("conn.cl.alloc"))
        w->cl[c->slot] = calloc(1, sizeof(sl_conn_cl_t));
    return w->cl[c->slot];
}

static void conns_detach(sl_conn_t *c)
{
    sl_conns_t *w = &sl_conns;
    w->slots[c->slot] = NULL;
    if (c->slot < w->free_hint)
        w->free_hint = c->slot;
    conn_list_remove(&w->conns, CONN_AT(link_all), c);
    w->nconns--;
}

static void conns_mark_dirty(sl_conn_t *c)
{
    if (!c->dirty && c->state != SL_CONN_DEAD) {
        c->dirty = true;
        c->dirty_next = sl_conns.dirty;
        sl_conns.dirty = c;
    }
}

static void conns_unready(sl_conn_t *c)
{
    if (!c->ready)
        return;
    conn_list_remove(&sl_conns.ready, CONN_AT(link_ready), c);
    c->ready = false;
}

/* The connection has input left that it must process in the next loop
 * turn (its per-turn budget is spent, or it resumed after a pause). */
static void conns_mark_ready(sl_conn_t *c)
{
    if (c->ready || c->state == SL_CONN_DEAD)
        return;
    c->ready = true;
    conn_list_append(&sl_conns.ready, CONN_AT(link_ready), c);
}

static void conns_mark_dead(sl_conn_t *c)
{
    /* Dead connections are freed from the dirty list at the end of the
     * turn; c->dirty guarantees it is on the list exactly once.  A dead
     * connection leaves the ready list now (it is freed before the list
     * is walked). */
    conns_unready(c);
    event_del(&c->ev);
    if (!c->dirty) {
        c->dirty = true;
        c->dirty_next = sl_conns.dirty;
        sl_conns.dirty = c;
    }
}

void sl_conns_flush(void)
{
    /* Flushing may kill a connection (write error) or make it linger; a
     * connection is never added to the list twice because of c->dirty. */
    while (sl_conns.dirty) {
        sl_conn_t *c = sl_conns.dirty;
        sl_conns.dirty = c->dirty_next;
        /* c->dirty stays set while we flush, so a write error that kills
         * the connection cannot put it on the list a second time. */
        if (c->state != SL_CONN_DEAD && !c->write_armed)
            sl_conn_flush(c);
        if (c->state == SL_CONN_DEAD) {
            conns_detach(c);
            sl_conn_destroy(c);
        } else {
            c->dirty = false;
        }
    }
}

/* Input waits that the socket will not announce: left over in c->in (a
 * pause, the per-turn budget), or decoded by the transport already. */
static bool conn_has_input(const sl_conn_t *c)
{
    return c->backlog || conn_xp(c)->pending(c->xctx);
}

void sl_conns_activate_ready(void)
{
    /* Activated here, outside the dispatch: the next EVLOOP_ONCE then
     * polls without blocking and runs each of these once, with every other
     * ready event. */
    while (sl_conns.ready.first) {
        sl_conn_t *c = sl_conns.ready.first;
        conns_unready(c);
        if (c->state != SL_CONN_DEAD && c->state != SL_CONN_LINGER && conn_has_input(c) &&
            !c->read_paused)
            event_active(&c->ev, EV_READ, 0);
    }
}

/* ------------------------------------------------------------ lifecycle */

static void conn_http_finish(sl_conn_t *c);
static void conn_input_account(sl_conn_t *c);

/* Refuse the request under way with an HTTP error (the layer above builds
 * the response: sl_conns.on). */
static void conn_http_error(sl_conn_t *c, int status, const char *code, const char *message,
                            bool keep)
{
    sl_conns.on->http_error(c, status, code, message, keep);
}

static uint64_t http_connections_total(void)
{
    uint64_t n = 0;
    for (uint32_t i = 0; i < sl_shm->nworkers; i++)
        n += uatomic_read(&sl_shm->workers[i].http_connections);
    return n;
}

/* The worker's idle HTTP connections - silent since accept, or keep-alive
 * between requests (nothing read, nothing to write) - oldest first: what
 * --max-http-connections takes back for a newcomer, in O(1).  After them,
 * the connections whose request head is unfinished, by when it began (a
 * real client's head arrives within a round trip: the oldest unfinished
 * head is the likeliest to be a peer holding the slot on purpose).  A
 * connection is on one list at most (c->idle says which). */
enum { CONN_LIST_NONE, CONN_LIST_IDLE, CONN_LIST_HEAD };
static sl_conn_list_t conn_heads; /* this worker's (one process) */

static sl_conn_list_t *conn_http_list(uint8_t which)
{
    return which == CONN_LIST_IDLE ? &sl_conns.idle : &conn_heads;
}

/* Off the idle list or the heads list, whichever it is on. */
static void conn_idle_remove(sl_conn_t *c)
{
    if (!c->idle)
        return;
    conn_list_remove(conn_http_list(c->idle), CONN_AT(link_idle), c);
    c->idle = CONN_LIST_NONE;
}

/* To the end of the idle list or the heads list (off the other one). */
static void conn_http_list_move(sl_conn_t *c, uint8_t which)
{
    conn_idle_remove(c);
    c->idle = which;
    conn_list_append(conn_http_list(which), CONN_AT(link_idle), c);
}

static void conn_idle_add(sl_conn_t *c)
{
    if (c->idle == CONN_LIST_IDLE || c->state != SL_CONN_HTTP || !c->http_counted)
        return;
    conn_http_list_move(c, CONN_LIST_IDLE);
}

/* It no longer counts against --max-http-connections: upgraded, closing
 * (a 503 or 408 being written) or dead. */
static void conn_http_uncount(sl_conn_t *c)
{
    conn_idle_remove(c);
    if (c->http_counted) {
        c->http_counted = false;
        uatomic_add(&sl_conns.stats->http_connections, -1);
    }
}

/* Refused at admission (503): it stops counting at once and is closed as
 * soon as the 503 is written (sl_conn_flush), not at the next tick; the
 * deadline is only for a peer that does not take it.  A transport whose
 * handshake is not done (TLS) can write nothing before it, so the 503
 * would wait for a handshake it is refused the time for, holding the
 * descriptor and the transport's state uncounted until a tick (review
 * rg16 F1): it is aborted at once instead - the peer sees the connection
 * close, as a TLS client refused at the limit does with nginx. */
static void conn_http_refuse(sl_conn_t *c)
{
    if (!conn_xp(c)->established(c->xctx)) {
        sl_conn_abort(c, "refused before its handshake");
        return;
    }
    conn_http_error(c, 503, "too-many-http-connections",
                   "the server is at --max-http-connections", false);
    conn_http_finish(c);
    c->refused = true;
    c->deadline_mono = sl_mono_ms() + 100;
}

/* A new TCP connection while --max-http-connections are open: make room
 * by closing this worker's oldest idle connection - an idle keep-alive one
 * (a browser finds it closed on its next request and reconnects) or one
 * that has not sent a byte yet.  Oldest first: a real client sends its
 * request within a round trip, so a connection flood churns only itself,
 * however fast it comes.  When there is none, the connection whose request
 * head has been unfinished the longest is answered 503 instead (a flood of
 * partial heads churns only itself too).  When there is none of those
 * either (every one is paused, or receiving a body, bounded by
 * --message-timeout-ms), this one is answered 503.  Each is counted.
 * True when admitted. */
static bool conn_http_admit(sl_conn_t *c)
{
    if (http_connections_total() < (uint64_t)sl_conf->max_http_connections)
        return true;
    sl_conns_count_error(SL_ERR_HTTP_CONNECTIONS);
    sl_conn_t *victim;
    for (int looked = 0; (victim = sl_conns.idle.first) != NULL; looked++) {
        /* "Silent" means nothing read yet, not nothing sent: a client
         * whose request already waits in its socket (this worker has not
         * had its turn to read it - new connections handed over in one
         * batch are admitted before any of them is read) is a request
         * under way and goes to the heads list; closing it would also
         * answer the unread bytes with a reset.  One ioctl per look,
         * only past the limit, at most SL_CONN_EVICT_LOOKS looks per
         * newcomer: past them (a flood that sends a byte on each) no idle
         * one is closed unlooked-at - the oldest unfinished head is
         * answered 503 below instead, as when none is idle.  (A TLS
         * keep-alive one whose waiting bytes hold no request - a partial
         * record - stays on the heads list until its next answer or its
         * keep-alive timeout: it is then refused 503 before the truly
         * idle are evicted, review ru L1, accepted.) */
        int pending = 0;
        if (looked >= SL_CONN_EVICT_LOOKS)
            break;
        if (ioctl(victim->fd, FIONREAD, &pending) == 0 && pending > 0) {
            conn_http_list_move(victim, CONN_LIST_HEAD);
            continue;
        }
        sl_conn_abort(victim, "idle evicted");
        return true;
    }
    if ((victim = conn_heads.first) != NULL) {
        conn_http_refuse(victim);
        return true;
    }
    conn_http_refuse(c);
    return false;
}

sl_conn_t *sl_conn_new(int fd, bool ops, const sl_xport_t *xp, void *xctx)
{
    sl_conn_t *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        xp->release(xctx);
        close(fd);
        return NULL;
    }
    /* No fcntl and no TCP_NODELAY here (syscalls per connection, a few µs
     * on this kind of machine): the master accepts with SOCK_NONBLOCK and
     * O_NONBLOCK belongs to the open file the hand-off shares; TCP_NODELAY
     * is inherited from the listener, where the master sets it (and the
     * master sets it on what an inherited listener queued before that). */
    /* While it speaks HTTP, the kernel holds at most this much of our
     * output unsent: a client that pipelines requests without reading the
     * responses is back-pressured after that, not after the megabytes
     * the socket buffer would otherwise grow to (lifted on upgrade). */
    int lowat = SL_CONN_SMALL_BACKLOG;
    setsockopt(fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT, &lowat, sizeof(lowat));
    c->fd = fd;
    c->xctx = xctx;
    c->ops = ops;
    c->state = SL_CONN_HTTP;
    c->kind = SL_KIND_HTTP;
    int64_t now = sl_mono_ms();
    c->accepted_mono = c->last_rx_mono = c->busy_since_mono = c->last_tx_mono = now;
    event_assign(&c->ev, sl_conns.base, fd, EV_READ | EV_PERSIST, conn_io_cb, c);
    /* The event first: once attached, c is on the worker's lists and only
     * sl_conn_destroy may free it.  (epoll_ctl fails with ENOSPC at
     * fs.epoll.max_user_watches, or ENOMEM: under a connection flood.) */
    bool added = !SL_FAULT("conn.new.event-add") && event_add(&c->ev, NULL) == 0;
    if (!added || conns_attach(c) != SL_OK) {
        if (added)
            event_del(&c->ev);
        sl_conns_count_error(SL_ERR_FD_EXHAUSTED);
        xp->release(xctx);
        close(fd);
        free(c);
        return NULL;
    }
    if (conn_http_admit(c)) {
        c->http_counted = true;
        uatomic_add(&sl_conns.stats->http_connections, 1);
        conn_idle_add(c); /* silent so far */
    }
    return c;
}

void sl_conn_destroy(sl_conn_t *c)
{
    sl_worker_stats_t *st = sl_conns.stats;
    event_del(&c->ev);
    conn_xp(c)->release(c->xctx);
    c->xctx = NULL;
    if (c->fd >= 0)
        close(c->fd);
    sl_outq_clear(&c->out);
    sl_buf_unref(c->pong);
    sl_buf_unref(c->pong_sent);
    sl_ws_reader_free(&c->reader);
    free(c->in);
    c->in = NULL;
    c->in_cap = 0;
    conn_input_account(c); /* to 0: off the holders' list */
    if (sl_conns.on->freed)
        sl_conns.on->freed(c); /* broker answers for it will find no connection */
    if (c->kind == SL_KIND_PROTOCOL) {
        uatomic_add(&st->connections, -1);
        sl_conns.on->closed(c);
    } else if (c->kind == SL_KIND_ECHO) {
        uatomic_add(&st->echo_connections, -1);
    } else {
        conn_http_uncount(c);
    }
    /* Its --redis state, emptied by the hooks above (conns_detach freed
     * the slot, but no connection takes it before this returns). */
    if (c->slot < sl_conns.cl_cap) {
        free(sl_conns.cl[c->slot]);
        sl_conns.cl[c->slot] = NULL;
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
    conn_http_uncount(c); /* (and off the idle list before anyone picks it) */
    c->state = SL_CONN_DEAD;
    conns_mark_dead(c);
}

/* ---------------------------------------------------------------- output */

uint64_t sl_conn_inbound_bytes;

/* The connections holding unfinished input, by when they began to hold
 * it (oldest first): who gives way when the worker is over its share. */
static sl_conn_list_t conn_held;

static void conn_held_remove(sl_conn_t *c)
{
    if (!c->held)
        return;
    conn_list_remove(&conn_held, CONN_AT(link_held), c);
    c->held = false;
}

/* Bring the worker's inbound figure up to date with what c holds now. */
static void conn_input_account(sl_conn_t *c)
{
    uint64_t held = c->in_cap + sl_ws_reader_buffered(&c->reader);
    sl_conn_inbound_bytes += held - c->input_held;
    c->input_held = held;
    if (held == 0) {
        conn_held_remove(c);
    } else if (!c->held) {
        c->held = true;
        conn_list_append(&conn_held, CONN_AT(link_held), c);
    }
}

/* Refuse v's unfinished input: 1013 (try again later) or 503, counted;
 * whatever it holds is freed (it is never processed again). */
static void conn_inbound_refuse(sl_conn_t *v)
{
    if (v->state == SL_CONN_WS) {
        sl_conns_count_error(SL_ERR_INBOUND_LIMIT);
        sl_conn_close_ws(v, SL_WS_CLOSE_TRY_AGAIN, "inbound limit: try again later");
    } else if (v->state == SL_CONN_HTTP) {
        sl_conns_count_error(SL_ERR_INBOUND_LIMIT);
        conn_http_error(v, 503, "inbound-limit",
                       "the server holds too much unfinished input: try again later", false);
        conn_http_finish(v);
    } else if (v->state == SL_CONN_CLOSING) {
        sl_conns_count_error(SL_ERR_INBOUND_LIMIT);
        sl_conn_abort(v, "inbound limit"); /* a message after its close frame */
    }
    /* LINGER or DEAD now: its input is discarded. */
    sl_ws_reader_free(&v->reader);
    free(v->in);
    v->in = NULL;
    v->in_len = v->in_cap = 0;
    conn_input_account(v);
}

/* Over the worker's share of --max-inbound-total, the connections that
 * have held unfinished input (a message being assembled, a request or its
 * body, input stopped by back-pressure) the longest are refused, oldest
 * first, until the worker is under its share again - whatever each holds:
 * many small holders cannot add up past the bound, and a client sending
 * one large message now is not refused for what others have held for
 * seconds. */
static void conn_inbound_check(sl_conn_t *c)
{
    conn_input_account(c);
    uint64_t share = (uint64_t)(sl_conf->max_inbound_total / sl_conf->workers);
    while (sl_conn_inbound_bytes > share && conn_held.first != NULL)
        conn_inbound_refuse(conn_held.first);
}

void sl_conn_charge(sl_conn_t *c, uint32_t units)
{
    uint32_t n = c->turn_messages + units;
    c->turn_messages = (uint8_t)SL_MIN(n, (uint32_t)SL_CONN_TURN_MESSAGES);
}

size_t sl_conn_reply_max(void)
{
    return SL_MAX((size_t)sl_conf->max_outbound_bytes / 2, (size_t)SL_CONN_REPLY_MIN);
}

/* SL_CONN_SMALL_BACKLOG or more queued after every write for
 * SL_CONN_STUCK_MS: it does not keep up (not reading, or reading a
 * trickle).  A client that reads is not stuck however much was queued for
 * it in this turn: its writes take it below 64 KiB. */
static bool conn_stuck(const sl_conn_t *c, int64_t now)
{
    return c->backlog_since_mono != 0 && now - c->backlog_since_mono >= SL_CONN_STUCK_MS;
}

/* Bytes of its own replies that may still be queued: everything up to the
 * end of the last reply queued that has not been written (deliveries
 * queued between replies count here too, so this errs towards replies,
 * which are bounded by the pause and sl_conn_reply_max). */
static uint64_t conn_reply_bytes(const sl_conn_t *c)
{
    uint64_t left = c->reply_end > c->written_total ? c->reply_end - c->written_total : 0;
    return SL_MIN(left, c->out.bytes);
}

/* Slow consumer: drop what it has not started to take, finish the frame
 * that is half written (the stream could not carry a close frame
 * otherwise), then the close frame; the closing is bounded by
 * SL_CLOSE_GRACE_MS like any other. */
static void conn_slow_consumer(sl_conn_t *c, uint64_t wanted, const char *why)
{
    uatomic_add(&sl_conns.stats->slow_consumer_disconnects, 1);
    sl_conns_count_error(SL_ERR_SLOW_CONSUMER);
    SL_TEL(SL_EV_SLOW_CONSUMER_DISCONNECTED, SL_WARN, SL_TF_S("conn-id", c->conn_id),
           SL_TF_I("queued-bytes", wanted), SL_TF_I("limit", sl_conf->max_outbound_bytes),
           SL_TF_S("reason", why));
    if (c->written_total < c->ws_from) {
        /* Its 101 (or a response before it) is not all written yet:
         * dropping the unstarted part could drop the 101 and make a close
         * frame its first bytes.  No WebSocket close is possible before
         * the handshake is out: the connection is closed instead. */
        sl_conn_abort(c, "slow consumer before the upgrade was written");
        return;
    }
    sl_outq_drop_unstarted(&c->out);
    sl_conn_close_ws(c, SL_WS_CLOSE_POLICY, "slow consumer");
}

/* permessage-deflate: the compressed twin of a data frame for a connection
 * that takes it, made once per buffer - a channel message fanned out to a
 * worker's subscribers is one buffer, so it is compressed once there for
 * all of them.  Small frames (--compression-min-bytes) and frames that do
 * not shrink go as they are. */
static sl_buf_t *conn_zip(const sl_conn_t *c, sl_buf_t *b)
{
    if (!c->pmd_shared || c->state != SL_CONN_WS ||
        b->len - b->start < (uint64_t)sl_conf->compression_min_bytes + 2)
        return b;
    if (b->zip == NULL) {
        b->zip = sl_pmd_compress_frame(b);
        if (b->zip == NULL)
            b->zip = &sl_buf_nozip;
    }
    return b->zip != &sl_buf_nozip ? b->zip : b;
}

int sl_conn_send(sl_conn_t *c, sl_buf_t *b)
{
    /* Nothing may follow our close frame (CLOSING, LINGER). */
    if ((c->state != SL_CONN_WS && c->state != SL_CONN_HTTP) || c->shut_wr)
        return SL_ERROR;
    b = conn_zip(c, b);
    conn_idle_remove(c); /* HTTP: a response is on its way */
    size_t len = b->len - b->start;
    /* A delivery is bounded by what deliveries hold: its own replies (a
     * large subscription result, say) do not make a reader that keeps up
     * a slow consumer. */
    uint64_t delivered = c->out.bytes - conn_reply_bytes(c);
    if (!c->in_input && c->state == SL_CONN_WS && delivered > 0) {
        if (delivered + len > (uint64_t)sl_conf->max_outbound_bytes) {
            conn_slow_consumer(c, c->out.bytes + len, "max-outbound-bytes");
            return SL_ERROR;
        }
        /* Over the worker's share: only a connection that does not read is
         * closed for it (one that reads is merely not read while it has
         * 64 KiB queued, see conn_output_over). */
        if (conns_over_budget() && conn_stuck(c, sl_mono_ms())) {
            conn_slow_consumer(c, c->out.bytes + len, "max-outbound-total");
            return SL_ERROR;
        }
    }
    if (sl_outq_push(&c->out, b, b->start, len) != SL_OK) {
        sl_conn_abort(c, "out-of-memory");
        return SL_ERROR;
    }
    if (c->in_input)
        c->reply_end = c->written_total + c->out.bytes;
    if (c->out.bytes >= SL_CONN_SMALL_BACKLOG && c->backlog_since_mono == 0)
        c->backlog_since_mono = sl_mono_ms(); /* until a write takes it below */
    if (c->kind == SL_KIND_PROTOCOL)
        uatomic_add(&sl_conns.stats->messages_out, 1);
    conns_mark_dirty(c);
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

/* Wait for writability too, or no longer; read unless paused.  libevent
 * cannot change the events of a pending event, so it is deleted,
 * re-assigned and added (also from inside its own callback, which libevent
 * allows once it is deleted). */
static void conn_watch(sl_conn_t *c, bool write)
{
    /* Nothing more to read after the peer's FIN (the socket would stay
     * readable for ever). */
    bool rd = !c->peer_eof && (!c->read_paused || c->xport_wants_read);
    /* Not read while a history waits for the broker: its peer's FIN or
     * reset is still watched, so a client that left does not keep its
     * request waiting (review rf17 H1).  Edge-triggered: input that arrives
     * meanwhile (left unread) wakes us once per arrival, not every turn;
     * EV_CLOSED is the FIN (EPOLLRDHUP), a reset comes as EV_READ.  Only
     * on a loop that has both (fin_watch: epoll; poll/select would wake it
     * every turn while input is left unread - rg17 L6). */
    const sl_conn_cl_t *q = sl_conn_cl(c);
    bool gone = sl_conns.fin_watch && !rd && !write && !c->peer_eof && c->state == SL_CONN_WS && q &&
                q->history_busy && !q->peer_gone;
    short what = EV_PERSIST | (rd ? EV_READ : 0) | (write ? EV_WRITE : 0) |
                 (gone ? EV_READ | EV_CLOSED | EV_ET : 0);
    event_del(&c->ev);
    c->write_armed = write;
    if (what & (EV_READ | EV_WRITE | EV_CLOSED)) {
        event_assign(&c->ev, sl_conns.base, c->fd, what, conn_io_cb, c);
        if (event_add(&c->ev, NULL) != 0) {
            sl_conn_abort(c, "event-add-failed");
            return;
        }
    } /* else paused with nothing stuck: the next flush resumes it */
    /* Input left over from a pause is processed in the next loop turn (the
     * socket may stay silent).  Re-done here because event_del above drops
     * an activation made earlier. */
    if (conn_has_input(c) && !c->read_paused && c->state != SL_CONN_LINGER)
        conns_mark_ready(c);
}

/* Is the connection's output over 1/divisor of its bound (64 KiB for HTTP),
 * or, while the worker is over its share of --max-outbound-total, at least
 * 64 KiB? */
static bool conn_output_over(const sl_conn_t *c, unsigned divisor)
{
    /* What the layers above hold for it (replies behind one that waits for
     * the broker) counts as its output: they are on their way to it. */
    const sl_conn_cl_t *q = sl_conn_cl(c);
    if (q && q->history_busy)
        return true; /* one history in flight: read no more (rv17 H1) */
    uint64_t out = c->out.bytes + (q ? q->held_bytes : 0);
    if (out == 0)
        return false;
    if (out >= SL_CONN_SMALL_BACKLOG && conns_over_budget())
        return true;
    /* HTTP: pause at 64 KiB, resume below 32 KiB (hysteresis: a pipelining
     * client does not flip the event every turn). */
    uint64_t at = c->state == SL_CONN_HTTP ? SL_CONN_SMALL_BACKLOG * 2 / divisor
                                           : (uint64_t)sl_conf->max_outbound_bytes / divisor;
    return out >= at;
}

/* Too much of its own output to take more input from it?  (Replies may
 * fill half of the bound; the other half is kept for deliveries from
 * others, which close it as a slow consumer.) */
static bool conn_output_high(const sl_conn_t *c)
{
    return conn_output_over(c, 2);
}

/* Drained enough to read again?  (Below a quarter: hysteresis, so a
 * connection at the bound does not flip every turn.) */
static bool conn_output_low(const sl_conn_t *c)
{
    return !conn_output_over(c, 4);
}

static void conn_pause(sl_conn_t *c)
{
    c->backlog = true; /* whatever input is left waits for the resume */
    if (c->read_paused)
        return;
    c->read_paused = true;
    uatomic_add(&sl_conns.stats->backpressure_pauses, 1);
    conn_watch(c, c->write_armed);
}

/* Reading resumes; input left over from before the pause is processed
 * first, in the next loop turn (never from inside a flush). */
static void conn_resume(sl_conn_t *c)
{
    c->read_paused = false;
    if ((c->state == SL_CONN_HTTP && c->in_len > 0) ||
        (c->state == SL_CONN_WS && c->busy_since_mono != 0))
        c->busy_since_mono = sl_mono_ms(); /* its wait was ours */
    conn_watch(c, c->write_armed); /* also schedules the left-over input */
}

void sl_conn_hold(sl_conn_t *c, int64_t delta)
{
    sl_conn_cl_t *q = sl_conn_cl(c);
    if (q == NULL)
        return;
    q->held_bytes = delta < 0 && (uint64_t)-delta > q->held_bytes ? 0
                                                                  : q->held_bytes + (uint64_t)delta;
    /* Released: most often into the queue (whose flush resumes it when it
     * drains); released with nothing queued, nothing else would. */
    if (delta < 0 && c->read_paused && (c->state == SL_CONN_WS || c->state == SL_CONN_HTTP) &&
        conn_output_low(c))
        conn_resume(c);
}

void sl_conn_history_busy(sl_conn_t *c, bool busy)
{
    sl_conn_cl_t *q = sl_conn_cl(c);
    if (q == NULL)
        return;
    q->history_busy = busy;
    q->peer_gone = false;
    if (busy && c->read_paused && c->state == SL_CONN_WS)
        conn_watch(c, c->write_armed); /* paused already: watch for its FIN */
    if (!busy && c->read_paused && (c->state == SL_CONN_WS || c->state == SL_CONN_HTTP) &&
        conn_output_low(c))
        conn_resume(c);
}

/* Stop processing this connection's input for this turn (per-turn
 * budget): the rest waits in c->in and is taken up in the next turn - a
 * real one: the ready list is activated after the turn's end
 * (sl_conns_activate_ready)
 * (timers, deliveries, writes and the RCU quiescent state come first). */
static void conn_yield(sl_conn_t *c)
{
    c->backlog = true;
    if (!c->read_paused)
        conns_mark_ready(c);
}

/* The pending pong goes into the queue unless the previous one is still
 * in it (then it keeps waiting, and a newer ping replaces it). */
static void conn_queue_pong(sl_conn_t *c)
{
    if (c->pong == NULL)
        return;
    if (c->state != SL_CONN_WS) {
        sl_buf_unref(c->pong);
        c->pong = NULL;
        return;
    }
    if (c->pong_sent != NULL) {
        if (c->pong_sent->refs > 1)
            return;
        sl_buf_unref(c->pong_sent);
        c->pong_sent = NULL;
    }
    if (sl_outq_push(&c->out, c->pong, c->pong->start, c->pong->len - c->pong->start) != SL_OK) {
        sl_conn_abort(c, "out-of-memory");
        return;
    }
    c->pong_sent = c->pong;
    c->pong = NULL;
}

void sl_conn_flush(sl_conn_t *c)
{
    if (c->state == SL_CONN_DEAD)
        return;
    uint64_t before = c->out.bytes, was = before;
    int rc = SL_OK;
    /* Twice at most: a pending pong waits for its predecessor, and once a
     * write has taken that one it goes out now, not at the connection's
     * next activity (a lost wake-up kept it up to a heartbeat interval). */
    for (int pass = 0; pass < 2 && rc == SL_OK && (pass == 0 || c->pong != NULL); pass++) {
        conn_queue_pong(c);
        if (c->state == SL_CONN_DEAD)
            return;
        was = c->out.bytes;
        rc = conn_xp(c)->flush(c->fd, c->xctx, &c->out);
        if (c->out.bytes < was) {
            /* Our own slot, one writer: a plain store of the new value. */
            uint64_t *bo = &sl_conns.stats->bytes_out;
            CMM_STORE_SHARED(*bo, *bo + (was - c->out.bytes));
            c->written_total += was - c->out.bytes;
        }
        if (pass == 0)
            before = was;
    }
    if (rc == SL_ERROR) {
        sl_conn_abort(c, "write-failed");
        return;
    }
    if (rc == SL_XPORT_WAIT_READ) {
        /* The transport needs the peer's bytes first (a TLS handshake):
         * the next read makes the connection dirty again - read for the
         * transport even while input is paused (review r16 L1: a paused
         * connection waited for neither event until a timeout). */
        bool wanted = c->xport_wants_read;
        c->xport_wants_read = true;
        if (c->write_armed || (!wanted && c->read_paused))
            conn_watch(c, false);
        return;
    }
    if (c->xport_wants_read) {
        c->xport_wants_read = false;
        if (c->read_paused && !c->write_armed)
            conn_watch(c, false); /* paused again: no reading */
    }
    if (c->out.bytes < before)
        c->last_tx_mono = sl_mono_ms(); /* a paused peer that reads is alive */
    if (c->out.bytes < SL_CONN_SMALL_BACKLOG)
        c->backlog_since_mono = 0;
    else if (c->backlog_since_mono == 0)
        c->backlog_since_mono = sl_mono_ms();
    if (c->read_paused && conn_output_low(c))
        conn_resume(c);
    if (c->state == SL_CONN_DEAD)
        return;
    if (rc == SL_AGAIN) {
        if (!c->write_armed)
            conn_watch(c, true);
        return;
    }
    if (c->write_armed)
        conn_watch(c, false);
    if (c->state == SL_CONN_HTTP && c->in_len == 0 && !c->backlog && !c->read_paused &&
        !c->peer_eof && !conn_http_deferred(c))
        conn_idle_add(c); /* keep-alive, between requests (not one waiting for its answer) */
    if (c->state == SL_CONN_LINGER && !c->shut_wr) {
        /* Everything we had to say is out: half-close, then wait for the
         * peer's FIN so it is not answered with a reset. */
        if (conn_xp(c)->shutdown(c->fd, c->xctx) == SL_AGAIN) {
            if (!c->write_armed)
                conn_watch(c, true); /* the rest of TLS close_notify */
            return;
        }
        c->shut_wr = true;
        if (c->peer_eof) {
            sl_conn_abort(c, "closed"); /* its FIN came already: both sides done */
        } else if (c->refused) {
            /* A 503 at admission: no descriptor is kept for it (a flood
             * over the limit would hold one per refusal until the next
             * tick).  What it sent is read first, so the close sends no
             * reset while that is unread; the 503 and FIN are on their
             * way already. */
            /* (raw bytes, past any transport: they are only dropped) */
            for (int k = 0; k < 4 && read(c->fd, sl_conns.rbuf, SL_SCRATCH_SIZE) > 0; k++) {
            }
            sl_conn_abort(c, "refused");
        }
    } else if (c->state == SL_CONN_CLOSING && c->peer_eof) {
        sl_conn_abort(c, "closed"); /* our close frame is out; the peer is gone */
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
    conns_mark_dirty(c); /* the flush performs the shutdown */
}

void sl_conn_close_ws(sl_conn_t *c, uint16_t code, const char *reason)
{
    if (c->state != SL_CONN_WS)
        return;
    sl_buf_unref(c->pong); /* no pong after our close frame */
    c->pong = NULL;
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
        conns_mark_dirty(c);
    } else {
        /* Failing the connection: nothing it sends matters any more. */
        conn_lingering(c);
    }
}

/* Finish an HTTP exchange that must not continue (errors, Connection:
 * close): the response is queued; linger once it is out. */
static void conn_http_finish(sl_conn_t *c)
{
    conn_http_uncount(c);
    c->read_paused = false;
    free(c->in);
    c->in = NULL;
    c->in_len = c->in_cap = 0;
    conn_input_account(c);
    conn_lingering(c);
}

/* ------------------------------------------------------------ WebSocket */

/* After each message: go on (0) or stop the reader (1) - closing, output
 * over its bound (pause), or this turn's budget spent (yield); the rest of
 * the input waits in c->in. */
static int conn_after_message(sl_conn_t *c, size_t len)
{
    if (c->state != SL_CONN_WS)
        return 1;
    if (conn_output_high(c)) {
        conn_pause(c);
        return 1;
    }
    conn_turn_msg_bytes += (uint32_t)SL_MIN(len, (size_t)SL_CONN_TURN_MESSAGE_BYTES);
    if (++c->turn_messages >= SL_CONN_TURN_MESSAGES ||
        conn_turn_msg_bytes >= SL_CONN_TURN_MESSAGE_BYTES) {
        conn_yield(c);
        return 1;
    }
    return 0;
}

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
        return conn_after_message(c, len);
    }
    if (opcode == SL_WS_OP_BINARY) {
        sl_conns_count_error(SL_ERR_UNSUPPORTED_DATA);
        sl_conn_close_ws(c, SL_WS_CLOSE_UNSUPPORTED, "binary messages are not supported");
        return 1;
    }
    sl_conns.on->ws_message(c, (char *)data, len);
    return conn_after_message(c, len);
}

/* Ping/pong frames over --max-control-rate in one second: a flood. */
static bool conn_control_flood(sl_conn_t *c)
{
    uint32_t sec = (uint32_t)(sl_mono_ms() / 1000);
    if (sec != c->ctl_second) {
        c->ctl_second = sec;
        c->ctl_count = 0;
    }
    if (c->ctl_count < UINT32_MAX) /* the flag allows up to 1,000,000 */
        c->ctl_count++;
    return c->ctl_count > sl_conf->max_control_rate;
}

/* Answer a ping.  While the connection's output flows, each ping gets its
 * pong at once (Autobahn 2.10 checks that, though the RFC does not ask
 * it).  Once its output is backed up (stuck socket, or 64 KiB waiting),
 * pongs are coalesced (RFC 6455 5.5.3): the latest ping's pong waits in
 * c->pong, replacing the one before in the same buffer, and is queued
 * when the previous pong has been written - so a flood of pings at a peer
 * that does not read holds two pongs at most and allocates nothing. */
static int conn_answer_ping(sl_conn_t *c, const uint8_t *data, size_t len)
{
    bool flowing = c->pong == NULL && !c->write_armed && c->out.bytes < SL_CONN_SMALL_BACKLOG;
    sl_buf_t *b = c->pong;
    if (b == NULL && c->pong_sent != NULL && c->pong_sent->refs == 1) {
        b = c->pong_sent; /* written already: ours to reuse */
        c->pong_sent = NULL;
    }
    if (b == NULL && (b = sl_buf_new(2 + SL_WS_MAX_CONTROL)) == NULL) {
        sl_conn_abort(c, "out-of-memory");
        return 1;
    }
    b->start = 0;
    b->len = (uint32_t)sl_ws_encode_header(b->data, SL_WS_OP_PONG, true, len, NULL);
    if (len)
        memcpy(b->data + b->len, data, len);
    b->len += (uint32_t)len;
    if (flowing) {
        if (sl_outq_push(&c->out, b, b->start, b->len) != SL_OK) {
            sl_buf_unref(b);
            sl_conn_abort(c, "out-of-memory");
            return 1;
        }
        sl_buf_unref(c->pong_sent); /* the queue keeps its own reference */
        c->pong_sent = b;
    } else {
        c->pong = b;
        conn_queue_pong(c); /* now, if the last pong has been written */
    }
    conns_mark_dirty(c);
    return c->state == SL_CONN_DEAD ? 1 : 0;
}

static int ws_on_control(void *ctx, int opcode, uint8_t *data, size_t len)
{
    sl_conn_t *c = ctx;
    if (opcode == SL_WS_OP_PING || opcode == SL_WS_OP_PONG) {
        if (c->state != SL_CONN_WS)
            return 0;
        if (conn_control_flood(c)) {
            sl_conns_count_error(SL_ERR_CONTROL_FLOOD);
            sl_conn_close_ws(c, SL_WS_CLOSE_POLICY, "control frame flood");
            return 1;
        }
        if (opcode == SL_WS_OP_PING && conn_answer_ping(c, data, len) != 0)
            return 1;
        return conn_after_message(c, len); /* a ping costs a turn's work like a message */
    }
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

/* Keep p[0..n) for later (back-pressure stopped processing before it). */
static void conn_stash(sl_conn_t *c, const uint8_t *p, size_t n)
{
    if (n == 0)
        return;
    if (c->in_len + n > c->in_cap) {
        char *q = realloc(c->in, c->in_len + n);
        if (q == NULL) {
            sl_conn_abort(c, "out-of-memory");
            return;
        }
        c->in = q;
        c->in_cap = (uint32_t)(c->in_len + n);
    }
    memcpy(c->in + c->in_len, p, n);
    c->in_len += (uint32_t)n;
}

static void conn_ws_input(sl_conn_t *c, uint8_t *data, size_t n)
{
    size_t used = 0;
    uint32_t completed = c->reader.completed;
    int rc = sl_ws_reader_feed(&c->reader, data, n, &ws_handlers, c, &used);
    bool open = c->state == SL_CONN_WS || c->state == SL_CONN_CLOSING;
    if (rc == 1 && open && !c->backlog && c->reader.frames >= c->reader.frame_limit)
        conn_yield(c); /* this turn's frames are spent (10,000 tiny fragments) */
    if (rc == 1 && open && c->backlog)
        conn_stash(c, data + used, n - used);
    if (rc > 1) {
        sl_err_t e = rc == SL_WS_CLOSE_INVALID_DATA ? SL_ERR_INVALID_UTF8
                     : rc == SL_WS_CLOSE_TOO_BIG    ? SL_ERR_MESSAGE_TOO_BIG
                                                    : SL_ERR_PROTOCOL_ERROR;
        sl_conns_count_error(e);
        if (c->state == SL_CONN_CLOSING)
            conn_lingering(c); /* the peer broke the protocol while we closed */
        else
            sl_conn_close_ws(c, (uint16_t)rc, sl_err_name(e));
        return;
    }
    if (c->state == SL_CONN_WS || c->state == SL_CONN_CLOSING) {
        if (sl_ws_reader_busy(&c->reader)) {
            /* The unfinished message (or frame) started in this feed if
             * one was completed in it: a client streaming messages whose
             * every read ends inside one is not late with any of them. */
            if (c->busy_since_mono == 0 || c->reader.completed != completed)
                c->busy_since_mono = sl_mono_ms();
        } else {
            c->busy_since_mono = 0;
        }
    }
}

/* Called by httpd once the 101 response is queued. */
void sl_conn_upgraded(sl_conn_t *c, sl_conn_kind_t kind)
{
    c->ws_from = c->written_total + c->out.bytes; /* the 101 is queued: where frames begin */
    c->state = SL_CONN_WS;
    c->kind = (uint8_t)kind;
    c->busy_since_mono = 0;
    c->last_rx_mono = c->last_ping_mono = sl_mono_ms();
    sl_ws_reader_init(&c->reader, true, (uint64_t)sl_conf->max_message_size);
    c->reader.frame_limit = SL_CONN_TURN_FRAMES;
    c->reader.deflate = c->pmd;
    if (c->pmd)
        sl_ws_set_inflater(sl_pmd_inflate); /* the engine below names no extension */
    conn_http_uncount(c);
    unsigned lowat = UINT32_MAX; /* the kernel default: no limit */
    setsockopt(c->fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT, &lowat, sizeof(lowat));
}

/* ----------------------------------------------------------------- HTTP */

static size_t http_in_limit(void)
{
    return SL_HTTP_MAX_HEAD + (size_t)sl_conf->max_message_size;
}

/* More unanswered request bytes than one request may have: refused, never
 * dropped silently.  (Reads are sized to fit, so only input handed in
 * beyond that - sl_conn_input - can get here.) */
static void conn_http_overflow(sl_conn_t *c)
{
    sl_conns_count_error(SL_ERR_BAD_HTTP_REQUEST);
    conn_http_error(c, 413, "payload-too-large",
                   "more unanswered request bytes than a request may have", false);
    conn_http_finish(c);
}

static void conn_http_input(sl_conn_t *c, const uint8_t *data, size_t n)
{
    if (n > 0 && c->idle == CONN_LIST_IDLE)
        conn_idle_remove(c); /* a request under way */
    bool head_wait = false; /* stopped on an unfinished head */
    size_t limit = http_in_limit();
    if (c->in_len + n > limit) {
        conn_http_overflow(c);
        return;
    }
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
    if (n)
        memcpy(c->in + c->in_len, data, n);
    c->in_len += (uint32_t)n;
    if (c->busy_since_mono == 0 && c->in_len > 0)
        c->busy_since_mono = sl_mono_ms();

    /* Requests are answered from c->in + off; the answered ones are cut
     * off once at the end (one memmove per read, not per request). */
    size_t off = 0;
    int budget = SL_CONN_TURN_REQUESTS;
    /* A request answered later (http_deferred: the broker) stops the
     * parsing until its response is queued (sl_conn_http_resume), so
     * responses stay in request order. */
    while (c->state == SL_CONN_HTTP && off < c->in_len && !c->read_paused &&
           !conn_http_deferred(c)) {
        if (budget-- == 0) {
            conn_yield(c); /* the rest next turn: others get theirs first */
            break;
        }
        sl_http_request_t req;
        const char *in = c->in + off;
        size_t have = c->in_len - off;
        /* A head that was incomplete is parsed again only once a blank
         * line may have arrived (a head sent a byte at a time would cost
         * a whole parse per byte). */
        if (off == 0 && have <= SL_HTTP_MAX_HEAD && c->head_scanned > 0) {
            size_t from = c->head_scanned > 3 ? c->head_scanned - 3 : 0;
            if (from >= have || memmem(in + from, have - from, "\r\n\r\n", 4) == NULL) {
                c->head_scanned = (uint32_t)have;
                head_wait = true;
                break;
            }
        }
        int rc = sl_http_parse_request(in, have, SL_HTTP_MAX_HEAD, &req);
        if (rc == SL_AGAIN) {
            if (off == 0)
                c->head_scanned = (uint32_t)have;
            head_wait = true;
            break;
        }
        if (rc != SL_OK) {
            sl_conns_count_error(SL_ERR_BAD_HTTP_REQUEST);
            conn_http_error(c, rc, "bad-request", "malformed or oversized HTTP request", false);
            conn_http_finish(c);
            return;
        }
        if (req.content_length > sl_conf->max_message_size) {
            sl_conns_count_error(SL_ERR_BAD_HTTP_REQUEST);
            conn_http_error(c, 413, "payload-too-large", "request body exceeds --max-message-size",
                           false);
            conn_http_finish(c);
            return;
        }
        size_t body_len = req.content_length > 0 ? (size_t)req.content_length : 0;
        if (have < req.head_len + body_len)
            break; /* body still arriving */
        size_t used = req.head_len + body_len;
        bool keep = sl_conns.on->http_request(c, &req, in + req.head_len, body_len);
        if (c->state == SL_CONN_DEAD)
            return;
        off += used;
        c->head_scanned = 0;
        if (sl_conns.stopping) {
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
            size_t rest = c->in_len - off;
            char *buf = c->in;
            c->in = NULL;
            c->in_len = c->in_cap = 0;
            if (rest)
                conn_ws_input(c, (uint8_t *)buf + off, rest);
            free(buf);
            return;
        }
        if (!keep && !conn_http_deferred(c)) {
            conn_http_finish(c);
            return;
        }
        c->accepted_mono = sl_mono_ms(); /* idle keep-alive timer restarts */
        if (conn_output_high(c)) {
            /* Pipelined requests wait until this response has drained. */
            conn_pause(c);
            break;
        }
    }
    if (off > 0) {
        memmove(c->in, c->in + off, c->in_len - off);
        c->in_len -= (uint32_t)off;
        c->busy_since_mono = c->in_len ? sl_mono_ms() : 0;
    }
    /* On the heads list (what --max-http-connections takes back when none
     * is idle) while its head is unfinished, by when this head began. */
    if (c->state == SL_CONN_HTTP && head_wait && c->http_counted && c->in_len > 0) {
        if (c->idle != CONN_LIST_HEAD || off > 0)
            conn_http_list_move(c, CONN_LIST_HEAD);
    } else if (c->idle == CONN_LIST_HEAD) {
        conn_idle_remove(c);
    }
    if (c->state == SL_CONN_HTTP && c->in_len == 0 && c->in != NULL) {
        free(c->in);
        c->in = NULL;
        c->in_cap = 0;
    }
}

void sl_conn_http_resume(sl_conn_t *c)
{
    if (c->state != SL_CONN_HTTP)
        return;
    const sl_conn_cl_t *cl = sl_conn_cl(c);
    if (cl == NULL || !cl->http_deferred_keep) {
        conn_http_finish(c);
        return;
    }
    c->busy_since_mono = c->in_len ? sl_mono_ms() : 0;
    conn_http_input(c, NULL, 0); /* requests that arrived while we waited */
}

/* ----------------------------------------------------------------- input */

/* Process input with c->in_input set: what is sent meanwhile is a reply. */
static void conn_process(sl_conn_t *c, uint8_t *data, size_t n)
{
    uint32_t outer_msg_bytes = conn_turn_msg_bytes;
    c->in_input = true;
    c->backlog = false;
    c->turn_messages = 0;
    conn_turn_msg_bytes = 0;
    c->reader.frames = 0;
    switch (c->state) {
    case SL_CONN_HTTP:
        conn_http_input(c, data, n);
        break;
    case SL_CONN_WS:
    case SL_CONN_CLOSING:
        if (c->in_len > 0) {
            /* Older bytes first: the new ones join them and all are fed
             * from a detached buffer (the rest is stashed again). */
            conn_stash(c, data, n);
            char *in = c->in;
            size_t len = c->in_len;
            c->in = NULL;
            c->in_len = c->in_cap = 0;
            if (c->state != SL_CONN_DEAD)
                conn_ws_input(c, (uint8_t *)in, len);
            free(in);
        } else if (n > 0) {
            conn_ws_input(c, data, n);
        }
        break;
    default:
        break; /* LINGER: discard */
    }
    c->in_input = false;
    conn_turn_msg_bytes = outer_msg_bytes;
    if (c->state != SL_CONN_DEAD)
        conn_inbound_check(c);
}

void sl_conn_input(sl_conn_t *c, uint8_t *data, size_t n)
{
    if (c->state == SL_CONN_DEAD || n == 0)
        return;
    c->last_rx_mono = sl_mono_ms();
    if (c->read_paused && (c->state == SL_CONN_WS || c->state == SL_CONN_CLOSING)) {
        conn_stash(c, data, n); /* the socket is not read while paused */
        conn_input_account(c);
        return;
    }
    conn_process(c, data, n);
}

/* The peer's FIN.  A WebSocket peer is gone.  An HTTP client may only have
 * half-closed after its last request: what it asked in full is answered
 * first, and what we queued is written, before we close (in LINGER or
 * CLOSING too: our last response or close frame is still delivered). */
static void conn_http_eof_done(sl_conn_t *c)
{
    if (c->state == SL_CONN_HTTP && !c->backlog && !c->read_paused)
        conn_http_finish(c); /* an unfinished request is dropped; linger */
}

static void conn_eof(sl_conn_t *c)
{
    bool pending = c->out.count > 0 || (c->state == SL_CONN_HTTP && c->in_len > 0);
    if (c->state == SL_CONN_WS || !pending) {
        if (c->state == SL_CONN_WS)
            conn_note_close(c, SL_WS_CLOSE_ABNORMAL, "connection lost");
        sl_conn_abort(c, c->state == SL_CONN_WS ? "eof" : "closed");
        return;
    }
    c->peer_eof = true;
    conn_watch(c, c->write_armed); /* no more reading */
    if (c->state == SL_CONN_HTTP && c->in_len > 0 && !c->read_paused) {
        c->backlog = false;
        conn_process(c, NULL, 0); /* the complete requests left, within the budget */
    }
    if (c->state != SL_CONN_DEAD)
        conn_http_eof_done(c);
    if (c->state == SL_CONN_LINGER || c->state == SL_CONN_CLOSING)
        conns_mark_dirty(c); /* the flush closes once the output is out */
}

/* Woken while not read because a history waits (conn_watch): if its peer
 * has left (FIN: EV_CLOSED, or a peek finds the end or an error), the
 * layers above are told once and it is watched no more; the rest waits
 * for the answer, as before (input before the FIN is processed then). */
static void conn_peer_gone(sl_conn_t *c, short what)
{
    sl_conn_cl_t *q = sl_conn_cl(c);
    if (q == NULL || !q->history_busy || q->peer_gone || c->xport_wants_read)
        return;
    if (!(what & EV_CLOSED)) {
        char b;
        ssize_t n = recv(c->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT); /* raw: only looked at */
        if (n > 0 || (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)))
            return; /* input (left for later), or nothing: still there */
    }
    q->peer_gone = true;
    conn_watch(c, c->write_armed);
    if (sl_conns.on->peer_gone)
        sl_conns.on->peer_gone(c);
}

static void conn_io_cb(evutil_socket_t fd, short what, void *arg)
{
    sl_conn_t *c = arg;
    if ((what & EV_WRITE) && conn_xp(c)->read_wants_write(c->xctx))
        what |= EV_READ; /* the transport's read waited for this */
    if ((what & EV_WRITE) && c->state != SL_CONN_DEAD)
        sl_conn_flush(c);
    if (c->read_paused && (what & (EV_READ | EV_CLOSED)) && c->state == SL_CONN_WS)
        conn_peer_gone(c, what);
    if (!(what & EV_READ) || c->state == SL_CONN_DEAD)
        return;
    /* Input left over from a pause or an earlier turn goes first; while
     * some is still left, nothing more is read. */
    if (c->backlog && !c->read_paused && c->state != SL_CONN_LINGER) {
        conn_process(c, NULL, 0);
        if (c->state == SL_CONN_DEAD || c->backlog)
            return;
    }
    if (c->peer_eof) {
        conn_http_eof_done(c); /* its last complete request is answered */
        return;
    }
    if (c->read_paused) {
        if (c->xport_wants_read)
            sl_conn_flush(c); /* the transport reads what its write waits for */
        return;
    }
    /* At most one read of SL_CONN_TURN_READ per connection per loop turn:
     * a connection that always has input cannot starve the others.  For HTTP no more than
     * the request buffer can still take, so nothing is ever dropped. */
    size_t room = SL_CONN_TURN_READ;
    if (c->state == SL_CONN_HTTP) {
        size_t left = http_in_limit() - c->in_len;
        room = SL_MIN(room, left);
        if (room == 0) {
            conn_http_overflow(c);
            return;
        }
    }
    ssize_t n = conn_xp(c)->read(fd, c->xctx, sl_conns.rbuf, room);
    /* (Only once the peer was heard from: sl_conn_read_now reads before
     * the socket was announced and may find nothing.) */
    if (c->idle == CONN_LIST_IDLE && n != 0 && n != SL_ERROR && conn_xp(c)->heard(c->xctx) &&
        !conn_xp(c)->established(c->xctx))
        conn_http_list_move(c, CONN_LIST_HEAD); /* a handshake under way is a request
                                head in progress, not an idle connection to evict
                                first (review r16 L5: it needs more round trips than
                                HTTP); taken back after the idle ones, oldest first */
    if (c->out.count > 0 && c->state != SL_CONN_DEAD)
        conns_mark_dirty(c); /* a transport waiting for the peer may write now */
    if (n == SL_AGAIN) {
        if (conn_xp(c)->read_wants_write(c->xctx) && !c->write_armed)
            conn_watch(c, true);
        return;
    }
    if (n == SL_XPORT_REFUSED) {
        /* Answered by the transport (counted there): it stops counting
         * against --max-http-connections now, as every refused HTTP
         * connection does (review rg16 F2: off every list, it held its
         * place unevictable for the linger), then half-close, drain. */
        conn_http_uncount(c);
        conn_lingering(c);
        return;
    }
    if (n < 0) {
        sl_conn_abort(c, "read-failed");
        return;
    }
    if (n == 0) {
        conn_eof(c);
        return;
    }
    uint64_t *bi = &sl_conns.stats->bytes_in;
    CMM_STORE_SHARED(*bi, *bi + (uint64_t)n);
    if (sl_conns.trace_fd >= 0)
        sl_conns.read_us = sl_mono_us(); /* the fan-out trace's "arrival" */
    sl_conn_input(c, sl_conns.rbuf, (size_t)n);
    if (c->state != SL_CONN_DEAD && !c->read_paused && conn_xp(c)->pending(c->xctx))
        conns_mark_ready(c); /* decoded input the socket will not announce */
}

void sl_conn_read_now(sl_conn_t *c)
{
    if (c->state != SL_CONN_DEAD)
        conn_io_cb(c->fd, EV_READ, c);
}

/* ---------------------------------------------------------------- timers */

void sl_conn_tick(sl_conn_t *c, int64_t now)
{
    const sl_conf_t *cf = sl_conf;
    /* The worker is over its share of --max-outbound-total: the
     * connections that hold output and do not read are what it can shed
     * (readers that keep up are never closed for it). */
    if ((c->state == SL_CONN_WS || c->state == SL_CONN_HTTP) &&
        c->out.bytes >= SL_CONN_SMALL_BACKLOG && conn_stuck(c, now) && conns_over_budget()) {
        if (c->state == SL_CONN_WS) {
            conn_slow_consumer(c, c->out.bytes, "max-outbound-total");
        } else {
            uatomic_add(&sl_conns.stats->slow_consumer_disconnects, 1);
            sl_conns_count_error(SL_ERR_SLOW_CONSUMER);
            sl_conn_abort(c, "not reading, worker over its share");
        }
        return;
    }
    switch (c->state) {
    case SL_CONN_HTTP:
        if (!conn_xp(c)->established(c->xctx)) {
            /* The transport's handshake (TLS) within --message-timeout-ms;
             * nothing can be answered before it. */
            if (now - c->accepted_mono >= cf->message_timeout_ms) {
                sl_conns_count_error(SL_ERR_TLS_HANDSHAKE_TIMEOUT);
                sl_conn_abort(c, "handshake timeout");
            }
            break;
        }
        if (c->read_paused) {
            /* Requests wait for it to read our responses: not its delay
             * to finish a request, but it must keep reading. */
            if (now - SL_MAX(c->last_tx_mono, c->accepted_mono) >=
                cf->keepalive_timeout_ms + cf->message_timeout_ms) {
                sl_conns_count_error(SL_ERR_SLOW_CONSUMER); /* it does not read */
                sl_conn_abort(c, "not reading");
            }
        } else if (c->busy_since_mono && now - c->busy_since_mono >= cf->message_timeout_ms) {
            sl_conns_count_error(SL_ERR_HANDSHAKE_TIMEOUT);
            conn_http_error(c, 408, "request-timeout", "request not completed in time", false);
            conn_http_finish(c);
        } else if (!c->busy_since_mono && now - c->accepted_mono >= cf->keepalive_timeout_ms &&
                   (c->out.count == 0 ||
                    now - c->accepted_mono >= cf->keepalive_timeout_ms + cf->message_timeout_ms)) {
            /* Idle keep-alive (a response still unread after a message
             * timeout more counts as idle too). */
            sl_conn_abort(c, "keep-alive idle");
        }
        break;
    case SL_CONN_WS:
        sl_outq_trim(&c->out);
        if (c->kind == SL_KIND_PROTOCOL) {
            sl_conns.on->ws_tick(c, now); /* authentication deadline, token expiry */
            if (c->state != SL_CONN_WS)
                break;
        }
        /* While we do not read from it (back-pressure) its message cannot
         * progress: the wait is ours, not its (the timer restarts on
         * resume). */
        if (c->busy_since_mono && !c->read_paused &&
            now - c->busy_since_mono >= cf->message_timeout_ms) {
            sl_conns_count_error(SL_ERR_MESSAGE_TIMEOUT);
            sl_conn_close_ws(c, SL_WS_CLOSE_POLICY, "message not completed in time");
        } else if (now - SL_MAX(c->last_rx_mono, c->read_paused ? c->last_tx_mono : 0) >=
                   2 * cf->heartbeat_interval_ms) {
            sl_conns_count_error(SL_ERR_HEARTBEAT_TIMEOUT);
            sl_conn_close_ws(c, SL_WS_CLOSE_GOING_AWAY, "heartbeat timeout");
        } else if (now - c->last_ping_mono >= cf->heartbeat_interval_ms) {
            static sl_buf_t *ping;
            if (ping == NULL)
                ping = sl_frame_new(SL_WS_OP_PING, NULL, 0); /* kept for the worker's life */
            if (ping != NULL && sl_outq_push(&c->out, ping, ping->start, ping->len) == SL_OK)
                conns_mark_dirty(c);
            c->last_ping_mono = now;
        }
        break;
    case SL_CONN_CLOSING:
    case SL_CONN_LINGER:
        if (now >= c->deadline_mono) {
            /* Closing with unread input sends a reset, and a reset makes
             * the peer's kernel drop what it has not read yet - our close
             * frame with it.  So what is waiting is read first (bounded). */
            for (int k = 0; k < 4 && conn_xp(c)->read(c->fd, c->xctx, sl_conns.rbuf, SL_SCRATCH_SIZE) > 0;
                 k++) {
            }
            sl_conn_abort(c, "close timeout");
        }
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
