/*
 * proto.c - replies of the JSON protocol (PROTOCOL sections 2-3): the one
 * way a handler answers (sl_proto_reply, bounded by sl_conn_reply_max), the
 * error reply and the invalid-field one.  Below the message handlers
 * (pubsub.c, call.c, session.c) and above the connection; the dispatch of
 * a message to its handler is router.c.  With --redis a reply that waits
 * for the broker keeps its place: later replies queue behind it (the
 * deferred replies below).
 */
#include "sl_proto.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* --------------------------------------------------- deferred replies */

struct sl_reply {
    struct sl_reply *next;
    sl_buf_t *frame; /* NULL: nothing to send */
    uint64_t chan_hash; /* a reply about this channel (0: none) */
    uint32_t held; /* bytes charged to the connection for it (sl_conn_hold) */
    bool ready;
};

/* What entry r holds: itself and its frame. */
static uint32_t rq_size(const sl_reply_t *r)
{
    uint64_t n = sizeof(*r) + (r->frame ? r->frame->len - r->frame->start : 0);
    return n > UINT32_MAX ? UINT32_MAX : (uint32_t)n;
}

/* Charge r's size as it is now (its frame may have come since). */
static void rq_charge(sl_conn_t *c, sl_reply_t *r)
{
    uint32_t now = rq_size(r);
    if (now != r->held) {
        sl_conn_hold(c, (int64_t)now - (int64_t)r->held);
        r->held = now;
    }
}

/* The queue lives in the connection's --redis state (sl_conn_cl_t): made
 * with the first deferred reply, so a connection without one has no queue
 * (every reader below takes NULL for empty). */

static void rq_flush(sl_conn_t *c)
{
    sl_conn_cl_t *q = sl_conn_cl(c);
    while (q && q->rq_head && q->rq_head->ready) {
        sl_reply_t *r = q->rq_head;
        q->rq_head = r->next;
        if (q->rq_head == NULL)
            q->rq_tail = NULL;
        q->nrq--;
        uint32_t held = r->held;
        if (r->frame) {
            sl_conn_send(c, r->frame);
            sl_buf_unref(r->frame);
        }
        free(r);
        /* After the send: the frame is in the queue before the hold goes. */
        sl_conn_hold(c, -(int64_t)held);
        q = sl_conn_cl(c);
    }
}

static sl_reply_t *rq_append(sl_conn_t *c, sl_buf_t *frame, bool ready)
{
    sl_conn_cl_t *q = sl_conn_cl_get(c);
    sl_reply_t *r = q ? calloc(1, sizeof(*r)) : NULL;
    if (r == NULL)
        return NULL;
    r->frame = frame;
    r->ready = ready;
    if (q->rq_tail)
        q->rq_tail->next = r;
    else
        q->rq_head = r;
    q->rq_tail = r;
    q->nrq++;
    rq_charge(c, r);
    return r;
}

sl_reply_t *sl_proto_defer_chan(sl_conn_t *c, uint64_t chan_hash)
{
    const sl_conn_cl_t *q = sl_conn_cl(c);
    if (q && q->nrq >= SL_PROTO_MAX_DEFERRED)
        return NULL;
    sl_reply_t *r = rq_append(c, NULL, false);
    if (r)
        r->chan_hash = chan_hash;
    return r;
}

sl_reply_t *sl_proto_defer(sl_conn_t *c)
{
    return sl_proto_defer_chan(c, 0);
}

bool sl_proto_deferring(const sl_conn_t *c)
{
    const sl_conn_cl_t *q = sl_conn_cl(c);
    return q && q->rq_head;
}

bool sl_proto_waits_on(sl_conn_t *c, uint64_t chan_hash)
{
    const sl_conn_cl_t *q = sl_conn_cl(c);
    for (sl_reply_t *r = q ? q->rq_head : NULL; r; r = r->next)
        if (!r->ready && r->chan_hash == chan_hash)
            return true;
    return false;
}

static json_t *error_json(const char *reason, const char *message)
{
    /* The message may quote input (jansson's error text shows the bytes it
     * choked on, and may end inside a UTF-8 character): json_pack refuses
     * invalid UTF-8, and the protocol promises a reply for any bad input,
     * so the text is made valid first. */
    char m[400];
    sl_utf8_sanitize((const uint8_t *)message, strlen(message), m, sizeof(m));
    return json_pack("{s:s, s:s, s:s, s:I}", "type", "error", "message", m, "reason", reason,
                     "timestamp", (json_int_t)sl_now_ms());
}

/* The frame of reply r (taken): r itself, or a reply-too-large error when
 * it is over the bound on one reply; NULL (connection aborted) when it
 * cannot be encoded. */
static sl_buf_t *reply_frame(sl_conn_t *c, json_t *r)
{
    sl_buf_t *b = sl_frame_json(r);
    if (b == NULL) {
        json_decref(r);
        sl_conn_abort(c, "encode-failed");
        return NULL;
    }
    size_t len = b->len - b->start, max = sl_conn_reply_max();
    if (len <= max) {
        json_decref(r);
        return b;
    }
    /* The builders of large replies page or cut them to fit; anything
     * still over the bound is refused rather than queued. */
    sl_buf_unref(b);
    const char *type = json_string_value(json_object_get(r, "type"));
    char m[200];
    snprintf(m, sizeof(m), "the %.40s reply would be %zu bytes, over the %zu-byte bound on one "
                           "reply (half of --max-outbound-bytes)", type ? type : "", len, max);
    json_decref(r);
    sl_conns_count_error(SL_ERR_REPLY_TOO_LARGE);
    json_t *e = error_json("reply-too-large", m);
    return e ? reply_frame(c, e) : NULL;
}

void sl_proto_complete(sl_conn_t *c, sl_reply_t *slot, json_t *r)
{
    if (r)
        slot->frame = reply_frame(c, r);
    slot->ready = true;
    rq_charge(c, slot); /* its frame, if it still waits behind another */
    rq_flush(c);
}

void sl_proto_send_ordered(sl_conn_t *c, sl_buf_t *b)
{
    /* Bounded in entries and in bytes (twice the bound on one reply, i.e.
     * --max-outbound-bytes): past it (a reply pending a long time on a busy
     * channel), frames go out at once, where the connection's own bound
     * judges them. */
    const sl_conn_cl_t *q = sl_conn_cl(c);
    if (q == NULL || q->rq_head == NULL || q->nrq >= 4 * SL_PROTO_MAX_DEFERRED ||
        q->held_bytes + (b->len - b->start) > 2 * (uint64_t)sl_conn_reply_max()) {
        sl_conn_send(c, b);
        return;
    }
    sl_reply_t *r = rq_append(c, sl_buf_ref(b), true);
    if (r == NULL) {
        sl_buf_unref(b);
        sl_conn_send(c, b);
    }
}

void sl_proto_closed(sl_conn_t *c)
{
    sl_conn_cl_t *q = sl_conn_cl(c);
    if (q == NULL)
        return;
    while (q->rq_head) {
        sl_reply_t *r = q->rq_head;
        q->rq_head = r->next;
        sl_buf_unref(r->frame);
        free(r);
    }
    q->rq_tail = NULL;
    q->nrq = 0;
    q->held_bytes = 0; /* closed: nothing to resume */
}

void sl_proto_reply(sl_conn_t *c, json_t *r)
{
    if (r == NULL)
        return;
    sl_buf_t *f = reply_frame(c, r);
    if (f == NULL)
        return;
    /* Behind a reply that waits for the broker, this one waits too. */
    if (sl_proto_deferring(c)) {
        if (rq_append(c, f, true) == NULL)
            sl_buf_unref(f);
        return;
    }
    sl_conn_send(c, f);
    sl_buf_unref(f);
}

void sl_proto_begin(sl_jw_t *w)
{
    sl_jw_init(w, sl_conns.ebuf, SL_SCRATCH_SIZE);
}

int sl_proto_send(sl_conn_t *c, sl_jw_t *w)
{
    sl_buf_t *b = sl_jw_frame(w);
    if (b == NULL) {
        sl_conn_abort(c, "encode-failed");
        return SL_ERROR;
    }
    /* Behind a reply that waits for the broker, this one waits too. */
    if (sl_proto_deferring(c)) {
        if (rq_append(c, b, true) != NULL)
            return SL_OK;
        sl_buf_unref(b);
        return SL_ERROR;
    }
    int rc = sl_conn_send(c, b);
    sl_buf_unref(b);
    return rc;
}

void sl_proto_error(sl_conn_t *c, const char *reason, const char *message)
{
    sl_proto_reply(c, error_json(reason, message));
}

void sl_proto_bad_field(sl_conn_t *c, const char *type, const char *field, const char *what)
{
    char m[160];
    snprintf(m, sizeof(m), "%s: field '%s' %s", type, field, what);
    sl_conns_count_error(SL_ERR_INVALID_MESSAGE);
    sl_proto_error(c, "invalid-message", m);
}

